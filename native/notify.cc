// Kick and call plumbing for embedders: eventfds, a blocking wait usable from
// worker_threads (like a halted vCPU), an event-loop watcher for the JS
// thread, and a socketpair that stands in for a TAP in tests.
#include <napi.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <vector>

#include "errors.h"
#include "poll_watch.h"

namespace vt {

namespace {

// waitCall returns a bit mask as a JS number; 32 keeps it a plain uint32.
constexpr size_t kMaxWaitFds = 32;

// A file descriptor argument. Checked as a double before any conversion:
// Int64Value() turns NaN and fractions into 0 (stdin), and -0.5 or 0.9 would
// pass a range check done after it.
int FdValue(Napi::Env env, const Napi::Value& v) {
  if (!v.IsNumber()) ThrowCode(env, "EVHOST_BADARG", "fd must be a number");
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 0 && d <= INT32_MAX) || std::trunc(d) != d)
    ThrowCode(env, "EVHOST_BADARG", "fd must be a non-negative integer");
  return static_cast<int>(d);
}

int FdArg(const Napi::CallbackInfo& info, size_t i) { return FdValue(info.Env(), info[i]); }

Napi::Value NewEventfd(const Napi::CallbackInfo& info) {
  int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) ThrowErrno(info.Env(), errno, "eventfd", "creating an eventfd");
  return Napi::Number::New(info.Env(), fd);
}

void Kick(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  uint64_t one = 1;
  ssize_t n;
  do n = write(fd, &one, sizeof one);
  while (n < 0 && errno == EINTR);
  // EAGAIN: the counter is saturated, so the other side has a wake-up pending anyway.
  if (n < 0 && errno != EAGAIN) ThrowErrno(info.Env(), errno, "write", "kicking an eventfd");
}

Napi::Value WaitCall(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArray()) ThrowCode(env, "EVHOST_BADARG", "fds must be an array");
  Napi::Array arr = info[0].As<Napi::Array>();
  if (arr.Length() > kMaxWaitFds) ThrowCode(env, "EVHOST_BADARG", "waitCall takes at most 32 fds");
  if (!info[1].IsNumber()) ThrowCode(env, "EVHOST_BADARG", "timeoutMs must be a number");
  const double t = info[1].As<Napi::Number>().DoubleValue();
  // -1 waits forever; NaN or a fraction is a caller's bug, not "no timeout".
  // The upper bound is poll()'s int; it also keeps the deadline below from overflowing.
  if (!(t >= -1 && t <= INT32_MAX) || std::trunc(t) != t)
    ThrowCode(env, "EVHOST_BADARG", "timeoutMs must be an integer from -1 to 2147483647");
  const int64_t timeout = static_cast<int64_t>(t);
  std::vector<pollfd> pfds(arr.Length());
  for (uint32_t i = 0; i < arr.Length(); i++) pfds[i] = pollfd{FdValue(env, arr.Get(i)), POLLIN, 0};
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + std::chrono::milliseconds(timeout < 0 ? 0 : timeout);
  int r;
  for (;;) {
    int wait_ms = -1;
    if (timeout >= 0) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      wait_ms = left > 0 ? static_cast<int>(std::min<int64_t>(left, INT32_MAX)) : 0;
    }
    r = poll(pfds.data(), pfds.size(), wait_ms);
    if (r >= 0 || errno != EINTR) break;
  }
  if (r < 0) ThrowErrno(env, errno, "poll", "waiting for a call eventfd");
  uint32_t mask = 0;
  for (size_t i = 0; i < pfds.size(); i++) {
    if (pfds[i].revents & POLLNVAL) ThrowErrno(env, EBADF, "poll", "waiting for a call eventfd");
    if (!(pfds[i].revents & POLLIN)) continue;
    uint64_t v;
    // Another waiter may have cleared it between poll and read: then it did not fire for us.
    if (read(pfds[i].fd, &v, sizeof v) == sizeof v) mask |= 1u << i;
  }
  return Napi::Number::New(env, mask);
}

Napi::Value SeqpacketPair(const Napi::CallbackInfo& info) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
    ThrowErrno(info.Env(), errno, "socketpair", "creating a SOCK_SEQPACKET pair");
  Napi::Array a = Napi::Array::New(info.Env(), 2);
  a.Set(0u, Napi::Number::New(info.Env(), sv[0]));
  a.Set(1u, Napi::Number::New(info.Env(), sv[1]));
  return a;
}

// Calls a JS function each time an eventfd fires, from the thread's own event
// loop. The poll handle is unref'd: a watcher alone does not keep a process
// (or a Worker) alive; poll_watch.h keeps it safe from a JS object that goes first.
class FdWatcher : public Napi::ObjectWrap<FdWatcher> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "FdWatcher", {InstanceMethod<&FdWatcher::Close>("close")});
  }

  explicit FdWatcher(const Napi::CallbackInfo& info) : Napi::ObjectWrap<FdWatcher>(info), env_(info.Env()) {
    Napi::Env env = info.Env();
    fd_ = FdArg(info, 0);
    if (!info[1].IsFunction()) ThrowCode(env, "EVHOST_BADARG", "callback must be a function");
    watch_.Start(env, fd_, UV_READABLE, this, &FdWatcher::OnReadable, "watching an eventfd", /*ref=*/false);
    cb_ = Napi::Persistent(info[1].As<Napi::Function>());
    // Stay alive while watching even if JS drops its reference; close() lets go.
    Ref();
    napi_add_env_cleanup_hook(env_, &FdWatcher::OnEnvCleanup, this);
  }

  ~FdWatcher() override { Shutdown(); }

 private:
  static void OnReadable(FdWatcher* self, int status, int) {
    if (status < 0) {
      // The fd went bad (closed under us): stop rather than fire forever.
      self->watch_.Pause();
      return;
    }
    uint64_t v;
    // A spurious wake-up (another reader got there first) does not call back.
    if (read(self->fd_, &v, sizeof v) != sizeof v) return;
    Napi::Env env = self->env_;
    Napi::HandleScope scope(env);
    try {
      self->cb_.MakeCallback(env.Global(), {});
    } catch (const Napi::Error& e) {
      // No JS frame to throw into: report it like any uncaught exception.
      napi_fatal_exception(env, e.Value());
    }
  }

  void Shutdown() {
    if (!watch_.open()) return;
    napi_remove_env_cleanup_hook(env_, &FdWatcher::OnEnvCleanup, this);
    watch_.Close();
    cb_.Reset();
  }

  static void OnEnvCleanup(void* arg) { static_cast<FdWatcher*>(arg)->watch_.Close(); }

  void Close(const Napi::CallbackInfo&) {
    if (!watch_.open()) return;
    Shutdown();
    Unref();
  }

  napi_env env_;
  int fd_ = -1;
  PollWatch<FdWatcher> watch_;
  Napi::FunctionReference cb_;
};

}  // namespace

void InitNotify(Napi::Env env, Napi::Object exports) {
  exports.Set("eventfd", Napi::Function::New<NewEventfd>(env, "eventfd"));
  exports.Set("kick", Napi::Function::New<Kick>(env, "kick"));
  exports.Set("waitCall", Napi::Function::New<WaitCall>(env, "waitCall"));
  exports.Set("seqpacketPair", Napi::Function::New<SeqpacketPair>(env, "seqpacketPair"));
  exports.Set("FdWatcher", FdWatcher::Define(env));
}

}  // namespace vt
