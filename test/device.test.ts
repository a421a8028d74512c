// The device model (backend/device.ts) through the public API, on real TAP
// devices: option checking, queue setup, the status machine, config space,
// feature offer, lifecycle, and a hostile guest. Every TAP lives in a 'vt…'
// network namespace the test creates and deletes (host/netns.ts).
// Needs root; CI runs as root, so without it these fail instead of skipping.

import test, { type ExecutionContext } from 'ava';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';

import {
  bit,
  bits,
  CONFIG,
  CTRL,
  DeviceStateError,
  InvalidArgumentError,
  NamespaceError,
  STATUS,
  VhostTapError,
  VirtioNetDevice,
  VirtioNetError,
  type VirtioNetDeviceOptions,
} from '../backend/index';
import { openVirtqueue, PackedDriverQueue } from '../driver/packed';
import { DriverQueue, type Virtqueue } from '../driver/virtqueue';
import { requireRoot, withNetns, type Netns } from '../host/netns';

const MEM = 1 << 20;
const QSIZE = 64;
const HEAP = 0x40000;
const { ACKNOWLEDGE: ACK, DRIVER, FEATURES_OK, DRIVER_OK, DEVICE_NEEDS_RESET } = STATUS;

interface WasmMemory {
  readonly buffer: ArrayBuffer | SharedArrayBuffer;
  grow(delta: number): number;
}
const WebAssemblyMemory = (
  globalThis as unknown as { WebAssembly: { Memory: new (d: { initial: number; maximum?: number; shared?: boolean }) => WasmMemory } }
).WebAssembly.Memory;

test.before(() => {
  requireRoot();
});

/** A device on a fresh TAP inside `ns`, closed before the namespace goes. */
function makeDevice(ns: Netns, opts: Partial<VirtioNetDeviceOptions> = {}): VirtioNetDevice {
  const dev = new VirtioNetDevice({ memory: new SharedArrayBuffer(MEM), tap: ns.ifname(), netns: ns.name, ...opts });
  ns.defer(() => void dev.close());
  return dev;
}

/** Asserts `fn` throws the typed error `cls` with `code`, and that it is a VhostTapError. */
function throwsTyped<E extends VhostTapError>(
  t: ExecutionContext,
  fn: () => unknown,
  cls: new (...a: never[]) => E,
  code: string,
  message?: RegExp,
  what?: string,
): E | undefined {
  const e = t.throws(fn, { instanceOf: cls as unknown as new (...a: unknown[]) => Error }, what) as E | undefined;
  if (e) {
    t.true(e instanceof VhostTapError, what);
    t.is(e.code, code, what);
    if (message) t.regex(e.message, message, what);
  }
  return e;
}

const invalid = (t: ExecutionContext, fn: () => unknown, message?: RegExp, what?: string) =>
  throwsTyped(t, fn, InvalidArgumentError, 'ERR_VHOST_INVALID_ARG', message, what);
const badState = (t: ExecutionContext, fn: () => unknown, message?: RegExp, what?: string) =>
  throwsTyped(t, fn, DeviceStateError, 'ERR_VHOST_STATE', message, what);

/** Lays out RX, TX (and the control queue) with DriverQueue, after the ring area at 0. */
/** The ring layouts the tests that drive rings run in (RING_PACKED is added to their features). */
const LAYOUTS = [
  { name: 'split', features: 0n },
  { name: 'packed', features: bits('RING_PACKED') },
];

function rings(sab: SharedArrayBuffer, count: number, packed = false): Virtqueue[] {
  const out: Virtqueue[] = [];
  let base = 0;
  for (let i = 0; i < count; i++) {
    const l = packed ? PackedDriverQueue.layout(base, QSIZE) : DriverQueue.layout(base, QSIZE);
    out.push(openVirtqueue(sab, { size: QSIZE, desc: l.desc, avail: l.avail, used: l.used }, { eventIdx: false, packed }));
    base = l.end;
  }
  if (base > HEAP) throw new Error('rings overlap the heap');
  return out;
}

