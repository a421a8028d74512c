// GuestMemory for JS (see memory_binding.h): argument checks, pinning
// SharedArrayBuffers, mapping vhost-user region fds, and the translation
// queries the backend needs. The table logic itself is memory.cc.
#include "memory_binding.h"

#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>

#include "errors.h"
#include "fault_guard.h"
#include "virtqueue.h"

namespace vt {

namespace {

// Tags GuestMemory objects so that other bindings can tell one from a look-alike.
const napi_type_tag kGuestMemoryTag = {0x7668'6f73'742d'7461ULL, 0x6775'6573'746d'656dULL};

[[noreturn]] void BadArg(Napi::Env env, const std::string& msg) { ThrowCode(env, "EVHOST_BADARG", msg); }

// Largest integer a JS number holds exactly; guest addresses and sizes above
// it cannot be named from JS without loss.
constexpr double kMaxSafe = 9007199254740991.0;

uint64_t SafeUint(const Napi::Object& o, const char* name, const std::string& where) {
  Napi::Value v = o.Get(name);
  if (!v.IsNumber()) BadArg(o.Env(), where + "'" + name + "' must be a number");
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || d < 0 || d != std::floor(d) || d > kMaxSafe)
    BadArg(o.Env(), where + "'" + name + "' must be a non-negative safe integer");
  return static_cast<uint64_t>(d);
}

Napi::Array RegionList(const Napi::Value& v, const char* method) {
  if (!v.IsArray()) BadArg(v.Env(), std::string(method) + " takes an array of regions");
  Napi::Array a = v.As<Napi::Array>();
  if (a.Length() == 0) BadArg(v.Env(), std::string(method) + ": guest memory needs at least one region");
  if (a.Length() > kMaxRegions)
    BadArg(v.Env(), std::string(method) + ": at most " + std::to_string(kMaxRegions) + " regions");
  return a;
}

// The memory of a real SharedArrayBuffer: its base and length as V8 knows
// them. Node 20's Node-API has no SharedArrayBuffer accessor, but a DataView
// over one is an ordinary DataView whose data pointer it hands out, and the
// DataView constructor accepts nothing but a real buffer — not a Proxy, not a
// typed array, not an array-like it would copy. The buffer the view reports
// must be the very object given, and not an ArrayBuffer (which can be
// detached, freeing the memory under the workers).
void SharedBufferMemory(Napi::Env env, const Napi::Value& buf, const std::string& where, uint8_t** data,
                        uint64_t* len) {
  bool is_ab = false;
  napi_is_arraybuffer(env, buf, &is_ab);
  if (is_ab || !buf.IsObject())
    BadArg(env, where + "'buffer' must be a SharedArrayBuffer (an ArrayBuffer can be detached under the device)");
  Napi::Function dv_ctor = env.Global().Get("DataView").As<Napi::Function>();
  napi_value view;
  napi_value arg = buf;
  if (napi_new_instance(env, dv_ctor, 1, &arg, &view) != napi_ok) {
    napi_value ignored;
    napi_get_and_clear_last_exception(env, &ignored);
    BadArg(env, where + "'buffer' must be a SharedArrayBuffer itself (not a Proxy, view or copy of one)");
  }
  size_t length = 0, offset = 0;
  void* base = nullptr;
  napi_value ab;
  if (napi_get_dataview_info(env, view, &length, &base, &ab, &offset) != napi_ok)
    BadArg(env, where + "'buffer': cannot read the SharedArrayBuffer's memory");
  bool same = false;
  napi_strict_equals(env, ab, buf, &same);
  if (!same) BadArg(env, where + "'buffer' must be a SharedArrayBuffer itself (not a Proxy, view or copy of one)");
  if (length == 0 || base == nullptr) BadArg(env, where + "'buffer' is empty");
  *data = static_cast<uint8_t*>(base);
  *len = length;
}

}  // namespace

