// The playground: wires the form, the runs, the result and the history to the public API.

import { Api } from "./api.js";
import { $, h, isFinished, reveal } from "./dom.js";
import { History } from "./history.js";
import { Run } from "./jobs.js";
import { renderExamplePrompts } from "./prompts.js";
import { References } from "./references.js";
import { ResultView } from "./result.js";
import { SizePicker } from "./sizepicker.js";
import { setSizeRules } from "./sizes.js";
import { SNIPPETS } from "./snippets.js";
import { forPeople } from "./words.js";

const KEY_STORAGE = "fluxedit.apiKey";
const MODEL_STORAGE = "fluxedit.model";
const KEEP_FINISHED_RUNS = 4;

// Where an error about each input field is shown (the element ids of the messages).
const ERROR_PLACES = {
  model: "model-error",
  model_id: "model-error",
  prompt: "prompt-error",
  image_urls: "refs-error",
  image_size: "size-error",
  seed: "seed-error",
  output_format: "output_format-error",
  num_inference_steps: "steps-error",
  guidance_scale: "guidance-error",
};
const ERROR_INPUTS = {
  model: "model", model_id: "model", prompt: "prompt", seed: "seed",
  num_inference_steps: "steps", guidance_scale: "guidance",
};

function storedKey() {
  try {
    return localStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return "";
  }
}

class Playground {
  /** @param {"key" | "none"} auth whether this server's API needs a key (from /healthz) */
  constructor(auth) {
    this.needsKey = auth !== "none";
    this.key = this.needsKey ? storedKey() : "";
    this.api = new Api(new URL(".", document.baseURI), () => this.key);
    this.models = [];
    this.runs = new Map();
    this.form = $("#edit-form");
    this.keyInput = $("#api-key");
    this.keyMessage = $("#key-message");
    this.modelSelect = $("#model");
    const onApiError = (error) => this.handleAuth(error);
    this.refs = new References({
      api: this.api, root: $("#refs"), onApiError,
      onChange: (items) => {
        this.sizes?.setFirstReference(items[0]?.size || null);
        this.updateCode();
      },
    });
    this.sizes = new SizePicker($("#size-field"), { onChange: () => this.updateCode() });
    this.result = new ResultView($("#result"), {
      onUseAsReference: (url, label) => {
        if (this.refs.addUrl(url, label)) this.announce("Added the result as a reference.");
        $("#refs").scrollIntoView({ behavior: "smooth", block: "nearest" });
      },
    });
    this.history = new History({ api: this.api, root: $("#history"), onApiError, onSelect: (entry) => this.restore(entry) });
    renderExamplePrompts($("#prompt-examples"), $("#prompt"));
    this.buildCodeBlocks();
    $("#key-form").hidden = !this.needsKey;
    $("#auth-note").hidden = this.needsKey;
    if (!this.needsKey) $("#code-hint").textContent = "Exactly the form above. This server needs no API key.";
    this.wire();
    // A key typed while the page was still loading wins over the stored one.
    if (!this.keyInput.value) this.keyInput.value = this.key;
    this.updateCode();
    this.connect();
  }

