// The region table (see memory.h): building and checking it, and the
// translations. A guest controls every address and length that reaches these
// functions, so each one is written so that no sum can wrap around 2^64.
#include "memory.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>

namespace vt {

namespace {

std::string Hex(uint64_t v) {
  char b[24];
  snprintf(b, sizeof b, "0x%" PRIx64, v);
  return b;
}

// Region end, exclusive; Make() guarantees guest_addr + size does not wrap.
inline uint64_t End(const Region& r) { return r.guest_addr + r.size; }

}  // namespace

std::shared_ptr<const MemoryTable> MemoryTable::Make(std::vector<Region> regions,
                                                     std::vector<std::shared_ptr<void>> owners, std::string* why) {
  if (regions.empty()) {
    *why = "guest memory needs at least one region";
    return nullptr;
  }
  if (regions.size() > kMaxRegions) {
    *why = std::to_string(regions.size()) + " regions; at most " + std::to_string(kMaxRegions) + " are supported";
    return nullptr;
  }
  std::sort(regions.begin(), regions.end(),
            [](const Region& a, const Region& b) { return a.guest_addr < b.guest_addr; });
  uint64_t total = 0;
  for (size_t i = 0; i < regions.size(); i++) {
    const Region& r = regions[i];
    if (r.size == 0 || r.host == nullptr) {
      *why = "region at guest address " + Hex(r.guest_addr) + " is empty";
      return nullptr;
    }
    if (r.size > UINT64_MAX - r.guest_addr) {
      *why = "region at guest address " + Hex(r.guest_addr) + " of " + std::to_string(r.size) +
             " bytes runs past the end of the 64-bit address space";
      return nullptr;
    }
    if (r.user_addr != 0 && r.size > UINT64_MAX - r.user_addr) {
      *why = "region at guest address " + Hex(r.guest_addr) + ": user address " + Hex(r.user_addr) + " + size wraps";
      return nullptr;
    }
    if (i > 0 && r.guest_addr < End(regions[i - 1])) {
      *why = "regions overlap: [" + Hex(regions[i - 1].guest_addr) + ", " + Hex(End(regions[i - 1])) + ") and [" +
             Hex(r.guest_addr) + ", " + Hex(End(r)) + ")";
      return nullptr;
    }
    total += r.size;  // cannot wrap: the ranges are disjoint inside 2^64
  }
  std::shared_ptr<MemoryTable> t(new MemoryTable());
  t->regions_ = std::move(regions);
  t->owners_ = std::move(owners);
  t->total_ = total;
  return t;
}

const Region* MemoryTable::Find(uint64_t gpa) const {
  // The last region starting at or below gpa is the only candidate.
  auto it = std::upper_bound(regions_.begin(), regions_.end(), gpa,
                             [](uint64_t a, const Region& r) { return a < r.guest_addr; });
  if (it == regions_.begin()) return nullptr;
  --it;
  return gpa - it->guest_addr < it->size ? &*it : nullptr;
}

uint8_t* MemoryTable::Contiguous(uint64_t gpa, uint64_t len) const {
  // One region covers nearly every lookup: no search.
  const Region* r = regions_.size() == 1 ? &regions_[0] : Find(gpa);
  if (!r || gpa < r->guest_addr) return nullptr;
  const uint64_t off = gpa - r->guest_addr;
  if (off > r->size || len > r->size - off) return nullptr;
  return r->host + off;
}

MemoryTable::Span MemoryTable::AppendIov(uint64_t gpa, uint64_t len, std::vector<iovec>* out, size_t room) const {
  if (len == 0) return Span::kOk;
  if (!Covers(gpa, len)) return Span::kHole;
  while (len > 0) {
    if (room == 0) return Span::kTooMany;
    const Region* r = Find(gpa);  // Covers() said it exists
    const uint64_t off = gpa - r->guest_addr;
    const uint64_t n = std::min(len, r->size - off);
    out->push_back(iovec{r->host + off, static_cast<size_t>(n)});
    room--;
    len -= n;
    gpa += n;  // cannot wrap: Covers() checked the whole range
  }
  return Span::kOk;
}

bool MemoryTable::Covers(uint64_t gpa, uint64_t len) const {
  if (len == 0) return true;
  if (len - 1 > UINT64_MAX - gpa) return false;  // the range would wrap
  const Region* r = Find(gpa);
  for (;;) {
    if (!r) return false;
    const uint64_t off = gpa - r->guest_addr;
    const uint64_t n = r->size - off;
    if (len <= n) return true;
    // Continues only into a region that starts exactly where this one ends.
    const size_t next = static_cast<size_t>(r - regions_.data()) + 1;
    if (next == regions_.size() || regions_[next].guest_addr != End(*r)) return false;
    len -= n;
    gpa = End(*r);
    r = &regions_[next];
  }
}

bool MemoryTable::Read(uint64_t gpa, void* dst, size_t len) const {
  if (!Covers(gpa, len)) return false;
  uint8_t* d = static_cast<uint8_t*>(dst);
  while (len > 0) {
    const Region* r = Find(gpa);
    const uint64_t off = gpa - r->guest_addr;
    const size_t n = static_cast<size_t>(std::min<uint64_t>(len, r->size - off));
    memcpy(d, r->host + off, n);
    d += n;
    len -= n;
    gpa += n;
  }
  __atomic_signal_fence(__ATOMIC_SEQ_CST);
  return true;
}

bool MemoryTable::UserToGuest(uint64_t uva, uint64_t len, uint64_t* gpa) const {
  for (const Region& r : regions_) {
    if (r.user_addr == 0 || uva < r.user_addr) continue;
    const uint64_t off = uva - r.user_addr;
    if (off >= r.size || len > r.size - off) continue;
    *gpa = r.guest_addr + off;
    return true;
  }
  return false;
}

}  // namespace vt
