/** Percentiles and formatting for the benchmark and reliability reports. */

export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank]!;
}

export function median(values: number[]): number {
  return percentile([...values].sort((a, b) => a - b), 50);
}

/** A steady-state pgbench run: `warm` seconds to warm its new connections, then `measured`. */
export interface Steady {
  warm: number;
  measured: number;
}

/** pgbench arguments for a steady-state run (progress every second). */
export const steadyArgs = (s: Steady) => ["-T", String(s.warm + s.measured), "-P", "1"];

/**
 * Transactions per second of a pgbench run's output: with `steady`, the mean
 * of its progress lines after the warm-up (each new backend compiles the
 * plpgsql functions and their plans on its first calls, which at 64 clients
 * takes the first 2 to 3 s of a run); without, pgbench's own total.
 */
export function pgbenchTps(out: string, steady?: Steady): number {
  if (!steady) return Number(/tps = ([\d.]+)/.exec(out)?.[1] ?? NaN);
  const seconds = [...out.matchAll(/progress: ([\d.]+) s, ([\d.]+) tps/g)]
    .filter((m) => Number(m[1]) > steady.warm).map((m) => Number(m[2]));
  return seconds.reduce((a, b) => a + b, 0) / seconds.length;
}

export const fixed = (n: number, digits = 2) => (Number.isFinite(n) ? n.toFixed(digits) : "n/a");

export function markdownTable(header: string[], rows: Array<Array<string | number>>): string {
  return [
    `| ${header.join(" | ")} |`,
    `| ${header.map(() => "---").join(" | ")} |`,
    ...rows.map((r) => `| ${r.join(" | ")} |`),
  ].join("\n");
}

export async function machineFacts(): Promise<Record<string, string>> {
  const cpuinfo = await Deno.readTextFile("/proc/cpuinfo").catch(() => "");
  const meminfo = await Deno.readTextFile("/proc/meminfo").catch(() => "");
  const out = async (cmd: string, args: string[]) => {
    try {
      const r = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "null" }).output();
      return new TextDecoder().decode(r.stdout).trim().split("\n")[0] ?? "";
    } catch {
      return "unknown";
    }
  };
  return {
    cpu: /model name\s*:\s*(.*)/.exec(cpuinfo)?.[1] ?? "unknown",
    cores: String(navigator.hardwareConcurrency),
    memory: `${Math.round(Number(/MemTotal:\s+(\d+)/.exec(meminfo)?.[1] ?? 0) / 1024 / 1024)} GiB`,
    deno: Deno.version.deno,
    postgres: await out("/usr/lib/postgresql/15/bin/postgres", ["--version"]),
    redis: await out("redis-server", ["--version"]),
    kernel: Deno.osRelease(),
  };
}
