// Faults under traffic on two queue pairs (issue 12): the TAP deleted from
// outside, the carrier and the link taken down, resets in the middle of
// batches, the guest posting no RX buffers for seconds, and close() while
// the device's workers and the guest's vCPU Workers are blocked. Each checks
// that the process lives, that the next initialisation works, and that every
// frame is accounted for:
//   - guest → host: every TX chain the device used is a frame written to the
//     TAP (the TAP's rx_packets agree) or a drop under a named counter;
//   - host → guest: every frame the TAP handed out (its tx_packets) was
//     delivered into the guest's ring or dropped under a named counter;
//     frames the kernel dropped before the TAP are in its own named counters
//     (tx_dropped), and the sender's count is matched against them where the
//     kernel keeps them.
// Traffic: a UDP flood from inside the namespace (32 source ports, so both
// pairs get flows) and a guest on the main thread posting TX frames.

import test, { type ExecutionContext } from 'ava';
import { setTimeout as sleep } from 'node:timers/promises';

import { bits, STATUS, TapError, VirtioNetDevice, type VirtioNetError } from '../backend/index';
import { GuestSim } from '../guest-sim/guest';
import { udpEcho } from './helpers/udp';
import { describeChild, runScenario } from './helpers/child';
import { requireRoot, withNetns, type Netns } from '../host/netns';
import { deviceAccounting, startFlood, tapCounters, TRAFFIC_FEATURES, TrafficGuest, type DeviceAccounting, type TapCounters } from './helpers/traffic-guest';
import { RING_LAYOUTS, type RingLayout } from './helpers/rings';

const HOST4 = '10.203.12.1';
const GUEST4 = '10.203.12.2';
const GUEST_MAC = '52:54:00:12:0c:02';
const PAIRS = 2;
/** Host → guest frames per second: enough that the TAP queues hold frames when a fault hits. */
const FLOOD_PPS = 20_000;
/** Guest → host frames posted per pair per pump round (a round is ~1 ms). */
const TX_PER_ROUND = 16;

test.before(() => {
  requireRoot();
});

interface Rig {
  ns: Netns;
  tap: string;
  dev: VirtioNetDevice;
  g: TrafficGuest;
  mem: SharedArrayBuffer;
  /** The features the guest asks for at every initialisation (RING_PACKED for the packed ring). */
  want: bigint;
}

async function rig(ns: Netns, layout: RingLayout = 'split'): Promise<Rig> {
  const want = TRAFFIC_FEATURES | (layout === 'packed' ? bits('RING_PACKED') : 0n);
  const tap = ns.ifname();
  const mem = new SharedArrayBuffer(TrafficGuest.memoryBytes(PAIRS));
  const dev = new VirtioNetDevice({ memory: mem, tap, netns: ns.name, queuePairs: PAIRS, mac: GUEST_MAC });
  ns.defer(() => void dev.close());
  const g = new TrafficGuest(dev, mem);
  await g.init(want);
  if ((dev.driverFeatures & bits('RING_PACKED')) !== (want & bits('RING_PACKED'))) throw new Error(`the guest did not get ${layout} rings`);
  ns.ip('addr', 'add', `${HOST4}/24`, 'dev', tap);
  ns.ip('neigh', 'replace', GUEST4, 'lladdr', GUEST_MAC, 'dev', tap, 'nud', 'permanent');
  return { ns, tap, dev, g, mem, want };
}

/** Runs the guest's pump on the event loop until stopped; errors end it and are rethrown by stop(). */
function pumping(g: TrafficGuest): { pause(): void; resume(): void; stop(): Promise<void> } {
  let running = true;
  let paused = false;
  let failure: unknown;
  const loop = (async () => {
    while (running) {
      if (!paused) {
        try {
          g.pump(TX_PER_ROUND);
        } catch (e) {
          failure = e;
          return;
        }
      }
      await sleep(1);
    }
  })();
  return {
    pause: () => (paused = true),
    resume: () => (paused = false),
    stop: async () => {
      running = false;
      await loop;
      if (failure) throw failure;
    },
  };
}

