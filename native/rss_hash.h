// The hash of virtio-net's hash reports (virtio 1.2 §5.1.6.4.3): which of the
// guest's enabled hash types a received frame falls under, and the Toeplitz
// hash of its addresses (and ports) under the guest's key. Plain C++, no I/O:
// the RX path calls Compute() on a private copy of the frame's first bytes.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace vt {

// VIRTIO_NET_RSS_HASH_TYPE_* (bits) and VIRTIO_NET_HASH_REPORT_* (values).
constexpr uint32_t HASH_TYPE_IPv4 = 1u << 0, HASH_TYPE_TCPv4 = 1u << 1, HASH_TYPE_UDPv4 = 1u << 2,
                   HASH_TYPE_IPv6 = 1u << 3, HASH_TYPE_TCPv6 = 1u << 4, HASH_TYPE_UDPv6 = 1u << 5;
constexpr uint16_t HASH_REPORT_NONE = 0, HASH_REPORT_IPv4 = 1, HASH_REPORT_TCPv4 = 2, HASH_REPORT_UDPv4 = 3,
                   HASH_REPORT_IPv6 = 4, HASH_REPORT_TCPv6 = 5, HASH_REPORT_UDPv6 = 6;
// Where the hash goes in struct virtio_net_hdr_v1_hash: le32 hash_value,
// le16 hash_report, le16 padding.
constexpr uint32_t HDR_OFF_HASH_VALUE = 12;
constexpr uint32_t HDR_HASH_FIELDS_BYTES = 8;

class RssHash {
 public:
  // Longest hash input: two IPv6 addresses and two ports.
  static constexpr size_t kMaxInput = 36;
  static constexpr size_t kMaxKey = 40;
  // Bytes of a frame Compute() looks at: Ethernet, IPv6 and a few extension
  // headers before TCP/UDP. A transport header further in is not found, and
  // the frame hashes as plain IPv6 (when that type is enabled).
  static constexpr size_t kPeek = 192;
  // Extension headers walked at most (each is at least 8 bytes).
  static constexpr int kMaxExtHeaders = 8;

  // `key` shorter than kMaxKey reads as zero-padded.
  RssHash(uint32_t hash_types, const uint8_t* key, size_t key_len) : types_(hash_types) {
    uint8_t k[kMaxKey + 4] = {};
    std::memcpy(k, key, key_len < kMaxKey ? key_len : kMaxKey);
    // Toeplitz is linear in its input bits: per input byte position and value,
    // precompute the XOR of the 32-bit key windows its set bits select, so
    // hashing is one lookup per input byte.
    for (size_t p = 0; p < kMaxInput; p++) {
      uint32_t bit_window[8];
      for (int b = 0; b < 8; b++) bit_window[b] = Window(k, p * 8 + b);
      for (int v = 0; v < 256; v++) {
        uint32_t h = 0;
        for (int b = 0; b < 8; b++)
          if (v & (0x80 >> b)) h ^= bit_window[b];
        table_[p][v] = h;
      }
    }
  }

  uint32_t types() const { return types_; }

  // The XOR of the key windows byte value `v` selects at input byte `p`
  // (p < kMaxInput): the steering program (rss_steering.cc) hashes with the
  // same tables, so its queue choice and the hash report cannot disagree.
  uint32_t Lookup(size_t p, uint8_t v) const { return table_[p][v]; }

