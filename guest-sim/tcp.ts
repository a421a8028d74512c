// guest-sim's TCP (RFC 9293): a small but complete stack with no I/O of its
// own. Frames come in through input() (Ethernet frames, possibly GSO
// super-frames scattered over several RX buffers) and go out through a
// TcpLink (a TX buffer in guest memory plus the virtio_net_hdr fields); time
// is a number of milliseconds the caller passes in. Passive and active open,
// sliding window with window scaling (RFC 7323), Reno/NewReno congestion
// control with RTO (RFC 6298) and fast retransmit, FIN/RST, MSS from the MTU,
// IPv4 and IPv6, and the three TX offload modes a virtio-net driver has:
// TSO (64 KB segments, partial checksum), CSUM (MSS segments, partial
// checksum) and none (full checksums computed here).
//
// Not implemented (documented, not needed by guest-sim's services): SACK,
// timestamps/PAWS (a 4 GiB sequence wrap within one RTO is impossible on a
// local link), urgent data, ECN, Nagle, IP options and IPv6 extension headers,
// VLAN-tagged TCP.

import { HDR } from '../backend';
import { csumAdd, csumFold, ETHERTYPE, IPPROTO, IPV4_HLEN, IPV6_HLEN, pseudoSum4, pseudoSum6 } from './packets';

// ---------------------------------------------------------------- fast Internet checksum

let u32Buf: ArrayBufferLike | null = null;
let u32View: Uint32Array<ArrayBufferLike> = new Uint32Array(0);

/**
 * Ones'-complement sum of `u8[off, off+len)` as big-endian 16-bit words,
 * folded to 16 bits and not complemented: the same value as
 * csumFold(csumAdd(0, ...)), but summing aligned 32-bit little-endian words
 * (the sum is byte-order independent up to a final swap, RFC 1071 §2(B)), so
 * a 64 KB segment costs 16 K additions instead of 64 K byte pairs.
 */
export function csum16(u8: Uint8Array, off: number, len: number): number {
  let abs = u8.byteOffset + off;
  if (len < 32 || (abs & 1) !== 0) return csumFold(csumAdd(0, u8, off, len));
  const end = off + len;
  let i = off;
  let s = 0;
  if ((abs & 2) !== 0) {
    s += u8[i] | (u8[i + 1] << 8);
    i += 2;
    abs += 2;
  }
  if (u8.buffer !== u32Buf) {
    u32Buf = u8.buffer;
    u32View = new Uint32Array(u8.buffer, 0, Math.floor(u8.buffer.byteLength / 4));
  }
  const w32 = u32View;
  let w = abs >>> 2;
  const nw = (end - i) >>> 2;
  const wEnd = w + nw;
  // Doubles hold 2^53: 64 K words of 2^32 each sum far below that, no folding inside the loop.
  for (; w + 4 <= wEnd; w += 4) s += w32[w] + w32[w + 1] + w32[w + 2] + w32[w + 3];
  for (; w < wEnd; w++) s += w32[w];
  i += nw * 4;
  if (end - i >= 2) {
    s += u8[i] | (u8[i + 1] << 8);
    i += 2;
  }
  if (i < end) s += u8[i];
  const f = csumFold(s);
  return ((f & 0xff) << 8) | (f >>> 8);
}

// ---------------------------------------------------------------- sequence numbers

const seqLt = (a: number, b: number): boolean => ((a - b) | 0) < 0;
const seqLe = (a: number, b: number): boolean => ((a - b) | 0) <= 0;
const seqGt = (a: number, b: number): boolean => ((a - b) | 0) > 0;
const seqGe = (a: number, b: number): boolean => ((a - b) | 0) >= 0;
const seqAdd = (a: number, n: number): number => (a + n) >>> 0;
const seqDiff = (a: number, b: number): number => (a - b) | 0;

export const TCP_FLAG = { FIN: 0x01, SYN: 0x02, RST: 0x04, PSH: 0x08, ACK: 0x10, URG: 0x20, ECE: 0x40, CWR: 0x80 } as const;
const { FIN, SYN, RST, PSH, ACK } = TCP_FLAG;
export const TCP_HLEN = 20;

export type TcpState =
  | 'SYN_SENT'
  | 'SYN_RCVD'
  | 'ESTABLISHED'
  | 'FIN_WAIT_1'
  | 'FIN_WAIT_2'
  | 'CLOSING'
  | 'TIME_WAIT'
  | 'CLOSE_WAIT'
  | 'LAST_ACK'
  | 'CLOSED';

// ---------------------------------------------------------------- interfaces

/** virtio_net_hdr fields of one TX frame. */
export interface TxHdr {
  flags: number;
  gsoType: number;
  hdrLen: number;
  gsoSize: number;
  csumStart: number;
  csumOffset: number;
}

/** Where frames go: TX buffers in guest memory. */
export interface TcpLink {
  /** The memory every TX buffer lives in. */
  readonly u8: Uint8Array;
  /** Largest Ethernet frame one TX buffer holds. */
  readonly maxFrame: number;
  /** Reserves a TX buffer for a frame of `len` bytes; its offset in `u8`, or -1 when none is free. */
  reserve(len: number): number;
  /** Sends the frame just reserved (its first `len` bytes) with these header fields. */
  commit(len: number, hdr: TxHdr): void;
}

/** Continuation pieces of a frame spread over several RX buffers (mergeable buffers). */
export interface RxFrags {
  n: number;
  off: Int32Array;
  len: Int32Array;
}

/** What an application sees of a connection. Data callbacks must not keep the views they get. */
export interface TcpHandler {
  onEstablished?(c: TcpConn): void;
  /** In-order payload, straight from the RX buffer (one call per buffer piece). */
  onData?(c: TcpConn, u8: Uint8Array, off: number, len: number): void;
  /** The peer sent FIN: no more data will come. */
  onPeerFin?(c: TcpConn): void;
  /** Sent data was acknowledged (c.ackedBytes grew). */
  onAcked?(c: TcpConn): void;
  /** The connection is gone: closed cleanly, reset by the peer, or timed out. */
  onClosed?(c: TcpConn, how: 'closed' | 'reset' | 'timeout'): void;
  /** Extra limit on the receive window (bytes the application can still take), e.g. an echo buffer. */
  rcvSpace?(c: TcpConn): number;
}

/**
 * Produces send-stream bytes `[streamOff, streamOff+len)` into `dst[dstOff...]`.
 * Called again with the same offsets for retransmissions, so the application
 * keeps (or can regenerate) everything not yet acknowledged.
 */
export type TcpSource = (dst: Uint8Array, dstOff: number, streamOff: number, len: number) => void;

export interface TcpOffloads {
  /** CSUM negotiated: the device completes checksums (partial checksum + NEEDS_CSUM). */
  csum: boolean;
  /** HOST_TSO4 / HOST_TSO6 negotiated: segments up to 64 KB with GSO headers. */
  tso4: boolean;
  tso6: boolean;
}

export interface TcpStackConfig {
  mac: Uint8Array;
  ip4?: Uint8Array | null;
  /** Our IPv6 addresses (global and link-local); the first is used for active opens. */
  ip6?: Uint8Array[];
  mtu: number;
  offloads?: TcpOffloads;
  /** Receive buffer per connection (the most we advertise); default 1 MiB. */
  rcvBuf?: number;
  /** Initial sequence numbers; default random. */
  isn?: () => number;
  /** Lower bound of the RTO; default 200 ms (Linux's; RFC 6298 says 1 s, but this is a local link). */
  minRto?: number;
  /** TIME_WAIT duration; default 1000 ms (2 MSL is pointless between two ends of a TAP). */
  timeWaitMs?: number;
  /** Retransmissions of one segment before giving up with 'timeout'; default 12. */
  maxRetries?: number;
}

