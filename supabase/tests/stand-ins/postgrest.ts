/**
 * Stand-in for PostgREST behind the Supabase API gateway, the part agent-chat
 * uses: `POST /rest/v1/rpc/<function>` with a JSON object of named arguments.
 * As the real pair does, it
 *   - requires an `apikey` header (401 without one) and verifies the JWT in
 *     `Authorization: Bearer` (or the apikey when no Authorization is sent):
 *     ES256 via the project's JWKS, or the legacy HS256 secret; opaque secret
 *     keys (`sb_secret_…`) map to the service role and publishable keys
 *     (`sb_publishable_…`, the anon key of supabase-js' `createClient`) to
 *     `anon`, as the gateway does;
 *   - in one transaction: `set local role <jwt role>`, sets
 *     `request.jwt.claims` (and `request.jwt.claim.role`/`.sub`), calls the
 *     function with named arguments (a JSON array given to an array
 *     argument as that array), and returns its JSON result;
 *   - answers errors in PostgREST's shape `{code, message, details, hint}`
 *     with its status mapping (42501 → 401 for anon / 403 otherwise, 42883
 *     and unknown function → 404 PGRST202, 22xxx/P0001 → 400, 23505 → 409,
 *     57014 → 500, connection failure → 503 PGRST000, bad JWT → 401 PGRST301).
 * Not covered: table endpoints, filters, `Prefer` headers, GET rpc, overloads.
 */
import { createLocalJWKSet, type JWK, jwtVerify } from "jose";
import postgres from "postgres";

export interface PostgrestStandIn {
  handle(request: Request): Promise<Response | undefined>;
  /** How many rpc calls reached the database. */
  calls: number;
  close(): Promise<void>;
}

interface FunctionArg {
  name: string;
  type: string;
}

function pgError(
  status: number,
  code: string,
  message: string,
  details: string | null = null,
  hint: string | null = null,
) {
  return Response.json({ code, message, details, hint }, { status });
}

/** A JSON array as the Postgres array literal PostgREST passes to an array argument (`{"a","b"}`). */
function arrayLiteral(values: unknown[]): string {
  return `{${values.map((v) => `"${String(v).replace(/["\\]/g, "\\$&")}"`).join(",")}}`;
}

export function statusForSqlState(sqlState: string, role: string): number {
  if (sqlState === "42501") return role === "anon" ? 401 : 403;
  if (sqlState === "42883" || sqlState === "42P01") return 404;
  if (sqlState === "23505") return 409;
  if (sqlState === "23503") return 409;
  if (sqlState.startsWith("22") || sqlState.startsWith("23") || sqlState === "P0001") return 400;
  if (sqlState.startsWith("08")) return 503;
  if (sqlState === "57014") return 500;
  if (sqlState === "40001" || sqlState === "40P01") return 500;
  return 500;
}

