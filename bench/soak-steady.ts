// `npm run soak -- --steady`: `vhost-tap run`'s guest (guest-sim with its TCP
// services) under steady traffic and no resets, for as long as asked, to see
// whether memory stays flat: TCP churn both ways (short transfers into the
// discard port and out of the source port, one connection after another on
// several loops), a ping flood and UDP echo from 8 source ports. Samples RSS,
// the V8 heaps of every isolate (the main thread's and each queue-pair
// Worker's), external and array-buffer memory, and anonymous memory outside
// guest memory, and judges flatness after warm-up. Everything runs in a
// throw-away 'vt…' namespace.

import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import { parseArgs } from 'node:util';

import { GuestSim, pinWorkerNurseries } from '../guest-sim/guest';
import { Netns } from '../host/netns';

export const STEADY_HELP = `Usage: npm run soak -- --steady [options]

Runs the guest 'vhost-tap run' runs (guest-sim with its echo, discard and source
TCP services) behind a TAP in a namespace of its own, with no resets, under TCP
churn both ways (transfers of --tcp-mib MiB into the discard port and out of the
source port, --tcp-loops loops each way), a ping flood (ping -f) and UDP echo from
8 source ports. Prints, over time: RSS; V8 heap used and committed, summed over
every isolate (the main thread's and each queue-pair Worker's); external and
array-buffer memory (guest memory left out); anonymous memory outside guest memory,
and the part of it outside the V8 heaps (native allocations). At the end: each
one's mean over the baseline window (minutes 5-10; for a run shorter than 30
minutes, its second sixth) against every sample of the second half, and its
least-squares slope from the baseline window on. Exit status 1 when RSS
leaves +-5% of its baseline in the second half. Needs root.

Options:
  --minutes N      how long (default 60; fractions allowed)
  --pairs N        queue pairs (default 2)
  --sample S       seconds between samples (default 30)
  --udp-pps N      UDP echo requests per second, over 8 source ports (default 2000)
  --tcp-loops N    TCP loops each way (default 2)
  --tcp-mib N      MiB per TCP transfer (default 8)
  --json           print the whole report as JSON at the end
  --json-file P    also write it to the file P
  -h, --help       this help`;

const HOST4 = '10.203.32.1';
const GUEST4 = '10.203.32.2';
const GUEST_MAC = '52:54:00:20:00:02';
/** "Within +-5% of minutes 5-10" (issue 24). */
const FLAT_TOLERANCE = 0.05;
const MiB = 2 ** 20;

/** One sample; memory in MiB. */
export interface SteadySample {
  t: number;
  rss: number;
  /** V8 heap in use and committed, summed over the main isolate and every Worker's. */
  heapUsed: number;
  heapTotal: number;
  /** Per isolate, main first then each Worker: V8 heap used and committed. */
  isolateHeapUsed: number[];
  isolateHeapTotal: number[];
  /** Young generation (part of heapTotal), summed over every isolate, and per isolate as above. */
  youngGeneration: number;
  isolateYoung: number[];
  /** Per isolate as above, each V8 heap space: committed and used. */
  isolateSpaces: Record<string, { committed: number; used: number }>[];
  /** Per Worker: full collections it ran to keep its old generation small. */
  workerCollections: number[];
  external: number;
  /** ArrayBuffer memory of every isolate, guest memory (a SharedArrayBuffer the main isolate counts) left out. */
  arrayBuffers: number;
  /** Anonymous resident memory outside guest memory (V8 heaps, malloc arenas, stacks...). */
  anonOutsideGuest: number;
  /** anonOutsideGuest minus the V8 heaps' committed memory: native allocations. */
  native: number;
  tcpOk: number;
  tcpBroken: number;
  udpSent: number;
  udpEchoed: number;
}

/** The components judged and printed, in order. */
export const COMPONENTS = ['rss', 'heapUsed', 'heapTotal', 'youngGeneration', 'external', 'arrayBuffers', 'anonOutsideGuest', 'native'] as const;
export type Component = (typeof COMPONENTS)[number];

