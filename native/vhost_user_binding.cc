// JS face of the vhost-user socket: listen/accept/connect on a Unix stream
// socket, and a connection that reads messages with their fds (SCM_RIGHTS,
// MSG_CMSG_CLOEXEC) on the JS thread's event loop (libuv poll), decodes them
// with native/vhost_user.h and hands them to JS; sends replies (and, for test
// front ends, raw bytes with fds) without ever waiting for the peer: what the
// socket does not take queues and goes out when it is writable. Also what a
// handed-over fd is (inspectFd). No protocol policy here: the session in
// backend/ decides. Fds of a refused message are closed before JS hears of it.
#include <napi.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <string>
#include <vector>

#include "errors.h"
#include "poll_watch.h"
#include "vhost_user.h"

namespace vt {

namespace {

namespace vu = vhost_user;

// Per readable event, messages are handled until this much time has gone
// (or kMessagesPerWake), then the event loop runs timers and other I/O: the
// poll fires again while data is left. Time, not a message count, because
// messages differ in cost by orders of magnitude (a GET_FEATURES is a reply,
// a SET_MEM_TABLE maps up to 8 regions, a GET_VRING_BASE joins a worker).
// 2 ms keeps a flood's share of the loop small against the 100 ms the event
// loop may never be stalled by a front end.
constexpr uint64_t kWakeBudgetNs = 2'000'000;
// And at most this many, however cheap: a bound on work per wake-up that does
// not depend on the clock's resolution.
constexpr int kMessagesPerWake = 64;

// Test front ends may attach more fds than a back end accepts (to see it
// refuse them); the kernel's own limit per message is 253.
constexpr size_t kMaxSendFds = 32;

// How long queued output may wait for the peer to read (default; the
// connection's option sendStallMs). Replies are a few bytes and a front end
// waits for each one; a peer that reads nothing for this long is gone.
constexpr double kSendStallMs = 5000;
// Output queued at most: a back end stops reading requests while its replies
// wait, so it holds a message's worth; a test front end may queue more.
constexpr size_t kMaxQueuedBytes = 1 << 20;

int FdArg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (!info[i].IsNumber()) ThrowCode(info.Env(), "EVHOST_BADARG", std::string(what) + " must be a number");
  int64_t fd = info[i].As<Napi::Number>().Int64Value();
  if (fd < 0 || fd > INT32_MAX) ThrowCode(info.Env(), "EVHOST_BADARG", std::string(what) + " must be a non-negative integer");
  return static_cast<int>(fd);
}

sockaddr_un UnixAddr(Napi::Env env, const Napi::Value& v) {
  if (!v.IsString()) ThrowCode(env, "EVHOST_BADARG", "socket path must be a string");
  std::string path = v.As<Napi::String>().Utf8Value();
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof a.sun_path || path.find('\0') != std::string::npos)
    ThrowCode(env, "EVHOST_BADARG",
              "socket path must be 1 to " + std::to_string(sizeof a.sun_path - 1) + " bytes without NUL: '" + path + "'");
  memcpy(a.sun_path, path.data(), path.size());
  return a;
}

// listen(path, { mode?, uid?, gid? }): mode and owner are set on the socket
// file between bind() and listen(), so no front end can connect while it
// still has the umask's mode (connecting before listen() is refused).
Napi::Value Listen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  sockaddr_un a = UnixAddr(env, info[0]);
  int64_t mode = -1, uid = -1, gid = -1;
  if (info.Length() > 1 && !info[1].IsUndefined()) {
    if (!info[1].IsObject()) ThrowCode(env, "EVHOST_BADARG", "listen options must be an object");
    Napi::Object o = info[1].As<Napi::Object>();
    auto get = [&](const char* k, int64_t hi) -> int64_t {
      Napi::Value v = o.Get(k);
      if (v.IsUndefined()) return -1;
      const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
      if (!(d >= 0 && d <= static_cast<double>(hi)) || d != static_cast<double>(static_cast<int64_t>(d)))
        ThrowCode(env, "EVHOST_BADARG", std::string(k) + " must be an integer from 0 to " + std::to_string(hi));
      return static_cast<int64_t>(d);
    };
    mode = get("mode", 07777);
    uid = get("uid", UINT32_MAX - 1);
    gid = get("gid", UINT32_MAX - 1);
  }
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) ThrowErrno(env, errno, "socket", "creating the vhost-user socket");
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0) {
    int e = errno;
    close(fd);
    ThrowErrno(env, e, "bind", std::string("binding the vhost-user socket to ") + a.sun_path);
  }
  auto fail = [&](int e, const char* call, const std::string& what) {
    close(fd);
    unlink(a.sun_path);
    ThrowErrno(env, e, call, what);
  };
  if ((uid >= 0 || gid >= 0) &&
      chown(a.sun_path, uid >= 0 ? static_cast<uid_t>(uid) : static_cast<uid_t>(-1),
            gid >= 0 ? static_cast<gid_t>(gid) : static_cast<gid_t>(-1)) < 0)
    fail(errno, "chown", std::string("setting the owner of ") + a.sun_path);
  if (mode >= 0 && chmod(a.sun_path, static_cast<mode_t>(mode)) < 0)
    fail(errno, "chmod", std::string("setting the mode of ") + a.sun_path);
  // One front end at a time; a second one waits in the backlog.
  if (listen(fd, 1) < 0) {
    int e = errno;
    close(fd);
    ThrowErrno(env, e, "listen", std::string("listening on ") + a.sun_path);
  }
  return Napi::Number::New(env, fd);
}

