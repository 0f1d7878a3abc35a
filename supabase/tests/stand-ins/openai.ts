/**
 * Stand-in for the OpenAI API, the part agent-chat uses:
 *   POST /v1/chat/completions with `stream: false` (a chat.completion object
 *   with `usage`) and `stream: true` (Server-Sent Events of
 *   chat.completion.chunk objects, a final chunk with `finish_reason`, then,
 *   when `stream_options.include_usage` is set, a chunk with empty `choices`
 *   and `usage`, then `data: [DONE]`). Errors use OpenAI's body shape
 *   `{error: {message, type, param, code}}`.
 * Scriptable per request: reply text, latency, HTTP errors (429, 500, 503),
 * malformed bodies, a stream cut midway, a hang. Records every request.
 * Unscripted requests obey markers in the last user message (so failures
 * can be rehearsed on `npm run dev`): `[[fail:500]]` (any 4xx/5xx status),
 * `[[hang]]` (never answers), `[[cut-after:2]]` (a stream reset after 2
 * deltas; a JSON answer cut short). `[[fail:500@gpt-4.1-mini]]` fails only
 * requests for that model, so a fallback on the same stand-in answers.
 * Billing is scriptable too: `perByteTokens` counts one token per UTF-8 byte
 * (what a byte-level tokenizer does to digits with commas: the worst case;
 * the reply is cut at `max_completion_tokens` bytes, as a real upstream cuts
 * it at that many tokens), and `reportModel` names another model in the
 * answer than the one asked for (an OpenAI-compatible gateway's
 * `openai/gpt-4.1-mini`).
 * Not covered: tools, images, audio, the Responses API, `n > 1`.
 */

export type Behaviour =
  | { kind: "reply"; text?: string; latencyMs?: number; chunkDelayMs?: number }
  | { kind: "error"; status: number; message?: string }
  | { kind: "malformed" }
  | { kind: "cut"; afterChunks?: number }
  | { kind: "hang" };

export interface RecordedRequest {
  authorization: string | null;
  body: {
    model: string;
    messages: Array<{ role: string; content: string }>;
    stream?: boolean;
    stream_options?: { include_usage?: boolean };
    max_completion_tokens?: number;
  };
}

export interface OpenAIStandIn {
  url: string;
  /** Base URL for the SDK (`OPENAI_BASE_URL`). */
  baseURL: string;
  requests: RecordedRequest[];
  /** Behaviours used in order, one per request; then `fallback`. */
  script(...behaviours: Behaviour[]): void;
  fallback: Behaviour;
  /** Requests whose connection the client closed. */
  aborted: number;
  /** One token per UTF-8 byte in the reported usage (default: about 4 characters a token). */
  perByteTokens: boolean;
  /** The model name the answer reports (default: the requested one with a date suffix). */
  reportModel: string | undefined;
  handle(request: Request): Promise<Response>;
  stop(): Promise<void>;
}

const encoder = new TextEncoder();
const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(t);
      resolve();
    }, { once: true });
  });

/** Token counts as a tokenizer would roughly give them (4 characters a token). */
export function countTokens(text: string): number {
  return Math.max(1, Math.ceil(text.length / 4));
}

/** One token per UTF-8 byte: the most any byte-level tokenizer counts. */
export function byteCount(text: string): number {
  return encoder.encode(text).length;
}

/** `text` cut to at most `max` UTF-8 bytes (whole characters). */
function cutToBytes(text: string, max: number | undefined): string {
  if (max === undefined) return text;
  let out = "";
  for (const c of text) {
    if (byteCount(out + c) > max) break;
    out += c;
  }
  return out;
}

export function defaultReply(messages: Array<{ content: string }>): string {
  const last = messages[messages.length - 1]?.content ?? "";
  return `You said: ${last.slice(0, 200)}`;
}

const MARKER = /\[\[(?:fail:([45]\d\d)|(hang)|cut-after:(\d{1,3}))(?:@([\w.:-]+))?\]\]/g;

/** The behaviour a marker in the last user message asks for (for this model), if any. */
export function markerBehaviour(body: RecordedRequest["body"]): Behaviour | undefined {
  const last = body.messages.findLast((m) => m.role === "user")?.content ?? "";
  for (const [, status, hang, cut, model] of last.matchAll(MARKER)) {
    if (model && model !== body.model) continue;
    if (status) {
      return { kind: "error", status: Number(status), message: `marker [[fail:${status}]]` };
    }
    if (hang) return { kind: "hang" };
    return { kind: "cut", afterChunks: Number(cut) };
  }
  return undefined;
}