Napi::Function GuestMemoryWrap::Define(Napi::Env env) {
  return DefineClass(env, "GuestMemory",
                     {InstanceMethod<&GuestMemoryWrap::Replace>("replace"),
                      InstanceMethod<&GuestMemoryWrap::ReplaceFds>("replaceFds"),
                      InstanceMethod<&GuestMemoryWrap::Clear>("clear"),
                      InstanceMethod<&GuestMemoryWrap::UserToGuest>("userToGuest"),
                      InstanceMethod<&GuestMemoryWrap::Regions>("regions"),
                      InstanceMethod<&GuestMemoryWrap::CheckRings>("checkRings"),
                      InstanceMethod<&GuestMemoryWrap::Read>("read"),
                      InstanceMethod<&GuestMemoryWrap::FaultFd>("faultFd"),
                      InstanceMethod<&GuestMemoryWrap::Faulted>("faulted"),
                      InstanceMethod<&GuestMemoryWrap::SetDirtyLog>("setDirtyLog"),
                      InstanceMethod<&GuestMemoryWrap::SetDirtyLogBuffer>("setDirtyLogBuffer"),
                      InstanceMethod<&GuestMemoryWrap::DirtyLogOn>("dirtyLog"),
                      InstanceMethod<&GuestMemoryWrap::ClearDirtyLog>("clearDirtyLog")});
}

GuestMemoryWrap* GuestMemoryWrap::From(const Napi::Value& v, const char* what) {
  bool tagged = false;
  if (v.IsObject()) napi_check_object_type_tag(v.Env(), v, &kGuestMemoryTag, &tagged);
  if (!tagged) BadArg(v.Env(), std::string("option '") + what + "' must be a GuestMemory");
  return Unwrap(v.As<Napi::Object>());
}

// new GuestMemory([{ guestAddr, buffer }]) or new GuestMemory() for one that
// replaceFds() fills later (vhost-user: the front end sends the table).
GuestMemoryWrap::GuestMemoryWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<GuestMemoryWrap>(info) {
  napi_type_tag_object(info.Env(), info.This(), &kGuestMemoryTag);
  if (info.Length() > 0 && !info[0].IsUndefined()) InstallBuffers(info[0]);
}

void GuestMemoryWrap::Replace(const Napi::CallbackInfo& info) { InstallBuffers(info[0]); }

void GuestMemoryWrap::InstallBuffers(const Napi::Value& list) {
  Napi::Env env = list.Env();
  Napi::Array a = RegionList(list, "GuestMemory");
  std::vector<Region> regions;
  std::vector<Napi::ObjectReference> refs;
  for (uint32_t i = 0; i < a.Length(); i++) {
    const std::string where = "region " + std::to_string(i) + ": ";
    Napi::Value e = a.Get(i);
    if (!e.IsObject()) BadArg(env, where + "must be an object { guestAddr, buffer }");
    Napi::Object o = e.As<Napi::Object>();
    Region r;
    r.guest_addr = SafeUint(o, "guestAddr", where);
    Napi::Value buf = o.Get("buffer");
    SharedBufferMemory(env, buf, where, &r.host, &r.size);
    regions.push_back(r);
    refs.push_back(Napi::Persistent(buf.As<Napi::Object>()));
  }
  std::string why;
  std::shared_ptr<const MemoryTable> t = MemoryTable::Make(std::move(regions), {}, &why);
  if (!t) BadArg(env, "guest memory: " + why);
  Install(std::move(t), std::move(refs));
}

GuestMemoryWrap::~GuestMemoryWrap() {
  // Mappings still registered hold their own copy of it.
  if (fault_fd_ >= 0) close(fault_fd_);
}

int GuestMemoryWrap::EnsureFaultFd(Napi::Env env) {
  if (fault_fd_ < 0) {
    fault_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fault_fd_ < 0) ThrowErrno(env, errno, "eventfd", "creating guest memory's fault eventfd");
  }
  return fault_fd_;
}

// faultFd(): an eventfd that fires when a SIGBUS was contained in a mapping
// of this memory (the front end shrank a region's file under it).
Napi::Value GuestMemoryWrap::FaultFd(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), EnsureFaultFd(info.Env()));
}

// faulted(): the guest addresses of the current table's regions in which a
// SIGBUS was contained (they read zeros since).
Napi::Value GuestMemoryWrap::Faulted(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Array out = Napi::Array::New(env);
  uint32_t n = 0;
  for (const auto& [slot, gpa] : guards_)
    if (fault_guard::Faulted(slot)) out.Set(n++, Napi::Number::New(env, static_cast<double>(gpa)));
  return out;
}

