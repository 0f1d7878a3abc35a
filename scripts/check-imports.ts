/**
 * `deno task check` (last step): the function's own imports
 * (supabase/functions/agent-chat/deno.json, what `supabase functions deploy`
 * bundles with) pin the same versions as the repository-wide
 * import_map.json (what the tests and scripts run with), so the code that is
 * tested is the code that is deployed. Exit 1 names every mismatch.
 */
const root = new URL("../", import.meta.url).pathname;
const readImports = async (path: string): Promise<Record<string, string>> =>
  JSON.parse(await Deno.readTextFile(`${root}${path}`)).imports ?? {};

const fn = "supabase/functions/agent-chat/deno.json";
const functionImports = await readImports(fn);
const repoImports = await readImports("import_map.json");
const problems: string[] = [];
for (const [name, spec] of Object.entries(functionImports)) {
  if (!spec.startsWith("npm:")) {
    problems.push(`${fn}: "${name}" is ${spec}; only npm: is reachable`);
  }
  if (repoImports[name] !== spec) {
    problems.push(
      `${fn}: "${name}" is ${spec}, import_map.json has ${repoImports[name] ?? "nothing"}`,
    );
  }
}
if (problems.length > 0) {
  console.error(problems.map((p) => `error: ${p}`).join("\n"));
  Deno.exit(1);
}
console.log(
  `${fn}: ${Object.keys(functionImports).length} imports, same versions as import_map.json`,
);
