// The vhost worker for one queue pair: a thread that moves frames between the
// guest's RX/TX virtqueues and a TAP queue fd, straight into and out of guest
// memory. Plain C++ (threads, no Node): engine_binding.cc wraps it for JS.
#pragma once
#include <sys/epoll.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>

#include <unistd.h>
#include <string>
#include <thread>
#include <vector>

#include "dirty_log.h"
#include "engine_stats.h"
#include "memory.h"
#include "notify_coalesce.h"
#include "packed_queue.h"
#include "rx_filter.h"
#include "rss_hash.h"
#include "rx_stash.h"
#include "status.h"
#include "tap_io.h"
#include "virtqueue.h"

namespace vt {

struct QueueConfig {
  uint32_t index = 0;  // virtqueue index in the device, for error reports
  QueueLayout layout;
  int kick_fd = -1;
  int call_fd = -1;
  uint16_t last_avail_idx = 0;
  uint16_t used_idx = 0;
};

struct EngineConfig {
  // The guest's memory; replaced while running by whoever owns the slot.
  std::shared_ptr<MemorySlot> memory;
  int tap_fd = -1;
  uint32_t hdr_len = 0;
  bool mergeable = false;
  bool event_idx = false;
  bool indirect = false;
  // VIRTIO_F_IN_ORDER negotiated (either layout). The layout itself is
  // rx.layout.packed / tx.layout.packed (VIRTIO_F_RING_PACKED; both alike).
  bool in_order = false;
  uint32_t rx_frame_max = 0;
  // VIRTIO_NET_F_HOST_UDP_TUNNEL_GSO / _CSUM negotiated. tun accepts any tunnel
  // header once the header size is 24 (it cannot know which direction the guest
  // negotiated), so the engine is the one to refuse what the guest may not send.
  bool host_udp_tunnel = false;
  bool host_udp_tunnel_csum = false;
  // Before sleeping, poll the rings and the TAP for up to this long (vhost-net's
  // busyloop_timeout): trades CPU for latency and fewer kicks. 0 = never.
  uint32_t busy_poll_us = 0;
  // Use readv/writev even where io_uring works (option io: 'readv'): lets one
  // process compare both paths per device; VHOST_TAP_IO=readv does it for all.
  bool force_readv = false;
  // io_uring with a kernel thread polling the submission ring (option
  // sqpoll): no system call per batch while it is busy, a core while it is.
  bool sqpoll = false;
  QueueConfig rx, tx;
};

// Called on the worker thread when the guest broke a rule (queue index, rule, detail).
using BrokenFn = std::function<void(uint32_t, const char*, const std::string&)>;

// The engine as its owner sees it. The worker behind it is EngineT<Q>, one
// instantiation per ring layout (Q = SplitQueue or PackedQueue), chosen once
// by Create() from the configuration: the per-frame path is compiled for one
// layout and never asks which.
class Engine {
 public:
  // Checks a configuration against the memory's current table; false with a
  // reason when it cannot run.
  static bool Validate(const EngineConfig& cfg, std::string* why);
  static std::unique_ptr<Engine> Create(const EngineConfig& cfg, BrokenFn on_broken);

  virtual ~Engine() = default;
  Engine() = default;
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Starts the worker.
  virtual SysResult Start() = 0;
  // Stops and joins the worker; idempotent.
  // With drain_rx, the worker first moves frames the TAP queue still holds into
  // the guest's posted buffers (used before detaching a queue, which drops them).
  virtual void Stop(bool drain_rx = false) = 0;
  // Makes a sleeping worker look again now: after the memory slot changed, so
  // that it lets go of the old table without waiting for traffic.
  virtual void Wake() = 0;
  bool running() const { return running_.load(std::memory_order_relaxed); }

  // Replaces the RX filter (nullptr: accept every frame). Any thread, at any
  // time; the worker picks it up at its next RX round. The object is never
  // modified after this call, so the worker reads it without a lock.
  void SetRxFilter(std::shared_ptr<const RxFilter> f) { std::atomic_store(&rx_filter_, std::move(f)); }

  // Replaces the guest's hash configuration (RSS_CONFIG / HASH_CONFIG) the
  // hash report in each RX header comes from; nullptr: every frame reports
  // NONE. As SetRxFilter: any thread, taken at the worker's next RX round.
  // Used only with a header that has the hash fields (hdr_len >= 20).
  void SetRssHash(std::shared_ptr<const RssHash> h) { std::atomic_store(&rss_hash_, std::move(h)); }

  // Returns once no RX round that began before the call is still running: every
  // frame the worker publishes afterwards was hashed with what SetRssHash()
  // stored before this call. Any thread; waits for one round at most (the
  // round's budgets bound it). The ack of RSS_CONFIG / HASH_CONFIG waits on it,
  // so that no frame after the ack carries the old hash.
  void SyncRx() {
    const uint64_t v = rx_round_.load(std::memory_order_seq_cst);
    if ((v & 1) == 0) return;  // between rounds: the next one loads what was stored
    while (rx_round_.load(std::memory_order_acquire) == v) usleep(kSyncRxPollUs);
  }