export interface TcpStats {
  segsIn: number;
  segsOut: number;
  bytesIn: number;
  bytesOut: number;
  retransmits: number;
  fastRetransmits: number;
  timeouts: number;
  badChecksum: number;
  rstsOut: number;
  oooSegs: number;
  /** Segments we could not send because no TX buffer was free (retried later). */
  txFull: number;
  /** Largest TCP payload sent in one frame. */
  maxSegOut: number;
  /** Largest TCP payload received in one frame. */
  maxSegIn: number;
}

// ---------------------------------------------------------------- connection

export class TcpConn {
  state: TcpState = 'CLOSED';
  readonly v6: boolean;
  readonly localPort: number;
  readonly remotePort: number;
  readonly localIp: Uint8Array;
  readonly remoteIp: Uint8Array;
  readonly remoteMac: Uint8Array;
  handler: TcpHandler;
  /** Where payload comes from; set before send(). */
  source: TcpSource | null = null;
  /** Bytes the peer has acknowledged (send stream offset of sndUna). */
  ackedBytes = 0;
  /** In-order bytes received. */
  rcvdBytes = 0;

  // Send side (RFC 9293 §3.3.1 names). Stream offsets are JS numbers, so a stream may exceed 4 GiB.
  iss = 0;
  sndUna = 0;
  sndNxt = 0;
  /** Highest sequence number sent: after a timeout sndNxt goes back to sndUna, but ACKs up to here are valid. */
  sndMax = 0;
  sndWnd = 0;
  sndWl1 = 0;
  sndWl2 = 0;
  maxSndWnd = 0;
  sndShift = 0;
  nxtOff = 0;
  /** Bytes the application made available (send stream length so far). */
  sndEnd = 0;
  finQueued = false;
  finSent = false;
  finAcked = false;
  synAcked = false;
  mss = 536;

  // Receive side.
  irs = 0;
  rcvNxt = 0;
  rcvShift = 0;
  /** Right edge we advertised last (never moves left, RFC 9293 §3.8.6.2.2). */
  rcvAdv = 0;
  peerFin = false;
  wsOk = false;
  ackNow = false;
  ackPending = false;
  /** Out-of-order segments, copied (only under loss or reordering), sorted by sequence. */
  ooo: { seq: number; data: Uint8Array; fin: boolean }[] = [];
  oooBytes = 0;

  // Congestion control and timers.
  cwnd = 0;
  ssthresh = 0x7fffffff;
  dupAcks = 0;
  inRecovery = false;
  recover = 0;
  srtt = -1;
  rttvar = 0;
  rto = 1000;
  rttSeq = -1;
  rttTime = 0;
  /** Retransmission (or persist) deadline, -1 when not armed. */
  rtoAt = -1;
  retries = 0;
  timeWaitAt = -1;
  ipId = 0;
  /** Set when output stopped for lack of a TX buffer. */
  blocked = false;

  constructor(v6: boolean, localIp: Uint8Array, localPort: number, remoteIp: Uint8Array, remotePort: number, remoteMac: Uint8Array, handler: TcpHandler) {
    this.v6 = v6;
    this.localIp = localIp;
    this.localPort = localPort;
    this.remoteIp = Uint8Array.from(remoteIp);
    this.remotePort = remotePort;
    this.remoteMac = Uint8Array.from(remoteMac);
    this.handler = handler;
  }

  /** The application made `n` more bytes of its source available to send. */
  send(n: number): void {
    if (this.finQueued) throw new Error('TcpConn.send after close()');
    this.sndEnd += n;
  }

  /** No more data: FIN goes after everything queued. */
  close(): void {
    this.finQueued = true;
  }

  /** Bytes queued and not yet acknowledged. */
  get unacked(): number {
    return this.sndEnd - this.ackedBytes;
  }

  toString(): string {
    return this.v6 ? `[${fmt6(this.remoteIp)}]:${this.remotePort}` : `${this.remoteIp.join('.')}:${this.remotePort}`;
  }
}

function fmt6(b: Uint8Array): string {
  const w: string[] = [];
  for (let i = 0; i < 16; i += 2) w.push(((b[i] << 8) | b[i + 1]).toString(16));
  return w.join(':').replace(/(^|:)0(:0)+(:|$)/, '::');
}

// ---------------------------------------------------------------- the stack

/** Parsed fields of the segment being processed (one reused object). */
interface Seg {
  v6: boolean;
  /** Offsets in the first piece. */
  ipSrc: number;
  ipDst: number;
  srcMac: number;
  srcPort: number;
  dstPort: number;
  seq: number;
  ack: number;
  flags: number;
  wnd: number;
  /** TCP options found. */
  mss: number;
  ws: number;
  /** Payload: offset in the first piece, total length (first piece plus frags). */
  data: number;
  dataLen: number;
}

const TX_HDR_NONE: TxHdr = { flags: 0, gsoType: 0, hdrLen: 0, gsoSize: 0, csumStart: 0, csumOffset: 0 };

export class TcpStack {
  readonly stats: TcpStats = {
    segsIn: 0,
    segsOut: 0,
    bytesIn: 0,
    bytesOut: 0,
    retransmits: 0,
    fastRetransmits: 0,
    timeouts: 0,
    badChecksum: 0,
    rstsOut: 0,
    oooSegs: 0,
    txFull: 0,
    maxSegOut: 0,
    maxSegIn: 0,
  };
  readonly conns: TcpConn[] = [];
  private readonly listeners = new Map<number, (c: TcpConn) => TcpHandler>();
  private readonly link: TcpLink;
  private readonly mac: Uint8Array;
  private readonly ip4: Uint8Array | null;
  private readonly ip6: Uint8Array[];
  private readonly mtu: number;
  private readonly off: TcpOffloads;
  private readonly rcvBuf: number;
  private readonly rcvShiftWanted: number;
  private readonly isn: () => number;
  private readonly minRto: number;
  private readonly timeWaitMs: number;
  private readonly maxRetries: number;
  private readonly seg: Seg = { v6: false, ipSrc: 0, ipDst: 0, srcMac: 0, srcPort: 0, dstPort: 0, seq: 0, ack: 0, flags: 0, wnd: 0, mss: 0, ws: -1, data: 0, dataLen: 0 };
  private readonly hdr: TxHdr = { ...TX_HDR_NONE };
  private nextPort = 49152;
  private now = 0;
  // The frame being processed, for data delivery.
  private rxU8: Uint8Array = new Uint8Array(0);
  private rxFirstEnd = 0;
  private rxFrags: RxFrags | null = null;

