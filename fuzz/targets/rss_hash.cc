// libFuzzer target: the hash report's frame classifier and Toeplitz hash
// (native/rss_hash.h, issue 21) on whatever bytes a sender puts in a frame.
// Findings: sanitizer reports (a read outside the frame's bytes), a report
// type that was not enabled, or a non-zero hash with NONE.
//
// Input: bytes 0..1 hash types (le16, masked to the supported six), byte 2
// key length (mod 41), then the key, then the frame from its Ethernet header.
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "../common.h"

#include "../../native/rss_hash.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 3) return 0;
  const uint32_t types = (data[0] | (data[1] << 8)) & 0x3f;
  const size_t key_len = data[2] % (vt::RssHash::kMaxKey + 1);
  if (size < 3 + key_len) return 0;
  const auto h = std::make_unique<vt::RssHash>(types, data + 3, key_len);
  // An exact-size copy: ASan sees any read past the frame.
  const size_t n = std::min(size - 3 - key_len, vt::RssHash::kPeek);
  std::vector<uint8_t> frame(data + 3 + key_len, data + 3 + key_len + n);
  uint32_t value = 0;
  const uint16_t report = h->Compute(frame.data(), frame.size(), &value);
  static const uint32_t kNeeds[] = {0, vt::HASH_TYPE_IPv4, vt::HASH_TYPE_TCPv4, vt::HASH_TYPE_UDPv4,
                                    vt::HASH_TYPE_IPv6, vt::HASH_TYPE_TCPv6, vt::HASH_TYPE_UDPv6};
  if (report > vt::HASH_REPORT_UDPv6) fuzz::Finding("a report type outside the supported six");
  if (report != vt::HASH_REPORT_NONE && !(types & kNeeds[report])) fuzz::Finding("a report type that was not enabled");
  if (report == vt::HASH_REPORT_NONE && value != 0) fuzz::Finding("a hash value with report NONE");
  return 0;
}
