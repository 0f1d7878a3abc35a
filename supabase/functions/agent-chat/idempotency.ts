/**
 * Owns idempotent retries: the `Idempotency-Key` request header (IETF
 * draft-ietf-httpapi-idempotency-key-header, with Stripe's semantics).
 *
 * - The key: 1 to 255 printable ASCII characters, sent bare (`abc-123`) or as
 *   the draft's quoted sf-string (`"abc-123"`); anything else is 400. Keys
 *   are per user: the token's user, or the user a service caller asserts.
 * - "The same request": a SHA-256 of the validated fields that define the
 *   turn (org, session, channel, message, metadata). `stream` is not part of
 *   it (the stored answer replays as JSON or SSE alike), nor `client_ip`.
 * - The begin-turn call decides first, before any bucket: replay, 422
 *   `idempotency_mismatch`, 409 `request_in_progress` (Retry-After), or
 *   admitted with the key claimed. The attempt's usage row settles the key:
 *   `complete` with the answer when the turn was saved, `release` otherwise
 *   (model failure, save failure, client gone before the answer), so a retry
 *   runs afresh.
 * - A replay calls no model, charges no bucket, appends nothing and writes
 *   no usage row; it answers with `idempotent-replayed: true`.
 */
import { AgentError } from "../_shared/errors.ts";
import type { ChatRequest } from "./request.ts";
import type { BeginTurnArgs, IdempotencySettlement, StoredAnswer, UsageEvent } from "./turn.ts";

export const IDEMPOTENCY_HEADER = "idempotency-key";
export const REPLAYED_HEADER = "idempotent-replayed";
export const MAX_KEY_LENGTH = 255;

/** A keyed request as the begin-turn call and the settlement need it. */
export interface IdempotencyClaim {
  key: string;
  requestHash: string;
  requestId: string;
  /** How long a completed key is kept: the session TTL. */
  ttlSeconds: number;
}

const PRINTABLE = /^[\x20-\x7e]+$/;

/** The key of this request, undefined without the header; 400 when malformed. */
export function parseIdempotencyKey(headers: Headers): string | undefined {
  const raw = headers.get(IDEMPOTENCY_HEADER);
  if (raw === null) return undefined;
  const value = raw.trim();
  const key = !value.startsWith('"')
    ? value
    : value.length >= 2 && value.endsWith('"')
    ? unquote(value.slice(1, -1))
    : undefined;
  if (key === undefined || key.length < 1 || key.length > MAX_KEY_LENGTH || !PRINTABLE.test(key)) {
    throw new AgentError(
      "invalid_request",
      `Idempotency-Key: 1 to ${MAX_KEY_LENGTH} printable ASCII characters (bare or as a quoted string)`,
    );
  }
  return key;
}

/** An sf-string's content (RFC 8941 3.3.3): `\"` and `\\` are its only escapes; a bare quote is invalid. */
function unquote(inner: string): string | undefined {
  let out = "";
  for (let i = 0; i < inner.length; i++) {
    let c = inner[i]!;
    if (c === '"') return undefined;
    if (c === "\\") {
      c = inner[++i] ?? "";
      if (c !== '"' && c !== "\\") return undefined;
    }
    out += c;
  }
  return out;
}

/** SHA-256 (hex) of the fields that define the turn, in a fixed order, metadata keys sorted. */
export async function requestHash(body: ChatRequest): Promise<string> {
  const fields = [
    "agent-chat/v1",
    body.orgId,
    body.sessionId ?? null,
    body.channel,
    body.message,
    canonical(body.metadata ?? null),
  ];
  const digest = await crypto.subtle.digest(
    "SHA-256",
    new TextEncoder().encode(JSON.stringify(fields)),
  );
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The same value with every object's keys sorted (objects stay objects, so no array can collide). */
function canonical(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(canonical);
  if (value === null || typeof value !== "object") return value;
  const obj = value as Record<string, unknown>;
  const sorted: Record<string, unknown> = Object.create(null);
  for (const k of Object.keys(obj).sort()) sorted[k] = canonical(obj[k]);
  return sorted;
}

/** The claim of a keyed request, or undefined when it sent no key. */
export async function idempotencyClaim(
  headers: Headers,
  body: ChatRequest,
  requestId: string,
  settings: { sessionTtlSeconds: number },
): Promise<IdempotencyClaim | undefined> {
  const key = parseIdempotencyKey(headers);
  if (key === undefined) return undefined;
  const ttlSeconds = settings.sessionTtlSeconds;
  return { key, requestHash: await requestHash(body), requestId, ttlSeconds };
}

/** The begin-turn arguments of a claim (none without a key, so unkeyed calls are unchanged). */
export function claimArgs(
  claim: IdempotencyClaim | undefined,
): Pick<BeginTurnArgs, "p_idempotency_key" | "p_request_hash"> {
  if (!claim) return {};
  return { p_idempotency_key: claim.key, p_request_hash: claim.requestHash };
}

/** The refusal of a begin-turn outcome about the key. */
export function idempotencyRefusal(
  begin: { outcome: "idempotency_mismatch" } | {
    outcome: "request_in_progress";
    retry_after_seconds?: number;
    request_id?: string;
  },
): AgentError {
  if (begin.outcome === "idempotency_mismatch") {
    return new AgentError(
      "idempotency_mismatch",
      "this Idempotency-Key was used with a different request; use a new key",
    );
  }
  const retryAfter = Math.max(1, Math.ceil(Number(begin.retry_after_seconds ?? 1)));
  return new AgentError(
    "request_in_progress",
    "a request with this Idempotency-Key is still running; retry after a moment",
    {
      headers: { "retry-after": String(retryAfter) },
      detail: `Idempotency-Key held by request ${begin.request_id ?? "unknown"}`,
    },
  );
}

/**
 * The usage event of a keyed attempt, carrying its settlement: `complete`
 * with the answer when the turn was saved, `release` otherwise.
 */
export function settle(
  event: UsageEvent,
  claim: IdempotencyClaim | undefined,
  answer?: StoredAnswer,
): UsageEvent {
  if (!claim) return event;
  const idempotency: IdempotencySettlement = answer
    ? { key: claim.key, outcome: "complete", response: answer, ttl_seconds: claim.ttlSeconds }
    : { key: claim.key, outcome: "release" };
  return { ...event, idempotency };
}
