// Reference images: uploads (file picker, drop, paste) and URLs, in order, at most 10.

import { h } from "./dom.js";
import { aboutReference, forPeople } from "./words.js";

export const MAX_REFERENCES = 10;
const DRAG_TYPE = "application/x-fluxedit-reference";

export function labelFor(url) {
  if (url.startsWith("data:")) return "data: URI";
  try {
    const parsed = new URL(url);
    const name = parsed.pathname.split("/").filter(Boolean).pop() || parsed.host;
    return decodeURIComponent(name);
  } catch {
    return url.slice(0, 40);
  }
}

function usableUrlProblem(url) {
  if (/^data:image\/[^;,]+;base64,/i.test(url)) return null;
  if (/^https?:\/\/[^/]/i.test(url)) return null;
  return "Use an http:// or https:// URL, or a data:image/...;base64 URI.";
}

let nextKey = 1;

export class References {
  /**
   * @param {object} o
   * @param {import("./api.js").Api} o.api
   * @param {(items: object[]) => void} o.onChange called after every change
   * @param {(error: Error) => void} o.onApiError for errors that are not about one reference (401, ...)
   */
  constructor({ api, root, onChange, onApiError }) {
    this.api = api;
    this.onChange = onChange;
    this.onApiError = onApiError;
    this.max = MAX_REFERENCES;
    /** @type {{key:number,url:string|null,preview:string,label:string,uploading:boolean,size:{width:number,height:number}|null,error:string|null}[]} */
    this.items = [];
    this.list = root.querySelector("#ref-list");
    this.count = root.querySelector("#ref-count");
    this.message = root.querySelector("#refs-error");
    this.fileInput = root.querySelector("#ref-files");
    this.dropzone = root.querySelector("#dropzone");
    this.urlInput = root.querySelector("#ref-url");
    this.wire(root);
    this.render();
  }

