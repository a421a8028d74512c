// The vhost worker loop (see engine.h): epoll on the TAP, both kick eventfds
// and a stop eventfd; per round TX then RX, each within a budget.
#include "engine.h"

#include <poll.h>
#include <pthread.h>
#include <time.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <climits>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace vt {

namespace {

// Per-round budgets, as Linux vhost-net's VHOST_NET_WEIGHT (bytes) and
// VHOST_NET_PKT_WEIGHT (frames): after this much work in one direction the
// worker turns to the other direction and to its stop flag, so a flood one
// way cannot starve the other way nor make stop() wait for long. The packet
// bound matters for small frames, the byte bound for large GSO frames.
constexpr uint32_t kBudgetPackets = 256;
// Rounds of RX a draining stop may run: detaching a TAP queue drops whatever
// the kernel still holds for it, so before a pair is taken away the worker
// moves what it can into the guest's buffers. Bounded so a flood that keeps
// the queue full cannot hold stop() up: 16 rounds are 4096 frames.
constexpr int kDrainRounds = 16;
constexpr uint64_t kBudgetBytes = 512 * 1024;

// readv/writev take at most IOV_MAX segments. RX gathers stashed chains up to
// this many segments for one read; a TX chain with more cannot be written in
// one call, which a TAP requires (one write = one frame), so it is dropped.
constexpr size_t kMaxIov = IOV_MAX;

// epoll_event.data tags.
enum : uint32_t { kTagStop, kTagRxKick, kTagTxKick, kTagTap };

constexpr int kMaxEvents = 8;

// Frames per io_uring submission, both directions. 64 amortises the one
// io_uring_enter over enough frames that the syscall is a small share of a
// 64-byte frame's cost (measured on a TAP: ~1.5x a write() loop), while a
// batch's iovecs and results stay small and hot in cache, and it is a
// quarter of kBudgetPackets so the worker still turns to the other direction
// every few batches.
constexpr unsigned kBatch = 64;

// CQE result for a slot that never got one (never submitted, or the ring
// failed and the kernel did not confirm its end, see AbandonRing): the frame
// is handled as if cancelled and goes again through readv/writev.
constexpr int32_t kNoCqe = INT32_MIN;

// VHOST_TAP_IO=readv forces readv/writev (tests run both paths; a way out
// should io_uring misbehave somewhere).
bool UringWanted() {
  const char* v = getenv("VHOST_TAP_IO");
  return !(v && strcmp(v, "readv") == 0);
}

// Copies `len` bytes between two iovec lists (a frame moving to an earlier
// chain, see ReadRxBatch). memmove: a hostile guest may make buffers overlap.
void CopyIov(const iovec* dst, size_t dcnt, const iovec* src, size_t scnt, uint64_t len) {
  size_t di = 0, si = 0, doff = 0, soff = 0;
  while (len > 0 && di < dcnt && si < scnt) {
    const size_t n = static_cast<size_t>(
        std::min<uint64_t>(len, std::min(dst[di].iov_len - doff, src[si].iov_len - soff)));
    memmove(static_cast<uint8_t*>(dst[di].iov_base) + doff, static_cast<const uint8_t*>(src[si].iov_base) + soff, n);
    len -= n;
    doff += n;
    soff += n;
    if (doff == dst[di].iov_len) di++, doff = 0;
    if (soff == src[si].iov_len) si++, soff = 0;
  }
}

// Why tun refused a header with EINVAL, worked out as its virtio_net_hdr
// checks go (tun widens hdr_len to cover the checksum first, so that one is
// looked at first). Only runs on the error path.
int ClassifyEinval(const Chain& c, uint32_t hdr_len) {
  uint8_t h[10] = {};
  size_t got = 0;
  for (size_t i = 0; i < c.iov.size() && got < sizeof h; i++) {
    const size_t n = std::min(sizeof h - got, c.iov[i].iov_len);
    memcpy(h + got, c.iov[i].iov_base, n);
    got += n;
  }
  if (got < sizeof h || hdr_len < sizeof h) return kTapWriteEinval;
  const uint64_t frame = c.bytes - hdr_len;
  const uint8_t flags = h[0], gso = h[1];
  const uint16_t hdrlen = static_cast<uint16_t>(h[2] | h[3] << 8), gso_size = static_cast<uint16_t>(h[4] | h[5] << 8);
  const uint16_t cstart = static_cast<uint16_t>(h[6] | h[7] << 8), coff = static_cast<uint16_t>(h[8] | h[9] << 8);
  if ((flags & HDR_F_NEEDS_CSUM) && uint64_t{cstart} + coff + 2 > frame) return kTxHdrCsumPastFrame;
  if (hdrlen > frame) return kTxHdrLenPastFrame;
  const uint8_t type = gso & static_cast<uint8_t>(~HDR_GSO_ECN);
  if (type != HDR_GSO_NONE && type != HDR_GSO_TCPV4 && type != HDR_GSO_UDP && type != HDR_GSO_TCPV6 &&
      type != HDR_GSO_UDP_L4)
    return kTxHdrBadGsoType;
  if (type != HDR_GSO_NONE && gso_size == 0) return kTxHdrGsoSizeZero;
  if (type == HDR_GSO_UDP_L4 && !(flags & HDR_F_NEEDS_CSUM)) return kTxHdrUsoNoCsum;
  return kTapWriteEinval;
}

void CountWriteError(QueueStats& st, int err, const Chain& c, uint32_t hdr_len) {
  int which = kTapWriteError;
  if (err == EINVAL) which = ClassifyEinval(c, hdr_len);
  else if (err == EIO) which = kTapWriteEio;
  else if (err == EFAULT) which = kTapWriteEfault;
  st.drops[which].fetch_add(1, std::memory_order_relaxed);
}

// Writes `len` bytes at `offset` of the buffers described by iov. The net
// header may be split across descriptors, so never assume it is contiguous.
void WriteIov(const iovec* iov, size_t cnt, size_t offset, const void* data, size_t len) {
  const uint8_t* src = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < cnt && len > 0; i++) {
    if (offset >= iov[i].iov_len) {
      offset -= iov[i].iov_len;
      continue;
    }
    size_t n = std::min(len, iov[i].iov_len - offset);
    memcpy(static_cast<uint8_t*>(iov[i].iov_base) + offset, src, n);
    src += n;
    len -= n;
    offset = 0;
  }
}

