/**
 * The hostile-unicode part of the bad-input corpus (`buildHostileUnicode`,
 * `buildLookalikes`): text Postgres cannot store, and bytes that are not
 * UTF-8, in every field; and valid requests that only look hostile.
 */
import type { BadCase } from "./corpus.ts";

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
