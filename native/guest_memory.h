// Guest memory as the device sees it, and the one checked translation from a
// guest address to a host pointer. Every guest access in native/ goes through
// Translate(); nothing else does pointer arithmetic on guest addresses.
#pragma once
#include <endian.h>

#include <cstdint>
#include <cstring>

namespace vt {

struct GuestMemory {
  uint8_t* base = nullptr;
  uint64_t len = 0;

  // Host pointer for [gpa, gpa + n), or nullptr when any byte of it is outside
  // guest memory. Written so that no intermediate sum can wrap around 2^64: a
  // guest controls both gpa and n.
  uint8_t* Translate(uint64_t gpa, uint64_t n) const {
    if (gpa > len || n > len - gpa) return nullptr;
    return base + gpa;
  }
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
