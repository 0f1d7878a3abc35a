/** Reading a process' resident memory and CPU time, and a cluster's processes (Linux /proc). */

/** Resident set size of a process, in MiB (Linux /proc). */
export async function residentMiB(pid: number): Promise<number> {
  const status = await Deno.readTextFile(`/proc/${pid}/status`);
  const kb = Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? NaN);
  return kb / 1024;
}

/**
 * CPU time (user + system) a process has used, with that of its children that
 * have exited (so a postmaster counts the backends of connections that came and
 * went, as pgbench's do), in milliseconds (Linux /proc, 100 ticks/s).
 */
export async function cpuMs(pid: number): Promise<number> {
  try {
    const fields = (await Deno.readTextFile(`/proc/${pid}/stat`)).split(") ")[1]!.split(" ");
    return (Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14])) * 10;
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
