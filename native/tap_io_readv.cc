// TapIo with one readv/writev system call per frame (see tap_io.h): what runs
// where io_uring is unavailable or refused, or when asked for (io: 'readv').
#include <unistd.h>

#include <cerrno>

#include "tap_io.h"

namespace vt {

namespace {

class ReadvIo final : public TapIo {
 public:
  explicit ReadvIo(int fd) : fd_(fd) {}
  const char* name() const override { return "readv/writev"; }

  Batch Write(const IoFrame* frames, uint32_t n, int32_t* res) override {
    uint32_t i = 0;
    for (; i < n; i++) {
      ssize_t r;
      do r = writev(fd_, frames[i].iov, static_cast<int>(frames[i].iovcnt));
      while (r < 0 && errno == EINTR);
      res[i] = r < 0 ? -errno : static_cast<int32_t>(r);
      // No room: this frame and the rest wait, in order, for EPOLLOUT.
      if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    }
    for (i++; i < n; i++) res[i] = kNotDone;
    return Batch::kDone;
  }

  Batch Read(const IoFrame* bufs, uint32_t n, int32_t* res) override {
    uint32_t i = 0;
    for (; i < n; i++) {
      ssize_t r;
      do r = readv(fd_, bufs[i].iov, static_cast<int>(bufs[i].iovcnt));
      while (r < 0 && errno == EINTR);
      res[i] = r < 0 ? -errno : static_cast<int32_t>(r);
      // Empty (or failing, or a socket at EOF): the rest would only see the same.
      if (r <= 0) break;
    }
    for (i++; i < n; i++) res[i] = kNotDone;
    return Batch::kDone;
  }

 private:
  int fd_;
};

}  // namespace

std::unique_ptr<TapIo> MakeReadvIo(int fd) { return std::make_unique<ReadvIo>(fd); }

}  // namespace vt
