// Frames and judgements for `vhost-tap gso-check`: builds the guest's TCP/UDP
// super-frames with their virtio_net_hdr, and checks (1) the wire segments the
// kernel cut them into and (2) the super-frames the kernel hands the guest.
// Pure functions over bytes, so the verifiers can be tested with wrong input.

import { HDR } from '../backend';
import { checksumOk, csumAdd, csumFinish, csumFold, ETHERTYPE, get16, IPPROTO, pseudoSum4, pseudoSum6, put16 } from '../guest-sim/packets';

export const TCP_FLAG = { FIN: 0x01, SYN: 0x02, RST: 0x04, PSH: 0x08, ACK: 0x10, URG: 0x20, ECE: 0x40, CWR: 0x80 } as const;
/** TCP and UDP checksum field offsets inside their headers (virtio csum_offset). */
export const CSUM_OFF = { TCP: 16, UDP: 6 } as const;
const TCP_HLEN = 20;
const UDP_HLEN = 8;
const IP_DF = 0x4000;
const IP_MF = 0x2000;
const IPV6_FRAG = 44;

/** Addresses and ports of one direction of a conversation. */
export interface Flow {
  v6: boolean;
  srcMac: Uint8Array;
  dstMac: Uint8Array;
  src: Uint8Array;
  dst: Uint8Array;
  sport: number;
  dport: number;
}

/** virtio_net_hdr (the 12-byte VERSION_1 / MRG_RXBUF form; the tunnel fields only in the 24-byte form). */
export interface NetHdr {
  flags: number;
  gsoType: number;
  hdrLen: number;
  gsoSize: number;
  csumStart: number;
  csumOffset: number;
  numBuffers: number;
  /** struct virtio_net_hdr_v1_hash_tunnel (24 bytes): the outer UDP and inner IP header offsets. */
  outerTh?: number;
  innerNh?: number;
}

/** Writes `h` as a header of `size` bytes (12, or 24 with the tunnel fields) at out[off]. */
export function encodeNetHdrSized(h: NetHdr, size: number, out: Uint8Array, off: number): void {
  out.fill(0, off, off + size);
  encodeNetHdr(h, out, off);
  if (size >= HDR.SIZE_TUNNEL) {
    const dv = new DataView(out.buffer, out.byteOffset + off, HDR.SIZE_TUNNEL);
    dv.setUint16(HDR.OFF_OUTER_TH_OFFSET, h.outerTh ?? 0, true);
    dv.setUint16(HDR.OFF_INNER_NH_OFFSET, h.innerNh ?? 0, true);
  }
}

/** Reads a header of `size` bytes (12, or 24 with the tunnel fields). */
export function decodeNetHdrSized(b: Uint8Array, off: number, size: number): NetHdr {
  const h = decodeNetHdr(b, off);
  if (size >= HDR.SIZE_TUNNEL) {
    const dv = new DataView(b.buffer, b.byteOffset + off, HDR.SIZE_TUNNEL);
    h.outerTh = dv.getUint16(HDR.OFF_OUTER_TH_OFFSET, true);
    h.innerNh = dv.getUint16(HDR.OFF_INNER_NH_OFFSET, true);
  }
  return h;
}

export function encodeNetHdr(h: NetHdr, out: Uint8Array = new Uint8Array(HDR.SIZE_V1), off = 0): Uint8Array {
  const dv = new DataView(out.buffer, out.byteOffset + off, HDR.SIZE_V1);
  dv.setUint8(HDR.OFF_FLAGS, h.flags);
  dv.setUint8(HDR.OFF_GSO_TYPE, h.gsoType);
  dv.setUint16(HDR.OFF_HDR_LEN, h.hdrLen, true);
  dv.setUint16(HDR.OFF_GSO_SIZE, h.gsoSize, true);
  dv.setUint16(HDR.OFF_CSUM_START, h.csumStart, true);
  dv.setUint16(HDR.OFF_CSUM_OFFSET, h.csumOffset, true);
  dv.setUint16(HDR.OFF_NUM_BUFFERS, h.numBuffers, true);
  return out;
}

export function decodeNetHdr(b: Uint8Array, off = 0): NetHdr {
  const dv = new DataView(b.buffer, b.byteOffset + off, HDR.SIZE_V1);
  return {
    flags: dv.getUint8(HDR.OFF_FLAGS),
    gsoType: dv.getUint8(HDR.OFF_GSO_TYPE),
    hdrLen: dv.getUint16(HDR.OFF_HDR_LEN, true),
    gsoSize: dv.getUint16(HDR.OFF_GSO_SIZE, true),
    csumStart: dv.getUint16(HDR.OFF_CSUM_START, true),
    csumOffset: dv.getUint16(HDR.OFF_CSUM_OFFSET, true),
    numBuffers: dv.getUint16(HDR.OFF_NUM_BUFFERS, true),
  };
}

