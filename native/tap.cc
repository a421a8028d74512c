// TAP queues, TUN ioctls and interface control over raw syscalls (see tap.h).
// Everything that may run in another network namespace goes through
// NetnsGuard, which puts the calling thread (Node's main thread) back in its
// own namespace on every path out.
#include "tap.h"

#include <fcntl.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <linux/bpf.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "virtio.h"

namespace vt {

const char* const kStepNetnsSave = "saving the thread's network namespace";
const char* const kStepNetnsOpen = "opening the network namespace";
const char* const kStepNetnsEnter = "entering the network namespace";
const char* const kStepName = "checking the interface name";
const char* const kStepOpenTun = "opening /dev/net/tun";
const char* const kStepFeatures = "checking tun features";
const char* const kStepSetIff = "attaching to the TAP device";
const char* const kStepIoctl = "configuring the TAP queue";
const char* const kStepSocket = "creating the interface-control socket";
const char* const kStepNetdev = "controlling the interface";
const char* const kStepReadlink = "reading the thread's network namespace";
const char* const kStepDiscard = "discarding the frames a TAP queue holds";
const char* const kStepLock = "claiming the TAP for this process";

namespace {

// TUN ioctl numbers, spelled out rather than taken from <linux/if_tun.h>:
// that header defines TUN_F_* as macros, which collide with virtio.h's
// constants of the same names (and Debian 12's copy lacks the USO bits).
constexpr unsigned long kTunSetIff = _IOW('T', 202, int);
constexpr unsigned long kTunGetFeatures = _IOR('T', 207, unsigned int);
constexpr unsigned long kTunSetOffload = _IOW('T', 208, unsigned int);
constexpr unsigned long kTunSetTxFilter = _IOW('T', 209, unsigned int);
constexpr unsigned long kTunSetSteeringEbpf = _IOR('T', 224, int);
constexpr unsigned long kTunSetSndBuf = _IOW('T', 212, int);
constexpr unsigned long kTunGetVnetHdrSz = _IOR('T', 215, int);
constexpr unsigned long kTunSetVnetHdrSz = _IOW('T', 216, int);
constexpr unsigned long kTunSetQueue = _IOW('T', 217, int);
constexpr unsigned long kTunSetVnetLe = _IOW('T', 220, int);
constexpr unsigned long kTunSetCarrier = _IOW('T', 226, int);

SysResult Fail(const char* syscall, const char* step, int err) {
  SysResult r;
  r.err = err != 0 ? err : EIO;  // never report a failure as success
  r.syscall = syscall;
  r.step = step;
  return r;
}

SysResult Ok() { return SysResult{}; }

// Closes an fd when it goes out of scope unless released to the caller.
class UniqueFd {
 public:
  explicit UniqueFd(int fd = -1) : fd_(fd) {}
  ~UniqueFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  int get() const { return fd_; }
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void reset(int fd) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_;
};

// Moves the calling thread into a network namespace and back. setns() is
// per-thread and this runs on Node's main thread, so staying behind in the
// wrong namespace would silently misdirect every later socket the process
// opens from JS; the destructor therefore always returns, and if the kernel
// refuses that, we abort rather than run on in the wrong namespace.
class NetnsGuard {
 public:
  NetnsGuard() = default;
  NetnsGuard(const NetnsGuard&) = delete;
  NetnsGuard& operator=(const NetnsGuard&) = delete;

