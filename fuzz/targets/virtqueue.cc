// libFuzzer target: the device side of one split virtqueue (native/virtqueue.cc)
// driven the way the engine drives it, against guest memory and a ring layout
// the input chooses: the descriptor-chain walker (NEXT links, indirect
// tables, every rule), TX and RX chain reading, used ring updates, and the
// notification steps (disable, re-enable and look again), with the guest
// rewriting ring words between steps. Findings: any sanitizer report, an
// iovec outside guest memory, a chain whose byte count does not add up, and
// (libFuzzer's -timeout) any input that makes a step loop for ever.
//
// Input (all little-endian; see fuzz/seeds.py, which writes the seed corpus):
//   0      flags: bit0 EVENT_IDX, bit1 INDIRECT_DESC, bits2-3 net header size
//          (10, 12, 20, 12), bit4 RX queue (else TX)
//   1      log2 of the queue size (mod 16)
//   2..7   desc / avail / used as u16 in units of their alignment (16, 2, 4)
//   8..11  last_avail, used_idx to resume from (u16 each)
//   12..13 length L of the step list (at most kMaxSteps)
//   14..   L step bytes, then the guest memory image (the rest, zero-filled)
//
// The guest memory setup is MakeMemory() alone, so moving to the region table
// (several regions, holes between them) changes that function and the Init call.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../../native/virtqueue.h"

namespace {

using vt::Chain;
using vt::SplitQueue;
using vt::Violation;

// Guest memory: large enough for a 4096-entry ring with room for buffers,
// small enough that clearing it per input stays cheap.
constexpr size_t kMem = 256 * 1024;
// Steps per input: enough for a full small ring several times over.
constexpr size_t kMaxSteps = 1024;
constexpr size_t kHeader = 14;
constexpr uint32_t kHdrSizes[4] = {10, 12, 20, 12};

[[noreturn]] void Finding(const char* what) {
  fprintf(stderr, "virtqueue fuzz finding: %s\n", what);
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

uint8_t* Memory() {
  // One allocation of exactly kMem bytes for the whole run: AddressSanitizer
  // reports any access past it, and the buffer's base is page-aligned like a
  // SharedArrayBuffer's.
  static uint8_t* mem = static_cast<uint8_t*>(aligned_alloc(4096, kMem));
  return mem;
}

vt::GuestMemory MakeMemory(const uint8_t* image, size_t len) {
  uint8_t* mem = Memory();
  const size_t n = len < kMem ? len : kMem;
  memcpy(mem, image, n);
  memset(mem + n, 0, kMem - n);
  return vt::GuestMemory{mem, kMem};
}

// Every iovec of a chain must lie inside guest memory and add up to its byte count.
void CheckChain(const Chain& c) {
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
uint32_t Consume(const Chain& c) {
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
void Fill(const Chain& c, uint64_t len) {
  if (len > kFrameBytes) len = kFrameBytes;
  for (const iovec& v : c.iov) {
    if (len == 0) return;
    const size_t n = len < v.iov_len ? static_cast<size_t>(len) : v.iov_len;
    memset(v.iov_base, 0xa5, n);
    len -= n;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < kHeader) return 0;
  Reader r{data, size};
  const uint8_t flags = r.U8();
  const bool event_idx = flags & 1;
  const bool indirect_ok = flags & 2;
  const uint32_t hdr_len = kHdrSizes[(flags >> 2) & 3];
  const bool rx = flags & 16;
  vt::QueueLayout layout;
  layout.size = 1u << (r.U8() % 16);
  // Units of each part's alignment, so most layouts pass the alignment rule
  // and the walker gets exercised; the range reaches past memory too.
  layout.desc = uint64_t{r.U16()} * 16;
  layout.avail = uint64_t{r.U16()} * 2;
  layout.used = uint64_t{r.U16()} * 4;
  const uint16_t last_avail = r.U16();
  const uint16_t used_idx = r.U16();
  const size_t nsteps = r.U16() % (kMaxSteps + 1);
  const size_t steps_len = nsteps < r.n ? nsteps : r.n;
  Reader steps{r.p, steps_len};
  const vt::GuestMemory mem = MakeMemory(r.p + steps_len, r.n - steps_len);

  SplitQueue q;
  Violation v;
  if (!q.Init(mem, layout, event_idx, indirect_ok, last_avail, used_idx, &v)) {
    if (!v.rule) Finding("Init failed without naming a rule");
    return 0;
  }
  Chain chain;
  uint32_t popped = 0;  // heads taken and not yet given back, as the engine's UndoPop needs
  volatile uint32_t sink = 0;
  while (steps.n > 0) {
    const uint8_t op = steps.U8();
    const uint8_t arg = op >> 4;
    switch (op % 9) {
      case 0:    // pop, as the TX loop before io_uring and the RX stash fill
      case 1: {  // pop or re-arm, as every loop does when it finds the ring empty
        uint16_t head;
        v = Violation{};
        const SplitQueue::Pop p = op % 9 == 0 ? q.PopAvail(&head, &v) : q.PopOrArm(&head, &v);
        if (p == SplitQueue::Pop::kEmpty) break;
        if (p == SplitQueue::Pop::kBroken) {
          if (!v.rule) Finding("a broken pop without a rule");
          return 0;  // the engine stops the queue for good
        }
        if (head >= layout.size) Finding("popped a head outside the table");
        popped++;
        // RX keeps at most 1..16 iovecs per chain here (the engine: IOV_MAX).
        const bool ok = rx ? q.ReadRxChain(head, hdr_len, 1 + arg, &chain, &v) : q.ReadTxChain(head, hdr_len, &chain, &v);
        if (!ok) {
          if (!v.rule) Finding("a broken chain without a rule");
          return 0;
        }
        if (chain.head != head) Finding("chain head changed");
        if (chain.bytes < hdr_len) Finding("a chain shorter than the header was accepted");
        CheckChain(chain);
        if (rx) {
          const uint64_t len = chain.bytes - (arg * chain.bytes) / 16;
          Fill(chain, len);
          q.AddUsed(head, static_cast<uint32_t>(len));
        } else {
          sink = sink + Consume(chain);
          q.AddUsed(head, 0);
        }
        break;
      }
      case 2:
        sink = sink + q.PublishUsed();
        break;
      case 3:
        q.DisableNotify();
        break;
      case 4:
        sink = sink + q.EnableNotify();
        break;
      case 5:  // the TX path gives back chains it could not write (EAGAIN)
        if (popped > 0) {
          const uint16_t n = static_cast<uint16_t>(1 + arg % popped);
          q.UndoPop(n);
          popped -= n;
        }
        break;
      case 6:
        sink = sink + q.AvailIdx() + q.last_avail() + q.used_idx();
        break;
      default: {  // 7, 8: the guest rewrites a 16-bit word of its memory meanwhile
        const size_t off = (size_t{steps.U16()} * 2) % kMem;
        const uint16_t val = steps.U16();
        uint8_t* m = Memory();
        __atomic_store_n(reinterpret_cast<uint16_t*>(m + off), val, __ATOMIC_RELAXED);
        break;
      }
    }
  }
  return 0;
}
