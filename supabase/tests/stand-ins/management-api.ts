/**
 * Stand-in for the Supabase Management API, the part `supabase functions
 * deploy` uses when it bundles on the server (no Docker):
 *   GET  /v1/projects/{ref}                        the project (for the link)
 *   GET  /v1/projects/{ref}/functions              the deployed functions
 *   POST /v1/projects/{ref}/functions/deploy?slug= multipart: one `metadata`
 *        part (entrypoint_path, import_map_path, static_patterns, verify_jwt,
 *        name) and one `file` part per source file, named by its path.
 * Records every deploy. The CLI reaches it through a profile file
 * (`supabase --profile <file>`) whose `api_url` points here.
 * Not covered: bundling itself (the platform does it), secrets, logs,
 * anything outside the calls above.
 */

export interface RecordedDeploy {
  slug: string;
  metadata: {
    entrypoint_path: string;
    import_map_path?: string;
    static_patterns?: string[];
    verify_jwt?: boolean;
    name?: string;
  };
  /** Uploaded files by path, with their text. */
  files: Map<string, string>;
}

export interface ManagementApiStandIn {
  url: string;
  deploys: RecordedDeploy[];
  /** A profile file for `supabase --profile` that points the CLI here. */
  writeProfile(path: string): Promise<void>;
  close(): Promise<void>;
}

export function createManagementApiStandIn(port = 0): ManagementApiStandIn {
  const deploys: RecordedDeploy[] = [];
  const json = (body: unknown, status = 200) => Response.json(body, { status });
  const server = Deno.serve({ hostname: "127.0.0.1", port, onListen: () => {} }, async (req) => {
    const url = new URL(req.url);
    const project = /^\/v1\/projects\/([a-z0-9]+)(\/.*)?$/.exec(url.pathname);
    if (!project) return json({ message: "not found" }, 404);
    const [, ref, rest = ""] = project;
    if (req.method === "GET" && rest === "") {
      return json({
        id: ref,
        ref,
        name: "stand-in",
        organization_id: "stand-in",
        region: "us-east-1",
        created_at: "2026-01-01T00:00:00Z",
        status: "ACTIVE_HEALTHY",
      });
    }
    if (req.method === "GET" && rest === "/functions") {
      return json(deploys.map((d, i) => ({ id: String(i + 1), slug: d.slug, name: d.slug })));
    }
    if (req.method === "POST" && rest === "/functions/deploy") {
      const slug = url.searchParams.get("slug") ?? "";
      const form = await req.formData();
      const files = new Map<string, string>();
      for (const part of form.getAll("file")) {
        if (part instanceof File) files.set(part.name, await part.text());
      }
      const metadata = JSON.parse(String(form.get("metadata") ?? "{}"));
      deploys.push({ slug, metadata, files });
      const now = Date.now();
      return json({
        id: String(deploys.length),
        slug,
        name: slug,
        status: "ACTIVE",
        version: deploys.length,
        created_at: now,
        updated_at: now,
      }, 201);
    }
    return json({ message: "not covered by the stand-in" }, 404);
  });
  const url = `http://127.0.0.1:${server.addr.port}`;
  return {
    url,
    deploys,
    async writeProfile(path) {
      await Deno.writeTextFile(
        path,
        [
          "name: management-api-stand-in",
          `api_url: ${url}`,
          `dashboard_url: ${url}/dashboard`,
          "project_host: supabase.co",
          "",
        ].join("\n"),
      );
    },
    close: () => server.shutdown(),
  };
}
