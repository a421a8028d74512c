// The vhost worker loop (see engine.h): epoll on the TAP, both kick eventfds
// and a wake eventfd; per round TX then RX, each within a budget, each in
// batches handed to the TapIo.
#include "engine.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <system_error>

#include "tap.h"

namespace vt {

namespace {

// Per-round budgets, as Linux vhost-net's VHOST_NET_WEIGHT (bytes) and
// VHOST_NET_PKT_WEIGHT (frames): after this much work in one direction the
// worker turns to the other direction and to its stop flag, so a flood one
// way cannot starve the other way nor make stop() wait for long. The packet
// bound matters for small frames, the byte bound for large GSO frames.
constexpr uint32_t kBudgetPackets = 256;
constexpr uint64_t kBudgetBytes = 512 * 1024;
// Rounds of RX a draining stop may run: detaching a TAP queue drops whatever
// the kernel still holds for it, so before a pair is taken away the worker
// moves what it can into the guest's buffers. Bounded so a flood that keeps
// the queue full cannot hold stop() up: 16 rounds are 4096 frames.
constexpr int kDrainRounds = 16;
// Frames a draining stop may discard (and count) once the guest has no
// buffers left for them: a TAP queue holds txqueuelen frames (1000 by
// default); the bound only keeps a flood from holding stop() up.
constexpr int kDiscardMax = 65536;

// Frames per batch, both directions and both I/O methods. With io_uring, 64
// amortises the one io_uring_enter over enough frames that the syscall is a
// small share of a 64-byte frame's cost, while a batch's iovecs and results
// stay small and hot in cache; it is a quarter of kBudgetPackets so the
// worker still turns to the other direction every few batches.
constexpr unsigned kBatch = 64;

// epoll_event.data tags.
enum : uint32_t { kTagWake, kTagRxKick, kTagTxKick, kTagTap };

constexpr int kMaxEvents = 8;

// Longest the worker leaves frames in the TAP while the RX interrupt the guest
// waits for is held by coalescing (see Loop): bounds how many pile up there
// (100 at 1 Mpps, a tenth of the default txqueuelen) whatever max_usecs is.
constexpr int64_t kRxGatherMaxNs = 100 * 1000;

int64_t NowNs() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1000000000LL + t.tv_nsec;
}

// VHOST_TAP_IO=readv forces readv/writev (tests run both paths; a way out
// should io_uring misbehave somewhere); VHOST_TAP_IO=uring keeps io: 'auto'
// on io_uring instead of choosing by measurement (tests of io_uring itself).
bool UringWanted() {
  const char* v = getenv("VHOST_TAP_IO");
  return !(v && strcmp(v, "readv") == 0);
}
// Test-only: see EngineT::no_dirty_log_.
bool DirtyLogDisabledForTest() {
  const char* v = getenv("VHOST_TAP_TEST_NO_DIRTY_LOG");
  return v && strcmp(v, "1") == 0;
}
bool UringPinned() {
  const char* v = getenv("VHOST_TAP_IO");
  return v && strcmp(v, "uring") == 0;
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
  // A tunnel gso_type with a header that has no tunnel fields: tun refuses it
  // (with the 24-byte one, TunnelHeaderDrop judged it before the write).
  if ((gso & (HDR_GSO_UDP_TUNNEL_IPV4 | HDR_GSO_UDP_TUNNEL_IPV6)) && hdr_len < HDR_SIZE_TUNNEL)
    return kTxHdrTunnelShortHeader;
  const uint16_t hdrlen = static_cast<uint16_t>(h[2] | h[3] << 8), gso_size = static_cast<uint16_t>(h[4] | h[5] << 8);
  const uint16_t cstart = static_cast<uint16_t>(h[6] | h[7] << 8), coff = static_cast<uint16_t>(h[8] | h[9] << 8);
  if ((flags & HDR_F_NEEDS_CSUM) && uint64_t{cstart} + coff + 2 > frame) return kTxHdrCsumPastFrame;
  if (hdrlen > frame) return kTxHdrLenPastFrame;
  // The tunnel bits passed TunnelHeaderDrop before the write; name what else tun refused.
  const uint8_t type = gso & static_cast<uint8_t>(~(HDR_GSO_ECN | HDR_GSO_UDP_TUNNEL_IPV4 | HDR_GSO_UDP_TUNNEL_IPV6));
  if (type != HDR_GSO_NONE && type != HDR_GSO_TCPV4 && type != HDR_GSO_UDP && type != HDR_GSO_TCPV6 &&
      type != HDR_GSO_UDP_L4)
    return kTxHdrBadGsoType;
  if (type != HDR_GSO_NONE && gso_size == 0) return kTxHdrGsoSizeZero;
  if (type == HDR_GSO_UDP_L4 && !(flags & HDR_F_NEEDS_CSUM)) return kTxHdrUsoNoCsum;
  return kTapWriteEinval;
}

size_t ReadIov(const iovec* iov, size_t cnt, size_t offset, void* out, size_t len);

// Ethernet and IP header sizes the tunnel offset checks need.
constexpr uint32_t kEthHdrLen = 14;
constexpr uint32_t kIpv4HdrMin = 20;
constexpr uint32_t kIpv6HdrLen = 40;
constexpr uint32_t kUdpHdrLen = 8;

// A TX header that asks for GSO over a UDP tunnel (virtio 1.4 §5.1.6.2), checked
// before the frame goes to the TAP: the TxDrop that refuses it, or -1 when it may
// go. Only with the 24-byte header (a tunnel feature negotiated): tun then takes
// any tunnel header, whichever direction the guest negotiated, so the engine is
// the one to hold the guest to what it negotiated; tun checks the offsets too,
// and the offset rules here are the kernel's (outer header family from the
// tunnel bit). With a shorter header tun refuses every tunnel gso_type itself
// (ClassifyEinval names it). Frames without a tunnel bit cost two loads.
// Whether the header at the start of `iov` (hdr_len bytes, the 24-byte form)
// has a UDP tunnel gso_type: a VXLAN/GENEVE super-frame, for the statistics.
bool IsUdpTunnelGso(const struct iovec* iov, size_t n, uint32_t hdr_len) {
  if (hdr_len < HDR_SIZE_TUNNEL || n == 0) return false;
  uint8_t h[2] = {};
  if (iov[0].iov_len >= 2) {
    const uint8_t* p = static_cast<const uint8_t*>(iov[0].iov_base);
    h[1] = p[1];
  } else {
    ReadIov(iov, n, 0, h, 2);
  }
  return (h[1] & (HDR_GSO_UDP_TUNNEL_IPV4 | HDR_GSO_UDP_TUNNEL_IPV6)) != 0;
}

int TunnelHeaderDrop(const Chain& c, uint32_t hdr_len, bool tunnel, bool tunnel_csum) {
  uint8_t h[HDR_SIZE_TUNNEL] = {};
  if (hdr_len < HDR_SIZE_TUNNEL || c.iov.empty()) return -1;
  if (c.iov[0].iov_len >= 2) {
    const uint8_t* p = static_cast<const uint8_t*>(c.iov[0].iov_base);
    h[0] = p[0];
    h[1] = p[1];
  } else {
    ReadIov(c.iov.data(), c.iov.size(), 0, h, 2);
  }
  constexpr uint8_t kTunnelBits = HDR_GSO_UDP_TUNNEL_IPV4 | HDR_GSO_UDP_TUNNEL_IPV6;
  if (!(h[1] & kTunnelBits) && !(h[0] & HDR_F_UDP_TUNNEL_CSUM)) return -1;
  // One copy, so every check below looks at the same bytes (the chain holds the
  // whole header: ReadTxChain made sure of that).
  ReadIov(c.iov.data(), c.iov.size(), 0, h, HDR_SIZE_TUNNEL);
  const uint8_t flags = h[0], gso = h[1];
  if ((gso & kTunnelBits) && !tunnel) return kTxHdrTunnelNotNegotiated;
  if ((flags & HDR_F_UDP_TUNNEL_CSUM) && !tunnel_csum) return kTxHdrTunnelNotNegotiated;
  const uint8_t inner = gso & static_cast<uint8_t>(~(kTunnelBits | HDR_GSO_ECN));
  if (!(gso & kTunnelBits) || (gso & kTunnelBits) == kTunnelBits ||
      (inner != HDR_GSO_TCPV4 && inner != HDR_GSO_TCPV6 && inner != HDR_GSO_UDP_L4) || !(flags & HDR_F_NEEDS_CSUM) ||
      (flags & HDR_F_DATA_VALID))
    return kTxHdrTunnelBadType;
  auto u16 = [&h](uint32_t off) { return static_cast<uint32_t>(h[off] | h[off + 1] << 8); };
  const uint64_t frame = c.bytes - hdr_len;
  const uint32_t outer_th = u16(HDR_OFF_OUTER_TH_OFFSET), inner_nh = u16(HDR_OFF_INNER_NH_OFFSET);
  const uint32_t csum_start = u16(6), csum_offset = u16(8);
  const uint32_t outer_l3 = (gso & HDR_GSO_UDP_TUNNEL_IPV6) ? kIpv6HdrLen : kIpv4HdrMin;
  const uint32_t inner_l3 = inner == HDR_GSO_TCPV6 ? kIpv6HdrLen : kIpv4HdrMin;
  if (uint64_t{outer_th} + kUdpHdrLen > frame || uint64_t{inner_nh} + inner_l3 > frame ||
      uint64_t{csum_start} + csum_offset + 2 > frame)
    return kTxHdrTunnelOffsetPastFrame;
  if (outer_th < kEthHdrLen + outer_l3 || inner_nh < outer_th + kUdpHdrLen || csum_start < inner_nh + inner_l3)
    return kTxHdrTunnelOffsetOrder;
  return -1;
}

int WriteErrorDrop(int err, const Chain& c, uint32_t hdr_len) {
  if (err == EINVAL) return ClassifyEinval(c, hdr_len);
  if (err == EIO) return kTapWriteEio;
  if (err == EFAULT) return kTapWriteEfault;
  return kTapWriteError;
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

// The hash fields of struct virtio_net_hdr_v1_hash for a frame that landed in
// `iov` (header at 0, frame at `offset`): tun leaves them as the guest's
// buffer had them, so they are always written, NONE without a configuration.
void FillHashReport(const RssHash* hash, const iovec* iov, size_t cnt, size_t offset, uint64_t frame_len) {
  uint32_t value = 0;
  uint16_t report = HASH_REPORT_NONE;
  if (hash && hash->types()) {
    uint8_t peek[RssHash::kPeek];
    const size_t want = static_cast<size_t>(std::min<uint64_t>(frame_len, RssHash::kPeek));
    report = hash->Compute(peek, ReadIov(iov, cnt, offset, peek, want), &value);
  }
  uint8_t fields[HDR_HASH_FIELDS_BYTES] = {};
  const uint32_t v = ToLe32(value);
  const uint16_t r = ToLe16(report);
  std::memcpy(fields, &v, 4);
  std::memcpy(fields + 4, &r, 2);
  // The header may be split across descriptors: byte by byte through iov.
  size_t at = HDR_OFF_HASH_VALUE, done = 0;
  for (size_t i = 0; i < cnt && done < sizeof fields; i++) {
    if (at >= iov[i].iov_len) {
      at -= iov[i].iov_len;
      continue;
    }
    const size_t n = std::min(sizeof fields - done, iov[i].iov_len - at);
    std::memcpy(static_cast<uint8_t*>(iov[i].iov_base) + at, fields + done, n);
    done += n;
    at = 0;
  }
}

}  // namespace

bool Engine::Validate(const EngineConfig& c, std::string* why) {
  if (c.hdr_len != HDR_SIZE_LEGACY && c.hdr_len != HDR_SIZE_V1 && c.hdr_len != HDR_SIZE_HASH &&
      c.hdr_len != HDR_SIZE_TUNNEL) {
    *why = "hdrLen must be 10, 12, 20 or 24";
    return false;
  }
  if ((c.host_udp_tunnel || c.host_udp_tunnel_csum) && c.hdr_len != HDR_SIZE_TUNNEL) {
    *why = "hostUdpTunnel needs the 24-byte header (hdrLen 24)";
    return false;
  }
  if (c.host_udp_tunnel_csum && !c.host_udp_tunnel) {
    *why = "hostUdpTunnelCsum needs hostUdpTunnel";
    return false;
  }
  if (c.mergeable && c.hdr_len < HDR_SIZE_V1) {
    *why = "mergeable RX buffers need a header with num_buffers (hdrLen >= 12)";
    return false;
  }
  // 64 KiB of frame plus header is what GSO can produce; allow headroom, but a
  // bound keeps the u32 arithmetic and the stash size sane.
  if (c.rx_frame_max < c.hdr_len || c.rx_frame_max > (1u << 20)) {
    *why = "rxFrameMax must be between hdrLen and 1048576";
    return false;
  }
  if (c.tap_fd < 0 || c.rx.kick_fd < 0 || c.rx.call_fd < 0 || c.tx.kick_fd < 0 || c.tx.call_fd < 0) {
    *why = "tapFd, kickFd and callFd must be open file descriptors";
    return false;
  }
  std::shared_ptr<const MemoryTable> mem = c.memory ? c.memory->Get() : nullptr;
  if (!mem) {
    *why = "no guest memory";
    return false;
  }
  if (c.rx.layout.packed != c.tx.layout.packed) {
    *why = "rx and tx queues must have the same ring layout (both packed or both split)";
    return false;
  }
  for (const QueueConfig* q : {&c.rx, &c.tx}) {
    if (q->layout.packed && ((q->last_avail_idx & ~RING_PACKED_WRAP_BIT) >= q->layout.size ||
                             (q->used_idx & ~RING_PACKED_WRAP_BIT) >= q->layout.size)) {
      *why = "queue " + std::to_string(q->index) +
             ": packed ring positions (bits 0-14 of lastAvailIdx / usedIdx) must be below the queue size";
      return false;
    }
  }
  const QueueLayout both[2] = {c.rx.layout, c.tx.layout};
  Violation v;
  if (!CheckLayouts(*mem, both, 2, &v)) {
    *why = "rx/tx queues: " + v.detail;
    return false;
  }
  return true;
}

template <class Q>
EngineT<Q>::EngineT(const EngineConfig& cfg, BrokenFn on_broken) : cfg_(cfg), on_broken_(std::move(on_broken)) {
  mem_gen_ = cfg_.memory->generation();
  mem_ = cfg_.memory->Get();
  no_dirty_log_ = DirtyLogDisabledForTest();
  Violation v;
  // Validate() ran first; Init cannot fail here, and if the memory changed in
  // between, RefreshMemory() at the first round re-checks.
  rx_.SetInOrder(cfg_.in_order);
  tx_.SetInOrder(cfg_.in_order);
  rx_broken_ = !rx_.Init(*mem_, cfg_.rx.layout, cfg_.event_idx, cfg_.indirect, cfg_.rx.last_avail_idx,
                         cfg_.rx.used_idx, &v);
  tx_broken_ = !tx_.Init(*mem_, cfg_.tx.layout, cfg_.event_idx, cfg_.indirect, cfg_.tx.last_avail_idx,
                         cfg_.tx.used_idx, &v);
  rx_stats.last_avail_idx = cfg_.rx.last_avail_idx;
  rx_stats.used_idx = cfg_.rx.used_idx;
  tx_stats.last_avail_idx = cfg_.tx.last_avail_idx;
  tx_stats.used_idx = cfg_.tx.used_idx;
  tx_slots_.resize(kBatch);
  frames_.resize(kBatch);
  results_.resize(kBatch);
  tx_refused_.resize(kBatch);
}

template <class Q>
EngineT<Q>::~EngineT() { Stop(); }

template <class Q>
SysResult EngineT<Q>::Start() {
  SysResult r;
  if (running_) {
    r.err = EBUSY;
    r.syscall = "start";
    return r;
  }
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epoll_fd_ < 0) {
    r.err = errno;
    r.syscall = "epoll_create1";
    return r;
  }
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0) {
    r.err = errno;
    r.syscall = "eventfd";
    close(epoll_fd_);
    epoll_fd_ = -1;
    return r;
  }
  const std::pair<int, uint32_t> fds[] = {{wake_fd_, kTagWake}, {cfg_.rx.kick_fd, kTagRxKick}, {cfg_.tx.kick_fd, kTagTxKick}};
  for (auto [fd, tag] : fds) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u32 = tag;
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) < 0) {
      r.err = errno;
      r.syscall = "epoll_ctl";
      close(epoll_fd_);
      close(wake_fd_);
      epoll_fd_ = wake_fd_ = -1;
      return r;
    }
  }
  // io_uring when the kernel allows it; otherwise (ENOSYS, EPERM from
  // kernel.io_uring_disabled or seccomp, ENOMEM) readv/writev, silently: both
  // are correct, one is faster. Made per Start() and released at Stop() so a
  // stopped engine holds no ring fd.
  io_.reset();
  if (!cfg_.force_readv && UringWanted()) {
    int err = 0;
    io_ = MakeUringIo(cfg_.tap_fd, kBatch, cfg_.sqpoll, &err);
    // Which of the two is cheaper depends on the machine (tap_io_auto.cc);
    // sqpoll was asked for by name, so it stays.
    if (io_ && !cfg_.sqpoll && !UringPinned()) io_ = MakeAutoIo(std::move(io_), cfg_.tap_fd);
  }
  if (!io_) io_ = MakeReadvIo(cfg_.tap_fd);
  // The worker writes its own copies of the call fds: SetCallFd() swaps them
  // while it runs, and the caller may close its fd at once.
  for (int i = 0; i < 2; i++) {
    call_fd_[i] = fcntl(i == 0 ? cfg_.rx.call_fd : cfg_.tx.call_fd, F_DUPFD_CLOEXEC, 3);
    if (call_fd_[i] < 0) {
      r.err = errno;
      r.syscall = "fcntl(F_DUPFD_CLOEXEC)";
      CloseCallFds();
      io_.reset();
      close(epoll_fd_);
      close(wake_fd_);
      epoll_fd_ = wake_fd_ = -1;
      return r;
    }
  }
  io_name.store(io_->name());
  rx_batch_ = 1;
  // A restart starts from a clean I/O state; the rings carry the rest.
  tap_events_ = 0;
  tap_hup_ = false;
  tx_blocked_ = false;
  rx_tap_readable_ = true;
  stop_ = false;
  running_ = true;
  try {
    thread_ = std::thread([this] { Run(); });
  } catch (const std::system_error& e) {
    // Out of threads (EAGAIN under a thread limit or memory pressure): a
    // C++ exception must not cross the N-API boundary, where it aborts.
    running_ = false;
    r.err = e.code().value() ? e.code().value() : EAGAIN;
    r.syscall = "pthread_create";
    CloseCallFds();
    io_.reset();
    close(epoll_fd_);
    close(wake_fd_);
    epoll_fd_ = wake_fd_ = -1;
  }
  return r;
}

