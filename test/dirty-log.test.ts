// Dirty-page logging for live migration, in the native engine: with a log
// installed, every 4 KiB guest page the device wrote (RX headers and frames,
// mergeable buffers spanning several descriptors, pages and memory regions,
// used ring entries and indices; with the packed ring the descriptors it
// writes back) has its bit set. The check is a byte diff of guest memory
// before and after the device ran against the bitmap, for both I/O methods
// and both ring layouts. The test hook VHOST_TAP_TEST_NO_DIRTY_LOG=1 shows
// the diff catching a device that does not log.

import test, { type ExecutionContext } from 'ava';
import * as fs from 'node:fs';

import { addon, type NativeEngineOptions } from '../backend/native';
import { GuestAllocator } from '../driver/net';
import { openVirtqueue } from '../driver/packed';

const A = addon();

const QSIZE = 64;
const HDR = 12;
const PAGE = 4096;
/** Two adjacent regions: RX buffers are placed across the boundary between them. */
const R0 = { guestAddr: 0, size: 1 << 20 };
const R1 = { guestAddr: 1 << 20, size: 2 << 20 };
const MEM_END = R1.guestAddr + R1.size;
const TX_FRAMES = 10;
const RX_FRAMES = 12;
const WAIT_MS = 10_000;

const sizeOf = (i: number): number => [60, 1514, 300, 999, 64, 1400][i % 6];

function frame(len: number, id: number): Uint8Array {
  const b = new Uint8Array(len);
  for (let i = 0; i < len; i++) b[i] = (i * 13 + id * 7 + 1) & 0xff;
  b[12] = 0x88;
  b[13] = 0xb5;
  return b;
}