// Reads up to `len` bytes at `offset` of the buffers described by iov into
// `out`; returns how many it could (fewer when the buffers end first). The
// copy is what gets inspected, so a guest rewriting its buffer meanwhile
// cannot make two checks see different bytes.
size_t ReadIov(const iovec* iov, size_t cnt, size_t offset, void* out, size_t len) {
  uint8_t* dst = static_cast<uint8_t*>(out);
  size_t done = 0;
  for (size_t i = 0; i < cnt && done < len; i++) {
    if (offset >= iov[i].iov_len) {
      offset -= iov[i].iov_len;
      continue;
    }
    size_t n = std::min(len - done, iov[i].iov_len - offset);
    memcpy(dst + done, static_cast<const uint8_t*>(iov[i].iov_base) + offset, n);
    done += n;
    offset = 0;
  }
  __atomic_signal_fence(__ATOMIC_SEQ_CST);
  return done;
}

// Ethernet header fields the RX filter needs: destination MAC at 0, and an
// 802.1Q tag (TPID 0x8100 at 12, TCI at 14) for the VLAN id.
constexpr size_t kEthDstLen = 6;
constexpr size_t kEthTpidOff = 12;
constexpr size_t kEthVlanHdrLen = 16;  // dst, src, TPID, TCI
constexpr uint16_t kEthP8021Q = 0x8100;

// Whether the filter lets a frame of `frame_len` bytes (net header excluded),
// whose Ethernet header starts at `offset` of the iovecs, through.
bool FilterAccepts(const RxFilter& f, const iovec* iov, size_t cnt, size_t offset, uint64_t frame_len) {
  uint8_t eth[kEthVlanHdrLen];
  const size_t want = static_cast<size_t>(std::min<uint64_t>(frame_len, kEthVlanHdrLen));
  const size_t got = ReadIov(iov, cnt, offset, eth, want);
  // Too short to name a destination: no filter rule can ask for it.
  if (got < kEthDstLen) return false;
  int vid = -1;
  if (got >= kEthVlanHdrLen && ((eth[kEthTpidOff] << 8) | eth[kEthTpidOff + 1]) == kEthP8021Q)
    vid = ((eth[kEthTpidOff + 2] << 8) | eth[kEthTpidOff + 3]) & 0xfff;
  return f.Accepts(eth, vid);
}

}  // namespace

bool Engine::Validate(const EngineConfig& c, std::string* err) {
  if (c.hdr_len != HDR_SIZE_LEGACY && c.hdr_len != HDR_SIZE_V1 && c.hdr_len != HDR_SIZE_HASH) {
    *err = "hdrLen must be 10, 12 or 20";
    return false;
  }
  if (c.mergeable && c.hdr_len < HDR_SIZE_V1) {
    *err = "mergeable RX buffers need a header with num_buffers (hdrLen >= 12)";
    return false;
  }
  // 64 KiB of frame plus header is what GSO can produce; allow headroom, but a
  // bound keeps the u32 arithmetic and the stash size sane.
  if (c.rx_frame_max < c.hdr_len || c.rx_frame_max > (1u << 20)) {
    *err = "rxFrameMax must be between hdrLen and 1048576";
    return false;
  }
  if (c.tap_fd < 0 || c.rx.kick_fd < 0 || c.rx.call_fd < 0 || c.tx.kick_fd < 0 || c.tx.call_fd < 0) {
    *err = "tapFd, kickFd and callFd must be open file descriptors";
    return false;
  }
  for (const QueueConfig* q : {&c.rx, &c.tx}) {
    SplitQueue probe;
    Violation v;
    if (!probe.Init(c.mem, q->layout, c.event_idx, c.indirect, q->last_avail_idx, q->used_idx, &v)) {
      *err = std::string(q == &c.rx ? "rx" : "tx") + " queue: " + v.detail;
      return false;
    }
  }
  return true;
}

