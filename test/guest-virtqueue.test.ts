// Unit tests for guest-sim's DriverQueue against a device simulated by hand in
// this file (reading guest memory through a DataView, independently of the
// driver's typed-array views, so layout and endianness are checked too).

import test from 'ava';
import { DeviceBugError, DriverQueue, needEvent, type Buf } from '../driver/virtqueue';
import { RING } from '../backend/virtio';

interface Chain {
  head: number;
  bufs: Buf[];
  indirect: boolean;
}

/** The device side of a split ring, as small and literal as possible. */
class SimDevice {
  readonly dv: DataView;
  lastAvail = 0;
  usedIdx = 0;
  lastSignalled = 0;

  constructor(
    mem: SharedArrayBuffer,
    readonly q: { size: number; desc: number; avail: number; used: number },
    readonly eventIdx: boolean,
  ) {
    this.dv = new DataView(mem);
  }

  availIdx(): number {
    return this.dv.getUint16(this.q.avail + 2, true);
  }
  availFlags(): number {
    return this.dv.getUint16(this.q.avail, true);
  }
  usedEvent(): number {
    return this.dv.getUint16(this.q.avail + 4 + 2 * this.q.size, true);
  }
  setAvailEvent(v: number): void {
    this.dv.setUint16(this.q.used + 4 + 8 * this.q.size, v & 0xffff, true);
  }
  setUsedFlags(v: number): void {
    this.dv.setUint16(this.q.used, v, true);
  }

  readDesc(base: number, i: number): { addr: number; len: number; flags: number; next: number } {
    const o = base + 16 * i;
    return {
      addr: Number(this.dv.getBigUint64(o, true)),
      len: this.dv.getUint32(o + 8, true),
      flags: this.dv.getUint16(o + 12, true),
      next: this.dv.getUint16(o + 14, true),
    };
  }

  popAvail(): Chain | null {
    if (this.lastAvail === this.availIdx()) return null;
    const head = this.dv.getUint16(this.q.avail + 4 + 2 * (this.lastAvail % this.q.size), true);
    this.lastAvail = (this.lastAvail + 1) & 0xffff;
    const bufs: Buf[] = [];
    let d = this.readDesc(this.q.desc, head);
    if (d.flags & RING.DESC_F_INDIRECT) {
      const table = d.addr;
      let i = 0;
      for (;;) {
        const e = this.readDesc(table, i);
        bufs.push({ addr: e.addr, len: e.len, write: (e.flags & RING.DESC_F_WRITE) !== 0 });
        if (!(e.flags & RING.DESC_F_NEXT)) break;
        i = e.next;
      }
      return { head, bufs, indirect: true };
    }
    for (let n = 0; ; n++) {
      if (n > this.q.size) throw new Error('descriptor loop');
      bufs.push({ addr: d.addr, len: d.len, write: (d.flags & RING.DESC_F_WRITE) !== 0 });
      if (!(d.flags & RING.DESC_F_NEXT)) break;
      d = this.readDesc(this.q.desc, d.next);
    }
    return { head, bufs, indirect: false };
  }

  /** Writes one used element and publishes it; returns whether an interrupt is due. */
  pushUsed(id: number, len: number): boolean {
    const slot = this.usedIdx % this.q.size;
    this.dv.setUint32(this.q.used + 4 + 8 * slot, id, true);
    this.dv.setUint32(this.q.used + 8 + 8 * slot, len, true);
    const old = this.usedIdx;
    this.usedIdx = (this.usedIdx + 1) & 0xffff;
    this.dv.setUint16(this.q.used + 2, this.usedIdx, true);
    if (this.eventIdx) return needEvent(this.usedEvent(), this.usedIdx, old);
    return (this.availFlags() & RING.AVAIL_F_NO_INTERRUPT) === 0;
  }
}

function setup(size: number, eventIdx = false, memSize = 1 << 20) {
  const mem = new SharedArrayBuffer(memSize);
  const l = DriverQueue.layout(0, size);
  const q = { size, desc: l.desc, avail: l.avail, used: l.used };
  const drv = new DriverQueue(mem, q, { eventIdx });
  const dev = new SimDevice(mem, q, eventIdx);
  return { mem, q, drv, dev, end: l.end };
}

