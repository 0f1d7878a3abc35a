/**
 * Local receivers for agent-alerts' three destinations, each checking what
 * arrives against its provider's documented contract and answering as the
 * provider does:
 *   - Slack incoming webhook: JSON with a non-empty `text` (else 400
 *     `no_text`); `blocks`, when sent, of known types with mrkdwn/plain_text
 *     texts of at most 3000 characters and at most 10 fields of 2000 (else
 *     400 `invalid_blocks`); 200 `ok`.
 *   - PagerDuty Events API v2 (/v2/enqueue): routing_key, event_action
 *     trigger|acknowledge|resolve, dedup_key of at most 255 characters
 *     (required but for a trigger); a trigger's payload.summary (1 to 1024
 *     characters), payload.source and payload.severity (critical, error,
 *     warning, info); else 400 `{status: "invalid event", errors}`; 202
 *     `{status: "success", message: "Event processed", dedup_key}`.
 *   - Standard Webhooks: webhook-id, webhook-timestamp and
 *     webhook-signature verified with the `standardwebhooks` package (401
 *     when they do not verify); a body `{type, timestamp, data}` with type
 *     alert.raised|alert.warning|alert.resolved|alert.test (else 400); 204.
 * Faults are scripted per request, in order: an HTTP status, or a hang (no
 * answer until the receiver stops). Every request is recorded; `accepted`
 * holds the bodies that passed the contract and were answered 2xx.
 */
import { Webhook } from "standardwebhooks";

export type Fault = { status: number } | "hang";

export interface ReceivedRequest {
  /** performance.now() when it arrived. */
  at: number;
  headers: Record<string, string>;
  raw: string;
  // deno-lint-ignore no-explicit-any
  body: any;
}

export interface Receiver {
  url: string;
  requests: ReceivedRequest[];
  accepted: ReceivedRequest[];
  /** Contract violations, each with the request's raw body. */
  rejected: Array<{ problems: string[]; raw: string }>;
  fail(...faults: Fault[]): void;
  stop(): Promise<void>;
}

type Validate = (r: ReceivedRequest) => string[];

// ------------------------------------------------------------ contracts

const TEXT_TYPES = new Set(["mrkdwn", "plain_text"]);
const textProblems = (t: unknown, at: string, max: number): string[] => {
  const o = t as { type?: unknown; text?: unknown } | undefined;
  if (!o || !TEXT_TYPES.has(String(o.type))) return [`${at}: a text object (mrkdwn|plain_text)`];
  if (typeof o.text !== "string" || o.text.length === 0 || o.text.length > max) {
    return [`${at}.text: 1 to ${max} characters`];
  }
  return [];
};

export const validateSlack: Validate = ({ body }) => {
  if (typeof body?.text !== "string" || body.text.trim() === "") return ["no_text"];
  if (body.blocks === undefined) return [];
  if (!Array.isArray(body.blocks) || body.blocks.length > 50) return ["invalid_blocks: an array"];
  return body.blocks.flatMap((b: Record<string, unknown>, i: number) => {
    const at = `blocks[${i}]`;
    if (b.type === "section") {
      const fields = (b.fields ?? []) as unknown[];
      if (!b.text && fields.length === 0) return [`${at}: text or fields`];
      if (fields.length > 10) return [`${at}.fields: at most 10`];
      return [
        ...(b.text ? textProblems(b.text, `${at}.text`, 3000) : []),
        ...fields.flatMap((f, j) => textProblems(f, `${at}.fields[${j}]`, 2000)),
      ];
    }
    if (b.type === "context") {
      const elements = (b.elements ?? []) as unknown[];
      if (elements.length === 0 || elements.length > 10) return [`${at}.elements: 1 to 10`];
      return elements.flatMap((e, j) => textProblems(e, `${at}.elements[${j}]`, 3000));
    }
    return b.type === "header" || b.type === "divider" ? [] : [`${at}: unknown type ${b.type}`];
  });
};

const SEVERITIES = new Set(["critical", "error", "warning", "info"]);

