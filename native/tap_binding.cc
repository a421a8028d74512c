// STUB, to be replaced: keeps the addon linking while this file is written.
#include <napi.h>
namespace vt {
void InitTap(Napi::Env env, Napi::Object exports) {}
}  // namespace vt
