/**
 * Finding the PostgreSQL and Redis programs the harness needs, with a clear
 * message naming the Debian package when one is missing.
 */

export interface PostgresTools {
  bin: string;
  pgProve: string | null;
  hasPgCron: boolean;
  hasPgTap: boolean;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

export async function which(name: string): Promise<string | null> {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    if (dir && await exists(`${dir}/${name}`)) return `${dir}/${name}`;
  }
  return null;
}

export class MissingToolError extends Error {}

export async function findPostgresTools(): Promise<PostgresTools> {
  const candidates = [Deno.env.get("PG_BIN"), "/usr/lib/postgresql/15/bin"].filter(
    Boolean,
  ) as string[];
  let bin: string | null = null;
  for (const dir of candidates) {
    if (await exists(`${dir}/initdb`) && await exists(`${dir}/postgres`)) {
      bin = dir;
      break;
    }
  }
  if (!bin) {
    throw new MissingToolError(
      "PostgreSQL 15 server not found (looked in $PG_BIN and /usr/lib/postgresql/15/bin). " +
        "Install the Debian package: apt-get install postgresql-15 postgresql-15-pgtap " +
        "libtap-parser-sourcehandler-pgtap-perl postgresql-15-cron",
    );
  }
  const share = "/usr/share/postgresql/15/extension";
  return {
    bin,
    pgProve: await which("pg_prove"),
    hasPgCron: await exists(`${share}/pg_cron.control`),
    hasPgTap: await exists(`${share}/pgtap.control`),
  };
}

export async function findRedisServer(): Promise<string> {
  const path = Deno.env.get("REDIS_SERVER") ?? await which("redis-server");
  if (!path) {
    throw new MissingToolError(
      "redis-server not found. Install the Debian package: apt-get install redis-server",
    );
  }
  return path;
}

/** A free TCP port on 127.0.0.1 (the OS picks it; we release it at once). */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

export async function run(
  cmd: string,
  args: string[],
  options: { env?: Record<string, string>; cwd?: string; stdin?: string } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const child = new Deno.Command(cmd, {
    args,
    env: options.env,
    cwd: options.cwd,
    stdin: options.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (options.stdin !== undefined) {
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(options.stdin));
    await writer.close();
  }
  const out = await child.output();
  const decoder = new TextDecoder();
  return { code: out.code, stdout: decoder.decode(out.stdout), stderr: decoder.decode(out.stderr) };
}
