// See uring.h. The ring protocol (io_uring(7)): the application owns the SQ
// tail and the CQ head, the kernel the SQ head and the CQ tail; each side
// publishes its index with a release store and reads the other's with an
// acquire load.
#include "uring.h"

#include <sys/mman.h>
#include <linux/fs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cassert>
#include <cerrno>
#include <cstring>
#include <ctime>

// Kernel 6.0/6.1 uapi, defined here for older headers (the kernel answers
// -EINVAL to what it does not know and Init tries the next flag set).
#ifndef IORING_SETUP_SINGLE_ISSUER
#define IORING_SETUP_SINGLE_ISSUER (1U << 12)
#endif
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN (1U << 13)
#endif

// Kernel 5.19 uapi; Debian 12's <linux/io_uring.h> has it, older headers do
// not (the kernel then answers -EINVAL and Quiesce cancels per user_data).
#ifndef IORING_ASYNC_CANCEL_ANY
#define IORING_ASYNC_CANCEL_ANY (1U << 2)
#endif

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

// Quiesce's own ASYNC_CANCEL requests carry this user_data; no batch slot
// does (slots are 0..n-1), so their completions are told apart.
constexpr uint64_t kCancelUserData = ~uint64_t{0};

// Quiesce's bound: up to kQuiesceTries rounds, kQuiesceSleepNs apart (~1 s).
// The requests are RWF_NOWAIT reads/writes on a TAP that finish inline or are
// cancelled at once, so the first round normally sees every completion; the
// bound only keeps a misbehaving kernel from hanging the worker (and stop()).
constexpr int kQuiesceTries = 1000;
constexpr long kQuiesceSleepNs = 1000 * 1000;

}  // namespace

Uring::~Uring() {
  // Closing the ring would drop its file references only later, from the
  // kernel's teardown work, and until then the TAP would outlive its last
  // fd. Unregistered here, the reference goes now — on the thread that owns
  // a SINGLE_ISSUER ring, which is why the engine's worker destroys it.
  if (fixed_fd_ >= 0) syscall(__NR_io_uring_register, fd_, IORING_UNREGISTER_FILES, nullptr, 0);
  if (sqes_) munmap(sqes_, sqes_len_);
  if (cq_map_ && cq_map_ != sq_map_) munmap(cq_map_, cq_map_len_);
  if (sq_map_) munmap(sq_map_, sq_map_len_);
  if (fd_ >= 0) close(fd_);
}

// SQPOLL: the kernel thread sleeps after this much idleness (ms), and the
// next submission wakes it with one io_uring_enter. Long enough to stay awake
// between batches under load, short enough not to burn a core when idle.
constexpr unsigned kSqThreadIdleMs = 10;

// SQPOLL: how many times the worker looks at the completion ring before it
// sleeps in io_uring_enter. Short: on a machine without a spare core a
// spinning worker takes the CPU the SQ thread needs (TX 64 B bench smoke on
// 2 busy vCPUs: 20000 spins 35k frames/s, 1000 404k, 64 568k).
constexpr unsigned kSqpollReapSpins = 64;

