/**
 * The bad-input corpus: generated requests that must each get a documented
 * 4xx (or, for hostile-but-valid text, a 200 that stores the text verbatim),
 * never a 5xx. Deterministic: the same seed gives the same corpus. The
 * hostile-unicode part (`buildHostileUnicode`, `buildLookalikes`) puts text
 * Postgres cannot store, and bytes that are not UTF-8, in every field.
 */

export interface BadCase {
  name: string;
  /** Raw body text or bytes (sent as is). */
  body: string | Uint8Array<ArrayBuffer>;
  headers: Record<string, string>;
  method?: string;
  /** Statuses this case may get; never a 5xx. */
  expect: number[];
}

export interface CorpusContext {
  orgId: string;
  userId: string;
  token: string;
  foreignToken: string;
  expiredToken: string;
  wrongAudienceToken: string;
  otherOrgId: string;
  sessionOfOther: string;
}

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

export function buildCorpus(ctx: CorpusContext, seed = 7): BadCase[] {
  let state = seed;
  const rand = () => ((state = (state * 1103515245 + 12345) % 2147483648) / 2147483648);
  const auth = { authorization: `Bearer ${ctx.token}`, "content-type": "application/json" };
  const ok = (extra: Record<string, unknown> = {}) => ({
    message: "hello",
    org_id: ctx.orgId,
    ...extra,
  });
  const cases: BadCase[] = [];
  const add = (
    name: string,
    body: unknown,
    expect: number[],
    headers: Record<string, string> = auth,
    method?: string,
  ) =>
    cases.push({
      name,
      body: typeof body === "string" ? body : JSON.stringify(body),
      headers,
      expect,
      ...(method ? { method } : {}),
    });

  // Malformed JSON.
  const malformed = [
    "",
    "{",
    "}",
    "[",
    "null",
    "true",
    "1",
    '"x"',
    "{'a':1}",
    '{"message": "hi",}',
    '{"message" "hi"}',
    "\u0000",
    "\ufeff{}",
    '{"message":"hi"',
    "{{}}",
    "NaN",
    '{"a":1}{"b":2}',
    "<xml/>",
    "message=hi&org_id=x",
  ];
  for (const m of malformed) add(`malformed json ${JSON.stringify(m).slice(0, 20)}`, m, [400]);
  for (let i = 0; i < 60; i++) {
    const valid = JSON.stringify(ok());
    const cut = Math.floor(rand() * (valid.length - 1));
    add(`truncated json at ${cut}`, valid.slice(0, cut), [400]);
  }

  // Wrong types in every field.
  const wrongValues: unknown[] = [
    null,
    0,
    -1,
    1.5,
    true,
    false,
    [],
    {},
    ["x"],
    { a: 1 },
    "",
    " ",
    "x".repeat(5000),
  ];
  for (
    const field of [
      "message",
      "org_id",
      "session_id",
      "channel",
      "stream",
      "metadata",
      "user_id",
      "client_ip",
    ]
  ) {
    for (const v of wrongValues) {
      const body: Record<string, unknown> = ok();
      body[field] = v;
      // Some of these values are valid for some fields (a boolean stream, an
      // object as metadata); user_id/client_ip with a user token are
      // forbidden even when well-typed.
      const valid = (field === "stream" && typeof v === "boolean") ||
        (field === "metadata" && v !== null && typeof v === "object" && !Array.isArray(v));
      add(
        `wrong type ${field}=${JSON.stringify(v).slice(0, 12)}`,
        body,
        valid ? [200] : [400, 403],
      );
    }
  }
  // Missing fields, unknown fields.
  add("missing message", { org_id: ctx.orgId }, [400]);
  add("missing org_id", { message: "hi" }, [400]);
  for (let i = 0; i < 40; i++) add(`unknown field ${i}`, ok({ [`extra_${i}`]: i }), [400]);
  for (const key of ["__proto__", "constructor", "prototype", "toString", "MESSAGE", "Message"]) {
    add(
      `unknown key ${key}`,
      `{"message":"hi","org_id":"${ctx.orgId}","${key}":{"polluted":true}}`,
      [400],
    );
  }

  // Bad uuids and channels.
  const badIds = [
    "not-a-uuid",
    "00000000-0000-0000-0000-00000000000",
    "'; select 1; --",
    "g0000000-0000-4000-8000-000000000000",
    "00000000000040008000000000000000",
    "{00000000-0000-4000-8000-000000000000}",
    "%00",
    "0x1",
  ];
  for (const id of badIds) {
    add(`bad org_id ${id}`, ok({ org_id: id }), [400]);
    add(`bad session_id ${id}`, ok({ session_id: id }), [400]);
  }
  for (const ch of ["WhatsApp", "a b", "x".repeat(40), "-x", "1abc", "ch'; --", "ch\n", "é", ""]) {
    add(`bad channel ${JSON.stringify(ch).slice(0, 12)}`, ok({ channel: ch }), [400]);
  }

  // Size: huge bodies, long messages, big and deep metadata.
  add("body over the limit", ok({ message: "x".repeat(40_000) }), [400]);
  add("body of 1 MB", "x".repeat(1_000_000), [400]);
  for (const n of [4001, 5000, 10_000, 30_000]) {
    add(`message of ${n} chars`, ok({ message: "m".repeat(n) }), [400]);
  }
  for (const depth of [10, 100, 1000, 5000]) {
    add(
      `metadata nested ${depth} deep`,
      `{"message":"hi","org_id":"${ctx.orgId}","metadata":${'{"a":'.repeat(depth)}1${
        "}".repeat(depth)
      }}`,
      [200, 400],
    );
  }
  for (let i = 0; i < 20; i++) {
    const meta: Record<string, string> = {};
    for (let k = 0; k < 100 + i * 10; k++) meta[`k${k}`] = "v".repeat(20);
    add(`metadata with ${Object.keys(meta).length} keys`, ok({ metadata: meta }), [400]);
  }
  add("metadata key too long", ok({ metadata: { ["k".repeat(100)]: 1 } }), [400]);

  // Unicode edge cases: lone surrogates, NUL, BOM, overlong.
  for (const u of ["\\ud800", "\\udfff", "\\ud800\\ud800", "\\u0000", "a\\u0000b"]) {
    add(`unicode escape ${u}`, `{"message":"x${u}","org_id":"${ctx.orgId}"}`, [200, 400]);
  }
  add("message only whitespace and zero-width", ok({ message: " \t\n\u200b " }), [200, 400]);

  // Headers: missing/garbled auth, bad content types, bad request ids, forwarding abuse.
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

  // Tokens: tampered, foreign, expired, wrong audience, alg none, HS256 with a guessed secret.
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
  // Replays of a valid token against what it may not do.
  add("replayed token, other org", ok({ org_id: ctx.otherOrgId }), [403]);
  add("replayed token, asserting user_id", ok({ user_id: ctx.orgId }), [403]);
  add("replayed token, asserting client_ip", ok({ client_ip: "1.2.3.4" }), [403]);
  add("replayed token, someone else's session", ok({ session_id: ctx.sessionOfOther }), [404]);

  // Injection attempts in every string field: refused where the field has a
  // format, stored verbatim where it is free text.
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

  // Random byte soup until the corpus has at least 1,000 cases.
  while (cases.length < 1000) {
    const len = Math.floor(rand() * 200);
    let text = "";
    for (let i = 0; i < len; i++) text += String.fromCharCode(32 + Math.floor(rand() * 95));
    add(
      `random text ${cases.length}`,
      rand() < 0.5
        ? text
        : `{"message":${JSON.stringify(text)},"org_id":${
          text.length % 2 ? JSON.stringify(ctx.orgId) : "7"
        }}`,
      [200, 400],
    );
  }
  return cases;
}