  // The driver's interrupt coalescing for the RX or the TX queue
  // (VIRTIO_NET_CTRL_NOTF_COAL_RX_SET / TX_SET; 0 in either turns it off).
  // At any time, from the thread that starts and stops the engine (it wakes
  // the worker, as Wake()); kept across Stop()/Start(). The worker applies it
  // at its next round, and an interrupt the new values make due goes out then.
  virtual void SetCoalescing(bool rx, uint32_t max_packets, uint32_t max_usecs) = 0;

  // Replaces the RX or TX call fd (vhost-user SET_VRING_CALL) without a
  // restart: the engine writes its own duplicate, so the caller may close `fd`
  // after this returns. The running worker takes it between batches and sends
  // one interrupt on it. From the thread that starts and stops the engine.
  virtual SysResult SetCallFd(bool rx, int fd) = 0;

  // Per-queue reset (VIRTIO_F_RING_RESET, virtio 1.2 §2.6.1) of the RX or the
  // TX ring while the other keeps running; from the thread that starts and
  // stops the engine, never while Start()/Stop() run. ResetQueue: the worker
  // stops serving the ring at its next batch boundary, where nothing of it is
  // in flight (TX chains are written and used within their batch; RX chains
  // popped but not yet filled go back to the ring, which the driver takes back
  // whole); the stats keep where it stood. Frames for a reset RX ring wait in
  // the TAP queue. EnableQueue: serves the ring again with a new layout from
  // the given positions (its kick and call fds stay); false with a reason when
  // the layout does not fit guest memory or overlaps the other ring (served).
  // Both wait for the worker (one batch at most); without a worker they apply
  // at once.
  virtual void ResetQueue(bool rx) = 0;
  virtual bool EnableQueue(bool rx, const QueueLayout& layout, uint16_t last_avail, uint16_t used_idx,
                           std::string* why) = 0;

  QueueStats rx_stats, tx_stats;
  std::atomic<uint64_t> wakeups{0};
  // What the worker uses now (TapIo::name(); string literal).
  std::atomic<const char*> io_name{"readv/writev"};
  // Batches (both directions) moved over io_uring [kIoUring] and
  // readv/writev [kIoReadv]: with io: 'auto', how often each ran.
  std::atomic<uint64_t> io_batches[2] = {};

 protected:
  std::atomic<bool> running_{false};
  // Swapped whole with std::atomic_store/atomic_load (C++17's atomic
  // shared_ptr access): the worker loads it once per RX round, so a filter
  // change costs it one reference count, never a lock held by the JS thread
  // across a frame.
  std::shared_ptr<const RxFilter> rx_filter_;
  std::shared_ptr<const RssHash> rss_hash_;  // same discipline as rx_filter_
  // Bumped by the worker as each RX round starts (odd) and ends (even), so
  // SyncRx() can tell whether a round is running and wait for it to end; a
  // counter, not a lock: the worker never waits for SyncRx().
  std::atomic<uint64_t> rx_round_{0};
  // How often SyncRx() looks again while a round runs (rounds are bounded by budgets).
  static constexpr useconds_t kSyncRxPollUs = 50;
};

template <class Q>
class EngineT final : public Engine {
 public:
  EngineT(const EngineConfig& cfg, BrokenFn on_broken);
  ~EngineT() override;

  SysResult Start() override;
  void Stop(bool drain_rx = false) override;
  void Wake() override;
  void SetCoalescing(bool rx, uint32_t max_packets, uint32_t max_usecs) override;
  SysResult SetCallFd(bool rx, int fd) override;
  void ResetQueue(bool rx) override;
  bool EnableQueue(bool rx, const QueueLayout& layout, uint16_t last_avail, uint16_t used_idx,
                   std::string* why) override;

