// The public driver (`vhost-tap/driver`) on guest memory made of several
// regions: translation, copies across adjacent regions, holes refused, ring
// parts each in one region, and a queue pair's RX/TX against a device
// simulated here through DriverMemory alone (independent of the driver's views).

import test from 'ava';

import { bits, HDR, RING, STATUS, VirtioNetDevice, type WasmMemoryLike } from '../backend';
import { DriverMemory, driverMemory, DriverQueue, GuestAddressError, GuestAllocator, negotiate, NetQueuePair, NO_OFFLOAD, readNetHdr, setUpQueuePair, writeNetHdr, type Buf, type NetHdr } from '../driver';
import { withNetns } from '../host/netns';

const MiB = 1 << 20;

/** Two adjacent regions at 0 and 1 MiB, a hole, and a third region at 4 MiB (given out of order). */
function threeRegions(): DriverMemory {
  return new DriverMemory([
    { guestAddr: 4 * MiB, buffer: new SharedArrayBuffer(MiB) },
    { guestAddr: 0, buffer: new SharedArrayBuffer(MiB) },
    { guestAddr: MiB, buffer: new SharedArrayBuffer(MiB) },
  ]);
}

test('DriverMemory: regions sorted; overlap, non-shared buffers and bad addresses refused', (t) => {
  const m = threeRegions();
  t.deepEqual(m.regions.map((r) => [r.guestAddr, r.size, r.end]), [[0, MiB, MiB], [MiB, MiB, 2 * MiB], [4 * MiB, MiB, 5 * MiB]]);
  t.is(m.totalSize, 3 * MiB);
  t.throws(() => new DriverMemory([{ guestAddr: 0, buffer: new SharedArrayBuffer(8192) }, { guestAddr: 4096, buffer: new SharedArrayBuffer(4096) }]), { message: /overlap/ });
  t.throws(() => new DriverMemory([{ guestAddr: 0, buffer: new ArrayBuffer(8) as unknown as SharedArrayBuffer }]), { instanceOf: TypeError, message: /SharedArrayBuffer/ });
  t.throws(() => new DriverMemory([{ guestAddr: -1, buffer: new SharedArrayBuffer(8) }]), { message: /guestAddr/ });
  t.throws(() => new DriverMemory([]), { instanceOf: TypeError });
  const one = new DriverMemory(new SharedArrayBuffer(4096));
  t.deepEqual(one.regions.map((r) => r.guestAddr), [0]);
  t.is(driverMemory(one), one, 'a DriverMemory is used as is');
  // What a Worker receives after structured cloning: rebuilt from its regions.
  const cloned = structuredClone(m) as unknown as { regions: { guestAddr: number; buffer: SharedArrayBuffer }[] };
  const again = driverMemory(cloned);
  t.deepEqual(again.regions.map((r) => r.guestAddr), [0, MiB, 4 * MiB]);
  again.write(MiB + 5, new Uint8Array([42]));
  t.is(m.view(MiB + 5, 1)[0], 42, 'same shared memory');
});

