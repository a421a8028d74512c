// Split virtqueue device side (see virtqueue.h): the descriptor walker with
// its validation, avail/used ring access and the notification rules, with the
// memory ordering DESIGN.md prescribes.
#include "virtqueue.h"

#include <cinttypes>
#include <cstdarg>
#include <cstdio>

namespace vt {

namespace {

// Largest indirect table the spec allows: it may not hold more descriptors
// than the largest queue.
constexpr uint32_t kMaxIndirectEntries = RING_MAX_SIZE;

// Ring field offsets (virtio 1.x §2.7.6, §2.7.8).
constexpr uint64_t kRingHeader = 4;  // flags u16, idx u16

std::string Fmt(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string Fmt(const char* fmt, ...) {
  char buf[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return buf;
}

// Index and flag fields are naturally aligned (checked at Init), so they can be
// accessed atomically; the driver side uses Atomics on the same words.
inline uint16_t Load16(const uint8_t* p, int order) {
  return Le16(__atomic_load_n(reinterpret_cast<const uint16_t*>(p), order));
}
inline void Store16(uint8_t* p, uint16_t v, int order) {
  __atomic_store_n(reinterpret_cast<uint16_t*>(p), ToLe16(v), order);
}
inline void Store32(uint8_t* p, uint32_t v) {
  __atomic_store_n(reinterpret_cast<uint32_t*>(p), ToLe32(v), __ATOMIC_RELAXED);
}

// vring_need_event from the spec: has `event` been passed by moving from old to new?
inline bool NeedEvent(uint16_t event, uint16_t new_idx, uint16_t old_idx) {
  return static_cast<uint16_t>(new_idx - event - 1) < static_cast<uint16_t>(new_idx - old_idx);
}

Descriptor ReadDescriptor(const uint8_t* p) {
  uint8_t raw[RING_DESC_SIZE];
  ReadOnce(raw, p, sizeof raw);
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

DescriptorChain::DescriptorChain(const GuestMemory& mem, const uint8_t* table, uint32_t table_size,
                                 uint16_t head, bool indirect_ok)
    : mem_(mem), table_(table), table_size_(table_size), index_(head), indirect_ok_(indirect_ok) {}

DescriptorChain::Step DescriptorChain::Fail(Violation* v, const char* rule, std::string detail) {
  v->rule = rule;
  v->detail = std::move(detail);
  done_ = true;
  return Step::kBroken;
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
    const Descriptor d = ReadDescriptor(table_ + static_cast<uint64_t>(index_) * RING_DESC_SIZE);
    const uint32_t at = index_;

    if (d.flags & RING_DESC_F_INDIRECT) {
      if (in_indirect_)
        return Fail(v, "nested-indirect", Fmt("indirect descriptor at index %u of an indirect table", at));
      if (!indirect_ok_)
        return Fail(v, "indirect-not-negotiated", Fmt("descriptor %u is INDIRECT", at));
      if (d.flags & RING_DESC_F_NEXT)
        return Fail(v, "indirect-with-next", Fmt("descriptor %u has INDIRECT and NEXT", at));
      if (d.len == 0 || d.len % RING_DESC_SIZE != 0 || d.len / RING_DESC_SIZE > kMaxIndirectEntries)
        return Fail(v, "indirect-bad-len", Fmt("descriptor %u: indirect table len %u", at, d.len));
      const uint8_t* t = mem_.Translate(d.addr, d.len);
      if (!t)
        return Fail(v, "indirect-out-of-bounds",
                    Fmt("descriptor %u: indirect table [0x%" PRIx64 ", +%u) outside guest memory", at,
                        d.addr, d.len));
      // The indirect descriptor ends the chain in the main table; the walk
      // continues at entry 0 of the indirect table, which has its own loop bound.
      table_ = t;
      table_size_ = d.len / RING_DESC_SIZE;
      index_ = 0;
      visited_ = 0;
      in_indirect_ = true;
      continue;
    }

    uint8_t* host = mem_.Translate(d.addr, d.len);
    if (!host)
      return Fail(v, "desc-out-of-bounds",
                  Fmt("%s entry %u: buffer [0x%" PRIx64 ", +%u) outside guest memory (%" PRIu64 " bytes)",
                      where, at, d.addr, d.len, mem_.len));
    if (d.flags & RING_DESC_F_NEXT)
      index_ = d.next;
    else
      done_ = true;
    out->host = host;
    out->len = d.len;
    out->writable = (d.flags & RING_DESC_F_WRITE) != 0;
    return Step::kBuffer;
  }
}

// ---- SplitQueue -----------------------------------------------------------------

bool SplitQueue::Init(const GuestMemory& mem, const QueueLayout& l, bool event_idx, bool indirect_ok,
                      uint16_t last_avail, uint16_t used_idx, Violation* v) {
  v->rule = "ring-out-of-bounds";
  if (l.size == 0 || l.size > RING_MAX_SIZE || (l.size & (l.size - 1)) != 0) {
    v->detail = Fmt("queue size %u is not a power of two in 1..%u", l.size, RING_MAX_SIZE);
    return false;
  }
  if (l.desc % 16 || l.avail % 2 || l.used % 4) {
    v->detail = Fmt("misaligned ring: desc 0x%" PRIx64 " (16), avail 0x%" PRIx64 " (2), used 0x%" PRIx64 " (4)",
                    l.desc, l.avail, l.used);
    return false;
  }
  const uint64_t event = event_idx ? 2 : 0;
  const uint64_t desc_len = uint64_t{RING_DESC_SIZE} * l.size;
  const uint64_t avail_len = kRingHeader + 2ull * l.size + event;
  const uint64_t used_len = kRingHeader + uint64_t{RING_USED_ELEM_SIZE} * l.size + event;
  desc_ = mem.Translate(l.desc, desc_len);
  avail_ = mem.Translate(l.avail, avail_len);
  used_ = mem.Translate(l.used, used_len);
  if (!desc_ || !avail_ || !used_) {
    v->detail = Fmt("ring part outside guest memory (%" PRIu64 " bytes): desc 0x%" PRIx64 "+%" PRIu64
                    ", avail 0x%" PRIx64 "+%" PRIu64 ", used 0x%" PRIx64 "+%" PRIu64,
                    mem.len, l.desc, desc_len, l.avail, avail_len, l.used, used_len);
    return false;
  }
  // Atomic accesses to ring words need host alignment too, not just guest
  // alignment; a SharedArrayBuffer's base is page-aligned, but say it here.
  if (reinterpret_cast<uintptr_t>(mem.base) % 16 != 0) {
    v->detail = "guest memory base is not 16-byte aligned";
    return false;
  }
  v->rule = nullptr;
  mem_ = mem;
  size_ = l.size;
  event_idx_ = event_idx;
  indirect_ok_ = indirect_ok;
  last_avail_ = last_avail;
  used_idx_ = used_idx;
  signalled_used_ = used_idx;
  return true;
}

SplitQueue::Pop SplitQueue::PopAvail(uint16_t* head, Violation* v) {
  // Acquire pairs with the driver's release of avail.idx: ring entries and
  // descriptors it wrote before are visible after this load.
  const uint16_t avail_idx = Load16(avail_ + 2, __ATOMIC_ACQUIRE);
  const uint16_t pending = static_cast<uint16_t>(avail_idx - last_avail_);
  if (pending == 0) return Pop::kEmpty;
  if (pending > size_) {
    v->rule = "avail-idx-jump";
    v->detail = Fmt("avail.idx %u is %u entries past the device's %u (queue size %u)", avail_idx, pending,
                    last_avail_, size_);
    return Pop::kBroken;
  }
  const uint16_t h = Load16(avail_ + kRingHeader + 2u * (last_avail_ & (size_ - 1)), __ATOMIC_RELAXED);
  if (h >= size_) {
    v->rule = "desc-index-out-of-range";
    v->detail = Fmt("avail ring slot %u holds head %u >= queue size %u", last_avail_ & (size_ - 1), h, size_);
    return Pop::kBroken;
  }
  last_avail_++;
  *head = h;
  return Pop::kChain;
}

bool SplitQueue::ReadChain(uint16_t head, bool want_writable, uint32_t min_bytes, size_t max_iov, Chain* out,
                           Violation* v) {
  out->head = head;
  out->iov.clear();
  out->bytes = 0;
  DescriptorChain chain(mem_, desc_, size_, head, indirect_ok_);
  bool seen_writable = false;
  uint64_t total = 0;  // every byte the chain names, kept even where iovecs are capped
  Buffer b;
  for (;;) {
    DescriptorChain::Step s = chain.Next(&b, v);
    if (s == DescriptorChain::Step::kBroken) {
      v->detail = Fmt("chain at head %u: ", head) + v->detail;
      return false;
    }
    if (s == DescriptorChain::Step::kEnd) break;
    if (b.writable) {
      if (!want_writable) {
        v->rule = "writable-on-tx";
        v->detail = Fmt("chain at head %u has a device-writable buffer", head);
        return false;
      }
      seen_writable = true;
    } else if (want_writable) {
      // A readable buffer after a writable one breaks the general ordering
      // rule; one before any writable buffer is RX-specific (RX is all writable).
      v->rule = seen_writable ? "readable-after-writable" : "readable-on-rx";
      v->detail = Fmt("chain at head %u has a device-readable buffer%s", head,
                      seen_writable ? " after a writable one" : "");
      return false;
    }
    total += b.len;
    if (b.len == 0 || out->iov.size() >= max_iov) continue;
    out->iov.push_back(iovec{b.host, b.len});
    out->bytes += b.len;
  }
  if (total == 0) {
    v->rule = "empty-chain";
    v->detail = Fmt("chain at head %u has no bytes", head);
    return false;
  }
  if (out->bytes < min_bytes) {
    v->rule = "header-too-short";
    v->detail = Fmt("chain at head %u holds %" PRIu64 " bytes, less than the %u-byte net header", head,
                    out->bytes, min_bytes);
    return false;
  }
  return true;
}

bool SplitQueue::ReadTxChain(uint16_t head, uint32_t min_bytes, Chain* out, Violation* v) {
  return ReadChain(head, false, min_bytes, SIZE_MAX, out, v);
}

bool SplitQueue::ReadRxChain(uint16_t head, uint32_t min_bytes, size_t max_iov, Chain* out, Violation* v) {
  return ReadChain(head, true, min_bytes, max_iov, out, v);
}

void SplitQueue::AddUsed(uint32_t id, uint32_t len) {
  uint8_t* e = used_ + kRingHeader + uint64_t{RING_USED_ELEM_SIZE} * (used_idx_ & (size_ - 1));
  Store32(e, id);
  Store32(e + 4, len);
  used_idx_++;
}

bool SplitQueue::PublishUsed() {
  if (used_idx_ == signalled_used_) return false;
  // Release: the elements (and the buffer contents written before them) are
  // visible to a driver that acquires used.idx.
  Store16(used_ + 2, used_idx_, __ATOMIC_RELEASE);
  // Full fence: our used.idx store must be ordered before our read of the
  // driver's used_event/flags, or both sides may decide nobody needs waking.
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  const uint16_t old_idx = signalled_used_;
  signalled_used_ = used_idx_;
  if (event_idx_) {
    const uint16_t event = Load16(avail_ + kRingHeader + 2u * size_, __ATOMIC_RELAXED);
    return NeedEvent(event, used_idx_, old_idx);
  }
  return (Load16(avail_, __ATOMIC_RELAXED) & RING_AVAIL_F_NO_INTERRUPT) == 0;
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
    Store16(used_ + kRingHeader + uint64_t{RING_USED_ELEM_SIZE} * size_, last_avail_, __ATOMIC_RELAXED);
  else
    Store16(used_, 0, __ATOMIC_RELAXED);
  // Full fence: the re-enable must be visible before we look at avail.idx
  // again; otherwise a driver that added buffers and saw notifications still
  // off would not kick, and we would sleep with work pending.
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  return Load16(avail_ + 2, __ATOMIC_ACQUIRE) != last_avail_;
}

}  // namespace vt
