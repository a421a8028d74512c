// libFuzzer target: the control-queue decoder (native/ctrl_queue.cc, issue 9)
// as the device drives it: pop a command (walk its chain with every ring
// rule, gather class, command and data across descriptors and regions, find
// the ack byte), answer it, publish, with the guest rewriting memory between
// steps. Findings: sanitizer reports, a command longer than the limit kept,
// an ack byte outside guest memory, one pop walking more descriptors than a
// chain can have (the per-call budget of issue 12 depends on that bound), and
// any step that loops for ever (libFuzzer's -timeout).
//
// Input (little-endian; fuzz/seeds.py writes the seeds):
//   0      flags: bit0 EVENT_IDX, bit1 INDIRECT_DESC
//   1      log2 of the queue size (mod 16)
//   2..7   desc / avail / used as u16 in units of their alignment (16, 2, 4)
//   8..9   length L of the step list
//   10     guest memory shape; 11..14 split and hole (u16 each, x16), see fuzz/common.h
//   15..   L step bytes, then the guest memory image
#include "../common.h"

#include "../../native/ctrl_queue.h"

namespace {

using fuzz::Finding;
using fuzz::Reader;

constexpr size_t kMaxSteps = 512;
constexpr size_t kHeader = 15;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < kHeader) return 0;
  Reader r{data, size};
  const uint8_t flags = r.U8();
  const vt::QueueLayout layout = fuzz::ReadLayout(r);
  fuzz::Body body = fuzz::ReadBody(r, kMaxSteps);
  Reader& steps = body.steps;
  const fuzz::Mem& mem = body.mem;

  vt::CtrlQueue q;
  vt::Violation v;
  if (!q.Init(*mem, layout, flags & 1, flags & 2, &v)) {
    if (!v.rule) Finding("Init failed without naming a rule");
    return 0;
  }
  // Commands popped and not yet answered, as the device holds them while its handler runs.
  std::vector<vt::CtrlCommand> pending;
  // A chain walks at most the table once, plus one indirect table of at most 32768 entries.
  const uint64_t most_per_pop = uint64_t{layout.size} + vt::RING_MAX_SIZE;
  volatile uint32_t sink = 0;
  while (steps.n > 0) {
    const uint8_t op = steps.U8();
    switch (op % 6) {
      case 0:
      case 1: {
        vt::CtrlCommand c;
        uint64_t walked = 0;
        v = vt::Violation{};
        const vt::CtrlQueue::Next n = q.Pop(&c, &walked, &v);
        if (walked > most_per_pop) Finding("one pop walked more descriptors than a chain can have");
        if (n == vt::CtrlQueue::Next::kEmpty) break;
        if (n == vt::CtrlQueue::Next::kBroken) {
          if (!v.rule) Finding("a broken command without a rule");
          return 0;  // the device stops the queue
        }
        if (c.head >= layout.size) Finding("a command head outside the table");
        if (!c.malformed && 2 + c.data.size() > vt::kCtrlMaxCommandBytes) Finding("a command longer than the limit was kept");
        if (c.writable_bytes == 0 || c.writable_bytes > vt::kCtrlMaxResultBytes + 1)
          Finding("the writable part kept is empty or longer than a result and its ack");
        // Byte by byte: a buffer may run on from one region into the next.
        for (const vt::CtrlCommand::Span& w : c.writable)
          for (uint32_t i = 0; i < w.len; i++)
            if (!mem->Contiguous(w.addr + i, 1)) Finding("a writable byte is not in guest memory");
        for (uint8_t b : c.data) sink = sink + b;
        pending.push_back(std::move(c));
        break;
      }
      case 2:  // the handler answers the oldest command: OK, ERR or anything, with a result of 0..8 bytes
        if (!pending.empty()) {
          const uint8_t result[vt::kCtrlMaxResultBytes] = {1, 2, 3, 4, 5, 6, 7, 8};
          q.Answer(pending.front(), static_cast<uint8_t>(op >> 4), result, (op >> 3) % (vt::kCtrlMaxResultBytes + 1));
          pending.erase(pending.begin());
        }
        break;
      case 3:
        sink = sink + q.Publish();
        break;
      case 4:
        q.DisableNotify();
        break;
      default: {  // the guest rewrites a 16-bit word meanwhile
        const size_t off = (size_t{steps.U16()} * 2) % fuzz::kMem;
        const uint16_t val = steps.U16();
        __atomic_store_n(reinterpret_cast<uint16_t*>(fuzz::Memory() + off), val, __ATOMIC_RELAXED);
        break;
      }
    }
  }
  return 0;
}
