// Control virtqueue commands (see ctrl_queue.h).
#include "ctrl_queue.h"

#include <cinttypes>
#include <string>

namespace vt {

CtrlQueue::Next CtrlQueue::Pop(CtrlCommand* out, uint64_t* descriptors, Violation* v) {
  uint16_t head;
  switch (q_.PopOrArm(&head, v)) {
    case SplitQueue::Pop::kEmpty: return Next::kEmpty;
    case SplitQueue::Pop::kBroken: return Next::kBroken;
    case SplitQueue::Pop::kChain: break;
  }
  const MemoryTable& mem = q_.memory();
  out->head = head;
  out->cls = out->cmd = 0;
  out->data.clear();
  out->malformed = false;
  bool have_ack = false;
  uint64_t readable = 0;
  // The readable part in one copy (class, command, data), at most the longest
  // command understood; a longer one is still walked to its end so every rule
  // is checked, and answered ERR.
  std::vector<uint8_t> bytes;
  DescriptorChain chain = q_.Walk(head);
  Buffer b;
  for (;;) {
    const DescriptorChain::Step s = chain.Next(&b, v);
    if (s == DescriptorChain::Step::kBroken) {
      *descriptors += chain.visited_total();
      v->detail = "control command at head " + std::to_string(head) + ": " + v->detail;
      return Next::kBroken;
    }
    if (s == DescriptorChain::Step::kEnd) break;
    if (b.writable) {
      if (!have_ack && b.len > 0) {
        have_ack = true;
        out->ack_addr = b.addr;
      }
      continue;
    }
    if (have_ack) {
      *descriptors += chain.visited_total();
      v->rule = "readable-after-writable";
      v->detail = "control command at head " + std::to_string(head) + " has a readable buffer after a writable one";
      return Next::kBroken;
    }
    readable += b.len;
    if (readable > kCtrlMaxCommandBytes) {
      out->malformed = true;
      continue;
    }
    const size_t at = bytes.size();
    bytes.resize(at + b.len);
    mem.Read(b.addr, bytes.data() + at, b.len);  // cannot fail: the walker checked the buffer
  }
  *descriptors += chain.visited_total();
  if (!have_ack) {
    v->rule = "header-too-short";
    v->detail = "control command at head " + std::to_string(head) + " has no device-writable byte for the ack";
    return Next::kBroken;
  }
  if (readable < 2) out->malformed = true;
  if (!out->malformed) {
    out->cls = bytes[0];
    out->cmd = bytes[1];
    out->data.assign(bytes.begin() + 2, bytes.end());
  }
  return Next::kCommand;
}

void CtrlQueue::Answer(const CtrlCommand& c, uint8_t ack) {
  // The ack byte was in guest memory when the command was popped; the table
  // cannot have changed since (both happen on the JS thread, back to back),
  // but look it up again rather than keep a host pointer across calls.
  if (uint8_t* p = q_.memory().Contiguous(c.ack_addr, 1)) __atomic_store_n(p, ack, __ATOMIC_RELAXED);
  q_.AddUsed(c.head, 1);
}

}  // namespace vt
