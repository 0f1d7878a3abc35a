/**
 * Owns the primitives for reading configuration from environment variables
 * with zod: empty string = unset, defaults stated in the schema, and every
 * problem collected into one error that names the variable.
 */
import { z } from "zod";

const unsetIfEmpty = (v: unknown) => (typeof v === "string" && v.trim() === "" ? undefined : v);

const integer = (min: number, max: number) => z.coerce.number().int().min(min).max(max);

/** An integer in [min, max] with a default. */
export function int(min: number, max: number, fallback: number) {
  return z.preprocess(unsetIfEmpty, integer(min, max).default(fallback));
}

/** An integer in [min, max], or undefined when unset. */
export function optionalInt(min: number, max: number) {
  return z.preprocess(unsetIfEmpty, integer(min, max).optional());
}

export function bool(fallback: boolean) {
  return z.preprocess(
    unsetIfEmpty,
    z.enum(["true", "false", "1", "0", "yes", "no"]).optional().transform((v) =>
      v === undefined ? fallback : ["true", "1", "yes"].includes(v)
    ),
  );
}

/** A string with a default. */
export function text(fallback: string) {
  return z.preprocess(unsetIfEmpty, z.string().default(fallback));
}

/** A string, or undefined when unset. */
export function optionalText() {
  return z.preprocess(unsetIfEmpty, z.string().optional());
}

export function url() {
  return z.preprocess(unsetIfEmpty, z.url().optional());
}

export function oneOf<const T extends readonly [string, ...string[]]>(
  values: T,
  fallback: T[number],
) {
  return z.preprocess(unsetIfEmpty, z.enum(values).default(fallback as never));
}

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`invalid configuration:\n  - ${problems.join("\n  - ")}`);
    this.name = "ConfigError";
  }
}

/** The problems zod found, each naming its variable. */
export function problemsOf(error: z.ZodError): string[] {
  return error.issues.map((i) => `${i.path.join(".")}: ${i.message}`);
}

export function isLoopback(hostname: string): boolean {
  const h = hostname.replace(/^\[|\]$/g, "");
  // An IPv4 literal in 127.0.0.0/8, not any name that starts with "127."
  // (127.0.0.1.nip.io resolves wherever its owner likes).
  return h === "localhost" || h === "::1" || /^127(\.\d{1,3}){3}$/.test(h);
}

/** An outbound URL setting: https://, or plain http:// only to a loopback host (dev, tests). */
export function secureUrl() {
  return z.preprocess(
    unsetIfEmpty,
    z.url().refine((v) => webUrlProblem(v) === undefined, {
      error: (issue) => webUrlProblem(String(issue.input)) ?? "not an outbound URL",
    }).optional(),
  );
}

/**
 * The keys that authenticate the service role: SUPABASE_SERVICE_ROLE_KEY and
 * SUPABASE_SECRET_KEYS (on hosted projects a JSON object of name → key; a
 * comma-separated list is accepted too).
 */
export function serviceKeysFrom(
  serviceRoleKey: string | undefined,
  secretKeys: string | undefined,
  problems: string[],
): string[] {
  const keys = serviceRoleKey ? [serviceRoleKey] : [];
  const raw = secretKeys?.trim();
  if (!raw) return keys;
  if (!raw.startsWith("{")) {
    return [
      ...keys,
      ...raw.split(",").map((s) => s.trim()).filter(Boolean),
    ];
  }
  try {
    const obj = JSON.parse(raw) as Record<string, unknown>;
    return [
      ...keys,
      ...Object.values(obj).filter((v): v is string => typeof v === "string" && v !== ""),
    ];
  } catch {
    problems.push("SUPABASE_SECRET_KEYS: not valid JSON");
    return keys;
  }
}

/**
 * Why `raw` may not be an outbound URL, or undefined when it may: `https://`,
 * or plain `http://` only to a loopback host (the local stand-ins).
 */
export function webUrlProblem(raw: string): string | undefined {
  let parsed: URL;
  try {
    parsed = new URL(raw);
  } catch {
    return `not a URL: ${JSON.stringify(raw.slice(0, 200))}`;
  }
  if (parsed.username || parsed.password) return "must not carry credentials (user:password@)";
  if (parsed.protocol === "https:") return undefined;
  if (parsed.protocol === "http:" && isLoopback(parsed.hostname)) return undefined;
  return "must be https://, or http:// to a loopback host";
}
