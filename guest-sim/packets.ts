// Byte-level codecs for the frames the simulated guest speaks: Ethernet II
// (802.1Q-aware), ARP, IPv4, ICMPv4 echo, IPv6, ICMPv6 echo and neighbour
// discovery, UDP, the Internet checksum, and address parse/format helpers.
// Decoders return byte offsets into the caller's buffer rather than copies so
// that a frame sitting in guest memory is read in place.

/**
 * Copies the first n bytes of src to b at off. Addresses are 4 to 16 bytes: a loop costs less
 * than set(), and allocates no subarray view (a view per header field is most of what a guest
 * answering a ping flood would allocate).
 */
function put(b: Uint8Array, off: number, src: Uint8Array, n: number): void {
  for (let i = 0; i < n; i++) b[off + i] = src[i];
}

export const ETH_HLEN = 14;
export const VLAN_HLEN = 4;
export const ETHERTYPE = { IPV4: 0x0800, ARP: 0x0806, VLAN: 0x8100, QINQ: 0x88a8, IPV6: 0x86dd } as const;
export const IPPROTO = { ICMP: 1, TCP: 6, UDP: 17, ICMPV6: 58 } as const;
export const ARP_OP = { REQUEST: 1, REPLY: 2 } as const;
export const ICMP4 = { ECHO_REPLY: 0, ECHO_REQUEST: 8 } as const;
export const ICMP6 = {
  ECHO_REQUEST: 128,
  ECHO_REPLY: 129,
  ROUTER_SOLICIT: 133,
  ROUTER_ADVERT: 134,
  NEIGHBOR_SOLICIT: 135,
  NEIGHBOR_ADVERT: 136,
} as const;
/** Neighbour discovery option types (RFC 4861 §4.6). */
export const ND_OPT = { SOURCE_LLADDR: 1, TARGET_LLADDR: 2 } as const;
/** Neighbour advertisement flag bits, in the first byte after the ICMPv6 header. */
export const NA_FLAG = { ROUTER: 0x80, SOLICITED: 0x40, OVERRIDE: 0x20 } as const;

export const IPV4_HLEN = 20;
export const IPV6_HLEN = 40;
export const UDP_HLEN = 8;
export const ICMP_ECHO_HLEN = 8;
export const ARP_LEN = 28;
/** ICMPv6 NS/NA without options: type, code, checksum, flags/reserved, target. */
export const ND_HLEN = 24;

