// Guest memory as a region table, on real TAPs in throw-away namespaces:
// frames and RX chains in regions below and above a hole at 4 GiB and across
// the boundary of two adjacent regions, and a buffer touching the hole, on
// split and packed rings; memory
// replaced (a shared WebAssembly.Memory that grows) under traffic with every
// frame accounted for; and the control queue on memory of 3 GiB and against a
// pathological chain while the JS thread keeps running timers.

import test from 'ava';
import { bits, CTRL, InvalidArgumentError, STATUS, VirtioNetDevice, type VirtioNetError } from '../backend';
import { ControlDriver } from '../driver/control';
import { DriverQueue as SimQueue } from '../driver/virtqueue';
import { markerOf, rawSendScript, testFrame } from './helpers/mini-guest';
import { type Netns, withNetns } from '../host/netns';
import { captureFrames, RegionMem } from './helpers/regions';
import { DESC_F_NEXT, DESC_F_WRITE, DriverQueue, GuestMem, makeQueue, RING_LAYOUTS, type RingLayout, type RingQueue } from './helpers/rings';

const MiB = 1 << 20;
const GiB = 1 << 30;
const HDR = 12;
const ACK = STATUS.ACKNOWLEDGE;
const DRIVER = STATUS.DRIVER;
const FEATURES_OK = STATUS.FEATURES_OK;
const DRIVER_OK = STATUS.DRIVER_OK;

/** No IPv6 autoconfiguration traffic from the namespace into the guest: each test counts frames exactly. */
function quietNamespace(ns: Netns): void {
  ns.exec('sysctl', ['-qw', 'net.ipv6.conf.default.disable_ipv6=1']);
  ns.exec('sysctl', ['-qw', 'net.ipv6.conf.all.disable_ipv6=1']);
}

function handshake(dev: VirtioNetDevice, features: bigint): void {
  dev.status = ACK;
  dev.status = ACK | DRIVER;
  dev.driverFeatures = dev.deviceFeatures & features;
  dev.status = ACK | DRIVER | FEATURES_OK;
  if (!(dev.status & FEATURES_OK)) throw new Error(`FEATURES_OK refused: ${dev.featuresRefusal}`);
}

function guestMac(dev: VirtioNetDevice): string {
  return [...new Uint8Array(dev.config.buffer, 0, 6)].map((b) => b.toString(16).padStart(2, '0')).join(':');
}

async function until(cond: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 5));
  }
  return true;
}

function linkStats(ns: Netns, ifname: string): { rx: { packets: number; dropped: number }; tx: { packets: number; dropped: number } } {
  const [l] = ns.ipJson<{ stats64: { rx: { packets: number; dropped: number }; tx: { packets: number; dropped: number } } }[]>('-s', 'link', 'show', 'dev', ifname);
  return l.stats64;
}

/** Regions: [0, 8 MiB) and [8 MiB, 12 MiB) adjacent, a hole, [4 GiB, 4 GiB + 4 MiB). Rings live in the first. */
function threeRegions(): RegionMem {
  return new RegionMem([
    { guestAddr: 0, size: 8 * MiB },
    { guestAddr: 8 * MiB, size: 4 * MiB },
    { guestAddr: 4 * GiB, size: 4 * MiB },
  ]);
}

function up(ns: Netns, rm: RegionMem, layout: RingLayout): { dev: VirtioNetDevice; rx: RingQueue; tx: RingQueue; tap: string; broken: VirtioNetError[] } {
  quietNamespace(ns);
  const tap = ns.ifname();
  const dev = new VirtioNetDevice({ memory: rm.option(), tap, netns: ns.name });
  ns.defer(() => void dev.close());
  const broken: VirtioNetError[] = [];
  dev.on('needs-reset', (e) => broken.push(e));
  handshake(dev, bits('VERSION_1', 'MRG_RXBUF') | (layout === 'packed' ? bits('RING_PACKED') : 0n));
  if (layout === 'packed' && !(dev.driverFeatures & bits('RING_PACKED'))) throw new Error('the device did not take RING_PACKED');
  // The rings in region 0, laid out by the test's raw driver (which writes any address).
  const low = new GuestMem(8 * MiB, 0, rm.regions[0].buffer);
  const rx = makeQueue(layout, low, 64, 0x10000);
  const tx = makeQueue(layout, low, 64, 0x20000);
  const addrs = (q: RingQueue) => ({ size: q.layout.size, desc: q.layout.desc, avail: q.layout.avail, used: q.layout.used });
  dev.setQueue(0, addrs(rx));
  dev.setQueue(1, addrs(tx));
  dev.status |= DRIVER_OK;
  return { dev, rx, tx, tap, broken };
}