int Uring::Init(unsigned entries, bool sqpoll) {
  io_uring_params p;
  // SUBMIT_ALL: an SQE that fails at submission still posts a CQE and the
  // rest are submitted, so "one CQE per queued SQE" always holds.
  // COOP_TASKRUN: completions are processed when this thread enters the
  // kernel anyway, without interrupting it; only one thread uses the ring.
  // Better still, SINGLE_ISSUER|DEFER_TASKRUN (6.1): completions that do need
  // task work run only when this thread asks for completions. A SINGLE_ISSUER
  // ring belongs to the first thread that submits, and the engine makes its
  // ring on the JS thread, so it is made disabled (R_DISABLED) and the worker
  // enables it (Bind). Each set is newer than the next: retry without it.
  // SQPOLL takes neither DEFER_TASKRUN nor COOP_TASKRUN; it is tried first
  // when asked for, and a kernel that refuses it gets an ordinary ring.
  const unsigned flag_sets[] = {
      IORING_SETUP_SQPOLL | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_R_DISABLED,
      IORING_SETUP_SUBMIT_ALL | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_R_DISABLED,
      IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN, 0};
  int fd = -1;
  for (unsigned flags : flag_sets) {
    if ((flags & IORING_SETUP_SQPOLL) && !sqpoll) continue;
    memset(&p, 0, sizeof p);
    p.flags = flags;
    if (flags & IORING_SETUP_SQPOLL) p.sq_thread_idle = kSqThreadIdleMs;
    // The SQ thread commits the SQ head only when it has issued what it took,
    // and those requests may complete (and be reaped) before that: the last
    // batch's slots can look taken while the next batch is queued. Twice the
    // batch always leaves a whole batch free.
    fd = SysSetup((flags & IORING_SETUP_SQPOLL) ? 2 * entries : entries, &p);
    if (fd >= 0) break;
    // EPERM/ENOMEM for SQPOLL alone (older kernels wanted CAP_SYS_NICE):
    // an ordinary ring may still work.
    if (errno != EINVAL && !(flags & IORING_SETUP_SQPOLL)) break;
  }
  if (fd < 0) return errno;
  fd_ = fd;
  setup_flags_ = p.flags;
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
  sq_flags_ = At<unsigned>(sq_map_, p.sq_off.flags);
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

int Uring::Bind(int fd) {
  if (setup_flags_ & IORING_SETUP_R_DISABLED) {
    if (syscall(__NR_io_uring_register, fd_, IORING_REGISTER_ENABLE_RINGS, nullptr, 0) != 0) return errno;
  }
  // Best effort: without it every request looks the fd up (and takes and
  // drops a file reference) on its own.
  if (syscall(__NR_io_uring_register, fd_, IORING_REGISTER_FILES, &fd, 1) == 0) fixed_fd_ = fd;
  return 0;
}

unsigned Uring::free_sqes() const {
  return sq_entries_ - (local_tail() - __atomic_load_n(sq_head_, __ATOMIC_ACQUIRE));
}

bool Uring::Queue(uint8_t op, int fd, const iovec* iov, unsigned cnt, uint64_t user_data, bool link) {
  if (free_sqes() == 0) {
    // A caller queued more than the ring holds: a bug (one CQE per SQE and a
    // fully reaped batch are what the engine relies on), so loud where asserts
    // are on. Otherwise submit what is queued (without SQPOLL the kernel takes
    // SQEs only inside io_uring_enter, so that frees their slots) and go on.
    assert(!"Uring::Queue called with no free SQ entry");
    if (queued_ == 0 || sqpoll()) return false;
    int r;
    do {
      r = SysEnter(fd_, queued_, 0, 0);
    } while (r < 0 && errno == EINTR);
    if (r > 0) Submitted(static_cast<unsigned>(r));
    if (free_sqes() == 0) return false;
  }
  const unsigned tail = local_tail();
  const unsigned slot = tail & sq_mask_;
  io_uring_sqe* e = &sqes_[slot];
  memset(e, 0, sizeof *e);
  e->opcode = op;
  e->fd = fd;
  if (fd == fixed_fd_) {
    e->fd = 0;  // index in the registered file table
    e->flags = IOSQE_FIXED_FILE;
  }
  e->off = static_cast<uint64_t>(-1);  // current position: streams have no offsets
  if (cnt == 1 && (op == IORING_OP_WRITEV || op == IORING_OP_READV)) {
    // One buffer (a guest that puts header and frame in one descriptor, a
    // mergeable RX buffer): the plain op skips importing an iovec array,
    // measured ~50-90 ns per frame less on a TAP.
    e->opcode = op == IORING_OP_WRITEV ? IORING_OP_WRITE : IORING_OP_READ;
    e->addr = reinterpret_cast<uint64_t>(iov[0].iov_base);
    e->len = static_cast<uint32_t>(iov[0].iov_len);
  } else {
    e->addr = reinterpret_cast<uint64_t>(iov);
    e->len = cnt;
  }
  if (link) e->flags |= IOSQE_IO_LINK;
  e->rw_flags = RWF_NOWAIT;
  e->user_data = user_data;
  sq_array_[slot] = slot;
  // Without SQPOLL the kernel reads the tail only inside io_uring_enter. The
  // SQ thread reads it any time: published per entry, it could take part of a
  // linked batch and submit that part as a chain of its own, which then runs
  // beside the rest (measured: interleaved frames). So with SQPOLL the whole
  // batch is published at once, in SqpollSubmitAndWait.
  if (!sqpoll()) __atomic_store_n(sq_tail_, tail + 1, __ATOMIC_RELEASE);
  queued_++;
  return true;
}

int Uring::SubmitAndWait(unsigned wait) {
  if (sqpoll()) return SqpollSubmitAndWait(wait);
  unsigned submit = queued_;
  for (;;) {
    int r = SysEnter(fd_, submit, wait, IORING_ENTER_GETEVENTS);
    if (r >= 0) {
      // With SUBMIT_ALL every SQE is consumed; without it a submission error
      // stops early, and the rest go in on the next call.
      submit -= Submitted(static_cast<unsigned>(r));
      if (submit == 0) return 0;
      continue;
    }
    if (errno == EINTR) continue;
    return errno;
  }
}

int Uring::SqpollSubmitAndWait(unsigned wait) {
  // The SQ thread takes what the tail shows once published; every published
  // SQE posts one CQE, so it counts as in flight from here on.
  const unsigned batch = queued_;
  Submitted(batch);
  __atomic_store_n(sq_tail_, *sq_tail_ + batch, __ATOMIC_RELEASE);
  // Order the tail store before reading the flags (io_uring(7)): otherwise a
  // thread going to sleep could miss the new entries and nobody wake it.
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  unsigned flags = 0;
  if (__atomic_load_n(sq_flags_, __ATOMIC_RELAXED) & IORING_SQ_NEED_WAKEUP) flags |= IORING_ENTER_SQ_WAKEUP;
  if (flags) {
    int r;
    do r = SysEnter(fd_, 0, 0, flags);
    while (r < 0 && errno == EINTR);
    if (r < 0) return errno;
  }
  for (unsigned spin = 0; spin < kSqpollReapSpins; spin++) {
    if (ready() >= wait) return 0;
    __builtin_ia32_pause();
  }
  for (;;) {
    int r = SysEnter(fd_, 0, wait, IORING_ENTER_GETEVENTS | flags);
    if (r >= 0) return 0;
    if (errno != EINTR) return errno;
  }
}

unsigned Uring::ready() const { return __atomic_load_n(cq_tail_, __ATOMIC_ACQUIRE) - *cq_head_; }

bool Uring::Reap(uint64_t* user_data, int32_t* res) {
  const unsigned head = *cq_head_;
  if (head == __atomic_load_n(cq_tail_, __ATOMIC_ACQUIRE)) return false;
  const io_uring_cqe& c = cqes_[head & cq_mask_];
  *user_data = c.user_data;
  *res = c.res;
  __atomic_store_n(cq_head_, head + 1, __ATOMIC_RELEASE);
  if (inflight_ > 0) inflight_--;
  return true;
}

unsigned Uring::Submitted(unsigned r) {
  // The kernel took the first r queued SQEs; each posts exactly one CQE (a
  // request failing at submission too), so each is in flight until reaped.
  const unsigned took = r < queued_ ? r : queued_;
  queued_ -= took;
  inflight_ += took;
  return took;
}

bool Uring::Quiesce(int32_t* res, unsigned n, unsigned* got) {
  // SQEs never submitted are taken back: the kernel reads the SQ only inside
  // io_uring_enter (no SQPOLL), so it has not seen them and they never ran.
  // With SQPOLL they are not even published (Queue): just forget them.
  if (sqpoll()) queued_ = 0;
  if (queued_ > 0) {
    __atomic_store_n(sq_tail_, *sq_tail_ - queued_, __ATOMIC_RELEASE);
    queued_ = 0;
  }
  // IORING_ASYNC_CANCEL_ANY (5.19) cancels everything with one SQE; an older
  // kernel answers -EINVAL and gets one cancel per user_data instead (those
  // already done answer -ENOENT, harmless).
  bool any = true;
  unsigned cancels = 0;  // cancel requests submitted or queued, not reaped
  auto reap_all = [&] {
    uint64_t ud;
    int32_t r;
    while (Reap(&ud, &r)) {
      if (ud == kCancelUserData) {
        if (cancels > 0) cancels--;
        if (r == -EINVAL) any = false;
      } else if (ud < n) {
        res[ud] = r;
        ++*got;
      }
    }
  };
  auto queue_cancel = [&](uint64_t target, uint32_t flags) {
    const unsigned slot = *sq_tail_ & sq_mask_;
    io_uring_sqe* e = &sqes_[slot];
    memset(e, 0, sizeof *e);
    e->opcode = IORING_OP_ASYNC_CANCEL;
    e->fd = -1;
    e->addr = target;  // user_data to match (ignored with CANCEL_ANY)
    e->cancel_flags = flags;
    e->user_data = kCancelUserData;
    sq_array_[slot] = slot;
    __atomic_store_n(sq_tail_, *sq_tail_ + 1, __ATOMIC_RELEASE);
    queued_++;
    cancels++;
  };
  for (int t = 0;; t++) {
    reap_all();
    if (inflight_ == 0) return true;
    if (t == kQuiesceTries) return false;
    // New cancels once the last ones answered (a request already running in
    // io-wq answers -EALREADY and may need another round).
    if (cancels == 0 && queued_ == 0) {
      if (any) {
        queue_cancel(0, IORING_ASYNC_CANCEL_ANY);
      } else {
        for (unsigned ud = 0; ud < n && free_sqes() > 0; ud++) queue_cancel(ud, 0);
      }
    }
    // GETEVENTS with nothing to wait for still runs pending task work, which
    // is where completions are posted under COOP_TASKRUN. Errors are not
    // final here (the ring already failed once): the next round retries.
    if (sqpoll()) {
      Submitted(queued_);
      __atomic_thread_fence(__ATOMIC_SEQ_CST);
      SysEnter(fd_, 0, 0, IORING_ENTER_GETEVENTS | IORING_ENTER_SQ_WAKEUP);
    } else {
      const int r = SysEnter(fd_, queued_, 0, IORING_ENTER_GETEVENTS);
      if (r > 0) Submitted(static_cast<unsigned>(r));
    }
    reap_all();
    if (inflight_ == 0) return true;
    timespec ts{0, kQuiesceSleepNs};
    nanosleep(&ts, nullptr);
  }
}

}  // namespace vt