/** Pumps until nothing new arrives for a while and every posted TX frame came back (bounded). */
async function quiesce(g: TrafficGuest, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  let last = -1;
  let quietSince = Date.now();
  while (Date.now() < end) {
    g.pump(0);
    const seen = g.counts.rx + g.counts.txDone;
    if (seen !== last) {
      last = seen;
      quietSince = Date.now();
    } else if (Date.now() - quietSince > 400 && g.txInFlight === 0) return;
    await sleep(5);
  }
}

/** Waits (bounded) until the current session has moved frames both ways: the initialisation works. */
async function sessionWorks(t: ExecutionContext, r: Rig, what: string): Promise<void> {
  const flood = startFlood(r.ns, GUEST4, 2, 2000);
  const end = Date.now() + 15_000;
  while (Date.now() < end && (r.g.sessionRx === 0 || r.g.sessionTxDone === 0)) {
    r.g.pump(4);
    await sleep(2);
  }
  flood.stop();
  await flood.done;
  t.true(r.g.sessionRx > 0, `${what}: no frame reached the guest in the new session`);
  t.true(r.g.sessionTxDone > 0, `${what}: no TX frame completed in the new session`);
  t.is(r.dev.status & STATUS.DEVICE_NEEDS_RESET, 0, `${what}: DEVICE_NEEDS_RESET`);
}

/**
 * The accounting described at the top. `tap` false when the TAP is gone (no kernel counters).
 * `flood` is what the sender counted, checked against the kernel's counters when `hostExact`.
 */
async function accounted(t: ExecutionContext, r: Rig, what: string, opts: { tap: boolean }): Promise<{ dev: DeviceAccounting; tapc?: TapCounters }> {
  let dev = deviceAccounting(r.dev.stats());
  let tapc: TapCounters | undefined;
  // The device's and the TAP's counters at one quiet moment: the host stack still sends a
  // stray frame now and then (IPv6 neighbour discovery), which the TAP may count before the
  // device's next stats() does. Read the device on both sides of the TAP, until they agree.
  for (let i = 0; opts.tap && i < 20; i++) {
    tapc = tapCounters(r.ns, r.tap);
    const again = deviceAccounting(r.dev.stats());
    if (JSON.stringify(again) === JSON.stringify(dev)) break;
    dev = again;
    await sleep(50);
  }
  const detail = (): string => JSON.stringify({ dev, tap: tapc, guest: r.g.counts });
  t.is(dev.txUsedChains, dev.txPackets + dev.txDrops, `${what}: TX chains used = frames written + named drops ${detail()}`);
  t.true(r.g.counts.txDone <= dev.txUsedChains, `${what}: the guest got back no more chains than the device used ${detail()}`);
  if (tapc) {
    t.is(tapc.rxPackets, dev.txPackets, `${what}: the TAP received every frame the device wrote ${detail()}`);
    if (dev.rxReadErrors === 0) {
      t.is(tapc.txPackets, dev.rxPackets + dev.rxFrameDrops, `${what}: every frame read from the TAP was delivered or dropped under a name ${detail()}`);
    } else {
      t.true(tapc.txPackets <= dev.rxPackets + dev.rxFrameDrops + dev.rxReadErrors, `${what}: frames read from the TAP are accounted for ${detail()}`);
    }
  }
  t.log(`${what}: ${detail()}`);
  return { dev, tapc };
}

for (const layout of RING_LAYOUTS) {
test.serial(`${layout}: reset in the middle of batches, 6 times under traffic both ways: each re-initialisation works, every frame is accounted for`, (t) =>
  withNetns(async (ns) => {
    const r = await rig(ns, layout);
    const tap0 = tapCounters(ns, r.tap);
    const flood = startFlood(ns, GUEST4, 5, FLOOD_PPS);
    const pump = pumping(r.g);
    for (let i = 0; i < 6; i++) {
      await sleep(400);
      // The workers are moving frames both ways right now: reset and bring it up again.
      pump.pause();
      await r.g.init(r.want);
      pump.resume();
    }
    const sent = await flood.done;
    await pump.stop();
    await quiesce(r.g);
    const { tapc } = await accounted(t, r, 'after 6 resets', { tap: true });
    const s = r.dev.stats();
    t.true(s.queues[0].packets > 0 && s.queues[2].packets > 0, `both RX queues carried frames: ${s.queues[0].packets}, ${s.queues[2].packets}`);
    // Host side: every datagram sent was handed out by the TAP (to the device, which delivered
    // it or counted it: frames the TAP queues of pairs not yet started held at DRIVER_OK are
    // rx_pair_detached) or dropped by the TAP under tx_dropped (while the carrier was off at
    // a reset, or a queue was full). Before DRIVER_OK read those queues off, the kernel freed
    // their frames on detach, counted nowhere.
    const kernel = tapc!.txPackets - tap0.txPackets + (tapc!.txDropped - tap0.txDropped);
    t.log(`host sent ${sent.sent} (errors ${sent.errors}); TAP handed out or dropped ${kernel}`);
    t.true(kernel >= sent.sent, `every datagram sent was handed out or dropped by the TAP: sent ${sent.sent}, TAP ${kernel}`);
    t.true(kernel <= sent.sent + 1000, 'the TAP saw no more frames than were sent (plus the host stack\'s own few)');
    await sessionWorks(t, r, 'after the last reset');
  }));
}