export function createOpenAIStandIn(
  options: { port?: number; serve?: boolean; hostname?: string } = {},
): OpenAIStandIn {
  const queue: Behaviour[] = [];
  const stopping = new AbortController();
  const state: OpenAIStandIn = {
    url: "",
    baseURL: "",
    requests: [],
    script: (...b) => queue.push(...b),
    fallback: { kind: "reply" },
    aborted: 0,
    perByteTokens: false,
    reportModel: undefined,
    handle,
    // Not serving: stopping releases the hung requests of whoever serves `handle`.
    stop: () => Promise.resolve(stopping.abort()),
  };

  function error(status: number, message: string) {
    const type = status === 429
      ? "rate_limit_exceeded"
      : status >= 500
      ? "server_error"
      : "invalid_request_error";
    return Response.json({ error: { message, type, param: null, code: type } }, {
      status,
      headers: status === 429 ? { "retry-after": "1" } : {},
    });
  }

  async function handle(request: Request): Promise<Response> {
    const path = new URL(request.url).pathname;
    if (request.method !== "POST" || !/\/v1\/chat\/completions$/.test(path)) {
      return error(404, `Unknown request URL: ${request.method} ${path}`);
    }
    if (!/^Bearer \S+/.test(request.headers.get("authorization") ?? "")) {
      return error(401, "You didn't provide an API key.");
    }
    let body: RecordedRequest["body"];
    try {
      body = await request.json();
    } catch {
      return error(400, "We could not parse the JSON body of your request.");
    }
    state.requests.push({ authorization: request.headers.get("authorization"), body });
    const behaviour = queue.shift() ?? markerBehaviour(body) ?? state.fallback;
    const signal = request.signal;
    signal.addEventListener("abort", () => state.aborted++, { once: true });

    if (behaviour.kind === "hang") {
      // Until the client leaves, or the stand-in stops (a fetch aborted before
      // the response headers does not always close its connection).
      await new Promise<void>((resolve) => {
        signal.addEventListener("abort", () => resolve(), { once: true });
        stopping.signal.addEventListener("abort", () => resolve(), { once: true });
      });
      return new Response(null, { status: 499 });
    }
    if (behaviour.kind === "error") {
      return error(behaviour.status, behaviour.message ?? "The server had an error");
    }
    if (behaviour.kind === "malformed" || (behaviour.kind === "cut" && !body.stream)) {
      return new Response('{"id": "chatcmpl-broken", "choices": [', {
        headers: { "content-type": body.stream ? "text/event-stream" : "application/json" },
      });
    }
    const wanted = behaviour.kind === "reply" && behaviour.text !== undefined
      ? behaviour.text
      : defaultReply(body.messages);
    if (behaviour.kind === "reply" && behaviour.latencyMs) await sleep(behaviour.latencyMs, signal);
    const tokens = state.perByteTokens ? byteCount : countTokens;
    const text = state.perByteTokens ? cutToBytes(wanted, body.max_completion_tokens) : wanted;
    const promptTokens = (state.perByteTokens ? 3 : 0) +
      body.messages.reduce((n, m) => n + tokens(m.content) + 4, 0);
    const completionTokens = tokens(text);
    const usage = {
      prompt_tokens: promptTokens,
      completion_tokens: completionTokens,
      total_tokens: promptTokens + completionTokens,
      prompt_tokens_details: { cached_tokens: 0 },
    };
    const id = `chatcmpl-${crypto.randomUUID()}`;
    const created = Math.floor(Date.now() / 1000);
    const model = state.reportModel ?? `${body.model}-2025-04-14`;
    if (!body.stream) {
      return Response.json({
        id,
        object: "chat.completion",
        created,
        model,
        choices: [{
          index: 0,
          message: { role: "assistant", content: text, refusal: null },
          finish_reason: "stop",
        }],
        usage,
      });
    }
    const pieces = text.match(/.{1,12}/gs) ?? [""];
    const chunk = (delta: Record<string, unknown>, finish: string | null) => ({
      id,
      object: "chat.completion.chunk",
      created,
      model,
      choices: [{ index: 0, delta, finish_reason: finish }],
    });
    const includeUsage = body.stream_options?.include_usage === true;
    const delay = behaviour.kind === "reply" ? behaviour.chunkDelayMs ?? 0 : 0;
    const cutAfter = behaviour.kind === "cut" ? behaviour.afterChunks ?? 2 : Infinity;
    const stream = new ReadableStream<Uint8Array>({
      async start(controller) {
        const send = (data: unknown) =>
          controller.enqueue(encoder.encode(`data: ${JSON.stringify(data)}\n\n`));
        try {
          send(chunk({ role: "assistant", content: "" }, null));
          for (let i = 0; i < pieces.length; i++) {
            if (i >= cutAfter) {
              await sleep(20); // let what was sent reach the client first
              controller.error(new Error("connection reset by stand-in"));
              return;
            }
            if (delay) await sleep(delay, signal);
            if (signal.aborted) return;
            send(chunk({ content: pieces[i] }, null));
          }
          if (cutAfter !== Infinity) {
            await sleep(20);
            controller.error(new Error("connection reset by stand-in"));
            return;
          }
          send(chunk({}, "stop"));
          if (includeUsage) {
            send({ id, object: "chat.completion.chunk", created, model, choices: [], usage });
          }
          controller.enqueue(encoder.encode("data: [DONE]\n\n"));
          controller.close();
        } catch {
          // The client went away.
        }
      },
    });
    return new Response(stream, { headers: { "content-type": "text/event-stream" } });
  }

  if (options.serve !== false) {
    const server = Deno.serve({
      port: options.port ?? 0,
      hostname: options.hostname ?? "127.0.0.1",
      onListen: () => {},
    }, handle);
    state.url = `http://127.0.0.1:${server.addr.port}`;
    state.baseURL = `${state.url}/v1`;
    state.stop = async () => {
      stopping.abort();
      await server.shutdown();
    };
  }
  return state;
}
