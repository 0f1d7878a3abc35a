/**
 * recovery.ts, the durable retry: a write is retried until it lands, the
 * rest go once the oldest landed, a write past its `until` gives up once,
 * the queue is bounded; outcomeUnknown tells an unknown outcome from an
 * answered error.
 */
import { assert, assertEquals } from "./assert.ts";
import { createRecovery, outcomeUnknown } from "../../functions/agent-chat/recovery.ts";
import { DatabaseError } from "../../functions/agent-chat/database.ts";

function logger() {
  const lines: Array<{ event: string; fields: Record<string, unknown> }> = [];
  return {
    lines,
    log: (_: string, event: string, fields: Record<string, unknown>) =>
      lines.push({ event, fields }),
  };
}

Deno.test("recovery: a write that fails is retried until the store takes it, then the others follow", async () => {
  const { lines, log } = logger();
  const recovery = createRecovery({ log, baseDelayMs: 5, maxDelayMs: 20 });
  let down = 3;
  const landed: string[] = [];
  const write = (id: string) => ({
    name: "usage row",
    requestId: id,
    attempt: () => {
      if (down > 0) {
        down--;
        return Promise.reject(new Error("connection refused"));
      }
      landed.push(id);
      return Promise.resolve();
    },
  });
  recovery.retry(write("a"));
  recovery.retry(write("b"));
  await recovery.settled(2000);
  assertEquals(landed.sort(), ["a", "b"]);
  assertEquals(recovery.pending, 0);
  assertEquals(lines.filter((l) => l.event === "write_recovered").length, 2);
});

Deno.test("recovery: past its until a write gives up once; past maxPending the oldest is dropped", async () => {
  const { lines, log } = logger();
  let clock = 0;
  const recovery = createRecovery({
    log,
    now: () => clock,
    baseDelayMs: 1,
    maxDelayMs: 2,
    maxPending: 2,
  });
  let gaveUp = 0;
  const failing = (id: string, until?: number) => ({
    name: "turn save",
    requestId: id,
    attempt: () => Promise.reject(new Error("timeout")),
    until,
    giveUp: () => Promise.resolve(void gaveUp++),
  });
  recovery.retry(failing("first", 10)); // in flight at once
  recovery.retry(failing("x", 10));
  recovery.retry(failing("y", 10));
  recovery.retry(failing("z", 10)); // two pending already: the oldest goes
  assert(lines.some((l) => l.event === "write_dropped" && l.fields.request_id === "x"));
  clock = 11;
  const until = performance.now() + 2000;
  while (recovery.pending > 0 && performance.now() < until) {
    recovery.nudge();
    await new Promise((r) => setTimeout(r, 5));
  }
  assertEquals(gaveUp, 3, "first, y and z each gave up once");
  assertEquals(lines.filter((l) => l.event === "write_given_up").length, 3);
});

Deno.test("recovery: a write gives up at its until, not a backoff later, even behind a failing write with no until", async () => {
  const { log } = logger();
  // Backoff of 2 to 5 s: without the cap the give-up would wait for it.
  const recovery = createRecovery({ log, baseDelayMs: 2000, maxDelayMs: 5000 });
  const start = performance.now();
  let gaveUpAt = -1;
  let headDown = true;
  recovery.retry({
    name: "usage row",
    requestId: "head",
    attempt: () => headDown ? Promise.reject(new Error("connection refused")) : Promise.resolve(),
  });
  recovery.retry({
    name: "turn save",
    requestId: "deadline",
    attempt: () => Promise.reject(new Error("connection refused")),
    until: start + 150,
    giveUp: () => Promise.resolve(void (gaveUpAt = performance.now() - start)),
  });
  const bound = performance.now() + 1500;
  while (gaveUpAt < 0 && performance.now() < bound) await new Promise((r) => setTimeout(r, 10));
  assert(gaveUpAt >= 150, `gave up at ${gaveUpAt} ms, not before its until`);
  assert(gaveUpAt < 1500, `gave up at ${gaveUpAt} ms, within the bound (the backoff is 4 s)`);
  assertEquals(recovery.pending, 1, "the write with no until is still pending");
  headDown = false; // the store is back: the next pass lands it and the loop ends
  recovery.nudge();
  await recovery.settled(2000);
  assertEquals(recovery.pending, 0);
});

Deno.test("recovery: deadlines coming one after another do not retry the failing head each time, and a give-up is not the store coming back", async () => {
  const { log } = logger();
  const recovery = createRecovery({ log, baseDelayMs: 200, maxDelayMs: 5000 });
  let headTries = 0, otherTries = 0, gaveUp = 0, storeUp = false;
  recovery.retry({
    name: "usage row",
    requestId: "head",
    attempt: () => {
      headTries++;
      return storeUp ? Promise.resolve() : Promise.reject(new Error("connection refused"));
    },
  });
  for (let i = 0; i < 20; i++) {
    recovery.retry({
      name: "turn save",
      requestId: `save-${i}`,
      attempt: () => {
        otherTries++;
        return Promise.reject(new Error("connection refused"));
      },
      until: performance.now() + 50,
      giveUp: () => Promise.resolve(void gaveUp++),
    });
    await new Promise((r) => setTimeout(r, 15));
  }
  const bound = performance.now() + 2000;
  while (gaveUp < 20 && performance.now() < bound) await new Promise((r) => setTimeout(r, 10));
  assertEquals(gaveUp, 20, "every save gave up at its deadline");
  // The loop ran ~0.4 s: the head is tried on its backoff (0.15 to 0.2 s, then 0.3 to 0.4 s), not at each of 20 deadlines.
  assert(headTries <= 4, `the head was tried ${headTries} times`);
  assert(
    otherTries <= 40,
    `the saves were tried ${otherTries} times (at most a pass and a last try each)`,
  );
  storeUp = true;
  recovery.nudge();
  await recovery.settled(2000);
  assertEquals(recovery.pending, 0);
});

Deno.test("recovery: outcomeUnknown is true for timeouts and lost connections, false for an answered error", () => {
  assert(outcomeUnknown(new DatabaseError("agent_finish_turn: no answer within 400 ms")));
  assert(
    outcomeUnknown(
      Object.assign(new Error("write CONNECTION_DESTROYED"), { code: "CONNECTION_DESTROYED" }),
    ),
  );
  assert(outcomeUnknown(Object.assign(new Error("reset"), { code: "EPIPE" })));
  assert(outcomeUnknown(new DatabaseError("terminating connection", "57P01")));
  assert(outcomeUnknown(new DatabaseError("deadlock", "40P01")));
  assert(!outcomeUnknown(new DatabaseError("invalid input syntax", "22P02")));
  assert(!outcomeUnknown(new DatabaseError("raise", "P0001")));
  assert(!outcomeUnknown(Object.assign(new Error("ERR script"), { name: "ReplyError" })));
});
