// One simulated vCPU serving one queue pair, in a worker_threads Worker:
// keeps RX buffers posted, hands received TCP frames to its TcpStack (echo,
// discard and source services) and everything else to the responder, sends
// their frames on the pair's TX queue with the virtio_net_hdr offload fields,
// reclaims TX buffers, runs TCP timers, and sleeps on the call eventfds like a
// halted vCPU waiting for an interrupt (or a TCP timer).

import { performance } from 'node:perf_hooks';
import { getHeapSpaceStatistics } from 'node:v8';
import { receiveMessageOnPort, workerData, MessagePort } from 'node:worker_threads';

import { HDR } from '../backend';
import { DriverQueueSetup, NetQueuePair, NetQueuePairOptions } from '../driver';
import { PcapngBuffer } from './pcapng';
import { Responder } from './responder';
import { OldGenerationKeeper } from './old-generation';
import { DiscardReport, installServices } from './services';
import { RxFrags, TcpLink, TcpStack, TxHdr } from './tcp';
import { TUNNEL_ENCAP_LEN, TunnelEndpoint, TunnelKind } from './tunnel';
import { viewsOf } from './views';

/** TX offloads the guest negotiated (what the device accepts from us). */
export interface TxOffloads {
  csum: boolean;
  tso4: boolean;
  tso6: boolean;
  uso: boolean;
}

export interface PairConfig {
  pair: number;
  /** The pair's rings and buffers, driven by the driver's NetQueuePair. */
  queues: NetQueuePairOptions;
  /** Shared control words: an Int32 stop request at byte 0, then Float64 counters (see CTL) from byte 8. */
  ctl: SharedArrayBuffer;
  port: MessagePort;
  mac: Uint8Array;
  ip4?: { addr: Uint8Array; prefix: number };
  ip6?: { addr: Uint8Array; prefix: number };
  mtu: number;
  offloads: TxOffloads;
  /** Receive buffer (largest window) per TCP connection. */
  tcpRcvBuf: number;
  /** Bytes the TCP source service (port 19) sends per connection. */
  sourceBytes: number;
  /** Post every frame sent and received, as pcapng Enhanced Packet Blocks, in { pcap } messages. */
  capture: boolean;
  /**
   * Also terminate a VXLAN/GENEVE tunnel over ip4: an inner TCP stack (the same services) and
   * responder with their own MAC and addresses (see tunnel.ts). `gso`: HOST_UDP_TUNNEL_GSO
   * was negotiated, so the inner TCP sends tunnel super-frames; otherwise MTU-sized segments.
   */
  tunnel?: { kind: TunnelKind; vni: number; mac: Uint8Array; ip4?: { addr: Uint8Array; prefix: number }; ip6?: { addr: Uint8Array; prefix: number }; gso: boolean };
}

/** Messages a pair Worker posts to the main thread. */
export type PairMessage =
  | { final: true; responder: Record<string, number>; tcp: Record<string, number> }
  | { responder: Record<string, number>; tcp: Record<string, number> }
  | { memory: IsolateMemory }
  /** resetRing done: TX frames reclaimed unsent, or RX frames discarded. */
  | { ringReset: number }
  | { discard: DiscardReport }
  | { pcap: Uint8Array };

/** One isolate's V8 heap and the memory outside it that V8 knows of (process.memoryUsage() of that isolate). */
export interface IsolateMemory {
  heapUsed: number;
  heapTotal: number;
  /** Committed memory of the young generation (new space and new large objects), part of heapTotal. */
  youngGeneration: number;
  external: number;
  arrayBuffers: number;
  /** Each V8 heap space (old_space, new_space, code_space...): committed (space_size) and used bytes. */
  spaces: Record<string, { committed: number; used: number }>;
  /** A queue-pair Worker: full collections it ran to keep its old generation small (old-generation.ts). */
  collections?: number;
}