test('layout aligns each part and leaves room for the event fields', (t) => {
  const l = DriverQueue.layout(0, 256);
  t.deepEqual(l, { desc: 0, avail: 4096, used: 4096 + 6 + 512 + 2, end: 4616 + 6 + 2048 });
  const m = DriverQueue.layout(3, 1);
  t.is(m.desc, 16);
  t.is(m.avail, 32);
  t.is(m.used % 4, 0);
  t.true(m.used >= m.avail + 6);
  t.is(m.end, m.used + 4 + 8 + 2);
  t.is(DriverQueue.layout(0, 256, 4096).used, 8192);
  t.throws(() => DriverQueue.layout(0, 3), { instanceOf: RangeError, message: /power of two/ });
  t.throws(() => DriverQueue.layout(-1, 4), { instanceOf: RangeError });
  t.throws(() => DriverQueue.layout(0, 4, 2), { instanceOf: RangeError, message: /usedAlign/ });
});

test('a chain reaches the device intact and comes back to the free list', (t) => {
  const { drv, dev } = setup(8);
  t.is(drv.size, 8);
  t.is(drv.freeCount, 8);
  const bufs = [
    { addr: 0x10000, len: 12, write: false },
    { addr: 0x20000, len: 1500, write: false },
    { addr: 0x30000, len: 2048, write: true },
  ];
  const head = drv.add(bufs);
  t.is(head, 0);
  t.is(drv.freeCount, 5);
  t.is(drv.inFlight, 1);
  t.is(dev.popAvail(), null, 'not visible before publish');
  t.is(drv.unpublished, 1);
  t.true(drv.publish());
  t.is(drv.unpublished, 0);
  const c = dev.popAvail()!;
  t.is(c.head, head);
  t.deepEqual(c.bufs, bufs);
  // The raw descriptor flags: NEXT on all but the last, WRITE only on the writable one.
  t.is(dev.readDesc(dev.q.desc, 0).flags, RING.DESC_F_NEXT);
  t.is(dev.readDesc(dev.q.desc, 2).flags, RING.DESC_F_WRITE);
  t.is(drv.popUsed(), null);
  t.is(drv.pending, 0);
  dev.pushUsed(head, 100);
  t.is(drv.pending, 1);
  const u = drv.popUsed()!;
  t.deepEqual({ ...u }, { id: head, len: 100 });
  t.is(drv.freeCount, 8);
  t.is(drv.inFlight, 0);
  t.is(drv.popUsed(), null);
});

test('popUsed writes into an out-param or a reused object', (t) => {
  const { drv, dev } = setup(4);
  const a = drv.addBuf(0x1000, 64, true);
  const b = drv.addBuf(0x2000, 64, true);
  drv.publish();
  dev.popAvail();
  dev.popAvail();
  dev.pushUsed(a, 10);
  dev.pushUsed(b, 20);
  const out = { id: -1, len: -1 };
  t.is(drv.popUsed(out), out);
  t.deepEqual(out, { id: a, len: 10 });
  const r1 = drv.popUsed();
  t.deepEqual({ ...r1! }, { id: b, len: 20 });
});

test('add returns -1 without side effects when descriptors run out', (t) => {
  const { drv, dev } = setup(4);
  const h = drv.add([
    { addr: 0x1000, len: 10, write: false },
    { addr: 0x2000, len: 10, write: false },
    { addr: 0x3000, len: 10, write: true },
  ]);
  t.is(drv.freeCount, 1);
  t.is(drv.add([{ addr: 0x1000, len: 1, write: false }, { addr: 0x1000, len: 1, write: true }]), -1);
  t.is(drv.freeCount, 1);
  t.is(drv.inFlight, 1);
  const last = drv.addBuf(0x4000, 4, true);
  t.not(last, -1);
  t.is(drv.addBuf(0x4000, 4, true), -1);
  drv.publish();
  t.is(dev.popAvail()!.head, h);
  t.is(dev.popAvail()!.head, last);
  t.is(dev.popAvail(), null);
});