template <class Q>
void EngineT<Q>::Wake() {
  if (wake_fd_ < 0) return;
  uint64_t one = 1;
  ssize_t r = write(wake_fd_, &one, sizeof one);
  (void)r;  // a full counter already means "look again"
}

template <class Q>
void EngineT<Q>::Stop(bool drain_rx) {
  if (!thread_.joinable()) return;
  drain_rx_ = drain_rx;
  stop_ = true;
  Wake();  // the flag alone also stops the worker at its next round
  thread_.join();
  close(epoll_fd_);
  close(wake_fd_);
  epoll_fd_ = wake_fd_ = -1;
  // Chains popped for RX but not used go back to the guest's view of the
  // ring: the resume point is the first of them (they are the newest pops).
  stash_.GiveBack(rx_);
  rx_stats.last_avail_idx = rx_.last_avail();
  io_.reset();
  CloseCallFds();
  running_ = false;
}

template <class Q>
void EngineT<Q>::CloseCallFds() {
  for (int i = 0; i < 2; i++) {
    if (call_fd_[i] >= 0) close(call_fd_[i]);
    call_fd_[i] = -1;
    const int pending = next_call_fd_[i].exchange(-1);
    if (pending >= 0) close(pending);
  }
}

template <class Q>
SysResult EngineT<Q>::SetCallFd(bool rx, int fd) {
  SysResult r;
  (rx ? cfg_.rx : cfg_.tx).call_fd = fd;  // for the next Start(); the worker reads call_fd_ only
  if (!running_) return r;
  const int copy = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (copy < 0) {
    r.err = errno;
    r.syscall = "fcntl(F_DUPFD_CLOEXEC)";
    return r;
  }
  // A swap the worker has not taken yet is replaced whole.
  const int replaced = next_call_fd_[rx ? 0 : 1].exchange(copy);
  if (replaced >= 0) close(replaced);
  Wake();
  return r;
}