test('DriverMemory: translation, holes, views inside one region, copies across adjacent regions', (t) => {
  const m = threeRegions();
  t.is(m.regionIndex(0), 0);
  t.is(m.regionIndex(MiB - 1), 0);
  t.is(m.regionIndex(MiB), 1);
  t.is(m.regionIndex(2 * MiB), -1, 'the hole');
  t.is(m.regionIndex(4 * MiB + 10), 2);
  t.is(m.regionIndex(5 * MiB), -1, 'past the end');
  t.true(m.contains(MiB - 10, 20), 'crosses adjacent regions');
  t.false(m.contains(2 * MiB - 10, 20), 'runs into the hole');
  t.false(m.contains(5 * MiB - 1, 2));
  t.true(m.contains(0, 2 * MiB));
  t.is(m.regionOf(MiB - 10, 20), undefined);
  t.is(m.regionOf(MiB, 20)?.guestAddr, MiB);

  const v = m.view(4 * MiB + 100, 4);
  v.set([1, 2, 3, 4]);
  t.deepEqual([...m.read(4 * MiB + 100, new Uint8Array(4))], [1, 2, 3, 4]);
  t.throws(() => m.view(MiB - 2, 4), { instanceOf: GuestAddressError, message: /not inside one memory region/ });

  const pattern = Uint8Array.from({ length: 300 }, (_, i) => i & 255);
  m.write(MiB - 100, pattern);
  t.deepEqual([...m.regions[0].u8.subarray(MiB - 100)], [...pattern.subarray(0, 100)], 'first 100 bytes in region 0');
  t.deepEqual([...m.regions[1].u8.subarray(0, 200)], [...pattern.subarray(100)], 'the rest in region 1');
  t.deepEqual([...m.read(MiB - 100, new Uint8Array(300))], [...pattern]);
  m.setUint16(MiB - 1, 0xbeef);
  t.is(m.getUint16(MiB - 1), 0xbeef, 'a u16 straddling two regions');
  t.is(m.regions[0].u8[MiB - 1], 0xef);
  t.is(m.regions[1].u8[0], 0xbe);
  m.fill(MiB - 4, 8, 0xaa);
  t.deepEqual([...m.read(MiB - 4, new Uint8Array(8))], [0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa]);
  t.throws(() => m.write(2 * MiB - 2, new Uint8Array(4)), { instanceOf: GuestAddressError, message: /hole/ });
  t.throws(() => m.read(3 * MiB, new Uint8Array(1)), { instanceOf: GuestAddressError, message: /not in guest memory/ });
  t.throws(() => m.read(-1, new Uint8Array(1)), { instanceOf: GuestAddressError });
});

/** The device side of one split ring, reading and writing guest memory only through DriverMemory (little-endian, byte by byte). */
class SimDevice {
  lastAvail = 0;
  usedIdx = 0;
  constructor(
    readonly m: DriverMemory,
    readonly q: { size: number; desc: number; avail: number; used: number },
  ) {}

  private u32(a: number): number {
    const b = this.m.read(a, new Uint8Array(4));
    return (b[0] | (b[1] << 8) | (b[2] << 16) | (b[3] << 24)) >>> 0;
  }

  popAvail(): { head: number; bufs: Buf[] } | null {
    if (this.m.getUint16(this.q.avail + 2) === this.lastAvail) return null;
    const head = this.m.getUint16(this.q.avail + 4 + 2 * (this.lastAvail % this.q.size));
    this.lastAvail = (this.lastAvail + 1) & 0xffff;
    const bufs: Buf[] = [];
    for (let d = head, n = 0; n <= this.q.size; n++) {
      const o = this.q.desc + 16 * d;
      const flags = this.m.getUint16(o + 12);
      bufs.push({ addr: this.u32(o) + this.u32(o + 4) * 2 ** 32, len: this.u32(o + 8), write: (flags & RING.DESC_F_WRITE) !== 0 });
      if (!(flags & RING.DESC_F_NEXT)) break;
      d = this.m.getUint16(o + 14);
    }
    return { head, bufs };
  }

  pushUsed(id: number, len: number): void {
    const slot = this.usedIdx % this.q.size;
    const e = new Uint8Array(8);
    new DataView(e.buffer).setUint32(0, id, true);
    new DataView(e.buffer).setUint32(4, len, true);
    this.m.write(this.q.used + 4 + 8 * slot, e);
    this.usedIdx = (this.usedIdx + 1) & 0xffff;
    this.m.setUint16(this.q.used + 2, this.usedIdx);
  }
}

