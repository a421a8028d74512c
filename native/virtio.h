// virtio 1.x and linux/if_tun.h numbers the data plane needs, as C++
// constants. backend/virtio.ts holds the same numbers for TypeScript;
// VT_CONSTANTS exports them all so test/constants.test.ts can compare.
#pragma once
#include <cstdint>

namespace vt {

// Feature bits (virtio 1.x §6, §5.1.3).
constexpr int F_CSUM = 0;
constexpr int F_GUEST_CSUM = 1;
constexpr int F_CTRL_GUEST_OFFLOADS = 2;
constexpr int F_MTU = 3;
constexpr int F_MAC = 5;
constexpr int F_GUEST_TSO4 = 7;
constexpr int F_GUEST_TSO6 = 8;
constexpr int F_GUEST_ECN = 9;
constexpr int F_GUEST_UFO = 10;
constexpr int F_HOST_TSO4 = 11;
constexpr int F_HOST_TSO6 = 12;
constexpr int F_HOST_ECN = 13;
constexpr int F_HOST_UFO = 14;
constexpr int F_MRG_RXBUF = 15;
constexpr int F_STATUS = 16;
constexpr int F_CTRL_VQ = 17;
constexpr int F_MQ = 22;
constexpr int F_RING_INDIRECT_DESC = 28;
constexpr int F_RING_EVENT_IDX = 29;
constexpr int F_VERSION_1 = 32;
constexpr int F_RING_PACKED = 34;
constexpr int F_IN_ORDER = 35;
constexpr int F_GUEST_USO4 = 54;
constexpr int F_GUEST_USO6 = 55;
constexpr int F_HOST_USO = 56;
// GSO over UDP tunnels (virtio 1.4 §5.1.3): above 63, so never a uint64_t shift.
constexpr int F_GUEST_UDP_TUNNEL_GSO = 65;
constexpr int F_GUEST_UDP_TUNNEL_GSO_CSUM = 66;
constexpr int F_HOST_UDP_TUNNEL_GSO = 67;
constexpr int F_HOST_UDP_TUNNEL_GSO_CSUM = 68;

// Split ring (virtio 1.x §2.7).
constexpr uint32_t RING_MAX_SIZE = 32768;
constexpr uint32_t RING_DESC_SIZE = 16;
constexpr uint32_t RING_USED_ELEM_SIZE = 8;
constexpr uint16_t RING_DESC_F_NEXT = 1;
constexpr uint16_t RING_DESC_F_WRITE = 2;
constexpr uint16_t RING_DESC_F_INDIRECT = 4;
constexpr uint16_t RING_AVAIL_F_NO_INTERRUPT = 1;
constexpr uint16_t RING_USED_F_NO_NOTIFY = 1;

// Packed ring (virtio 1.x §2.8): descriptor { addr u64, len u32, id u16,
// flags u16 }, and the two event suppression areas { off_wrap u16, flags u16 }.
constexpr uint16_t RING_PACKED_DESC_F_AVAIL = 1 << 7;
constexpr uint16_t RING_PACKED_DESC_F_USED = 1 << 15;
constexpr uint16_t RING_EVENT_FLAGS_ENABLE = 0;
constexpr uint16_t RING_EVENT_FLAGS_DISABLE = 1;
constexpr uint16_t RING_EVENT_FLAGS_DESC = 2;
constexpr uint32_t RING_EVENT_AREA_SIZE = 4;
// Bit 15 of a packed ring's position (vhost-user's ring base, our saved
// state): the wrap counter; bits 0-14 the index in the ring.
constexpr uint16_t RING_PACKED_WRAP_BIT = 1 << 15;

// virtio_net_hdr (virtio 1.x §5.1.6).
constexpr uint8_t HDR_F_NEEDS_CSUM = 1;
constexpr uint8_t HDR_F_DATA_VALID = 2;
constexpr uint8_t HDR_F_UDP_TUNNEL_CSUM = 8;
constexpr uint8_t HDR_GSO_NONE = 0;
constexpr uint8_t HDR_GSO_TCPV4 = 1;
constexpr uint8_t HDR_GSO_UDP = 3;
constexpr uint8_t HDR_GSO_TCPV6 = 4;
constexpr uint8_t HDR_GSO_UDP_L4 = 5;
// Or'ed into TCPV4/TCPV6/UDP_L4: carried by a UDP tunnel whose OUTER network header
// is IPv4 / IPv6 (as Linux 6.17+ reads them; see backend/virtio.ts).
constexpr uint8_t HDR_GSO_UDP_TUNNEL_IPV4 = 0x20;
constexpr uint8_t HDR_GSO_UDP_TUNNEL_IPV6 = 0x40;
constexpr uint8_t HDR_GSO_ECN = 0x80;
constexpr uint32_t HDR_OFF_NUM_BUFFERS = 10;
// struct virtio_net_hdr_v1_hash_tunnel: outer_th_offset, inner_nh_offset after the hash fields.
constexpr uint32_t HDR_OFF_OUTER_TH_OFFSET = 20;
constexpr uint32_t HDR_OFF_INNER_NH_OFFSET = 22;
constexpr uint32_t HDR_SIZE_LEGACY = 10;
constexpr uint32_t HDR_SIZE_V1 = 12;
constexpr uint32_t HDR_SIZE_HASH = 20;
constexpr uint32_t HDR_SIZE_TUNNEL = 24;

// linux/if_tun.h; Debian 12's headers lack the USO offloads, so all are spelled out.
constexpr int TUN_IFF_TUN = 0x0001;
constexpr int TUN_IFF_TAP = 0x0002;
constexpr int TUN_IFF_NAPI = 0x0010;
constexpr int TUN_IFF_NAPI_FRAGS = 0x0020;
constexpr int TUN_IFF_MULTI_QUEUE = 0x0100;
constexpr int TUN_IFF_ATTACH_QUEUE = 0x0200;
constexpr int TUN_IFF_DETACH_QUEUE = 0x0400;
constexpr int TUN_IFF_NO_PI = 0x1000;
constexpr int TUN_IFF_VNET_HDR = 0x4000;
constexpr int TUN_F_CSUM = 0x01;
constexpr int TUN_F_TSO4 = 0x02;
constexpr int TUN_F_TSO6 = 0x04;
constexpr int TUN_F_TSO_ECN = 0x08;
constexpr int TUN_F_UFO = 0x10;
constexpr int TUN_F_USO4 = 0x20;
constexpr int TUN_F_USO6 = 0x40;
constexpr int TUN_F_UDP_TUNNEL_GSO = 0x80;       // Linux 6.17+
constexpr int TUN_F_UDP_TUNNEL_GSO_CSUM = 0x100;  // Linux 6.17+
constexpr int TUN_MAX_QUEUES = 256;

}  // namespace vt

