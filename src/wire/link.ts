// Link-layer framing of captured packets: where the IPv4 header starts, and for Linux cooked
// captures ("any" device) which interface and direction the packet had.

export const DLT_EN10MB = 1;
export const DLT_RAW = 12;
export const DLT_RAW_ALT = 101;
export const DLT_LINUX_SLL = 113;
export const DLT_LINUX_SLL2 = 276;

const ETHERTYPE_IPV4 = 0x0800;
const ETHERTYPE_VLAN = 0x8100;
const PACKET_OUTGOING = 4;

export type LinkResult =
  | { ok: true; ipOffset: number; outgoing: boolean | undefined; ifindex: number | undefined }
  | { ok: false; reason: "truncated-link" | "not-ipv4-link" | "unsupported-link-type" };

export function parseLinkLayer(linkType: number, b: Uint8Array): LinkResult {
  const u16 = (o: number) => (b[o]! << 8) | b[o + 1]!;
  switch (linkType) {
    case DLT_EN10MB: {
      if (b.length < 14) return { ok: false, reason: "truncated-link" };
      let off = 12;
      let type = u16(off);
      while (type === ETHERTYPE_VLAN) {
        off += 4;
        if (b.length < off + 2) return { ok: false, reason: "truncated-link" };
        type = u16(off);
      }
      if (type !== ETHERTYPE_IPV4) return { ok: false, reason: "not-ipv4-link" };
      return { ok: true, ipOffset: off + 2, outgoing: undefined, ifindex: undefined };
    }
    case DLT_LINUX_SLL: {
      if (b.length < 16) return { ok: false, reason: "truncated-link" };
      if (u16(14) !== ETHERTYPE_IPV4) return { ok: false, reason: "not-ipv4-link" };
      return { ok: true, ipOffset: 16, outgoing: u16(0) === PACKET_OUTGOING, ifindex: undefined };
    }
    case DLT_LINUX_SLL2: {
      if (b.length < 20) return { ok: false, reason: "truncated-link" };
      if (u16(0) !== ETHERTYPE_IPV4) return { ok: false, reason: "not-ipv4-link" };
      const ifindex = ((b[4]! << 24) | (b[5]! << 16) | (b[6]! << 8) | b[7]!) >>> 0;
      return { ok: true, ipOffset: 20, outgoing: b[10] === PACKET_OUTGOING, ifindex };
    }
    case DLT_RAW:
    case DLT_RAW_ALT:
      return { ok: true, ipOffset: 0, outgoing: undefined, ifindex: undefined };
    default:
      return { ok: false, reason: "unsupported-link-type" };
  }
}
