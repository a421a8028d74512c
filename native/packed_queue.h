// The device side of one packed virtqueue (virtio 1.x §2.8): the descriptor
// ring with the driver's and the device's wrap counters, chains through NEXT
// inside the ring, buffer ids, indirect tables, both event suppression areas,
// and every rule checked (a broken one stops the queue, never the process).
// The same face as SplitQueue (virtqueue.h), so the engine and the control
// queue run either; plain C++, linked as it is by the fuzzers and unit tests.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "memory.h"
#include "status.h"
#include "virtio.h"
#include "virtqueue.h"

namespace vt {

// Packed descriptor fields (§2.8.13): addr u64 at 0, then these.
namespace packed_desc {
constexpr uint32_t kOffLen = 8;
constexpr uint32_t kOffId = 12;
constexpr uint32_t kOffFlags = 14;
}  // namespace packed_desc

// Walks one packed chain: `count` descriptors of the ring from slot `first`
// (the pop counted them and checked they are available), or the one
// indirect descriptor they consist of and then its table, read in order
// (§2.8.6: NEXT is not used inside an indirect table).
class PackedChain {
 public:
  PackedChain(const MemoryTable& mem, const uint8_t* ring, uint32_t ring_size, uint32_t first, uint32_t count,
              bool indirect_ok)
      : mem_(mem), ring_(ring), ring_size_(ring_size), slot_(first), left_(count), indirect_ok_(indirect_ok) {}

  enum class Step { kBuffer, kEnd, kBroken };
  // Inline, the per-descriptor path: a ring descriptor naming a buffer that
  // lies in one region, and the chain's end (known without a look at the
  // ring). Anything else (an indirect descriptor, a table entry, a buffer
  // across regions or outside memory) goes to Read, which reads the
  // descriptor afresh and checks every rule; this path commits nothing
  // before it knows the descriptor is the plain kind.
  Step Next(Buffer* out, Violation* v) {
    if (__builtin_expect(in_indirect_ || done_, 0)) return Read(out, v);
    if (left_ == 0) return Step::kEnd;
    const uint8_t* raw = ring_ + uint64_t{slot_} * RING_DESC_SIZE;
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    // One copy of each field (the compiler may not load them again): every
    // check below and the Buffer see the same values. The pop read this
    // descriptor's flags with acquire, so its other fields are visible.
    memcpy(&addr, raw, sizeof addr);
    memcpy(&len, raw + packed_desc::kOffLen, sizeof len);
    memcpy(&flags, raw + packed_desc::kOffFlags, sizeof flags);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    addr = Le64(addr);
    len = Le32(len);
    flags = Le16(flags);
    if (__builtin_expect((flags & RING_DESC_F_INDIRECT) != 0, 0)) return Read(out, v);
    uint8_t* host = mem_.Contiguous(addr, len);
    if (__builtin_expect(host == nullptr, 0)) return Read(out, v);
    left_--;
    slot_ = slot_ + 1 == ring_size_ ? 0 : slot_ + 1;
    visited_total_++;
    out->addr = addr;
    out->len = len;
    out->host = host;
    out->writable = (flags & RING_DESC_F_WRITE) != 0;
    return Step::kBuffer;
  }
  uint32_t visited_total() const { return visited_total_; }

 private:
  // Every case, rules and all (Next's fast path is a subset of it).
  Step Read(Buffer* out, Violation* v);
  Step Fail(Violation* v, const char* rule, std::string detail);

  const MemoryTable& mem_;
  const uint8_t* ring_;
  uint32_t ring_size_;
  uint32_t slot_;
  uint32_t left_;  // ring descriptors still to read
  bool indirect_ok_;
  // The indirect table, once entered: contiguous host memory, or (it crosses
  // regions) read entry by entry from guest address table_addr_.
  bool in_indirect_ = false;
  const uint8_t* table_ = nullptr;
  uint64_t table_addr_ = 0;
  uint32_t table_size_ = 0;
  uint32_t table_index_ = 0;
  uint32_t visited_total_ = 0;
  bool done_ = false;
};

class PackedQueue {
 public:
  // `last_avail` and `used_idx` are positions with the wrap counter in bit 15
  // (RING_PACKED_WRAP_BIT); a new ring starts at 0x8000 for both.
  bool Init(const MemoryTable& mem, const QueueLayout& layout, bool event_idx, bool indirect_ok,
            uint16_t last_avail, uint16_t used_idx, Violation* v);
  bool Remap(const MemoryTable& mem, Violation* v);