test('DriverQueue: ring parts in different regions; a part across regions refused; buffers may cross adjacent regions', (t) => {
  const m = threeRegions();
  const size = 16;
  // desc in region 0, avail in region 1, used in region 2: each part inside one region.
  const q = { size, desc: 0x1000, avail: MiB + 0x2000, used: 4 * MiB + 0x3000 };
  const drv = new DriverQueue(m, q, { eventIdx: false });
  const dev = new SimDevice(m, q);
  const bufs: Buf[] = [
    { addr: MiB - 8, len: 16, write: false }, // crosses regions 0 and 1: allowed
    { addr: 4 * MiB + 0x10000, len: 100, write: true },
  ];
  const head = drv.add(bufs);
  t.true(drv.publish());
  const c = dev.popAvail()!;
  t.is(c.head, head);
  t.deepEqual(c.bufs, bufs);
  dev.pushUsed(head, 60);
  t.deepEqual({ ...drv.popUsed()! }, { id: head, len: 60 });

  t.throws(() => drv.add([{ addr: 2 * MiB - 8, len: 16, write: false }]), { instanceOf: RangeError, message: /not guest memory/ }, 'runs into the hole');
  t.throws(() => drv.addBuf(5 * MiB, 1, true), { message: /not guest memory/ });
  t.throws(() => drv.addIndirect(bufs, MiB - 16), { message: /not inside one region/ }, 'an indirect table across regions');
  t.throws(() => new DriverQueue(m, { size, desc: MiB - 64, avail: MiB + 0x4000, used: MiB + 0x5000 }, { eventIdx: false }), {
    instanceOf: RangeError,
    message: /desc \[\d+, \d+\) is not inside one region/,
  });
  t.throws(() => new DriverQueue(m, { size, desc: 0, avail: 2 * MiB - 10, used: 0x4000 }, { eventIdx: false }), { message: /avail .* not inside one region/ });
  t.throws(() => new DriverQueue(m, { size, desc: 0, avail: 0x2000, used: 3 * MiB }, { eventIdx: false }), { message: /used .* not inside one region/ });
});

test('GuestAllocator: every ring part and buffer area inside one region, skipping what does not fit', (t) => {
  const m = new DriverMemory([
    { guestAddr: 0, buffer: new SharedArrayBuffer(64 * 1024) },
    { guestAddr: 16 * MiB, buffer: new SharedArrayBuffer(4 * MiB) },
  ]);
  const a = new GuestAllocator(m);
  const r = a.ring(256);
  for (const [addr, len] of [[r.desc, 16 * 256], [r.avail, 6 + 2 * 256], [r.used, 6 + 8 * 256]]) t.truthy(m.regionOf(addr, len));
  const big = a.buffers(256, 2048); // 512 KiB: does not fit in the 64 KiB region
  t.is(m.regionOf(big.base, big.count * big.size)?.guestAddr, 16 * MiB);
  t.true(big.base % 64 === 0);
  t.throws(() => a.alloc(8 * MiB), { instanceOf: GuestAddressError, message: /no room/ });
});

/** A queue pair over three regions with a simulated device on both rings. */
function pairRig(mergeable: boolean, hdrLen = 12) {
  const m = threeRegions();
  const a = new GuestAllocator(m, MiB - 8192); // the rings at the end of region 0, the buffers in region 2
  const rx = a.ring(8);
  const tx = a.ring(8);
  const rxBuffers = { base: 4 * MiB, count: 8, size: mergeable ? 128 : 2048 };
  const txBuffers = { base: 4 * MiB + 0x10000, count: 4, size: 256 };
  const pair = new NetQueuePair({ memory: m, rx: { ...rx, kickFd: -1, callFd: -1 }, tx: { ...tx, kickFd: -1, callFd: -1 }, rxBuffers, txBuffers, hdrLen, mergeable, eventIdx: false });
  return { m, pair, rxDev: new SimDevice(m, rx), txDev: new SimDevice(m, tx), hdrLen };
}

