/**
 * The baseline for the end-to-end benchmark: a bare Deno server that parses
 * the same request body and forwards the message to the same OpenAI stand-in,
 * with no auth, limits, sessions or logging. What agent-chat costs on top of
 * this is the overhead the project adds. Prints `{"port": n}`.
 */
const upstream = `${Deno.env.get("OPENAI_BASE_URL")}/chat/completions`;
Deno.serve({
  port: Number(Deno.env.get("PORT") ?? 0),
  hostname: "127.0.0.1",
  onListen: ({ port }) => console.log(JSON.stringify({ port })),
}, async (request) => {
  const body = await request.json();
  const res = await fetch(upstream, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: "Bearer sk-bench" },
    body: JSON.stringify({
      model: "gpt-4.1-mini",
      messages: [{ role: "user", content: body.message }],
    }),
  });
  const answer = await res.json();
  return Response.json({
    session_id: crypto.randomUUID(),
    message: answer.choices[0].message.content,
    usage: answer.usage,
    model: answer.model,
    request_id: crypto.randomUUID(),
  });
});
