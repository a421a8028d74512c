// One simulated vCPU serving one queue pair, in a worker_threads Worker:
// keeps RX buffers posted, hands received frames to the responder, sends its
// replies on the pair's TX queue, reclaims TX buffers, and sleeps on the call
// eventfds like a halted vCPU waiting for an interrupt.

import { receiveMessageOnPort, workerData, MessagePort } from 'node:worker_threads';

import { HDR, kick, waitCall } from '../backend';
import { Responder } from './responder';
import { DriverQueue, QueueAddrs } from './virtqueue';

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
  // A frame spread over several mergeable buffers is gathered here for the responder (guest-side work).
  const scratch = new Uint8Array(65536 + 64);

  const post = (buf: number): void => {
    const head = rxq.addBuf(cfg.rxBufBase + buf * cfg.rxBufSize, cfg.rxBufSize, true);
    rxBufOfHead[head] = buf;
  };
  for (let i = 0; i < rxCount; i++) post(i);
  if (rxq.publish()) kick(cfg.rx.kickFd);

  const reclaimTx = (): void => {
    for (let u = txq.popUsed(); u; u = txq.popUsed()) txFree.push(txSlotOfHead[u.id]);
  };

  let txAdded = false;
  const out = (len: number, fill: (buf: Uint8Array) => void): boolean => {
    if (txFree.length === 0) reclaimTx();
    const slot = txFree.pop();
    if (slot === undefined || cfg.hdrLen + len > cfg.txBufSize) {
      if (slot !== undefined) txFree.push(slot);
      ctl[CTL.TX_RING_FULL]++;
      return false;
    }
    const addr = cfg.txBufBase + slot * cfg.txBufSize;
    u8.fill(0, addr, addr + cfg.hdrLen);
    fill(u8.subarray(addr + cfg.hdrLen, addr + cfg.hdrLen + len));
    const head = txq.addBuf(addr, cfg.hdrLen + len, false);
    txSlotOfHead[head] = slot;
    ctl[CTL.TX_FRAMES]++;
    ctl[CTL.TX_BYTES] += len;
    txAdded = true;
    return true;
  };

  const responder = new Responder({ mac: cfg.mac, ip4: cfg.ip4, ip6: cfg.ip6, mtu: cfg.mtu });

  const receive = (): boolean => {
    let any = false;
    for (let u = rxq.popUsed(); u; u = rxq.popUsed()) {
      any = true;
      const buf = rxBufOfHead[u.id];
      const addr = cfg.rxBufBase + buf * cfg.rxBufSize;
      let len = u.len;
      post(buf);
      if (len < cfg.hdrLen) {
        ctl[CTL.RX_BAD_HEADER]++;
        continue;
      }
      const flags = u8[addr + HDR.OFF_FLAGS];
      const numBuffers = cfg.mergeable ? dv.getUint16(addr + HDR.OFF_NUM_BUFFERS, true) : 1;
      let frame: Uint8Array;
      if (numBuffers <= 1) {
        frame = u8.subarray(addr + cfg.hdrLen, addr + len);
      } else {
        let n = len - cfg.hdrLen;
        scratch.set(u8.subarray(addr + cfg.hdrLen, addr + len), 0);
        for (let i = 1; i < numBuffers; i++) {
          const more = rxq.popUsed();
          if (!more) break;
          const b = rxBufOfHead[more.id];
          const a = cfg.rxBufBase + b * cfg.rxBufSize;
          const take = Math.min(more.len, scratch.length - n);
          scratch.set(u8.subarray(a, a + take), n);
          n += take;
          post(b);
        }
        frame = scratch.subarray(0, n);
        len = n + cfg.hdrLen;
      }
      ctl[CTL.RX_FRAMES]++;
      ctl[CTL.RX_BYTES] += frame.length;
      const trust = (flags & (HDR.F_NEEDS_CSUM | HDR.F_DATA_VALID)) !== 0;
      responder.handle(frame, out, trust ? 'trust' : 'verify');
    }
    return any;
  };

  for (;;) {
    if (Atomics.load(stopWord, 0) !== 0) break;
    const rxWork = receive();
    reclaimTx();
    if (rxWork && rxq.publish()) kick(cfg.rx.kickFd);
    if (txAdded) {
      txAdded = false;
      if (txq.publish()) kick(cfg.tx.kickFd);
    }
    for (let m = receiveMessageOnPort(cfg.port); m; m = receiveMessageOnPort(cfg.port)) {
      if (m.message === 'stats') cfg.port.postMessage({ responder: responder.stats });
    }
    if (rxWork) continue;
    // Re-arm, then re-check: used entries published before the re-arm raise no interrupt.
    if (rxq.enableInterrupts()) continue;
    txq.enableInterruptsDelayed();
    waitCall([cfg.rx.callFd, cfg.tx.callFd], IDLE_WAIT_MS);
    ctl[CTL.WAKEUPS]++;
    rxq.disableInterrupts();
  }
  cfg.port.postMessage({ final: true, responder: responder.stats });
}

if (workerData) run(workerData as PairConfig);
