// See uring.h. The ring protocol (io_uring(7)): the application owns the SQ
// tail and the CQ head, the kernel the SQ head and the CQ tail; each side
// publishes its index with a release store and reads the other's with an
// acquire load.
#include "uring.h"

#include <sys/mman.h>
#include <linux/fs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace vt {

namespace {

int SysSetup(unsigned entries, io_uring_params* p) {
  return static_cast<int>(syscall(__NR_io_uring_setup, entries, p));
}

int SysEnter(int fd, unsigned submit, unsigned wait, unsigned flags) {
  return static_cast<int>(syscall(__NR_io_uring_enter, fd, submit, wait, flags, nullptr, 0));
}

template <typename T>
T* At(void* base, unsigned off) {
  return reinterpret_cast<T*>(static_cast<uint8_t*>(base) + off);
}

}  // namespace

Uring::~Uring() {
  if (sqes_) munmap(sqes_, sqes_len_);
  if (cq_map_ && cq_map_ != sq_map_) munmap(cq_map_, cq_map_len_);
  if (sq_map_) munmap(sq_map_, sq_map_len_);
  if (fd_ >= 0) close(fd_);
}

int Uring::Init(unsigned entries) {
  io_uring_params p;
  // SUBMIT_ALL: an SQE that fails at submission still posts a CQE and the
  // rest are submitted, so "one CQE per queued SQE" always holds.
  // COOP_TASKRUN: completions are processed when this thread enters the
  // kernel anyway, without interrupting it; only one thread uses the ring.
  // Both are newer than io_uring itself (5.18, 5.19): retry without them.
  const unsigned flag_sets[] = {IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN, 0};
  int fd = -1;
  for (unsigned flags : flag_sets) {
    memset(&p, 0, sizeof p);
    p.flags = flags;
    fd = SysSetup(entries, &p);
    if (fd >= 0 || errno != EINVAL) break;
  }
  if (fd < 0) return errno;
  fd_ = fd;
  sq_map_len_ = p.sq_off.array + p.sq_entries * sizeof(unsigned);
  cq_map_len_ = p.cq_off.cqes + p.cq_entries * sizeof(io_uring_cqe);
  const bool single = p.features & IORING_FEAT_SINGLE_MMAP;
  if (single && cq_map_len_ > sq_map_len_) sq_map_len_ = cq_map_len_;
  void* sq = mmap(nullptr, sq_map_len_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd_, IORING_OFF_SQ_RING);
  if (sq == MAP_FAILED) return errno;
  sq_map_ = sq;
  if (single) {
    cq_map_ = sq_map_;
  } else {
    void* cq = mmap(nullptr, cq_map_len_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd_, IORING_OFF_CQ_RING);
    if (cq == MAP_FAILED) return errno;
    cq_map_ = cq;
  }
  sqes_len_ = p.sq_entries * sizeof(io_uring_sqe);
  void* s = mmap(nullptr, sqes_len_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd_, IORING_OFF_SQES);
  if (s == MAP_FAILED) return errno;
  sqes_ = static_cast<io_uring_sqe*>(s);

  sq_head_ = At<unsigned>(sq_map_, p.sq_off.head);
  sq_tail_ = At<unsigned>(sq_map_, p.sq_off.tail);
  sq_mask_ = *At<unsigned>(sq_map_, p.sq_off.ring_mask);
  sq_entries_ = p.sq_entries;
  sq_array_ = At<unsigned>(sq_map_, p.sq_off.array);
  cq_head_ = At<unsigned>(cq_map_, p.cq_off.head);
  cq_tail_ = At<unsigned>(cq_map_, p.cq_off.tail);
  cq_mask_ = *At<unsigned>(cq_map_, p.cq_off.ring_mask);
  cqes_ = At<io_uring_cqe>(cq_map_, p.cq_off.cqes);
  return 0;
}

bool Uring::Queue(uint8_t op, int fd, const iovec* iov, unsigned cnt, uint64_t user_data, bool link) {
  const unsigned tail = *sq_tail_;
  if (tail - __atomic_load_n(sq_head_, __ATOMIC_ACQUIRE) >= sq_entries_) return false;
  const unsigned slot = tail & sq_mask_;
  io_uring_sqe* e = &sqes_[slot];
  memset(e, 0, sizeof *e);
  e->opcode = op;
  e->fd = fd;
  e->off = static_cast<uint64_t>(-1);  // current position: streams have no offsets
  e->addr = reinterpret_cast<uint64_t>(iov);
  e->len = cnt;
  e->flags = link ? IOSQE_IO_LINK : 0;
  e->rw_flags = RWF_NOWAIT;
  e->user_data = user_data;
  sq_array_[slot] = slot;
  __atomic_store_n(sq_tail_, tail + 1, __ATOMIC_RELEASE);
  queued_++;
  return true;
}

int Uring::SubmitAndWait(unsigned wait) {
  unsigned submit = queued_;
  for (;;) {
    int r = SysEnter(fd_, submit, wait, IORING_ENTER_GETEVENTS);
    if (r >= 0) {
      // With SUBMIT_ALL every SQE is consumed; without it a submission error
      // stops early, and the rest go in on the next call.
      submit -= static_cast<unsigned>(r) < submit ? static_cast<unsigned>(r) : submit;
      queued_ = submit;
      if (submit == 0) return 0;
      continue;
    }
    if (errno == EINTR) continue;
    return errno;
  }
}

bool Uring::Reap(uint64_t* user_data, int32_t* res) {
  const unsigned head = *cq_head_;
  if (head == __atomic_load_n(cq_tail_, __ATOMIC_ACQUIRE)) return false;
  const io_uring_cqe& c = cqes_[head & cq_mask_];
  *user_data = c.user_data;
  *res = c.res;
  __atomic_store_n(cq_head_, head + 1, __ATOMIC_RELEASE);
  return true;
}

}  // namespace vt