export function describeHdr(h: NetHdr): string {
  const fl =
    [h.flags & HDR.F_NEEDS_CSUM ? 'NEEDS_CSUM' : '', h.flags & HDR.F_DATA_VALID ? 'DATA_VALID' : '', h.flags & HDR.F_UDP_TUNNEL_CSUM ? 'UDP_TUNNEL_CSUM' : '']
      .filter(Boolean)
      .join('|') || '0';
  const names: Record<number, string> = { 0: 'NONE', 1: 'TCPV4', 3: 'UDP', 4: 'TCPV6', 5: 'UDP_L4' };
  const tnl = HDR.GSO_UDP_TUNNEL_IPV4 | HDR.GSO_UDP_TUNNEL_IPV6;
  const gt =
    (names[h.gsoType & 0x1f] ?? `0x${(h.gsoType & 0x1f).toString(16)}`) +
    (h.gsoType & HDR.GSO_UDP_TUNNEL_IPV4 ? '|UDP_TUNNEL_IPV4' : '') +
    (h.gsoType & HDR.GSO_UDP_TUNNEL_IPV6 ? '|UDP_TUNNEL_IPV6' : '') +
    (h.gsoType & HDR.GSO_ECN ? '|ECN' : '');
  const t = h.gsoType & tnl ? ` outer_th ${h.outerTh} inner_nh ${h.innerNh}` : '';
  return `flags ${fl} gso ${gt} gso_size ${h.gsoSize} hdr_len ${h.hdrLen} csum ${h.csumStart}+${h.csumOffset}${t}`;
}

/** The byte the check puts at payload offset i, so misplaced bytes are seen (251 is prime: no period of 2^k). */
export function patternByte(i: number): number {
  return i % 251;
}

export function pattern(len: number, start = 0): Uint8Array {
  const b = new Uint8Array(len);
  for (let i = 0; i < len; i++) b[i] = patternByte(start + i);
  return b;
}

// ---------------------------------------------------------------- building

interface L3Opts {
  ipId: number;
  ttl: number;
  df?: boolean;
  tos?: number;
}

/** Ethernet + IP header for `l4len` bytes of `proto`; returns the L4 offset. The IPv4 header checksum is filled. */
function writeL2L3(b: Uint8Array, flow: Flow, proto: number, l4len: number, o: L3Opts): number {
  b.set(flow.dstMac, 0);
  b.set(flow.srcMac, 6);
  put16(b, 12, flow.v6 ? ETHERTYPE.IPV6 : ETHERTYPE.IPV4);
  const l3 = 14;
  if (flow.v6) {
    b[l3] = 0x60 | ((o.tos ?? 0) >> 4);
    b[l3 + 1] = ((o.tos ?? 0) & 0x0f) << 4;
    b[l3 + 2] = 0;
    b[l3 + 3] = 0;
    put16(b, l3 + 4, l4len);
    b[l3 + 6] = proto;
    b[l3 + 7] = o.ttl;
    b.set(flow.src, l3 + 8);
    b.set(flow.dst, l3 + 24);
    return l3 + 40;
  }
  b[l3] = 0x45;
  b[l3 + 1] = o.tos ?? 0;
  put16(b, l3 + 2, 20 + l4len);
  put16(b, l3 + 4, o.ipId & 0xffff);
  put16(b, l3 + 6, o.df ? IP_DF : 0);
  b[l3 + 8] = o.ttl;
  b[l3 + 9] = proto;
  put16(b, l3 + 10, 0);
  b.set(flow.src, l3 + 12);
  b.set(flow.dst, l3 + 16);
  put16(b, l3 + 10, csumFinish(csumAdd(0, b, l3, 20)));
  return l3 + 20;
}

function pseudo(b: Uint8Array, v6: boolean, proto: number, l4len: number): number {
  return v6 ? pseudoSum6(b, 22, b, 38, proto, l4len) : pseudoSum4(b, 26, b, 30, proto, l4len);
}

/**
 * Fills an L4 checksum: 'full' computes it; 'partial' leaves the pseudo-header
 * sum (folded, not complemented) for the device to finish from csum_start, as
 * a driver does with NEEDS_CSUM; the L4 length used is the whole super-frame's.
 */
function fillL4Csum(b: Uint8Array, v6: boolean, proto: number, l4: number, mode: 'full' | 'partial'): void {
  const at = l4 + (proto === IPPROTO.TCP ? CSUM_OFF.TCP : CSUM_OFF.UDP);
  const l4len = b.length - l4;
  put16(b, at, 0);
  const ps = pseudo(b, v6, proto, l4len);
  if (mode === 'partial') {
    put16(b, at, csumFold(ps));
    return;
  }
  let c = csumFinish(csumAdd(ps, b, l4, l4len));
  // A computed UDP checksum of 0 is sent as 0xffff (0 means "none" over IPv4, forbidden over IPv6).
  if (c === 0 && proto === IPPROTO.UDP) c = 0xffff;
  put16(b, at, c);
}

export interface TcpFrameSpec extends L3Opts {
  flow: Flow;
  seq: number;
  ack: number;
  flags: number;
  window: number;
  /** TCP options, a multiple of 4 bytes. */
  options?: Uint8Array;
  payload: Uint8Array;
}

export function buildTcpFrame(s: TcpFrameSpec, csum: 'full' | 'partial'): Uint8Array {
  const opt = s.options ?? new Uint8Array(0);
  if (opt.length % 4 !== 0 || opt.length > 40) throw new RangeError('TCP options must be a multiple of 4 bytes, at most 40');
  const thl = TCP_HLEN + opt.length;
  const l3len = s.flow.v6 ? 40 : 20;
  const b = new Uint8Array(14 + l3len + thl + s.payload.length);
  const l4 = writeL2L3(b, s.flow, IPPROTO.TCP, thl + s.payload.length, s);
  put16(b, l4, s.flow.sport);
  put16(b, l4 + 2, s.flow.dport);
  put32(b, l4 + 4, s.seq);
  put32(b, l4 + 8, s.ack);
  b[l4 + 12] = (thl / 4) << 4;
  b[l4 + 13] = s.flags;
  put16(b, l4 + 14, s.window);
  b.set(opt, l4 + TCP_HLEN);
  b.set(s.payload, l4 + thl);
  fillL4Csum(b, s.flow.v6, IPPROTO.TCP, l4, csum);
  return b;
}

