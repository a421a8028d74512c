// The benchmark's guest: one worker_threads Worker per queue pair driving one
// direction as cheaply as a guest can, so that the backend is what gets
// measured. TX keeps the ring full by re-adding the same pre-written buffers
// (only descriptor and ring words are touched, never frame bytes); RX
// re-posts every buffer as soon as it is used and only counts. Sleeps on the
// call eventfd (a halted vCPU) when the ring gives it nothing to do, with
// interrupts suppressed while it is busy. Identical for vhost-tap and the
// Node loop baseline: only the device on the other side of the ring differs.

import * as fs from 'node:fs';
import { isMainThread, workerData } from 'node:worker_threads';

import { kick, waitCall } from '../backend';
import { DriverQueue, QueueAddrs } from '../driver';

export interface TrafficConfig {
  mode: 'tx' | 'rx';
  mem: SharedArrayBuffer;
  /** Int32 stop word at byte 0, then Float64 counters (see TCTL) from byte 8. */
  ctl: SharedArrayBuffer;
  q: QueueAddrs & { kickFd: number; callFd: number };
  eventIdx: boolean;
  hdrLen: number;
  /** Buffers: `q.size` slots of `slot` bytes from `base`. */
  base: number;
  slot: number;
  /** TX: bytes of each pre-written chain (header + frame). RX: buffer size posted. */
  len: number;
  mergeable: boolean;
}

export const TCTL = { FRAMES: 0, BYTES: 1, TID: 2, WAKEUPS: 3, READY: 4, KICKS: 5, SIZE: 6 } as const;
export const TCTL_BYTES = 8 + 8 * TCTL.SIZE;

/** This thread's kernel task id: '/proc/thread-self' links to 'PID/task/TID'. */
export function threadId(): number {
  return Number(fs.readlinkSync('/proc/thread-self').split('/').pop());
}

/** How long a sleeping guest waits before re-checking its stop word. */
const IDLE_MS = 100;
/** RX: re-publish at least this often while draining, so the device never runs dry behind a long drain. */
const RX_REPOST_BATCH = 64;

function run(cfg: TrafficConfig): void {
  const stop = new Int32Array(cfg.ctl, 0, 1);
  const c = new Float64Array(cfg.ctl, 8, TCTL.SIZE);
  c[TCTL.TID] = threadId();
  const q = new DriverQueue(cfg.mem, cfg.q, { eventIdx: cfg.eventIdx });
  const u8 = new Uint8Array(cfg.mem);
  const slotOfHead = new Int32Array(cfg.q.size);
  const write = cfg.mode === 'rx';
  for (let i = 0; i < cfg.q.size; i++) slotOfHead[q.addBuf(cfg.base + i * cfg.slot, cfg.len, write)] = i;
  // A busy guest does not want an interrupt per used entry.
  q.disableInterrupts();
  if (q.publish()) {
    kick(cfg.q.kickFd);
    c[TCTL.KICKS]++;
  }
  c[TCTL.READY] = 1;

  let frames = 0;
  let bytes = 0;
  let wakeups = 0;
  let kicks = 0;
  let moreBuffers = 0; // RX mergeable: buffers still to come for the current frame
  const frameLen = cfg.len - cfg.hdrLen;
  while (Atomics.load(stop, 0) === 0) {
    let n = 0;
    for (let u = q.popUsed(); u !== null; u = q.popUsed()) {
      const slot = slotOfHead[u.id];
      const addr = cfg.base + slot * cfg.slot;
      if (write) {
        if (moreBuffers === 0) {
          frames++;
          bytes += u.len - cfg.hdrLen;
          moreBuffers = cfg.mergeable ? (u8[addr + 10] | (u8[addr + 11] << 8)) - 1 : 0;
          if (moreBuffers < 0) moreBuffers = 0;
        } else {
          bytes += u.len;
          moreBuffers--;
        }
      } else {
        frames++;
        bytes += frameLen;
      }
      slotOfHead[q.addBuf(addr, cfg.len, write)] = slot;
      if (++n % RX_REPOST_BATCH === 0 && q.publish()) {
        kick(cfg.q.kickFd);
        kicks++;
      }
    }
    if (n > 0) {
      if (q.publish()) {
        kick(cfg.q.kickFd);
        kicks++;
      }
      c[TCTL.FRAMES] = frames;
      c[TCTL.BYTES] = bytes;
      c[TCTL.KICKS] = kicks;
      continue;
    }
    // Nothing used: ask for an interrupt (TX: once most in-flight chains are done) and halt.
    const pending = write ? q.enableInterrupts() : q.enableInterruptsDelayed();
    if (!pending) {
      waitCall(cfg.q.callFd, IDLE_MS);
      wakeups++;
      c[TCTL.WAKEUPS] = wakeups;
    }
    q.disableInterrupts();
  }
  c[TCTL.FRAMES] = frames;
  c[TCTL.BYTES] = bytes;
}

if (!isMainThread && workerData?.traffic) run(workerData.traffic as TrafficConfig);
