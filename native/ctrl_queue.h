// The device side of the control virtqueue (virtio 1.x §5.1.6.5): the same
// SplitQueue and DescriptorChain as the data queues (so the same rules), plus
// what is particular to commands: gathering the readable part { class,
// command, data } across descriptors and regions, finding the ack byte, and
// bounding the work one call may do. The device logic (backend/) only ever
// sees decoded commands and answers each with an ack. Plain C++, no I/O.
#pragma once
#include <cstdint>
#include <vector>

#include "memory.h"
#include "status.h"
#include "virtqueue.h"

namespace vt {

// Largest command whose data is kept: class and command bytes plus two full
// MAC tables (u32 count + 6 B per entry) of backend's MAC_TABLE_MAX (1024)
// entries, the longest command the device understands. A longer one is still
// walked (every rule checked) and answered ERR, without copying its data.
constexpr uint32_t kCtrlMaxCommandBytes = 2 + 2 * (4 + 6 * 1024);

struct CtrlCommand {
  uint16_t head = 0;
  uint8_t cls = 0;
  uint8_t cmd = 0;
  std::vector<uint8_t> data;  // the readable bytes after class and command
  // Readable part shorter than class + command, or longer than
  // kCtrlMaxCommandBytes: nothing to decode, the answer is ERR.
  bool malformed = false;
  uint64_t ack_addr = 0;  // guest address of the first device-writable byte
};

class CtrlQueue {
 public:
  bool Init(const MemoryTable& mem, const QueueLayout& layout, bool event_idx, bool indirect_ok, Violation* v) {
    return q_.Init(mem, layout, event_idx, indirect_ok, 0, 0, v);
  }
  bool Remap(const MemoryTable& mem, Violation* v) { return q_.Remap(mem, v); }

  enum class Next { kCommand, kEmpty, kBroken };
  // Pops and decodes the next command, adding the descriptors it walked to
  // *descriptors. kEmpty: nothing available and notifications are re-enabled.
  Next Pop(CtrlCommand* out, uint64_t* descriptors, Violation* v);
  // Writes the ack byte of a popped command and returns its chain (used len 1).
  void Answer(const CtrlCommand& c, uint8_t ack);
  // Publishes answered commands; true when the driver wants an interrupt.
  bool Publish() { return q_.PublishUsed(); }
  // Kicks are suppressed while commands are being handled.
  void DisableNotify() { q_.DisableNotify(); }

 private:
  SplitQueue q_;
};

}  // namespace vt