export const BROADCAST_MAC: Uint8Array = new Uint8Array([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
export const ALL_NODES_6: Uint8Array = parseIPv6('ff02::1');
export const UNSPECIFIED_6: Uint8Array = new Uint8Array(16);

// ---------------------------------------------------------------- checksum

/**
 * Adds `buf[off, off+len)` to a running ones'-complement sum as big-endian
 * 16-bit words. The result is unfolded (a plain non-negative number), so
 * fragments can be chained; a fragment that does not start at an even offset
 * of the checksummed data must be summed separately and byte-swapped with
 * `csumSwap` before adding (RFC 1071 §2(B)).
 */
export function csumAdd(sum: number, buf: Uint8Array, off: number, len: number): number {
  const end = off + len;
  let i = off;
  // Summing without folding is safe: 2^53 / 0xffff words is far beyond any frame.
  for (; i + 1 < end; i += 2) sum += (buf[i] << 8) | buf[i + 1];
  if (i < end) sum += buf[i] << 8;
  return sum;
}

/** Folds a running sum to 16 bits (not complemented). */
export function csumFold(sum: number): number {
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 0x10000);
  return sum;
}

/** Final checksum field value from a running sum: folded and complemented. */
export function csumFinish(sum: number): number {
  return ~csumFold(sum) & 0xffff;
}

/** Byte-swaps a folded partial sum, for fragments that start at an odd offset. */
export function csumSwap(sum: number): number {
  const s = csumFold(sum);
  return ((s & 0xff) << 8) | (s >>> 8);
}

/** Internet checksum (RFC 1071) of `buf[off, off+len)`, optionally seeded with a partial sum (a pseudo-header). */
export function checksum(buf: Uint8Array, off = 0, len = buf.length - off, initial = 0): number {
  return csumFinish(csumAdd(initial, buf, off, len));
}

/** True when data whose checksum field is included sums to 0xffff, i.e. the checksum verifies. */
export function checksumOk(buf: Uint8Array, off: number, len: number, initial = 0): boolean {
  return csumFold(csumAdd(initial, buf, off, len)) === 0xffff;
}

/** RFC 1624 eqn 3: the checksum after one 16-bit word of the data changed from `oldWord` to `newWord`. */
export function csumUpdate16(oldCsum: number, oldWord: number, newWord: number): number {
  return ~csumFold((~oldCsum & 0xffff) + (~oldWord & 0xffff) + (newWord & 0xffff)) & 0xffff;
}

/** Partial sum of the IPv4 pseudo-header (src, dst, zero+protocol, L4 length). */
export function pseudoSum4(src: Uint8Array, srcOff: number, dst: Uint8Array, dstOff: number, proto: number, l4len: number): number {
  return csumAdd(csumAdd(proto + l4len, src, srcOff, 4), dst, dstOff, 4);
}

/** Partial sum of the IPv6 pseudo-header (RFC 8200 §8.1). */
export function pseudoSum6(src: Uint8Array, srcOff: number, dst: Uint8Array, dstOff: number, nextHeader: number, l4len: number): number {
  return csumAdd(csumAdd(nextHeader + Math.floor(l4len / 0x10000) + (l4len & 0xffff), src, srcOff, 16), dst, dstOff, 16);
}

// ---------------------------------------------------------------- addresses

export function bytesEqual(a: Uint8Array, aOff: number, b: Uint8Array, bOff: number, len: number): boolean {
  for (let i = 0; i < len; i++) if (a[aOff + i] !== b[bOff + i]) return false;
  return true;
}

/** 'aa:bb:cc:dd:ee:ff' (or '-' separated) → 6 bytes. */
export function parseMac(s: string): Uint8Array {
  const m = /^([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})$/i.exec(String(s));
  if (!m) throw new TypeError(`not a MAC address: '${s}' (expected six hex pairs like 52:54:00:12:34:56)`);
  const out = new Uint8Array(6);
  for (let i = 0; i < 6; i++) out[i] = parseInt(m[i + 1], 16);
  return out;
}

export function formatMac(b: Uint8Array, off = 0): string {
  let s = '';
  for (let i = 0; i < 6; i++) s += (i ? ':' : '') + b[off + i].toString(16).padStart(2, '0');
  return s;
}

export function isBroadcastMac(b: Uint8Array, off = 0): boolean {
  return (b[off] & b[off + 1] & b[off + 2] & b[off + 3] & b[off + 4] & b[off + 5]) === 0xff;
}

/** The group bit: multicast and broadcast. */
export function isMulticastMac(b: Uint8Array, off = 0): boolean {
  return (b[off] & 1) === 1;
}

/** Dotted quad → 4 bytes; rejects leading zeros so '010' is not silently octal or decimal. */
export function parseIPv4(s: string): Uint8Array {
  const parts = String(s).split('.');
  if (parts.length !== 4) throw new TypeError(`not an IPv4 address: '${s}'`);
  const out = new Uint8Array(4);
  for (let i = 0; i < 4; i++) {
    const p = parts[i];
    if (!/^(0|[1-9][0-9]{0,2})$/.test(p) || Number(p) > 255) throw new TypeError(`not an IPv4 address: '${s}'`);
    out[i] = Number(p);
  }
  return out;
}

export function formatIPv4(b: Uint8Array, off = 0): string {
  return `${b[off]}.${b[off + 1]}.${b[off + 2]}.${b[off + 3]}`;
}

/** RFC 4291 §2.2 text forms, including '::' and a dotted-quad tail; no zone ids. */
export function parseIPv6(s: string): Uint8Array {
  const str = String(s);
  const bad = (): never => {
    throw new TypeError(`not an IPv6 address: '${str}'`);
  };
  const halves = str.split('::');
  if (halves.length > 2) bad();
  const groups = (h: string): number[] => {
    if (h === '') return [];
    const out: number[] = [];
    const parts = h.split(':');
    for (let i = 0; i < parts.length; i++) {
      const p = parts[i];
      if (i === parts.length - 1 && p.includes('.')) {
        let v4: Uint8Array;
        try {
          v4 = parseIPv4(p);
        } catch {
          return bad();
        }
        out.push((v4[0] << 8) | v4[1], (v4[2] << 8) | v4[3]);
      } else {
        if (!/^[0-9a-f]{1,4}$/i.test(p)) bad();
        out.push(parseInt(p, 16));
      }
    }
    return out;
  };
  const head = groups(halves[0]);
  const tail = halves.length === 2 ? groups(halves[1]) : [];
  if (halves.length === 2 ? head.length + tail.length > 7 : head.length !== 8) bad();
  const words = head.concat(new Array<number>(8 - head.length - tail.length).fill(0), tail);
  const out = new Uint8Array(16);
  for (let i = 0; i < 8; i++) {
    out[2 * i] = words[i] >>> 8;
    out[2 * i + 1] = words[i] & 0xff;
  }
  return out;
}

/** RFC 5952 canonical text: lowercase, longest run (≥ 2) of zero groups as '::', IPv4-mapped as ::ffff:a.b.c.d. */
export function formatIPv6(b: Uint8Array, off = 0): string {
  const w: number[] = [];
  for (let i = 0; i < 8; i++) w.push((b[off + 2 * i] << 8) | b[off + 2 * i + 1]);
  if (w[0] === 0 && w[1] === 0 && w[2] === 0 && w[3] === 0 && w[4] === 0 && w[5] === 0xffff) {
    return `::ffff:${formatIPv4(b, off + 12)}`;
  }
  let bestStart = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (w[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && w[j] === 0) j++;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = (a: number[]): string => a.map((x) => x.toString(16)).join(':');
  if (bestStart < 0) return hex(w);
  return `${hex(w.slice(0, bestStart))}::${hex(w.slice(bestStart + bestLen))}`;
}

/** ff02::1:ffXX:XXXX for an IPv6 address (RFC 4291 §2.7.1). */
export function solicitedNodeMulticast(addr: Uint8Array, off = 0): Uint8Array {
  const out = new Uint8Array(16);
  out[0] = 0xff;
  out[1] = 0x02;
  out[11] = 0x01;
  out[12] = 0xff;
  out[13] = addr[off + 13];
  out[14] = addr[off + 14];
  out[15] = addr[off + 15];
  return out;
}

/** 33:33 + low 32 bits: the Ethernet address of an IPv6 multicast group (RFC 2464 §7). */
export function multicastMac6(group: Uint8Array, off = 0): Uint8Array {
  return new Uint8Array([0x33, 0x33, group[off + 12], group[off + 13], group[off + 14], group[off + 15]]);
}

/** 01:00:5e + low 23 bits: the Ethernet address of an IPv4 multicast group (RFC 1112 §6.4). */
export function multicastMac4(group: Uint8Array, off = 0): Uint8Array {
  return new Uint8Array([0x01, 0x00, 0x5e, group[off + 1] & 0x7f, group[off + 2], group[off + 3]]);
}

/** fe80::/64 with the modified EUI-64 interface id of `mac` (RFC 4291 appendix A). */
export function linkLocalFromMac(mac: Uint8Array, off = 0): Uint8Array {
  const out = new Uint8Array(16);
  out[0] = 0xfe;
  out[1] = 0x80;
  out[8] = mac[off] ^ 0x02;
  out[9] = mac[off + 1];
  out[10] = mac[off + 2];
  out[11] = 0xff;
  out[12] = 0xfe;
  out[13] = mac[off + 3];
  out[14] = mac[off + 4];
  out[15] = mac[off + 5];
  return out;
}

export function isIPv6Multicast(b: Uint8Array, off = 0): boolean {
  return b[off] === 0xff;
}

// ---------------------------------------------------------------- Ethernet

export interface EthInfo {
  /** EtherType after any VLAN tags. */
  etherType: number;
  /** VLAN id of the outermost 802.1Q/802.1ad tag, or -1 when untagged. */
  vlan: number;
  /** Full TCI of that tag (priority, DEI, id), or -1. */
  tci: number;
  /** Offset of the L3 header (14, 18 or 22). */
  l3: number;
}

/** Reads the Ethernet header (dst at 0, src at 6), skipping up to two VLAN tags. Null if truncated. */
export function decodeEthernet(f: Uint8Array, len = f.length, out: EthInfo = { etherType: 0, vlan: -1, tci: -1, l3: 0 }): EthInfo | null {
  if (len < ETH_HLEN) return null;
  let type = (f[12] << 8) | f[13];
  let l3 = ETH_HLEN;
  out.vlan = -1;
  out.tci = -1;
  for (let tags = 0; (type === ETHERTYPE.VLAN || type === ETHERTYPE.QINQ) && tags < 2; tags++) {
    if (len < l3 + VLAN_HLEN) return null;
    const tci = (f[l3] << 8) | f[l3 + 1];
    if (tags === 0) {
      out.tci = tci;
      out.vlan = tci & 0x0fff;
    }
    type = (f[l3 + 2] << 8) | f[l3 + 3];
    l3 += VLAN_HLEN;
  }
  out.etherType = type;
  out.l3 = l3;
  return out;
}

/**
 * Writes an Ethernet header at `off`, with one 802.1Q tag when `tci >= 0`.
 * Returns the offset of the L3 header.
 */
export function encodeEthernet(buf: Uint8Array, off: number, dst: Uint8Array, src: Uint8Array, etherType: number, tci = -1): number {
  put(buf, off, dst, 6);
  put(buf, off + 6, src, 6);
  let o = off + 12;
  if (tci >= 0) {
    buf[o] = ETHERTYPE.VLAN >>> 8;
    buf[o + 1] = ETHERTYPE.VLAN & 0xff;
    buf[o + 2] = (tci >>> 8) & 0xff;
    buf[o + 3] = tci & 0xff;
    o += 4;
  }
  buf[o] = etherType >>> 8;
  buf[o + 1] = etherType & 0xff;
  return o + 2;
}

/** Ethernet header length for an optional tag. */
export function ethHeaderLen(tci = -1): number {
  return tci >= 0 ? ETH_HLEN + VLAN_HLEN : ETH_HLEN;
}

// ---------------------------------------------------------------- ARP

export interface ArpInfo {
  op: number;
  /** Offsets of sender/target hardware and protocol addresses. */
  sha: number;
  spa: number;
  tha: number;
  tpa: number;
}

/** ARP for IPv4 over Ethernet at `off`; null for other hardware/protocol types or truncation. */
export function decodeArp(b: Uint8Array, off: number, len: number, out: ArpInfo = { op: 0, sha: 0, spa: 0, tha: 0, tpa: 0 }): ArpInfo | null {
  if (len < ARP_LEN) return null;
  if (b[off] !== 0 || b[off + 1] !== 1 || b[off + 2] !== 0x08 || b[off + 3] !== 0x00 || b[off + 4] !== 6 || b[off + 5] !== 4) return null;
  out.op = (b[off + 6] << 8) | b[off + 7];
  out.sha = off + 8;
  out.spa = off + 14;
  out.tha = off + 18;
  out.tpa = off + 24;
  return out;
}

/** Writes a 28-byte ARP packet at `off`; returns the end offset. */
export function encodeArp(
  b: Uint8Array,
  off: number,
  op: number,
  sha: Uint8Array,
  spa: Uint8Array,
  tha: Uint8Array,
  tpa: Uint8Array,
): number {
  b[off] = 0;
  b[off + 1] = 1;
  b[off + 2] = 0x08;
  b[off + 3] = 0x00;
  b[off + 4] = 6;
  b[off + 5] = 4;
  b[off + 6] = op >>> 8;
  b[off + 7] = op & 0xff;
  put(b, off + 8, sha, 6);
  put(b, off + 14, spa, 4);
  put(b, off + 18, tha, 6);
  put(b, off + 24, tpa, 4);
  return off + ARP_LEN;
}

// ---------------------------------------------------------------- IPv4

export interface Ipv4Info {
  /** Header length in bytes (options included). */
  ihl: number;
  totalLen: number;
  id: number;
  /** Flags and fragment offset word. */
  frag: number;
  ttl: number;
  proto: number;
  /** Offsets of the source and destination addresses. */
  src: number;
  dst: number;
  /** Offset and length of the payload (trailing Ethernet padding excluded). */
  payload: number;
  payloadLen: number;
}

/** IPv4 header at `off` with `len` bytes available; null unless version 4 and the lengths are consistent. */
export function decodeIPv4(b: Uint8Array, off: number, len: number, out?: Ipv4Info): Ipv4Info | null {
  if (len < IPV4_HLEN || b[off] >>> 4 !== 4) return null;
  const ihl = (b[off] & 0x0f) * 4;
  const totalLen = (b[off + 2] << 8) | b[off + 3];
  if (ihl < IPV4_HLEN || totalLen < ihl || totalLen > len) return null;
  const r = out ?? { ihl: 0, totalLen: 0, id: 0, frag: 0, ttl: 0, proto: 0, src: 0, dst: 0, payload: 0, payloadLen: 0 };
  r.ihl = ihl;
  r.totalLen = totalLen;
  r.id = (b[off + 4] << 8) | b[off + 5];
  r.frag = (b[off + 6] << 8) | b[off + 7];
  r.ttl = b[off + 8];
  r.proto = b[off + 9];
  r.src = off + 12;
  r.dst = off + 16;
  r.payload = off + ihl;
  r.payloadLen = totalLen - ihl;
  return r;
}

/** More-fragments set or a non-zero fragment offset. */
export function isFragment(frag: number): boolean {
  return (frag & 0x3fff) !== 0;
}

/** Writes a 20-byte IPv4 header (no options, checksum filled); returns the payload offset. */
export function encodeIPv4(
  b: Uint8Array,
  off: number,
  src: Uint8Array,
  dst: Uint8Array,
  proto: number,
  payloadLen: number,
  ttl = 64,
  id = 0,
  dontFragment = false,
): number {
  const total = IPV4_HLEN + payloadLen;
  if (total > 0xffff) throw new RangeError(`IPv4 packet of ${total} bytes exceeds 65535`);
  b[off] = 0x45;
  b[off + 1] = 0;
  b[off + 2] = total >>> 8;
  b[off + 3] = total & 0xff;
  b[off + 4] = (id >>> 8) & 0xff;
  b[off + 5] = id & 0xff;
  b[off + 6] = dontFragment ? 0x40 : 0;
  b[off + 7] = 0;
  b[off + 8] = ttl;
  b[off + 9] = proto;
  b[off + 10] = 0;
  b[off + 11] = 0;
  put(b, off + 12, src, 4);
  put(b, off + 16, dst, 4);
  const c = checksum(b, off, IPV4_HLEN);
  b[off + 10] = c >>> 8;
  b[off + 11] = c & 0xff;
  return off + IPV4_HLEN;
}

// ---------------------------------------------------------------- IPv6

export interface Ipv6Info {
  payloadLen: number;
  nextHeader: number;
  hopLimit: number;
  /** Offsets of the source and destination addresses. */
  src: number;
  dst: number;
  /** Offset of the payload (extension headers are not walked). */
  payload: number;
}

/** Fixed IPv6 header at `off`; null unless version 6 and the payload fits in `len`. */
export function decodeIPv6(b: Uint8Array, off: number, len: number, out?: Ipv6Info): Ipv6Info | null {
  if (len < IPV6_HLEN || b[off] >>> 4 !== 6) return null;
  const payloadLen = (b[off + 4] << 8) | b[off + 5];
  if (IPV6_HLEN + payloadLen > len) return null;
  const r = out ?? { payloadLen: 0, nextHeader: 0, hopLimit: 0, src: 0, dst: 0, payload: 0 };
  r.payloadLen = payloadLen;
  r.nextHeader = b[off + 6];
  r.hopLimit = b[off + 7];
  r.src = off + 8;
  r.dst = off + 24;
  r.payload = off + IPV6_HLEN;
  return r;
}

/** Writes a 40-byte IPv6 header (traffic class and flow label 0); returns the payload offset. */
export function encodeIPv6(
  b: Uint8Array,
  off: number,
  src: Uint8Array,
  dst: Uint8Array,
  nextHeader: number,
  payloadLen: number,
  hopLimit = 64,
): number {
  if (payloadLen > 0xffff) throw new RangeError(`IPv6 payload of ${payloadLen} bytes needs a jumbogram, unsupported`);
  b[off] = 0x60;
  b[off + 1] = 0;
  b[off + 2] = 0;
  b[off + 3] = 0;
  b[off + 4] = payloadLen >>> 8;
  b[off + 5] = payloadLen & 0xff;
  b[off + 6] = nextHeader;
  b[off + 7] = hopLimit;
  put(b, off + 8, src, 16);
  put(b, off + 24, dst, 16);
  return off + IPV6_HLEN;
}

// ---------------------------------------------------------------- ICMP (v4 and v6 share the echo layout)

export interface IcmpInfo {
  type: number;
  code: number;
  checksum: number;
  /** Echo identifier and sequence (bytes 4..7; meaningless for non-echo types). */
  id: number;
  seq: number;
  /** Offset and length of what follows the 8-byte header. */
  data: number;
  dataLen: number;
}

/** ICMP/ICMPv6 message of `len` bytes at `off`; null if shorter than 8 bytes. */
export function decodeIcmp(b: Uint8Array, off: number, len: number, out?: IcmpInfo): IcmpInfo | null {
  if (len < ICMP_ECHO_HLEN) return null;
  const r = out ?? { type: 0, code: 0, checksum: 0, id: 0, seq: 0, data: 0, dataLen: 0 };
  r.type = b[off];
  r.code = b[off + 1];
  r.checksum = (b[off + 2] << 8) | b[off + 3];
  r.id = (b[off + 4] << 8) | b[off + 5];
  r.seq = (b[off + 6] << 8) | b[off + 7];
  r.data = off + ICMP_ECHO_HLEN;
  r.dataLen = len - ICMP_ECHO_HLEN;
  return r;
}

/** Writes the 8-byte echo header with a zero checksum (fill it with `setChecksum`); returns the data offset. */
export function encodeIcmpEchoHeader(b: Uint8Array, off: number, type: number, id: number, seq: number): number {
  b[off] = type;
  b[off + 1] = 0;
  b[off + 2] = 0;
  b[off + 3] = 0;
  b[off + 4] = (id >>> 8) & 0xff;
  b[off + 5] = id & 0xff;
  b[off + 6] = (seq >>> 8) & 0xff;
  b[off + 7] = seq & 0xff;
  return off + ICMP_ECHO_HLEN;
}

/** Big-endian 16-bit store, for checksum fields. */
export function put16(b: Uint8Array, off: number, v: number): void {
  b[off] = (v >>> 8) & 0xff;
  b[off + 1] = v & 0xff;
}

export function get16(b: Uint8Array, off: number): number {
  return (b[off] << 8) | b[off + 1];
}

/** Fills the ICMPv4 checksum of the `len`-byte message at `off` (no pseudo-header). */
export function fillIcmp4Checksum(b: Uint8Array, off: number, len: number): void {
  put16(b, off + 2, 0);
  put16(b, off + 2, checksum(b, off, len));
}

/** Fills the ICMPv6 checksum of the message at `l4` inside the IPv6 packet at `ip6`. */
export function fillIcmp6Checksum(b: Uint8Array, ip6: number, l4: number, len: number): void {
  put16(b, l4 + 2, 0);
  put16(b, l4 + 2, checksum(b, l4, len, pseudoSum6(b, ip6 + 8, b, ip6 + 24, IPPROTO.ICMPV6, len)));
}

// ---------------------------------------------------------------- ICMPv6 neighbour discovery

export interface NdInfo {
  /** Offset of the target address. */
  target: number;
  /** Offset of the source (NS) or target (NA) link-layer address option's MAC, or -1 when absent. */
  lladdr: number;
  /** NA flags byte (router/solicited/override); 0 for NS. */
  flags: number;
}

/**
 * NS or NA message of `len` bytes at `off` (ICMPv6 header included). Null on
 * truncation or a malformed option (length 0 or past the end, RFC 4861 §4.6).
 */
export function decodeNd(b: Uint8Array, off: number, len: number, out?: NdInfo): NdInfo | null {
  if (len < ND_HLEN) return null;
  const type = b[off];
  const r = out ?? { target: 0, lladdr: -1, flags: 0 };
  r.target = off + 8;
  r.flags = type === ICMP6.NEIGHBOR_ADVERT ? b[off + 4] : 0;
  r.lladdr = -1;
  const want = type === ICMP6.NEIGHBOR_SOLICIT ? ND_OPT.SOURCE_LLADDR : ND_OPT.TARGET_LLADDR;
  let o = off + ND_HLEN;
  const end = off + len;
  while (o < end) {
    if (o + 2 > end) return null;
    const optLen = b[o + 1] * 8;
    if (optLen === 0 || o + optLen > end) return null;
    if (b[o] === want && optLen >= 8) r.lladdr = o + 2;
    o += optLen;
  }
  return r;
}

/**
 * Writes a neighbour advertisement (ICMPv6 part only, checksum zero) for
 * `target` with a target link-layer address option; returns the end offset.
 * Length is always ND_HLEN + 8.
 */
export function encodeNa(b: Uint8Array, off: number, flags: number, target: Uint8Array, tlla: Uint8Array): number {
  b[off] = ICMP6.NEIGHBOR_ADVERT;
  b[off + 1] = 0;
  b[off + 2] = 0;
  b[off + 3] = 0;
  b[off + 4] = flags;
  b[off + 5] = 0;
  b[off + 6] = 0;
  b[off + 7] = 0;
  put(b, off + 8, target, 16);
  b[off + 24] = ND_OPT.TARGET_LLADDR;
  b[off + 25] = 1;
  put(b, off + 26, tlla, 6);
  return off + ND_HLEN + 8;
}

/** Writes a neighbour solicitation for `target` with a source link-layer address option; returns the end offset (ND_HLEN + 8). */
export function encodeNs(b: Uint8Array, off: number, target: Uint8Array, slla: Uint8Array): number {
  b[off] = ICMP6.NEIGHBOR_SOLICIT;
  b.fill(0, off + 1, off + 8);
  put(b, off + 8, target, 16);
  b[off + 24] = ND_OPT.SOURCE_LLADDR;
  b[off + 25] = 1;
  put(b, off + 26, slla, 6);
  return off + ND_HLEN + 8;
}

// ---------------------------------------------------------------- UDP

export interface UdpInfo {
  srcPort: number;
  dstPort: number;
  /** The UDP length field (header included). */
  length: number;
  checksum: number;
  payload: number;
  payloadLen: number;
}

/** UDP datagram at `off` within `len` bytes of IP payload; null if truncated or the length field disagrees. */
export function decodeUdp(b: Uint8Array, off: number, len: number, out?: UdpInfo): UdpInfo | null {
  if (len < UDP_HLEN) return null;
  const length = (b[off + 4] << 8) | b[off + 5];
  if (length < UDP_HLEN || length > len) return null;
  const r = out ?? { srcPort: 0, dstPort: 0, length: 0, checksum: 0, payload: 0, payloadLen: 0 };
  r.srcPort = (b[off] << 8) | b[off + 1];
  r.dstPort = (b[off + 2] << 8) | b[off + 3];
  r.length = length;
  r.checksum = (b[off + 6] << 8) | b[off + 7];
  r.payload = off + UDP_HLEN;
  r.payloadLen = length - UDP_HLEN;
  return r;
}

/** Writes the 8-byte UDP header with a zero checksum; returns the payload offset. */
export function encodeUdpHeader(b: Uint8Array, off: number, srcPort: number, dstPort: number, payloadLen: number): number {
  const length = UDP_HLEN + payloadLen;
  if (length > 0xffff) throw new RangeError(`UDP datagram of ${length} bytes exceeds 65535`);
  put16(b, off, srcPort);
  put16(b, off + 2, dstPort);
  put16(b, off + 4, length);
  put16(b, off + 6, 0);
  return off + UDP_HLEN;
}

/** Fills the UDP checksum of the datagram at `l4` (length from its header) inside the IPv4 packet at `ip4`. */
export function fillUdp4Checksum(b: Uint8Array, ip4: number, l4: number): void {
  const len = get16(b, l4 + 4);
  put16(b, l4 + 6, 0);
  const c = checksum(b, l4, len, pseudoSum4(b, ip4 + 12, b, ip4 + 16, IPPROTO.UDP, len));
  // A computed zero is sent as all ones: zero means "no checksum" on the wire (RFC 768).
  put16(b, l4 + 6, c === 0 ? 0xffff : c);
}

/** Fills the UDP checksum of the datagram at `l4` inside the IPv6 packet at `ip6`. */
export function fillUdp6Checksum(b: Uint8Array, ip6: number, l4: number): void {
  const len = get16(b, l4 + 4);
  put16(b, l4 + 6, 0);
  const c = checksum(b, l4, len, pseudoSum6(b, ip6 + 8, b, ip6 + 24, IPPROTO.UDP, len));
  put16(b, l4 + 6, c === 0 ? 0xffff : c);
}

/** Verifies an L4 checksum over IPv4 (UDP: a zero field means none was sent and passes). */
export function l4ChecksumOk4(b: Uint8Array, ip: Ipv4Info): boolean {
  if (ip.proto === IPPROTO.UDP && get16(b, ip.payload + 6) === 0) return true;
  const seed = ip.proto === IPPROTO.ICMP ? 0 : pseudoSum4(b, ip.src, b, ip.dst, ip.proto, ip.payloadLen);
  return checksumOk(b, ip.payload, ip.payloadLen, seed);
}

/** Verifies an L4 checksum over IPv6 (mandatory for UDP and ICMPv6; zero never passes for UDP). */
export function l4ChecksumOk6(b: Uint8Array, ip: Ipv6Info): boolean {
  if (ip.nextHeader === IPPROTO.UDP && get16(b, ip.payload + 6) === 0) return false;
  return checksumOk(b, ip.payload, ip.payloadLen, pseudoSum6(b, ip.src, b, ip.dst, ip.nextHeader, ip.payloadLen));
}

// ---------------------------------------------------------------- whole frames (for originating traffic)

export interface UdpFrameSpec {
  srcMac: Uint8Array;
  dstMac: Uint8Array;
  /** 4 bytes for IPv4, 16 for IPv6; both must be the same family. */
  srcIp: Uint8Array;
  dstIp: Uint8Array;
  srcPort: number;
  dstPort: number;
  payload: Uint8Array;
  /** 802.1Q TCI, or omitted for an untagged frame. */
  tci?: number;
  ttl?: number;
  ipId?: number;
}

/** Size in bytes of the frame `encodeUdpFrame` writes. */
export function udpFrameLen(ipVersion: 4 | 6, payloadLen: number, tci = -1): number {
  return ethHeaderLen(tci) + (ipVersion === 4 ? IPV4_HLEN : IPV6_HLEN) + UDP_HLEN + payloadLen;
}

/** Writes a complete Ethernet/IPv4-or-IPv6/UDP frame at `buf[0]` with valid checksums; returns its length. */
export function encodeUdpFrame(buf: Uint8Array, s: UdpFrameSpec): number {
  const v = s.srcIp.length === 4 && s.dstIp.length === 4 ? 4 : s.srcIp.length === 16 && s.dstIp.length === 16 ? 6 : 0;
  if (v === 0) throw new TypeError('encodeUdpFrame: srcIp and dstIp must both be 4 (IPv4) or both 16 (IPv6) bytes');
  const tci = s.tci ?? -1;
  const total = udpFrameLen(v, s.payload.length, tci);
  if (buf.length < total) throw new RangeError(`encodeUdpFrame: buffer of ${buf.length} bytes is smaller than the ${total}-byte frame`);
  const l3 = encodeEthernet(buf, 0, s.dstMac, s.srcMac, v === 4 ? ETHERTYPE.IPV4 : ETHERTYPE.IPV6, tci);
  const udpLen = UDP_HLEN + s.payload.length;
  const l4 = v === 4 ? encodeIPv4(buf, l3, s.srcIp, s.dstIp, IPPROTO.UDP, udpLen, s.ttl ?? 64, s.ipId ?? 0) : encodeIPv6(buf, l3, s.srcIp, s.dstIp, IPPROTO.UDP, udpLen, s.ttl ?? 64);
  const data = encodeUdpHeader(buf, l4, s.srcPort, s.dstPort, s.payload.length);
  buf.set(s.payload, data);
  if (v === 4) fillUdp4Checksum(buf, l3, l4);
  else fillUdp6Checksum(buf, l3, l4);
  return total;
}