/** The driver's initialisation sequence (virtio 1.x §3.1.1) up to DRIVER_OK. */
function bringUp(dev: VirtioNetDevice, sab: SharedArrayBuffer, features: bigint): Virtqueue[] {
  dev.status = 0;
  dev.status = ACK;
  dev.status = ACK | DRIVER;
  dev.driverFeatures = features;
  dev.status = ACK | DRIVER | FEATURES_OK;
  if (!(dev.status & FEATURES_OK)) throw new Error(`FEATURES_OK refused: ${dev.featuresRefusal}`);
  const qs = rings(sab, features & bit('CTRL_VQ') ? 3 : 2, (features & bit('RING_PACKED')) !== 0n);
  qs.forEach((q, i) => dev.setQueue(i, q.addrs));
  dev.status = ACK | DRIVER | FEATURES_OK | DRIVER_OK;
  return qs;
}

/** Waits for an event, failing with a message (not hanging the suite) if it never comes. */
async function event<T>(dev: VirtioNetDevice, name: string, what: string, ms = 30_000): Promise<T> {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), ms);
  try {
    const [v] = await once(dev, name, { signal: ac.signal });
    return v as T;
  } catch (e) {
    if (ac.signal.aborted) throw new Error(`no '${name}' event: ${what}`);
    throw e;
  } finally {
    clearTimeout(timer);
  }
}

/** Polls until `cond` holds; a liveness guard, not a timing assertion. */
async function until(cond: () => boolean, what: string, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`gave up waiting: ${what}`);
    await sleep(5);
  }
}

/** A 12-byte virtio_net_hdr (all zero: no offload) plus a minimal broadcast Ethernet frame. */
function txFrame(sab: SharedArrayBuffer, at: number): number {
  const u8 = new Uint8Array(sab, at, 12 + 60);
  u8.fill(0);
  u8.set([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0, 0, 0, 1, 0x88, 0xb5], 12); // local experimental ethertype
  return u8.length;
}

// --- bad options ------------------------------------------------------------------------

test('unknown option → InvalidArgumentError naming it', (t) =>
  withNetns((ns) => {
    invalid(t, () => makeDevice(ns, { tapp: 'x' } as Partial<VirtioNetDeviceOptions>), /'tapp'/);
  }));

test('memory that cannot be shared with device threads → InvalidArgumentError', (t) =>
  withNetns((ns) => {
    invalid(t, () => makeDevice(ns, { memory: new ArrayBuffer(MEM) as unknown as SharedArrayBuffer }), /SharedArrayBuffer/, 'ArrayBuffer');
    invalid(t, () => makeDevice(ns, { memory: new WebAssemblyMemory({ initial: 16 }) }), /shared/, 'non-shared WebAssembly.Memory');
    invalid(t, () => makeDevice(ns, { memory: undefined as unknown as SharedArrayBuffer }), undefined, 'no memory');
    invalid(t, () => makeDevice(ns, { memory: new Uint8Array(new SharedArrayBuffer(16)) as unknown as SharedArrayBuffer }), undefined, 'a view');
  }));

test('TAP name of 16 bytes → InvalidArgumentError; 15 bytes is fine', (t) =>
  withNetns((ns) => {
    invalid(t, () => makeDevice(ns, { tap: 'vt' + 'x'.repeat(14) }), /16 bytes/);
    invalid(t, () => makeDevice(ns, { tap: 'vtä' + 'x'.repeat(12) }), /bytes/, '15 characters but 16 bytes');
    invalid(t, () => makeDevice(ns, { tap: '' }), undefined, 'empty');
    invalid(t, () => makeDevice(ns, { tap: 'vt/x' }), undefined, 'slash');
    const dev = makeDevice(ns, { tap: 'vt' + 'y'.repeat(13) });
    t.is(dev.tapName, 'vt' + 'y'.repeat(13));
  }));

test('invalid or multicast MAC → InvalidArgumentError', (t) =>
  withNetns((ns) => {
    for (const mac of ['52:54:00:12:34', '52:54:00:12:34:5g', '52-54-00-12-34-56', '525400123456', '52:54:00:12:34:56:78']) {
      invalid(t, () => makeDevice(ns, { mac }), /MAC/, mac);
    }
    invalid(t, () => makeDevice(ns, { mac: '01:00:5e:00:00:01' }), /multicast/);
    invalid(t, () => makeDevice(ns, { mac: 'ff:ff:ff:ff:ff:ff' }), /multicast/);
  }));

