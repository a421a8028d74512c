// The native engine driven by the driver package's own queue pair
// (driver/net.ts NetQueuePair over driver/virtqueue.ts and driver/packed.ts),
// in every ring layout: split, split + IN_ORDER, packed, packed + IN_ORDER,
// with and without EVENT_IDX and mergeable RX buffers. A SOCK_SEQPACKET pair
// stands in for the TAP. Small rings, so the avail and used positions (and
// the packed ring's wrap counters) go round many times: every frame arrives
// once, whole and in order, both ways, and every buffer comes back.

import test, { type ExecutionContext } from 'ava';
import * as fs from 'node:fs';

import { addon, type NativeEngine, type NativeEngineOptions } from '../backend/native';
import { GuestAllocator, NetQueuePair } from '../driver/net';

const A = addon();

const LAYOUTS = [
  { name: 'split', packed: false, inOrder: false },
  { name: 'split+in_order', packed: false, inOrder: true },
  { name: 'packed', packed: true, inOrder: false },
  { name: 'packed+in_order', packed: true, inOrder: true },
];
/** Small rings: 100 frames go round a 16-entry ring six times. */
const QSIZE = 16;
const HDR = 12;
const FRAMES = 100;
const WAIT_MS = 10_000;

interface Rig {
  pair: NetQueuePair;
  peer: number;
  engine: NativeEngine;
  broken: [number, string, string][];
  close(): void;
}

function rig(L: (typeof LAYOUTS)[number], o: { mergeable: boolean; eventIdx: boolean; rxBufSize: number }): Rig {
  const sab = new SharedArrayBuffer(4 << 20);
  const alloc = new GuestAllocator(sab, 4096);
  const rx = L.packed ? alloc.packedRing(QSIZE) : alloc.ring(QSIZE);
  const tx = L.packed ? alloc.packedRing(QSIZE) : alloc.ring(QSIZE);
  const rxBuffers = alloc.buffers(QSIZE, o.rxBufSize);
  const txBuffers = alloc.buffers(QSIZE, 2048);
  const [tapFd, peer] = A.seqpacketPair();
  const fds = { rxKick: A.eventfd(), rxCall: A.eventfd(), txKick: A.eventfd(), txCall: A.eventfd() };
  const broken: [number, string, string][] = [];
  const opts: NativeEngineOptions = {
    memory: new A.GuestMemory([{ guestAddr: 0, buffer: sab }]),
    tapFd,
    hdrLen: HDR,
    mergeable: o.mergeable,
    eventIdx: o.eventIdx,
    indirect: true,
    packed: L.packed,
    inOrder: L.inOrder,
    rxFrameMax: o.mergeable ? HDR + 1514 : o.rxBufSize,
    rx: { index: 0, ...rx, kickFd: fds.rxKick, callFd: fds.rxCall },
    tx: { index: 1, ...tx, kickFd: fds.txKick, callFd: fds.txCall },
    onBroken: (q: number, rule: string, detail: string) => broken.push([q, rule, detail]),
  };
  const engine = new A.Engine(opts);
  const pair = new NetQueuePair({
    memory: sab,
    rx: { ...rx, kickFd: fds.rxKick, callFd: fds.rxCall },
    tx: { ...tx, kickFd: fds.txKick, callFd: fds.txCall },
    rxBuffers,
    txBuffers,
    hdrLen: HDR,
    mergeable: o.mergeable,
    eventIdx: o.eventIdx,
    packed: L.packed,
    inOrder: L.inOrder,
  });
  let closed = false;
  return {
    pair,
    peer,
    engine,
    broken,
    close() {
      if (closed) return;
      closed = true;
      engine.stop();
      for (const fd of [tapFd, peer, fds.rxKick, fds.rxCall, fds.txKick, fds.txCall]) fs.closeSync(fd);
    },
  };
}

/** An Ethernet frame of `len` bytes whose every byte depends on `id`. */
function frame(len: number, id: number): Uint8Array {
  const b = new Uint8Array(len);
  for (let i = 0; i < len; i++) b[i] = (i * 13 + id * 7) & 0xff;
  b[12] = 0x88;
  b[13] = 0xb5;
  new DataView(b.buffer).setUint32(14, id, true);
  return b;
}

