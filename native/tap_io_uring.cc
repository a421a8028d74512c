// TapIo over io_uring (see tap_io.h): a batch of READVs or WRITEVs goes to
// the kernel with one io_uring_enter. Both always carry RWF_NOWAIT (uring.h):
// a read with no frame or a write with no room completes at once with -EAGAIN.
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <time.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "tap_io.h"
#include "uring.h"

namespace vt {

namespace {

constexpr unsigned long kTunGetSndBuf = _IOR('T', 211, int);

// How often continuous TX re-reads the TAP queue's sndbuf (besides after
// every wake-up and every refusal): a TUNSETSNDBUF by another holder of a
// queue fd switches this queue to linked writes within about this long. The
// ioctl costs ~300-400 ns, a few ns per frame at this rate. Measured on the
// coarse clock, which ticks once per jiffy (1-10 ms).
constexpr uint64_t kSndbufRecheckNs = 1'000'000;

// How long the worker waits, in all, for room to write frames refused in the
// middle of an unlinked batch whose later frames already went out (a sndbuf
// shrunk under a running batch). Bounded so stop() is never held up for long;
// frames still refused then are dropped and counted (kDroppedFull).
constexpr int kRefusedWaitMs = 20;

bool Refused(int32_t r) { return r == kNotDone || r == -EAGAIN || r == -EWOULDBLOCK; }

uint64_t CoarseNs() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &t);
  return static_cast<uint64_t>(t.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(t.tv_nsec);
}

class UringIo final : public TapIo {
 public:
  UringIo(int fd, std::unique_ptr<Uring> ring, unsigned batch)
      : fd_(fd), ring_(std::move(ring)), batch_(batch), res_(batch), sqpoll_(ring_->sqpoll()) {
    // Test only: VHOST_TAP_TEST_URING_FAIL makes the first batch fail after
    // submission, as io_uring_enter might, to exercise Abandon(); with the
    // value 'unconfirmed' Abandon() then also reports the kernel as not having
    // confirmed the batch over (after making sure it is), so the engine's
    // kUnknown path runs.
    const char* fail = getenv("VHOST_TAP_TEST_URING_FAIL");
    fail_once_ = fail != nullptr;
    fail_unconfirmed_ = fail != nullptr && strcmp(fail, "unconfirmed") == 0;
    // Test only: VHOST_TAP_TEST_UNLINKED_ALWAYS writes unlinked whatever the
    // sndbuf, so a finite one makes the race SettleRefused handles happen
    // (a refusal with later frames of the batch written) on demand.
    unlinked_always_ = getenv("VHOST_TAP_TEST_UNLINKED_ALWAYS") != nullptr;
  }
  ~UringIo() override {
    // Every batch is reaped before Write/Read return, so nothing is in flight
    // here; if that were ever broken, cancel before the ring goes.
    if (ring_ && ring_->inflight() != 0) {
      unsigned got = 0;
      if (!ring_->Quiesce(nullptr, 0, &got)) static_cast<void>(ring_.release());
    }
  }
  const char* name() const override { return sqpoll_ ? "io_uring sqpoll" : "io_uring"; }
  IoMethod method() const override { return kIoUring; }
  bool failed() const override { return !ring_; }

