/**
 * Finding (adversarial review): "loopback" was any hostname starting with `127.`, so a
 * name such as `127.0.0.1.nip.io` (which resolves wherever its owner likes)
 * passed as loopback: alert destinations, the model base URL and Redis
 * could be plain http/redis to another host. Only IPv4 127.0.0.0/8
 * literals, `localhost` and `::1` are loopback.
 */
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { isLoopback } from "../../functions/_shared/env.ts";
import { ConfigError, loadAlertsConfig } from "../../functions/agent-alerts/config.ts";

function problems(url: string): string[] {
  try {
    loadAlertsConfig({
      SUPABASE_URL: "https://abc.supabase.co",
      SUPABASE_SERVICE_ROLE_KEY: "k".repeat(40),
      AI_AGENT_ALERT_SLACK_WEBHOOK_URL: url,
    });
    return [];
  } catch (error) {
    assert(error instanceof ConfigError);
    return error.problems;
  }
}

Deno.test("loopback hostname: a DNS name that starts with 127. is not loopback", () => {
  for (
    const host of ["127.0.0.1.nip.io", "127.evil.example", "127.0.0.1.", "localhost.evil.example"]
  ) {
    assertEquals(isLoopback(host), false, host);
  }
  for (const host of ["127.0.0.1", "127.1.2.3", "localhost", "[::1]", "::1"]) {
    assertEquals(isLoopback(host), true, host);
  }
  assertMatch(problems("http://127.0.0.1.nip.io/hook").join(), /must be https/);
  assertMatch(problems("http://127.attacker.example/hook").join(), /must be https/);
  assertEquals(problems("http://127.0.0.1:9/hook"), []);
  assertEquals(problems("http://127.1:9/hook"), []); // the URL parser spells it 127.0.0.1
});