Napi::Value Accept(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int lfd = FdArg(info, 0, "listening fd");
  int fd;
  do fd = accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    // Nobody waiting (or the connection was reset before we took it).
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ECONNABORTED) return Napi::Number::New(env, -1);
    ThrowErrno(env, errno, "accept4", "accepting a vhost-user front end");
  }
  return Napi::Number::New(env, fd);
}

Napi::Value Connect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  sockaddr_un a = UnixAddr(env, info[0]);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) ThrowErrno(env, errno, "socket", "creating the vhost-user socket");
  int r;
  // A non-blocking Unix stream connect completes or fails at once: EAGAIN when
  // the listener's backlog is full (someone listens but does not accept yet),
  // rather than blocking this thread until it does.
  do r = connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  while (r < 0 && errno == EINTR);
  if (r < 0) {
    int e = errno;
    close(fd);
    ThrowErrno(env, e, "connect", std::string("connecting to ") + a.sun_path);
  }
  return Napi::Number::New(env, fd);
}

Napi::Value StreamPair(const Napi::CallbackInfo& info) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
    ThrowErrno(info.Env(), errno, "socketpair", "creating a SOCK_STREAM pair");
  Napi::Array a = Napi::Array::New(info.Env(), 2);
  a.Set(0u, Napi::Number::New(info.Env(), sv[0]));
  a.Set(1u, Napi::Number::New(info.Env(), sv[1]));
  return a;
}

// memfd(size, sealed?): a memfd of `size` bytes, shareable guest memory for
// test front ends; `sealed` adds F_SEAL_SHRINK | F_SEAL_GROW as QEMU's
// memory-backend-memfd does (its seal=on default).
Napi::Value Memfd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber()) ThrowCode(env, "EVHOST_BADARG", "size must be a number");
  int64_t size = info[0].As<Napi::Number>().Int64Value();
  if (size < 0) ThrowCode(env, "EVHOST_BADARG", "size must be non-negative");
  const bool sealed = info.Length() > 1 && info[1].ToBoolean().Value();
  int fd = memfd_create("vhost-tap-test", MFD_CLOEXEC | (sealed ? MFD_ALLOW_SEALING : 0));
  if (fd < 0) ThrowErrno(env, errno, "memfd_create", "creating test guest memory");
  if (ftruncate(fd, size) < 0 || (sealed && fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) < 0)) {
    int e = errno;
    close(fd);
    ThrowErrno(env, e, "ftruncate", "sizing test guest memory");
  }
  return Napi::Number::New(env, fd);
}

// fullEventfd(): a blocking eventfd whose counter is at its maximum, so that
// a write to it blocks until someone reads: what a hostile front end hands
// over as a call or error fd (tests).
Napi::Value FullEventfd(const Napi::CallbackInfo& info) {
  int fd = eventfd(0, EFD_CLOEXEC);
  if (fd < 0) ThrowErrno(info.Env(), errno, "eventfd", "creating an eventfd");
  const uint64_t max = UINT64_MAX - 1;
  if (write(fd, &max, sizeof max) != sizeof max) {
    const int e = errno;
    close(fd);
    ThrowErrno(info.Env(), e, "write", "filling an eventfd");
  }
  return Napi::Number::New(info.Env(), fd);
}