  wire(root) {
    root.querySelector("#ref-choose").addEventListener("click", () => this.fileInput.click());
    this.fileInput.addEventListener("change", () => {
      this.addFiles([...this.fileInput.files]);
      this.fileInput.value = "";
    });
    const addTypedUrl = () => {
      const url = this.urlInput.value.trim();
      if (!url) {
        this.say("Paste an image URL first.");
        this.urlInput.focus();
        return;
      }
      if (this.addUrl(url)) this.urlInput.value = "";
    };
    root.querySelector("#ref-url-add").addEventListener("click", addTypedUrl);
    this.urlInput.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.ctrlKey && !event.metaKey) {
        event.preventDefault(); // Enter adds the URL, it does not submit the edit
        addTypedUrl();
      }
    });
    for (const target of [this.dropzone, this.list]) {
      target.addEventListener("dragover", (event) => {
        event.preventDefault();
        this.dropzone.classList.add("dragging");
      });
      target.addEventListener("dragleave", () => this.dropzone.classList.remove("dragging"));
      target.addEventListener("drop", (event) => this.onDrop(event));
    }
  }

  onDrop(event) {
    event.preventDefault();
    this.dropzone.classList.remove("dragging");
    const data = event.dataTransfer;
    if (data.types.includes(DRAG_TYPE)) {
      const from = Number(data.getData(DRAG_TYPE));
      const over = event.target.closest?.("li.ref");
      const to = over ? Number(over.dataset.index) : this.items.length - 1;
      this.moveTo(from, to);
      return;
    }
    const files = [...data.files].filter((file) => file.type.startsWith("image/"));
    if (files.length) {
      this.addFiles(files);
      return;
    }
    const uri = (data.getData("text/uri-list") || data.getData("text/plain") || "").split("\n")[0].trim();
    if (uri) this.addUrl(uri);
    else this.say("Drop image files, or an image dragged from a web page.");
  }

  /** Show a message under the list (refusals, upload errors, API errors about references). */
  say(text) {
    this.message.textContent = text || "";
  }

  refuse(what) {
    this.say(`At most ${this.max} reference images: remove one to add another${what ? ` (${what} was not added)` : ""}.`);
  }

  setMax(max) {
    this.max = Math.max(1, Math.min(MAX_REFERENCES, max || MAX_REFERENCES));
    this.render();
  }

  get full() {
    return this.items.length >= this.max;
  }

  addFiles(files) {
    for (const file of files) {
      if (this.full) {
        this.refuse(`"${file.name}"`);
        break;
      }
      if (!file.type.startsWith("image/")) {
        this.say(`"${file.name}" is not an image file.`);
        continue;
      }
      this.upload(file);
    }
  }

  async upload(file) {
    const item = this.push({ url: null, preview: URL.createObjectURL(file), label: file.name, uploading: true });
    this.changed();
    try {
      const answer = await this.api.upload(file);
      item.url = answer.url;
      item.uploading = false;
    } catch (error) {
      this.items = this.items.filter((other) => other !== item);
      this.say(`Could not upload "${file.name}": ${error.message}`);
      if (error.status === 401) this.onApiError(error);
    }
    this.changed();
  }

  /** Add a URL reference; returns false (and says why) when it cannot be added. */
  addUrl(url, label = null) {
    const problem = usableUrlProblem(url);
    if (problem) {
      this.say(problem);
      return false;
    }
    if (this.full) {
      this.refuse(label ? `"${label}"` : "the URL");
      return false;
    }
    this.push({ url, preview: url, label: label || labelFor(url), uploading: false });
    this.changed();
    return true;
  }

  push(fields) {
    const item = { key: nextKey++, size: null, error: null, ...fields };
    this.items.push(item);
    this.say("");
    return item;
  }

  setUrls(urls) {
    this.items = urls.slice(0, MAX_REFERENCES).map((url) => ({
      key: nextKey++, url, preview: url, label: labelFor(url), uploading: false, size: null, error: null,
    }));
    this.say("");
    this.changed();
  }

  remove(index) {
    const [item] = this.items.splice(index, 1);
    if (item?.preview.startsWith("blob:")) URL.revokeObjectURL(item.preview);
    this.say("");
    this.changed();
    // Keep the keyboard where it was: the next item's remove button, or the file button.
    const next = this.list.querySelector(`li[data-index="${Math.min(index, this.items.length - 1)}"] .ref-remove`);
    (next || document.getElementById("ref-choose")).focus();
  }

  moveTo(from, to) {
    if (from === to || from < 0 || to < 0 || from >= this.items.length || to >= this.items.length) return;
    const [item] = this.items.splice(from, 1);
    this.items.splice(to, 0, item);
    this.changed();
  }

  move(index, delta, buttonClass) {
    const to = index + delta;
    this.moveTo(index, to);
    const button = this.list.querySelector(`li[data-index="${to}"] .${buttonClass}`);
    if (button && !button.disabled) button.focus();
    else this.list.querySelector(`li[data-index="${to}"] .ref-remove`)?.focus();
  }

  urls() {
    return this.items.filter((item) => item.url).map((item) => item.url);
  }

  get uploading() {
    return this.items.some((item) => item.uploading);
  }

  /** Mark the reference at `index` (0-based, as in image_urls) as the cause of `message`. */
  markError(index, message) {
    const item = this.items[index];
    if (item) item.error = message;
    this.say(item ? aboutReference(index + 1, item.label, message) : forPeople(message));
    this.render();
  }

  clearErrors() {
    for (const item of this.items) item.error = null;
    this.say("");
    this.render();
  }

  changed() {
    this.render();
    this.onChange(this.items);
  }

  render() {
    this.count.textContent = `${this.items.length} of ${this.max}`;
    this.dropzone.classList.toggle("full", this.full);
    this.list.replaceChildren(...this.items.map((item, index) => this.renderItem(item, index)));
    this.list.hidden = this.items.length === 0;
  }

  renderItem(item, index) {
    const n = index + 1;
    const img = h("img", { src: item.preview, alt: `Reference ${n}: ${item.label}`, draggable: "false" });
    img.addEventListener("load", () => {
      const size = { width: img.naturalWidth, height: img.naturalHeight };
      sizeText.textContent = `${size.width} × ${size.height}`;
      if (!item.size || item.size.width !== size.width || item.size.height !== size.height) {
        item.size = size;
        this.onChange(this.items);
      }
    });
    img.addEventListener("error", () => {
      img.classList.add("broken"); // no alt text spilling over the thumbnail
      sizeText.textContent = "preview unavailable";
    });
    const sizeText = h("span", { class: "ref-size" }, item.size ? `${item.size.width} × ${item.size.height}` : "");
    const li = h(
      "li",
      {
        class: `ref${item.error ? " has-error" : ""}${item.uploading ? " uploading" : ""}`,
        dataset: { index: String(index) },
        draggable: "true",
        "aria-invalid": item.error ? "true" : null,
        ondragstart: (event) => {
          event.dataTransfer.setData(DRAG_TYPE, String(index));
          event.dataTransfer.setData("text/uri-list", item.url || "");
          event.dataTransfer.effectAllowed = "move";
        },
      },
      h("div", { class: "ref-thumb" }, img, h("span", { class: "ref-number", "aria-hidden": "true" }, n),
        item.uploading ? h("span", { class: "ref-overlay" }, "Uploading…") : null,
        item.error ? h("span", { class: "ref-overlay error-overlay" }, "Problem") : null),
      h("div", { class: "ref-meta" },
        h("span", { class: "ref-label", title: item.url || item.label }, item.label),
        sizeText,
        index === 0 ? h("span", { class: "ref-first" }, 'sets "auto" size') : null),
      h("div", { class: "ref-actions" },
        h("button", {
          type: "button", class: "icon ref-earlier", "aria-label": `Move reference ${n} earlier`, title: "Move earlier",
          disabled: index === 0, onclick: () => this.move(index, -1, "ref-earlier"),
        }, "←"),
        h("button", {
          type: "button", class: "icon ref-later", "aria-label": `Move reference ${n} later`, title: "Move later",
          disabled: index === this.items.length - 1, onclick: () => this.move(index, 1, "ref-later"),
        }, "→"),
        h("button", {
          type: "button", class: "icon ref-remove", "aria-label": `Remove reference ${n}`, title: "Remove",
          onclick: () => this.remove(index),
        }, "✕")),
    );
    return li;
  }
}
