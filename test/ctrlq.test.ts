// The device side of the control virtqueue (the native walker of
// native/ctrl_queue.cc behind addon().ControlQueue) against a driver-side ring
// built in a SharedArrayBuffer: guest-sim's DriverQueue for well-formed chains,
// raw descriptor writes for hostile ones. The ring is read back through a
// DataView independent of both implementations.

import test from 'ava';

import { addon, type CtrlAnswer, type NativeControlQueue, type NativeGuestMemory } from '../backend/native';
import { CTRL, RING } from '../backend/virtio';
import { DriverQueue, type Buf } from '../driver/virtqueue';

const A = addon();

/** What the guest broke, as serve() reports it. */
class RingRuleError extends Error {
  constructor(
    readonly rule: string,
    message: string,
  ) {
    super(message);
  }
}

type CtrlHandler = (cls: number, cmd: number, data: Uint8Array) => CtrlAnswer;

/**
 * Serves every available command as the device does (pop a turn's worth, decide, answer),
 * until the ring is empty. Returns whether an interrupt was due; throws RingRuleError when
 * the guest broke a rule (after answering what was decoded before it).
 */
function serve(dev: NativeControlQueue, handler: CtrlHandler): boolean {
  let irq = false;
  for (;;) {
    const { commands, more, broken } = dev.pop(64);
    irq = dev.answer(commands.map((c) => (c.malformed ? CTRL.ERR : handler(c.cls, c.cmd, c.data)))) || irq;
    if (broken) throw new RingRuleError(broken.rule, broken.detail);
    if (!more) return irq;
  }
}

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
  mem: NativeGuestMemory;
  dev: NativeControlQueue;
  /** serve() on this rig's queue. */
  process(handler: CtrlHandler): boolean;
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
  const mem = new A.GuestMemory([{ guestAddr: 0, buffer: sab }]);
  const dev = new A.ControlQueue({ memory: mem, ...q, eventIdx: opts.eventIdx ?? false, indirect: opts.indirect ?? false });
  let next = HEAP;
  const r: Rig = {
    sab,
    u8,
    dv,
    drv,
    q,
    mem,
    dev,
    process: (handler) => serve(dev, handler),
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
  return { calls, handler: (cls: number, cmd: number, data: Uint8Array) => (calls.push({ cls, cmd, data: [...data] }), result) };
}

// --- well-formed commands ----------------------------------------------------------------

test('a command is handed to the handler, the ack byte written, the chain used with len 1', (t) => {
  const r = rig();
  const { head, ack } = postCommand(r, CTRL.CLASS_RX, CTRL.RX_PROMISC, [0]);
  r.drv.publish();
  const { calls, handler } = recorder(CTRL.OK);
  r.process(handler);
  t.deepEqual(calls, [{ cls: CTRL.CLASS_RX, cmd: CTRL.RX_PROMISC, data: [0] }]);
  t.is(r.u8[ack], CTRL.OK);
  t.is(r.usedIdx(), 1);
  t.deepEqual(r.usedElem(0), { id: head, len: 1 });
  t.deepEqual(r.drv.popUsed({ id: 0, len: 0 }), { id: head, len: 1 }, 'the driver accepts what the device returned');
});

test("the handler's ERR reaches the ack byte", (t) => {
  const r = rig();
  const { ack } = postCommand(r, CTRL.CLASS_MQ, CTRL.MQ_VQ_PAIRS_SET, [9, 0], 0xee);
  r.drv.publish();
  r.process(recorder(CTRL.ERR).handler);
  t.is(r.u8[ack], CTRL.ERR);
});

test('a command that returns data: its result fills the writable part before the ack, across buffers; used len result + 1', (t) => {
  const r = rig();
  const first = r.put(new Array(5).fill(0xee));
  const second = r.put(new Array(3).fill(0xee));
  const ack = r.put([0xee]);
  const head = r.drv.add([
    { addr: r.put([CTRL.CLASS_NOTF_COAL, CTRL.NOTF_COAL_VQ_GET, 0, 0, 0, 0]), len: 6, write: false },
    { addr: first, len: 5, write: true },
    { addr: second, len: 3, write: true },
    { addr: ack, len: 1, write: true },
  ]);
  r.drv.publish();
  r.process(() => ({ ack: CTRL.OK, result: Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8]) }));
  t.deepEqual([...r.u8.subarray(first, first + 5), ...r.u8.subarray(second, second + 3)], [1, 2, 3, 4, 5, 6, 7, 8]);
  t.is(r.u8[ack], CTRL.OK);
  t.deepEqual(r.usedElem(0), { id: head, len: 9 });
});

