// TapIo over io_uring (see tap_io.h): a batch of READVs or WRITEVs goes to
// the kernel with one io_uring_enter. Both always carry RWF_NOWAIT (uring.h):
// a read with no frame or a write with no room completes at once with -EAGAIN.
#include <cerrno>
#include <cstdlib>
#include <vector>

#include "tap_io.h"
#include "uring.h"

namespace vt {

namespace {

class UringIo final : public TapIo {
 public:
  UringIo(int fd, std::unique_ptr<Uring> ring, unsigned batch)
      : fd_(fd), ring_(std::move(ring)), batch_(batch), res_(batch) {
    // Test only: VHOST_TAP_TEST_URING_FAIL makes the first batch fail after
    // submission, as io_uring_enter might, to exercise Abandon().
    fail_once_ = getenv("VHOST_TAP_TEST_URING_FAIL") != nullptr;
  }
  ~UringIo() override {
    // Every batch is reaped before Write/Read return, so nothing is in flight
    // here; if that were ever broken, cancel before the ring goes.
    if (ring_ && ring_->inflight() != 0) {
      unsigned got = 0;
      if (!ring_->Quiesce(nullptr, 0, &got)) static_cast<void>(ring_.release());
    }
  }
  const char* name() const override { return "io_uring"; }
  bool failed() const override { return !ring_; }

  // The writes are linked (IOSQE_IO_LINK): one starts only when the previous
  // fully succeeded, so after an -EAGAIN (no room) or any error every later
  // write comes back -ECANCELED without having run: exactly the suffix the
  // engine must send again.
  Batch Write(const IoFrame* frames, uint32_t n, int32_t* res) override { return Run(IORING_OP_WRITEV, frames, n, res, true); }
  // Reads are not linked: a read shorter than its buffers (every frame) would
  // break a link. On a TAP queue fd io_uring issues them inline in SQE order.
  Batch Read(const IoFrame* bufs, uint32_t n, int32_t* res) override { return Run(IORING_OP_READV, bufs, n, res, false); }

 private:
  Batch Run(uint8_t op, const IoFrame* f, uint32_t n, int32_t* res, bool link) {
    for (uint32_t i = 0; i < n; i++) res[i] = kNotDone;
    if (!ring_) return Batch::kDone;
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
    const bool quiet = ring_->Quiesce(res_.data(), n, &got);
    if (quiet) ring_.reset();
    else static_cast<void>(ring_.release());
    return quiet;
  }

  int fd_;
  std::unique_ptr<Uring> ring_;
  unsigned batch_;
  std::vector<int32_t> res_;
  bool fail_once_ = false;
};

}  // namespace

std::unique_ptr<TapIo> MakeUringIo(int fd, unsigned batch, int* err) {
  auto ring = std::make_unique<Uring>();
  *err = ring->Init(batch);
  if (*err != 0) return nullptr;
  return std::make_unique<UringIo>(fd, std::move(ring), batch);
}

}  // namespace vt
