// JS bindings for tap.h: the "TAP" and "network device control" parts of the
// contract in backend/native.ts. Thin on purpose: check arguments (throwing
// EVHOST_BADARG naming the argument), call tap.cc, and turn a failure into an
// errno Error whose message says what was being done and what to do about it.
#include <napi.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <string>

#include "errors.h"
#include "tap.h"
#include "virtio.h"

namespace vt {
namespace {

[[noreturn]] void BadArg(Napi::Env env, const std::string& msg) { ThrowCode(env, "EVHOST_BADARG", msg); }

int64_t ArgInt(const Napi::CallbackInfo& info, size_t i, const char* name, int64_t lo, int64_t hi) {
  Napi::Value v = info[i];
  if (!v.IsNumber()) BadArg(info.Env(), std::string("argument '") + name + "' must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || d != std::floor(d))
    BadArg(info.Env(), std::string("argument '") + name + "' must be an integer");
  if (d < static_cast<double>(lo) || d > static_cast<double>(hi))
    BadArg(info.Env(), std::string("argument '") + name + "' must be in " + std::to_string(lo) + ".." +
                           std::to_string(hi) + ", got " + std::to_string(static_cast<int64_t>(d)));
  return static_cast<int64_t>(d);
}

int ArgFd(const Napi::CallbackInfo& info, size_t i) {
  return static_cast<int>(ArgInt(info, i, "fd", 0, 0x7fffffff));
}

bool ArgBool(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (!info[i].IsBoolean()) BadArg(info.Env(), std::string("argument '") + name + "' must be a boolean");
  return info[i].As<Napi::Boolean>().Value();
}

// An interface name: a string of at most 15 bytes (IFNAMSIZ - 1), no NUL.
// `allowEmpty` lets tapOpen ask the kernel to choose ("tap%d").
std::string ArgIfName(const Napi::CallbackInfo& info, size_t i, bool allowEmpty) {
  if (!info[i].IsString()) BadArg(info.Env(), "argument 'name' must be a string");
  std::string name = info[i].As<Napi::String>().Utf8Value();
  if (name.size() > kMaxIfName)
    BadArg(info.Env(), "argument 'name' ('" + name + "') is " + std::to_string(name.size()) +
                           " bytes; Linux interface names hold at most " + std::to_string(kMaxIfName));
  if (name.find('\0') != std::string::npos) BadArg(info.Env(), "argument 'name' must not contain NUL");
  if (name.empty() && !allowEmpty) BadArg(info.Env(), "argument 'name' must not be empty");
  return name;
}

// A namespace path, or null/undefined for the calling thread's own namespace.
// The bool says whether a path was given (the string is kept alive by the caller).
bool ArgNetns(const Napi::CallbackInfo& info, size_t i, std::string* path) {
  Napi::Value v = info[i];
  if (v.IsNull() || v.IsUndefined()) return false;
  if (!v.IsString()) BadArg(info.Env(), "argument 'netnsPath' must be a string (e.g. '/run/netns/NS') or null");
  *path = v.As<Napi::String>().Utf8Value();
  if (path->empty() || path->find('\0') != std::string::npos)
    BadArg(info.Env(), "argument 'netnsPath' must be a non-empty path such as '/run/netns/NS'");
  return true;
}

std::string Hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof(buf), "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

std::string FormatMac(const uint8_t m[6]) {
  char buf[18];
  std::snprintf(buf, sizeof(buf), "%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]);
  return buf;
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool ParseMac(const std::string& s, uint8_t out[6]) {
  if (s.size() != 17) return false;
  for (int k = 0; k < 6; k++) {
    int hi = HexDigit(s[k * 3]), lo = HexDigit(s[k * 3 + 1]);
    if (hi < 0 || lo < 0) return false;
    if (k < 5 && s[k * 3 + 2] != ':') return false;
    out[k] = static_cast<uint8_t>(hi * 16 + lo);
  }
  return true;
}

std::string Where(const char* netns) {
  return netns ? std::string(" in network namespace '") + netns + "'" : std::string();
}

// Throws for a failed tap.cc call. `doing` describes the operation in the
// caller's terms; the step and errno choose the advice appended to it.
[[noreturn]] void ThrowTap(Napi::Env env, const SysResult& r, const std::string& doing, const char* netns) {
  std::string msg = doing;
  const int e = r.err;
  if (r.step == kStepNetnsSave) {
    msg += ": cannot remember the thread's own network namespace (/proc/thread-self/ns/net); is /proc mounted?";
  } else if (r.step == kStepNetnsOpen) {
    if (e == ENOENT)
      msg += ": network namespace '" + std::string(netns) +
             "' does not exist; create it first (ip netns add NAME) or pass an existing path";
    else if (e == EACCES || e == EPERM)
      msg += ": cannot open network namespace '" + std::string(netns) + "'; run as root";
    else
      msg += ": cannot open network namespace '" + std::string(netns) + "'";
  } else if (r.step == kStepNetnsEnter) {
    if (e == EPERM)
      msg += ": entering network namespace '" + std::string(netns) + "' needs CAP_SYS_ADMIN; run as root";
    else if (e == EINVAL)
      msg += ": '" + std::string(netns) + "' is not a network namespace";
    else
      msg += ": cannot enter network namespace '" + std::string(netns) + "'";
  } else if (r.step == kStepOpenTun) {
    if (e == ENOENT || e == ENODEV || e == ENXIO)
      msg += ": /dev/net/tun is missing; load the tun module (modprobe tun)";
    else if (e == EACCES || e == EPERM)
      msg += ": /dev/net/tun refused access; run as root (CAP_NET_ADMIN)";
  } else if (r.step == kStepFeatures) {
    if (e == EOPNOTSUPP)
      msg += ": this kernel's tun driver lacks IFF_TAP, IFF_NO_PI, IFF_VNET_HDR or IFF_MULTI_QUEUE, "
             "all of which vhost-tap needs (Linux 3.8 or later)";
  } else if (r.step == kStepSetIff) {
    if (e == EPERM)
      msg += ": needs CAP_NET_ADMIN" + Where(netns) +
             "; run as root, or have root make a TAP of yours once: ip tuntap add NAME mode tap user USER "
             "multi_queue vnet_hdr";
    else if (e == EINVAL)
      msg += ": the name is invalid, or an interface by that name exists that is not a multi-queue TAP; "
             "choose another name or delete it";
    else if (e == EBUSY)
      msg += ": the device exists and is held exclusively or single-queue; choose another name";
    else if (e == E2BIG)
      msg += ": the TAP already has the most queues tun allows (" + std::to_string(TUN_MAX_QUEUES) + ")";
  } else if (r.step == kStepNetdev || r.step == kStepSocket) {
    if (e == ENODEV)
      msg += ": no such interface" + Where(netns);
    else if (e == EPERM || e == EACCES)
      msg += ": needs CAP_NET_ADMIN" + Where(netns) + "; run as root";
  } else if (r.step == kStepIoctl) {
    if (e == EBADF)
      msg += ": the fd is not open";
    else if (e == ENOTTY)
      msg += ": the fd is not a TAP queue (not from tapOpen)";
    else if (e == EPERM)
      msg += ": needs CAP_NET_ADMIN; run as root";
  }
  ThrowErrno(env, e, r.syscall, msg);
}

std::string FdDesc(int fd) { return "TAP queue fd " + std::to_string(fd); }

// tapOpen(name, netnsPath | null, extraFlags) -> { fd, name }
Napi::Value TapOpenJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = ArgIfName(info, 0, true);
  std::string ns;
  const char* netns = ArgNetns(info, 1, &ns) ? ns.c_str() : nullptr;
  int extra = static_cast<int>(ArgInt(info, 2, "extraFlags", 0, 0xffff));
  // These would change what kind of device or call this is, not tune it.
  const int forbidden = TUN_IFF_TUN | TUN_IFF_ATTACH_QUEUE | TUN_IFF_DETACH_QUEUE;
  if (extra & forbidden)
    BadArg(env, "argument 'extraFlags' (" + Hex(extra) +
                    ") must not include IFF_TUN, IFF_ATTACH_QUEUE or IFF_DETACH_QUEUE");
  int fd = -1;
  std::string actual;
  SysResult r = TapOpen(name, netns, extra, &fd, &actual);
  if (!r.ok()) ThrowTap(env, r, "creating TAP '" + name + "'" + Where(netns), netns);
  Napi::Object o = Napi::Object::New(env);
  o.Set("fd", Napi::Number::New(env, fd));
  o.Set("name", Napi::String::New(env, actual));
  return o;
}

// tapLock(name, netnsPath | null) -> fd; the claim lasts until the fd is closed.
Napi::Value TapLockJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = ArgIfName(info, 0, false);
  std::string ns;
  const char* netns = ArgNetns(info, 1, &ns) ? ns.c_str() : nullptr;
  int fd = -1, holder = 0;
  SysResult r = TapLock(name, netns, &fd, &holder);
  if (!r.ok() && r.err == EADDRINUSE) {
    // No errno text: "bind failed: Address already in use" would only confuse.
    ThrowCode(env, "EBUSY",
              "already in use by another vhost-tap back end" +
                  (holder > 0 ? " (pid " + std::to_string(holder) + ")" : std::string()) + Where(netns) +
                  "; two back ends on one multiqueue TAP would split its traffic between them: stop that one "
                  "or choose another TAP name");
  }
  if (!r.ok()) ThrowTap(env, r, "claiming TAP '" + name + "'" + Where(netns), netns);
  return Napi::Number::New(env, fd);
}

Napi::Value TapGetFeaturesJs(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  unsigned f = 0;
  SysResult r = TapGetFeatures(fd, &f);
  if (!r.ok()) ThrowTap(info.Env(), r, "reading tun features on " + FdDesc(fd), nullptr);
  return Napi::Number::New(info.Env(), f);
}

Napi::Value TapSetVnetHdrSzJs(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  int size = static_cast<int>(ArgInt(info, 1, "size", 0, 0x7fffffff));
  SysResult r = TapSetVnetHdrSz(fd, size);
  if (!r.ok()) {
    std::string doing = "setting the virtio_net_hdr size to " + std::to_string(size) + " on " + FdDesc(fd);
    if (r.err == EINVAL) doing += " (the kernel needs at least 10)";
    ThrowTap(info.Env(), r, doing, nullptr);
  }
  return info.Env().Undefined();
}

Napi::Value TapGetVnetHdrSzJs(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  int size = 0;
  SysResult r = TapGetVnetHdrSz(fd, &size);
  if (!r.ok()) ThrowTap(info.Env(), r, "reading the virtio_net_hdr size of " + FdDesc(fd), nullptr);
  return Napi::Number::New(info.Env(), size);
}

Napi::Value TapSetVnetLeJs(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  bool on = ArgBool(info, 1, "on");
  SysResult r = TapSetVnetLe(fd, on);
  if (!r.ok()) ThrowTap(info.Env(), r, std::string("turning little-endian headers ") + (on ? "on" : "off") +
                                           " on " + FdDesc(fd), nullptr);
  return info.Env().Undefined();
}

Napi::Value TapSetOffloadJs(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  unsigned flags = static_cast<unsigned>(ArgInt(info, 1, "flags", 0, 0xffffffffLL));
  SysResult r = TapSetOffload(fd, flags);
  if (!r.ok()) {
    std::string doing = "setting TAP offloads " + Hex(flags) + " on " + FdDesc(fd);
    if (r.err == EINVAL)
      doing += ": this kernel rejects that combination (segmentation offloads need TUN_F_CSUM; "
               "TUN_F_USO4/6 need Linux 6.2 or later)";
    ThrowTap(info.Env(), r, doing, nullptr);
  }
  return info.Env().Undefined();
}

Napi::Value TapSetQueueJs(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  bool attach = ArgBool(info, 1, "attach");
  SysResult r = TapSetQueue(fd, attach);
  if (!r.ok()) {
    std::string doing = std::string(attach ? "attaching " : "detaching ") + FdDesc(fd);
    if (r.err == EINVAL) doing += attach ? " (already attached?)" : " (already detached?)";
    ThrowTap(info.Env(), r, doing, nullptr);
  }
  return info.Env().Undefined();
}

// tapDiscardQueued(fd, max) -> frames read off the queue and thrown away.
Napi::Value TapDiscardQueuedJs(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  if (!info[1].IsNumber() || !(info[1].As<Napi::Number>().DoubleValue() >= 0))
    ThrowCode(info.Env(), "EVHOST_BADARG", "max must be a number of frames (>= 0)");
  const double max = info[1].As<Napi::Number>().DoubleValue();
  int discarded = 0;
  SysResult r = TapDiscardQueued(fd, max > 1e9 ? 1000000000 : static_cast<int>(max), &discarded);
  if (!r.ok()) ThrowTap(info.Env(), r, "discarding the frames " + FdDesc(fd) + " holds", nullptr);
  return Napi::Number::New(info.Env(), discarded);
}

Napi::Value TapSetCarrierJs(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  bool up = ArgBool(info, 1, "up");
  SysResult r = TapSetCarrier(fd, up);
  if (!r.ok())
    ThrowTap(info.Env(), r, std::string("turning the carrier ") + (up ? "on" : "off") + " via " + FdDesc(fd),
             nullptr);
  return info.Env().Undefined();
}

Napi::Value TapSteerAllToJs(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  if (!info[1].IsNumber()) ThrowCode(info.Env(), "EVHOST_BADARG", "queue must be a number (-1 to remove steering)");
  const int queue = info[1].As<Napi::Number>().Int32Value();
  SysResult r = TapSteerAllTo(fd, queue);
  if (!r.ok()) ThrowTap(info.Env(), r, std::string("setting the steering program via ") + FdDesc(fd), nullptr);
  return info.Env().Undefined();
}

Napi::Value TapSetSteeringProgramJs(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  if (!info[1].IsNumber()) ThrowCode(info.Env(), "EVHOST_BADARG", "prog must be a program fd (-1 to remove steering)");
  const int prog = info[1].As<Napi::Number>().Int32Value();
  SysResult r = TapSetSteeringProgram(fd, prog < 0 ? -1 : prog);
  if (!r.ok()) ThrowTap(info.Env(), r, std::string("setting the steering program via ") + FdDesc(fd), nullptr);
  return info.Env().Undefined();
}

Napi::Value TapSetTxFilterJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  uint16_t flags = static_cast<uint16_t>(ArgInt(info, 1, "flags", 0, 0xffff));
  if (!info[2].IsTypedArray() || info[2].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
    BadArg(env, "argument 'macs' must be a Uint8Array (or Buffer) of 6-byte MAC addresses");
  Napi::Uint8Array macs = info[2].As<Napi::Uint8Array>();
  size_t len = macs.ByteLength();
  if (len % 6 != 0)
    BadArg(env, "argument 'macs' must hold whole 6-byte MAC addresses, got " + std::to_string(len) + " bytes");
  if (len / 6 > 0xffff) BadArg(env, "argument 'macs' holds more than 65535 addresses");
  uint16_t count = static_cast<uint16_t>(len / 6);
  SysResult r = TapSetTxFilter(fd, flags, macs.Data(), count);
  if (!r.ok())
    ThrowTap(env, r, "setting a TX filter of " + std::to_string(count) + " addresses on " + FdDesc(fd), nullptr);
  return env.Undefined();
}

Napi::Value TapSetSndBufJs(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  int bytes = static_cast<int>(ArgInt(info, 1, "bytes", 1, 0x7fffffff));
  SysResult r = TapSetSndBuf(fd, bytes);
  if (!r.ok()) ThrowTap(info.Env(), r, "setting the send buffer of " + FdDesc(fd), nullptr);
  return info.Env().Undefined();
}

Napi::Value CloseJs(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  SysResult r = TapClose(fd);
  if (!r.ok()) ThrowTap(info.Env(), r, "closing fd " + std::to_string(fd), nullptr);
  return info.Env().Undefined();
}

// netdevInfo(netnsPath | null, name) -> { ifindex, mac, mtu, flags }
Napi::Value NetdevInfoJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string ns;
  const char* netns = ArgNetns(info, 0, &ns) ? ns.c_str() : nullptr;
  std::string name = ArgIfName(info, 1, false);
  NetdevState st;
  SysResult r = NetdevGet(netns, name, &st);
  if (!r.ok()) ThrowTap(env, r, "reading interface '" + name + "'" + Where(netns), netns);
  Napi::Object o = Napi::Object::New(env);
  o.Set("ifindex", Napi::Number::New(env, st.ifindex));
  o.Set("mac", Napi::String::New(env, FormatMac(st.mac)));
  o.Set("mtu", Napi::Number::New(env, st.mtu));
  o.Set("flags", Napi::Number::New(env, st.flags));
  return o;
}

Napi::Value NetdevSetUpJs(const Napi::CallbackInfo& info) {
  std::string ns;
  const char* netns = ArgNetns(info, 0, &ns) ? ns.c_str() : nullptr;
  std::string name = ArgIfName(info, 1, false);
  bool up = ArgBool(info, 2, "up");
  SysResult r = NetdevSetUp(netns, name, up);
  if (!r.ok())
    ThrowTap(info.Env(), r, std::string("bringing interface '") + name + "' " + (up ? "up" : "down") + Where(netns),
             netns);
  return info.Env().Undefined();
}

Napi::Value NetdevSetMtuJs(const Napi::CallbackInfo& info) {
  std::string ns;
  const char* netns = ArgNetns(info, 0, &ns) ? ns.c_str() : nullptr;
  std::string name = ArgIfName(info, 1, false);
  int mtu = static_cast<int>(ArgInt(info, 2, "mtu", 0, 0x7fffffff));
  SysResult r = NetdevSetMtu(netns, name, mtu);
  if (!r.ok()) {
    std::string doing = "setting the MTU of '" + name + "'" + Where(netns) + " to " + std::to_string(mtu);
    if (r.err == EINVAL) doing += " (outside the range the device accepts, 68..65535 for a TAP)";
    ThrowTap(info.Env(), r, doing, netns);
  }
  return info.Env().Undefined();
}

Napi::Value NetdevSetMacJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string ns;
  const char* netns = ArgNetns(info, 0, &ns) ? ns.c_str() : nullptr;
  std::string name = ArgIfName(info, 1, false);
  if (!info[2].IsString()) BadArg(env, "argument 'mac' must be a string like '02:00:00:00:00:01'");
  std::string macStr = info[2].As<Napi::String>().Utf8Value();
  uint8_t mac[6];
  if (!ParseMac(macStr, mac))
    BadArg(env, "argument 'mac' ('" + macStr + "') must look like '02:00:00:00:00:01'");
  SysResult r = NetdevSetMac(netns, name, mac);
  if (!r.ok()) {
    std::string doing = "setting the MAC of '" + name + "'" + Where(netns) + " to " + macStr;
    if (r.err == EADDRNOTAVAIL) doing += " (not a unicast address: the first byte must be even)";
    ThrowTap(env, r, doing, netns);
  }
  return env.Undefined();
}

// currentNetns() -> 'net:[inode]' of the calling thread (test support).
Napi::Value CurrentNetnsJs(const Napi::CallbackInfo& info) {
  std::string s;
  SysResult r = CurrentNetns(&s);
  if (!r.ok()) ThrowTap(info.Env(), r, "reading /proc/thread-self/ns/net", nullptr);
  return Napi::String::New(info.Env(), s);
}

}  // namespace