// inspectFd(fd) -> { type, link, nonblock, seals, size }: what a front end
// handed over. type: 'eventfd', 'memfd', 'regular', 'socket', 'pipe', 'chardev',
// 'blockdev', 'directory' or 'other' (an anon inode that is not an eventfd:
// the link names it). seals: F_GET_SEALS, -1 where the file has none to ask
// (not shmem). The kernel's own words decide: fstat's mode, and the
// /proc/self/fd link ("anon_inode:[eventfd]", "/memfd:NAME (deleted)").
Napi::Value InspectFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = FdArg(info, 0, "fd");
  struct stat st;
  if (fstat(fd, &st) != 0) ThrowErrno(env, errno, "fstat", "inspecting fd " + std::to_string(fd));
  char link[256] = {0};
  const std::string proc = "/proc/self/fd/" + std::to_string(fd);
  const ssize_t n = readlink(proc.c_str(), link, sizeof link - 1);
  const std::string target = n > 0 ? std::string(link, static_cast<size_t>(n)) : std::string();
  const int fl = fcntl(fd, F_GETFL);
  const int seals = fcntl(fd, F_GET_SEALS);
  const char* type = "other";
  // The link first: anonymous inodes have carried S_IFREG on some kernels.
  if (target.rfind("anon_inode:", 0) == 0) type = target == "anon_inode:[eventfd]" ? "eventfd" : "other";
  else if (S_ISREG(st.st_mode)) type = target.rfind("/memfd:", 0) == 0 ? "memfd" : "regular";
  else if (S_ISSOCK(st.st_mode)) type = "socket";
  else if (S_ISFIFO(st.st_mode)) type = "pipe";
  else if (S_ISCHR(st.st_mode)) type = "chardev";
  else if (S_ISBLK(st.st_mode)) type = "blockdev";
  else if (S_ISDIR(st.st_mode)) type = "directory";
  Napi::Object o = Napi::Object::New(env);
  o.Set("type", type);
  o.Set("link", target);
  o.Set("nonblock", Napi::Boolean::New(env, fl >= 0 && (fl & O_NONBLOCK) != 0));
  o.Set("seals", Napi::Number::New(env, seals));
  o.Set("size", Napi::Number::New(env, static_cast<double>(st.st_size)));
  return o;
}

// setNonblock(fd): O_NONBLOCK on the fd's file description, which the front
// end shares. QEMU's and DPDK's eventfds are created non-blocking already; for
// any other front end it only means its own writes to a full counter fail
// with EAGAIN instead of waiting, which an eventfd's writer treats as
// "already signalled".
void SetNonblock(const Napi::CallbackInfo& info) {
  const int fd = FdArg(info, 0, "fd");
  const int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || (!(fl & O_NONBLOCK) && fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0))
    ThrowErrno(info.Env(), errno, "fcntl", "making fd " + std::to_string(fd) + " non-blocking");
}

// One message waiting to be sent; owns duplicates of its fds until they went.
struct Outgoing {
  std::vector<uint8_t> bytes;
  std::vector<int> fds;
  size_t off = 0;
};

// Sends as much of `m` as the socket takes now, never waiting. Returns 0 (all
// of it went, or EAGAIN left the rest: see m.off) or an errno.
int SendSome(int fd, Outgoing* m) {
  alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof(int) * kMaxSendFds)];
  while (m->off < m->bytes.size()) {
    iovec iov{m->bytes.data() + m->off, m->bytes.size() - m->off};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    if (!m->fds.empty()) {
      const size_t n = m->fds.size() * sizeof(int);
      memset(ctrl, 0, sizeof ctrl);
      mh.msg_control = ctrl;
      mh.msg_controllen = CMSG_SPACE(n);
      cmsghdr* c = CMSG_FIRSTHDR(&mh);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(n);
      memcpy(CMSG_DATA(c), m->fds.data(), n);
    }
    ssize_t w = sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
      return errno;
    }
    // The fds went with the first byte: the peer holds its own copies now.
    for (int f : m->fds) close(f);
    m->fds.clear();
    m->off += static_cast<size_t>(w);
  }
  return 0;
}

Napi::Value BigU64(Napi::Env env, uint64_t v) { return Napi::BigInt::New(env, v); }

Napi::Object HeaderObject(Napi::Env env, const vu::Header& h) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("request", Napi::Number::New(env, h.request));
  o.Set("flags", Napi::Number::New(env, h.flags));
  o.Set("size", Napi::Number::New(env, h.size));
  const char* name = vu::RequestName(h.request);
  o.Set("name", name ? Napi::Value(Napi::String::New(env, name)) : env.Null());
  o.Set("needReply", Napi::Boolean::New(env, (h.flags & vu::kFlagNeedReply) != 0));
  return o;
}

