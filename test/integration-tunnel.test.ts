// Integration: guest-sim as a VXLAN endpoint (guest-sim/tunnel.ts) behind a real TAP in a
// namespace the test creates; the namespace's kernel has a vxlan device over the TAP's
// address and talks TCP to guest-sim's inner address. VT_TUNNEL_BYTES each way (default
// 200 MB, as issue 20 asks): host → guest into discard (SHA-256 compared), guest → host from
// source (pattern and count checked). With the UDP tunnel GSO features negotiated the
// device's statistics must show tunnel super-frames both ways; with them off, none, and the
// same bytes still arrive. GENEVE: this kernel has no geneve driver (CONFIG_GENEVE is not
// set, no modules); the test says so when `ip link add type geneve` is refused, and runs the
// GENEVE cases where it is not.

import test, { ExecutionContext } from 'ava';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';

import { GuestSim, GUEST_SUPPORTED } from '../guest-sim/guest';
import { Netns, withNetns } from '../host/netns';
import { nsRun, RECEIVER, SENDER } from './helpers/tcp-peers';

const HOST4 = '10.203.20.1';
const GUEST4 = '10.203.20.2';
const INNER_HOST4 = '10.204.20.1';
const INNER_GUEST4 = '10.204.20.2';
const VNI = 4242;
const MTU = 1500;
/** 200 MB as the issue asks; VT_TUNNEL_BYTES overrides it for quick local runs. */
const BYTES = Number(process.env.VT_TUNNEL_BYTES ?? 200e6);

type Kind = 'vxlan' | 'geneve';

/** The kernel's tunnel device over the TAP's address, toward guest-sim's; null when this kernel cannot make one. */
function hostTunnel(ns: Netns, tap: string, kind: Kind): string | null {
  ns.ip('addr', 'add', `${HOST4}/24`, 'dev', tap);
  const dev = kind === 'vxlan' ? 'vxlan0' : 'gnv0';
  const args = kind === 'vxlan' ? ['type', 'vxlan', 'id', String(VNI), 'local', HOST4, 'remote', GUEST4, 'dstport', '4789', 'dev', tap] : ['type', 'geneve', 'id', String(VNI), 'remote', GUEST4];
  const r = ns.run('ip', ['link', 'add', dev, ...args]);
  if (r.status !== 0) return `${r.stderr}`.trim() || `exit ${r.status}`;
  ns.ip('addr', 'add', `${INNER_HOST4}/24`, 'dev', dev);
  ns.ip('link', 'set', dev, 'up');
  return null;
}

function mbps(bytes: number, ms: number): string {
  return `${((bytes * 8) / ms / 1000).toFixed(0)} Mbit/s`;
}

