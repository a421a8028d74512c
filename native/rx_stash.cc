// See rx_stash.h.
#include "rx_stash.h"

#include <algorithm>
#include <cstring>

namespace vt {

namespace {

// Copies `len` bytes between two iovec lists. memmove: a hostile guest may
// make buffers overlap.
void CopyIov(const iovec* dst, size_t dcnt, const iovec* src, size_t scnt, uint64_t len) {
  size_t di = 0, si = 0, doff = 0, soff = 0;
  while (len > 0 && di < dcnt && si < scnt) {
    const size_t n = static_cast<size_t>(
        std::min<uint64_t>(len, std::min(dst[di].iov_len - doff, src[si].iov_len - soff)));
    memmove(static_cast<uint8_t*>(dst[di].iov_base) + doff, static_cast<const uint8_t*>(src[si].iov_base) + soff, n);
    len -= n;
    doff += n;
    soff += n;
    if (doff == dst[di].iov_len) di++, doff = 0;
    if (soff == src[si].iov_len) si++, soff = 0;
  }
}

// Writes `len` bytes at `offset` of the buffers described by iov. The net
// header may be split across descriptors, so never assume it is contiguous.
void WriteIov(const iovec* iov, size_t cnt, size_t offset, const void* data, size_t len) {
  const uint8_t* src = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < cnt && len > 0; i++) {
    if (offset >= iov[i].iov_len) {
      offset -= iov[i].iov_len;
      continue;
    }
    size_t n = std::min(len, iov[i].iov_len - offset);
    memcpy(static_cast<uint8_t*>(iov[i].iov_base) + offset, src, n);
    src += n;
    len -= n;
    offset = 0;
  }
}

}  // namespace

void RxStash::Push(const Chain& c) {
  chains_.push_back(Stashed{c.head, static_cast<uint32_t>(iov_.size()), static_cast<uint32_t>(c.iov.size()), c.bytes});
  iov_.insert(iov_.end(), c.iov.begin(), c.iov.end());
  bytes_ += c.bytes;
}

IoFrame RxStash::Span(size_t first, size_t count) const {
  const Stashed& a = chains_[first];
  const Stashed& b = chains_[first + count - 1];
  return IoFrame{iov_.data() + a.iov_first, b.iov_first + b.iov_count - a.iov_first};
}

template <class Q>
uint32_t RxStash::Place(Q& q, size_t free, size_t at, size_t end, uint64_t len, bool mergeable,
                        bool set_num_buffers) {
  // Chains [free, end) hold at least what [at, end) holds, which took the
  // frame: with mergeable buffers it always fits.
  size_t k = 1;
  uint64_t room = chains_[free].bytes;
  while (room < len && mergeable && free + k < end) room += chains_[free + k++].bytes;
  if (room < len) return 0;
  if (at != free) {
    // The target chains come before the source in stash order, so byte p of
    // the frame is written at a position before where byte p+1 is read:
    // copying forward never overwrites bytes still to be read.
    const IoFrame dst = Span(free, k);
    const IoFrame src = Span(at, end - at);
    CopyIov(dst.iov, dst.iovcnt, src.iov, src.iovcnt, len);
  }
  if (set_num_buffers) {
    // num_buffers: the TAP leaves it alone, and it exists whenever the header
    // is at least 12 bytes (VERSION_1 without mergeable buffers: always 1).
    const uint16_t nb = ToLe16(static_cast<uint16_t>(k));
    const Stashed& s = chains_[free];
    WriteIov(iov_.data() + s.iov_first, s.iov_count, HDR_OFF_NUM_BUFFERS, &nb, sizeof nb);
  }
  uint64_t left = len;
  for (size_t j = free; j < free + k; j++) {
    const uint64_t use = std::min(left, chains_[j].bytes);
    q.AddUsed(chains_[j].head, static_cast<uint32_t>(use));
    left -= use;
  }
  return static_cast<uint32_t>(k);
}

void RxStash::Consume(size_t n) {
  if (n == 0) return;
  if (n >= chains_.size()) {
    chains_.clear();
    iov_.clear();
    bytes_ = 0;
    return;
  }
  const uint32_t drop_iov = chains_[n].iov_first;
  for (size_t i = 0; i < n; i++) bytes_ -= chains_[i].bytes;
  chains_.erase(chains_.begin(), chains_.begin() + static_cast<ptrdiff_t>(n));
  iov_.erase(iov_.begin(), iov_.begin() + drop_iov);
  for (Stashed& s : chains_) s.iov_first -= drop_iov;
}

template <class Q>
void RxStash::GiveBack(Q& q) {
  q.UndoPop(static_cast<uint16_t>(chains_.size()));
  Consume(chains_.size());
}

template uint32_t RxStash::Place(SplitQueue&, size_t, size_t, size_t, uint64_t, bool, bool);
template uint32_t RxStash::Place(PackedQueue&, size_t, size_t, size_t, uint64_t, bool, bool);
template void RxStash::GiveBack(SplitQueue&);
template void RxStash::GiveBack(PackedQueue&);

}  // namespace vt