void InitTap(Napi::Env env, Napi::Object exports) {
  auto add = [&](const char* name, Napi::Value (*fn)(const Napi::CallbackInfo&)) {
    exports.Set(name, Napi::Function::New(env, fn, name));
  };
  add("tapOpen", TapOpenJs);
  add("tapLock", TapLockJs);
  add("tapGetFeatures", TapGetFeaturesJs);
  add("tapSetVnetHdrSz", TapSetVnetHdrSzJs);
  add("tapGetVnetHdrSz", TapGetVnetHdrSzJs);
  add("tapSetVnetLe", TapSetVnetLeJs);
  add("tapSetOffload", TapSetOffloadJs);
  add("tapSetQueue", TapSetQueueJs);
  add("tapSetCarrier", TapSetCarrierJs);
  add("tapDiscardQueued", TapDiscardQueuedJs);
  add("tapSteerAllTo", TapSteerAllToJs);
  add("tapSetSteeringProgram", TapSetSteeringProgramJs);
  add("tapSetTxFilter", TapSetTxFilterJs);
  add("tapSetSndBuf", TapSetSndBufJs);
  add("close", CloseJs);
  add("netdevInfo", NetdevInfoJs);
  add("netdevSetUp", NetdevSetUpJs);
  add("netdevSetMtu", NetdevSetMtuJs);
  add("netdevSetMac", NetdevSetMacJs);
  add("currentNetns", CurrentNetnsJs);
}

}  // namespace vt
