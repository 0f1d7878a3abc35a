/**
 * agent-alerts' HTTP surface: POST with a service or secret key runs one
 * cycle and answers 200 with its summary; no key or any other token is 401;
 * other methods 405. The steps: method, caller, cycle, one error boundary.
 */
import { secretsEqual } from "../_shared/auth.ts";
import { AgentError, asAgentError } from "../_shared/errors.ts";
import { errorResponse, jsonResponse } from "../_shared/http.ts";
import type { Logger } from "../_shared/log.ts";
import type { CycleSummary } from "./cycle.ts";

export interface AlertsDeps {
  serviceKeys: string[];
  runCycle(): Promise<CycleSummary>;
  log: Logger;
}

function checkMethod(request: Request) {
  if (request.method !== "POST") {
    throw new AgentError("method_not_allowed", "use POST", { headers: { allow: "POST" } });
  }
}

/** Only the service role: the key itself, as Bearer or apikey (user tokens never match). */
function checkCaller(headers: Headers, serviceKeys: string[]) {
  const bearer = /^Bearer\s+(\S+)$/i.exec(headers.get("authorization") ?? "")?.[1];
  const given = bearer ?? headers.get("apikey") ?? "";
  let match = false;
  for (const key of serviceKeys) match = secretsEqual(given, key) || match;
  if (!given) throw new AgentError("unauthorized", "missing Authorization header");
  if (!match) {
    throw new AgentError("unauthorized", "agent-alerts takes the service or a secret key");
  }
}

export function createAlertsHandler(deps: AlertsDeps) {
  return async function handle(request: Request): Promise<Response> {
    const requestId = crypto.randomUUID();
    try {
      checkMethod(request);
      checkCaller(request.headers, deps.serviceKeys);
      await request.body?.cancel();
      const summary = await deps.runCycle();
      deps.log("info", "alerts_cycle", { request_id: requestId, ...summary });
      return jsonResponse(200, { request_id: requestId, ...summary }, {
        "x-request-id": requestId,
      });
    } catch (error) {
      const e = asAgentError(error);
      if (e.status >= 500) {
        deps.log("error", "alerts_cycle_failed", { request_id: requestId, error: e.detail });
      }
      return errorResponse(e, requestId);
    }
  };
}
