// The vhost worker for one queue pair: a thread that moves frames between the
// guest's RX/TX virtqueues and a TAP fd with readv/writev straight into guest
// memory. Knows nothing about JS; engine_binding.cc wraps it.
#pragma once
#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "guest_memory.h"
#include "rx_filter.h"
#include "uring.h"
#include "virtqueue.h"

namespace vt {

// Named drop counters. Every frame the engine gives up on is counted under one
// of these; the names are the keys of stats().rx/tx.drops and never change.
// The kernel says only EINVAL when it refuses a guest's virtio_net_hdr; the
// engine then looks at the header (on that error path only) to name why.
enum TxDrop : int {
  kTapWriteEinval,      // the TAP rejected the frame for a reason not named below
  kTapWriteEio,         // the TAP is down or detached
  kTapWriteEfault,      // the kernel could not read a buffer
  kTapWriteError,       // any other writev error
  kTxTooManySegments,   // more buffers than writev accepts in one call
  kTxHdrCsumPastFrame,  // NEEDS_CSUM with csum_start + csum_offset + 2 past the frame
  kTxHdrLenPastFrame,   // hdr_len larger than the frame
  kTxHdrBadGsoType,     // a gso_type the kernel does not know
  kTxHdrGsoSizeZero,    // a GSO frame with gso_size 0
  kTxHdrUsoNoCsum,      // UDP_L4 (USO) without NEEDS_CSUM
  kTxDropCount
};
inline constexpr std::array<const char*, kTxDropCount> kTxDropNames = {
    "tap_write_einval",       "tap_write_eio",        "tap_write_efault",        "tap_write_error",
    "tx_too_many_segments",   "tx_hdr_csum_past_frame", "tx_hdr_len_past_frame", "tx_hdr_bad_gso_type",
    "tx_hdr_gso_size_zero",   "tx_hdr_uso_without_csum"};

enum RxDrop : int {
  kRxTruncated,   // the frame was larger than the buffers offered; discarded, buffers reused
  kRxRunt,        // a read shorter than the net header (not a TAP frame)
  kTapReadError,  // readv failed with something other than EAGAIN
  kRxFiltered,    // the guest's RX filter (modes, MAC tables, VLANs) refused it; buffers reused
  kRxDropCount
};
inline constexpr std::array<const char*, kRxDropCount> kRxDropNames = {"rx_truncated", "rx_runt",
                                                                      "tap_read_error", "rx_filtered"};

struct QueueStats {
  std::atomic<uint64_t> packets{0};
  std::atomic<uint64_t> bytes{0};
  std::atomic<uint64_t> used_chains{0};
  std::atomic<uint64_t> interrupts{0};
  std::atomic<uint64_t> kicks{0};
  std::atomic<bool> broken{false};
  std::atomic<uint32_t> last_avail_idx{0};
  std::atomic<uint32_t> used_idx{0};
  // Sized for the larger of the two drop sets; a queue uses its own names only.
  std::array<std::atomic<uint64_t>, 10> drops{};
};

struct QueueConfig {
  uint32_t index = 0;  // virtqueue index in the device, for error reports
  QueueLayout layout;
  int kick_fd = -1;
  int call_fd = -1;
  uint16_t last_avail_idx = 0;
  uint16_t used_idx = 0;
};

struct EngineConfig {
  GuestMemory mem;
  int tap_fd = -1;
  uint32_t hdr_len = 0;
  bool mergeable = false;
  bool event_idx = false;
  bool indirect = false;
  uint32_t rx_frame_max = 0;
  // Before sleeping, poll the rings and the TAP for up to this long (vhost-net's
  // busyloop_timeout): trades CPU for latency and fewer kicks. 0 = never.
  uint32_t busy_poll_us = 0;
  // Use readv/writev even where io_uring works (option io: 'readv'): lets one
  // process compare both paths per device; VHOST_TAP_IO=readv does it for all.
  bool force_readv = false;
  QueueConfig rx, tx;
};

// Called on the worker thread when the guest broke a rule (queue index, rule, detail).
using BrokenFn = std::function<void(uint32_t, const char*, const std::string&)>;

class Engine {
 public:
  // Checks a configuration; on failure returns false and says why in *err.
  static bool Validate(const EngineConfig& cfg, std::string* err);

