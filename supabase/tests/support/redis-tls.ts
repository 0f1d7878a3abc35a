/**
 * A redis-server speaking TLS on loopback, for the `rediss://` path: a test
 * CA and a server certificate for 127.0.0.1 made with openssl at start (the
 * runtime trusts the CA only when handed it, e.g. DENO_CERT), a TLS port
 * for the function and a plain loopback port for the test to inspect keys.
 */
import { findRedisServer, freePort } from "./tools.ts";

export interface TlsRedis {
  /** rediss://127.0.0.1:<tls port> */
  url: string;
  /** The plain port, for inspection (TTL, keys). */
  plainPort: number;
  /** The test CA's certificate (PEM file), for DENO_CERT. */
  caFile: string;
  stop(): Promise<void>;
}

async function openssl(args: string[], cwd: string) {
  const out = await new Deno.Command("openssl", { args, cwd, stdout: "null", stderr: "piped" })
    .output();
  if (!out.success) {
    throw new Error(`openssl ${args[0]} failed: ${new TextDecoder().decode(out.stderr)}`);
  }
}

/** A CA, and a server key + certificate it signed for IP 127.0.0.1 (one day). */
async function makeCertificates(dir: string) {
  await openssl([
    "req",
    "-x509",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
    "-keyout",
    "ca.key",
    "-out",
    "ca.pem",
    "-days",
    "1",
    "-subj",
    "/CN=agent-chat test CA",
  ], dir);
  await openssl([
    "req",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
    "-keyout",
    "server.key",
    "-out",
    "server.csr",
    "-subj",
    "/CN=127.0.0.1",
  ], dir);
  await Deno.writeTextFile(`${dir}/ext.cnf`, "subjectAltName=IP:127.0.0.1\n");
  await openssl([
    "x509",
    "-req",
    "-in",
    "server.csr",
    "-CA",
    "ca.pem",
    "-CAkey",
    "ca.key",
    "-CAcreateserial",
    "-out",
    "server.pem",
    "-days",
    "1",
    "-extfile",
    "ext.cnf",
  ], dir);
}

export async function startTlsRedis(): Promise<TlsRedis> {
  const dir = await Deno.makeTempDir({ prefix: "agent-chat-redis-tls-" });
  await makeCertificates(dir);
  const plainPort = freePort();
  const tlsPort = freePort();
  const child = new Deno.Command(await findRedisServer(), {
    args: [
      ...["--bind", "127.0.0.1", "--port", String(plainPort), "--tls-port", String(tlsPort)],
      ...["--tls-cert-file", `${dir}/server.pem`, "--tls-key-file", `${dir}/server.key`],
      ...["--tls-ca-cert-file", `${dir}/ca.pem`, "--tls-auth-clients", "no"],
      ...["--save", "", "--appendonly", "no", "--dir", dir, "--loglevel", "warning"],
    ],
    stdout: "null",
    stderr: "piped",
    stdin: "null",
  }).spawn();
  const stop = async () => {
    try {
      child.kill("SIGTERM");
    } catch { /* gone */ }
    await child.status;
    await child.stderr.cancel().catch(() => {});
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  };
  const deadline = Date.now() + 10_000;
  while (true) {
    try {
      (await Deno.connect({ hostname: "127.0.0.1", port: tlsPort })).close();
      break;
    } catch {
      if (Date.now() > deadline) {
        await stop();
        throw new Error("redis-server with TLS did not listen within 10 s (built without TLS?)");
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  return { url: `rediss://127.0.0.1:${tlsPort}`, plainPort, caFile: `${dir}/ca.pem`, stop };
}

/** `redis-cli -p <plain port> args…`, trimmed. */
export async function redisCli(port: number, ...args: string[]): Promise<string> {
  const out = await new Deno.Command("redis-cli", {
    args: ["-h", "127.0.0.1", "-p", String(port), ...args],
    stdout: "piped",
    stderr: "null",
  }).output();
  return new TextDecoder().decode(out.stdout).trim();
}
