// One simulated vCPU serving one queue pair, in a worker_threads Worker:
// keeps RX buffers posted, hands received TCP frames to its TcpStack (echo,
// discard and source services) and everything else to the responder, sends
// their frames on the pair's TX queue with the virtio_net_hdr offload fields,
// reclaims TX buffers, runs TCP timers, and sleeps on the call eventfds like a
// halted vCPU waiting for an interrupt (or a TCP timer).

import { performance } from 'node:perf_hooks';
import { receiveMessageOnPort, workerData, MessagePort } from 'node:worker_threads';

import { HDR, kick, waitCall } from '../backend';
import { Responder } from './responder';
import { DiscardReport, installServices } from './services';
import { RxFrags, TcpLink, TcpStack, TxHdr } from './tcp';
import { DriverQueue, QueueAddrs } from '../driver/virtqueue';

/** TX offloads the guest negotiated (what the device accepts from us). */
export interface TxOffloads {
  csum: boolean;
  tso4: boolean;
  tso6: boolean;
  uso: boolean;
}

export interface PairConfig {
  pair: number;
  mem: SharedArrayBuffer;
  /** Shared control words: an Int32 stop request at byte 0, then Float64 counters (see CTL) from byte 8. */
  ctl: SharedArrayBuffer;
  port: MessagePort;
  rx: QueueAddrs & { kickFd: number; callFd: number };
  tx: QueueAddrs & { kickFd: number; callFd: number };
  rxBufBase: number;
  rxBufSize: number;
  txBufBase: number;
  txBufSize: number;
  hdrLen: number;
  mergeable: boolean;
  eventIdx: boolean;
  mac: Uint8Array;
  ip4?: { addr: Uint8Array; prefix: number };
  ip6?: { addr: Uint8Array; prefix: number };
  mtu: number;
  offloads: TxOffloads;
  /** Receive buffer (largest window) per TCP connection. */
  tcpRcvBuf: number;
  /** Bytes the TCP source service (port 19) sends per connection. */
  sourceBytes: number;
}

/** Messages a pair Worker posts to the main thread. */
export type PairMessage =
  | { final: true; responder: Record<string, number>; tcp: Record<string, number> }
  | { responder: Record<string, number>; tcp: Record<string, number> }
  | { discard: DiscardReport };

/** Indices into the shared Float64Array of counters. */
export const CTL = {
  RX_FRAMES: 0,
  RX_BYTES: 1,
  TX_FRAMES: 2,
  TX_BYTES: 3,
  TX_RING_FULL: 4,
  RX_BAD_HEADER: 5,
  WAKEUPS: 6,
  SIZE: 7,
} as const;

/** Bytes of the shared control block a pair needs. */
export const CTL_BYTES = 8 + 8 * CTL.SIZE;

/** How long a Worker sleeps before re-checking for a stop request it may have missed. */
const IDLE_WAIT_MS = 500;

