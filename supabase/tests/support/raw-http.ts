/**
 * HTTP/1.1 over a bare TCP socket, for what `fetch` will not send: a body
 * that trickles or stalls, a promised Content-Length that never arrives, a
 * client that hangs up mid-upload. One request per connection.
 */

/** Text or bytes to write, a pause, or closing the socket. */
export type Part = string | Uint8Array | { delayMs: number } | { close: true };

export interface RawResponse {
  status: number;
  headers: Record<string, string>;
  body: string;
  /** From the first byte written to the whole response read. */
  ms: number;
}

const encoder = new TextEncoder();
const latin1 = new TextDecoder("latin1");

export function head(options: {
  port: number;
  headers?: Record<string, string>;
  contentLength?: number;
  chunked?: boolean;
}): string {
  const lines = [
    "POST / HTTP/1.1",
    `host: 127.0.0.1:${options.port}`,
    "content-type: application/json",
    "connection: close",
    ...Object.entries(options.headers ?? {}).map(([k, v]) => `${k}: ${v}`),
    ...(options.contentLength !== undefined ? [`content-length: ${options.contentLength}`] : []),
    ...(options.chunked ? ["transfer-encoding: chunked"] : []),
  ];
  return `${lines.join("\r\n")}\r\n\r\n`;
}

/** One chunk of a chunked body. */
export function chunk(text: string): string {
  return `${encoder.encode(text).byteLength.toString(16)}\r\n${text}\r\n`;
}

export function concat(chunks: Uint8Array[]): Uint8Array<ArrayBuffer> {
  const all = new Uint8Array(chunks.reduce((n, c) => n + c.byteLength, 0));
  let offset = 0;
  for (const c of chunks) {
    all.set(c, offset);
    offset += c.byteLength;
  }
  return all;
}

/** The response once it is complete (Content-Length, chunked end, or the socket closed). */
function parse(bytes: Uint8Array, closed: boolean): Omit<RawResponse, "ms"> | undefined {
  const text = latin1.decode(bytes);
  const end = text.indexOf("\r\n\r\n");
  if (end < 0) return undefined;
  const [statusLine = "", ...lines] = text.slice(0, end).split("\r\n");
  const headers: Record<string, string> = {};
  for (const line of lines) {
    const i = line.indexOf(":");
    headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
  }
  const rest = bytes.slice(end + 4);
  const length = headers["content-length"];
  const status = Number(statusLine.split(" ")[1]);
  if (length !== undefined) {
    if (rest.byteLength < Number(length)) return undefined;
    return { status, headers, body: new TextDecoder().decode(rest.slice(0, Number(length))) };
  }
  const body = latin1.decode(rest);
  if (/chunked/i.test(headers["transfer-encoding"] ?? "") && !body.endsWith("0\r\n\r\n")) {
    return closed ? { status, headers, body } : undefined;
  }
  return { status, headers, body };
}

/**
 * Writes `parts` in order and returns the response, or undefined when none
 * came within `timeoutMs` or the parts closed the socket first. A pause ends
 * early once the server has answered.
 */
export async function rawHttp(
  port: number,
  parts: Part[],
  timeoutMs = 5000,
): Promise<RawResponse | undefined> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const started = performance.now();
  let closed = false;
  const close = () => {
    if (closed) return;
    closed = true;
    try {
      conn.close();
    } catch { /* already closed */ }
  };
  let response: RawResponse | undefined;
  const reading = (async () => {
    const chunks: Uint8Array[] = [];
    const buf = new Uint8Array(65536);
    while (true) {
      let n: number | null;
      try {
        n = await conn.read(buf);
      } catch {
        return;
      }
      if (n !== null) chunks.push(buf.slice(0, n));
      const parsed = parse(concat(chunks), n === null);
      if (parsed) {
        response = { ...parsed, ms: performance.now() - started };
        return;
      }
      if (n === null) return;
    }
  })();
  const writing = (async () => {
    for (const part of parts) {
      if (response || closed) return;
      if (typeof part === "object" && "delayMs" in part) {
        let timer: ReturnType<typeof setTimeout> | undefined;
        await Promise.race([
          reading,
          new Promise<void>((resolve) => (timer = setTimeout(resolve, part.delayMs))),
        ]);
        clearTimeout(timer);
      } else if (typeof part === "object" && "close" in part) {
        close();
      } else {
        try {
          const bytes = typeof part === "string" ? encoder.encode(part) : part;
          let offset = 0;
          while (offset < bytes.byteLength) offset += await conn.write(bytes.subarray(offset));
        } catch {
          return; // the server closed or reset: read what it answered
        }
      }
    }
  })();
  let timer: ReturnType<typeof setTimeout> | undefined;
  await Promise.race([
    reading,
    new Promise<void>((resolve) => (timer = setTimeout(resolve, timeoutMs))),
  ]);
  clearTimeout(timer);
  close();
  await Promise.allSettled([reading, writing]);
  return response;
}
