// The device side of the control virtqueue (backend/ctrlq.ts) against a
// driver-side ring built in a SharedArrayBuffer: guest-sim's DriverQueue for
// well-formed chains, raw descriptor writes for hostile ones. The ring is
// read back through a DataView independent of both implementations.

import test from 'ava';

import { ControlQueue, RingRuleError, type CtrlHandler } from '../backend/ctrlq';
import { CTRL, RING } from '../backend/virtio';
import { DriverQueue, type Buf } from '../driver/virtqueue';

const MEM = 64 * 1024;
const SIZE = 8;
const RING_BASE = 0;
const HEAP = 0x2000;

interface Rig {
  sab: SharedArrayBuffer;
  u8: Uint8Array;
  dv: DataView;
  drv: DriverQueue;
  q: { size: number; desc: number; avail: number; used: number };
  dev: ControlQueue;
  /** Bump allocator for command buffers. */
  alloc(len: number, align?: number): number;
  /** Copies bytes into guest memory at a fresh address. */
  put(bytes: number[] | Uint8Array): number;
  /** Raw descriptor write (hostile chains). */
  desc(i: number, addr: number | bigint, len: number, flags: number, next?: number, table?: number): void;
  /** Raw avail ring: place `head` at slot idx and publish avail.idx = idx + 1 (bypassing the driver). */
  rawPost(slot: number, head: number, newIdx: number): void;
  usedIdx(): number;
  usedElem(i: number): { id: number; len: number };
  availEvent(): number;
}

function rig(opts: { eventIdx?: boolean; indirect?: boolean; size?: number } = {}): Rig {
  const size = opts.size ?? SIZE;
  const sab = new SharedArrayBuffer(MEM);
  const u8 = new Uint8Array(sab);
  const dv = new DataView(sab);
  const l = DriverQueue.layout(RING_BASE, size);
  const q = { size, desc: l.desc, avail: l.avail, used: l.used };
  const drv = new DriverQueue(sab, q, { eventIdx: opts.eventIdx ?? false });
  const dev = new ControlQueue(sab, q, opts.eventIdx ?? false, opts.indirect ?? false);
  let next = HEAP;
  const r: Rig = {
    sab,
    u8,
    dv,
    drv,
    q,
    dev,
    alloc(len, align = 16) {
      const at = Math.ceil(next / align) * align;
      next = at + len;
      return at;
    },
    put(bytes) {
      const at = r.alloc(bytes.length, 2);
      u8.set(bytes, at);
      return at;
    },
    desc(i, addr, len, flags, nextI = 0, table = q.desc) {
      const at = table + 16 * i;
      dv.setBigUint64(at, BigInt(addr), true);
      dv.setUint32(at + 8, len >>> 0, true);
      dv.setUint16(at + 12, flags, true);
      dv.setUint16(at + 14, nextI, true);
    },
    rawPost(slot, head, newIdx) {
      dv.setUint16(q.avail + 4 + 2 * (slot % size), head, true);
      Atomics.store(new Uint16Array(sab), (q.avail + 2) >> 1, newIdx);
    },
    usedIdx: () => dv.getUint16(q.used + 2, true),
    usedElem: (i) => ({ id: dv.getUint32(q.used + 4 + 8 * (i % size), true), len: dv.getUint32(q.used + 8 + 8 * (i % size), true) }),
    availEvent: () => dv.getUint16(q.used + 4 + 8 * size, true),
  };
  return r;
}

/** Posts one command the way Linux's virtnet_send_command does: header, data, ack as separate buffers. */
function postCommand(r: Rig, cls: number, cmd: number, data: number[] | null, ackInit = 0xee): { head: number; ack: number } {
  const bufs: Buf[] = [{ addr: r.put([cls, cmd]), len: 2, write: false }];
  if (data && data.length) bufs.push({ addr: r.put(data), len: data.length, write: false });
  const ack = r.put([ackInit]);
  bufs.push({ addr: ack, len: 1, write: true });
  const head = r.drv.add(bufs);
  if (head < 0) throw new Error('ring full');
  return { head, ack };
}

interface Call {
  cls: number;
  cmd: number;
  data: number[];
}

function recorder(result: number = CTRL.OK): { calls: Call[]; handler: CtrlHandler } {
  const calls: Call[] = [];
  return { calls, handler: (cls, cmd, data) => (calls.push({ cls, cmd, data: [...data] }), result) };
}

// --- well-formed commands ----------------------------------------------------------------