// Worker thread, between batches: takes call fds SetCallFd() handed over.
template <class Q>
void EngineT<Q>::TakeCallFds() {
  for (int i = 0; i < 2; i++) {
    if (next_call_fd_[i].load(std::memory_order_relaxed) < 0) continue;
    const int fd = next_call_fd_[i].exchange(-1);
    if (fd < 0) continue;
    close(call_fd_[i]);
    call_fd_[i] = fd;
    // An interrupt that went to the old fd during the switch may be lost to
    // the driver; a spurious one is harmless (it finds nothing new).
    const uint64_t one = 1;
    ssize_t w = write(fd, &one, sizeof one);
    (void)w;
  }
}

template <class Q>
void EngineT<Q>::ResetQueue(bool rx) {
  QueueRequest r;
  r.rx = rx;
  RunQueueRequest(&r);
}

template <class Q>
bool EngineT<Q>::EnableQueue(bool rx, const QueueLayout& layout, uint16_t last_avail, uint16_t used_idx,
                             std::string* why) {
  QueueRequest r;
  r.enable = true;
  r.rx = rx;
  r.layout = layout;
  r.last_avail = last_avail;
  r.used_idx = used_idx;
  RunQueueRequest(&r);
  if (!r.ok) *why = r.why;
  return r.ok;
}