test('out-of-order completion: freed descriptors are reused and in-flight ids never collide', (t) => {
  const { drv, dev } = setup(16);
  const owned = new Set<number>();
  const deviceHas: number[] = [];
  let rng = 12345;
  const rand = (n: number) => {
    rng = (rng * 1103515245 + 12345) & 0x7fffffff;
    return rng % n;
  };
  for (let round = 0; round < 2000; round++) {
    // Post chains of 1..3 descriptors while they fit.
    for (;;) {
      const n = 1 + rand(3);
      const bufs: Buf[] = [];
      for (let i = 0; i < n; i++) bufs.push({ addr: 0x8000 + 64 * i, len: 64, write: i === n - 1 });
      const h = drv.add(bufs);
      if (h < 0) {
        t.true(drv.freeCount < n);
        break;
      }
      t.false(owned.has(h), `head ${h} handed out twice`);
      owned.add(h);
    }
    drv.publish();
    for (let c = dev.popAvail(); c; c = dev.popAvail()) deviceHas.push(c.head);
    // Complete a random subset in random order.
    const k = 1 + rand(deviceHas.length);
    for (let i = 0; i < k; i++) {
      const j = rand(deviceHas.length);
      const [h] = deviceHas.splice(j, 1);
      dev.pushUsed(h, 64);
    }
    for (let u = drv.popUsed(); u; u = drv.popUsed()) {
      t.true(owned.delete(u.id));
      t.is(u.len, 64);
    }
    t.is(drv.inFlight, owned.size);
    t.true(drv.freeCount >= 0 && drv.freeCount <= 16);
    t.true(16 - drv.freeCount >= owned.size, 'every in-flight chain holds at least one descriptor');
  }
  while (deviceHas.length) dev.pushUsed(deviceHas.shift()!, 0);
  while (drv.popUsed()) {}
  t.is(drv.freeCount, 16);
  t.is(drv.inFlight, 0);
});

test('indices wrap past 65535 on both rings', (t) => {
  const { drv, dev, q, mem } = setup(8);
  const u16 = new DataView(mem);
  let total = 0;
  const batch = 5;
  while (total < 70000) {
    const heads: number[] = [];
    for (let i = 0; i < batch; i++) heads.push(drv.addBuf(0x8000 + i * 256, 256, true));
    drv.publish();
    total += batch;
    if (u16.getUint16(q.avail + 2, true) !== (total & 0xffff)) {
      t.fail(`avail.idx ${u16.getUint16(q.avail + 2, true)} != ${total & 0xffff}`);
      return;
    }
    for (let i = 0; i < batch; i++) {
      const c = dev.popAvail()!;
      if (c.head !== heads[i]) t.fail('device saw chains out of order');
      dev.pushUsed(c.head, i);
    }
    for (let i = 0; i < batch; i++) {
      const u = drv.popUsed();
      if (!u || u.id !== heads[i] || u.len !== i) {
        t.fail(`used entry ${i} wrong after ${total} chains`);
        return;
      }
    }
    if (drv.popUsed() !== null) t.fail('spurious used entry');
  }
  t.true(total > 65536);
  t.is(dev.usedIdx, total & 0xffff);
  t.is(drv.freeCount, 8);
});

test('vring_need_event, including across the u16 wrap', (t) => {
  t.true(needEvent(0, 1, 0));
  t.false(needEvent(5, 3, 1));
  t.true(needEvent(5, 6, 3));
  t.true(needEvent(5, 10, 3)); // crossed in the middle of a batch
  t.false(needEvent(10, 10, 3)); // event is the next index, not reached yet
  t.true(needEvent(0xffff, 2, 0xfffe));
  t.false(needEvent(3, 2, 0xfffe));
  t.false(needEvent(0, 0, 0));
});