test('queuePairs outside 1..256 and bad mtu → InvalidArgumentError', (t) =>
  withNetns((ns) => {
    for (const queuePairs of [0, 257, 1.5, -1]) invalid(t, () => makeDevice(ns, { queuePairs }), /queuePairs/, `queuePairs ${queuePairs}`);
    for (const mtu of [0, 67, 65536, 1500.5]) invalid(t, () => makeDevice(ns, { mtu }), /mtu/, `mtu ${mtu}`);
    invalid(t, () => makeDevice(ns, { features: 5 as unknown as bigint }), /features/);
  }));

test('nonexistent network namespace → NamespaceError', (t) =>
  withNetns((ns) => {
    const e = throwsTyped(t, () => makeDevice(ns, { netns: `${ns.name}nope` }), NamespaceError, 'ERR_VHOST_NETNS', /does not exist/);
    t.regex(e?.message ?? '', /ip netns add/);
    invalid(t, () => makeDevice(ns, { netns: '../../etc' }), /namespace/, 'path as a namespace name');
  }));

// --- setQueue --------------------------------------------------------------------------

test('setQueue refuses bad sizes, misaligned or out-of-memory parts, bad indices', (t) =>
  withNetns((ns) => {
    const dev = makeDevice(ns);
    const ok = { size: 256, desc: 0x1000, avail: 0x2000, used: 0x3000 };
    dev.setQueue(0, ok);
    for (const size of [0, 3, 100, 65536, 1.5]) invalid(t, () => dev.setQueue(0, { ...ok, size }), /size/, `size ${size}`);
    invalid(t, () => dev.setQueue(0, { ...ok, desc: 0x1008 }), /desc.*aligned/);
    invalid(t, () => dev.setQueue(0, { ...ok, avail: 0x2001 }), /avail.*aligned/);
    invalid(t, () => dev.setQueue(0, { ...ok, used: 0x3002 }), /used.*aligned/);
    invalid(t, () => dev.setQueue(0, { ...ok, desc: MEM - 16 * 128 }), /desc.*outside/, 'desc table running past the end');
    invalid(t, () => dev.setQueue(0, { ...ok, avail: MEM }), /avail.*outside/);
    invalid(t, () => dev.setQueue(0, { ...ok, used: MEM - 4 }), /used.*outside/);
    invalid(t, () => dev.setQueue(0, { ...ok, used: 2 ** 60 }), /used/);
    invalid(t, () => dev.setQueue(0, { ...ok, desc: -16 }), /desc/);
    // One pair: RX 0, TX 1, control 2.
    invalid(t, () => dev.setQueue(2, ok), /overlaps/, 'a ring over another queue\'s ring');
    dev.setQueue(2, { size: 256, desc: 0x4000, avail: 0x5000, used: 0x6000 });
    for (const index of [3, -1, 0.5, 1000]) invalid(t, () => dev.setQueue(index, ok), /index/, `index ${index}`);
    invalid(t, () => dev.setQueue(0, null as unknown as typeof ok));
  }));

test('packed: setQueue refuses a descriptor ring or an event suppression area outside memory, and parts over another queue', (t) =>
  withNetns((ns) => {
    const dev = makeDevice(ns);
    dev.status = ACK;
    dev.status = ACK | DRIVER;
    dev.driverFeatures = bits('VERSION_1', 'RING_PACKED');
    dev.status = ACK | DRIVER | FEATURES_OK;
    t.truthy(dev.status & FEATURES_OK, String(dev.featuresRefusal));
    const ok = { size: 256, desc: 0x1000, avail: 0x2000, used: 0x2004 };
    dev.setQueue(0, ok);
    invalid(t, () => dev.setQueue(0, { ...ok, desc: MEM - 16 * 128 }), /desc ring.*outside/, 'descriptor ring running past the end');
    invalid(t, () => dev.setQueue(0, { ...ok, avail: MEM }), /driver event.*outside/, 'driver event area past the end');
    invalid(t, () => dev.setQueue(0, { ...ok, avail: MEM - 2 }), /driver event.*aligned/, 'driver event area misaligned, across the end');
    invalid(t, () => dev.setQueue(0, { ...ok, used: MEM }), /device event.*outside/, 'device event area past the end');
    invalid(t, () => dev.setQueue(0, { ...ok, used: 2 ** 40 }), /device event.*outside/, 'device event area far outside');
    invalid(t, () => dev.setQueue(1, { size: 256, desc: 0x4000, avail: 0x1800, used: 0x5000 }), /overlaps/, "an event area over another queue's ring");
  }));

