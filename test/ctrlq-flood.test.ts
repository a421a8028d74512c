// A guest that queues many costly control commands at once and kicks once
// (issue 23): the device answers every one, in order, each ack only once its
// change is made, and the event loop of the process keeps running meanwhile —
// measured by a 1 ms timer in this process, the bound the issue asks for (a
// generous one: the work itself runs off the JS thread). Also: frames that
// arrive while pairs come and go are delivered or counted, traffic flows
// afterwards, and a reset or close in the middle of a flood returns at once.
// Real TAPs in a 'vt…' namespace the test creates; needs root.

import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { performance } from 'node:perf_hooks';

import test, { type ExecutionContext } from 'ava';

import { bits, CONFIG, CTRL, STATUS, VirtioNetDevice } from '../backend';
import { requireRoot, withNetns, type Netns } from '../host/netns';
import { MINI_FEATURES, MiniGuest, RxFrame } from './helpers/mini-guest';

/** The bound on an event-loop stall, in ms. */
const MAX_GAP_MS = 100;
/** Control ring size: 64 commands of two descriptors each. */
const CTRL_RING = 128;
const GUEST_MAC = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const GUEST_MAC_S = '52:54:00:12:34:56';

test.before(() => {
  requireRoot();
});

/**
 * Nanoseconds this thread has waited to run while runnable (the second field of
 * /proc/thread-self/schedstat): time the machine, not this process, took.
 */
function runqueueWaitMs(): number {
  return Number(fs.readFileSync('/proc/thread-self/schedstat', 'utf8').split(' ')[1]) / 1e6;
}

/**
 * Runs `during` under a 1 ms timer on this thread and returns the largest gap between its
 * runs: `gap` as the clock saw it, and `stall`, the same gap less the time the thread was
 * runnable but waited for a CPU. `stall` is what the event loop's own work cost (JS, and
 * system calls that sleep: a lock, an RCU grace period, a join); the rest is the machine's
 * load, which on a shared 2-vCPU test machine alone shows gaps of 50-300 ms in an idle
 * process. The bound is asserted on `stall`; both are logged.
 */
async function maxLoopGap<T>(during: () => Promise<T>, onTick: () => void = () => undefined): Promise<{ gap: number; stall: number; value: T }> {
  let last = performance.now();
  let lastWait = runqueueWaitMs();
  let gap = 0;
  let stall = 0;
  const tick = (): void => {
    const now = performance.now();
    const wait = runqueueWaitMs();
    gap = Math.max(gap, now - last);
    stall = Math.max(stall, now - last - (wait - lastWait));
    last = now;
    lastWait = wait;
    onTick();
  };
  const timer = setInterval(tick, 1);
  try {
    const value = await during();
    // A promise settles ahead of the timer that would see the last stall: let it run.
    await new Promise((r) => setTimeout(r, 20));
    return { gap, stall, value };
  } finally {
    clearInterval(timer);
  }
}

/** What the flood tests negotiate: the mini guest's features and interrupt coalescing. */
const FEATURES = MINI_FEATURES | bits('NOTF_COAL');

async function floodGuest(ns: Netns, pairs: number): Promise<{ g: MiniGuest; tap: string }> {
  const tap = ns.ifname();
  const mem = new SharedArrayBuffer(MiniGuest.memoryBytes(pairs));
  const device = new VirtioNetDevice({ memory: mem, tap, netns: ns.name, queuePairs: pairs, mac: GUEST_MAC_S });
  ns.defer(() => void device.close());
  const g = new MiniGuest(device, mem);
  await g.init(FEATURES, pairs, { ctrlFlood: CTRL_RING });
  return { g, tap };
}

const pairsSet = (n: number) => ({ cls: CTRL.CLASS_MQ, cmd: CTRL.MQ_VQ_PAIRS_SET, data: [n & 0xff, n >> 8] });

/**
 * Raw IPv4/UDP frames to the guest from inside the namespace, on 64 source ports (so the
 * kernel spreads them over the TAP's queues), for `ms`; each carries a 32-bit serial after
 * the UDP header. Resolves with how many were sent.
 */
