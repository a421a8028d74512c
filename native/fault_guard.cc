// SIGBUS containment for guest mappings (see fault_guard.h). Everything the
// handler touches is a lock-free atomic in a fixed array, and it calls only
// mmap and write: both are plain system calls, safe in a signal handler.
#include "fault_guard.h"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>
#include <fcntl.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <mutex>

namespace vt {
namespace fault_guard {

namespace {

// Mappings registered at once: a session maps at most 8 regions per table and
// a worker may still hold the previous table for a batch; tests run a few
// back ends in one process. Far more than that, and still a small array to scan.
constexpr int kSlots = 256;

struct Slot {
  std::atomic<uintptr_t> start{0};
  std::atomic<size_t> len{0};  // 0: free
  std::atomic<int> notify_fd{-1};
  std::atomic<bool> faulted{false};
  std::atomic<bool> used{false};
};

Slot g_slots[kSlots];
std::atomic<unsigned long> g_count{0};
struct sigaction g_previous;
std::once_flag g_installed;

void Chain(int sig, siginfo_t* si, void* uc) {
  if (g_previous.sa_flags & SA_SIGINFO) {
    if (g_previous.sa_sigaction) return g_previous.sa_sigaction(sig, si, uc);
  } else if (g_previous.sa_handler != SIG_DFL && g_previous.sa_handler != SIG_IGN) {
    return g_previous.sa_handler(sig);
  }
  // Nobody else wanted it: the default action, as without this handler (the
  // faulting instruction runs again and the signal kills the process).
  signal(sig, SIG_DFL);
}

void OnSigbus(int sig, siginfo_t* si, void* uc) {
  const int saved_errno = errno;
  const uintptr_t a = reinterpret_cast<uintptr_t>(si->si_addr);
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  for (Slot& s : g_slots) {
    const size_t len = s.len.load(std::memory_order_acquire);
    const uintptr_t start = s.start.load(std::memory_order_acquire);
    if (len == 0 || a < start || a - start >= len) continue;
    // From the faulting page to the end of the mapping: the rest of a shrunk
    // file faults too, and the session is about to end anyway.
    const uintptr_t from = a & ~(page - 1);
    void* r = mmap(reinterpret_cast<void*>(from), start + len - from, PROT_READ | PROT_WRITE,
                   MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (r == MAP_FAILED) break;
    s.faulted.store(true, std::memory_order_release);
    g_count.fetch_add(1, std::memory_order_relaxed);
    const int fd = s.notify_fd.load(std::memory_order_acquire);
    if (fd >= 0) {
      const uint64_t one = 1;
      ssize_t w = write(fd, &one, sizeof one);
      (void)w;  // a full counter already means "look"
    }
    errno = saved_errno;
    return;
  }
  errno = saved_errno;
  Chain(sig, si, uc);
}

void Install() {
  struct sigaction sa {};
  sa.sa_sigaction = OnSigbus;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGBUS, &sa, &g_previous);
}

}  // namespace

int Register(void* base, size_t len, int notify_fd) {
  std::call_once(g_installed, Install);
  for (int i = 0; i < kSlots; i++) {
    bool expected = false;
    if (!g_slots[i].used.compare_exchange_strong(expected, true)) continue;
    Slot& s = g_slots[i];
    s.faulted.store(false);
    s.notify_fd.store(notify_fd >= 0 ? fcntl(notify_fd, F_DUPFD_CLOEXEC, 3) : -1);
    s.start.store(reinterpret_cast<uintptr_t>(base), std::memory_order_release);
    s.len.store(len, std::memory_order_release);
    return i;
  }
  return -1;
}

void Unregister(int slot) {
  if (slot < 0 || slot >= kSlots) return;
  Slot& s = g_slots[slot];
  s.len.store(0, std::memory_order_release);
  s.start.store(0, std::memory_order_release);
  const int fd = s.notify_fd.exchange(-1);
  if (fd >= 0) close(fd);
  s.used.store(false, std::memory_order_release);
}

bool Faulted(int slot) {
  return slot >= 0 && slot < kSlots && g_slots[slot].faulted.load(std::memory_order_acquire);
}

unsigned long Count() { return g_count.load(std::memory_order_relaxed); }

}  // namespace fault_guard
}  // namespace vt