  constructor(cfg: TcpStackConfig, link: TcpLink) {
    this.link = link;
    this.mac = Uint8Array.from(cfg.mac);
    this.ip4 = cfg.ip4 ? Uint8Array.from(cfg.ip4) : null;
    this.ip6 = (cfg.ip6 ?? []).map((a) => Uint8Array.from(a));
    this.mtu = cfg.mtu;
    this.off = cfg.offloads ?? { csum: false, tso4: false, tso6: false };
    if ((this.off.tso4 || this.off.tso6) && !this.off.csum) throw new Error('TcpStack: TSO needs CSUM (virtio 1.x §5.1.3.1)');
    this.rcvBuf = Math.min(cfg.rcvBuf ?? 1 << 20, 1 << 30);
    let shift = 0;
    while (this.rcvBuf >>> shift > 0xffff) shift++;
    this.rcvShiftWanted = shift;
    this.isn = cfg.isn ?? (() => (Math.random() * 0x100000000) >>> 0);
    this.minRto = cfg.minRto ?? 200;
    this.timeWaitMs = cfg.timeWaitMs ?? 1000;
    this.maxRetries = cfg.maxRetries ?? 12;
  }

  /** Accepts connections to `port`; `accept` returns the handler for each new one. */
  listen(port: number, accept: (c: TcpConn) => TcpHandler): void {
    this.listeners.set(port, accept);
  }

  /** Active open to `ip`:`port` (4 or 16 bytes) through the next hop `mac`. */
  connect(now: number, mac: Uint8Array, ip: Uint8Array, port: number, handler: TcpHandler, localPort?: number): TcpConn {
    this.now = now;
    const v6 = ip.length === 16;
    const local = v6 ? this.ip6[0] : this.ip4;
    if (!local) throw new Error(`TcpStack.connect: no IPv${v6 ? 6 : 4} address`);
    const lp = localPort ?? this.ephemeral();
    const c = new TcpConn(v6, local, lp, ip, port, mac, handler);
    this.initConn(c, v6);
    c.state = 'SYN_SENT';
    c.rcvShift = this.rcvShiftWanted;
    this.conns.push(c);
    this.sendSyn(c);
    return c;
  }

  /** Sends an RST and forgets the connection. */
  abort(c: TcpConn): void {
    if (c.state !== 'CLOSED' && c.state !== 'SYN_SENT' && c.state !== 'TIME_WAIT') this.sendCtl(c, c.sndNxt, RST | ACK);
    this.drop(c, 'reset');
  }

  private ephemeral(): number {
    for (;;) {
      const p = this.nextPort;
      this.nextPort = p === 65535 ? 49152 : p + 1;
      if (!this.conns.some((c) => c.localPort === p)) return p;
    }
  }

  private initConn(c: TcpConn, v6: boolean): void {
    c.iss = this.isn() >>> 0;
    c.sndUna = c.iss;
    c.sndNxt = seqAdd(c.iss, 1);
    c.sndMax = c.sndNxt;
    c.mss = v6 ? 1220 : 536;
    c.rto = 1000;
    c.ipId = (Math.random() * 0x10000) & 0xffff;
  }

  private ourMss(v6: boolean): number {
    return this.mtu - (v6 ? 60 : 40);
  }

  // ------------------------------------------------------------ input

  /**
   * Handles one received Ethernet frame if it is TCP for us and returns true;
   * returns false for anything else (the caller's responder takes it).
   * The frame's first piece is `u8[off, off+len)`; `frags` lists the rest of
   * a frame spread over several buffers. `trusted`: the virtio header said
   * NEEDS_CSUM or DATA_VALID, so the TCP checksum is not verified.
   */
  input(now: number, u8: Uint8Array, off: number, len: number, trusted: boolean, frags: RxFrags | null = null): boolean {
    this.now = now;
    if (len < 14 + IPV4_HLEN + TCP_HLEN) return false;
    // Only frames to our unicast MAC: a TCP peer never multicasts.
    for (let i = 0; i < 6; i++) if (u8[off + i] !== this.mac[i]) return false;
    const et = (u8[off + 12] << 8) | u8[off + 13];
    const s = this.seg;
    let total = len;
    if (frags) for (let i = 0; i < frags.n; i++) total += frags.len[i];
    const l3 = off + 14;
    let l4: number;
    let l4len: number;
    let pseudo: number;
    if (et === ETHERTYPE.IPV4 && this.ip4) {
      if (u8[l3] !== 0x45 || u8[l3 + 9] !== IPPROTO.TCP) return false; // options: not ours to parse
      if ((((u8[l3 + 6] << 8) | u8[l3 + 7]) & 0x3fff) !== 0) return false; // fragments go to the responder's counters
      const tot = (u8[l3 + 2] << 8) | u8[l3 + 3];
      for (let i = 0; i < 4; i++) if (u8[l3 + 16 + i] !== this.ip4[i]) return false;
      if (tot < IPV4_HLEN + TCP_HLEN || tot > total - 14) return true; // ours but broken: drop
      if (csumFold(csumAdd(0, u8, l3, IPV4_HLEN)) !== 0xffff) {
        this.stats.badChecksum++;
        return true;
      }
      s.v6 = false;
      s.ipSrc = l3 + 12;
      s.ipDst = l3 + 16;
      l4 = l3 + IPV4_HLEN;
      l4len = tot - IPV4_HLEN;
      pseudo = trusted ? 0 : pseudoSum4(u8, s.ipSrc, u8, s.ipDst, IPPROTO.TCP, l4len);
    } else if (et === ETHERTYPE.IPV6 && this.ip6.length > 0) {
      if (len < 14 + IPV6_HLEN + TCP_HLEN || u8[l3] >>> 4 !== 6 || u8[l3 + 6] !== IPPROTO.TCP) return false;
      let mine = false;
      for (let a = 0; a < this.ip6.length && !mine; a++) {
        mine = true;
        for (let i = 0; i < 16; i++) {
          if (u8[l3 + 24 + i] !== this.ip6[a][i]) {
            mine = false;
            break;
          }
        }
      }
      if (!mine) return false;
      const plen = (u8[l3 + 4] << 8) | u8[l3 + 5];
      if (plen < TCP_HLEN || IPV6_HLEN + plen > total - 14) return true;
      s.v6 = true;
      s.ipSrc = l3 + 8;
      s.ipDst = l3 + 24;
      l4 = l3 + IPV6_HLEN;
      l4len = plen;
      pseudo = trusted ? 0 : pseudoSum6(u8, s.ipSrc, u8, s.ipDst, IPPROTO.TCP, l4len);
    } else {
      return false;
    }
    const doff = (u8[l4 + 12] >>> 4) * 4;
    if (doff < TCP_HLEN || doff > l4len || l4 + doff > off + len) return true;
    if (!trusted && !this.checksumOk(u8, l4, off + len, frags, l4len, pseudo)) {
      this.stats.badChecksum++;
      return true;
    }
    s.srcMac = off + 6;
    s.srcPort = (u8[l4] << 8) | u8[l4 + 1];
    s.dstPort = (u8[l4 + 2] << 8) | u8[l4 + 3];
    s.seq = ((u8[l4 + 4] << 24) | (u8[l4 + 5] << 16) | (u8[l4 + 6] << 8) | u8[l4 + 7]) >>> 0;
    s.ack = ((u8[l4 + 8] << 24) | (u8[l4 + 9] << 16) | (u8[l4 + 10] << 8) | u8[l4 + 11]) >>> 0;
    s.flags = u8[l4 + 13];
    s.wnd = (u8[l4 + 14] << 8) | u8[l4 + 15];
    s.mss = 0;
    s.ws = -1;
    if (s.flags & SYN) this.parseOptions(u8, l4 + TCP_HLEN, l4 + doff);
    s.data = l4 + doff;
    s.dataLen = l4len - doff;
    // Trailing Ethernet padding is not payload: the first piece ends where the IP packet does, at the latest.
    this.rxU8 = u8;
    this.rxFirstEnd = Math.min(off + len, l4 + l4len);
    this.rxFrags = frags;
    this.stats.segsIn++;
    this.stats.bytesIn += s.dataLen;
    if (s.dataLen > this.stats.maxSegIn) this.stats.maxSegIn = s.dataLen;
    this.segment(u8);
    return true;
  }