template <class Q>
void EngineT<Q>::RunQueueRequest(QueueRequest* r) {
  if (!thread_.joinable()) {
    ApplyQueueRequest(r);
    return;
  }
  std::unique_lock<std::mutex> lk(req_mu_);
  req_ = r;
  req_pending_.store(true, std::memory_order_release);
  lk.unlock();
  Wake();
  lk.lock();
  // The worker takes it at its next round: at most one batch each way away.
  req_cv_.wait(lk, [r] { return r->done; });
}

template <class Q>
void EngineT<Q>::TakeQueueRequest() {
  if (!req_pending_.load(std::memory_order_acquire)) return;
  std::lock_guard<std::mutex> g(req_mu_);
  req_pending_.store(false, std::memory_order_relaxed);
  if (!req_) return;
  ApplyQueueRequest(req_);
  req_->done = true;
  req_ = nullptr;
  req_cv_.notify_all();
}

template <class Q>
void EngineT<Q>::ApplyQueueRequest(QueueRequest* r) {
  Q& q = r->rx ? rx_ : tx_;
  QueueStats& st = r->rx ? rx_stats : tx_stats;
  QueueConfig& qc = r->rx ? cfg_.rx : cfg_.tx;
  bool& off = r->rx ? rx_broken_ : tx_broken_;
  bool& reset = r->rx ? rx_reset_ : tx_reset_;
  NotifyCoalescer& coal = r->rx ? rx_coal_ : tx_coal_;
  if (!r->enable) {
    // RX chains in the stash hold no frame yet; they go back with the rest of
    // the ring (also from a broken ring: none may outlive it).
    if (r->rx) stash_.GiveBack(rx_);
    if (!off) {
      // At a batch boundary: every used element is published.
      st.last_avail_idx.store(q.last_avail(), std::memory_order_relaxed);
      st.used_idx.store(q.used_idx(), std::memory_order_relaxed);
    }
    if (r->rx) rx_want_tap_ = false;  // frames wait in the TAP queue meanwhile
    else tx_blocked_ = false;         // chains EAGAIN gave back are the driver's again
    // A held interrupt is for a ring the driver took back: not sent.
    (void)coal.Close();
    off = true;
    reset = true;
    r->ok = true;
    return;
  }
  if (!reset) {
    r->why = "queue " + std::to_string(qc.index) + " was not reset";
    return;
  }
  Violation v;
  // The new ring must not overlap the other ring while that one is served.
  const bool other_served = !(r->rx ? tx_broken_ : rx_broken_);
  const QueueLayout both[2] = {r->layout, r->rx ? cfg_.tx.layout : cfg_.rx.layout};
  if (!CheckLayouts(*mem_, both, other_served ? 2 : 1, &v) ||
      !q.Init(*mem_, r->layout, cfg_.event_idx, cfg_.indirect, r->last_avail, r->used_idx, &v)) {
    r->why = "queue " + std::to_string(qc.index) + ": " + v.detail + " (" + (v.rule ? v.rule : "") + ")";
    return;
  }
  q.SetInOrder(cfg_.in_order);
  qc.layout = r->layout;
  qc.last_avail_idx = r->last_avail;
  qc.used_idx = r->used_idx;
  st.last_avail_idx.store(r->last_avail, std::memory_order_relaxed);
  st.used_idx.store(r->used_idx, std::memory_order_relaxed);
  st.broken = false;
  if (r->rx) {
    rx_tap_readable_ = true;  // what waited in the TAP queue is read now
    rx_batch_ = 1;
  }
  reset = false;
  off = false;
  r->ok = true;
}

// Only the offending queue stops: the backend resets the whole device anyway
// (DEVICE_NEEDS_RESET), and until it does the healthy direction loses nothing
// by running. A broken queue is never touched again, so nothing the guest
// writes to it afterwards can reach the device.
template <class Q>
void EngineT<Q>::Break(Q& q, QueueStats& st, const QueueConfig& qc, const Violation& v) {
  (&q == &rx_ ? rx_broken_ : tx_broken_) = true;
  st.broken = true;
  on_broken_(qc.index, v.rule, v.detail);
}

// Once per batch: the used elements become visible with one store of used.idx,
// at most one interrupt goes out (or waits, when the driver asked for
// coalescing), and the batch's counts are published.
template <class Q>
void EngineT<Q>::Flush(Q& q, QueueStats& st, BatchCounts& counts, const QueueConfig& qc, NotifyCoalescer& coal,
                   uint16_t stashed, uint16_t oldest_stashed_id) {
  st.Publish(counts);
  const uint16_t n = q.pending_used();
  bool notify = q.PublishUsed();
  // The ring parts written this batch (used elements and index, notification
  // suppression fields), after they were written.
  if (const DirtyLog* log = CurrentLog()) LogRing(*log, q);
  // The clock is read only while coalescing: a plain batch pays nothing for it.
  if (coal.engaged()) notify = coal.Published(n, notify, NowNs());
  if (notify) Interrupt(qc, st);
  QueueStats::Add(st.used_chains, n);
  st.used_idx.store(q.used_idx(), std::memory_order_relaxed);
  st.last_avail_idx.store(q.last_avail_before(stashed, oldest_stashed_id), std::memory_order_relaxed);
}

// Off, this is one fence, one load and a branch per batch. The fence orders
// the batch's writes to guest memory before the load of the log generation:
// a batch that finds logging off wrote before the session switched it on,
// hence before the front end got its answer and began copying memory, so the
// copy carries those bytes. A batch that finds it on marks after writing, as
// the front end, which clears bits as it copies pages, needs.
template <class Q>
const DirtyLog* EngineT<Q>::CurrentLog() {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  const uint64_t g = cfg_.memory->log_generation();
  if (__builtin_expect(g != log_gen_, 0)) {
    log_gen_ = g;
    log_ = no_dirty_log_ ? nullptr : cfg_.memory->GetLog();
  }
  return log_.get();
}

