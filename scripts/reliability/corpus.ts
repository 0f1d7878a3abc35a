/**
 * The bad-input corpus: generated requests that must each get a documented
 * 4xx (or, for hostile-but-valid text, a 200 that stores the text verbatim),
 * never a 5xx, built section by section (malformed JSON, wrong types, ids,
 * sizes, headers, tokens, injections, …). Deterministic: the same seed gives
 * the same corpus. The hostile-unicode part is hostile-unicode.ts.
 */

import {
  type BadCase,
  badIdsAndChannels,
  type Builder,
  type CorpusContext,
  malformedJson,
  missingAndUnknownFields,
  randomText,
  sizes,
  unicodeEscapes,
  wrongTypes,
} from "./corpus-body.ts";
import { headers, injections, replays, tokens } from "./corpus-headers.ts";

export type { BadCase, CorpusContext };

/** The sections, in the order their cases are generated. */
const SECTIONS: Array<(b: Builder) => void> = [
  malformedJson,
  wrongTypes,
  missingAndUnknownFields,
  badIdsAndChannels,
  sizes,
  unicodeEscapes,
  headers,
  tokens,
  replays,
  injections,
  randomText,
];

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
  const add: Builder["add"] = (name, body, expect, headers = auth, method) =>
    void cases.push({
      name,
      body: typeof body === "string" ? body : JSON.stringify(body),
      headers,
      expect,
      ...(method ? { method } : {}),
    });
  for (const section of SECTIONS) section({ ctx, rand, auth, ok, add, cases });
  return cases;
}