function run(cfg: PairConfig): void {
  const stopWord = new Int32Array(cfg.ctl, 0, 1);
  const ctl = new Float64Array(cfg.ctl, 8, CTL.SIZE);
  const u8 = new Uint8Array(cfg.mem);
  const dv = new DataView(cfg.mem);
  const rxq = new DriverQueue(cfg.mem, cfg.rx, { eventIdx: cfg.eventIdx });
  const txq = new DriverQueue(cfg.mem, cfg.tx, { eventIdx: cfg.eventIdx });
  const rxCount = cfg.rx.size;
  const txCount = cfg.tx.size;
  const rxBufOfHead = new Int32Array(rxCount);
  const txSlotOfHead = new Int32Array(txCount);
  const txFree: number[] = [];
  for (let i = txCount - 1; i >= 0; i--) txFree.push(i);
  // A non-TCP frame spread over several mergeable buffers is gathered here for the responder (guest-side work).
  const scratch = new Uint8Array(65536 + 64);
  // The continuation buffers of a merged frame; TCP reads them in place.
  const frags: RxFrags = { n: 0, off: new Int32Array(rxCount), len: new Int32Array(rxCount) };

  const post = (buf: number): void => {
    const head = rxq.addBuf(cfg.rxBufBase + buf * cfg.rxBufSize, cfg.rxBufSize, true);
    rxBufOfHead[head] = buf;
  };
  for (let i = 0; i < rxCount; i++) post(i);
  if (rxq.publish()) kick(cfg.rx.kickFd);

  const reclaimTx = (): number => {
    let n = 0;
    for (let u = txq.popUsed(); u; u = txq.popUsed()) {
      txFree.push(txSlotOfHead[u.id]);
      n++;
    }
    return n;
  };

  // TX: reserve a slot, let the caller write the frame after the header, then commit it with the header fields.
  let txAdded = false;
  let curSlot = -1;
  const link: TcpLink = {
    u8,
    maxFrame: cfg.txBufSize - cfg.hdrLen,
    reserve(len: number): number {
      if (txFree.length === 0) reclaimTx();
      if (txFree.length === 0 || cfg.hdrLen + len > cfg.txBufSize) {
        ctl[CTL.TX_RING_FULL]++;
        return -1;
      }
      curSlot = txFree.pop()!;
      return cfg.txBufBase + curSlot * cfg.txBufSize + cfg.hdrLen;
    },
    commit(len: number, h: TxHdr): void {
      const addr = cfg.txBufBase + curSlot * cfg.txBufSize;
      u8[addr + HDR.OFF_FLAGS] = h.flags;
      u8[addr + HDR.OFF_GSO_TYPE] = h.gsoType;
      dv.setUint16(addr + HDR.OFF_HDR_LEN, h.hdrLen, true);
      dv.setUint16(addr + HDR.OFF_GSO_SIZE, h.gsoSize, true);
      dv.setUint16(addr + HDR.OFF_CSUM_START, h.csumStart, true);
      dv.setUint16(addr + HDR.OFF_CSUM_OFFSET, h.csumOffset, true);
      if (cfg.hdrLen > HDR.OFF_NUM_BUFFERS) u8.fill(0, addr + HDR.OFF_NUM_BUFFERS, addr + cfg.hdrLen);
      const head = txq.addBuf(addr, cfg.hdrLen + len, false);
      txSlotOfHead[head] = curSlot;
      curSlot = -1;
      ctl[CTL.TX_FRAMES]++;
      ctl[CTL.TX_BYTES] += len;
      txAdded = true;
    },
  };
  const noOffload: TxHdr = { flags: 0, gsoType: HDR.GSO_NONE, hdrLen: 0, gsoSize: 0, csumStart: 0, csumOffset: 0 };
  const out = (len: number, fill: (buf: Uint8Array) => void, hdr?: TxHdr): boolean => {
    const o = link.reserve(len);
    if (o < 0) return false;
    fill(u8.subarray(o, o + len));
    link.commit(len, hdr ?? noOffload);
    return true;
  };

  const responder = new Responder({ mac: cfg.mac, ip4: cfg.ip4, ip6: cfg.ip6, mtu: cfg.mtu, offloads: { csum: cfg.offloads.csum, uso: cfg.offloads.uso } });
  const tcp = new TcpStack(
    {
      mac: cfg.mac,
      ip4: cfg.ip4?.addr,
      ip6: cfg.ip6 && responder.linkLocal ? [cfg.ip6.addr, responder.linkLocal] : [],
      mtu: cfg.mtu,
      offloads: { csum: cfg.offloads.csum, tso4: cfg.offloads.tso4, tso6: cfg.offloads.tso6 },
      rcvBuf: cfg.tcpRcvBuf,
    },
    link,
  );
  installServices(tcp, { sourceBytes: cfg.sourceBytes, report: (r) => cfg.port.postMessage({ discard: r } satisfies PairMessage) });
  const stats = (): Record<string, number> => ({ ...tcp.stats, connections: tcp.conns.length });

  const receive = (now: number): boolean => {
    let any = false;
    for (let u = rxq.popUsed(); u; u = rxq.popUsed()) {
      any = true;
      const buf = rxBufOfHead[u.id];
      const addr = cfg.rxBufBase + buf * cfg.rxBufSize;
      const len = u.len;
      // Reposting before reading is safe: the device sees nothing until publish() after this batch.
      post(buf);
      if (len < cfg.hdrLen) {
        ctl[CTL.RX_BAD_HEADER]++;
        continue;
      }
      const flags = u8[addr + HDR.OFF_FLAGS];
      const gsoType = u8[addr + HDR.OFF_GSO_TYPE] & ~HDR.GSO_ECN;
      const gsoSize = dv.getUint16(addr + HDR.OFF_GSO_SIZE, true);
      const numBuffers = cfg.mergeable ? dv.getUint16(addr + HDR.OFF_NUM_BUFFERS, true) : 1;
      let total = len - cfg.hdrLen;
      frags.n = 0;
      for (let i = 1; i < numBuffers; i++) {
        const more = rxq.popUsed();
        if (!more) break;
        const b = rxBufOfHead[more.id];
        frags.off[frags.n] = cfg.rxBufBase + b * cfg.rxBufSize;
        frags.len[frags.n] = more.len;
        frags.n++;
        total += more.len;
        post(b);
      }
      ctl[CTL.RX_FRAMES]++;
      ctl[CTL.RX_BYTES] += total;
      const trusted = (flags & (HDR.F_NEEDS_CSUM | HDR.F_DATA_VALID)) !== 0;
      // A GSO super-frame (TCPV4/6) is just one big segment to TCP; its pieces are read in place.
      if (tcp.input(now, u8, addr + cfg.hdrLen, len - cfg.hdrLen, trusted, frags.n > 0 ? frags : null)) continue;
      let frame: Uint8Array;
      if (frags.n === 0) frame = u8.subarray(addr + cfg.hdrLen, addr + len);
      else {
        let n = len - cfg.hdrLen;
        scratch.set(u8.subarray(addr + cfg.hdrLen, addr + len), 0);
        for (let i = 0; i < frags.n; i++) {
          const take = Math.min(frags.len[i], scratch.length - n);
          scratch.set(u8.subarray(frags.off[i], frags.off[i] + take), n);
          n += take;
        }
        frame = scratch.subarray(0, n);
      }
      responder.handle(frame, out, trusted ? 'trust' : 'verify', gsoType === HDR.GSO_UDP_L4 ? gsoSize : 0);
    }
    return any;
  };

  for (;;) {
    if (Atomics.load(stopWord, 0) !== 0) break;
    const now = performance.now();
    const rxWork = receive(now);
    const reclaimed = reclaimTx();
    tcp.timers(now);
    // ACKs for the whole RX batch, window updates, and new data into freed TX buffers.
    if (rxWork || reclaimed > 0 || txAdded || tcp.conns.length > 0) tcp.flush(now);
    if (rxWork && rxq.publish()) kick(cfg.rx.kickFd);
    if (txAdded) {
      txAdded = false;
      if (txq.publish()) kick(cfg.tx.kickFd);
    }
    for (let m = receiveMessageOnPort(cfg.port); m; m = receiveMessageOnPort(cfg.port)) {
      if (m.message === 'stats') cfg.port.postMessage({ responder: { ...responder.stats }, tcp: stats() } satisfies PairMessage);
    }
    if (rxWork) continue;
    // Re-arm, then re-check: used entries published before the re-arm raise no interrupt.
    if (rxq.enableInterrupts()) continue;
    if (txq.enableInterruptsDelayed() && tcp.blocked) continue;
    let wait = IDLE_WAIT_MS;
    const t = tcp.nextTimer(performance.now());
    if (t >= 0 && t < wait) wait = t;
    if (wait > 0) waitCall([cfg.rx.callFd, cfg.tx.callFd], wait);
    ctl[CTL.WAKEUPS]++;
    rxq.disableInterrupts();
  }
  cfg.port.postMessage({ final: true, responder: { ...responder.stats }, tcp: stats() } satisfies PairMessage);
}

if (workerData) run(workerData as PairConfig);