Napi::Object MessageObject(Napi::Env env, const vu::Message& m) {
  Napi::Object o = HeaderObject(env, m.hdr);
  o.Set("payload", Napi::Buffer<uint8_t>::Copy(env, m.payload.data(), m.payload.size()));
  Napi::Array fds = Napi::Array::New(env, m.fds.size());
  for (size_t i = 0; i < m.fds.size(); i++) fds.Set(static_cast<uint32_t>(i), Napi::Number::New(env, m.fds[i]));
  o.Set("fds", fds);
  switch (m.kind) {
    case vu::PayloadKind::kNone:
      o.Set("kind", "none");
      break;
    case vu::PayloadKind::kOpaque:
      o.Set("kind", "opaque");
      break;
    case vu::PayloadKind::kU64:
      o.Set("kind", "u64");
      o.Set("u64", BigU64(env, m.u64));
      break;
    case vu::PayloadKind::kVringState:
      o.Set("kind", "state");
      o.Set("index", Napi::Number::New(env, m.state.index));
      o.Set("num", Napi::Number::New(env, m.state.num));
      break;
    case vu::PayloadKind::kVringAddr: {
      o.Set("kind", "addr");
      o.Set("index", Napi::Number::New(env, m.addr.index));
      o.Set("addrFlags", Napi::Number::New(env, m.addr.flags));
      o.Set("desc", BigU64(env, m.addr.desc));
      o.Set("used", BigU64(env, m.addr.used));
      o.Set("avail", BigU64(env, m.addr.avail));
      o.Set("log", BigU64(env, m.addr.log));
      break;
    }
    case vu::PayloadKind::kMemTable: {
      o.Set("kind", "memTable");
      Napi::Array regions = Napi::Array::New(env, m.regions.size());
      for (size_t i = 0; i < m.regions.size(); i++) {
        Napi::Object r = Napi::Object::New(env);
        r.Set("guestAddr", BigU64(env, m.regions[i].guest_addr));
        r.Set("size", BigU64(env, m.regions[i].size));
        r.Set("userAddr", BigU64(env, m.regions[i].user_addr));
        r.Set("mmapOffset", BigU64(env, m.regions[i].mmap_offset));
        regions.Set(static_cast<uint32_t>(i), r);
      }
      o.Set("regions", regions);
      break;
    }
  }
  return o;
}

uint64_t U64Arg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (!info[i].IsBigInt()) ThrowCode(info.Env(), "EVHOST_BADARG", std::string(what) + " must be a bigint");
  bool lossless = false;
  uint64_t v = info[i].As<Napi::BigInt>().Uint64Value(&lossless);
  if (!lossless) ThrowCode(info.Env(), "EVHOST_BADARG", std::string(what) + " must fit in 64 unsigned bits");
  return v;
}

uint32_t U32Arg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (!info[i].IsNumber()) ThrowCode(info.Env(), "EVHOST_BADARG", std::string(what) + " must be a number");
  int64_t v = info[i].As<Napi::Number>().Int64Value();
  if (v < 0 || v > UINT32_MAX) ThrowCode(info.Env(), "EVHOST_BADARG", std::string(what) + " must be a 32-bit unsigned integer");
  return static_cast<uint32_t>(v);
}