  enum class Pop { kChain, kEmpty, kBroken };
  // Takes the next available chain: its head must be available with the
  // driver's wrap counter, then every descriptor it links with NEXT
  // ('chain-not-available' otherwise), at most the ring's size of them
  // ('chain-too-long'); the last names a buffer id below the queue size
  // ('buffer-id-out-of-range') that is not in use ('buffer-id-in-use').
  // *token is the head's ring slot, for ReadTxChain / ReadRxChain / Walk.
  Pop PopAvail(uint16_t* token, Violation* v);
  // As SplitQueue::PopOrArm: on empty, re-enable kicks and look once more.
  Pop PopOrArm(uint16_t* token, Violation* v);
  // Gives back the last n popped chains (they will be popped again).
  void UndoPop(uint16_t n = 1);
  void SetInOrder(bool on) { in_order_ = on; }

  PackedChain Walk(uint16_t token) const {
    return PackedChain(*mem_, desc_, layout_.size, token, token < slots_.size() ? slots_[token].count : 0,
                       indirect_ok_);
  }
  uint16_t BufferId(uint16_t token) const { return token < slots_.size() ? slots_[token].id : 0; }
  bool ReadTxChain(uint16_t token, uint32_t min_bytes, Chain* out, Violation* v);
  bool ReadRxChain(uint16_t token, uint32_t min_bytes, size_t max_iov, Chain* out, Violation* v);

  // Writes a used descriptor for buffer `id` at the device's position and
  // skips over the descriptors the buffer took. With IN_ORDER, chains used
  // with len 0 (TX) are answered by one used descriptor for the batch,
  // naming its last buffer, written at PublishUsed() (§2.8.9).
  void AddUsed(uint32_t id, uint32_t len);
  uint16_t pending_used() const { return static_cast<uint16_t>(used_count_ - signalled_count_); }
  // Writes the open IN_ORDER batch, then decides the interrupt from the
  // driver event suppression area (enable, disable, or a descriptor
  // position with its wrap counter under EVENT_IDX).
  bool PublishUsed();

  void DisableNotify();
  bool EnableNotify();

  bool HasAvail() const;
  // Positions with the wrap counter in bit 15: the state to save and restore.
  uint16_t last_avail() const { return Position(next_avail_, avail_wrap_); }
  uint16_t used_idx() const { return Position(used_pos_, used_wrap_); }
  uint16_t last_avail_before(uint16_t n) const {
    uint32_t pos = next_avail_;
    bool wrap = avail_wrap_;
    StepBack(n, &pos, &wrap);
    return Position(pos, wrap);
  }
  // The same in one step, for the engine's every batch, when the caller
  // knows the buffer id of the oldest of those n pops (its RX stash does):
  // that chain's head slot, with the wrap counter it was popped under.
  uint16_t last_avail_before(uint16_t n, uint16_t oldest_id) const {
    if (n == 0) return last_avail();
    if (oldest_id >= id_use_.size() || id_use_[oldest_id].ndesc == 0) return last_avail_before(n);
    // The n chains lie between their first head and next_avail_, at most one
    // lap: at or past the head, next_avail_ has wrapped since.
    const uint32_t head = id_use_[oldest_id].head;
    return Position(head, head < next_avail_ ? avail_wrap_ : !avail_wrap_);
  }
  uint16_t UntilUsedEvent() const;
  uint32_t size() const { return layout_.size; }
  const QueueLayout& layout() const { return layout_; }
  const MemoryTable& memory() const { return *mem_; }

