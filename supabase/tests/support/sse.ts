/** Reads a whole text/event-stream body into its events (tests only). */

// deno-lint-ignore no-explicit-any
export type SseEvent = { event: string; data: Record<string, any> };

export function parseSse(text: string): SseEvent[] {
  return text.split("\n\n").filter((b) => b.trim()).map((block) => {
    const event = /^event: (.*)$/m.exec(block)?.[1] ?? "message";
    const data = JSON.parse(/^data: (.*)$/m.exec(block)?.[1] ?? "null");
    return { event, data };
  });
}