test('a command is handed to the handler, the ack byte written, the chain used with len 1', (t) => {
  const r = rig();
  const { head, ack } = postCommand(r, CTRL.CLASS_RX, CTRL.RX_PROMISC, [0]);
  r.drv.publish();
  const { calls, handler } = recorder(CTRL.OK);
  r.dev.process(handler);
  t.deepEqual(calls, [{ cls: CTRL.CLASS_RX, cmd: CTRL.RX_PROMISC, data: [0] }]);
  t.is(r.u8[ack], CTRL.OK);
  t.is(r.usedIdx(), 1);
  t.deepEqual(r.usedElem(0), { id: head, len: 1 });
  t.deepEqual(r.drv.popUsed({ id: 0, len: 0 }), { id: head, len: 1 }, 'the driver accepts what the device returned');
  t.deepEqual(r.dev.position, { lastAvail: 1, usedIdx: 1 });
});

test("the handler's ERR reaches the ack byte", (t) => {
  const r = rig();
  const { ack } = postCommand(r, CTRL.CLASS_MQ, CTRL.MQ_VQ_PAIRS_SET, [9, 0], 0xee);
  r.drv.publish();
  r.dev.process(recorder(CTRL.ERR).handler);
  t.is(r.u8[ack], CTRL.ERR);
});

test('data split over several readable buffers arrives as one contiguous command', (t) => {
  const r = rig();
  // MAC TABLE_SET the way Linux sends it: header, unicast table, multicast table, ack.
  const uni = [1, 0, 0, 0, 2, 0, 0, 0, 0, 1];
  const multi = [0, 0, 0, 0];
  const ack = r.put([0xee]);
  const head = r.drv.add([
    { addr: r.put([CTRL.CLASS_MAC, CTRL.MAC_TABLE_SET]), len: 2, write: false },
    { addr: r.put(uni), len: uni.length, write: false },
    { addr: r.put(multi), len: multi.length, write: false },
    { addr: ack, len: 1, write: true },
  ]);
  r.drv.publish();
  const { calls, handler } = recorder();
  r.dev.process(handler);
  t.deepEqual(calls, [{ cls: CTRL.CLASS_MAC, cmd: CTRL.MAC_TABLE_SET, data: [...uni, ...multi] }]);
  t.is(r.u8[ack], CTRL.OK);
  t.deepEqual(r.usedElem(0), { id: head, len: 1 });
});

test('class and command in one buffer with the data (ANY_LAYOUT-style) work too', (t) => {
  const r = rig();
  const ack = r.put([0xee]);
  r.drv.add([
    { addr: r.put([CTRL.CLASS_VLAN, CTRL.VLAN_ADD, 5, 0]), len: 4, write: false },
    { addr: ack, len: 1, write: true },
  ]);
  r.drv.publish();
  const { calls, handler } = recorder();
  r.dev.process(handler);
  t.deepEqual(calls, [{ cls: CTRL.CLASS_VLAN, cmd: CTRL.VLAN_ADD, data: [5, 0] }]);
  t.is(r.u8[ack], CTRL.OK);
});

test('a command shorter than class + command gets ERR without reaching the handler', (t) => {
  const r = rig();
  const ack = r.put([0xee]);
  r.drv.add([
    { addr: r.put([CTRL.CLASS_RX]), len: 1, write: false },
    { addr: ack, len: 1, write: true },
  ]);
  r.drv.publish();
  const { calls, handler } = recorder();
  r.dev.process(handler);
  t.is(calls.length, 0);
  t.is(r.u8[ack], CTRL.ERR);
  t.is(r.usedIdx(), 1);
});

test('several commands in one batch are handled in order, each acked and used', (t) => {
  const r = rig();
  const a = postCommand(r, CTRL.CLASS_RX, CTRL.RX_PROMISC, [1]);
  const b = postCommand(r, CTRL.CLASS_RX, CTRL.RX_ALLMULTI, [1]);
  const c = postCommand(r, CTRL.CLASS_ANNOUNCE, CTRL.ANNOUNCE_ACK, null);
  r.drv.publish();
  const { calls, handler } = recorder();
  r.dev.process(handler);
  t.deepEqual(calls.map((x) => [x.cls, x.cmd]), [[0, 0], [0, 1], [3, 0]]);
  t.is(r.usedIdx(), 3);
  t.deepEqual([0, 1, 2].map((i) => r.usedElem(i)), [a, b, c].map((x) => ({ id: x.head, len: 1 })));
  for (const x of [a, b, c]) t.is(r.u8[x.ack], CTRL.OK);
});

test('nothing available: no handler call, no used entry, no interrupt', (t) => {
  const r = rig();
  const { calls, handler } = recorder();
  t.false(r.dev.process(handler));
  t.is(calls.length, 0);
  t.is(r.usedIdx(), 0);
});

