// The Engine JS object (engine_binding.cc) as other native code sees it:
// tap_ops_binding.cc starts and stops engines on a helper thread, so that the
// JS thread never waits for a worker thread to be made or joined.
#pragma once
#include <napi.h>

#include "status.h"

namespace vt {

class EngineWrap;

// The engine behind an Engine JS object, or nullptr for any other value (JS thread).
EngineWrap* EngineFromValue(Napi::Value v);
// Any thread. Serialised with the JS thread's start()/stop()/close() and the
// environment's teardown by the wrap's lock; a closed engine is refused (EBADFD).
SysResult StartEngineAnyThread(EngineWrap* w);
void StopEngineAnyThread(EngineWrap* w, bool drain_rx);
// Engine::SyncRx() from a helper thread (nothing when the engine is closed).
void SyncRxAnyThread(EngineWrap* w);

}  // namespace vt