test.serial('carrier off and on (setLink) and the link set down and up from the host, under traffic: counted, then traffic flows again', (t) =>
  withNetns(async (ns) => {
    const r = await rig(ns);
    const flood = startFlood(ns, GUEST4, 4, FLOOD_PPS);
    const pump = pumping(r.g);
    await sleep(500);
    r.dev.setLink(false);
    await sleep(700);
    r.dev.setLink(true);
    await sleep(500);
    ns.ip('link', 'set', 'dev', r.tap, 'down');
    await sleep(700);
    ns.ip('link', 'set', 'dev', r.tap, 'up');
    ns.ip('neigh', 'replace', GUEST4, 'lladdr', GUEST_MAC, 'dev', r.tap, 'nud', 'permanent');
    await flood.done;
    await pump.stop();
    await quiesce(r.g);
    const { dev } = await accounted(t, r, 'after carrier and link changes', { tap: true });
    // Writes to a TAP that is down fail with EIO: counted under its name, not lost.
    t.true((dev.drops['tx1.tap_write_eio'] ?? 0) + (dev.drops['tx3.tap_write_eio'] ?? 0) > 0, `TX to a down TAP counted as tap_write_eio: ${JSON.stringify(dev.drops)}`);
    await sessionWorks(t, r, 'after the link came back');
    r.g.sessionRx = 0;
    r.g.sessionTxDone = 0;
    await r.g.init();
    await sessionWorks(t, r, 'after a reset that followed');
  }));

test.serial('the guest posts no RX buffers for 3 s under a flood: the kernel counts what it drops, then delivery resumes', (t) =>
  withNetns(async (ns) => {
    const r = await rig(ns);
    const tap0 = tapCounters(ns, r.tap);
    const flood = startFlood(ns, GUEST4, 5, FLOOD_PPS);
    const pump = pumping(r.g);
    await sleep(700);
    r.g.rxPaused = true;
    await sleep(3000);
    const rxBefore = r.g.counts.rx;
    r.g.rxPaused = false;
    const sent = await flood.done;
    await pump.stop();
    await quiesce(r.g);
    t.true(r.g.counts.rx > rxBefore, 'frames were delivered again after the guest posted buffers');
    const { tapc } = await accounted(t, r, 'after 3 s without RX buffers', { tap: true });
    const kernelDrops = tapc!.txDropped - tap0.txDropped;
    t.true(kernelDrops > 0, 'with no buffers the TAP queues filled and the kernel counted its drops (tx_dropped)');
    // Nothing reset the carrier here: every datagram sent was handed out by the TAP or dropped
    // by it under tx_dropped (plus what the host stack sends on its own, a handful).
    const handled = tapc!.txPackets - tap0.txPackets + kernelDrops;
    t.true(handled >= sent.sent && handled <= sent.sent + 100, `sent ${sent.sent}, the TAP handed out or dropped ${handled}`);
    await sessionWorks(t, r, 'after the pause');
  }));