export interface UdpFrameSpec extends L3Opts {
  flow: Flow;
  payload: Uint8Array;
}

export function buildUdpFrame(s: UdpFrameSpec, csum: 'full' | 'partial'): Uint8Array {
  const l3len = s.flow.v6 ? 40 : 20;
  const b = new Uint8Array(14 + l3len + UDP_HLEN + s.payload.length);
  const l4 = writeL2L3(b, s.flow, IPPROTO.UDP, UDP_HLEN + s.payload.length, s);
  put16(b, l4, s.flow.sport);
  put16(b, l4 + 2, s.flow.dport);
  put16(b, l4 + 4, UDP_HLEN + s.payload.length);
  b.set(s.payload, l4 + UDP_HLEN);
  fillL4Csum(b, s.flow.v6, IPPROTO.UDP, l4, csum);
  return b;
}

/** gso_type values for a guest TX frame. */
export type GsoKind = 'none' | 'tso' | 'uso' | 'ufo';

/** The virtio_net_hdr a driver puts before a NEEDS_CSUM frame (optionally GSO with `mss`). */
export function txHeader(frame: Uint8Array, proto: number, kind: GsoKind, mss: number, ecn = false): NetHdr {
  const v6 = get16(frame, 12) === ETHERTYPE.IPV6;
  const l4 = 14 + (v6 ? 40 : (frame[14] & 0x0f) * 4);
  const l4hl = proto === IPPROTO.TCP ? (frame[l4 + 12] >> 4) * 4 : UDP_HLEN;
  let gsoType: number = HDR.GSO_NONE;
  if (kind === 'tso') gsoType = (v6 ? HDR.GSO_TCPV6 : HDR.GSO_TCPV4) | (ecn ? HDR.GSO_ECN : 0);
  else if (kind === 'uso') gsoType = HDR.GSO_UDP_L4;
  else if (kind === 'ufo') gsoType = HDR.GSO_UDP;
  return {
    flags: HDR.F_NEEDS_CSUM,
    gsoType,
    hdrLen: l4 + l4hl,
    gsoSize: kind === 'none' ? 0 : mss,
    csumStart: l4,
    csumOffset: proto === IPPROTO.TCP ? CSUM_OFF.TCP : CSUM_OFF.UDP,
    numBuffers: 0,
  };
}

// ---------------------------------------------------------------- parsing

/** What the verifiers need from one IP frame. */
export interface ParsedFrame {
  v6: boolean;
  l3: number;
  l4: number;
  /** L4 bytes in this frame (after any IPv6 fragment header). */
  l4Len: number;
  /** Upper-layer protocol (after an IPv6 fragment header). */
  proto: number;
  ttl: number;
  tos: number;
  /** IPv4 identification, or the IPv6 fragment header's. */
  id: number;
  df: boolean;
  mf: boolean;
  /** Fragment offset in bytes. */
  fragOff: number;
  isFragment: boolean;
  /** IPv4 header checksum verifies (always true for IPv6). */
  ipCsumOk: boolean;
  /** Offsets of the source and destination addresses, and their length. */
  src: number;
  dst: number;
  alen: number;
}

/** Parses Ethernet + IPv4/IPv6 (with at most a fragment header); null when not IP or inconsistent. */
export function parseFrame(f: Uint8Array): ParsedFrame | null {
  if (f.length < 14) return null;
  const et = get16(f, 12);
  const l3 = 14;
  if (et === ETHERTYPE.IPV4) {
    if (f.length < l3 + 20 || f[l3] >> 4 !== 4) return null;
    const ihl = (f[l3] & 0x0f) * 4;
    const tot = get16(f, l3 + 2);
    if (ihl < 20 || tot < ihl || l3 + tot > f.length) return null;
    const frag = get16(f, l3 + 6);
    const fragOff = (frag & 0x1fff) * 8;
    const mf = (frag & IP_MF) !== 0;
    return {
      v6: false,
      l3,
      l4: l3 + ihl,
      l4Len: tot - ihl,
      proto: f[l3 + 9],
      ttl: f[l3 + 8],
      tos: f[l3 + 1],
      id: get16(f, l3 + 4),
      df: (frag & IP_DF) !== 0,
      mf,
      fragOff,
      isFragment: mf || fragOff !== 0,
      ipCsumOk: checksumOk(f, l3, ihl),
      src: l3 + 12,
      dst: l3 + 16,
      alen: 4,
    };
  }
  if (et === ETHERTYPE.IPV6) {
    if (f.length < l3 + 40 || f[l3] >> 4 !== 6) return null;
    const plen = get16(f, l3 + 4);
    if (l3 + 40 + plen > f.length) return null;
    let nh = f[l3 + 6];
    let l4 = l3 + 40;
    let id = 0;
    let mf = false;
    let fragOff = 0;
    let isFragment = false;
    if (nh === IPV6_FRAG) {
      if (plen < 8) return null;
      nh = f[l4];
      const w = get16(f, l4 + 2);
      fragOff = w & 0xfff8;
      mf = (w & 1) !== 0;
      id = get32(f, l4 + 4);
      isFragment = true;
      l4 += 8;
    }
    return {
      v6: true,
      l3,
      l4,
      l4Len: l3 + 40 + plen - l4,
      proto: nh,
      ttl: f[l3 + 7],
      tos: ((f[l3] & 0x0f) << 4) | (f[l3 + 1] >> 4),
      id,
      df: false,
      mf,
      fragOff,
      isFragment,
      ipCsumOk: true,
      src: l3 + 8,
      dst: l3 + 24,
      alen: 16,
    };
  }
  return null;
}

