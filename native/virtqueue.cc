// Split virtqueue device side (see virtqueue.h): the layout checks, the
// descriptor walker with its validation, avail/used ring access and the
// notification rules, with the memory ordering DESIGN.md prescribes.
#include "virtqueue.h"
#include "ring_access.h"

#include <cinttypes>
#include <cstdarg>
#include <cstdio>

namespace vt {

namespace {

using namespace ring_access;  // NOLINT: Fmt, Load16/Store16/Store32, kMaxIndirectEntries

// Ring field offsets (virtio 1.x §2.7.6, §2.7.8).
constexpr uint64_t kRingHeader = 4;  // flags u16, idx u16

// vring_need_event from the spec: has `event` been passed by moving from old to new?
inline bool NeedEvent(uint16_t event, uint16_t new_idx, uint16_t old_idx) {
  return static_cast<uint16_t>(new_idx - event - 1) < static_cast<uint16_t>(new_idx - old_idx);
}

Descriptor DecodeDescriptor(const uint8_t* raw) {
  Descriptor d;
  uint64_t addr;
  uint32_t len;
  uint16_t flags, next;
  memcpy(&addr, raw, 8);
  memcpy(&len, raw + 8, 4);
  memcpy(&flags, raw + 12, 2);
  memcpy(&next, raw + 14, 2);
  d.addr = Le64(addr);
  d.len = Le32(len);
  d.flags = Le16(flags);
  d.next = Le16(next);
  return d;
}

}  // namespace

// ---- DescriptorChain ----------------------------------------------------------

DescriptorChain::DescriptorChain(const MemoryTable& mem, const uint8_t* table, uint32_t table_size, uint16_t head,
                                 bool indirect_ok)
    : mem_(mem), table_(table), table_size_(table_size), index_(head), indirect_ok_(indirect_ok) {}

DescriptorChain::Step DescriptorChain::Fail(Violation* v, const char* rule, std::string detail) {
  v->rule = rule;
  v->detail = std::move(detail);
  done_ = true;
  return Step::kBroken;
}

bool DescriptorChain::ReadEntry(uint32_t index, Descriptor* d) const {
  uint8_t raw[RING_DESC_SIZE];
  const uint64_t off = uint64_t{index} * RING_DESC_SIZE;
  if (table_) {
    ReadOnce(raw, table_ + off, sizeof raw);
  } else if (!mem_.Read(indirect_addr_ + off, raw, sizeof raw)) {
    return false;  // cannot happen: the whole table was checked, see Next()
  }
  *d = DecodeDescriptor(raw);
  return true;
}

DescriptorChain::Step DescriptorChain::Next(Buffer* out, Violation* v) {
  for (;;) {
    if (done_) return Step::kEnd;
    const char* where = in_indirect_ ? "indirect table" : "descriptor table";
    if (index_ >= table_size_)
      return Fail(v, "desc-index-out-of-range",
                  Fmt("index %u >= %s size %u", index_, where, table_size_));
    if (++visited_ > table_size_)
      return Fail(v, "chain-too-long",
                  Fmt("chain visits more than the %u entries of its %s (a loop?)", table_size_, where));
    visited_total_++;
    Descriptor d;
    const uint32_t at = index_;
    if (!ReadEntry(at, &d)) return Fail(v, "indirect-out-of-bounds", Fmt("indirect table entry %u unreadable", at));

    if (d.flags & RING_DESC_F_INDIRECT) {
      if (in_indirect_)
        return Fail(v, "nested-indirect", Fmt("indirect descriptor at index %u of an indirect table", at));
      if (!indirect_ok_)
        return Fail(v, "indirect-not-negotiated", Fmt("descriptor %u is INDIRECT", at));
      if (d.flags & RING_DESC_F_NEXT)
        return Fail(v, "indirect-with-next", Fmt("descriptor %u has INDIRECT and NEXT", at));
      if (d.len == 0 || d.len % RING_DESC_SIZE != 0 || d.len / RING_DESC_SIZE > kMaxIndirectEntries)
        return Fail(v, "indirect-bad-len", Fmt("descriptor %u: indirect table len %u", at, d.len));
      // The table may cross from one region into the next: then its entries
      // are read one by one (each copy checked again by Read).
      const uint8_t* t = mem_.Contiguous(d.addr, d.len);
      if (!t && !mem_.Covers(d.addr, d.len))
        return Fail(v, "indirect-out-of-bounds",
                    Fmt("descriptor %u: indirect table [0x%" PRIx64 ", +%u) outside guest memory", at, d.addr,
                        d.len));
      // The indirect descriptor ends the chain in the main table; the walk
      // continues at entry 0 of the indirect table, which has its own loop bound.
      table_entries_ = visited_;  // the main table's part ends with this descriptor
      table_ = t;
      indirect_addr_ = d.addr;
      table_size_ = d.len / RING_DESC_SIZE;
      index_ = 0;
      visited_ = 0;
      in_indirect_ = true;
      continue;
    }

    uint8_t* host = mem_.Contiguous(d.addr, d.len);
    if (!host && !mem_.Covers(d.addr, d.len))
      return Fail(v, "desc-out-of-bounds",
                  Fmt("%s entry %u: buffer [0x%" PRIx64 ", +%u) is not in guest memory (outside every region, "
                      "or across a hole between regions)",
                      where, at, d.addr, d.len));
    if (d.flags & RING_DESC_F_NEXT)
      index_ = d.next;
    else
      done_ = true;
    out->addr = d.addr;
    out->len = d.len;
    out->host = host;
    out->writable = (d.flags & RING_DESC_F_WRITE) != 0;
    return Step::kBuffer;
  }
}

// ---- layout checks ------------------------------------------------------------

namespace {

struct Part {
  const char* name;
  uint64_t addr, len;
  uint8_t* host;
};

bool Overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen) {
  // Each range lies inside one region, so neither end wraps.
  return a < b + blen && b < a + alen;
}

// Resolves the three parts of `l` in `mem`; false with the violation filled in.
bool ResolveParts(const MemoryTable& mem, const QueueLayout& l, Part parts[3], Violation* v) {
  v->rule = "ring-out-of-bounds";
  if (l.packed) {
    // A packed ring's size need not be a power of two (virtio 1.x §2.8.10).
    if (l.size == 0 || l.size > RING_MAX_SIZE) {
      v->detail = Fmt("packed queue size %u is not in 1..%u", l.size, RING_MAX_SIZE);
      return false;
    }
  } else if (l.size == 0 || l.size > RING_MAX_SIZE || (l.size & (l.size - 1)) != 0) {
    v->detail = Fmt("queue size %u is not a power of two in 1..%u", l.size, RING_MAX_SIZE);
    return false;
  }
  // Packed: descriptor ring, driver and device event areas (§2.8.10.1).
  const uint64_t avail_align = l.packed ? 4 : 2;
  const char* names[3] = {"desc", l.packed ? "driver event" : "avail", l.packed ? "device event" : "used"};
  const struct {
    const char* name;
    uint64_t addr, align;
  } aligns[] = {{names[0], l.desc, 16}, {names[1], l.avail, avail_align}, {names[2], l.used, 4}};
  for (const auto& a : aligns) {
    if (a.addr % a.align) {
      v->detail = Fmt("%s ring address 0x%" PRIx64 " is not %" PRIu64 "-byte aligned", a.name, a.addr, a.align);
      return false;
    }
  }
  parts[0] = {names[0], l.desc, l.desc_bytes(), nullptr};
  parts[1] = {names[1], l.avail, l.avail_bytes(), nullptr};
  parts[2] = {names[2], l.used, l.used_bytes(), nullptr};
  for (int i = 0; i < 3; i++) {
    Part& p = parts[i];
    p.host = mem.Contiguous(p.addr, p.len);
    if (!p.host) {
      v->detail = Fmt("%s ring [0x%" PRIx64 ", +%" PRIu64 ") lies outside guest memory (each ring part must lie "
                      "inside one region)",
                      p.name, p.addr, p.len);
      return false;
    }
    // Ring words are accessed atomically, which needs host alignment too.
    const uintptr_t align = i == 0 ? 16 : i == 1 ? avail_align : 4;
    if (reinterpret_cast<uintptr_t>(p.host) % align != 0) {
      v->detail = Fmt("%s ring maps to host memory not %zu-byte aligned (a region's host mapping is misaligned)",
                      p.name, static_cast<size_t>(align));
      return false;
    }
  }
  v->rule = nullptr;
  return true;
}

bool PartsOverlap(const Part& a, const Part& b, const char* qa, const char* qb, Violation* v) {
  const bool guest = Overlap(a.addr, a.len, b.addr, b.len);
  const uintptr_t ha = reinterpret_cast<uintptr_t>(a.host), hb = reinterpret_cast<uintptr_t>(b.host);
  const bool host = ha < hb + b.len && hb < ha + a.len;
  if (!guest && !host) return false;
  v->rule = "ring-overlap";
  v->detail = Fmt("%s%s ring [0x%" PRIx64 ", +%" PRIu64 ") overlaps %s%s ring [0x%" PRIx64 ", +%" PRIu64 ")%s", qa,
                  a.name, a.addr, a.len, qb, b.name, b.addr, b.len, guest ? "" : " in host memory");
  return true;
}

}  // namespace