 private:
  static uint16_t Position(uint32_t pos, bool wrap) {
    return static_cast<uint16_t>(pos | (wrap ? RING_PACKED_WRAP_BIT : 0));
  }
  // §2.8.1: available when AVAIL equals the wrap counter and USED does not,
  // i.e. the two bits are exactly AvailBits(wrap).
  static uint16_t AvailBits(bool wrap) { return wrap ? RING_PACKED_DESC_F_AVAIL : RING_PACKED_DESC_F_USED; }
  static bool Available(uint16_t flags, bool wrap) {
    return (flags & (RING_PACKED_DESC_F_AVAIL | RING_PACKED_DESC_F_USED)) == AvailBits(wrap);
  }
  // The rare pops, out of the per-chain path: a chain of several ring
  // descriptors, and a head whose buffer id breaks a rule.
  // PopAvail (and with kArm PopOrArm), inlined into each.
  template <bool kArm>
  Pop PopNext(uint16_t* token, Violation* v);
  Pop ArmAndPop(uint16_t* token, Violation* v);  // PopOrArm's empty case
  Pop PopLinked(uint16_t head_flags, uint16_t* token, Violation* v);
  Pop BadId(uint16_t id, Violation* v) const;
  Pop LinkBroken(Violation* v, uint32_t pos, uint16_t flags, bool wrap, bool too_long) const;
  // Records a popped chain of `count` descriptors from next_avail_ and moves
  // next_avail_ past it.
  void Take(uint32_t count, uint16_t id, uint16_t* token);
  // Moves (pos, wrap) back over the last n popped chains.
  void StepBack(uint32_t n, uint32_t* pos, bool* wrap) const;
  bool ReadChain(uint16_t token, bool want_writable, uint32_t min_bytes, size_t max_iov, Chain* out, Violation* v);
  void WriteUsed(uint32_t id, uint32_t len, uint32_t skip);
  void FlushUsed();
  void CloseInOrderBatch();
  void AddUsedInOrder(uint32_t id, uint32_t len, uint16_t ndesc);
  // A position as a count in [0, 2 * size): laps alternate wrap counters.
  uint32_t Ext(uint32_t pos, bool wrap) const { return pos + (wrap ? 0 : layout_.size); }

  const MemoryTable* mem_ = nullptr;
  QueueLayout layout_;
  uint8_t* desc_ = nullptr;
  uint8_t* driver_ = nullptr;  // driver event suppression area (the driver writes)
  uint8_t* device_ = nullptr;  // device event suppression area (the device writes)
  bool event_idx_ = false;
  bool indirect_ok_ = false;
  bool in_order_ = false;
  uint32_t next_avail_ = 0;
  bool avail_wrap_ = true;
  uint32_t used_pos_ = 0;
  bool used_wrap_ = true;
  uint16_t used_count_ = 0;       // used descriptors written, free-running
  uint16_t signalled_count_ = 0;  // used_count_ at the previous PublishUsed()
  uint32_t signalled_pos_ = 0;    // the device's position then (vring_need_event's "old")
  bool signalled_wrap_ = true;
  // The flags word of a used descriptor at the device's wrap counter (both
  // bits equal to it), kept with used_wrap_.
  uint16_t used_flags_ = RING_PACKED_DESC_F_AVAIL | RING_PACKED_DESC_F_USED;
  // Per buffer id: how many ring descriptors its chain took (what the used
  // side skips), 0 while the id is not in use (popped, not yet used), and
  // the ring slot its chain began at. One 4-byte store per pop.
  struct IdUse {
    uint16_t ndesc;
    uint16_t head;
  };
  std::vector<IdUse> id_use_;
  // Per ring slot, everything a pop records, in one place so that a chain
  // costs one cache line of device state: at its head slot the chain's
  // descriptor count and buffer id as the pop read them (the chain readers
  // trust these, not a second look at guest memory); at its last slot the
  // count again, so UndoPop and last_avail_before can walk back over pops.
  struct Slot {
    uint16_t count;
    uint16_t id;
    uint16_t tail_count;
    uint16_t unused;  // pads a slot to 8 bytes: one store for a one-descriptor chain
  };
  std::vector<Slot> slots_;
  // Used descriptors decided but not yet in the ring. The driver polls the
  // flags of the slot after its last used one, in the cache lines the device
  // writes used descriptors to; written one by one as chains complete, a
  // line could travel to the driver and back once per chain. PublishUsed()
  // writes them in one pass instead, the first one's flags last (no slot is
  // the driver's before then). At most one per buffer id in use: the ring's size.
  struct ShadowUsed {
    uint32_t pos;
    uint32_t len;
    uint16_t id;
    uint16_t flags;
  };
  std::vector<ShadowUsed> shadow_;
  uint32_t shadow_n_ = 0;
  // IN_ORDER: an open batch of len-0 uses, written as one used descriptor.
  uint16_t batch_n_ = 0;
  uint32_t batch_id_ = 0;
  uint32_t batch_skip_ = 0;
  bool notify_disabled_ = false;
};

}  // namespace vt
