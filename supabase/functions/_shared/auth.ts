/**
 * Owns who is calling, from the headers alone. User mode: a Supabase user
 * JWT verified here (JWKS for ES256/RS256, cached by jose; the legacy HS256
 * secret for older projects), with the project's issuer and an `exp`
 * required. Service mode: the service-role key or a secret API key, compared
 * in constant time. Nothing is read from a token before it is verified.
 */
import { createRemoteJWKSet, type JWTPayload, jwtVerify } from "jose";
import { AgentError } from "./errors.ts";
import { isUuid } from "./ids.ts";

export type Caller =
  | { mode: "user"; userId: string }
  | { mode: "service" };

export interface AuthOptions {
  jwksUrl: string | undefined;
  jwtSecret: string | undefined;
  serviceKeys: string[];
  /** Expected `iss` of user tokens: the project's Auth URL (`SUPABASE_URL/auth/v1`). */
  issuer: string;
  /** Expected `aud` of user tokens. */
  audience?: string;
}

const encoder = new TextEncoder();

/** Constant-time comparison of two secrets (length leaks, content does not). */
export function secretsEqual(a: string, b: string): boolean {
  const x = encoder.encode(a);
  const y = encoder.encode(b);
  let diff = x.length ^ y.length;
  for (let i = 0; i < Math.max(x.length, y.length); i++) diff |= (x[i] ?? 0) ^ (y[i] ?? 0);
  return diff === 0;
}

type Verify = (token: string) => Promise<JWTPayload>;

/** Verifies a user token with the key its algorithm names; claims are read only after. */
function createVerifier(options: AuthOptions): Verify {
  const jwks = options.jwksUrl
    ? createRemoteJWKSet(new URL(options.jwksUrl), {
      cacheMaxAge: 10 * 60_000,
      cooldownDuration: 30_000,
    })
    : undefined;
  const hmacKey = options.jwtSecret ? encoder.encode(options.jwtSecret) : undefined;
  const claims = {
    audience: options.audience ?? "authenticated",
    issuer: options.issuer,
    requiredClaims: ["exp", "sub"],
    clockTolerance: 5,
  };
  return async (token) => {
    const alg = algorithmOf(token);
    try {
      if (alg === "HS256" && hmacKey) {
        return (await jwtVerify(token, hmacKey, { ...claims, algorithms: ["HS256"] })).payload;
      }
      if (alg !== "HS256" && jwks) {
        return (await jwtVerify(token, jwks, { ...claims, algorithms: ["ES256", "RS256"] }))
          .payload;
      }
    } catch (error) {
      throw verificationError(error);
    }
    throw new AgentError("unauthorized", "invalid token");
  };
}

function algorithmOf(token: string): string {
  const header = token.split(".")[0] ?? "";
  try {
    return String(JSON.parse(atob(header.replace(/-/g, "+").replace(/_/g, "/"))).alg ?? "");
  } catch {
    throw new AgentError("unauthorized", "invalid token");
  }
}

function verificationError(error: unknown): AgentError {
  const code = (error as { code?: string }).code ?? "";
  if (code === "ERR_JWT_EXPIRED") return new AgentError("unauthorized", "token expired");
  if (code === "ERR_JWKS_TIMEOUT" || error instanceof TypeError) {
    return new AgentError("internal_error", "could not verify the token now", {
      detail: String(error),
    });
  }
  return new AgentError("unauthorized", "invalid token");
}

/**
 * Verified user tokens, until they expire (at most 5 minutes): a client
 * sends the same token with every request, and an ES256 verification costs
 * more CPU than the rest of the request's own work. Only tokens that passed
 * verification are cached, so a forged one is never looked up here.
 */
function createTokenCache(maxEntries = 10_000) {
  const verified = new Map<string, { userId: string; until: number }>();
  return {
    get(token: string): string | undefined {
      const hit = verified.get(token);
      if (hit && hit.until > Date.now()) return hit.userId;
      if (hit) verified.delete(token);
      return undefined;
    },
    set(token: string, userId: string, exp: number) {
      const until = Math.min(exp * 1000, Date.now() + 5 * 60_000);
      if (until <= Date.now()) return;
      if (verified.size >= maxEntries) verified.delete(verified.keys().next().value!);
      verified.set(token, { userId, until });
    },
  };
}

export function createAuthenticator(options: AuthOptions) {
  const verify = createVerifier(options);
  const cache = createTokenCache();
  const isServiceKey = (token: string) => {
    let match = false;
    for (const key of options.serviceKeys) match = secretsEqual(token, key) || match;
    return match;
  };
  return async function authenticate(headers: Headers): Promise<Caller> {
    const bearer = /^Bearer\s+(\S+)$/i.exec(headers.get("authorization") ?? "")?.[1];
    const apikey = headers.get("apikey") ?? undefined;
    if (bearer ? isServiceKey(bearer) : apikey !== undefined && isServiceKey(apikey)) {
      return { mode: "service" };
    }
    if (!bearer) throw new AgentError("unauthorized", "missing Authorization header");
    const cached = cache.get(bearer);
    if (cached) return { mode: "user", userId: cached };
    const payload = await verify(bearer);
    if (payload.role === "service_role") return { mode: "service" };
    if (payload.role !== "authenticated" || !isUuid(payload.sub)) {
      throw new AgentError("unauthorized", "token is not a signed-in user's");
    }
    const userId = payload.sub.toLowerCase();
    cache.set(bearer, userId, payload.exp!);
    return { mode: "user", userId };
  };
}
