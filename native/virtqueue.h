// The device side of one split virtqueue (virtio 1.x §2.7): the ring layout
// and its checks, reading available chains with every spec rule checked,
// publishing used elements, and deciding on notifications. No I/O, no
// threads, no Node: the engine and the control queue drive it, and the
// fuzzers and C++ unit tests link it as it is.
#pragma once
#include <sys/uio.h>

#include <cstdint>
#include <string>
#include <vector>

#include "memory.h"
#include "status.h"
#include "virtio.h"

namespace vt {

// One descriptor, copied out of guest memory once and only used from the copy.
struct Descriptor {
  uint64_t addr = 0;
  uint32_t len = 0;
  uint16_t flags = 0;
  uint16_t next = 0;
};

// A buffer a descriptor names, already checked to lie in guest memory. `host`
// is set when the buffer lies inside one region (nearly always); a buffer that
// crosses into an adjacent region has host == nullptr and is translated into
// several iovecs by the caller (MemoryTable::AppendIov).
struct Buffer {
  uint64_t addr = 0;
  uint32_t len = 0;
  bool writable = false;
  uint8_t* host = nullptr;
};

// Walks one chain from its head, following NEXT links and (once) an indirect
// table. All structural rules live here so that no caller can walk a chain
// without them: indices in range, buffers in memory, no loops, indirect rules.
class DescriptorChain {
 public:
  // `table` is the queue's descriptor table (contiguous, `table_size` entries).
  DescriptorChain(const MemoryTable& mem, const uint8_t* table, uint32_t table_size, uint16_t head,
                  bool indirect_ok);

  enum class Step { kBuffer, kEnd, kBroken };
  Step Next(Buffer* out, Violation* v);
  // Descriptors read so far, indirect ones included: what a walk has cost.
  uint32_t visited_total() const { return visited_total_; }

 private:
  Step Fail(Violation* v, const char* rule, std::string detail);
  bool ReadEntry(uint32_t index, Descriptor* d) const;

  const MemoryTable& mem_;
  // The table being walked: contiguous host memory, or (an indirect table that
  // crosses regions) read entry by entry from guest address indirect_addr_.
  const uint8_t* table_;
  uint64_t indirect_addr_ = 0;
  uint32_t table_size_;
  uint32_t index_;
  // Descriptors visited in the current table; more than the table holds means
  // the NEXT links form a loop (or the guest lied about the chain).
  uint32_t visited_ = 0;
  uint32_t visited_total_ = 0;
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

// Guest addresses of the three parts of a split ring.
struct QueueLayout {
  uint32_t size = 0;
  uint64_t desc = 0;
  uint64_t avail = 0;
  uint64_t used = 0;

  // Bytes of each part as the spec sizes them, event fields included (a
  // driver allocates them whether or not EVENT_IDX is negotiated).
  uint64_t desc_bytes() const { return uint64_t{RING_DESC_SIZE} * size; }
  uint64_t avail_bytes() const { return 6 + 2ull * size; }
  uint64_t used_bytes() const { return 6 + uint64_t{RING_USED_ELEM_SIZE} * size; }
};

// Checks a layout against guest memory: size a power of two up to 32768,
// alignment, each part inside one region, and no two parts overlapping (in
// guest addresses or in host memory: a ring whose used part lies over its own
// avail or desc part would make the device read back what it wrote). The rule
// is 'ring-out-of-bounds' for the first three, 'ring-overlap' for the last.
bool CheckLayout(const MemoryTable& mem, const QueueLayout& l, Violation* v);
// The same for several queues at once, and no part of one queue overlapping a
// part of another (the device would write one queue's used ring into another
// queue's descriptors or avail ring).
bool CheckLayouts(const MemoryTable& mem, const QueueLayout* ls, size_t n, Violation* v);

class SplitQueue {
 public:
  // Checks the layout (CheckLayout) and resolves the ring parts in `mem`.
  // `mem` must outlive the queue's use of it, or Remap() must be called first.
  bool Init(const MemoryTable& mem, const QueueLayout& layout, bool event_idx, bool indirect_ok,
            uint16_t last_avail, uint16_t used_idx, Violation* v);
  // Resolves the same ring in a replacement table (guest memory changed while
  // running): the ring's guest addresses stay, its host pointers move. False
  // (the queue is then unusable) when the ring no longer fits the new table.
  bool Remap(const MemoryTable& mem, Violation* v);

  enum class Pop { kChain, kEmpty, kBroken };
  // Takes the next available head. Enforces 'avail-idx-jump' and that the head
  // indexes the table.
  Pop PopAvail(uint16_t* head, Violation* v);
  // PopAvail, and when the ring is empty: re-enable kicks and look once more,
  // since the driver may have published just before it could see them enabled.
  // kEmpty then means kicks are on and the device may sleep. Bounded whatever
  // the guest writes: if the second look finds the ring empty although the
  // first saw work, avail.idx went backwards ('avail-idx-backwards').
  Pop PopOrArm(uint16_t* head, Violation* v);
  // Gives back the last n popped heads (they will be popped again), for when
  // the device could not use them now (TX hit EAGAIN; RX kept them in its stash).
  void UndoPop(uint16_t n = 1) { last_avail_ = static_cast<uint16_t>(last_avail_ - n); }

  // A walker over the chain at `head` with this queue's table and rules, for
  // callers with their own idea of a chain's contents (the control queue).
  DescriptorChain Walk(uint16_t head) const {
    return DescriptorChain(*mem_, desc_, layout_.size, head, indirect_ok_);
  }

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
  // EVENT_IDX: how many more used elements (counting those added but not yet
  // published) until used.idx passes the driver's used_event, i.e. until the
  // driver wants an interrupt; 0 when it already passed or without EVENT_IDX.
  // A hint (the driver moves used_event at any time): it only shapes batches.
  uint16_t UntilUsedEvent() const;
  uint32_t size() const { return layout_.size; }
  const QueueLayout& layout() const { return layout_; }
  const MemoryTable& memory() const { return *mem_; }

 private:
  bool ReadChain(uint16_t head, bool want_writable, uint32_t min_bytes, size_t max_iov, Chain* out,
                 Violation* v);

  const MemoryTable* mem_ = nullptr;
  QueueLayout layout_;
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