test('NetQueuePair TX: the header in front of each frame, slots come back, a full ring says so', (t) => {
  const { m, pair, txDev, hdrLen } = pairRig(true);
  const frame = Uint8Array.from({ length: 60 }, (_, i) => i);
  const hdr: NetHdr = { flags: HDR.F_NEEDS_CSUM, gsoType: HDR.GSO_TCPV4, hdrLen: 54, gsoSize: 1448, csumStart: 34, csumOffset: 16 };
  t.true(pair.send(frame, hdr));
  t.true(pair.send(frame));
  // Publishing without a kick fd: no kick is due while the device sets NO_NOTIFY, so flush() stays quiet.
  m.setUint16(txDev.q.used, RING.USED_F_NO_NOTIFY);
  pair.flush();
  const first = txDev.popAvail()!;
  t.is(first.bufs.length, 1);
  t.false(first.bufs[0].write);
  t.is(first.bufs[0].len, hdrLen + 60);
  const bytes = m.read(first.bufs[0].addr, new Uint8Array(hdrLen + 60));
  const dv = new DataView(bytes.buffer);
  t.deepEqual([bytes[0], bytes[1], dv.getUint16(2, true), dv.getUint16(4, true), dv.getUint16(6, true), dv.getUint16(8, true), dv.getUint16(10, true)], [1, HDR.GSO_TCPV4, 54, 1448, 34, 16, 0]);
  t.deepEqual([...bytes.subarray(hdrLen)], [...frame]);
  const second = txDev.popAvail()!;
  t.deepEqual([...m.read(second.bufs[0].addr, new Uint8Array(hdrLen))], new Array(hdrLen).fill(0), 'NO_OFFLOAD header');
  t.true(pair.send(frame));
  t.true(pair.send(frame));
  t.false(pair.send(frame), 'four slots, all in flight');
  t.is(pair.stats.txRingFull, 1);
  txDev.pushUsed(first.head, 0);
  t.true(pair.send(frame), 'reserve() reclaimed the slot the device returned');
  t.is(pair.stats.txFrames, 5);
  t.false(pair.send(new Uint8Array(256)), 'a frame larger than a slot');
});

test('NetQueuePair RX: mergeable frames over num_buffers buffers, header fields, buffers re-posted', (t) => {
  const { m, pair, rxDev, hdrLen } = pairRig(true);
  m.setUint16(rxDev.q.used, RING.USED_F_NO_NOTIFY);
  pair.start();
  const posted = [];
  for (let c = rxDev.popAvail(); c; c = rxDev.popAvail()) posted.push(c);
  t.is(posted.length, 8, 'every RX buffer posted');
  t.true(posted.every((c) => c.bufs.length === 1 && c.bufs[0].write && c.bufs[0].len === 128));
  // A 200-byte frame in two 128-byte buffers: header (num_buffers = 2) + 116 bytes, then 84 bytes.
  const frame = Uint8Array.from({ length: 200 }, (_, i) => (i * 7) & 255);
  const h = new Uint8Array(hdrLen);
  h[0] = HDR.F_DATA_VALID;
  h[1] = HDR.GSO_TCPV6;
  new DataView(h.buffer).setUint16(4, 1440, true);
  new DataView(h.buffer).setUint16(10, 2, true);
  m.write(posted[0].bufs[0].addr, h);
  m.write(posted[0].bufs[0].addr + hdrLen, frame.subarray(0, 128 - hdrLen));
  m.write(posted[1].bufs[0].addr, frame.subarray(128 - hdrLen));
  rxDev.pushUsed(posted[0].head, 128);
  rxDev.pushUsed(posted[1].head, 200 - (128 - hdrLen));
  const f = pair.receive()!;
  t.truthy(f);
  t.is(f.numBuffers, 2);
  t.is(f.parts, 2);
  t.is(f.len, 200);
  t.is(f.hdr.flags, HDR.F_DATA_VALID);
  t.is(f.hdr.gsoType, HDR.GSO_TCPV6);
  t.is(f.hdr.gsoSize, 1440);
  t.deepEqual([...pair.frameBytes(f)], [...frame]);
  t.is(pair.receive(), null);
  pair.flush();
  const reposted = [rxDev.popAvail(), rxDev.popAvail()];
  t.true(reposted.every((c) => c !== null), 'both buffers back on the ring after flush()');
  t.is(rxDev.popAvail(), null);
  // A used chain shorter than a header is a device bug: counted and skipped.
  rxDev.pushUsed(posted[2].head, 3);
  t.is(pair.receive(), null);
  t.is(pair.stats.rxBadHeader, 1);
  t.is(pair.stats.rxFrames, 1);
});

