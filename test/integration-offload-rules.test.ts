// Integration on a real TAP: headers the kernel refuses are dropped with a
// named reason and the TX queue keeps going; without MRG_RXBUF, RX chains too
// small for the frames the negotiated offloads allow break a rule
// (DEVICE_NEEDS_RESET), as the spec's buffer sizes demand. Each on the split
// and the packed ring.

import test from 'ava';

import { bits, CTRL, STATUS, VirtioNetDevice, VirtioNetError } from '../backend';
import { markerOf, MINI_FEATURES, MiniGuest, rawSendScript, testFrame } from './helpers/mini-guest';
import { Netns, withNetns } from '../host/netns';
import { RING_LAYOUTS, type RingLayout } from './helpers/rings';

const GUEST_MAC = '52:54:00:12:34:56';

/** The feature bit that asks for `layout`'s rings. */
const ringBits = (layout: RingLayout): bigint => (layout === 'packed' ? bits('RING_PACKED') : 0n);

async function mini(ns: Netns, layout: RingLayout, want: bigint): Promise<{ g: MiniGuest; tap: string; errors: VirtioNetError[] }> {
  const tap = ns.ifname();
  const mem = new SharedArrayBuffer(MiniGuest.memoryBytes(1));
  const device = new VirtioNetDevice({ memory: mem, tap, netns: ns.name, mac: GUEST_MAC });
  ns.defer(() => void device.close());
  const errors: VirtioNetError[] = [];
  device.on('needs-reset', (e: VirtioNetError) => errors.push(e));
  const g = new MiniGuest(device, mem);
  await g.init(want | ringBits(layout));
  if ((device.driverFeatures & bits('RING_PACKED')) !== ringBits(layout)) throw new Error(`the guest did not get ${layout} rings`);
  return { g, tap, errors };
}

/** An IPv4/TCP frame with `payload` bytes, addressed to the TAP's side of the namespace. */
function tcpFrame(payload: number): Uint8Array {
  const f = new Uint8Array(14 + 20 + 20 + payload);
  const dv = new DataView(f.buffer);
  f.fill(0xaa, 0, 6);
  f.set([0x52, 0x54, 0, 0x12, 0x34, 0x56], 6);
  dv.setUint16(12, 0x0800);
  f[14] = 0x45;
  dv.setUint16(16, 40 + payload);
  f[22] = 64;
  f[23] = 6;
  dv.setUint32(26, 0x0acb0302);
  dv.setUint32(30, 0x0acb0301);
  f[14 + 20 + 12] = 0x50;
  return f;
}

function hdr(h: { flags?: number; gso?: number; hdrLen?: number; gsoSize?: number; csumStart?: number; csumOffset?: number }): Uint8Array {
  const b = new Uint8Array(12);
  const dv = new DataView(b.buffer);
  b[0] = h.flags ?? 0;
  b[1] = h.gso ?? 0;
  dv.setUint16(2, h.hdrLen ?? 0, true);
  dv.setUint16(4, h.gsoSize ?? 0, true);
  dv.setUint16(6, h.csumStart ?? 0, true);
  dv.setUint16(8, h.csumOffset ?? 0, true);
  return b;
}

/**
 * TCP/IPv4 carried by VXLAN over IPv4 (outer UDP checksum 0), to the TAP's side of the
 * namespace: outer Ethernet 14, IPv4 20, UDP 8 (outer_th 34), VXLAN 8, inner Ethernet 14
 * (inner_nh 64), IPv4 20, TCP 20 (csum_start 84), then `payload` bytes.
 */
