// The device side of one split virtqueue (virtio 1.x §2.7): the ring layout
// and its checks (both layouts), reading available chains with every spec
// rule checked, publishing used elements, and deciding on notifications. No
// I/O, no threads, no Node: the engine and the control queue drive it, and the
// fuzzers and C++ unit tests link it as it is. The packed ring
// (packed_queue.h) has the same face, so the engine is a template over it.
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
  // Descriptors of the queue's own table the chain took (an indirect one
  // counts 1): where an IN_ORDER driver's next chain must start.
  uint32_t table_entries() const { return in_indirect_ ? table_entries_ : visited_; }

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
  uint32_t table_entries_ = 0;  // set when the walk enters an indirect table
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

// Guest addresses of the three parts of a ring. Split ring: descriptor
// table, avail ring, used ring. Packed ring (`packed`): descriptor ring,
// driver event suppression area, device event suppression area (virtio 1.x
// §2.8.10; the same three addresses vhost-user's SET_VRING_ADDR carries).
struct QueueLayout {
  uint32_t size = 0;
  uint64_t desc = 0;
  uint64_t avail = 0;
  uint64_t used = 0;
  bool packed = false;

  // Bytes of each part as the spec sizes them, event fields included (a
  // driver allocates them whether or not EVENT_IDX is negotiated).
  uint64_t desc_bytes() const { return uint64_t{RING_DESC_SIZE} * size; }
  uint64_t avail_bytes() const { return packed ? RING_EVENT_AREA_SIZE : 6 + 2ull * size; }
  uint64_t used_bytes() const { return packed ? RING_EVENT_AREA_SIZE : 6 + uint64_t{RING_USED_ELEM_SIZE} * size; }
};

// Checks a layout against guest memory: size a power of two up to 32768
// (packed: any size up to 32768), alignment, each part inside one region,
// and no two parts overlapping (in
// guest addresses or in host memory: a ring whose used part lies over its own
// avail or desc part would make the device read back what it wrote). The rule
// is 'ring-out-of-bounds' for the first three, 'ring-overlap' for the last.
bool CheckLayout(const MemoryTable& mem, const QueueLayout& l, Violation* v);
// The same for several queues at once, and no part of one queue overlapping a
// part of another (the device would write one queue's used ring into another
// queue's descriptors or avail ring).
bool CheckLayouts(const MemoryTable& mem, const QueueLayout* ls, size_t n, Violation* v);

// Gathers a walked chain's buffers into a Chain with the rules both layouts
// share (direction of every buffer, not empty, room for the net header).
// `Walker` has Next(Buffer*, Violation*) as DescriptorChain does.
template <class Walker>
bool CollectChain(const MemoryTable& mem, Walker& chain, uint16_t head, bool want_writable, uint32_t min_bytes,
                  size_t max_iov, Chain* out, Violation* v);

