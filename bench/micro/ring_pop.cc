// The device's per-chain cost of guest->TAP (TX) on the split and the packed
// ring, without the TAP: a driver in the same thread fills the ring, and the
// device side does what EngineT::ProcessTx does per round (pop or arm, read
// the chain, answer it used with len 0, publish per batch of kBatch). Wall
// time on a shared machine is noise, so the number that counts is the
// instruction count of DeviceTxRound, which valgrind gives exactly:
//
//   bash bench/micro/ring-pop          (builds, runs both layouts under callgrind)
//   build/ring_pop LAYOUT [DESCS] [IN_ORDER] [ROUNDS] [BURST]   (wall-clock ns per chain)
//
// LAYOUT is split or packed; DESCS the descriptors per chain (1: header and
// frame in one buffer, as DPDK's virtio-user sends, 1514-byte frames too: it
// pushes the header into the mbuf's headroom; 2: header apart, as Linux's
// virtio-net); IN_ORDER 0 or 1; BURST the chains the driver posts per round
// (0: as many as the ring holds; 32 is testpmd's burst, and a device that
// keeps up with the driver takes about that many per wake-up, so the
// per-round costs, arming and publishing, weigh as they do in the bench).
#include <time.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../../native/memory.h"
#include "../../native/packed_queue.h"
#include "../../native/virtqueue.h"

using namespace vt;

namespace {

// As the engine: frames per batch, one PublishUsed per batch, and the queue
// size QEMU and DPDK use by default.
constexpr unsigned kBatch = 64;
constexpr uint32_t kSize = 256;
constexpr uint32_t kHdr = 12;
constexpr uint32_t kFrame = 64;
constexpr uint64_t kMemBytes = 4 << 20;
constexpr uint64_t kBufBase = 1 << 20;

uint8_t* g_mem;

template <class T>
void Put(uint64_t gpa, T v) {
  __atomic_store_n(reinterpret_cast<T*>(g_mem + gpa), v, __ATOMIC_RELEASE);
}
template <class T>
T Get(uint64_t gpa) {
  return __atomic_load_n(reinterpret_cast<T*>(g_mem + gpa), __ATOMIC_ACQUIRE);
}

// The driver side of a split ring: chains of `k` descriptors at heads that
// are multiples of k, all made available, reaped from the used ring (an
// IN_ORDER batch element frees every chain up to the one it names).
struct SplitDriver {
  QueueLayout l;
  uint32_t k;
  bool in_order;
  uint16_t avail_idx = 0, used_seen = 0;
  std::vector<uint16_t> free_heads;
  uint32_t next_in_order = 0;  // IN_ORDER: the head the oldest outstanding chain has

  SplitDriver(uint32_t descs, bool io) : k(descs), in_order(io) {
    l.size = kSize;
    l.desc = 0;
    l.avail = 16ull * kSize;
    l.used = (l.avail + 6 + 2 * kSize + 3) & ~3ull;
    for (uint32_t h = 0; h + k <= kSize; h += k) free_heads.push_back(static_cast<uint16_t>(h));
    // Interrupts off: the bench's driver polls, as DPDK does.
    Put<uint16_t>(l.avail, RING_AVAIL_F_NO_INTERRUPT);
    Put<uint16_t>(l.avail + 4 + 2 * kSize, 0x7fff);  // used_event far away
  }
  void Fill(unsigned burst) {
    // IN_ORDER: heads in table order; the free list then is the ring itself.
    for (unsigned posted = 0; !free_heads.empty() && posted < burst; posted++) {
      const uint16_t h = free_heads.front();
      free_heads.erase(free_heads.begin());
      for (uint32_t i = 0; i < k; i++) {
        const uint64_t d = l.desc + 16ull * (h + i);
        const uint32_t len = k == 1 ? kHdr + kFrame : i == 0 ? kHdr : kFrame;
        Put<uint64_t>(d, kBufBase + 2048ull * (h + i));
        Put<uint32_t>(d + 8, len);
        Put<uint16_t>(d + 12, static_cast<uint16_t>(i + 1 < k ? RING_DESC_F_NEXT : 0));
        Put<uint16_t>(d + 14, static_cast<uint16_t>(h + i + 1));
      }
      Put<uint16_t>(l.avail + 4 + 2 * (avail_idx % kSize), h);
      avail_idx++;
    }
    Put<uint16_t>(l.avail + 2, avail_idx);
  }
  void Reap() {
    const uint16_t used = Get<uint16_t>(l.used + 2);
    while (used_seen != used) {
      const uint32_t id = Get<uint32_t>(l.used + 4 + 8 * (used_seen % kSize));
      if (in_order) {
        // Every chain up to `id` is back; the skipped elements are not read.
        for (;;) {
          const uint32_t h = next_in_order;
          free_heads.push_back(static_cast<uint16_t>(h));
          next_in_order = (h + k) % (kSize / k * k);
          used_seen++;
          if (h == id) break;
        }
      } else {
        free_heads.push_back(static_cast<uint16_t>(id));
        used_seen++;
      }
    }
  }
};

// The driver side of a packed ring: chains of `k` descriptors, buffer ids
// from a free list, reaped by the used flags (skipping what each id took).
struct PackedDriver {
  QueueLayout l;
  uint32_t k;
  uint32_t next = 0, used_next = 0;
  bool wrap = true, used_wrap = true;
  std::vector<uint16_t> free_ids;
  std::vector<uint16_t> id_of_slot = std::vector<uint16_t>(kSize);
  uint32_t in_order_next = 0;

