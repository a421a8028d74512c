// What the split and the packed ring code (virtqueue.cc, packed_queue.cc)
// both need to reach ring memory: naturally aligned little-endian index and
// flag words accessed atomically (the driver side uses Atomics on the same
// words), the largest indirect table, and the formatting of rule details.
// Included only by those two files.
#pragma once
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <string>

#include "memory.h"
#include "virtio.h"

namespace vt {
namespace ring_access {

// Largest indirect table the spec allows: it may not hold more descriptors
// than the largest queue.
constexpr uint32_t kMaxIndirectEntries = RING_MAX_SIZE;

inline std::string Fmt(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
inline std::string Fmt(const char* fmt, ...) {
  char buf[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return buf;
}

inline uint16_t Load16(const uint8_t* p, int order) {
  return Le16(__atomic_load_n(reinterpret_cast<const uint16_t*>(p), order));
}
inline void Store16(uint8_t* p, uint16_t v, int order) {
  __atomic_store_n(reinterpret_cast<uint16_t*>(p), ToLe16(v), order);
}
inline void Store32(uint8_t* p, uint32_t v) {
  __atomic_store_n(reinterpret_cast<uint32_t*>(p), ToLe32(v), __ATOMIC_RELAXED);
}

}  // namespace ring_access
}  // namespace vt
