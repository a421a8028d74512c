// The device side of one split virtqueue (virtio 1.x §2.7): reading available
// chains with every spec rule checked, publishing used elements, and deciding
// on notifications. No I/O and no threads here: the engine drives it.
#pragma once
#include <sys/uio.h>

#include <cstdint>
#include <string>
#include <vector>

#include "guest_memory.h"
#include "virtio.h"

namespace vt {

// A rule the guest broke. `rule` is one of the kebab-case names listed in
// backend/native.ts (a string literal with static lifetime).
struct Violation {
  const char* rule = nullptr;
  std::string detail;
};

// One descriptor, copied out of guest memory once and only used from the copy.
struct Descriptor {
  uint64_t addr = 0;
  uint32_t len = 0;
  uint16_t flags = 0;
  uint16_t next = 0;
};

// A buffer a descriptor names, already translated and bounds-checked.
struct Buffer {
  uint8_t* host = nullptr;
  uint32_t len = 0;
  bool writable = false;
};

// Walks one chain from its head, following NEXT links and (once) an indirect
// table. All structural rules live here so that no caller can walk a chain
// without them: indices in range, buffers in memory, no loops, indirect rules.
class DescriptorChain {
 public:
  // `table` is the translated descriptor table of `table_size` entries.
  DescriptorChain(const GuestMemory& mem, const uint8_t* table, uint32_t table_size, uint16_t head,
                  bool indirect_ok);

  enum class Step { kBuffer, kEnd, kBroken };
  Step Next(Buffer* out, Violation* v);

 private:
  Step Fail(Violation* v, const char* rule, std::string detail);

  const GuestMemory& mem_;
  const uint8_t* table_;
  uint32_t table_size_;
  uint32_t index_;
  // Descriptors visited in the current table; more than the table holds means
  // the NEXT links form a loop (or the guest lied about the chain).
  uint32_t visited_ = 0;
  bool indirect_ok_;
  bool in_indirect_ = false;
  bool done_ = false;
};

// A validated chain the device can use: its head id and its buffers as
// iovecs pointing straight into guest memory (zero-length buffers left out).
struct Chain {
  uint16_t head = 0;
  std::vector<iovec> iov;
  uint64_t bytes = 0;  // sum of iov lengths
};

struct QueueLayout {
  uint32_t size = 0;
  uint64_t desc = 0;
  uint64_t avail = 0;
  uint64_t used = 0;
};

class SplitQueue {
 public:
  // Checks the layout (size a power of two <= 32768, alignment, every part
  // inside memory, event fields included when `event_idx`); false with rule
  // 'ring-out-of-bounds' otherwise.
  bool Init(const GuestMemory& mem, const QueueLayout& layout, bool event_idx, bool indirect_ok,
            uint16_t last_avail, uint16_t used_idx, Violation* v);

  enum class Pop { kChain, kEmpty, kBroken };
  // Takes the next available head. Enforces 'avail-idx-jump' and that the head
  // indexes the table.
  Pop PopAvail(uint16_t* head, Violation* v);
  // PopAvail, and when the ring is empty: re-enable kicks and look once more,
  // since the driver may have published just before it could see them enabled.
  // kEmpty then means kicks are on and the device may sleep.
  Pop PopOrArm(uint16_t* head, Violation* v) {
    for (;;) {
      const Pop p = PopAvail(head, v);
      if (p != Pop::kEmpty || !EnableNotify()) return p;
      DisableNotify();
    }
  }
  // Gives back the last popped head (it will be popped again), for when the
  // device could not use it now (TX hit EAGAIN; RX kept it in its stash at stop).
  void UndoPop(uint16_t n = 1) { last_avail_ = static_cast<uint16_t>(last_avail_ - n); }

  // TX: all buffers device-readable, at least `min_bytes` (the net header).
  bool ReadTxChain(uint16_t head, uint32_t min_bytes, Chain* out, Violation* v);
  // RX: all buffers device-writable, at least `min_bytes`; at most
  // `max_iov` iovecs are kept (a device need not use every byte offered).
  bool ReadRxChain(uint16_t head, uint32_t min_bytes, size_t max_iov, Chain* out, Violation* v);

  // Writes a used element; the driver sees it only after PublishUsed().
  void AddUsed(uint32_t id, uint32_t len);
  // Makes added elements visible (release store of used.idx). Returns true
  // when the driver asked to be interrupted for this batch.
  bool PublishUsed();

  // Notification suppression while the device is busy with this queue.
  void DisableNotify();
  // Re-enables kicks and returns true when the driver made buffers available
  // in the meantime (the device must then keep going instead of sleeping).
  bool EnableNotify();

  uint16_t last_avail() const { return last_avail_; }
  // avail.idx as the driver last published it: a hint for "is there more?"
  // (batching, busy polling). PopAvail() re-reads it with acquire ordering.
  uint16_t AvailIdx() const {
    return Le16(__atomic_load_n(reinterpret_cast<const uint16_t*>(avail_ + 2), __ATOMIC_RELAXED));
  }
  uint16_t used_idx() const { return used_idx_; }
  uint32_t size() const { return size_; }

 private:
  bool ReadChain(uint16_t head, bool want_writable, uint32_t min_bytes, size_t max_iov, Chain* out,
                 Violation* v);

  GuestMemory mem_;
  uint32_t size_ = 0;
  uint8_t* desc_ = nullptr;
  uint8_t* avail_ = nullptr;
  uint8_t* used_ = nullptr;
  bool event_idx_ = false;
  bool indirect_ok_ = false;
  uint16_t last_avail_ = 0;
  uint16_t used_idx_ = 0;
  // used.idx at the previous PublishUsed(), the "old" of vring_need_event.
  uint16_t signalled_used_ = 0;
  bool notify_disabled_ = false;
};

}  // namespace vt