  PackedDriver(uint32_t descs, bool) : k(descs) {
    l.packed = true;
    l.size = kSize;
    l.desc = 0;
    l.avail = 16ull * kSize;
    l.used = l.avail + 4;
    for (uint32_t i = 0; i < kSize / k; i++) free_ids.push_back(static_cast<uint16_t>(i));
    Put<uint16_t>(l.avail + 2, RING_EVENT_FLAGS_DISABLE);  // interrupts off, as above
  }
  uint16_t Avail(bool w) const { return w ? RING_PACKED_DESC_F_AVAIL : RING_PACKED_DESC_F_USED; }
  void Fill(unsigned burst) {
    for (unsigned posted = 0; !free_ids.empty() && posted < burst; posted++) {
      const uint16_t id = free_ids.front();
      free_ids.erase(free_ids.begin());
      const uint32_t head = next;
      const bool head_wrap = wrap;
      for (uint32_t i = 0; i < k; i++) {
        const uint64_t d = l.desc + 16ull * next;
        const uint32_t len = k == 1 ? kHdr + kFrame : i == 0 ? kHdr : kFrame;
        Put<uint64_t>(d, kBufBase + 2048ull * next);
        Put<uint32_t>(d + 8, len);
        Put<uint16_t>(d + 12, id);
        if (i > 0) Put<uint16_t>(d + 14, static_cast<uint16_t>((i + 1 < k ? RING_DESC_F_NEXT : 0) | Avail(wrap)));
        if (++next == kSize) {
          next = 0;
          wrap = !wrap;
        }
      }
      id_of_slot[head] = id;
      // The head last, with release: the whole chain is then visible.
      Put<uint16_t>(l.desc + 16ull * head + 14, static_cast<uint16_t>((k > 1 ? RING_DESC_F_NEXT : 0) | Avail(head_wrap)));
    }
  }
  void Reap() {
    for (;;) {
      const uint16_t f = Get<uint16_t>(l.desc + 16ull * used_next + 14);
      const bool a = f & RING_PACKED_DESC_F_AVAIL, u = f & RING_PACKED_DESC_F_USED;
      if (a != used_wrap || u != used_wrap) return;
      const uint16_t id = Get<uint16_t>(l.desc + 16ull * used_next + 12);
      // IN_ORDER: one used descriptor answers every chain up to `id`; without
      // it this loop runs once. Chains were posted in slot order either way.
      for (;;) {
        const uint16_t got = id_of_slot[used_next];
        free_ids.push_back(got);
        used_next += k;
        if (used_next >= kSize) {
          used_next -= kSize;
          used_wrap = !used_wrap;
        }
        if (got == id) break;
      }
    }
  }
};

// One TX round of the device, as EngineT::ProcessTx runs it minus the TAP
// write: what the instruction count measures. Returns the chains it took.
template <class Q>
__attribute__((noinline)) unsigned DeviceTxRound(Q& q, std::vector<Chain>& slots) {
  unsigned total = 0;
  q.DisableNotify();
  for (;;) {
    unsigned n = 0, cap = kBatch;
    if (const uint16_t until = q.UntilUsedEvent(); until > 0 && until < cap) cap = until;
    bool drained = false;
    while (n < cap) {
      uint16_t token;
      Violation v;
      const typename Q::Pop p = q.PopOrArm(&token, &v);
      if (p == Q::Pop::kEmpty) {
        drained = true;
        break;
      }
      if (p == Q::Pop::kBroken || !q.ReadTxChain(token, kHdr, &slots[n], &v)) {
        fprintf(stderr, "ring_pop: the queue broke: %s: %s\n", v.rule, v.detail.c_str());
        exit(1);
      }
      n++;
    }
    for (unsigned i = 0; i < n; i++) q.AddUsed(slots[i].head, 0);
    q.PublishUsed();
    total += n;
    if (drained) return total;
  }
}

int64_t NowNs() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1000000000LL + t.tv_nsec;
}