for (const layout of RING_LAYOUTS) {
test(`${layout}: regions: TX frames from below and above a 4 GiB hole and across an adjacent-region boundary reach the TAP whole and in order`, (t) =>
  withNetns(async (ns) => {
    const rm = threeRegions();
    const { dev, tx, tap, broken } = up(ns, rm, layout);
    const frames = [1, 2, 3, 4].map((m) => Uint8Array.from(Buffer.from(testFrame('02:aa:00:00:00:01', m), 'hex')));
    const put = (addr: number, bytes: Uint8Array): number => (rm.write(addr, bytes), addr);
    const withHdr = (f: Uint8Array): Uint8Array => Uint8Array.from([...new Uint8Array(HDR), ...f]);
    // 1: header and frame in one buffer, region 0. 2: one buffer at 4 GiB.
    // 3: one buffer that crosses from region 0 into region 1. 4: header at 4 GiB, frame in region 1.
    tx.setChain(0, [[put(0x100000, withHdr(frames[0])), HDR + frames[0].length, false]]);
    tx.setChain(1, [[put(4 * GiB + 0x1000, withHdr(frames[1])), HDR + frames[1].length, false]]);
    tx.setChain(2, [[put(8 * MiB - 30, withHdr(frames[2])), HDR + frames[2].length, false]]);
    tx.setChain(3, [
      [put(4 * GiB + 0x2000, new Uint8Array(HDR)), HDR, false],
      [put(8 * MiB + 0x3000, frames[3]), frames[3].length, false],
    ]);
    const cap = await captureFrames(ns, tap, 4, 10_000);
    tx.post(0, 1, 2, 3);
    dev.kick(1);
    const got = await cap.done();
    t.deepEqual(got.map(markerOf), [1, 2, 3, 4]);
    got.forEach((g, i) => t.deepEqual([...g], [...frames[i]], `frame ${i + 1} arrived byte for byte`));
    t.true(await until(() => tx.usedIdx === 4, 30_000));
    t.is(broken.length, 0);
    t.is(dev.stats().totals.txPackets, 4);
  }));
}

for (const layout of RING_LAYOUTS) {
test(`${layout}: regions: RX chains above the hole, across the adjacent boundary and split between regions receive frames intact`, (t) =>
  withNetns(async (ns) => {
    const rm = threeRegions();
    const { dev, rx, tap, broken } = up(ns, rm, layout);
    const chains: Array<Array<[number, number, boolean]>> = [
      [[4 * GiB + 0x10000, 2048, true]],
      [[8 * MiB - 1000, 2048, true]],
      [
        [0x300000, 600, true],
        [4 * GiB + 0x20000, 1500, true],
      ],
      [[8 * MiB + 0x10000, 2048, true]],
    ];
    let d = 0;
    const heads = chains.map((c) => {
      const h = d;
      rx.setChain(d, c);
      d += c.length;
      return h;
    });
    rx.post(...heads);
    dev.kick(0);
    const mac = guestMac(dev);
    const sent = [11, 12, 13, 14].map((m) => testFrame(mac, m).padEnd(2 * 1000, 'ab'));
    ns.exec('python3', rawSendScript(tap, sent));
    t.true(await until(() => rx.usedIdx === 4, 10_000), `used ${rx.usedIdx} of 4`);
    for (let i = 0; i < 4; i++) {
      const { id, len } = rx.usedElem(i);
      const c = chains[heads.indexOf(id)];
      t.truthy(c, `used id ${id} is a posted head`);
      const bytes = Buffer.concat(c.map(([a, l]) => rm.read(a, l)));
      const hdr = bytes.subarray(0, HDR);
      t.is(hdr.readUInt16LE(10), 1, 'num_buffers');
      const frame = bytes.subarray(HDR, len);
      t.is(frame.toString('hex'), sent[i], `frame ${i} landed intact in chain ${heads.indexOf(id)}`);
    }
    t.is(broken.length, 0);
    t.is(dev.stats().totals.rxPackets, 4);
  }));
}

