/**
 * Owns the Server-Sent Events response: a small writer in the shape of
 * Hono's `streamSSE`. `run` writes events and closes; a client that goes
 * away aborts `signal` and later writes are dropped.
 */

export interface SSEWriter {
  /** Aborted when the client cancels the stream. */
  readonly signal: AbortSignal;
  /** false when the client is gone and the event was dropped. */
  write(event: string, data: unknown): boolean;
  close(): void;
}

const encoder = new TextEncoder();

export function streamSSE(
  headers: Record<string, string>,
  run: (sse: SSEWriter) => Promise<void>,
): { response: Response; done: Promise<void> } {
  const abort = new AbortController();
  let controller!: ReadableStreamDefaultController<Uint8Array>;
  let open = true;
  const body = new ReadableStream<Uint8Array>({
    start(c) {
      controller = c;
    },
    cancel() {
      open = false;
      abort.abort();
    },
  });
  const writer: SSEWriter = {
    signal: abort.signal,
    write(event, data) {
      if (!open) return false;
      controller.enqueue(encoder.encode(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`));
      return true;
    },
    close() {
      if (!open) return;
      open = false;
      controller.close();
    },
  };
  const response = new Response(body, {
    status: 200,
    headers: {
      ...headers,
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-cache",
      "x-accel-buffering": "no",
    },
  });
  return { response, done: run(writer) };
}