template <class Q, class D>
int Run(uint32_t k, bool in_order, unsigned rounds, unsigned burst) {
  std::vector<uint64_t> backing(kMemBytes / 8);
  g_mem = reinterpret_cast<uint8_t*>(backing.data());
  Region r;
  r.guest_addr = 0;
  r.size = kMemBytes;
  r.host = g_mem;
  std::string why;
  std::shared_ptr<const MemoryTable> mem = MemoryTable::Make({r}, {}, &why);
  D d(k, in_order);
  Q q;
  Violation v;
  const uint16_t start = d.l.packed ? RING_PACKED_WRAP_BIT : 0;
  if (!q.Init(*mem, d.l, true, false, start, start, &v)) {
    fprintf(stderr, "ring_pop: %s: %s\n", v.rule, v.detail.c_str());
    return 1;
  }
  q.SetInOrder(in_order);
  std::vector<Chain> slots(kBatch);
  for (Chain& c : slots) c.iov.reserve(4);
  uint64_t chains = 0;
  int64_t device_ns = 0;
  for (unsigned i = 0; i < rounds; i++) {
    d.Fill(burst);
    const int64_t t0 = NowNs();
    const unsigned got = DeviceTxRound(q, slots);
    device_ns += NowNs() - t0;
    if (got == 0) {
      fprintf(stderr, "ring_pop: a round took no chain\n");
      return 1;
    }
    chains += got;
    d.Reap();
  }
  printf("%s descs=%u in_order=%d burst=%u: %llu chains, %.1f ns per chain (wall clock)\n", d.l.packed ? "packed" : "split",
         k, in_order ? 1 : 0, burst, static_cast<unsigned long long>(chains), static_cast<double>(device_ns) / chains);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: ring_pop split|packed [DESCS=1] [IN_ORDER=0] [ROUNDS=2000] [BURST=0]\n");
    return 2;
  }
  const std::string layout = argv[1];
  const uint32_t k = argc > 2 ? static_cast<uint32_t>(atoi(argv[2])) : 1;
  const bool in_order = argc > 3 && atoi(argv[3]) != 0;
  const unsigned rounds = argc > 4 ? static_cast<unsigned>(atoi(argv[4])) : 2000;
  const unsigned burst_arg = argc > 5 ? static_cast<unsigned>(atoi(argv[5])) : 0;
  const unsigned burst = burst_arg == 0 ? kSize : burst_arg;
  if (k < 1 || k > 4) {
    fprintf(stderr, "ring_pop: DESCS is 1..4\n");
    return 2;
  }
  if (layout == "split") return Run<SplitQueue, SplitDriver>(k, in_order, rounds, burst);
  if (layout == "packed") return Run<PackedQueue, PackedDriver>(k, in_order, rounds, burst);
  fprintf(stderr, "ring_pop: layout is split or packed\n");
  return 2;
}