function vxlanFrame(payload: number): Uint8Array {
  const inner = tcpFrame(payload);
  const f = new Uint8Array(14 + 20 + 8 + 8 + inner.length);
  const dv = new DataView(f.buffer);
  f.fill(0xaa, 0, 6);
  f.set([0x52, 0x54, 0, 0x12, 0x34, 0x56], 6);
  dv.setUint16(12, 0x0800);
  f[14] = 0x45;
  dv.setUint16(16, f.length - 14);
  f[22] = 64;
  f[23] = 17;
  dv.setUint32(26, 0x0acb0302);
  dv.setUint32(30, 0x0acb0301);
  dv.setUint16(34, 49152);
  dv.setUint16(36, 4789);
  dv.setUint16(38, f.length - 34);
  f[42] = 0x08; // VXLAN flags: VNI valid
  dv.setUint32(46, 42 << 8);
  f.set(inner, 50);
  return f;
}

/** A 24-byte header (struct virtio_net_hdr_v1_hash_tunnel): the basic fields, then outer_th_offset and inner_nh_offset at 20 and 22. */
function tunnelHdr(h: Parameters<typeof hdr>[0] & { outerTh?: number; innerNh?: number }): Uint8Array {
  const b = new Uint8Array(24);
  b.set(hdr(h));
  const dv = new DataView(b.buffer);
  dv.setUint16(20, h.outerTh ?? 0, true);
  dv.setUint16(22, h.innerNh ?? 0, true);
  return b;
}

/** A good VXLAN/IPv4 TCPv4 super-frame header for vxlanFrame(): NEEDS_CSUM, TCPV4 | UDP_TUNNEL_IPV4. */
const GOOD_TUNNEL = { flags: 1, gso: 0x21, hdrLen: 104, gsoSize: 700, csumStart: 84, csumOffset: 16, outerTh: 34, innerNh: 64 };

function tapRxPackets(ns: Netns, tap: string): number {
  const [l] = ns.ipJson<{ stats64: { rx: { packets: number } } }[]>('-s', 'link', 'show', tap);
  return l.stats64.rx.packets;
}

async function until(f: () => boolean, ms = 3000): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (f()) return true;
    await new Promise((r) => setTimeout(r, 5));
  }
  return f();
}