async function until(cond: () => boolean, what: string): Promise<void> {
  const end = Date.now() + WAIT_MS;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

interface Outcome {
  /** Pages whose bytes changed while only the device ran. */
  changed: number[];
  /** Pages whose log bit is set. */
  marked: Set<number>;
  /** The page holding the RX buffer that crosses from region 0 into region 1 (both sides). */
  boundaryPages: number[];
  io: string;
}

async function run(o: { packed: boolean; mergeable: boolean; io: 'readv' | 'uring'; hook?: boolean }): Promise<Outcome> {
  const regions = [R0, R1].map((r) => ({ guestAddr: r.guestAddr, buffer: new SharedArrayBuffer(r.size) }));
  const u8 = regions.map((r) => new Uint8Array(r.buffer));
  const alloc = new GuestAllocator(regions, 4096);
  const rx = o.packed ? alloc.packedRing(QSIZE) : alloc.ring(QSIZE);
  const tx = o.packed ? alloc.packedRing(QSIZE) : alloc.ring(QSIZE);
  const txBase = alloc.alloc(TX_FRAMES * 2048, 64);
  // RX chains of two descriptors each, end to end, ending past the regions' boundary: one
  // buffer crosses from region 0 into region 1 (the device splits it into two iovecs).
  const rxBufSize = o.mergeable ? 512 : HDR + 1514;
  const rxBase = R1.guestAddr - 5 * rxBufSize - rxBufSize / 2 - 8;
  const memory = new A.GuestMemory(regions);
  const log = new SharedArrayBuffer(Math.ceil(MEM_END / PAGE / 8));
  memory.setDirtyLogBuffer(log);
  memory.dirtyLog(true);
  const [tapFd, peer] = A.seqpacketPair();
  const fds = { rxKick: A.eventfd(), rxCall: A.eventfd(), txKick: A.eventfd(), txCall: A.eventfd() };
  const opts: NativeEngineOptions = {
    memory,
    tapFd,
    hdrLen: HDR,
    mergeable: o.mergeable,
    eventIdx: true,
    indirect: true,
    packed: o.packed,
    rxFrameMax: o.mergeable ? HDR + 1514 : rxBufSize,
    rx: { index: 0, ...rx, kickFd: fds.rxKick, callFd: fds.rxCall },
    tx: { index: 1, ...tx, kickFd: fds.txKick, callFd: fds.txCall },
    onBroken: () => undefined,
    ...(o.io === 'readv' ? { io: 'readv' as const } : {}),
  };
  const envIo = process.env.VHOST_TAP_IO;
  const envHook = process.env.VHOST_TAP_TEST_NO_DIRTY_LOG;
  if (o.io === 'uring') process.env.VHOST_TAP_IO = 'uring';
  if (o.hook) process.env.VHOST_TAP_TEST_NO_DIRTY_LOG = '1';
  const engine = new A.Engine(opts);
  const rxq = openVirtqueue(regions, rx, { eventIdx: true, packed: o.packed });
  const txq = openVirtqueue(regions, tx, { eventIdx: true, packed: o.packed });
  try {
    // The guest's part first: post RX chains, queue TX frames. Then only the device writes.
    const half = rxBufSize / 2;
    for (let i = 0; i < QSIZE / 2; i++) {
      const a = rxBase + i * rxBufSize;
      if (rxq.add([{ addr: a, len: half, write: true }, { addr: a + half, len: rxBufSize - half, write: true }]) < 0) throw new Error('RX ring full');
    }
    rxq.publish();
    const view = (addr: number, len: number): Uint8Array => {
      const r = regions.find((g) => addr >= g.guestAddr && addr + len <= g.guestAddr + g.buffer.byteLength)!;
      return new Uint8Array(r.buffer, addr - r.guestAddr, len);
    };
    for (let i = 0; i < TX_FRAMES; i++) {
      const f = frame(sizeOf(i), i);
      const at = txBase + i * 2048;
      view(at, HDR).fill(0);
      view(at + HDR, f.length).set(f);
      if (txq.add([{ addr: at, len: HDR + f.length, write: false }]) < 0) throw new Error('TX ring full');
    }
    txq.publish();
    for (let i = 0; i < RX_FRAMES; i++) fs.writeSync(peer, Buffer.concat([Buffer.alloc(HDR), frame(sizeOf(i), 100 + i)]));
    const before = u8.map((b) => b.slice());
    engine.start();
    await until(() => {
      const s = engine.stats();
      return s.tx.packets === TX_FRAMES && s.rx.packets === RX_FRAMES;
    }, 'the device to take every TX frame and deliver every RX frame');
    const io = engine.stats().io;
    // Stopped before looking: the last batch's marks are made when its used entries are.
    engine.stop();
    const changed: number[] = [];
    regions.forEach((r, k) => {
      for (let off = 0; off < r.buffer.byteLength; off += PAGE) {
        const a = before[k].subarray(off, off + PAGE);
        const b = u8[k].subarray(off, off + PAGE);
        if (!Buffer.from(a.buffer, a.byteOffset, a.length).equals(Buffer.from(b.buffer, b.byteOffset, b.length))) changed.push((r.guestAddr + off) / PAGE);
      }
    });
    const bits = new Uint8Array(log);
    const marked = new Set<number>();
    for (let p = 0; p < MEM_END / PAGE; p++) if (bits[p >> 3] & (1 << (p & 7))) marked.add(p);
    return { changed, marked, boundaryPages: [R1.guestAddr / PAGE - 1, R1.guestAddr / PAGE], io };
  } finally {
    engine.stop();
    if (envIo === undefined) delete process.env.VHOST_TAP_IO;
    else process.env.VHOST_TAP_IO = envIo;
    if (envHook === undefined) delete process.env.VHOST_TAP_TEST_NO_DIRTY_LOG;
    else process.env.VHOST_TAP_TEST_NO_DIRTY_LOG = envHook;
    for (const fd of [tapFd, peer, fds.rxKick, fds.rxCall, fds.txKick, fds.txCall]) fs.closeSync(fd);
    memory.clearDirtyLog();
  }
}

function checkAllMarked(t: ExecutionContext, r: Outcome, ioWanted: string): void {
  t.true(r.io.includes(ioWanted), `the engine ran ${ioWanted} (stats().io: ${r.io})`);
  const unmarked = r.changed.filter((p) => !r.marked.has(p));
  t.deepEqual(unmarked, [], 'every page the device wrote has its bit set');
  for (const p of r.boundaryPages) t.true(r.changed.includes(p), `page ${p} (next to the region boundary) was written`);
  // Not everything: the log says which pages, it is not all ones.
  t.true(r.marked.size < MEM_END / PAGE / 4, `${r.marked.size} pages marked, far fewer than the memory's ${MEM_END / PAGE}`);
}

for (const packed of [false, true]) {
  for (const mergeable of [true, false]) {
    for (const io of ['readv', 'uring'] as const) {
      const name = `${packed ? 'packed' : 'split'}, ${mergeable ? 'mergeable 512 B' : 'one 1526 B'} RX buffers, ${io}`;
      test.serial(`${name}: every guest page the device wrote is marked in the dirty log`, async (t) => {
        const r = await run({ packed, mergeable, io });
        checkAllMarked(t, r, io === 'uring' ? 'io_uring' : 'readv/writev');
      });
    }
  }
}

test.serial('VHOST_TAP_TEST_NO_DIRTY_LOG=1 (test hook): the device writes but marks nothing, and the diff shows it', async (t) => {
  for (const packed of [false, true]) {
    const r = await run({ packed, mergeable: true, io: 'readv', hook: true });
    t.true(r.changed.length > 0, 'the device wrote guest memory');
    t.is(r.marked.size, 0, 'no page marked');
  }
});

test.serial('logging off (dirtyLog(false)): the engine leaves the log alone', async (t) => {
  const regions = [{ guestAddr: 0, buffer: new SharedArrayBuffer(1 << 20) }];
  const memory = new A.GuestMemory(regions);
  t.throws(() => memory.dirtyLog(true), { code: 'EVHOST_STATE' }, 'no log given yet');
  t.throws(() => memory.setDirtyLogBuffer(new SharedArrayBuffer(31)), { code: 'EVHOST_BADARG', message: /too small.*needs 32 bytes/ });
  memory.setDirtyLogBuffer(new SharedArrayBuffer(32));
  memory.dirtyLog(true);
  // A table that grows past the log: logging refuses to go on with it.
  memory.replace([...regions, { guestAddr: 1 << 20, buffer: new SharedArrayBuffer(4096) }]);
  t.throws(() => memory.dirtyLog(true), { code: 'EVHOST_BADARG', message: /too small/ });
  memory.dirtyLog(false);
  memory.clearDirtyLog();
});
