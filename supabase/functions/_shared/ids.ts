/**
 * Owns the one UUID rule for tokens, bodies and paths: any 8-4-4-4-12 hex
 * string (what Supabase issues, whatever its version bits), compared lowercase.
 */
export const UUID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export function isUuid(value: unknown): value is string {
  return typeof value === "string" && UUID_PATTERN.test(value);
}
