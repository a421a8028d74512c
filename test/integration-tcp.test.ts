// Integration: guest-sim's TCP against the kernel's, through `vhost-tap run`
// behind a real TAP in a namespace the test creates. 1 GiB each way (host →
// guest discard with SHA-256 checked, guest → host source with the pattern
// checked) with TSO on and with --offloads none, and with TSO on packed
// rings (--packed); TCP echo on split and packed rings; super-frames in
// the device's TX statistics; USO both ways. The host side is the kernel
// stack in the namespace, driven by a child Node (or Python, for UDP_SEGMENT)
// process started with `ip netns exec`.

import test, { ExecutionContext } from 'ava';

import { GuestSim } from '../guest-sim/guest';
import { RunningCli, startRun } from './helpers/cli';
import { Netns, withNetns } from '../host/netns';
import { nsRun, RECEIVER, SENDER } from './helpers/tcp-peers';

const HOST4 = '10.203.2.1';
const GUEST4 = '10.203.2.2';
const HOST6 = 'fd00:cb:2::1';
const GUEST6 = 'fd00:cb:2::2';
/** 1 GiB as the issue asks; VT_TCP_BYTES overrides it for quick local runs. */
const BIG = Number(process.env.VT_TCP_BYTES ?? 1 << 30);

function hostSide(ns: Netns, tap: string): void {
  ns.ip('addr', 'add', `${HOST4}/24`, 'dev', tap);
  ns.ip('-6', 'addr', 'add', `${HOST6}/64`, 'dev', tap, 'nodad');
}

async function startGuest(t: ExecutionContext, ns: Netns, extra: string[]): Promise<RunningCli> {
  const tap = ns.ifname();
  const cli = await startRun(['--tap', tap, '--netns', ns.name, '--ip', `${GUEST4}/24`, '--ip6', `${GUEST6}/64`, ...extra]);
  ns.defer(() => {
    if (cli.child.exitCode === null) cli.child.kill('SIGKILL');
  });
  hostSide(ns, tap);
  t.log(cli.ready);
  return cli;
}

function mbps(bytes: number, ms: number): string {
  return `${((bytes * 8) / ms / 1000).toFixed(0)} Mbit/s`;
}

async function waitFor(get: () => string, re: RegExp, ms: number): Promise<RegExpExecArray | null> {
  const end = Date.now() + ms;
  for (;;) {
    const m = re.exec(get());
    if (m || Date.now() > end) return m;
    await new Promise((r) => setTimeout(r, 50));
  }
}

interface TxStats {
  packets: number;
  bytes: number;
}

function txQueueStats(stdout: string): TxStats {
  const m = /queue 1 tx: (\d+) frames (\d+) B/.exec(stdout);
  return m ? { packets: Number(m[1]), bytes: Number(m[2]) } : { packets: 0, bytes: 0 };
}

// Split rings with and without offloads; packed rings with TSO (the super-frames and
// mergeable RX buffers are what the layout changes; the small frames of 'none' add only time).
const VARIANTS = [
  { ring: 'split', mode: 'tso' },
  { ring: 'split', mode: 'none' },
  { ring: 'packed', mode: 'tso' },
] as const;

for (const { ring, mode } of VARIANTS) {
  const extra = [...(mode === 'none' ? ['--offloads', 'none'] : []), ...(ring === 'packed' ? ['--packed'] : [])];

  test.serial(`${ring}: host → guest ${BIG} bytes to TCP discard (port 9), offloads ${mode}: SHA-256 matches`, async (t) => {
    await withNetns(async (ns) => {
      const cli = await startGuest(t, ns, extra);
      t.regex(cli.ready, new RegExp(`, ${ring} rings(,|$)`));
      if (mode === 'tso') t.regex(cli.ready, /offloads .*guest-tso4/);
      else t.regex(cli.ready, /offloads none,/);
      const r = await nsRun(ns, process.execPath, ['-e', SENDER, GUEST4, String(BIG)], 180_000);
      t.is(r.code, 0, r.stderr);
      const sent = JSON.parse(r.stdout) as { sha256: string; ms: number };
      const m = await waitFor(cli.output, /^discard: (\S+) bytes (\d+) sha256 ([0-9a-f]{64})$/m, 10_000);
      t.truthy(m, cli.output());
      t.is(m![1].split(':')[0], HOST4);
      t.is(Number(m![2]), BIG);
      t.is(m![3], sent.sha256);
      t.is(cli.output().split('\n').filter((l) => l.startsWith('discard:')).length, 1, 'one line per connection');
      t.log(`host → guest ${BIG} B, offloads ${mode}: ${sent.ms.toFixed(0)} ms, ${mbps(BIG, sent.ms)}`);
      const { code } = await cli.stop('SIGINT');
      t.is(code, 0);
    });
  });

  test.serial(`${ring}: guest → host ${BIG} bytes from TCP source (port 19), offloads ${mode}: pattern and count verified`, async (t) => {
    await withNetns(async (ns) => {
      const cli = await startGuest(t, ns, [...extra, '--source-bytes', String(BIG)]);
      t.regex(cli.ready, new RegExp(`, ${ring} rings(,|$)`));
      const r = await nsRun(ns, process.execPath, ['-e', RECEIVER, GUEST4], 180_000);
      t.is(r.code, 0, r.stderr);
      const got = JSON.parse(r.stdout) as { bytes: number; bad: number; ms: number };
      t.is(got.bytes, BIG);
      t.is(got.bad, -1, `first wrong byte at ${got.bad}`);
      t.log(`guest → host ${BIG} B, offloads ${mode}: ${got.ms.toFixed(0)} ms, ${mbps(BIG, got.ms)}`);
      const { code, stdout } = await cli.stop('SIGINT');
      t.is(code, 0);
      const tx = txQueueStats(stdout);
      const perFrame = tx.bytes / tx.packets;
      t.log(`device TX queue: ${tx.packets} frames, ${tx.bytes} B, ${perFrame.toFixed(0)} B/frame`);
      if (mode === 'tso') t.true(perFrame > 1460 * 4, `TSO super-frames reach the device: ${perFrame.toFixed(0)} B per frame`);
      else t.true(perFrame <= 1514, `without TSO every frame fits the MTU: ${perFrame.toFixed(0)} B per frame`);
    });
  });
}

