// Unit tests for the driver's packed virtqueue (driver/packed.ts) and for
// IN_ORDER on both layouts, against devices simulated by hand in this file:
// they read and write guest memory through a DataView at the offsets virtio
// 1.1 §2.8 gives (descriptor: addr u64, len u32, id u16, flags u16; event
// areas: off_wrap u16, flags u16), independently of the driver's views, so
// layout, wrap counters and flag bits are checked against the spec, not
// against the driver's own idea of them.

import test from 'ava';

import { RING } from '../backend/virtio';
import { NetQueuePair } from '../driver/net';
import { PACKED, PackedDriverQueue, openVirtqueue } from '../driver/packed';
import { DeviceBugError, DriverQueue, type Buf } from '../driver/virtqueue';

const F_AVAIL = 1 << 7;
const F_USED = 1 << 15;

interface Chain {
  id: number;
  bufs: Buf[];
  slots: number;
  indirect: boolean;
}

/** The device side of a packed ring, as literal as possible. */
class SimPackedDevice {
  readonly dv: DataView;
  /** Next ring position the device reads, and the driver wrap counter it expects there. */
  availPos = 0;
  availWrap = 1;
  /** Next ring position the device writes a used descriptor to, and its own wrap counter. */
  usedPos = 0;
  usedWrap = 1;

  constructor(
    mem: SharedArrayBuffer,
    readonly q: { size: number; desc: number; avail: number; used: number },
  ) {
    this.dv = new DataView(mem);
  }

  desc(i: number): { addr: number; len: number; id: number; flags: number } {
    const o = this.q.desc + 16 * i;
    return { addr: Number(this.dv.getBigUint64(o, true)), len: this.dv.getUint32(o + 8, true), id: this.dv.getUint16(o + 12, true), flags: this.dv.getUint16(o + 14, true) };
  }

  /** §2.8.1: a descriptor is available when its AVAIL bit equals the driver's wrap counter and USED does not. */
  isAvail(i: number, wrap: number): boolean {
    const f = this.desc(i).flags;
    return ((f & F_AVAIL) !== 0) === (wrap === 1) && ((f & F_USED) !== 0) !== (wrap === 1);
  }

  popAvail(): Chain | null {
    if (!this.isAvail(this.availPos, this.availWrap)) return null;
    const bufs: Buf[] = [];
    let slots = 0;
    let id = -1;
    let indirect = false;
    for (;;) {
      if (slots >= this.q.size) throw new Error('chain longer than the ring');
      if (slots > 0 && !this.isAvail(this.availPos, this.availWrap)) throw new Error(`chain continues into descriptor ${this.availPos}, which is not available`);
      const d = this.desc(this.availPos);
      slots++;
      this.availPos++;
      if (this.availPos === this.q.size) {
        this.availPos = 0;
        this.availWrap ^= 1;
      }
      if (d.flags & RING.DESC_F_INDIRECT) {
        indirect = true;
        for (let i = 0; i < d.len / 16; i++) {
          const o = d.addr + 16 * i;
          const f = this.dv.getUint16(o + 14, true);
          if (f & RING.DESC_F_NEXT) throw new Error('NEXT inside a packed indirect table');
          bufs.push({ addr: Number(this.dv.getBigUint64(o, true)), len: this.dv.getUint32(o + 8, true), write: (f & RING.DESC_F_WRITE) !== 0 });
        }
      } else {
        bufs.push({ addr: d.addr, len: d.len, write: (d.flags & RING.DESC_F_WRITE) !== 0 });
      }
      if (!(d.flags & RING.DESC_F_NEXT)) {
        // §2.8.6: the buffer id is the last descriptor's.
        id = d.id;
        break;
      }
    }
    return { id, bufs, slots, indirect };
  }

  /** Writes a used descriptor for buffer `id` at the device's position and skips `slots` positions (the chain's, or a batch's). */
  pushUsed(id: number, len: number, slots: number): void {
    const o = this.q.desc + 16 * this.usedPos;
    this.dv.setUint16(o + 12, id, true);
    this.dv.setUint32(o + 8, len, true);
    this.dv.setUint16(o + 14, this.usedWrap ? F_AVAIL | F_USED : 0, true);
    this.usedPos += slots;
    if (this.usedPos >= this.q.size) {
      this.usedPos -= this.q.size;
      this.usedWrap ^= 1;
    }
  }

