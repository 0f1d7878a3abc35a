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
  /** Injected for tests; defaults to fetch. */
  fetchJwks?: (url: string) => Promise<Response>;
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

export function createAuthenticator(options: AuthOptions) {
  const jwks = options.jwksUrl
    ? createRemoteJWKSet(new URL(options.jwksUrl), {
      cacheMaxAge: 10 * 60_000,
      cooldownDuration: 30_000,
    })
    : undefined;
  const hmacKey = options.jwtSecret ? encoder.encode(options.jwtSecret) : undefined;
  const audience = options.audience ?? "authenticated";

  function isServiceKey(token: string): boolean {
    let match = false;
    for (const key of options.serviceKeys) match = secretsEqual(token, key) || match;
    return match;
  }

  async function verifyUserToken(token: string): Promise<JWTPayload> {
    const header = token.split(".")[0] ?? "";
    let alg = "";
    try {
      alg = JSON.parse(atob(header.replace(/-/g, "+").replace(/_/g, "/"))).alg ?? "";
    } catch {
      throw new AgentError("unauthorized", "invalid token");
    }
    // Only the algorithm picks the key; the claims are read after verification.
    const verifyOptions = {
      audience,
      issuer: options.issuer,
      requiredClaims: ["exp", "sub"],
      clockTolerance: 5,
    };
    try {
      if (alg === "HS256") {
        if (!hmacKey) throw new AgentError("unauthorized", "invalid token");
        return (await jwtVerify(token, hmacKey, { ...verifyOptions, algorithms: ["HS256"] }))
          .payload;
      }
      if (!jwks) throw new AgentError("unauthorized", "invalid token");
      return (await jwtVerify(token, jwks, { ...verifyOptions, algorithms: ["ES256", "RS256"] }))
        .payload;
    } catch (error) {
      if (error instanceof AgentError) throw error;
      const code = (error as { code?: string }).code ?? "";
      if (code === "ERR_JWT_EXPIRED") throw new AgentError("unauthorized", "token expired");
      if (code === "ERR_JWKS_TIMEOUT" || error instanceof TypeError) {
        throw new AgentError("internal_error", "could not verify the token now", {
          detail: String(error),
        });
      }
      throw new AgentError("unauthorized", "invalid token");
    }
  }

  // Verified user tokens, until they expire (at most 5 minutes): a client
  // sends the same token with every request, and an ES256 verification
  // costs more CPU than the rest of the request's own work. Only tokens that
  // passed verification are cached, so a forged one is never looked up here.
  const verified = new Map<string, { userId: string; until: number }>();
  const MAX_CACHED = 10_000;
  function remember(token: string, userId: string, exp: number) {
    const until = Math.min(exp * 1000, Date.now() + 5 * 60_000);
    if (until <= Date.now()) return;
    if (verified.size >= MAX_CACHED) verified.delete(verified.keys().next().value!);
    verified.set(token, { userId, until });
  }

  return async function authenticate(headers: Headers): Promise<Caller> {
    const authorization = headers.get("authorization") ?? "";
    const bearer = /^Bearer\s+(\S+)$/i.exec(authorization)?.[1];
    const apikey = headers.get("apikey") ?? undefined;
    if (!bearer && !apikey) throw new AgentError("unauthorized", "missing Authorization header");
    if (bearer && isServiceKey(bearer)) return { mode: "service" };
    if (!bearer && apikey && isServiceKey(apikey)) return { mode: "service" };
    if (!bearer) throw new AgentError("unauthorized", "missing Authorization header");
    const cached = verified.get(bearer);
    if (cached) {
      if (cached.until > Date.now()) return { mode: "user", userId: cached.userId };
      verified.delete(bearer);
    }
    const payload = await verifyUserToken(bearer);
    if (payload.role === "service_role") {
      // A verified service-role JWT (legacy service key minted by this project).
      return { mode: "service" };
    }
    if (payload.role !== "authenticated" || typeof payload.sub !== "string" || !payload.sub) {
      throw new AgentError("unauthorized", "token is not a signed-in user's");
    }
    if (!isUuid(payload.sub)) {
      throw new AgentError("unauthorized", "token subject is not a user id");
    }
    const userId = payload.sub.toLowerCase();
    remember(bearer, userId, payload.exp!);
    return { mode: "user", userId };
  };
}
