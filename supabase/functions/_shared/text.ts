/**
 * Owns the rule for text Postgres can store: well-formed UTF-16 (no unpaired
 * surrogate, which jsonb and text refuse) and no NUL character.
 */

export function isStorable(text: string): boolean {
  return text.isWellFormed() && !text.includes("\0");
}

/** JSON nested deeper than this is refused: no caller's body needs it, and walking it costs stack. */
export const MAX_JSON_DEPTH = 32;

/**
 * What is wrong with the first string (key or value) Postgres could not store,
 * or the first value nested deeper than MAX_JSON_DEPTH, with its path.
 * Iterative: a hostile body cannot exhaust the stack.
 */
export function findUnstorable(value: unknown, path = "body"): string | undefined {
  const unicode = "text must be valid Unicode without NUL characters";
  const pending: [unknown, string, number][] = [[value, path, 0]];
  while (pending.length > 0) {
    const [v, at, depth] = pending.pop()!;
    if (typeof v === "string") {
      if (!isStorable(v)) return `${at}: ${unicode}`;
      continue;
    }
    if (v === null || typeof v !== "object") continue;
    if (depth >= MAX_JSON_DEPTH) return `${at}: nested deeper than ${MAX_JSON_DEPTH} levels`;
    for (const [k, child] of Object.entries(v)) {
      if (!isStorable(k)) return `${at} (a key): ${unicode}`;
      pending.push([child, `${at}.${k}`, depth + 1]);
    }
  }
  return undefined;
}

/** A copy in which every string, keys included, can be stored (U+FFFD for what could not). */
export function storable<T>(value: T): T {
  if (typeof value === "string") {
    return (isStorable(value) ? value : value.toWellFormed().replaceAll("\0", "\uFFFD")) as T;
  }
  if (Array.isArray(value)) return value.map(storable) as T;
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(
      Object.entries(value).map(([k, v]) => [storable(k), storable(v)]),
    ) as T;
  }
  return value;
}