test('a result the driver left no room for: ERR in the first writable byte, nothing else written', (t) => {
  const r = rig();
  const writable = r.put([0xee, 0xee, 0xee, 0xee]);
  const head = r.drv.add([
    { addr: r.put([CTRL.CLASS_NOTF_COAL, CTRL.NOTF_COAL_VQ_GET, 0, 0, 0, 0]), len: 6, write: false },
    { addr: writable, len: 4, write: true },
  ]);
  r.drv.publish();
  r.process(() => ({ ack: CTRL.OK, result: new Uint8Array(8).fill(7) }));
  t.deepEqual([...r.u8.subarray(writable, writable + 4)], [CTRL.ERR, 0xee, 0xee, 0xee]);
  t.deepEqual(r.usedElem(0), { id: head, len: 1 });
});

test('a command without a result acks in the first writable byte, however many the driver gave', (t) => {
  const r = rig();
  const writable = r.put(new Array(16).fill(0xee));
  r.drv.add([
    { addr: r.put([CTRL.CLASS_RX, CTRL.RX_PROMISC, 1]), len: 3, write: false },
    { addr: writable, len: 16, write: true },
  ]);
  r.drv.publish();
  r.process(() => CTRL.OK);
  t.is(r.u8[writable], CTRL.OK);
  t.is(r.u8[writable + 1], 0xee);
  t.is(r.usedElem(0).len, 1);
});

test('answer() refuses a result longer than any command returns, and acks that are not bytes', (t) => {
  const r = rig();
  postCommand(r, CTRL.CLASS_RX, CTRL.RX_PROMISC, [0]);
  r.drv.publish();
  const { commands } = r.dev.pop(64);
  t.is(commands.length, 1);
  t.throws(() => r.dev.answer([{ ack: CTRL.OK, result: new Uint8Array(9) }]), { code: 'EVHOST_BADARG' });
  t.throws(() => r.dev.answer([{ ack: 256, result: new Uint8Array(0) }]), { code: 'EVHOST_BADARG' });
  t.throws(() => r.dev.answer([{ ack: CTRL.OK, result: [1] as unknown as Uint8Array }]), { code: 'EVHOST_BADARG' });
  r.dev.answer([CTRL.OK]); // the valid answer still goes through
  t.is(r.usedIdx(), 1);
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
  r.process(handler);
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
  r.process(handler);
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
  r.process(handler);
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
  r.process(handler);
  t.deepEqual(calls.map((x) => [x.cls, x.cmd]), [[0, 0], [0, 1], [3, 0]]);
  t.is(r.usedIdx(), 3);
  t.deepEqual([0, 1, 2].map((i) => r.usedElem(i)), [a, b, c].map((x) => ({ id: x.head, len: 1 })));
  for (const x of [a, b, c]) t.is(r.u8[x.ack], CTRL.OK);
});

test('nothing available: no handler call, no used entry, no interrupt', (t) => {
  const r = rig();
  const { calls, handler } = recorder();
  t.false(r.process(handler));
  t.is(calls.length, 0);
  t.is(r.usedIdx(), 0);
});

