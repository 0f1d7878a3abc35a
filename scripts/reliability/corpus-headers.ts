/**
 * The bad-input corpus' sections about everything but the body's shape:
 * headers and methods, tokens, replays of a valid token, injections in every
 * field. corpus.ts puts them in order.
 */
import type { Builder } from "./corpus-body.ts";

const INJECTIONS = [
  "'; drop table public.agent_sessions; --",
  '" or 1=1 --',
  "$$; select pg_sleep(10); $$",
  "<script>alert(1)</script>",
  "${jndi:ldap://x/a}",
  "{{7*7}}",
  "../../etc/passwd",
  "\\x00\\u0000",
  "E'\\\\'",
  "%00%27",
  "Robert'); DROP TABLE students;--",
  "\u202e\u0644\u0627 RTL",
  "🙂".repeat(50),
  "\u200b\u200c\u200d zero width",
  "a\u0301\u0301\u0301 combining",
];

function b64url(s: string): string {
  return btoa(s).replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_");
}

export /** Headers: missing/garbled auth, bad content types, bad request ids, forwarding abuse, methods. */
function headers({ ctx, auth, ok, add }: Builder) {
  const badAuth = [
    "",
    "Bearer",
    "Bearer ",
    "Basic dXNlcjpwYXNz",
    `Bearer ${ctx.token}x`,
    `bearer  ${"a".repeat(5000)}`,
    "Bearer a.b.c",
    "Bearer ....",
    `Bearer ${ctx.token.split(".").slice(0, 2).join(".")}.`,
    "Token abc",
  ];
  for (const a of badAuth) {
    add(`authorization ${JSON.stringify(a).slice(0, 20)}`, ok(), [401], {
      authorization: a,
      "content-type": "application/json",
    });
  }
  add("no authorization", ok(), [401], { "content-type": "application/json" });
  add("apikey that is not a key", ok(), [401], {
    apikey: "sb_publishable_abc",
    "content-type": "application/json",
  });
  for (
    const ct of [
      "text/plain",
      "application/x-www-form-urlencoded",
      "multipart/form-data; boundary=x",
      "",
    ]
  ) {
    add(`content-type ${ct}`, ok(), [200], { ...auth, "content-type": ct });
  }
  for (const rid of ["", "x", "a b", "<script>", "x".repeat(500), "../../", "id\r\nx"]) {
    add(`x-request-id ${JSON.stringify(rid).slice(0, 12)}`, ok(), [200], {
      ...auth,
      "x-request-id": rid.replace(/[\r\n]/g, ""),
    });
  }
  for (
    const xff of [
      "",
      "garbage",
      "1.2.3.4, <script>",
      "999.1.1.1",
      Array.from({ length: 200 }, (_, i) => `10.0.0.${i % 250}`).join(", "),
      "::1, ::ffff:1.2.3.4",
      "unknown",
    ]
  ) {
    add(`x-forwarded-for ${xff.slice(0, 20)}`, ok(), [200], { ...auth, "x-forwarded-for": xff });
  }
  for (const method of ["GET", "PUT", "DELETE", "PATCH"]) {
    add(`method ${method}`, method === "GET" ? "" : JSON.stringify(ok()), [405], auth, method);
  }
}

export /** Tokens: tampered, foreign, expired, wrong audience, alg none, HS256 with a guessed secret. */
function tokens({ ctx, ok, add }: Builder) {
  const [h, p, s] = ctx.token.split(".") as [string, string, string];
  const payload = JSON.parse(atob(p.replace(/-/g, "+").replace(/_/g, "/")));
  const tamper = (changes: Record<string, unknown>) =>
    `${h}.${b64url(JSON.stringify({ ...payload, ...changes }))}.${s}`;
  const tokenCases: Array<[string, string]> = [
    ["tampered sub", tamper({ sub: ctx.orgId })],
    ["tampered role", tamper({ role: "service_role" })],
    ["tampered exp", tamper({ exp: 9_999_999_999 })],
    ["tampered aud", tamper({ aud: "anon" })],
    ["alg none", `${b64url('{"alg":"none","typ":"JWT"}')}.${p}.`],
    ["alg HS256 header on an ES256 token", `${b64url('{"alg":"HS256","typ":"JWT"}')}.${p}.${s}`],
    ["signature of another token", `${h}.${p}.${ctx.foreignToken.split(".")[2]}`],
    ["foreign key", ctx.foreignToken],
    ["expired", ctx.expiredToken],
    ["wrong audience", ctx.wrongAudienceToken],
    ["header not json", `${b64url("nope")}.${p}.${s}`],
    ["empty parts", ".."],
  ];
  for (const [name, token] of tokenCases) {
    add(`token ${name}`, ok(), [401], {
      authorization: `Bearer ${token}`,
      "content-type": "application/json",
    });
  }
}

export /** Replays of a valid token against what it may not do. */
function replays({ ctx, ok, add }: Builder) {
  add("replayed token, other org", ok({ org_id: ctx.otherOrgId }), [403]);
  add("replayed token, asserting user_id", ok({ user_id: ctx.orgId }), [403]);
  add("replayed token, asserting client_ip", ok({ client_ip: "1.2.3.4" }), [403]);
  add("replayed token, someone else's session", ok({ session_id: ctx.sessionOfOther }), [404]);
}

export /** Injection attempts in every string field: refused where the field has a format, stored verbatim where it is free text. */
function injections({ auth, ok, add }: Builder) {
  for (const inj of INJECTIONS) {
    add(`injection in message ${inj.slice(0, 12)}`, ok({ message: inj }), [200, 400]);
    add(`injection in org_id ${inj.slice(0, 12)}`, ok({ org_id: inj }), [400]);
    add(`injection in session_id ${inj.slice(0, 12)}`, ok({ session_id: inj }), [400]);
    add(`injection in channel ${inj.slice(0, 12)}`, ok({ channel: inj }), [400]);
    add(
      `injection in metadata ${inj.slice(0, 12)}`,
      ok({ metadata: { note: inj, [inj.slice(0, 60)]: inj } }),
      [200, 400],
    );
    add(`injection in user_id ${inj.slice(0, 12)}`, ok({ user_id: inj }), [400, 403]);
    add(`injection in client_ip ${inj.slice(0, 12)}`, ok({ client_ip: inj }), [400, 403]);
    add(`injection in x-request-id ${inj.slice(0, 12)}`, ok(), [200], {
      ...auth,
      "x-request-id": encodeURIComponent(inj).slice(0, 100),
    });
  }
}
