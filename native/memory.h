// Guest memory as the device sees it: a table of regions and the one checked
// translation from guest addresses to host memory. Every guest access in
// native/ goes through a MemoryTable; nothing else does arithmetic on guest
// addresses. Plain C++ (no Node): the addon, the fuzzers and the C++ unit
// tests link the same code.
#pragma once
#include <endian.h>
#include <sys/uio.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace vt {

// One stretch of guest-physical memory and where it is mapped in this process.
struct Region {
  uint64_t guest_addr = 0;
  uint64_t size = 0;
  uint8_t* host = nullptr;
  // The front end's own virtual address of the region (vhost-user: ring
  // addresses arrive in that space); 0 when there is none (embedded guests).
  uint64_t user_addr = 0;
};

// vhost-user front ends send at most 8 regions without CONFIGURE_MEM_SLOTS and
// QEMU's slot limit is far below this; the cap only keeps a hostile table from
// making every lookup slow.
constexpr size_t kMaxRegions = 256;

// An immutable region table: sorted by guest address, non-overlapping, no
// region empty or wrapping around 2^64. Shared (shared_ptr) between the JS
// thread and the workers; replaced whole, never modified.
class MemoryTable {
 public:
  // Builds a table from regions in any order. `owners` keep the host memory
  // alive for as long as the table lives (a vhost-user mapping is unmapped by
  // its owner's deleter). On a bad table returns nullptr and says why.
  static std::shared_ptr<const MemoryTable> Make(std::vector<Region> regions,
                                                 std::vector<std::shared_ptr<void>> owners, std::string* why);

  // Host pointer for [gpa, gpa + len) when every byte lies in one region;
  // nullptr otherwise. Ring parts must be contiguous like this.
  uint8_t* Contiguous(uint64_t gpa, uint64_t len) const;

  enum class Span { kOk, kHole, kTooMany };
  // Appends iovecs covering [gpa, gpa + len), one per region it touches (a
  // buffer that crosses from one region into the next adjacent one becomes
  // several, as vhost's translate_desc does), adding at most `room` entries.
  // kHole: some byte is in no region (nothing appended); kTooMany: `room` ran
  // out (the entries that fit are appended). len 0 appends nothing.
  Span AppendIov(uint64_t gpa, uint64_t len, std::vector<iovec>* out, size_t room) const;
  // Whether every byte of [gpa, gpa + len) lies in some region.
  bool Covers(uint64_t gpa, uint64_t len) const;
  // Copies [gpa, gpa + len) into dst, across adjacent regions; false at a hole
  // (dst then holds garbage). Followed by a compiler barrier, see ReadOnce.
  bool Read(uint64_t gpa, void* dst, size_t len) const;

  // vhost-user: the guest address of front-end virtual address `uva` when
  // [uva, uva + len) lies inside one region's user mapping.
  bool UserToGuest(uint64_t uva, uint64_t len, uint64_t* gpa) const;
  // The guest address of host byte `p` when it lies in some region: how the
  // dirty log learns which page an iovec the device wrote through belongs to.
  bool HostToGuest(const uint8_t* p, uint64_t* gpa) const {
    for (const Region& r : regions_) {
      if (p >= r.host && static_cast<uint64_t>(p - r.host) < r.size) {
        *gpa = r.guest_addr + static_cast<uint64_t>(p - r.host);
        return true;
      }
    }
    return false;
  }
  // One past the highest guest-physical address of any region.
  uint64_t guest_end() const { return regions_.empty() ? 0 : regions_.back().guest_addr + regions_.back().size; }

  const std::vector<Region>& regions() const { return regions_; }
  uint64_t total_bytes() const { return total_; }

 private:
  MemoryTable() = default;
  // The region holding byte `gpa`, or nullptr.
  const Region* Find(uint64_t gpa) const;

  std::vector<Region> regions_;
  std::vector<std::shared_ptr<void>> owners_;
  uint64_t total_ = 0;
};

// The current table of one guest, shared by the device's workers, its control
// queue and the JS thread. Set() replaces it from any thread; a reader that
// sees a new generation() takes the new table with Get() at its next batch
// boundary. The old table, and what its owners keep mapped, lives until the
// last reader drops it.
class DirtyLog;

class MemorySlot {
 public:
  void Set(std::shared_ptr<const MemoryTable> t) {
    std::atomic_store_explicit(&table_, std::move(t), std::memory_order_release);
    gen_.fetch_add(1, std::memory_order_release);
  }
  std::shared_ptr<const MemoryTable> Get() const {
    return std::atomic_load_explicit(&table_, std::memory_order_acquire);
  }
  // Changes after every Set(); a cheap check before the (locked) Get().
  uint64_t generation() const { return gen_.load(std::memory_order_acquire); }

  // The dirty log the device marks while live migration copies this memory
  // (dirty_log.h); nullptr while logging is off. Replaced whole, as the table.
  void SetLog(std::shared_ptr<const DirtyLog> l) {
    std::atomic_store_explicit(&log_, std::move(l), std::memory_order_release);
    log_gen_.fetch_add(1, std::memory_order_seq_cst);
  }
  std::shared_ptr<const DirtyLog> GetLog() const {
    return std::atomic_load_explicit(&log_, std::memory_order_acquire);
  }
  // Changes after every SetLog(): the writers' one load per batch.
  uint64_t log_generation() const { return log_gen_.load(std::memory_order_acquire); }

 private:
  std::shared_ptr<const MemoryTable> table_;
  std::atomic<uint64_t> gen_{0};
  std::shared_ptr<const DirtyLog> log_;
  std::atomic<uint64_t> log_gen_{0};
};

// The guest may rewrite its memory while the device reads it. Copying a
// structure out once and then putting a compiler barrier after the copy makes
// sure every later check and use sees the same bytes (the compiler may not
// re-load from guest memory instead of using the copy).
inline void ReadOnce(void* dst, const uint8_t* src, size_t n) {
  memcpy(dst, src, n);
  __atomic_signal_fence(__ATOMIC_SEQ_CST);
}

// virtio 1.x fields are little-endian. On x86 these are identities; they stay
// so that a big-endian build does the right thing and so that every load from
// guest memory says what it expects.
inline uint16_t Le16(uint16_t v) { return le16toh(v); }
inline uint32_t Le32(uint32_t v) { return le32toh(v); }
inline uint64_t Le64(uint64_t v) { return le64toh(v); }
inline uint16_t ToLe16(uint16_t v) { return htole16(v); }
inline uint32_t ToLe32(uint32_t v) { return htole32(v); }

}  // namespace vt