test('setQueue after DRIVER_OK → DeviceStateError', (t) =>
  withNetns((ns) => {
    const sab = new SharedArrayBuffer(MEM);
    const dev = makeDevice(ns, { memory: sab });
    const [rx] = bringUp(dev, sab, bit('VERSION_1'));
    badState(t, () => dev.setQueue(0, rx.addrs), /DRIVER_OK/);
  }));

// --- status machine ---------------------------------------------------------------------

test('FEATURES_OK is refused (bit stays clear, featuresRefusal says why) for a broken dependency', (t) =>
  withNetns((ns) => {
    const dev = makeDevice(ns);
    dev.status = ACK;
    dev.status = ACK | DRIVER;
    dev.driverFeatures = bits('VERSION_1', 'CTRL_RX'); // CTRL_RX needs CTRL_VQ
    dev.status = ACK | DRIVER | FEATURES_OK;
    t.is(dev.status & FEATURES_OK, 0);
    t.is(dev.status, ACK | DRIVER);
    t.regex(dev.featuresRefusal ?? '', /CTRL_RX requires CTRL_VQ/);
    // The driver may try again with a valid set.
    dev.driverFeatures = bits('VERSION_1', 'CTRL_RX', 'CTRL_VQ');
    dev.status = ACK | DRIVER | FEATURES_OK;
    t.is(dev.status, ACK | DRIVER | FEATURES_OK);
    t.is(dev.featuresRefusal, null);
  }));

test('FEATURES_OK is refused for a feature not offered', (t) =>
  withNetns((ns) => {
    const dev = makeDevice(ns); // one pair: no MQ offered
    t.is(dev.deviceFeatures & bit('MQ'), 0n);
    dev.status = ACK | DRIVER;
    dev.driverFeatures = bits('VERSION_1', 'CTRL_VQ', 'MQ');
    dev.status = ACK | DRIVER | FEATURES_OK;
    t.is(dev.status & FEATURES_OK, 0);
    t.regex(dev.featuresRefusal ?? '', /\bMQ\b/);
    dev.driverFeatures = bits('VERSION_1', 'NOTIFICATION_DATA');
    dev.status = ACK | DRIVER | FEATURES_OK;
    t.is(dev.status & FEATURES_OK, 0);
    t.regex(dev.featuresRefusal ?? '', /NOTIFICATION_DATA/);
  }));

test('driverFeatures may be written only between DRIVER and FEATURES_OK', (t) =>
  withNetns((ns) => {
    const dev = makeDevice(ns);
    badState(t, () => (dev.driverFeatures = bit('VERSION_1')), /DRIVER/, 'status 0');
    dev.status = ACK;
    badState(t, () => (dev.driverFeatures = bit('VERSION_1')), /DRIVER/, 'ACKNOWLEDGE only');
    dev.status = ACK | DRIVER;
    dev.driverFeatures = bit('VERSION_1');
    t.is(dev.driverFeatures, bit('VERSION_1'));
    invalid(t, () => (dev.driverFeatures = 1 as unknown as bigint), /bigint/);
    dev.status = ACK | DRIVER | FEATURES_OK;
    badState(t, () => (dev.driverFeatures = bits('VERSION_1', 'MAC')), /FEATURES_OK/, 'after FEATURES_OK');
    t.is(dev.driverFeatures, bit('VERSION_1'));
  }));