test.serial('the TAP deleted from outside under traffic: the process lives, reset succeeds, DRIVER_OK says the TAP is gone, a new device works', (t) =>
  withNetns(async (ns) => {
    const r = await rig(ns);
    const warnings: Error[] = [];
    r.dev.on('warning', (e: Error) => warnings.push(e));
    const flood = startFlood(ns, GUEST4, 3, FLOOD_PPS);
    const pump = pumping(r.g);
    await sleep(700);
    ns.ip('link', 'del', r.tap);
    await sleep(700);
    flood.stop();
    await flood.done.catch(() => undefined);
    await pump.stop();
    await quiesce(r.g, 3000);
    await accounted(t, r, 'after the TAP was deleted', { tap: false });
    // Writes to the orphaned queue fds fail; those frames are counted, not lost.
    const dev = deviceAccounting(r.dev.stats());
    t.true(dev.txDrops > 0, `writes after the deletion are counted drops: ${JSON.stringify(dev.drops)}`);
    // Status 0 always works; the TAP's refusal comes as a warning.
    t.notThrows(() => (r.dev.status = 0));
    t.is(r.dev.status, 0);
    t.true(warnings.some((w) => w instanceof TapError), 'reset reported the TAP as a warning');
    // The next initialisation cannot run on a TAP that is gone: a typed error that says so.
    const e = await t.throwsAsync(r.g.init(), { instanceOf: TapError });
    t.regex(e?.message ?? '', /no longer exists/);
    await r.dev.close();
    // A new device on the same name comes up and carries traffic.
    const mem = new SharedArrayBuffer(TrafficGuest.memoryBytes(PAIRS));
    const dev2 = new VirtioNetDevice({ memory: mem, tap: r.tap, netns: ns.name, queuePairs: PAIRS, mac: GUEST_MAC });
    ns.defer(() => void dev2.close());
    const g2 = new TrafficGuest(dev2, mem);
    await g2.init();
    ns.ip('addr', 'add', `${HOST4}/24`, 'dev', r.tap);
    ns.ip('neigh', 'replace', GUEST4, 'lladdr', GUEST_MAC, 'dev', r.tap, 'nud', 'permanent');
    await sessionWorks(t, { ...r, dev: dev2, g: g2, mem }, 'a new device on the same TAP name');
  }));

test.serial('close() while the device workers and the guest vCPU Workers are blocked, under traffic: both return, a new device works', (t) =>
  withNetns(async (ns) => {
    const tap = ns.ifname();
    const res = await runScenario('faults', ['close-blocked', ns.name, tap, HOST4, GUEST4, GUEST_MAC], 60_000);
    t.false(res.timedOut, `close() or a blocked vCPU Worker never returned: ${describeChild(res)}`);
    t.is(res.code, 0, describeChild(res));
    const out = res.result ?? {};
    t.is(out.closed, true, describeChild(res));
    t.deepEqual(out.woke, [true, true], `every blocked vCPU Worker woke at close(): ${describeChild(res)}`);
    t.true((out.rxBefore as number) > 0, 'traffic ran before the close');
    t.is(out.txUsedMatches, true, describeChild(res));
    t.true((out.nextSessionRx as number) > 0 && (out.nextSessionTx as number) > 0, `the next device works: ${describeChild(res)}`);
    t.deepEqual(out.uncaught, []);
  }));

test.serial('GuestSim.restart (driver reset and a fresh initialisation) under UDP echo, 3 times: no rule broken, the guest answers on every pair after each', (t) =>
  withNetns(async (ns) => {
    const tap = ns.ifname();
    const guest = await GuestSim.start({ tap, netns: ns.name, queuePairs: PAIRS, ip4: `${GUEST4}/24`, mac: GUEST_MAC });
    ns.defer(() => void guest.stop());
    const broken: string[] = [];
    guest.on('needs-reset', (e: VirtioNetError) => broken.push(e.message));
    ns.ip('addr', 'add', `${HOST4}/24`, 'dev', tap);
    ns.ip('neigh', 'replace', GUEST4, 'lladdr', GUEST_MAC, 'dev', tap, 'nud', 'permanent');
    for (let i = 0; i < 3; i++) {
      const before = udpEcho(ns, GUEST4, [64, 500], 16);
      t.is(before.echoed, before.sent, `echoes before restart ${i}`);
      await guest.restart();
      t.is(guest.device.activeQueuePairs, PAIRS);
    }
    const after = udpEcho(ns, GUEST4, [64, 500], 16);
    t.is(after.echoed, after.sent, 'echoes after the last restart');
    t.deepEqual(broken, [], 'no ring rule broken across restarts (the rings are initialised before DRIVER_OK)');
  }));