  /** The device event suppression area: what the driver reads to decide a kick. */
  setDeviceEvent(flags: number, offWrap = 0): void {
    this.dv.setUint16(this.q.used, offWrap, true);
    this.dv.setUint16(this.q.used + 2, flags, true);
  }

  /** The driver event suppression area: what the device reads to decide an interrupt. */
  driverEvent(): { flags: number; off: number; wrap: number } {
    const ow = this.dv.getUint16(this.q.avail, true);
    return { flags: this.dv.getUint16(this.q.avail + 2, true), off: ow & 0x7fff, wrap: ow >>> 15 };
  }
}

function setup(size: number, opts: { eventIdx?: boolean; inOrder?: boolean } = {}): { mem: SharedArrayBuffer; q: PackedDriverQueue; dev: SimPackedDevice; bufBase: number } {
  const mem = new SharedArrayBuffer(1 << 20);
  const l = PackedDriverQueue.layout(64, size);
  const addrs = { size, desc: l.desc, avail: l.avail, used: l.used };
  const q = new PackedDriverQueue(mem, addrs, { eventIdx: opts.eventIdx ?? false, inOrder: opts.inOrder });
  return { mem, q, dev: new SimPackedDevice(mem, addrs), bufBase: 0x40000 };
}

test('layout: a 16-aligned descriptor ring, then the driver and the device event areas of 4 bytes each', (t) => {
  const l = PackedDriverQueue.layout(10, 5);
  t.deepEqual(l, { desc: 16, avail: 16 + 80, used: 16 + 84, end: 16 + 88 });
  // Any size up to 2^15, not only powers of two.
  t.notThrows(() => PackedDriverQueue.layout(0, 3));
  t.throws(() => PackedDriverQueue.layout(0, PACKED.MAX_SIZE + 1), { instanceOf: RangeError });
  t.throws(() => PackedDriverQueue.layout(0, 0), { instanceOf: RangeError });
});

test('a chain reaches the device intact only at publish(), the id in its last descriptor; it comes back with its len and its slots are free again', (t) => {
  const { q, dev, bufBase } = setup(8);
  const bufs: Buf[] = [
    { addr: bufBase, len: 12, write: false },
    { addr: bufBase + 0x100, len: 100, write: false },
    { addr: bufBase + 0x1000, len: 2048, write: true },
  ];
  const id = q.add(bufs);
  t.true(id >= 0 && id < 8);
  t.is(q.freeCount, 5);
  t.is(q.unpublished, 1);
  t.is(dev.popAvail(), null, 'not visible before publish()');
  q.publish();
  const c = dev.popAvail()!;
  t.deepEqual(c.bufs, bufs);
  t.is(c.id, id);
  t.is(c.slots, 3);
  // Flag bits on the first lap: AVAIL set, USED clear; NEXT on all but the last; WRITE as asked.
  t.is(dev.desc(0).flags, F_AVAIL | RING.DESC_F_NEXT);
  t.is(dev.desc(2).flags, F_AVAIL | RING.DESC_F_WRITE);
  t.is(q.popUsed(), null, 'nothing used yet');
  t.is(q.pending, 0);
  dev.pushUsed(c.id, 1500, c.slots);
  t.is(q.pending, 1);
  t.deepEqual({ ...q.popUsed()! }, { id, len: 1500 });
  t.is(q.freeCount, 8);
  t.is(q.inFlight, 0);
  t.is(q.popUsed(), null);
});

test('wrap counters: laps of chains that straddle the ring end carry the flipped AVAIL/USED bits, and both sides stay in step', (t) => {
  const { q, dev, bufBase } = setup(7);
  let lenSeen = 0;
  for (let round = 0; round < 40; round++) {
    const n = 1 + (round % 3);
    const bufs: Buf[] = [];
    for (let i = 0; i < n; i++) bufs.push({ addr: bufBase + 64 * (round * 3 + i), len: 20 + i, write: i === n - 1 });
    const wrapBefore = q.state.availWrap;
    const id = q.add(bufs);
    t.true(id >= 0, `round ${round}: slots free`);
    // Added, not published: the head at the next used position reads as neither available nor
    // used, on laps with wrap counter 1 and 0 alike.
    t.is(q.pending, 0, `round ${round}: an unpublished head is not a used descriptor`);
    t.is(q.popUsed(), null);
    t.is(dev.popAvail(), null, `round ${round}: nor available before publish()`);
    q.publish();
    const c = dev.popAvail();
    t.truthy(c, `round ${round}: the device sees the chain`);
    t.deepEqual(c!.bufs, bufs);
    t.is(c!.id, id);
    // The device's expectation of the driver's wrap counter followed the driver's own.
    t.is(dev.availWrap, q.state.availWrap);
    if (q.state.availWrap !== wrapBefore) lenSeen++;
    dev.pushUsed(c!.id, 11, c!.slots);
    const u = q.popUsed();
    t.deepEqual({ ...u! }, { id, len: 11 });
    t.is(q.state.usedWrap, dev.usedWrap);
    t.is(q.state.nextUsed, dev.usedPos);
  }
  t.true(lenSeen >= 10, `the driver's wrap counter flipped ${lenSeen} times`);
  t.is(q.freeCount, 7);
});