  private checksumOk(u8: Uint8Array, l4: number, firstEnd: number, frags: RxFrags | null, l4len: number, pseudo: number): boolean {
    let take = Math.min(firstEnd - l4, l4len);
    let sum = pseudo + csum16(u8, l4, take);
    let done = take;
    for (let i = 0; frags && i < frags.n && done < l4len; i++) {
      take = Math.min(frags.len[i], l4len - done);
      const part = csum16(u8, frags.off[i], take);
      // A piece that starts at an odd position of the segment contributes byte-swapped.
      sum += (done & 1) === 0 ? part : ((part & 0xff) << 8) | (part >>> 8);
      done += take;
    }
    return csumFold(sum) === 0xffff;
  }

  private parseOptions(u8: Uint8Array, i: number, end: number): void {
    const s = this.seg;
    while (i < end) {
      const kind = u8[i];
      if (kind === 0) break;
      if (kind === 1) {
        i++;
        continue;
      }
      if (i + 1 >= end) break;
      const olen = u8[i + 1];
      if (olen < 2 || i + olen > end) break;
      if (kind === 2 && olen === 4) s.mss = (u8[i + 2] << 8) | u8[i + 3];
      else if (kind === 3 && olen === 3) s.ws = Math.min(u8[i + 2], 14); // RFC 7323 §2.3: cap at 14
      i += olen;
    }
  }

  private find(u8: Uint8Array): TcpConn | undefined {
    const s = this.seg;
    for (let k = 0; k < this.conns.length; k++) {
      const c = this.conns[k];
      if (c.localPort !== s.dstPort || c.remotePort !== s.srcPort || c.v6 !== s.v6) continue;
      const n = s.v6 ? 16 : 4;
      let eq = true;
      for (let i = 0; i < n; i++) {
        if (c.remoteIp[i] !== u8[s.ipSrc + i]) {
          eq = false;
          break;
        }
      }
      // The local address matters for IPv6 (global vs link-local).
      if (eq && s.v6) for (let i = 0; i < 16 && eq; i++) eq = c.localIp[i] === u8[s.ipDst + i];
      if (eq) return c;
    }
    return undefined;
  }

  /** RFC 9293 §3.10.7 "SEGMENT ARRIVES". */
  private segment(u8: Uint8Array): void {
    const s = this.seg;
    const c = this.find(u8);
    if (!c) return this.noConn(u8);
    if (c.state === 'SYN_SENT') return this.synSent(c);

    // 1. Acceptability (the four cases of §3.10.7.4).
    const segLen = s.dataLen + (s.flags & SYN ? 1 : 0) + (s.flags & FIN ? 1 : 0);
    const wnd = seqDiff(c.rcvAdv, c.rcvNxt) > 0 ? seqDiff(c.rcvAdv, c.rcvNxt) : 0;
    let ok: boolean;
    if (segLen === 0) ok = wnd === 0 ? s.seq === c.rcvNxt : seqGe(s.seq, c.rcvNxt) && seqLt(s.seq, seqAdd(c.rcvNxt, wnd));
    else if (wnd === 0) ok = false;
    else {
      const last = seqAdd(s.seq, segLen - 1);
      ok = (seqGe(s.seq, c.rcvNxt) && seqLt(s.seq, seqAdd(c.rcvNxt, wnd))) || (seqGe(last, c.rcvNxt) && seqLt(last, seqAdd(c.rcvNxt, wnd)));
    }
    // A retransmitted SYN from a peer in SYN_RCVD: answer with our SYN-ACK again.
    if (c.state === 'SYN_RCVD' && s.flags & SYN && !(s.flags & ACK) && s.seq === c.irs) {
      this.sendSyn(c);
      return;
    }
    if (!ok) {
      if (!(s.flags & RST)) {
        // Old duplicate or beyond the window: re-ACK what we have (§3.10.7.4 first check).
        c.ackNow = true;
        this.output(c);
      }
      return;
    }
    // 2. RST (RFC 5961 §3: exact match resets, anything else in the window gets a challenge ACK).
    if (s.flags & RST) {
      if (s.seq === c.rcvNxt) this.drop(c, c.state === 'SYN_RCVD' ? 'closed' : 'reset');
      else {
        c.ackNow = true;
        this.output(c);
      }
      return;
    }
    // 4. SYN in a synchronised state: challenge ACK (RFC 5961 §4).
    if (s.flags & SYN) {
      c.ackNow = true;
      this.output(c);
      return;
    }
    // 5. ACK.
    if (!(s.flags & ACK)) return;
    if (c.state === 'SYN_RCVD') {
      if (seqLe(s.ack, c.sndUna) || seqGt(s.ack, c.sndNxt)) {
        this.sendReset(u8);
        return;
      }
      this.established(c);
    }
    if (!this.processAck(c)) return;
    if (c.state === 'CLOSED') return;

    // 7. Data.
    let finAt = s.flags & FIN ? seqAdd(s.seq, s.dataLen) : -1;
    if (s.dataLen > 0 && (c.state === 'ESTABLISHED' || c.state === 'FIN_WAIT_1' || c.state === 'FIN_WAIT_2')) {
      if (s.seq === c.rcvNxt || seqLt(s.seq, c.rcvNxt)) {
        const skip = seqDiff(c.rcvNxt, s.seq);
        this.deliver(c, skip, s.dataLen - skip);
        if (c.ooo.length > 0) finAt = this.drainOoo(c, finAt);
        // Every second full segment deserves an ACK (RFC 9293 §3.8.6.3); the caller's flush() ACKs a whole batch at once.
        c.ackPending = true;
      } else {
        this.stash(c, s.seq, s.dataLen, finAt === seqAdd(s.seq, s.dataLen));
        finAt = -1;
        // An out-of-order segment gets an immediate duplicate ACK so the peer can fast-retransmit (RFC 5681 §4.2).
        c.ackNow = true;
      }
    }
    // 8. FIN.
    if (finAt >= 0 && finAt === c.rcvNxt && !c.peerFin) this.peerFin(c);
    if (c.ackNow || (c.state !== 'ESTABLISHED' && c.ackPending)) this.output(c);
  }

  private established(c: TcpConn): void {
    c.state = 'ESTABLISHED';
    c.synAcked = true;
    c.cwnd = Math.min(10 * c.mss, Math.max(2 * c.mss, 14600)); // RFC 6928 initial window
    c.retries = 0;
    c.handler.onEstablished?.(c);
  }

  private peerFin(c: TcpConn): void {
    c.peerFin = true;
    c.rcvNxt = seqAdd(c.rcvNxt, 1);
    c.ackNow = true;
    if (c.state === 'ESTABLISHED' || c.state === 'SYN_RCVD') c.state = 'CLOSE_WAIT';
    else if (c.state === 'FIN_WAIT_1') c.state = c.finAcked ? 'TIME_WAIT' : 'CLOSING';
    else if (c.state === 'FIN_WAIT_2') c.state = 'TIME_WAIT';
    if (c.state === 'TIME_WAIT') this.enterTimeWait(c);
    c.handler.onPeerFin?.(c);
  }