export function createPostgrestStandIn(options: {
  databaseUrl: string;
  jwks: { keys: JWK[] };
  jwtSecret: string;
  /** Opaque secret API keys the gateway maps to the service role. */
  secretKeys?: string[];
  /** Opaque publishable API keys the gateway maps to `anon`. */
  publishableKeys?: string[];
}): PostgrestStandIn {
  const sql = postgres(options.databaseUrl, {
    max: 8,
    prepare: false,
    onnotice: () => {},
    connect_timeout: 3,
  });
  const jwks = createLocalJWKSet(options.jwks);
  const hmac = new TextEncoder().encode(options.jwtSecret);
  const signatures = new Map<string, FunctionArg[]>();
  const state: PostgrestStandIn = { handle, calls: 0, close: () => sql.end({ timeout: 1 }) };

  async function claimsOf(token: string): Promise<Record<string, unknown>> {
    if (options.secretKeys?.includes(token)) return { role: "service_role" };
    if (options.publishableKeys?.includes(token)) return { role: "anon" };
    const alg = JSON.parse(atob(token.split(".")[0]!.replace(/-/g, "+").replace(/_/g, "/"))).alg;
    const { payload } = alg === "HS256"
      ? await jwtVerify(token, hmac, { algorithms: ["HS256"] })
      : await jwtVerify(token, jwks, { algorithms: ["ES256", "RS256"] });
    return payload as Record<string, unknown>;
  }

  async function signature(schema: string, name: string): Promise<FunctionArg[] | undefined> {
    const key = `${schema}.${name}`;
    if (!signatures.has(key)) {
      const rows = await sql`
        select coalesce(p.proargnames, '{}') as names,
               array(select format_type(t, null) from unnest(p.proargtypes) as t) as types
        from pg_proc p join pg_namespace n on n.oid = p.pronamespace
        where n.nspname = ${schema} and p.proname = ${name}`;
      if (rows.length !== 1) return undefined;
      const names = rows[0]!.names as string[];
      const types = rows[0]!.types as string[];
      signatures.set(key, types.map((type, i) => ({ name: names[i]!, type })));
    }
    return signatures.get(key);
  }

  async function handle(request: Request): Promise<Response | undefined> {
    const url = new URL(request.url);
    const match = /^\/rest\/v1\/rpc\/([a-z_][a-z0-9_]*)$/.exec(url.pathname);
    if (!match) return undefined;
    if (request.method !== "POST") return pgError(405, "PGRST117", "Unsupported HTTP method");
    const apikey = request.headers.get("apikey");
    if (!apikey) {
      return Response.json({
        message: "No API key found in request",
        hint: "No `apikey` request header or url param was found.",
      }, { status: 401 });
    }
    const bearer = /^Bearer (\S+)$/.exec(request.headers.get("authorization") ?? "")?.[1] ?? apikey;
    let claims: Record<string, unknown>;
    try {
      claims = await claimsOf(bearer);
    } catch (error) {
      const expired = (error as { code?: string }).code === "ERR_JWT_EXPIRED";
      return pgError(
        401,
        expired ? "PGRST303" : "PGRST301",
        expired ? "JWT expired" : "JWT could not be decoded or verified",
      );
    }
    const role = typeof claims.role === "string" ? claims.role : "anon";
    if (!["anon", "authenticated", "service_role"].includes(role)) {
      return pgError(401, "PGRST301", `role "${role}" does not exist`);
    }
    let args: Record<string, unknown>;
    try {
      const text = await request.text();
      args = text ? JSON.parse(text) : {};
      if (args === null || typeof args !== "object" || Array.isArray(args)) {
        throw new Error("not an object");
      }
    } catch {
      return pgError(400, "PGRST102", "Empty or invalid json");
    }
    const fn = match[1]!;
    let params: FunctionArg[] | undefined;
    try {
      params = await signature("public", fn);
    } catch (error) {
      return pgError(
        503,
        "PGRST000",
        "Database client error. Retrying the connection.",
        String((error as Error).message),
      );
    }
    const given = Object.keys(args);
    if (!params || given.some((k) => !params!.some((p) => p.name === k))) {
      return pgError(
        404,
        "PGRST202",
        `Could not find the function public.${fn}(${given.sort().join(", ")}) in the schema cache`,
      );
    }
    const used = params.filter((p) => p.name in args);
    const call = `select to_jsonb(public.${fn}(${
      used.map((p, i) => `${p.name} => $${i + 1}::text::${p.type}`).join(", ")
    })) as result`;
    const values = used.map((p) => {
      const v = args[p.name];
      if (v === null || v === undefined) return null;
      return p.type === "jsonb" || p.type === "json"
        ? JSON.stringify(v)
        : Array.isArray(v) && p.type.endsWith("[]")
        ? arrayLiteral(v)
        : typeof v === "object"
        ? JSON.stringify(v)
        : String(v);
    });
    try {
      state.calls++;
      const rows = await sql.begin(async (tx) => {
        await tx.unsafe(`set local role ${role}`);
        await tx`select set_config('request.jwt.claims', ${JSON.stringify(claims)}, true),
                        set_config('request.jwt.claim.role', ${role}, true),
                        set_config('request.jwt.claim.sub', ${String(claims.sub ?? "")}, true),
                        set_config('request.method', 'POST', true),
                        set_config('request.path', ${url.pathname}, true)`;
        return await tx.unsafe(call, values as never[]);
      });
      const result = rows[0]?.result ?? null;
      return new Response(JSON.stringify(result), {
        headers: { "content-type": "application/json; charset=utf-8" },
      });
    } catch (error) {
      const e = error as { code?: string; message?: string; detail?: string; hint?: string };
      if (
        !e.code || /ECONNREFUSED|ECONNRESET|CONNECTION_|connect/i.test(e.code + (e.message ?? ""))
      ) {
        if (!e.code || !/^[0-9A-Z]{5}$/.test(e.code)) {
          return pgError(
            503,
            "PGRST000",
            "Database client error. Retrying the connection.",
            e.message ?? null,
          );
        }
      }
      return pgError(
        statusForSqlState(e.code, role),
        e.code,
        e.message ?? "error",
        e.detail ?? null,
        e.hint ?? null,
      );
    }
  }
  return state;
}
