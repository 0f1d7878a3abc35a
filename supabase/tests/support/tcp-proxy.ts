/**
 * A TCP proxy for fault tests. It forwards to a target until `blackhole()`:
 * from then on every connection it holds, and every new one until
 * `restore()`, swallows what it receives and never answers: a half-open
 * socket, as a database restart or a network cut can leave behind.
 * Connections made after `restore()` are forwarded again; the swallowed ones
 * stay dead.
 */

export interface TcpProxy {
  port: number;
  blackhole(): void;
  restore(): void;
  stop(): Promise<void>;
}

export function startTcpProxy(target: { hostname: string; port: number }): TcpProxy {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  let swallowing = false;
  const open = new Set<{ dead: boolean; close(): void }>();

  async function pump(from: Deno.Conn, to: Deno.Conn | null, pair: { dead: boolean }) {
    const buffer = new Uint8Array(64 * 1024);
    try {
      while (true) {
        const n = await from.read(buffer);
        if (n === null) break;
        if (!pair.dead && to) await to.write(buffer.subarray(0, n));
      }
    } catch { /* closed */ }
  }

  (async () => {
    for await (const client of listener) {
      const pair = {
        dead: swallowing,
        upstream: null as Deno.Conn | null,
        close() {
          try {
            client.close();
          } catch { /* closed */ }
          try {
            this.upstream?.close();
          } catch { /* closed */ }
        },
      };
      open.add(pair);
      if (pair.dead) {
        pump(client, null, pair).finally(() => open.delete(pair));
        continue;
      }
      Deno.connect(target).then((upstream) => {
        pair.upstream = upstream;
        Promise.all([pump(client, upstream, pair), pump(upstream, client, pair)]).finally(() => {
          pair.close();
          open.delete(pair);
        });
      }, () => pair.close());
    }
  })().catch(() => {});

  return {
    port: (listener.addr as Deno.NetAddr).port,
    blackhole() {
      swallowing = true;
      for (const pair of open) pair.dead = true;
    },
    restore() {
      swallowing = false;
    },
    stop() {
      listener.close();
      for (const pair of open) pair.close();
      return Promise.resolve();
    },
  };
}