for (const layout of RING_LAYOUTS) {
test.serial(`${layout}: TX headers the kernel refuses are dropped with their reason; the queue keeps running`, async (t) => {
  await withNetns(async (ns) => {
    const { g, tap, errors } = await mini(ns, layout, MINI_FEATURES | bits('CSUM', 'HOST_TSO4', 'HOST_USO'));
    const frame = tcpFrame(1400);
    const cases: [string, Uint8Array][] = [
      ['tx_hdr_gso_size_zero', hdr({ flags: 1, gso: 1, hdrLen: 54, gsoSize: 0, csumStart: 34, csumOffset: 16 })],
      ['tx_hdr_len_past_frame', hdr({ flags: 0, gso: 1, hdrLen: 9000, gsoSize: 700 })],
      ['tx_hdr_csum_past_frame', hdr({ flags: 1, csumStart: 5000, csumOffset: 16 })],
      ['tx_hdr_bad_gso_type', hdr({ gso: 7, gsoSize: 700, hdrLen: 54 })],
      ['tx_hdr_uso_without_csum', hdr({ gso: 5, gsoSize: 700, hdrLen: 42 })],
    ];
    const drops = (): Record<string, number> => g.device.stats().queues[1].drops;
    for (const [reason, h] of cases) {
      const before = drops()[reason] ?? 0;
      const rxBefore = tapRxPackets(ns, tap);
      g.send(0, frame, h);
      t.true(await until(() => (drops()[reason] ?? 0) === before + 1), `${reason}: counted (${JSON.stringify(drops())})`);
      // A good frame right after it still goes out: the queue did not stop.
      g.send(0, frame, hdr({ flags: 1, csumStart: 34, csumOffset: 16 }));
      t.true(await until(() => tapRxPackets(ns, tap) >= rxBefore + 1), `${reason}: the next good frame reaches the kernel`);
    }
    t.deepEqual(errors, [], 'no rule broken: refused headers are the kernel\'s call, not a ring violation');
    t.is(g.device.status & STATUS.DEVICE_NEEDS_RESET, 0);
    // A real super-frame is accepted and counted as one frame.
    const sent = g.device.stats().queues[1].packets;
    g.send(0, tcpFrame(1900), hdr({ flags: 1, gso: 1, hdrLen: 54, gsoSize: 700, csumStart: 34, csumOffset: 16 }));
    t.true(await until(() => g.device.stats().queues[1].packets === sent + 1));
  });
});

test.serial(`${layout}: big packets: without MRG_RXBUF, RX chains smaller than a GSO frame break rx-chain-too-small`, async (t) => {
  await withNetns(async (ns) => {
    // MiniGuest posts 2 KiB buffers; with GUEST_TSO4 and no MRG_RXBUF the spec asks for 65562.
    const { g, tap, errors } = await mini(ns, layout, (MINI_FEATURES & ~bits('MRG_RXBUF')) | bits('GUEST_TSO4'));
    t.true(await until(() => errors.length > 0));
    t.is(errors[0].queue, 0);
    t.is(errors[0].rule, 'rx-chain-too-small');
    t.truthy(g.device.status & STATUS.DEVICE_NEEDS_RESET);
    t.true(g.device.stats().queues[0].broken);
    // Only that queue stopped: TX of the same pair still hands frames to the kernel.
    t.false(g.device.stats().queues[1].broken);
    const rxBefore = tapRxPackets(ns, tap);
    g.send(0, tcpFrame(100), hdr({}));
    t.true(await until(() => tapRxPackets(ns, tap) >= rxBefore + 1), 'TX keeps running after RX broke its rule');
    // The same buffers are fine when the features allow only MTU-sized frames.
    g.device.status = 0;
    errors.length = 0;
    await g.init((MINI_FEATURES & ~bits('MRG_RXBUF')) | ringBits(layout));
    // A frame from the kernel must arrive: proof the device took these chains (a fixed sleep
    // followed by "no error yet" would pass before the device had looked at them).
    g.drain();
    ns.exec('python3', rawSendScript(tap, [testFrame(GUEST_MAC, 7)]));
    const got = await g.collect(10_000, (f) => f.some((x) => markerOf(x.frame) === 7));
    t.true(got.some((x) => markerOf(x.frame) === 7), 'a frame is received into the MTU-sized chains');
    t.deepEqual(errors, []);
    t.is(g.device.status & STATUS.DEVICE_NEEDS_RESET, 0);
  });
});
}

// UDP tunnel headers: the header rules do not depend on the ring layout (split only).
const HOST_GSO = bits('CSUM', 'HOST_TSO4', 'HOST_TSO6', 'HOST_USO');
// With MRG_RXBUF: MiniGuest's 2 KiB RX buffers then hold a super-frame across several chains.
const GUEST_GSO = bits('MRG_RXBUF', 'GUEST_CSUM', 'GUEST_TSO4', 'GUEST_TSO6', 'GUEST_USO4', 'GUEST_USO6');