  // Unlinked writes when the TAP queue's sndbuf is INT_MAX (what every queue
  // starts with): tun then builds small frames' skbs with no room check at
  // all, so no write can be refused, and io_uring issues unlinked RWF_NOWAIT
  // requests inline in SQE order, each finished before the next starts — the
  // guest's order, without the task-work round per frame a link costs.
  // Linked writes (IOSQE_IO_LINK) otherwise — a finite sndbuf set by someone
  // with TUNSETSNDBUF, or not a TAP at all: one starts only when the previous
  // fully succeeded, so after an -EAGAIN (no room) or any error every later
  // write comes back -ECANCELED without having run: exactly the suffix the
  // engine must send again. (With a finite sndbuf an unlinked write after a
  // refused one may succeed: room is freed in between.)
  Batch Write(const IoFrame* frames, uint32_t n, int32_t* res) override {
    RefreshTxMode();
    if (!unlinked_) return Run(IORING_OP_WRITEV, frames, n, res, true);
    const Batch b = Run(IORING_OP_WRITEV, frames, n, res, false);
    if (b == Batch::kDone) SettleRefused(frames, n, res);
    return b;
  }
  uint64_t TakeReordered() override {
    const uint64_t r = reordered_;
    reordered_ = 0;
    return r;
  }
  void Woke() override { check_sndbuf_ = true; }
  // Reads are not linked: a read shorter than its buffers (every frame) would
  // break a link. On a TAP queue fd io_uring issues them inline in SQE order.
  Batch Read(const IoFrame* bufs, uint32_t n, int32_t* res) override { return Run(IORING_OP_READV, bufs, n, res, false); }

 private:
  Batch Run(uint8_t op, const IoFrame* f, uint32_t n, int32_t* res, bool link) {
    for (uint32_t i = 0; i < n; i++) res[i] = kNotDone;
    if (!ring_) return Batch::kDone;
    if (!bound_) {
      // First use, on the worker thread: the ring becomes this thread's.
      bound_ = true;
      if (ring_->Bind(fd_) != 0) {
        ring_.reset();  // nothing was ever submitted; failed(): readv/writev from now on
        return Batch::kDone;
      }
    }
    if (n > batch_) n = batch_;  // the caller never asks for more; keep the ring's bound anyway
    // n <= the ring's size and every batch is fully reaped: Queue always has
    // room. Should it refuse anyway, the frames from there on stay kNotDone.
    uint32_t queued = 0;
    while (queued < n && ring_->Queue(op, fd_, f[queued].iov, f[queued].iovcnt, queued, link && queued + 1 < n))
      queued++;
    if (queued == 0) return Batch::kDone;
    const bool exact = Wait(queued);
    for (uint32_t i = 0; i < queued; i++) {
      int32_t r = res_[i];
      // A linked write cancelled because an earlier one failed never ran.
      if (r == -ECANCELED || r == -EINTR) r = kNotDone;
      res[i] = r;
    }
    if (link) {
      // Once one write did not happen, none after it may count as done.
      bool stop = false;
      for (uint32_t i = 0; i < queued; i++) {
        if (stop) res[i] = kNotDone;
        else if (res[i] == kNotDone || res[i] == -EAGAIN || res[i] == -EWOULDBLOCK) stop = true;
      }
    }
    return exact ? Batch::kDone : Batch::kUnknown;
  }

  // Re-reads the queue's sndbuf when due (see kSndbufRecheckNs) and picks
  // unlinked or linked writes from it.
  void RefreshTxMode() {
    if (!tap_) return;  // not a TAP: linked for good
    const uint64_t now = CoarseNs();
    if (!check_sndbuf_ && now - checked_at_ < kSndbufRecheckNs) return;
    check_sndbuf_ = false;
    checked_at_ = now;
    int sndbuf = 0;
    if (ioctl(fd_, kTunGetSndBuf, &sndbuf) != 0) {
      tap_ = false;  // ENOTTY and the like: a socket standing in for the TAP
      unlinked_ = false;
      return;
    }
    unlinked_ = sndbuf == INT_MAX || unlinked_always_;
  }

