/**
 * .env.example lists every environment variable the function reads, so an
 * operator copying it to .env.production.local misses none.
 */
import { assertEquals } from "./assert.ts";

const root = new URL("../../../", import.meta.url).pathname;

Deno.test(".env.example names every variable the function reads", async () => {
  const example = await Deno.readTextFile(`${root}.env.example`);
  const listed = new Set([...example.matchAll(/^(?:# )?([A-Z][A-Z0-9_]+)=/gm)].map((m) => m[1]));
  const read = new Set<string>();
  for (
    const dir of [
      "supabase/functions/_shared",
      "supabase/functions/agent-chat",
      "supabase/functions/agent-alerts",
    ]
  ) {
    for await (const e of Deno.readDir(`${root}${dir}`)) {
      if (!e.isFile || !e.name.endsWith(".ts")) continue;
      const text = await Deno.readTextFile(`${root}${dir}/${e.name}`);
      for (const m of text.matchAll(/\b((?:AI_AGENT|OPENAI|SUPABASE|UPSTASH)_[A-Z0-9_]+)\b/g)) {
        read.add(m[1]);
      }
    }
  }
  assertEquals([...read].filter((name) => !listed.has(name)).sort(), []);
});