test('the ring wraps: many more commands than the queue size, one at a time, none lost', (t) => {
  const r = rig({ size: 4 });
  const { calls, handler } = recorder();
  for (let i = 0; i < 20; i++) {
    postCommand(r, CTRL.CLASS_RX, CTRL.RX_PROMISC, [i & 1]);
    r.drv.publish();
    r.dev.process(handler);
    const u = r.drv.popUsed();
    t.truthy(u, `command ${i} not returned`);
  }
  t.is(calls.length, 20);
  t.is(r.usedIdx(), 20);
});

test('an INDIRECT command is walked when RING_INDIRECT_DESC was negotiated', (t) => {
  const r = rig({ indirect: true });
  const ack = r.put([0xee]);
  const table = r.alloc(16 * 3, 16);
  const head = r.drv.addIndirect(
    [
      { addr: r.put([CTRL.CLASS_MQ, CTRL.MQ_VQ_PAIRS_SET]), len: 2, write: false },
      { addr: r.put([2, 0]), len: 2, write: false },
      { addr: ack, len: 1, write: true },
    ],
    table,
  );
  r.drv.publish();
  const { calls, handler } = recorder();
  r.dev.process(handler);
  t.deepEqual(calls, [{ cls: CTRL.CLASS_MQ, cmd: CTRL.MQ_VQ_PAIRS_SET, data: [2, 0] }]);
  t.is(r.u8[ack], CTRL.OK);
  t.deepEqual(r.usedElem(0), { id: head, len: 1 });
});

/** used_event (avail ring's last field), as a driver steering interrupts writes it. */
function setUsedEvent(r: Rig, v: number): void {
  Atomics.store(new Uint16Array(r.sab), (r.q.avail + 4 + 2 * r.q.size) >> 1, v);
}

// --- interrupt decision --------------------------------------------------------------------

test('without EVENT_IDX: interrupt unless the driver set VRING_AVAIL_F_NO_INTERRUPT', (t) => {
  const r = rig();
  postCommand(r, 0, 0, [1]);
  r.drv.publish();
  t.true(r.dev.process(recorder().handler));
  r.drv.popUsed();
  r.drv.disableInterrupts(); // avail.flags = NO_INTERRUPT
  t.is(r.dv.getUint16(r.q.avail, true), RING.AVAIL_F_NO_INTERRUPT);
  postCommand(r, 0, 0, [1]);
  r.drv.publish();
  t.false(r.dev.process(recorder().handler));
  t.is(r.usedIdx(), 2, 'the command is still completed');
});

test('with EVENT_IDX: interrupt when used.idx crosses used_event; the flag is ignored', (t) => {
  const r = rig({ eventIdx: true });
  postCommand(r, 0, 0, [1]);
  r.drv.publish(); // used_event = 0: wants an interrupt at the first used entry
  t.true(r.dev.process(recorder().handler));
  t.is(r.availEvent(), 1, 'avail_event tells the driver which avail.idx to kick at');
  r.drv.popUsed(); // used_event follows: 1

  // The flag means nothing with EVENT_IDX.
  r.dv.setUint16(r.q.avail, RING.AVAIL_F_NO_INTERRUPT, true);
  postCommand(r, 0, 0, [1]);
  r.drv.publish();
  t.true(r.dev.process(recorder().handler));
  r.drv.popUsed(); // used_event = 2

  // used_event far ahead: two more used entries (2 → 4) do not cross used_event 10.
  setUsedEvent(r, 10);
  postCommand(r, 0, 0, [1]);
  postCommand(r, 0, 0, [1]);
  r.drv.publish();
  t.false(r.dev.process(recorder().handler));
  t.is(r.usedIdx(), 4);
  t.is(r.availEvent(), 4);
  r.drv.popUsed();
  r.drv.popUsed();

  // used_event inside the batch just published (4 → 6 crosses 4): interrupt.
  setUsedEvent(r, 4);
  postCommand(r, 0, 0, [1]);
  postCommand(r, 0, 0, [1]);
  r.drv.publish();
  t.true(r.dev.process(recorder().handler));
});

test('with EVENT_IDX: disableInterrupts() (used_event behind) suppresses the interrupt', (t) => {
  const r = rig({ eventIdx: true });
  r.drv.disableInterrupts();
  postCommand(r, 0, 0, [1]);
  r.drv.publish();
  t.false(r.dev.process(recorder().handler));
  t.is(r.usedIdx(), 1);
});

// --- hostile chains -----------------------------------------------------------------------