test('EVENT_IDX: publish kicks only when avail.idx crosses avail_event', (t) => {
  const { drv, dev } = setup(16, true);
  drv.addBuf(0x1000, 10, false);
  t.true(drv.publish(), 'avail_event 0: the first buffer kicks');
  dev.setAvailEvent(5);
  drv.addBuf(0x1000, 10, false);
  drv.addBuf(0x1000, 10, false);
  t.false(drv.publish(), 'idx 1..3 has not reached 5');
  drv.addBuf(0x1000, 10, false);
  drv.addBuf(0x1000, 10, false);
  t.false(drv.publish(), 'idx 5 means the device waits for entry 5, not yet published');
  drv.addBuf(0x1000, 10, false);
  t.true(drv.publish(), 'entry 5 published: kick');
  t.false(drv.publish(), 'nothing new: no kick');
  // Flags are ignored with EVENT_IDX.
  dev.setUsedFlags(RING.USED_F_NO_NOTIFY);
  dev.setAvailEvent(6);
  drv.addBuf(0x1000, 10, false);
  t.true(drv.publish());
});

test('EVENT_IDX: kick decision across the u16 wrap of avail.idx', (t) => {
  const { drv, dev } = setup(4, true);
  // Run 65534 chains through so that avail.idx sits just below the wrap.
  for (let i = 0; i < 65534; i++) {
    drv.addBuf(0x1000, 10, false);
    drv.publish();
    dev.pushUsed(dev.popAvail()!.head, 0);
    drv.popUsed();
  }
  dev.setAvailEvent(1); // device wants a kick once entry 1 (after the wrap) is published
  drv.addBuf(0x1000, 10, false); // idx 65534 -> 65535
  t.false(drv.publish());
  drv.addBuf(0x1000, 10, false); // -> 0
  t.false(drv.publish());
  drv.addBuf(0x1000, 10, false); // -> 1: entry 0 published, event 1 not yet
  t.false(drv.publish());
  drv.addBuf(0x1000, 10, false); // -> 2: entry 1 published
  t.true(drv.publish());
});

test('without EVENT_IDX: used.flags NO_NOTIFY suppresses kicks', (t) => {
  const { drv, dev } = setup(8);
  t.false(drv.publish(), 'nothing added');
  drv.addBuf(0x1000, 10, false);
  dev.setUsedFlags(RING.USED_F_NO_NOTIFY);
  t.false(drv.publish());
  drv.addBuf(0x1000, 10, false);
  dev.setUsedFlags(0);
  t.true(drv.publish());
});

test('interrupt suppression with flags, and the re-enable race check', (t) => {
  const { drv, dev } = setup(8);
  const a = drv.addBuf(0x1000, 10, true);
  const b = drv.addBuf(0x2000, 10, true);
  drv.publish();
  dev.popAvail();
  dev.popAvail();
  drv.disableInterrupts();
  t.is(dev.availFlags(), RING.AVAIL_F_NO_INTERRUPT);
  t.false(dev.pushUsed(a, 1), 'suppressed');
  // The race: the device published while interrupts were off; re-enabling must report it.
  t.true(drv.enableInterrupts());
  t.is(dev.availFlags(), 0);
  t.is(drv.popUsed()!.id, a);
  t.false(drv.enableInterrupts(), 'nothing pending: safe to sleep');
  t.true(dev.pushUsed(b, 1), 'enabled: interrupt due');
});

test('EVENT_IDX interrupt suppression through used_event', (t) => {
  const { drv, dev } = setup(8, true);
  const heads: number[] = [];
  for (let i = 0; i < 8; i++) heads.push(drv.addBuf(0x1000 + 64 * i, 64, true));
  drv.publish();
  for (let i = 0; i < 8; i++) dev.popAvail();
  t.is(dev.usedEvent(), 0);
  t.true(dev.pushUsed(heads[0], 1), 'used_event 0: first entry interrupts');
  t.is(drv.popUsed()!.id, heads[0]);
  t.is(dev.usedEvent(), 1, 'popUsed moves used_event along');

  drv.disableInterrupts();
  t.is(dev.availFlags(), 0, 'flags stay 0 with EVENT_IDX');
  t.false(dev.pushUsed(heads[1], 1));
  t.false(dev.pushUsed(heads[2], 1));
  t.is(drv.popUsed()!.id, heads[1]);
  t.true(drv.enableInterrupts(), 'one entry is already pending');
  t.is(drv.popUsed()!.id, heads[2]);
  t.false(drv.enableInterrupts());
  t.is(dev.usedEvent(), 3);
  t.true(dev.pushUsed(heads[3], 1));
  t.is(drv.popUsed()!.id, heads[3]);

  // Delayed: 4 in flight, ask for an interrupt at 3/4 of them.
  drv.disableInterrupts();
  t.false(drv.enableInterruptsDelayed());
  t.is(dev.usedEvent(), 4 + 3);
  t.false(dev.pushUsed(heads[4], 1));
  t.false(dev.pushUsed(heads[5], 1));
  t.false(dev.pushUsed(heads[6], 1));
  t.true(dev.pushUsed(heads[7], 1));
});

