/**
 * The persistent local stack behind `deno task dev` and `deno task token`:
 * PostgreSQL in .local/postgres (migrated on every start), Redis, and the
 * Auth signing key in .local/auth-key.json, so tokens survive restarts.
 */
import type { JWK } from "jose";
import { newSigningKey } from "../supabase/tests/support/auth-stand-in.ts";

export const root = new URL("../", import.meta.url).pathname;
export const localDir = `${root}.local`;
export const stateFile = `${localDir}/dev.json`;

export interface DevState {
  databaseUrl: string;
  redisUrl: string;
  functionUrl: string;
  secretKey: string;
  pid: number;
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