for (const ring of ['split', 'packed'] as const) {
test.serial(`${ring}: TCP echo (port 7) over IPv4 and IPv6 returns the stream intact`, async (t) => {
  await withNetns(async (ns) => {
    const cli = await startGuest(t, ns, ring === 'packed' ? ['--packed'] : []);
    t.regex(cli.ready, new RegExp(`, ${ring} rings(,|$)`));
    const script = `
const net = require('node:net'), crypto = require('node:crypto');
const [host, total] = [process.argv[1], Number(process.argv[2])];
const data = crypto.randomBytes(total);
const got = [];
const s = net.connect({ host, port: 7 }, () => { s.end(data); });
s.on('data', (d) => got.push(d));
s.on('end', () => console.log(Buffer.concat(got).equals(data) ? 'ok' : 'corrupt ' + Buffer.concat(got).length));
s.on('error', (e) => { console.error(e.message); process.exit(1); });`;
    for (const host of [GUEST4, GUEST6]) {
      const r = await nsRun(ns, process.execPath, ['-e', script, host, String(8 << 20)], 60_000);
      t.is(r.stdout.trim(), 'ok', `${host}: ${r.stdout} ${r.stderr}`);
    }
    const { code, stdout } = await cli.stop('SIGINT');
    t.is(code, 0, stdout);
  });
});
}

/** Sends one UDP_SEGMENT (USO) super-datagram from the host and counts the echoed datagrams. */
const USO_CLIENT = `
import socket, sys, json
host, seg, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fam = socket.AF_INET6 if ':' in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.settimeout(2)
payload = bytes((i * 7 + i // seg) & 255 for i in range(seg * n))
s.setsockopt(socket.IPPROTO_UDP, 103, seg)  # UDP_SEGMENT
s.sendto(payload, (host, 7))
got = []
try:
    while len(got) < n:
        got.append(s.recv(65535))
except socket.timeout:
    pass
print(json.dumps({"count": len(got), "sizes": sorted(set(len(g) for g in got)), "ok": b"".join(got) == payload}))
`;

test.serial('USO: a host UDP_SEGMENT send arrives as one super-frame and is echoed as USO, segmented by the kernel', async (t) => {
  await withNetns(async (ns) => {
    const tap = ns.ifname();
    const guest = await GuestSim.start({ tap, netns: ns.name, ip4: `${GUEST4}/24`, ip6: `${GUEST6}/64` });
    ns.defer(() => void guest.stop());
    hostSide(ns, tap);
    let responder: Record<string, number> = {};
    guest.on('pair-stats', (_p: number, r: Record<string, number>) => (responder = r));
    const caps = guest.device.capabilities();
    if (!caps.offloads.includes('HOST_USO') || !caps.offloads.includes('GUEST_USO4')) {
      // tun takes USO from Linux 6.2 on; only an older kernel may lack it.
      const [major, minor] = require('node:os').release().split('.').map(Number);
      t.true(major < 6 || (major === 6 && minor < 2), `Linux ${require('node:os').release()} should offer USO: ${JSON.stringify(caps.missing)}`);
      t.log(`kernel lacks USO, as kernels before 6.2 do: ${JSON.stringify(caps.missing)}`);
      await guest.stop();
      return;
    }
    for (const host of [GUEST4, GUEST6]) {
      const r = await nsRun(ns, 'python3', ['-c', USO_CLIENT, host, '1000', '20'], 30_000);
      t.is(r.code, 0, r.stderr);
      t.deepEqual(JSON.parse(r.stdout), { count: 20, sizes: [1000], ok: true }, host);
    }
    // The Worker's final statistics come on a MessagePort, with no ordering against its exit:
    // wait for the event itself (bounded), not a fixed 100 ms that a loaded machine can miss.
    const final = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no final pair-stats from the guest Worker within 10 s')), 10_000);
      guest.once('pair-stats', () => {
        clearTimeout(timer);
        resolve();
      });
    });
    const s = await guest.stop();
    await final;
    t.true(responder.uso_rx >= 2, `USO super-frames received: ${JSON.stringify(responder)}`);
    t.true(responder.uso_tx >= 2, 'echoed as USO super-frames');
    const tx = s.device.queues[1];
    t.true(tx.bytes / tx.packets > 1500 || tx.packets < 20, `device TX saw super-frames: ${tx.packets} frames ${tx.bytes} B`);
  });
});