test.serial('hostile UDP tunnel headers are dropped before the TAP with a named reason; a good tunnel super-frame goes out', async (t) => {
  await withNetns(async (ns) => {
    const { g, tap, errors } = await mini(ns, 'split', MINI_FEATURES | HOST_GSO | bits('HOST_UDP_TUNNEL_GSO'));
    if (!(g.features & bits('HOST_UDP_TUNNEL_GSO'))) {
      t.fail(`this kernel's TAP lacks UDP tunnel GSO: ${JSON.stringify(g.device.capabilities().missing)}`);
      return;
    }
    t.is(g.hdrLen, 24);
    const frame = vxlanFrame(1400);
    const cases: [string, Uint8Array][] = [
      // Offsets outside the frame (the frame is 1504 bytes).
      ['tx_hdr_tunnel_offset_past_frame', tunnelHdr({ ...GOOD_TUNNEL, innerNh: 3000, csumStart: 3020 })],
      ['tx_hdr_tunnel_offset_past_frame', tunnelHdr({ ...GOOD_TUNNEL, outerTh: 0xfff8, innerNh: 0xfffc, csumStart: 0xfffe })],
      // The inner header before the outer one, and the inner transport before the inner IP header ends.
      ['tx_hdr_tunnel_offset_order', tunnelHdr({ ...GOOD_TUNNEL, innerNh: 20 })],
      ['tx_hdr_tunnel_offset_order', tunnelHdr({ ...GOOD_TUNNEL, outerTh: 10, innerNh: 18, csumStart: 38 })],
      ['tx_hdr_tunnel_offset_order', tunnelHdr({ ...GOOD_TUNNEL, csumStart: 70 })],
      // The outer checksum offload without HOST_UDP_TUNNEL_GSO_CSUM negotiated.
      ['tx_hdr_tunnel_not_negotiated', tunnelHdr({ ...GOOD_TUNNEL, flags: 1 | 8 })],
      // Both outer families, no inner GSO type, UFO inside, no NEEDS_CSUM, DATA_VALID, the outer-csum flag without a tunnel.
      ['tx_hdr_tunnel_bad_type', tunnelHdr({ ...GOOD_TUNNEL, gso: 0x61 })],
      ['tx_hdr_tunnel_bad_type', tunnelHdr({ ...GOOD_TUNNEL, gso: 0x20 })],
      ['tx_hdr_tunnel_bad_type', tunnelHdr({ ...GOOD_TUNNEL, gso: 0x23 })],
      ['tx_hdr_tunnel_bad_type', tunnelHdr({ ...GOOD_TUNNEL, flags: 0 })],
      ['tx_hdr_tunnel_bad_type', tunnelHdr({ ...GOOD_TUNNEL, flags: 1 | 2 })],
      // Well-formed for the tunnel rules but gso_size 0: tun refuses it (EINVAL), and the
      // engine names it as for plain GSO, the tunnel bits notwithstanding.
      ['tx_hdr_gso_size_zero', tunnelHdr({ ...GOOD_TUNNEL, gsoSize: 0 })],
    ];
    const drops = (): Record<string, number> => g.device.stats().queues[1].drops;
    for (const [reason, h] of cases) {
      const before = drops()[reason] ?? 0;
      const rxBefore = tapRxPackets(ns, tap);
      g.send(0, frame, h);
      t.true(await until(() => (drops()[reason] ?? 0) === before + 1), `${reason}: counted (${JSON.stringify(drops())})`);
      g.send(0, frame, tunnelHdr(GOOD_TUNNEL));
      t.true(await until(() => tapRxPackets(ns, tap) >= rxBefore + 1), `${reason}: the next good frame reaches the kernel`);
      // Every refusal has its name: none is an unexplained EINVAL from tun.
      t.is(drops().tap_write_einval ?? 0, 0, `${reason}: no unnamed kernel refusal`);
    }
    t.deepEqual(errors, []);
    t.is(g.device.status & STATUS.DEVICE_NEEDS_RESET, 0);
    // The good super-frames were written whole: one frame each, no drop.
    const s = g.device.stats().queues[1];
    t.is(s.packets, cases.length);
  });
});

test.serial('a tunnel gso_type from a guest that did not negotiate HOST_UDP_TUNNEL_GSO is dropped by name, with the short header or the 24-byte one', async (t) => {
  await withNetns(async (ns) => {
    // No tunnel feature: the header is 12 bytes, it has no tunnel fields.
    const a = await mini(ns, 'split', MINI_FEATURES | HOST_GSO);
    t.is(a.g.hdrLen, 12);
    a.g.send(0, vxlanFrame(1400), tunnelHdr(GOOD_TUNNEL));
    t.true(await until(() => (a.g.device.stats().queues[1].drops.tx_hdr_tunnel_short_header ?? 0) === 1), JSON.stringify(a.g.device.stats().queues[1].drops));
    // Only the receive side (GUEST_UDP_TUNNEL_GSO): the header is 24 bytes, and tun would take
    // the frame (it parses tunnel headers whenever the header is 24 bytes), so the engine refuses it.
    const b = await mini(ns, 'split', MINI_FEATURES | HOST_GSO | GUEST_GSO | bits('GUEST_UDP_TUNNEL_GSO'));
    if (!(b.g.features & bits('GUEST_UDP_TUNNEL_GSO'))) {
      t.fail(`this kernel's TAP lacks UDP tunnel GSO: ${JSON.stringify(b.g.device.capabilities().missing)}`);
      return;
    }
    t.is(b.g.hdrLen, 24);
    b.g.send(0, vxlanFrame(1400), tunnelHdr(GOOD_TUNNEL));
    t.true(await until(() => (b.g.device.stats().queues[1].drops.tx_hdr_tunnel_not_negotiated ?? 0) === 1), JSON.stringify(b.g.device.stats().queues[1].drops));
    t.is(b.g.device.stats().queues[1].packets, 0);
    t.deepEqual([...a.errors, ...b.errors], []);
  });
});