/** Whether the TCP/UDP checksum of a (non-fragment) frame verifies. */
export function l4ChecksumValid(f: Uint8Array, p: ParsedFrame): boolean {
  const ps = p.v6 ? pseudoSum6(f, p.src, f, p.dst, p.proto, p.l4Len) : pseudoSum4(f, p.src, f, p.dst, p.proto, p.l4Len);
  return csumFold(csumAdd(ps, f, p.l4, p.l4Len)) === 0xffff;
}

/** Finishes a NEEDS_CSUM frame as a device would (sum from csum_start into csum_start + csum_offset), in a copy. */
export function completeChecksum(f: Uint8Array, start: number, offset: number): Uint8Array {
  const c = Uint8Array.from(f);
  put16(c, start + offset, csumFinish(csumAdd(0, c, start, c.length - start)));
  return c;
}

// ---------------------------------------------------------------- guest → kernel

/** A super-frame the guest sent and what the wire should show for it. */
export interface SentTcp {
  spec: TcpFrameSpec;
  mss: number;
  /** Routers between the guest and the capture (each takes one from TTL / hop limit). */
  hops: number;
}

export interface SentUdp {
  spec: UdpFrameSpec;
  mss: number;
  hops: number;
}

const MAX_PROBLEMS = 4;

function summary(problems: string[]): string[] {
  if (problems.length <= MAX_PROBLEMS) return problems;
  return [...problems.slice(0, MAX_PROBLEMS), `… and ${problems.length - MAX_PROBLEMS} more`];
}

function checkIp(p: ParsedFrame, f: Uint8Array, s: L3Opts & { flow: Flow }, hops: number, what: string, out: string[]): void {
  if (p.v6 !== s.flow.v6) out.push(`${what}: IP version changed`);
  if (!p.ipCsumOk) out.push(`${what}: bad IPv4 header checksum`);
  if (p.ttl !== s.ttl - hops) out.push(`${what}: TTL/hop limit ${p.ttl}, expected ${s.ttl - hops}`);
  if (!bytesAt(f, p.src, s.flow.src) || !bytesAt(f, p.dst, s.flow.dst)) out.push(`${what}: addresses changed`);
}

/**
 * Checks the wire segments of a TSO super-frame: their count and sizes, sequence
 * numbers, IPv4 IDs counting up from the super-frame's, DF kept, flags (PSH and
 * FIN only on the last segment, CWR only on the first), IP and TCP checksums,
 * ports, ack and window unchanged, payload equal when reassembled.
 * Returns the problems found; empty means correct.
 */
export function verifyTcpSegments(sent: SentTcp, frames: Uint8Array[]): string[] {
  const s = sent.spec;
  const P = s.payload.length;
  const M = sent.mss;
  const n = Math.max(1, Math.ceil(P / M));
  const out: string[] = [];
  if (frames.length !== n) out.push(`${frames.length} segments on the wire, expected ${n} (${P} B / mss ${M})`);
  const seen: Uint8Array[] = [];
  for (let i = 0; i < Math.min(n, frames.length); i++) {
    const f = frames[i];
    const w = `segment ${i}`;
    const p = parseFrame(f);
    if (!p || p.proto !== IPPROTO.TCP || p.isFragment) {
      out.push(`${w}: not an unfragmented TCP/IP frame`);
      continue;
    }
    checkIp(p, f, s, sent.hops, w, out);
    if (!p.v6) {
      const id = (s.ipId + i) & 0xffff;
      if (p.id !== id) out.push(`${w}: IPv4 ID ${p.id}, expected ${id} (IDs must count up per segment)`);
      if (p.df !== !!s.df) out.push(`${w}: DF ${p.df ? 'set' : 'clear'}, the super-frame had it ${s.df ? 'set' : 'clear'}`);
    }
    const l4 = p.l4;
    const thl = (f[l4 + 12] >> 4) * 4;
    const want = Math.min(M, P - i * M);
    const got = p.l4Len - thl;
    if (got !== want) out.push(`${w}: ${got} payload bytes, expected ${want}`);
    if (get16(f, l4) !== s.flow.sport || get16(f, l4 + 2) !== s.flow.dport) out.push(`${w}: ports changed`);
    const seq = (s.seq + i * M) >>> 0;
    if (get32(f, l4 + 4) !== seq) out.push(`${w}: seq ${get32(f, l4 + 4)}, expected ${seq}`);
    if (get32(f, l4 + 8) !== s.ack >>> 0) out.push(`${w}: ack number changed`);
    if (get16(f, l4 + 14) !== s.window) out.push(`${w}: window changed`);
    const last = i === n - 1;
    const first = i === 0;
    const lastOnly = TCP_FLAG.PSH | TCP_FLAG.FIN;
    let flags = s.flags & ~(lastOnly | TCP_FLAG.CWR);
    if (last) flags |= s.flags & lastOnly;
    if (first) flags |= s.flags & TCP_FLAG.CWR;
    if (f[l4 + 13] !== flags) out.push(`${w}: TCP flags 0x${f[l4 + 13].toString(16)}, expected 0x${flags.toString(16)}`);
    if (!l4ChecksumValid(f, p)) out.push(`${w}: bad TCP checksum`);
    seen.push(f.subarray(l4 + thl, l4 + p.l4Len));
  }
  if (out.length === 0 && !bytesEqualAll(concat(seen), s.payload)) out.push('reassembled payload differs from what the guest sent');
  return summary(out);
}

