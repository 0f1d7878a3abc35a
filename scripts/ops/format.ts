/** Plain-text tables for the operator CLI. */

/**
 * Caller text made inert for a terminal: C0 and C1 control characters (ESC
 * starts the sequences that recolour, retitle or rewrite a terminal), DEL
 * and the bidirectional overrides that reorder what is shown are printed as
 * escapes (`\x1b`, `\u202e`), never sent as they are.
 */
export function inert(text: string): string {
  return text.replace(
    // deno-lint-ignore no-control-regex -- matching control characters is the point
    /[\u0000-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069]/g,
    (c) => {
      const code = c.charCodeAt(0);
      return code <= 0xff ? `\\x${code.toString(16).padStart(2, "0")}` : `\\u${code.toString(16)}`;
    },
  );
}

/** JSON whose control and bidi characters are `\\u` escapes (the same value, inert on a terminal). */
export function inertJson(value: unknown): string {
  return JSON.stringify(value, null, 2).replace(
    /[\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`,
  );
}

export function cell(value: unknown): string {
  if (value === null || value === undefined) return "";
  if (value instanceof Date) return value.toISOString().replace(".000Z", "Z");
  if (typeof value === "object") return inert(JSON.stringify(value));
  return inert(String(value));
}

export function table(rows: Array<Record<string, unknown>>, columns?: string[]): string {
  if (rows.length === 0) return "(no rows)";
  const cols = columns ?? Object.keys(rows[0]!);
  const cells = rows.map((r) => cols.map((c) => cell(r[c])));
  const widths = cols.map((c, i) =>
    Math.min(60, Math.max(c.length, ...cells.map((r) => r[i]!.length)))
  );
  const line = (values: string[]) =>
    values.map((
      v,
      i,
    ) => (v.length > widths[i]! ? v.slice(0, widths[i]! - 1) + "…" : v.padEnd(widths[i]!))).join(
      "  ",
    )
      .trimEnd();
  return [line(cols.map(inert)), line(widths.map((w) => "-".repeat(w))), ...cells.map(line)].join(
    "\n",
  );
}