  // Hash value and report type of the frame whose first `len` bytes (at most
  // kPeek are read) are `f`, starting with its Ethernet header.
  uint16_t Compute(const uint8_t* f, size_t len, uint32_t* value) const {
    *value = 0;
    if (len < 14) return HASH_REPORT_NONE;
    const uint16_t ethertype = static_cast<uint16_t>((f[12] << 8) | f[13]);
    const uint8_t* ip = f + 14;
    const size_t n = len - 14;
    uint8_t in[kMaxInput];
    if (ethertype == 0x0800) {
      if (!(types_ & (HASH_TYPE_IPv4 | HASH_TYPE_TCPv4 | HASH_TYPE_UDPv4)) || n < 20 || (ip[0] >> 4) != 4) return HASH_REPORT_NONE;
      const size_t ihl = (ip[0] & 0xf) * 4u;
      if (ihl < 20 || ihl > n) return HASH_REPORT_NONE;
      std::memcpy(in, ip + 12, 8);
      // A fragment (more to come, or not the first) has no ports to hash.
      const bool frag = ((ip[6] << 8) | ip[7]) & 0x3fff;
      const uint8_t proto = ip[9];
      const bool ports = !frag && n >= ihl + 4;
      if (ports && proto == 6 && (types_ & HASH_TYPE_TCPv4)) return Ports(in, 8, ip + ihl, HASH_REPORT_TCPv4, value);
      if (ports && proto == 17 && (types_ & HASH_TYPE_UDPv4)) return Ports(in, 8, ip + ihl, HASH_REPORT_UDPv4, value);
      if (!(types_ & HASH_TYPE_IPv4)) return HASH_REPORT_NONE;
      *value = Hash(in, 8);
      return HASH_REPORT_IPv4;
    }
    if (ethertype == 0x86dd) {
      if (!(types_ & (HASH_TYPE_IPv6 | HASH_TYPE_TCPv6 | HASH_TYPE_UDPv6)) || n < 40 || (ip[0] >> 4) != 6) return HASH_REPORT_NONE;
      std::memcpy(in, ip + 8, 32);
      uint8_t next = ip[6];
      size_t at = 40;
      bool l4 = true;
      for (int i = 0; i < kMaxExtHeaders && l4; i++) {
        if (next == 0 || next == 43 || next == 60) {  // hop-by-hop, routing, destination options
          if (n < at + 8) { l4 = false; break; }
          const uint8_t nh = ip[at];
          at += (ip[at + 1] + 1u) * 8u;
          next = nh;
        } else if (next == 44) {  // fragment: only an unfragmented packet has ports to hash
          if (n < at + 8 || (((ip[at + 2] << 8) | ip[at + 3]) & 0xfff9)) { l4 = false; break; }
          next = ip[at];
          at += 8;
        } else {
          break;
        }
      }
      if (next == 0 || next == 43 || next == 60 || next == 44) l4 = false;  // ran out of walks
      const bool ports = l4 && n >= at + 4;
      if (ports && next == 6 && (types_ & HASH_TYPE_TCPv6)) return Ports(in, 32, ip + at, HASH_REPORT_TCPv6, value);
      if (ports && next == 17 && (types_ & HASH_TYPE_UDPv6)) return Ports(in, 32, ip + at, HASH_REPORT_UDPv6, value);
      if (!(types_ & HASH_TYPE_IPv6)) return HASH_REPORT_NONE;
      *value = Hash(in, 32);
      return HASH_REPORT_IPv6;
    }
    return HASH_REPORT_NONE;
  }

 private:
  static uint32_t Window(const uint8_t* k, size_t bit) {
    // The 32 key bits from `bit` on: 5 bytes cover any 32-bit window.
    const size_t byte = bit / 8;
    const uint64_t w = (uint64_t{k[byte]} << 32) | (uint64_t{k[byte + 1]} << 24) | (uint64_t{k[byte + 2]} << 16) |
                       (uint64_t{k[byte + 3]} << 8) | k[byte + 4];
    return static_cast<uint32_t>(w >> (8 - bit % 8));
  }
  uint32_t Hash(const uint8_t* in, size_t n) const {
    uint32_t h = 0;
    for (size_t i = 0; i < n; i++) h ^= table_[i][in[i]];
    return h;
  }
  uint16_t Ports(uint8_t* in, size_t addr_bytes, const uint8_t* l4, uint16_t report, uint32_t* value) const {
    std::memcpy(in + addr_bytes, l4, 4);  // source port, destination port
    *value = Hash(in, addr_bytes + 4);
    return report;
  }

  uint32_t types_;
  uint32_t table_[kMaxInput][256];
};

}  // namespace vt
