// Output sizes: the presets and rules come from the server's own schema (/openapi.json,
// EditInput.image_size: its enum, x-presets and x-size-rules), so the form checks them
// live by exactly the rules the server applies. `setSizeRules` fills these bindings.

export let PRESETS = [];
export let MULTIPLE = 16;
export let MIN_SIDE = 64;
export let MAX_SIDE = 65536;
export let MAX_PIXELS = 4 * 1024 * 1024;
let AUTO_PIXELS = 1024 * 1024;

/** "portrait_4_3" -> "Portrait 4:3", "square_hd" -> "Square HD". */
function presetLabel(id) {
  const words = id.split("_");
  const name = words.filter((w) => !/^\d+$/.test(w)).map((w) => (w === "hd" ? "HD" : w[0].toUpperCase() + w.slice(1)));
  const ratio = words.filter((w) => /^\d+$/.test(w)).join(":");
  return [...name, ratio].filter(Boolean).join(" ");
}

/** Take the size presets and rules from the server's OpenAPI schema (see Api.openapi). */
export function setSizeRules(openapi) {
  const field = openapi.components.schemas.EditInput.properties.image_size;
  const names = field.oneOf.find((branch) => Array.isArray(branch.enum)).enum;
  const presets = field["x-presets"];
  PRESETS = names.filter((id) => presets[id]).map((id) => ({ id, label: presetLabel(id), ...presets[id] }));
  const rules = field["x-size-rules"];
  ({ multiple: MULTIPLE, min_side: MIN_SIDE, max_side: MAX_SIDE, max_pixels: MAX_PIXELS, auto_pixels: AUTO_PIXELS } = rules);
}

// Python's round() rounds halves to even; match it so "auto" shows what the server makes.
function roundHalfEven(x) {
  const floor = Math.floor(x);
  const diff = x - floor;
  if (diff > 0.5) return floor + 1;
  if (diff < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}

/** The first reference's aspect ratio at about one megapixel, sides multiples of 16. */
export function autoSize(width, height) {
  const aspect = width / height;
  const w = Math.sqrt(AUTO_PIXELS * aspect);
  const h = w / aspect;
  return {
    width: Math.max(MIN_SIDE, roundHalfEven(w / MULTIPLE) * MULTIPLE),
    height: Math.max(MIN_SIDE, roundHalfEven(h / MULTIPLE) * MULTIPLE),
  };
}

/**
 * Check a custom size as typed. Returns {ok: true, width, height} (rounded down to multiples
 * of 16) or {ok: false, field, message}.
 */
export function checkCustomSize(widthText, heightText) {
  const sides = {};
  for (const [name, text] of [["width", widthText], ["height", heightText]]) {
    const value = String(text).trim();
    if (!/^\d+$/.test(value)) {
      return { ok: false, field: name, message: `Enter the ${name} as a whole number of pixels.` };
    }
    const side = Number(value);
    if (side < MIN_SIDE) {
      return { ok: false, field: name, message: `The ${name} is ${side}; each side must be at least ${MIN_SIDE} pixels.` };
    }
    if (side > MAX_SIDE) {
      return { ok: false, field: name, message: `The ${name} is ${side}; each side must be at most ${MAX_SIDE} pixels.` };
    }
    sides[name] = side;
  }
  const width = sides.width - (sides.width % MULTIPLE);
  const height = sides.height - (sides.height % MULTIPLE);
  if (width * height > MAX_PIXELS) {
    const mp = ((width * height) / 1e6).toFixed(1);
    const square = Math.floor(Math.sqrt(MAX_PIXELS) / MULTIPLE) * MULTIPLE;
    return {
      ok: false,
      field: "size",
      message: `${width} × ${height} is ${mp} megapixels; at most ${(MAX_PIXELS / 1e6).toFixed(1)} megapixels (${MAX_PIXELS.toLocaleString("en")} pixels, e.g. ${square} × ${square}) are allowed.`,
    };
  }
  return { ok: true, width, height, rounded: width !== sides.width || height !== sides.height };
}