// X-macro: every constant above, exported to JS under the same name.
#define VT_CONSTANTS(X)                                                                   \
  X(F_CSUM, vt::F_CSUM) X(F_GUEST_CSUM, vt::F_GUEST_CSUM)                                 \
  X(F_CTRL_GUEST_OFFLOADS, vt::F_CTRL_GUEST_OFFLOADS) X(F_MTU, vt::F_MTU)                 \
  X(F_MAC, vt::F_MAC) X(F_GUEST_TSO4, vt::F_GUEST_TSO4) X(F_GUEST_TSO6, vt::F_GUEST_TSO6) \
  X(F_GUEST_ECN, vt::F_GUEST_ECN) X(F_GUEST_UFO, vt::F_GUEST_UFO)                         \
  X(F_HOST_TSO4, vt::F_HOST_TSO4) X(F_HOST_TSO6, vt::F_HOST_TSO6)                         \
  X(F_HOST_ECN, vt::F_HOST_ECN) X(F_HOST_UFO, vt::F_HOST_UFO)                             \
  X(F_MRG_RXBUF, vt::F_MRG_RXBUF) X(F_STATUS, vt::F_STATUS) X(F_CTRL_VQ, vt::F_CTRL_VQ)   \
  X(F_MQ, vt::F_MQ) X(F_RING_INDIRECT_DESC, vt::F_RING_INDIRECT_DESC)                     \
  X(F_RING_EVENT_IDX, vt::F_RING_EVENT_IDX) X(F_VERSION_1, vt::F_VERSION_1)               \
  X(F_GUEST_USO4, vt::F_GUEST_USO4) X(F_GUEST_USO6, vt::F_GUEST_USO6)                     \
  X(F_HOST_USO, vt::F_HOST_USO)                                                           \
  X(F_GUEST_UDP_TUNNEL_GSO, vt::F_GUEST_UDP_TUNNEL_GSO)                                   \
  X(F_GUEST_UDP_TUNNEL_GSO_CSUM, vt::F_GUEST_UDP_TUNNEL_GSO_CSUM)                         \
  X(F_HOST_UDP_TUNNEL_GSO, vt::F_HOST_UDP_TUNNEL_GSO)                                     \
  X(F_HOST_UDP_TUNNEL_GSO_CSUM, vt::F_HOST_UDP_TUNNEL_GSO_CSUM)                           \
  X(RING_MAX_SIZE, vt::RING_MAX_SIZE) X(RING_DESC_SIZE, vt::RING_DESC_SIZE)               \
  X(RING_USED_ELEM_SIZE, vt::RING_USED_ELEM_SIZE) X(RING_DESC_F_NEXT, vt::RING_DESC_F_NEXT) \
  X(RING_DESC_F_WRITE, vt::RING_DESC_F_WRITE) X(RING_DESC_F_INDIRECT, vt::RING_DESC_F_INDIRECT) \
  X(RING_AVAIL_F_NO_INTERRUPT, vt::RING_AVAIL_F_NO_INTERRUPT)                             \
  X(RING_USED_F_NO_NOTIFY, vt::RING_USED_F_NO_NOTIFY)                                     \
  X(HDR_F_NEEDS_CSUM, vt::HDR_F_NEEDS_CSUM) X(HDR_F_DATA_VALID, vt::HDR_F_DATA_VALID)     \
  X(HDR_F_UDP_TUNNEL_CSUM, vt::HDR_F_UDP_TUNNEL_CSUM)                                     \
  X(HDR_GSO_UDP_TUNNEL_IPV4, vt::HDR_GSO_UDP_TUNNEL_IPV4)                                 \
  X(HDR_GSO_UDP_TUNNEL_IPV6, vt::HDR_GSO_UDP_TUNNEL_IPV6)                                 \
  X(HDR_OFF_OUTER_TH_OFFSET, vt::HDR_OFF_OUTER_TH_OFFSET)                                 \
  X(HDR_OFF_INNER_NH_OFFSET, vt::HDR_OFF_INNER_NH_OFFSET)                                 \
  X(HDR_SIZE_TUNNEL, vt::HDR_SIZE_TUNNEL)                                                 \
  X(HDR_GSO_NONE, vt::HDR_GSO_NONE) X(HDR_GSO_TCPV4, vt::HDR_GSO_TCPV4)                   \
  X(HDR_GSO_UDP, vt::HDR_GSO_UDP) X(HDR_GSO_TCPV6, vt::HDR_GSO_TCPV6)                     \
  X(HDR_GSO_UDP_L4, vt::HDR_GSO_UDP_L4) X(HDR_GSO_ECN, vt::HDR_GSO_ECN)                   \
  X(HDR_OFF_NUM_BUFFERS, vt::HDR_OFF_NUM_BUFFERS) X(HDR_SIZE_LEGACY, vt::HDR_SIZE_LEGACY) \
  X(HDR_SIZE_V1, vt::HDR_SIZE_V1) X(HDR_SIZE_HASH, vt::HDR_SIZE_HASH)                     \
  X(TUN_IFF_TUN, vt::TUN_IFF_TUN) X(TUN_IFF_TAP, vt::TUN_IFF_TAP)                         \
  X(TUN_IFF_NAPI, vt::TUN_IFF_NAPI) X(TUN_IFF_NAPI_FRAGS, vt::TUN_IFF_NAPI_FRAGS)         \
  X(TUN_IFF_MULTI_QUEUE, vt::TUN_IFF_MULTI_QUEUE)                                         \
  X(TUN_IFF_ATTACH_QUEUE, vt::TUN_IFF_ATTACH_QUEUE)                                       \
  X(TUN_IFF_DETACH_QUEUE, vt::TUN_IFF_DETACH_QUEUE) X(TUN_IFF_NO_PI, vt::TUN_IFF_NO_PI)   \
  X(TUN_IFF_VNET_HDR, vt::TUN_IFF_VNET_HDR) X(TUN_F_CSUM, vt::TUN_F_CSUM)                 \
  X(TUN_F_TSO4, vt::TUN_F_TSO4) X(TUN_F_TSO6, vt::TUN_F_TSO6)                             \
  X(TUN_F_TSO_ECN, vt::TUN_F_TSO_ECN) X(TUN_F_UFO, vt::TUN_F_UFO)                         \
  X(TUN_F_USO4, vt::TUN_F_USO4) X(TUN_F_USO6, vt::TUN_F_USO6)                             \
  X(TUN_F_UDP_TUNNEL_GSO, vt::TUN_F_UDP_TUNNEL_GSO)                                       \
  X(TUN_F_UDP_TUNNEL_GSO_CSUM, vt::TUN_F_UDP_TUNNEL_GSO_CSUM)                             \
  X(TUN_MAX_QUEUES, vt::TUN_MAX_QUEUES)