/** Checks the wire datagrams of a USO super-frame: count, sizes, UDP lengths and checksums, IPv4 IDs, payload. */
export function verifyUdpSegments(sent: SentUdp, frames: Uint8Array[]): string[] {
  const s = sent.spec;
  const P = s.payload.length;
  const M = sent.mss;
  const n = Math.max(1, Math.ceil(P / M));
  const out: string[] = [];
  if (frames.length !== n) out.push(`${frames.length} datagrams on the wire, expected ${n} (${P} B / gso_size ${M})`);
  const seen: Uint8Array[] = [];
  for (let i = 0; i < Math.min(n, frames.length); i++) {
    const f = frames[i];
    const w = `datagram ${i}`;
    const p = parseFrame(f);
    if (!p || p.proto !== IPPROTO.UDP || p.isFragment) {
      out.push(`${w}: not an unfragmented UDP/IP frame`);
      continue;
    }
    checkIp(p, f, s, sent.hops, w, out);
    if (!p.v6) {
      const id = (s.ipId + i) & 0xffff;
      if (p.id !== id) out.push(`${w}: IPv4 ID ${p.id}, expected ${id} (IDs must count up per datagram)`);
    }
    const l4 = p.l4;
    const want = Math.min(M, P - i * M);
    if (p.l4Len - UDP_HLEN !== want) out.push(`${w}: ${p.l4Len - UDP_HLEN} payload bytes, expected ${want}`);
    if (get16(f, l4 + 4) !== p.l4Len) out.push(`${w}: UDP length ${get16(f, l4 + 4)}, the IP header says ${p.l4Len}`);
    if (get16(f, l4) !== s.flow.sport || get16(f, l4 + 2) !== s.flow.dport) out.push(`${w}: ports changed`);
    if (get16(f, l4 + 6) === 0) out.push(`${w}: UDP checksum missing (0)`);
    else if (!l4ChecksumValid(f, p)) out.push(`${w}: bad UDP checksum`);
    seen.push(f.subarray(l4 + UDP_HLEN, l4 + p.l4Len));
  }
  if (out.length === 0 && !bytesEqualAll(concat(seen), s.payload)) out.push('reassembled payload differs from what the guest sent');
  return summary(out);
}

/**
 * Checks the IP fragments of a UFO super-frame: one datagram id, contiguous
 * offsets, MF on all but the last, `mss` bytes of IP payload in every fragment
 * but the last, and the reassembled datagram's UDP length, checksum and payload.
 */
export function verifyUdpFragments(sent: SentUdp, frames: Uint8Array[]): string[] {
  const s = sent.spec;
  const total = UDP_HLEN + s.payload.length;
  const M = sent.mss;
  const n = Math.max(1, Math.ceil(total / M));
  const out: string[] = [];
  if (frames.length !== n) out.push(`${frames.length} fragments on the wire, expected ${n} (${total} B of UDP / ${M})`);
  const parts: Uint8Array[] = [];
  let off = 0;
  let id = -1;
  let first: { f: Uint8Array; p: ParsedFrame } | undefined;
  for (let i = 0; i < frames.length; i++) {
    const f = frames[i];
    const w = `fragment ${i}`;
    const p = parseFrame(f);
    if (!p || p.proto !== IPPROTO.UDP) {
      out.push(`${w}: not a UDP/IP frame`);
      continue;
    }
    if (frames.length > 1 && !p.isFragment) out.push(`${w}: not a fragment`);
    checkIp(p, f, s, sent.hops, w, out);
    if (i === 0) {
      id = p.id;
      first = { f, p };
    } else if (p.id !== id) out.push(`${w}: fragment id ${p.id}, the first had ${id}`);
    if (p.fragOff !== off) out.push(`${w}: offset ${p.fragOff}, expected ${off}`);
    const lastFrag = i === frames.length - 1;
    if (p.mf === lastFrag) out.push(`${w}: MF ${p.mf ? 'set' : 'clear'} on ${lastFrag ? 'the last' : 'a middle'} fragment`);
    if (!lastFrag && p.l4Len !== M) out.push(`${w}: ${p.l4Len} bytes, expected ${M}`);
    parts.push(f.subarray(p.l4, p.l4 + p.l4Len));
    off += p.l4Len;
  }
  if (out.length || !first) return summary(out);
  const udp = concat(parts);
  if (udp.length !== total) return [`reassembled ${udp.length} bytes of UDP, expected ${total}`];
  if (get16(udp, 0) !== s.flow.sport || get16(udp, 2) !== s.flow.dport) out.push('ports changed');
  if (get16(udp, 4) !== total) out.push(`UDP length ${get16(udp, 4)}, expected ${total}`);
  const { f, p } = first;
  const ps = p.v6 ? pseudoSum6(f, p.src, f, p.dst, IPPROTO.UDP, total) : pseudoSum4(f, p.src, f, p.dst, IPPROTO.UDP, total);
  if (get16(udp, 6) === 0) out.push('UDP checksum missing (0)');
  else if (csumFold(csumAdd(ps, udp, 0, total)) !== 0xffff) out.push('bad UDP checksum over the reassembled datagram');
  if (!bytesEqualAll(udp.subarray(UDP_HLEN), s.payload)) out.push('reassembled payload differs from what the guest sent');
  return summary(out);
}

