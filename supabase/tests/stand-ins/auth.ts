/**
 * Stand-in for Supabase Auth (GoTrue), the part agent-chat depends on:
 *   - GET /auth/v1/.well-known/jwks.json: the project's public signing keys
 *     (one ES256 key, as new Supabase projects have), with a `kid`;
 *   - tokens as GoTrue issues them: `sub`, `role: authenticated`,
 *     `aud: authenticated`, `exp`, `iat`, `iss`, `app_metadata`,
 *     `user_metadata`, `session_id`; and service-role tokens
 *     (`role: service_role`, no `sub`) as the legacy service key is;
 *   - the legacy HS256 shared secret, for projects that still sign with it;
 *   - GET /auth/v1/user: the user of a valid access token (what supabase-js'
 *     `auth.setSession` and `auth.getUser` ask), 401 `bad_jwt` otherwise.
 * Not covered: sign-up, sign-in, refresh, key rotation endpoints.
 */
import {
  createLocalJWKSet,
  decodeProtectedHeader,
  exportJWK,
  generateKeyPair,
  importJWK,
  type JWK,
  jwtVerify,
  SignJWT,
} from "jose";

export interface AuthStandIn {
  issuer: string;
  jwtSecret: string;
  jwks: { keys: JWK[] };
  /** JWKS and GET /auth/v1/user; undefined for other paths. */
  handle(request: Request): Promise<Response> | Response | undefined;
  userToken(sub: string, options?: TokenOptions): Promise<string>;
  serviceToken(options?: { alg?: "ES256" | "HS256" }): Promise<string>;
  /** A token signed by a key the project does not know. */
  foreignToken(sub: string): Promise<string>;
}

export interface TokenOptions {
  alg?: "ES256" | "HS256";
  expiresInSeconds?: number;
  audience?: string;
  role?: string;
  appMetadata?: Record<string, unknown>;
}

/** The stand-in's signing key as a private JWK with its `kid`, to keep it across restarts (dev stack). */
export async function newSigningKey(): Promise<JWK> {
  const { privateKey } = await generateKeyPair("ES256", { extractable: true });
  return { ...(await exportJWK(privateKey)), kid: crypto.randomUUID(), alg: "ES256" };
}

export async function createAuthStandIn(
  options: { issuer?: string; jwtSecret?: string; signingKey?: JWK } = {},
): Promise<AuthStandIn> {
  const issuer = options.issuer ?? "http://127.0.0.1:54321/auth/v1";
  const jwtSecret = options.jwtSecret ?? "super-secret-jwt-token-with-at-least-32-characters-long";
  const signingKey = options.signingKey ?? await newSigningKey();
  const kid = signingKey.kid!;
  const privateKey = await importJWK(signingKey, "ES256");
  const { d: _private, key_ops: _ops, ...publicPart } = signingKey;
  const foreign = await generateKeyPair("ES256");
  const publicJwk = { ...publicPart, kid, alg: "ES256", use: "sig", key_ops: ["verify"] };
  const hmac = new TextEncoder().encode(jwtSecret);

  async function sign(claims: Record<string, unknown>, alg: "ES256" | "HS256", expiresIn: number) {
    const jwt = new SignJWT(claims)
      .setProtectedHeader(alg === "ES256" ? { alg, kid, typ: "JWT" } : { alg, typ: "JWT" })
      .setIssuer(issuer)
      .setIssuedAt()
      .setExpirationTime(Math.floor(Date.now() / 1000) + expiresIn);
    return await jwt.sign(alg === "ES256" ? privateKey : hmac);
  }

  const localJwks = createLocalJWKSet({ keys: [publicJwk] });
  /** GoTrue's GET /user: the user a valid access token names. */
  async function userOf(request: Request): Promise<Response> {
    const token = /^Bearer (\S+)$/i.exec(request.headers.get("authorization") ?? "")?.[1] ?? "";
    try {
      const { payload: p } = decodeProtectedHeader(token).alg === "HS256"
        ? await jwtVerify(token, hmac, { issuer, algorithms: ["HS256"] })
        : await jwtVerify(token, localJwks, { issuer, algorithms: ["ES256"] });
      if (typeof p.sub !== "string") throw new Error("no sub");
      return Response.json({
        id: p.sub,
        aud: p.aud,
        role: p.role,
        email: p.email ?? "",
        app_metadata: p.app_metadata ?? {},
        user_metadata: p.user_metadata ?? {},
        created_at: new Date(0).toISOString(),
      });
    } catch {
      return Response.json({ code: 401, error_code: "bad_jwt", msg: "invalid JWT" }, {
        status: 401,
      });
    }
  }

  return {
    issuer,
    jwtSecret,
    jwks: { keys: [publicJwk] },
    handle(request) {
      const path = new URL(request.url).pathname;
      if (path === "/auth/v1/.well-known/jwks.json" && request.method === "GET") {
        return Response.json({ keys: [publicJwk] }, {
          headers: { "cache-control": "public, max-age=600" },
        });
      }
      if (path === "/auth/v1/user" && request.method === "GET") return userOf(request);
      return undefined;
    },
    userToken: (sub, o = {}) =>
      sign(
        {
          sub,
          aud: o.audience ?? "authenticated",
          role: o.role ?? "authenticated",
          email: `${sub.slice(0, 8)}@example.test`,
          app_metadata: o.appMetadata ?? { provider: "email", providers: ["email"] },
          user_metadata: {},
          session_id: crypto.randomUUID(),
          is_anonymous: false,
        },
        o.alg ?? "ES256",
        o.expiresInSeconds ?? 3600,
      ),
    serviceToken: (o = {}) => sign({ role: "service_role" }, o.alg ?? "ES256", 10 * 365 * 86400),
    foreignToken: (sub) =>
      new SignJWT({ sub, aud: "authenticated", role: "authenticated" })
        .setProtectedHeader({ alg: "ES256", kid, typ: "JWT" })
        .setIssuedAt()
        .setExpirationTime("1h")
        .sign(foreign.privateKey),
  };
}