test('out-of-order completion: ids are reused, never two in flight at once, slots accounted per buffer', (t) => {
  const { q, dev, bufBase } = setup(8);
  const inFlight = new Map<number, Chain>();
  let rng = 12345;
  const rand = (n: number): number => ((rng = (rng * 1103515245 + 12345) & 0x7fffffff) % n);
  for (let step = 0; step < 500; step++) {
    while (q.freeCount > 0 && rand(3) > 0) {
      const n = 1 + rand(Math.min(2, q.freeCount));
      const id = q.add(Array.from({ length: n }, (_, i) => ({ addr: bufBase + 16 * i, len: 8, write: true })));
      t.false(inFlight.has(id), `id ${id} handed out twice`);
      inFlight.set(id, { id, bufs: [], slots: n, indirect: false });
    }
    q.publish();
    const seen: Chain[] = [];
    for (let c = dev.popAvail(); c; c = dev.popAvail()) seen.push(c);
    // The device uses what it took in a shuffled order.
    seen.sort(() => rand(3) - 1);
    for (const c of seen) dev.pushUsed(c.id, 4, c.slots);
    for (let u = q.popUsed(); u; u = q.popUsed()) {
      t.true(inFlight.delete(u.id), `used id ${u.id} was in flight`);
    }
  }
  t.is(inFlight.size, 0);
  t.is(q.freeCount, 8);
});

test('IN_ORDER (packed): one used descriptor with the last id of a batch returns every buffer of it in order, and the ring skips all their slots', (t) => {
  const { q, dev, bufBase } = setup(16, { inOrder: true });
  for (let lap = 0; lap < 6; lap++) {
    const ids: number[] = [];
    let slots = 0;
    for (let i = 0; i < 5; i++) {
      const n = 1 + (i % 2);
      ids.push(q.add(Array.from({ length: n }, (_, k) => ({ addr: bufBase + 32 * k, len: 32, write: true }))));
      slots += n;
    }
    q.publish();
    for (let i = 0; i < 5; i++) t.is(dev.popAvail()!.id, ids[i]);
    // One used descriptor for the batch: the last buffer's id, then skip the whole batch.
    dev.pushUsed(ids[4], 20, slots);
    const got: [number, number][] = [];
    for (let u = q.popUsed(); u; u = q.popUsed()) got.push([u.id, u.len]);
    t.deepEqual(got, ids.map((id, i) => [id, i === 4 ? 20 : 0]), `lap ${lap}: every buffer of the batch, the last with the batch's len`);
    t.is(q.state.nextUsed, dev.usedPos, 'the driver skipped to where the device writes next');
    t.is(q.state.usedWrap, dev.usedWrap);
    t.is(q.freeCount, 16);
  }
  // An id that was never made available is a device bug.
  q.addBuf(bufBase, 8, true);
  q.publish();
  dev.popAvail();
  dev.pushUsed(9, 0, 1);
  t.throws(() => q.popUsed(), { instanceOf: DeviceBugError });
});

