// Integration: the simulated guest behind a real vnet-hdr multiqueue TAP in
// a namespace the test creates. ping and ping -6 from the namespace, UDP echo
// with every payload size, RX with and without MRG_RXBUF, two queue pairs —
// each on the split and the packed ring, with and without IN_ORDER — and the
// CLI's `run` lifecycle and error handling.

import test, { ExecutionContext } from 'ava';
import { execFileSync, spawn } from 'node:child_process';

import { bits, has } from '../backend';
import { GUEST_SUPPORTED, GuestSim } from '../guest-sim/guest';
import { CLI, runCli, startRun } from './helpers/cli';
import { Netns, requireRoot, withNetns } from '../host/netns';
import { ping, udpEcho } from './helpers/udp';

const HOST4 = '10.203.1.1';
const GUEST4 = '10.203.1.2';
const HOST6 = 'fd00:cb:1::1';
const GUEST6 = 'fd00:cb:1::2';

function hostSide(ns: Netns, tap: string): void {
  ns.ip('addr', 'add', `${HOST4}/24`, 'dev', tap);
  ns.ip('-6', 'addr', 'add', `${HOST6}/64`, 'dev', tap, 'nodad');
}

function range(from: number, to: number, step = 1): number[] {
  const out: number[] = [];
  for (let i = from; i <= to; i += step) out.push(i);
  return out;
}

test.serial('vhost-tap run answers 100 pings v4 and v6 with 0% loss and echoes UDP of every size', async (t) => {
  await withNetns(async (ns) => {
    const tap = ns.ifname();
    const cli = await startRun(['--tap', tap, '--netns', ns.name, '--ip', `${GUEST4}/24`, '--ip6', `${GUEST6}/64`]);
    ns.defer(() => {
      if (cli.child.exitCode === null) cli.child.kill('SIGKILL');
    });
    t.regex(cli.ready, new RegExp(`^ready: tap ${tap} in netns ${ns.name}`));
    hostSide(ns, tap);

    const p4 = ping(ns, ['-4', '-c', '100', '-i', '0.01', '-W', '2', GUEST4]);
    t.is(p4.loss, 0, p4.output);
    const p6 = ping(ns, ['-6', '-c', '100', '-i', '0.01', '-W', '2', GUEST6]);
    t.is(p6.loss, 0, p6.output);

    const u4 = udpEcho(ns, GUEST4, range(1, 1472));
    t.deepEqual([u4.echoed, u4.corrupt], [1472, 0], 'every IPv4 UDP payload 1..1472 comes back intact');
    const u6 = udpEcho(ns, GUEST6, range(1, 1452, 7));
    t.deepEqual([u6.echoed, u6.corrupt], [u6.sent, 0], 'IPv6 UDP payloads up to 1452 come back intact');

    const { code, stdout } = await cli.stop('SIGINT');
    t.is(code, 0);
    t.regex(stdout, /stopped on SIGINT/);
    const rx = /device: rx (\d+) frames/.exec(stdout);
    t.truthy(rx && Number(rx[1]) >= 200 + 1472, `statistics count what the guest received: ${stdout}`);
    t.throws(() => ns.ip('link', 'show', tap), undefined, 'the TAP is gone once run exits');
  });
});

/** The ring layouts guest-sim can ask for; the device offers them all, and checkLayout() fails a test that got another. */
const LAYOUTS: { name: string; opts: { packed?: boolean; inOrder?: boolean } }[] = [
  { name: 'split', opts: {} },
  { name: 'split+in_order', opts: { inOrder: true } },
  { name: 'packed', opts: { packed: true } },
  { name: 'packed+in_order', opts: { packed: true, inOrder: true } },
];

/** The guest negotiated the layout it asked for. */
function checkLayout(t: ExecutionContext, guest: GuestSim, L: (typeof LAYOUTS)[number]): void {
  t.is(has(guest.features, 'RING_PACKED'), !!L.opts.packed, `RING_PACKED negotiated: ${L.name}`);
  t.is(has(guest.features, 'IN_ORDER'), !!L.opts.inOrder, `IN_ORDER negotiated: ${L.name}`);
}

