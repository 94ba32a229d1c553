// Output sizes, the same table and rules as fluxedit/sizes.py, so the form can check them live.

export const PRESETS = [
  { id: "square_hd", label: "Square HD", width: 1024, height: 1024 },
  { id: "square", label: "Square", width: 512, height: 512 },
  { id: "portrait_4_3", label: "Portrait 4:3", width: 768, height: 1024 },
  { id: "portrait_16_9", label: "Portrait 16:9", width: 576, height: 1024 },
  { id: "landscape_4_3", label: "Landscape 4:3", width: 1024, height: 768 },
  { id: "landscape_16_9", label: "Landscape 16:9", width: 1024, height: 576 },
];

export const MULTIPLE = 16;
export const MIN_SIDE = 64;
export const MAX_SIDE = 65536;
export const MAX_PIXELS = 4 * 1024 * 1024;
const AUTO_PIXELS = 1024 * 1024;

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
    return {
      ok: false,
      field: "size",
      message: `${width} × ${height} is ${mp} megapixels; at most 4.2 megapixels (${MAX_PIXELS.toLocaleString("en")} pixels, e.g. 2048 × 2048) are allowed.`,
    };
  }
  return { ok: true, width, height, rounded: width !== sides.width || height !== sides.height };
}
