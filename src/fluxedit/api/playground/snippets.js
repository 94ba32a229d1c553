// "Show code": the curl command and the Python client call for exactly the current form.

import { modelPath } from "./api.js";

// Single quotes keep the shell from expanding anything; a quote inside becomes '\''.
function shellQuote(text) {
  return "'" + text.replaceAll("'", "'\\''") + "'";
}

/** @param {string} base the server's base URL; @param {object} input the body the form submits */
export function curlSnippet(base, modelId, input) {
  const url = `${base}/${modelPath(modelId || "MODEL_ID")}`;
  return [
    "# export FLUXEDIT_API_KEY=<your key> first",
    `curl -sS -X POST ${shellQuote(url)} \\`,
    '  -H "Authorization: Bearer $FLUXEDIT_API_KEY" \\',
    "  -H 'Content-Type: application/json' \\",
    `  -d ${shellQuote(JSON.stringify(input, null, 2))}`,
    "# then GET the status_url until it is completed, and the result_url for the images",
  ].join("\n");
}

// JSON strings, numbers and objects are valid Python literals as they are.
const py = (value) => JSON.stringify(value);

export function pythonSnippet(base, modelId, input) {
  const lines = [
    "import os",
    "",
    "from fluxedit import Client",
    "",
    `c = Client(${py(base)}, os.environ.get("FLUXEDIT_API_KEY"))`,  // None: a server that needs no key
    "images = c.edit(",
    `    ${py(modelId || "MODEL_ID")},`,
    `    prompt=${py(input.prompt)},`,
    "    image_urls=[",
    ...input.image_urls.map((url) => `        ${py(url)},`),
    "    ],",
    `    image_size=${py(input.image_size)},`,
    `    seed=${py(input.seed)},`,
    `    output_format=${py(input.output_format)},`,
  ];
  if (input.num_inference_steps != null) lines.push(`    num_inference_steps=${py(input.num_inference_steps)},`);
  if (input.guidance_scale != null) lines.push(`    guidance_scale=${py(input.guidance_scale)},`);
  const ext = input.output_format === "png" ? "png" : "jpg";
  lines.push(")", `images[0].save("edited.${ext}")`);
  return lines.join("\n");
}

/**
 * The "Show code" blocks, in order: {id, title, render(base, modelId, input)}. A client for
 * another wire face (fal's, Replicate's, BFL's) is one more entry here, rendered the same way.
 */
export const SNIPPETS = [
  { id: "curl", title: "curl", render: curlSnippet },
  { id: "python", title: "Python (fluxedit client)", render: pythonSnippet },
];