void GuestMemoryWrap::ReplaceFds(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Array a = RegionList(info[0], "replaceFds");
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  const bool had_fault_fd = fault_fd_ >= 0;
  const int notify = EnsureFaultFd(env);
  // A first table refused below leaves no fault eventfd behind (the memory may
  // wait long for the garbage collector).
  struct DropNew {
    GuestMemoryWrap* self;
    bool armed;
    ~DropNew() {
      if (armed && self->fault_fd_ >= 0) {
        close(self->fault_fd_);
        self->fault_fd_ = -1;
      }
    }
  } drop_new{this, !had_fault_fd};
  std::vector<std::pair<int, uint64_t>> guards;
  std::vector<Region> regions;
  std::vector<std::shared_ptr<void>> owners;  // unmap on any failure below, and when the table goes
  for (uint32_t i = 0; i < a.Length(); i++) {
    const std::string where = "region " + std::to_string(i) + ": ";
    Napi::Value e = a.Get(i);
    if (!e.IsObject()) BadArg(env, where + "must be an object { guestAddr, size, userAddr, mmapOffset, fd }");
    Napi::Object o = e.As<Napi::Object>();
    Region r;
    r.guest_addr = SafeUint(o, "guestAddr", where);
    r.size = SafeUint(o, "size", where);
    r.user_addr = SafeUint(o, "userAddr", where);
    const uint64_t offset = SafeUint(o, "mmapOffset", where);
    const uint64_t fd64 = SafeUint(o, "fd", where);
    if (fd64 > INT32_MAX) BadArg(env, where + "'fd' is not a file descriptor");
    const int fd = static_cast<int>(fd64);
    if (r.size == 0) BadArg(env, where + "size is 0");
    if (offset > UINT64_MAX - r.size) BadArg(env, where + "mmapOffset + size overflows");
    struct stat st;
    if (fstat(fd, &st) != 0) ThrowErrno(env, errno, "fstat", where + "checking the region's fd");
    // Shared memory is a file: a memfd, or one on tmpfs or hugetlbfs. Anything
    // else (a device, a socket, an eventfd) is not memory the guest can share.
    if (!S_ISREG(st.st_mode)) BadArg(env, where + "the fd is not a regular file or memfd (shared guest memory)");
    // Never map more than the front end gave: the region must lie inside the file.
    if (st.st_size < 0 || offset + r.size > static_cast<uint64_t>(st.st_size))
      BadArg(env, where + "mmapOffset " + std::to_string(offset) + " + size " + std::to_string(r.size) +
                      " exceeds the fd's " + std::to_string(st.st_size) + " bytes");
    // mmap offsets must be page-aligned: map from the page holding the region's
    // first byte, which stays inside the file.
    const uint64_t start = offset - offset % page;
    const uint64_t maplen = offset - start + r.size;
    void* base = mmap(nullptr, maplen, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, static_cast<off_t>(start));
    if (base == MAP_FAILED) ThrowErrno(env, errno, "mmap", where + "mapping the region's fd");
    // A front end that shrinks the file later would make every access past its
    // new end raise SIGBUS: contained (fault_guard.h), the session then ends.
    const int slot = fault_guard::Register(base, maplen, notify);
    if (slot < 0) {
      munmap(base, maplen);
      ThrowCode(env, "ENOMEM", where + "too many guest memory mappings at once to guard against SIGBUS");
    }
    owners.emplace_back(base, [maplen, slot](void* p) {
      fault_guard::Unregister(slot);
      munmap(p, maplen);
    });
    guards.emplace_back(slot, r.guest_addr);
    r.host = static_cast<uint8_t*>(base) + (offset - start);
    regions.push_back(r);
  }
  std::string why;
  std::shared_ptr<const MemoryTable> t = MemoryTable::Make(std::move(regions), std::move(owners), &why);
  if (!t) BadArg(env, "guest memory: " + why);
  Install(std::move(t), {});
  guards_ = std::move(guards);
  drop_new.armed = false;
}

// The table goes now (its mappings with it) unless a worker still holds it:
// then it goes when that worker lets go. Engines and control queues cannot
// start on a cleared memory (Validate: "no guest memory").
void GuestMemoryWrap::Clear(const Napi::CallbackInfo&) {
  slot_->Set(nullptr);
  guards_.clear();
  // Mappings a worker still holds keep their own copy; a later replaceFds makes a new one.
  if (fault_fd_ >= 0) close(fault_fd_);
  fault_fd_ = -1;
  for (size_t i = 0; i < pinned_.size();) {
    if (pinned_[i].table.expired()) pinned_.erase(pinned_.begin() + static_cast<ptrdiff_t>(i));
    else i++;
  }
}

void GuestMemoryWrap::Install(std::shared_ptr<const MemoryTable> t, std::vector<Napi::ObjectReference> refs) {
  std::weak_ptr<const MemoryTable> weak = t;
  slot_->Set(std::move(t));
  // Let go of buffers whose tables no worker holds any more.
  for (size_t i = 0; i < pinned_.size();) {
    if (pinned_[i].table.expired()) pinned_.erase(pinned_.begin() + static_cast<ptrdiff_t>(i));
    else i++;
  }
  pinned_.push_back(Pinned{std::move(weak), std::move(refs)});
}