const sizeOf = (i: number): number => [60, 1514, 300, 999, 64][i % 5];

async function until(cond: () => boolean, what: string): Promise<void> {
  const end = Date.now() + WAIT_MS;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

function readPeer(fd: number): Buffer | null {
  const buf = Buffer.alloc(1 << 16);
  try {
    return buf.subarray(0, fs.readSync(fd, buf, 0, buf.length, null));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EAGAIN') return null;
    throw e;
  }
}

async function txFrames(t: ExecutionContext, r: Rig): Promise<void> {
  const got: Buffer[] = [];
  let sent = 0;
  while (sent < FRAMES) {
    // Bursts up to what the ring has free, reclaiming as the engine returns slots.
    while (sent < FRAMES && r.pair.send(frame(sizeOf(sent), sent))) sent++;
    r.pair.flush();
    for (let f = readPeer(r.peer); f; f = readPeer(r.peer)) got.push(f);
    await new Promise((res) => setTimeout(res, 1));
  }
  await until(() => {
    for (let f = readPeer(r.peer); f; f = readPeer(r.peer)) got.push(f);
    r.pair.reclaim();
    return got.length >= FRAMES && r.pair.txFreeSlots === QSIZE;
  }, `${FRAMES} frames at the peer and every TX slot back (got ${got.length})`);
  t.is(got.length, FRAMES, 'no frame sent twice');
  for (let i = 0; i < FRAMES; i++) {
    t.is(got[i].length, HDR + sizeOf(i), `frame ${i}: its length`);
    t.deepEqual(new Uint8Array(got[i].subarray(HDR)), frame(sizeOf(i), i), `frame ${i}: whole, in order`);
  }
  t.is(r.engine.stats().tx.packets, FRAMES);
  t.is(r.pair.txq.inFlight, 0);
}

async function rxFrames(t: ExecutionContext, r: Rig, mergeable: boolean): Promise<void> {
  const got: Uint8Array[] = [];
  let multi = 0;
  for (let i = 0; i < FRAMES; i++) {
    const f = frame(sizeOf(i), i);
    fs.writeSync(r.peer, Buffer.concat([Buffer.alloc(HDR), f]));
    // The TAP stand-in's queue is small: take frames as they come, re-posting buffers.
    if (i % 8 === 7 || i === FRAMES - 1) {
      await until(() => {
        for (let x = r.pair.receive(); x; x = r.pair.receive()) {
          if (x.numBuffers > 1) multi++;
          got.push(r.pair.frameBytes(x, new Uint8Array(x.len)));
        }
        r.pair.flush();
        return got.length >= i + 1;
      }, `frame ${i} received (got ${got.length})`);
    }
  }
  t.is(got.length, FRAMES);
  for (let i = 0; i < FRAMES; i++) t.deepEqual(got[i], frame(sizeOf(i), i), `frame ${i}: whole, in order`);
  if (mergeable) t.true(multi > 0, 'frames larger than one buffer spanned several (num_buffers > 1)');
  t.is(r.engine.stats().rx.packets, FRAMES);
  t.is(r.pair.stats.rxShort + r.pair.stats.rxBadHeader, 0);
}

for (const L of LAYOUTS) {
  for (const eventIdx of [false, true]) {
    for (const mergeable of [true, false]) {
      const name = `${L.name}${eventIdx ? ', EVENT_IDX' : ''}, ${mergeable ? 'mergeable 512 B' : 'one 1526 B'} RX buffers`;
      test(`${name}: ${FRAMES} frames each way through a ${QSIZE}-entry ring, whole, once, in order; every buffer back`, async (t) => {
        const r = rig(L, { mergeable, eventIdx, rxBufSize: mergeable ? 512 : HDR + 1514 });
        try {
          r.pair.start();
          r.engine.start();
          await txFrames(t, r);
          await rxFrames(t, r, mergeable);
          t.deepEqual(r.broken, [], 'no ring rule broken');
        } finally {
          r.close();
        }
      });
    }
  }
}