for (const L of LAYOUTS) {
  test.serial(`${L.name}: RX without MRG_RXBUF: one spec-sized chain per frame, full-size frames echoed`, async (t) => {
    await withNetns(async (ns) => {
      const tap = ns.ifname();
      const guest = await GuestSim.start({
        tap,
        netns: ns.name,
        ip4: `${GUEST4}/24`,
        ip6: `${GUEST6}/64`,
        features: GUEST_SUPPORTED & ~bits('MRG_RXBUF'),
        ...L.opts,
      });
      checkLayout(t, guest, L);
      ns.defer(() => void guest.stop());
      t.is(guest.features & bits('MRG_RXBUF'), 0n);
      hostSide(ns, tap);
      const u = udpEcho(ns, GUEST4, [...range(1, 1472, 13), 1472]);
      t.deepEqual([u.echoed, u.corrupt], [u.sent, 0]);
      const s = await guest.stop();
      t.is(s.device.totals.drops, 0, JSON.stringify(s.device.queues));
      t.true(s.device.queues[0].packets >= u.sent);
    });
  });

  test.serial(`${L.name}: RX with MRG_RXBUF and a 9000 MTU: frames span several 2 KiB buffers (num_buffers > 1)`, async (t) => {
    await withNetns(async (ns) => {
      const tap = ns.ifname();
      const guest = await GuestSim.start({ tap, netns: ns.name, ip4: `${GUEST4}/24`, mtu: 9000, ...L.opts });
      checkLayout(t, guest, L);
      ns.defer(() => void guest.stop());
      t.not(guest.features & bits('MRG_RXBUF'), 0n);
      hostSide(ns, tap);
      const u = udpEcho(ns, GUEST4, [1, 2000, 4000, 8972]);
      t.deepEqual([u.echoed, u.corrupt], [4, 0], 'frames larger than one buffer are merged by the guest and echoed');
      const s = await guest.stop();
      t.is(s.device.totals.drops, 0);
    });
  });

  test.serial(`${L.name}: two queue pairs: flows from many source ports reach both RX queues`, async (t) => {
    await withNetns(async (ns) => {
      const tap = ns.ifname();
      const guest = await GuestSim.start({ tap, netns: ns.name, queuePairs: 2, ip4: `${GUEST4}/24`, ...L.opts });
      checkLayout(t, guest, L);
      ns.defer(() => void guest.stop());
      t.is(guest.device.activeQueuePairs, 2);
      hostSide(ns, tap);
      const u = udpEcho(ns, GUEST4, range(64, 64 + 9), 32);
      t.deepEqual([u.echoed, u.corrupt], [u.sent, 0]);
      const s = await guest.stop();
      const rxPerPair = [s.device.queues[0].packets, s.device.queues[2].packets];
      t.true(rxPerPair.every((n) => n > 0), `both RX queues carried frames: ${rxPerPair.join(', ')}`);
      t.true(s.pairs.every((p) => p.txFrames > 0), 'both guest pairs answered');
    });
  });
}

test('CLI: bad input is one clear line and a non-zero exit', (t) => {
  const cases: [string[], RegExp][] = [
    [['run', '--tap', 'vtx', '--bogus'], /^vhost-tap: unknown option '--bogus'/],
    [['run'], /--tap NAME is required/],
    [['run', '--tap', 'vt-name-too-long0'], /--tap: 'vt-name-too-long0' must be 1 to 15 bytes/],
    [['run', '--tap', 'vtx', '--mac', 'zz:00:00:00:00:00'], /--mac: 'zz:00:00:00:00:00' is not a MAC address/],
    [['run', '--tap', 'vtx', '--queues', '0'], /--queues must be from 1 to 256 \(the TAP's queue limit\), got 0/],
    [['run', '--tap', 'vtx', '--queues', '99999'], /--queues must be from 1 to 256 \(the TAP's queue limit\), got 99999/],
    [['run', '--tap', 'vtx', '--netns', 'vtnosuchns0'], /--netns: network namespace 'vtnosuchns0' does not exist/],
    [['frobnicate'], /unknown command/],
  ];
  for (const [args, re] of cases) {
    const r = runCli(args);
    t.is(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
    t.regex(r.stderr, re);
    t.is(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
  }
  for (const cmd of ['run', 'demo']) {
    const r = runCli([cmd, '--help']);
    t.is(r.status, 0);
    t.regex(r.stdout, /Usage: vhost-tap/);
  }
});

/** 'vtdemo…' namespaces that exist now. */
function demoNamespaces(): string[] {
  return execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })
    .split('\n')
    .map((l) => l.split(' ')[0])
    .filter((n) => n.startsWith('vtdemo'));
}

test.serial('vhost-tap demo (npm start): pings, UDP-echoes and moves TCP both ways with its guest, exits 0, deletes its namespace', (t) => {
  requireRoot();
  const before = demoNamespaces();
  const r = runCli(['demo']);
  t.is(r.status, 0, `${r.stdout}\n${r.stderr}`);
  t.regex(r.stdout, /ping -4 10\.203\.0\.2: 5 packets transmitted, 5 received, 0% packet loss/);
  t.regex(r.stdout, /ping -6 fd00:cb::2: 5 packets transmitted, 5 received, 0% packet loss/);
  t.is(r.stdout.split('\n').filter((l) => / 20\/20 echoed back intact$/.test(l)).length, 4, r.stdout);
  t.regex(r.stdout, /^demo: everything answered$/m);
  t.is((r.stdout.match(/^tcp .* (SHA-256 matches|pattern intact)$/gm) ?? []).length, 4, 'TCP both ways over IPv4 and IPv6');
  t.regex(r.stdout, /^cleaned up: namespace vtdemo\S+ and TAP \S+ removed$/m);
  t.deepEqual(demoNamespaces().filter((n) => !before.includes(n)), [], 'namespace deleted');
});

test.serial('vhost-tap demo stops on SIGINT: exit 130, namespace deleted', async (t) => {
  requireRoot();
  const before = demoNamespaces();
  const child = spawn(process.execPath, [CLI, 'demo'], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  let out = '';
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  // Interrupt once the guest is up: from then on the demo owns a namespace, a TAP and Workers.
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`demo did not bring its guest up in 30 s: ${out}`)), 30_000);
    child.stdout.on('data', (d: Buffer) => {
      out += d;
      if (/^guest up:/m.test(out)) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  child.kill('SIGINT');
  const code = await exited;
  t.is(code, 130, out);
  t.regex(out, /^demo: stopped on SIGINT$/m);
  t.notRegex(out, /demo: everything answered/);
  t.regex(out, /^cleaned up: namespace vtdemo/m);
  t.deepEqual(demoNamespaces().filter((n) => !before.includes(n)), [], 'namespace deleted');
});