  // Enters `path`; a null path means "stay where we are" and does nothing.
  SysResult Enter(const char* path) {
    if (path == nullptr) return Ok();
    // Save first: once we have moved, our own namespace has no name we could
    // look up again.
    saved_.reset(::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
    if (saved_.get() < 0) return Fail("open", kStepNetnsSave, errno);
    UniqueFd target(::open(path, O_RDONLY | O_CLOEXEC));
    if (target.get() < 0) return Fail("open", kStepNetnsOpen, errno);
    if (::setns(target.get(), CLONE_NEWNET) != 0) return Fail("setns", kStepNetnsEnter, errno);
    entered_ = true;
    return Ok();
  }

  // Returns to the saved namespace now (also done by the destructor).
  void Leave() {
    if (!entered_) return;
    if (::setns(saved_.get(), CLONE_NEWNET) != 0) {
      int err = errno;
      std::fprintf(stderr,
                   "vhost-tap: cannot return the thread to its own network namespace (setns: %s); "
                   "aborting rather than continuing in the wrong namespace\n",
                   std::strerror(err));
      std::abort();
    }
    entered_ = false;
  }

  ~NetnsGuard() { Leave(); }

 private:
  UniqueFd saved_;
  bool entered_ = false;
};

// Copies an interface name into an ifreq; callers validated the length.
void SetIfName(struct ifreq* ifr, const std::string& name) {
  std::memset(ifr, 0, sizeof(*ifr));
  std::memcpy(ifr->ifr_name, name.data(), name.size() < IFNAMSIZ ? name.size() : IFNAMSIZ - 1);
}

bool NameFits(const std::string& name) {
  return name.size() <= kMaxIfName && name.find('\0') == std::string::npos;
}

// An ioctl socket bound to `netnsPath`. A socket keeps the namespace it was
// created in, so the thread can leave right after creating it and every
// SIOC* request still reaches the devices there.
SysResult OpenControlSocket(const char* netnsPath, UniqueFd* out) {
  NetnsGuard guard;
  SysResult r = guard.Enter(netnsPath);
  if (!r.ok()) return r;
  int s = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  // Interface ioctls are family-independent (they fall through to dev_ioctl),
  // so a kernel or namespace without IPv4 can use a UNIX socket instead.
  if (s < 0 && (errno == EAFNOSUPPORT || errno == EPROTONOSUPPORT))
    s = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return Fail("socket", kStepSocket, errno);
  out->reset(s);
  return Ok();
}

SysResult IntIoctl(int fd, unsigned long req, const char* syscall, int value) {
  if (::ioctl(fd, req, &value) < 0) return Fail(syscall, kStepIoctl, errno);
  return Ok();
}

}  // namespace

SysResult TapOpen(const std::string& name, const char* netnsPath, int extraFlags, int* fd,
                  std::string* actualName) {
  if (!NameFits(name)) return Fail("ioctl(TUNSETIFF)", kStepName, ENAMETOOLONG);

  UniqueFd tun;
  {
    // The namespace a tun device is created in (or looked up in) is the one
    // the opener was in at open() time: tun records it on the file. So only
    // the open() needs to happen inside; TUNSETIFF can follow back home.
    NetnsGuard guard;
    SysResult r = guard.Enter(netnsPath);
    if (!r.ok()) return r;
    tun.reset(::open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC));
    if (tun.get() < 0) return Fail("open", kStepOpenTun, errno);
  }

  // Ask before TUNSETIFF: an old kernel would otherwise create a
  // single-queue or header-less device that only fails later, confusingly.
  unsigned features = 0;
  if (::ioctl(tun.get(), kTunGetFeatures, &features) < 0)
    return Fail("ioctl(TUNGETFEATURES)", kStepFeatures, errno);
  const unsigned needed = TUN_IFF_TAP | TUN_IFF_NO_PI | TUN_IFF_VNET_HDR | TUN_IFF_MULTI_QUEUE;
  if ((features & needed) != needed) return Fail("ioctl(TUNGETFEATURES)", kStepFeatures, EOPNOTSUPP);

  struct ifreq ifr;
  SetIfName(&ifr, name);
  // ifr_flags is a short: the kernel reads just these 16 bits.
  ifr.ifr_flags = static_cast<short>(needed | static_cast<unsigned>(extraFlags));
  if (::ioctl(tun.get(), kTunSetIff, &ifr) < 0) return Fail("ioctl(TUNSETIFF)", kStepSetIff, errno);

  actualName->assign(ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ));
  *fd = tun.release();
  return Ok();
}

