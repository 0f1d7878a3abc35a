/**
 * `supabase functions deploy agent-chat` with the pinned CLI and no Docker:
 * the CLI reads [functions.agent-chat] from config.toml and uploads the
 * entrypoint, the function's deno.json as its import map, and every module
 * the entrypoint imports, with verify_jwt = false. A Management API stand-in
 * receives the upload; the platform's bundler is not run here, so
 * `deno task check` type-checks index.ts against that deno.json alone.
 */
import { assert, assertEquals } from "./assert.ts";
import { createManagementApiStandIn } from "../stand-ins/management-api.ts";

const root = new URL("../../../", import.meta.url).pathname;

Deno.test("functions deploy uploads index.ts, its deno.json and every module it imports, verify_jwt off", async () => {
  const api = createManagementApiStandIn();
  // A copy of supabase/ so the CLI's link state (.temp/) stays out of the checkout.
  const work = await Deno.makeTempDir({ prefix: "agent-chat-deploy-" });
  try {
    await Deno.mkdir(`${work}/supabase/functions`, { recursive: true });
    await Deno.copyFile(`${root}supabase/config.toml`, `${work}/supabase/config.toml`);
    for (const dir of ["agent-chat", "_shared"]) {
      await Deno.mkdir(`${work}/supabase/functions/${dir}`);
      for await (const e of Deno.readDir(`${root}supabase/functions/${dir}`)) {
        if (e.isFile) {
          await Deno.copyFile(
            `${root}supabase/functions/${dir}/${e.name}`,
            `${work}/supabase/functions/${dir}/${e.name}`,
          );
        }
      }
    }
    await api.writeProfile(`${work}/profile.yaml`);
    const out = await new Deno.Command(`${root}node_modules/.bin/supabase`, {
      args: [
        "--profile",
        `${work}/profile.yaml`,
        "functions",
        "deploy",
        "agent-chat",
        "--project-ref",
        "abcdefghijklmnopqrst",
        "--use-api",
      ],
      cwd: work,
      env: {
        SUPABASE_ACCESS_TOKEN: `sbp_${"0".repeat(40)}`,
        SUPABASE_TELEMETRY_DISABLED: "1",
      },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    const log = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
    assertEquals(out.code, 0, log);
    assertEquals(api.deploys.length, 1, log);
    const [deploy] = api.deploys;
    assertEquals(deploy.slug, "agent-chat");
    assertEquals(deploy.metadata.entrypoint_path, "supabase/functions/agent-chat/index.ts");
    assertEquals(deploy.metadata.import_map_path, "supabase/functions/agent-chat/deno.json");
    assertEquals(deploy.metadata.verify_jwt, false);
    const imports = JSON.parse(deploy.files.get("supabase/functions/agent-chat/deno.json") ?? "{}")
      .imports ?? {};
    for (const spec of Object.values(imports) as string[]) {
      assert(spec.startsWith("npm:"), `only npm: specifiers reach the platform: ${spec}`);
    }
    // Every relative import of every uploaded module was uploaded too.
    for (const [path, text] of deploy.files) {
      if (!path.endsWith(".ts")) continue;
      for (const m of text.matchAll(/(?:from|import)\s*\(?\s*"(\.{1,2}\/[^"]+)"/g)) {
        const target = new URL(m[1], `file:///${path}`).pathname.slice(1);
        assert(deploy.files.has(target), `${path} imports ${m[1]}, which was not uploaded`);
      }
    }
    assert(deploy.files.has("supabase/functions/agent-chat/handler.ts"));
    assert(deploy.files.has("supabase/functions/_shared/auth.ts"));
    for (const path of deploy.files.keys()) {
      assert(!path.includes("/tests/"), `a test file was uploaded: ${path}`);
    }
  } finally {
    await api.close();
    await Deno.remove(work, { recursive: true });
  }
});