// ---------------------------------------------------------------- hostile unicode

export interface HostileContext {
  orgId: string;
  /** A member of orgId, and their token. */
  userId: string;
  token: string;
  /** A service key, and the member a service caller asserts. */
  serviceKey: string;
  serviceUserId: string;
  /** The X-Forwarded-For address every case is sent from. */
  ip: string;
}

/** Unpaired surrogates and NUL, as the JSON escapes a client would send. */
const UNSTORABLE_ESCAPES: Array<[string, string]> = [
  ["lone high surrogate", "\\ud800"],
  ["lone low surrogate", "\\udfff"],
  ["two high surrogates", "\\uDBFF\\uD800"],
  ["reversed pair", "\\udc00\\ud83d"],
  ["surrogate between letters", "x\\ud800y"],
  ["NUL", "\\u0000"],
];

/** Byte sequences that are not UTF-8 (overlong forms, CESU-8, out of range) and a raw NUL. */
const NOT_UTF8: Array<[string, number[]]> = [
  ["overlong '/' (2 bytes)", [0xc0, 0xaf]],
  ["overlong NUL (modified UTF-8)", [0xc0, 0x80]],
  ["overlong '/' (3 bytes)", [0xe0, 0x80, 0xaf]],
  ["overlong '/' (4 bytes)", [0xf0, 0x80, 0x80, 0xaf]],
  ["CESU-8 high surrogate", [0xed, 0xa0, 0x80]],
  ["CESU-8 low surrogate", [0xed, 0xbf, 0xbf]],
  ["CESU-8 pair for U+1F600", [0xed, 0xa0, 0xbd, 0xed, 0xb8, 0x80]],
  ["above U+10FFFF", [0xf4, 0x90, 0x80, 0x80]],
  ["5-byte form", [0xf8, 0x88, 0x80, 0x80, 0x80]],
  ["lone continuation byte", [0x80]],
  ["0xFF", [0xff]],
  ["0xFE", [0xfe]],
  ["truncated sequence", [0xe2, 0x82]],
  ["raw NUL byte", [0x00]],
];

