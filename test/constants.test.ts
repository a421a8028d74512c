// The numbers that both languages need are defined twice, once in
// backend/virtio.ts and once in native/virtio.h (exported as
// addon().constants). This file checks that the two agree, and checks both
// against the numbers of the virtio 1.x spec and linux/if_tun.h (written out
// here a third time, from VIRTIO-NET.md), so they cannot drift together.

import test from 'ava';

import { addon } from '../backend/native';
import { bit, bits, CONFIG, CTRL, F, featureNames, HDR, netHdrSize, RING, splitRingSizes, STATUS, TUN } from '../backend/virtio';

const native = addon().constants;

/** Native names are GROUP_NAME; the TS value lives in GROUP.NAME. */
const GROUPS: Record<string, Record<string, number>> = { F, RING, HDR, TUN };

function tsCounterpart(nativeName: string): { group: string; key: string; value: number | undefined } | null {
  const m = /^(F|RING|HDR|TUN)_(.+)$/.exec(nativeName);
  if (!m) return null;
  const [, group, key] = m;
  return { group, key, value: GROUPS[group][key] };
}

test('the addon exports a non-empty table of integer constants', (t) => {
  const names = Object.keys(native);
  t.true(names.length >= 60, `expected the whole of native/virtio.h, got ${names.length} constants`);
  for (const n of names) t.true(Number.isInteger(native[n]), `${n} = ${String(native[n])} is not an integer`);
});

test('every native constant has a TypeScript counterpart with the same value', (t) => {
  const orphans: string[] = [];
  const mismatches: string[] = [];
  for (const [name, value] of Object.entries(native)) {
    const ts = tsCounterpart(name);
    if (!ts || ts.value === undefined) {
      orphans.push(name);
      continue;
    }
    if (ts.value !== value) mismatches.push(`${name} = ${value} but ${ts.group}.${ts.key} = ${ts.value}`);
  }
  t.deepEqual(orphans, [], `native constants with no TS counterpart (GROUP_NAME → GROUP.NAME): ${orphans.join(', ')}`);
  t.deepEqual(mismatches, []);
});

test('the mapping catches a native name with no TS counterpart', (t) => {
  // Guards the check above: an unknown name or group must not map to anything.
  t.is(tsCounterpart('F_NO_SUCH_FEATURE')?.value, undefined);
  t.is(tsCounterpart('QUEUE_SIZE'), null);
  t.is(tsCounterpart('TUN_IFF_TAP')?.value, TUN.IFF_TAP);
  t.is(tsCounterpart('RING_DESC_F_NEXT')?.value, RING.DESC_F_NEXT);
});

test('every feature the data plane knows in C++ is a feature bit in TS (and the TS table has no duplicates)', (t) => {
  const nativeFeatures = Object.keys(native).filter((n) => n.startsWith('F_'));
  for (const n of ['F_CSUM', 'F_GUEST_CSUM', 'F_MRG_RXBUF', 'F_RING_EVENT_IDX', 'F_RING_INDIRECT_DESC', 'F_VERSION_1', 'F_HOST_USO']) {
    t.true(nativeFeatures.includes(n), `native/virtio.h lacks ${n}`);
  }
  const seen = new Map<number, string>();
  for (const [name, b] of Object.entries(F)) {
    t.false(seen.has(b), `F.${name} and F.${seen.get(b)} share bit ${b}`);
    seen.set(b, name);
    // virtio 1.4 numbers features up to 127 (four 32-bit words); the tunnel offloads are 65..68.
    t.true(b >= 0 && b < 128, `F.${name} = ${b}`);
  }
});

// --- the spec's numbers (VIRTIO-NET.md) -------------------------------------------------