test('NetQueuePair RX with the 20-byte header (HASH_REPORT): hash_value and hash_report read from it; 0 with 12 bytes', (t) => {
  for (const hdrLen of [20, 12]) {
    const { m, pair, rxDev } = pairRig(false, hdrLen);
    m.setUint16(rxDev.q.used, RING.USED_F_NO_NOTIFY);
    pair.start();
    const c = rxDev.popAvail()!;
    const h = new Uint8Array(20);
    const d = new DataView(h.buffer);
    d.setUint16(10, 1, true);
    d.setUint32(12, 0x51ccc178, true);
    d.setUint16(16, 2, true); // VIRTIO_NET_HASH_REPORT_TCPv4
    m.write(c.bufs[0].addr, h.subarray(0, hdrLen));
    m.write(c.bufs[0].addr + hdrLen, new Uint8Array(60));
    rxDev.pushUsed(c.head, hdrLen + 60);
    const f = pair.receive()!;
    t.is(f.len, 60);
    t.is(f.hashValue, hdrLen === 20 ? 0x51ccc178 : 0);
    t.is(f.hashReport, hdrLen === 20 ? 2 : 0);
  }
});

test('NetQueuePair refuses buffer areas that leave one region and a bad header length', (t) => {
  const m = threeRegions();
  const a = new GuestAllocator(m);
  const base = { memory: m, rx: { ...a.ring(8), kickFd: -1, callFd: -1 }, tx: { ...a.ring(8), kickFd: -1, callFd: -1 }, hdrLen: 12, mergeable: true, eventIdx: false };
  t.throws(() => new NetQueuePair({ ...base, rxBuffers: { base: MiB - 1024, count: 8, size: 256 }, txBuffers: { base: 0x10000, count: 4, size: 256 } }), { message: /rxBuffers .* not inside one region/ });
  t.throws(() => new NetQueuePair({ ...base, hdrLen: 11, rxBuffers: { base: 0x20000, count: 8, size: 256 }, txBuffers: { base: 0x10000, count: 4, size: 256 } }), { message: /hdrLen/ });
});

/** Node's types (lib ES2022, no DOM) do not declare WebAssembly. */
const WasmMemory = (globalThis as unknown as { WebAssembly: { Memory: new (d: { initial: number; maximum?: number; shared?: boolean }) => WasmMemoryLike } }).WebAssembly.Memory;

test('DriverMemory takes what the device takes: a shared WebAssembly.Memory, [{ guestAddr, memory }], [{ guestAddr, buffer }]', (t) => {
  const wasm = new WasmMemory({ initial: 2, maximum: 4, shared: true });
  t.is(new DriverMemory(wasm).totalSize, 2 * 65536);
  const sab = new SharedArrayBuffer(4096);
  t.deepEqual(new DriverMemory([{ guestAddr: 8192, memory: sab }]).regions.map((r) => [r.guestAddr, r.size]), [[8192, 4096]]);
  t.deepEqual(new DriverMemory([{ guestAddr: 8192, buffer: sab }]).regions.map((r) => [r.guestAddr, r.size]), [[8192, 4096]]);
  t.throws(() => new DriverMemory(new WasmMemory({ initial: 1 })), { instanceOf: TypeError, message: /shared WebAssembly\.Memory/ });
});