export interface Flatness {
  /** Mean over the baseline window. */
  baseline: number;
  /** Largest deviation of a second-half sample from the baseline, as a fraction of it (signed). */
  maxDeviation: number;
  /** Least-squares slope over the samples after warm-up, MiB per minute. */
  slopePerMin: number;
}

/** Least-squares slope of y over x. */
export function slope(xs: number[], ys: number[]): number {
  const n = xs.length;
  if (n < 2) return 0;
  const mx = xs.reduce((a, b) => a + b, 0) / n;
  const my = ys.reduce((a, b) => a + b, 0) / n;
  let sxy = 0;
  let sxx = 0;
  for (let i = 0; i < n; i++) {
    sxy += (xs[i] - mx) * (ys[i] - my);
    sxx += (xs[i] - mx) ** 2;
  }
  return sxx === 0 ? 0 : sxy / sxx;
}

/** Warm-up: the heaps and the traffic settle in minutes, whatever the length of the run. */
const WARMUP_S = 300;

/**
 * Flatness of each component: the baseline is the mean over minutes 5-10 (for a run of T < 30
 * minutes, over [T/6, T/3]), judged against every sample in the second half; the slope is over
 * everything after the baseline window starts (the warm-up is before it).
 */
export function flatness(samples: SteadySample[], totalS: number): Record<Component, Flatness> {
  const warm = Math.min(WARMUP_S, totalS / 6);
  const base = samples.filter((s) => s.t >= warm && s.t <= 2 * warm);
  const late = samples.filter((s) => s.t >= totalS / 2);
  const after = samples.filter((s) => s.t >= warm);
  const out = {} as Record<Component, Flatness>;
  for (const c of COMPONENTS) {
    const b = base.length ? base.reduce((a, s) => a + s[c], 0) / base.length : NaN;
    let dev = 0;
    for (const s of late) if (Math.abs(s[c] / b - 1) > Math.abs(dev)) dev = s[c] / b - 1;
    out[c] = {
      baseline: b,
      maxDeviation: dev,
      slopePerMin: slope(
        after.map((s) => s.t / 60),
        after.map((s) => s[c]),
      ),
    };
  }
  return out;
}

/** Resident anonymous memory of this process, bytes (the sum of Anonymous: in /proc/self/smaps). */
function anonymousBytes(): number {
  let kib = 0;
  for (const m of fs.readFileSync('/proc/self/smaps', 'utf8').matchAll(/^Anonymous:\s+(\d+) kB/gm)) kib += Number(m[1]);
  return kib * 1024;
}

/** The host side: TCP loops into the discard port and out of the source port, and UDP echo from 8 source ports. */
const PEER = `
const dgram = require('node:dgram'), net = require('node:net');
const [guest, pps, loops, tcpBytes] = [process.argv[1], Number(process.argv[2]), Number(process.argv[3]), Number(process.argv[4])];
const st = { udpSent: 0, udpEchoed: 0, tcpOk: 0, tcpBroken: 0 };
let stopping = false;
const socks = [];
for (let i = 0; i < 8; i++) {
  const s = dgram.createSocket('udp4');
  s.on('message', () => st.udpEchoed++);
  s.on('error', () => {});
  socks.push(s);
}
let id = 0;
const udp = setInterval(() => {
  for (let k = 0; k < pps / 100; k++) { const b = Buffer.alloc(64); b.writeUInt32BE(id >>> 0, 0); socks[id % 8].send(b, 7, guest); id++; st.udpSent++; }
}, 10);
function transfer(port) {
  return new Promise((resolve) => {
    const chunk = Buffer.alloc(64 * 1024, 7); let n = 0; let done = false;
    const s = net.connect(port, guest);
    s.setTimeout(20000, () => s.destroy(new Error('timeout')));
    const more = () => { while (n < tcpBytes) { n += chunk.length; if (!s.write(chunk)) return s.once('drain', more); } s.end(); };
    if (port === 9) s.on('connect', more); else s.on('data', (b) => { n += b.length; });
    s.on('close', (err) => { if (!done) { done = true; if (err || n !== tcpBytes) st.tcpBroken++; else st.tcpOk++; resolve(); } });
    s.on('error', () => {});
  });
}
async function loop(port) { while (!stopping) { await transfer(port); } }
for (let i = 0; i < loops; i++) { loop(9); loop(19); }
const report = setInterval(() => console.log(JSON.stringify(st)), 1000);
process.on('SIGTERM', () => {
  stopping = true; clearInterval(udp);
  setTimeout(() => { clearInterval(report); console.log(JSON.stringify(st)); process.exit(0); }, 1000);
});`;