for (const layout of RING_LAYOUTS) {
test(`${layout}: regions: a TX buffer that runs from a region into the hole → needs-reset naming desc-out-of-bounds`, (t) =>
  withNetns(async (ns) => {
    const rm = threeRegions();
    const { dev, tx, broken } = up(ns, rm, layout);
    tx.setChain(0, [[12 * MiB - 20, 60, false]]); // region 1 ends at 12 MiB, the hole follows
    tx.post(0);
    dev.kick(1);
    t.true(await until(() => broken.length > 0, 30_000));
    t.is(broken[0].rule, 'desc-out-of-bounds');
    t.is(broken[0].queue, 1);
    t.truthy(dev.status & STATUS.DEVICE_NEEDS_RESET);
  }));
}

test('regions: setQueue refuses a ring across a region boundary or over the hole', (t) =>
  withNetns((ns) => {
    const rm = threeRegions();
    quietNamespace(ns);
    const dev = new VirtioNetDevice({ memory: rm.option(), tap: ns.ifname(), netns: ns.name });
    ns.defer(() => void dev.close());
    handshake(dev, bits('VERSION_1'));
    const e1 = t.throws(() => dev.setQueue(0, { size: 256, desc: 8 * MiB - 2048, avail: 0x10000, used: 0x11000 }), { instanceOf: InvalidArgumentError });
    t.regex(e1!.message, /desc ring .* outside guest memory/);
    const e2 = t.throws(() => dev.setQueue(0, { size: 256, desc: 0x1000, avail: 12 * MiB, used: 0x11000 }), { instanceOf: InvalidArgumentError });
    t.regex(e2!.message, /avail ring/);
    t.notThrows(() => dev.setQueue(0, { size: 256, desc: 4 * GiB, avail: 4 * GiB + 0x1000, used: 4 * GiB + 0x2000 }));
  }));

// --- memory replaced while running ---------------------------------------------------------