  private enterTimeWait(c: TcpConn): void {
    c.state = 'TIME_WAIT';
    c.rtoAt = -1;
    c.timeWaitAt = this.now + this.timeWaitMs;
  }

  /** In-order payload [skip, skip+len) of the current segment → the application. */
  private deliver(c: TcpConn, skip: number, len: number): void {
    if (len <= 0) return;
    const u8 = this.rxU8;
    const s = this.seg;
    let pos = s.data;
    let avail = this.rxFirstEnd - pos;
    let left = len;
    let k = 0;
    for (;;) {
      if (skip >= avail) skip -= avail;
      else {
        const n = Math.min(avail - skip, left);
        c.handler.onData?.(c, u8, pos + skip, n);
        left -= n;
        skip = 0;
      }
      if (left === 0 || !this.rxFrags || k >= this.rxFrags.n) break;
      pos = this.rxFrags.off[k];
      avail = this.rxFrags.len[k];
      k++;
    }
    const got = len - left;
    c.rcvNxt = seqAdd(c.rcvNxt, got);
    c.rcvdBytes += got;
  }

  /** Copies an out-of-order segment (bounded by the window) for later. */
  private stash(c: TcpConn, seq: number, len: number, fin: boolean): void {
    this.stats.oooSegs++;
    // Keep only what lies inside the advertised window.
    const room = seqDiff(c.rcvAdv, seq);
    if (room <= 0) return;
    if (len > room) {
      len = room;
      fin = false;
    }
    for (const o of c.ooo) if (o.seq === seq && o.data.length >= len) return; // duplicate
    const data = new Uint8Array(len);
    const u8 = this.rxU8;
    let pos = this.seg.data;
    let avail = this.rxFirstEnd - pos;
    let done = 0;
    for (let k = 0; ; k++) {
      const n = Math.min(avail, len - done);
      data.set(u8.subarray(pos, pos + n), done);
      done += n;
      if (done === len || !this.rxFrags || k >= this.rxFrags.n) break;
      pos = this.rxFrags.off[k];
      avail = this.rxFrags.len[k];
    }
    let i = c.ooo.length;
    while (i > 0 && seqGt(c.ooo[i - 1].seq, seq)) i--;
    c.ooo.splice(i, 0, { seq, data: data.subarray(0, done), fin });
    c.oooBytes += done;
  }

  /** Delivers stashed segments that became in order; returns the FIN position if one was stashed. */
  private drainOoo(c: TcpConn, finAt: number): number {
    while (c.ooo.length > 0 && seqLe(c.ooo[0].seq, c.rcvNxt)) {
      const o = c.ooo.shift()!;
      c.oooBytes -= o.data.length;
      const skip = seqDiff(c.rcvNxt, o.seq);
      if (skip < o.data.length) {
        c.handler.onData?.(c, o.data, skip, o.data.length - skip);
        const n = o.data.length - skip;
        c.rcvNxt = seqAdd(c.rcvNxt, n);
        c.rcvdBytes += n;
      }
      if (o.fin && skip <= o.data.length) finAt = seqAdd(o.seq, o.data.length);
    }
    return finAt;
  }

  /** Step 5 of SEGMENT ARRIVES; false when the segment must be dropped. */
  private processAck(c: TcpConn): boolean {
    const s = this.seg;
    if (seqGt(s.ack, c.sndMax)) {
      // ACK for something not yet sent.
      c.ackNow = true;
      this.output(c);
      return false;
    }
    const wnd = s.wnd << c.sndShift;
    // A peer that answers our probes with a closed window is alive: persist forever (RFC 9293 §3.8.6.1).
    if (wnd === 0) c.retries = 0;
    if (seqGt(s.ack, c.sndUna)) {
      const acked = seqDiff(s.ack, c.sndUna);
      // Our SYN takes the first sequence number and is no data byte (a passive open gets its
      // ACK here): counting it would put every retransmission's data one byte late.
      const synAcked = c.sndUna === c.iss ? 1 : 0;
      c.sndUna = s.ack;
      let dataAcked = acked - synAcked;
      // Only the FIN lies beyond the last data byte.
      if (c.finQueued && c.ackedBytes + dataAcked > c.sndEnd) {
        c.finAcked = true;
        dataAcked = c.sndEnd - c.ackedBytes;
      }
      c.ackedBytes += dataAcked;
      // After a timeout rewound sndNxt, the peer may acknowledge what it already had.
      if (seqGt(s.ack, c.sndNxt)) {
        c.sndNxt = s.ack;
        c.nxtOff = c.ackedBytes;
        if (c.finAcked) c.finSent = true;
      }
      c.retries = 0;
      // RTT sample (Karn: rttSeq is cleared whenever we retransmit).
      if (c.rttSeq >= 0 && seqGe(s.ack, c.rttSeq)) {
        this.rttSample(c, this.now - c.rttTime);
        c.rttSeq = -1;
      }
      // Congestion control (RFC 5681, NewReno RFC 6582).
      if (c.inRecovery) {
        if (seqGe(s.ack, c.recover)) {
          c.inRecovery = false;
          c.cwnd = c.ssthresh;
        } else {
          // Partial ACK: the next hole is lost too.
          this.retransmitOne(c);
          c.cwnd = Math.max(c.cwnd - dataAcked + c.mss, c.mss);
        }
      } else if (c.cwnd < c.ssthresh) c.cwnd += dataAcked; // slow start counts bytes acked, as Linux does (RFC 3465): our peers ACK whole batches
      else c.cwnd += Math.max(1, Math.floor((c.mss * c.mss) / c.cwnd)) * Math.max(1, Math.floor(dataAcked / c.mss));
      c.dupAcks = 0;
      c.rtoAt = seqGt(c.sndNxt, c.sndUna) ? this.now + c.rto : -1;
      if (dataAcked > 0) c.handler.onAcked?.(c);
    } else if (s.ack === c.sndUna && s.dataLen === 0 && !(s.flags & (SYN | FIN)) && seqGt(c.sndNxt, c.sndUna) && wnd === c.sndWnd) {
      // Duplicate ACK.
      c.dupAcks++;
      if (c.dupAcks === 3 && !c.inRecovery) {
        const flight = seqDiff(c.sndNxt, c.sndUna);
        c.ssthresh = Math.max(flight >>> 1, 2 * c.mss);
        c.inRecovery = true;
        c.recover = c.sndNxt;
        this.stats.fastRetransmits++;
        this.retransmitOne(c);
        c.cwnd = c.ssthresh + 3 * c.mss;
      } else if (c.inRecovery) c.cwnd += c.mss;
    }
    // Window update (§3.10.7.4 fifth check).
    if (seqLt(c.sndWl1, s.seq) || (c.sndWl1 === s.seq && seqLe(c.sndWl2, s.ack))) {
      c.sndWnd = wnd;
      if (wnd > c.maxSndWnd) c.maxSndWnd = wnd;
      c.sndWl1 = s.seq;
      c.sndWl2 = s.ack;
    }
    if (c.finAcked) {
      if (c.state === 'FIN_WAIT_1') c.state = 'FIN_WAIT_2';
      else if (c.state === 'CLOSING') this.enterTimeWait(c);
      else if (c.state === 'LAST_ACK') {
        this.drop(c, 'closed');
        return false;
      }
    }
    return true;
  }

