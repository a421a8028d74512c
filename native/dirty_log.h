// The dirty-page log of live migration (vhost-user VHOST_F_LOG_ALL with
// LOG_SHMFD): a bitmap in memory shared with the front end, one bit per 4 KiB
// guest-physical page, that the device sets for every page it writes while
// the guest's memory is being copied elsewhere. The front end reads and
// clears it concurrently, so bits are only ever set, with an atomic OR, and
// only after the write they stand for. Plain C++ (no Node).
#pragma once
#include <sys/uio.h>

#include <cstdint>
#include <atomic>
#include <memory>

#include "memory.h"

namespace vt {

// The log's page: fixed by the protocol, whatever the host's page size.
constexpr uint64_t kLogPageShift = 12;

// Log bytes needed to cover guest-physical addresses [0, end).
inline uint64_t DirtyLogBytesFor(uint64_t end) {
  const uint64_t pages = (end >> kLogPageShift) + ((end & ((1ull << kLogPageShift) - 1)) ? 1 : 0);
  return (pages + 7) / 8;
}

class DirtyLog {
 public:
  // `bits` points at `bytes` bytes of log; `owner` keeps them mapped.
  DirtyLog(uint8_t* bits, uint64_t bytes, std::shared_ptr<void> owner)
      : bits_(bits), bytes_(bytes), owner_(std::move(owner)) {}

  // Marks every page [gpa, gpa + len) touches. A page beyond the log (a
  // front end that sized it for less memory than it gave) is left out and
  // counted: the log is never written outside its bounds.
  void Mark(uint64_t gpa, uint64_t len) const {
    if (len == 0) return;
    const uint64_t last = gpa + len - 1 < gpa ? UINT64_MAX : gpa + len - 1;
    uint64_t page = gpa >> kLogPageShift;
    const uint64_t end_page = last >> kLogPageShift;
    for (; page <= end_page; page++) {
      const uint64_t byte = page >> 3;
      if (byte >= bytes_) {
        beyond_.fetch_add(end_page - page + 1, std::memory_order_relaxed);
        return;
      }
      // Whole bytes at once where the range covers them (large RX buffers).
      if ((page & 7) == 0 && end_page - page >= 7) {
        __atomic_fetch_or(bits_ + byte, uint8_t{0xff}, __ATOMIC_RELAXED);
        page += 7;
        continue;
      }
      __atomic_fetch_or(bits_ + byte, static_cast<uint8_t>(1u << (page & 7)), __ATOMIC_RELAXED);
    }
  }

  // Marks the first `bytes` bytes of iovecs pointing into `mem` (each iovec
  // lies inside one region, as the chain readers build them).
  void MarkIov(const MemoryTable& mem, const iovec* iov, size_t cnt, uint64_t bytes) const {
    for (size_t i = 0; i < cnt && bytes > 0; i++) {
      const uint64_t n = iov[i].iov_len < bytes ? iov[i].iov_len : bytes;
      uint64_t gpa;
      if (mem.HostToGuest(static_cast<const uint8_t*>(iov[i].iov_base), &gpa)) Mark(gpa, n);
      bytes -= n;
    }
  }

  uint64_t bytes() const { return bytes_; }
  // Pages written outside the log's bounds (not marked).
  uint64_t beyond() const { return beyond_.load(std::memory_order_relaxed); }

 private:
  uint8_t* bits_;
  uint64_t bytes_;
  std::shared_ptr<void> owner_;
  mutable std::atomic<uint64_t> beyond_{0};
};

}  // namespace vt