test('setMemory: a shared WebAssembly.Memory grows under traffic; frames in the new memory flow and every frame is accounted for', (t) =>
  withNetns(async (ns) => {
    quietNamespace(ns);
    const pages = 64; // 4 MiB
    const wasm = new (globalThis as unknown as { WebAssembly: { Memory: new (d: object) => { buffer: SharedArrayBuffer; grow(n: number): number } } }).WebAssembly.Memory({
      initial: pages,
      maximum: 4 * pages,
      shared: true,
    });
    const tap = ns.ifname();
    const dev = new VirtioNetDevice({ memory: wasm, tap, netns: ns.name });
    ns.defer(() => void dev.close());
    const broken: VirtioNetError[] = [];
    dev.on('needs-reset', (e) => broken.push(e));
    handshake(dev, bits('VERSION_1', 'MRG_RXBUF'));
    const mem = new GuestMem(4 * MiB, 0, wasm.buffer);
    const rx = new DriverQueue(mem, 256, 0x10000);
    const tx = new DriverQueue(mem, 256, 0x20000);
    dev.setQueue(0, rx.layout);
    dev.setQueue(1, tx.layout);
    dev.status |= DRIVER_OK;
    const mac = guestMac(dev);

    // RX: 256 buffers of 2 KiB, re-posted as they come back.
    const RXB = 0x100000;
    const rxU8 = (): Uint8Array => new Uint8Array(wasm.buffer);
    for (let i = 0; i < 256; i++) rx.setChain(i, [[RXB + 2048 * i, 2048, true]]);
    rx.post(...Array.from({ length: 256 }, (_, i) => i));
    dev.kick(0);
    let rxSeen = 0;
    let rxUsed = 0;
    const reapRx = (): void => {
      const heads: number[] = [];
      while (rxUsed !== rx.usedIdx) {
        const { id, len } = rx.usedElem(rxUsed);
        rxUsed = (rxUsed + 1) & 0xffff;
        if (markerOf(rxU8().subarray(RXB + 2048 * id + HDR, RXB + 2048 * id + len)) >= 1000) rxSeen++;
        heads.push(id);
      }
      if (heads.length) {
        rx.post(...heads);
        dev.kick(0);
      }
    };

    // TX: N frames, the second half from buffers that exist only after the memory grows.
    const N = 2000;
    const frame = (m: number): Uint8Array => Uint8Array.from([...new Uint8Array(HDR), ...Buffer.from(testFrame('02:aa:00:00:00:01', m), 'hex')]);
    let posted = 0;
    let txUsed = 0;
    let grown = false;
    const txBase = (): number => (grown ? 4 * MiB + 0x100000 : 0x200000);
    const sendSome = (n: number): void => {
      const heads: number[] = [];
      for (let i = 0; i < n && posted < N && ((posted - txUsed) & 0xffff) < 256; i++) {
        const slot = posted % 256;
        const f = frame(posted);
        new Uint8Array(wasm.buffer).set(f, txBase() + 128 * slot);
        tx.setChain(slot, [[txBase() + 128 * slot, f.length, false]]);
        heads.push(slot);
        posted++;
      }
      if (heads.length) {
        tx.post(...heads);
        dev.kick(1);
      }
      txUsed = tx.usedIdx;
    };

    const M = 600;
    const sender = ns.exec('python3', [
      '-c',
      `import socket,time
s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW)
s.bind((${JSON.stringify(tap)},0))
for i in range(${M}):
    s.send(bytes.fromhex(${JSON.stringify(testFrame(mac, 0).slice(0, 28))}+'%08x'%(1000+i)+'00'*42))
    if i%20==19: time.sleep(0.002)
`,
    ]);
    t.is(sender, '');
    const deadline = Date.now() + 60_000;
    while ((posted < N || txUsed !== N) && broken.length === 0 && Date.now() < deadline) {
      if (!grown && posted >= N / 2) {
        wasm.grow(pages); // 8 MiB: the second half of TX buffers lives in the new 4 MiB
        dev.setMemory(wasm);
        grown = true;
      }
      sendSome(64);
      reapRx();
      await new Promise((r) => setImmediate(r));
    }
    await until(() => (reapRx(), rxSeen >= M), 30_000);
    t.true(grown);
    t.is(broken.length, 0, broken.map((b) => b.message).join('; '));
    const s = dev.stats();
    t.is(s.totals.txPackets, N, 'every TX frame, before and after the change, went to the TAP');
    const link = linkStats(ns, tap);
    t.is(link.rx.packets, N, 'the TAP received every one');
    const rxDrops = s.queues.filter((q) => q.kind === 'rx').reduce((n, q) => n + Object.values(q.drops).reduce((a, b) => a + b, 0), 0);
    t.is(rxSeen + rxDrops + link.tx.dropped, M, `RX: ${rxSeen} received + ${rxDrops} device drops + ${link.tx.dropped} TAP drops`);
    t.throws(() => dev.setMemory(new SharedArrayBuffer(64 * 1024)), { instanceOf: InvalidArgumentError, message: /rings set up would not fit/ });
  }));

// --- the control queue ---------------------------------------------------------------------

/** A device with the control queue negotiated, data rings low in memory and the control ring (size `size`) at `ctrlBase`; DRIVER_OK set. */
function ctrlDevice(ns: Netns, sab: SharedArrayBuffer, size: number, ctrlBase: number) {
  quietNamespace(ns);
  const dev = new VirtioNetDevice({ memory: sab, tap: ns.ifname(), netns: ns.name });
  ns.defer(() => void dev.close());
  const broken: VirtioNetError[] = [];
  dev.on('needs-reset', (e) => broken.push(e));
  handshake(dev, bits('VERSION_1', 'CTRL_VQ', 'CTRL_RX'));
  const ring = (base: number, n: number) => {
    const l = SimQueue.layout(base, n);
    return { size: n, desc: l.desc, avail: l.avail, used: l.used, end: l.end };
  };
  const { end: _rxEnd, ...rx } = ring(0x1000, 64);
  const { end: _txEnd, ...tx } = ring(0x4000, 64);
  const { end, ...ctrl } = ring(ctrlBase, size);
  dev.setQueue(0, rx);
  dev.setQueue(1, tx);
  dev.setQueue(2, ctrl);
  dev.status |= DRIVER_OK;
  return { dev, broken, ctrl, end };
}

