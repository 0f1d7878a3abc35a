/**
 * The code's shape, measured as the house rules state it: no function in
 * supabase/functions over 60 lines, none in scripts/ over 120, no script
 * over 350 lines, no test file over 800. A function's lines run from its
 * first token (after its doc comment) to its closing brace, nested functions
 * included; functions are what the TypeScript parser calls so (declarations,
 * methods, accessors, arrow functions, function expressions). Import circles
 * are `deno task check`'s (scripts/check-imports.ts).
 */
import ts from "typescript";
import { assertEquals } from "./assert.ts";

const root = new URL("../../../", import.meta.url).pathname;

async function* files(dir: string, ends: string[]): AsyncGenerator<string> {
  for await (const entry of Deno.readDir(`${root}${dir}`)) {
    const path = `${dir}/${entry.name}`;
    if (entry.isDirectory) yield* files(path, ends);
    else if (ends.some((end) => path.endsWith(end))) yield path;
  }
}

/** `path:line name (n lines)` for every function longer than `limit` lines. */
async function longFunctions(dir: string, limit: number): Promise<string[]> {
  const found: string[] = [];
  for await (const path of files(dir, [".ts"])) {
    const text = await Deno.readTextFile(`${root}${path}`);
    const source = ts.createSourceFile(path, text, ts.ScriptTarget.Latest, true);
    const visit = (node: ts.Node) => {
      if (ts.isFunctionLike(node) && "body" in node && node.body) {
        const first = source.getLineAndCharacterOfPosition(node.getStart(source)).line;
        const last = source.getLineAndCharacterOfPosition(node.getEnd()).line;
        if (last - first + 1 > limit) {
          found.push(`${path}:${first + 1} ${nameOf(node)} (${last - first + 1} lines)`);
        }
      }
      ts.forEachChild(node, visit);
    };
    visit(source);
  }
  return found;
}

function nameOf(node: ts.Node): string {
  const own = (node as { name?: ts.Node }).name;
  if (own) return own.getText();
  const parent = node.parent;
  if (parent && (ts.isVariableDeclaration(parent) || ts.isPropertyAssignment(parent))) {
    return parent.name.getText();
  }
  return "(anonymous)";
}

/** `path (n lines)` for every file longer than `limit` lines. */
async function longFiles(dir: string, ends: string[], limit: number): Promise<string[]> {
  const found: string[] = [];
  for await (const path of files(dir, ends)) {
    const lines = (await Deno.readTextFile(`${root}${path}`)).split("\n").length - 1;
    if (lines > limit) found.push(`${path} (${lines} lines)`);
  }
  return found;
}

Deno.test("code shape: no function in supabase/functions over 60 lines", async () => {
  assertEquals(await longFunctions("supabase/functions", 60), []);
});

Deno.test("code shape: no function in scripts/ over 120 lines, no script over 350", async () => {
  assertEquals(await longFunctions("scripts", 120), []);
  assertEquals(await longFiles("scripts", [".ts"], 350), []);
});

Deno.test("code shape: no test file over 800 lines", async () => {
  assertEquals(await longFiles("supabase/tests", [".ts", ".sql", ".psql"], 800), []);
});

Deno.test("code shape: the measure finds a long function and names it", async () => {
  const dir = await Deno.makeTempDir({ dir: `${root}.local`, prefix: "shape-" }).catch(async () => {
    await Deno.mkdir(`${root}.local`, { recursive: true });
    return await Deno.makeTempDir({ dir: `${root}.local`, prefix: "shape-" });
  });
  try {
    const body = Array.from({ length: 60 }, (_, i) => `  const v${i} = ${i};`).join("\n");
    await Deno.writeTextFile(
      `${dir}/long.ts`,
      `/** doc */\nexport function long() {\n${body}\n}\n`,
    );
    await Deno.writeTextFile(`${dir}/short.ts`, `export const short = () => {\n  return 1;\n};\n`);
    const rel = dir.slice(root.length);
    assertEquals(await longFunctions(rel, 61), ["" + `${rel}/long.ts:2 long (62 lines)`]);
    assertEquals(await longFunctions(rel, 62), []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
