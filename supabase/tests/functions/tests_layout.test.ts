/**
 * `supabase test db` runs `pg_prove --ext .pg --ext .sql -r supabase/tests`:
 * every .sql or .pg file under supabase/tests must be a pgTAP test that runs
 * alone, in its own transaction, rolled back.
 */
import { assertEquals } from "./assert.ts";

const testsDir = new URL("../", import.meta.url).pathname;

async function* walk(dir: string): AsyncGenerator<string> {
  for await (const entry of Deno.readDir(dir)) {
    const path = `${dir}${entry.name}`;
    if (entry.isDirectory) yield* walk(`${path}/`);
    else if (entry.isFile) yield path;
  }
}

Deno.test("tests layout: every .sql/.pg file under supabase/tests is a framed pgTAP test", async () => {
  const problems: string[] = [];
  for await (const path of walk(testsDir)) {
    if (!/\.(sql|pg)$/.test(path)) continue;
    const name = path.slice(testsDir.length);
    if (!/^database\/[^/]+\.test\.sql$/.test(name)) {
      problems.push(`${name}: not a pgTAP test in database/ (name psql scripts *.psql)`);
      continue;
    }
    const text = await Deno.readTextFile(path);
    for (
      const needle of [
        /^begin;$/m,
        /^select plan\(\d+\);$/m,
        /^select \* from finish\(\);$/m,
        /^rollback;$/m,
      ]
    ) {
      if (!needle.test(text)) problems.push(`${name}: missing ${needle.source}`);
    }
  }
  assertEquals(problems, []);
});