bool CheckLayout(const MemoryTable& mem, const QueueLayout& l, Violation* v) { return CheckLayouts(mem, &l, 1, v); }

bool CheckLayouts(const MemoryTable& mem, const QueueLayout* ls, size_t n, Violation* v) {
  std::vector<Part> all;
  std::vector<std::string> names;
  all.reserve(3 * n);
  for (size_t q = 0; q < n; q++) {
    Part parts[3];
    if (!ResolveParts(mem, ls[q], parts, v)) {
      if (n > 1) v->detail = Fmt("queue %zu: ", q) + v->detail;
      return false;
    }
    all.insert(all.end(), parts, parts + 3);
  }
  for (size_t i = 0; i < all.size(); i++) {
    for (size_t j = i + 1; j < all.size(); j++) {
      const std::string qi = n > 1 ? Fmt("queue %zu's ", i / 3) : "";
      const std::string qj = n > 1 ? Fmt("queue %zu's ", j / 3) : "";
      if (PartsOverlap(all[i], all[j], qi.c_str(), qj.c_str(), v)) return false;
    }
  }
  return true;
}

// ---- SplitQueue -----------------------------------------------------------------

bool SplitQueue::Init(const MemoryTable& mem, const QueueLayout& l, bool event_idx, bool indirect_ok,
                      uint16_t last_avail, uint16_t used_idx, Violation* v) {
  layout_ = l;
  event_idx_ = event_idx;
  indirect_ok_ = indirect_ok;
  last_avail_ = last_avail;
  used_idx_ = used_idx;
  signalled_used_ = used_idx;
  notify_disabled_ = false;
  in_order_next_ = kNoHead;
  batch_n_ = 0;
  if (l.packed) {
    v->rule = "ring-out-of-bounds";
    v->detail = "a packed ring layout given to the split ring";
    return false;
  }
  return Remap(mem, v);
}