test('enableInterruptsDelayed reports entries already past its event', (t) => {
  const { drv, dev } = setup(8, true);
  const heads: number[] = [];
  for (let i = 0; i < 4; i++) heads.push(drv.addBuf(0x1000, 64, true));
  drv.publish();
  for (let i = 0; i < 4; i++) dev.popAvail();
  drv.disableInterrupts();
  dev.pushUsed(heads[0], 0);
  t.false(drv.enableInterruptsDelayed(), 'event at 3: one pending entry does not reach it');
  dev.pushUsed(heads[1], 0);
  dev.pushUsed(heads[2], 0);
  drv.disableInterrupts();
  t.false(drv.enableInterruptsDelayed(), 'event 3 is crossed by the 4th entry, not the 3rd');
  drv.disableInterrupts();
  dev.pushUsed(heads[3], 0);
  t.true(drv.enableInterruptsDelayed(), 'all 4 pending: past the event');
});

test('addIndirect posts one descriptor pointing at the table', (t) => {
  const { drv, dev, end } = setup(4);
  const table = Math.ceil(end / 16) * 16;
  const bufs = [
    { addr: 0x10000, len: 12, write: false },
    { addr: 0x11000, len: 100, write: false },
    { addr: 0x12000, len: 4096, write: true },
  ];
  const h = drv.addIndirect(bufs, table);
  t.is(drv.freeCount, 3);
  drv.publish();
  const d = dev.readDesc(dev.q.desc, h);
  t.is(d.flags, RING.DESC_F_INDIRECT);
  t.is(d.addr, table);
  t.is(d.len, 48);
  const c = dev.popAvail()!;
  t.true(c.indirect);
  t.deepEqual(c.bufs, bufs);
  dev.pushUsed(h, 4096);
  t.deepEqual({ ...drv.popUsed()! }, { id: h, len: 4096 });
  t.is(drv.freeCount, 4);
});

test('addIndirect records writable capacity and checks table placement', (t) => {
  const { drv, dev, end } = setup(4);
  const table = Math.ceil(end / 16) * 16;
  const h = drv.addIndirect([{ addr: 0x12000, len: 100, write: true }], table);
  drv.publish();
  dev.popAvail();
  dev.pushUsed(h, 100);
  t.is(drv.popUsed()!.len, 100);
  t.is(drv.freeCount, 4);
  t.throws(() => drv.addIndirect([{ addr: 0, len: 1, write: false }], table + 8), { instanceOf: RangeError, message: /aligned/ });
  t.throws(() => drv.addIndirect([{ addr: 0, len: 1, write: false }, { addr: 0, len: 1, write: false }], (1 << 20) - 16), { instanceOf: RangeError, message: /not inside one region/ });
  t.not(drv.addIndirect([{ addr: 0, len: 1, write: false }], (1 << 20) - 16), -1);
  t.throws(() => drv.addIndirect([], table), { instanceOf: TypeError });
});

test('a device returning an unknown id or an oversized len is reported', (t) => {
  const { drv, dev } = setup(4);
  const h = drv.addBuf(0x1000, 100, true);
  drv.publish();
  dev.popAvail();
  dev.pushUsed(3, 0);
  t.throws(() => drv.popUsed(), { instanceOf: DeviceBugError, message: /id = 3/ });

  const s = setup(4);
  const h2 = s.drv.addBuf(0x1000, 100, true);
  s.drv.publish();
  s.dev.popAvail();
  s.dev.pushUsed(h2, 101);
  t.throws(() => s.drv.popUsed(), { instanceOf: DeviceBugError, message: /len = 101 exceeds/ });
  t.is(h, 0);
});

