/**
 * The bad-input corpus' words (a case, what the corpus is built from, the
 * builder every section adds with) and the sections about the body:
 * malformed JSON, wrong types, missing and unknown fields, bad ids and
 * channels, sizes, unicode escapes, random text. corpus.ts puts them in order.
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

/** What every section adds its cases with. */
export interface Builder {
  ctx: CorpusContext;
  /** The corpus' own deterministic random numbers (shared by every section, in order). */
  rand: () => number;
  /** A signed-in member's headers. */
  auth: Record<string, string>;
  /** A valid body, with `extra` fields over it. */
  ok: (extra?: Record<string, unknown>) => Record<string, unknown>;
  add: (
    name: string,
    body: unknown,
    expect: number[],
    headers?: Record<string, string>,
    method?: string,
  ) => void;
  cases: BadCase[];
}

export /** Malformed and truncated JSON. */
function malformedJson({ rand, ok, add }: Builder) {
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
}

export /** Wrong types in every field. */
function wrongTypes({ ok, add }: Builder) {
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
}

export /** Missing fields, unknown fields. */
function missingAndUnknownFields({ ctx, ok, add }: Builder) {
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
}

export /** Bad uuids and channels. */
function badIdsAndChannels({ ok, add }: Builder) {
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
}

export /** Size: huge bodies, long messages, big and deep metadata. */
function sizes({ ctx, ok, add }: Builder) {
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
}

export /** Unicode edge cases: lone surrogates, NUL, BOM, overlong. */
function unicodeEscapes({ ctx, ok, add }: Builder) {
  for (const u of ["\\ud800", "\\udfff", "\\ud800\\ud800", "\\u0000", "a\\u0000b"]) {
    add(`unicode escape ${u}`, `{"message":"x${u}","org_id":"${ctx.orgId}"}`, [200, 400]);
  }
  add("message only whitespace and zero-width", ok({ message: " \t\n\u200b " }), [200, 400]);
}

export /** Random byte soup until the corpus has at least 1,000 cases. */
function randomText({ ctx, rand, add, cases }: Builder) {
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
}