  wire() {
    $("#key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.setKey(this.keyInput.value.trim());
    });
    $("#key-forget").addEventListener("click", () => {
      this.keyInput.value = "";
      this.setKey("");
      this.keyInput.focus();
    });
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    this.form.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        this.form.requestSubmit();
      }
    });
    this.form.addEventListener("input", () => this.updateCode());
    this.form.addEventListener("change", () => this.updateCode());
    this.modelSelect.addEventListener("change", () => this.modelChanged());
    $("#seed-random").addEventListener("click", () => {
      $("#seed").value = String(crypto.getRandomValues(new Uint32Array(1))[0]);
      this.updateCode();
    });
    for (const button of document.querySelectorAll("button.copy")) {
      button.addEventListener("click", () => this.copy(button));
    }
    document.addEventListener("paste", (event) => {
      const files = [...(event.clipboardData?.files || [])].filter((file) => file.type.startsWith("image/"));
      if (files.length) {
        event.preventDefault();
        this.refs.addFiles(files);
      }
    });
    // The forms are handled now: their submit buttons start disabled in the HTML.
    for (const id of ["#key-save", "#submit"]) $(id).disabled = false;
  }

  announce(text) {
    $("#announcer").textContent = text;
  }

  // --- the key ----------------------------------------------------------------

  setKey(key) {
    // Runs and results belong to the key that made them.
    if (key !== this.key) {
      for (const run of [...this.runs.values()]) this.dismiss(run);
      this.result.clear();
    }
    this.key = key;
    try {
      if (key) localStorage.setItem(KEY_STORAGE, key);
      else localStorage.removeItem(KEY_STORAGE);
    } catch {
      // Storage can be off (private mode); the key then lasts for this page only.
    }
    this.keyInput.removeAttribute("aria-invalid");
    this.keyMessage.className = "key-message";
    if (key) this.keyMessage.textContent = "Checking the key…";
    this.connect(key ? "" : "Key forgotten. ");
  }

  /** Handles a 401 anywhere: ask for a key. Returns true when `error` was one. */
  handleAuth(error) {
    if (error?.status !== 401) return false;
    this.keyMessage.className = "key-message bad";
    // The server's sentence says what is wrong; ours says what to do.
    this.keyMessage.textContent = this.key
      ? `${error.message} Paste a valid API key.`
      : `${error.message} Paste your API key here (an operator creates one with "fluxedit keys create").`;
    this.keyInput.setAttribute("aria-invalid", "true");
    document.body.classList.add("needs-key");
    this.keyInput.focus();
    return true;
  }

  /** Where a key comes from, before anything was asked of the server: a greeting, not an error. */
  greet(prefix = "") {
    this.keyMessage.className = "key-message greet";
    this.keyMessage.replaceChildren(
      `${prefix}Paste your API key to start: `, h("code", {}, "fluxedit serve"),
      " prints one the first time it starts, and ", h("code", {}, "fluxedit keys create"), " makes more.");
  }

  async connect(greeting = "") {
    document.body.classList.remove("needs-key");
    if (this.needsKey && !this.key) {
      // Asking without a key would only earn a 401: say where a key comes from instead.
      this.setModels([]);
      this.history.clear("Your requests appear here once a key is in.");
      this.greet(greeting);
      return;
    }
    try {
      const answer = await this.api.models();
      this.setModels(answer.models);
      if (this.key) {
        this.keyMessage.className = "key-message ok";
        this.keyMessage.textContent = "Key accepted; it is kept in this browser only.";
      }
      this.history.refresh();
    } catch (error) {
      this.setModels([]);
      this.history.clear();
      if (!this.handleAuth(error)) {
        $("#model-error").textContent = `Could not list the models: ${error.message}`;
      }
    }
  }

  // --- the model ----------------------------------------------------------------

  setModels(models) {
    this.models = models;
    $("#model-error").textContent = "";
    const previous = this.modelSelect.value || localStorage.getItem(MODEL_STORAGE);
    if (!models.length) {
      this.modelSelect.replaceChildren(new Option(this.key ? "No models" : "Paste an API key to list the models", ""));
    } else {
      this.modelSelect.replaceChildren(...models.map((model) => new Option(model.id, model.id)));
      if (models.some((model) => model.id === previous)) this.modelSelect.value = previous;
    }
    this.modelChanged();
  }

  get model() {
    return this.models.find((model) => model.id === this.modelSelect.value) || null;
  }

  modelChanged() {
    const model = this.model;
    $("#model-info").textContent = model
      ? `${model.engine} · ${model.loaded ? "loaded" : "loads on first use"} · ${model.queued} queued · up to ${model.max_references} references`
      : "";
    if (model) {
      localStorage.setItem(MODEL_STORAGE, model.id);
      this.refs.setMax(model.max_references);
    }
    this.updateCode();
  }

  // --- the form -------------------------------------------------------------------

  /** The body the form submits, exactly as "Show code" shows it. */
  input() {
    const input = {
      prompt: $("#prompt").value,
      image_urls: this.refs.urls(),
      image_size: this.sizes.value() ?? this.sizes.typed(),
      seed: Number($("#seed").value || 0),
      output_format: this.form.querySelector("input[name=output_format]:checked").value,
    };
    const steps = $("#steps").value.trim();
    if (steps) input.num_inference_steps = Number(steps);
    const guidance = $("#guidance").value.trim();
    if (guidance) input.guidance_scale = Number(guidance);
    return input;
  }

  setInput(modelId, input) {
    if (modelId && this.models.some((model) => model.id === modelId)) {
      this.modelSelect.value = modelId;
      this.modelChanged();
    } else if (modelId) {
      $("#model-error").textContent = `This request used ${modelId}, which this server does not serve now.`;
    }
    $("#prompt").value = input.prompt ?? "";
    this.refs.setUrls(input.image_urls || []);
    this.sizes.set(input.image_size ?? "auto");
    $("#seed").value = String(input.seed ?? 0);
    const format = this.form.querySelector(`input[name=output_format][value="${input.output_format === "png" ? "png" : "jpeg"}"]`);
    format.checked = true;
    $("#steps").value = input.num_inference_steps ?? "";
    $("#guidance").value = input.guidance_scale ?? "";
    if (input.num_inference_steps != null || input.guidance_scale != null) $("#advanced").open = true;
    this.updateCode();
  }

  /** Problems the server would refuse anyway, found before sending: [{field, message}]. */
  localProblems(input) {
    const problems = [];
    if (!this.modelSelect.value) problems.push({ field: "model", message: "Choose a model (paste an API key first to list them)." });
    if (!input.prompt.trim()) problems.push({ field: "prompt", message: "Write a prompt: what should happen to the references?" });
    if (this.refs.uploading) problems.push({ field: "image_urls", message: "Wait until the uploads finish." });
    else if (!input.image_urls.length) problems.push({ field: "image_urls", message: "Add at least one reference image." });
    const size = this.sizes.problem();
    if (size) problems.push({ field: "image_size", message: size.message });
    const seed = $("#seed").value.trim();
    if (!/^\d+$/.test(seed) || !Number.isSafeInteger(Number(seed))) {
      problems.push({ field: "seed", message: "The seed is a whole number from 0 to 9007199254740991." });
    }
    const steps = $("#steps").value.trim();
    if (steps && !(/^\d+$/.test(steps) && Number(steps) >= 1 && Number(steps) <= 100)) {
      problems.push({ field: "num_inference_steps", message: "Steps is a whole number from 1 to 100, or empty for the model's default." });
    }
    return problems;
  }

  clearErrors() {
    for (const id of new Set(Object.values(ERROR_PLACES))) $(`#${id}`).textContent = "";
    $("#form-error").textContent = "";
    for (const el of this.form.querySelectorAll("[aria-invalid=true]")) {
      if (!el.closest("#custom-size")) el.removeAttribute("aria-invalid");
    }
    this.refs.clearErrors();
  }

  /** Show an error next to the input that caused it: `field` as in the API's errors, `index` in image_urls. */
  showError({ field, index, message }) {
    const name = (field || "").replace(/^body\./, "");
    const head = name.split(/[.[]/)[0];
    // The index comes as `index`, in the field ("image_urls[1]") or, from list checks, in the message.
    const indexIn = /^image_urls[.[](\d+)/.exec(name) || (head === "image_urls" && /^image_urls\[(\d+)\]/.exec(message));
    const refIndex = index ?? (indexIn ? Number(indexIn[1]) : null);
    if (refIndex != null || head === "image_urls") {
      if (refIndex != null) this.refs.markError(refIndex, message);
      else this.refs.say(forPeople(message));
      return $("#refs");
    }
    const place = ERROR_PLACES[head];
    if (!place) {
      $("#form-error").textContent = message;
      return null;
    }
    $(`#${place}`).textContent = message;
    const input = ERROR_INPUTS[head] ? $(`#${ERROR_INPUTS[head]}`) : null;
    input?.setAttribute("aria-invalid", "true");
    if (head === "num_inference_steps" || head === "guidance_scale") $("#advanced").open = true;
    return input || $(`#${place}`).closest("fieldset");
  }

  async submit() {
    this.clearErrors();
    const input = this.input();
    const problems = this.localProblems(input);
    if (problems.length) {
      const places = problems.map((problem) => this.showError(problem));
      places.find(Boolean)?.focus?.();
      return;
    }
    const modelId = this.modelSelect.value;
    const button = $("#submit");
    button.disabled = true;
    try {
      const answer = await this.api.submit(modelId, input);
      this.track(answer.request_id, modelId, { input });
      this.announce(`Submitted request ${answer.request_id}.`);
      this.history.refresh();
    } catch (error) {
      if (!this.handleAuth(error)) this.showError({ field: error.field, index: error.index, message: error.message });
    } finally {
      button.disabled = false;
    }
  }

  // --- runs --------------------------------------------------------------------------

  track(requestId, modelId, { input, startedAt } = {}) {
    if (this.runs.has(requestId)) return;
    const run = new Run({
      api: this.api, requestId, modelId, startedAt,
      onApiError: (error) => this.handleAuth(error),
      onCompleted: (result) => {
        // The newest run's result is brought into view; an older one's only replaces the image.
        this.result.show(result, { revealIt: requestId === this.newestRun });
        this.announce(`Request ${requestId} completed.`);
      },
      onFinished: (status) => this.runFinished(status, input),
      onDismiss: (done) => this.dismiss(done),
      onState: (state) => this.history.setState(requestId, state),
    });
    this.runs.set(requestId, run);
    this.newestRun = requestId;
    $("#runs-panel").hidden = false;
    $("#runs").prepend(run.el);
    run.start();
    // The submit button is low in the form: bring the new run and its progress into view.
    reveal(run.el);
  }

  runFinished(status, input) {
    if (status.status === "failed") {
      this.announce(`Request ${status.request_id} failed: ${forPeople(status.error?.message)}`);
      const sameReferences = input && JSON.stringify(input.image_urls) === JSON.stringify(this.refs.urls());
      if (status.error?.index != null && sameReferences) this.refs.markError(status.error.index, status.error.message);
      else this.result.showState(status);
    } else if (status.status === "cancelled") {
      this.announce(`Request ${status.request_id} was cancelled.`);
    }
    // Keep the last few finished runs on screen; older ones live in the history.
    const finished = [...this.runs.values()].filter((run) => isFinished(run.state));
    for (const run of finished.slice(0, Math.max(0, finished.length - KEEP_FINISHED_RUNS))) this.dismiss(run);
    this.history.refresh();
  }

  dismiss(run) {
    run.stopPolling();
    run.el.remove();
    this.runs.delete(run.requestId);
    $("#runs-panel").hidden = this.runs.size === 0;
  }

  // --- history -----------------------------------------------------------------------

  async restore(entry) {
    let full = entry;
    if (!full.input) {
      try {
        full = await this.api.result(entry.request_id);
      } catch (error) {
        if (!this.handleAuth(error)) $("#history-message").textContent = `Could not load the request: ${error.message}`;
        return;
      }
    }
    this.clearErrors();
    if (full.input) this.setInput(full.model_id, full.input);
    if (full.status === "completed") this.result.show(full);
    else if (!isFinished(full.status)) {
      this.track(full.request_id, full.model_id, { input: full.input, startedAt: Date.parse(full.created_at) });
    } else {
      this.result.showState(full);
      if (full.error?.index != null) this.refs.markError(full.error.index, full.error.message);
    }
    this.announce(`Restored request ${full.request_id}.`);
    $("#result-title").scrollIntoView({ behavior: "smooth", block: "nearest" });
  }

  // --- show code -----------------------------------------------------------------------

  buildCodeBlocks() {
    $("#code-blocks").replaceChildren(...SNIPPETS.map(({ id, title }) => h("div", { class: "code-block" },
      h("div", { class: "code-head" },
        h("h3", {}, title),
        h("button", { type: "button", class: "secondary small copy", dataset: { copy: `code-${id}` } }, "Copy")),
      h("pre", {}, h("code", { id: `code-${id}` })))));
  }

  updateCode() {
    if (!this.sizes) return;
    const input = this.input();
    for (const { id, render } of SNIPPETS) {
      $(`#code-${id}`).textContent = render(this.api.base, this.modelSelect.value, input);
    }
  }

  async copy(button) {
    const text = $(`#${button.dataset.copy}`).textContent;
    try {
      await navigator.clipboard.writeText(text);
      button.textContent = "Copied";
    } catch {
      // No clipboard access (not a secure context): select the text so Ctrl+C copies it.
      const range = document.createRange();
      range.selectNodeContents($(`#${button.dataset.copy}`));
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      button.textContent = "Selected: press Ctrl+C";
    }
    setTimeout(() => (button.textContent = "Copy"), 2000);
  }
}

// Before the form is built, and with no key: the size rules from the schema, and whether the
// server needs a key at all (so the first view never costs a 401).
const publicApi = new Api(new URL(".", document.baseURI), () => "");
const [schema, health] = await Promise.all([publicApi.openapi(), publicApi.health().catch(() => ({ auth: "key" }))]);
setSizeRules(schema);
new Playground(health.auth);