template <class Q>
void EngineT<Q>::LogRing(const DirtyLog& log, const Q& q) const {
  const QueueLayout& l = q.layout();
  if (l.size == 0) return;
  log.Mark(l.used, l.used_bytes());
  if (l.packed) log.Mark(l.desc, l.desc_bytes());
}

template <class Q>
void EngineT<Q>::Interrupt(const QueueConfig& qc, QueueStats& st) {
  uint64_t one = 1;
  // A full eventfd counter (EAGAIN) already means "interrupt pending". The fd
  // is non-blocking (the caller's rule): a full counter never blocks the worker.
  if (write(call_fd_[&qc == &cfg_.tx ? 1 : 0], &one, sizeof one) == sizeof one || errno == EAGAIN)
    QueueStats::Add(st.interrupts, 1);
}

template <class Q>
void EngineT<Q>::SetCoalescing(bool rx, uint32_t max_packets, uint32_t max_usecs) {
  coalescing_[rx ? 0 : 1].store(uint64_t{max_packets} << 32 | max_usecs, std::memory_order_relaxed);
  // A sleeping worker applies it now: new values may make an interrupt due.
  Wake();
}

template <class Q>
int64_t EngineT<Q>::CoalesceRound() {
  struct Queue {
    NotifyCoalescer& coal;
    const QueueConfig& qc;
    QueueStats& st;
  };
  const Queue queues[2] = {{rx_coal_, cfg_.rx, rx_stats}, {tx_coal_, cfg_.tx, tx_stats}};
  int64_t now = 0;
  int64_t next = -1;
  for (size_t i = 0; i < 2; i++) {
    const uint64_t p = coalescing_[i].load(std::memory_order_relaxed);
    queues[i].coal.Set(static_cast<uint32_t>(p >> 32), static_cast<uint32_t>(p));
    if (!queues[i].coal.open()) continue;
    if (now == 0) now = NowNs();
    if (queues[i].coal.Due(now)) {
      Interrupt(queues[i].qc, queues[i].st);
    } else {
      const int64_t left = std::max<int64_t>(0, queues[i].coal.deadline_ns() - now);
      next = next < 0 ? left : std::min(next, left);
    }
  }
  return next;
}

// epoll_wait with a timeout in ns (-1: none). A coalescing window of a few
// microseconds needs better than epoll_wait's milliseconds: epoll_pwait2
// (Linux 5.11) takes a timespec; older kernels round up to the millisecond.
template <class Q>
int EngineT<Q>::Wait(epoll_event* evs, int max, int64_t timeout_ns) {
  if (timeout_ns < 0) return epoll_wait(epoll_fd_, evs, max, -1);
#ifdef SYS_epoll_pwait2
  static std::atomic<bool> no_pwait2{false};
  if (!no_pwait2.load(std::memory_order_relaxed)) {
    const timespec ts{static_cast<time_t>(timeout_ns / 1000000000), static_cast<long>(timeout_ns % 1000000000)};
    const long n = syscall(SYS_epoll_pwait2, epoll_fd_, evs, max, &ts, nullptr, 0);
    if (n >= 0 || errno != ENOSYS) return static_cast<int>(n);
    no_pwait2.store(true, std::memory_order_relaxed);
  }
#endif
  return epoll_wait(epoll_fd_, evs, max, static_cast<int>(std::min<int64_t>((timeout_ns + 999999) / 1000000, INT32_MAX)));
}

template <class Q>
void EngineT<Q>::RefreshMemory() {
  const uint64_t gen = cfg_.memory->generation();
  if (gen == mem_gen_) return;
  std::shared_ptr<const MemoryTable> next = cfg_.memory->Get();
  mem_gen_ = gen;
  if (!next || next == mem_) return;
  // Stashed RX chains point into the old table: give them back and pop them
  // again through the new one. Nothing else outlives a batch.
  if (!rx_broken_) stash_.GiveBack(rx_);
  Violation v;
  if (!rx_broken_ && !rx_.Remap(*next, &v)) Break(rx_, rx_stats, cfg_.rx, v);
  if (!tx_broken_ && !tx_.Remap(*next, &v)) Break(tx_, tx_stats, cfg_.tx, v);
  mem_ = std::move(next);  // the old table goes when no one else holds it
}

template <class Q>
bool EngineT<Q>::MemoryMovedUnder(const Violation& v) const {
  // Translation failed and the table was replaced since this one was taken.
  // A guest that posts into new memory learnt of it after the replacement,
  // so the replacement happens-before its avail.idx store, and the pop loaded
  // avail.idx with acquire: a generation seen unchanged here means the buffer
  // really is outside the guest's memory.
  const bool translation = v.rule && (strcmp(v.rule, "desc-out-of-bounds") == 0 || strcmp(v.rule, "indirect-out-of-bounds") == 0);
  return translation && cfg_.memory->generation() != mem_gen_;
}

template <class Q>
void EngineT<Q>::PinLostMemory() {
  // The kernel may still read or write buffers of the failed batch: the table
  // they point into (and so their mappings) must never be released.
  static_cast<void>(new std::shared_ptr<const MemoryTable>(mem_));
}

template <class Q>
void EngineT<Q>::FallBackIfFailed() {
  // After every batch: io: 'auto' may have changed method.
  io_name.store(io_->name(), std::memory_order_relaxed);
  if (!io_->failed()) return;
  io_ = MakeReadvIo(cfg_.tap_fd);
  io_name.store(io_->name());
}

