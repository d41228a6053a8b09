// IPv4 addresses as unsigned 32-bit integers (what the headers carry) and their dotted form.

export function parseIPv4(s: string): number {
  const parts = s.split(".");
  if (parts.length !== 4) throw new Error(`not an IPv4 address: ${JSON.stringify(s)}`);
  let v = 0;
  for (const p of parts) {
    if (!/^(0|[1-9]\d{0,2})$/.test(p) || Number(p) > 255)
      throw new Error(`not an IPv4 address: ${JSON.stringify(s)}`);
    v = v * 256 + Number(p);
  }
  return v >>> 0;
}

export function formatIPv4(v: number): string {
  return `${v >>> 24}.${(v >>> 16) & 0xff}.${(v >>> 8) & 0xff}.${v & 0xff}`;
}

export const IPPROTO_TCP = 6;
