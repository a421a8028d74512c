// Control virtqueue commands (see ctrl_queue.h).
#include "ctrl_queue.h"

#include <algorithm>
#include <cinttypes>
#include <string>

namespace vt {

CtrlQueue::Next CtrlQueue::Pop(CtrlCommand* out, uint64_t* descriptors, Violation* v) {
  return packed_ ? PopFrom(pq_, out, descriptors, v) : PopFrom(q_, out, descriptors, v);
}

namespace {
uint16_t IdOf(const SplitQueue&, uint16_t head) { return head; }
uint16_t IdOf(const PackedQueue& q, uint16_t token) { return q.BufferId(token); }
}  // namespace

template <class Q>
CtrlQueue::Next CtrlQueue::PopFrom(Q& q, CtrlCommand* out, uint64_t* descriptors, Violation* v) {
  uint16_t token;
  switch (q.PopOrArm(&token, v)) {
    case Q::Pop::kEmpty: return Next::kEmpty;
    case Q::Pop::kBroken: return Next::kBroken;
    case Q::Pop::kChain: break;
  }
  const MemoryTable& mem = q.memory();
  const uint16_t head = IdOf(q, token);
  out->head = head;
  out->cls = out->cmd = 0;
  out->data.clear();
  out->malformed = false;
  out->writable.clear();
  out->writable_bytes = 0;
  bool have_ack = false;
  uint64_t readable = 0;
  // The readable part in one copy (class, command, data), at most the longest
  // command understood; a longer one is still walked to its end so every rule
  // is checked, and answered ERR.
  std::vector<uint8_t> bytes;
  auto chain = q.Walk(token);
  Buffer b;
  for (;;) {
    const auto s = chain.Next(&b, v);
    if (s == decltype(chain)::Step::kBroken) {
      *descriptors += chain.visited_total();
      v->detail = "control command at head " + std::to_string(head) + ": " + v->detail;
      return Next::kBroken;
    }
    if (s == decltype(chain)::Step::kEnd) break;
    if (b.writable) {
      have_ack = have_ack || b.len > 0;
      if (b.len > 0 && out->writable_bytes < kCtrlMaxResultBytes + 1) {
        const uint32_t take = std::min<uint32_t>(b.len, kCtrlMaxResultBytes + 1 - out->writable_bytes);
        out->writable.push_back(CtrlCommand::Span{b.addr, take});
        out->writable_bytes += take;
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

void CtrlQueue::Answer(const CtrlCommand& c, uint8_t ack, const uint8_t* result, uint32_t result_len) {
  if (result_len > kCtrlMaxResultBytes || c.writable_bytes < result_len + 1) {
    // No room for what the command returns: the driver gets ERR in the ack's
    // place (the first writable byte), and nothing else.
    result_len = 0;
    ack = kCtrlErr;
  }
  // The writable buffers were in guest memory when the command was popped; the
  // table cannot have changed since (both happen on the JS thread, back to
  // back), but look them up again rather than keep host pointers across calls.
  uint32_t at = 0;
  for (const CtrlCommand::Span& s : c.writable) {
    for (uint32_t i = 0; i < s.len && at <= result_len; i++, at++) {
      if (uint8_t* p = (packed_ ? pq_.memory() : q_.memory()).Contiguous(s.addr + i, 1))
        __atomic_store_n(p, at < result_len ? result[at] : ack, __ATOMIC_RELAXED);
    }
  }
  if (packed_)
    pq_.AddUsed(c.head, result_len + 1);
  else
    q_.AddUsed(c.head, result_len + 1);
}

}  // namespace vt
