// libFuzzer target: RX chain handling after the pop (native/rx_stash.cc,
// issue 9): chains read from an RX ring are stashed; frames are "read" into
// spans of them (as readv or an io_uring batch would) and placed into the
// oldest free chains — moved down across chains when an earlier read found no
// frame, spread over several chains with mergeable buffers, num_buffers
// written — then consumed, or given back to the ring. The guest chooses the
// buffers (overlapping ones included). Findings: sanitizer reports, a span
// outside guest memory, a frame placed into more chains than it was offered,
// and a moved frame whose bytes differ from what was read (checked when the
// guest's buffers do not overlap).
//
// Input (little-endian; fuzz/seeds.py writes the seeds):
//   0      flags: bit0 mergeable, bit1 write num_buffers, bit2 INDIRECT_DESC, bits3-4 header (10, 12, 20, 12)
//   1      log2 of the queue size (mod 16)
//   2..7   desc / avail / used as u16 in units of their alignment (16, 2, 4)
//   8..9   length L of the step list
//   10     guest memory shape; 11..14 split and hole (u16 each, x16), see fuzz/common.h
//   15..   L step bytes, then the guest memory image
#include <algorithm>

#include "../common.h"

#include "../../native/rx_stash.h"

namespace {

using fuzz::Finding;
using fuzz::Reader;

constexpr size_t kMaxSteps = 512;
constexpr size_t kHeader = 15;
constexpr uint32_t kHdrSizes[4] = {10, 12, 20, 12};
// Iovecs kept per chain: the engine's limit is IOV_MAX; small here so capping is exercised.
constexpr size_t kMaxIovPerChain = 8;

bool InsideMemory(const iovec* iov, size_t n) {
  const uint8_t* lo = fuzz::Memory();
  for (size_t i = 0; i < n; i++) {
    const uint8_t* b = static_cast<const uint8_t*>(iov[i].iov_base);
    if (b < lo || b + iov[i].iov_len > lo + fuzz::kMem || b + iov[i].iov_len < b) return false;
  }
  return true;
}

// Whether any two buffers of the stash, or a buffer and a part of the ring,
// overlap in host memory (a hostile guest may post the same bytes twice, or its
// used ring as a buffer; then where a frame ends up cannot be checked).
bool AnyOverlap(const vt::RxStash& s, const vt::MemoryTable& mem, const vt::QueueLayout& l) {
  if (s.chains() == 0) return false;
  const vt::IoFrame all = s.Span(0, s.chains());
  std::vector<std::pair<uintptr_t, uintptr_t>> r;
  for (const auto& [gpa, len] : {std::pair{l.desc, l.desc_bytes()}, {l.avail, l.avail_bytes()}, {l.used, l.used_bytes()}}) {
    const uintptr_t b = reinterpret_cast<uintptr_t>(mem.Contiguous(gpa, len));
    r.emplace_back(b, b + len);
  }
  for (uint32_t i = 0; i < all.iovcnt; i++) {
    const uintptr_t b = reinterpret_cast<uintptr_t>(all.iov[i].iov_base);
    r.emplace_back(b, b + all.iov[i].iov_len);
  }
  std::sort(r.begin(), r.end());
  for (size_t i = 1; i < r.size(); i++)
    if (r[i].first < r[i - 1].second) return true;
  return false;
}

// Writes `len` bytes of a frame (byte i = seed + i) into a span, as a read would; returns how many fit.
uint64_t ReadInto(const vt::IoFrame& f, uint64_t len, uint8_t seed) {
  uint64_t done = 0;
  for (uint32_t i = 0; i < f.iovcnt && done < len; i++) {
    uint8_t* b = static_cast<uint8_t*>(f.iov[i].iov_base);
    for (size_t j = 0; j < f.iov[i].iov_len && done < len; j++, done++) b[j] = static_cast<uint8_t>(seed + done);
  }
  return done;
}

// Whether the first `len` bytes of a span are the frame written by ReadInto(seed),
// skipping the num_buffers field (written after the move).
bool Holds(const vt::IoFrame& f, uint64_t len, uint8_t seed, bool skip_nb) {
  uint64_t at = 0;
  for (uint32_t i = 0; i < f.iovcnt && at < len; i++) {
    const uint8_t* b = static_cast<const uint8_t*>(f.iov[i].iov_base);
    for (size_t j = 0; j < f.iov[i].iov_len && at < len; j++, at++) {
      if (skip_nb && (at == vt::HDR_OFF_NUM_BUFFERS || at == vt::HDR_OFF_NUM_BUFFERS + 1)) continue;
      if (b[j] != static_cast<uint8_t>(seed + at)) return false;
    }
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < kHeader) return 0;
  Reader r{data, size};
  const uint8_t flags = r.U8();
  const bool mergeable = flags & 1;
  const bool set_nb = flags & 2;
  const uint32_t hdr_len = kHdrSizes[(flags >> 3) & 3];
  const vt::QueueLayout layout = fuzz::ReadLayout(r);
  fuzz::Body body = fuzz::ReadBody(r, kMaxSteps);
  Reader& steps = body.steps;
  const fuzz::Mem& mem = body.mem;

  vt::SplitQueue q;
  vt::Violation v;
  if (!q.Init(*mem, layout, false, flags & 4, 0, 0, &v)) return 0;
  vt::RxStash stash;
  vt::Chain chain;
  size_t placed = 0;  // leading chains already holding frames (the engine's `free`)
  uint8_t seed = 1;
  while (steps.n > 0) {
    const uint8_t op = steps.U8();
    switch (op % 5) {
      case 0: {  // pop one more RX chain into the stash
        uint16_t head;
        v = vt::Violation{};
        const vt::SplitQueue::Pop p = q.PopAvail(&head, &v);
        if (p == vt::SplitQueue::Pop::kBroken) return 0;
        if (p == vt::SplitQueue::Pop::kEmpty) break;
        if (!q.ReadRxChain(head, hdr_len, kMaxIovPerChain, &chain, &v)) return 0;
        fuzz::CheckChain(chain);
        stash.Push(chain);
        break;
      }
      case 1:
      case 2: {  // a frame of some length was read into chains [at, end); place it
        const size_t free_chains = stash.chains() - placed;
        if (free_chains == 0) break;
        const size_t at = placed + steps.U8() % free_chains;
        const size_t end = at + 1 + steps.U8() % (stash.chains() - at);
        const vt::IoFrame src = stash.Span(at, end - at);
        if (!InsideMemory(src.iov, src.iovcnt)) Finding("a stash span outside guest memory");
        uint64_t cap = 0;
        for (size_t i = at; i < end; i++) cap += stash.chain_bytes(i);
        const uint64_t len = hdr_len + steps.U16() % (cap + 64);  // sometimes more than fits (tun reports the full length)
        const bool check = !AnyOverlap(stash, *mem, layout);
        const uint64_t got = ReadInto(src, len, seed);
        if (len > got) break;  // truncated: the engine counts rx_truncated and places nothing
        const uint32_t k = stash.Place(q, placed, at, end, len, mergeable, set_nb);
        if (k > end - placed) Finding("a frame was placed into more chains than it was offered");
        if (k > 0) {
          const vt::IoFrame dst = stash.Span(placed, k);
          if (check && !Holds(dst, len, seed, set_nb)) Finding("a moved frame's bytes differ from what was read");
          placed += k;
        }
        seed = static_cast<uint8_t>(seed + 17);
        break;
      }
      case 3:  // the batch is over: the placed chains leave the stash
        stash.Consume(placed);
        placed = 0;
        static_cast<void>(q.PublishUsed());
        break;
      default:  // stop: unused chains go back to the ring (nothing placed may be pending)
        stash.Consume(placed);
        placed = 0;
        stash.GiveBack(q);
        break;
    }
  }
  return 0;
}
