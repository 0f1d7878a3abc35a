/**
 * The client's IP address, from the forwarding headers the platform's own
 * proxies append. With N trusted proxy hops the client is the N-th entry of
 * `X-Forwarded-For` counted from the right: everything left of it was
 * written by the client and can be forged. 0 hops ignores the header and
 * uses the connection's peer address.
 */

const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

export function normalizeIp(raw: string | null | undefined): string | undefined {
  if (!raw) return undefined;
  let v = raw.trim();
  // "[::1]:443" or "1.2.3.4:5678"
  const bracket = /^\[([^\]]+)\](?::\d+)?$/.exec(v);
  if (bracket) v = bracket[1]!;
  else if (/^\d+\.\d+\.\d+\.\d+:\d+$/.test(v)) v = v.slice(0, v.lastIndexOf(":"));
  if (IPV4.test(v)) return v;
  if (v.includes(":") && v.length <= 45 && /^[0-9a-fA-F:.]+$/.test(v)) {
    try {
      // URL parsing validates and canonicalises IPv6 (lowercase, compressed).
      const host = new URL(`http://[${v}]/`).hostname.slice(1, -1);
      // An IPv4 client seen through a dual-stack socket: the same client as its dotted form.
      const mapped = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(host);
      if (!mapped) return host;
      const [hi, lo] = [parseInt(mapped[1]!, 16), parseInt(mapped[2]!, 16)];
      return `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
    } catch {
      return undefined;
    }
  }
  return undefined;
}

export function clientIpFrom(
  headers: Headers,
  trustedHops: number,
  peerAddress: string | undefined,
): string | undefined {
  if (trustedHops <= 0) return normalizeIp(peerAddress);
  const forwarded = headers.get("x-forwarded-for");
  if (!forwarded) return undefined;
  const entries = forwarded.split(",").map((s) => s.trim()).filter(Boolean);
  if (entries.length < trustedHops) return undefined;
  return normalizeIp(entries[entries.length - trustedHops]);
}

/**
 * The block one subscriber controls, for per-address limits: an IPv4 address
 * itself, an IPv6 address's /64 (a single host can rotate through the 2^64
 * interface ids of its prefix). `unknown` when there is no address.
 */
export function addressBlock(ip: string | undefined): string {
  if (!ip) return "unknown";
  if (!ip.includes(":")) return ip;
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip);
  if (mapped) return mapped[1]!;
  const [head = "", tail = ""] = ip.split("::");
  const left = head ? head.split(":") : [];
  const right = tail ? tail.split(":") : [];
  const groups = ip.includes("::")
    ? [...left, ...Array(Math.max(0, 8 - left.length - right.length)).fill("0"), ...right]
    : left;
  return `${groups.slice(0, 4).map((g) => g.replace(/^0+(?=.)/, "")).join(":")}::/64`;
}

/**
 * The part of an address that may outlive the request (the log line, usage
 * rows past retention): a.b.c.0/24 for IPv4, the /64 for IPv6, as
 * ops.address_block writes it. undefined when there is no address.
 */
export function retainedBlock(ip: string | undefined): string | undefined {
  if (!ip) return undefined;
  const block = addressBlock(ip);
  if (block.includes(":")) return block;
  const octets = block.split(".");
  return octets.length === 4 ? `${octets[0]}.${octets[1]}.${octets[2]}.0/24` : undefined;
}