export async function steadySoak(args: string[]): Promise<number> {
  const { values: o } = parseArgs({
    args,
    options: {
      minutes: { type: 'string' },
      pairs: { type: 'string' },
      sample: { type: 'string' },
      'udp-pps': { type: 'string' },
      'tcp-loops': { type: 'string' },
      'tcp-mib': { type: 'string' },
      json: { type: 'boolean' },
      'json-file': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (o.help) {
    console.log(STEADY_HELP);
    return 0;
  }
  const num = (name: string, v: string | undefined, def: number, min: number): number => {
    const n = v === undefined ? def : Number(v);
    if (!Number.isFinite(n) || n < min) throw new Error(`--${name} must be a number >= ${min}, got '${v}'`);
    return n;
  };
  const minutes = num('minutes', o.minutes, 60, 0.1);
  const pairs = Math.floor(num('pairs', o.pairs, 2, 1));
  const sampleS = num('sample', o.sample, 30, 1);
  const pps = Math.floor(num('udp-pps', o['udp-pps'], 2000, 100));
  const loops = Math.floor(num('tcp-loops', o['tcp-loops'], 2, 1));
  const tcpBytes = Math.floor(num('tcp-mib', o['tcp-mib'], 8, 1) * MiB);
  if (process.getuid?.() !== 0) throw new Error('the soak creates a network namespace and a TAP: run it as root');

  const ns = Netns.create('st');
  const tap = `vtt${process.pid.toString(36)}`;
  let guest: GuestSim | undefined;
  const children: ChildProcess[] = [];
  let interrupted = false;
  const onSignal = (): void => {
    interrupted = true;
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    // What `vhost-tap run --queues N --ip ...` starts (cli/run.ts), with the source service's
    // transfers as long as the peer's, so that connections come and go.
    // As `vhost-tap run` does.
    pinWorkerNurseries();
    guest = await GuestSim.start({ tap, netns: ns.name, queuePairs: pairs, ip4: `${GUEST4}/24`, mac: GUEST_MAC, sourceBytes: tcpBytes });
    const errors: string[] = [];
    guest.on('needs-reset', (e: Error) => errors.push(`needs-reset: ${e.message}`));
    guest.on('error', (e: Error) => errors.push(`guest worker: ${e.message}`));
    guest.device.on('warning', (e: Error) => errors.push(`warning: ${e.message}`));
    ns.ip('addr', 'add', `${HOST4}/24`, 'dev', tap);
    ns.ip('neigh', 'replace', GUEST4, 'lladdr', GUEST_MAC, 'dev', tap, 'nud', 'permanent');
    // Every page of guest memory resident from the start (an atomic add of 0 changes nothing,
    // even in live rings): it is left out of the figures anyway, but RSS then compares too.
    const u8 = new Uint8Array(guest.mem);
    for (let i = 0; i < u8.length; i += 4096) Atomics.add(u8, i, 0);
    const guestBytes = guest.mem.byteLength;
    if (!o.json) {
      console.log(
        `guest memory ${Math.round(guestBytes / MiB)} MiB (resident from the start, left out of the figures but RSS), ${pairs} queue pairs, ` +
          `TCP ${loops} loop(s) each way of ${tcpBytes / MiB} MiB transfers, ping -f, UDP ${pps}/s from 8 ports, no resets`,
      );
    }

    let peerStatus = { udpSent: 0, udpEchoed: 0, tcpOk: 0, tcpBroken: 0 };
    const peer = spawn('ip', ['netns', 'exec', ns.name, process.execPath, '-e', PEER, GUEST4, String(pps), String(loops), String(tcpBytes)], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    children.push(peer);
    let buf = '';
    peer.stdout!.on('data', (d: Buffer) => {
      buf += d;
      const lines = buf.split('\n');
      buf = lines.pop() ?? '';
      for (const l of lines) if (l.startsWith('{')) peerStatus = JSON.parse(l) as typeof peerStatus;
    });
    const peerExit = new Promise((r) => peer.once('exit', r));
    const ping = spawn('ip', ['netns', 'exec', ns.name, 'ping', '-f', '-q', GUEST4], { stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(ping);
    let pingOut = '';
    ping.stdout!.on('data', (d: Buffer) => (pingOut += d));
    ping.stderr!.on('data', (d: Buffer) => (pingOut += d));
    const pingExit = new Promise((r) => ping.once('exit', r));

    const start = Date.now();
    const endAt = start + minutes * 60_000;
    const samples: SteadySample[] = [];
    let lateReports = 0;
    const sample = async (): Promise<void> => {
      // On a machine loaded by others a Worker can be starved past memoryUsage()'s 5 s: ask again
      // (a Worker that stays silent fails the soak on the third try).
      let m: Awaited<ReturnType<GuestSim['memoryUsage']>> | undefined;
      for (let attempt = 1; m === undefined; attempt++) {
        try {
          m = await guest!.memoryUsage();
        } catch (e) {
          if (attempt >= 3) throw e;
          lateReports++;
        }
      }
      const isolates = [m.main, ...m.workers];
      const sum = (k: 'heapUsed' | 'heapTotal' | 'youngGeneration' | 'external' | 'arrayBuffers'): number => isolates.reduce((a, i) => a + i[k], 0);
      // Every page of guest memory was touched at the start and stays resident: it is exactly
      // guestBytes of the anonymous total. (Its mapping cannot be told apart by size: the kernel
      // may merge it with a neighbouring anonymous one.)
      const anonOutsideGuest = anonymousBytes() - Math.ceil(guestBytes / 4096) * 4096;
      const status = fs.readFileSync('/proc/self/status', 'utf8');
      const rss = Number(/^VmRSS:\s+(\d+)/m.exec(status)?.[1] ?? NaN) * 1024;
      const mib = (n: number): number => Math.round((n / MiB) * 100) / 100;
      const row: SteadySample = {
        t: Math.round((Date.now() - start) / 1000),
        rss: mib(rss),
        heapUsed: mib(sum('heapUsed')),
        heapTotal: mib(sum('heapTotal')),
        isolateHeapUsed: isolates.map((i) => mib(i.heapUsed)),
        isolateHeapTotal: isolates.map((i) => mib(i.heapTotal)),
        youngGeneration: mib(sum('youngGeneration')),
        isolateYoung: isolates.map((i) => mib(i.youngGeneration)),
        workerCollections: m.workers.map((w) => w.collections ?? 0),
        isolateSpaces: isolates.map((i) => Object.fromEntries(Object.entries(i.spaces).map(([k, v]) => [k, { committed: mib(v.committed), used: mib(v.used) }]))),
        external: mib(sum('external')),
        arrayBuffers: mib(sum('arrayBuffers') - guestBytes),
        anonOutsideGuest: mib(anonOutsideGuest),
        native: mib(anonOutsideGuest - sum('heapTotal')),
        ...peerStatus,
      };
      samples.push(row);
      if (!o.json) {
        if (samples.length === 1) {
          console.log('   t s   RSS MiB  heap used  committed (main, Workers: used/committed)  Workers\' old space used/committed, GCs  young gen  external  arrayBufs  anon outside guest  native   TCP ok  broken    UDP sent   echoed');
        }
        const f = (n: number, w: number): string => n.toFixed(1).padStart(w);
        console.log(
          `${String(row.t).padStart(6)} ${f(row.rss, 9)} ${f(row.heapUsed, 10)} ${f(row.heapTotal, 10)} ${`(${row.isolateHeapUsed.map((u, i) => `${u.toFixed(1)}/${row.isolateHeapTotal[i].toFixed(1)}`).join(' ')})`.padEnd(30)} ` +
            `${row.isolateSpaces
              .slice(1)
              .map((sp, i) => `${(sp.old_space?.used ?? 0).toFixed(1)}/${(sp.old_space?.committed ?? 0).toFixed(1)} gc ${row.workerCollections[i]}`)
              .join(' ')
              .padEnd(34)} ` +
            `${f(row.youngGeneration, 9)} ${f(row.external, 9)} ${f(row.arrayBuffers, 10)} ${f(row.anonOutsideGuest, 19)} ${f(row.native, 7)} ${String(row.tcpOk).padStart(8)} ${String(row.tcpBroken).padStart(7)} ` +
            `${String(row.udpSent).padStart(11)} ${String(row.udpEchoed).padStart(8)}`,
        );
      }
    };
    await sample();
    let next = start + sampleS * 1000;
    while (!interrupted && Date.now() < endAt) {
      await new Promise((r) => setTimeout(r, Math.max(0, Math.min(next, endAt) - Date.now())));
      if (Date.now() >= next) {
        await sample();
        next += sampleS * 1000;
      }
    }
    if (Date.now() - start - samples[samples.length - 1].t * 1000 > 1000) await sample();
    const totalS = samples[samples.length - 1].t;
    ping.kill('SIGINT');
    peer.kill('SIGTERM');
    await Promise.all([peerExit, pingExit]);
    const pingSummary = /(\d+) packets transmitted, (\d+) received/.exec(pingOut);
    const flat = flatness(samples, totalS);
    const stats = await guest.stop();
    guest = undefined;
    const ok = Math.abs(flat.rss.maxDeviation) <= FLAT_TOLERANCE && errors.length === 0;
    const report = {
      minutes,
      pairs,
      tcp: { loopsEachWay: loops, transferBytes: tcpBytes, ok: peerStatus.tcpOk, broken: peerStatus.tcpBroken },
      udp: { sent: peerStatus.udpSent, echoed: peerStatus.udpEchoed },
      ping: pingSummary ? { sent: Number(pingSummary[1]), received: Number(pingSummary[2]) } : null,
      device: stats.device.totals,
      flatness: flat,
      flat: ok,
      lateReports,
      errors,
      samples,
    };
    if (o['json-file']) fs.writeFileSync(o['json-file'], JSON.stringify(report, null, 2));
    if (o.json) console.log(JSON.stringify(report, null, 2));
    else {
      console.log(
        `\nTCP transfers: ${peerStatus.tcpOk} complete, ${peerStatus.tcpBroken} broken; UDP: ${peerStatus.udpSent} sent, ${peerStatus.udpEchoed} echoed; ` +
          `ping -f: ${report.ping ? `${report.ping.sent} sent, ${report.ping.received} answered` : 'no summary'}`,
      );
      const warm = Math.min(WARMUP_S, totalS / 6);
      console.log(`baseline = mean over ${Math.round(warm)}-${Math.round(2 * warm)} s; second half from ${Math.round(totalS / 2)} s; slope from ${Math.round(warm)} s:`);
      for (const c of COMPONENTS) {
        const f = flat[c];
        console.log(`  ${c.padEnd(17)} baseline ${f.baseline.toFixed(1).padStart(7)} MiB, second half within ${(f.maxDeviation * 100).toFixed(1).padStart(6)} %, slope ${f.slopePerMin.toFixed(3).padStart(7)} MiB/min`);
      }
      console.log(ok ? `flat: RSS stayed within ±${FLAT_TOLERANCE * 100}% of its baseline` : `NOT flat: RSS left ±${FLAT_TOLERANCE * 100}% of its baseline${errors.length ? `; errors: ${errors.slice(0, 5).join(' | ')}` : ''}`);
    }
    return ok ? 0 : 1;
  } finally {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    if (guest) await guest.stop().catch(() => undefined);
    ns.delete();
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
  }
}
