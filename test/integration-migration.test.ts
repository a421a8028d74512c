// Integration: live migration of a Linux guest under QEMU 7.2 (TCG, 1 vCPU,
// -cpu qemu64, memfd memory shared) between two QEMUs, each on its own back
// end, both back ends' TAPs in one bridge in the test's namespace with the
// host's address on the bridge. While 100 MB of TCP flow host → guest the
// guest migrates A → B: equal SHA-256; then 100 MB guest → host from B; then
// back to a new QEMU on A under traffic again. Ping 0% loss after each
// migration; the downtime (longest gap between ping replies, and QEMU's own
// figure) is logged, not asserted.

import test, { ExecutionContext } from 'ava';

import { has } from '../backend';
import { addQemuTap, guestToHost, ping, waitReachable } from '../host/linux-guest/host';
import { buildGuestImage } from '../host/linux-guest/initramfs';
import { bootOn, GuestInstance, incomingOn, makeBridge, migrate, pingAcross, Site, startHostToGuest, stop } from '../host/linux-guest/migration';
import { randomGuestMac } from '../host/linux-guest/qemu';
import { withNetns } from '../host/netns';

const HOST4 = '10.203.19.1';
const GUEST4 = '10.203.19.2';
/** 100 MB as issue 19 asks; VT_MIGRATION_TCP_BYTES overrides it for quick local runs. */
const BYTES = Number(process.env.VT_MIGRATION_TCP_BYTES ?? 100e6);
/** TCG on 2 shared cores moves ~40–300 Mbps; 100 MB may take minutes when the machine is busy. */
const TRANSFER_TIMEOUT_MS = 600_000;
const BOOT_TIMEOUT_MS = 300_000;
/** Let the transfer get going before the migration starts, so the migration happens under traffic. */
const TRAFFIC_LEAD_MS = 1500;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface Trip {
  /** Where the guest runs now; migrated to `to`. */
  from: GuestInstance;
  to: Site;
  label: string;
  port: number;
}

/**
 * Migrates the guest (running on trip.from) to trip.to while BYTES flow host → guest; checks the
 * SHA-256 and a lossless ping afterwards; returns the destination.
 */
async function migrateUnderTraffic(t: ExecutionContext, ns: string, trip: Trip, opts: Parameters<typeof bootOn>[1]): Promise<GuestInstance> {
  const uri = `unix:/tmp/vt-mig-${process.pid}-${trip.port}.sock`;
  const dst = await incomingOn(trip.to, opts, uri);
  const transfer = await startHostToGuest(trip.from.guest, ns, GUEST4, trip.port, BYTES, TRANSFER_TIMEOUT_MS);
  await sleep(TRAFFIC_LEAD_MS);
  const gap = pingAcross(ns, GUEST4);
  const m = await migrate(trip.from, dst, uri);
  await stop(trip.from);
  const host = await transfer.host;
  const guestHash = await transfer.guestOn(dst.guest, TRANSFER_TIMEOUT_MS);
  const g = await gap();
  t.is(host.bytes, BYTES);
  t.is(guestHash, host.sha256, `${trip.label}: the guest received exactly what the host sent across the migration`);
  const after = await ping(ns, GUEST4, 100, 0.02);
  t.is(after.received, 100, `${trip.label}: ping after the migration: ${after.output}`);
  t.log(
    `${trip.label}: downtime ${g.longestGapMs.toFixed(0)} ms (longest gap between ping replies; QEMU says ${m.downtimeMs} ms stopped), ` +
      `migration ${m.totalMs} ms, ${BYTES / 1e6} MB host → guest in ${(host.ms / 1000).toFixed(1)} s, ping ${g.received}/${g.transmitted} across`,
  );
  return dst;
}

test.serial('control: a guest on QEMU\'s own tap back end migrates A → B → A under TCP traffic with equal SHA-256', async (t) => {
  t.timeout(1_800_000);
  await withNetns(async (ns) => {
    const port = makeBridge(ns.name, `${ns.name}b`.slice(-15), [`${HOST4}/24`]);
    const tapA = ns.ifname();
    const tapB = ns.ifname();
    for (const tap of [tapA, tapB]) {
      addQemuTap(ns.name, tap, 1, []);
      port(tap);
    }
    const siteA: Site = { netdev: { kind: 'tap', ifname: tapA }, netns: ns.name };
    const siteB: Site = { netdev: { kind: 'tap', ifname: tapB }, netns: ns.name };
    const opts = { image: buildGuestImage(), mac: randomGuestMac(), ip4: `${GUEST4}/24`, bootTimeoutMs: BOOT_TIMEOUT_MS };
    const live: GuestInstance[] = [];
    ns.defer(() => live.forEach((g) => g.guest.killNow()));

    const a = await bootOn(siteA, opts);
    live.push(a);
    t.log(`guest booted on A in ${(a.guest.bootMs / 1000).toFixed(1)} s`);
    const f = await a.guest.features();
    t.true(has(f, 'GUEST_CSUM'), 'the guest trusts checksums the device wrote');
    t.true(await waitReachable(ns.name, GUEST4));

    const b = await migrateUnderTraffic(t, ns.name, { from: a, to: siteB, label: 'A → B', port: 5101 }, opts);
    live.push(b);
    const g2h = await guestToHost(b.guest, ns.name, HOST4, 5102, BYTES, TRANSFER_TIMEOUT_MS);
    t.is(g2h.hostSha256, g2h.guestSha256, 'guest → host from B');
    const a2 = await migrateUnderTraffic(t, ns.name, { from: b, to: siteA, label: 'B → A', port: 5103 }, opts);
    live.push(a2);
    await stop(a2);
  });
});
