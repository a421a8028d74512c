// The things the benchmark races on the same TAP with the same traffic:
// vhost-tap (VirtioNetDevice + native engine), the two C baselines
// (bench/baseline.c: a write()/read() loop and batched io_uring) and the
// plain-Node JS device (bench/node-loop.ts). Each runs one trial: set up, warm
// up, measure a window, tear down, and returns counters and per-thread CPU for
// that window only.

import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';

import { bits, rxq, STATUS, txq, VirtioNetDevice, ctrlq, CTRL, TUN, TapQueues, eventfd, kick, HDR, RSS_MAX_INDIRECTION_TABLE_LENGTH, SUPPORTED_HASH_TYPES } from '../backend';
import { ControlDriver, CTRL_BUF_BYTES, DriverQueue } from '../driver';
import { GUEST_MAC, HDR_LEN, Records } from './frames';
import { NodeLoopConfig } from './node-loop';
import { TCTL, TCTL_BYTES, TrafficConfig } from './traffic-worker';

// 'vhost' is the default engine (io_uring batching where the kernel allows it);
// 'vhost-readv' is the same device with option io: 'readv' (one readv/writev per
// frame), so the table shows what batching buys next to the same baselines.
// 'c' is one write()/read() per frame; 'c-uring' batches of 64 io_uring
// requests on a registered fd: the syscall ceiling and the batching ceiling.
// 'vhost-sqpoll' is the device with option sqpoll (a kernel thread polls the
// io_uring submission ring; its CPU counts as backend CPU): opt-in, since it
// needs a spare core per pair. 'vhost-coal' is the device with a guest that
// asks for RX interrupt coalescing (NOTF_COAL, GUEST_COALESCING), as a Linux
// guest does with `ethtool -C eth0 rx-usecs 50 rx-frames 64`. 'vhost-rss' is the
// device with a guest that negotiates RSS and HASH_REPORT and configures RSS over all
// its pairs (RX cases only; opt-in): the TAP's steering program picks each frame's
// queue and the worker writes each frame's hash into its 20-byte header.
export type Contender = 'vhost' | 'vhost-readv' | 'vhost-sqpoll' | 'vhost-coal' | 'vhost-rss' | 'c' | 'c-uring' | 'node';
export const CONTENDERS: Contender[] = ['vhost', 'vhost-readv', 'vhost-sqpoll', 'vhost-coal', 'vhost-rss', 'c', 'c-uring', 'node'];
/** What runs when --contenders is not given: everything but vhost-sqpoll and vhost-rss. */
export const DEFAULT_CONTENDERS: Contender[] = CONTENDERS.filter((k) => k !== 'vhost-sqpoll' && k !== 'vhost-rss');
export const CONTENDER_NAMES: Record<Contender, string> = {
  vhost: 'vhost-tap',
  'vhost-readv': 'vhost-tap readv',
  'vhost-sqpoll': 'vhost-tap sqpoll',
  'vhost-coal': 'vhost-tap coalesced',
  'vhost-rss': 'vhost-tap RSS',
  c: 'C loop',
  'c-uring': 'C io_uring',
  node: 'Node loop',
};

/** A contender this machine cannot run (e.g. io_uring disabled); the bench reports it and goes on. */
export class ContenderUnavailable extends Error {}

export interface Trial {
  dir: 'tx' | 'rx';
  gso: boolean;
  queues: number;
  recs: Records;
  /** Path of recs written to disk, for the C programs. */
  file: string;
}

export interface Env {
  ns: string;
  tap: string;
  outDir: string;
  warmupMs: number;
  durationMs: number;
  ringSize: number;
  txqlen: number;
  /** dpdk case: back ends pinned to CPU 0 and the driver's poller to CPU 1 (--pin). */
  pin?: boolean;
  /** Children the harness must end on SIGINT, by pid. */
  children: Set<ChildProcess>;
}

export interface Sample {
  frames: number;
  bytes: number;
  wallNs: number;
  /** CPU of the threads that are the backend (engine threads, JS device workers, C I/O threads). */
  backendCpuNs: number;
  backendThreads: number;
  /** CPU of the guest's traffic workers (not for the C loop, which has no guest). */
  guestCpuNs: number | null;
  /** vhost-tap: stats().io; C io_uring: the ring setup it got (e.g. 'defer-taskrun+fixed-file'). */
  io?: string;
  drops?: number;
  interrupts?: number;
  kicks?: number;
  guestWakeups?: number;
  /** vhost-tap: times the engine threads slept (voluntary context switches): how often the backend ran dry. */
  backendSleeps?: number;
  /** RX: what the source sent and what the TAP dropped (queue full) during the trial. */
  source?: { sent: number; drops: number };
  /** TX: frames the namespace's stack received from the TAP (the sink), whole trial. */
  sinkRxPackets?: number;
}