bool SplitQueue::Remap(const MemoryTable& mem, Violation* v) {
  if (!CheckLayout(mem, layout_, v)) {
    mem_ = nullptr;
    desc_ = avail_ = used_ = nullptr;
    return false;
  }
  mem_ = &mem;
  desc_ = mem.Contiguous(layout_.desc, layout_.desc_bytes());
  avail_ = mem.Contiguous(layout_.avail, layout_.avail_bytes());
  used_ = mem.Contiguous(layout_.used, layout_.used_bytes());
  return true;
}

SplitQueue::Pop SplitQueue::PopAvail(uint16_t* head, Violation* v) {
  // Acquire pairs with the driver's release of avail.idx: ring entries and
  // descriptors it wrote before are visible after this load.
  const uint16_t avail_idx = Load16(avail_ + 2, __ATOMIC_ACQUIRE);
  const uint16_t pending = static_cast<uint16_t>(avail_idx - last_avail_);
  if (pending == 0) return Pop::kEmpty;
  if (pending > layout_.size) {
    v->rule = "avail-idx-jump";
    v->detail = Fmt("avail.idx %u is %u entries past the device's %u (queue size %u)", avail_idx, pending,
                    last_avail_, layout_.size);
    return Pop::kBroken;
  }
  const uint16_t slot = last_avail_ & (layout_.size - 1);
  const uint16_t h = Load16(avail_ + kRingHeader + 2u * slot, __ATOMIC_RELAXED);
  if (h >= layout_.size) {
    v->rule = "desc-index-out-of-range";
    v->detail = Fmt("avail ring slot %u holds head %u >= queue size %u", slot, h, layout_.size);
    return Pop::kBroken;
  }
  last_avail_++;
  *head = h;
  return Pop::kChain;
}

SplitQueue::Pop SplitQueue::PopOrArm(uint16_t* head, Violation* v) {
  Pop p = PopAvail(head, v);
  if (p != Pop::kEmpty || !EnableNotify()) return p;
  DisableNotify();
  p = PopAvail(head, v);
  if (p != Pop::kEmpty) return p;
  // EnableNotify() saw avail.idx != last_avail and now it equals it again. A
  // driver only moves avail.idx forward, by at most the queue size, so that
  // cannot happen; looping on it could (a ring whose used flags alias its
  // avail.idx would flip between the two forever).
  v->rule = "avail-idx-backwards";
  v->detail = Fmt("avail.idx moved back to %u while the device re-enabled notifications", last_avail_);
  return Pop::kBroken;
}

bool SplitQueue::ReadChain(uint16_t head, bool want_writable, uint32_t min_bytes, size_t max_iov, Chain* out,
                           Violation* v) {
  DescriptorChain chain = Walk(head);
  if (!CollectChain(*mem_, chain, head, want_writable, min_bytes, max_iov, out, v)) return false;
  if (in_order_) {
    // IN_ORDER (§2.7.9): the driver uses descriptors in table order, so each
    // chain starts where the previous one ended.
    if (in_order_next_ != kNoHead && head != in_order_next_) {
      v->rule = "in-order-head";
      v->detail = Fmt("chain at head %u, but with IN_ORDER the next chain starts at %u", head, in_order_next_);
      return false;
    }
    in_order_next_ = (head + chain.table_entries()) & (layout_.size - 1);
  }
  return true;
}