  private rttSample(c: TcpConn, r: number): void {
    if (c.srtt < 0) {
      c.srtt = r;
      c.rttvar = r / 2;
    } else {
      c.rttvar = 0.75 * c.rttvar + 0.25 * Math.abs(c.srtt - r);
      c.srtt = 0.875 * c.srtt + 0.125 * r;
    }
    c.rto = Math.min(60_000, Math.max(this.minRto, c.srtt + Math.max(1, 4 * c.rttvar)));
  }

  private synSent(c: TcpConn): void {
    const s = this.seg;
    if (s.flags & ACK && (seqLe(s.ack, c.iss) || seqGt(s.ack, c.sndNxt))) {
      if (!(s.flags & RST)) this.sendReset(this.rxU8);
      return;
    }
    if (s.flags & RST) {
      if (s.flags & ACK) this.drop(c, 'reset');
      return;
    }
    if (!(s.flags & SYN)) return;
    c.irs = s.seq;
    c.rcvNxt = seqAdd(s.seq, 1);
    this.takeSynOptions(c);
    c.sndWnd = s.wnd; // never scaled in a SYN (RFC 7323 §2.2)
    c.maxSndWnd = c.sndWnd;
    c.sndWl1 = s.seq;
    c.sndWl2 = s.ack;
    if (s.flags & ACK) {
      c.sndUna = s.ack;
      c.rcvAdv = seqAdd(c.rcvNxt, Math.min(this.rcvWindow(c), 0xffff));
      this.established(c);
      c.rtoAt = -1;
      if (c.rttSeq >= 0) this.rttSample(c, this.now - c.rttTime);
      c.rttSeq = -1;
      c.ackNow = true;
      this.output(c);
    } else {
      // Simultaneous open.
      c.state = 'SYN_RCVD';
      this.sendSyn(c);
    }
  }

  private takeSynOptions(c: TcpConn): void {
    const s = this.seg;
    if (s.mss > 0) c.mss = Math.min(s.mss, this.ourMss(c.v6));
    else c.mss = Math.min(c.v6 ? 1220 : 536, this.ourMss(c.v6));
    if (s.ws >= 0) {
      c.wsOk = true;
      c.sndShift = s.ws;
    } else {
      c.wsOk = false;
      c.sndShift = 0;
      c.rcvShift = 0;
    }
  }

  private noConn(u8: Uint8Array): void {
    const s = this.seg;
    if (s.flags & RST) return;
    const accept = this.listeners.get(s.dstPort);
    if (accept && s.flags & SYN && !(s.flags & ACK)) {
      const local = s.v6 ? this.ip6.find((a) => a.every((b, i) => u8[s.ipDst + i] === b))! : this.ip4!;
      const c = new TcpConn(s.v6, local, s.dstPort, u8.subarray(s.ipSrc, s.ipSrc + (s.v6 ? 16 : 4)), s.srcPort, u8.subarray(s.srcMac, s.srcMac + 6), {});
      this.initConn(c, s.v6);
      c.irs = s.seq;
      c.rcvNxt = seqAdd(s.seq, 1);
      c.rcvShift = this.rcvShiftWanted;
      this.takeSynOptions(c);
      c.sndWnd = s.wnd;
      c.maxSndWnd = s.wnd;
      c.sndWl1 = s.seq;
      c.sndWl2 = c.iss;
      c.state = 'SYN_RCVD';
      c.handler = accept(c);
      this.conns.push(c);
      this.sendSyn(c);
      return;
    }
    this.sendReset(u8);
  }

  // ------------------------------------------------------------ output

  /** Receive window we can offer now (bytes), before scaling. */
  private rcvWindow(c: TcpConn): number {
    let w = this.rcvBuf - c.oooBytes;
    const app = c.handler.rcvSpace?.(c);
    if (app !== undefined && app < w) w = app;
    return w > 0 ? w : 0;
  }

  /** Window field value; moves rcvAdv right (never left), avoiding silly-window updates (RFC 9293 §3.8.6.2.2). */
  private windowField(c: TcpConn): number {
    const cur = seqDiff(c.rcvAdv, c.rcvNxt);
    let w = this.rcvWindow(c);
    if (w > cur || cur < 0) {
      if (cur >= 0 && w - cur < Math.min(this.rcvBuf >>> 1, c.mss) && w < this.rcvBuf) w = cur;
    } else w = cur;
    if (w < 0) w = 0;
    const field = Math.min(w >>> c.rcvShift, 0xffff);
    const edge = seqAdd(c.rcvNxt, field << c.rcvShift);
    if (seqGt(edge, c.rcvAdv) || cur < 0) c.rcvAdv = edge;
    return field;
  }

  /** Writes Ethernet + IP + TCP headers at `o`; returns the payload offset. Fills `this.hdr`. */
  private headers(c: TcpConn, o: number, seq: number, flags: number, payloadLen: number, optLen: number, win: number): number {
    const u8 = this.link.u8;
    u8.set(c.remoteMac, o);
    u8.set(this.mac, o + 6);
    const l3 = o + 14;
    const tcpLen = TCP_HLEN + optLen + payloadLen;
    let l4: number;
    if (!c.v6) {
      u8[o + 12] = 0x08;
      u8[o + 13] = 0x00;
      const tot = IPV4_HLEN + tcpLen;
      u8[l3] = 0x45;
      u8[l3 + 1] = 0;
      u8[l3 + 2] = tot >>> 8;
      u8[l3 + 3] = tot & 0xff;
      u8[l3 + 4] = c.ipId >>> 8;
      u8[l3 + 5] = c.ipId & 0xff;
      u8[l3 + 6] = 0x40; // DF: TCP does its own PMTU (RFC 1191)
      u8[l3 + 7] = 0;
      u8[l3 + 8] = 64;
      u8[l3 + 9] = IPPROTO.TCP;
      u8[l3 + 10] = 0;
      u8[l3 + 11] = 0;
      u8.set(c.localIp, l3 + 12);
      u8.set(c.remoteIp, l3 + 16);
      const ck = ~csumFold(csumAdd(0, u8, l3, IPV4_HLEN)) & 0xffff;
      u8[l3 + 10] = ck >>> 8;
      u8[l3 + 11] = ck & 0xff;
      l4 = l3 + IPV4_HLEN;
    } else {
      u8[o + 12] = 0x86;
      u8[o + 13] = 0xdd;
      u8[l3] = 0x60;
      u8[l3 + 1] = 0;
      u8[l3 + 2] = 0;
      u8[l3 + 3] = 0;
      u8[l3 + 4] = tcpLen >>> 8;
      u8[l3 + 5] = tcpLen & 0xff;
      u8[l3 + 6] = IPPROTO.TCP;
      u8[l3 + 7] = 64;
      u8.set(c.localIp, l3 + 8);
      u8.set(c.remoteIp, l3 + 24);
      l4 = l3 + IPV6_HLEN;
    }
    u8[l4] = c.localPort >>> 8;
    u8[l4 + 1] = c.localPort & 0xff;
    u8[l4 + 2] = c.remotePort >>> 8;
    u8[l4 + 3] = c.remotePort & 0xff;
    u8[l4 + 4] = seq >>> 24;
    u8[l4 + 5] = (seq >>> 16) & 0xff;
    u8[l4 + 6] = (seq >>> 8) & 0xff;
    u8[l4 + 7] = seq & 0xff;
    const ack = flags & ACK ? c.rcvNxt : 0;
    u8[l4 + 8] = ack >>> 24;
    u8[l4 + 9] = (ack >>> 16) & 0xff;
    u8[l4 + 10] = (ack >>> 8) & 0xff;
    u8[l4 + 11] = ack & 0xff;
    u8[l4 + 12] = ((TCP_HLEN + optLen) / 4) << 4;
    u8[l4 + 13] = flags;
    u8[l4 + 14] = win >>> 8;
    u8[l4 + 15] = win & 0xff;
    u8[l4 + 16] = 0;
    u8[l4 + 17] = 0;
    u8[l4 + 18] = 0;
    u8[l4 + 19] = 0;
    const h = this.hdr;
    h.flags = 0;
    h.gsoType = HDR.GSO_NONE;
    h.hdrLen = 0;
    h.gsoSize = 0;
    h.csumStart = l4 - o;
    h.csumOffset = 16;
    return l4 + TCP_HLEN;
  }

