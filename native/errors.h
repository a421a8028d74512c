// Turning failed system calls and broken preconditions into JS Errors with a
// `code` (errno name or EVHOST_*) and `syscall`; backend/errors.ts maps them to
// typed errors. The one place native/ builds an Error object.
#pragma once
#include <napi.h>
#include <string>

namespace vt {

// Throws an Error for errno `err` from `syscall`; `what` says what was being done.
[[noreturn]] void ThrowErrno(Napi::Env env, int err, const char* syscall, const std::string& what);
// The same Error, not thrown: for a promise that work off the JS thread rejects.
Napi::Error ErrnoError(Napi::Env env, int err, const char* syscall, const std::string& what);

// Throws an Error with code `code` (e.g. "EVHOST_BADARG").
[[noreturn]] void ThrowCode(Napi::Env env, const char* code, const std::string& message);

// Reads a required integer property or throws EVHOST_BADARG naming it.
int64_t GetInt(const Napi::Object& o, const char* name);
bool GetBool(const Napi::Object& o, const char* name);

}  // namespace vt