test('the ring wraps: many more commands than the queue size, one at a time, none lost', (t) => {
  const r = rig({ size: 4 });
  const { calls, handler } = recorder();
  for (let i = 0; i < 20; i++) {
    postCommand(r, CTRL.CLASS_RX, CTRL.RX_PROMISC, [i & 1]);
    r.drv.publish();
    r.process(handler);
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
  r.process(handler);
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
  t.true(r.process(recorder().handler));
  r.drv.popUsed();
  r.drv.disableInterrupts(); // avail.flags = NO_INTERRUPT
  t.is(r.dv.getUint16(r.q.avail, true), RING.AVAIL_F_NO_INTERRUPT);
  postCommand(r, 0, 0, [1]);
  r.drv.publish();
  t.false(r.process(recorder().handler));
  t.is(r.usedIdx(), 2, 'the command is still completed');
});

test('with EVENT_IDX: interrupt when used.idx crosses used_event; the flag is ignored', (t) => {
  const r = rig({ eventIdx: true });
  postCommand(r, 0, 0, [1]);
  r.drv.publish(); // used_event = 0: wants an interrupt at the first used entry
  t.true(r.process(recorder().handler));
  t.is(r.availEvent(), 1, 'avail_event tells the driver which avail.idx to kick at');
  r.drv.popUsed(); // used_event follows: 1

  // The flag means nothing with EVENT_IDX.
  r.dv.setUint16(r.q.avail, RING.AVAIL_F_NO_INTERRUPT, true);
  postCommand(r, 0, 0, [1]);
  r.drv.publish();
  t.true(r.process(recorder().handler));
  r.drv.popUsed(); // used_event = 2

  // used_event far ahead: two more used entries (2 → 4) do not cross used_event 10.
  setUsedEvent(r, 10);
  postCommand(r, 0, 0, [1]);
  postCommand(r, 0, 0, [1]);
  r.drv.publish();
  t.false(r.process(recorder().handler));
  t.is(r.usedIdx(), 4);
  t.is(r.availEvent(), 4);
  r.drv.popUsed();
  r.drv.popUsed();

  // used_event inside the batch just published (4 → 6 crosses 4): interrupt.
  setUsedEvent(r, 4);
  postCommand(r, 0, 0, [1]);
  postCommand(r, 0, 0, [1]);
  r.drv.publish();
  t.true(r.process(recorder().handler));
});

test('with EVENT_IDX: disableInterrupts() (used_event behind) suppresses the interrupt', (t) => {
  const r = rig({ eventIdx: true });
  r.drv.disableInterrupts();
  postCommand(r, 0, 0, [1]);
  r.drv.publish();
  t.false(r.process(recorder().handler));
  t.is(r.usedIdx(), 1);
});

// --- hostile chains -----------------------------------------------------------------------

function expectRule(t: import('ava').ExecutionContext, r: Rig, rule: string): void {
  const { calls, handler } = recorder();
  const e = t.throws(() => r.process(handler), { instanceOf: RingRuleError });
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
  const dev = new A.ControlQueue({ memory: new A.GuestMemory([{ guestAddr: 0, buffer: sab }]), ...q, eventIdx: false, indirect: true });
  const entries = RING.MAX_SIZE + 1;
  dv.setBigUint64(q.desc, 0x10000n, true);
  dv.setUint32(q.desc + 8, 16 * entries, true);
  dv.setUint16(q.desc + 12, RING.DESC_F_INDIRECT, true);
  dv.setUint16(q.avail + 4, 0, true);
  Atomics.store(new Uint16Array(sab), (q.avail + 2) >> 1, 1);
  const e = t.throws(() => serve(dev, () => CTRL.OK), { instanceOf: RingRuleError });
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
  r.process(handler);
  t.is(calls.length, SIZE);
  t.is(r.usedIdx(), SIZE);
});

test('an oversized command gets ERR without reaching the handler, and is not copied whole', (t) => {
  const r = rig();
  const big = 32 * 1024;
  r.desc(0, HEAP, big, RING.DESC_F_NEXT, 1);
  r.desc(1, HEAP + big, 1, RING.DESC_F_WRITE);
  r.rawPost(0, 0, 1);
  const { calls, handler } = recorder();
  r.process(handler);
  t.is(calls.length, 0);
  t.is(r.u8[HEAP + big], CTRL.ERR);
  t.is(r.usedIdx(), 1);
});

test('commands before a broken one in the same batch are completed', (t) => {
  const r = rig();
  const ok = postCommand(r, 0, 0, [1]);
  r.drv.publish();
  r.rawPost(1, SIZE + 1, 2); // second head out of range
  const { calls, handler } = recorder();
  t.throws(() => r.process(handler), { instanceOf: RingRuleError });
  t.is(calls.length, 1);
  t.is(r.u8[ok.ack], CTRL.OK);
  t.is(r.usedIdx(), 1);
});

// --- bounded work per call -------------------------------------------------------------------

test('pop() takes at most maxCommands; the rest waits for the next call (more = true)', (t) => {
  const r = rig({ size: 32 });
  for (let i = 0; i < 10; i++) postCommand(r, CTRL.CLASS_RX, CTRL.RX_PROMISC, [i & 1]);
  r.drv.publish();
  const first = r.dev.pop(4);
  t.is(first.commands.length, 4);
  t.true(first.more);
  r.dev.answer(first.commands.map(() => CTRL.OK));
  t.is(r.usedIdx(), 4);
  const rest = r.dev.pop(64);
  t.is(rest.commands.length, 6);
  t.false(rest.more);
  r.dev.answer(rest.commands.map(() => CTRL.OK));
  t.is(r.usedIdx(), 10);
});

