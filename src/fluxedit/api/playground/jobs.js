// A run: one submitted request, followed on its event stream (polled if that breaks) until it ends,
// with its state, progress, time and Cancel.

import { h, sleep, formatSeconds, STATE_LABELS, isFinished } from "./dom.js";
import { forPeople } from "./words.js";

const POLL_MS = 400;
const PHASES = {
  fetching: "reading the references",
  loading: "loading the model",
  denoising: "denoising",
  encoding: "saving the result",
};

function queueText(position) {
  if (position == null) return "waiting for a worker";
  if (position === 0) return "next up";
  return `${position} ${position === 1 ? "job" : "jobs"} ahead`;
}

export class Run {
  /**
   * @param {object} o
   * @param {import("./api.js").Api} o.api
   * @param {string} o.requestId
   * @param {string} o.modelId
   * @param {number} [o.startedAt] ms since epoch; the local submit time, or the server's created_at
   * @param {(result: object) => void} o.onCompleted
   * @param {(status: object) => void} o.onFinished any end state, after onCompleted
   * @param {(error: Error) => boolean} o.onApiError true when handled (e.g. 401)
   */
  constructor({ api, requestId, modelId, startedAt, onCompleted, onFinished, onApiError, onDismiss, onState }) {
    Object.assign(this, { api, requestId, modelId, onCompleted, onFinished, onApiError, onDismiss, onState });
    this.startedAt = startedAt ?? Date.now();
    this.state = "in_queue";
    this.stopped = false;
    this.el = this.build();
  }

  build() {
    this.stateEl = h("span", { class: "badge state-in_queue job-state" }, STATE_LABELS.in_queue);
    this.detailEl = h("span", { class: "job-detail" }, "submitted");
    this.stepEl = h("span", { class: "job-step" });
    this.fill = h("div", { class: "bar-fill" });
    this.bar = h("div", {
      class: "bar indeterminate", role: "progressbar", "aria-label": `Progress of request ${this.requestId}`,
      "aria-valuemin": "0", "aria-valuemax": "1", "aria-valuenow": "0",
    }, this.fill);
    this.elapsedEl = h("span", { class: "job-elapsed" }, "Elapsed 0.0 s");
    this.messageEl = h("p", { class: "job-message", role: "status" });
    this.cancelButton = h("button", { type: "button", class: "secondary danger job-cancel", onclick: () => this.cancel() }, "Cancel");
    this.dismissButton = h("button", {
      type: "button", class: "icon ghost job-dismiss", hidden: true, "aria-label": `Dismiss request ${this.requestId}`,
      title: "Dismiss", onclick: () => this.onDismiss?.(this),
    }, "✕");
    return h("li", { class: "job", dataset: { requestId: this.requestId } },
      h("div", { class: "job-head" },
        this.stateEl,
        h("span", { class: "job-id", title: `Request ${this.requestId}` }, "Request ", h("code", { class: "request-id id" }, this.requestId)),
        this.dismissButton),
      h("div", { class: "job-line" }, this.detailEl, this.stepEl),
      this.bar,
      h("div", { class: "job-foot" }, this.elapsedEl, this.cancelButton),
      this.messageEl);
  }

  start() {
    this.tick = setInterval(() => this.showElapsed(), 100);
    this.follow();
    return this;
  }

  /** The stream tells each change as it happens; polling takes over if it cannot be had or breaks. */
  async follow() {
    let ended = null;
    try {
      await this.api.stream(this.requestId, (kind, body) => {
        this.messageEl.textContent = "";
        this.update(body);
        if (kind === "result") ended = body;
      });
    } catch (error) {
      if (this.onApiError(error)) {
        this.messageEl.textContent = "Paused: the server did not accept the API key.";
        this.stopPolling();
        return;
      }
    }
    if (this.stopped) return;
    if (ended) await this.finish(ended, ended);
    else this.poll();
  }

  showElapsed(seconds = (Date.now() - this.startedAt) / 1000) {
    this.elapsedEl.textContent = `${isFinished(this.state) ? "Took" : "Elapsed"} ${formatSeconds(Math.max(0, seconds))}`;
  }

  async poll() {
    while (!this.stopped) {
      try {
        const status = await this.api.status(this.requestId);
        this.messageEl.textContent = "";
        this.update(status);
        if (isFinished(status.status)) {
          await this.finish(status);
          return;
        }
      } catch (error) {
        if (this.onApiError(error)) {
          this.messageEl.textContent = "Paused: the server did not accept the API key.";
          this.stopPolling();
          return;
        }
        this.messageEl.textContent = `Could not get the status (${error.message}); retrying…`;
      }
      await sleep(POLL_MS);
    }
  }

  update(status) {
    this.state = status.status;
    this.stateEl.textContent = STATE_LABELS[status.status] || status.status;
    this.stateEl.className = `badge state-${status.status} job-state`;
    this.el.dataset.state = status.status;
    this.onState?.(status.status);
    const progress = status.progress;
    if (progress && progress.total > 0) {
      this.bar.classList.remove("indeterminate");
      this.bar.setAttribute("aria-valuemax", String(progress.total));
      this.bar.setAttribute("aria-valuenow", String(progress.step));
      this.bar.setAttribute("aria-valuetext", `step ${progress.step} of ${progress.total}`);
      this.fill.style.width = `${(100 * progress.step) / progress.total}%`;
      this.stepEl.textContent = `step ${progress.step} of ${progress.total}`;
    }
    switch (status.status) {
      case "in_queue":
        this.detailEl.textContent = queueText(status.queue_position);
        break;
      case "in_progress":
        this.detailEl.textContent = status.cancel_requested
          ? "cancelling: it stops at its next step"
          : PHASES[status.phase] ?? (progress ? "denoising" : "starting");
        break;
      case "completed":
        this.detailEl.textContent = "done";
        break;
      case "failed":
        this.detailEl.textContent = status.error ? forPeople(status.error.message) : "the job failed";
        break;
      case "cancelled":
        this.detailEl.textContent = "cancelled on request";
        break;
      default:
        this.detailEl.textContent = "";
    }
    if (isFinished(status.status)) {
      this.bar.classList.remove("indeterminate");
      this.el.classList.add("finished");
      this.cancelButton.hidden = true;
      this.dismissButton.hidden = false;
      const created = Date.parse(status.created_at);
      const finished = Date.parse(status.finished_at);
      this.showElapsed(Number.isFinite(created) && Number.isFinite(finished) ? (finished - created) / 1000 : undefined);
    }
  }

  async finish(status, result = null) {
    this.stopPolling();
    if (status.status === "completed") {
      try {
        this.onCompleted(result ?? (await this.api.result(this.requestId)));
      } catch (error) {
        if (!this.onApiError(error)) this.messageEl.textContent = `Could not get the result: ${error.message}`;
      }
    }
    this.onFinished(status);
  }

  stopPolling() {
    this.stopped = true;
    clearInterval(this.tick);
    if (!isFinished(this.state)) this.showElapsed();
  }

  async cancel() {
    this.cancelButton.disabled = true;
    this.messageEl.textContent = "Cancelling…";
    try {
      const status = await this.api.cancel(this.requestId);
      if (status?.status) this.update(status);
      this.messageEl.textContent = "";
    } catch (error) {
      if (!this.onApiError(error)) this.messageEl.textContent = `Could not cancel: ${error.message}`;
      this.cancelButton.disabled = false;
    }
  }
}