// One vhost-user connection, read on the JS thread's event loop. Owns the fd.
// Callbacks (an object { message(msg), refused(reason, header), closed(reason) }):
// `message` for each well-formed message; `refused` for a whole message that
// broke a codec rule (its fds already closed, the stream still in step);
// `closed` once when the peer closed, a read failed or a header could not be
// trusted (the fd is closed by then). close() from JS does not call `closed`.
class Connection : public Napi::ObjectWrap<Connection> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "VhostUserConnection",
                       {
                           InstanceMethod<&Connection::ReplyU64>("replyU64"),
                           InstanceMethod<&Connection::ReplyState>("replyState"),
                           InstanceMethod<&Connection::SendRaw>("sendRaw"),
                           InstanceMethod<&Connection::PauseReading>("pauseReading"),
                           InstanceMethod<&Connection::Close>("close"),
                           InstanceAccessor<&Connection::FdGetter>("fd"),
                           InstanceAccessor<&Connection::QueuedGetter>("queuedBytes"),
                       });
  }

  explicit Connection(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Connection>(info), env_(info.Env()) {
    Napi::Env env = info.Env();
    int fd = FdArg(info, 0, "socket fd");
    if (!info[1].IsString()) ThrowCode(env, "EVHOST_BADARG", "role must be 'back-end' or 'front-end'");
    std::string role = info[1].As<Napi::String>().Utf8Value();
    if (role != "back-end" && role != "front-end") ThrowCode(env, "EVHOST_BADARG", "role must be 'back-end' or 'front-end'");
    if (!info[2].IsObject()) ThrowCode(env, "EVHOST_BADARG", "callbacks must be an object");
    Napi::Object cbs = info[2].As<Napi::Object>();
    for (const char* k : {"message", "refused", "closed"})
      if (!cbs.Get(k).IsFunction()) ThrowCode(env, "EVHOST_BADARG", std::string("callbacks.") + k + " must be a function");
    if (info.Length() > 3 && !info[3].IsUndefined()) {
      if (!info[3].IsObject()) ThrowCode(env, "EVHOST_BADARG", "options must be an object");
      Napi::Value v = info[3].As<Napi::Object>().Get("sendStallMs");
      if (!v.IsUndefined()) {
        const double ms = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
        if (!(ms >= 1 && ms <= 3600000)) ThrowCode(env, "EVHOST_BADARG", "sendStallMs must be 1 to 3600000");
        stall_ms_ = ms;
      }
    }
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok || !loop) ThrowCode(env, "EVHOST_STATE", "no event loop for this thread");
    watch_.Start(env, fd, UV_READABLE | UV_DISCONNECT, this, &Connection::OnEvent, "watching the vhost-user socket");
    stall_ = new uv_timer_t;
    uv_timer_init(loop, stall_);
    stall_->data = this;
    // Taken only once the watch is set up: from here on the connection owns the fd.
    fd_ = fd;
    back_end_ = role == "back-end";
    reader_ = new vu::Reader(back_end_ ? vu::Role::kBackEnd : vu::Role::kFrontEnd);
    callbacks_ = Napi::Persistent(cbs);
    // Alive while open even if JS drops it; the session holds it anyway.
    Ref();
    napi_add_env_cleanup_hook(env_, &Connection::OnEnvCleanup, this);
  }

  ~Connection() override { Shutdown(); }

 private:
  static void OnEvent(Connection* self, int status, int events) {
    Napi::Env env = self->env_;
    Napi::HandleScope scope(env);
    try {
      if (status >= 0 && (events & UV_WRITABLE)) {
        self->Flush();
        if (self->fd_ < 0) return;
      }
      if (status < 0) {
        // libuv reports POLLERR as EBADF; the socket knows the real error (ECONNRESET
        // when the peer closed with data unread).
        int so = 0;
        socklen_t len = sizeof so;
        if (self->fd_ >= 0 && getsockopt(self->fd_, SOL_SOCKET, SO_ERROR, &so, &len) == 0 && so != 0)
          self->End(std::string("socket error: ") + strerror(so));
        else
          self->End(std::string("socket error: ") + uv_strerror(status));
        return;
      }
      if (events & (UV_READABLE | UV_DISCONNECT)) self->ReadSome();
    } catch (const Napi::Error& e) {
      // A callback threw: there is no JS frame to throw into.
      napi_fatal_exception(env, e.Value());
    }
  }

  // Whether requests are read now: not while replies wait for the peer (a
  // front end that does not read them cannot make this side queue more), nor
  // while JS paused reading.
  bool Reading() const { return fd_ >= 0 && !read_paused_ && !(back_end_ && !out_.empty()); }

  void UpdateEvents() {
    if (fd_ < 0) return;
    int ev = 0;
    if (Reading()) ev |= UV_READABLE | UV_DISCONNECT;
    if (!out_.empty()) ev |= UV_WRITABLE;
    watch_.SetEvents(ev);
  }

  void ReadSome() {
    const uint64_t start = uv_hrtime();
    for (int handled = 0; Reading();) {
      if (handled >= kMessagesPerWake || (handled > 0 && uv_hrtime() - start >= kWakeBudgetNs)) return;
      alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof(int) * vu::kMaxFds)];
      iovec iov{reader_->Buffer(), reader_->Want()};
      msghdr mh{};
      mh.msg_iov = &iov;
      mh.msg_iovlen = 1;
      mh.msg_control = ctrl;
      mh.msg_controllen = sizeof ctrl;
      ssize_t n = recvmsg(fd_, &mh, MSG_CMSG_CLOEXEC);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        End(std::string("recvmsg failed: ") + strerror(errno));
        return;
      }
      int fds[vu::kMaxFds];
      size_t nfds = 0;
      for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        const size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        const int* in = reinterpret_cast<const int*>(CMSG_DATA(c));
        for (size_t i = 0; i < k; i++) {
          int fd;
          memcpy(&fd, in + i, sizeof fd);
          if (nfds < vu::kMaxFds) fds[nfds++] = fd;
          else close(fd);  // cannot happen with a control buffer of kMaxFds; never leak one
        }
      }
      const bool ctrunc = (mh.msg_flags & MSG_CTRUNC) != 0;
      if (n == 0) {
        for (size_t i = 0; i < nfds; i++) close(fds[i]);
        const size_t want = reader_->Want();
        const bool mid = reader_->Want() != vu::kHeaderSize;
        End(mid ? "the front end closed the connection in the middle of a message (" + std::to_string(want) +
                      " bytes missing)"
                : "the peer closed the connection");
        return;
      }
      switch (reader_->Got(static_cast<size_t>(n), fds, nfds, ctrunc)) {
        case vu::Reader::Result::kNeedMore:
          break;
        case vu::Reader::Result::kMessage: {
          handled++;
          vu::Message m = reader_->Take();
          Napi::Object o = MessageObject(env_, m);
          Call("message", {o});
          break;
        }
        case vu::Reader::Result::kRefused:
          handled++;
          Call("refused", {Napi::String::New(env_, reader_->why()), HeaderObject(env_, reader_->refused_header())});
          break;
        case vu::Reader::Result::kFatal:
          End(reader_->why());
          return;
      }
    }
  }

  void Call(const char* name, const std::initializer_list<napi_value>& args) {
    Napi::Function f = callbacks_.Get(name).As<Napi::Function>();
    f.MakeCallback(Value(), args);
  }

  // The connection is over: stop watching, close the fd, tell JS once.
  void End(std::string reason) {  // by value: callers pass the reader's own string, and Shutdown() deletes the reader
    if (fd_ < 0) return;
    Napi::Object keep = Value();  // the callback may drop the last JS reference
    Shutdown();
    Napi::Function f = callbacks_.Get("closed").As<Napi::Function>();
    callbacks_.Reset();
    f.MakeCallback(keep, {Napi::String::New(env_, reason)});
    Unref();
  }

  void Shutdown() {
    if (watch_.open()) napi_remove_env_cleanup_hook(env_, &Connection::OnEnvCleanup, this);
    Release();
  }

  // Stops watching, closes the fd, the fds of a message half read and of
  // messages not sent.
  void Release() {
    watch_.Close();
    if (stall_) {
      uv_timer_stop(stall_);
      uv_close(reinterpret_cast<uv_handle_t*>(stall_), [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
      stall_ = nullptr;
    }
    if (fd_ >= 0) {
      close(fd_);
      fd_ = -1;
    }
    for (Outgoing& m : out_)
      for (int f : m.fds) close(f);
    out_.clear();
    out_bytes_ = 0;
    delete reader_;
    reader_ = nullptr;
  }

  // Sends what is queued as far as the socket takes it. The stall clock runs
  // while anything waits; the connection ends when it is over or the socket fails.
  void Flush() {
    const size_t before_all = out_bytes_;
    while (!out_.empty() && fd_ >= 0) {
      Outgoing& m = out_.front();
      const size_t before = m.off;
      const int e = SendSome(fd_, &m);
      out_bytes_ -= m.off - before;
      if (e) {
        End(std::string("sending on the vhost-user socket failed: ") + strerror(e));
        return;
      }
      if (m.off < m.bytes.size()) break;
      out_.pop_front();
    }
    if (fd_ < 0) return;
    if (out_.empty()) {
      uv_timer_stop(stall_);
    } else if (out_bytes_ < before_all || !uv_is_active(reinterpret_cast<uv_handle_t*>(stall_))) {
      // The clock runs from the peer's last read, not from the first byte that waited.
      uv_timer_start(stall_, &Connection::OnStall, static_cast<uint64_t>(stall_ms_), 0);
    }
    UpdateEvents();
  }

  static void OnStall(uv_timer_t* t) {
    auto* self = static_cast<Connection*>(t->data);
    Napi::HandleScope scope(self->env_);
    try {
      // Timers run before the poll phase: if this side's own event loop was held up, the peer
      // may have read meanwhile without the writable event being seen yet. Look first.
      const size_t before = self->out_bytes_;
      self->Flush();
      if (self->fd_ < 0 || self->out_.empty() || self->out_bytes_ < before) return;
      char b[160];
      snprintf(b, sizeof b, "the peer read nothing for %.0f ms (%zu bytes of replies waiting); dropping it",
               self->stall_ms_, self->out_bytes_);
      self->End(b);
    } catch (const Napi::Error& e) {
      napi_fatal_exception(self->env_, e.Value());
    }
  }

  static void OnEnvCleanup(void* arg) {
    auto* self = static_cast<Connection*>(arg);
    if (self->watch_.open()) self->Release();
  }

  // Queues the message and sends what the socket takes now; never waits.
  void Send(std::vector<uint8_t> bytes, const std::vector<int>& fds, const char* what) {
    if (fd_ < 0) ThrowCode(env_, "EVHOST_STATE", std::string("sending ") + what + ": the connection is closed");
    if (out_bytes_ + bytes.size() > kMaxQueuedBytes)
      ThrowCode(env_, "ENOBUFS",
                std::string("sending ") + what + ": " + std::to_string(out_bytes_) + " bytes wait for the peer to read");
    Outgoing m;
    for (int f : fds) {
      // The caller may close its fds once this returns; the queue keeps its own.
      const int d = fcntl(f, F_DUPFD_CLOEXEC, 3);
      if (d < 0) {
        const int e = errno;
        for (int x : m.fds) close(x);
        ThrowErrno(env_, e, "fcntl(F_DUPFD_CLOEXEC)", std::string("sending ") + what + ": fd " + std::to_string(f));
      }
      m.fds.push_back(d);
    }
    m.bytes = std::move(bytes);
    out_bytes_ += m.bytes.size();
    const bool was_empty = out_.empty();
    out_.push_back(std::move(m));
    if (!was_empty) return;  // behind others: goes when the socket is writable
    Outgoing& front = out_.front();
    const size_t before = front.off;
    const int e = SendSome(fd_, &front);
    out_bytes_ -= front.off - before;
    if (e) {
      // The caller hears it: the session ends the connection with this reason.
      for (int f : front.fds) close(f);
      out_.pop_front();
      ThrowErrno(env_, e, "sendmsg", std::string("sending ") + what + " on the vhost-user socket");
    }
    if (front.off == front.bytes.size()) {
      out_.pop_front();
      return;
    }
    uv_timer_start(stall_, &Connection::OnStall, static_cast<uint64_t>(stall_ms_), 0);
    UpdateEvents();
  }

  // pauseReading(paused): stops (or resumes) reading messages; what arrives
  // stays in the socket. A test front end that never reads its replies.
  void PauseReading(const Napi::CallbackInfo& info) {
    read_paused_ = info[0].ToBoolean().Value();
    UpdateEvents();
  }

  Napi::Value QueuedGetter(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), static_cast<double>(out_bytes_));
  }

  void ReplyU64(const Napi::CallbackInfo& info) {
    uint32_t req = U32Arg(info, 0, "request");
    uint64_t v = U64Arg(info, 1, "value");
    Send(vu::EncodeReplyU64(req, v), {}, "a reply");
  }

  void ReplyState(const Napi::CallbackInfo& info) {
    uint32_t req = U32Arg(info, 0, "request");
    vu::VringState s{U32Arg(info, 1, "index"), U32Arg(info, 2, "num")};
    Send(vu::EncodeReplyState(req, s), {}, "a reply");
  }

  // Raw bytes with fds attached (test front ends speak the protocol badly on purpose).
  void SendRaw(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!info[0].IsTypedArray() && !info[0].IsBuffer()) ThrowCode(env, "EVHOST_BADARG", "bytes must be a Uint8Array");
    Napi::Uint8Array b = info[0].As<Napi::Uint8Array>();
    std::vector<uint8_t> bytes(b.Data(), b.Data() + b.ByteLength());
    std::vector<int> fds;
    if (info.Length() > 1 && !info[1].IsUndefined()) {
      if (!info[1].IsArray()) ThrowCode(env, "EVHOST_BADARG", "fds must be an array");
      Napi::Array a = info[1].As<Napi::Array>();
      if (a.Length() > kMaxSendFds) ThrowCode(env, "EVHOST_BADARG", "at most " + std::to_string(kMaxSendFds) + " fds per message");
      if (bytes.empty() && a.Length() > 0) ThrowCode(env, "EVHOST_BADARG", "fds need at least one byte to go with");
      for (uint32_t i = 0; i < a.Length(); i++) {
        Napi::Value v = a.Get(i);
        if (!v.IsNumber() || v.As<Napi::Number>().Int64Value() < 0) ThrowCode(env, "EVHOST_BADARG", "fds must hold non-negative integers");
        fds.push_back(static_cast<int>(v.As<Napi::Number>().Int64Value()));
      }
    }
    Send(std::move(bytes), fds, "a message");
  }

  void Close(const Napi::CallbackInfo&) {
    if (fd_ < 0) return;
    Shutdown();
    callbacks_.Reset();
    Unref();
  }

  Napi::Value FdGetter(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), fd_); }

  napi_env env_;
  PollWatch<Connection> watch_;
  int fd_ = -1;
  bool back_end_ = true;
  bool read_paused_ = false;
  vu::Reader* reader_ = nullptr;
  Napi::ObjectReference callbacks_;
  std::deque<Outgoing> out_;
  size_t out_bytes_ = 0;
  // Runs while output waits; owned like the poll handle (freed in uv_close's callback).
  uv_timer_t* stall_ = nullptr;
  double stall_ms_ = kSendStallMs;
};

