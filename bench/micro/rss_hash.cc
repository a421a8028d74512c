// Per-frame cost of the hash report (native/rss_hash.h): what the RX path adds
// for each frame when HASH_REPORT is negotiated, i.e. copying the frame's
// first bytes out of guest memory, classifying it and hashing it. No root, no
// TAP: `g++ -O2 -std=c++17 -I native bench/micro/rss_hash.cc -o /tmp/rss_hash && /tmp/rss_hash`.
#include <time.h>

#include <cstdio>
#include <cstring>
#include <vector>

#include "rss_hash.h"

namespace {

// This thread's CPU time: the machine is shared, so wall time would count other work.
double CpuNs() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

const uint8_t kKey[40] = {0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3,
                          0x8f, 0xb0, 0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3,
                          0x80, 0x30, 0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa};

// A 64-byte frame (as the RX 64 B bench sends): Ethernet + IPv4 + UDP, or
// Ethernet + IPv6 + TCP (longer, the most input bytes to hash).
std::vector<uint8_t> Frame(bool v6, uint32_t flow) {
  std::vector<uint8_t> f(v6 ? 86 : 64, 0);
  f[12] = v6 ? 0x86 : 0x08;
  f[13] = v6 ? 0xdd : 0x00;
  uint8_t* ip = f.data() + 14;
  if (v6) {
    ip[0] = 0x60;
    ip[6] = 6;
    std::memcpy(ip + 8 + 12, &flow, 4);
    std::memcpy(ip + 40, &flow, 4);
  } else {
    ip[0] = 0x45;
    ip[9] = 17;
    std::memcpy(ip + 12, &flow, 4);
    std::memcpy(ip + 20, &flow, 4);
  }
  return f;
}

}  // namespace

int main() {
  const vt::RssHash h(vt::HASH_TYPE_IPv4 | vt::HASH_TYPE_TCPv4 | vt::HASH_TYPE_UDPv4 | vt::HASH_TYPE_IPv6 |
                          vt::HASH_TYPE_TCPv6 | vt::HASH_TYPE_UDPv6,
                      kKey, sizeof kKey);
  constexpr int kFlows = 1024;
  constexpr int kRounds = 5000;
  for (bool v6 : {false, true}) {
    std::vector<std::vector<uint8_t>> frames;
    for (int i = 0; i < kFlows; i++) frames.push_back(Frame(v6, i * 2654435761u));
    uint32_t sink = 0;
    const double t0 = CpuNs();
    for (int r = 0; r < kRounds; r++) {
      for (const auto& f : frames) {
        // As the engine: a private copy of the first bytes, then Compute().
        uint8_t peek[vt::RssHash::kPeek];
        const size_t n = f.size() < sizeof peek ? f.size() : sizeof peek;
        std::memcpy(peek, f.data(), n);
        uint32_t v;
        sink += h.Compute(peek, n, &v) + v;
      }
    }
    const double ns = CpuNs() - t0;
    std::printf("%s: %.1f ns per frame, thread CPU time (sink %u)\n", v6 ? "IPv6/TCP 86 B" : "IPv4/UDP 64 B", ns / (double(kFlows) * kRounds), sink);
  }
  const double t0 = CpuNs();
  constexpr int kBuilds = 200;
  for (int i = 0; i < kBuilds; i++) {
    vt::RssHash* b = new vt::RssHash(0x3f, kKey, sizeof kKey);
    asm volatile("" : : "r"(b) : "memory");
    delete b;
  }
  std::printf("table build (per configuration command): %.1f us\n",
              (CpuNs() - t0) / 1e3 / kBuilds);
}