// The queue face the engine and the control queue are written against
// (SplitQueue here, PackedQueue in packed_queue.h; the engine is a template
// over it, so which one runs is decided once, when the queue is set up):
//   Init / Remap, PopOrArm(&token) then ReadTxChain / ReadRxChain(token) or
//   Walk(token), UndoPop(n), AddUsed(id, len), pending_used(), PublishUsed(),
//   DisableNotify / EnableNotify, HasAvail(), UntilUsedEvent(),
//   last_avail() / used_idx() (the state to save and restore),
//   last_avail_before(n, oldest_id), SetInOrder().
// A token is what a pop hands to the chain readers: the head index here, the
// head's ring slot for the packed ring; Chain::head is the buffer id.
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
  void UndoPop(uint16_t n = 1) {
    last_avail_ = static_cast<uint16_t>(last_avail_ - n);
    // The next head IN_ORDER expects is that of the first chain given back,
    // which the check would have to remember; it learns again instead.
    in_order_next_ = kNoHead;
  }

  // VIRTIO_F_IN_ORDER: the driver makes descriptors available in table order
  // ('in-order-head' otherwise), and the device may answer a batch of chains
  // it wrote nothing into (TX) with one used element carrying the batch's
  // last id, which is what AddUsed(id, 0) then does.
  void SetInOrder(bool on) {
    in_order_ = on;
    in_order_next_ = kNoHead;
  }

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
  // Chains added since the last PublishUsed().
  uint16_t pending_used() const { return static_cast<uint16_t>(used_idx_ - signalled_used_); }
  // Makes added elements visible (release store of used.idx). Returns true
  // when the driver asked to be interrupted for this batch.
  bool PublishUsed();

  // Notification suppression while the device is busy with this queue.
  void DisableNotify();
  // Re-enables kicks and returns true when the driver made buffers available
  // in the meantime (the device must then keep going instead of sleeping).
  bool EnableNotify();

  uint16_t last_avail() const { return last_avail_; }
  // Where the device would resume had it not taken its last n pops. The
  // packed ring needs the oldest one's buffer id to say it in one step;
  // here every pop is one step of the index.
  uint16_t last_avail_before(uint16_t n) const { return static_cast<uint16_t>(last_avail_ - n); }
  uint16_t last_avail_before(uint16_t n, uint16_t /*oldest_id*/) const { return last_avail_before(n); }
  // Whether the driver made more available than the device took: a hint, as AvailIdx().
  bool HasAvail() const { return AvailIdx() != last_avail_; }
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
  void CloseInOrderBatch();
  void AddUsedInOrder(uint32_t id, uint32_t len);
  static constexpr uint32_t kNoHead = UINT32_MAX;

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
  bool in_order_ = false;
  // IN_ORDER: the head the driver's next chain must have (kNoHead: unknown).
  uint32_t in_order_next_ = kNoHead;
  // IN_ORDER: an open batch of chains used with len 0 (one element at its
  // first slot, written when the batch closes).
  uint16_t batch_n_ = 0;
  uint16_t batch_start_ = 0;
  uint32_t batch_id_ = 0;
};

// Inlined into each queue's chain reader: the per-chain path of the split
// ring then costs what it did before the packed ring shared it.
template <class Walker>
__attribute__((always_inline)) inline bool CollectChain(const MemoryTable& mem, Walker& chain, uint16_t head,
                                                        bool want_writable, uint32_t min_bytes, size_t max_iov,
                                                        Chain* out, Violation* v) {
  out->head = head;
  out->iov.clear();
  out->bytes = 0;
  bool seen_writable = false;
  uint64_t total = 0;  // every byte the chain names, kept even where iovecs are capped
  Buffer b;
  for (;;) {
    typename Walker::Step s = chain.Next(&b, v);
    if (s == Walker::Step::kBroken) {
      v->detail = "chain at head " + std::to_string(head) + ": " + v->detail;
      return false;
    }
    if (s == Walker::Step::kEnd) break;
    if (b.writable) {
      if (!want_writable) {
        v->rule = "writable-on-tx";
        v->detail = "chain at head " + std::to_string(head) + " has a device-writable buffer";
        return false;
      }
      seen_writable = true;
    } else if (want_writable) {
      // A readable buffer after a writable one breaks the general ordering
      // rule; one before any writable buffer is RX-specific (RX is all writable).
      v->rule = seen_writable ? "readable-after-writable" : "readable-on-rx";
      v->detail = "chain at head " + std::to_string(head) + " has a device-readable buffer" +
                  (seen_writable ? " after a writable one" : "");
      return false;
    }
    total += b.len;
    if (b.len == 0 || out->iov.size() >= max_iov) continue;
    if (b.host) {
      out->iov.push_back(iovec{b.host, b.len});
      out->bytes += b.len;
      continue;
    }
    // Crosses into an adjacent region: one iovec per region (RX may keep
    // only part of it when max_iov runs out; the device need not use it all).
    const size_t before = out->iov.size();
    mem.AppendIov(b.addr, b.len, &out->iov, max_iov - before);
    for (size_t i = before; i < out->iov.size(); i++) out->bytes += out->iov[i].iov_len;
  }
  if (total == 0) {
    v->rule = "empty-chain";
    v->detail = "chain at head " + std::to_string(head) + " has no bytes";
    return false;
  }
  if (out->bytes < min_bytes) {
    v->rule = "header-too-short";
    v->detail = "chain at head " + std::to_string(head) + " holds " + std::to_string(out->bytes) + " bytes, less than the " +
                std::to_string(min_bytes) + "-byte net header";
    return false;
  }
  return true;
}

}  // namespace vt