// The listening socket's watcher: calls back (on the JS thread) when a front end is waiting.
class Listener : public Napi::ObjectWrap<Listener> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "VhostUserListener",
                       {InstanceMethod<&Listener::Close>("close"), InstanceMethod<&Listener::Pause>("pause"),
                        InstanceMethod<&Listener::Resume>("resume")});
  }

  explicit Listener(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Listener>(info), env_(info.Env()) {
    Napi::Env env = info.Env();
    int fd = FdArg(info, 0, "listening fd");
    if (!info[1].IsFunction()) ThrowCode(env, "EVHOST_BADARG", "callback must be a function");
    watch_.Start(env, fd, UV_READABLE, this, &Listener::OnReadable, "watching the listening socket");
    cb_ = Napi::Persistent(info[1].As<Napi::Function>());
    Ref();
    napi_add_env_cleanup_hook(env_, &Listener::OnEnvCleanup, this);
  }

  ~Listener() override { Shutdown(); }

 private:
  static void OnReadable(Listener* self, int status, int) {
    Napi::Env env = self->env_;
    Napi::HandleScope scope(env);
    try {
      self->cb_.MakeCallback(env.Global(), {status < 0 ? Napi::Value(Napi::String::New(env, uv_strerror(status))) : env.Null()});
    } catch (const Napi::Error& e) {
      napi_fatal_exception(env, e.Value());
    }
  }

  void Shutdown() {
    if (!watch_.open()) return;
    napi_remove_env_cleanup_hook(env_, &Listener::OnEnvCleanup, this);
    watch_.Close();
    cb_.Reset();
  }

  static void OnEnvCleanup(void* arg) { static_cast<Listener*>(arg)->watch_.Close(); }

  // pause(): no callbacks until resume(); connections wait in the backlog
  // (a back end serving one front end at a time does not take the next yet).
  void Pause(const Napi::CallbackInfo&) { watch_.Pause(); }

  void Resume(const Napi::CallbackInfo&) { watch_.Resume(); }

  // Stops watching; the caller closes the listening fd.
  void Close(const Napi::CallbackInfo&) {
    if (!watch_.open()) return;
    Shutdown();
    Unref();
  }

  napi_env env_;
  PollWatch<Listener> watch_;
  Napi::FunctionReference cb_;
};

}  // namespace

