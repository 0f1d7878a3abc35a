/** Starting the bench/reliability helper processes and reading their resident memory. */

export interface Service {
  port: number;
  url: string;
  pid: number;
  /** Milliseconds from spawn to the `{"port"}` line. */
  startedInMs: number;
  stop(): Promise<void>;
}

const here = new URL("./", import.meta.url).pathname;

export async function spawnService(
  script: string,
  env: Record<string, string>,
  timeoutMs = 60_000,
  denoFlags: string[] = [],
): Promise<Service> {
  const started = performance.now();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", "--no-check", ...denoFlags, `${here}${script}`],
    env: { ...env, NO_COLOR: "1" },
    stdout: "piped",
    stderr: "inherit",
    stdin: "null",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  const timer = setTimeout(() => {
    try {
      child.kill("SIGKILL");
    } catch { /* gone */ }
  }, timeoutMs);
  try {
    while (true) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`${script} exited before listening`);
      buffered += value;
      const m = /\{"port":(\d+)\}/.exec(buffered);
      if (m) {
        const port = Number(m[1]);
        // Keep draining stdout so the child never blocks on a full pipe.
        (async () => {
          try {
            while (!(await reader.read()).done) { /* discard */ }
          } catch { /* closed */ }
        })();
        return {
          port,
          url: `http://127.0.0.1:${port}`,
          pid: child.pid,
          startedInMs: performance.now() - started,
          async stop() {
            try {
              child.kill("SIGTERM");
            } catch { /* already gone */ }
            const killer = setTimeout(() => {
              try {
                child.kill("SIGKILL");
              } catch { /* gone */ }
            }, 5000);
            await child.status;
            clearTimeout(killer);
          },
        };
      }
    }
  } finally {
    clearTimeout(timer);
  }
}

/** Resident set size of a process, in MiB (Linux /proc). */
export async function residentMiB(pid: number): Promise<number> {
  const status = await Deno.readTextFile(`/proc/${pid}/status`);
  const kb = Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? NaN);
  return kb / 1024;
}

/** CPU time (user + system) a process has used, in milliseconds (Linux /proc, 100 ticks/s). */
export async function cpuMs(pid: number): Promise<number> {
  try {
    const fields = (await Deno.readTextFile(`/proc/${pid}/stat`)).split(") ")[1]!.split(" ");
    return (Number(fields[11]) + Number(fields[12])) * 10;
  } catch {
    return 0; // the process has exited
  }
}

/** The postmaster of a data directory and its children (backends, WAL writer, ...). */
export async function postgresPids(dataDir: string): Promise<number[]> {
  const postmaster = Number((await Deno.readTextFile(`${dataDir}/postmaster.pid`)).split("\n")[0]);
  const pids = [postmaster];
  for await (const entry of Deno.readDir("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    try {
      const stat = await Deno.readTextFile(`/proc/${entry.name}/stat`);
      if (Number(stat.split(") ")[1]!.split(" ")[1]) === postmaster) pids.push(Number(entry.name));
    } catch { /* gone */ }
  }
  return pids;
}
