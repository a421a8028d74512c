// RX chains the engine popped and has not filled yet, in pop order, and the
// placing of a frame into them: spreading it over as many chains as it needs
// (mergeable buffers), setting num_buffers, adding the used elements, and
// giving unused chains back to the ring. Both I/O methods go through it.
#pragma once
#include <sys/uio.h>

#include <cstdint>
#include <vector>

#include "tap_io.h"
#include "packed_queue.h"
#include "virtqueue.h"

namespace vt {

class RxStash {
 public:
  void Push(const Chain& c);
  size_t chains() const { return chains_.size(); }
  uint64_t bytes() const { return bytes_; }
  size_t iovs() const { return iov_.size(); }
  uint64_t chain_bytes(size_t i) const { return chains_[i].bytes; }
  uint16_t chain_id(size_t i) const { return chains_[i].head; }  // the buffer id (Chain::head)
  // The buffers of chains [first, first + count) as one frame target.
  IoFrame Span(size_t first, size_t count) const;

  // A frame of `len` bytes (net header included) was read into chains
  // [at, end); place it in the oldest free chains, from `free` (<= at) on and
  // before `end` (later chains may hold later frames of the same batch):
  // moved down first when at > free (an earlier read found no frame), then
  // num_buffers written when `set_num_buffers`, then one used element per
  // chain it occupies. Without `mergeable` it must fit chain `free` alone.
  // Returns how many chains it occupies, or 0 when it does not fit (the
  // caller counts rx_truncated; the chains stay free).
  // Q: SplitQueue or PackedQueue.
  template <class Q>
  uint32_t Place(Q& q, size_t free, size_t at, size_t end, uint64_t len, bool mergeable,
                 bool set_num_buffers);
  // Forgets the first n chains (placed; their used elements are added).
  void Consume(size_t n);
  // Returns every stashed chain to the ring (they are its newest pops), at
  // stop or when guest memory changes under them.
  template <class Q>
  void GiveBack(Q& q);
  // Forgets the first n chains without using or returning them: a failed
  // I/O mechanism may still write them (see TapIo::Batch::kUnknown).
  void Withhold(size_t n) { Consume(n); }

 private:
  struct Stashed {
    uint16_t head;
    uint32_t iov_first;  // index into iov_
    uint32_t iov_count;
    uint64_t bytes;
  };
  std::vector<Stashed> chains_;
  std::vector<iovec> iov_;
  uint64_t bytes_ = 0;
};

}  // namespace vt