test('a NetQueuePair on a real device with regions: rings below 4 GiB, buffers above a hole, the kernel answers ARP', async (t) => {
  await withNetns(async (ns) => {
    const memory = [
      { guestAddr: 0, memory: new SharedArrayBuffer(64 * 1024) },
      { guestAddr: 2 ** 32, memory: new SharedArrayBuffer(4 * MiB) },
    ];
    const tap = ns.ifname();
    const dev = new VirtioNetDevice({ memory, tap, netns: ns.name });
    ns.defer(() => void dev.close());
    negotiate(dev, bits('VERSION_1', 'MAC', 'MRG_RXBUF', 'RING_EVENT_IDX'));
    const alloc = new GuestAllocator(memory);
    const setup = setUpQueuePair(dev, 0, alloc, { queueSize: 64 });
    t.true(setup.rx.desc < 64 * 1024 && setup.tx.used < 64 * 1024, 'rings in the low region');
    t.true(setup.rxBuffers.base >= 2 ** 32 && setup.txBuffers.base >= 2 ** 32, 'buffers above the hole');
    const pair = new NetQueuePair(setup);
    dev.status |= STATUS.DRIVER_OK;
    pair.start();
    ns.ip('addr', 'add', '10.97.0.1/24', 'dev', tap);
    const mac = new Uint8Array(dev.config.buffer, 0, 6);
    const req = new Uint8Array(42);
    req.fill(0xff, 0, 6);
    req.set(mac, 6);
    req.set([0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1], 12);
    req.set(mac, 22);
    req.set([10, 97, 0, 2], 28);
    req.set([10, 97, 0, 1], 38);
    t.true(pair.send(req));
    pair.flush();
    let reply: Uint8Array | undefined;
    for (const end = Date.now() + 5000; !reply && Date.now() < end; pair.wait(50)) {
      for (let f = pair.receive(); f; f = pair.receive()) {
        const b = pair.frameBytes(f, new Uint8Array(f.len));
        if (b[12] === 0x08 && b[13] === 0x06 && b[21] === 2) reply = b;
      }
    }
    t.truthy(reply, 'ARP reply received');
    t.deepEqual([...reply!.subarray(28, 32)], [10, 97, 0, 1]);
    t.deepEqual([...reply!.subarray(0, 6)], [...mac], 'addressed to the guest');
    t.is(pair.stats.txFrames, 1);
    t.is(dev.stats().totals.drops, 0);
  });
});

test('writeNetHdr / readNetHdr: the 24-byte header carries outer_th_offset and inner_nh_offset at 20 and 22 (UDP tunnel GSO); shorter ones do not', (t) => {
  const u8 = new Uint8Array(64).fill(0xee);
  const h: NetHdr = { flags: HDR.F_NEEDS_CSUM | HDR.F_UDP_TUNNEL_CSUM, gsoType: HDR.GSO_TCPV4 | HDR.GSO_UDP_TUNNEL_IPV4, hdrLen: 104, gsoSize: 1400, csumStart: 84, csumOffset: 16, outerTh: 34, innerNh: 64 };
  writeNetHdr(u8, 8, h, 24);
  t.deepEqual([...u8.subarray(8 + 20, 8 + 24)], [34, 0, 64, 0], 'little-endian at 20 and 22');
  t.deepEqual([...u8.subarray(8 + 10, 8 + 20)], new Array(10).fill(0), 'num_buffers and the hash fields zero');
  t.is(u8[8 + 24], 0xee, 'nothing past the header');
  const back = readNetHdr(u8, 8, { ...NO_OFFLOAD }, 24);
  t.deepEqual(back, h);
  t.is(readNetHdr(u8, 8, { ...NO_OFFLOAD }).outerTh, undefined, 'a 12-byte read has no tunnel fields');
  const m = threeRegions();
  const a = new GuestAllocator(m);
  const rxBuffers = { base: 0x20000, count: 8, size: 256 }, txBuffers = { base: 0x10000, count: 4, size: 256 };
  const n = new NetQueuePair({ memory: m, rx: { ...a.ring(8), kickFd: -1, callFd: -1 }, tx: { ...a.ring(8), kickFd: -1, callFd: -1 }, hdrLen: 24, mergeable: true, eventIdx: false, rxBuffers, txBuffers });
  t.is(n.hdrLen, 24);
});
