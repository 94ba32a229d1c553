// Words for people. The API's messages name a reference by its field, "image_urls[0]", counted
// from 0; people count references from 1. The API's `field` and `index` stay as they are.

const FIELD = /image_urls\[(\d+)\]/g;
// The subject that starts a message about one reference: "image_urls[1] (host/…/cat.png)".
const SUBJECT = /^image_urls\[\d+\](?:\s*\((?:[^()]|\([^()]*\))*\))?\s*:?\s*/;

/** "image_urls[1] (…/cat.png) could not be fetched" -> "Reference 2 (…/cat.png) could not be fetched". */
export function forPeople(message) {
  return String(message ?? "").replace(FIELD, (_, n, offset) => `${offset === 0 ? "R" : "r"}eference ${Number(n) + 1}`);
}

/** A message about reference `n` (1-based), led by its name: "Reference 2 (cat.png): could not be fetched…". */
export function aboutReference(n, label, message) {
  return `Reference ${n} (${label}): ${forPeople(String(message ?? "").replace(SUBJECT, ""))}`;
}
