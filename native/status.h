// How plain native code (everything outside the *_binding.cc files) reports
// failure. There are three kinds, and each has one shape:
//   - a system call failed: SysResult (errno, which call, what step it served);
//   - the guest broke a virtio rule: Violation (a stable kebab-case rule name
//     and a detail), which stops a queue and becomes DEVICE_NEEDS_RESET;
//   - a caller passed a bad argument or configuration: `false` plus a reason
//     in a `std::string* why` out-parameter.
// The binding layer turns these into JS errors once (errors.h): SysResult ->
// an errno Error, `why` -> EVHOST_BADARG, Violation -> the onBroken report.
#pragma once
#include <string>

namespace vt {

struct SysResult {
  int err = 0;
  const char* syscall = "";  // e.g. "open", "setns", "ioctl(TUNSETIFF)"
  const char* step = "";     // what the call was for, a string literal the caller may compare
  bool ok() const { return err == 0; }
};

// A rule the guest broke. `rule` is one of the names listed in backend/native.ts
// (a string literal with static lifetime); `detail` says where and how.
struct Violation {
  const char* rule = nullptr;
  std::string detail;
};

}  // namespace vt