bool SplitQueue::ReadTxChain(uint16_t head, uint32_t min_bytes, Chain* out, Violation* v) {
  return ReadChain(head, false, min_bytes, SIZE_MAX, out, v);
}

bool SplitQueue::ReadRxChain(uint16_t head, uint32_t min_bytes, size_t max_iov, Chain* out, Violation* v) {
  return ReadChain(head, true, min_bytes, max_iov, out, v);
}

void SplitQueue::AddUsedInOrder(uint32_t id, uint32_t len) {
  if (len == 0) {
    // One element for the batch, at its first slot, naming its last chain
    // (§2.7.9): the driver frees every chain up to that one.
    if (batch_n_ == 0) batch_start_ = used_idx_;
    batch_n_++;
    batch_id_ = id;
    used_idx_++;
    return;
  }
  CloseInOrderBatch();
  uint8_t* e = used_ + kRingHeader + uint64_t{RING_USED_ELEM_SIZE} * (used_idx_ & (layout_.size - 1));
  Store32(e, id);
  Store32(e + 4, len);
  used_idx_++;
}

void SplitQueue::AddUsed(uint32_t id, uint32_t len) {
  // IN_ORDER apart, so that the plain path stays as short as it was.
  if (__builtin_expect(in_order_, false)) return AddUsedInOrder(id, len);
  uint8_t* e = used_ + kRingHeader + uint64_t{RING_USED_ELEM_SIZE} * (used_idx_ & (layout_.size - 1));
  Store32(e, id);
  Store32(e + 4, len);
  used_idx_++;
}

void SplitQueue::CloseInOrderBatch() {
  if (batch_n_ == 0) return;
  uint8_t* e = used_ + kRingHeader + uint64_t{RING_USED_ELEM_SIZE} * (batch_start_ & (layout_.size - 1));
  Store32(e, batch_id_);
  Store32(e + 4, 0);
  batch_n_ = 0;
}

bool SplitQueue::PublishUsed() {
  if (batch_n_ != 0) CloseInOrderBatch();
  if (used_idx_ == signalled_used_ || !used_) return false;
  // Release: the elements (and the buffer contents written before them) are
  // visible to a driver that acquires used.idx.
  Store16(used_ + 2, used_idx_, __ATOMIC_RELEASE);
  // Full fence: our used.idx store must be ordered before our read of the
  // driver's used_event/flags, or both sides may decide nobody needs waking.
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  const uint16_t old_idx = signalled_used_;
  signalled_used_ = used_idx_;
  if (event_idx_) {
    const uint16_t event = Load16(avail_ + kRingHeader + 2u * layout_.size, __ATOMIC_RELAXED);
    return NeedEvent(event, used_idx_, old_idx);
  }
  return (Load16(avail_, __ATOMIC_RELAXED) & RING_AVAIL_F_NO_INTERRUPT) == 0;
}

uint16_t SplitQueue::UntilUsedEvent() const {
  if (!event_idx_ || !avail_) return 0;
  const uint16_t event = Load16(avail_ + kRingHeader + 2u * layout_.size, __ATOMIC_RELAXED);
  const uint16_t d = static_cast<uint16_t>(event + 1 - used_idx_);
  // Beyond the ring: used_event is behind us (passed, or interrupts off).
  return d <= layout_.size ? d : 0;
}

void SplitQueue::DisableNotify() {
  if (notify_disabled_) return;
  notify_disabled_ = true;
  // With EVENT_IDX, leaving avail_event where it is already suppresses kicks
  // until the driver passes it, which it does only after we stop reading.
  if (!event_idx_) Store16(used_, RING_USED_F_NO_NOTIFY, __ATOMIC_RELAXED);
}

bool SplitQueue::EnableNotify() {
  notify_disabled_ = false;
  if (event_idx_)
    Store16(used_ + kRingHeader + uint64_t{RING_USED_ELEM_SIZE} * layout_.size, last_avail_, __ATOMIC_RELAXED);
  else
    Store16(used_, 0, __ATOMIC_RELAXED);
  // Full fence: the re-enable must be visible before we look at avail.idx
  // again; otherwise a driver that added buffers and saw notifications still
  // off would not kick, and we would sleep with work pending.
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  return Load16(avail_ + 2, __ATOMIC_ACQUIRE) != last_avail_;
}

}  // namespace vt