const RX_BUF = 2048;
const RX_BUF_GSO = 16384;
const RX_FRAME_MAX_GSO = HDR_LEN + 14 + 65535 + 13; // what backend/features.ts allows with GUEST_TSO4

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * Signals a child the bench started, unless it is gone. Node reaps a child
 * before it runs the 'exit' handlers, so exitCode can still be null for a pid
 * that no longer exists: kill() then throws ESRCH, which only means "done".
 */
export function signalChild(child: ChildProcess, sig: NodeJS.Signals): void {
  if (child.exitCode !== null || child.signalCode !== null || !child.pid) return;
  try {
    process.kill(child.pid, sig);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ESRCH') throw e;
  }
}
const alignUp = (n: number, a: number): number => Math.ceil(n / a) * a;

/** Run time of one of this process's threads, ns (schedstat), or from stat ticks if schedstat is missing. */
export function threadCpuNs(tid: number): number {
  try {
    return Number(fs.readFileSync(`/proc/self/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
  } catch {
    try {
      const f = fs.readFileSync(`/proc/self/task/${tid}/stat`, 'utf8').split(') ')[1].split(' ');
      return (Number(f[11]) + Number(f[12])) * 1e7;
    } catch {
      return 0; // the thread is gone
    }
  }
}

export function tids(): Set<number> {
  return new Set(fs.readdirSync('/proc/self/task').map(Number));
}

export function cpuOf(list: number[]): number {
  return list.reduce((s, t) => s + threadCpuNs(t), 0);
}

/** Voluntary context switches of this process's threads `list` (each one a sleep: epoll_wait, a blocking read). */
function sleepsOf(list: number[]): number {
  let n = 0;
  for (const t of list) {
    try {
      const m = /voluntary_ctxt_switches:\s+(\d+)/.exec(fs.readFileSync(`/proc/self/task/${t}/status`, 'utf8'));
      if (m) n += Number(m[1]);
    } catch {
      // Gone meanwhile.
    }
  }
  return n;
}

/** Guest memory for `queues` pairs: rings plus the buffers of the direction under test. */
interface Layout {
  mem: SharedArrayBuffer;
  pairs: { rx: { desc: number; avail: number; used: number }; tx: { desc: number; avail: number; used: number }; base: number; slot: number; len: number }[];
  ctrl?: { addrs: { size: number; desc: number; avail: number; used: number }; buf: number };
}

function layout(t: Trial, ringSize: number, withCtrl: boolean): Layout {
  const slot = t.dir === 'tx' ? alignUp(t.recs.reclen, 64) : t.gso ? RX_BUF_GSO : RX_BUF;
  const len = t.dir === 'tx' ? t.recs.reclen : slot;
  let next = 0;
  const ring = (size: number): { desc: number; avail: number; used: number } => {
    const l = DriverQueue.layout(next, size, 4096);
    next = alignUp(l.end, 4096);
    return { desc: l.desc, avail: l.avail, used: l.used };
  };
  const pairs = [];
  for (let p = 0; p < t.queues; p++) {
    const rx = ring(ringSize);
    const tx = ring(ringSize);
    const base = next;
    next = alignUp(base + ringSize * slot, 4096);
    pairs.push({ rx, tx, base, slot, len });
  }
  let ctrl: Layout['ctrl'];
  if (withCtrl) {
    const addrs = { size: 64, ...ring(64) };
    ctrl = { addrs, buf: next };
    next = alignUp(next + CTRL_BUF_BYTES + 64, 4096);
  }
  const mem = new SharedArrayBuffer(alignUp(next, 1 << 20));
  if (t.dir === 'tx') {
    // Pre-written once: the guest only re-posts these, never rewrites frame bytes.
    const u8 = new Uint8Array(mem);
    for (const p of pairs) {
      for (let i = 0; i < ringSize; i++) {
        const r = i % t.recs.nrec;
        u8.set(t.recs.data.subarray(r * t.recs.reclen, (r + 1) * t.recs.reclen), p.base + i * p.slot);
      }
    }
  }
  return { mem, pairs, ctrl };
}

interface Spawned {
  worker: Worker;
  ctl: SharedArrayBuffer;
  exited: Promise<void>;
}

function spawnWorker(file: string, data: Record<string, unknown>, ctl: SharedArrayBuffer): Spawned {
  const worker = new Worker(path.join(__dirname, file), { workerData: data });
  const exited = new Promise<void>((resolve, reject) => {
    worker.once('exit', () => resolve());
    worker.once('error', reject);
  });
  exited.catch(() => undefined);
  return { worker, ctl, exited };
}

async function waitReady(ws: Spawned[], timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    if (ws.every((w) => new Float64Array(w.ctl, 8, TCTL.SIZE)[TCTL.READY] === 1)) return;
    if (Date.now() > end) throw new Error('bench worker did not get ready');
    await Promise.race([sleep(2), ...ws.map((w) => w.exited.then(() => { throw new Error('bench worker exited early'); }))]);
  }
}

async function stopWorkers(ws: Spawned[], callFds: number[]): Promise<void> {
  for (const w of ws) Atomics.store(new Int32Array(w.ctl, 0, 1), 0, 1);
  // Wake halted guests and idle JS devices so they see the stop word now.
  for (const fd of callFds) kick(fd);
  await Promise.all(ws.map((w) => w.exited.catch(() => undefined)));
}

function counters(ws: Spawned[]): { frames: number; bytes: number; wakeups: number } {
  let frames = 0;
  let bytes = 0;
  let wakeups = 0;
  for (const w of ws) {
    const c = new Float64Array(w.ctl, 8, TCTL.SIZE);
    frames += c[TCTL.FRAMES];
    bytes += c[TCTL.BYTES];
    wakeups += c[TCTL.WAKEUPS];
  }
  return { frames, bytes, wakeups };
}

function workerTids(ws: Spawned[]): number[] {
  return ws.map((w) => new Float64Array(w.ctl, 8, TCTL.SIZE)[TCTL.TID]);
}

// --- traffic source (RX) and sink counters --------------------------------------------

export interface Source {
  stop(): Promise<{ sent: number; drops: number }>;
}

export function startSource(env: Env, t: Trial, cpu?: number): Source {
  const pin = cpu === undefined ? [] : ['taskset', '-c', String(cpu)];
  const child = spawn('ip', ['netns', 'exec', env.ns, ...pin, path.join(env.outDir, 'pktsrc'), env.tap, t.file, String(t.recs.reclen), String(t.recs.nrec), t.gso ? 'gso' : 'plain', 'pace'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  env.children.add(child);
  let out = '';
  let err = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (err += d));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  return {
    async stop() {
      signalChild(child, 'SIGTERM');
      const code = await exited;
      env.children.delete(child);
      if (code !== 0) throw new Error(`pktsrc failed (${code}): ${err.trim()}`);
      return JSON.parse(out.trim()) as { sent: number; drops: number };
    },
  };
}

export function ipNs(env: Env, ...args: string[]): string {
  return execFileSync('ip', ['-n', env.ns, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

export function tapRxPackets(env: Env): number {
  const j = JSON.parse(ipNs(env, '-j', '-s', 'link', 'show', 'dev', env.tap)) as { stats64?: { rx?: { packets?: number } } }[];
  return j[0]?.stats64?.rx?.packets ?? 0;
}

/** Warm-up, then the measured window; `snap` reads the contender's counters. */
async function window<T>(env: Env, snap: () => T): Promise<{ a: T; b: T; wallNs: number }> {
  await sleep(env.warmupMs);
  const t0 = process.hrtime.bigint();
  const a = snap();
  await sleep(env.durationMs);
  const t1 = process.hrtime.bigint();
  const b = snap();
  return { a, b, wallNs: Number(t1 - t0) };
}

// --- vhost-tap ---------------------------------------------------------------------------

/**
 * The RX coalescing the 'vhost-coal' guest asks for: an interrupt per 64 packets (a
 * quarter of the default ring, so the guest refills long before it runs dry) or 50 µs
 * after the first, whichever comes first. TX is left alone: with EVENT_IDX the TX guest
 * already asks for one interrupt per 3/4 ring, and holding that one back only idles the
 * device while the ring refills.
 */
export const GUEST_COALESCING = { maxPackets: 64, maxUsecs: 50 };

/**
 * The RSS the 'vhost-rss' guest configures: every hash type the device offers, the key
 * Windows and Linux use by default, and a 128-entry table spreading hashes over all pairs.
 */
const GUEST_RSS_KEY = Uint8Array.from([
  0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0, 0xd0, 0xca, 0x2b, 0xcb,
  0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
]);

export async function runVhost(env: Env, t: Trial, io: 'auto' | 'readv' = 'auto', sqpoll = false, coalesce = false, rss = false): Promise<Sample> {
  const mq = t.queues > 1;
  const L = layout(t, env.ringSize, mq || coalesce || rss);
  const hdrLen = rss ? HDR.SIZE_HASH : HDR_LEN;
  const device = new VirtioNetDevice({ memory: L.mem, tap: env.tap, netns: env.ns, queuePairs: t.queues, mac: GUEST_MAC, mtu: 1500, io, sqpoll, rss, hashReport: rss });
  const workers: Spawned[] = [];
  const callFds: number[] = [];
  let source: Source | undefined;
  try {
    device.status = 0;
    device.status = STATUS.ACKNOWLEDGE;
    device.status = STATUS.ACKNOWLEDGE | STATUS.DRIVER;
    let want = bits('VERSION_1', 'MAC', 'MTU', 'MRG_RXBUF', 'RING_EVENT_IDX', 'CSUM', 'HOST_TSO4');
    // GUEST_TSO4 only where RX super-frames are wanted: it makes every RX read gather 64 KB of buffers.
    if (t.dir === 'rx' && t.gso) want |= bits('GUEST_CSUM', 'GUEST_TSO4');
    if (mq) want |= bits('CTRL_VQ', 'MQ');
    if (coalesce) want |= bits('CTRL_VQ', 'NOTF_COAL');
    if (rss) want |= bits('CTRL_VQ', 'RSS', 'HASH_REPORT');
    if ((device.deviceFeatures & want) !== want) throw new Error(`device does not offer every feature the bench needs (missing 0x${(want & ~device.deviceFeatures).toString(16)})`);
    device.driverFeatures = want;
    device.status |= STATUS.FEATURES_OK;
    if (!(device.status & STATUS.FEATURES_OK)) throw new Error(`device refused features: ${device.featuresRefusal}`);
    L.pairs.forEach((p, i) => {
      device.setQueue(rxq(i), { size: env.ringSize, ...p.rx });
      device.setQueue(txq(i), { size: env.ringSize, ...p.tx });
    });
    let ctrl: ControlDriver | undefined;
    if (L.ctrl) {
      device.setQueue(ctrlq(t.queues), L.ctrl.addrs);
      ctrl = new ControlDriver(device, L.mem, ctrlq(t.queues), L.ctrl.addrs, true, L.ctrl.buf);
    }
    // The engine threads are the threads that appear when the pairs start (with sqpoll, the
    // kernel's iou-sqp threads too: they are threads of this process, made with each ring).
    const before = tids();
    device.status |= STATUS.DRIVER_OK;
    if (ctrl && mq) {
      const ack = await ctrl.command(CTRL.CLASS_MQ, CTRL.MQ_VQ_PAIRS_SET, new Uint8Array([t.queues & 0xff, t.queues >> 8]));
      if (ack !== CTRL.OK) throw new Error('device refused VQ_PAIRS_SET');
    }
    if (ctrl && rss) {
      const table = Array.from({ length: RSS_MAX_INDIRECTION_TABLE_LENGTH }, (_, i) => i % t.queues);
      if ((await ctrl.setRss({ key: GUEST_RSS_KEY, hashTypes: SUPPORTED_HASH_TYPES, table, pairs: t.queues })) !== CTRL.OK) throw new Error('device refused RSS_CONFIG');
      const s = device.stats().rss;
      if (s.steering !== 'ebpf') throw new ContenderUnavailable(`the RSS steering program did not load (${s.why ?? s.steering})`);
    }
    if (ctrl && coalesce) {
      const d = new DataView(new ArrayBuffer(8));
      d.setUint32(0, GUEST_COALESCING.maxPackets, true);
      d.setUint32(4, GUEST_COALESCING.maxUsecs, true);
      if ((await ctrl.command(CTRL.CLASS_NOTF_COAL, CTRL.NOTF_COAL_RX_SET, new Uint8Array(d.buffer))) !== CTRL.OK) throw new Error('device refused NOTF_COAL_RX_SET');
    }
    const engineTids = [...tids()].filter((x) => !before.has(x));
    ipNs(env, 'link', 'set', 'dev', env.tap, 'txqueuelen', String(env.txqlen));

    L.pairs.forEach((p, i) => {
      const qi = t.dir === 'tx' ? txq(i) : rxq(i);
      const n = device.notifier(qi);
      callFds.push(n.callFd);
      const cfg: TrafficConfig = {
        mode: t.dir,
        mem: L.mem,
        ctl: new SharedArrayBuffer(TCTL_BYTES),
        q: { size: env.ringSize, ...(t.dir === 'tx' ? p.tx : p.rx), ...n },
        eventIdx: true,
        hdrLen,
        base: p.base,
        slot: p.slot,
        len: p.len,
        mergeable: true,
      };
      workers.push(spawnWorker('traffic-worker.js', { traffic: cfg }, cfg.ctl));
    });
    await waitReady(workers);
    if (t.dir === 'rx') source = startSource(env, t);
    const gTids = workerTids(workers);
    const snap = () => {
      const s = device.stats();
      return {
        frames: t.dir === 'tx' ? s.totals.txPackets : s.totals.rxPackets,
        bytes: t.dir === 'tx' ? s.totals.txBytes : s.totals.rxBytes,
        drops: s.totals.drops,
        interrupts: s.queues.reduce((n, q) => n + q.interrupts, 0),
        kicks: s.queues.reduce((n, q) => n + q.kicks, 0),
        wakeups: counters(workers).wakeups,
        backend: cpuOf(engineTids),
        sleeps: sleepsOf(engineTids),
        guest: cpuOf(gTids),
        io: s.io,
      };
    };
    const w = await window(env, snap);
    const src = source ? await source.stop() : undefined;
    source = undefined;
    if (io === 'readv' && w.b.io !== 'readv/writev') throw new Error(`option io 'readv' ran ${w.b.io}`);
    if (sqpoll && w.b.io !== 'io_uring sqpoll') throw new ContenderUnavailable(`the kernel refused an SQPOLL ring (ran ${w.b.io})`);
    const broken = device.stats().queues.filter((q) => q.broken);
    if (broken.length) throw new Error(`queue ${broken[0].index} broke during the trial`);
    return {
      frames: w.b.frames - w.a.frames,
      bytes: w.b.bytes - w.a.bytes,
      wallNs: w.wallNs,
      backendCpuNs: w.b.backend - w.a.backend,
      backendThreads: engineTids.length,
      guestCpuNs: w.b.guest - w.a.guest,
      io: w.b.io,
      drops: w.b.drops - w.a.drops,
      interrupts: w.b.interrupts - w.a.interrupts,
      kicks: w.b.kicks - w.a.kicks,
      guestWakeups: w.b.wakeups - w.a.wakeups,
      backendSleeps: w.b.sleeps - w.a.sleeps,
      source: src,
      sinkRxPackets: t.dir === 'tx' ? tapRxPackets(env) : undefined,
    };
  } finally {
    if (source) await source.stop().catch(() => undefined);
    await stopWorkers(workers, callFds);
    await device.close();
  }
}

// --- the C baselines ---------------------------------------------------------------------

/** ns per getppid() on this machine (median of 3 runs of 10^6): the cost of entering the kernel. */
export function syscallNs(env: Pick<Env, 'outDir'>): number {
  const runs = [0, 1, 2].map(() => {
    const out = execFileSync(path.join(env.outDir, 'baseline'), ['syscall', '1000000'], { encoding: 'utf8' });
    return (JSON.parse(out) as { getppidNs: number }).getppidNs;
  });
  return runs.sort((a, b) => a - b)[1];
}

/** method 'loop': one write()/read() per frame; 'uring': batched io_uring (see bench/baseline.c). */
export async function runC(env: Env, t: Trial, method: 'loop' | 'uring' = 'loop'): Promise<Sample> {
  const offloads = t.dir === 'rx' && t.gso ? TUN.F_CSUM | TUN.F_TSO4 : 0;
  const args = [
    'netns', 'exec', env.ns, path.join(env.outDir, 'baseline'), method, t.dir, env.tap, t.file, String(t.recs.reclen), String(t.recs.nrec),
    String(t.queues), String(env.warmupMs), String(env.durationMs), String(offloads), String(env.txqlen),
  ];
  const child = spawn('ip', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  env.children.add(child);
  let out = '';
  let err = '';
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  let source: Source | undefined;
  const ready = new Promise<void>((resolve) => {
    child.stdout!.on('data', (d) => {
      out += d;
      if (out.includes('ready\n')) resolve();
    });
  });
  child.stderr!.on('data', (d) => (err += d));
  try {
    const code0 = await Promise.race([ready.then(() => null), exited]);
    if (code0 === 3) {
      const why = (JSON.parse(out.trim().split('\n').pop() ?? '{}') as { unavailable?: string }).unavailable;
      throw new ContenderUnavailable(why ?? 'the baseline says it cannot run here');
    }
    if (code0 !== null || child.exitCode !== null) throw new Error(`baseline failed: ${err.trim()}`);
    if (t.dir === 'rx') source = startSource(env, t);
    const code = await exited;
    if (code !== 0) throw new Error(`baseline exited ${code}: ${err.trim()}`);
    const src = source ? await source.stop() : undefined;
    source = undefined;
    const r = JSON.parse(out.split('\n').filter((l) => l.startsWith('{'))[0]) as { frames: number; bytes: number; cpuNs: number; wallNs: number; uring?: string };
    return { frames: r.frames, bytes: r.bytes, wallNs: r.wallNs, backendCpuNs: r.cpuNs, backendThreads: t.queues, guestCpuNs: null, source: src, io: r.uring };
  } finally {
    if (source) await source.stop().catch(() => undefined);
    signalChild(child, 'SIGKILL');
    await exited;
    env.children.delete(child);
  }
}

// --- the plain Node loop --------------------------------------------------------------------

export async function runNode(env: Env, t: Trial): Promise<Sample> {
  const L = layout(t, env.ringSize, false);
  let tap: TapQueues | undefined;
  const evfds: number[] = [];
  const guests: Spawned[] = [];
  const devices: Spawned[] = [];
  let source: Source | undefined;
  try {
    tap = TapQueues.open(env.tap, { netns: env.ns, queues: t.queues, vnetHdrLen: HDR_LEN, offloads: t.dir === 'rx' && t.gso ? TUN.F_CSUM | TUN.F_TSO4 : 0 });
    const fds = tap.fds;
    ipNs(env, 'link', 'set', 'dev', env.tap, 'txqueuelen', String(env.txqlen));
    const qs = L.pairs.map((p) => {
      const kickFd = eventfd();
      const callFd = eventfd();
      evfds.push(kickFd, callFd);
      return { size: env.ringSize, ...(t.dir === 'tx' ? p.tx : p.rx), kickFd, callFd };
    });
    // Guests first: they initialise the rings the JS devices then read.
    L.pairs.forEach((p, i) => {
      const cfg: TrafficConfig = { mode: t.dir, mem: L.mem, ctl: new SharedArrayBuffer(TCTL_BYTES), q: qs[i], eventIdx: true, hdrLen: HDR_LEN, base: p.base, slot: p.slot, len: p.len, mergeable: true };
      guests.push(spawnWorker('traffic-worker.js', { traffic: cfg }, cfg.ctl));
    });
    await waitReady(guests);
    L.pairs.forEach((_, i) => {
      const cfg: NodeLoopConfig = {
        mode: t.dir,
        mem: L.mem,
        ctl: new SharedArrayBuffer(TCTL_BYTES),
        q: qs[i],
        tapFd: fds[i],
        hdrLen: HDR_LEN,
        mergeable: true,
        rxFrameMax: t.gso ? RX_FRAME_MAX_GSO : HDR_LEN + 14 + 1500 + 4,
      };
      devices.push(spawnWorker('node-loop.js', { nodeLoop: cfg }, cfg.ctl));
    });
    await waitReady(devices);
    // The guests' first kick may have come before the devices listened: nudge them once.
    for (const q of qs) kick(q.kickFd);
    if (t.dir === 'rx') source = startSource(env, t);
    const dTids = workerTids(devices);
    const gTids = workerTids(guests);
    const w = await window(env, () => ({ ...counters(devices), backend: cpuOf(dTids), guest: cpuOf(gTids) }));
    const src = source ? await source.stop() : undefined;
    source = undefined;
    return {
      frames: w.b.frames - w.a.frames,
      bytes: w.b.bytes - w.a.bytes,
      wallNs: w.wallNs,
      backendCpuNs: w.b.backend - w.a.backend,
      backendThreads: dTids.length,
      guestCpuNs: w.b.guest - w.a.guest,
      source: src,
      sinkRxPackets: t.dir === 'tx' ? tapRxPackets(env) : undefined,
    };
  } finally {
    if (source) await source.stop().catch(() => undefined);
    const calls = evfds.filter((_, i) => i % 2 === 1);
    const kicks = evfds.filter((_, i) => i % 2 === 0);
    await stopWorkers(devices, kicks);
    await stopWorkers(guests, calls);
    tap?.close();
    for (const fd of evfds) fs.closeSync(fd);
  }
}