test('IN_ORDER (split): one used entry at the batch\'s first slot names its last head and completes every chain of it; used.idx counts them all; descriptors go out in ring order', (t) => {
  const mem = new SharedArrayBuffer(1 << 20);
  const size = 8;
  const l = DriverQueue.layout(0, size);
  const addrs = { size, desc: l.desc, avail: l.avail, used: l.used };
  const q = new DriverQueue(mem, addrs, { eventIdx: false, inOrder: true });
  const dv = new DataView(mem);
  let usedIdx = 0;
  let expectHead = 0;
  for (let lap = 0; lap < 10; lap++) {
    const heads: number[] = [];
    for (let i = 0; i < 3; i++) heads.push(q.add([{ addr: 0x40000, len: 8, write: false }, { addr: 0x40100, len: 64, write: true }]));
    q.publish();
    // In ring order: each chain starts where the previous one ended, wrapping at the end.
    for (const h of heads) {
      t.is(h, expectHead);
      const d0 = dv.getUint16(l.desc + 16 * h + 14, true);
      t.is(dv.getUint16(l.desc + 16 * h + 12, true), RING.DESC_F_NEXT);
      t.is(d0, (h + 1) % size, 'the chain continues at the next descriptor');
      expectHead = (expectHead + 2) % size;
    }
    // One used entry, at the batch's first slot, naming its last chain; used.idx moves by 3.
    dv.setUint32(l.used + 4 + 8 * (usedIdx % size), heads[2], true);
    dv.setUint32(l.used + 8 + 8 * (usedIdx % size), 60, true);
    usedIdx += 3;
    Atomics.store(new Uint16Array(mem, l.used, 2), 1, usedIdx & 0xffff);
    const got: [number, number][] = [];
    for (let u = q.popUsed(); u; u = q.popUsed()) got.push([u.id, u.len]);
    t.deepEqual(got, [[heads[0], 0], [heads[1], 0], [heads[2], 60]]);
    t.is(q.freeCount, size);
    t.is(q.pending, 0);
  }
  // A used entry naming a chain beyond what used.idx covers is a device bug.
  const h = [q.addBuf(0x40000, 8, true), q.addBuf(0x40000, 8, true)];
  q.publish();
  dv.setUint32(l.used + 4 + 8 * (usedIdx % size), h[1], true);
  dv.setUint32(l.used + 8 + 8 * (usedIdx % size), 0, true);
  Atomics.store(new Uint16Array(mem, l.used, 2), 1, (usedIdx + 1) & 0xffff);
  t.throws(() => q.popUsed(), { instanceOf: DeviceBugError, message: /covers only 1/ });
});

test('kicks: the device event area says enable, disable, or (EVENT_IDX) the position whose crossing needs a kick, across the wrap', (t) => {
  {
    const { q, dev, bufBase } = setup(8);
    dev.setDeviceEvent(PACKED.EVENT_ENABLE);
    q.addBuf(bufBase, 8, false);
    t.true(q.publish(), 'ENABLE: kick');
    dev.setDeviceEvent(PACKED.EVENT_DISABLE);
    q.addBuf(bufBase, 8, false);
    t.false(q.publish(), 'DISABLE: no kick');
    t.false(q.publish(), 'nothing new: no kick');
  }
  const { q, dev, bufBase } = setup(8, { eventIdx: true });
  const post = (n: number): boolean => {
    for (let i = 0; i < n; i++) q.addBuf(bufBase, 8, false);
    const k = q.publish();
    for (let c = dev.popAvail(); c; c = dev.popAvail()) dev.pushUsed(c.id, 0, c.slots);
    while (q.popUsed());
    return k;
  };
  // The device wants a kick when the driver makes position 5 (first lap, wrap 1) available.
  dev.setDeviceEvent(PACKED.EVENT_DESC, 5 | (1 << 15));
  t.false(post(3), 'positions 0..2: before the event');
  t.false(post(2), 'positions 3..4: still before');
  t.true(post(1), 'position 5: the event is crossed');
  t.false(post(1), 'position 6: past it, no second kick');
  // Now the event lies on the next lap (wrap 0), position 1; the driver is at 7 on lap 1.
  dev.setDeviceEvent(PACKED.EVENT_DESC, 1 | (0 << 15));
  t.false(post(2), 'positions 7, 0 (wrapping): not yet');
  t.is(q.state.availWrap, 0);
  t.true(post(2), 'positions 1, 2: crossed on the new lap');
  // An event the driver has already passed on this lap (position 0, wrap 0) is not crossed again.
  dev.setDeviceEvent(PACKED.EVENT_DESC, 0 | (0 << 15));
  t.false(post(1));
  // The event at position 7 of this lap (wrap 0); the batch that crosses it wraps, so at
  // publish() the driver is on the next lap and the event lies on the lap before.
  t.is(q.state.nextAvail, 4);
  dev.setDeviceEvent(PACKED.EVENT_DESC, 7 | (0 << 15));
  t.false(post(3), 'positions 4..6 do not reach the event at 7');
  t.true(post(2), 'positions 7, 0: the event at 7 of the previous lap is crossed');
  t.is(q.state.availWrap, 1);
});

