// libFuzzer target: the device side of one packed virtqueue
// (native/packed_queue.cc) driven the way the engine drives it, against guest
// memory and a ring layout the input chooses: popping chains by the wrap
// counters, the chain walker (NEXT inside the ring, indirect tables, every
// rule), TX and RX chain reading, used descriptors (IN_ORDER batches too),
// giving chains back, and both event suppression areas, with the guest
// rewriting memory between steps. Findings: any sanitizer report, a token or
// buffer id outside the ring, an iovec outside guest memory, a chain whose
// byte count does not add up, and (libFuzzer's -timeout) any endless step.
//
// Input (all little-endian; see fuzz/seeds.py, which writes the seed corpus):
//   0      flags: bit0 EVENT_IDX, bit1 INDIRECT_DESC, bits2-3 net header size
//          (10, 12, 20, 12), bit4 RX queue (else TX), bit5 IN_ORDER
//   1..2   queue size - 1 (u16, mod 32768)
//   3..8   descriptor ring / driver area / device area as u16 in units of 16, 4, 4
//   9..12  avail and used positions to resume from (u16 each, wrap counter in bit 15)
//   13..   as the split target from its byte 12: step count, memory shape, split,
//          hole, the steps, then the guest memory image (see fuzz/common.h ReadBody)
#include "../../native/packed_queue.h"

#include "../common.h"

namespace {

using fuzz::Finding;
using fuzz::Reader;
using vt::Chain;
using vt::PackedQueue;
using vt::Violation;

// Steps per input: enough for a full small ring several times over.
constexpr size_t kMaxSteps = 1024;
constexpr size_t kHeader = 20;
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
  const bool in_order = flags & 32;
  vt::QueueLayout layout;
  layout.packed = true;
  layout.size = 1 + r.U16() % vt::RING_MAX_SIZE;
  layout.desc = uint64_t{r.U16()} * 16;
  layout.avail = uint64_t{r.U16()} * 4;
  layout.used = uint64_t{r.U16()} * 4;
  const uint16_t last_avail = r.U16();
  const uint16_t used_idx = r.U16();
  fuzz::Body body = fuzz::ReadBody(r, kMaxSteps);
  Reader& steps = body.steps;
  const fuzz::Mem& mem = body.mem;

  PackedQueue q;
  q.SetInOrder(in_order);
  Violation v;
  if (!q.Init(fuzz::Ref(mem), layout, event_idx, indirect_ok, last_avail, used_idx, &v)) {
    if (!v.rule) Finding("Init failed without naming a rule");
    return 0;
  }
  Chain chain;
  uint32_t popped = 0;  // chains taken and not yet given back, as the engine's UndoPop needs
  volatile uint32_t sink = 0;
  while (steps.n > 0) {
    const uint8_t op = steps.U8();
    const uint8_t arg = op >> 4;
    switch (op % 9) {
      case 0:
      case 1: {
        uint16_t token;
        v = Violation{};
        const PackedQueue::Pop p = op % 9 == 0 ? q.PopAvail(&token, &v) : q.PopOrArm(&token, &v);
        if (p == PackedQueue::Pop::kEmpty) break;
        if (p == PackedQueue::Pop::kBroken) {
          if (!v.rule) Finding("a broken pop without a rule");
          return 0;
        }
        if (token >= layout.size) Finding("popped a token outside the ring");
        popped++;
        const bool ok = rx ? q.ReadRxChain(token, hdr_len, 1 + arg, &chain, &v) : q.ReadTxChain(token, hdr_len, &chain, &v);
        if (!ok) {
          if (!v.rule) Finding("a broken chain without a rule");
          return 0;
        }
        if (chain.head >= layout.size) Finding("a buffer id outside the ring");
        if (chain.bytes < hdr_len) Finding("a chain shorter than the header was accepted");
        fuzz::CheckChain(chain);
        if (rx) {
          const uint64_t len = chain.bytes - (arg * chain.bytes) / 16;
          fuzz::Fill(chain, len);
          q.AddUsed(chain.head, static_cast<uint32_t>(len));
        } else {
          sink = sink + fuzz::Consume(chain);
          q.AddUsed(chain.head, 0);
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
      case 5:
        if (popped > 0) {
          const uint16_t n = static_cast<uint16_t>(1 + arg % popped);
          q.UndoPop(n);
          popped -= n;
        }
        break;
      case 6:
        sink = sink + q.HasAvail() + q.last_avail() + q.used_idx() + q.UntilUsedEvent() + q.pending_used() +
               q.last_avail_before(arg);
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