  /** Fills the TCP checksum (full, or the pseudo-header part for the device) and commits the frame. */
  private finish(c: TcpConn, o: number, frameLen: number, payloadLen: number): void {
    const u8 = this.link.u8;
    const h = this.hdr;
    const l4 = o + h.csumStart;
    const tcpLen = frameLen - h.csumStart;
    const pseudo = c.v6 ? pseudoSum6(c.localIp, 0, c.remoteIp, 0, IPPROTO.TCP, tcpLen) : pseudoSum4(c.localIp, 0, c.remoteIp, 0, IPPROTO.TCP, tcpLen);
    let ck: number;
    if (this.off.csum) {
      // Partial checksum as Linux leaves it for CHECKSUM_PARTIAL: the folded
      // pseudo-header sum, not complemented; the device sums from csum_start
      // to the end and stores the complement at csum_start + csum_offset.
      ck = csumFold(pseudo);
      h.flags = HDR.F_NEEDS_CSUM;
    } else {
      ck = ~csumFold(pseudo + csum16(u8, l4, tcpLen)) & 0xffff;
    }
    u8[l4 + 16] = ck >>> 8;
    u8[l4 + 17] = ck & 0xff;
    if (!c.v6) c.ipId = (c.ipId + (h.gsoSize > 0 ? Math.ceil(payloadLen / h.gsoSize) : 1)) & 0xffff;
    this.link.commit(frameLen, h);
    this.stats.segsOut++;
    this.stats.bytesOut += payloadLen;
    if (payloadLen > this.stats.maxSegOut) this.stats.maxSegOut = payloadLen;
  }

  private sendSyn(c: TcpConn): boolean {
    const synAck = c.state === 'SYN_RCVD';
    const optLen = synAck && !c.wsOk ? 4 : 8;
    const len = 14 + (c.v6 ? IPV6_HLEN : IPV4_HLEN) + TCP_HLEN + optLen;
    const o = this.link.reserve(len);
    if (o < 0) {
      this.stats.txFull++;
      c.blocked = true;
      c.rtoAt = this.now + c.rto;
      return false;
    }
    const win = Math.min(this.rcvWindow(c), 0xffff);
    c.rcvAdv = seqAdd(c.rcvNxt, win);
    const p = this.headers(c, o, c.iss, synAck ? SYN | ACK : SYN, 0, optLen, win);
    const u8 = this.link.u8;
    const mss = this.ourMss(c.v6);
    u8[p] = 2;
    u8[p + 1] = 4;
    u8[p + 2] = mss >>> 8;
    u8[p + 3] = mss & 0xff;
    if (optLen === 8) {
      u8[p + 4] = 1; // NOP
      u8[p + 5] = 3;
      u8[p + 6] = 3;
      u8[p + 7] = c.rcvShift;
    }
    this.finish(c, o, len, 0);
    if (c.retries === 0) {
      c.rttSeq = seqAdd(c.iss, 1);
      c.rttTime = this.now;
    }
    c.rtoAt = this.now + c.rto;
    return true;
  }

  /** A bare control segment (ACK, RST|ACK...) for a connection. */
  private sendCtl(c: TcpConn, seq: number, flags: number): boolean {
    const len = 14 + (c.v6 ? IPV6_HLEN : IPV4_HLEN) + TCP_HLEN;
    const o = this.link.reserve(len);
    if (o < 0) {
      this.stats.txFull++;
      c.blocked = true;
      return false;
    }
    const win = flags & RST ? 0 : this.windowField(c);
    this.headers(c, o, seq, flags, 0, 0, win);
    this.finish(c, o, len, 0);
    if (flags & RST) this.stats.rstsOut++;
    return true;
  }

  /** RST in answer to a segment with no connection (RFC 9293 §3.10.7.1). */
  private sendReset(u8: Uint8Array): void {
    const s = this.seg;
    const n = s.v6 ? 16 : 4;
    const local = u8.slice(s.ipDst, s.ipDst + n);
    const tmp = new TcpConn(s.v6, local, s.dstPort, u8.subarray(s.ipSrc, s.ipSrc + n), s.srcPort, u8.subarray(s.srcMac, s.srcMac + 6), {});
    if (s.flags & ACK) this.sendCtl(tmp, s.ack, RST);
    else {
      tmp.rcvNxt = seqAdd(s.seq, s.dataLen + (s.flags & SYN ? 1 : 0) + (s.flags & FIN ? 1 : 0));
      this.sendCtl(tmp, 0, RST | ACK);
    }
  }

  /** Largest payload of one frame we build: one MSS, or a TSO super-segment of whole MSS. */
  private maxPayload(c: TcpConn): number {
    if (!(c.v6 ? this.off.tso6 : this.off.tso4)) return c.mss;
    const hdrs = (c.v6 ? IPV6_HLEN : IPV4_HLEN) + TCP_HLEN;
    // IPv4 total length and the IPv6 payload length are 16 bits; and the TX buffer must hold it.
    const lim = Math.min(c.v6 ? 0xffff - TCP_HLEN : 0xffff - hdrs, this.link.maxFrame - 14 - hdrs);
    return Math.max(c.mss, Math.floor(lim / c.mss) * c.mss);
  }

  /** One data segment at stream offset `streamOff`; false when no TX buffer was free. */
  private sendData(c: TcpConn, seq: number, streamOff: number, len: number, fin: boolean): boolean {
    const frameLen = 14 + (c.v6 ? IPV6_HLEN : IPV4_HLEN) + TCP_HLEN + len;
    const o = this.link.reserve(frameLen);
    if (o < 0) {
      this.stats.txFull++;
      c.blocked = true;
      return false;
    }
    const p = this.headers(c, o, seq, ACK | (fin ? FIN : 0) | (len > 0 && streamOff + len === c.sndEnd ? PSH : 0), len, 0, this.windowField(c));
    if (len > 0) c.source!(this.link.u8, p, streamOff, len);
    if (len > c.mss) {
      const h = this.hdr;
      h.gsoType = c.v6 ? HDR.GSO_TCPV6 : HDR.GSO_TCPV4;
      h.gsoSize = c.mss;
      h.hdrLen = p - o;
    }
    this.finish(c, o, frameLen, len);
    c.ackPending = false;
    c.ackNow = false;
    return true;
  }

