// Packed virtqueue device side (see packed_queue.h): popping chains by the
// wrap counters, the chain walker with its rules, used descriptors (with
// IN_ORDER batching) and both event suppression areas, with the memory
// ordering §2.8.21 asks for: a descriptor's flags are read with acquire
// before its other fields, and written with release after them.
#include "packed_queue.h"
#include "ring_access.h"

#include <cinttypes>
#include <cstdarg>
#include <cstdio>
#include <cstring>

namespace vt {

namespace {

using namespace ring_access;  // NOLINT: Fmt, Load16/Store16/Store32, kMaxIndirectEntries

using packed_desc::kOffFlags;
using packed_desc::kOffId;
using packed_desc::kOffLen;
// Event suppression area fields (§2.8.14).
constexpr uint32_t kOffOffWrap = 0;
constexpr uint32_t kOffEventFlags = 2;

struct PackedDesc {
  uint64_t addr;
  uint32_t len;
  uint16_t id;
  uint16_t flags;
};

PackedDesc Decode(const uint8_t* raw) {
  PackedDesc d;
  uint64_t addr;
  uint32_t len;
  uint16_t id, flags;
  memcpy(&addr, raw, 8);
  memcpy(&len, raw + kOffLen, 4);
  memcpy(&id, raw + kOffId, 2);
  memcpy(&flags, raw + kOffFlags, 2);
  d.addr = Le64(addr);
  d.len = Le32(len);
  d.id = Le16(id);
  d.flags = Le16(flags);
  return d;
}

}  // namespace

// ---- PackedChain ----------------------------------------------------------------

PackedChain::Step PackedChain::Fail(Violation* v, const char* rule, std::string detail) {
  v->rule = rule;
  v->detail = std::move(detail);
  done_ = true;
  return Step::kBroken;
}

PackedChain::Step PackedChain::Read(Buffer* out, Violation* v) {
  for (;;) {
    if (done_) return Step::kEnd;
    uint8_t raw[RING_DESC_SIZE];
    uint32_t at;
    const char* where;
    if (in_indirect_) {
      if (table_index_ >= table_size_) {
        done_ = true;
        return Step::kEnd;
      }
      at = table_index_++;
      where = "indirect table";
      const uint64_t off = uint64_t{at} * RING_DESC_SIZE;
      if (table_) {
        ReadOnce(raw, table_ + off, sizeof raw);
      } else if (!mem_.Read(table_addr_ + off, raw, sizeof raw)) {
        return Fail(v, "indirect-out-of-bounds", Fmt("indirect table entry %u unreadable", at));
      }
    } else {
      if (left_ == 0) {
        done_ = true;
        return Step::kEnd;
      }
      at = slot_;
      where = "descriptor ring";
      // The pop read this descriptor's flags with acquire: its other fields,
      // written before the driver made it available, are visible.
      ReadOnce(raw, ring_ + uint64_t{slot_} * RING_DESC_SIZE, sizeof raw);
      left_--;
      slot_ = slot_ + 1 == ring_size_ ? 0 : slot_ + 1;
    }
    visited_total_++;
    const PackedDesc d = Decode(raw);

    if (d.flags & RING_DESC_F_INDIRECT) {
      if (in_indirect_)
        return Fail(v, "nested-indirect", Fmt("indirect descriptor at entry %u of an indirect table", at));
      if (!indirect_ok_) return Fail(v, "indirect-not-negotiated", Fmt("ring descriptor %u is INDIRECT", at));
      // An indirect descriptor is a buffer's only ring descriptor (§2.8.6): none
      // after it, and none before it (it would be the first one visited).
      if ((d.flags & RING_DESC_F_NEXT) || left_ > 0 || visited_total_ > 1)
        return Fail(v, "indirect-with-next", Fmt("ring descriptor %u has INDIRECT in a chain of several", at));
      if (d.len == 0 || d.len % RING_DESC_SIZE != 0 || d.len / RING_DESC_SIZE > kMaxIndirectEntries)
        return Fail(v, "indirect-bad-len", Fmt("ring descriptor %u: indirect table len %u", at, d.len));
      const uint8_t* t = mem_.Contiguous(d.addr, d.len);
      if (!t && !mem_.Covers(d.addr, d.len))
        return Fail(v, "indirect-out-of-bounds",
                    Fmt("ring descriptor %u: indirect table [0x%" PRIx64 ", +%u) outside guest memory", at, d.addr,
                        d.len));
      in_indirect_ = true;
      table_ = t;
      table_addr_ = d.addr;
      table_size_ = d.len / RING_DESC_SIZE;
      table_index_ = 0;
      continue;
    }
    uint8_t* host = mem_.Contiguous(d.addr, d.len);
    if (!host && !mem_.Covers(d.addr, d.len))
      return Fail(v, "desc-out-of-bounds",
                  Fmt("%s entry %u: buffer [0x%" PRIx64 ", +%u) is not in guest memory (outside every region, "
                      "or across a hole between regions)",
                      where, at, d.addr, d.len));
    out->addr = d.addr;
    out->len = d.len;
    out->host = host;
    out->writable = (d.flags & RING_DESC_F_WRITE) != 0;
    return Step::kBuffer;
  }
}

// ---- PackedQueue ------------------------------------------------------------------

bool PackedQueue::Init(const MemoryTable& mem, const QueueLayout& l, bool event_idx, bool indirect_ok,
                       uint16_t last_avail, uint16_t used_idx, Violation* v) {
  layout_ = l;
  event_idx_ = event_idx;
  indirect_ok_ = indirect_ok;
  mem_ = nullptr;
  desc_ = driver_ = device_ = nullptr;
  // No id is in use until the ring is set up (AddUsed answers none).
  id_use_.clear();
  slots_.clear();
  shadow_n_ = 0;
  if (!l.packed) {
    v->rule = "ring-out-of-bounds";
    v->detail = "a split ring layout given to the packed ring";
    return false;
  }
  if (l.size > RING_MAX_SIZE) {  // before the per-id state is sized by it
    v->rule = "ring-out-of-bounds";
    v->detail = Fmt("packed queue size %u is not in 1..%u", l.size, RING_MAX_SIZE);
    return false;
  }
  const uint32_t avail_pos = last_avail & ~RING_PACKED_WRAP_BIT, used_pos = used_idx & ~RING_PACKED_WRAP_BIT;
  if (l.size == 0 || avail_pos >= l.size || used_pos >= l.size) {
    v->rule = "ring-base-out-of-range";
    v->detail = Fmt("packed ring positions avail %u, used %u (wrap counters in bit 15) outside a queue of %u", avail_pos,
                    used_pos, l.size);
    return false;
  }
  next_avail_ = avail_pos;
  avail_wrap_ = (last_avail & RING_PACKED_WRAP_BIT) != 0;
  used_pos_ = signalled_pos_ = used_pos;
  used_wrap_ = signalled_wrap_ = (used_idx & RING_PACKED_WRAP_BIT) != 0;
  used_count_ = signalled_count_ = 0;
  used_flags_ = used_wrap_ ? RING_PACKED_DESC_F_AVAIL | RING_PACKED_DESC_F_USED : 0;
  id_use_.assign(l.size, IdUse{0, 0});
  slots_.assign(l.size, Slot{1, 0, 1, 0});
  shadow_.resize(l.size);
  batch_n_ = 0;
  batch_skip_ = 0;
  notify_disabled_ = false;
  return Remap(mem, v);
}

bool PackedQueue::Remap(const MemoryTable& mem, Violation* v) {
  if (!CheckLayout(mem, layout_, v)) {
    mem_ = nullptr;
    desc_ = driver_ = device_ = nullptr;
    // The ring is gone: no id is in use any more, so AddUsed answers none,
    // and what was decided for it is not written anywhere.
    id_use_.assign(id_use_.size(), IdUse{0, 0});
    shadow_n_ = 0;
    return false;
  }
  mem_ = &mem;
  desc_ = mem.Contiguous(layout_.desc, layout_.desc_bytes());
  driver_ = mem.Contiguous(layout_.avail, layout_.avail_bytes());
  device_ = mem.Contiguous(layout_.used, layout_.used_bytes());
  return true;
}

bool PackedQueue::HasAvail() const {
  if (!desc_) return false;
  return Available(Load16(desc_ + uint64_t{next_avail_} * RING_DESC_SIZE + kOffFlags, __ATOMIC_RELAXED), avail_wrap_);
}

inline void PackedQueue::Take(uint32_t count, uint16_t id, uint16_t* token) {
  const uint32_t size = layout_.size, head = next_avail_;
  id_use_[id] = IdUse{static_cast<uint16_t>(count), static_cast<uint16_t>(head)};
  uint32_t pos = head + count;
  if (pos >= size) {
    pos -= size;
    avail_wrap_ = !avail_wrap_;
  }
  if (count == 1) {
    slots_[head] = Slot{1, id, 1, 0};  // head and last slot in one store
  } else {
    slots_[head].count = static_cast<uint16_t>(count);
    slots_[head].id = id;
    slots_[pos == 0 ? size - 1 : pos - 1].tail_count = static_cast<uint16_t>(count);
  }
  next_avail_ = pos;
  *token = static_cast<uint16_t>(head);
}

void PackedQueue::StepBack(uint32_t n, uint32_t* pos, bool* wrap) const {
  const uint32_t size = static_cast<uint32_t>(slots_.size());  // 0 until the ring is set up
  if (size == 0 || *pos >= size) return;
  if (n > size) n = size;
  for (uint32_t i = 0; i < n; i++) {
    const uint32_t count = slots_[*pos == 0 ? size - 1 : *pos - 1].tail_count;
    if (count > *pos) {
      *pos += size - count;
      *wrap = !*wrap;
    } else {
      *pos -= count;
    }
  }
}

__attribute__((noinline, cold)) PackedQueue::Pop PackedQueue::BadId(uint16_t id, Violation* v) const {
  if (id >= layout_.size) {
    v->rule = "buffer-id-out-of-range";
    v->detail = Fmt("chain from ring slot %u has buffer id %u >= queue size %u", next_avail_, id, layout_.size);
  } else {
    v->rule = "buffer-id-in-use";
    v->detail = Fmt("chain from ring slot %u has buffer id %u, which the device has not used yet", next_avail_, id);
  }
  return Pop::kBroken;
}

__attribute__((noinline, cold)) PackedQueue::Pop PackedQueue::LinkBroken(Violation* v, uint32_t pos, uint16_t flags, bool wrap, bool too_long) const {
  if (too_long) {
    v->rule = "chain-too-long";
    v->detail = Fmt("chain from ring slot %u links more than the ring's %u descriptors", next_avail_, layout_.size);
  } else {
    v->rule = "chain-not-available";
    v->detail = Fmt("chain from ring slot %u: descriptor %u (flags 0x%04x) is not available with wrap counter %d",
                    next_avail_, pos, flags, wrap ? 1 : 0);
  }
  return Pop::kBroken;
}

PackedQueue::Pop PackedQueue::PopLinked(uint16_t head_flags, uint16_t* token, Violation* v) {
  const uint32_t size = layout_.size;
  uint32_t pos = next_avail_;
  bool wrap = avail_wrap_;
  uint16_t flags = head_flags;
  uint32_t count = 1;
  while (flags & RING_DESC_F_NEXT) {
    if (count >= size) return LinkBroken(v, pos, flags, wrap, true);
    if (++pos == size) {
      pos = 0;
      wrap = !wrap;
    }
    // The driver makes a chain's head available last (§2.8.21.1), so the rest
    // of a chain whose head is available must be too.
    flags = Load16(desc_ + uint64_t{pos} * RING_DESC_SIZE + kOffFlags, __ATOMIC_ACQUIRE);
    if (!Available(flags, wrap)) return LinkBroken(v, pos, flags, wrap, false);
    count++;
  }
  // The buffer id is the last descriptor's (§2.8.6).
  const uint16_t id = Load16(desc_ + uint64_t{pos} * RING_DESC_SIZE + kOffId, __ATOMIC_RELAXED);
  if (id >= size || id_use_[id].ndesc != 0) return BadId(id, v);
  Take(count, id, token);
  return Pop::kChain;
}

// The per-chain path: a chain of one ring descriptor (a buffer, or an
// indirect table) is read and recorded here without a call; longer chains,
// broken ids and (kArm, for PopOrArm) an empty ring go out of line as tail
// calls, so this stays short for the compiler.
template <bool kArm>
__attribute__((always_inline)) inline PackedQueue::Pop PackedQueue::PopNext(uint16_t* token, Violation* v) {
  if (__builtin_expect(desc_ == nullptr, 0)) return Pop::kEmpty;
  const uint8_t* d = desc_ + uint64_t{next_avail_} * RING_DESC_SIZE;
  // Acquire pairs with the driver's release of the flags: the descriptor's
  // other fields (and the buffer) are visible once it reads as available.
  const uint16_t flags = Load16(d + kOffFlags, __ATOMIC_ACQUIRE);
  if (!Available(flags, avail_wrap_)) return kArm ? ArmAndPop(token, v) : Pop::kEmpty;
  if (__builtin_expect((flags & RING_DESC_F_NEXT) != 0, 0)) return PopLinked(flags, token, v);
  const uint16_t id = Load16(d + kOffId, __ATOMIC_RELAXED);
  if (__builtin_expect(id >= layout_.size || id_use_[id].ndesc != 0, 0)) return BadId(id, v);
  Take(1, id, token);
  return Pop::kChain;
}

PackedQueue::Pop PackedQueue::PopAvail(uint16_t* token, Violation* v) { return PopNext<false>(token, v); }

PackedQueue::Pop PackedQueue::PopOrArm(uint16_t* token, Violation* v) { return PopNext<true>(token, v); }

PackedQueue::Pop PackedQueue::ArmAndPop(uint16_t* token, Violation* v) {
  if (!EnableNotify()) return Pop::kEmpty;
  DisableNotify();
  const Pop p = PopAvail(token, v);
  if (p != Pop::kEmpty) return p;
  // EnableNotify() saw the descriptor available, now it is not: a driver
  // never takes back what it made available; looping on it could spin.
  v->rule = "avail-withdrawn";
  v->detail = Fmt("descriptor at ring slot %u stopped being available while the device re-enabled notifications",
                  next_avail_);
  return Pop::kBroken;
}

void PackedQueue::UndoPop(uint16_t n) {
  const uint32_t size = static_cast<uint32_t>(slots_.size());
  if (n == 0 || size == 0) return;
  if (n > size) n = static_cast<uint16_t>(size);
  for (uint16_t i = 0; i < n; i++) {
    StepBack(1, &next_avail_, &avail_wrap_);
    id_use_[slots_[next_avail_].id].ndesc = 0;
  }
}

__attribute__((always_inline)) inline bool PackedQueue::ReadChain(uint16_t token, bool want_writable, uint32_t min_bytes, size_t max_iov, Chain* out,
                            Violation* v) {
  // One look at the slot for both the walk and the id.
  const Slot s = token < slots_.size() ? slots_[token] : Slot{0, 0, 0, 0};
  PackedChain chain(*mem_, desc_, layout_.size, token, s.count, indirect_ok_);
  return CollectChain(*mem_, chain, s.id, want_writable, min_bytes, max_iov, out, v);
}

bool PackedQueue::ReadTxChain(uint16_t token, uint32_t min_bytes, Chain* out, Violation* v) {
  return ReadChain(token, false, min_bytes, SIZE_MAX, out, v);
}

bool PackedQueue::ReadRxChain(uint16_t token, uint32_t min_bytes, size_t max_iov, Chain* out, Violation* v) {
  return ReadChain(token, true, min_bytes, max_iov, out, v);
}

inline void PackedQueue::WriteUsed(uint32_t id, uint32_t len, uint32_t skip) {
  // Cannot be full (one entry per id in use); if it were, writing out is still right.
  if (__builtin_expect(shadow_n_ == shadow_.size(), false)) FlushUsed();
  shadow_[shadow_n_++] = ShadowUsed{used_pos_, len, static_cast<uint16_t>(id), used_flags_};
  used_pos_ += skip;
  if (used_pos_ >= layout_.size) {
    // skip is at most the ring's size: one lap at most.
    used_pos_ -= layout_.size;
    used_wrap_ = !used_wrap_;
    used_flags_ ^= RING_PACKED_DESC_F_AVAIL | RING_PACKED_DESC_F_USED;
  }
}

void PackedQueue::FlushUsed() {
  const uint32_t n = shadow_n_;
  if (n == 0) return;
  shadow_n_ = 0;
  for (uint32_t i = n; i-- > 0;) {
    const ShadowUsed& u = shadow_[i];
    uint8_t* d = desc_ + uint64_t{u.pos} * RING_DESC_SIZE;
    Store32(d + kOffLen, u.len);
    Store16(d + kOffId, u.id, __ATOMIC_RELAXED);
    // Release: id, len and the buffer's contents are visible to a driver that
    // sees the flags say "used" (both bits equal to the device's wrap counter).
    // The batch's first slot goes last: the driver, which takes used
    // descriptors in ring order, sees none of the batch before all of it.
    Store16(d + kOffFlags, u.flags, __ATOMIC_RELEASE);
  }
}

void PackedQueue::CloseInOrderBatch() {
  if (batch_n_ == 0) return;
  WriteUsed(batch_id_, 0, batch_skip_);
  batch_n_ = 0;
  batch_skip_ = 0;
}

void PackedQueue::AddUsed(uint32_t id, uint32_t len) {
  // Only popped ids come here. One not in use (ndesc 0; every id of a queue
  // that lost its ring is) is not answered: there is nothing to skip.
  if (id >= id_use_.size()) return;
  const uint16_t ndesc = id_use_[id].ndesc;
  if (ndesc == 0) return;
  id_use_[id].ndesc = 0;
  used_count_++;
  // IN_ORDER apart, so that the plain path stays short.
  if (__builtin_expect(in_order_, false)) return AddUsedInOrder(id, len, ndesc);
  WriteUsed(id, len, ndesc);
}

void PackedQueue::AddUsedInOrder(uint32_t id, uint32_t len, uint16_t ndesc) {
  if (len == 0) {
    batch_n_++;
    batch_id_ = id;
    batch_skip_ += ndesc;
    return;
  }
  CloseInOrderBatch();
  WriteUsed(id, len, ndesc);
}

bool PackedQueue::PublishUsed() {
  if (!desc_) return false;
  CloseInOrderBatch();
  FlushUsed();
  if (used_count_ == signalled_count_) return false;
  // Full fence: the used descriptors must be visible before we read the
  // driver's event area, or both sides may decide nobody needs waking.
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  const uint32_t s2 = 2 * layout_.size;
  const uint32_t old_ext = Ext(signalled_pos_, signalled_wrap_), new_ext = Ext(used_pos_, used_wrap_);
  signalled_count_ = used_count_;
  signalled_pos_ = used_pos_;
  signalled_wrap_ = used_wrap_;
  const uint16_t flags = Load16(driver_ + kOffEventFlags, __ATOMIC_RELAXED);
  if (flags == RING_EVENT_FLAGS_DISABLE) return false;
  if (flags == RING_EVENT_FLAGS_DESC && event_idx_) {
    const uint16_t off_wrap = Load16(driver_ + kOffOffWrap, __ATOMIC_RELAXED);
    const uint32_t ev = Ext(off_wrap & ~RING_PACKED_WRAP_BIT, (off_wrap & RING_PACKED_WRAP_BIT) != 0) % s2;
    // Did the device's position pass the driver's event position (§2.8.10.2)?
    return (ev + s2 - old_ext) % s2 < (new_ext + s2 - old_ext) % s2;
  }
  // Enabled, or a value the driver may not write: an interrupt too many is
  // harmless, one too few would stall the driver.
  return true;
}

uint16_t PackedQueue::UntilUsedEvent() const {
  if (!event_idx_ || !driver_) return 0;
  if (Load16(driver_ + kOffEventFlags, __ATOMIC_RELAXED) != RING_EVENT_FLAGS_DESC) return 0;
  const uint32_t s2 = 2 * layout_.size;
  const uint16_t off_wrap = Load16(driver_ + kOffOffWrap, __ATOMIC_RELAXED);
  const uint32_t ev = Ext(off_wrap & ~RING_PACKED_WRAP_BIT, (off_wrap & RING_PACKED_WRAP_BIT) != 0) % s2;
  const uint32_t d = (ev + s2 - Ext(used_pos_, used_wrap_)) % s2 + 1;
  return d <= layout_.size ? static_cast<uint16_t>(d) : 0;
}

void PackedQueue::DisableNotify() {
  if (notify_disabled_ || !device_) return;
  notify_disabled_ = true;
  Store16(device_ + kOffEventFlags, RING_EVENT_FLAGS_DISABLE, __ATOMIC_RELAXED);
}

bool PackedQueue::EnableNotify() {
  if (!device_) return false;
  notify_disabled_ = false;
  if (event_idx_) {
    // Kick me when the descriptor at my next position becomes available.
    Store16(device_ + kOffOffWrap, last_avail(), __ATOMIC_RELAXED);
    Store16(device_ + kOffEventFlags, RING_EVENT_FLAGS_DESC, __ATOMIC_RELAXED);
  } else {
    Store16(device_ + kOffEventFlags, RING_EVENT_FLAGS_ENABLE, __ATOMIC_RELAXED);
  }
  // Full fence: the re-enable must be visible before we look at the ring
  // again (as on the split ring).
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  return Available(Load16(desc_ + uint64_t{next_avail_} * RING_DESC_SIZE + kOffFlags, __ATOMIC_ACQUIRE), avail_wrap_);
}

}  // namespace vt
