/**
 * A real redis-server on a free loopback port, persisting nothing, owned by
 * the caller.
 */
import { findRedisServer, freePort } from "./tools.ts";

export interface RedisServer {
  port: number;
  url: string;
  stop(): Promise<void>;
  pause(): Promise<void>;
  resume(): Promise<void>;
  /** Stops the process (SIGSTOP) without closing a connection: every command hangs until `thaw`. */
  freeze(): void;
  thaw(): void;
}

/**
 * `durable`: append-only file with fsync on every write, as a production
 * Redis (or Upstash) keeps data across restarts; otherwise nothing is kept.
 */
export async function startRedis(
  options: { port?: number; durable?: boolean } = {},
): Promise<RedisServer> {
  const bin = await findRedisServer();
  const port = options.port ?? freePort();
  const dir = await Deno.makeTempDir({ prefix: "agent-chat-redis-" });
  let child: Deno.ChildProcess | null = null;

  async function ping(): Promise<boolean> {
    try {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      await conn.write(new TextEncoder().encode("PING\r\n"));
      const buf = new Uint8Array(16);
      const n = await conn.read(buf);
      conn.close();
      return n !== null && new TextDecoder().decode(buf.subarray(0, n)).startsWith("+PONG");
    } catch {
      return false;
    }
  }

  async function startServer() {
    child = new Deno.Command(bin, {
      args: [
        "--bind",
        "127.0.0.1",
        "--port",
        String(port),
        "--save",
        "",
        "--appendonly",
        options.durable ? "yes" : "no",
        ...(options.durable ? ["--appendfsync", "always"] : []),
        "--dir",
        dir,
        "--daemonize",
        "no",
        "--loglevel",
        "warning",
      ],
      stdout: "null",
      stderr: "null",
      stdin: "null",
    }).spawn();
    const deadline = Date.now() + 10_000;
    while (!(await ping())) {
      if (Date.now() > deadline) {
        throw new Error(`redis-server did not answer PING within 10 s on port ${port}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  async function stopServer() {
    const proc = child;
    child = null;
    if (!proc) return;
    try {
      proc.kill("SIGTERM");
    } catch {
      return;
    }
    await proc.status;
  }

  await startServer();
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    async stop() {
      await stopServer();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
    pause: stopServer,
    resume: startServer,
    freeze: () => child?.kill("SIGSTOP"),
    thaw: () => child?.kill("SIGCONT"),
  };
}
