// The device side of the control virtqueue (virtio 1.x §5.1.6.5): the same
// SplitQueue and DescriptorChain as the data queues (so the same rules), plus
// what is particular to commands: gathering the readable part { class,
// command, data } across descriptors and regions, finding where the result and
// the ack byte go, and bounding the work one call may do. The device logic
// (backend/) only ever sees decoded commands and answers each with an ack (and
// a result, for the few commands that return one). Plain C++, no I/O.
#pragma once
#include <cstdint>
#include <vector>

#include "memory.h"
#include "packed_queue.h"
#include "status.h"
#include "virtqueue.h"

namespace vt {

// Largest command whose data is kept: class and command bytes plus two full
// MAC tables (u32 count + 6 B per entry) of backend's MAC_TABLE_MAX (1024)
// entries, the longest command the device understands. A longer one is still
// walked (every rule checked) and answered ERR, without copying its data.
constexpr uint32_t kCtrlMaxCommandBytes = 2 + 2 * (4 + 6 * 1024);

// The ack the device writes when it cannot answer otherwise (VIRTIO_NET_ERR).
constexpr uint8_t kCtrlErr = 1;

// Largest command-specific result the device writes before the ack: struct
// virtio_net_ctrl_coal (VIRTIO_NET_CTRL_NOTF_COAL_VQ_GET).
constexpr uint32_t kCtrlMaxResultBytes = 8;

struct CtrlCommand {
  uint16_t head = 0;
  uint8_t cls = 0;
  uint8_t cmd = 0;
  std::vector<uint8_t> data;  // the readable bytes after class and command
  // Readable part shorter than class + command, or longer than
  // kCtrlMaxCommandBytes: nothing to decode, the answer is ERR.
  bool malformed = false;
  // The device-writable part, where the command's result and then the ack go:
  // its first kCtrlMaxResultBytes + 1 bytes, as guest buffers in chain order.
  struct Span {
    uint64_t addr;
    uint32_t len;
  };
  std::vector<Span> writable;
  uint32_t writable_bytes = 0;  // bytes in `writable`
};

class CtrlQueue {
 public:
  // layout.packed chooses the packed ring (a new one: both wrap counters 1).
  bool Init(const MemoryTable& mem, const QueueLayout& layout, bool event_idx, bool indirect_ok, Violation* v) {
    packed_ = layout.packed;
    if (packed_) return pq_.Init(mem, layout, event_idx, indirect_ok, RING_PACKED_WRAP_BIT, RING_PACKED_WRAP_BIT, v);
    return q_.Init(mem, layout, event_idx, indirect_ok, 0, 0, v);
  }
  bool Remap(const MemoryTable& mem, Violation* v) { return packed_ ? pq_.Remap(mem, v) : q_.Remap(mem, v); }

  enum class Next { kCommand, kEmpty, kBroken };
  // Pops and decodes the next command, adding the descriptors it walked to
  // *descriptors. kEmpty: nothing available and notifications are re-enabled.
  Next Pop(CtrlCommand* out, uint64_t* descriptors, Violation* v);
  // Writes a popped command's result (what the command returns; empty for
  // most) and then its ack into the writable part, and returns its chain with
  // used len result + 1. A writable part too short for both gets ERR alone.
  void Answer(const CtrlCommand& c, uint8_t ack, const uint8_t* result = nullptr, uint32_t result_len = 0);
  // Publishes answered commands; true when the driver wants an interrupt.
  bool Publish() { return packed_ ? pq_.PublishUsed() : q_.PublishUsed(); }
  // Kicks are suppressed while commands are being handled.
  void DisableNotify() { packed_ ? pq_.DisableNotify() : q_.DisableNotify(); }

 private:
  template <class Q>
  Next PopFrom(Q& q, CtrlCommand* out, uint64_t* descriptors, Violation* v);

  // The control queue is not a hot path: one of the two, by a flag.
  bool packed_ = false;
  SplitQueue q_;
  PackedQueue pq_;
};

}  // namespace vt
