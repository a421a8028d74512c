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
//   14     guest memory shape (how the one host buffer is cut into regions: holes,
//          regions out of guest-address order; see fuzz/common.h MakeMemory)
//   15..18 where the memory is split, and the hole after the split (u16 each, x16)
//   19..   L step bytes, then the guest memory image (the rest, zero-filled)
#include "../common.h"

namespace {

using fuzz::Finding;
using fuzz::Reader;
using vt::Chain;
using vt::SplitQueue;
using vt::Violation;

// Steps per input: enough for a full small ring several times over.
constexpr size_t kMaxSteps = 1024;
constexpr size_t kHeader = 19;
constexpr uint32_t kHdrSizes[4] = {10, 12, 20, 12};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < kHeader) return 0;
  Reader r{data, size};
  const uint8_t flags = r.U8();
  const bool event_idx = flags & 1;
  const bool indirect_ok = flags & 2;
  const uint32_t hdr_len = kHdrSizes[(flags >> 2) & 3];
  const bool rx = flags & 16;
  const vt::QueueLayout layout = fuzz::ReadLayout(r);
  const uint16_t last_avail = r.U16();
  const uint16_t used_idx = r.U16();
  fuzz::Body body = fuzz::ReadBody(r, kMaxSteps);
  Reader& steps = body.steps;
  const fuzz::Mem& mem = body.mem;

  SplitQueue q;
  Violation v;
  if (!q.Init(fuzz::Ref(mem), layout, event_idx, indirect_ok, last_avail, used_idx, &v)) {
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
        fuzz::CheckChain(chain);
        if (rx) {
          const uint64_t len = chain.bytes - (arg * chain.bytes) / 16;
          fuzz::Fill(chain, len);
          q.AddUsed(head, static_cast<uint32_t>(len));
        } else {
          sink = sink + fuzz::Consume(chain);
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
        const size_t off = (size_t{steps.U16()} * 2) % fuzz::kMem;
        const uint16_t val = steps.U16();
        uint8_t* m = fuzz::Memory();
        __atomic_store_n(reinterpret_cast<uint16_t*>(m + off), val, __ATOMIC_RELAXED);
        break;
      }
    }
  }
  return 0;
}
