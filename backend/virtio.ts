// virtio 1.x constants for a network device: feature bits, status bits, ring
// layout, virtio_net_hdr layout, config space offsets and TUN ioctl values.
// native/virtio.h defines the same numbers for C++; test/constants.test.ts
// compares the two so they cannot drift.

import { InvalidArgumentError } from './errors';

/** Feature bit numbers (virtio 1.x §6 and §5.1.3). */
export const F = {
  CSUM: 0,
  GUEST_CSUM: 1,
  CTRL_GUEST_OFFLOADS: 2,
  MTU: 3,
  MAC: 5,
  GUEST_TSO4: 7,
  GUEST_TSO6: 8,
  GUEST_ECN: 9,
  GUEST_UFO: 10,
  HOST_TSO4: 11,
  HOST_TSO6: 12,
  HOST_ECN: 13,
  HOST_UFO: 14,
  MRG_RXBUF: 15,
  STATUS: 16,
  CTRL_VQ: 17,
  CTRL_RX: 18,
  CTRL_VLAN: 19,
  CTRL_RX_EXTRA: 20,
  GUEST_ANNOUNCE: 21,
  MQ: 22,
  CTRL_MAC_ADDR: 23,
  NOTIFY_ON_EMPTY: 24,
  ANY_LAYOUT: 27,
  RING_INDIRECT_DESC: 28,
  RING_EVENT_IDX: 29,
  VERSION_1: 32,
  ACCESS_PLATFORM: 33,
  RING_PACKED: 34,
  IN_ORDER: 35,
  ORDER_PLATFORM: 36,
  NOTIFICATION_DATA: 38,
  RING_RESET: 40,
  DEVICE_STATS: 50,
  VQ_NOTF_COAL: 52,
  NOTF_COAL: 53,
  GUEST_USO4: 54,
  GUEST_USO6: 55,
  HOST_USO: 56,
  HASH_REPORT: 57,
  GUEST_HDRLEN: 59,
  RSS: 60,
  RSC_EXT: 61,
  STANDBY: 62,
  SPEED_DUPLEX: 63,
  // GSO over UDP tunnels (VXLAN, GENEVE): virtio 1.4 §5.1.3 "Feature bits", bits above 63.
  // The driver writes them through driver_feature_select 2 (bits 64..95); vhost-user's
  // GET/SET_FEATURES carry only a u64, so that back end never offers them.
  GUEST_UDP_TUNNEL_GSO: 65,
  GUEST_UDP_TUNNEL_GSO_CSUM: 66,
  HOST_UDP_TUNNEL_GSO: 67,
  HOST_UDP_TUNNEL_GSO_CSUM: 68,
} as const;

export type FeatureName = keyof typeof F;

/** The feature bit as a bigint mask. */
export function bit(name: FeatureName): bigint {
  return 1n << BigInt(F[name]);
}

/** Mask of several features. */
export function bits(...names: FeatureName[]): bigint {
  let m = 0n;
  for (const n of names) m |= bit(n);
  return m;
}

export function has(features: bigint, name: FeatureName): boolean {
  return (features & bit(name)) !== 0n;
}

/** Names of the bits set in a mask, for messages and `capabilities()`. */
export function featureNames(features: bigint): string[] {
  // A negative bigint has infinitely many bits set: listing them would never end.
  if (typeof features !== 'bigint' || features < 0n) throw new InvalidArgumentError(`featureNames takes a non-negative bigint mask, got ${String(features)}`);
  const out: string[] = [];
  let named = 0n;
  for (const [name, b] of Object.entries(F)) {
    named |= 1n << BigInt(b);
    if ((features >> BigInt(b)) & 1n) out.push(name);
  }
  // Reserved bits have no name; still say which they are.
  for (let b = 0n, rest = features & ~named; rest >> b; b++) if ((rest >> b) & 1n) out.push(`bit ${b}`);
  return out;
}

/** device_status bits (virtio 1.x §2.1). */
export const STATUS = {
  ACKNOWLEDGE: 1,
  DRIVER: 2,
  DRIVER_OK: 4,
  FEATURES_OK: 8,
  DEVICE_NEEDS_RESET: 64,
  FAILED: 128,
} as const;

/** Split virtqueue layout (virtio 1.x §2.7). */
export const RING = {
  MAX_SIZE: 32768,
  DESC_SIZE: 16,
  DESC_ALIGN: 16,
  AVAIL_ALIGN: 2,
  USED_ALIGN: 4,
  USED_ELEM_SIZE: 8,
  DESC_F_NEXT: 1,
  DESC_F_WRITE: 2,
  DESC_F_INDIRECT: 4,
  AVAIL_F_NO_INTERRUPT: 1,
  USED_F_NO_NOTIFY: 1,
} as const;

