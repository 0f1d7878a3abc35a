/** The error contract as tests check it: one shape for every refusal, no stack traces. */
import { assert, assertEquals } from "../functions/assert.ts";

export interface ErrorBody {
  error: { code: string; message: string; request_id: string };
}

/** The documented error body: status, code, a message without a stack trace, the request id. */
export async function expectError(
  res: Response,
  status: number,
  code: string,
): Promise<ErrorBody> {
  const text = await res.text();
  assertEquals(res.status, status, text);
  const body = JSON.parse(text) as ErrorBody;
  assertEquals(body.error.code, code, text);
  assertEquals(typeof body.error.message, "string");
  assert(!/at \w+ \(|\.ts:\d+/.test(body.error.message), "no stack trace");
  assertEquals(body.error.request_id, res.headers.get("x-request-id"));
  return body;
}

/** The status alone (the body is discarded). */
export async function statusOf(res: Response): Promise<number> {
  await res.body?.cancel();
  return res.status;
}