test('answer() with fewer answers than commands publishes the first ones; pop() waits until all are answered', (t) => {
  const r = rig({ size: 16 });
  const posted = [0, 1, 2, 3, 4].map((i) => postCommand(r, CTRL.CLASS_RX, CTRL.RX_PROMISC, [i & 1]));
  r.drv.publish();
  const { commands } = r.dev.pop(64);
  t.is(commands.length, 5);
  r.dev.answer([CTRL.OK, CTRL.ERR]);
  t.is(r.usedIdx(), 2, 'the first two are used');
  t.deepEqual([r.u8[posted[0].ack], r.u8[posted[1].ack], r.u8[posted[2].ack]], [CTRL.OK, CTRL.ERR, 0xee]);
  t.throws(() => r.dev.pop(64), { code: 'EVHOST_STATE' });
  t.throws(() => r.dev.answer([CTRL.OK, CTRL.OK, CTRL.OK, CTRL.OK]), { code: 'EVHOST_BADARG' }, 'more answers than commands left');
  r.dev.answer([CTRL.OK]);
  r.dev.answer([CTRL.ERR, CTRL.OK]);
  t.is(r.usedIdx(), 5);
  t.deepEqual([0, 1, 2, 3, 4].map((i) => r.usedElem(i).id), posted.map((x) => x.head), 'used in the order they were posted');
  t.deepEqual(posted.map((x) => r.u8[x.ack]), [CTRL.OK, CTRL.ERR, CTRL.OK, CTRL.ERR, CTRL.OK]);
  t.is(r.dev.pop(64).commands.length, 0, 'pop() works again once every command is answered');
});

test('pathological chains (zero-length readable descriptors through a whole ring) are walked within a per-call descriptor budget', (t) => {
  // A 32768-entry queue whose every chain visits all 32768 descriptors: one call may walk
  // at most its budget plus one chain, then says more = true; nothing is skipped.
  const size = 32768;
  const sab = new SharedArrayBuffer(2 << 20);
  const dv = new DataView(sab);
  const l = DriverQueue.layout(0, size);
  const ack = l.end + 64;
  for (let i = 0; i < size - 1; i++) {
    dv.setBigUint64(l.desc + 16 * i, BigInt(ack + 8), true); // zero-length readable buffers
    dv.setUint32(l.desc + 16 * i + 8, 0, true);
    dv.setUint16(l.desc + 16 * i + 12, RING.DESC_F_NEXT, true);
    dv.setUint16(l.desc + 16 * i + 14, i + 1, true);
  }
  dv.setBigUint64(l.desc + 16 * (size - 1), BigInt(ack), true);
  dv.setUint32(l.desc + 16 * (size - 1) + 8, 1, true);
  dv.setUint16(l.desc + 16 * (size - 1) + 12, RING.DESC_F_WRITE, true);
  const posted = 8;
  for (let i = 0; i < posted; i++) dv.setUint16(l.avail + 4 + 2 * i, 0, true);
  Atomics.store(new Uint16Array(sab), (l.avail + 2) >> 1, posted);
  const mem = new A.GuestMemory([{ guestAddr: 0, buffer: sab }]);
  const dev = new A.ControlQueue({ memory: mem, size, desc: l.desc, avail: l.avail, used: l.used, eventIdx: false, indirect: false });
  let calls = 0;
  let answered = 0;
  for (;;) {
    const { commands, more, broken } = dev.pop(64);
    t.is(broken, null);
    calls++;
    t.true(commands.length <= 3, `one call walked ${commands.length} chains of ${size} descriptors`);
    for (const c of commands) t.true(c.malformed, 'no readable bytes: not a command');
    dev.answer(commands.map(() => CTRL.ERR));
    answered += commands.length;
    if (!more) break;
  }
  t.is(answered, posted);
  t.true(calls >= posted / 3, `${calls} calls`);
});

// --- guest memory in regions ------------------------------------------------------------------

