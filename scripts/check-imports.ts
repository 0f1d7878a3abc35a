/**
 * `deno task check` (last step):
 *
 * - each function's own imports (supabase/functions/<fn>/deno.json,
 *   what `supabase functions deploy` bundles with) pin the same versions as
 *   the repository-wide import_map.json (what the tests and scripts run
 *   with), so the code that is tested is the code that is deployed;
 * - no import circle among the repository's own TypeScript modules
 *   (supabase/ and scripts/), type imports and re-exports included: shared
 *   words live in a module at the bottom (agent-chat/turn.ts), never in a
 *   module that imports its importers.
 *
 * Exit 1 names every mismatch and every circle.
 */
const root = new URL("../", import.meta.url).pathname;
async function versionMismatches(): Promise<string[]> {
  const repoImports = await readImports("import_map.json");
  const problems: string[] = [];
  for (const file of FUNCTION_IMPORTS) {
    for (const [name, spec] of Object.entries(await readImports(file))) {
      if (!spec.startsWith("npm:")) {
        problems.push(`${file}: "${name}" is ${spec}; only npm: is reachable`);
      }
      if (repoImports[name] !== spec) {
        problems.push(
          `${file}: "${name}" is ${spec}, import_map.json has ${repoImports[name] ?? "nothing"}`,
        );
      }
    }
  }
  return problems;
}

const readImports = async (path: string): Promise<Record<string, string>> =>
  JSON.parse(await Deno.readTextFile(`${root}${path}`)).imports ?? {};

const FUNCTION_IMPORTS = [
  "supabase/functions/agent-chat/deno.json",
  "supabase/functions/agent-alerts/deno.json",
];

/** Relative specifiers of `import`/`export … from`, bare `import "…"` and `import("…")`. */
const RELATIVE_IMPORT =
  /(?:^|[\n;])\s*(?:import|export)\b[^;]*?\bfrom\s*["'](\.{1,2}\/[^"']+)["']|\bimport\s*\(\s*["'](\.{1,2}\/[^"']+)["']\s*\)|(?:^|[\n;])\s*import\s*["'](\.{1,2}\/[^"']+)["']/g;

/** Each `.ts` file under `dirs` (relative to `base`) with the files it imports. */
async function importGraph(dirs: string[], base: string): Promise<Map<string, string[]>> {
  const graph = new Map<string, string[]>();
  async function walk(dir: string) {
    for await (const entry of Deno.readDir(`${base}${dir}`)) {
      const path = `${dir}/${entry.name}`;
      if (entry.isDirectory) await walk(path);
      else if (entry.isFile && path.endsWith(".ts")) {
        const text = await Deno.readTextFile(`${base}${path}`);
        const targets = [...text.matchAll(RELATIVE_IMPORT)].map((m) =>
          new URL(m[1] ?? m[2] ?? m[3], `file:///${path}`).pathname.slice(1)
        );
        graph.set(path, targets);
      }
    }
  }
  for (const dir of dirs) await walk(dir);
  return graph;
}

/** One circle per strongly connected set of modules (Tarjan), written `a → b → a`; `base` ends in `/`. */
export async function importCircles(dirs: string[], base = root): Promise<string[]> {
  const graph = await importGraph(dirs, base);
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const circles: string[] = [];
  const visit = (v: string) => {
    index.set(v, index.size);
    low.set(v, index.get(v)!);
    stack.push(v);
    for (const w of graph.get(v) ?? []) {
      if (!graph.has(w)) continue;
      if (!index.has(w)) visit(w);
      if (stack.includes(w)) low.set(v, Math.min(low.get(v)!, low.get(w)!));
    }
    if (low.get(v) !== index.get(v)) return;
    const set = stack.splice(stack.indexOf(v));
    if (set.length > 1 || graph.get(v)!.includes(v)) circles.push(circleThrough(graph, set));
  };
  for (const v of graph.keys()) if (!index.has(v)) visit(v);
  return circles;
}

/** A path from the set's first module back to itself, inside the set. */
function circleThrough(graph: Map<string, string[]>, set: string[]): string {
  const start = set[0];
  const previous = new Map<string, string>();
  const queue = [start];
  while (queue.length > 0) {
    const v = queue.shift()!;
    for (const w of graph.get(v) ?? []) {
      if (w === start) {
        const path = [v];
        while (path[0] !== start) path.unshift(previous.get(path[0])!);
        return [...path, start].join(" → ");
      }
      if (set.includes(w) && !previous.has(w)) {
        previous.set(w, v);
        queue.push(w);
      }
    }
  }
  return set.join(" → ");
}

if (import.meta.main) {
  const circles = await importCircles(["supabase", "scripts"]);
  const problems = [...await versionMismatches(), ...circles.map((c) => `import circle: ${c}`)];
  if (problems.length > 0) {
    console.error(problems.map((p) => `error: ${p}`).join("\n"));
    Deno.exit(1);
  }
  console.log(`${FUNCTION_IMPORTS.join(", ")}: same versions as import_map.json; no import circle`);
}
