// The image size control: "auto", the presets with their pixel sizes, and a live-checked custom size.

import { h } from "./dom.js";
import { PRESETS, autoSize, checkCustomSize } from "./sizes.js";

export class SizePicker {
  constructor(root, { onChange }) {
    this.onChange = onChange;
    this.options = root.querySelector("#size-options");
    this.custom = root.querySelector("#custom-size");
    this.width = root.querySelector("#custom-width");
    this.height = root.querySelector("#custom-height");
    this.check = root.querySelector("#custom-size-check");
    this.autoPixels = h("span", { class: "size-px" }, "from reference 1");
    const option = (value, name, pixels, shape) => h("label", { class: "size-option" },
      h("input", { type: "radio", name: "image_size", value, checked: value === "auto" }),
      h("span", { class: "size-shape", "aria-hidden": "true" }, shape),
      h("span", { class: "size-name" }, name),
      pixels);
    const box = (w, hgt) => h("span", { class: "shape-box", style: `aspect-ratio: ${w} / ${hgt}` });
    this.options.replaceChildren(
      option("auto", "Auto", this.autoPixels, h("span", { class: "shape-box shape-auto" })),
      ...PRESETS.map((p) => option(p.id, p.label, h("span", { class: "size-px" }, `${p.width} × ${p.height}`), box(p.width, p.height))),
      option("custom", "Custom", h("span", { class: "size-px" }, "any W × H"), h("span", { class: "shape-box shape-custom" })),
    );
    this.options.addEventListener("change", () => this.changed());
    for (const input of [this.width, this.height]) input.addEventListener("input", () => this.changed());
    this.changed();
  }

  get selected() {
    return this.options.querySelector("input:checked")?.value || "auto";
  }

  /** The image_size to send: a name or {width, height}; null when the custom size is invalid. */
  value() {
    const selected = this.selected;
    if (selected !== "custom") return selected;
    const checked = checkCustomSize(this.width.value, this.height.value);
    return checked.ok ? { width: checked.width, height: checked.height } : null;
  }

  /** The custom size as typed, for showing code while it is not valid yet. */
  typed() {
    return { width: Number(this.width.value) || 0, height: Number(this.height.value) || 0 };
  }

  /** Why the size cannot be sent, or null. */
  problem() {
    if (this.selected !== "custom") return null;
    const checked = checkCustomSize(this.width.value, this.height.value);
    return checked.ok ? null : checked;
  }

  set(value) {
    if (value && typeof value === "object") {
      this.width.value = value.width;
      this.height.value = value.height;
      value = "custom";
    }
    const radio = this.options.querySelector(`input[value="${CSS.escape(value || "auto")}"]`);
    if (radio) radio.checked = true;
    this.changed();
  }

  /** Show what "auto" will give, from the first reference's pixel size (null: unknown). */
  setFirstReference(size) {
    if (!size) {
      this.autoPixels.textContent = "from reference 1";
      return;
    }
    const auto = autoSize(size.width, size.height);
    this.autoPixels.textContent = `≈ ${auto.width} × ${auto.height}`;
  }

  changed() {
    const isCustom = this.selected === "custom";
    this.custom.hidden = !isCustom;
    this.width.removeAttribute("aria-invalid");
    this.height.removeAttribute("aria-invalid");
    this.check.classList.remove("bad");
    if (isCustom) {
      const checked = checkCustomSize(this.width.value, this.height.value);
      if (checked.ok) {
        this.check.textContent = checked.rounded
          ? `Will be ${checked.width} × ${checked.height} (rounded down to multiples of 16).`
          : `Will be ${checked.width} × ${checked.height}.`;
      } else {
        this.check.textContent = checked.message;
        this.check.classList.add("bad");
        for (const input of checked.field === "width" ? [this.width] : checked.field === "height" ? [this.height] : [this.width, this.height]) {
          input.setAttribute("aria-invalid", "true");
        }
      }
    }
    this.onChange();
  }
}
