// Tiny DOM helpers: build elements without innerHTML (no markup injection from API text).

/** h("button", {class: "x", onclick: f}, "text", child) */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value == null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (value === true) el.setAttribute(name, "");
    else el.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child == null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export const $ = (selector, root = document) => root.querySelector(selector);

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export function formatSeconds(seconds) {
  if (seconds == null || Number.isNaN(seconds)) return "–";
  return seconds < 10 ? `${seconds.toFixed(1)} s` : `${Math.round(seconds)} s`;
}

export function relativeTime(iso) {
  const then = new Date(iso);
  const seconds = (Date.now() - then.getTime()) / 1000;
  if (!Number.isFinite(seconds)) return "";
  if (seconds < 60) return "just now";
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return then.toLocaleDateString();
}

export const STATE_LABELS = {
  in_queue: "In queue",
  in_progress: "Running",
  completed: "Completed",
  failed: "Failed",
  cancelled: "Cancelled",
};

export const isFinished = (state) => state === "completed" || state === "failed" || state === "cancelled";

/** Scroll the least needed to show `el` whole (in its scrolling panel and in the window). */
export function reveal(el) {
  const still = matchMedia("(prefers-reduced-motion: reduce)").matches;
  el.scrollIntoView({ block: "nearest", inline: "nearest", behavior: still ? "auto" : "smooth" });
}

/** A path-like id ("blackforestlabs/flux-2/klein-4b/edit") that may break after a "/" only, never inside a part. */
export function idParts(id) {
  return String(id).split(/(?<=\/)/).flatMap((part, i) => [i ? h("wbr") : null, h("span", { class: "id-part" }, part)]);
}