Engine::Engine(const EngineConfig& cfg, BrokenFn on_broken) : cfg_(cfg), on_broken_(std::move(on_broken)) {
  Violation v;
  // Validate() ran first; Init cannot fail here.
  rx_.Init(cfg_.mem, cfg_.rx.layout, cfg_.event_idx, cfg_.indirect, cfg_.rx.last_avail_idx, cfg_.rx.used_idx, &v);
  tx_.Init(cfg_.mem, cfg_.tx.layout, cfg_.event_idx, cfg_.indirect, cfg_.tx.last_avail_idx, cfg_.tx.used_idx, &v);
  rx_stats.last_avail_idx = cfg_.rx.last_avail_idx;
  rx_stats.used_idx = cfg_.rx.used_idx;
  tx_stats.last_avail_idx = cfg_.tx.last_avail_idx;
  tx_stats.used_idx = cfg_.tx.used_idx;
}

Engine::~Engine() { Stop(); }

int Engine::Start(const char** syscall) {
  if (running_) {
    *syscall = "start";
    return EBUSY;
  }
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epoll_fd_ < 0) {
    *syscall = "epoll_create1";
    return errno;
  }
  stop_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (stop_fd_ < 0) {
    int e = errno;
    close(epoll_fd_);
    epoll_fd_ = -1;
    *syscall = "eventfd";
    return e;
  }
  const std::pair<int, uint32_t> fds[] = {{stop_fd_, kTagStop}, {cfg_.rx.kick_fd, kTagRxKick}, {cfg_.tx.kick_fd, kTagTxKick}};
  for (auto [fd, tag] : fds) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u32 = tag;
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) < 0) {
      int e = errno;
      close(epoll_fd_);
      close(stop_fd_);
      epoll_fd_ = stop_fd_ = -1;
      *syscall = "epoll_ctl";
      return e;
    }
  }
  // io_uring when the kernel allows it; otherwise (ENOSYS, EPERM from
  // kernel.io_uring_disabled or seccomp, ENOMEM) readv/writev, silently: both
  // are correct, one is faster. Made per Start() and released at Stop() so a
  // stopped engine holds no ring fd.
  uring_.reset();
  if (!cfg_.force_readv && UringWanted()) {
    auto u = std::make_unique<Uring>();
    if (u->Init(kBatch) == 0) uring_ = std::move(u);
  }
  if (uring_) {
    tx_slots_.resize(kBatch);
    batch_res_.resize(kBatch);
  }
  // Test only: VHOST_TAP_TEST_URING_FAIL makes this run's first io_uring
  // batch fail after submission, to exercise AbandonRing.
  fail_uring_once_ = uring_ && getenv("VHOST_TAP_TEST_URING_FAIL") != nullptr;
  rx_batch_ = 1;
  io_name.store(uring_ ? "io_uring" : "readv/writev");
  // A restart starts from a clean I/O state; the rings carry the rest.
  tap_events_ = 0;
  tap_hup_ = false;
  tx_blocked_ = false;
  rx_tap_readable_ = true;
  stop_ = false;
  running_ = true;
  thread_ = std::thread([this] { Run(); });
  return 0;
}

void Engine::Stop(bool drain_rx) {
  if (!thread_.joinable()) return;
  drain_rx_ = drain_rx;
  stop_ = true;
  uint64_t one = 1;
  ssize_t r = write(stop_fd_, &one, sizeof one);
  (void)r;  // the flag alone also stops the worker at its next round
  thread_.join();
  close(epoll_fd_);
  close(stop_fd_);
  epoll_fd_ = stop_fd_ = -1;
  // Chains popped for RX but not used go back to the guest's view of the
  // ring: the resume point is the first of them (they are the newest pops).
  rx_.UndoPop(static_cast<uint16_t>(rx_stash_.size()));
  rx_stash_.clear();
  rx_stash_iov_.clear();
  rx_stash_bytes_ = 0;
  rx_stats.last_avail_idx = rx_.last_avail();
  // WaitBatch reaps every batch before it returns, so nothing is in flight
  // here; were that ever broken, cancel before the ring goes (as AbandonRing).
  assert(!uring_ || uring_->inflight() == 0);
  if (uring_ && uring_->inflight() != 0) {
    unsigned got = 0;
    if (!uring_->Quiesce(nullptr, 0, &got)) static_cast<void>(uring_.release());
  }
  uring_.reset();
  running_ = false;
}

// Only the offending queue stops: the backend resets the whole device anyway
// (DEVICE_NEEDS_RESET), and until it does the healthy direction loses nothing
// by running. A broken queue is never touched again, so nothing the guest
// writes to it afterwards can reach the device.
void Engine::Break(SplitQueue& q, QueueStats& st, const QueueConfig& qc, const Violation& v) {
  (&q == &rx_ ? rx_broken_ : tx_broken_) = true;
  st.broken = true;
  on_broken_(qc.index, v.rule, v.detail);
}

void Engine::Flush(SplitQueue& q, QueueStats& st, const QueueConfig& qc, uint16_t stashed) {
  const uint16_t before = static_cast<uint16_t>(st.used_idx.load(std::memory_order_relaxed));
  if (q.PublishUsed()) {
    uint64_t one = 1;
    // A full eventfd counter (EAGAIN) already means "interrupt pending".
    if (write(qc.call_fd, &one, sizeof one) == sizeof one || errno == EAGAIN)
      st.interrupts.fetch_add(1, std::memory_order_relaxed);
  }
  st.used_chains.fetch_add(static_cast<uint16_t>(q.used_idx() - before), std::memory_order_relaxed);
  st.used_idx.store(q.used_idx(), std::memory_order_relaxed);
  st.last_avail_idx.store(static_cast<uint16_t>(q.last_avail() - stashed), std::memory_order_relaxed);
}

