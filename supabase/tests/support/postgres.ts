/**
 * A real PostgreSQL 15 server owned by the caller: initdb into a folder, a
 * loopback port, trust authentication for local connections only. When run
 * as root the server runs as the unprivileged `postgres` user (setpriv).
 */
import { findPostgresTools, freePort, MissingToolError, run } from "./tools.ts";

export interface PostgresServer {
  port: number;
  url: string;
  dataDir: string;
  hasPgCron: boolean;
  /** Stops the server (fast shutdown) and, for a throwaway cluster, removes its files. */
  stop(): Promise<void>;
  /** Stops the server but keeps it restartable (fault tests). */
  pause(): Promise<void>;
  resume(): Promise<void>;
}

export interface StartPostgresOptions {
  /** Persistent data folder; default: a new temporary folder removed on stop. */
  dataDir?: string;
  port?: number;
  /** fsync off and friends: for tests, never for figures about durability. */
  fast?: boolean;
  extraSettings?: Record<string, string>;
  /** The cluster's bootstrap superuser, and the user of `url` (default postgres). */
  superuser?: string;
}

const isRoot = Deno.uid() === 0;

async function unprivilegedIds(): Promise<{ uid: number; gid: number } | null> {
  if (!isRoot) return null;
  const passwd = await Deno.readTextFile("/etc/passwd");
  const line = passwd.split("\n").find((l) => l.startsWith("postgres:"));
  if (!line) {
    throw new MissingToolError(
      "running as root but there is no `postgres` user to run the server as; install postgresql-15 (it creates one)",
    );
  }
  const [, , uid, gid] = line.split(":");
  return { uid: Number(uid), gid: Number(gid) };
}

function asServerUser(
  ids: { uid: number; gid: number } | null,
  cmd: string,
  args: string[],
): [string, string[]] {
  if (!ids) return [cmd, args];
  return ["setpriv", [
    `--reuid=${ids.uid}`,
    `--regid=${ids.gid}`,
    "--clear-groups",
    "--",
    cmd,
    ...args,
  ]];
}

export async function startPostgres(options: StartPostgresOptions = {}): Promise<PostgresServer> {
  const tools = await findPostgresTools();
  const ids = await unprivilegedIds();
  const superuser = options.superuser ?? "postgres";
  const throwaway = !options.dataDir;
  const base = options.dataDir ?? await Deno.makeTempDir({ prefix: "agent-chat-pg-" });
  const dataDir = `${base}/data`;
  await Deno.mkdir(base, { recursive: true });
  if (ids) await Deno.chown(base, ids.uid, ids.gid);

  let fresh = false;
  try {
    await Deno.stat(`${dataDir}/PG_VERSION`);
  } catch {
    fresh = true;
    const [cmd, args] = asServerUser(ids, `${tools.bin}/initdb`, [
      "-D",
      dataDir,
      "-U",
      superuser,
      "--auth=trust",
      "--encoding=UTF8",
      "--locale=C.UTF-8",
    ]);
    const res = await run(cmd, args);
    if (res.code !== 0) throw new Error(`initdb failed:\n${res.stderr || res.stdout}`);
  }

  const port = options.port ?? freePort();
  const settings: Record<string, string> = {
    listen_addresses: "127.0.0.1",
    unix_socket_directories: base,
    max_connections: "300",
    shared_buffers: "256MB",
    log_min_messages: "warning",
    ...(tools.hasPgCron
      ? { shared_preload_libraries: "pg_cron", "cron.database_name": "postgres" }
      : {}),
    ...(options.fast ? { fsync: "off", synchronous_commit: "off", full_page_writes: "off" } : {}),
    ...options.extraSettings,
  };
  const args = ["-D", dataDir, "-p", String(port)];
  for (const [k, v] of Object.entries(settings)) args.push("-c", `${k}=${v}`);

  let child: Deno.ChildProcess | null = null;
  const logPath = `${base}/postgres.log`;

  const url = `postgres://${superuser}@127.0.0.1:${port}/postgres`;

  async function startServer() {
    const [cmd, cmdArgs] = asServerUser(ids, `${tools.bin}/postgres`, args);
    const out = await Deno.open(logPath, { create: true, append: true });
    const err = await Deno.open(logPath, { create: true, append: true });
    child = new Deno.Command(cmd, {
      args: cmdArgs,
      stdout: "piped",
      stderr: "piped",
      stdin: "null",
    }).spawn();
    child.stdout.pipeTo(out.writable).catch(() => {});
    child.stderr.pipeTo(err.writable).catch(() => {});
    const deadline = Date.now() + 30_000;
    while (true) {
      const ready = await run("psql", [url, "-Atqc", "select 1"]);
      if (ready.code === 0) break;
      if (Date.now() > deadline) {
        const tail = await Deno.readTextFile(logPath).catch(() => "");
        throw new Error(`PostgreSQL did not accept connections within 30 s:\n${tail.slice(-2000)}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  async function stopServer() {
    const proc = child;
    child = null;
    if (!proc) return;
    try {
      proc.kill("SIGINT");
    } catch {
      return;
    }
    const timer = setTimeout(() => {
      try {
        proc.kill("SIGKILL");
      } catch { /* already gone */ }
    }, 10_000);
    await proc.status;
    clearTimeout(timer);
  }

  await startServer();
  if (fresh) {
    const created = await run("psql", [url, "-Atqc", "select 1"]);
    if (created.code !== 0) throw new Error(created.stderr);
  }

  return {
    port,
    url,
    dataDir,
    hasPgCron: tools.hasPgCron,
    async stop() {
      await stopServer();
      if (throwaway) await Deno.remove(base, { recursive: true }).catch(() => {});
    },
    pause: stopServer,
    resume: startServer,
  };
}