function sendFrames(ns: Netns, tap: string, ms: number): Promise<number> {
  const py = `import socket,struct,time
s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW)
s.bind((${JSON.stringify(tap)},0))
dst=bytes.fromhex(${JSON.stringify(GUEST_MAC.map((b) => b.toString(16).padStart(2, '0')).join(''))})
n=0
end=time.time()+${ms / 1000}
while time.time()<end:
    for k in range(8):
        ip=struct.pack('!BBHHHBBH4s4s',0x45,0,20+8+4,0,0,64,17,0,bytes([10,9,0,1]),bytes([10,9,0,2]))
        udp=struct.pack('!HHHH',1000+n%64,7,8+4,0)
        s.send(dst+bytes.fromhex('020000000001')+b'\\x08\\x00'+ip+udp+struct.pack('!I',n))
        n+=1
    time.sleep(0.002)
print(n)`;
  const child = spawn('ip', ['netns', 'exec', ns.name, 'python3', '-c', py], { stdio: ['ignore', 'pipe', 'inherit'] });
  ns.defer(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d));
  const done = new Promise<number>((resolve, reject) => {
    child.once('exit', (code) => (code === 0 ? resolve(Number(out.trim())) : reject(new Error(`frame sender exited ${code}: ${out}`))));
  });
  done.catch(() => undefined); // killed at the namespace's end after a failure: the failure is the news
  return done;
}

/** The serial of a frame sendFrames built, or -1. */
function serialOf(f: Uint8Array): number {
  if (f.length < 14 + 20 + 8 + 4 || f[12] !== 0x08 || f[13] !== 0x00 || f[14 + 9] !== 17) return -1;
  return new DataView(f.buffer, f.byteOffset).getUint32(14 + 20 + 8);
}

/** The distinct serials among frames (others, e.g. the kernel's own IPv6 chatter, left out). */
function serials(frames: RxFrame[]): Set<number> {
  return new Set(frames.map((f) => serialOf(f.frame)).filter((n) => n >= 0));
}

function tapTxDropped(ns: Netns, tap: string): number {
  const [l] = ns.ipJson<{ stats64: { tx: { dropped: number } } }[]>('-s', 'link', 'show', tap);
  return l.stats64.tx.dropped;
}

function tapRxPackets(ns: Netns, tap: string): number {
  const [l] = ns.ipJson<{ stats64: { rx: { packets: number } } }[]>('-s', 'link', 'show', tap);
  return l.stats64.rx.packets;
}