async function run(t: ExecutionContext, kind: Kind, offload: boolean): Promise<void> {
  await withNetns(async (ns) => {
    const tap = ns.ifname();
    const guest = await GuestSim.start({
      tap,
      netns: ns.name,
      mtu: MTU,
      ip4: `${GUEST4}/24`,
      features: offload ? undefined : GUEST_SUPPORTED,
      tunnel: { kind, vni: VNI, ip4: `${INNER_GUEST4}/24` },
      sourceBytes: BYTES,
    });
    ns.defer(() => void guest.stop());
    const refused = hostTunnel(ns, tap, kind);
    if (refused !== null) {
      await guest.stop();
      t.fail(`ip link add type ${kind} failed, though the kernel's configuration does not say it lacks the driver: ${refused}`);
      return;
    }
    const dstats = guest.device.stats();
    if (offload) {
      t.true(dstats.udpTunnelGso.kernel, `this kernel's TAP has UDP tunnel GSO: ${JSON.stringify(dstats.udpTunnelGso)}`);
      t.deepEqual([dstats.udpTunnelGso.guest, dstats.udpTunnelGso.host], [true, true]);
    } else t.deepEqual([dstats.udpTunnelGso.guest, dstats.udpTunnelGso.host], [false, false]);

    const discard = new Promise<{ bytes: number; sha256: string; peer: string }>((resolve) => guest.once('discard', resolve));
    const s = await nsRun(ns, process.execPath, ['-e', SENDER, INNER_GUEST4, String(BYTES)], 300_000);
    t.is(s.code, 0, s.stderr);
    const sent = JSON.parse(s.stdout) as { sha256: string; ms: number };
    const got = await Promise.race([discard, new Promise<null>((r) => setTimeout(() => r(null), 10_000))]);
    t.truthy(got, 'discard reported the connection');
    t.is(got!.peer.split(':')[0], INNER_HOST4);
    t.is(got!.bytes, BYTES);
    t.is(got!.sha256, sent.sha256);
    t.log(`${kind} offload ${offload ? 'on' : 'off'}: host → guest ${BYTES} B in ${sent.ms.toFixed(0)} ms, ${mbps(BYTES, sent.ms)}`);

    const r = await nsRun(ns, process.execPath, ['-e', RECEIVER, INNER_GUEST4], 300_000);
    t.is(r.code, 0, r.stderr);
    const recv = JSON.parse(r.stdout) as { bytes: number; bad: number; ms: number };
    t.is(recv.bytes, BYTES);
    t.is(recv.bad, -1, `first wrong byte at ${recv.bad}`);
    t.log(`${kind} offload ${offload ? 'on' : 'off'}: guest → host ${BYTES} B in ${recv.ms.toFixed(0)} ms, ${mbps(BYTES, recv.ms)}`);

    let pairTcp: Record<string, number> = {};
    guest.on('pair-stats', (_p: number, _r: Record<string, number>, tcp: Record<string, number>) => (pairTcp = tcp));
    const final = await guest.stop();
    const tnl = final.device.udpTunnelGsoFrames;
    t.log(`device tunnel super-frames: ${JSON.stringify(tnl)}; guest-sim tunnel: ${JSON.stringify(Object.fromEntries(Object.entries(pairTcp).filter(([k]) => k.startsWith('tnl_'))))}`);
    if (offload) {
      t.true(tnl.tx.frames > 0, 'guest → TAP tunnel super-frames');
      t.true(tnl.rx.frames > 0, 'TAP → guest tunnel super-frames');
      t.true(tnl.tx.bytes / tnl.tx.frames > MTU + 14, `guest → TAP tunnel super-frames average ${(tnl.tx.bytes / tnl.tx.frames).toFixed(0)} B`);
      t.true(tnl.rx.bytes / tnl.rx.frames > MTU + 14, `TAP → guest tunnel super-frames average ${(tnl.rx.bytes / tnl.rx.frames).toFixed(0)} B`);
    } else {
      t.deepEqual(tnl, { tx: { frames: 0, bytes: 0 }, rx: { frames: 0, bytes: 0 } });
    }
  });
}

/**
 * Why this kernel cannot make a `kind` device, from its build configuration (/proc/config.gz:
 * the driver not built, and no loadable modules); undefined when it may.
 */
function missingDriver(kind: Kind): string | undefined {
  let config: string;
  try {
    config = execFileSync('zcat', ['/proc/config.gz'], { encoding: 'utf8', maxBuffer: 64 << 20 });
  } catch {
    return undefined; // no configuration to read: try, and fail if the kernel refuses
  }
  const opt = kind === 'vxlan' ? 'CONFIG_VXLAN' : 'CONFIG_GENEVE';
  if (!new RegExp(`^# ${opt} is not set$`, 'm').test(config)) return undefined;
  const modules = /^CONFIG_MODULES=y$/m.test(config) && fs.existsSync('/lib/modules');
  return modules ? undefined : `this kernel has no ${kind} driver (${opt} is not set, no loadable modules)`;
}

for (const kind of ['vxlan', 'geneve'] as const) {
  const missing = missingDriver(kind);
  for (const offload of [true, false]) {
    const title = `${kind}, UDP tunnel GSO ${offload ? 'on' : 'off'}: ${BYTES} B of TCP each way between the namespace's kernel and guest-sim's inner address`;
    if (!missing) test.serial(title, (t) => run(t, kind, offload));
  }
  // No skipped tests (a skip is not a pass, and a fresh machine's run must show none): where
  // the kernel cannot make the device, the test checks that it really refuses one, and
  // guest-sim's side of that tunnel is proven against gso-check's frames (tunnel-endpoint).
  if (missing) {
    test(`${kind}: the kernel refuses a ${kind} device (${missing}); the end-to-end TCP tests need one`, async (t) => {
      await withNetns(async (ns) => {
        const args = kind === 'vxlan' ? ['id', '42', 'dstport', '4789'] : ['id', '42', 'remote', '10.9.0.2'];
        const r = spawnSync('ip', ['-n', ns.name, 'link', 'add', ns.ifname(), 'type', kind, ...args], { encoding: 'utf8' });
        t.not(r.status, 0, `ip link add type ${kind} succeeded: ${r.stdout}`);
        t.regex(r.stderr, /Unknown device type|not supported|No such device/i);
      });
    });
  }
}
