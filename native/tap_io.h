// How an engine moves frames between its TAP queue fd and guest buffers: one
// interface, two ways — a readv/writev per frame (tap_io_readv.cc) or batched
// io_uring submissions (tap_io_uring.cc). Both keep the guest's order and
// report one result per frame, so the engine's per-frame completion (used
// elements, num_buffers, counters) is written once. Plain C++, no Node.
#pragma once
#include <sys/uio.h>

#include <climits>
#include <cstdint>
#include <memory>

namespace vt {

// One frame's buffers (net header first).
struct IoFrame {
  const iovec* iov;
  uint32_t iovcnt;
};

// readv/writev take at most IOV_MAX segments, and a TAP takes one frame per
// call: a frame in more buffers than that cannot be moved at all.
constexpr size_t kMaxIov = IOV_MAX;

// Result of a frame that was never issued: the batch stopped before it (the
// TAP had no room), or the I/O mechanism failed before it ran.
constexpr int32_t kNotDone = INT32_MIN;
// Result of a frame dropped because the TAP stayed full after later frames of
// its batch had already been written (see Write): counted as
// tx_tap_full_reordered.
constexpr int32_t kDroppedFull = INT32_MIN + 1;

// Which system calls moved a batch (engine stats count batches per method).
enum IoMethod : int { kIoUring = 0, kIoReadv = 1 };

class TapIo {
 public:
  virtual ~TapIo() = default;
  // 'io_uring', 'io_uring sqpoll' or 'readv/writev'; with io: 'auto', per
  // direction (tap_io_auto.cc). A string literal.
  virtual const char* name() const = 0;
  // The method the last Write or Read ran on.
  virtual IoMethod method() const = 0;

  enum class Batch {
    kDone,     // every result is final; the kernel holds no buffer of this batch
    kUnknown,  // the mechanism failed and the kernel did not confirm it is done
               // with the buffers: they must never be published or reused
  };
  // Writes frames[0..n) to the TAP, in this order. res[i] is the bytes written,
  // or -errno (the frame is dropped), or -EAGAIN / kNotDone: not written, and
  // then neither is any later frame of the batch — all of them go again later,
  // in the same order, so no frame overtakes one the kernel refused.
  // One exception, counted (TakeReordered): when the TAP's room shrinks while
  // a batch is issued unlinked (tap_io_uring.cc), later frames may already be
  // written when an earlier one is refused. Those keep their result, and the
  // refused ones before them are written at once (waiting a bounded time for
  // room) or, if the TAP stays full, dropped (kDroppedFull); only a refused
  // suffix is reported as above. So no frame is lost silently or sent twice.
  virtual Batch Write(const IoFrame* frames, uint32_t n, int32_t* res) = 0;
  // Frames written after an earlier frame of their batch since the last call.
  virtual uint64_t TakeReordered() { return 0; }
  // The worker woke up from a wait: state that may have changed meanwhile
  // (the TAP's sndbuf) is looked at again before the next batch.
  virtual void Woke() {}
  // Reads at most one frame into each of bufs[0..n), in order. res[i] is the
  // frame length (which may exceed the buffers: tun reports the full length of
  // a frame it had to cut), -EAGAIN (no frame was there for it), -errno, or
  // kNotDone. A later buffer may get a frame after an earlier one got -EAGAIN
  // (a frame arrived between the two): the engine moves such frames down.
  virtual Batch Read(const IoFrame* bufs, uint32_t n, int32_t* res) = 0;
  // True once the mechanism itself failed (not one I/O): the engine switches
  // to readv/writev for the rest of its run.
  virtual bool failed() const { return false; }
};

std::unique_ptr<TapIo> MakeReadvIo(int fd);
// io_uring for batches of up to `batch` frames; nullptr with *err set when the
// kernel refuses io_uring (ENOSYS, EPERM: kernel.io_uring_disabled or seccomp,
// ENOMEM: locked memory). `sqpoll`: a kernel thread polls the submission ring
// where the kernel grants one (name() then says "io_uring sqpoll").
std::unique_ptr<TapIo> MakeUringIo(int fd, unsigned batch, bool sqpoll, int* err);
// io: 'auto': each direction over `uring` or readv/writev on `fd`, whichever
// costs less CPU per frame here, measured as it runs (tap_io_auto.cc).
std::unique_ptr<TapIo> MakeAutoIo(std::unique_ptr<TapIo> uring, int fd);

}  // namespace vt