test('argument validation', (t) => {
  const mem = new SharedArrayBuffer(65536);
  const ok = { size: 8, desc: 0, avail: 128, used: 256 };
  t.notThrows(() => new DriverQueue(mem, ok, { eventIdx: false }));
  for (const size of [0, 3, 65536, 1.5, -4]) {
    t.throws(() => new DriverQueue(mem, { ...ok, size }, { eventIdx: false }), { instanceOf: RangeError, message: /power of two/ }, `size ${size}`);
  }
  t.throws(() => new DriverQueue(mem, { ...ok, desc: 8 }, { eventIdx: false }), { message: /desc address 8 must be 16-byte aligned/ });
  t.throws(() => new DriverQueue(mem, { ...ok, avail: 129 }, { eventIdx: false }), { message: /avail address 129 must be 2-byte aligned/ });
  t.throws(() => new DriverQueue(mem, { ...ok, used: 258 }, { eventIdx: false }), { message: /used address 258 must be 4-byte aligned/ });
  t.throws(() => new DriverQueue(mem, { ...ok, used: 65536 - 8 }, { eventIdx: false }), { message: /not inside one region/ });
  t.throws(() => new DriverQueue(mem, { ...ok, avail: 64 }, { eventIdx: false }), { message: /overlaps/ });
  t.throws(() => new DriverQueue(new ArrayBuffer(4096) as unknown as SharedArrayBuffer, ok, { eventIdx: false }), { instanceOf: TypeError });
  t.throws(() => new DriverQueue(mem, ok, {} as { eventIdx: boolean }), { instanceOf: TypeError });
  t.notThrows(() => new DriverQueue(new SharedArrayBuffer(32768 * 16 + 32768 * 10 + 64), { size: 32768, ...DriverQueue.layout(0, 32768) }, { eventIdx: true }));

  const drv = new DriverQueue(mem, ok, { eventIdx: false });
  t.throws(() => drv.add([]), { instanceOf: TypeError });
  t.throws(() => drv.add([{ addr: 65530, len: 7, write: false }]), { instanceOf: RangeError, message: /not guest memory/ });
  t.throws(() => drv.add([{ addr: -1, len: 7, write: false }]), { instanceOf: RangeError });
  t.throws(() => drv.add([{ addr: 0, len: 0, write: false }]), { instanceOf: RangeError, message: /len 0/ });
  t.throws(() => drv.add([{ addr: 0, len: 1.5, write: false }]), { instanceOf: RangeError });
  t.throws(
    () => drv.add([{ addr: 0, len: 1, write: true }, { addr: 0, len: 1, write: false }]),
    { instanceOf: RangeError, message: /readable after a device-writable/ },
  );
  const nine = Array.from({ length: 9 }, () => ({ addr: 0, len: 1, write: false }));
  t.throws(() => drv.add(nine), { message: /exceeds queue size 8/ });
  t.throws(() => drv.addBuf(65536, 1, true), { message: /not guest memory/ });
  t.is(drv.freeCount, 8, 'failed adds leave no trace');
  t.is(drv.inFlight, 0);
});

test('reset forgets everything and zeroes the rings', (t) => {
  const { drv, dev, mem, q } = setup(8, true);
  drv.add([{ addr: 0x1000, len: 10, write: false }, { addr: 0x2000, len: 10, write: true }]);
  drv.publish();
  dev.popAvail();
  drv.disableInterrupts();
  drv.reset();
  t.is(drv.freeCount, 8);
  t.is(drv.inFlight, 0);
  t.is(drv.pending, 0);
  const bytes = new Uint8Array(mem, q.desc, q.used + 6 + 8 * 8 - q.desc);
  t.true(bytes.every((b) => b === 0));
  const dev2 = new SimDevice(mem, q, true);
  const h = drv.addBuf(0x1000, 10, true);
  t.true(drv.publish());
  t.is(dev2.popAvail()!.head, h);
  t.true(dev2.pushUsed(h, 0), 'interrupts are enabled again after reset');
});
