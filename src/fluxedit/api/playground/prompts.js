// Example prompts to start from: one click puts one in the prompt box.

import { h } from "./dom.js";

export const EXAMPLE_PROMPTS = [
  ["Hat swap", "Put the hat from image 2 on the person in image 1, matching the light of image 1"],
  ["Night", "Make it night: a clear sky with stars, warm light in the windows, everything else unchanged"],
  ["Watercolor", "Repaint image 1 as a loose watercolor on rough paper, keeping its composition"],
  ["New background", "Replace the background of image 1 with a beach at sunset; keep the subject as it is"],
  ["Product shot", "Place the object from image 1 on a white marble table in soft studio light"],
];

/** Fill `container` with one button per example; choosing one sets `textarea` and says so by an input event. */
export function renderExamplePrompts(container, textarea) {
  container.replaceChildren(
    h("span", { class: "examples-label", id: "examples-label" }, "Try:"),
    ...EXAMPLE_PROMPTS.map(([name, prompt]) => h("button", {
      type: "button", class: "chip", title: prompt, "aria-describedby": "examples-label",
      onclick: () => {
        textarea.value = prompt;
        textarea.dispatchEvent(new Event("input", { bubbles: true }));
        textarea.focus();
      },
    }, name)));
}
