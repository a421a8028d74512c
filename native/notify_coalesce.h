// Used-buffer notification coalescing for one queue (VIRTIO_NET_F_NOTF_COAL,
// virtio 1.3 "Notifications Coalescing"): decides whether the interrupt a
// publication earned goes out now or waits for more packets or a deadline.
// Plain logic with the time passed in; the engine owns the clock and the wait.
#pragma once
#include <cstdint>

namespace vt {

class NotifyCoalescer {
 public:
  // The driver's parameters; with either one 0 every publication interrupts
  // (as the spec says), so coalescing is off.
  void Set(uint32_t max_packets, uint32_t max_usecs) {
    max_packets_ = max_packets;
    max_usecs_ = max_usecs;
  }
  bool active() const { return max_packets_ != 0 && max_usecs_ != 0; }
  // Whether Published() and Due() have anything to decide: coalescing is on,
  // or it was turned off while a window was open (that window still closes).
  bool engaged() const { return active() || open_; }

  // A batch published `n` used entries at `now_ns`; `wanted` says the driver's
  // suppression (flags or used_event) let an interrupt through for them. The
  // first packet opens a window; the interrupt goes out when the window holds
  // max_packets or is max_usecs old, and only if the driver wanted one at some
  // point inside it (a suppressed notification stays suppressed).
  bool Published(uint32_t n, bool wanted, int64_t now_ns) {
    // Off, or nothing published to open a window with: nothing to hold.
    if (!open_ && (!active() || n == 0)) return wanted;
    if (!open_) {
      open_ = true;
      start_ns_ = now_ns;
      packets_ = 0;
    }
    packets_ += n;
    want_ = want_ || wanted;
    return Due(now_ns);
  }

  // Closes the window if its packets or time are up (also right after Set()
  // lowered them, or turned coalescing off); true when an interrupt is owed.
  bool Due(int64_t now_ns) {
    if (!open_) return false;
    if (active() && packets_ < max_packets_ && now_ns < deadline_ns()) return false;
    return Close();
  }

  // Ends the window whatever its state (the worker stops): true when an
  // interrupt is owed.
  bool Close() {
    const bool owed = want_;
    open_ = want_ = false;
    packets_ = 0;
    return owed;
  }

  bool open() const { return open_; }
  // The window owes the driver an interrupt: it is waiting for one, so what
  // the device adds before the window closes is seen no sooner than then.
  bool holding() const { return open_ && want_; }
  // When the open window's time is up (meaningful only while open()).
  int64_t deadline_ns() const { return start_ns_ + int64_t{max_usecs_} * 1000; }

 private:
  uint32_t max_packets_ = 0, max_usecs_ = 0;
  bool open_ = false;   // a packet was published since the last window closed
  bool want_ = false;   // the driver let an interrupt through inside this window
  uint64_t packets_ = 0;
  int64_t start_ns_ = 0;
};

}  // namespace vt
