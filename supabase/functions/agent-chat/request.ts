/**
 * Owns the chat request body: its zod schema, and the rules on what each kind
 * of caller may assert in it. Strings Postgres cannot store (unpaired
 * surrogates, NUL) are refused here, before any bucket or model call.
 */
import { z } from "zod";
import type { Caller } from "../_shared/auth.ts";
import { AgentError } from "../_shared/errors.ts";
import { UUID_PATTERN } from "../_shared/ids.ts";
import { findUnstorable } from "../_shared/text.ts";
import { normalizeIp } from "../_shared/client-ip.ts";

const MAX_METADATA_BYTES = 2048;
export const CHANNEL_PATTERN = /^[a-z][a-z0-9_-]{0,31}$/;

const uuid = z.string().regex(UUID_PATTERN, "must be a UUID").transform((s) => s.toLowerCase());

export function chatRequestSchema(maxMessageChars: number) {
  return z.strictObject({
    message: z.string().trim().min(1, "must not be empty").max(
      maxMessageChars,
      `must be at most ${maxMessageChars} characters`,
    ),
    org_id: uuid,
    session_id: uuid.optional(),
    channel: z.string().regex(
      CHANNEL_PATTERN,
      "must be a lowercase token of at most 32 characters",
    )
      .optional(),
    stream: z.boolean().default(false),
    metadata: z.record(z.string().max(64), z.unknown()).optional().refine(
      (m) =>
        m === undefined ||
        new TextEncoder().encode(JSON.stringify(m)).length <=
          MAX_METADATA_BYTES,
      `must be at most ${MAX_METADATA_BYTES} bytes as JSON`,
    ),
    user_id: uuid.optional(),
    client_ip: z.union([z.ipv4(), z.ipv6()]).optional(),
  });
}

export type ChatSchema = ReturnType<typeof chatRequestSchema>;
type Parsed = z.output<ChatSchema>;

/** A validated body, with what the caller may assert already resolved. */
export interface ChatRequest {
  message: string;
  orgId: string;
  sessionId: string | undefined;
  channel: string;
  stream: boolean;
  metadata: Record<string, unknown> | undefined;
  /** Asserted by a service caller only. */
  userId: string | undefined;
  clientIp: string | undefined;
}

export interface RequestRules {
  schema: ChatSchema;
  /** Channels a user token may use; the first is the default. */
  userChannels: string[];
}

export function parseChatRequest(
  text: string,
  caller: Caller,
  rules: RequestRules,
): ChatRequest {
  const body = validate(parseJson(text), rules.schema);
  if (caller.mode === "user") {
    if (body.user_id !== undefined || body.client_ip !== undefined) {
      throw new AgentError(
        "forbidden",
        "user_id and client_ip may only be set by a server-side caller",
      );
    }
    const channel = body.channel ?? rules.userChannels[0]!;
    if (!rules.userChannels.includes(channel)) {
      throw new AgentError(
        "forbidden",
        `channel ${channel} is not open to user tokens`,
      );
    }
    return chatRequest(body, channel, undefined, undefined);
  }
  if (!body.user_id) {
    throw new AgentError(
      "invalid_request",
      "user_id: required with a service key",
    );
  }
  return chatRequest(
    body,
    body.channel ?? "app",
    body.user_id,
    normalizeIp(body.client_ip),
  );
}

function chatRequest(
  body: Parsed,
  channel: string,
  userId: string | undefined,
  clientIp: string | undefined,
): ChatRequest {
  return {
    message: body.message,
    orgId: body.org_id,
    sessionId: body.session_id,
    channel,
    stream: body.stream,
    metadata: body.metadata,
    userId,
    clientIp,
  };
}

function parseJson(text: string): Record<string, unknown> {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new AgentError("invalid_request", "body must be valid JSON");
  }
  if (json === null || typeof json !== "object" || Array.isArray(json)) {
    throw new AgentError("invalid_request", "body must be a JSON object");
  }
  const unstorable = findUnstorable(json);
  if (unstorable) {
    throw new AgentError("invalid_request", unstorable.slice(0, 300), {
      detail: withoutNames(unstorable),
    });
  }
  return json as Record<string, unknown>;
}

/**
 * The client is told which of its keys is wrong; the usage row and the log
 * keep no name the client chose (a metadata key or an unknown field may be
 * anything, a phone number included): only the documented field it is under.
 */
const FIELDS = new Set(Object.keys(chatRequestSchema(1).shape));

function safePath(where: string): string {
  const key = where.endsWith(" (a key)") ? " (a key)" : "";
  const parts = where.slice(0, where.length - key.length).split(".");
  const body = parts[0] === "body" ? ["body"] : [];
  const [field, ...below] = parts.slice(body.length);
  if (field === undefined) return where;
  const named = FIELDS.has(field) ? [field, ...(below.length > 0 ? ["…"] : [])] : ["…"];
  return [...body, ...named].join(".") + key;
}

function withoutNames(problem: string): string {
  const cut = problem.lastIndexOf(": ");
  return safePath(problem.slice(0, cut)) + problem.slice(cut);
}

function validate(json: Record<string, unknown>, schema: ChatSchema): Parsed {
  const result = schema.safeParse(json);
  if (result.success) return result.data;
  const issues = result.error.issues.slice(0, 3);
  const describe = (names: boolean) =>
    issues.map((i) => {
      const where = i.path.length ? i.path.map(String).join(".") : "body";
      if (i.code === "unrecognized_keys") {
        return names
          ? `unknown field(s): ${i.keys.join(", ")}`
          : `${i.keys.length} unknown field(s)`;
      }
      return `${names ? where : safePath(where)}: ${i.message}`;
    }).join("; ").slice(0, 300);
  throw new AgentError("invalid_request", describe(true), {
    detail: describe(false),
  });
}
