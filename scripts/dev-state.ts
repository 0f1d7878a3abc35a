/**
 * What the running `npm run dev` stack leaves for the other commands
 * (`deno task token`, `deno task ops`, a second `npm run dev`): its state
 * file .local/dev.json; and what stays the same across restarts: the Auth
 * signing key in .local/auth-key.json (tokens survive restarts), the
 * project's API keys and the database port in .local/dev-settings.json.
 * AGENT_CHAT_LOCAL_DIR moves the folder.
 */
import type { JWK } from "jose";
import { newSigningKey } from "../supabase/tests/stand-ins/auth.ts";
import { newApiKey } from "../supabase/tests/support/local-stack.ts";
import { CliError, messageOf } from "./cli.ts";

export const root = new URL("../", import.meta.url).pathname;
export const localDir = Deno.env.get("AGENT_CHAT_LOCAL_DIR") || `${root}.local`;
export const stateFile = `${localDir}/dev.json`;

export interface DevState {
  databaseUrl: string;
  redisUrl: string;
  /** The project URL (supabase-js' `createClient` first argument). */
  projectUrl?: string;
  functionUrl: string;
  secretKey: string;
  /** The publishable (anon) key: `createClient`'s second argument. */
  publishableKey?: string;
  pid: number;
}

/** Kept across restarts in .local/dev-settings.json (mode 0600). */
export interface DevSettings {
  secretKey: string;
  publishableKey: string;
  /** The database port of the last start; the next start takes it again while it is free. */
  dbPort?: number;
}

export const settingsFile = `${localDir}/dev-settings.json`;

/** The saved settings, with new API keys for what was never saved (and saved at once). */
export async function devSettings(): Promise<DevSettings> {
  let saved: Partial<DevSettings> = {};
  try {
    saved = JSON.parse(await Deno.readTextFile(settingsFile));
  } catch (error) {
    // A file that cannot be read would silently change the keys apps were given: say so instead.
    if (!(error instanceof Deno.errors.NotFound)) {
      throw new CliError(
        `${settingsFile}: not readable JSON (${messageOf(error)}); fix or delete it`,
      );
    }
  }
  const settings: DevSettings = {
    ...saved,
    secretKey: saved.secretKey ?? newApiKey("secret"),
    publishableKey: saved.publishableKey ?? newApiKey("publishable"),
  };
  await saveDevSettings(settings);
  return settings;
}

export async function saveDevSettings(settings: DevSettings): Promise<void> {
  await Deno.mkdir(localDir, { recursive: true });
  await Deno.writeTextFile(settingsFile, JSON.stringify(settings, null, 2), { mode: 0o600 });
}

export async function signingKey(): Promise<JWK> {
  const path = `${localDir}/auth-key.json`;
  try {
    return JSON.parse(await Deno.readTextFile(path));
  } catch {
    await Deno.mkdir(localDir, { recursive: true });
    const key = await newSigningKey();
    await Deno.writeTextFile(path, JSON.stringify(key), { mode: 0o600 });
    return key;
  }
}

export async function readState(): Promise<DevState | undefined> {
  try {
    return JSON.parse(await Deno.readTextFile(stateFile));
  } catch {
    return undefined;
  }
}

/** The state of a dev stack whose process is still alive, if there is one. */
export async function runningState(): Promise<DevState | undefined> {
  const state = await readState();
  if (!state || !Number.isInteger(state.pid)) return undefined;
  const exists = (path: string) => Deno.stat(path).then(() => true, () => false);
  if (await exists("/proc/self")) {
    // A stale file from a stack that was killed names a process that is gone.
    return await exists(`/proc/${state.pid}`) ? state : undefined;
  }
  // No /proc (macOS): ask the gateway itself.
  try {
    await fetch(state.functionUrl, { method: "OPTIONS", signal: AbortSignal.timeout(1000) })
      .then((r) => r.body?.cancel());
    return state;
  } catch {
    return undefined;
  }
}