const BOM = [0xef, 0xbb, 0xbf];
const utf8 = new TextEncoder();

function bytesOf(...parts: Array<string | number[]>): Uint8Array<ArrayBuffer> {
  const chunks = parts.map((p) => typeof p === "string" ? utf8.encode(p) : new Uint8Array(p));
  const all = new Uint8Array(chunks.reduce((n, c) => n + c.byteLength, 0));
  let offset = 0;
  for (const c of chunks) {
    all.set(c, offset);
    offset += c.byteLength;
  }
  return all;
}

function utf16(text: string, littleEndian: boolean): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(2 + text.length * 2);
  const view = new DataView(out.buffer);
  view.setUint16(0, 0xfeff, littleEndian);
  for (let i = 0; i < text.length; i++) view.setUint16(2 + i * 2, text.charCodeAt(i), littleEndian);
  return out;
}

/**
 * A metadata value such that the body is `levels` containers deep in all
 * (the body and the metadata object count): 32 is the most allowed.
 */
export function deepMetadata(levels: number, open = '{"a":', close = "}"): string {
  return `{"a":${open.repeat(levels - 2)}1${close.repeat(levels - 2)}}`;
}

/**
 * Hostile unicode that must be 400 `invalid_request` wherever it appears:
 * unpaired surrogates and NUL (JSON escapes) in every field a user or a
 * service caller can send, keys included; bytes that are not UTF-8 in every
 * string; byte-order marks that are not one UTF-8 BOM before valid JSON;
 * JSON nested deeper than 32 levels.
 */
export function buildHostileUnicode(ctx: HostileContext): BadCase[] {
  const user = {
    authorization: `Bearer ${ctx.token}`,
    "content-type": "application/json",
    "x-forwarded-for": ctx.ip,
  };
  const service = { ...user, authorization: `Bearer ${ctx.serviceKey}` };
  const org = `"org_id":"${ctx.orgId}"`;
  const asserted = `"user_id":"${ctx.serviceUserId}"`;
  const session = crypto.randomUUID();
  // Where a string goes: [field, caller, body with the marker at `§`].
  const places: Array<[string, Record<string, string>, string]> = [
    ["message", user, `{"message":"hi§",${org}}`],
    ["metadata value", user, `{"message":"hi",${org},"metadata":{"note":"§"}}`],
    ["metadata key", user, `{"message":"hi",${org},"metadata":{"§":"v"}}`],
    ["metadata key inside", user, `{"message":"hi",${org},"metadata":{"k§k":1}}`],
    [
      "nested metadata value",
      user,
      `{"message":"hi",${org},"metadata":{"a":{"b":["ok","§"]}}}`,
    ],
    ["nested metadata key", user, `{"message":"hi",${org},"metadata":{"a":[{"§":true}]}}`],
    ["channel", user, `{"message":"hi",${org},"channel":"app§"}`],
    ["session_id", user, `{"message":"hi",${org},"session_id":"${session}§"}`],
    ["org_id", user, `{"message":"hi","org_id":"${ctx.orgId}§"}`],
    ["unknown key", user, `{"message":"hi",${org},"§":1}`],
    ["field name", user, `{"message§":"hi",${org}}`],
    ["user_id (service)", service, `{"message":"hi",${org},"user_id":"${ctx.serviceUserId}§"}`],
    [
      "client_ip (service)",
      service,
      `{"message":"hi",${org},${asserted},"client_ip":"203.0.113.9§"}`,
    ],
    ["message (service)", service, `{"message":"§",${org},${asserted}}`],
    ["channel (service)", service, `{"message":"hi",${org},${asserted},"channel":"whatsapp§"}`],
    ["metadata key (service)", service, `{"message":"hi",${org},${asserted},"metadata":{"§":1}}`],
  ];
  const cases: BadCase[] = [];
  const add = (
    name: string,
    body: string | Uint8Array<ArrayBuffer>,
    headers: Record<string, string>,
  ) => cases.push({ name, body, headers, expect: [400] });
  for (const [field, headers, template] of places) {
    for (const [what, escape] of UNSTORABLE_ESCAPES) {
      add(`${what} in ${field}`, template.replace("§", escape), headers);
    }
    for (const [what, bytes] of NOT_UTF8) {
      const [before, after] = template.split("§") as [string, string];
      add(`${what} in ${field}`, bytesOf(before, bytes, after), headers);
    }
  }
  // Escapes in keys: a later duplicate key spelled with escapes wins in JSON.parse.
  add(
    "escaped duplicate key carrying a surrogate",
    `{"message":"hi",${org},"\\u006d\\u0065ssage":"\\ud800"}`,
    user,
  );
  add("NUL key spelled \\u0000", `{"message":"hi",${org},"\\u0000":1}`, user);
  // Byte-order marks.
  const valid = `{"message":"hi",${org}}`;
  add("BOM before a lone surrogate", bytesOf(BOM, `{"message":"\\ud800",${org}}`), user);
  add("two BOMs before valid JSON", bytesOf(BOM, BOM, valid), user);
  add("BOM before truncated JSON", bytesOf(BOM, valid.slice(0, 20)), user);
  add("BOM alone", bytesOf(BOM), user);
  add("UTF-16LE with its BOM", utf16(valid, true), user);
  add("UTF-16BE with its BOM", utf16(valid, false), user);
  add("BOM after the JSON", bytesOf(valid, BOM), user);
  // Deeper than 32 levels.
  const deep = (levels: number, open = '{"a":', close = "}") =>
    `{"message":"hi",${org},"metadata":${deepMetadata(levels, open, close)}}`;
  add("objects 33 levels deep", deep(33), user);
  add("arrays 33 levels deep", deep(33, "[", "]"), user);
  add("arrays 1,000 levels deep", deep(1000, "[", "]"), user);
  add("arrays 16,000 levels deep", deep(16_000, "[", "]"), user);
  add(
    "unknown field 40 levels deep",
    `{"message":"hi",${org},"x":${"[".repeat(40)}${"]".repeat(40)}}`,
    user,
  );
  add("message 40 levels deep", `{"message":${"[".repeat(40)}"hi"${"]".repeat(40)},${org}}`, user);
  add(
    "service metadata 33 levels deep",
    `{"message":"hi",${org},${asserted},"metadata":${deepMetadata(33)}}`,
    service,
  );
  return cases;
}