void GuestMemoryWrap::CheckLogCovers(Napi::Env env, uint64_t bytes) {
  std::shared_ptr<const MemoryTable> t = slot_->Get();
  if (!t) return;  // checked again when logging is switched on
  const uint64_t need = DirtyLogBytesFor(t->guest_end());
  if (bytes < need)
    BadArg(env, "dirty log of " + std::to_string(bytes) + " bytes is too small for guest memory up to guest address " +
                    std::to_string(t->guest_end()) + ": it needs " + std::to_string(need) +
                    " bytes (one bit per 4 KiB page)");
}

void GuestMemoryWrap::SetDirtyLog(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object args = Napi::Object::New(env);
  args.Set("fd", info[0]);
  args.Set("mmapSize", info[1]);
  args.Set("mmapOffset", info[2]);
  const uint64_t fd64 = SafeUint(args, "fd", "setDirtyLog: ");
  const uint64_t size = SafeUint(args, "mmapSize", "setDirtyLog: ");
  const uint64_t offset = SafeUint(args, "mmapOffset", "setDirtyLog: ");
  if (fd64 > INT32_MAX) BadArg(env, "setDirtyLog: 'fd' is not a file descriptor");
  const int fd = static_cast<int>(fd64);
  if (size == 0) BadArg(env, "dirty log: mmap_size is 0");
  if (offset > UINT64_MAX - size) BadArg(env, "dirty log: mmap_offset + mmap_size overflows");
  CheckLogCovers(env, size);
  struct stat st;
  if (fstat(fd, &st) != 0) ThrowErrno(env, errno, "fstat", "checking the dirty log's fd");
  if (!S_ISREG(st.st_mode)) BadArg(env, "dirty log: the fd is not a regular file or memfd (shared memory)");
  if (st.st_size < 0 || offset + size > static_cast<uint64_t>(st.st_size))
    BadArg(env, "dirty log: mmap_offset " + std::to_string(offset) + " + mmap_size " + std::to_string(size) +
                    " exceeds the fd's " + std::to_string(st.st_size) + " bytes");
  // Mapped from 0 so that any offset works; only [offset, offset + size) is used.
  const uint64_t maplen = offset + size;
  void* base = mmap(nullptr, maplen, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
  if (base == MAP_FAILED) ThrowErrno(env, errno, "mmap", "mapping the dirty log");
  // A front end that shrinks the log's file under the workers: contained as
  // for guest memory (the marks land in zero pages).
  const int slot = fault_guard::Register(base, maplen, EnsureFaultFd(env));
  if (slot < 0) {
    munmap(base, maplen);
    ThrowCode(env, "ENOMEM", "too many mappings at once to guard the dirty log against SIGBUS");
  }
  std::shared_ptr<void> owner(base, [maplen, slot](void* p) {
    fault_guard::Unregister(slot);
    munmap(p, maplen);
  });
  const bool on = slot_->GetLog() != nullptr;
  log_ = std::make_shared<DirtyLog>(static_cast<uint8_t*>(base) + offset, size, std::move(owner));
  PruneLogPins();
  // A new base while logging runs (the front end resized it) takes over at once.
  if (on) slot_->SetLog(log_);
}

void GuestMemoryWrap::SetDirtyLogBuffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint8_t* data = nullptr;
  uint64_t len = 0;
  SharedBufferMemory(env, info[0], "setDirtyLogBuffer: ", &data, &len);
  CheckLogCovers(env, len);
  const bool on = slot_->GetLog() != nullptr;
  log_ = std::make_shared<DirtyLog>(data, len, nullptr);
  log_pins_.emplace_back(log_, Napi::Persistent(info[0].As<Napi::Object>()));
  PruneLogPins();
  if (on) slot_->SetLog(log_);
}

void GuestMemoryWrap::DirtyLogOn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsBoolean()) BadArg(env, "dirtyLog takes true or false");
  if (!info[0].As<Napi::Boolean>().Value()) {
    slot_->SetLog(nullptr);
    return;
  }
  if (!log_) ThrowCode(env, "EVHOST_STATE", "dirty logging cannot start: no dirty log was given (SET_LOG_BASE)");
  CheckLogCovers(env, log_->bytes());
  slot_->SetLog(log_);
}

