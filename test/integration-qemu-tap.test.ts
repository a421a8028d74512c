// Integration: the Linux test guest (host/linux-guest) under QEMU with QEMU's
// own tap back end, the TAP inside a namespace the test creates. Proves the
// harness the vhost-user tests use: the guest boots and its virtio_net driver
// binds, the host pings it (IPv4 and IPv6, 100 packets, no loss), 100 MB of
// TCP go each way with equal SHA-256 on both ends. Boot time and Mbps are
// logged, not asserted.

import test from 'ava';

import { has } from '../backend';
import { addQemuTap, guestToHost, hostToGuest, ping } from '../host/linux-guest/host';
import { LinuxGuest } from '../host/linux-guest/qemu';
import { withNetns } from '../host/netns';

const HOST4 = '10.203.20.1';
const GUEST4 = '10.203.20.2';
const HOST6 = 'fd00:cb:20::1';
const GUEST6 = 'fd00:cb:20::2';
/** 100 MB each way as issue 10 asks; VT_GUEST_TCP_BYTES overrides it for quick local runs. */
const BYTES = Number(process.env.VT_GUEST_TCP_BYTES ?? 100e6);
/** TCG on 2 shared cores moves ~40–300 Mbps; 100 MB may take minutes when the machine is busy. */
const TRANSFER_TIMEOUT_MS = 600_000;

test.serial('a Linux guest with QEMU\'s tap back end: pings v4/v6 without loss, 100 MB of TCP each way with equal SHA-256', async (t) => {
  t.timeout(1_800_000);
  await withNetns(async (ns) => {
    const tap = ns.ifname();
    addQemuTap(ns.name, tap, 1, [`${HOST4}/24`, `${HOST6}/64`]);
    const guest = await LinuxGuest.boot({ netns: ns.name, netdev: { kind: 'tap', ifname: tap }, ip4: `${GUEST4}/24`, ip6: `${GUEST6}/64` });
    ns.defer(() => guest.killNow());
    try {
      t.log(`guest ${guest.image.release} booted to a working eth0 in ${(guest.bootMs / 1000).toFixed(1)} s`);
      const features = await guest.features();
      t.true(has(features, 'CSUM') && has(features, 'GUEST_CSUM') && has(features, 'HOST_TSO4'), `guest features 0x${features.toString(16)}`);

      for (const addr of [GUEST4, GUEST6]) {
        const p = await ping(ns.name, addr, 100, 0.02);
        t.is(p.transmitted, 100, p.output);
        t.is(p.received, 100, `ping ${addr}: ${p.output}`);
      }

      const h2g = await hostToGuest(guest, ns.name, GUEST4, 5001, BYTES, TRANSFER_TIMEOUT_MS);
      t.is(h2g.bytes, BYTES);
      t.is(h2g.guestSha256, h2g.hostSha256, 'host → guest: the guest received exactly what the host sent');
      const g2h = await guestToHost(guest, ns.name, HOST4, 5002, BYTES, TRANSFER_TIMEOUT_MS);
      t.is(g2h.bytes, BYTES);
      t.is(g2h.hostSha256, g2h.guestSha256, 'guest → host: the host received exactly the pattern the guest sent');
      t.log(`host → guest ${h2g.mbps.toFixed(0)} Mbps, guest → host ${g2h.mbps.toFixed(0)} Mbps (${BYTES / 1e6} MB each; TCG, shared cores: noisy)`);

      const stats = await guest.ethtoolStats();
      t.true(stats.rx_queue_0_bytes > 0 && stats.tx_queue_0_bytes > 0, JSON.stringify(stats));
    } finally {
      await guest.kill();
    }
    t.false(guest.running);
  });
});
