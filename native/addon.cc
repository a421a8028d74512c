// Module entry: registers the TAP, notification, guest-memory, engine,
// control-queue and vhost-user bindings and exports native/virtio.h's
// constants for the cross-language check.
#include <napi.h>

#include "memory_binding.h"
#include "virtio.h"

namespace vt {
void InitTap(Napi::Env env, Napi::Object exports);      // tap_binding.cc
void InitTapOps(Napi::Env env, Napi::Object exports);   // tap_ops_binding.cc
void InitNotify(Napi::Env env, Napi::Object exports);   // notify.cc
void InitEngine(Napi::Env env, Napi::Object exports);   // engine_binding.cc
void InitCtrl(Napi::Env env, Napi::Object exports);     // ctrl_binding.cc
void InitVhostUser(Napi::Env env, Napi::Object exports);  // vhost_user_binding.cc
}  // namespace vt

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  Napi::Object c = Napi::Object::New(env);
#define VT_EXPORT_CONST(name, value) c.Set(#name, Napi::Number::New(env, static_cast<double>(value)));
  VT_CONSTANTS(VT_EXPORT_CONST)
#undef VT_EXPORT_CONST
  exports.Set("constants", c);
  vt::InitTap(env, exports);
  vt::InitTapOps(env, exports);
  vt::InitNotify(env, exports);
  exports.Set("GuestMemory", vt::GuestMemoryWrap::Define(env));
  vt::InitEngine(env, exports);
  vt::InitCtrl(env, exports);
  vt::InitVhostUser(env, exports);
  return exports;
}

NODE_API_MODULE(vhost_tap, Init)