// ---------------------------------------------------------------- kernel → guest

export interface RxExpect {
  proto: number;
  /** Expected gso_type (ECN bit included), or GSO_NONE for a plain checksum-offloaded frame. */
  gsoType: number;
  /** Expected gso_size (ignored for GSO_NONE). */
  gsoSize?: number;
  /** hdr_len must be exactly the L2..L4 header length (GUEST_HDRLEN negotiated). */
  exactHdrLen?: boolean;
}

/**
 * Checks one frame the kernel handed the guest: the header matches the frame
 * (csum_start at the L4 header, csum_offset at its checksum field, gso_type
 * and gso_size as expected, a real super-frame when GSO), the partial checksum
 * completes to a valid one (NEEDS_CSUM) or the checksum is valid (DATA_VALID or
 * no flag), the IP header is consistent. Returns the problems; empty is correct.
 */
export function verifyRxFrame(h: NetHdr, f: Uint8Array, e: RxExpect): string[] {
  const out: string[] = [];
  const p = parseFrame(f);
  if (!p || p.proto !== e.proto || p.isFragment) return [`not an unfragmented ${e.proto === IPPROTO.TCP ? 'TCP' : 'UDP'}/IP frame`];
  if (!p.ipCsumOk) out.push('bad IPv4 header checksum');
  const l4hl = e.proto === IPPROTO.TCP ? (f[p.l4 + 12] >> 4) * 4 : UDP_HLEN;
  const csumOff = e.proto === IPPROTO.TCP ? CSUM_OFF.TCP : CSUM_OFF.UDP;
  if (h.gsoType !== e.gsoType) out.push(`gso_type 0x${h.gsoType.toString(16)}, expected 0x${e.gsoType.toString(16)}`);
  if (e.gsoType !== HDR.GSO_NONE) {
    if (e.gsoSize !== undefined && h.gsoSize !== e.gsoSize) out.push(`gso_size ${h.gsoSize}, expected ${e.gsoSize}`);
    const payload = p.l4Len - l4hl;
    if (payload <= h.gsoSize) out.push(`${payload} payload bytes: not a super-frame for gso_size ${h.gsoSize}`);
    if (!(h.flags & HDR.F_NEEDS_CSUM)) out.push('GSO frame without NEEDS_CSUM');
  }
  if (e.exactHdrLen && h.hdrLen !== p.l4 + l4hl) out.push(`hdr_len ${h.hdrLen}, expected ${p.l4 + l4hl} (GUEST_HDRLEN)`);
  if (h.hdrLen > f.length) out.push(`hdr_len ${h.hdrLen} past the frame (${f.length} B)`);
  if (e.proto === IPPROTO.UDP && get16(f, p.l4 + 4) !== p.l4Len) out.push(`UDP length ${get16(f, p.l4 + 4)}, the IP header says ${p.l4Len}`);
  if (h.flags & HDR.F_NEEDS_CSUM) {
    if (h.csumStart !== p.l4) out.push(`csum_start ${h.csumStart}, the L4 header is at ${p.l4}`);
    if (h.csumOffset !== csumOff) out.push(`csum_offset ${h.csumOffset}, expected ${csumOff}`);
    if (h.csumStart === p.l4 && h.csumOffset === csumOff && !l4ChecksumValid(completeChecksum(f, h.csumStart, h.csumOffset), p)) {
      out.push('partial checksum does not complete to a valid one (the field must hold the pseudo-header sum)');
    }
  } else if (!l4ChecksumValid(f, p)) {
    out.push(`bad L4 checksum with flags ${h.flags & HDR.F_DATA_VALID ? 'DATA_VALID' : '0'}`);
  }
  return summary(out);
}

// ---------------------------------------------------------------- UDP tunnels (VXLAN, GENEVE)

export type TunnelKind = 'vxlan' | 'geneve';
/** IANA ports: VXLAN 4789 (RFC 7348), GENEVE 6081 (RFC 8926). */
export const TUNNEL_PORT: Record<TunnelKind, number> = { vxlan: 4789, geneve: 6081 };
/** Both headers are 8 bytes without GENEVE options. */
const TUNNEL_HLEN = 8;
const ETHERTYPE_TEB = 0x6558;

/** The outer headers of a tunnelled frame: the outer flow (its ports: the tunnel's UDP ports), the VNI. */
export interface TunnelSpec extends L3Opts {
  kind: TunnelKind;
  outer: Flow;
  vni: number;
}

