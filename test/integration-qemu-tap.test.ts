// Integration: the Linux test guest (host/linux-guest) under QEMU with QEMU's
// own tap back end, the TAP inside a namespace the test creates. Proves the
// harness the vhost-user tests use: the guest boots and its virtio_net driver
// binds, the host pings it (IPv4 and IPv6, 100 packets, no loss), 100 MB of
// TCP go each way with equal SHA-256 on both ends. Boot time and Mbps are
// logged, not asserted.

import test from 'ava';

import { has } from '../backend';
import { addQemuTap } from '../host/linux-guest/host';
import { LinuxGuest } from '../host/linux-guest/qemu';
import { withNetns } from '../host/netns';
import { checkGuestNetworks } from './helpers/guest-networks';

const HOST4 = '10.203.20.1';
const GUEST4 = '10.203.20.2';
const HOST6 = 'fd00:cb:20::1';
const GUEST6 = 'fd00:cb:20::2';
const ADDRS = { host4: HOST4, guest4: GUEST4, guest6: GUEST6 };
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

      const { h2g, g2h } = await checkGuestNetworks(t, guest, ns.name, ADDRS, { bytes: BYTES, timeoutMs: TRANSFER_TIMEOUT_MS, port: 5001 });
      t.log(`host → guest ${h2g.mbps.toFixed(0)} Mbps, guest → host ${g2h.mbps.toFixed(0)} Mbps (${BYTES / 1e6} MB each; TCG, shared cores: noisy)`);

      const stats = await guest.ethtoolStats();
      t.true(stats.rx_queue_0_bytes > 0 && stats.tx_queue_0_bytes > 0, JSON.stringify(stats));
    } finally {
      await guest.kill();
    }
    t.false(guest.running);
  });
});
