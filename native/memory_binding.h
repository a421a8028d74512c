// JS face of guest memory: the `GuestMemory` class of backend/native.ts. It
// owns a MemorySlot (memory.h) that the device's engines and control queue
// share, and pins what the current and every still-used table point into.
#pragma once
#include <napi.h>

#include <memory>
#include <vector>

#include "dirty_log.h"
#include "memory.h"

namespace vt {

class GuestMemoryWrap : public Napi::ObjectWrap<GuestMemoryWrap> {
 public:
  static Napi::Function Define(Napi::Env env);
  // The wrap behind a GuestMemory JS object; throws EVHOST_BADARG naming
  // `what` for anything else (checked by type tag, not by prototype).
  static GuestMemoryWrap* From(const Napi::Value& v, const char* what);

  explicit GuestMemoryWrap(const Napi::CallbackInfo& info);
  ~GuestMemoryWrap() override;

  const std::shared_ptr<MemorySlot>& slot() const { return slot_; }

 private:
  // replace([{ guestAddr, buffer }])
  void Replace(const Napi::CallbackInfo& info);
  // replaceFds([{ guestAddr, size, userAddr, mmapOffset, fd }])
  void ReplaceFds(const Napi::CallbackInfo& info);
  // clear(): no table at all (a vhost-user session ended).
  void Clear(const Napi::CallbackInfo& info);
  Napi::Value UserToGuest(const Napi::CallbackInfo& info);
  Napi::Value Regions(const Napi::CallbackInfo& info);
  Napi::Value CheckRings(const Napi::CallbackInfo& info);
  Napi::Value Read(const Napi::CallbackInfo& info);
  Napi::Value FaultFd(const Napi::CallbackInfo& info);
  // setDirtyLog(fd, mmapSize, mmapOffset): maps the front end's dirty log
  // (vhost-user SET_LOG_BASE) and keeps it until dirtyLog(true) installs it.
  void SetDirtyLog(const Napi::CallbackInfo& info);
  // setDirtyLogBuffer(sharedArrayBuffer): the same over memory of this
  // process (embedders and tests).
  void SetDirtyLogBuffer(const Napi::CallbackInfo& info);
  // dirtyLog(on): the device marks the log from its next batch on (on), or
  // stops marking it; the mapping stays until clearDirtyLog().
  void DirtyLogOn(const Napi::CallbackInfo& info);
  void ClearDirtyLog(const Napi::CallbackInfo& info);
  // Checks a log of `bytes` against the current table; throws when too small.
  void CheckLogCovers(Napi::Env env, uint64_t bytes);
  Napi::Value Faulted(const Napi::CallbackInfo& info);
  int EnsureFaultFd(Napi::Env env);

  // Builds a table over SharedArrayBuffers and installs it.
  void InstallBuffers(const Napi::Value& regions);
  void Install(std::shared_ptr<const MemoryTable> t, std::vector<Napi::ObjectReference> refs);

  std::shared_ptr<MemorySlot> slot_ = std::make_shared<MemorySlot>();
  // The JS buffers a table points into, held while anyone may still use that
  // table (workers hold it until their next batch). Released on the JS thread
  // at the next replace, once the table is gone.
  struct Pinned {
    std::weak_ptr<const MemoryTable> table;
    std::vector<Napi::ObjectReference> refs;
  };
  std::vector<Pinned> pinned_;
  // Fires when a SIGBUS was contained in one of this memory's fd mappings.
  int fault_fd_ = -1;
  // The current fd table's guarded mappings: fault_guard slot, guest address.
  std::vector<std::pair<int, uint64_t>> guards_;
  // The dirty log the front end gave (not necessarily installed in slot_).
  std::shared_ptr<const DirtyLog> log_;
  // setDirtyLogBuffer's buffers, each kept while any worker holds its log.
  std::vector<std::pair<std::weak_ptr<const DirtyLog>, Napi::ObjectReference>> log_pins_;
  void PruneLogPins();
};

}  // namespace vt
