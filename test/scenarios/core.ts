// Child-process scenarios for test/hostile-core.test.ts: hostile guests whose
// effect on broken code is a worker spinning forever (reset and close then
// block the JS thread), an event loop held for minutes, an exception that
// ends the process, or a use-after-free. Each prints one JSON line; the parent
// bounds the run and kills the child when it hangs.
// Usage: node core.js SCENARIO NETNS TAP [ARGS]

import {
  bit,
  bits,
  CTRL,
  ctrlq,
  RING,
  STATUS,
  txq,
  VirtioNetDevice,
  type VirtioNetError,
} from '../../backend';
import { ControlDriver, CTRL_BUF_BYTES, DriverQueue } from '../../driver';
import { scenarioMain } from '../helpers/child';

const { ACKNOWLEDGE: ACK, DRIVER, FEATURES_OK, DRIVER_OK } = STATUS;

const uncaught: string[] = [];
process.on('uncaughtException', (e) => uncaught.push(String((e as Error)?.stack ?? e)));

function out(o: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify({ ...o, uncaught })}\n`);
}

function describe(e: unknown): string {
  return `${(e as Error)?.name}:${String((e as { code?: string })?.code)}:${(e as Error)?.message}`;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Negotiates `features` (must be offered) and leaves the device before setQueue. */
function negotiate(dev: VirtioNetDevice, features: bigint): void {
  dev.status = 0;
  dev.status = ACK;
  dev.status = ACK | DRIVER;
  dev.driverFeatures = features;
  dev.status = ACK | DRIVER | FEATURES_OK;
  if (!(dev.status & FEATURES_OK)) throw new Error(`FEATURES_OK refused: ${dev.featuresRefusal}`);
}

/** A 12-byte zero header and a 60-byte broadcast frame at `at`; returns its length. */
function frameAt(u8: Uint8Array, at: number): number {
  u8.fill(0, at, at + 72);
  u8.set([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0, 0, 0, 1, 0x88, 0xb5], at + 12);
  return 72;
}

/**
 * Class 1: the TX used ring starts two bytes after the avail ring, so used.flags is avail.idx.
 * Without EVENT_IDX, every "re-enable kicks" write is read back as new work. The guest posts one
 * valid frame and kicks; then the driver resets and closes. Both must return.
 */
async function overlapSpin(ns: string, tap: string): Promise<void> {
  const sab = new SharedArrayBuffer(1 << 20);
  const u8 = new Uint8Array(sab);
  const dv = new DataView(sab);
  const dev = new VirtioNetDevice({ memory: sab, tap, netns: ns });
  const size = 16;
  negotiate(dev, bit('VERSION_1'));
  const rx = DriverQueue.layout(0, size);
  new DriverQueue(sab, { size, desc: rx.desc, avail: rx.avail, used: rx.used }, { eventIdx: false });
  const desc = 0x10000;
  const avail = 0x11002; // 2-aligned, and avail + 2 is 4-aligned for used
  const used = avail + 2;
  const buf = 0x20000;
  // desc 0: one valid TX frame; avail.ring[0] is used.idx (0), so head 0.
  dv.setBigUint64(desc, BigInt(buf), true);
  dv.setUint32(desc + 8, frameAt(u8, buf), true);
  let refused = '';
  let needsReset = '';
  dev.on('needs-reset', (e: VirtioNetError) => (needsReset = e.rule));
  try {
    dev.setQueue(0, { size, desc: rx.desc, avail: rx.avail, used: rx.used });
    dev.setQueue(1, { size, desc, avail, used });
    dev.status = ACK | DRIVER | FEATURES_OK | DRIVER_OK;
    // The driver publishes one chain: avail.idx (= used.flags) = 1.
    dv.setUint16(avail + 2, 1, true);
    dev.kick(txq(0));
    // Let the worker take it (and, on broken code, start spinning).
    await sleep(300);
  } catch (e) {
    refused = describe(e);
  }
  const stats = dev.stats().queues[1];
  process.stdout.write('resetting\n');
  dev.status = 0;
  process.stdout.write('reset returned\n');
  await dev.close();
  out({ refused, needsReset, txPackets: stats.packets, closed: true });
}

/**
 * Class 1, second form: the TX used ring lies over the descriptor table, so the device would
 * follow descriptors it rewrote itself. The layout must be refused (typed error at setQueue or
 * DRIVER_OK, or DEVICE_NEEDS_RESET) before any frame is taken from it.
 */
async function usedOverDesc(ns: string, tap: string): Promise<void> {
  const sab = new SharedArrayBuffer(1 << 20);
  const u8 = new Uint8Array(sab);
  const dv = new DataView(sab);
  const dev = new VirtioNetDevice({ memory: sab, tap, netns: ns });
  const size = 16;
  negotiate(dev, bit('VERSION_1'));
  const rx = DriverQueue.layout(0, size);
  new DriverQueue(sab, { size, desc: rx.desc, avail: rx.avail, used: rx.used }, { eventIdx: false });
  const desc = 0x10000;
  const avail = 0x11000;
  const buf = 0x20000;
  for (let i = 0; i < 4; i++) {
    dv.setBigUint64(desc + 16 * i, BigInt(buf + 128 * i), true);
    dv.setUint32(desc + 16 * i + 8, frameAt(u8, buf + 128 * i), true);
    dv.setUint16(avail + 4 + 2 * i, i, true);
  }
  let refused = '';
  let needsReset = '';
  dev.on('needs-reset', (e: VirtioNetError) => (needsReset = e.rule));
  try {
    dev.setQueue(0, { size, desc: rx.desc, avail: rx.avail, used: rx.used });
    dev.setQueue(1, { size, desc, avail, used: desc });
    dev.status = ACK | DRIVER | FEATURES_OK | DRIVER_OK;
    dv.setUint16(avail + 2, 4, true);
    dev.kick(txq(0));
    for (let i = 0; i < 100 && !needsReset && dev.stats().queues[1].packets < 4; i++) await sleep(10);
  } catch (e) {
    refused = describe(e);
  }
  const s = dev.stats().queues[1];
  const status = dev.status;
  dev.status = 0;
  await dev.close();
  out({ refused, needsReset, status, txPackets: s.packets, txDrops: s.drops });
}

/**
 * Class 2: guest memory of `gib` GiB with the control queue, its rings and command buffer near
 * the top (addresses above 2^31). DRIVER_OK must work and commands must be answered.
 */
async function bigMemoryCtrl(ns: string, tap: string, gib: number): Promise<void> {
  const bytes = gib * 2 ** 30;
  const sab = new SharedArrayBuffer(bytes);
  const dev = new VirtioNetDevice({ memory: sab, tap, netns: ns });
  const features = bits('VERSION_1', 'CTRL_VQ', 'CTRL_RX', 'CTRL_VLAN');
  let driverOk = 'ok';
  const acks: (number | string)[] = [];
  try {
    negotiate(dev, features);
    const size = 64;
    const rx = DriverQueue.layout(0, size);
    const tx = DriverQueue.layout(rx.end, size);
    const cq = DriverQueue.layout(bytes - (1 << 20), size);
    for (const [i, l] of [[0, rx], [1, tx]] as const) {
      new DriverQueue(sab, { size, desc: l.desc, avail: l.avail, used: l.used }, { eventIdx: false });
      dev.setQueue(i, { size, desc: l.desc, avail: l.avail, used: l.used });
    }
    const addrs = { size, desc: cq.desc, avail: cq.avail, used: cq.used };
    const ctrl = new ControlDriver(dev, sab, ctrlq(1), addrs, false, bytes - CTRL_BUF_BYTES - 4096);
    dev.setQueue(ctrlq(1), addrs);
    try {
      dev.status = ACK | DRIVER | FEATURES_OK | DRIVER_OK;
    } catch (e) {
      driverOk = describe(e);
    }
    if (driverOk === 'ok') {
      for (const [cls, cmd, data] of [
        [CTRL.CLASS_RX, CTRL.RX_PROMISC, [1]],
        [CTRL.CLASS_VLAN, CTRL.VLAN_ADD, [5, 0]],
        [CTRL.CLASS_RX, CTRL.RX_PROMISC, [0]],
      ] as const) {
        acks.push(await ctrl.command(cls, cmd, Uint8Array.from(data)).catch((e: Error) => e.message));
      }
    }
  } finally {
    dev.status = 0;
    await dev.close();
  }
  out({ driverOk, acks });
}

/**
 * Class 3: a control queue of 32768 entries, every avail slot naming head 0, whose chain visits
 * every descriptor (zero-length readable ones, then the ack byte). One kick. The event loop must
 * keep turning: a setImmediate queued right after the kick runs, timers keep firing, and the
 * queue ends answered or broken (a rule), after which reset and close return.
 */
async function ctrlStall(ns: string, tap: string): Promise<void> {
  const size = RING.MAX_SIZE;
  const sab = new SharedArrayBuffer(8 << 20);
  const dv = new DataView(sab);
  const dev = new VirtioNetDevice({ memory: sab, tap, netns: ns });
  negotiate(dev, bits('VERSION_1', 'CTRL_VQ', 'CTRL_RX'));
  const small = 64;
  const rx = DriverQueue.layout(0, small);
  const tx = DriverQueue.layout(rx.end, small);
  for (const [i, l] of [[0, rx], [1, tx]] as const) {
    new DriverQueue(sab, { size: small, desc: l.desc, avail: l.avail, used: l.used }, { eventIdx: false });
    dev.setQueue(i, { size: small, desc: l.desc, avail: l.avail, used: l.used });
  }
  const cq = DriverQueue.layout(1 << 20, size);
  const ack = 6 << 20;
  for (let i = 0; i < size; i++) {
    const d = cq.desc + 16 * i;
    const last = i === size - 1;
    dv.setBigUint64(d, BigInt(last ? ack : ack + 64), true);
    dv.setUint32(d + 8, last ? 1 : 0, true);
    dv.setUint16(d + 12, last ? RING.DESC_F_WRITE : RING.DESC_F_NEXT, true);
    dv.setUint16(d + 14, last ? 0 : i + 1, true);
  }
  // avail.ring is all zeros (head 0 everywhere); publish all of it.
  let refused = '';
  let rule = '';
  dev.on('needs-reset', (e: VirtioNetError) => (rule = e.rule));
  try {
    dev.setQueue(ctrlq(1), { size, desc: cq.desc, avail: cq.avail, used: cq.used });
    dev.status = ACK | DRIVER | FEATURES_OK | DRIVER_OK;
  } catch (e) {
    refused = describe(e);
  }
  let ticks = 0;
  let immediate = false;
  let answered = 0;
  if (!refused) {
    const timer = setInterval(() => ticks++, 5);
    dv.setUint16(cq.avail + 2, size, true);
    dev.kick(ctrlq(1));
    await new Promise<void>((r) => setImmediate(() => {
      immediate = true;
      r();
    }));
    const startTicks = ticks;
    // While the device works through the queue, timers keep firing: 20 of them (or the queue
    // done: all answered or broken) and the driver resets in the middle of it.
    for (;;) {
      answered = dv.getUint16(cq.used + 2, true);
      if (rule || answered === size % 0x10000 || ticks - startTicks >= 20) break;
      await sleep(20);
    }
    ticks -= startTicks;
    clearInterval(timer);
  }
  dev.status = 0;
  await dev.close();
  out({ refused, immediate, ticks, answered, rule });
}

/**
 * Class 6: a Proxy around a SharedArrayBuffer passes `instanceof`. The device must refuse it
 * (typed), or else really use the memory the Proxy stands for; a device that worked on a
 * temporary copy sees none of the guest's rings (and AddressSanitizer sees a use-after-free).
 */
async function proxyMemory(ns: string, tap: string, kind: string): Promise<void> {
  const sab = new SharedArrayBuffer(1 << 20);
  const handler: ProxyHandler<SharedArrayBuffer> =
    kind === 'forwarding'
      ? {
          get(t, k) {
            if (k === 'length') return t.byteLength;
            const v = Reflect.get(t, k, t) as unknown;
            return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(t) : v;
          },
        }
      : {};
  const proxy = new Proxy(sab, handler);
  let dev: VirtioNetDevice;
  try {
    dev = new VirtioNetDevice({ memory: proxy, tap, netns: ns });
  } catch (e) {
    out({ refused: describe(e) });
    return;
  }
  let sent = false;
  let refused = '';
  try {
    negotiate(dev, bit('VERSION_1'));
    const size = 16;
    const lr = DriverQueue.layout(0, size);
    const lt = DriverQueue.layout(lr.end, size);
    const rxq = new DriverQueue(sab, { size, desc: lr.desc, avail: lr.avail, used: lr.used }, { eventIdx: false });
    const txr = new DriverQueue(sab, { size, desc: lt.desc, avail: lt.avail, used: lt.used }, { eventIdx: false });
    dev.setQueue(0, rxq.addrs);
    dev.setQueue(1, txr.addrs);
    dev.status = ACK | DRIVER | FEATURES_OK | DRIVER_OK;
    // Whatever temporary the device made is garbage now: collect it.
    const gc = (globalThis as { gc?: () => void }).gc;
    for (let i = 0; i < 5; i++) {
      void new Array(1 << 16).fill(0).map((_, j) => ({ j }));
      gc?.();
      await sleep(10);
    }
    const u8 = new Uint8Array(sab);
    txr.addBuf(0x40000, frameAt(u8, 0x40000), false);
    if (txr.publish()) dev.kick(txq(0));
    for (let i = 0; i < 200 && !sent; i++) {
      sent = txr.pending > 0;
      await sleep(10);
    }
  } catch (e) {
    refused = describe(e);
  }
  dev.status = 0;
  await dev.close();
  out({ refused, sent });
}

async function main(): Promise<void> {
  const [scenario, ns, tap, ...args] = process.argv.slice(2);
  switch (scenario) {
    case 'overlap-spin':
      return overlapSpin(ns, tap);
    case 'used-over-desc':
      return usedOverDesc(ns, tap);
    case 'big-memory-ctrl':
      return bigMemoryCtrl(ns, tap, Number(args[0]));
    case 'ctrl-stall':
      return ctrlStall(ns, tap);
    case 'proxy-memory':
      return proxyMemory(ns, tap, args[0]);
    default:
      throw new Error(`unknown scenario '${scenario}'`);
  }
}

scenarioMain(main);