test('control queue on guest memory of 3 GiB, its ring and commands above 2 GiB, answers RX-mode commands', (t) =>
  withNetns(async (ns) => {
    const sab = new SharedArrayBuffer(3 * GiB);
    // The last 64 KiB: offsets over 2^31 and 2^31 * 1.5.
    const { dev, broken, ctrl: addrs, end } = ctrlDevice(ns, sab, 16, 3 * GiB - 64 * 1024);
    const filters: unknown[] = [];
    dev.on('rx-filter', (f) => filters.push(f));
    const ctrl = new ControlDriver(dev, sab, 2, addrs, false, Math.ceil(end / 64) * 64);
    t.is(await ctrl.command(CTRL.CLASS_RX, CTRL.RX_PROMISC, Uint8Array.of(1)), CTRL.OK);
    t.is(await ctrl.command(CTRL.CLASS_RX, CTRL.RX_ALLMULTI, Uint8Array.of(1)), CTRL.OK);
    t.is(await ctrl.command(CTRL.CLASS_RX, 99, Uint8Array.of(1)), CTRL.ERR);
    t.is(filters.length, 2);
    t.true(dev.rxFilter.describe().promisc);
    t.is(broken.length, 0);
  }));

test('control queue: a kick with pathological chains (32768 descriptors each) is served across turns of the event loop', (t) =>
  withNetns(async (ns) => {
    const size = 32768;
    const sab = new SharedArrayBuffer(4 * MiB);
    const { dev, broken, ctrl: l } = ctrlDevice(ns, sab, size, MiB);
    // Every descriptor chained to the next, zero-length and readable, the last one the ack byte.
    const dv = new DataView(sab);
    const ack = 0x8000;
    for (let i = 0; i < size; i++) {
      const last = i === size - 1;
      dv.setBigUint64(l.desc + 16 * i, BigInt(last ? ack : ack + 16), true);
      dv.setUint32(l.desc + 16 * i + 8, last ? 1 : 0, true);
      dv.setUint16(l.desc + 16 * i + 12, last ? DESC_F_WRITE : DESC_F_NEXT, true);
      dv.setUint16(l.desc + 16 * i + 14, last ? 0 : i + 1, true);
    }
    const posted = 256; // 8 million descriptors to walk
    for (let i = 0; i < posted; i++) dv.setUint16(l.avail + 4 + 2 * i, 0, true);
    const u16 = new Uint16Array(sab);
    Atomics.store(u16, (l.avail + 2) >> 1, posted);
    const usedIdx = (): number => Atomics.load(u16, (l.used + 2) >> 1);
    const samples: number[] = [];
    const timer = setInterval(() => samples.push(usedIdx()), 1);
    dev.kick(2);
    const done = await until(() => usedIdx() === posted, 60_000);
    clearInterval(timer);
    t.true(done, `${usedIdx()} of ${posted} answered`);
    const midway = samples.filter((u) => u > 0 && u < posted);
    t.true(midway.length >= 2, `a timer on the JS thread ran while the commands were being served (${midway.length} times)`);
    t.is(new Uint8Array(sab)[ack], CTRL.ERR, 'no readable bytes: answered ERR');
    t.is(broken.length, 0);
  }));

test('setQueue refuses ring parts that overlap each other (used over avail)', (t) =>
  withNetns((ns) => {
    quietNamespace(ns);
    const dev = new VirtioNetDevice({ memory: new SharedArrayBuffer(MiB), tap: ns.ifname(), netns: ns.name });
    ns.defer(() => void dev.close());
    handshake(dev, bits('VERSION_1'));
    const l = SimQueue.layout(0x1000, 64);
    const e = t.throws(() => dev.setQueue(0, { size: 64, desc: l.desc, avail: l.avail, used: l.avail + 4 }), { instanceOf: InvalidArgumentError });
    t.regex(e!.message, /used ring .* overlaps avail ring|avail ring .* overlaps used ring/);
    t.regex(e!.message, /ring-overlap/);
  }));