 private:
  // A ResetQueue / EnableQueue for the worker to carry out between rounds.
  struct QueueRequest {
    bool enable = false;
    bool rx = false;
    QueueLayout layout;
    uint16_t last_avail = 0, used_idx = 0;
    bool done = false;
    bool ok = false;
    std::string why;
  };
  // Hands `r` to the worker and waits for it (or runs it here with no worker).
  void RunQueueRequest(QueueRequest* r);
  // Worker thread (or the caller with no worker): carries a request out.
  void ApplyQueueRequest(QueueRequest* r);
  void TakeQueueRequest();
  void Run();
  void Loop();
  void DrainRx();
  // After DrainRx: takes what the TAP queue still holds and counts it as
  // dropped, since detaching the queue would free it uncounted.
  void DiscardRx();
  // Takes a new memory table if the slot changed (between batches only).
  void RefreshMemory();
  // Whether a chain failed translation only because the table it was read
  // through has been replaced since (the chain is then taken again).
  bool MemoryMovedUnder(const Violation& v) const;
  bool ProcessTx();
  bool ProcessRx();
  // One RX read batch: fills frames into the stash; adds to the round's counts.
  void ReadBatch(uint32_t* attempts, uint64_t* bytes, const RxFilter* check, const RssHash* hash);
  bool FillRxStash();
  bool RxNeedsMore() const;
  // Number of leading stashed chains that can each take a read of their own.
  size_t RxBatchable() const;
  // After a batch whose buffers the kernel may still use: keep their memory
  // mapped for good, and stop using io_uring.
  void PinLostMemory();
  void FallBackIfFailed();
  void Break(Q& q, QueueStats& st, const QueueConfig& qc, const Violation& v);
  // `stashed`: chains popped and not yet used (RX's stash; their oldest has
  // buffer id `oldest_stashed_id`), which the resume point goes back over.
  void Flush(Q& q, QueueStats& st, BatchCounts& counts, const QueueConfig& qc, NotifyCoalescer& coal,
             uint16_t stashed, uint16_t oldest_stashed_id);
  void FlushRx();
  void Interrupt(const QueueConfig& qc, QueueStats& st);
  // The dirty log to mark for writes made so far (nullptr: logging is off);
  // called once per batch, after the batch's writes. See engine.cc.
  const DirtyLog* CurrentLog();
  // Marks the ring parts the device writes (used ring; packed: descriptor
  // ring and device event area) whole: a few pages, once per batch.
  void LogRing(const DirtyLog& log, const Q& q) const;
  // Takes new coalescing parameters, sends interrupts whose window is over;
  // returns the ns until the next window closes (-1: none open).
  int64_t CoalesceRound();
  int Wait(epoll_event* evs, int max, int64_t timeout_ns);
  void UpdateTapInterest();
  void DrainKick(int fd, QueueStats& st);
  void TakeCallFds();
  void CloseCallFds();
  bool BusyPoll();

  EngineConfig cfg_;
  BrokenFn on_broken_;
  // The table the rings and every iovec below point into, and the slot
  // generation it came from. The worker swaps it only between batches.
  std::shared_ptr<const MemoryTable> mem_;
  uint64_t mem_gen_ = 0;
  Q rx_, tx_;
  // A ring not served: broken (the guest broke a rule), or reset by the
  // driver (*_reset_) until it is enabled again.
  bool rx_broken_ = false, tx_broken_ = false;
  bool rx_reset_ = false, tx_reset_ = false;
  std::mutex req_mu_;
  std::condition_variable req_cv_;
  QueueRequest* req_ = nullptr;  // under req_mu_
  std::atomic<bool> req_pending_{false};
  // The dirty log as last taken from the memory slot, and the slot's log
  // generation it came from (worker thread only).
  std::shared_ptr<const DirtyLog> log_;
  uint64_t log_gen_ = 0;
  // Test hook (VHOST_TAP_TEST_NO_DIRTY_LOG=1 when the engine is created): the
  // engine never marks the log, although the front end negotiated it. Only
  // for proving that a migration test fails without logging.
  bool no_dirty_log_ = false;

  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> drain_rx_{false};
  // max_packets << 32 | max_usecs, for [0] RX and [1] TX: one word, so the
  // worker never sees one half of an update.
  std::atomic<uint64_t> coalescing_[2] = {};
  int epoll_fd_ = -1;
  int wake_fd_ = -1;  // written by Stop() and Wake()
  // The call fds the worker writes ([0] RX, [1] TX): duplicates owned by the
  // engine from Start() to Stop(); SetCallFd() hands a new one over in next_call_fd_.
  int call_fd_[2] = {-1, -1};
  std::atomic<int> next_call_fd_[2] = {-1, -1};

  // Worker-thread state.
  std::unique_ptr<TapIo> io_;
  bool tx_blocked_ = false;        // a write said EAGAIN: wait for EPOLLOUT
  bool rx_tap_readable_ = true;    // not yet seen EAGAIN since the last EPOLLIN
  bool rx_want_tap_ = false;       // RX buffers are ready, so a frame could be taken
  bool rx_gathering_ = false;      // this sleep leaves RX frames in the TAP (coalescing)
  uint64_t rx_packets_at_gather_ = UINT64_MAX;  // rx_stats.packets when the last gathering sleep began
  bool tap_hup_ = false;           // the TAP (or socket peer) hung up: stop polling it
  uint32_t tap_events_ = 0;        // what the TAP is registered for in epoll (0: not registered)
  BatchCounts rx_counts_, tx_counts_;
  NotifyCoalescer rx_coal_, tx_coal_;
  std::vector<Chain> tx_slots_;    // the chains of one TX batch
  std::vector<IoFrame> frames_;    // one batch's frames as handed to io_
  std::vector<int32_t> results_;   // and their results
  std::vector<int> tx_refused_;    // per chain of a TX batch: the TxDrop that keeps it from the TAP, or -1
  Chain scratch_;
  RxStash stash_;
  size_t rx_batch_ = 1;            // adaptive RX batch: reads to post next time
};

}  // namespace vt
