// The client's path through the appliance stays in the kernel: nftables DNAT of VIP:port to the
// original and SNAT to the appliance's backend address (so backends need no route back to clients:
// "zero-config"). Everything lives in one table of our own, replaced in a single nft transaction so
// there is never a moment with half a ruleset, and removable without touching anyone else's rules.
import { run } from "../sys/command.js";

export const TABLE_NAME = "tcp_replicator";

export interface KernelPathConfig {
  vip: string;
  port: number;
  original: string;
  /** Source address the original sees (SNAT); the appliance's address on the backend LAN. */
  snatAddress: string;
  table?: string;
  /** Former originals: nothing is forwarded to or from them any more. */
  fenced?: string[];
  /** With replication on: the engine's source address and the mark its raw packets carry. */
  replication?: { address: string; mark: number };
}

const IPV4_RE = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

export function isIPv4(s: string): boolean {
  return IPV4_RE.test(s);
}

function checkConfig(c: KernelPathConfig): void {
  for (const [k, v] of [
    ["vip", c.vip],
    ["original", c.original],
    ["snatAddress", c.snatAddress],
  ] as const) {
    if (!isIPv4(v)) throw new Error(`kernel path: ${k} ${JSON.stringify(v)} is not an IPv4 address`);
  }
  if (!Number.isInteger(c.port) || c.port < 1 || c.port > 65535) {
    throw new Error(`kernel path: port ${c.port} out of range 1..65535`);
  }
  if (c.replication) {
    if (!isIPv4(c.replication.address)) {
      throw new Error(
        `kernel path: replication address ${JSON.stringify(c.replication.address)} is not an IPv4 address`,
      );
    }
    if (!Number.isInteger(c.replication.mark) || c.replication.mark < 1 || c.replication.mark > 0xffffffff) {
      throw new Error(`kernel path: mark ${c.replication.mark} out of range`);
    }
  }
  for (const f of c.fenced ?? []) {
    if (!isIPv4(f))
      throw new Error(`kernel path: fenced address ${JSON.stringify(f)} is not an IPv4 address`);
  }
  if (c.table !== undefined && !/^[a-z_][a-z0-9_]{0,30}$/.test(c.table)) {
    throw new Error(`kernel path: bad table name ${JSON.stringify(c.table)}`);
  }
}

/**
 * The nft script for the kernel path. It starts by creating and deleting the table so that one
 * `nft -f` both removes a previous (possibly crashed) run's table and installs the new one atomically.
 * The forward-chain counters are how operators (and the demo) see traffic flowing.
 */
export function renderKernelPath(c: KernelPathConfig): string {
  checkConfig(c);
  const t = c.table ?? TABLE_NAME;
  const rep = c.replication;
  // With replication, three more things happen in the kernel:
  // - replicas' replies to the engine's address are dropped before conntrack (priority raw):
  //   the engine sees them in its capture, the kernel never answers them with a RST;
  // - the engine's own raw packets (marked) skip conntrack;
  // - the original's FIN and RST are held: the engine releases them to the client once it knows
  //   the close is a normal one (replicas close the same way) and not the death of the original;
  // - a client segment conntrack has no entry for is never picked up mid-stream (loose tracking)
  //   and DNATed to the current original: after a failover that host does not know the
  //   connection (a spliced one whose entry the original's RST put in CLOSE, which expires in
  //   10 s or is deleted at the retarget), and answers with a RST; the engine carries such a
  //   connection itself. An invalid one (a FIN with no entry) would reach the appliance's own
  //   stack, the VIP being its address, which answers with a RST: dropped too.
  const replicationChains = rep
    ? `
  chain guard {
    type filter hook prerouting priority mangle; policy accept;
    ip daddr ${c.vip} tcp dport ${c.port} ct state invalid counter drop comment "invalid-to-vip"
    ip daddr ${c.vip} tcp dport ${c.port} ct state new tcp flags & (syn | ack | fin | rst) != syn counter drop comment "midstream-pickup"
  }
  chain raw_prerouting {
    type filter hook prerouting priority raw; policy accept;
    ip daddr ${rep.address} tcp sport ${c.port} counter drop comment "replica-replies-to-engine"
  }
  chain raw_output {
    type filter hook output priority raw; policy accept;
    meta mark ${rep.mark} counter notrack comment "engine-output-notrack"
  }`
    : "";
  const fence = (c.fenced ?? [])
    .map(
      (f) => `
    ip daddr ${f} counter drop comment "fenced"
    ip saddr ${f} counter drop comment "fenced"`,
    )
    .join("");
  const hold = rep
    ? `
    ip saddr ${c.original} tcp sport ${c.port} tcp flags & (fin | rst) != 0 counter drop comment "original-close-held"`
    : "";
  return `table ip ${t} {}
delete table ip ${t}
table ip ${t} {
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr ${c.vip} tcp dport ${c.port} counter dnat to ${c.original}:${c.port} comment "vip-to-original"
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ip daddr ${c.original} tcp dport ${c.port} ct status dnat counter snat to ${c.snatAddress} comment "zero-config-snat"
  }
  chain forward {
    type filter hook forward priority filter; policy accept;${fence}${hold}
    ip daddr ${c.original} tcp dport ${c.port} ct status dnat counter comment "client-to-original"
    ip saddr ${c.original} tcp sport ${c.port} ct status dnat counter comment "original-to-client"
  }${replicationChains}
}
`;
}

function nftArgv(namespace: string | undefined, args: string[]): string[] {
  return namespace ? ["ip", "netns", "exec", namespace, "nft", ...args] : ["nft", ...args];
}

export async function installKernelPath(namespace: string | undefined, c: KernelPathConfig): Promise<void> {
  await run(nftArgv(namespace, ["-f", "-"]), { input: renderKernelPath(c) });
}

/** Removes our table; a no-op when it is not there. */
export async function removeKernelPath(namespace: string | undefined, table = TABLE_NAME): Promise<void> {
  await run(nftArgv(namespace, ["-f", "-"]), { input: `table ip ${table} {}\ndelete table ip ${table}\n` });
}

export interface RuleCounter {
  comment: string;
  packets: number;
  bytes: number;
}

/** Reads the packet/byte counters of our table's commented rules. */
export async function readCounters(
  namespace: string | undefined,
  table = TABLE_NAME,
): Promise<RuleCounter[]> {
  const out = await run(nftArgv(namespace, ["-j", "list", "table", "ip", table]));
  return parseCounters(out);
}

interface NftJsonRule {
  rule?: { comment?: string; expr?: Array<{ counter?: { packets: number; bytes: number } }> };
}

export function parseCounters(json: string): RuleCounter[] {
  const doc = JSON.parse(json) as { nftables?: NftJsonRule[] };
  const result: RuleCounter[] = [];
  for (const item of doc.nftables ?? []) {
    const rule = item.rule;
    if (!rule?.comment) continue;
    const counter = rule.expr?.find((e) => e.counter)?.counter;
    if (counter) result.push({ comment: rule.comment, packets: counter.packets, bytes: counter.bytes });
  }
  return result;
}
