// The result: the edited image large, its size, seed and timings, Download and "Use as reference".

import { h, formatSeconds, STATE_LABELS } from "./dom.js";

function extensionOf(url, fallback) {
  const match = /\.(jpe?g|png|webp)(?:$|\?)/i.exec(new URL(url, location.href).pathname);
  return match ? match[1].toLowerCase() : fallback;
}

export class ResultView {
  /** @param {(url: string, label: string) => void} onUseAsReference */
  constructor(root, { onUseAsReference }) {
    this.root = root;
    this.onUseAsReference = onUseAsReference;
    this.clear();
  }

  clear() {
    this.root.classList.add("empty");
    this.root.replaceChildren(
      h("div", { class: "placeholder" },
        h("div", { class: "placeholder-art", "aria-hidden": "true" }),
        h("p", {}, "The edited image appears here."),
        h("p", { class: "hint" }, "Add a prompt and at least one reference, then press Edit image.")));
  }

  /** A request that did not complete: say so where the image would be. */
  showState(result) {
    this.root.classList.add("empty");
    const message = result.status === "failed" && result.error
      ? `${result.error.message} (${result.error.code})`
      : `This request is ${STATE_LABELS[result.status]?.toLowerCase() || result.status}.`;
    this.root.replaceChildren(h("div", { class: "placeholder" },
      h("p", {}, h("span", { class: `badge state-${result.status}` }, STATE_LABELS[result.status] || result.status)),
      h("p", { class: "result-state-message" }, message),
      h("p", { class: "hint" }, "Request ", h("code", {}, result.request_id))));
  }

  show(result, pick = 0) {
    const images = result.output?.images || [];
    if (!images.length) {
      this.showState(result);
      return;
    }
    const url = images[pick];
    const format = result.input?.output_format || "jpeg";
    const ext = extensionOf(url, format === "png" ? "png" : "jpg");
    const t = result.timings || {};
    const prompt = result.input?.prompt || "";
    const img = h("img", {
      class: "result-image", src: url, alt: prompt ? `Edited image: ${prompt}` : "Edited image",
      width: result.width, height: result.height,
    });
    const facts = [
      ["Size", h("span", { class: "result-size" }, `${result.width} × ${result.height}`)],
      ["Seed", h("span", { class: "result-seed" }, String(result.seed ?? "–"))],
      ["Format", format.toUpperCase()],
      ["Time", h("span", { class: "result-timings" },
        `queue ${formatSeconds(t.queue_s)} · inference ${formatSeconds(t.inference_s)} · total ${formatSeconds(t.total_s)}`)],
      ["Model", result.model_id],
      ["Request", h("code", {}, result.request_id)],
    ];
    this.root.classList.remove("empty");
    const parts = [
      h("figure", { class: "result-figure" },
        h("a", { href: url, target: "_blank", rel: "noopener", class: "result-link", "aria-label": "Open the image in a new tab" }, img),
        h("figcaption", {},
          h("dl", { class: "facts" }, facts.map(([name, value]) => h("div", {}, h("dt", {}, name), h("dd", {}, value)))))),
      images.length > 1
        ? h("div", { class: "result-picks", role: "group", "aria-label": "Output images" },
          images.map((other, i) => h("button", {
            type: "button", class: `pick${i === pick ? " active" : ""}`, "aria-label": `Show image ${i + 1}`,
            "aria-pressed": String(i === pick), onclick: () => this.show(result, i),
          }, h("img", { src: other, alt: "" }))))
        : null,
      h("div", { class: "result-actions" },
        h("a", { class: "button primary", href: url, download: `fluxedit-${result.request_id}.${ext}` }, "Download"),
        h("button", {
          type: "button", class: "secondary",
          onclick: () => this.onUseAsReference(url, `result ${result.request_id.slice(0, 8)}`),
        }, "Use as reference")),
    ];
    this.root.replaceChildren(...parts.filter(Boolean));
  }
}
