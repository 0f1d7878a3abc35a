/**
 * Owns reading a request body: bounded in bytes and in time, decoded as
 * strict UTF-8. A body that is too large is refused without reading the rest.
 */
import { AgentError, describe } from "./errors.ts";

export interface BodyLimits {
  maxBytes: number;
  /** The whole body must arrive within this time, or the request is 408. */
  timeoutMs: number;
}

export async function readBody(request: Request, limits: BodyLimits): Promise<string> {
  const declared = Number(request.headers.get("content-length") ?? NaN);
  if (Number.isFinite(declared) && declared > limits.maxBytes) throw tooLarge(limits.maxBytes);
  if (!request.body) return "";
  const reader = request.body.getReader();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    reader.cancel().catch(() => {});
  }, limits.timeoutMs);
  const late = () =>
    new AgentError("invalid_request", `the body did not arrive within ${limits.timeoutMs} ms`, {
      status: 408,
    });
  try {
    const bytes = await readAll(reader, limits.maxBytes);
    // A cancelled read ends like a finished one: what arrived is not the whole body.
    if (timedOut) throw late();
    return decode(bytes);
  } catch (error) {
    if (timedOut) throw late();
    if (error instanceof AgentError) throw error;
    // A body stream fails only when its connection does: the client went away.
    throw new AgentError("client_closed", "the client went away during the body upload", {
      detail: describe(error),
    });
  } finally {
    clearTimeout(timer);
  }
}

async function readAll(
  reader: ReadableStreamDefaultReader<Uint8Array>,
  maxBytes: number,
): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  let size = 0;
  while (true) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > maxBytes) {
      await reader.cancel().catch(() => {});
      throw tooLarge(maxBytes);
    }
    chunks.push(value);
  }
  const all = new Uint8Array(size);
  let offset = 0;
  for (const c of chunks) {
    all.set(c, offset);
    offset += c.byteLength;
  }
  return all;
}

function decode(bytes: Uint8Array): string {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new AgentError("invalid_request", "body must be UTF-8");
  }
}

function tooLarge(maxBytes: number): AgentError {
  return new AgentError("invalid_request", `body must be at most ${maxBytes} bytes`);
}