test('DRIVER_OK before FEATURES_OK throws; so does DRIVER_OK without queues; the driver may not clear bits', (t) =>
  withNetns((ns) => {
    const sab = new SharedArrayBuffer(MEM);
    const dev = makeDevice(ns, { memory: sab });
    dev.status = ACK | DRIVER;
    dev.driverFeatures = bit('VERSION_1');
    badState(t, () => (dev.status = ACK | DRIVER | DRIVER_OK), /FEATURES_OK/);
    t.is(dev.status, ACK | DRIVER);
    badState(t, () => (dev.status = ACK), /clear/);
    dev.status = ACK | DRIVER | FEATURES_OK;
    badState(t, () => (dev.status = ACK | DRIVER | FEATURES_OK | DRIVER_OK), /setQueue/, 'no queues set up');
    t.is(dev.status & DRIVER_OK, 0);
    rings(sab, 2).forEach((q, i) => dev.setQueue(i, q.addrs));
    dev.status = ACK | DRIVER | FEATURES_OK | DRIVER_OK;
    t.is(dev.status, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    invalid(t, () => (dev.status = 256), /byte/);
  }));

test('CTRL_VQ negotiated but no control queue → DRIVER_OK refused', (t) =>
  withNetns((ns) => {
    const sab = new SharedArrayBuffer(MEM);
    const dev = makeDevice(ns, { memory: sab });
    dev.status = ACK | DRIVER;
    dev.driverFeatures = bits('VERSION_1', 'CTRL_VQ');
    dev.status = ACK | DRIVER | FEATURES_OK;
    rings(sab, 2).forEach((q, i) => dev.setQueue(i, q.addrs));
    badState(t, () => (dev.status = ACK | DRIVER | FEATURES_OK | DRIVER_OK), /control queue/);
    t.is(dev.status & DRIVER_OK, 0);
  }));

test('status 0 resets; a second full initialisation works', (t) =>
  withNetns((ns) => {
    const sab = new SharedArrayBuffer(MEM);
    const dev = makeDevice(ns, { memory: sab });
    bringUp(dev, sab, bits('VERSION_1', 'MRG_RXBUF'));
    t.is(dev.status, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    dev.status = 0;
    t.is(dev.status, 0);
    t.is(dev.driverFeatures, 0n);
    t.is(dev.featuresRefusal, null);
    badState(t, () => (dev.status = ACK | DRIVER | FEATURES_OK | DRIVER_OK), /setQueue/, 'queues are forgotten');
    t.is(dev.status & DRIVER_OK, 0);
    bringUp(dev, sab, bits('VERSION_1', 'CTRL_VQ', 'CTRL_RX', 'RING_EVENT_IDX'));
    t.is(dev.status, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    t.is(dev.driverFeatures, bits('VERSION_1', 'CTRL_VQ', 'CTRL_RX', 'RING_EVENT_IDX'));
    dev.status = 0;
    t.is(dev.status, 0);
  }));

test('FAILED stops the device; reset recovers', (t) =>
  withNetns((ns) => {
    const sab = new SharedArrayBuffer(MEM);
    const dev = makeDevice(ns, { memory: sab });
    bringUp(dev, sab, bit('VERSION_1'));
    dev.status = dev.status | STATUS.FAILED;
    t.truthy(dev.status & STATUS.FAILED);
    dev.status = 0;
    bringUp(dev, sab, bit('VERSION_1'));
    t.is(dev.status & STATUS.FAILED, 0);
  }));

// --- config space and feature offer ----------------------------------------------------

test('config space: mac, status LINK_UP, max_virtqueue_pairs and mtu, little-endian', (t) =>
  withNetns((ns) => {
    const dev = makeDevice(ns, { mac: '52:54:00:ab:cd:ef', mtu: 9000, queuePairs: 3 });
    const c = dev.config;
    t.deepEqual([0, 1, 2, 3, 4, 5].map((i) => c.getUint8(CONFIG.OFF_MAC + i)), [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]);
    t.deepEqual([c.getUint8(6), c.getUint8(7)], [CONFIG.S_LINK_UP, 0], 'status');
    t.deepEqual([c.getUint8(8), c.getUint8(9)], [3, 0], 'max_virtqueue_pairs');
    t.deepEqual([c.getUint8(10), c.getUint8(11)], [9000 & 0xff, 9000 >> 8], 'mtu');
    dev.setLink(false);
    t.is(c.getUint16(CONFIG.OFF_STATUS, true) & CONFIG.S_LINK_UP, 0);
    dev.setLink(true);
    t.is(c.getUint16(CONFIG.OFF_STATUS, true), CONFIG.S_LINK_UP);
  }));

test('without a MAC option the device makes up a unicast, locally administered one', (t) =>
  withNetns((ns) => {
    const dev = makeDevice(ns);
    const b0 = dev.config.getUint8(CONFIG.OFF_MAC);
    t.is(b0 & 1, 0, 'unicast');
    t.is(b0 & 2, 2, 'locally administered');
    t.is(dev.config.getUint16(CONFIG.OFF_MTU, true), 1500, 'default MTU');
  }));

test('deviceFeatures: the basics always, MQ only with more than one queue pair', (t) =>
  withNetns((ns) => {
    const one = makeDevice(ns);
    for (const f of ['VERSION_1', 'MAC', 'MTU', 'STATUS', 'MRG_RXBUF', 'RING_EVENT_IDX', 'RING_INDIRECT_DESC', 'CTRL_VQ'] as const) {
      t.not(one.deviceFeatures & bit(f), 0n, f);
    }
    t.is(one.deviceFeatures & bit('MQ'), 0n);
    t.is(one.queuePairs, 1);
    const two = makeDevice(ns, { queuePairs: 2 });
    t.not(two.deviceFeatures & bit('MQ'), 0n);
    t.is(two.config.getUint16(CONFIG.OFF_MAX_VQ_PAIRS, true), 2);
    // What is offered is negotiable as a whole, and offloads the kernel lacks are explained.
    for (const dev of [one, two]) {
      dev.status = ACK | DRIVER;
      dev.driverFeatures = dev.deviceFeatures;
      dev.status = ACK | DRIVER | FEATURES_OK;
      t.is(dev.featuresRefusal, null);
      const caps = dev.capabilities();
      t.true(Array.isArray(caps.offloads) && Array.isArray(caps.missing));
      for (const m of caps.missing) t.is(dev.deviceFeatures & bit(m.feature as 'CSUM'), 0n, m.feature);
    }
  }));

test("the 'features' option masks the offer", (t) =>
  withNetns((ns) => {
    const mask = bits('VERSION_1', 'MAC', 'MRG_RXBUF', 'NOTIFICATION_DATA');
    const dev = makeDevice(ns, { features: mask, queuePairs: 2 });
    t.is(dev.deviceFeatures, bits('VERSION_1', 'MAC', 'MRG_RXBUF'), 'only offered bits survive the mask; the mask adds nothing');
    dev.status = ACK | DRIVER;
    dev.driverFeatures = bits('VERSION_1', 'MTU');
    dev.status = ACK | DRIVER | FEATURES_OK;
    t.regex(dev.featuresRefusal ?? '', /MTU/);
  }));

test('a shared WebAssembly.Memory works as guest memory', (t) =>
  withNetns((ns) => {
    const mem = new WebAssemblyMemory({ initial: 16, maximum: 16, shared: true });
    t.true(mem.buffer instanceof SharedArrayBuffer);
    const dev = makeDevice(ns, { memory: mem });
    const sab = mem.buffer as SharedArrayBuffer;
    invalid(t, () => dev.setQueue(0, { size: 16, desc: sab.byteLength, avail: 0, used: 0 }), /outside/, 'bounds are the Memory size');
    bringUp(dev, sab, bits('VERSION_1', 'MRG_RXBUF'));
    t.is(dev.status & DRIVER_OK, DRIVER_OK);
  }));

test('stats() shape', (t) =>
  withNetns((ns) => {
    const sab = new SharedArrayBuffer(MEM);
    const dev = makeDevice(ns, { memory: sab, queuePairs: 2 });
    const check = (): void => {
      const s = dev.stats();
      t.is(typeof s.io, 'string');
      t.is(typeof s.filtered, 'number');
      t.deepEqual(Object.keys(s.totals).sort(), ['drops', 'rxBytes', 'rxPackets', 'txBytes', 'txPackets']);
      t.deepEqual(s.queues.map((q) => [q.index, q.kind]), [[0, 'rx'], [1, 'tx'], [2, 'rx'], [3, 'tx']]);
      for (const q of s.queues) {
        for (const k of ['packets', 'bytes', 'interrupts', 'kicks'] as const) t.true(Number.isInteger(q[k]) && q[k] >= 0, k);
        t.is(typeof q.drops, 'object');
        t.is(q.broken, false);
      }
      t.is(s.totals.txPackets, 0);
    };
    check();
    bringUp(dev, sab, bits('VERSION_1', 'MRG_RXBUF'));
    check();
    t.not(dev.stats().io, 'none', 'a running engine reports its I/O method');
  }));

test('stats().io read only after the engines stopped (as vhost-user\'s final statistics are) still names the method they used', (t) =>
  withNetns(async (ns) => {
    const sab = new SharedArrayBuffer(MEM);
    const dev = new VirtioNetDevice({ memory: sab, tap: ns.ifname(), netns: ns.name, io: 'readv' });
    t.teardown(() => dev.close());
    bringUp(dev, sab, bits('VERSION_1', 'MRG_RXBUF'));
    dev.status = 0;
    t.is(dev.stats().io, 'readv/writev');
  }));

// --- lifecycle ---------------------------------------------------------------------------

test('close() twice is fine; after close, methods throw DeviceStateError', (t) =>
  withNetns(async (ns) => {
    const sab = new SharedArrayBuffer(MEM);
    const dev = makeDevice(ns, { memory: sab });
    bringUp(dev, sab, bits('VERSION_1', 'MRG_RXBUF'));
    await dev.close();
    await dev.close();
    const q = { size: 16, desc: 0x1000, avail: 0x2000, used: 0x3000 };
    badState(t, () => (dev.status = 0), /closed/, 'status');
    badState(t, () => dev.setQueue(0, q), /closed/, 'setQueue');
    badState(t, () => dev.kick(1), /closed/, 'kick');
    badState(t, () => dev.notifier(1), /closed/, 'notifier');
    badState(t, () => dev.setLink(false), /closed/, 'setLink');
    badState(t, () => dev.announce(), /closed/, 'announce');
    t.false(ns.ip('-o', 'link').includes(dev.tapName), 'the TAP is gone');
  }));

test('driverFeatures cannot be written after close, even if the status allowed it before', (t) =>
  withNetns(async (ns) => {
    const dev = makeDevice(ns);
    dev.status = ACK | DRIVER;
    await dev.close();
    badState(t, () => (dev.driverFeatures = bit('VERSION_1')), /closed/);
  }));

// --- the control queue through the device ------------------------------------------------

for (const L of LAYOUTS) {
test(`${L.name}: control commands are handled and acked through the device`, (t) =>
  withNetns(async (ns) => {
    const sab = new SharedArrayBuffer(MEM);
    const dev = makeDevice(ns, { memory: sab, mac: '52:54:00:00:00:01' });
    const qs = bringUp(dev, sab, bits('VERSION_1', 'CTRL_VQ', 'CTRL_RX', 'CTRL_MAC_ADDR') | L.features);
    const cq = qs[2];
    const u8 = new Uint8Array(sab);
    const send = async (bytes: number[]): Promise<number> => {
      u8.set(bytes, HEAP);
      u8[HEAP + 0x100] = 0xee;
      cq.add([
        { addr: HEAP, len: bytes.length, write: false },
        { addr: HEAP + 0x100, len: 1, write: true },
      ]);
      cq.publish();
      dev.kick(2);
      let used: { id: number; len: number } | null = null;
      await until(() => (used = cq.popUsed({ id: 0, len: 0 })) !== null, 'control command completed');
      t.is(used!.len, 1);
      return u8[HEAP + 0x100];
    };
    const filter = event<Record<string, unknown>>(dev, 'rx-filter', 'after PROMISC off');
    // Awaited below; if a send fails first, its rejection must not crash the file (and its other tests).
    filter.catch(() => {});
    t.is(await send([CTRL.CLASS_RX, CTRL.RX_PROMISC, 0]), CTRL.OK);
    t.like(await filter, { promisc: false });
    t.is(await send([CTRL.CLASS_MAC, CTRL.MAC_ADDR_SET, 0x52, 0x54, 0, 0, 0, 0x22]), CTRL.OK);
    t.is(dev.config.getUint8(CONFIG.OFF_MAC + 5), 0x22);
    t.is(await send([CTRL.CLASS_MQ, CTRL.MQ_VQ_PAIRS_SET, 1, 0]), CTRL.ERR, 'MQ not negotiated');
    t.is(await send([CTRL.CLASS_RX, CTRL.RX_NOBCAST, 1]), CTRL.ERR, 'CTRL_RX_EXTRA not negotiated');
    t.is(await send([CTRL.CLASS_RX, CTRL.RX_PROMISC]), CTRL.ERR, 'missing on/off byte');
    t.is(await send([99, 0]), CTRL.ERR, 'unknown class');
    t.is(dev.status & DEVICE_NEEDS_RESET, 0);
  }));

// --- a hostile guest ---------------------------------------------------------------------

test(`${L.name}: a TX descriptor pointing past guest memory: needs-reset with queue and rule, then reset and re-init work`, (t) =>
  withNetns(async (ns) => {
    const sab = new SharedArrayBuffer(MEM);
    const dev = makeDevice(ns, { memory: sab });
    const features = bits('VERSION_1', 'MRG_RXBUF') | L.features;
    const [, tx] = bringUp(dev, sab, features);

    const len = txFrame(sab, HEAP);
    // The descriptor's slot: its head index (split), or the ring position it went to (packed).
    const slot = tx instanceof PackedDriverQueue ? tx.state.nextAvail : -1;
    const head = tx.addBuf(HEAP, len, false);
    // Garbage: the descriptor now points 64 KiB past the end of guest memory.
    new DataView(sab).setBigUint64(tx.addrs.desc + 16 * (slot >= 0 ? slot : head), BigInt(MEM + 0x10000), true);
    const broken = event<VirtioNetError>(dev, 'needs-reset', 'after a TX descriptor out of bounds');
    tx.publish();
    dev.kick(1);
    const err = await broken;
    t.true(err instanceof VirtioNetError);
    t.true(err instanceof VhostTapError);
    t.is(err.code, 'ERR_VHOST_GUEST_RULE');
    t.is(err.queue, 1);
    t.is(err.rule, 'desc-out-of-bounds');
    t.regex(err.message, /queue 1/);
    t.is(dev.status & DEVICE_NEEDS_RESET, DEVICE_NEEDS_RESET);
    t.true(dev.stats().queues[1].broken);
    t.is(tx.pending, 0, 'the bad chain was not returned as used');

    // Still alive: reset, initialise again, and a good frame goes out.
    dev.status = 0;
    t.is(dev.status, 0);
    const [, tx2] = bringUp(dev, sab, features);
    t.is(dev.status & DEVICE_NEEDS_RESET, 0);
    t.false(dev.stats().queues[1].broken);
    const before = dev.stats().totals.txPackets;
    tx2.addBuf(HEAP, txFrame(sab, HEAP), false);
    tx2.publish();
    dev.kick(1);
    await until(() => tx2.popUsed() !== null, 'TX chain used after re-init');
    t.is(dev.stats().totals.txPackets, before + 1);
  }));

test(`${L.name}: a hostile control queue chain (no ack byte): needs-reset naming the control queue`, (t) =>
  withNetns(async (ns) => {
    const sab = new SharedArrayBuffer(MEM);
    const dev = makeDevice(ns, { memory: sab });
    const qs = bringUp(dev, sab, bits('VERSION_1', 'CTRL_VQ', 'CTRL_RX') | L.features);
    new Uint8Array(sab).set([CTRL.CLASS_RX, CTRL.RX_PROMISC, 0], HEAP);
    qs[2].add([{ addr: HEAP, len: 3, write: false }]);
    const broken = event<VirtioNetError>(dev, 'needs-reset', 'after a control command without an ack byte');
    qs[2].publish();
    dev.kick(2);
    const err = await broken;
    t.true(err instanceof VirtioNetError);
    t.is(err.queue, 2);
    t.is(err.rule, 'header-too-short');
    t.is(dev.status & DEVICE_NEEDS_RESET, DEVICE_NEEDS_RESET);
    dev.status = 0;
    bringUp(dev, sab, bits('VERSION_1', 'CTRL_VQ', 'CTRL_RX') | L.features);
    t.is(dev.status, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
  }));
}
