// The zoom view: one image in a modal dialog, fitted to the screen or at its actual pixels.

import { h } from "./dom.js";

export class ZoomView {
  constructor() {
    this.image = h("img", { class: "zoom-image", alt: "" });
    this.caption = h("span", { class: "zoom-caption" });
    this.sizeButton = h("button", { type: "button", class: "secondary small", "aria-pressed": "false", onclick: () => this.toggleSize() }, "Actual size");
    this.stage = h("div", { class: "zoom-stage" }, this.image);
    this.dialog = h("dialog", { class: "zoom", "aria-label": "Zoomed image" },
      h("div", { class: "zoom-bar" },
        this.caption,
        this.sizeButton,
        h("button", { type: "button", class: "secondary small", onclick: () => this.dialog.close() }, "Close")),
      this.stage);
    this.image.addEventListener("click", () => this.toggleSize());
    // A click on the backdrop (the dialog box itself, outside its content) closes it.
    this.dialog.addEventListener("click", (event) => {
      if (event.target === this.dialog) this.dialog.close();
    });
    this.dialog.addEventListener("close", () => this.opener?.focus());
    document.body.append(this.dialog);
  }

  /** Show `url` zoomed; focus goes back to `opener` when the dialog closes. */
  open(url, { alt = "", caption = "", opener = null } = {}) {
    Object.assign(this.image, { src: url, alt });
    this.caption.textContent = caption;
    this.opener = opener;
    this.setActual(false);
    this.dialog.showModal();
  }

  toggleSize() {
    this.setActual(!this.dialog.classList.contains("actual"));
  }

  setActual(actual) {
    this.dialog.classList.toggle("actual", actual);
    this.sizeButton.setAttribute("aria-pressed", String(actual));
    this.sizeButton.textContent = actual ? "Fit to screen" : "Actual size";
  }
}
