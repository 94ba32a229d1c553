// The result: the edited image large beside its references, a before/after compare, click to
// zoom, its size, seed and timings, Download and "Use as reference".

import { Compare } from "./compare.js";
import { h, formatSeconds, idParts, reveal, STATE_LABELS } from "./dom.js";
import { labelFor } from "./references.js";
import { forPeople } from "./words.js";
import { ZoomView } from "./zoom.js";

function extensionOf(url, fallback) {
  const match = /\.(jpe?g|png|webp)(?:$|\?)/i.exec(new URL(url, location.href).pathname);
  return match ? match[1].toLowerCase() : fallback;
}

export class ResultView {
  /** @param {(url: string, label: string) => void} onUseAsReference */
  constructor(root, { onUseAsReference }) {
    this.root = root;
    this.onUseAsReference = onUseAsReference;
    this.zoom = new ZoomView();
    this.clear();
  }

  clear() {
    this.root.classList.add("empty");
    this.root.replaceChildren(
      h("div", { class: "placeholder" },
        h("div", { class: "placeholder-art", "aria-hidden": "true" }),
        h("p", {}, "The edited image appears here, beside its references."),
        h("p", { class: "hint" }, "Add a prompt and at least one reference, then press Edit image.")));
  }

  /** A request that did not complete: say so where the image would be. */
  showState(result) {
    this.root.classList.add("empty");
    const failed = result.status === "failed" && result.error;
    const message = failed
      ? forPeople(result.error.message)
      : `This request is ${STATE_LABELS[result.status]?.toLowerCase() || result.status}.`;
    this.root.replaceChildren(h("div", { class: "placeholder" },
      h("p", {}, h("span", { class: `badge state-${result.status}` }, STATE_LABELS[result.status] || result.status)),
      h("p", { class: "result-state-message" }, message),
      h("p", { class: "hint" }, "Request ", h("code", { class: "id" }, result.request_id),
        failed ? [" · ", h("code", {}, result.error.code)] : null)));
  }

  /** Show a completed result; `revealIt` scrolls it into view once its image has loaded. */
  show(result, { pick = 0, revealIt = false } = {}) {
    const images = result.output?.images || [];
    if (!images.length) {
      this.showState(result);
      return;
    }
    const url = images[pick];
    const refs = result.input?.image_urls || [];
    const img = h("img", {
      class: "result-image", src: url, alt: result.input?.prompt ? `Edited image: ${result.input.prompt}` : "Edited image",
      width: result.width, height: result.height,
    });
    const zoomButton = h("button", {
      type: "button", class: "result-zoom", "aria-label": "Zoom the result", title: "Click to zoom",
      onclick: () => this.zoom.open(url, { alt: img.alt, caption: `Result · ${result.width} × ${result.height}`, opener: zoomButton }),
    }, img);
    const stage = h("div", { class: "result-stage" }, zoomButton);
    const compare = new Compare(stage);
    this.root.classList.remove("empty");
    this.root.replaceChildren(...[
      h("div", { class: "result-main" }, h("div", { class: "result-frame" }, stage), this.renderReferences(refs)),
      compare.control,
      this.renderTools(refs, compare),
      this.renderFacts(result),
      this.renderPicks(result, images, pick),
      this.renderActions(result, url),
    ].filter(Boolean));
    if (revealIt) {
      reveal(img);
      // Its height is known (width and height attributes), but a late layout shift moves it.
      img.addEventListener("load", () => reveal(img), { once: true });
    }
  }

  renderReferences(refs) {
    if (!refs.length) return null;
    return h("ol", { class: "result-refs", "aria-label": "The references of this edit" },
      refs.map((ref, i) => {
        const label = `Reference ${i + 1}`;
        const button = h("button", {
          type: "button", class: "result-ref", title: `${label}: ${labelFor(ref)} (click to zoom)`,
          onclick: () => this.zoom.open(ref, { alt: `${label}: ${labelFor(ref)}`, caption: `${label} · ${labelFor(ref)}`, opener: button }),
        }, h("img", { src: ref, alt: `${label}: ${labelFor(ref)}`, loading: "lazy" }));
        return h("li", {}, button, h("span", { class: "result-ref-name" }, label));
      }));
  }

  renderTools(refs, compare) {
    if (!refs.length) return null;
    const button = h("button", {
      type: "button", class: "secondary small", "aria-pressed": "false",
      onclick: () => {
        if (compare.active) compare.off();
        else compare.on(refs[0], labelFor(refs[0]));
        button.setAttribute("aria-pressed", String(compare.active));
      },
    }, "Compare with reference 1");
    compare.before.addEventListener("error", () => {
      compare.off();
      button.disabled = true;
      button.title = "Reference 1 could not be loaded in this browser.";
    });
    return h("div", { class: "result-tools" }, button, h("span", { class: "hint" }, "Click an image to zoom."));
  }

  renderFacts(result) {
    const t = result.timings || {};
    const facts = [
      ["Size", h("span", { class: "result-size" }, `${result.width} × ${result.height}`)],
      ["Seed", h("span", { class: "result-seed" }, String(result.seed ?? "–"))],
      ["Format", (result.input?.output_format || "jpeg").toUpperCase()],
      ["Time", h("span", { class: "result-timings" },
        `queue ${formatSeconds(t.queue_s)} · inference ${formatSeconds(t.inference_s)} · total ${formatSeconds(t.total_s)}`)],
      ["Model", h("span", { class: "model-id" }, idParts(result.model_id))],
      ["Request", h("code", { class: "id" }, result.request_id)],
    ];
    return h("dl", { class: "facts" }, facts.map(([name, value]) => h("div", {}, h("dt", {}, name), h("dd", {}, value))));
  }

  renderPicks(result, images, pick) {
    if (images.length < 2) return null;
    return h("div", { class: "result-picks", role: "group", "aria-label": "Output images" },
      images.map((other, i) => h("button", {
        type: "button", class: `pick${i === pick ? " active" : ""}`, "aria-label": `Show image ${i + 1}`,
        "aria-pressed": String(i === pick), onclick: () => this.show(result, { pick: i }),
      }, h("img", { src: other, alt: "" }))));
  }

  renderActions(result, url) {
    const format = result.input?.output_format || "jpeg";
    const ext = extensionOf(url, format === "png" ? "png" : "jpg");
    return h("div", { class: "result-actions" },
      h("a", { class: "button primary", href: url, download: `fluxedit-${result.request_id}.${ext}` }, "Download"),
      h("button", {
        type: "button", class: "secondary",
        onclick: () => this.onUseAsReference(url, `result ${result.request_id.slice(0, 8)}`),
      }, "Use as reference"),
      h("a", { class: "button ghost", href: url, target: "_blank", rel: "noopener" }, "Open in a new tab"));
  }
}