test('interrupts: the driver event area says DISABLE, ENABLE, or with EVENT_IDX DESC at the next used position; re-enabling reports what is already used', (t) => {
  {
    const { q, dev, bufBase } = setup(8);
    q.disableInterrupts();
    t.is(dev.driverEvent().flags, PACKED.EVENT_DISABLE);
    t.false(q.enableInterrupts(), 'nothing used: sleep is safe');
    t.is(dev.driverEvent().flags, PACKED.EVENT_ENABLE);
    q.addBuf(bufBase, 8, true);
    q.publish();
    const c = dev.popAvail()!;
    dev.pushUsed(c.id, 8, c.slots);
    q.disableInterrupts();
    t.true(q.enableInterrupts(), 'a used descriptor published while interrupts were off: poll again');
  }
  const { q, dev, bufBase } = setup(8, { eventIdx: true });
  for (let i = 0; i < 6; i++) q.addBuf(bufBase, 8, true);
  q.publish();
  const cs: Chain[] = [];
  for (let c = dev.popAvail(); c; c = dev.popAvail()) cs.push(c);
  dev.pushUsed(cs[0].id, 8, 1);
  dev.pushUsed(cs[1].id, 8, 1);
  q.popUsed();
  q.popUsed();
  q.disableInterrupts();
  t.is(dev.driverEvent().flags, PACKED.EVENT_DISABLE);
  t.false(q.enableInterrupts());
  t.deepEqual(dev.driverEvent(), { flags: PACKED.EVENT_DESC, off: 2, wrap: 1 }, 'an interrupt at the next used position');
  // Delayed: 4 slots in flight, so about 3/4 of them ahead: position 2 + 3 = 5.
  t.false(q.enableInterruptsDelayed());
  t.deepEqual(dev.driverEvent(), { flags: PACKED.EVENT_DESC, off: 5, wrap: 1 });
  // Popping moves the event position along while interrupts are on.
  dev.pushUsed(cs[2].id, 8, 1);
  q.popUsed();
  t.deepEqual(dev.driverEvent(), { flags: PACKED.EVENT_DESC, off: 3, wrap: 1 });
  // Past the ring end the event position carries the next lap's wrap bit.
  for (const c of cs.slice(3)) dev.pushUsed(c.id, 8, 1);
  while (q.popUsed());
  for (let i = 0; i < 4; i++) q.addBuf(bufBase, 8, true);
  q.publish();
  t.false(q.enableInterruptsDelayed());
  t.deepEqual(dev.driverEvent(), { flags: PACKED.EVENT_DESC, off: 1, wrap: 0 }, '6 + 3 = 9 wraps to position 1 of the next lap');
});

test('addIndirect: one ring slot with INDIRECT; the table in the packed format without NEXT; its writable bytes bound the used len', (t) => {
  const { q, dev, bufBase } = setup(4);
  const bufs: Buf[] = [
    { addr: bufBase, len: 12, write: false },
    { addr: bufBase + 0x100, len: 30, write: true },
    { addr: bufBase + 0x200, len: 40, write: true },
  ];
  const id = q.addIndirect(bufs, 0x8000);
  t.is(q.freeCount, 3);
  q.publish();
  t.is(dev.desc(0).flags, F_AVAIL | RING.DESC_F_INDIRECT);
  t.is(dev.desc(0).len, 48);
  const c = dev.popAvail()!;
  t.true(c.indirect);
  t.deepEqual(c.bufs, bufs);
  dev.pushUsed(id, 71, 1);
  t.throws(() => q.popUsed(), { instanceOf: DeviceBugError, message: /71.*70 writable/ });
  t.throws(() => q.addIndirect(bufs, 0x8008), { instanceOf: RangeError, message: /aligned/ });
});

test('a device returning an id not in flight or a len over the writable bytes is reported', (t) => {
  const { q, dev, bufBase } = setup(4);
  const id = q.addBuf(bufBase, 64, true);
  q.publish();
  dev.popAvail();
  dev.pushUsed(id + 1, 0, 1);
  t.throws(() => q.popUsed(), { instanceOf: DeviceBugError, message: /not a buffer the device owns/ });
  const s2 = setup(4);
  s2.q.addBuf(s2.bufBase, 64, true);
  s2.q.publish();
  s2.dev.pushUsed(0, 65, 1);
  t.throws(() => s2.q.popUsed(), { instanceOf: DeviceBugError });
});