/**
 * Wraps an inner Ethernet frame in outer Ethernet + IP + UDP + VXLAN/GENEVE. The outer UDP
 * checksum: 'none' 0 (allowed over IPv6 only with the zero-checksum options, RFC 6935),
 * 'partial' the pseudo-header sum (a driver's UDP_TUNNEL_CSUM), 'full' computed.
 */
export function encapsulate(inner: Uint8Array, t: TunnelSpec, csum: 'none' | 'partial' | 'full'): Uint8Array {
  const l3len = t.outer.v6 ? 40 : 20;
  const udpLen = UDP_HLEN + TUNNEL_HLEN + inner.length;
  const b = new Uint8Array(14 + l3len + udpLen);
  const l4 = writeL2L3(b, t.outer, IPPROTO.UDP, udpLen, t);
  put16(b, l4, t.outer.sport);
  put16(b, l4 + 2, t.outer.dport);
  put16(b, l4 + 4, udpLen);
  const th = l4 + UDP_HLEN;
  if (t.kind === 'vxlan') b[th] = 0x08; // I flag: the VNI is valid
  else put16(b, th + 2, ETHERTYPE_TEB); // GENEVE version 0, no options, protocol: Ethernet
  b[th + 4] = (t.vni >> 16) & 0xff;
  b[th + 5] = (t.vni >> 8) & 0xff;
  b[th + 6] = t.vni & 0xff;
  b.set(inner, th + TUNNEL_HLEN);
  if (csum !== 'none') fillL4Csum(b, t.outer.v6, IPPROTO.UDP, l4, csum);
  return b;
}

/** The inner frame of a VXLAN/GENEVE frame (GENEVE options skipped), with where its parts are; null when not one. */
export function decapsulate(f: Uint8Array): { kind: TunnelKind; outer: ParsedFrame; outerTh: number; innerNh: number; inner: Uint8Array; vni: number } | null {
  const p = parseFrame(f);
  if (!p || p.proto !== IPPROTO.UDP || p.isFragment) return null;
  const dport = get16(f, p.l4 + 2);
  const kind: TunnelKind | undefined = dport === TUNNEL_PORT.vxlan ? 'vxlan' : dport === TUNNEL_PORT.geneve ? 'geneve' : undefined;
  if (!kind) return null;
  const th = p.l4 + UDP_HLEN;
  const hl = kind === 'geneve' ? TUNNEL_HLEN + (f[th] & 0x3f) * 4 : TUNNEL_HLEN;
  const innerEth = th + hl;
  if (innerEth + 14 > p.l4 + p.l4Len) return null;
  const vni = (f[th + 4] << 16) | (f[th + 5] << 8) | f[th + 6];
  return { kind, outer: p, outerTh: p.l4, innerNh: innerEth + 14, inner: f.subarray(innerEth, p.l4 + p.l4Len), vni };
}

/**
 * The header a driver puts before a tunnelled TCP super-frame (virtio 1.4 §5.1.6.2): the
 * inner TCP's checksum offsets and gso type, the tunnel bit of the OUTER family (as Linux reads
 * it), outer_th_offset / inner_nh_offset, and UDP_TUNNEL_CSUM when the outer checksum is partial.
 */
export function tunnelTxHeader(frame: Uint8Array, mss: number, outerCsum: boolean): NetHdr {
  const d = decapsulate(frame);
  if (!d) throw new Error('internal: tunnelTxHeader needs a VXLAN/GENEVE frame');
  const innerOff = d.innerNh - 14;
  const ih = txHeader(d.inner, IPPROTO.TCP, 'tso', mss);
  return {
    flags: HDR.F_NEEDS_CSUM | (outerCsum ? HDR.F_UDP_TUNNEL_CSUM : 0),
    gsoType: ih.gsoType | (d.outer.v6 ? HDR.GSO_UDP_TUNNEL_IPV6 : HDR.GSO_UDP_TUNNEL_IPV4),
    hdrLen: innerOff + ih.hdrLen,
    gsoSize: mss,
    csumStart: innerOff + ih.csumStart,
    csumOffset: ih.csumOffset,
    numBuffers: 0,
    outerTh: d.outerTh,
    innerNh: d.innerNh,
  };
}

/** A tunnelled TCP super-frame the guest sent. */
export interface SentTunnel {
  tunnel: TunnelSpec;
  inner: SentTcp;
  /** Whether the outer UDP checksum was asked for (UDP_TUNNEL_CSUM) or left 0. */
  outerCsum: boolean;
  hops: number;
}

/**
 * Checks the wire frames the kernel cut a tunnelled TCP super-frame into: per segment the outer
 * IP header (checksum, TTL, addresses, IPv4 IDs counting up), the outer UDP header (ports kept,
 * length, checksum valid when asked for, else 0), the tunnel header kept; then the inner
 * segments as for plain TSO (count, sizes, sequence numbers, inner IDs, flags, checksums, payload).
 */