void GuestMemoryWrap::ClearDirtyLog(const Napi::CallbackInfo&) {
  slot_->SetLog(nullptr);
  // Workers still marking it hold their own reference (and so keep a mapping,
  // or a pinned buffer, alive) until their next batch.
  log_.reset();
  PruneLogPins();
}

void GuestMemoryWrap::PruneLogPins() {
  for (size_t i = 0; i < log_pins_.size();) {
    if (log_pins_[i].first.expired()) log_pins_.erase(log_pins_.begin() + static_cast<ptrdiff_t>(i));
    else i++;
  }
}

// userToGuest(userAddr, len) -> guest address, or -1
Napi::Value GuestMemoryWrap::UserToGuest(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object args = Napi::Object::New(env);
  args.Set("userAddr", info[0]);
  args.Set("len", info[1]);
  const uint64_t uva = SafeUint(args, "userAddr", "userToGuest: ");
  const uint64_t len = SafeUint(args, "len", "userToGuest: ");
  std::shared_ptr<const MemoryTable> t = slot_->Get();
  uint64_t gpa = 0;
  if (!t || !t->UserToGuest(uva, len, &gpa)) return Napi::Number::New(env, -1);
  return Napi::Number::New(env, static_cast<double>(gpa));
}

Napi::Value GuestMemoryWrap::Regions(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::shared_ptr<const MemoryTable> t = slot_->Get();
  Napi::Array out = Napi::Array::New(env);
  if (!t) return out;
  uint32_t i = 0;
  for (const Region& r : t->regions()) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("guestAddr", Napi::Number::New(env, static_cast<double>(r.guest_addr)));
    o.Set("size", Napi::Number::New(env, static_cast<double>(r.size)));
    o.Set("userAddr", Napi::Number::New(env, static_cast<double>(r.user_addr)));
    out.Set(i++, o);
  }
  return out;
}

// checkRings([{ size, desc, avail, used }]) -> null | { rule, detail }: the
// ring layout rules (virtqueue.cc CheckLayouts) against the current table.
Napi::Value GuestMemoryWrap::CheckRings(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArray()) BadArg(env, "checkRings takes an array of { size, desc, avail, used }");
  Napi::Array a = info[0].As<Napi::Array>();
  std::vector<QueueLayout> ls;
  for (uint32_t i = 0; i < a.Length(); i++) {
    const std::string where = "ring " + std::to_string(i) + ": ";
    Napi::Value e = a.Get(i);
    if (!e.IsObject()) BadArg(env, where + "must be an object { size, desc, avail, used }");
    Napi::Object o = e.As<Napi::Object>();
    QueueLayout l;
    const uint64_t size = SafeUint(o, "size", where);
    l.size = size > RING_MAX_SIZE ? 0 : static_cast<uint32_t>(size);  // 0 fails the size rule below
    l.desc = SafeUint(o, "desc", where);
    l.avail = SafeUint(o, "avail", where);
    l.used = SafeUint(o, "used", where);
    // A packed ring (VIRTIO_F_RING_PACKED): desc, avail, used are the
    // descriptor ring and the driver and device event areas.
    l.packed = !o.Get("packed").IsUndefined() && GetBool(o, "packed");
    ls.push_back(l);
  }
  std::shared_ptr<const MemoryTable> t = slot_->Get();
  if (!t) ThrowCode(env, "EVHOST_STATE", "guest memory has no regions yet");
  Violation v;
  if (CheckLayouts(*t, ls.data(), ls.size(), &v)) return env.Null();
  Napi::Object o = Napi::Object::New(env);
  o.Set("rule", Napi::String::New(env, v.rule));
  o.Set("detail", Napi::String::New(env, v.detail));
  return o;
}

// read(guestAddr, len) -> a copy of guest memory (tests and diagnostics).
Napi::Value GuestMemoryWrap::Read(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object args = Napi::Object::New(env);
  args.Set("guestAddr", info[0]);
  args.Set("len", info[1]);
  const uint64_t gpa = SafeUint(args, "guestAddr", "read: ");
  const uint64_t len = SafeUint(args, "len", "read: ");
  if (len > (64u << 20)) BadArg(env, "read: at most 64 MiB at a time");
  std::shared_ptr<const MemoryTable> t = slot_->Get();
  Napi::Buffer<uint8_t> out = Napi::Buffer<uint8_t>::New(env, static_cast<size_t>(len));
  if (!t || !t->Read(gpa, out.Data(), static_cast<size_t>(len)))
    BadArg(env, "read: [" + std::to_string(gpa) + ", +" + std::to_string(len) + ") is not in guest memory");
  return out;
}

}  // namespace vt