function expectRule(t: import('ava').ExecutionContext, r: Rig, rule: string): void {
  const { calls, handler } = recorder();
  const e = t.throws(() => r.dev.process(handler), { instanceOf: RingRuleError });
  t.is(e?.rule, rule, e?.message);
  t.is(calls.length, 0, 'a broken chain must not reach the handler');
}

test('buffer outside guest memory → desc-out-of-bounds', (t) => {
  const r = rig();
  r.desc(0, MEM - 1, 2, RING.DESC_F_NEXT, 1); // straddles the end
  r.desc(1, r.put([0]), 1, RING.DESC_F_WRITE);
  r.rawPost(0, 0, 1);
  expectRule(t, r, 'desc-out-of-bounds');
});

test('buffer at an address beyond 2^53 → desc-out-of-bounds, not a wrapped read', (t) => {
  const r = rig();
  r.desc(0, 0xffff_ffff_ffff_f000n, 2, RING.DESC_F_NEXT, 1);
  r.desc(1, r.put([0]), 1, RING.DESC_F_WRITE);
  r.rawPost(0, 0, 1);
  expectRule(t, r, 'desc-out-of-bounds');
});

test('writable ack byte outside guest memory → desc-out-of-bounds (the device must not write there)', (t) => {
  const r = rig();
  r.desc(0, r.put([0, 0, 1]), 3, RING.DESC_F_NEXT, 1);
  r.desc(1, MEM, 1, RING.DESC_F_WRITE);
  r.rawPost(0, 0, 1);
  expectRule(t, r, 'desc-out-of-bounds');
});

test('a loop in the chain → chain-too-long', (t) => {
  const r = rig();
  const cmd = r.put([0, 0]);
  r.desc(0, cmd, 2, RING.DESC_F_NEXT, 1);
  r.desc(1, cmd, 2, RING.DESC_F_NEXT, 0);
  r.rawPost(0, 0, 1);
  expectRule(t, r, 'chain-too-long');
});

test('a self-loop → chain-too-long', (t) => {
  const r = rig();
  r.desc(3, r.put([0, 0]), 2, RING.DESC_F_NEXT, 3);
  r.rawPost(0, 3, 1);
  expectRule(t, r, 'chain-too-long');
});

test('a loop inside an indirect table → chain-too-long', (t) => {
  const r = rig({ indirect: true });
  const table = r.alloc(32, 16);
  const cmd = r.put([0, 0]);
  r.desc(0, cmd, 2, RING.DESC_F_NEXT, 1, table);
  r.desc(1, cmd, 2, RING.DESC_F_NEXT, 0, table);
  r.desc(0, table, 32, RING.DESC_F_INDIRECT);
  r.rawPost(0, 0, 1);
  expectRule(t, r, 'chain-too-long');
});

test('next index past the table → desc-index-out-of-range', (t) => {
  const r = rig();
  r.desc(0, r.put([0, 0]), 2, RING.DESC_F_NEXT, SIZE);
  r.rawPost(0, 0, 1);
  expectRule(t, r, 'desc-index-out-of-range');
});

test('head index past the table → desc-index-out-of-range', (t) => {
  const r = rig();
  r.rawPost(0, SIZE + 3, 1);
  expectRule(t, r, 'desc-index-out-of-range');
});

test('INDIRECT inside an indirect table → nested-indirect', (t) => {
  const r = rig({ indirect: true });
  const inner = r.alloc(16, 16);
  r.desc(0, r.put([0]), 1, RING.DESC_F_WRITE, 0, inner);
  const outer = r.alloc(16, 16);
  r.desc(0, inner, 16, RING.DESC_F_INDIRECT, 0, outer);
  r.desc(0, outer, 16, RING.DESC_F_INDIRECT);
  r.rawPost(0, 0, 1);
  expectRule(t, r, 'nested-indirect');
});

test('INDIRECT without RING_INDIRECT_DESC negotiated → indirect-not-negotiated', (t) => {
  const r = rig({ indirect: false });
  const table = r.alloc(32, 16);
  r.desc(0, r.put([0, 0]), 2, RING.DESC_F_NEXT, 1, table);
  r.desc(1, r.put([0]), 1, RING.DESC_F_WRITE, 0, table);
  r.desc(0, table, 32, RING.DESC_F_INDIRECT);
  r.rawPost(0, 0, 1);
  expectRule(t, r, 'indirect-not-negotiated');
});