  private retransmitOne(c: TcpConn): void {
    const len = Math.min(c.mss, c.nxtOff - c.ackedBytes);
    const fin = c.finSent && !c.finAcked && len === c.nxtOff - c.ackedBytes;
    if (len === 0 && !fin) return;
    this.stats.retransmits++;
    c.rttSeq = -1;
    this.sendData(c, c.sndUna, c.ackedBytes, len, fin);
  }

  /** Sends what the windows allow, then a pure ACK if one is still due. */
  output(c: TcpConn): void {
    c.blocked = false;
    if (c.state === 'SYN_SENT' || c.state === 'SYN_RCVD' || c.state === 'CLOSED') return;
    const canSend = c.state === 'ESTABLISHED' || c.state === 'CLOSE_WAIT' || c.state === 'FIN_WAIT_1' || c.state === 'CLOSING' || c.state === 'LAST_ACK';
    if (canSend) {
      const max = this.maxPayload(c);
      for (;;) {
        const flight = seqDiff(c.sndNxt, c.sndUna);
        const wnd = Math.min(c.sndWnd, c.cwnd);
        let len = Math.min(c.sndEnd - c.nxtOff, wnd - flight, max);
        const wantFin = c.finQueued && !c.finSent && c.nxtOff + Math.max(len, 0) === c.sndEnd;
        if (len <= 0 && !wantFin) break;
        if (len < 0) len = 0;
        // Sender SWS avoidance (RFC 9293 §3.8.6.2.1): no runts unless it is the end of the data or half the peer's max window.
        if (len > 0 && len < c.mss && c.nxtOff + len < c.sndEnd && len < c.maxSndWnd >>> 1) break;
        if (!this.sendData(c, c.sndNxt, c.nxtOff, len, wantFin)) return;
        if (c.rttSeq < 0 && len > 0) {
          c.rttSeq = seqAdd(c.sndNxt, len);
          c.rttTime = this.now;
        }
        c.sndNxt = seqAdd(c.sndNxt, len + (wantFin ? 1 : 0));
        if (seqGt(c.sndNxt, c.sndMax)) c.sndMax = c.sndNxt;
        c.nxtOff += len;
        if (wantFin) {
          c.finSent = true;
          if (c.state === 'ESTABLISHED') c.state = 'FIN_WAIT_1';
          else if (c.state === 'CLOSE_WAIT') c.state = 'LAST_ACK';
        }
        if (c.rtoAt < 0) c.rtoAt = this.now + c.rto;
        if (wantFin) break;
      }
      // Zero window with data waiting: the persist timer probes it (RFC 9293 §3.8.6.1).
      if (c.rtoAt < 0 && c.sndEnd > c.nxtOff && c.sndNxt === c.sndUna) c.rtoAt = this.now + c.rto;
    }
    if (c.ackNow || c.ackPending) {
      if (this.sendCtl(c, c.sndNxt, ACK)) {
        c.ackNow = false;
        c.ackPending = false;
      }
    }
  }

  /** After a batch of input (and whenever TX buffers were freed): ACKs, window updates, and more data. */
  flush(now: number): void {
    this.now = now;
    for (let k = 0; k < this.conns.length; k++) {
      const c = this.conns[k];
      if (c.state === 'SYN_SENT' || c.state === 'SYN_RCVD') {
        if (c.blocked) {
          c.blocked = false;
          this.sendSyn(c);
        }
        continue;
      }
      if (c.state === 'CLOSED' || c.state === 'TIME_WAIT') {
        if (c.ackNow) this.output(c);
        continue;
      }
      // Window update when the application freed a lot of room (two MSS or half the buffer).
      if (!c.ackPending && !c.peerFin) {
        const cur = seqDiff(c.rcvAdv, c.rcvNxt);
        const w = this.rcvWindow(c);
        if (w - cur >= Math.min(2 * c.mss, this.rcvBuf >>> 1)) c.ackPending = true;
      }
      this.output(c);
    }
  }

  /** Runs timers that are due. */
  timers(now: number): void {
    this.now = now;
    for (let k = this.conns.length - 1; k >= 0; k--) {
      const c = this.conns[k];
      if (c.timeWaitAt >= 0 && now >= c.timeWaitAt) {
        this.drop(c, 'closed');
        continue;
      }
      if (c.rtoAt < 0 || now < c.rtoAt) continue;
      c.rtoAt = -1;
      if (c.state === 'CLOSED' || c.state === 'TIME_WAIT') continue;
      const persist = c.sndNxt === c.sndUna && !c.finSent && c.sndEnd > c.nxtOff && c.synAcked;
      if (!persist && seqDiff(c.sndNxt, c.sndUna) === 0 && c.synAcked) continue;
      if (++c.retries > this.maxRetries) {
        this.stats.timeouts++;
        if (c.synAcked) this.sendCtl(c, c.sndNxt, RST | ACK);
        this.drop(c, 'timeout');
        continue;
      }
      c.rto = Math.min(c.rto * 2, 60_000); // exponential backoff (RFC 6298 5.5)
      c.rttSeq = -1;
      if (!c.synAcked) {
        this.stats.retransmits++;
        this.sendSyn(c);
        continue;
      }
      if (persist) {
        // Window probe: one byte beyond the closed window.
        if (this.sendData(c, c.sndNxt, c.nxtOff, 1, false)) {
          c.sndNxt = seqAdd(c.sndNxt, 1);
          if (seqGt(c.sndNxt, c.sndMax)) c.sndMax = c.sndNxt;
          c.nxtOff += 1;
        }
        c.rtoAt = now + c.rto;
        continue;
      }
      // Timeout: collapse the window and go back to sndUna (RFC 5681 §3.1).
      this.stats.retransmits++;
      const flight = seqDiff(c.sndNxt, c.sndUna);
      c.ssthresh = Math.max(flight >>> 1, 2 * c.mss);
      c.cwnd = c.mss;
      c.inRecovery = false;
      c.dupAcks = 0;
      c.sndNxt = c.sndUna;
      c.nxtOff = c.ackedBytes;
      // The FIN goes again after the data (the state stays: FIN_WAIT_1, CLOSING or LAST_ACK).
      if (c.finSent && !c.finAcked) c.finSent = false;
      c.rtoAt = now + c.rto;
      this.output(c);
    }
  }

  /** Milliseconds until the next timer is due (0 = now), or -1 when none is armed. */
  nextTimer(now: number): number {
    let t = Infinity;
    for (let k = 0; k < this.conns.length; k++) {
      const c = this.conns[k];
      if (c.rtoAt >= 0 && c.rtoAt < t) t = c.rtoAt;
      if (c.timeWaitAt >= 0 && c.timeWaitAt < t) t = c.timeWaitAt;
    }
    return t === Infinity ? -1 : Math.max(0, Math.ceil(t - now));
  }

  /** True while some connection waits for a TX buffer. */
  get blocked(): boolean {
    for (let k = 0; k < this.conns.length; k++) if (this.conns[k].blocked) return true;
    return false;
  }

  private drop(c: TcpConn, how: 'closed' | 'reset' | 'timeout'): void {
    const i = this.conns.indexOf(c);
    if (i >= 0) this.conns.splice(i, 1);
    const was = c.state;
    c.state = 'CLOSED';
    c.rtoAt = -1;
    c.timeWaitAt = -1;
    if (was !== 'CLOSED') c.handler.onClosed?.(c, how);
  }
}