const SPEC_FEATURES: Record<string, number> = {
  NOTIFY_ON_EMPTY: 24, ANY_LAYOUT: 27, RING_INDIRECT_DESC: 28, RING_EVENT_IDX: 29, VERSION_1: 32,
  ACCESS_PLATFORM: 33, RING_PACKED: 34, IN_ORDER: 35, ORDER_PLATFORM: 36, NOTIFICATION_DATA: 38, RING_RESET: 40,
  CSUM: 0, GUEST_CSUM: 1, CTRL_GUEST_OFFLOADS: 2, MTU: 3, MAC: 5, GUEST_TSO4: 7, GUEST_TSO6: 8, GUEST_ECN: 9,
  GUEST_UFO: 10, HOST_TSO4: 11, HOST_TSO6: 12, HOST_ECN: 13, HOST_UFO: 14, MRG_RXBUF: 15, STATUS: 16, CTRL_VQ: 17,
  CTRL_RX: 18, CTRL_VLAN: 19, CTRL_RX_EXTRA: 20, GUEST_ANNOUNCE: 21, MQ: 22, CTRL_MAC_ADDR: 23, DEVICE_STATS: 50,
  VQ_NOTF_COAL: 52, NOTF_COAL: 53, GUEST_USO4: 54, GUEST_USO6: 55, HOST_USO: 56, HASH_REPORT: 57, GUEST_HDRLEN: 59,
  RSS: 60, RSC_EXT: 61, STANDBY: 62, SPEED_DUPLEX: 63,
  // virtio 1.4 §5.1.3 and Linux 6.17+ include/uapi/linux/virtio_net.h.
  GUEST_UDP_TUNNEL_GSO: 65, GUEST_UDP_TUNNEL_GSO_CSUM: 66, HOST_UDP_TUNNEL_GSO: 67, HOST_UDP_TUNNEL_GSO_CSUM: 68,
};

test('feature bits match the virtio spec', (t) => {
  t.deepEqual({ ...F }, SPEC_FEATURES);
  t.is(bit('VERSION_1'), 1n << 32n);
  t.is(bits('CSUM', 'MAC', 'SPEED_DUPLEX'), 1n | 32n | (1n << 63n));
  t.deepEqual(featureNames(bits('CSUM', 'HOST_USO')), ['CSUM', 'HOST_USO']);
  t.deepEqual(featureNames((1n << 45n) | bit('MAC')), ['MAC', 'bit 45'], 'reserved bits are named by number');
  t.is(bit('HOST_UDP_TUNNEL_GSO_CSUM'), 1n << 68n);
  t.deepEqual(featureNames(bits('GUEST_UDP_TUNNEL_GSO', 'HOST_UDP_TUNNEL_GSO') | (1n << 64n)), ['GUEST_UDP_TUNNEL_GSO', 'HOST_UDP_TUNNEL_GSO', 'bit 64']);
});

test('status, ring, header, config and control-queue numbers match the spec', (t) => {
  t.deepEqual({ ...STATUS }, { ACKNOWLEDGE: 1, DRIVER: 2, DRIVER_OK: 4, FEATURES_OK: 8, DEVICE_NEEDS_RESET: 64, FAILED: 128 });
  t.like(RING, {
    MAX_SIZE: 32768, DESC_SIZE: 16, DESC_ALIGN: 16, AVAIL_ALIGN: 2, USED_ALIGN: 4, USED_ELEM_SIZE: 8,
    DESC_F_NEXT: 1, DESC_F_WRITE: 2, DESC_F_INDIRECT: 4, AVAIL_F_NO_INTERRUPT: 1, USED_F_NO_NOTIFY: 1,
  });
  t.like(HDR, {
    F_NEEDS_CSUM: 1, F_DATA_VALID: 2, F_RSC_INFO: 4, GSO_NONE: 0, GSO_TCPV4: 1, GSO_UDP: 3, GSO_TCPV6: 4,
    GSO_UDP_L4: 5, GSO_ECN: 0x80, OFF_FLAGS: 0, OFF_GSO_TYPE: 1, OFF_HDR_LEN: 2, OFF_GSO_SIZE: 4,
    OFF_CSUM_START: 6, OFF_CSUM_OFFSET: 8, OFF_NUM_BUFFERS: 10, SIZE_LEGACY: 10, SIZE_V1: 12, SIZE_HASH: 20,
    // virtio 1.4 §5.1.6 (struct virtio_net_hdr_v1_hash_tunnel in Linux 6.17+).
    F_UDP_TUNNEL_CSUM: 8, GSO_UDP_TUNNEL_IPV4: 0x20, GSO_UDP_TUNNEL_IPV6: 0x40,
    OFF_OUTER_TH_OFFSET: 20, OFF_INNER_NH_OFFSET: 22, SIZE_TUNNEL: 24,
  });
  t.like(CONFIG, { OFF_MAC: 0, OFF_STATUS: 6, OFF_MAX_VQ_PAIRS: 8, OFF_MTU: 10, OFF_SPEED: 12, OFF_DUPLEX: 16, S_LINK_UP: 1, S_ANNOUNCE: 2 });
  t.like(CTRL, {
    OK: 0, ERR: 1, CLASS_RX: 0, RX_PROMISC: 0, RX_ALLMULTI: 1, RX_ALLUNI: 2, RX_NOMULTI: 3, RX_NOUNI: 4, RX_NOBCAST: 5,
    CLASS_MAC: 1, MAC_TABLE_SET: 0, MAC_ADDR_SET: 1, CLASS_VLAN: 2, VLAN_ADD: 0, VLAN_DEL: 1, CLASS_ANNOUNCE: 3,
    ANNOUNCE_ACK: 0, CLASS_MQ: 4, MQ_VQ_PAIRS_SET: 0, CLASS_GUEST_OFFLOADS: 5, GUEST_OFFLOADS_SET: 0,
    CLASS_NOTF_COAL: 6, NOTF_COAL_TX_SET: 0, NOTF_COAL_RX_SET: 1, NOTF_COAL_VQ_SET: 2, NOTF_COAL_VQ_GET: 3,
    OFFLOAD_GUEST_UDP_TUNNEL_GSO: 46, OFFLOAD_GUEST_UDP_TUNNEL_GSO_CSUM: 47,
  });
});