/**
 * Packed virtqueue layout (virtio 1.x §2.8): descriptor { addr u64, len u32, id u16, flags u16 },
 * and two event suppression areas { off_wrap u16, flags u16 }. Positions saved and restored
 * (lastAvailIdx / usedIdx, vhost-user's ring base) carry the wrap counter in bit 15.
 */
export const PACKED_RING = {
  DESC_F_AVAIL: 1 << 7,
  DESC_F_USED: 1 << 15,
  EVENT_FLAGS_ENABLE: 0,
  EVENT_FLAGS_DISABLE: 1,
  EVENT_FLAGS_DESC: 2,
  EVENT_AREA_SIZE: 4,
  EVENT_AREA_ALIGN: 4,
  WRAP_BIT: 1 << 15,
  /** Where a new packed ring starts: position 0, wrap counter 1. */
  INITIAL_POSITION: 1 << 15,
} as const;

/** Byte sizes of the three parts of a packed ring: descriptor ring, driver and device event areas. */
export function packedRingSizes(size: number): { desc: number; avail: number; used: number } {
  return { desc: RING.DESC_SIZE * size, avail: PACKED_RING.EVENT_AREA_SIZE, used: PACKED_RING.EVENT_AREA_SIZE };
}

/** Byte sizes of the three parts of a split ring of `size` entries (event fields included). */
export function splitRingSizes(size: number): { desc: number; avail: number; used: number } {
  return {
    desc: RING.DESC_SIZE * size,
    avail: 4 + 2 * size + 2,
    used: 4 + RING.USED_ELEM_SIZE * size + 2,
  };
}

/** virtio_net_hdr (virtio 1.x §5.1.6). */
export const HDR = {
  F_NEEDS_CSUM: 1,
  F_DATA_VALID: 2,
  F_RSC_INFO: 4,
  /** The outer UDP checksum is partial (TX) or validated (RX) too; only with a tunnel gso_type. */
  F_UDP_TUNNEL_CSUM: 8,
  GSO_NONE: 0,
  GSO_TCPV4: 1,
  GSO_UDP: 3,
  GSO_TCPV6: 4,
  GSO_UDP_L4: 5,
  /**
   * Or'ed into a TCPV4/TCPV6/UDP_L4 gso_type: the frame is carried by a UDP tunnel. Linux 6.17+
   * (include/linux/virtio_net.h) reads the bit as the family of the OUTER network header
   * (IPv4 → 0x20); the spec's driver text says "inner" but its own example (TCPv4 in GENEVE over
   * IPv4 = 0x21) cannot tell the two apart. vhost-tap follows the kernel it writes to.
   */
  GSO_UDP_TUNNEL_IPV4: 0x20,
  GSO_UDP_TUNNEL_IPV6: 0x40,
  GSO_ECN: 0x80,
  OFF_FLAGS: 0,
  OFF_GSO_TYPE: 1,
  OFF_HDR_LEN: 2,
  OFF_GSO_SIZE: 4,
  OFF_CSUM_START: 6,
  OFF_CSUM_OFFSET: 8,
  OFF_NUM_BUFFERS: 10,
  /** struct virtio_net_hdr_v1_hash_tunnel: the tunnel fields follow the hash fields, which are
   *  there (unused) even without HASH_REPORT (virtio 1.4 §5.1.6: "24 bytes if ..._UDP_TUNNEL_GSO"). */
  OFF_OUTER_TH_OFFSET: 20,
  OFF_INNER_NH_OFFSET: 22,
  SIZE_LEGACY: 10,
  SIZE_V1: 12,
  SIZE_HASH: 20,
  SIZE_TUNNEL: 24,
} as const;

/** Header size the negotiated features imply (virtio 1.x §5.1.6). */
export function netHdrSize(features: bigint): number {
  if (has(features, 'GUEST_UDP_TUNNEL_GSO') || has(features, 'HOST_UDP_TUNNEL_GSO')) return HDR.SIZE_TUNNEL;
  if (has(features, 'HASH_REPORT')) return HDR.SIZE_HASH;
  if (has(features, 'VERSION_1') || has(features, 'MRG_RXBUF')) return HDR.SIZE_V1;
  return HDR.SIZE_LEGACY;
}

