// The bench's DPDK case: DPDK's virtio-user PMD (dpdk-testpmd, a complete
// virtio-net driver at native speed, one polling core) drives a vhost-user
// back end — vhost-tap (`vhost-tap vhost-user`, a child process) or DPDK's
// own (testpmd with its vhost PMD forwarding to its TAP PMD, one polling
// core) — on the same TAP name in the bench's namespace. guest → TAP:
// testpmd's txonly, counted on the TAP's rx counter; TAP → guest: the bench's
// packet source (pktsrc) into the TAP, counted by testpmd's rxonly. Back-end
// CPU is the whole back-end process's (every thread), so CPU per frame
// compares like with like.

import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { bits } from '../backend';
import { VHOST_USER_BASE_FEATURES } from '../backend/vhost-user/backend';
import { dpdkMissing, Testpmd, virtioUserVdev } from '../host/dpdk';
import { Env, ipNs, signalChild, startSource, Source, tapRxPackets, Trial } from './contenders';

export type DpdkBackend = 'vhost-tap' | 'dpdk';
export const DPDK_BACKENDS: DpdkBackend[] = ['vhost-tap', 'dpdk'];
export const DPDK_BACKEND_NAMES: Record<DpdkBackend, string> = { 'vhost-tap': 'vhost-tap vhost-user', dpdk: "DPDK's vhost PMD → TAP PMD" };
export type DpdkLayout = 'split' | 'packed';
export const DPDK_LAYOUTS: DpdkLayout[] = ['split', 'packed'];

export interface DpdkSample {
  frames: number;
  bytes: number;
  wallNs: number;
  /** CPU of the back-end process, all threads. */
  backendCpuNs: number;
  /** The virtio features the driver and back end settled on, when the back end says. */
  features?: string;
}

/** The lcore the driver's forwarding thread polls on, and the one DPDK's back end polls on: one core each. */
const DRIVER_LCORES: [number, number] = [0, 1];
const BACKEND_LCORES: [number, number] = [1, 0];
/**
 * With --pin: the CPU every back end runs on (vhost-tap's whole process; DPDK's polling lcore)
 * and the one the driver's poller runs on. Left to the scheduler, a back end woken by the
 * driver's kick may be placed on the driver's CPU and share it until the next rebalance, which
 * moves single trials by tens of percent either way. The TAP → guest source goes on the back
 * end's CPU too: left alone it mostly ran there, but now and then moved onto the driver's CPU
 * and took turns with its poller for a while, in some trials and not others.
 */
const PIN_BACKEND_CPU = 0;
const PIN_DRIVER_CPU = 1;
const READY_MS = 30_000;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Why this machine cannot run the DPDK case (or one of its layouts on vhost-tap), or undefined. */
export function dpdkCaseUnavailable(backend?: DpdkBackend, layout?: DpdkLayout): string | undefined {
  const missing = dpdkMissing();
  if (missing) return missing;
  if (backend === 'vhost-tap' && layout === 'packed' && (VHOST_USER_BASE_FEATURES & bits('RING_PACKED')) === 0n) {
    return 'vhost-tap does not offer VIRTIO_F_RING_PACKED yet (virtio-user would fall back to the split ring)';
  }
  return undefined;
}

/** CPU time of every thread of process `pid`, ns (schedstat). */
function processCpuNs(pid: number): number {
  let ns = 0;
  let tasks: string[];
  try {
    tasks = fs.readdirSync(`/proc/${pid}/task`);
  } catch {
    return 0;
  }
  for (const t of tasks) {
    try {
      ns += Number(fs.readFileSync(`/proc/${pid}/task/${t}/schedstat`, 'utf8').split(' ')[0]);
    } catch {
      // The thread ended meanwhile.
    }
  }
  return ns;
}

interface BackEnd {
  pid: number;
  features(): string | undefined;
  close(): Promise<void>;
}