SysResult TapLock(const std::string& name, const char* netnsPath, int* fd, int* holderPid) {
  *holderPid = 0;
  if (!NameFits(name)) return Fail("bind", kStepName, ENAMETOOLONG);
  struct sockaddr_un addr;
  std::memset(&addr, 0, sizeof(addr));
  addr.sun_family = AF_UNIX;
  // sun_path[0] == 0: an abstract name, no file, gone with the last fd.
  const std::string abstractName = std::string("vhost-tap/tap/") + name;
  std::memcpy(addr.sun_path + 1, abstractName.data(), abstractName.size());
  const socklen_t len = static_cast<socklen_t>(offsetof(struct sockaddr_un, sun_path) + 1 + abstractName.size());

  UniqueFd s;
  UniqueFd probe;
  {
    // A Unix socket's abstract names are those of the namespace it was created in.
    NetnsGuard guard;
    SysResult r = guard.Enter(netnsPath);
    if (!r.ok()) return r;
    s.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (s.get() < 0) return Fail("socket", kStepLock, errno);
    probe.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  }
  if (::bind(s.get(), reinterpret_cast<struct sockaddr*>(&addr), len) != 0) {
    const int err = errno;
    // Who holds it: the owner listens, and a connection's peer credentials name it.
    // Best effort only; a full backlog (many refused attempts) just leaves the pid out.
    if (err == EADDRINUSE && probe.get() >= 0 &&
        ::connect(probe.get(), reinterpret_cast<struct sockaddr*>(&addr), len) == 0) {
      struct ucred cred;
      socklen_t cl = sizeof(cred);
      if (::getsockopt(probe.get(), SOL_SOCKET, SO_PEERCRED, &cred, &cl) == 0) *holderPid = cred.pid;
    }
    return Fail("bind", kStepLock, err);
  }
  // Listening lets a refused second owner learn our pid (above); nothing is ever accepted.
  if (::listen(s.get(), 1) != 0) return Fail("listen", kStepLock, errno);
  *fd = s.release();
  return Ok();
}

SysResult TapGetFeatures(int fd, unsigned* features) {
  unsigned v = 0;
  if (::ioctl(fd, kTunGetFeatures, &v) < 0) return Fail("ioctl(TUNGETFEATURES)", kStepIoctl, errno);
  *features = v;
  return Ok();
}

SysResult TapSetVnetHdrSz(int fd, int size) {
  return IntIoctl(fd, kTunSetVnetHdrSz, "ioctl(TUNSETVNETHDRSZ)", size);
}

SysResult TapGetVnetHdrSz(int fd, int* size) {
  int v = 0;
  if (::ioctl(fd, kTunGetVnetHdrSz, &v) < 0) return Fail("ioctl(TUNGETVNETHDRSZ)", kStepIoctl, errno);
  *size = v;
  return Ok();
}

SysResult TapSetVnetLe(int fd, bool on) {
  return IntIoctl(fd, kTunSetVnetLe, "ioctl(TUNSETVNETLE)", on ? 1 : 0);
}

SysResult TapSetOffload(int fd, unsigned tunFlags) {
  // Unlike its siblings, TUNSETOFFLOAD takes its argument by value.
  if (::ioctl(fd, kTunSetOffload, static_cast<unsigned long>(tunFlags)) < 0)
    return Fail("ioctl(TUNSETOFFLOAD)", kStepIoctl, errno);
  return Ok();
}

SysResult TapSetQueue(int fd, bool attach) {
  struct ifreq ifr;
  std::memset(&ifr, 0, sizeof(ifr));
  ifr.ifr_flags = static_cast<short>(attach ? TUN_IFF_ATTACH_QUEUE : TUN_IFF_DETACH_QUEUE);
  if (::ioctl(fd, kTunSetQueue, &ifr) < 0) return Fail("ioctl(TUNSETQUEUE)", kStepIoctl, errno);
  return Ok();
}

SysResult TapSetCarrier(int fd, bool up) {
  return IntIoctl(fd, kTunSetCarrier, "ioctl(TUNSETCARRIER)", up ? 1 : 0);
}

