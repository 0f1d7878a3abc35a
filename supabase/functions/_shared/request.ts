/** The request body: read with a size bound, then validated strictly with zod. */
import { z } from "zod";
import { AgentError } from "./errors.ts";

export interface ChatRequest {
  message: string;
  org_id: string;
  session_id?: string | undefined;
  channel: string;
  stream: boolean;
  metadata?: Record<string, unknown> | undefined;
  user_id?: string | undefined;
  client_ip?: string | undefined;
}

const MAX_METADATA_BYTES = 2048;

export function chatRequestSchema(maxMessageChars: number) {
  return z.strictObject({
    message: z.string().trim().min(1, "must not be empty").max(
      maxMessageChars,
      `must be at most ${maxMessageChars} characters`,
    ).refine((m) => !m.includes("\0"), "must not contain NUL characters"),
    org_id: z.uuid(),
    session_id: z.uuid().optional(),
    channel: z.string().regex(
      /^[a-z][a-z0-9_-]{0,31}$/,
      "must be a lowercase token of at most 32 characters",
    )
      .default("app"),
    stream: z.boolean().default(false),
    metadata: z.record(z.string().max(64), z.unknown()).optional().refine(
      (m) =>
        m === undefined || new TextEncoder().encode(JSON.stringify(m)).length <= MAX_METADATA_BYTES,
      `must be at most ${MAX_METADATA_BYTES} bytes as JSON`,
    ).refine(
      (m) => m === undefined || !JSON.stringify(m).includes("\\u0000"),
      "must not contain NUL characters",
    ),
    user_id: z.uuid().optional(),
    client_ip: z.union([z.ipv4(), z.ipv6()]).optional(),
  });
}

/** Reads at most `maxBytes` of the body; a longer body is refused unread. */
export async function readBody(request: Request, maxBytes: number): Promise<string> {
  const declared = Number(request.headers.get("content-length") ?? NaN);
  if (Number.isFinite(declared) && declared > maxBytes) {
    throw new AgentError("invalid_request", `body must be at most ${maxBytes} bytes`);
  }
  if (!request.body) return "";
  const reader = request.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  try {
    while (true) {
      const { done, value } = await reader.read();
      if (done) break;
      size += value.byteLength;
      if (size > maxBytes) {
        await reader.cancel().catch(() => {});
        throw new AgentError("invalid_request", `body must be at most ${maxBytes} bytes`);
      }
      chunks.push(value);
    }
  } catch (error) {
    if (error instanceof AgentError) throw error;
    throw new AgentError("invalid_request", "could not read the request body");
  }
  const all = new Uint8Array(size);
  let offset = 0;
  for (const c of chunks) {
    all.set(c, offset);
    offset += c.byteLength;
  }
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(all);
  } catch {
    throw new AgentError("invalid_request", "body must be UTF-8");
  }
}

export function parseChatRequest(
  text: string,
  schema: ReturnType<typeof chatRequestSchema>,
): ChatRequest {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new AgentError("invalid_request", "body must be valid JSON");
  }
  if (json === null || typeof json !== "object" || Array.isArray(json)) {
    throw new AgentError("invalid_request", "body must be a JSON object");
  }
  const result = schema.safeParse(json);
  if (!result.success) {
    const first = result.error.issues.slice(0, 3).map((i) => {
      const where = i.path.length ? i.path.join(".") : "body";
      return i.code === "unrecognized_keys"
        ? `unknown field(s): ${i.keys.join(", ")}`
        : `${where}: ${i.message}`;
    });
    throw new AgentError("invalid_request", first.join("; ").slice(0, 300));
  }
  return result.data as ChatRequest;
}
