/**
 * An OpenAI chat completion answer, as JSON or as Server-Sent Events (one
 * delta, the finish, then a usage chunk when there is usage), for the small
 * upstreams tests hold, gate or strip of usage.
 */
export interface CompletionUsage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export function completionResponse(
  request: { model: string; stream?: boolean },
  text: string,
  usage: CompletionUsage | undefined,
  id = "chatcmpl-test",
): Response {
  const base = { id, created: 1, model: request.model };
  if (!request.stream) {
    return Response.json({
      ...base,
      object: "chat.completion",
      choices: [{ index: 0, message: { role: "assistant", content: text }, finish_reason: "stop" }],
      ...(usage ? { usage } : {}),
    });
  }
  const chunks = [
    { choices: [{ index: 0, delta: { role: "assistant", content: text }, finish_reason: null }] },
    { choices: [{ index: 0, delta: {}, finish_reason: "stop" }] },
    ...(usage ? [{ choices: [], usage }] : []),
  ].map((c) => `data: ${JSON.stringify({ ...base, object: "chat.completion.chunk", ...c })}\n\n`);
  return new Response(chunks.join("") + "data: [DONE]\n\n", {
    headers: { "content-type": "text/event-stream" },
  });
}