// TX: pop up to kBatch chains, hand them to the TapIo as one batch, complete
// them in order. A frame the TAP had no room for goes back to the ring with
// every frame after it (UndoPop), to be sent in the same order on EPOLLOUT.
template <class Q>
bool EngineT<Q>::ProcessTx() {
  if (tx_blocked_) return false;
  tx_.DisableNotify();
  uint32_t packets = 0;
  uint64_t bytes = 0;
  bool more = false;
  bool broke = false;
  for (;;) {
    if (packets >= kBudgetPackets || bytes >= kBudgetBytes) {
      more = true;
      break;
    }
    // A table the JS thread replaced (setMemory) applies from the next batch
    // on, not only from the next round: a guest that posts buffers in new
    // memory right after the replacement is then not read through the old one
    // while TX keeps the worker in this loop.
    RefreshMemory();
    if (tx_broken_) break;
    unsigned n = 0;
    bool drained = false;
    bool memory_moved = false;
    // With EVENT_IDX the driver names the used entry it wants an interrupt
    // for (a TX driver: when most of its chains are back, to post more).
    // Ending the batch right after that entry sends the interrupt as soon as
    // asked, not up to a batch later: with the usual ring of 256, a driver
    // asking at 3/4 (192, a batch boundary) would otherwise hear only when
    // the ring is empty, and the worker would sleep until it refilled.
    unsigned cap = kBatch;
    if (const uint16_t until = tx_.UntilUsedEvent(); until > 0 && until < cap) cap = until;
    while (n < cap && packets + n < kBudgetPackets) {
      uint16_t head;
      Violation v;
      const typename Q::Pop p = tx_.PopOrArm(&head, &v);
      if (p == Q::Pop::kEmpty) {
        drained = true;
        break;
      }
      if (p == Q::Pop::kChain && !tx_.ReadTxChain(head, cfg_.hdr_len, &tx_slots_[n], &v) &&
          MemoryMovedUnder(v)) {
        // Posted in memory the JS thread added after this batch took its
        // table: give it back and take it again with the new table, once
        // this batch (whose buffers the old table holds) is done.
        tx_.UndoPop();
        memory_moved = true;
        break;
      }
      if (p == Q::Pop::kBroken || v.rule) {
        Break(tx_, tx_stats, cfg_.tx, v);
        broke = true;
        break;
      }
      n++;
    }
    if (n == 0) {
      if (memory_moved) continue;  // RefreshMemory() at the top takes the new table
      break;
    }
    // A chain in more buffers than one writev takes, or with a tunnel header
    // the guest may not send, is dropped in place; the rest go to the TAP as
    // one batch.
    unsigned nio = 0;
    for (unsigned i = 0; i < n; i++) {
      const Chain& c = tx_slots_[i];
      tx_refused_[i] = c.iov.size() > kMaxIov
                           ? kTxTooManySegments
                           : TunnelHeaderDrop(c, cfg_.hdr_len, cfg_.host_udp_tunnel, cfg_.host_udp_tunnel_csum);
      if (tx_refused_[i] < 0) frames_[nio++] = IoFrame{c.iov.data(), static_cast<uint32_t>(c.iov.size())};
    }
    const TapIo::Batch outcome = nio ? io_->Write(frames_.data(), nio, results_.data()) : TapIo::Batch::kDone;
    if (nio) QueueStats::Add(io_batches[io_->method()], 1);
    tx_counts_.reordered += io_->TakeReordered();
    if (outcome == TapIo::Batch::kUnknown) {
      // Whether these frames went out is unknown and the kernel may still
      // read their buffers: they are neither completed nor sent again. The
      // guest gets the chains back at its next reset.
      tx_counts_.withheld += n;
      PinLostMemory();
      FallBackIfFailed();
      more = true;
      break;
    }
    unsigned k = 0, undo_from = n;
    for (unsigned i = 0; i < n; i++) {
      const Chain& c = tx_slots_[i];
      if (tx_refused_[i] >= 0) {
        tx_counts_.drops[tx_refused_[i]]++;
      } else {
        const int32_t r = results_[k++];
        if (r == kNotDone || r == -EAGAIN || r == -EWOULDBLOCK) {
          if (r != kNotDone) {
            tx_blocked_ = true;
            tx_counts_.tap_full++;
          }
          undo_from = i;
          break;
        }
        if (r == kDroppedFull) {
          tx_counts_.drops[kTxTapFullReordered]++;
        } else if (r < 0) {
          tx_counts_.drops[WriteErrorDrop(-r, c, cfg_.hdr_len)]++;
        } else {
          bytes += c.bytes;
          tx_counts_.packets++;
          tx_counts_.bytes += c.bytes - cfg_.hdr_len;
          if (IsUdpTunnelGso(c.iov.data(), c.iov.size(), cfg_.hdr_len)) {
            tx_counts_.udp_tunnel_gso_packets++;
            tx_counts_.udp_tunnel_gso_bytes += c.bytes - cfg_.hdr_len;
          }
        }
      }
      packets++;  // attempts count toward the budget, so failing writes cannot hog the worker
      tx_.AddUsed(c.head, 0);  // TX chains: the device wrote nothing
    }
    // A broken queue is never touched again; its position no longer matters.
    if (undo_from < n && !broke) tx_.UndoPop(static_cast<uint16_t>(n - undo_from));
    // Each batch's chains go back to the guest at once, not at the end of the
    // round: a guest then refills its ring while the next batch is written,
    // instead of waiting for the whole round (with a 256-entry ring and a
    // 256-frame budget the two took turns, each idle while the other worked).
    Flush(tx_, tx_stats, tx_counts_, cfg_.tx, tx_coal_, 0, 0);
    FallBackIfFailed();
    if (broke || tx_blocked_) break;
    // Drained, unless frames went back to the ring without EAGAIN (the I/O
    // mechanism failed under them): those go now, the guest will not kick again.
    if (drained && undo_from == n) break;
  }
  Flush(tx_, tx_stats, tx_counts_, cfg_.tx, tx_coal_, 0, 0);
  return more;
}

template <class Q>
bool EngineT<Q>::RxNeedsMore() const {
  if (!cfg_.mergeable) return stash_.chains() == 0;
  // Mergeable: gather until the largest frame fits. Also stop when the stash
  // already holds every buffer the ring can hold (a small ring would otherwise
  // never become "ready" and RX would deadlock: the guest cannot post more) or
  // when one read could not take more segments.
  return stash_.bytes() < cfg_.rx_frame_max && stash_.chains() < rx_.size() && stash_.iovs() < kMaxIov;
}