test('INDIRECT with NEXT → indirect-with-next; bad table length → indirect-bad-len; table outside memory → indirect-out-of-bounds', (t) => {
  for (const [flags, len, addr, rule] of [
    [RING.DESC_F_INDIRECT | RING.DESC_F_NEXT, 32, 0x3000, 'indirect-with-next'],
    [RING.DESC_F_INDIRECT, 24, 0x3000, 'indirect-bad-len'],
    [RING.DESC_F_INDIRECT, 0, 0x3000, 'indirect-bad-len'],
    [RING.DESC_F_INDIRECT, 32, MEM - 16, 'indirect-out-of-bounds'],
  ] as const) {
    const r = rig({ indirect: true });
    r.desc(0, addr, len, flags, 1);
    r.desc(1, r.put([0]), 1, RING.DESC_F_WRITE);
    r.rawPost(0, 0, 1);
    expectRule(t, r, rule);
  }
});

test('an indirect table of more entries than the largest queue → indirect-bad-len, as the native walker', (t) => {
  const sab = new SharedArrayBuffer(1 << 20);
  const dv = new DataView(sab);
  const l = DriverQueue.layout(RING_BASE, SIZE);
  const q = { size: SIZE, desc: l.desc, avail: l.avail, used: l.used };
  const dev = new ControlQueue(sab, q, false, true);
  const entries = RING.MAX_SIZE + 1;
  dv.setBigUint64(q.desc, 0x10000n, true);
  dv.setUint32(q.desc + 8, 16 * entries, true);
  dv.setUint16(q.desc + 12, RING.DESC_F_INDIRECT, true);
  dv.setUint16(q.avail + 4, 0, true);
  Atomics.store(new Uint16Array(sab), (q.avail + 2) >> 1, 1);
  const e = t.throws(() => dev.process(() => CTRL.OK), { instanceOf: RingRuleError });
  t.is(e?.rule, 'indirect-bad-len', e?.message);
});

test('no writable ack byte → header-too-short', (t) => {
  const r = rig();
  r.drv.add([{ addr: r.put([0, 0, 1]), len: 3, write: false }]);
  r.drv.publish();
  expectRule(t, r, 'header-too-short');
});

test('readable buffer after a writable one → readable-after-writable', (t) => {
  const r = rig();
  r.desc(0, r.put([0, 0]), 2, RING.DESC_F_NEXT, 1);
  r.desc(1, r.put([0]), 1, RING.DESC_F_WRITE | RING.DESC_F_NEXT, 2);
  r.desc(2, r.put([1]), 1, 0);
  r.rawPost(0, 0, 1);
  expectRule(t, r, 'readable-after-writable');
});

test('avail.idx more than the queue size ahead → avail-idx-jump', (t) => {
  const r = rig();
  postCommand(r, 0, 0, [1]);
  r.drv.publish();
  // Publish an index SIZE + 1 ahead of what the device has consumed.
  Atomics.store(new Uint16Array(r.sab), (r.q.avail + 2) >> 1, SIZE + 1);
  expectRule(t, r, 'avail-idx-jump');
  t.is(r.usedIdx(), 0, 'nothing was consumed');
});

test('avail.idx exactly the queue size ahead is fine', (t) => {
  const r = rig();
  for (let i = 0; i < SIZE; i++) {
    r.desc(i, r.put([0, 0]), 2, RING.DESC_F_NEXT, (i + SIZE / 2) % SIZE);
  }
  // Chains i → i+4 (readable) → ack: use the upper half as ack bytes.
  for (let i = SIZE / 2; i < SIZE; i++) r.desc(i, r.put([0xee]), 1, RING.DESC_F_WRITE);
  for (let i = 0; i < SIZE; i++) r.dv.setUint16(r.q.avail + 4 + 2 * i, i % (SIZE / 2), true);
  Atomics.store(new Uint16Array(r.sab), (r.q.avail + 2) >> 1, SIZE);
  const { calls, handler } = recorder();
  r.dev.process(handler);
  t.is(calls.length, SIZE);
  t.is(r.usedIdx(), SIZE);
});

test('an oversized command → chain-too-long, not an allocation of whatever the guest asks', (t) => {
  const r = rig();
  const big = 32 * 1024;
  r.desc(0, HEAP, big, RING.DESC_F_NEXT, 1);
  r.desc(1, HEAP + big, 1, RING.DESC_F_WRITE);
  r.rawPost(0, 0, 1);
  expectRule(t, r, 'chain-too-long');
});

test('commands before a broken one in the same batch are completed', (t) => {
  const r = rig();
  const ok = postCommand(r, 0, 0, [1]);
  r.drv.publish();
  r.rawPost(1, SIZE + 1, 2); // second head out of range
  const { calls, handler } = recorder();
  t.throws(() => r.dev.process(handler), { instanceOf: RingRuleError });
  t.is(calls.length, 1);
  t.is(r.u8[ok.ack], CTRL.OK);
  t.is(r.usedIdx(), 1);
});
