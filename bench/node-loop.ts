// The plain-Node baseline: the device side of one queue pair written in
// JavaScript, what a user would write without vhost-tap. Runs in a Worker,
// reads the same split ring the bench's guest writes, and moves frames with
// fs.writeSync / fs.readSync on the TAP fd (opened with vhost-tap's tapOpen,
// O_NONBLOCK), one syscall per frame, EVENT_IDX notifications, interrupts
// through the same eventfds vhost-tap would use.

import * as fs from 'node:fs';
import { isMainThread, workerData } from 'node:worker_threads';

import { kick, waitCall } from '../backend';
import { QueueAddrs, needEvent } from '../driver';
import { TCTL, threadId } from './traffic-worker';

export interface NodeLoopConfig {
  mode: 'tx' | 'rx';
  mem: SharedArrayBuffer;
  ctl: SharedArrayBuffer;
  q: QueueAddrs & { kickFd: number; callFd: number };
  tapFd: number;
  hdrLen: number;
  mergeable: boolean;
  /** Largest frame plus header the TAP may hand us (GSO: 64 KB). */
  rxFrameMax: number;
}

/** Used entries published per batch (and interrupt decision). */
const BATCH = 64;
const IDLE_MS = 100;

function run(cfg: NodeLoopConfig): void {
  const stop = new Int32Array(cfg.ctl, 0, 1);
  const c = new Float64Array(cfg.ctl, 8, TCTL.SIZE);
  c[TCTL.TID] = threadId();
  const { mem, q } = cfg;
  const u8 = new Uint8Array(mem);
  const u16 = new Uint16Array(mem, 0, mem.byteLength >>> 1);
  const u32 = new Uint32Array(mem, 0, mem.byteLength >>> 2);
  const mask = q.size - 1;
  const descW32 = q.desc / 4;
  const descW16 = q.desc / 2;
  const availIdxW = q.avail / 2 + 1;
  const availRingW = q.avail / 2 + 2;
  const usedEventW = q.avail / 2 + 2 + q.size;
  const usedIdxW = q.used / 2 + 1;
  const usedRingW32 = q.used / 4 + 1;
  const availEventW = (q.used + 4 + 8 * q.size) / 2;
  const bounce = new Uint8Array(cfg.rxFrameMax);

  let lastAvail = 0;
  let usedIdx = 0;
  let published = 0;
  let frames = 0;
  let bytes = 0;
  let wakeups = 0;
  let idleSpins = 0;

  const flush = (): void => {
    if (usedIdx === published) return;
    const old = published;
    Atomics.store(u16, usedIdxW, usedIdx);
    published = usedIdx;
    if (needEvent(Atomics.load(u16, usedEventW), usedIdx, old)) kick(q.callFd);
    c[TCTL.FRAMES] = frames;
    c[TCTL.BYTES] = bytes;
  };
  const putUsed = (head: number, len: number): void => {
    const o = usedRingW32 + (usedIdx & mask) * 2;
    u32[o] = head;
    u32[o + 1] = len;
    usedIdx = (usedIdx + 1) & 0xffff;
  };
  /** Sleeps until the guest kicks (after arming avail_event) unless buffers arrived meanwhile. */
  const waitAvail = (): void => {
    flush();
    Atomics.store(u16, availEventW, lastAvail);
    if (Atomics.load(u16, availIdxW) !== lastAvail) return;
    waitCall(q.kickFd, IDLE_MS);
    wakeups++;
    c[TCTL.WAKEUPS] = wakeups;
  };
  const desc = (d: number): { addr: number; len: number; flags: number; next: number } => ({
    addr: u32[descW32 + d * 4] + u32[descW32 + d * 4 + 1] * 0x100000000,
    len: u32[descW32 + d * 4 + 2],
    flags: u16[descW16 + d * 8 + 6],
    next: u16[descW16 + d * 8 + 7],
  });
  c[TCTL.READY] = 1;

  while (Atomics.load(stop, 0) === 0) {
    const availIdx = Atomics.load(u16, availIdxW);
    if (availIdx === lastAvail) {
      waitAvail();
      continue;
    }
    if (cfg.mode === 'tx') {
      let n = 0;
      while (lastAvail !== availIdx && n < BATCH) {
        const head = u16[availRingW + (lastAvail & mask)];
        let d = desc(head);
        let len: number;
        if (d.flags & 1) {
          // A chain: gather views and write the frame in one call, as a TAP requires.
          const parts: Uint8Array[] = [];
          len = 0;
          for (;;) {
            parts.push(u8.subarray(d.addr, d.addr + d.len));
            len += d.len;
            if (!(d.flags & 1)) break;
            d = desc(d.next);
          }
          fs.writevSync(cfg.tapFd, parts);
        } else {
          len = d.len;
          fs.writeSync(cfg.tapFd, u8, d.addr, len);
        }
        frames++;
        bytes += len - cfg.hdrLen;
        putUsed(head, 0);
        lastAvail = (lastAvail + 1) & 0xffff;
        n++;
      }
      flush();
      continue;
    }
    // RX: one read per frame, straight into the guest buffer when it is big enough.
    const head = u16[availRingW + (lastAvail & mask)];
    const d = desc(head);
    const direct = d.len >= cfg.rxFrameMax;
    let got: number;
    try {
      got = direct ? fs.readSync(cfg.tapFd, u8, d.addr, d.len, null) : fs.readSync(cfg.tapFd, bounce, 0, bounce.length, null);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') throw e;
      flush();
      // Nothing queued: a Node program has no poll() on a raw fd; back off briefly.
      if (++idleSpins > 16) Atomics.wait(stop, 0, 0, 0.05);
      continue;
    }
    idleSpins = 0;
    if (direct) {
      if (cfg.hdrLen >= 12) u16[(d.addr + 10) >>> 1] = 1; // num_buffers (addr is 2-aligned in this bench)
      putUsed(head, got);
      lastAvail = (lastAvail + 1) & 0xffff;
    } else {
      // Spread over as many mergeable buffers as it takes, copying out of the bounce buffer.
      let off = 0;
      let nb = 0;
      let firstAddr = -1;
      while (off < got) {
        while (lastAvail === Atomics.load(u16, availIdxW)) {
          waitAvail();
          if (Atomics.load(stop, 0) !== 0) return;
        }
        const h = u16[availRingW + (lastAvail & mask)];
        const b = desc(h);
        const n = Math.min(b.len, got - off);
        u8.set(bounce.subarray(off, off + n), b.addr);
        if (firstAddr < 0) firstAddr = b.addr;
        putUsed(h, n);
        lastAvail = (lastAvail + 1) & 0xffff;
        off += n;
        nb++;
        if (!cfg.mergeable) break;
      }
      if (cfg.hdrLen >= 12) u16[(firstAddr + 10) >>> 1] = nb;
    }
    frames++;
    bytes += got - cfg.hdrLen;
    if (((usedIdx - published) & 0xffff) >= BATCH) flush();
  }
  flush();
}

if (!isMainThread && workerData?.nodeLoop) run(workerData.nodeLoop as NodeLoopConfig);