test('add returns -1 when the ring slots run out; arguments are checked; reset starts over with both wrap counters at 1', (t) => {
  const { q, dev, bufBase } = setup(4);
  t.true(q.add([{ addr: bufBase, len: 8, write: false }, { addr: bufBase, len: 8, write: true }]) >= 0);
  t.true(q.add([{ addr: bufBase, len: 8, write: false }, { addr: bufBase, len: 8, write: true }]) >= 0);
  t.is(q.addBuf(bufBase, 8, false), -1);
  t.is(q.freeCount, 0);
  t.throws(() => q.add([{ addr: bufBase, len: 8, write: true }, { addr: bufBase, len: 8, write: false }]), { message: /readable after a device-writable/ });
  t.throws(() => q.addBuf(1 << 20, 8, false), { message: /not guest memory/ });
  t.throws(() => q.addBuf(bufBase, 0, false), { instanceOf: RangeError });
  const mem = new SharedArrayBuffer(4096);
  t.throws(() => new PackedDriverQueue(mem, { size: 4, desc: 8, avail: 128, used: 132 }, { eventIdx: false }), { message: /aligned/ });
  t.throws(() => new PackedDriverQueue(mem, { size: 4, desc: 0, avail: 32, used: 132 }, { eventIdx: false }), { message: /overlaps/ });
  t.throws(() => new PackedDriverQueue(mem, { size: 4, desc: 0, avail: 64, used: 4096 }, { eventIdx: false }), { message: /not inside one region/ });
  q.publish();
  dev.popAvail();
  q.reset();
  t.deepEqual(q.state, { nextAvail: 0, availWrap: 1, nextUsed: 0, usedWrap: 1 });
  t.is(q.freeCount, 4);
  t.is(dev.desc(0).flags, 0, 'the ring is zeroed');
});

test('openVirtqueue picks the layout; NetQueuePair drives packed rings: TX frames behind their header, RX buffers re-posted', (t) => {
  const mem = new SharedArrayBuffer(1 << 20);
  t.true(openVirtqueue(mem, { size: 4, ...PackedDriverQueue.layout(0, 4) }, { eventIdx: false, packed: true }) instanceof PackedDriverQueue);
  t.true(openVirtqueue(mem, { size: 4, ...DriverQueue.layout(0, 4) }, { eventIdx: false }) instanceof DriverQueue);
  const rl = PackedDriverQueue.layout(0x1000, 8);
  const tl = PackedDriverQueue.layout(0x2000, 8);
  const rx = { size: 8, desc: rl.desc, avail: rl.avail, used: rl.used, kickFd: -1, callFd: -1 };
  const tx = { size: 8, desc: tl.desc, avail: tl.avail, used: tl.used, kickFd: -1, callFd: -1 };
  const p = new NetQueuePair({
    memory: mem,
    rx,
    tx,
    rxBuffers: { base: 0x10000, count: 8, size: 2048 },
    txBuffers: { base: 0x20000, count: 8, size: 2048 },
    hdrLen: 12,
    mergeable: true,
    eventIdx: true,
    packed: true,
  });
  const rdev = new SimPackedDevice(mem, rx);
  const tdev = new SimPackedDevice(mem, tx);
  // Nothing kicks here: the device event areas say DISABLE.
  rdev.setDeviceEvent(PACKED.EVENT_DISABLE);
  tdev.setDeviceEvent(PACKED.EVENT_DISABLE);
  p.start();
  const posted: Chain[] = [];
  for (let c = rdev.popAvail(); c; c = rdev.popAvail()) posted.push(c);
  t.is(posted.length, 8, 'every RX buffer posted');
  t.true(p.send(new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15])));
  p.flush();
  const c = tdev.popAvail()!;
  t.is(c.bufs[0].len, 12 + 15);
  t.deepEqual([...new Uint8Array(mem, c.bufs[0].addr + 12, 15)], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
  tdev.pushUsed(c.id, 0, c.slots);
  t.is(p.reclaim(), 1);
  // A 60-byte frame into the first RX buffer, num_buffers 1.
  const b = posted[0].bufs[0];
  const u8 = new Uint8Array(mem);
  u8.fill(0, b.addr, b.addr + 12);
  u8[b.addr + 10] = 1;
  u8.fill(0xab, b.addr + 12, b.addr + 72);
  rdev.pushUsed(posted[0].id, 72, 1);
  const f = p.receive()!;
  t.is(f.len, 60);
  t.true(p.frameBytes(f).every((x) => x === 0xab));
  p.flush();
  t.is(rdev.popAvail()!.bufs[0].addr, b.addr, 'the buffer went back on the ring');
});