SysResult TapSetTxFilter(int fd, uint16_t flags, const uint8_t* macs, uint16_t count) {
  // struct tun_filter is { u16 flags; u16 count; u8 addr[count][6]; }, built
  // by hand because its flexible array cannot be declared with a size.
  std::vector<uint8_t> buf(4 + static_cast<size_t>(count) * 6);
  std::memcpy(buf.data(), &flags, 2);
  std::memcpy(buf.data() + 2, &count, 2);
  if (count > 0) std::memcpy(buf.data() + 4, macs, static_cast<size_t>(count) * 6);
  // Success is not always 0 here: tun returns how many addresses it matches
  // exactly, so only a negative result is a failure (the same test is used
  // for every ioctl in this file).
  if (::ioctl(fd, kTunSetTxFilter, buf.data()) < 0) return Fail("ioctl(TUNSETTXFILTER)", kStepIoctl, errno);
  return Ok();
}

// How often a steering program's load is tried when the verifier answers EAGAIN.
constexpr int kBpfLoadAttempts = 5;

SysResult TapSteerAllTo(int fd, int queue) {
  int prog = -1;
  if (queue >= 0) {
    // A two-instruction socket filter, "r0 = queue; exit": tun takes its return
    // value modulo the number of queues as the queue for every frame.
    bpf_insn insns[2];
    std::memset(insns, 0, sizeof insns);
    insns[0].code = BPF_ALU64 | BPF_MOV | BPF_K;
    insns[0].dst_reg = BPF_REG_0;
    insns[0].imm = queue;
    insns[1].code = BPF_JMP | BPF_EXIT;
    bpf_attr attr;
    std::memset(&attr, 0, sizeof attr);
    attr.prog_type = BPF_PROG_TYPE_SOCKET_FILTER;
    attr.insn_cnt = 2;
    attr.insns = reinterpret_cast<uintptr_t>(insns);
    attr.license = reinterpret_cast<uintptr_t>("Dual MIT/GPL");
    // The verifier gives up with EAGAIN when a signal is pending (a Node
    // process gets SIGCHLD whenever a child ends), whatever the program; it
    // is worth asking again, as libbpf does.
    for (int attempt = 0; attempt < kBpfLoadAttempts; attempt++) {
      prog = static_cast<int>(::syscall(SYS_bpf, BPF_PROG_LOAD, &attr, sizeof attr));
      if (prog >= 0 || errno != EAGAIN) break;
    }
    if (prog < 0) return Fail("bpf(BPF_PROG_LOAD)", kStepIoctl, errno);
  }
  // tun holds its own reference to the program; ours goes right away.
  const SysResult r = TapSetSteeringProgram(fd, prog);
  if (prog >= 0) ::close(prog);
  return r;
}

SysResult TapSetSteeringProgram(int fd, int prog) {
  // tun swaps the program under RCU: each frame runs either the old program
  // or the new one, never none.
  if (::ioctl(fd, kTunSetSteeringEbpf, &prog) < 0) return Fail("ioctl(TUNSETSTEERINGEBPF)", kStepIoctl, errno);
  return Ok();
}

SysResult TapSetSndBuf(int fd, int bytes) {
  return IntIoctl(fd, kTunSetSndBuf, "ioctl(TUNSETSNDBUF)", bytes);
}

SysResult TapDiscardQueued(int fd, int max, int* discarded) {
  *discarded = 0;
  // Big enough for any frame tun hands out: a 64 KiB GSO frame plus the largest vnet header.
  std::vector<uint8_t> scratch(65536 + 64);
  while (*discarded < max) {
    const ssize_t n = read(fd, scratch.data(), scratch.size());
    if (n < 0 && errno == EINTR) continue;
    // EBADFD: the TAP was deleted, and its queues with it: nothing left to take.
    if (n < 0 && (errno == EAGAIN || errno == EBADFD)) break;
    if (n < 0) return Fail("read", kStepDiscard, errno);
    if (n == 0) break;
    ++*discarded;
  }
  return {};
}

SysResult TapClose(int fd) {
  // Linux releases the fd even when close() reports EINTR; retrying could
  // close an fd another thread just got, so EINTR counts as done.
  if (::close(fd) != 0 && errno != EINTR) return Fail("close", kStepIoctl, errno);
  return Ok();
}

