// What an engine counts: frames and bytes moved, chains used, interrupts,
// kicks, and a named counter for every frame it gives up on. The worker adds
// to a BatchCounts without atomics while it works and publishes the sums once
// per batch; any thread may read QueueStats at any time.
#pragma once
#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>

namespace vt {

// Named drop counters. Every frame the engine gives up on is counted under one
// of these; the names are the keys of stats().rx/tx.drops and never change.
// The kernel says only EINVAL when it refuses a guest's virtio_net_hdr; the
// engine then looks at the header (on that error path only) to name why.
enum TxDrop : int {
  kTapWriteEinval,      // the TAP rejected the frame for a reason not named below
  kTapWriteEio,         // the TAP is down or detached
  kTapWriteEfault,      // the kernel could not read a buffer
  kTapWriteError,       // any other write error
  kTxTooManySegments,   // more buffers than writev accepts in one call
  kTxHdrCsumPastFrame,  // NEEDS_CSUM with csum_start + csum_offset + 2 past the frame
  kTxHdrLenPastFrame,   // hdr_len larger than the frame
  kTxHdrBadGsoType,     // a gso_type the kernel does not know
  kTxHdrGsoSizeZero,    // a GSO frame with gso_size 0
  kTxHdrUsoNoCsum,      // UDP_L4 (USO) without NEEDS_CSUM
  kTxTapFullReordered,  // the TAP refused it after later frames of its batch were
                        // already written (tx_reordered) and stayed full (tap_io.h)
  // GSO over UDP tunnels (virtio 1.4 §5.1.6.2.1). With the 24-byte header they are
  // checked before the write: tun takes any tunnel header of that size, whatever
  // was negotiated. The first is tun's EINVAL, named.
  kTxHdrTunnelShortHeader,     // a tunnel gso_type, but the negotiated header
                               // (10/12/20 bytes) has no tunnel fields
  kTxHdrTunnelNotNegotiated,   // a tunnel gso_type without HOST_UDP_TUNNEL_GSO, or
                               // UDP_TUNNEL_CSUM without HOST_UDP_TUNNEL_GSO_CSUM
  kTxHdrTunnelBadType,         // both IPV4 and IPV6 tunnel bits, an inner type other than
                               // TCPV4/TCPV6/UDP_L4, no NEEDS_CSUM, DATA_VALID, or
                               // UDP_TUNNEL_CSUM without a tunnel gso_type
  kTxHdrTunnelOffsetOrder,     // outer_th_offset before the end of the outer IP header, or
                               // inner_nh_offset / csum_start before the header they follow
  kTxHdrTunnelOffsetPastFrame, // an offset (or the inner checksum) outside the frame
  kTxDropCount
};
inline constexpr std::array<const char*, kTxDropCount> kTxDropNames = {
    "tap_write_einval",       "tap_write_eio",        "tap_write_efault",        "tap_write_error",
    "tx_too_many_segments",   "tx_hdr_csum_past_frame", "tx_hdr_len_past_frame", "tx_hdr_bad_gso_type",
    "tx_hdr_gso_size_zero",   "tx_hdr_uso_without_csum", "tx_tap_full_reordered",
    "tx_hdr_tunnel_short_header", "tx_hdr_tunnel_not_negotiated", "tx_hdr_tunnel_bad_type",
    "tx_hdr_tunnel_offset_order", "tx_hdr_tunnel_offset_past_frame"};

enum RxDrop : int {
  kRxTruncated,   // the frame was larger than the buffers offered; discarded, buffers reused
  kRxRunt,        // a read shorter than the net header (not a TAP frame)
  kTapReadError,  // a read failed with something other than EAGAIN
  kRxFiltered,    // the guest's RX filter (modes, MAC tables, VLANs) refused it; buffers reused
  kRxPairDetached,  // still queued in the TAP when its pair was taken away with no guest buffers left
  kRxDropCount
};
inline constexpr std::array<const char*, kRxDropCount> kRxDropNames = {"rx_truncated", "rx_runt", "tap_read_error",
                                                                      "rx_filtered", "rx_pair_detached"};

// Both queues' counters share one type; each uses the first k*DropCount slots.
inline constexpr size_t kMaxDropCount = std::max<size_t>(kTxDropCount, kRxDropCount);

// Counts of one batch, kept by the worker in plain integers.
struct BatchCounts {
  uint64_t packets = 0;
  uint64_t bytes = 0;  // frame bytes, virtio_net_hdr excluded
  uint64_t tap_full = 0;   // TX: writes the TAP refused for lack of room (sent again later)
  uint64_t reordered = 0;  // TX: frames written after an earlier frame of their batch was refused
  uint64_t withheld = 0;   // chains of a batch whose I/O failed unconfirmed (tap_io.h kUnknown)
  // GSO over UDP tunnels: frames moved whose gso_type had a UDP tunnel bit
  // (VXLAN/GENEVE super-frames), and their bytes; part of packets/bytes.
  uint64_t udp_tunnel_gso_packets = 0;
  uint64_t udp_tunnel_gso_bytes = 0;
  std::array<uint64_t, kMaxDropCount> drops{};
};

struct QueueStats {
  std::atomic<uint64_t> packets{0};
  std::atomic<uint64_t> bytes{0};
  std::atomic<uint64_t> used_chains{0};
  std::atomic<uint64_t> interrupts{0};
  std::atomic<uint64_t> kicks{0};
  std::atomic<uint64_t> tap_full{0};
  std::atomic<uint64_t> reordered{0};
  std::atomic<uint64_t> withheld{0};
  std::atomic<uint64_t> udp_tunnel_gso_packets{0};
  std::atomic<uint64_t> udp_tunnel_gso_bytes{0};
  std::atomic<bool> broken{false};
  std::atomic<uint32_t> last_avail_idx{0};
  std::atomic<uint32_t> used_idx{0};
  std::array<std::atomic<uint64_t>, kMaxDropCount> drops{};

  // The worker is the only writer, so a relaxed load and store add without a
  // locked instruction; readers on other threads see whole values.
  static void Add(std::atomic<uint64_t>& c, uint64_t n) {
    if (n) c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  void Publish(BatchCounts& b) {
    Add(packets, b.packets);
    Add(bytes, b.bytes);
    Add(tap_full, b.tap_full);
    Add(reordered, b.reordered);
    Add(withheld, b.withheld);
    Add(udp_tunnel_gso_packets, b.udp_tunnel_gso_packets);
    Add(udp_tunnel_gso_bytes, b.udp_tunnel_gso_bytes);
    for (size_t i = 0; i < kMaxDropCount; i++) Add(drops[i], b.drops[i]);
    b = BatchCounts{};
  }
};

}  // namespace vt