bool Engine::ProcessTx() {
  if (uring_) return ProcessTxBatched();
  if (tx_blocked_) return false;
  tx_.DisableNotify();
  uint32_t packets = 0;
  uint64_t bytes = 0;
  bool more = false;
  for (;;) {
    if (packets >= kBudgetPackets || bytes >= kBudgetBytes) {
      more = true;
      break;
    }
    uint16_t head;
    Violation v;
    SplitQueue::Pop p = tx_.PopOrArm(&head, &v);
    if (p == SplitQueue::Pop::kEmpty) break;
    if (p == SplitQueue::Pop::kBroken || !tx_.ReadTxChain(head, cfg_.hdr_len, &scratch_, &v)) {
      Break(tx_, tx_stats, cfg_.tx, v);
      break;
    }
    packets++;  // attempts count toward the budget, so failing writes cannot hog the worker
    if (scratch_.iov.size() > kMaxIov) {
      tx_stats.drops[kTxTooManySegments].fetch_add(1, std::memory_order_relaxed);
      tx_.AddUsed(head, 0);
      continue;
    }
    ssize_t n;
    do {
      n = writev(cfg_.tap_fd, scratch_.iov.data(), static_cast<int>(scratch_.iov.size()));
    } while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      // Not consumed: the same chain is taken again when the TAP has room.
      tx_.UndoPop();
      tx_blocked_ = true;
      break;
    }
    if (n < 0) {
      CountWriteError(tx_stats, errno, scratch_, cfg_.hdr_len);
    } else {
      const uint64_t frame = scratch_.bytes - cfg_.hdr_len;
      bytes += scratch_.bytes;
      tx_stats.packets.fetch_add(1, std::memory_order_relaxed);
      tx_stats.bytes.fetch_add(frame, std::memory_order_relaxed);
    }
    tx_.AddUsed(head, 0);  // TX chains: the device wrote nothing
  }
  Flush(tx_, tx_stats, cfg_.tx, 0);
  return more;
}

bool Engine::WaitBatch(unsigned n) {
  for (unsigned i = 0; i < n; i++) batch_res_[i] = kNoCqe;
  unsigned got = 0;
  while (got < n) {
    uint64_t ud;
    int32_t res;
    if (uring_->Reap(&ud, &res)) {
      if (ud < n) batch_res_[ud] = res;
      got++;
      continue;
    }
    int e;
    if (fail_uring_once_) {
      // Test hook (VHOST_TAP_TEST_URING_FAIL, see Start): submit the batch,
      // then fail as io_uring_enter might, so requests are in flight.
      fail_uring_once_ = false;
      e = uring_->SubmitAndWait(0);
      if (e == 0) e = EIO;
    } else {
      e = uring_->SubmitAndWait(n - got);
    }
    if (e != 0) return AbandonRing(n, got);
  }
  return true;
}

// The ring itself failed (not one I/O): the engine goes on with readv/writev.
// Closing the ring's fd would not cancel what it still runs, and a late read
// could land in chains reused by then, so every submitted request is first
// cancelled and reaped. The batch's results are then exact (a slot without
// one was never submitted, so never ran) and it is finished with them: true.
// Should the kernel not confirm in time, the ring is leaked on purpose, mapped
// with its fd open: dropping it would not stop a request either, and keeping
// it leaves the kernel's view as it is. False: the results are unknown.
bool Engine::AbandonRing(unsigned n, unsigned got) {
  const bool quiet = uring_->Quiesce(batch_res_.data(), n, &got);
  if (quiet) {
    uring_.reset();
  } else {
    static_cast<void>(uring_.release());
  }
  io_name.store("readv/writev");
  return quiet;
}

