/**
 * Where the benchmark and the reliability suite put their figures. A doc
 * (docs/benchmarks.md, docs/reliability.md) keeps its prose; the scripts
 * rewrite only its marked regions:
 *
 *   <!-- results:begin NAME -->
 *   …generated…
 *   <!-- results:end NAME -->
 *
 * By default the updated copy goes to .local/results/ (untracked), so a run
 * never dirties the checkout; `--write-docs` rewrites the doc itself.
 */
import { localDir, root } from "./dev-state.ts";

export function replaceMarked(doc: string, sections: Record<string, string>): string {
  let out = doc;
  for (const [name, content] of Object.entries(sections)) {
    const begin = `<!-- results:begin ${name} -->`;
    const end = `<!-- results:end ${name} -->`;
    const from = out.indexOf(begin);
    const to = out.indexOf(end);
    if (from < 0 || to < from) throw new Error(`the doc has no "${begin}" … "${end}" region`);
    out = `${out.slice(0, from + begin.length)}\n\n${content.trim()}\n\n${out.slice(to)}`;
  }
  return out;
}

/** Writes the doc with `sections` replaced; returns the path written. */
export async function writeResults(
  doc: string,
  sections: Record<string, string>,
  options: { writeDocs: boolean },
): Promise<string> {
  const source = `${root}${doc}`;
  const updated = replaceMarked(await Deno.readTextFile(source), sections);
  const target = options.writeDocs ? source : `${localDir}/results/${doc.split("/").at(-1)}`;
  await Deno.mkdir(target.slice(0, target.lastIndexOf("/")), { recursive: true });
  await Deno.writeTextFile(target, await formatMarkdown(updated));
  return target;
}

/** `deno fmt` the text, so a written doc stays `deno fmt --check` clean. */
async function formatMarkdown(text: string): Promise<string> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["fmt", "--ext", "md", "-"],
    cwd: root,
    stdin: "piped",
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(text));
  await writer.close();
  const out = await child.output();
  return out.success ? new TextDecoder().decode(out.stdout) : text;
}