void InitVhostUser(Napi::Env env, Napi::Object exports) {
  Napi::Object v = Napi::Object::New(env);
  v.Set("listen", Napi::Function::New<Listen>(env, "listen"));
  v.Set("accept", Napi::Function::New<Accept>(env, "accept"));
  v.Set("connect", Napi::Function::New<Connect>(env, "connect"));
  v.Set("streamPair", Napi::Function::New<StreamPair>(env, "streamPair"));
  v.Set("memfd", Napi::Function::New<Memfd>(env, "memfd"));
  v.Set("inspectFd", Napi::Function::New<InspectFd>(env, "inspectFd"));
  v.Set("fullEventfd", Napi::Function::New<FullEventfd>(env, "fullEventfd"));
  v.Set("setNonblock", Napi::Function::New<SetNonblock>(env, "setNonblock"));
  v.Set("Connection", Connection::Define(env));
  v.Set("Listener", Listener::Define(env));
  Napi::Object c = Napi::Object::New(env);
  c.Set("HEADER_SIZE", Napi::Number::New(env, vu::kHeaderSize));
  c.Set("MAX_PAYLOAD", Napi::Number::New(env, vu::kMaxPayload));
  c.Set("MAX_FDS", Napi::Number::New(env, vu::kMaxFds));
  c.Set("MAX_MEM_REGIONS", Napi::Number::New(env, vu::kMaxMemRegions));
  c.Set("VERSION", Napi::Number::New(env, vu::kVersion));
  c.Set("FLAG_REPLY", Napi::Number::New(env, vu::kFlagReply));
  c.Set("FLAG_NEED_REPLY", Napi::Number::New(env, vu::kFlagNeedReply));
  c.Set("VRING_NOFD", Napi::Number::New(env, static_cast<double>(vu::kVringNoFd)));
  Napi::Object names = Napi::Object::New(env);
  for (uint32_t r = 1; r <= vu::kLastKnownRequest; r++) names.Set(vu::RequestName(r), Napi::Number::New(env, r));
  c.Set("REQUESTS", names);
  v.Set("constants", c);
  exports.Set("vhostUser", v);
}

}  // namespace vt