  // After an unlinked batch: a refused frame followed only by refused frames
  // is the suffix the engine sends again (TapIo's contract). A refused frame
  // followed by one that was written (the sndbuf shrank under the batch) is
  // written now, before anything later, and the overtaking frames counted.
  void SettleRefused(const IoFrame* f, uint32_t n, int32_t* res) {
    uint32_t first = 0;
    while (first < n && !Refused(res[first])) first++;
    if (first == n) return;
    check_sndbuf_ = true;  // refused: the sndbuf is finite now, go linked
    uint32_t last = first;
    for (uint32_t i = first + 1; i < n; i++)
      if (!Refused(res[i])) last = i;
    if (last == first) return;
    for (uint32_t i = first + 1; i <= last; i++)
      if (!Refused(res[i])) reordered_++;
    const uint64_t deadline = CoarseNs() + static_cast<uint64_t>(kRefusedWaitMs) * 1'000'000u;
    for (uint32_t i = first; i <= last; i++)
      if (Refused(res[i])) res[i] = WriteNow(f[i], deadline);
  }

  // One writev, waiting for room (POLLOUT) until `deadline`.
  int32_t WriteNow(const IoFrame& f, uint64_t deadline) {
    for (;;) {
      const ssize_t r = writev(fd_, f.iov, static_cast<int>(f.iovcnt));
      if (r >= 0) return static_cast<int32_t>(r);
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) return -errno;
      const uint64_t now = CoarseNs();
      if (now >= deadline) return kDroppedFull;
      pollfd p{fd_, POLLOUT, 0};
      poll(&p, 1, static_cast<int>((deadline - now) / 1'000'000u) + 1);
    }
  }

  // Reaps completions for user_data 0..n-1 into res_, waiting as needed. When
  // the ring fails it is abandoned (see Abandon) and this returns whether the
  // results are still exact.
  bool Wait(unsigned n) {
    for (unsigned i = 0; i < n; i++) res_[i] = kNotDone;
    unsigned got = 0;
    while (got < n) {
      uint64_t ud;
      int32_t r;
      if (ring_->Reap(&ud, &r)) {
        if (ud < n) res_[ud] = r;
        got++;
        continue;
      }
      int e;
      if (fail_once_) {
        fail_once_ = false;
        e = ring_->SubmitAndWait(0);
        if (e == 0) e = EIO;
      } else {
        e = ring_->SubmitAndWait(n - got);
      }
      if (e != 0) return Abandon(n, got);
    }
    return true;
  }

  // The ring itself failed (not one I/O). Closing its fd would not cancel what
  // it still runs, and a late read could land in buffers reused by then, so
  // every submitted request is first cancelled and reaped; the batch's results
  // are then exact (a slot without one never ran). Should the kernel not
  // confirm in time, the ring is leaked on purpose, mapped with its fd open:
  // dropping it would not stop a request either. False: results unknown.
  bool Abandon(unsigned n, unsigned got) {
    bool quiet = ring_->Quiesce(res_.data(), n, &got);
    if (fail_unconfirmed_) {
      fail_unconfirmed_ = false;
      if (quiet) {
        ring_.reset();  // really over: nothing to leak, only the report differs
        return false;
      }
    }
    if (quiet) ring_.reset();
    else static_cast<void>(ring_.release());
    return quiet;
  }

  int fd_;
  std::unique_ptr<Uring> ring_;
  unsigned batch_;
  std::vector<int32_t> res_;
  const bool sqpoll_;
  bool fail_once_ = false;
  bool fail_unconfirmed_ = false;
  bool unlinked_always_ = false;
  bool bound_ = false;        // Uring::Bind ran (on the worker)
  bool tap_ = true;           // TUNGETSNDBUF works on fd_
  bool unlinked_ = false;     // the queue's sndbuf was INT_MAX when last read
  bool check_sndbuf_ = true;  // read it before the next write
  uint64_t checked_at_ = 0;   // CoarseNs() of the last read
  uint64_t reordered_ = 0;    // for TakeReordered
};

}  // namespace

std::unique_ptr<TapIo> MakeUringIo(int fd, unsigned batch, bool sqpoll, int* err) {
  auto ring = std::make_unique<Uring>();
  *err = ring->Init(batch, sqpoll);
  if (*err != 0) return nullptr;
  return std::make_unique<UringIo>(fd, std::move(ring), batch);
}

}  // namespace vt