SysResult NetdevGet(const char* netnsPath, const std::string& name, NetdevState* out) {
  if (!NameFits(name)) return Fail("ioctl(SIOCGIFINDEX)", kStepName, EINVAL);
  UniqueFd sock;
  SysResult r = OpenControlSocket(netnsPath, &sock);
  if (!r.ok()) return r;
  struct ifreq ifr;

  SetIfName(&ifr, name);
  if (::ioctl(sock.get(), SIOCGIFINDEX, &ifr) < 0) return Fail("ioctl(SIOCGIFINDEX)", kStepNetdev, errno);
  out->ifindex = ifr.ifr_ifindex;

  SetIfName(&ifr, name);
  if (::ioctl(sock.get(), SIOCGIFHWADDR, &ifr) < 0) return Fail("ioctl(SIOCGIFHWADDR)", kStepNetdev, errno);
  std::memcpy(out->mac, ifr.ifr_hwaddr.sa_data, 6);

  SetIfName(&ifr, name);
  if (::ioctl(sock.get(), SIOCGIFMTU, &ifr) < 0) return Fail("ioctl(SIOCGIFMTU)", kStepNetdev, errno);
  out->mtu = ifr.ifr_mtu;

  SetIfName(&ifr, name);
  if (::ioctl(sock.get(), SIOCGIFFLAGS, &ifr) < 0) return Fail("ioctl(SIOCGIFFLAGS)", kStepNetdev, errno);
  out->flags = static_cast<unsigned short>(ifr.ifr_flags);
  return Ok();
}

SysResult NetdevSetUp(const char* netnsPath, const std::string& name, bool up) {
  if (!NameFits(name)) return Fail("ioctl(SIOCSIFFLAGS)", kStepName, EINVAL);
  UniqueFd sock;
  SysResult r = OpenControlSocket(netnsPath, &sock);
  if (!r.ok()) return r;
  // Read-modify-write so that only IFF_UP changes.
  struct ifreq ifr;
  SetIfName(&ifr, name);
  if (::ioctl(sock.get(), SIOCGIFFLAGS, &ifr) < 0) return Fail("ioctl(SIOCGIFFLAGS)", kStepNetdev, errno);
  unsigned short flags = static_cast<unsigned short>(ifr.ifr_flags);
  flags = up ? (flags | IFF_UP) : (flags & ~IFF_UP);
  ifr.ifr_flags = static_cast<short>(flags);
  if (::ioctl(sock.get(), SIOCSIFFLAGS, &ifr) < 0) return Fail("ioctl(SIOCSIFFLAGS)", kStepNetdev, errno);
  return Ok();
}

SysResult NetdevSetMtu(const char* netnsPath, const std::string& name, int mtu) {
  if (!NameFits(name)) return Fail("ioctl(SIOCSIFMTU)", kStepName, EINVAL);
  UniqueFd sock;
  SysResult r = OpenControlSocket(netnsPath, &sock);
  if (!r.ok()) return r;
  struct ifreq ifr;
  SetIfName(&ifr, name);
  ifr.ifr_mtu = mtu;
  if (::ioctl(sock.get(), SIOCSIFMTU, &ifr) < 0) return Fail("ioctl(SIOCSIFMTU)", kStepNetdev, errno);
  return Ok();
}

SysResult NetdevSetMac(const char* netnsPath, const std::string& name, const uint8_t mac[6]) {
  if (!NameFits(name)) return Fail("ioctl(SIOCSIFHWADDR)", kStepName, EINVAL);
  UniqueFd sock;
  SysResult r = OpenControlSocket(netnsPath, &sock);
  if (!r.ok()) return r;
  struct ifreq ifr;
  SetIfName(&ifr, name);
  ifr.ifr_hwaddr.sa_family = ARPHRD_ETHER;
  std::memcpy(ifr.ifr_hwaddr.sa_data, mac, 6);
  if (::ioctl(sock.get(), SIOCSIFHWADDR, &ifr) < 0) return Fail("ioctl(SIOCSIFHWADDR)", kStepNetdev, errno);
  return Ok();
}

SysResult CurrentNetns(std::string* out) {
  char buf[64];
  ssize_t n = ::readlink("/proc/thread-self/ns/net", buf, sizeof(buf));
  if (n < 0) return Fail("readlink", kStepReadlink, errno);
  out->assign(buf, static_cast<size_t>(n));
  return Ok();
}

}  // namespace vt