  Engine(const EngineConfig& cfg, BrokenFn on_broken);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Starts the worker. On a system call failure returns its errno and sets *syscall.
  int Start(const char** syscall);
  // Stops and joins the worker; idempotent.
  // With drain_rx, the worker first moves frames the TAP queue still holds into
  // the guest's posted buffers (used before detaching a queue, which drops them).
  void Stop(bool drain_rx = false);
  bool running() const { return running_.load(std::memory_order_relaxed); }

  // Replaces the RX filter (nullptr: accept every frame). Any thread, at any
  // time; the worker picks it up at its next RX round. The object is never
  // modified after this call, so the worker reads it without a lock.
  void SetRxFilter(std::shared_ptr<const RxFilter> f) { std::atomic_store(&rx_filter_, std::move(f)); }

  QueueStats rx_stats, tx_stats;
  std::atomic<uint64_t> wakeups{0};
  // 'io_uring' or 'readv/writev': what the last Start() chose (string literal).
  std::atomic<const char*> io_name{"readv/writev"};

 private:
  // One popped RX chain waiting for a frame; its iovecs live in rx_stash_iov_.
  struct Stashed {
    uint16_t head;
    uint32_t iov_count;
    uint64_t bytes;
  };

  void Run();
  void Loop();
  void DrainRx();
  bool ProcessTx();
  bool ProcessTxBatched();
  bool ProcessRx();
  void ReadRxBatch(size_t g, uint32_t* packets, uint64_t* bytes, const RxFilter* check);
  size_t RxBatchable() const;
  // Reaps completions for user_data 0..n-1 into batch_res_, waiting as needed
  // (kNoCqe: never submitted). When the ring fails it is dropped (uring_ null,
  // the engine falls back to readv/writev) and this returns AbandonRing's
  // answer: true if the results are still exact, false if unknown.
  bool WaitBatch(unsigned n);
  bool AbandonRing(unsigned n, unsigned got);
  bool FillRxStash();
  bool RxNeedsMore() const;
  void Break(SplitQueue& q, QueueStats& st, const QueueConfig& qc, const Violation& v);
  void Flush(SplitQueue& q, QueueStats& st, const QueueConfig& qc, uint16_t stashed);
  void UpdateTapInterest();
  void DrainKick(int fd, QueueStats& st);
  bool BusyPoll();

  EngineConfig cfg_;
  BrokenFn on_broken_;
  SplitQueue rx_, tx_;
  bool rx_broken_ = false, tx_broken_ = false;

  // Swapped whole with std::atomic_store/atomic_load (C++17's atomic
  // shared_ptr access): the worker loads it once per RX round, so a filter
  // change costs it one reference count, never a lock held by the JS thread
  // across a frame.
  std::shared_ptr<const RxFilter> rx_filter_;

  std::thread thread_;
  std::atomic<bool> running_{false};
  std::atomic<bool> stop_{false};
  std::atomic<bool> drain_rx_{false};
  int epoll_fd_ = -1;
  int stop_fd_ = -1;

  // Worker-thread state.
  bool tx_blocked_ = false;        // writev said EAGAIN: wait for EPOLLOUT
  bool rx_tap_readable_ = true;    // not yet seen EAGAIN since the last EPOLLIN
  bool rx_want_tap_ = false;       // RX buffers are ready, so a frame could be taken
  bool tap_hup_ = false;           // the TAP (or socket peer) hung up: stop polling it
  uint32_t tap_events_ = 0;        // what the TAP is registered for in epoll (0: not registered)
  Chain scratch_;

  // io_uring batching (see engine.cc kBatch): null when readv/writev is used.
  std::unique_ptr<Uring> uring_;
  std::vector<Chain> tx_slots_;           // the chains of one TX batch; iovecs live until reaped
  std::vector<int32_t> batch_res_;        // CQE result per slot of the current batch
  size_t rx_batch_ = 1;                   // adaptive RX batch: reads to post next time
  bool fail_uring_once_ = false;          // test hook, see Start()
  std::vector<Stashed> rx_stash_;
  std::vector<iovec> rx_stash_iov_;
  uint64_t rx_stash_bytes_ = 0;
};

}  // namespace vt