export function verifyTunnelSegments(sent: SentTunnel, frames: Uint8Array[]): string[] {
  const t = sent.tunnel;
  const out: string[] = [];
  const inner: Uint8Array[] = [];
  frames.forEach((f, i) => {
    const w = `outer segment ${i}`;
    const d = decapsulate(f);
    if (!d) {
      out.push(`${w}: not a ${t.kind} frame`);
      return;
    }
    const p = d.outer;
    checkIp(p, f, { ...t, flow: t.outer }, sent.hops, w, out);
    if (!p.v6 && p.id !== ((t.ipId + i) & 0xffff)) out.push(`${w}: outer IPv4 ID ${p.id}, expected ${(t.ipId + i) & 0xffff}`);
    if (get16(f, p.l4) !== t.outer.sport || get16(f, p.l4 + 2) !== t.outer.dport) out.push(`${w}: outer UDP ports ${get16(f, p.l4)}→${get16(f, p.l4 + 2)}, expected ${t.outer.sport}→${t.outer.dport}`);
    if (get16(f, p.l4 + 4) !== p.l4Len) out.push(`${w}: outer UDP length ${get16(f, p.l4 + 4)}, the IP header says ${p.l4Len}`);
    const c = get16(f, p.l4 + CSUM_OFF.UDP);
    if (sent.outerCsum && !l4ChecksumValid(f, p)) out.push(`${w}: bad outer UDP checksum 0x${c.toString(16)}`);
    if (!sent.outerCsum && c !== 0) out.push(`${w}: outer UDP checksum 0x${c.toString(16)}, expected 0 (none asked for)`);
    if (d.kind !== t.kind || d.vni !== t.vni) out.push(`${w}: tunnel header changed (${d.kind} vni ${d.vni})`);
    inner.push(d.inner);
  });
  return summary([...out, ...verifyTcpSegments(sent.inner, inner).map((x) => `inner ${x}`)]);
}

/**
 * Checks a tunnelled TCP super-frame the kernel handed the guest: gso_type (inner type | the
 * outer family's tunnel bit), outer_th_offset and inner_nh_offset where the headers are,
 * csum_start at the inner TCP header, the partial inner checksum completing to a valid one,
 * and the outer UDP checksum: with UDP_TUNNEL_CSUM the pseudo-header sum (completing to a
 * valid one), else valid or 0.
 */
export function verifyTunnelRxFrame(h: NetHdr, f: Uint8Array, e: { innerV6: boolean; gsoSize: number; outerCsum: boolean }): string[] {
  const d = decapsulate(f);
  if (!d) return ['not a VXLAN/GENEVE frame'];
  const out: string[] = [];
  const p = d.outer;
  if (!p.ipCsumOk) out.push('bad outer IPv4 header checksum');
  const tnlBit = p.v6 ? HDR.GSO_UDP_TUNNEL_IPV6 : HDR.GSO_UDP_TUNNEL_IPV4;
  const want = (e.innerV6 ? HDR.GSO_TCPV6 : HDR.GSO_TCPV4) | tnlBit;
  if (h.gsoType !== want) out.push(`gso_type 0x${h.gsoType.toString(16)}, expected 0x${want.toString(16)}`);
  if (h.outerTh !== d.outerTh) out.push(`outer_th_offset ${h.outerTh}, the outer UDP header is at ${d.outerTh}`);
  if (h.innerNh !== d.innerNh) out.push(`inner_nh_offset ${h.innerNh}, the inner IP header is at ${d.innerNh}`);
  if (get16(f, p.l4 + 4) !== p.l4Len) out.push(`outer UDP length ${get16(f, p.l4 + 4)}, the IP header says ${p.l4Len}`);
  const off = d.innerNh - 14;
  const innerProbs = verifyRxFrame({ ...h, gsoType: h.gsoType & ~(HDR.GSO_UDP_TUNNEL_IPV4 | HDR.GSO_UDP_TUNNEL_IPV6), csumStart: h.csumStart - off, hdrLen: h.hdrLen - off }, d.inner, {
    proto: IPPROTO.TCP,
    gsoType: e.innerV6 ? HDR.GSO_TCPV6 : HDR.GSO_TCPV4,
    gsoSize: e.gsoSize,
  });
  out.push(...innerProbs.map((x) => `inner: ${x}`));
  const c = get16(f, p.l4 + CSUM_OFF.UDP);
  if (h.flags & HDR.F_UDP_TUNNEL_CSUM) {
    if (!e.outerCsum) out.push('UDP_TUNNEL_CSUM set, but the tunnel sends no outer checksum');
    // The inner checksum must be final before the outer one covers it.
    const done = completeChecksum(f, h.csumStart, h.csumOffset);
    if (!l4ChecksumValid(completeChecksum(done, d.outerTh, CSUM_OFF.UDP), p)) out.push('partial outer UDP checksum does not complete to a valid one');
  } else if (e.outerCsum) out.push('the tunnel sends outer checksums, but UDP_TUNNEL_CSUM is not set (the kernel should have segmented it)');
  else if (c !== 0) out.push(`outer UDP checksum 0x${c.toString(16)} without UDP_TUNNEL_CSUM, expected 0`);
  return summary(out);
}

// ---------------------------------------------------------------- small helpers

export function put32(b: Uint8Array, off: number, v: number): void {
  b[off] = (v >>> 24) & 0xff;
  b[off + 1] = (v >>> 16) & 0xff;
  b[off + 2] = (v >>> 8) & 0xff;
  b[off + 3] = v & 0xff;
}

export function get32(b: Uint8Array, off: number): number {
  return ((b[off] << 24) | (b[off + 1] << 16) | (b[off + 2] << 8) | b[off + 3]) >>> 0;
}

function bytesAt(f: Uint8Array, off: number, want: Uint8Array): boolean {
  for (let i = 0; i < want.length; i++) if (f[off + i] !== want[i]) return false;
  return true;
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

function bytesEqualAll(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && bytesAt(a, 0, b);
}
