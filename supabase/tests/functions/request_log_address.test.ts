/**
 * Finding (attack): the function's log is kept by the platform for the
 * plan's log retention, out of reach of erasure (ops.forget_user) and of
 * retention (ops.purge_expired, which keeps only the address block after
 * usage_personal_days). So the `request` line names the client's address
 * block as retention keeps it (ops.address_block: a.b.c.0/24, the IPv6 /64),
 * never the full address.
 */
import { assertEquals } from "./assert.ts";
import { requestLogLine } from "../../functions/agent-chat/request-log.ts";

const settings = { sessionStore: "supabase", transport: "http" };

function line(clientIp: string | undefined) {
  const facts = {
    requestId: "r-1",
    started: 0,
    orgId: crypto.randomUUID(),
    userId: crypto.randomUUID(),
    clientIp,
  };
  const [, , fields] = requestLogLine(settings, facts as never, 200, {} as never, 5);
  return fields as Record<string, unknown>;
}

Deno.test("request log: an IPv4 address is logged as its /24 block, never in full", () => {
  const fields = line("198.51.100.23");
  assertEquals(JSON.stringify(fields).includes("198.51.100.23"), false);
  assertEquals(fields.client_ip_block, "198.51.100.0/24");
  assertEquals("client_ip" in fields, false);
});

Deno.test("request log: an IPv6 address as its /64, an IPv4-mapped one as its IPv4 /24", () => {
  assertEquals(line("2001:db8:1:2:aaaa:bbbb:cccc:dddd").client_ip_block, "2001:db8:1:2::/64");
  assertEquals(line("::ffff:203.0.113.9").client_ip_block, "203.0.113.0/24");
});

Deno.test("request log: no address is logged as null (the proxy-hop misconfiguration sign)", () => {
  assertEquals(line(undefined).client_ip_block, null);
});