/** `vhost-tap vhost-user` on env.tap in env.ns, listening on `sock`; resolves once it printed its ready line. */
async function startVhostTap(env: Env, sock: string): Promise<BackEnd> {
  const cli = path.join(__dirname, '..', 'cli', 'main.js');
  const args = [cli, 'vhost-user', '--socket', sock, '--tap', env.tap, '--netns', env.ns, '--trace'];
  // taskset execs: the child's pid is still the back end's.
  const child: ChildProcess = env.pin
    ? spawn('taskset', ['-c', String(PIN_BACKEND_CPU), process.execPath, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
    : spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  env.children.add(child);
  let out = '';
  let err = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (err += d));
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const end = Date.now() + READY_MS;
  while (!out.includes('ready:')) {
    if (child.exitCode !== null || Date.now() > end) {
      signalChild(child, 'SIGKILL');
      throw new Error(`vhost-tap vhost-user did not get ready: ${out} ${err}`);
    }
    await sleep(20);
  }
  ipNs(env, 'link', 'set', 'dev', env.tap, 'txqueuelen', String(env.txqlen), 'up');
  return {
    pid: child.pid!,
    features: () => /SET_FEATURES (0x[0-9a-f]+)/.exec(err)?.[1],
    async close() {
      signalChild(child, 'SIGINT');
      const timer = setTimeout(() => signalChild(child, 'SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
      env.children.delete(child);
    },
  };
}

/** DPDK's own back end: its vhost PMD (listening on `sock`) forwarding to its TAP PMD (env.tap), io mode, one polling core. */
async function startDpdkBackend(env: Env, sock: string): Promise<BackEnd> {
  const pmd = await Testpmd.start({
    netns: env.ns,
    prefix: `${env.ns}v`,
    vdevs: [`net_vhost0,iface=${sock},queues=1`, `net_tap0,iface=${env.tap}`],
    forwardMode: 'io',
    lcores: BACKEND_LCORES,
    ...(env.pin ? { pollCpu: PIN_BACKEND_CPU } : {}),
  });
  try {
    ipNs(env, 'link', 'set', 'dev', env.tap, 'txqueuelen', String(env.txqlen), 'up');
    await pmd.command('start');
  } catch (e) {
    pmd.kill();
    throw e;
  }
  return {
    pid: pmd.pid,
    features: () => /negotiated Virtio features: (0x[0-9a-f]+)/i.exec(pmd.output())?.[1],
    async close() {
      await pmd.quit();
    },
  };
}

/**
 * One trial: back end up, the driver connects (split or packed ring), warm-up, a measured
 * window, everything down. `t` gives the direction, the frame size and (RX) the source's frames.
 */
export async function runDpdkTrial(env: Env, backend: DpdkBackend, layout: DpdkLayout, t: Trial, size: number): Promise<DpdkSample> {
  const sock = path.join('/tmp', `${env.ns}-dpdk.sock`);
  fs.rmSync(sock, { force: true });
  const be = backend === 'vhost-tap' ? await startVhostTap(env, sock) : await startDpdkBackend(env, sock);
  let driver: Testpmd | undefined;
  let source: Source | undefined;
  try {
    const end = Date.now() + READY_MS;
    while (!fs.existsSync(sock)) {
      if (Date.now() > end) throw new Error(`${backend}: no socket at ${sock}`);
      await sleep(20);
    }
    driver = await Testpmd.start({
      netns: env.ns,
      prefix: `${env.ns}d`,
      // in_order off: DPDK's back end offers IN_ORDER and virtio-user takes it by default; both back ends get the same ring.
      vdevs: [virtioUserVdev(sock, { packed: layout === 'packed', inOrder: false, queueSize: env.ringSize })],
      forwardMode: t.dir === 'tx' ? 'txonly' : 'rxonly',
      txpkts: size,
      lcores: DRIVER_LCORES,
      ...(env.pin ? { pollCpu: PIN_DRIVER_CPU } : {}),
    });
    await driver.command('start');
    if (t.dir === 'rx') source = startSource(env, t, env.pin ? PIN_BACKEND_CPU : undefined);
    const d = driver;
    const count = async (): Promise<number> => (t.dir === 'tx' ? tapRxPackets(env) : (await d.portStats()).rxPackets);
    await sleep(env.warmupMs);
    const t0 = process.hrtime.bigint();
    const c0 = processCpuNs(be.pid);
    const f0 = await count();
    await sleep(env.durationMs);
    const f1 = await count();
    const c1 = processCpuNs(be.pid);
    const t1 = process.hrtime.bigint();
    const frames = f1 - f0;
    const features = be.features();
    if (features !== undefined && (BigInt(features) & bits('RING_PACKED')) !== 0n) {
      if (layout !== 'packed') throw new Error(`${backend} ${layout}: the packed ring was negotiated (${features})`);
    } else if (features !== undefined && layout === 'packed') {
      throw new Error(`${backend} packed: the driver fell back to the split ring (features ${features})`);
    }
    return { frames, bytes: frames * size, wallNs: Number(t1 - t0), backendCpuNs: c1 - c0, features };
  } finally {
    if (source) await source.stop().catch(() => undefined);
    if (driver) await driver.quit().catch(() => driver!.kill());
    await be.close();
    fs.rmSync(sock, { force: true });
  }
}

// --- the case: rounds, medians, table, targets ------------------------------------------

/** The issue's frame sizes for this case: the smallest Ethernet frame and a full 1500-MTU one. */
export const DPDK_SIZES = [64, 1514];
/**
 * Rounds when --rounds is not given. The packed/split gap to be seen is a few percent, while
 * single rounds of one layout spread by ±20% on a shared two-core machine (split 64 B
 * guest → TAP: 856k–1236k frames/s in one quiet run): three rounds do not settle it.
 */
export const DPDK_DEFAULT_ROUNDS = 5;
/** The issue's bar: vhost-tap ≥ 1.1× DPDK's back end in frames/s, with less CPU per frame; packed ≥ 1.0× split. */
const WANT_VS_DPDK = 1.1;
const WANT_PACKED_VS_SPLIT = 1.0;

export interface DpdkMedian {
  framesPerSec: number;
  backendNsPerFrame: number;
}

/** A ratio measured once per round: its median and its range over the rounds. */
export interface RatioSpread {
  median: number;
  min: number;
  max: number;
  /** One per round, in round order. */
  rounds: number[];
  /** The rounds' geometric mean (a ratio's natural average). */
  geomean: number;
  /**
   * A 95% interval of that geometric mean (Student's t over the ratios' logarithms), from 2 rounds
   * on: where it holds 1.0, the rounds do not tell the two layouts apart.
   */
  interval95?: [number, number];
}

// Student's t, two-sided 95%, for 1..30 degrees of freedom; above that two
// terms of its Cornish-Fisher expansion around the normal quantile, within
// 0.001 of it.
const T975 = [
  12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.16, 2.145, 2.131, 2.12, 2.11,
  2.101, 2.093, 2.086, 2.08, 2.074, 2.069, 2.064, 2.06, 2.056, 2.052, 2.048, 2.045, 2.042,
];
const Z975 = 1.959964;
const t975 = (df: number): number =>
  T975[df - 1] ?? Z975 + (Z975 ** 3 + Z975) / (4 * df) + (5 * Z975 ** 5 + 16 * Z975 ** 3 + 3 * Z975) / (96 * df * df);

/**
 * The geometric mean of ratios and, from two on, its 95% interval. A round whose packed trial
 * moved nothing (ratio 0, kept: it is a measurement) has no logarithm: mean 0, no interval.
 */
export function geometricSpread(ratios: number[]): { geomean: number; interval95?: [number, number] } {
  if (ratios.some((x) => !(x > 0))) return { geomean: 0 };
  const logs = ratios.map(Math.log);
  const n = logs.length;
  const mean = logs.reduce((a, b) => a + b, 0) / n;
  if (n < 2) return { geomean: Math.exp(mean) };
  const sd = Math.sqrt(logs.reduce((a, x) => a + (x - mean) ** 2, 0) / (n - 1));
  const half = (t975(n - 1) * sd) / Math.sqrt(n);
  return { geomean: Math.exp(mean), interval95: [Math.exp(mean - half), Math.exp(mean + half)] };
}

/** How the table and the target print a RatioSpread's geometric mean and interval. */
const geometricText = (x: RatioSpread): string =>
  `geometric mean ${x.geomean.toFixed(2)}×${x.interval95 ? `, 95% ${x.interval95[0].toFixed(2)}–${x.interval95[1].toFixed(2)}` : ''}`;

export interface DpdkResult {
  dir: 'tx' | 'rx';
  size: number;
  layout: DpdkLayout;
  backends: Partial<Record<DpdkBackend, { median: DpdkMedian; rounds: DpdkSample[] }>>;
  /** vhost-tap's frames/s over DPDK's back end's, and DPDK's CPU per frame over vhost-tap's (> 1: vhost-tap cheaper). */
  vsDpdk?: { frames: number; cpu: number };
  /**
   * Packed results only: per back end, packed frames/s over split frames/s of the same round
   * (the two trials ran back to back), and the ratio of the two layouts' medians.
   */
  packedVsSplit?: Partial<Record<DpdkBackend, RatioSpread & { ofMedians: number }>>;
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

const fps = (s: DpdkSample): number => (s.frames * 1e9) / s.wallNs;

/** Each layout's samples per back end, indexed by round (a hole where a combination did not run). */
export type DpdkRoundSamples = Record<DpdkLayout, Partial<Record<DpdkBackend, (DpdkSample | undefined)[]>>>;

/** How many trials dpdkCase will run (for the progress line's count and estimate). */
export function dpdkTrialCount(rounds: number, sizes: number[] = DPDK_SIZES): number {
  const perRound = dpdkRoundOrder(0).filter(([b, layout]) => !dpdkCaseUnavailable(b, layout)).length;
  return 2 * sizes.length * rounds * perRound;
}

/**
 * The trials of round `r`, in order: per back end its split and packed trial back to back (the
 * pair whose ratio is the packed-vs-split figure: both see the same moment of a shared machine),
 * which layout goes first alternating from round to round, which back end first rotating.
 */
export function dpdkRoundOrder(r: number): [DpdkBackend, DpdkLayout][] {
  const layouts: DpdkLayout[] = r % 2 === 0 ? ['split', 'packed'] : ['packed', 'split'];
  const backends = DPDK_BACKENDS.map((_, i) => DPDK_BACKENDS[(i + r) % DPDK_BACKENDS.length]);
  return backends.flatMap((b) => layouts.map((l): [DpdkBackend, DpdkLayout] => [b, l]));
}

/** One direction and size's results, split then packed: medians, vhost-tap vs DPDK, and (packed) the per-round packed / split ratios. */
export function dpdkResultsOf(dir: 'tx' | 'rx', size: number, rounds: number, samples: DpdkRoundSamples): DpdkResult[] {
  const byLayout = {} as Record<DpdkLayout, DpdkResult>;
  for (const layout of DPDK_LAYOUTS) {
    const res: DpdkResult = { dir, size, layout, backends: {} };
    for (const b of DPDK_BACKENDS) {
      const rs = (samples[layout][b] ?? []).filter((x): x is DpdkSample => x !== undefined);
      if (!rs.length) continue;
      res.backends[b] = {
        median: { framesPerSec: median(rs.map(fps)), backendNsPerFrame: median(rs.map((x) => x.backendCpuNs / Math.max(1, x.frames))) },
        rounds: rs,
      };
    }
    const v = res.backends['vhost-tap']?.median;
    const d = res.backends.dpdk?.median;
    if (v && d) res.vsDpdk = { frames: v.framesPerSec / d.framesPerSec, cpu: d.backendNsPerFrame / v.backendNsPerFrame };
    byLayout[layout] = res;
  }
  const packed = byLayout.packed;
  for (const b of DPDK_BACKENDS) {
    const sp = samples.split[b] ?? [];
    const pk = samples.packed[b] ?? [];
    const ratios: number[] = [];
    for (let r = 0; r < rounds; r++) {
      const a = sp[r];
      const c = pk[r];
      // A round whose split trial moved nothing has no ratio (not an infinite one).
      if (a && c && a.frames > 0) ratios.push(fps(c) / fps(a));
    }
    const ms = byLayout.split.backends[b]?.median;
    const mp = packed.backends[b]?.median;
    if (!ratios.length || !ms || !mp) continue;
    (packed.packedVsSplit ??= {})[b] = {
      median: median(ratios),
      min: Math.min(...ratios),
      max: Math.max(...ratios),
      rounds: ratios,
      ...geometricSpread(ratios),
      ofMedians: mp.framesPerSec / ms.framesPerSec,
    };
  }
  return DPDK_LAYOUTS.map((l) => byLayout[l]);
}

/**
 * Runs every (direction, size) `rounds` times in dpdkRoundOrder. `trialFor` builds the Trial
 * (the RX source's frames) for a direction and size. Combinations this machine cannot run go
 * to `unavailable`.
 */
export async function dpdkCase(
  env: Env,
  rounds: number,
  trialFor: (dir: 'tx' | 'rx', size: number) => Trial,
  step: (what: string, again?: boolean) => void,
  unavailable: { case: string; reason: string }[],
  sizes: number[] = DPDK_SIZES,
): Promise<DpdkResult[]> {
  const results: DpdkResult[] = [];
  const said = new Set<string>();
  const runnable = (b: DpdkBackend, layout: DpdkLayout): boolean => {
    const why = dpdkCaseUnavailable(b, layout);
    if (why && !said.has(`${b} ${layout}`)) {
      said.add(`${b} ${layout}`);
      unavailable.push({ case: `dpdk ${DPDK_BACKEND_NAMES[b]} ${layout}`, reason: why });
    }
    return !why;
  };
  for (const dir of ['tx', 'rx'] as const) {
    for (const size of sizes) {
      const t = trialFor(dir, size);
      const samples: DpdkRoundSamples = { split: {}, packed: {} };
      for (let r = 0; r < rounds; r++) {
        for (const [b, layout] of dpdkRoundOrder(r)) {
          if (!runnable(b, layout)) continue;
          step(`dpdk ${dir === 'tx' ? 'guest→TAP' : 'TAP→guest'} ${size} B ${layout} ${b} round ${r + 1}/${rounds}`);
          // A window with no frames is a measurement too (a starved poller on a shared machine):
          // kept, it pulls the median down rather than ending the run.
          let s: DpdkSample;
          try {
            s = await runDpdkTrial(env, b, layout, t, size);
          } catch (e) {
            // Once more on a failed start (testpmd can take a minute to come up on a loaded machine); a second failure ends the run.
            step(`dpdk ${dir} ${size} B ${layout} ${b}: trial failed (${(e as Error).message.split('\n')[0]}), running it again`, true);
            s = await runDpdkTrial(env, b, layout, t, size);
          }
          // Indexed by round, so that a round's split and packed samples pair up.
          (samples[layout][b] ??= [])[r] = s;
        }
      }
      results.push(...dpdkResultsOf(dir, size, rounds, samples));
    }
  }
  return results;
}

/** The case's table: frames/s and back-end CPU per frame, and the ratios against DPDK's back end. */
export function dpdkTable(results: DpdkResult[]): string[] {
  const lines: string[] = [];
  lines.push('');
  const rounds = Math.max(0, ...results.flatMap((r) => DPDK_BACKENDS.map((b) => r.backends[b]?.rounds.length ?? 0)));
  lines.push(`DPDK virtio-user driver (dpdk-testpmd, one polling core) against vhost-tap and against DPDK's own back end (one polling core); medians of ${rounds} round(s); back-end CPU = the whole back-end process.`);
  const head = ['dir', 'size', 'ring', 'back end', 'frames/s', 'back end ns/f', 'vs DPDK', 'CPU vs DPDK'];
  const rows: string[][] = [head];
  for (const r of results) {
    for (const b of DPDK_BACKENDS) {
      const m = r.backends[b]?.median;
      if (!m) continue;
      const mine = b === 'vhost-tap' && r.vsDpdk;
      rows.push([
        r.dir === 'tx' ? 'guest → TAP' : 'TAP → guest',
        String(r.size),
        r.layout,
        DPDK_BACKEND_NAMES[b],
        m.framesPerSec >= 1e6 ? `${(m.framesPerSec / 1e6).toFixed(2)}M` : `${(m.framesPerSec / 1e3).toFixed(1)}k`,
        m.backendNsPerFrame.toFixed(0),
        mine ? `${r.vsDpdk!.frames.toFixed(2)}×` : '',
        mine ? `${r.vsDpdk!.cpu.toFixed(2)}×` : '',
      ]);
    }
  }
  const w = head.map((_, i) => Math.max(...rows.map((row) => row[i].length)));
  for (const [i, row] of rows.entries()) {
    lines.push(row.map((x, j) => (j >= 4 ? x.padStart(w[j]) : x.padEnd(w[j]))).join('  '));
    if (i === 0) lines.push(w.map((n) => '-'.repeat(n)).join('  '));
  }
  lines.push("vs DPDK: ratio of frames/s. CPU vs DPDK: DPDK's back-end CPU per frame over vhost-tap's (above 1: vhost-tap costs less per frame; DPDK's poller costs a whole core whatever the rate).");
  const pairs = results.filter((r) => r.packedVsSplit);
  if (pairs.length) {
    lines.push('');
    lines.push(
      'Packed / split ring, frames/s: per round, the two trials of one back end back to back; median of the rounds [lowest–highest], the ratio of the two medians, and the rounds\' geometric mean with its 95% interval (one that holds 1.0: the rounds do not tell the layouts apart).',
    );
    for (const r of pairs) {
      const cells = DPDK_BACKENDS.filter((b) => r.packedVsSplit![b]).map((b) => {
        const x = r.packedVsSplit![b]!;
        return `${DPDK_BACKEND_NAMES[b]} ${x.median.toFixed(2)}× [${x.min.toFixed(2)}–${x.max.toFixed(2)}] (medians ${x.ofMedians.toFixed(2)}×; ${geometricText(x)})`;
      });
      lines.push(`  ${(r.dir === 'tx' ? 'guest → TAP' : 'TAP → guest').padEnd(11)}  ${String(r.size).padStart(4)} B  ${cells.join(';  ')}`);
    }
  }
  return lines;
}

export interface DpdkTarget {
  name: string;
  want: string;
  measured: number | null;
  met: boolean | null;
  note?: string;
}

/**
 * The issue's targets for this case. Verdicts only from `minRounds` rounds on (as the bench's
 * other targets): with fewer, one descheduled trial would decide them.
 */
export function dpdkTargets(results: DpdkResult[], rounds: number, minRounds: number): DpdkTarget[] {
  const judged = rounds >= minRounds;
  const out: DpdkTarget[] = [];
  const label = (r: DpdkResult): string => `${r.dir === 'tx' ? 'guest → TAP' : 'TAP → guest'} ${r.size} B ${r.layout}`;
  for (const r of results) {
    const x = r.vsDpdk;
    out.push({
      name: `DPDK virtio-user ${label(r)}: vhost-tap vs DPDK's back end, frames/s, with less CPU per frame`,
      want: `≥ ${WANT_VS_DPDK.toFixed(1)}× and CPU ratio > 1`,
      measured: x?.frames ?? null,
      met: x && judged ? x.frames >= WANT_VS_DPDK && x.cpu > 1 : null,
      note: x ? `CPU per frame: DPDK / vhost-tap ${x.cpu.toFixed(2)}×` : r.backends['vhost-tap'] ? undefined : 'vhost-tap did not run this layout',
    });
  }
  for (const r of results.filter((q) => q.layout === 'packed')) {
    // The per-round pairs, not the ratio of two medians: each pair saw the same moment of the machine.
    const x = r.packedVsSplit?.['vhost-tap'];
    const d = r.packedVsSplit?.dpdk;
    out.push({
      name: `DPDK virtio-user ${r.dir === 'tx' ? 'guest → TAP' : 'TAP → guest'} ${r.size} B: vhost-tap packed vs split, frames/s (median of per-round pairs)`,
      want: `≥ ${WANT_PACKED_VS_SPLIT.toFixed(1)}×`,
      measured: x?.median ?? null,
      met: x === undefined || !judged ? null : x.median >= WANT_PACKED_VS_SPLIT,
      note:
        x === undefined
          ? 'vhost-tap did not run both layouts'
          : `rounds ${x.min.toFixed(2)}–${x.max.toFixed(2)}×, ratio of medians ${x.ofMedians.toFixed(2)}×, ${geometricText(x)}${d ? `; DPDK's back end on the same driver: ${d.median.toFixed(2)}×` : ''}`,
    });
  }
  return out;
}
