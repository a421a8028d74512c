// Smoke test of the benchmark harness: a very short run of one case with every
// contender must produce the JSON report with non-zero counters and leave no
// namespace behind. No timing is asserted: throughput is measured, not tested.

import test from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { requireRoot } from '../host/netns';
import { CLI } from './helpers/cli';

/**
 * Namespaces a bench process created that still exist: `vtb<pid in base 36>…` (host/netns.ts
 * names them so). Only that process's, not those of other benches running on the machine.
 */
function benchNamespaces(pid: number): string[] {
  const mine = `vtb${pid.toString(36)}`;
  return (fs.existsSync('/run/netns') ? fs.readdirSync('/run/netns') : []).filter((n) => n.startsWith(mine));
}

test('bench: one short TX case produces a complete JSON report', (t) => {
  requireRoot();
  const r = spawnSync(process.execPath, [CLI, 'bench', '--cases', 'tx', '--sizes', '64', '--queues', '1', '--rounds', '1', '--duration', '0.2', '--warmup', '50', '--json'], {
    encoding: 'utf8',
    timeout: 60_000,
  });
  t.is(r.status, 0, r.stderr);
  const rep = JSON.parse(r.stdout);
  t.is(rep.results.length, 1);
  const res = rep.results[0];
  t.is(res.case, 'tx');
  for (const k of ['vhost', 'vhost-readv', 'c', 'c-uring', 'node']) {
    const s = res.contenders[k].rounds[0];
    t.true(s.frames > 0, `${k} moved frames`);
    t.true(s.bytes > 0, `${k} moved bytes`);
    t.true(s.backendCpuNs > 0, `${k} backend CPU measured`);
  }
  t.is(typeof rep.io, 'string');
  t.is(res.contenders['vhost-readv'].rounds[0].io, 'readv/writev', "the second vhost-tap contender runs with io: 'readv'");
  t.is(res.contenders.vhost.rounds[0].backendThreads, 1, 'one engine thread found');
  t.true(typeof res.ratios.vsC === 'number' && typeof res.ratios.vsCUring === 'number' && typeof res.ratios.vsNode === 'number');
  t.regex(res.contenders['c-uring'].rounds[0].io, /taskrun|plain/, 'the C io_uring baseline says which ring setup it got');
  t.true(rep.machine.getppidNs > 0, 'the machine line has the cost of a system call');
  t.true(['cheap', 'expensive'].includes(rep.machine.syscalls));
  t.true(rep.targets.length >= 4);
  // One round: a single outlier trial could decide a verdict, so none is given.
  t.deepEqual(rep.targets.map((x: { met: boolean | null }) => x.met), rep.targets.map(() => null), 'no MET / NOT MET from one round');
  t.true(rep.unavailable.length === 0);
  t.deepEqual(benchNamespaces(r.pid), [], 'bench namespace deleted');
});

test('bench: the RX case runs the coalescing guest beside the plain one', (t) => {
  requireRoot();
  const r = spawnSync(process.execPath, [CLI, 'bench', '--cases', 'rx', '--sizes', '64', '--queues', '1', '--rounds', '1', '--duration', '0.2', '--warmup', '50', '--contenders', 'vhost,vhost-coal,c', '--json'], {
    encoding: 'utf8',
    timeout: 60_000,
  });
  t.is(r.status, 0, r.stderr);
  const res = JSON.parse(r.stdout).results[0];
  t.deepEqual(Object.keys(res.contenders).sort(), ['c', 'vhost', 'vhost-coal']);
  const s = res.contenders['vhost-coal'].rounds[0];
  t.true(s.frames > 0 && s.backendCpuNs > 0, 'the coalescing guest received frames');
  t.true(s.interrupts > 0, 'and was interrupted');
  t.true(typeof res.coalRatios.vsC === 'number');
  t.deepEqual(benchNamespaces(r.pid), [], 'bench namespace deleted');
});

test('bench: the TCP cases move payload both ways through guest-sim\'s TCP', (t) => {
  requireRoot();
  const r = spawnSync(process.execPath, [CLI, 'bench', '--cases', 'tcp-h2g,tcp-g2h', '--rounds', '1', '--duration', '0.2', '--warmup', '50', '--json'], {
    encoding: 'utf8',
    timeout: 60_000,
  });
  t.is(r.status, 0, r.stderr);
  const rep = JSON.parse(r.stdout);
  t.deepEqual(rep.tcp.map((c: { case: string }) => c.case), ['tcp-h2g', 'tcp-g2h']);
  for (const c of rep.tcp) {
    t.deepEqual(Object.keys(c.contenders).sort(), ['vhost', 'vhost-readv'], 'only vhost-tap contenders run TCP');
    for (const k of ['vhost', 'vhost-readv']) {
      const s = c.contenders[k].rounds[0];
      t.true(s.bytes > 0, `${c.case} ${k} moved payload`);
      t.true(s.backendCpuNs > 0, `${c.case} ${k} backend CPU measured`);
    }
  }
  t.deepEqual(rep.unavailable, []);
  t.deepEqual(benchNamespaces(r.pid), [], 'bench namespace deleted');
});