/** virtio_net_config offsets (virtio 1.x §5.1.4). */
export const CONFIG = {
  OFF_MAC: 0,
  OFF_STATUS: 6,
  OFF_MAX_VQ_PAIRS: 8,
  OFF_MTU: 10,
  OFF_SPEED: 12,
  OFF_DUPLEX: 16,
  SIZE: 17,
  /** With RSS or HASH_REPORT offered: u8 rss_max_key_size, le16 rss_max_indirection_table_length, le32 supported_hash_types. */
  OFF_RSS_MAX_KEY_SIZE: 17,
  OFF_RSS_MAX_INDIRECTION_TABLE_LENGTH: 18,
  OFF_SUPPORTED_HASH_TYPES: 20,
  SIZE_RSS: 24,
  S_LINK_UP: 1,
  S_ANNOUNCE: 2,
} as const;

/** Control virtqueue classes and commands (virtio 1.x §5.1.6.5). */
export const CTRL = {
  OK: 0,
  ERR: 1,
  CLASS_RX: 0,
  RX_PROMISC: 0,
  RX_ALLMULTI: 1,
  RX_ALLUNI: 2,
  RX_NOMULTI: 3,
  RX_NOUNI: 4,
  RX_NOBCAST: 5,
  CLASS_MAC: 1,
  MAC_TABLE_SET: 0,
  MAC_ADDR_SET: 1,
  CLASS_VLAN: 2,
  VLAN_ADD: 0,
  VLAN_DEL: 1,
  CLASS_ANNOUNCE: 3,
  ANNOUNCE_ACK: 0,
  CLASS_MQ: 4,
  MQ_VQ_PAIRS_SET: 0,
  MQ_VQ_PAIRS_MIN: 1,
  MQ_VQ_PAIRS_MAX: 0x8000,
  /** struct virtio_net_rss_config (backend/rss.ts), with VIRTIO_NET_F_RSS. */
  MQ_RSS_CONFIG: 1,
  /** struct virtio_net_hash_config (backend/rss.ts), with VIRTIO_NET_F_HASH_REPORT and not RSS. */
  MQ_HASH_CONFIG: 2,
  CLASS_GUEST_OFFLOADS: 5,
  GUEST_OFFLOADS_SET: 0,
  /**
   * GUEST_OFFLOADS_SET carries a le64, but the tunnel features are bits 65 and 66: in the
   * offloads word they sit at 46 and 47 (virtio 1.4 §5.1.6.5.6.1; Linux's
   * VIRTIO_NET_F_GUEST_UDP_TUNNEL_GSO_MAPPED / _CSUM_MAPPED).
   */
  OFFLOAD_GUEST_UDP_TUNNEL_GSO: 46,
  OFFLOAD_GUEST_UDP_TUNNEL_GSO_CSUM: 47,
  /**
   * TX_SET / RX_SET data: le32 max_packets, le32 max_usecs (struct virtio_net_ctrl_coal).
   * VQ_SET data: le16 vq_index, le16 reserved, then the same; VQ_GET data: le16 vq_index,
   * le16 reserved, and it returns struct virtio_net_ctrl_coal before the ack.
   */
  CLASS_NOTF_COAL: 6,
  NOTF_COAL_TX_SET: 0,
  NOTF_COAL_RX_SET: 1,
  NOTF_COAL_VQ_SET: 2,
  NOTF_COAL_VQ_GET: 3,
} as const;

/** linux/if_tun.h values the backend uses (USO4/6 are missing from Debian 12's headers). */
export const TUN = {
  IFF_TUN: 0x0001,
  IFF_TAP: 0x0002,
  IFF_NAPI: 0x0010,
  IFF_NAPI_FRAGS: 0x0020,
  IFF_MULTI_QUEUE: 0x0100,
  IFF_ATTACH_QUEUE: 0x0200,
  IFF_DETACH_QUEUE: 0x0400,
  IFF_NO_PI: 0x1000,
  IFF_VNET_HDR: 0x4000,
  F_CSUM: 0x01,
  F_TSO4: 0x02,
  F_TSO6: 0x04,
  F_TSO_ECN: 0x08,
  F_UFO: 0x10,
  F_USO4: 0x20,
  F_USO6: 0x40,
  /** Linux 6.17+: the TAP may hand over GSO-over-UDP-tunnel super-frames (needs a plain GSO flag too). */
  F_UDP_TUNNEL_GSO: 0x80,
  /** ... with the outer UDP checksum partial (needs F_UDP_TUNNEL_GSO). */
  F_UDP_TUNNEL_GSO_CSUM: 0x100,
  /** Linux's MAX_TAP_QUEUES. */
  MAX_QUEUES: 256,
  /** IFNAMSIZ - 1. */
  MAX_NAME: 15,
} as const;

/** Virtqueue index of receiveq/transmitq of pair `p` and of the control queue. */
export const rxq = (p: number): number => 2 * p;
export const txq = (p: number): number => 2 * p + 1;
export const ctrlq = (pairs: number): number => 2 * pairs;