export interface Lookalike extends BadCase {
  /** The message as it must be stored. */
  stored: string;
}

/**
 * Valid requests that look hostile: each is answered 200 and its message
 * stored verbatim. One UTF-8 BOM before the JSON is ignored (RFC 8259 8.1
 * allows it); paired surrogate escapes are one character; escaped keys are
 * the keys they spell; 32 levels of nesting is the most allowed.
 */
export function buildLookalikes(ctx: HostileContext): Lookalike[] {
  const user = {
    authorization: `Bearer ${ctx.token}`,
    "content-type": "application/json",
    "x-forwarded-for": ctx.ip,
  };
  const service = { ...user, authorization: `Bearer ${ctx.serviceKey}` };
  const org = `"org_id":"${ctx.orgId}"`;
  const tag = () => crypto.randomUUID().slice(0, 8);
  const cases: Lookalike[] = [];
  const add = (
    name: string,
    body: (text: string) => string | Uint8Array<ArrayBuffer>,
    text: string,
    stored: string,
    headers = user,
  ) => cases.push({ name, body: body(text), headers, expect: [200], stored });
  let t = tag();
  add(
    "one UTF-8 BOM before the JSON",
    (m) => bytesOf(BOM, `{"message":"${m}",${org}}`),
    `bom ${t}`,
    `bom ${t}`,
  );
  t = tag();
  add(
    "paired surrogate escapes",
    (m) => `{"message":"${m}",${org}}`,
    `pair \\ud83d\\ude00 ${t}`,
    `pair \u{1F600} ${t}`,
  );
  t = tag();
  add(
    "escaped keys spelling the fields",
    (m) =>
      `{"\\u006d\\u0065\\u0073\\u0073\\u0061\\u0067\\u0065":"${m}","\\u006frg_id":"${ctx.orgId}"}`,
    `escaped keys ${t}`,
    `escaped keys ${t}`,
  );
  t = tag();
  const raw = `raw \u{1F600}\uFEFF\uFFFD\uFFFF\u200B\u202E ${t}`;
  add(
    "raw 4-byte UTF-8, BOM and noncharacters inside text",
    (m) => bytesOf(`{"message":"${m}",${org}}`),
    raw,
    raw,
  );
  t = tag();
  add(
    "metadata at exactly 32 levels",
    (m) => `{"message":"${m}",${org},"metadata":${deepMetadata(32)}}`,
    `depth 32 ${t}`,
    `depth 32 ${t}`,
  );
  t = tag();
  add(
    "service caller, escapes in every field",
    (m) =>
      `{"message":"${m}",${org},"user_id":"${ctx.serviceUserId}","client_ip":"203.0.113.9","channel":"whatsapp","metadata":{"\\u006eote":"\\u00e9\\ud83d\\ude00"}}`,
    `service \\u00e9 ${t}`,
    `service \u00e9 ${t}`,
    service,
  );
  return cases;
}
