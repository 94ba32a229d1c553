// Before / after: the first reference laid over the output, uncovered up to a slider's position.

import { h } from "./dom.js";

export class Compare {
  /** @param {HTMLElement} stage the box around the result image; the reference is laid over it */
  constructor(stage) {
    this.stage = stage;
    this.before = h("img", { class: "compare-before", alt: "", draggable: "false" });
    this.line = h("span", { class: "compare-line", "aria-hidden": "true" });
    this.slider = h("input", {
      type: "range", min: "0", max: "100", value: "50", class: "compare-slider",
      "aria-label": "Before and after: how much of reference 1 covers the result",
    });
    this.slider.addEventListener("input", () => this.show());
    this.control = h("div", { class: "compare-control", hidden: true },
      h("span", { class: "compare-end" }, "Reference 1"), this.slider, h("span", { class: "compare-end" }, "Result"));
    this.stage.append(this.before, this.line);
    this.off();
  }

  on(url, label) {
    this.before.src = url;
    this.before.alt = `Reference 1 (${label}), before the edit`;
    this.stage.classList.add("comparing");
    this.control.hidden = false;
    this.show();
  }

  off() {
    this.stage.classList.remove("comparing");
    this.control.hidden = true;
  }

  get active() {
    return this.stage.classList.contains("comparing");
  }

  show() {
    const at = Number(this.slider.value);
    this.before.style.clipPath = `inset(0 ${100 - at}% 0 0)`;
    this.line.style.left = `${at}%`;
    this.slider.setAttribute("aria-valuetext", `${at}% reference 1, ${100 - at}% result`);
  }
}