// TX through io_uring: up to kBatch chains, one WRITEV each, submitted with one
// io_uring_enter. The writes are linked (IOSQE_IO_LINK): one starts only when
// the previous fully succeeded, so after an -EAGAIN (TAP queue or socket full)
// or any error every later write comes back -ECANCELED without having run,
// and the frames still to send are exactly a suffix of the popped chains,
// given back with UndoPop() and sent next time in the same order.
bool Engine::ProcessTxBatched() {
  if (tx_blocked_) return false;
  tx_.DisableNotify();
  uint32_t packets = 0;
  uint64_t bytes = 0;
  bool more = false;
  bool broke = false;
  while (uring_) {
    if (packets >= kBudgetPackets || bytes >= kBudgetBytes) {
      more = true;
      break;
    }
    unsigned n = 0;
    bool drained = false;
    while (n < kBatch && packets + n < kBudgetPackets) {
      uint16_t head;
      Violation v;
      SplitQueue::Pop p = tx_.PopOrArm(&head, &v);
      if (p == SplitQueue::Pop::kEmpty) {
        drained = true;
        break;
      }
      if (p == SplitQueue::Pop::kBroken || !tx_.ReadTxChain(head, cfg_.hdr_len, &tx_slots_[n], &v)) {
        Break(tx_, tx_stats, cfg_.tx, v);
        broke = true;
        break;
      }
      n++;
    }
    if (n == 0) break;
    // The last slot that goes to the kernel carries no link flag.
    int last = -1;
    for (unsigned i = 0; i < n; i++)
      if (tx_slots_[i].iov.size() <= kMaxIov) last = static_cast<int>(i);
    // n <= kBatch, the ring's size, and every batch is fully reaped: Queue
    // always has room. Should it refuse anyway, the slots from there on go
    // unqueued and come back as not done (kNoCqe).
    unsigned queued = 0;
    for (unsigned i = 0; i < n; i++) {
      const Chain& c = tx_slots_[i];
      if (c.iov.size() > kMaxIov) continue;
      if (!uring_->Queue(IORING_OP_WRITEV, cfg_.tap_fd, c.iov.data(), static_cast<unsigned>(c.iov.size()), queued,
                         static_cast<int>(i) != last))
        break;
      queued++;
    }
    const bool ok = queued == 0 || WaitBatch(queued);
    unsigned k = 0, undo_from = n;
    for (unsigned i = 0; i < n; i++) {
      const Chain& c = tx_slots_[i];
      if (c.iov.size() > kMaxIov) {
        tx_stats.drops[kTxTooManySegments].fetch_add(1, std::memory_order_relaxed);
      } else {
        const int32_t r = ok && k < queued ? batch_res_[k] : kNoCqe;
        k++;
        if (r == -EAGAIN || r == -EWOULDBLOCK) {
          tx_blocked_ = true;
          undo_from = i;
          break;
        }
        if (r == -ECANCELED || r == -EINTR || r == kNoCqe) {
          undo_from = i;
          break;
        }
        if (r < 0) {
          CountWriteError(tx_stats, -r, c, cfg_.hdr_len);
        } else {
          bytes += c.bytes;
          tx_stats.packets.fetch_add(1, std::memory_order_relaxed);
          tx_stats.bytes.fetch_add(c.bytes - cfg_.hdr_len, std::memory_order_relaxed);
        }
      }
      packets++;
      tx_.AddUsed(c.head, 0);
    }
    // A broken queue is never touched again; its position no longer matters.
    if (undo_from < n && !broke) tx_.UndoPop(static_cast<uint16_t>(n - undo_from));
    if (broke || tx_blocked_) break;
    // Drained, unless cancelled frames went back to the ring: those go now,
    // the guest will not kick for them again.
    if (drained && undo_from == n) break;
  }
  Flush(tx_, tx_stats, cfg_.tx, 0);
  // The ring failed: the rest goes through writev from the next round.
  if (!uring_ && !broke && !tx_blocked_) more = true;
  return more;
}

bool Engine::RxNeedsMore() const {
  if (!cfg_.mergeable) return rx_stash_.empty();
  // Mergeable: gather until the largest frame fits. Also stop when the stash
  // already holds every buffer the ring can hold (a small ring would otherwise
  // never become "ready" and RX would deadlock: the guest cannot post more) or
  // when one read could not take more segments.
  return rx_stash_bytes_ < cfg_.rx_frame_max && rx_stash_.size() < rx_.size() &&
         rx_stash_iov_.size() < kMaxIov;
}

bool Engine::FillRxStash() {
  for (;;) {
    if (!RxNeedsMore()) {
      // With io_uring, take what the guest already posted up to the next
      // batch size, so several reads can go in one submission. Only chains
      // that are there: an empty ring here is no reason to wait.
      if (!uring_ || rx_stash_.size() >= rx_batch_ || rx_stash_iov_.size() >= kMaxIov ||
          rx_stash_.size() >= rx_.size() || rx_.last_avail() == rx_.AvailIdx())
        break;
    }
    uint16_t head;
    Violation v;
    SplitQueue::Pop p = rx_.PopOrArm(&head, &v);
    if (p == SplitQueue::Pop::kEmpty) return true;  // kicks stay enabled: we sleep until the guest posts buffers
    if (p == SplitQueue::Pop::kBroken || !rx_.ReadRxChain(head, cfg_.hdr_len, kMaxIov, &scratch_, &v)) {
      Break(rx_, rx_stats, cfg_.rx, v);
      return false;
    }
    if (!cfg_.mergeable && scratch_.bytes < cfg_.rx_frame_max) {
      v.rule = "rx-chain-too-small";
      v.detail = "chain at head " + std::to_string(head) + " holds " + std::to_string(scratch_.bytes) +
                 " bytes; without mergeable buffers each needs rxFrameMax = " + std::to_string(cfg_.rx_frame_max);
      Break(rx_, rx_stats, cfg_.rx, v);
      return false;
    }
    rx_stash_.push_back(Stashed{head, static_cast<uint32_t>(scratch_.iov.size()), scratch_.bytes});
    rx_stash_iov_.insert(rx_stash_iov_.end(), scratch_.iov.begin(), scratch_.iov.end());
    rx_stash_bytes_ += scratch_.bytes;
  }
  return true;
}