/** This thread's isolate's IsolateMemory. */
export function isolateMemory(): IsolateMemory {
  const { heapUsed, heapTotal, external, arrayBuffers } = process.memoryUsage();
  let youngGeneration = 0;
  const spaces: IsolateMemory['spaces'] = {};
  for (const s of getHeapSpaceStatistics()) {
    spaces[s.space_name] = { committed: s.space_size, used: s.space_used_size };
    if (s.space_name === 'new_space' || s.space_name === 'new_large_object_space') youngGeneration += s.space_size;
  }
  return { heapUsed, heapTotal, youngGeneration, external, arrayBuffers, spaces };
}

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

/**
 * Longest a Worker works before it returns to its event loop once (it also returns after every
 * sleep longer than that). V8 runs part of its garbage collector as tasks on the isolate's own
 * thread, which Node runs from that thread's event loop: the memory reducer (which gives back
 * what a heap no longer needs), incremental marking steps, scavenges started ahead of time. A
 * Worker that never returned to its loop never ran them (issue 24). One setImmediate turn costs
 * ~10 us: every 50 ms, 0.02%.
 */
const EVENT_LOOP_SLICE_MS = 50;

function run(cfg: PairConfig): void {
  const stopWord = new Int32Array(cfg.ctl, 0, 1);
  const ctl = new Float64Array(cfg.ctl, 8, CTL.SIZE);
  const qp = new NetQueuePair(cfg.queues);
  const rxU8 = qp.rxU8;
  const txU8 = qp.txU8;
  // Frames are handed on as views of their buffers, made once per buffer (see views.ts).
  const rxViews = viewsOf(rxU8);
  const txViews = viewsOf(txU8);
  // A non-TCP frame spread over several mergeable buffers is gathered here for the responder (guest-side work).
  const scratch = new Uint8Array(65536 + 64);
  // The continuation buffers of a merged frame; TCP reads them in place.
  const frags: RxFrags = { n: 0, off: new Int32Array(cfg.queues.rx.size), len: new Int32Array(cfg.queues.rx.size) };
  // Capturing is off unless asked for: then one branch per frame is all it costs.
  const cap = cfg.capture ? new PcapngBuffer((chunk) => cfg.port.postMessage({ pcap: chunk } satisfies PairMessage, [chunk.buffer as ArrayBuffer])) : undefined;
  const one = { off: new Int32Array(1), len: new Int32Array(1) };
  const captureTx = (off: number, len: number, h: TxHdr): void => {
    one.off[0] = off;
    one.len[0] = len;
    cap!.frame(true, h, undefined, txU8, one.off, one.len, 1, len);
  };
  qp.start();

  // TX: the driver reserves a slot, the caller writes the frame after the header, commit() queues it.
  let txOff = -1;
  const link: TcpLink = {
    u8: txU8,
    maxFrame: qp.maxTxFrame,
    reserve: (len: number): number => (txOff = qp.reserve(len)),
    commit: (len: number, h: TxHdr): void => {
      if (cap !== undefined) captureTx(txOff, len, h);
      qp.commit(len, h);
    },
  };
  const noOffload: TxHdr = { flags: 0, gsoType: HDR.GSO_NONE, hdrLen: 0, gsoSize: 0, csumStart: 0, csumOffset: 0 };
  const out = (len: number, fill: (buf: Uint8Array) => void, hdr: TxHdr = noOffload): boolean => {
    const o = qp.reserve(len);
    if (o < 0) return false;
    fill(txViews.view(o, len));
    if (cap !== undefined) captureTx(o, len, hdr);
    qp.commit(len, hdr);
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
  const report = (r: DiscardReport): void => cfg.port.postMessage({ discard: r } satisfies PairMessage);
  installServices(tcp, { sourceBytes: cfg.sourceBytes, report });

  // The tunnel's inner side: the same TCP and services, their frames wrapped by the endpoint.
  let tunnel: TunnelEndpoint | undefined;
  let innerTcp: TcpStack | undefined;
  let innerResponder: Responder | undefined;
  const tc = cfg.tunnel;
  if (tc) {
    if (!cfg.ip4) throw new Error('guest-sim: a tunnel endpoint needs the guest\'s IPv4 address (the underlay)');
    tunnel = new TunnelEndpoint({ kind: tc.kind, vni: tc.vni, local4: cfg.ip4.addr }, cfg.mac, { u8: txU8, maxFrame: qp.maxTxFrame, reserve: link.reserve, commit: link.commit }, tc.gso);
    const innerMtu = cfg.mtu - TUNNEL_ENCAP_LEN;
    innerResponder = new Responder({ mac: tc.mac, ip4: tc.ip4, ip6: tc.ip6, mtu: innerMtu });
    innerTcp = new TcpStack(
      {
        mac: tc.mac,
        ip4: tc.ip4?.addr,
        ip6: tc.ip6 && innerResponder.linkLocal ? [tc.ip6.addr, innerResponder.linkLocal] : [],
        mtu: innerMtu,
        // The inner checksum may stay partial whatever the tunnel offloads (csum_start points past the
        // outer headers); inner segments larger than the MSS only with the tunnel offload.
        offloads: { csum: cfg.offloads.csum, tso4: tc.gso && cfg.offloads.tso4, tso6: tc.gso && cfg.offloads.tso6 },
        rcvBuf: cfg.tcpRcvBuf,
      },
      tunnel.link,
    );
    installServices(innerTcp, { sourceBytes: cfg.sourceBytes, report });
  }
  const stats = (): Record<string, number> => ({
    ...tcp.stats,
    connections: tcp.conns.length,
    ...(innerTcp && tunnel ? { ...prefixed('inner_', { ...innerTcp.stats, connections: innerTcp.conns.length }), ...tunnel.stats } : {}),
  });
  const responderStats = (): Record<string, number> => ({ ...responder.stats, ...(innerResponder ? prefixed('inner_', { ...innerResponder.stats }) : {}) });
  const publishCounters = (): void => {
    const s = qp.stats;
    ctl[CTL.RX_FRAMES] = s.rxFrames;
    ctl[CTL.RX_BYTES] = s.rxBytes;
    ctl[CTL.TX_FRAMES] = s.txFrames;
    ctl[CTL.TX_BYTES] = s.txBytes;
    ctl[CTL.TX_RING_FULL] = s.txRingFull;
    ctl[CTL.RX_BAD_HEADER] = s.rxBadHeader;
    ctl[CTL.WAKEUPS] = s.waits;
  };

  // Frames are read in place; their buffers are re-posted already and published only at qp.flush().
  const receive = (now: number): boolean => {
    let any = false;
    for (let f = qp.receive(); f; f = qp.receive()) {
      any = true;
      if (cap !== undefined) cap.frame(false, f.hdr, qp.mergeable ? f.numBuffers : undefined, rxU8, f.off, f.partLen, f.parts, f.len);
      const trusted = (f.hdr.flags & (HDR.F_NEEDS_CSUM | HDR.F_DATA_VALID)) !== 0;
      const gsoType = f.hdr.gsoType & ~HDR.GSO_ECN;
      frags.n = f.parts - 1;
      for (let i = 1; i < f.parts; i++) {
        frags.off[i - 1] = f.off[i];
        frags.len[i - 1] = f.partLen[i];
      }
      if (tunnel !== undefined) {
        const inner = tunnel.decapsulate(rxU8, f.off[0], f.partLen[0], f.len, f.hdr.gsoType);
        if (inner >= 0) {
          // A tunnel super-frame is one big inner segment, read in place like a plain one.
          // DATA_VALID says a checksum was validated, not which layers' (tun sets it for
          // CHECKSUM_UNNECESSARY, whose csum_level may cover only the outer UDP header): the
          // inner checksum is trusted only when left partial (NEEDS_CSUM), else verified.
          const innerTrusted = (f.hdr.flags & HDR.F_NEEDS_CSUM) !== 0;
          const skip = inner - f.off[0];
          if (innerTcp!.input(now, rxU8, inner, f.partLen[0] - skip, innerTrusted, frags.n > 0 ? frags : null)) continue;
          const whole = f.parts === 1 ? rxViews.view(f.off[0], f.len) : qp.frameBytes(f, scratch);
          innerResponder!.handle(whole.subarray(skip), tunnel.out, innerTrusted ? 'trust' : 'verify');
          continue;
        }
      }
      // A GSO super-frame (TCPV4/6) is just one big segment to TCP; its pieces are read in place.
      if (tcp.input(now, rxU8, f.off[0], f.partLen[0], trusted, frags.n > 0 ? frags : null)) continue;
      const frame = f.parts === 1 ? rxViews.view(f.off[0], f.len) : qp.frameBytes(f, scratch);
      responder.handle(frame, out, trusted ? 'trust' : 'verify', gsoType === HDR.GSO_UDP_L4 ? f.hdr.gsoSize : 0);
    }
    return any;
  };

  const oldGeneration = new OldGenerationKeeper();
  // One slice of work: batches until the slice is used up, then back to the event loop.
  const slice = (): void => {
    const sliceEnd = performance.now() + EVENT_LOOP_SLICE_MS;
    for (;;) {
      if (Atomics.load(stopWord, 0) !== 0) {
        publishCounters();
        cap?.flush();
        cfg.port.postMessage({ final: true, responder: responderStats(), tcp: stats() } satisfies PairMessage);
        return;
      }
      const now = performance.now();
      if (now >= sliceEnd) break;
      const rxWork = receive(now);
      const reclaimed = qp.reclaim();
      tcp.timers(now);
      innerTcp?.timers(now);
      // ACKs for the whole RX batch, window updates, and new data into freed TX buffers.
      if (rxWork || reclaimed > 0 || qp.txq.unpublished > 0 || tcp.conns.length > 0) tcp.flush(now);
      if (innerTcp !== undefined && (rxWork || reclaimed > 0 || qp.txq.unpublished > 0 || innerTcp.conns.length > 0)) innerTcp.flush(now);
      qp.flush();
      publishCounters();
      cap?.flush();
      for (let m = receiveMessageOnPort(cfg.port); m; m = receiveMessageOnPort(cfg.port)) {
        if (m.message === 'stats') cfg.port.postMessage({ responder: responderStats(), tcp: stats() } satisfies PairMessage);
        else if (m.message && typeof m.message === 'object' && 'resetRing' in m.message) {
          // The device reset this queue: the old ring's buffers come back, the new ring starts.
          const { which, setup } = (m.message as { resetRing: { which: 'rx' | 'tx'; setup: DriverQueueSetup } }).resetRing;
          const n = qp.resetRing(which, setup);
          qp.flush();
          cfg.port.postMessage({ ringReset: n } satisfies PairMessage);
        } else if (m.message === 'memory') {
          // This Worker's own isolate: the main thread's process.memoryUsage() does not see it.
          cfg.port.postMessage({ memory: { ...isolateMemory(), collections: oldGeneration.collections } } satisfies PairMessage);
        }
      }
      if (rxWork) continue;
      let wait = IDLE_WAIT_MS;
      const tnow = performance.now();
      const t = tcp.nextTimer(tnow);
      if (t >= 0 && t < wait) wait = t;
      const ti = innerTcp?.nextTimer(tnow) ?? -1;
      if (ti >= 0 && ti < wait) wait = ti;
      // Re-arms interrupts and looks again before sleeping (TX slots matter only when TCP waits for them).
      qp.wait(wait, tcp.blocked || (innerTcp?.blocked ?? false));
    }
    oldGeneration.check(performance.now());
    // setImmediate, not a timer: the event loop runs what is due (V8's tasks) and comes straight back.
    setImmediate(slice);
  };
  slice();
}

function prefixed(p: string, r: Record<string, number>): Record<string, number> {
  const o: Record<string, number> = {};
  for (const k of Object.keys(r)) o[p + k] = r[k];
  return o;
}

if (workerData) run(workerData as PairConfig);
