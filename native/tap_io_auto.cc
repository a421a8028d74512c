// TapIo for io: 'auto' (see tap_io.h): runs each direction over whichever of
// io_uring and readv/writev costs this worker less CPU per frame on this
// machine, measured as it runs. Neither wins everywhere: where every system
// call is a hypervisor round trip, io_uring's one submission per batch is
// ~3x cheaper per frame; where system calls are cheap (~120 ns), a plain
// write()/read() per frame is ~5% cheaper than io_uring's per-request
// bookkeeping. Batches are complete when Write/Read return (both methods
// keep the guest's order and report one result per frame), so changing the
// method between two batches changes nothing the engine or guest can see.
#include <time.h>

#include <cstdint>
#include <cstdlib>
#include <memory>

#include "tap_io.h"

namespace vt {

namespace {

// The schedule is counted in batches, not time: it is then the same on every
// machine in units of work, and a window always compares like with like.
// A window times kWindow batches, changing method every kRun batches, so
// that a change in load (another thread on this CPU, a burst) falls on both
// methods alike. 64 batches each are a few thousand frames: enough that the
// ~100 ns of clock reads per timed batch and the noise of single batches
// average out.
constexpr uint32_t kWindow = 128;
constexpr uint32_t kRun = 4;
// Batches between windows: about a second of 64-byte frames at full rate, so
// the slower method runs on well under 1% of the batches, yet a machine whose
// load changes gets a new choice within seconds.
constexpr uint32_t kSettle = 16384;
// A window decides only on this many frames per method: a window of mostly
// empty batches (light traffic) says little about the cost per frame.
constexpr uint64_t kMinFrames = 512;
// The other method must be this much cheaper per frame to take over: two
// methods within the noise of each other then do not take turns.
constexpr uint64_t kMarginPct = 3;

uint64_t ThreadCpuNs() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<uint64_t>(t.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(t.tv_nsec);
}

// Frames a batch moved (the unit both methods are compared on).
uint64_t Moved(const int32_t* res, uint32_t n) {
  uint64_t k = 0;
  for (uint32_t i = 0; i < n; i++) k += res[i] > 0;
  return k;
}

class AutoIo final : public TapIo {
 public:
  AutoIo(std::unique_ptr<TapIo> uring, int fd) : uring_(std::move(uring)), readv_(MakeReadvIo(fd)) {
    // Test only: VHOST_TAP_TEST_AUTO_FLIP=N changes method every N batches
    // per direction, without timing, so tests can require that order and
    // no-loss hold across changes (and that changes happen).
    if (const char* v = getenv("VHOST_TAP_TEST_AUTO_FLIP")) flip_ = static_cast<uint32_t>(strtoul(v, nullptr, 10));
  }

  const char* name() const override {
    const IoMethod tx = uring_ ? dir_[kTx].shown : kIoReadv, rx = uring_ ? dir_[kRx].shown : kIoReadv;
    if (tx == rx) return tx == kIoUring ? "io_uring" : "readv/writev";
    return tx == kIoUring ? "io_uring tx, readv/writev rx" : "readv/writev tx, io_uring rx";
  }
  IoMethod method() const override { return last_; }

  Batch Write(const IoFrame* frames, uint32_t n, int32_t* res) override { return Run(kTx, frames, n, res); }
  Batch Read(const IoFrame* bufs, uint32_t n, int32_t* res) override { return Run(kRx, bufs, n, res); }
  uint64_t TakeReordered() override { return uring_ ? uring_->TakeReordered() : 0; }
  void Woke() override {
    if (uring_) uring_->Woke();
  }
  // An io_uring that failed is dropped here (readv/writev from then on), so
  // the engine never needs to replace this object.
  bool failed() const override { return false; }

 private:
  enum { kTx, kRx };
  struct Direction {
    IoMethod chosen = kIoUring;  // what runs between windows
    IoMethod shown = kIoUring;   // what name() reports: the choice, or the last batch's method under the test hook
    bool sampling = true;  // in a window (the first one starts at once)
    uint32_t n = 0;        // batches into the window or the settle phase
    uint64_t ns[2] = {}, frames[2] = {};
  };

  Batch Run(int d, const IoFrame* f, uint32_t n, int32_t* res) {
    Direction& s = dir_[d];
    if (!uring_) {
      last_ = kIoReadv;
      return d == kTx ? readv_->Write(f, n, res) : readv_->Read(f, n, res);
    }
    IoMethod m = s.chosen;
    bool timed = false;
    if (flip_) {
      m = static_cast<IoMethod>((s.n++ / flip_) & 1);
      s.shown = m;
    } else if (s.sampling) {
      m = static_cast<IoMethod>((s.n / kRun) & 1);
      timed = true;
    }
    TapIo* io = m == kIoUring ? uring_.get() : readv_.get();
    const uint64_t t0 = timed ? ThreadCpuNs() : 0;
    const Batch b = d == kTx ? io->Write(f, n, res) : io->Read(f, n, res);
    last_ = m;
    if (timed) {
      s.ns[m] += ThreadCpuNs() - t0;
      s.frames[m] += Moved(res, n);
    }
    if (uring_->failed()) {
      // The ring is gone (its requests reaped or the ring leaked on purpose,
      // see tap_io_uring.cc): readv/writev for the rest of this run.
      uring_.reset();
      return b;
    }
    if (!flip_) Advance(s);
    return b;
  }

  void Advance(Direction& s) {
    s.n++;
    if (s.sampling && s.n == kWindow) {
      Decide(s);
      s.sampling = false;
      s.n = 0;
    } else if (!s.sampling && s.n == kSettle) {
      s = Direction{s.chosen, s.shown};
    }
  }

  // Takes the other method when, over the window, it cost at least
  // kMarginPct less CPU per frame (compared without division).
  static void Decide(Direction& s) {
    const IoMethod cur = s.chosen, other = cur == kIoUring ? kIoReadv : kIoUring;
    if (s.frames[cur] < kMinFrames || s.frames[other] < kMinFrames) return;
    if (s.ns[other] * s.frames[cur] * 100 < s.ns[cur] * s.frames[other] * (100 - kMarginPct)) s.chosen = other;
    s.shown = s.chosen;
  }

  std::unique_ptr<TapIo> uring_;  // null once it failed
  std::unique_ptr<TapIo> readv_;
  Direction dir_[2];
  uint32_t flip_ = 0;
  IoMethod last_ = kIoUring;
};

}  // namespace

std::unique_ptr<TapIo> MakeAutoIo(std::unique_ptr<TapIo> uring, int fd) {
  return std::make_unique<AutoIo>(std::move(uring), fd);
}

}  // namespace vt