template <class Q>
bool EngineT<Q>::FillRxStash() {
  for (;;) {
    if (!RxNeedsMore()) {
      // Take what the guest already posted up to the next batch size, so
      // several reads can go in one batch. Only chains that are there: an
      // empty ring here is no reason to wait.
      if (stash_.chains() >= rx_batch_ || stash_.iovs() >= kMaxIov || stash_.chains() >= rx_.size() ||
          !rx_.HasAvail())
        break;
    }
    uint16_t head;
    Violation v;
    const typename Q::Pop p = rx_.PopOrArm(&head, &v);
    if (p == Q::Pop::kEmpty) return true;  // kicks stay enabled: we sleep until the guest posts buffers
    if (p == Q::Pop::kChain && !rx_.ReadRxChain(head, cfg_.hdr_len, kMaxIov, &scratch_, &v) &&
        MemoryMovedUnder(v)) {
      // Posted in memory added after this round took its table: give it back
      // (and the stash, which points into the old table) and go on with the new one.
      rx_.UndoPop();
      RefreshMemory();
      if (rx_broken_) return false;
      continue;
    }
    if (p == Q::Pop::kBroken || v.rule) {
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
    stash_.Push(scratch_);
  }
  return true;
}

// How many leading stashed chains can each take a read of their own: each
// holds rxFrameMax alone, so a frame always fits in one chain (mergeable
// buffers of MTU size without GSO, or any non-mergeable chain). Smaller
// mergeable chains need the whole stash for one read.
template <class Q>
size_t EngineT<Q>::RxBatchable() const {
  size_t g = 0;
  while (g < stash_.chains() && g < rx_batch_ && g < kBatch && stash_.chain_bytes(g) >= cfg_.rx_frame_max) g++;
  return g;
}

// One batch of reads. Either one read per chain for the first g chains that
// each hold a whole frame, or (mergeable chains smaller than a frame) one read
// over as many stashed chains as one readv takes. A read with no usable frame
// (EAGAIN, filtered, truncated, runt) leaves a hole; a later frame then moves
// down into the first free chain, so the used chains stay the oldest pops and
// the stash stays the newest pops (what Stop() gives back). The copy only
// happens after such a hole.
template <class Q>
void EngineT<Q>::ReadBatch(uint32_t* attempts, uint64_t* bytes, const RxFilter* check, const RssHash* hash) {
  struct Target {
    size_t first, end;  // stash chains [first, end)
  };
  Target targets[kBatch];
  size_t nt = std::min<size_t>(RxBatchable(), kBudgetPackets - *attempts);
  if (nt >= 1) {
    for (size_t i = 0; i < nt; i++) targets[i] = Target{i, i + 1};
  } else {
    // The chains one read may fill: stash order, whole chains, within kMaxIov.
    size_t niov = 0, nchains = 0;
    while (nchains < stash_.chains()) {
      const IoFrame f = stash_.Span(nchains, 1);
      if (nchains > 0 && niov + f.iovcnt > kMaxIov) break;
      niov += f.iovcnt;
      nchains++;
      if (!cfg_.mergeable) break;
    }
    targets[0] = Target{0, nchains};
    nt = 1;
  }
  for (size_t i = 0; i < nt; i++) frames_[i] = stash_.Span(targets[i].first, targets[i].end - targets[i].first);
  const TapIo::Batch outcome = io_->Read(frames_.data(), static_cast<uint32_t>(nt), results_.data());
  QueueStats::Add(io_batches[io_->method()], 1);
  // Taken after the reads wrote guest memory (see CurrentLog).
  const DirtyLog* log = CurrentLog();
  if (outcome == TapIo::Batch::kUnknown) {
    // What the kernel wrote, or may still write, is unknown: all of it.
    if (log)
      for (size_t i = 0; i < nt; i++) log->MarkIov(*mem_, frames_[i].iov, frames_[i].iovcnt, UINT64_MAX);
    // The I/O mechanism failed and the kernel never confirmed its reads were
    // over: these chains may still be written, so they are neither published
    // nor reused nor given back at stop (they are the oldest pops, so the
    // stash's give-back stays right). The guest gets them back at its next
    // reset; readv goes on with the rest of the stash.
    rx_counts_.withheld += targets[nt - 1].end;
    PinLostMemory();
    stash_.Withhold(targets[nt - 1].end);
    FallBackIfFailed();
    return;
  }
  const bool set_nb = cfg_.mergeable || cfg_.hdr_len >= HDR_SIZE_V1;
  size_t free = 0;  // next free chain
  bool empty = false;
  for (size_t i = 0; i < nt; i++) {
    const int32_t r = results_[i];
    if (r == kNotDone || r == -EAGAIN || r == -EWOULDBLOCK) {
      empty = true;
      continue;
    }
    if (r < 0) {
      if (r != -ECANCELED && r != -EINTR) rx_counts_.drops[kTapReadError]++;
      empty = true;
      continue;
    }
    if (r == 0) {
      // A TAP never returns 0; a socket does at EOF. Stop polling it.
      tap_hup_ = true;
      continue;
    }
    (*attempts)++;
    const uint64_t got = static_cast<uint64_t>(r);
    const IoFrame& at = frames_[i];
    uint64_t cap = 0;
    for (size_t c = targets[i].first; c < targets[i].end; c++) cap += stash_.chain_bytes(c);
    // Whatever becomes of the frame, the kernel wrote it (up to the buffers' end).
    if (log) log->MarkIov(*mem_, at.iov, at.iovcnt, std::min(got, cap));
    if (got < cfg_.hdr_len) {
      rx_counts_.drops[kRxRunt]++;
      continue;
    }
    if (got > cap) {
      // tun returns the frame's full length even when it had to cut it. A
      // partial frame is worse than none: drop it, count it, and keep the
      // buffers (nothing was published) for the next frame.
      rx_counts_.drops[kRxTruncated]++;
      continue;
    }
    if (check && !FilterAccepts(*check, at.iov, at.iovcnt, cfg_.hdr_len, got - cfg_.hdr_len)) {
      // As a NIC's filter: the guest never sees it, the buffers take the next frame.
      rx_counts_.drops[kRxFiltered]++;
      continue;
    }
    if (cfg_.hdr_len >= HDR_SIZE_HASH) FillHashReport(hash, at.iov, at.iovcnt, cfg_.hdr_len, got - cfg_.hdr_len);
    const uint32_t k = stash_.Place(rx_, free, targets[i].first, targets[i].end, got, cfg_.mergeable, set_nb);
    if (k == 0) {
      // Read into a chain that holds it, but the first free chain is smaller
      // and without mergeable buffers a frame cannot spread.
      rx_counts_.drops[kRxTruncated]++;
      continue;
    }
    if (log) {
      // Marked again after our own writes (the front end may have fetched
      // and cleared the bits between the mark above and them): the hash
      // report and num_buffers in the header, and, when Place moved the
      // frame down into earlier chains (after a hole), all of it.
      const IoFrame placed = stash_.Span(free, k);
      log->MarkIov(*mem_, placed.iov, placed.iovcnt, free != targets[i].first ? got : cfg_.hdr_len);
    }
    free += k;
    *bytes += got;
    rx_counts_.packets++;
    rx_counts_.bytes += got - cfg_.hdr_len;
    if (IsUdpTunnelGso(at.iov, at.iovcnt, cfg_.hdr_len)) {
      rx_counts_.udp_tunnel_gso_packets++;
      rx_counts_.udp_tunnel_gso_bytes += got - cfg_.hdr_len;
    }
  }
  stash_.Consume(free);
  if (empty) rx_tap_readable_ = false;  // wait for EPOLLIN (level-triggered: queued frames still wake us)
  // Adapt: a batch that never ran dry means more may be queued, so try twice
  // as many next time; one that did says about how many the kernel had.
  rx_batch_ = empty ? std::max<size_t>(1, free) : std::min<size_t>(2 * nt, kBatch);
  FallBackIfFailed();
}

// The stash's chains are RX's newest pops: the queue's resume point (what
// stats() shows as last_avail_idx) is before them.
template <class Q>
void EngineT<Q>::FlushRx() {
  const size_t n = stash_.chains();
  Flush(rx_, rx_stats, rx_counts_, cfg_.rx, rx_coal_, static_cast<uint16_t>(n), n ? stash_.chain_id(0) : 0);
}

template <class Q>
bool EngineT<Q>::ProcessRx() {
  // Odd while the round runs (SyncRx()); seq_cst before the hash is loaded below.
  rx_round_.fetch_add(1, std::memory_order_seq_cst);
  struct RoundEnd {
    std::atomic<uint64_t>& n;
    ~RoundEnd() { n.fetch_add(1, std::memory_order_release); }
  } round_end{rx_round_};
  rx_.DisableNotify();
  // One load per round, not per frame: a new filter applies from the next round.
  const std::shared_ptr<const RxFilter> filter = std::atomic_load(&rx_filter_);
  const RxFilter* check = filter && !filter->AcceptsAll() ? filter.get() : nullptr;
  const std::shared_ptr<const RssHash> hash = std::atomic_load(&rss_hash_);
  uint32_t attempts = 0;
  uint64_t bytes = 0;
  bool more = false;
  for (;;) {
    if (attempts >= kBudgetPackets || bytes >= kBudgetBytes) {
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
    ReadBatch(&attempts, &bytes, check, hash.get());
    if (rx_broken_) break;
    // As on TX: the guest gets each batch's frames (and can post their
    // buffers again) while the next batch is read.
    FlushRx();
  }
  FlushRx();
  return more;
}

template <class Q>
void EngineT<Q>::UpdateTapInterest() {
  uint32_t want = 0;
  if (!tap_hup_ && !rx_broken_ && rx_want_tap_ && !rx_gathering_) want |= EPOLLIN;
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

template <class Q>
void EngineT<Q>::DrainKick(int fd, QueueStats& st) {
  uint64_t v;
  const ssize_t n = read(fd, &v, sizeof v);
  if (n == sizeof v) {
    QueueStats::Add(st.kicks, 1);
  } else if (n >= 0 || (errno != EAGAIN && errno != EINTR)) {
    // Not an eventfd's answer (a pipe at EOF, a socket whose peer is gone):
    // epoll would report it readable for ever and the worker would spin. It
    // stops being watched; the rings are still served on other wake-ups.
    epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, fd, nullptr);
  }
}

// Spins for up to busy_poll_us looking for work that would otherwise need a
// wake-up: TX chains the guest posted, RX buffers while RX waits for them,
// and the TAP's readiness when RX could take a frame or TX waits for room.
// True when there is something to do (the caller goes round without sleeping,
// and without counting a wake-up). Kicks stay enabled meanwhile, as vhost's
// busy loop does not rely on them either: a kick that races in is drained at
// the next epoll_wait.
template <class Q>
bool EngineT<Q>::BusyPoll() {
  if (cfg_.busy_poll_us == 0) return false;
  timespec start;
  clock_gettime(CLOCK_MONOTONIC, &start);
  const int64_t budget_ns = int64_t{cfg_.busy_poll_us} * 1000;
  for (uint32_t spin = 0;; spin++) {
    if (stop_.load(std::memory_order_relaxed)) return false;
    if (cfg_.memory->generation() != mem_gen_) return true;
    if (req_pending_.load(std::memory_order_relaxed)) return true;  // a queue reset or enable waits
    if (!tx_broken_ && !tx_blocked_ && tx_.HasAvail()) return true;
    if (!rx_broken_ && !rx_want_tap_ && rx_.HasAvail()) return true;
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

template <class Q>
void EngineT<Q>::DrainRx() {
  for (int i = 0; i < kDrainRounds && !rx_broken_ && !tap_hup_; i++) {
    RefreshMemory();
    rx_tap_readable_ = true;
    if (!ProcessRx()) break;  // EAGAIN, or no guest buffers left
  }
}

template <class Q>
void EngineT<Q>::DiscardRx() {
  if (tap_hup_) return;
  int discarded = 0;
  // A read error here leaves the rest to the kernel; what was read is still counted.
  (void)TapDiscardQueued(cfg_.tap_fd, kDiscardMax, &discarded);
  rx_counts_.drops[kRxPairDetached] += discarded;
  rx_stats.Publish(rx_counts_);
}

template <class Q>
void EngineT<Q>::Run() {
  // "vt-pair<p>" (p = RX virtqueue index / 2): lets tools and the benchmark find
  // this worker's CPU time in /proc/self/task/*/comm. Linux keeps 15 bytes of a
  // thread name; the longest here, "vt-pair32767", is 12.
  char name[16];
  snprintf(name, sizeof name, "vt-pair%u", (cfg_.rx.index / 2) & 0xffff);
  pthread_setname_np(pthread_self(), name);

  CoalesceRound();  // the driver's coalescing applies from the first batch
  Loop();
  if (drain_rx_.load(std::memory_order_relaxed)) {
    DrainRx();
    DiscardRx();
  }
  // Published entries whose interrupt a coalescing window still held: the
  // driver hears of them now, not never (a restarted worker starts afresh).
  if (rx_coal_.Close()) Interrupt(cfg_.rx, rx_stats);
  if (tx_coal_.Close()) Interrupt(cfg_.tx, tx_stats);
  // Released here, not by Stop(): an io_uring ring is the worker's own
  // (SINGLE_ISSUER), and only its owner can take back the TAP file it holds.
  io_.reset();
}

template <class Q>
void EngineT<Q>::Loop() {
  epoll_event evs[kMaxEvents];
  while (!stop_.load(std::memory_order_relaxed)) {
    RefreshMemory();
    TakeCallFds();
    TakeQueueRequest();
    bool more = false;
    if (!tx_broken_) more |= ProcessTx();
    if (!rx_broken_) more |= ProcessRx();
    const int64_t coalesce_ns = CoalesceRound();
    if (more) continue;  // out of budget with work left: next round, no sleep
    if (BusyPoll()) continue;

    // The guest waits for an RX interrupt that coalescing holds, and the TAP
    // ran dry: a frame read now would be seen no sooner than one read when the
    // window closes, so rather than wake for every frame (a paced source gives
    // one or two per read: a wake-up and an empty read each), the worker lets
    // them gather in the TAP and reads them in one batch then. Measured on the
    // bench's paced 64 B source with 64 packets / 50 us: 2.5 frames per read
    // batch without this, 57 with it. A gathering sleep that found nothing
    // means the link is quiet: then the TAP is waited for as usual, not polled
    // every kRxGatherMaxNs for nothing.
    const uint64_t rx_packets = rx_stats.packets.load(std::memory_order_relaxed);
    rx_gathering_ = rx_coal_.holding() && rx_coal_.active() && rx_want_tap_ && !rx_tap_readable_ &&
                    rx_packets != rx_packets_at_gather_;
    int64_t timeout_ns = coalesce_ns;
    if (rx_gathering_) {
      timeout_ns = std::min(timeout_ns, kRxGatherMaxNs);
      rx_packets_at_gather_ = rx_packets;
    }
    UpdateTapInterest();
    // Asleep at most until the next coalescing window closes (or gathering ends).
    int n = Wait(evs, kMaxEvents, timeout_ns);
    if (rx_gathering_) {
      rx_gathering_ = false;
      rx_tap_readable_ = true;
      rx_batch_ = kBatch;  // expect a pile, not one frame
    }
    io_->Woke();
    wakeups.fetch_add(1, std::memory_order_relaxed);
    for (int i = 0; i < n; i++) {
      switch (evs[i].data.u32) {
        case kTagWake: {
          uint64_t v;
          ssize_t r = read(wake_fd_, &v, sizeof v);
          (void)r;  // the loop condition sees stop_; memory is refreshed at the top
          break;
        }
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

std::unique_ptr<Engine> Engine::Create(const EngineConfig& cfg, BrokenFn on_broken) {
  // The ring layout is chosen here, once: each instantiation's hot path runs
  // one queue type, with no per-frame test of which.
  if (cfg.rx.layout.packed) return std::make_unique<EngineT<PackedQueue>>(cfg, std::move(on_broken));
  return std::make_unique<EngineT<SplitQueue>>(cfg, std::move(on_broken));
}

template class EngineT<SplitQueue>;
template class EngineT<PackedQueue>;

}  // namespace vt
