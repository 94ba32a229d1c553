// History: this key's recent requests; choosing one restores its inputs and result.

import { h, relativeTime, STATE_LABELS } from "./dom.js";
import { forPeople } from "./words.js";

const PAGE = 12;
const REFERENCE_THUMBS = 4; // then "+N"

export class History {
  /**
   * @param {(entry: object) => void} o.onSelect
   * @param {(error: Error) => boolean} o.onApiError true when handled (e.g. 401)
   */
  constructor({ api, root, onSelect, onApiError }) {
    Object.assign(this, { api, onSelect, onApiError });
    this.list = root.querySelector("#history-list");
    this.more = root.querySelector("#history-more");
    this.message = root.querySelector("#history-message");
    this.cursor = null;
    this.entries = [];
    root.querySelector("#history-refresh").addEventListener("click", () => this.refresh());
    this.more.addEventListener("click", () => this.load(this.cursor));
  }

  refresh() {
    return this.load(null);
  }

  async load(cursor) {
    try {
      const page = await this.api.requests(PAGE, cursor);
      this.entries = cursor ? [...this.entries, ...page.requests] : page.requests;
      this.cursor = page.next_cursor;
      this.message.textContent = this.entries.length ? "" : "No requests yet with this key.";
      this.render();
    } catch (error) {
      if (!this.onApiError(error)) this.message.textContent = `Could not load the history: ${error.message}`;
    }
  }

  /** Keep an entry's badge in step with a run the page is watching. */
  setState(requestId, state) {
    const entry = this.entries.find((e) => e.request_id === requestId);
    if (!entry || entry.status === state) return;
    entry.status = state;
    const button = this.list.querySelector(`[data-request-id="${CSS.escape(requestId)}"]`);
    const badge = button?.querySelector(".badge");
    if (!badge) return;
    button.dataset.state = state;
    badge.className = `badge state-${state}`;
    badge.textContent = STATE_LABELS[state] || state;
  }

  clear(text = "") {
    this.entries = [];
    this.cursor = null;
    this.message.textContent = text;
    this.render();
  }

  render() {
    this.more.hidden = !this.cursor;
    this.list.replaceChildren(...this.entries.map((entry) => this.renderEntry(entry)));
  }

  renderEntry(entry) {
    const thumb = entry.output?.images?.[0];
    const prompt = entry.input?.prompt || "(no prompt)";
    const state = STATE_LABELS[entry.status] || entry.status;
    const reason = entry.status === "failed" && entry.error ? forPeople(entry.error.message) : null;
    return h("li", {},
      h("button", {
        type: "button", class: "history-item", dataset: { requestId: entry.request_id, state: entry.status },
        "aria-label": `${state}: ${prompt}${reason ? `. ${reason}` : ""}`, title: `Restore request ${entry.request_id}`,
        onclick: () => this.onSelect(entry),
      },
      thumb
        ? h("img", { class: "history-output", src: thumb, alt: "", loading: "lazy" })
        : h("span", { class: `history-thumb state-${entry.status}`, "aria-hidden": "true" }),
      h("span", { class: "history-text" },
        h("span", { class: "history-prompt" }, prompt),
        reason ? h("span", { class: "history-reason" }, reason) : null,
        this.renderReferences(entry.input?.image_urls || []),
        h("span", { class: "history-meta" },
          h("span", { class: `badge state-${entry.status}` }, state),
          h("span", {}, `${entry.model_id.split("/").slice(-2).join("/")} · ${relativeTime(entry.created_at)}`)))));
  }

  renderReferences(urls) {
    if (!urls.length) return null;
    const more = urls.length - REFERENCE_THUMBS;
    // Backgrounds, not <img>s: decoration beside the output thumbnail, the card's one image.
    const thumb = (url) => {
      const el = h("span", { class: "history-ref" });
      el.style.backgroundImage = `url(${JSON.stringify(url)})`;
      return el;
    };
    return h("span", { class: "history-refs", "aria-hidden": "true" },
      urls.slice(0, REFERENCE_THUMBS).map(thumb),
      more > 0 ? h("span", { class: "history-refs-more" }, `+${more}`) : null);
  }
}