async function pairsFlood(t: ExecutionContext, pairs: number): Promise<void> {
  await withNetns(async (ns) => {
    const { g, tap } = await floodGuest(ns, pairs);
    const d = g.device;
    const cmds = Array.from({ length: 64 }, (_, i) => pairsSet(i % 2 === 0 ? pairs : 1));
    // When the device says a command's change is made, its ack must not be visible yet.
    const changes: { n: number; active: number; usedIdx: number }[] = [];
    d.on('queue-pairs', (n) => changes.push({ n, active: d.activeQueuePairs, usedIdx: g.ctrlUsedIdx() }));
    const frames: RxFrame[] = [];
    const dropsBefore = tapTxDropped(ns, tap);
    const sending = sendFrames(ns, tap, 1500);
    await new Promise((r) => setTimeout(r, 200)); // traffic first, so that pairs leave with frames queued
    const { gap, stall, value: answers } = await maxLoopGap(() => g.floodCtrl(cmds), () => frames.push(...g.drain()));
    t.log(`${pairs} pairs, 64 VQ_PAIRS_SET: largest event-loop gap ${gap.toFixed(1)} ms, ${stall.toFixed(1)} ms of it the loop's own`);
    t.true(stall < MAX_GAP_MS, `the event loop stalled ${stall.toFixed(1)} ms (bound ${MAX_GAP_MS} ms; ${gap.toFixed(1)} ms with waiting for a CPU)`);
    t.deepEqual(
      answers.map((a) => a.index),
      cmds.map((_, i) => i),
      'answered in order',
    );
    t.true(
      answers.every((a) => a.ack === CTRL.OK),
      `every command acked OK: ${answers.map((a) => a.ack).join(',')}`,
    );
    t.deepEqual(
      changes.map((c) => c.n),
      cmds.map((c) => c.data[0]),
      'each change made, in order',
    );
    changes.forEach((c, k) => {
      t.is(c.active, c.n, `change ${k}: ${c.n} pairs run when the device says so`);
      t.true(c.usedIdx <= k, `change ${k}: its ack was not visible before the change was made (used.idx ${c.usedIdx})`);
    });
    t.is(d.activeQueuePairs, 1);

    // Every frame sent during the flood reached the guest or was counted as dropped.
    const sent = await sending;
    // What the kernel still holds reaches the guest now (bounded wait: a slow machine is not a loss).
    frames.push(...(await g.collect(10_000, (f) => serials([...frames, ...f]).size + d.stats().totals.drops >= sent)));
    const got = serials(frames);
    const st = d.stats();
    const accounted = st.totals.drops + (tapTxDropped(ns, tap) - dropsBefore);
    t.true(sent > 100, `traffic ran: ${sent} frames`);
    t.true(sent - got.size <= accounted, `lost ${sent - got.size} of ${sent}; counted: ${accounted} ${JSON.stringify(st.queues.map((q) => q.drops))}`);

    // Traffic flows afterwards, on every pair.
    const [again] = await g.floodCtrl([pairsSet(pairs)]);
    t.is(again.ack, CTRL.OK);
    t.is(d.activeQueuePairs, pairs);
    g.drain();
    const sent2 = await sendFrames(ns, tap, 300);
    const after = serials(await g.collect(10_000, (f) => serials(f).size >= sent2));
    t.is(after.size, sent2, 'every frame sent after the flood arrived');
    const rxBefore = tapRxPackets(ns, tap);
    for (let p = 0; p < pairs; p++) g.send(p, Uint8Array.from([...[0xff, 0xff, 0xff, 0xff, 0xff, 0xff], ...GUEST_MAC, 0x88, 0xb5, ...new Array(46).fill(p)]));
    const deadline = Date.now() + 10_000;
    while (tapRxPackets(ns, tap) - rxBefore < pairs && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    t.is(tapRxPackets(ns, tap) - rxBefore, pairs, 'a frame sent on each pair reached the TAP');
  });
}

test.serial('64 VQ_PAIRS_SET (4 <-> 1 pairs) queued at once: acked OK in order, each after its change, no event-loop stall, frames accounted, traffic after', (t) => pairsFlood(t, 4));

test.serial('64 VQ_PAIRS_SET (16 <-> 1 pairs) queued at once: acked OK in order, each after its change, no event-loop stall, frames accounted, traffic after', (t) => pairsFlood(t, 16));

test.serial('64 costly commands of every kind queued at once (MAC tables of 1024, VLAN, RX modes, GUEST_OFFLOADS, coalescing, announce, MAC address, pairs): all acked in order, no event-loop stall', async (t) => {
  await withNetns(async (ns) => {
    const pairs = 16;
    const { g } = await floodGuest(ns, pairs);
    const d = g.device;
    const table = (n: number, seed: number): number[] => {
      const out = [n & 0xff, n >> 8, 0, 0];
      for (let i = 0; i < n; i++) out.push(0x02, seed, (i >> 8) & 0xff, i & 0xff, 0, 1);
      return out;
    };
    const u32s = (...v: number[]): number[] => v.flatMap((x) => [x & 0xff, (x >> 8) & 0xff, (x >> 16) & 0xff, x >>> 24]);
    const kinds = [
      (i: number) => ({ cls: CTRL.CLASS_MAC, cmd: CTRL.MAC_TABLE_SET, data: [...table(1024, i), ...table(0, 0)] }),
      (i: number) => ({ cls: CTRL.CLASS_VLAN, cmd: i % 4 < 2 ? CTRL.VLAN_ADD : CTRL.VLAN_DEL, data: [i, 0] }),
      (i: number) => ({ cls: CTRL.CLASS_RX, cmd: CTRL.RX_PROMISC, data: [i % 2] }),
      (i: number) => ({ cls: CTRL.CLASS_GUEST_OFFLOADS, cmd: CTRL.GUEST_OFFLOADS_SET, data: [i % 2 ? 2 : 0, 0, 0, 0, 0, 0, 0, 0] }),
      (i: number) => ({ cls: CTRL.CLASS_NOTF_COAL, cmd: CTRL.NOTF_COAL_RX_SET, data: u32s(i, 10 * i) }),
      () => ({ cls: CTRL.CLASS_ANNOUNCE, cmd: CTRL.ANNOUNCE_ACK, data: [] }),
      (i: number) => ({ cls: CTRL.CLASS_MAC, cmd: CTRL.MAC_ADDR_SET, data: [0x52, 0x54, 0, 0, 0, i] }),
      (i: number) => pairsSet(i % 2 ? pairs : 1),
    ];
    const cmds = Array.from({ length: 64 }, (_, i) => kinds[i % kinds.length](i));
    const { gap, stall, value: answers } = await maxLoopGap(() => g.floodCtrl(cmds));
    t.log(`64 mixed commands, ${pairs} pairs: largest event-loop gap ${gap.toFixed(1)} ms, ${stall.toFixed(1)} ms of it the loop's own`);
    t.true(stall < MAX_GAP_MS, `the event loop stalled ${stall.toFixed(1)} ms (bound ${MAX_GAP_MS} ms; ${gap.toFixed(1)} ms with waiting for a CPU)`);
    t.deepEqual(
      answers.map((a) => a.index),
      cmds.map((_, i) => i),
      'answered in order',
    );
    t.deepEqual(
      answers.filter((a) => a.ack !== CTRL.OK).map((a) => `${a.index}: ${cmds[a.index].cls}/${cmds[a.index].cmd}`),
      [],
      'every command acked OK',
    );
    // The state the last command of each kind asked for (kind k last at index 56 + k).
    t.is(d.activeQueuePairs, pairs);
    const f = d.rxFilter.describe();
    t.is(f.unicast, 1024);
    t.is(f.promisc, false);
    t.is(f.vlans, 8);
    t.deepEqual(
      Array.from({ length: 6 }, (_, i) => d.config.getUint8(CONFIG.OFF_MAC + i)),
      [0x52, 0x54, 0, 0, 0, 62],
    );
  });
});

/** Queue-pair workers running in this process (engine threads name themselves vt-pair<p>); the tests here run one at a time. */
function pairWorkers(): number {
  return fs.readdirSync('/proc/self/task').filter((id) => {
    try {
      return fs.readFileSync(`/proc/self/task/${id}/comm`, 'utf8').startsWith('vt-pair');
    } catch {
      return false; // the thread ended between the listing and the read
    }
  }).length;
}

test.serial('a reset and a close in the middle of a 16-pair VQ_PAIRS_SET flood return at once; the device works after the reset', async (t) => {
  await withNetns(async (ns) => {
    const pairs = 16;
    const { g, tap } = await floodGuest(ns, pairs);
    const d = g.device;
    const warnings: Error[] = [];
    d.on('warning', (e) => warnings.push(e));
    const cmds = Array.from({ length: 64 }, (_, i) => pairsSet(i % 2 === 0 ? pairs : 1));
    const { gap, stall } = await maxLoopGap(async () => {
      void g.floodCtrl(cmds, 2000).catch(() => undefined); // never all answered: the reset ends it
      await new Promise((r) => setTimeout(r, 30));
      d.status = 0;
    });
    t.log(`reset during the flood: largest event-loop gap ${gap.toFixed(1)} ms, ${stall.toFixed(1)} ms of it the loop's own`);
    t.true(stall < MAX_GAP_MS, `the event loop stalled ${stall.toFixed(1)} ms (bound ${MAX_GAP_MS} ms; ${gap.toFixed(1)} ms with waiting for a CPU)`);
    t.is(d.status, 0);
    t.is(pairWorkers(), 0, 'no worker runs after the reset');
    t.deepEqual(warnings, [], 'a change cut short by a reset is not a warning');
    // Commands still in flight from before the reset change nothing now.
    await new Promise((r) => setTimeout(r, 300));
    t.is(pairWorkers(), 0);

    await g.init(FEATURES, pairs, { ctrlFlood: CTRL_RING });
    const [a] = await g.floodCtrl([pairsSet(pairs)]);
    t.is(a.ack, CTRL.OK);
    t.is(d.activeQueuePairs, pairs);
    const sent = await sendFrames(ns, tap, 200);
    const got = serials(await g.collect(10_000, (f) => serials(f).size >= sent));
    t.is(got.size, sent, 'traffic flows on the re-initialised device');

    const closing = await maxLoopGap(async () => {
      void g.floodCtrl(cmds, 2000).catch(() => undefined);
      await new Promise((r) => setTimeout(r, 30));
      await d.close();
    });
    t.log(`close during the flood: largest event-loop gap ${closing.gap.toFixed(1)} ms, ${closing.stall.toFixed(1)} ms of it the loop's own`);
    t.true(closing.stall < MAX_GAP_MS, `the event loop stalled ${closing.stall.toFixed(1)} ms (bound ${MAX_GAP_MS} ms; ${closing.gap.toFixed(1)} ms with waiting for a CPU)`);
    t.throws(() => (d.status = STATUS.ACKNOWLEDGE), { message: /closed/ });
  });
});