test('TUN numbers match linux/if_tun.h', (t) => {
  t.like(TUN, {
    IFF_TUN: 0x0001, IFF_TAP: 0x0002, IFF_NAPI: 0x0010, IFF_NAPI_FRAGS: 0x0020, IFF_MULTI_QUEUE: 0x0100,
    IFF_ATTACH_QUEUE: 0x0200, IFF_DETACH_QUEUE: 0x0400, IFF_NO_PI: 0x1000, IFF_VNET_HDR: 0x4000,
    F_CSUM: 0x01, F_TSO4: 0x02, F_TSO6: 0x04, F_TSO_ECN: 0x08, F_UFO: 0x10, F_USO4: 0x20, F_USO6: 0x40,
    F_UDP_TUNNEL_GSO: 0x80, F_UDP_TUNNEL_GSO_CSUM: 0x100,
    MAX_QUEUES: 256, MAX_NAME: 15,
  });
});

test('splitRingSizes follows the split-ring layout (event fields included)', (t) => {
  // desc: 16 N; avail: flags + idx + N × u16 + used_event; used: flags + idx + N × 8 + avail_event.
  t.deepEqual(splitRingSizes(1), { desc: 16, avail: 8, used: 14 });
  t.deepEqual(splitRingSizes(256), { desc: 4096, avail: 518, used: 2054 });
  t.deepEqual(splitRingSizes(32768), { desc: 524288, avail: 65542, used: 262150 });
  for (const n of [2, 8, 64, 1024]) {
    const s = splitRingSizes(n);
    t.is(s.desc, 16 * n);
    t.is(s.avail, 2 + 2 + 2 * n + 2);
    t.is(s.used, 2 + 2 + 8 * n + 2);
  }
});

test('netHdrSize: 10 legacy, 12 with VERSION_1 or MRG_RXBUF, 20 with HASH_REPORT', (t) => {
  t.is(netHdrSize(0n), 10);
  t.is(netHdrSize(bits('CSUM', 'GUEST_TSO4')), 10);
  t.is(netHdrSize(bit('VERSION_1')), 12);
  t.is(netHdrSize(bit('MRG_RXBUF')), 12);
  t.is(netHdrSize(bits('VERSION_1', 'MRG_RXBUF')), 12);
  t.is(netHdrSize(bits('VERSION_1', 'HASH_REPORT')), 20);
  t.is(netHdrSize(bits('VERSION_1', 'MRG_RXBUF', 'HASH_REPORT')), 20);
  t.is(HDR.OFF_NUM_BUFFERS + 2, HDR.SIZE_V1);
});

test('netHdrSize: 24 with either UDP tunnel GSO feature (the tunnel fields follow the hash fields, there or not)', (t) => {
  t.is(netHdrSize(bits('VERSION_1', 'GUEST_UDP_TUNNEL_GSO')), 24);
  t.is(netHdrSize(bits('VERSION_1', 'HOST_UDP_TUNNEL_GSO')), 24);
  t.is(netHdrSize(bits('VERSION_1', 'MRG_RXBUF', 'HASH_REPORT', 'HOST_UDP_TUNNEL_GSO')), 24);
  t.is(HDR.OFF_INNER_NH_OFFSET + 2, HDR.SIZE_TUNNEL);
  t.is(HDR.OFF_OUTER_TH_OFFSET, HDR.SIZE_HASH);
});
