/**
 * Owns the rule for text Postgres can store: well-formed UTF-16 (no unpaired
 * surrogate, which jsonb and text refuse) and no NUL character.
 */

export function isStorable(text: string): boolean {
  return text.isWellFormed() && !text.includes("\0");
}

/** The path of the first string (key or value) Postgres could not store, if any. */
export function findUnstorable(value: unknown, path = "body"): string | undefined {
  if (typeof value === "string") return isStorable(value) ? undefined : path;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const found = findUnstorable(value[i], `${path}.${i}`);
      if (found) return found;
    }
    return undefined;
  }
  if (value !== null && typeof value === "object") {
    for (const [k, v] of Object.entries(value)) {
      if (!isStorable(k)) return `${path} (a key)`;
      const found = findUnstorable(v, `${path}.${k}`);
      if (found) return found;
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