test('bench: the guest case boots the Linux guest under QEMU per back end and reports Mbps and host CPU per byte both ways', (t) => {
  requireRoot();
  t.timeout(900_000);
  const r = spawnSync(process.execPath, [CLI, 'bench', '--cases', 'guest', '--rounds', '1', '--guest-bytes', '2000000', '--json'], {
    encoding: 'utf8',
    timeout: 840_000,
  });
  t.is(r.status, 0, r.stderr);
  const rep = JSON.parse(r.stdout);
  t.deepEqual(rep.results, []);
  t.deepEqual(rep.guest.results.map((g: { dir: string }) => g.dir), ['h2g', 'g2h']);
  const vhostNet = fs.existsSync('/dev/vhost-net');
  for (const g of rep.guest.results) {
    t.deepEqual(Object.keys(g.backends).sort(), vhostNet ? ['tap', 'vhost-net', 'vhost-tap'] : ['tap', 'vhost-tap']);
    for (const [b, res] of Object.entries(g.backends) as [string, { rounds: { bytes: number; mbps: number; qemuCpuNs: number; backendCpuNs: number; intact: boolean }[] }][]) {
      const s = res.rounds[0];
      t.is(s.bytes, 2_000_000, `${g.dir} ${b} moved the payload`);
      t.true(s.intact, `${g.dir} ${b}: equal SHA-256 on both ends`);
      t.true(s.mbps > 0 && s.qemuCpuNs > 0, `${g.dir} ${b}: Mbps and QEMU CPU measured`);
      t.true(Number.isFinite(s.backendCpuNs), `${g.dir} ${b}: back-end CPU read`);
    }
    t.is(typeof g.vsTap.mbps, 'number');
  }
  t.is(rep.unavailable.some((u: { case: string }) => u.case === 'guest vhost-net'), !vhostNet, 'vhost-net is reported unavailable exactly when /dev/vhost-net is missing');
  t.true(rep.targets.some((x: { name: string }) => /real guest host → guest/.test(x.name)));
  t.deepEqual(benchNamespaces(r.pid), [], 'bench namespace deleted');
});

test('bench --plot into a directory that does not exist: refused before anything runs, exit 2, one line', (t) => {
  const r = spawnSync(process.execPath, [CLI, 'bench', '--cases', 'tx', '--rounds', '1', '--plot', '/nonexistent-vt-dir/chart.svg'], { encoding: 'utf8', timeout: 60_000 });
  t.is(r.status, 2, r.stderr);
  t.is(r.stderr.trim(), "vhost-tap: --plot: directory '/nonexistent-vt-dir' does not exist; create it first");
  t.is(r.stdout, '');
  t.deepEqual(benchNamespaces(r.pid), [], 'no namespace was made');
});

test('bench interrupted with SIGINT prints the cases that finished, cleans up and exits 130', async (t) => {
  requireRoot();
  const child = spawn(process.execPath, [CLI, 'bench', '--cases', 'tx', '--sizes', '64,512', '--queues', '1', '--rounds', '1', '--duration', '0.2', '--warmup', '50', '--contenders', 'vhost,c'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  let sent = false;
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => {
    stderr += d;
    // The 64 B case is complete once a trial of the 512 B case starts. One SIGINT only: a
    // second one is the user insisting, and ends the process without a word.
    if (/\] tx 512 B/.test(stderr) && !sent) {
      sent = true;
      child.kill('SIGINT');
    }
  });
  const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
  t.is(code, 130, stderr);
  t.regex(stderr, /\[2\/4, ~\d+s left\] tx 64 B q1/, 'progress says how long is left');
  t.regex(stdout, /^tx\s+64\s+1\s+vhost-tap/m, 'the finished case is in the table');
  t.notRegex(stdout, /^tx\s+512\s/m, 'the unfinished one is not');
  t.regex(stdout, /interrupted by SIGINT: the cases above finished, the rest did not run/);
  t.deepEqual(benchNamespaces(child.pid!), [], 'bench namespace deleted');
});
