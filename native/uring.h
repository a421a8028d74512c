// A minimal io_uring: setup, the two mmapped rings, submit-and-wait, reaping
// completions. Only the kernel's uapi header <linux/io_uring.h> and raw
// system calls: liburing is not on a fresh machine, and the engine needs
// just READV/WRITEV on one fd. One thread uses a ring (the engine's worker).
#pragma once
#include <linux/io_uring.h>
#include <sys/uio.h>

#include <cstdint>

namespace vt {

class Uring {
 public:
  Uring() = default;
  ~Uring();
  Uring(const Uring&) = delete;
  Uring& operator=(const Uring&) = delete;

  // Sets up a ring of `entries` submission slots. Returns 0 or an errno
  // (ENOSYS on kernels without io_uring, EPERM where it is disabled by
  // kernel.io_uring_disabled or a seccomp policy, ENOMEM for locked memory).
  // The ring is made disabled where the kernel allows SINGLE_ISSUER (6.1):
  // such a ring belongs to the thread that enables it (Bind).
  // With `sqpoll`, asks for a kernel thread that polls the submission ring
  // (IORING_SETUP_SQPOLL): submitting then needs no system call while that
  // thread is awake. Falls back to an ordinary ring where refused (sqpoll()
  // says which was made).
  int Init(unsigned entries, bool sqpoll = false);
  bool sqpoll() const { return (setup_flags_ & IORING_SETUP_SQPOLL) != 0; }
  bool ok() const { return fd_ >= 0; }
  // On the thread that will use the ring, before anything is queued: enables
  // a ring Init made disabled, and registers `fd` as fixed file 0 so requests
  // on it skip the per-request file lookup (IOSQE_FIXED_FILE). Returns 0 or
  // an errno from enabling (the ring is then unusable); a kernel that refuses
  // the registration just gets the plain fd.
  int Bind(int fd);
  // Setup flags the kernel accepted (for tests and the benchmark).
  unsigned setup_flags() const { return setup_flags_; }
  bool fixed_file() const { return fixed_fd_ >= 0; }

  // Queues a READV/WRITEV of iov[0..cnt) (a READ/WRITE when cnt is 1) on `fd` at the current file position
  // (offset -1, the only thing a TAP or socket understands). `link` chains it
  // to the next one queued: that one starts only if this one fully succeeded.
  // Always RWF_NOWAIT: a read with no frame or a write with no room completes
  // at once with -EAGAIN. Without it, recent kernels arm a poll even on an
  // O_NONBLOCK fd and complete the request only when the TAP becomes ready,
  // so a batch would wait for traffic that may never come (and stop() with it).
  // Callers must not queue more than free_sqes() between submissions: doing so
  // is a bug (assert). Without asserts the queued SQEs are submitted first to
  // make room; false only if even that fails (the caller must then treat the
  // request as never queued).
  bool Queue(uint8_t op, int fd, const iovec* iov, unsigned cnt, uint64_t user_data, bool link);
  // SQ slots a caller may still fill before the next submission.
  unsigned free_sqes() const;
  // Submits what was queued and waits until `wait` completions are ready.
  // Returns 0 or an errno (EINTR is retried here).
  int SubmitAndWait(unsigned wait);
  // Takes the next completion; false when none is ready.
  bool Reap(uint64_t* user_data, int32_t* res);
  // Requests the kernel took (submitted) whose completion was not reaped yet:
  // exactly those that may still read or write their buffers.
  unsigned inflight() const { return inflight_; }

  // For when the ring failed and is about to be dropped: closing its fd does
  // not cancel what it still runs. Drops SQEs never submitted (they never
  // ran), cancels every submitted request and reaps until none is in flight,
  // storing results for user_data < n in res[user_data] and counting them in
  // *got. Bounded (kQuiesceTries); true when inflight() reached 0, false when
  // the kernel did not confirm it in time.
  bool Quiesce(int32_t* res, unsigned n, unsigned* got);

 private:
  int SqpollSubmitAndWait(unsigned wait);
  // The SQ tail including entries queued but not published yet (SQPOLL).
  unsigned local_tail() const { return *sq_tail_ + (sqpoll() ? queued_ : 0); }
  // Completions ready to reap.
  unsigned ready() const;
  // Books r SQEs the kernel took (io_uring_enter's result); returns how many.
  unsigned Submitted(unsigned r);

  int fd_ = -1;
  unsigned setup_flags_ = 0;
  int fixed_fd_ = -1;  // the fd registered as fixed file 0, or -1
  void* sq_map_ = nullptr;
  size_t sq_map_len_ = 0;
  void* cq_map_ = nullptr;  // == sq_map_ with IORING_FEAT_SINGLE_MMAP
  size_t cq_map_len_ = 0;
  io_uring_sqe* sqes_ = nullptr;
  size_t sqes_len_ = 0;

  unsigned* sq_head_ = nullptr;
  unsigned* sq_flags_ = nullptr;
  unsigned* sq_tail_ = nullptr;
  unsigned sq_mask_ = 0;
  unsigned sq_entries_ = 0;
  unsigned* sq_array_ = nullptr;
  unsigned* cq_head_ = nullptr;
  unsigned* cq_tail_ = nullptr;
  unsigned cq_mask_ = 0;
  io_uring_cqe* cqes_ = nullptr;

  unsigned queued_ = 0;    // SQEs written but not yet submitted
  unsigned inflight_ = 0;  // SQEs submitted whose CQE was not reaped yet
};

}  // namespace vt
