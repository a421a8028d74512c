// What the libFuzzer targets in fuzz/targets/ share: the input reader and the
// header fields the ring targets read alike (ring layout, step list, memory
// shape), the guest memory (one host buffer cut into regions), the checks
// every chain must pass, and the device's use of a chain's buffers. Not a
// target itself.
#pragma once
#include <cstddef>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "../native/memory.h"
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
// The ring layout, read right after a target's flags byte (3 + 6 bytes): log2
// of the queue size (mod 16), then desc / avail / used as u16 in units of their
// alignment (16, 2, 4), so most layouts pass the alignment rule and the walker
// gets exercised; the range reaches past memory too.
inline vt::QueueLayout ReadLayout(Reader& r) {
  vt::QueueLayout layout;
  layout.size = 1u << (r.U8() % 16);
  layout.desc = uint64_t{r.U16()} * 16;
  layout.avail = uint64_t{r.U16()} * 2;
  layout.used = uint64_t{r.U16()} * 4;
  return layout;
}

// The end of a ring target's header and the rest of its input (7 bytes, then
// the body): the length L of the step list (u16, at most max_steps), the guest
// memory's shape (one byte) and split and hole (u16 each, x16; see
// MakeMemory); then L step bytes, and the rest is the guest memory image
// (zero-filled).
struct Body {
  Reader steps;
  Mem mem;
};
inline Body ReadBody(Reader& r, size_t max_steps) {
  const size_t nsteps = r.U16() % (max_steps + 1);
  const uint8_t shape = r.U8();
  const uint64_t split = uint64_t{r.U16()} * 16;
  const uint64_t hole = uint64_t{r.U16()} * 16;
  const size_t steps_len = nsteps < r.n ? nsteps : r.n;
  return Body{Reader{r.p, steps_len}, MakeMemory(r.p + steps_len, r.n - steps_len, shape, split, hole)};
}

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
