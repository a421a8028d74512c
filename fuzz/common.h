// What the libFuzzer targets in fuzz/targets/ share: the input reader, the
// guest memory (one host buffer, cut into regions when native/ has the region
// table of issue 9, else the single block before it), the checks every chain
// must pass, and the device's use of a chain's buffers. Not a target itself.
#pragma once
#include <cstddef>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#if __has_include("../native/memory.h")
#include "../native/memory.h"
#define VT_REGION_TABLE 1
#endif
#include "../native/virtqueue.h"

namespace fuzz {

using vt::Chain;

// Guest memory: large enough for a 4096-entry ring with room for buffers,
// small enough that clearing it per input stays cheap.
constexpr size_t kMem = 256 * 1024;

[[noreturn]] inline void Finding(const char* what) {
  fprintf(stderr, "fuzz finding: %s\n", what);
  abort();
}

struct Reader {
  const uint8_t* p;
  size_t n;
  uint8_t U8() {
    if (n == 0) return 0;
    n--;
    return *p++;
  }
  uint16_t U16() { return static_cast<uint16_t>(U8() | (U8() << 8)); }
};

inline uint8_t* Memory() {
  // One allocation of exactly kMem bytes for the whole run: AddressSanitizer
  // reports any access past it, and the buffer's base is page-aligned like a
  // SharedArrayBuffer's.
  static uint8_t* mem = static_cast<uint8_t*>(aligned_alloc(4096, kMem));
  return mem;
}

#ifdef VT_REGION_TABLE
using Mem = std::shared_ptr<const vt::MemoryTable>;
inline const vt::MemoryTable& Ref(const Mem& m) { return *m; }

// The host buffer as guest memory in one of four shapes: one region at 0; two
// adjacent regions (a buffer may cross between them); two regions with a hole
// of `hole` bytes between them in guest addresses; three regions whose guest
// order is not their host order. Every region maps into the one buffer.
inline Mem MakeMemory(const uint8_t* image, size_t len, uint8_t shape, uint64_t split, uint64_t hole) {
  uint8_t* mem = Memory();
  const size_t n = len < kMem ? len : kMem;
  memcpy(mem, image, n);
  memset(mem + n, 0, kMem - n);
  split = 16 + split % (kMem - 32);  // both parts non-empty
  std::vector<vt::Region> r;
  switch (shape % 4) {
    case 0:
      r.push_back({0, kMem, mem, 0});
      break;
    case 1:
      r.push_back({0, split, mem, 0});
      r.push_back({split, kMem - split, mem + split, 0});
      break;
    case 2:
      r.push_back({0, split, mem, 0});
      r.push_back({split + hole, kMem - split, mem + split, 0});
      break;
    default: {
      const uint64_t third = (kMem - split) / 2;
      r.push_back({kMem + hole, split, mem, 0});
      r.push_back({0, third, mem + split, 0});
      r.push_back({third, kMem - split - third, mem + split + third, 0});
      break;
    }
  }
  std::string why;
  Mem t = vt::MemoryTable::Make(std::move(r), {}, &why);
  if (!t) Finding("a valid region table was refused");
  return t;
}
#else
using Mem = vt::GuestMemory;
inline const vt::GuestMemory& Ref(const Mem& m) { return m; }

inline Mem MakeMemory(const uint8_t* image, size_t len, uint8_t, uint64_t, uint64_t) {
  uint8_t* mem = Memory();
  const size_t n = len < kMem ? len : kMem;
  memcpy(mem, image, n);
  memset(mem + n, 0, kMem - n);
  return vt::GuestMemory{mem, kMem};
}
#endif

// Every iovec of a chain must lie inside guest memory and add up to its byte count.
inline void CheckChain(const Chain& c) {
  const uint8_t* lo = Memory();
  uint64_t sum = 0;
  for (const iovec& v : c.iov) {
    const uint8_t* b = static_cast<const uint8_t*>(v.iov_base);
    if (v.iov_len == 0) Finding("a zero-length iovec was kept");
    if (b < lo || b + v.iov_len > lo + kMem || b + v.iov_len < b) Finding("iovec outside guest memory");
    sum += v.iov_len;
  }
  if (sum != c.bytes) Finding("chain byte count does not match its iovecs");
}

// Bytes the kernel would move for one frame at most (a 64 KiB GSO frame and
// its header, with room): a chain may name far more (its buffers can overlap),
// and touching all of that would only make slow inputs, not findings.
constexpr uint64_t kFrameBytes = 128 * 1024;

// The device reads a TX frame (as writev would) ...
inline uint32_t Consume(const Chain& c) {
  uint32_t x = 0;
  uint64_t left = kFrameBytes;
  for (const iovec& v : c.iov) {
    const size_t n = v.iov_len < left ? v.iov_len : static_cast<size_t>(left);
    for (size_t i = 0; i < n; i++) x += static_cast<const uint8_t*>(v.iov_base)[i];
    left -= n;
    if (left == 0) break;
  }
  return x;
}

// ... and fills an RX chain up to `len` bytes (as readv would).
inline void Fill(const Chain& c, uint64_t len) {
  if (len > kFrameBytes) len = kFrameBytes;
  for (const iovec& v : c.iov) {
    if (len == 0) return;
    const size_t n = len < v.iov_len ? static_cast<size_t>(len) : v.iov_len;
    memset(v.iov_base, 0xa5, n);
    len -= n;
  }
}

}  // namespace fuzz
