// The exact per-frame receive filter: RX modes, unicast and multicast MAC
// tables and the VLAN filter, as the guest set them through the control
// queue (backend/rxfilter.ts RxFilterSnapshot; its accepts() is the
// reference for these rules). The TAP's own TUNSETTXFILTER is only a coarse
// superset (8 exact addresses, then a hash; no VLANs, no NOBCAST/NOUNI
// subtleties), so the engine applies this to every frame the kernel lets
// through. Immutable once built: the JS thread builds a new one and swaps it
// in, the worker only reads.
#pragma once
#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

namespace vt {

class RxFilter {
 public:
  bool promisc = false, allmulti = false, alluni = false, nomulti = false, nouni = false, nobcast = false;
  bool vlan_enabled = false;
  std::array<uint8_t, 4096 / 8> vlans{};  // bit v set = VLAN v accepted (LSB first, as the snapshot)

  // Tables as sorted 48-bit keys: a guest may install up to MAC_TABLE_MAX
  // entries per table, and a binary search keeps the per-frame cost flat.
  void SetUnicast(const uint8_t* macs, size_t count) { Fill(&unicast_, macs, count); }
  void SetMulticast(const uint8_t* macs, size_t count) { Fill(&multicast_, macs, count); }

  // Nothing is ever refused: the worker may skip reading the Ethernet header.
  // Promiscuous means every frame, VLAN filter included, as QEMU's device does.
  bool AcceptsAll() const { return promisc; }

  // `vid` is the 802.1Q VLAN id, or -1 for an untagged frame (which the VLAN
  // filter always lets through).
  bool Accepts(const uint8_t dst[6], int vid) const {
    if (promisc) return true;
    if (vid >= 0 && vlan_enabled && !(vlans[vid >> 3] & (1u << (vid & 7)))) return false;
    const uint64_t key = Key(dst);
    if (key == 0xffffffffffffull) return !nobcast;
    if (dst[0] & 1) return !nomulti && (allmulti || std::binary_search(multicast_.begin(), multicast_.end(), key));
    return !nouni && (alluni || std::binary_search(unicast_.begin(), unicast_.end(), key));
  }

 private:
  static uint64_t Key(const uint8_t* m) {
    uint64_t k = 0;
    for (int i = 0; i < 6; i++) k = (k << 8) | m[i];
    return k;
  }
  static void Fill(std::vector<uint64_t>* t, const uint8_t* macs, size_t count) {
    t->clear();
    for (size_t i = 0; i < count; i++) t->push_back(Key(macs + 6 * i));
    std::sort(t->begin(), t->end());
  }

  std::vector<uint64_t> unicast_, multicast_;
};

}  // namespace vt