test('regions: a command whose data crosses from one region into the adjacent one, ack in a third region far above 4 GiB', (t) => {
  const low = new SharedArrayBuffer(0x10000);
  const next = new SharedArrayBuffer(0x10000);
  const high = new SharedArrayBuffer(0x10000);
  const HIGH = 0x1_2000_0000; // 4.5 GiB
  const mem = new A.GuestMemory([
    { guestAddr: 0, buffer: low },
    { guestAddr: 0x10000, buffer: next },
    { guestAddr: HIGH, buffer: high },
  ]);
  const size = 8;
  const l = DriverQueue.layout(0, size);
  const dv = new DataView(low);
  // class, cmd, then a 10-byte unicast table + 4-byte multicast table: starts 6 bytes
  // before the end of the first region.
  const cmdAt = 0x10000 - 6;
  const bytes = [CTRL.CLASS_MAC, CTRL.MAC_TABLE_SET, 1, 0, 0, 0, 2, 0, 0, 0, 0, 1, 0, 0, 0, 0];
  bytes.forEach((b, i) => {
    const a = cmdAt + i;
    if (a < 0x10000) new Uint8Array(low)[a] = b;
    else new Uint8Array(next)[a - 0x10000] = b;
  });
  const ackAt = HIGH + 0x100;
  new Uint8Array(high)[0x100] = 0xee;
  dv.setBigUint64(l.desc, BigInt(cmdAt), true);
  dv.setUint32(l.desc + 8, bytes.length, true);
  dv.setUint16(l.desc + 12, RING.DESC_F_NEXT, true);
  dv.setUint16(l.desc + 14, 1, true);
  dv.setBigUint64(l.desc + 16, BigInt(ackAt), true);
  dv.setUint32(l.desc + 24, 1, true);
  dv.setUint16(l.desc + 28, RING.DESC_F_WRITE, true);
  dv.setUint16(l.avail + 4, 0, true);
  Atomics.store(new Uint16Array(low), (l.avail + 2) >> 1, 1);
  const dev = new A.ControlQueue({ memory: mem, size, desc: l.desc, avail: l.avail, used: l.used, eventIdx: false, indirect: false });
  const got: number[][] = [];
  serve(dev, (cls, cmd, data) => (got.push([cls, cmd, ...data]), CTRL.OK));
  t.deepEqual(got, [bytes]);
  t.is(new Uint8Array(high)[0x100], CTRL.OK);
  t.is(dv.getUint16(l.used + 2, true), 1);
});

test('regions: a command buffer that runs into a hole → desc-out-of-bounds', (t) => {
  const low = new SharedArrayBuffer(0x10000);
  const high = new SharedArrayBuffer(0x10000);
  const mem = new A.GuestMemory([
    { guestAddr: 0, buffer: low },
    { guestAddr: 0x20000, buffer: high }, // hole [0x10000, 0x20000)
  ]);
  const l = DriverQueue.layout(0, 8);
  const dv = new DataView(low);
  dv.setBigUint64(l.desc, BigInt(0x10000 - 2), true);
  dv.setUint32(l.desc + 8, 4, true);
  dv.setUint16(l.desc + 12, RING.DESC_F_NEXT, true);
  dv.setUint16(l.desc + 14, 1, true);
  dv.setBigUint64(l.desc + 16, 0x8000n, true);
  dv.setUint32(l.desc + 24, 1, true);
  dv.setUint16(l.desc + 28, RING.DESC_F_WRITE, true);
  Atomics.store(new Uint16Array(low), (l.avail + 2) >> 1, 1);
  const dev = new A.ControlQueue({ memory: mem, size: 8, desc: l.desc, avail: l.avail, used: l.used, eventIdx: false, indirect: false });
  const e = t.throws(() => serve(dev, () => CTRL.OK), { instanceOf: RingRuleError });
  t.is(e?.rule, 'desc-out-of-bounds');
});

test('ring parts that overlap each other are refused when the queue is set up', (t) => {
  const sab = new SharedArrayBuffer(0x10000);
  const mem = new A.GuestMemory([{ guestAddr: 0, buffer: sab }]);
  const l = DriverQueue.layout(0, 8);
  // used two bytes after avail: used.flags would be avail.idx.
  const e = t.throws(() => new A.ControlQueue({ memory: mem, size: 8, desc: l.desc, avail: l.avail, used: l.avail + 4, eventIdx: false, indirect: false }));
  t.regex(e!.message, /overlaps/);
  t.deepEqual(mem.checkRings([{ size: 8, desc: l.desc, avail: l.avail, used: l.avail + 4 }])?.rule, 'ring-overlap');
  t.is(mem.checkRings([{ size: 8, desc: l.desc, avail: l.avail, used: l.used }]), null);
});