// How many leading stashed chains can each take a read of their own: each
// holds rxFrameMax alone, so a frame always fits in one chain and a read uses
// that chain whole (mergeable buffers of MTU size without GSO, or any
// non-mergeable chain). Smaller mergeable chains need the whole stash for one
// read, as the single-read path does.
size_t Engine::RxBatchable() const {
  size_t g = 0;
  for (const Stashed& s : rx_stash_) {
    if (g >= rx_batch_ || g >= kBatch || s.bytes < cfg_.rx_frame_max) break;
    g++;
  }
  return g;
}

// Posts one READV per chain for the first g stashed chains in one submission.
// On a TAP queue fd (O_NONBLOCK) io_uring issues the reads inline, in SQE
// order, each taking the queue's next frame or failing with -EAGAIN, so frames
// land in slot order. Reads are not linked: a read shorter than its buffers
// (every frame) would break a link. A slot with no usable frame (EAGAIN,
// filtered, truncated, runt) leaves a hole; a later frame then moves down
// into the first free chain, so the used chains stay the oldest pops and the
// stash stays the newest pops (what Stop() gives back). The copy only happens
// after such a hole.
void Engine::ReadRxBatch(size_t g, uint32_t* packets, uint64_t* bytes, const RxFilter* check) {
  size_t off[kBatch + 1];
  off[0] = 0;
  for (size_t i = 0; i < g; i++) off[i + 1] = off[i] + rx_stash_[i].iov_count;
  // g <= kBatch, the ring's size (see ProcessTxBatched); should Queue refuse,
  // the batch is just the reads queued so far.
  size_t queued = 0;
  while (queued < g && uring_->Queue(IORING_OP_READV, cfg_.tap_fd, rx_stash_iov_.data() + off[queued],
                                     rx_stash_[queued].iov_count, queued, false))
    queued++;
  g = queued;
  if (g == 0) return;
  if (!WaitBatch(static_cast<unsigned>(g))) {
    // The ring failed and the kernel never confirmed its reads were over (see
    // AbandonRing): these chains may still be written, so they are neither
    // published nor reused nor given back at stop (they are the oldest pops,
    // so Stop's UndoPop of the stash stays right). The guest gets them back
    // at its next reset; readv goes on with the rest of the stash.
    for (size_t i = 0; i < g; i++) rx_stash_bytes_ -= rx_stash_[i].bytes;
    rx_stash_.erase(rx_stash_.begin(), rx_stash_.begin() + static_cast<ptrdiff_t>(g));
    rx_stash_iov_.erase(rx_stash_iov_.begin(), rx_stash_iov_.begin() + static_cast<ptrdiff_t>(off[g]));
    return;
  }
  size_t f = 0;  // next free chain
  bool empty = false;
  for (size_t i = 0; i < g; i++) {
    const int32_t r = batch_res_[i];
    if (r == -EAGAIN || r == -EWOULDBLOCK) {
      empty = true;
      continue;
    }
    if (r < 0) {
      if (r != -ECANCELED && r != -EINTR && r != kNoCqe)
        rx_stats.drops[kTapReadError].fetch_add(1, std::memory_order_relaxed);
      empty = true;
      continue;
    }
    if (r == 0) {
      tap_hup_ = true;
      continue;
    }
    (*packets)++;
    const uint64_t got = static_cast<uint64_t>(r);
    const iovec* iov = rx_stash_iov_.data() + off[i];
    if (got < cfg_.hdr_len) {
      rx_stats.drops[kRxRunt].fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    if (got > rx_stash_[i].bytes) {
      rx_stats.drops[kRxTruncated].fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    if (check && !FilterAccepts(*check, iov, rx_stash_[i].iov_count, cfg_.hdr_len, got - cfg_.hdr_len)) {
      rx_stats.drops[kRxFiltered].fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    // The first free chain may be smaller than chain i (each holds only
    // rxFrameMax for sure, and a frame may be longer: a VLAN tag, a larger
    // TAP MTU). Mergeable: spread the frame over the free chains f.. (chains
    // f..i hold at least chain i's bytes, so it always fits). Otherwise it
    // does not fit the chain it would be used in: truncated, as in ProcessRx.
    size_t k = 1;
    uint64_t room = rx_stash_[f].bytes;
    while (room < got && cfg_.mergeable && f + k <= i) room += rx_stash_[f + k++].bytes;
    if (room < got) {
      rx_stats.drops[kRxTruncated].fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    // When chain i is among the targets it is written only below where it is
    // read (forward order), so the copy never overwrites bytes still to be read.
    if (f != i) CopyIov(rx_stash_iov_.data() + off[f], off[f + k] - off[f], iov, rx_stash_[i].iov_count, got);
    if (cfg_.mergeable || cfg_.hdr_len >= HDR_SIZE_V1) {
      const uint16_t nb = ToLe16(static_cast<uint16_t>(k));
      WriteIov(rx_stash_iov_.data() + off[f], rx_stash_[f].iov_count, HDR_OFF_NUM_BUFFERS, &nb, sizeof nb);
    }
    uint64_t left = got;
    for (size_t j = f; j < f + k; j++) {
      const uint64_t use = std::min(left, rx_stash_[j].bytes);
      rx_.AddUsed(rx_stash_[j].head, static_cast<uint32_t>(use));
      left -= use;
    }
    f += k;
    *bytes += got;
    rx_stats.packets.fetch_add(1, std::memory_order_relaxed);
    rx_stats.bytes.fetch_add(got - cfg_.hdr_len, std::memory_order_relaxed);
  }
  for (size_t i = 0; i < f; i++) rx_stash_bytes_ -= rx_stash_[i].bytes;
  rx_stash_.erase(rx_stash_.begin(), rx_stash_.begin() + static_cast<ptrdiff_t>(f));
  rx_stash_iov_.erase(rx_stash_iov_.begin(), rx_stash_iov_.begin() + static_cast<ptrdiff_t>(off[f]));
  if (empty) rx_tap_readable_ = false;  // wait for EPOLLIN (level-triggered: queued frames still wake us)
  // Adapt: a full batch means more may be queued, so try twice as many; a
  // partial one says about how many the kernel had.
  rx_batch_ = f == g ? std::min<size_t>(2 * g, kBatch) : std::max<size_t>(1, f);
}

bool Engine::ProcessRx() {
  rx_.DisableNotify();
  // One load per round, not per frame: a new filter applies from the next round.
  const std::shared_ptr<const RxFilter> filter = std::atomic_load(&rx_filter_);
  const RxFilter* check = filter && !filter->AcceptsAll() ? filter.get() : nullptr;
  uint32_t packets = 0;
  uint64_t bytes = 0;
  bool more = false;
  for (;;) {
    if (packets >= kBudgetPackets || bytes >= kBudgetBytes) {
      more = true;
      break;
    }
    if (!FillRxStash()) break;
    if (RxNeedsMore()) {
      // Too few buffers: leave frames queued in the kernel until the guest posts more.
      rx_want_tap_ = false;
      break;
    }
    rx_want_tap_ = true;
    if (tap_hup_ || !rx_tap_readable_) break;
    if (uring_) {
      const size_t g = std::min<size_t>(RxBatchable(), kBudgetPackets - packets);
      if (g >= 2) {
        ReadRxBatch(g, &packets, &bytes, check);
        continue;
      }
    }

    // The chains one read may fill: stash order, whole chains, within kMaxIov.
    size_t niov = 0, nchains = 0;
    uint64_t cap = 0;
    for (const Stashed& s : rx_stash_) {
      if (niov + s.iov_count > kMaxIov) break;
      niov += s.iov_count;
      cap += s.bytes;
      nchains++;
      if (!cfg_.mergeable) break;
    }
    ssize_t n;
    do {
      n = readv(cfg_.tap_fd, rx_stash_iov_.data(), static_cast<int>(niov));
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK)
        rx_stats.drops[kTapReadError].fetch_add(1, std::memory_order_relaxed);
      rx_tap_readable_ = false;  // wait for EPOLLIN rather than retrying now
      break;
    }
    if (n == 0) {
      // A TAP never returns 0; a socket does at EOF. Stop polling it.
      tap_hup_ = true;
      break;
    }
    packets++;
    const uint64_t got = static_cast<uint64_t>(n);
    if (got < cfg_.hdr_len) {
      rx_stats.drops[kRxRunt].fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    if (got > cap) {
      // tun returns the frame's full length even when it had to cut it. A
      // partial frame is worse than none: drop it, count it, and keep the
      // buffers (nothing was published) for the next frame.
      rx_stats.drops[kRxTruncated].fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    if (check && !FilterAccepts(*check, rx_stash_iov_.data(), niov, cfg_.hdr_len, got - cfg_.hdr_len)) {
      // As a NIC's filter: the guest never sees it, the buffers take the next frame.
      rx_stats.drops[kRxFiltered].fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    // Spread the frame over the first k chains, each filled before the next.
    uint64_t left = got;
    size_t k = 0;
    while (left > 0) {
      const uint64_t use = std::min(left, rx_stash_[k].bytes);
      left -= use;
      k++;
    }
    if (cfg_.mergeable || cfg_.hdr_len >= HDR_SIZE_V1) {
      // num_buffers: the TAP leaves it alone, and it exists whenever the header
      // is at least 12 bytes (VERSION_1 without mergeable buffers: always 1).
      const uint16_t nb = ToLe16(static_cast<uint16_t>(k));
      WriteIov(rx_stash_iov_.data(), rx_stash_[0].iov_count, HDR_OFF_NUM_BUFFERS, &nb, sizeof nb);
    }
    left = got;
    size_t used_iov = 0;
    for (size_t i = 0; i < k; i++) {
      const uint64_t use = std::min(left, rx_stash_[i].bytes);
      rx_.AddUsed(rx_stash_[i].head, static_cast<uint32_t>(use));
      left -= use;
      used_iov += rx_stash_[i].iov_count;
      rx_stash_bytes_ -= rx_stash_[i].bytes;
    }
    rx_stash_.erase(rx_stash_.begin(), rx_stash_.begin() + static_cast<ptrdiff_t>(k));
    rx_stash_iov_.erase(rx_stash_iov_.begin(), rx_stash_iov_.begin() + static_cast<ptrdiff_t>(used_iov));
    if (uring_) rx_batch_ = 2;  // a frame was there: the next try posts two reads
    bytes += got;
    rx_stats.packets.fetch_add(1, std::memory_order_relaxed);
    rx_stats.bytes.fetch_add(got - cfg_.hdr_len, std::memory_order_relaxed);
  }
  Flush(rx_, rx_stats, cfg_.rx, static_cast<uint16_t>(rx_stash_.size()));
  return more;
}

void Engine::UpdateTapInterest() {
  uint32_t want = 0;
  if (!tap_hup_ && !rx_broken_ && rx_want_tap_) want |= EPOLLIN;
  if (!tx_broken_ && tx_blocked_) want |= EPOLLOUT;
  if (want == tap_events_) return;
  // Level-triggered, and registered only while wanted: epoll reports HUP/ERR
  // even with no events requested, which would wake a worker that has nothing to do.
  epoll_event ev{};
  ev.events = want;
  ev.data.u32 = kTagTap;
  int op = want == 0 ? EPOLL_CTL_DEL : tap_events_ == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD;
  if (epoll_ctl(epoll_fd_, op, cfg_.tap_fd, &ev) == 0) {
    tap_events_ = want;
  } else if (op != EPOLL_CTL_DEL) {
    // The fd cannot be polled (closed under us?): stop using it rather than spin.
    tap_hup_ = true;
    tx_blocked_ = false;
  }
}

void Engine::DrainKick(int fd, QueueStats& st) {
  uint64_t v;
  if (read(fd, &v, sizeof v) == sizeof v) st.kicks.fetch_add(1, std::memory_order_relaxed);
}

// Spins for up to busy_poll_us looking for work that would otherwise need a
// wake-up: TX chains the guest posted, RX buffers while RX waits for them,
// and the TAP's readiness when RX could take a frame or TX waits for room.
// True when there is something to do (the caller goes round without sleeping,
// and without counting a wake-up). Kicks stay enabled meanwhile, as vhost's
// busy loop does not rely on them either: a kick that races in is drained at
// the next epoll_wait.
bool Engine::BusyPoll() {
  if (cfg_.busy_poll_us == 0) return false;
  timespec start;
  clock_gettime(CLOCK_MONOTONIC, &start);
  const int64_t budget_ns = int64_t{cfg_.busy_poll_us} * 1000;
  for (uint32_t spin = 0;; spin++) {
    if (stop_.load(std::memory_order_relaxed)) return false;
    if (!tx_broken_ && !tx_blocked_ && tx_.AvailIdx() != tx_.last_avail()) return true;
    if (!rx_broken_ && !rx_want_tap_ && rx_.AvailIdx() != rx_.last_avail()) return true;
    const short want = static_cast<short>((!rx_broken_ && rx_want_tap_ && !tap_hup_ ? POLLIN : 0) |
                                          (!tx_broken_ && tx_blocked_ ? POLLOUT : 0));
    // poll() is a system call: look at the TAP every 16th turn only, the
    // rings (plain loads) every turn.
    if (want && (spin & 15) == 0) {
      pollfd p{cfg_.tap_fd, want, 0};
      if (poll(&p, 1, 0) > 0) {
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) rx_tap_readable_ = true;
        if (p.revents & (POLLOUT | POLLHUP | POLLERR)) tx_blocked_ = false;
        return true;
      }
    }
    timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if ((now.tv_sec - start.tv_sec) * 1000000000LL + (now.tv_nsec - start.tv_nsec) >= budget_ns) return false;
    __builtin_ia32_pause();
  }
}

void Engine::DrainRx() {
  for (int i = 0; i < kDrainRounds && !rx_broken_ && !tap_hup_; i++) {
    rx_tap_readable_ = true;
    if (!ProcessRx()) break;  // EAGAIN, or no guest buffers left
  }
}

void Engine::Run() {
  // "vt-pair<p>" (p = RX virtqueue index / 2): lets tools and the benchmark find
  // this worker's CPU time in /proc/self/task/*/comm. Linux keeps 15 bytes of a
  // thread name; the longest here, "vt-pair32767", is 12.
  char name[16];
  snprintf(name, sizeof name, "vt-pair%u", (cfg_.rx.index / 2) & 0xffff);
  pthread_setname_np(pthread_self(), name);

  Loop();
  if (drain_rx_.load(std::memory_order_relaxed)) DrainRx();
}

void Engine::Loop() {
  epoll_event evs[kMaxEvents];
  while (!stop_.load(std::memory_order_relaxed)) {
    bool more = false;
    if (!tx_broken_) more |= ProcessTx();
    if (!rx_broken_) more |= ProcessRx();
    if (more) continue;  // out of budget with work left: next round, no sleep
    if (BusyPoll()) continue;

    UpdateTapInterest();
    int n = epoll_wait(epoll_fd_, evs, kMaxEvents, -1);
    wakeups.fetch_add(1, std::memory_order_relaxed);
    for (int i = 0; i < n; i++) {
      switch (evs[i].data.u32) {
        case kTagStop:
          return;
        case kTagRxKick: DrainKick(cfg_.rx.kick_fd, rx_stats); break;
        case kTagTxKick: DrainKick(cfg_.tx.kick_fd, tx_stats); break;
        case kTagTap:
          if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) rx_tap_readable_ = true;
          if (evs[i].events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) tx_blocked_ = false;
          if (evs[i].events & (EPOLLHUP | EPOLLERR)) {
            // Let each side see the error from its own syscall once, then stop polling.
            if (!(evs[i].events & EPOLLIN)) tap_hup_ = true;
          }
          break;
      }
    }
  }
}

}  // namespace vt