export const validatePagerDuty: Validate = ({ body }) => {
  const problems: string[] = [];
  if (typeof body?.routing_key !== "string" || body.routing_key === "") {
    problems.push("routing_key: required");
  }
  if (!["trigger", "acknowledge", "resolve"].includes(body?.event_action)) {
    problems.push("event_action: trigger, acknowledge or resolve");
  }
  const key = body?.dedup_key;
  if (key !== undefined && (typeof key !== "string" || key.length > 255)) {
    problems.push("dedup_key: a string of at most 255 characters");
  }
  if (body?.event_action !== "trigger") {
    if (typeof key !== "string") problems.push("dedup_key: required to acknowledge or resolve");
    return problems;
  }
  const p = body.payload ?? {};
  if (typeof p.summary !== "string" || p.summary.length < 1 || p.summary.length > 1024) {
    problems.push("payload.summary: 1 to 1024 characters");
  }
  if (typeof p.source !== "string" || p.source === "") problems.push("payload.source: required");
  if (!SEVERITIES.has(p.severity)) problems.push("payload.severity: critical|error|warning|info");
  if (p.timestamp !== undefined && Number.isNaN(Date.parse(p.timestamp))) {
    problems.push("payload.timestamp: ISO 8601");
  }
  if (p.custom_details !== undefined && typeof p.custom_details !== "object") {
    problems.push("payload.custom_details: an object");
  }
  return problems;
};

const TYPES = new Set(["alert.raised", "alert.warning", "alert.resolved", "alert.test"]);

export function validateWebhook(secret: string): Validate {
  const wh = new Webhook(secret);
  return ({ raw, headers, body }) => {
    try {
      wh.verify(raw, headers);
    } catch (error) {
      return [`signature: ${(error as Error).message}`];
    }
    const problems: string[] = [];
    if (!TYPES.has(body?.type)) problems.push(`type: ${body?.type}`);
    if (typeof body?.timestamp !== "string" || Number.isNaN(Date.parse(body.timestamp))) {
      problems.push("timestamp: ISO 8601");
    }
    if (typeof body?.data !== "object" || body.data === null) problems.push("data: an object");
    return problems;
  };
}

// ------------------------------------------------------------ servers

function startReceiver(
  validate: Validate,
  answer: (r: ReceivedRequest, problems: string[]) => Response,
): Receiver {
  const faults: Fault[] = [];
  const hanging: Array<() => void> = [];
  const state: Omit<Receiver, "url" | "stop"> = {
    requests: [],
    accepted: [],
    rejected: [],
    fail: (...f) => void faults.push(...f),
  };
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen: () => {} }, async (req) => {
    const raw = await req.text();
    let body: unknown;
    try {
      body = JSON.parse(raw);
    } catch {
      body = undefined;
    }
    const r = { at: performance.now(), headers: Object.fromEntries(req.headers), raw, body };
    state.requests.push(r);
    const fault = faults.shift();
    if (fault === "hang") {
      await new Promise<void>((resolve) => hanging.push(resolve));
      return new Response("too late", { status: 504 });
    }
    if (fault) return new Response("fault", { status: fault.status });
    const problems = validate(r);
    if (problems.length > 0) state.rejected.push({ problems, raw });
    else state.accepted.push(r);
    return answer(r, problems);
  });
  return {
    ...state,
    url: `http://127.0.0.1:${server.addr.port}`,
    async stop() {
      for (const release of hanging.splice(0)) release();
      await server.shutdown();
    },
  };
}

export function startSlackReceiver(): Receiver {
  return startReceiver(
    validateSlack,
    (_r, problems) =>
      problems.length === 0
        ? new Response("ok")
        : new Response(problems[0] === "no_text" ? "no_text" : "invalid_blocks", { status: 400 }),
  );
}

export function startPagerDutyReceiver(): Receiver {
  const receiver = startReceiver(
    validatePagerDuty,
    (r, errors) =>
      errors.length === 0
        ? Response.json(
          { status: "success", message: "Event processed", dedup_key: r.body.dedup_key },
          { status: 202 },
        )
        : Response.json({ status: "invalid event", message: "Event object is invalid", errors }, {
          status: 400,
        }),
  );
  return { ...receiver, url: `${receiver.url}/v2/enqueue` };
}

export function startWebhookReceiver(secret: string): Receiver {
  return startReceiver(
    validateWebhook(secret),
    (_r, problems) =>
      problems.length === 0
        ? new Response(null, { status: 204 })
        : new Response(problems.join("; "), {
          status: problems[0]!.startsWith("signature") ? 401 : 400,
        }),
  );
}

/** A URL nothing listens on: the connection is refused. */
export function refusedUrl(): string {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return `http://127.0.0.1:${port}/hook`;
}