/** The TAP's tunnel segmentation features as ethtool shows them (what TUNSETOFFLOAD set). */
function tunnelOffloads(ns: Netns, tap: string): { tnl: string; csum: string } {
  const out = ns.run('ethtool', ['-k', tap]).stdout;
  const get = (name: string): string => new RegExp(`^${name}: (\\w+)`, 'm').exec(out)?.[1] ?? `missing from: ${out}`;
  return { tnl: get('tx-udp_tnl-segmentation'), csum: get('tx-udp_tnl-csum-segmentation') };
}

test.serial('the guest-side tunnel features set TUN_F_UDP_TUNNEL_GSO(_CSUM) on the TAP; GUEST_OFFLOADS_SET switches them with bits 46 and 47', async (t) => {
  await withNetns(async (ns) => {
    const want = MINI_FEATURES | HOST_GSO | GUEST_GSO | bits('GUEST_UDP_TUNNEL_GSO', 'GUEST_UDP_TUNNEL_GSO_CSUM');
    const { g, tap, errors } = await mini(ns, 'split', want);
    if (!(g.features & bits('GUEST_UDP_TUNNEL_GSO_CSUM'))) {
      t.fail(`this kernel's TAP lacks UDP tunnel GSO: ${JSON.stringify(g.device.capabilities().missing)}`);
      return;
    }
    t.deepEqual(tunnelOffloads(ns, tap), { tnl: 'on', csum: 'on' });
    t.deepEqual(g.device.stats().udpTunnelGso, { kernel: true, guest: true, host: false });
    const set = (word: bigint): Promise<number> => {
      const d = new Uint8Array(8);
      new DataView(d.buffer).setBigUint64(0, word, true);
      return g.ctrl!.command(CTRL.CLASS_GUEST_OFFLOADS, CTRL.GUEST_OFFLOADS_SET, d);
    };
    const plain = bits('GUEST_CSUM', 'GUEST_TSO4', 'GUEST_TSO6', 'GUEST_USO4', 'GUEST_USO6');
    t.is(await set(plain), CTRL.OK);
    t.deepEqual(tunnelOffloads(ns, tap), { tnl: 'off', csum: 'off' }, 'plain GSO only');
    t.false(g.device.stats().udpTunnelGso.guest, 'stats follow GUEST_OFFLOADS_SET');
    t.is(await set(plain | (1n << 46n)), CTRL.OK);
    t.deepEqual(tunnelOffloads(ns, tap), { tnl: 'on', csum: 'off' }, 'bit 46: GUEST_UDP_TUNNEL_GSO');
    t.is(await set(plain | (3n << 46n)), CTRL.OK);
    t.deepEqual(tunnelOffloads(ns, tap), { tnl: 'on', csum: 'on' }, 'bits 46 and 47');
    t.is(await set(plain | (1n << 47n)), CTRL.ERR, '_CSUM without the tunnel offload breaks a dependency');
    t.is(await set(bits('GUEST_CSUM') | (1n << 46n)), CTRL.ERR, 'the tunnel offload without plain GSO breaks a dependency');
    t.deepEqual(tunnelOffloads(ns, tap), { tnl: 'on', csum: 'on' }, 'a refused command changes nothing');
    t.deepEqual(errors, []);
  });
});
