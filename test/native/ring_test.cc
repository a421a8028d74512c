// C++ unit tests of the plain ring code (native/memory, virtqueue, ctrl_queue,
// rx_stash, notify_coalesce), linked without Node. test/native-unit.test.ts builds this file
// with g++ and runs each case as its own ava test: `ring_test --list` prints
// the case names, `ring_test NAME` runs one (exit 0 = pass).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "../../native/ctrl_queue.h"
#include "../../native/memory.h"
#include "../../native/notify_coalesce.h"
#include "../../native/packed_queue.h"
#include "../../native/rx_stash.h"
#include "../../native/virtqueue.h"

using namespace vt;

namespace {

std::map<std::string, std::function<void()>>& Cases() {
  static std::map<std::string, std::function<void()>> m;
  return m;
}
struct Register {
  Register(const char* name, std::function<void()> f) { Cases()[name] = std::move(f); }
};
#define CASE(name)                                  \
  static void name();                               \
  static Register reg_##name(#name, name);          \
  static void name()

int failures = 0;
#define CHECK(cond)                                                             \
  do {                                                                          \
    if (!(cond)) {                                                              \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      failures++;                                                               \
    }                                                                           \
  } while (0)
#define CHECK_EQ(a, b)                                                                                    \
  do {                                                                                                    \
    const auto va = (a);                                                                                  \
    const auto vb = (b);                                                                                  \
    if (!(va == vb)) {                                                                                    \
      fprintf(stderr, "%s:%d: CHECK_EQ failed: %s (%lld) != %s (%lld)\n", __FILE__, __LINE__, #a,         \
              static_cast<long long>(va), #b, static_cast<long long>(vb));                                \
      failures++;                                                                                         \
    }                                                                                                     \
  } while (0)
#define CHECK_RULE(v, r)                                                                                       \
  do {                                                                                                         \
    if (!(v).rule || strcmp((v).rule, r) != 0) {                                                               \
      fprintf(stderr, "%s:%d: rule %s, want %s (%s)\n", __FILE__, __LINE__, (v).rule ? (v).rule : "(none)", r, \
              (v).detail.c_str());                                                                             \
      failures++;                                                                                              \
    }                                                                                                          \
  } while (0)

// Guest memory for a test: host buffers (8-aligned, zeroed) placed at guest addresses.
struct Mem {
  std::vector<std::vector<uint64_t>> backing;
  std::vector<Region> regions;
  std::shared_ptr<const MemoryTable> table;

  uint8_t* Add(uint64_t gpa, uint64_t size) {
    backing.emplace_back((size + 7) / 8, 0);
    Region r;
    r.guest_addr = gpa;
    r.size = size;
    r.host = reinterpret_cast<uint8_t*>(backing.back().data());
    regions.push_back(r);
    return r.host;
  }
  const MemoryTable& Build() {
    std::string why;
    table = MemoryTable::Make(regions, {}, &why);
    if (!table) {
      fprintf(stderr, "table: %s\n", why.c_str());
      abort();
    }
    return *table;
  }
  uint8_t* At(uint64_t gpa) { return table->Contiguous(gpa, 1); }
  void Put(uint64_t gpa, const void* src, size_t n) {
    for (size_t i = 0; i < n; i++) *At(gpa + i) = static_cast<const uint8_t*>(src)[i];
  }
  template <typename T>
  void Set(uint64_t gpa, T v) {
    Put(gpa, &v, sizeof v);
  }
  void Desc(uint64_t table_gpa, uint32_t i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next = 0) {
    const uint64_t at = table_gpa + 16ull * i;
    Set<uint64_t>(at, addr);
    Set<uint32_t>(at + 8, len);
    Set<uint16_t>(at + 12, flags);
    Set<uint16_t>(at + 14, next);
  }
};

// A split ring of `size` entries at `base` (desc, then avail, then used, as Linux lays it out).
QueueLayout Ring(uint64_t base, uint32_t size) {
  QueueLayout l;
  l.size = size;
  l.desc = base;
  l.avail = base + 16ull * size;
  l.used = (l.avail + 6 + 2ull * size + 3) & ~3ull;
  return l;
}

void Post(Mem& m, const QueueLayout& l, uint16_t* idx, uint16_t head) {
  m.Set<uint16_t>(l.avail + 4 + 2ull * (*idx % l.size), head);
  ++*idx;
  m.Set<uint16_t>(l.avail + 2, *idx);
}

// ---- MemoryTable -----------------------------------------------------------------

CASE(table_refuses_overlap_empty_and_wrap) {
  std::string why;
  uint8_t buf[64];
  CHECK(!MemoryTable::Make({}, {}, &why));
  CHECK(!MemoryTable::Make({{0, 0, buf, 0}}, {}, &why));
  CHECK(!MemoryTable::Make({{0, 64, buf, 0}, {32, 64, buf, 0}}, {}, &why));
  CHECK(why.find("overlap") != std::string::npos);
  CHECK(!MemoryTable::Make({{UINT64_MAX - 10, 64, buf, 0}}, {}, &why));
  CHECK(MemoryTable::Make({{64, 64, buf, 0}, {0, 64, buf, 0}}, {}, &why) != nullptr);  // any order
}

CASE(table_translates_across_adjacent_regions_and_not_holes) {
  Mem m;
  uint8_t* a = m.Add(0x1000, 0x1000);
  uint8_t* b = m.Add(0x2000, 0x1000);    // adjacent to a
  uint8_t* c = m.Add(0x10000, 0x1000);   // after a hole
  const MemoryTable& t = m.Build();
  CHECK(t.Contiguous(0x1000, 0x1000) == a);
  CHECK(t.Contiguous(0x1ff0, 0x20) == nullptr);  // crosses into b: not contiguous
  CHECK(t.Contiguous(0x10000, 1) == c);
  CHECK(t.Contiguous(0x0fff, 1) == nullptr);
  std::vector<iovec> iov;
  CHECK(t.AppendIov(0x1ff0, 0x20, &iov, 8) == MemoryTable::Span::kOk);
  CHECK_EQ(iov.size(), 2u);
  CHECK(iov[0].iov_base == a + 0xff0 && iov[0].iov_len == 0x10);
  CHECK(iov[1].iov_base == b && iov[1].iov_len == 0x10);
  iov.clear();
  CHECK(t.AppendIov(0x2ff0, 0x20, &iov, 8) == MemoryTable::Span::kHole);  // b ends, hole follows
  CHECK(iov.empty());
  CHECK(t.AppendIov(0x1ff0, 0x20, &iov, 1) == MemoryTable::Span::kTooMany);
  CHECK_EQ(iov.size(), 1u);
  CHECK(t.Covers(0x1000, 0x2000));
  CHECK(!t.Covers(0x1000, 0x2001));
  CHECK(!t.Covers(UINT64_MAX, 2));  // wraps
  CHECK(t.Covers(UINT64_MAX, 0));
  b[0] = 7;
  a[0xfff] = 6;
  uint8_t out[2];
  CHECK(t.Read(0x1fff, out, 2) && out[0] == 6 && out[1] == 7);
  CHECK(!t.Read(0x2fff, out, 2));
}

CASE(table_user_addresses) {
  uint8_t buf[4096];
  std::string why;
  auto t = MemoryTable::Make({{0x100000, 4096, buf, 0x7f0000000000ull}}, {}, &why);
  uint64_t gpa = 0;
  CHECK(t->UserToGuest(0x7f0000000010ull, 16, &gpa) && gpa == 0x100010);
  CHECK(!t->UserToGuest(0x7f0000000ff8ull, 16, &gpa));
  CHECK(!t->UserToGuest(0x10, 16, &gpa));
}

// ---- layout checks -----------------------------------------------------------------

CASE(layout_rules) {
  Mem m;
  m.Add(0, 0x10000);
  m.Add(0x20000, 0x10000);
  const MemoryTable& t = m.Build();
  Violation v;
  QueueLayout l = Ring(0, 256);
  CHECK(CheckLayout(t, l, &v));
  QueueLayout bad = l;
  bad.size = 100;
  CHECK(!CheckLayout(t, bad, &v));
  CHECK_RULE(v, "ring-out-of-bounds");
  bad = l;
  bad.desc += 8;
  CHECK(!CheckLayout(t, bad, &v));
  CHECK_RULE(v, "ring-out-of-bounds");
  bad = l;
  bad.used = 0x10000 - 8;  // runs off the first region into the hole
  CHECK(!CheckLayout(t, bad, &v));
  CHECK_RULE(v, "ring-out-of-bounds");
  bad = l;
  bad.used = bad.avail + 4;  // used.flags over avail.ring[0]
  v = Violation{};
  CHECK(!CheckLayout(t, bad, &v));
  CHECK_RULE(v, "ring-overlap");
  bad = l;
  bad.used = bad.desc + 64;  // used over the descriptor table
  v = Violation{};
  CHECK(!CheckLayout(t, bad, &v));
  CHECK_RULE(v, "ring-overlap");
  // Two queues: fine apart, refused when one's used ring lies on the other's avail.
  QueueLayout two[2] = {Ring(0, 256), Ring(0x20000, 256)};
  CHECK(CheckLayouts(t, two, 2, &v));
  two[1] = Ring(0x8000, 256);
  two[1].used = two[0].avail;
  v = Violation{};
  CHECK(!CheckLayouts(t, two, 2, &v));
  CHECK_RULE(v, "ring-overlap");
}

CASE(layout_host_aliasing_is_overlap) {
  // Two regions at different guest addresses mapped onto the same host memory
  // (a front end may send that): rings in them overlap in host memory.
  std::vector<uint64_t> backing(0x10000 / 8);
  uint8_t* h = reinterpret_cast<uint8_t*>(backing.data());
  std::string why;
  auto t = MemoryTable::Make({{0, 0x10000, h, 0}, {0x100000, 0x10000, h, 0}}, {}, &why);
  QueueLayout l = Ring(0, 64);
  l.used = 0x100000 + (l.avail + 4);  // another guest address, same host bytes as avail.ring
  Violation v;
  CHECK(!CheckLayout(*t, l, &v));
  CHECK_RULE(v, "ring-overlap");
}

// ---- chains ----------------------------------------------------------------------------

CASE(tx_chain_across_regions_becomes_several_iovecs) {
  Mem m;
  m.Add(0, 0x10000);
  m.Add(0x10000, 0x10000);  // adjacent
  m.Add(0x100000000ull, 0x10000);  // 4 GiB, after a hole
  const MemoryTable& t = m.Build();
  QueueLayout l = Ring(0, 16);
  SplitQueue q;
  Violation v;
  CHECK(q.Init(t, l, false, true, 0, 0, &v));
  m.Desc(l.desc, 0, 0x10000 - 6, 12, RING_DESC_F_NEXT, 1);  // the header crosses the boundary
  m.Desc(l.desc, 1, 0x100000000ull + 64, 100, 0);
  uint16_t idx = 0, head = 0;
  Post(m, l, &idx, 0);
  CHECK(q.PopAvail(&head, &v) == SplitQueue::Pop::kChain);
  Chain c;
  CHECK(q.ReadTxChain(head, 12, &c, &v));
  CHECK_EQ(c.iov.size(), 3u);
  CHECK_EQ(c.bytes, 112u);
  CHECK(c.iov[0].iov_len == 6 && c.iov[1].iov_len == 6 && c.iov[2].iov_len == 100);
  CHECK(c.iov[2].iov_base == t.Contiguous(0x100000000ull + 64, 100));
}

CASE(buffer_touching_a_hole_is_out_of_bounds) {
  Mem m;
  m.Add(0, 0x10000);
  m.Add(0x20000, 0x10000);
  const MemoryTable& t = m.Build();
  QueueLayout l = Ring(0, 16);
  SplitQueue q;
  Violation v;
  CHECK(q.Init(t, l, false, true, 0, 0, &v));
  m.Desc(l.desc, 0, 0x10000 - 6, 12, 0);  // runs into the hole
  uint16_t idx = 0, head = 0;
  Post(m, l, &idx, 0);
  CHECK(q.PopAvail(&head, &v) == SplitQueue::Pop::kChain);
  Chain c;
  CHECK(!q.ReadTxChain(head, 12, &c, &v));
  CHECK_RULE(v, "desc-out-of-bounds");
}

CASE(indirect_table_across_regions_is_read_entry_by_entry) {
  Mem m;
  m.Add(0, 0x10000);
  m.Add(0x10000, 0x10000);
  const MemoryTable& t = m.Build();
  QueueLayout l = Ring(0, 16);
  SplitQueue q;
  Violation v;
  CHECK(q.Init(t, l, false, true, 0, 0, &v));
  // Three entries; the table starts 24 bytes before the boundary, so entry 1 is split 8/8.
  const uint64_t tbl = 0x10000 - 24;
  m.Desc(tbl, 0, 0x4000, 12, RING_DESC_F_NEXT | RING_DESC_F_WRITE, 1);
  m.Desc(tbl, 1, 0x5000, 100, RING_DESC_F_NEXT | RING_DESC_F_WRITE, 2);
  m.Desc(tbl, 2, 0x18000, 200, RING_DESC_F_WRITE);
  m.Desc(l.desc, 3, tbl, 48, RING_DESC_F_INDIRECT);
  uint16_t idx = 0, head = 0;
  Post(m, l, &idx, 3);
  CHECK(q.PopAvail(&head, &v) == SplitQueue::Pop::kChain);
  Chain c;
  CHECK(q.ReadRxChain(head, 12, 64, &c, &v));
  CHECK_EQ(c.bytes, 312u);
  CHECK_EQ(c.iov.size(), 3u);
  // A table that runs into nothing is refused before any entry is used.
  m.Desc(l.desc, 4, 0x20000 - 16, 32, RING_DESC_F_INDIRECT);
  Post(m, l, &idx, 4);
  CHECK(q.PopAvail(&head, &v) == SplitQueue::Pop::kChain);
  CHECK(!q.ReadRxChain(head, 12, 64, &c, &v));
  CHECK_RULE(v, "indirect-out-of-bounds");
}

CASE(pop_or_arm_rearms_once_and_reports_empty) {
  Mem m;
  m.Add(0, 0x10000);
  const MemoryTable& t = m.Build();
  QueueLayout l = Ring(0, 16);
  SplitQueue q;
  Violation v;
  CHECK(q.Init(t, l, false, true, 0, 0, &v));
  uint16_t head;
  q.DisableNotify();
  CHECK(*reinterpret_cast<uint16_t*>(m.At(l.used)) == RING_USED_F_NO_NOTIFY);
  CHECK(q.PopOrArm(&head, &v) == SplitQueue::Pop::kEmpty);
  CHECK(*reinterpret_cast<uint16_t*>(m.At(l.used)) == 0);  // kicks back on
  m.Desc(l.desc, 0, 0x4000, 64, 0);
  uint16_t idx = 0;
  Post(m, l, &idx, 0);
  CHECK(q.PopOrArm(&head, &v) == SplitQueue::Pop::kChain);
  CHECK_EQ(head, 0);
  // avail.idx more than the queue size ahead.
  m.Set<uint16_t>(l.avail + 2, static_cast<uint16_t>(idx + 17));
  CHECK(q.PopOrArm(&head, &v) == SplitQueue::Pop::kBroken);
  CHECK_RULE(v, "avail-idx-jump");
}

CASE(remap_moves_the_ring_to_a_new_table) {
  Mem m1;
  m1.Add(0, 0x10000);
  const MemoryTable& t1 = m1.Build();
  QueueLayout l = Ring(0x8000, 16);
  SplitQueue q;
  Violation v;
  CHECK(q.Init(t1, l, false, true, 0, 0, &v));
  Mem m2;  // the same guest range, grown, in new host memory
  m2.Add(0, 0x20000);
  const MemoryTable& t2 = m2.Build();
  CHECK(q.Remap(t2, &v));
  m2.Desc(l.desc, 0, 0x18000, 64, 0);
  uint16_t idx = 0, head = 0;
  Post(m2, l, &idx, 0);
  CHECK(q.PopAvail(&head, &v) == SplitQueue::Pop::kChain);
  Chain c;
  CHECK(q.ReadTxChain(head, 12, &c, &v));  // a buffer only the new table has
  Mem m3;  // memory that no longer holds the ring
  m3.Add(0, 0x4000);
  const MemoryTable& t3 = m3.Build();
  CHECK(!q.Remap(t3, &v));
  CHECK_RULE(v, "ring-out-of-bounds");
}

// ---- control queue -------------------------------------------------------------------------

CASE(ctrl_decodes_across_regions_and_acks) {
  Mem m;
  m.Add(0, 0x10000);
  m.Add(0x10000, 0x10000);
  const MemoryTable& t = m.Build();
  QueueLayout l = Ring(0, 8);
  CtrlQueue cq;
  Violation v;
  CHECK(cq.Init(t, l, false, false, &v));
  const uint8_t cmd[] = {4, 0, 2, 0};  // MQ VQ_PAIRS_SET 2
  m.Put(0x10000 - 3, cmd, sizeof cmd);
  m.Desc(l.desc, 0, 0x10000 - 3, 4, RING_DESC_F_NEXT, 1);
  m.Desc(l.desc, 1, 0x18000, 1, RING_DESC_F_WRITE);
  uint16_t idx = 0;
  Post(m, l, &idx, 0);
  CtrlCommand c;
  uint64_t walked = 0;
  CHECK(cq.Pop(&c, &walked, &v) == CtrlQueue::Next::kCommand);
  CHECK(!c.malformed && c.cls == 4 && c.cmd == 0 && c.data.size() == 2 && c.data[0] == 2);
  CHECK_EQ(walked, 2u);
  cq.Answer(c, 0);
  *m.At(0x18000) = 0xee;
  cq.Answer(c, 1);  // (a second answer writes again; the device never does this)
  CHECK_EQ(*m.At(0x18000), 1);
  CHECK(cq.Publish());
  CHECK(cq.Pop(&c, &walked, &v) == CtrlQueue::Next::kEmpty);
}

CASE(ctrl_without_ack_byte_is_broken_and_short_command_malformed) {
  Mem m;
  m.Add(0, 0x10000);
  const MemoryTable& t = m.Build();
  QueueLayout l = Ring(0, 8);
  CtrlQueue cq;
  Violation v;
  CHECK(cq.Init(t, l, false, false, &v));
  m.Desc(l.desc, 0, 0x4000, 1, RING_DESC_F_NEXT, 1);
  m.Desc(l.desc, 1, 0x5000, 1, RING_DESC_F_WRITE);
  m.Desc(l.desc, 2, 0x4000, 3, 0);
  uint16_t idx = 0;
  Post(m, l, &idx, 0);
  Post(m, l, &idx, 2);
  CtrlCommand c;
  uint64_t walked = 0;
  CHECK(cq.Pop(&c, &walked, &v) == CtrlQueue::Next::kCommand);
  CHECK(c.malformed);
  CHECK(cq.Pop(&c, &walked, &v) == CtrlQueue::Next::kBroken);
  CHECK_RULE(v, "header-too-short");
}

// ---- notifications ---------------------------------------------------------------------

// The TX worker ends a batch where UntilUsedEvent() says, so that the interrupt the driver
// asked for (EVENT_IDX used_event) goes out with the batch that uses that entry.
CASE(until_used_event_counts_to_the_drivers_used_event) {
  Mem m;
  m.Add(0, 0x40000);
  const MemoryTable& t = m.Build();
  QueueLayout l = Ring(0, 16);
  SplitQueue q;
  Violation v;
  CHECK(q.Init(t, l, true, false, 0, 0, &v));
  uint16_t* used_event = reinterpret_cast<uint16_t*>(m.At(l.avail + 4 + 2 * 16));
  *used_event = 5;  // interrupt once entry 5 is used, i.e. at used.idx 6
  CHECK_EQ(q.UntilUsedEvent(), 6u);
  for (uint32_t i = 0; i < 4; i++) q.AddUsed(i, 0);  // added, not yet published: they count
  CHECK_EQ(q.UntilUsedEvent(), 2u);
  q.AddUsed(4, 0);
  q.AddUsed(5, 0);
  CHECK_EQ(q.UntilUsedEvent(), 0u);  // reached
  CHECK(q.PublishUsed());            // and this publication is the one that interrupts
  q.AddUsed(6, 0);
  CHECK_EQ(q.UntilUsedEvent(), 0u);  // passed
  *used_event = 6;  // interrupts off, as a driver does: used_event one behind what it consumed
  CHECK_EQ(q.UntilUsedEvent(), 0u);
  *used_event = 0xfffe;  // far behind (wrapped): no limit either
  CHECK_EQ(q.UntilUsedEvent(), 0u);
  SplitQueue plain;  // without EVENT_IDX there is no used_event to honour
  CHECK(plain.Init(t, Ring(0x20000, 16), false, false, 0, 0, &v));
  CHECK_EQ(plain.UntilUsedEvent(), 0u);
}

// Coalescing windows with the clock in the test's hands: a window opens at its first packet
// and closes at max_packets or max_usecs, owing an interrupt only if one was wanted inside it.
CASE(coalescer_closes_windows_by_count_time_and_new_parameters) {
  NotifyCoalescer c;
  CHECK(c.Published(1, true, 0));  // off: every wanted publication interrupts
  CHECK(!c.Published(1, false, 0));
  c.Set(4, 0);
  CHECK(!c.active());  // either field 0 = off
  c.Set(4, 100);       // 4 packets or 100 us
  CHECK(!c.Published(3, true, 1000));
  CHECK(c.open());
  CHECK(!c.Due(1000 + 99999));
  CHECK(c.Published(1, false, 2000));  // the 4th packet: the earlier want is owed
  CHECK(!c.open());
  CHECK(!c.Published(0, false, 3000));  // nothing published opens nothing
  CHECK(!c.open());
  CHECK(!c.Published(2, true, 10000));
  CHECK(!c.Due(10000 + 99999));
  CHECK(c.Due(10000 + 100000));  // time is up
  CHECK(!c.Due(10000 + 200000));
  CHECK(c.Published(0, true, 15000));    // nothing published: nothing held, and no want kept
  CHECK(!c.Published(5, false, 20000));  // a full window nobody wanted: closes silently
  CHECK(!c.open());
  CHECK(!c.Published(2, true, 30000));
  c.Set(2, 100);  // lowered to what the window already holds
  CHECK(c.Due(30001));
  CHECK(!c.Published(1, true, 40000));
  c.Set(0, 0);  // turned off with a window open: it still closes, owing its interrupt
  CHECK(c.engaged());
  CHECK(c.Due(40001));
  CHECK(!c.engaged());
  c.Set(1000, 1000);
  CHECK(!c.Published(1, true, 50000));
  CHECK(c.Close());  // the worker stops: owed
  CHECK(!c.Close());
}

// ---- RX stash -----------------------------------------------------------------------------

CASE(stash_places_frames_down_past_holes_and_sets_num_buffers) {
  Mem m;
  m.Add(0, 0x40000);
  const MemoryTable& t = m.Build();
  QueueLayout l = Ring(0, 16);
  SplitQueue q;
  Violation v;
  CHECK(q.Init(t, l, false, false, 0, 0, &v));
  RxStash s;
  for (uint16_t i = 0; i < 3; i++) {
    Chain c;
    c.head = i;
    c.iov.push_back(iovec{m.At(0x10000 + 0x1000ull * i), 0x800});
    c.bytes = 0x800;
    s.Push(c);
  }
  // Chain 0's read found nothing; chain 1 got a frame of 100 bytes: it moves to chain 0.
  uint8_t* src = m.At(0x11000);
  for (int i = 0; i < 100; i++) src[i] = static_cast<uint8_t>(i + 1);
  CHECK_EQ(s.Place(q, 0, 1, 2, 100, true, true), 1u);
  uint8_t* dst = m.At(0x10000);
  CHECK(dst[0] == 1 && dst[99] == 100);
  CHECK(dst[10] == 1 && dst[11] == 0);  // num_buffers = 1, little-endian, over bytes 10..11
  s.Consume(1);
  CHECK_EQ(s.chains(), 2u);
  // A 3000-byte frame read over both remaining chains: spread over two, num_buffers 2.
  CHECK_EQ(s.Place(q, 0, 0, 2, 3000, true, true), 2u);
  CHECK_EQ(*m.At(0x1100a), 2);
  q.PublishUsed();
  CHECK_EQ(*reinterpret_cast<uint16_t*>(m.At(l.used + 2)), 3);
  // used elements: (0, 100), (1, 0x800), (2, 3000 - 0x800)
  uint32_t* used = reinterpret_cast<uint32_t*>(m.At(l.used + 4));
  CHECK(used[0] == 0 && used[1] == 100);
  CHECK(used[2] == 1 && used[3] == 0x800);
  CHECK(used[4] == 2 && used[5] == 3000 - 0x800);
  // Without mergeable buffers a frame larger than the free chain does not fit.
  RxStash s2;
  Chain small;
  small.head = 5;
  small.iov.push_back(iovec{m.At(0x20000), 64});
  small.bytes = 64;
  s2.Push(small);
  CHECK_EQ(s2.Place(q, 0, 0, 1, 65, false, false), 0u);
  s2.GiveBack(q);
  CHECK_EQ(s2.chains(), 0u);
}

// ---- split ring: IN_ORDER ------------------------------------------------------------

CASE(split_in_order_answers_a_batch_with_one_element_and_checks_heads) {
  Mem m;
  m.Add(0, 0x10000);
  const MemoryTable& t = m.Build();
  const QueueLayout l = Ring(0, 8);
  for (uint32_t i = 0; i < 8; i++) m.Desc(l.desc, i, 0x8000 + 0x100 * i, 64, 0);
  m.Desc(l.desc, 1, 0x8100, 64, RING_DESC_F_NEXT, 2);  // chain 1 -> 2
  SplitQueue q;
  Violation v;
  q.SetInOrder(true);
  CHECK(q.Init(t, l, false, false, 0, 0, &v));
  uint16_t idx = 0;
  Post(m, l, &idx, 0);
  Post(m, l, &idx, 1);
  Post(m, l, &idx, 3);
  Chain c;
  for (uint16_t want : {0, 1, 3}) {
    uint16_t head = 0;
    CHECK(q.PopAvail(&head, &v) == SplitQueue::Pop::kChain);
    CHECK_EQ(head, want);
    CHECK(q.ReadTxChain(head, 12, &c, &v));
    q.AddUsed(head, 0);
  }
  CHECK_EQ(q.pending_used(), 3);
  q.PublishUsed();
  // One element, at the batch's first slot, naming its last chain; used.idx
  // still counts every chain.
  CHECK_EQ(*reinterpret_cast<uint16_t*>(m.At(l.used + 2)), 3);
  CHECK_EQ(*reinterpret_cast<uint32_t*>(m.At(l.used + 4)), 3u);
  CHECK_EQ(*reinterpret_cast<uint32_t*>(m.At(l.used + 4 + 8)), 0u);  // slot 1 untouched
  // A driver that skips a descriptor breaks its side of IN_ORDER.
  Post(m, l, &idx, 5);
  uint16_t head = 0;
  CHECK(q.PopAvail(&head, &v) == SplitQueue::Pop::kChain);
  CHECK(!q.ReadTxChain(head, 12, &c, &v));
  CHECK_RULE(v, "in-order-head");
}

// ---- packed ring ---------------------------------------------------------------------

// The driver side of a packed ring, as small as the tests need.
struct PackedDriver {
  Mem& m;
  QueueLayout l;
  uint32_t next = 0;
  bool wrap = true;
  uint32_t used_next = 0;
  bool used_wrap = true;
  std::vector<uint16_t> ndesc = std::vector<uint16_t>(RING_MAX_SIZE, 0);

  PackedDriver(Mem& mem, QueueLayout layout) : m(mem), l(layout) {}

  struct Buf {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;  // NEXT is added between buffers; WRITE / INDIRECT as given
  };
  uint16_t AvailFlags(bool w) const { return w ? RING_PACKED_DESC_F_AVAIL : RING_PACKED_DESC_F_USED; }
  void Write(uint32_t slot, const Buf& b, uint16_t id, uint16_t flags) {
    const uint64_t at = l.desc + 16ull * slot;
    m.Set<uint64_t>(at, b.addr);
    m.Set<uint32_t>(at + 8, b.len);
    m.Set<uint16_t>(at + 12, id);
    m.Set<uint16_t>(at + 14, flags);
  }
  // Makes a chain available, its head last (as a driver must).
  void Post(const std::vector<Buf>& bufs, uint16_t id) {
    const uint32_t head = next;
    const bool head_wrap = wrap;
    uint16_t head_flags = 0;
    for (size_t i = 0; i < bufs.size(); i++) {
      const uint16_t f = static_cast<uint16_t>(bufs[i].flags | (i + 1 < bufs.size() ? RING_DESC_F_NEXT : 0) |
                                               AvailFlags(wrap));
      if (i == 0)
        head_flags = f;
      else
        Write(next, bufs[i], id, f);
      if (++next == l.size) {
        next = 0;
        wrap = !wrap;
      }
    }
    ndesc[id] = static_cast<uint16_t>(bufs.size());
    Write(head, bufs[0], id, static_cast<uint16_t>((head_flags & ~(RING_PACKED_DESC_F_AVAIL | RING_PACKED_DESC_F_USED)) |
                                                   AvailFlags(head_wrap)));
  }
  // The next used descriptor, if the device wrote one.
  bool Used(uint16_t* id, uint32_t* len) {
    const uint64_t at = l.desc + 16ull * used_next;
    const uint16_t f = *reinterpret_cast<uint16_t*>(m.At(at + 14));
    const bool a = f & RING_PACKED_DESC_F_AVAIL, u = f & RING_PACKED_DESC_F_USED;
    if (a != used_wrap || u != used_wrap) return false;
    *id = *reinterpret_cast<uint16_t*>(m.At(at + 12));
    *len = *reinterpret_cast<uint32_t*>(m.At(at + 8));
    used_next += ndesc[*id];
    while (used_next >= l.size) {
      used_next -= l.size;
      used_wrap = !used_wrap;
    }
    return true;
  }
};

// A packed ring of `size` descriptors at `base`, the two event areas after it.
QueueLayout PackedRing(uint64_t base, uint32_t size) {
  QueueLayout l;
  l.packed = true;
  l.size = size;
  l.desc = base;
  l.avail = base + 16ull * size;
  l.used = l.avail + 4;
  return l;
}

CASE(packed_chains_go_round_the_ring_with_both_wrap_counters) {
  Mem m;
  m.Add(0, 0x10000);
  const MemoryTable& t = m.Build();
  const QueueLayout l = PackedRing(0, 3);  // not a power of two: allowed for packed rings
  PackedQueue q;
  Violation v;
  CHECK(q.Init(t, l, false, false, RING_PACKED_WRAP_BIT, RING_PACKED_WRAP_BIT, &v));
  PackedDriver d(m, l);
  Chain c;
  uint16_t token = 0;
  CHECK(q.PopAvail(&token, &v) == PackedQueue::Pop::kEmpty);
  // Seven laps' worth of chains of one and two descriptors, ids reused.
  for (int round = 0; round < 7; round++) {
    d.Post({{0x8000, 40, 0}, {0x9000, 24, 0}}, 2);
    CHECK(q.PopAvail(&token, &v) == PackedQueue::Pop::kChain);
    CHECK(q.ReadTxChain(token, 12, &c, &v));
    CHECK_EQ(c.head, 2);
    CHECK_EQ(c.bytes, 64u);
    CHECK_EQ(c.iov.size(), 2u);
    d.Post({{0xa000, 100, 0}}, 0);
    CHECK(q.PopAvail(&token, &v) == PackedQueue::Pop::kChain);
    CHECK(q.ReadTxChain(token, 12, &c, &v));
    CHECK_EQ(c.head, 0);
    CHECK(q.PopAvail(&token, &v) == PackedQueue::Pop::kEmpty);
    // Used out of order: 0 first, then 2.
    q.AddUsed(0, 0);
    q.AddUsed(2, 7);
    CHECK_EQ(q.pending_used(), 2);
    q.PublishUsed();
    uint16_t id;
    uint32_t len;
    CHECK(d.Used(&id, &len) && id == 0 && len == 0);
    CHECK(d.Used(&id, &len) && id == 2 && len == 7);
    CHECK(!d.Used(&id, &len));
    CHECK_EQ(q.last_avail(), static_cast<uint16_t>(d.next | (d.wrap ? RING_PACKED_WRAP_BIT : 0)));
    CHECK_EQ(q.used_idx(), static_cast<uint16_t>(d.used_next | (d.used_wrap ? RING_PACKED_WRAP_BIT : 0)));
  }
  // Restored from its saved state, a queue goes on where it was.
  PackedQueue q2;
  CHECK(q2.Init(t, l, false, false, q.last_avail(), q.used_idx(), &v));
  d.Post({{0x8000, 40, 0}}, 1);
  CHECK(q2.PopAvail(&token, &v) == PackedQueue::Pop::kChain);
  CHECK(q2.ReadTxChain(token, 12, &c, &v) && c.head == 1);
  // Positions beyond the ring cannot be restored.
  CHECK(!q2.Init(t, l, false, false, RING_PACKED_WRAP_BIT | 3, RING_PACKED_WRAP_BIT, &v));
  CHECK_RULE(v, "ring-base-out-of-range");
}

CASE(packed_rules_each_stop_the_queue_with_their_name) {
  Mem m;
  m.Add(0, 0x10000);
  const MemoryTable& t = m.Build();
  const QueueLayout l = PackedRing(0, 4);
  struct Case {
    const char* rule;
    std::function<void(PackedDriver&)> post;
    bool indirect_ok;
    bool rx;
  };
  const Case cases[] = {
      {"buffer-id-out-of-range", [](PackedDriver& d) { d.Post({{0x8000, 64, 0}}, 4); }, false, false},
      {"buffer-id-in-use",
       [](PackedDriver& d) {
         d.Post({{0x8000, 64, 0}}, 1);
         d.Post({{0x8000, 64, 0}}, 1);
       },
       false, false},
      {"chain-too-long",
       [](PackedDriver& d) {
         // Four descriptors that all say NEXT: the chain never ends in the ring.
         for (uint32_t i = 0; i < 4; i++)
           d.Write(i, {0x8000, 64, 0}, 0, RING_DESC_F_NEXT | RING_PACKED_DESC_F_AVAIL);
       },
       false, false},
      {"chain-not-available",
       [](PackedDriver& d) {
         // The head says NEXT, the descriptor after it is not available
         // (its flags disagree with the driver's wrap counter).
         d.Write(1, {0x8000, 64, 0}, 0, RING_PACKED_DESC_F_USED);
         d.Write(0, {0x8000, 64, 0}, 0, RING_DESC_F_NEXT | RING_PACKED_DESC_F_AVAIL);
       },
       false, false},
      {"desc-out-of-bounds", [](PackedDriver& d) { d.Post({{0xfff0, 64, 0}}, 0); }, false, false},
      {"writable-on-tx", [](PackedDriver& d) { d.Post({{0x8000, 64, RING_DESC_F_WRITE}}, 0); }, false, false},
      {"readable-on-rx", [](PackedDriver& d) { d.Post({{0x8000, 64, 0}}, 0); }, false, true},
      {"empty-chain", [](PackedDriver& d) { d.Post({{0x8000, 0, 0}}, 0); }, false, false},
      {"header-too-short", [](PackedDriver& d) { d.Post({{0x8000, 4, 0}}, 0); }, false, false},
      {"indirect-not-negotiated",
       [](PackedDriver& d) { d.Post({{0x4000, 32, RING_DESC_F_INDIRECT}}, 0); }, false, false},
      {"indirect-with-next",
       [](PackedDriver& d) { d.Post({{0x4000, 32, RING_DESC_F_INDIRECT}, {0x8000, 64, 0}}, 0); }, true, false},
      {"indirect-with-next",  // an indirect descriptor as the last of a chain: also not its only one
       [](PackedDriver& d) { d.Post({{0x8000, 64, 0}, {0x4000, 32, RING_DESC_F_INDIRECT}}, 0); }, true, false},
      {"indirect-bad-len", [](PackedDriver& d) { d.Post({{0x4000, 20, RING_DESC_F_INDIRECT}}, 0); }, true, false},
      {"indirect-out-of-bounds",
       [](PackedDriver& d) { d.Post({{0xfff0, 32, RING_DESC_F_INDIRECT}}, 0); }, true, false},
      {"nested-indirect",
       [](PackedDriver& d) {
         d.m.Set<uint64_t>(0x4000, 0x5000);
         d.m.Set<uint32_t>(0x4008, 32);
         d.m.Set<uint16_t>(0x400e, RING_DESC_F_INDIRECT);
         d.Post({{0x4000, 32, RING_DESC_F_INDIRECT}}, 0);
       },
       true, false},
  };
  for (const Case& k : cases) {
    memset(m.At(0), 0, 0x10000);
    PackedQueue q;
    Violation v;
    CHECK(q.Init(t, l, false, k.indirect_ok, RING_PACKED_WRAP_BIT, RING_PACKED_WRAP_BIT, &v));
    PackedDriver d(m, l);
    k.post(d);
    Chain c;
    uint16_t token = 0;
    bool ok = true;
    for (int i = 0; i < 4 && ok; i++) {
      const PackedQueue::Pop p = q.PopAvail(&token, &v);
      if (p == PackedQueue::Pop::kEmpty) break;
      ok = p == PackedQueue::Pop::kChain &&
           (k.rx ? q.ReadRxChain(token, 12, 8, &c, &v) : q.ReadTxChain(token, 12, &c, &v));
    }
    if (ok) fprintf(stderr, "case %s: no violation\n", k.rule);
    CHECK(!ok);
    CHECK_RULE(v, k.rule);
  }
}

// The walker's inline path takes a ring descriptor whose buffer lies in one
// region; one that crosses into the next region goes the long way, and the
// chain still comes out whole and in order.
CASE(packed_buffer_across_regions_becomes_several_iovecs) {
  Mem m;
  m.Add(0, 0x10000);
  m.Add(0x10000, 0x10000);  // adjacent
  m.Add(0x100000000ull, 0x10000);  // 4 GiB, after a hole
  const MemoryTable& t = m.Build();
  const QueueLayout l = PackedRing(0, 4);
  PackedQueue q;
  Violation v;
  CHECK(q.Init(t, l, false, false, RING_PACKED_WRAP_BIT, RING_PACKED_WRAP_BIT, &v));
  PackedDriver d(m, l);
  // In one region, then across the boundary, then after the hole.
  d.Post({{0x8000, 12, 0}, {0x10000 - 6, 20, 0}, {0x100000000ull + 64, 100, 0}}, 2);
  uint16_t token = 0;
  Chain c;
  CHECK(q.PopAvail(&token, &v) == PackedQueue::Pop::kChain);
  CHECK(q.ReadTxChain(token, 12, &c, &v));
  CHECK_EQ(c.head, 2);
  CHECK_EQ(c.iov.size(), 4u);
  CHECK_EQ(c.bytes, 132u);
  if (c.iov.size() == 4u) {
    CHECK(c.iov[0].iov_base == m.At(0x8000) && c.iov[0].iov_len == 12);
    CHECK(c.iov[1].iov_base == m.At(0x10000 - 6) && c.iov[1].iov_len == 6);
    CHECK(c.iov[2].iov_base == m.At(0x10000) && c.iov[2].iov_len == 14);
    CHECK(c.iov[3].iov_base == t.Contiguous(0x100000000ull + 64, 100) && c.iov[3].iov_len == 100);
  }
  // Into the hole after the last region: refused by its rule, not read.
  d.Post({{0x8000, 12, 0}, {0x100000000ull + 0x10000 - 8, 64, 0}}, 0);
  CHECK(q.PopAvail(&token, &v) == PackedQueue::Pop::kChain);
  CHECK(!q.ReadTxChain(token, 12, &c, &v));
  CHECK_RULE(v, "desc-out-of-bounds");
}

CASE(packed_indirect_table_is_read_in_order) {
  Mem m;
  m.Add(0, 0x10000);
  const MemoryTable& t = m.Build();
  const QueueLayout l = PackedRing(0, 4);
  PackedQueue q;
  Violation v;
  CHECK(q.Init(t, l, false, true, RING_PACKED_WRAP_BIT, RING_PACKED_WRAP_BIT, &v));
  PackedDriver d(m, l);
  // Three entries; NEXT is not used in a packed indirect table.
  for (uint32_t i = 0; i < 3; i++) {
    m.Set<uint64_t>(0x4000 + 16 * i, 0x8000 + 0x100 * i);
    m.Set<uint32_t>(0x4008 + 16 * i, 20);
    m.Set<uint16_t>(0x400e + 16 * i, RING_DESC_F_WRITE);
  }
  d.Post({{0x4000, 48, RING_DESC_F_INDIRECT}}, 3);
  uint16_t token = 0;
  Chain c;
  CHECK(q.PopAvail(&token, &v) == PackedQueue::Pop::kChain);
  CHECK(q.ReadRxChain(token, 12, 8, &c, &v));
  CHECK_EQ(c.head, 3);
  CHECK_EQ(c.iov.size(), 3u);
  CHECK_EQ(c.bytes, 60u);
  CHECK(c.iov[2].iov_base == m.At(0x8200));
  q.AddUsed(3, 60);
  q.PublishUsed();
  uint16_t id;
  uint32_t len;
  CHECK(d.Used(&id, &len) && id == 3 && len == 60);
  CHECK_EQ(q.used_idx(), RING_PACKED_WRAP_BIT | 1);  // an indirect chain takes one ring descriptor
}

CASE(packed_layout_rules) {
  Mem m;
  m.Add(0, 0x10000);
  const MemoryTable& t = m.Build();
  Violation v;
  QueueLayout l = PackedRing(0, 100);
  CHECK(CheckLayout(t, l, &v));
  QueueLayout bad = l;
  bad.avail += 2;  // the driver event area must be 4-byte aligned
  CHECK(!CheckLayout(t, bad, &v));
  CHECK_RULE(v, "ring-out-of-bounds");
  bad = l;
  bad.used = l.desc + 16;  // device event area over a descriptor
  CHECK(!CheckLayout(t, bad, &v));
  CHECK_RULE(v, "ring-overlap");
  bad = l;
  bad.size = 40000;
  CHECK(!CheckLayout(t, bad, &v));
  CHECK_RULE(v, "ring-out-of-bounds");
  bad = l;
  bad.desc = 0x10000 - 16 * 50;  // runs off guest memory
  CHECK(!CheckLayout(t, bad, &v));
  CHECK_RULE(v, "ring-out-of-bounds");
  // One queue layout never goes to the other ring.
  SplitQueue sq;
  CHECK(!sq.Init(t, l, false, false, 0, 0, &v));
  PackedQueue pq;
  CHECK(!pq.Init(t, Ring(0x8000, 16), false, false, 0, 0, &v));
}

CASE(packed_event_suppression_both_areas) {
  Mem m;
  m.Add(0, 0x10000);
  const MemoryTable& t = m.Build();
  const QueueLayout l = PackedRing(0, 8);
  PackedQueue q;
  Violation v;
  CHECK(q.Init(t, l, true, false, RING_PACKED_WRAP_BIT, RING_PACKED_WRAP_BIT, &v));
  PackedDriver d(m, l);
  uint16_t* drv_off = reinterpret_cast<uint16_t*>(m.At(l.avail));
  uint16_t* drv_flags = reinterpret_cast<uint16_t*>(m.At(l.avail + 2));
  uint16_t* dev_off = reinterpret_cast<uint16_t*>(m.At(l.used));
  uint16_t* dev_flags = reinterpret_cast<uint16_t*>(m.At(l.used + 2));
  // Device area: disable, then with EVENT_IDX enable at the next position.
  q.DisableNotify();
  CHECK_EQ(*dev_flags, RING_EVENT_FLAGS_DISABLE);
  CHECK(!q.EnableNotify());
  CHECK_EQ(*dev_flags, RING_EVENT_FLAGS_DESC);
  CHECK_EQ(*dev_off, RING_PACKED_WRAP_BIT | 0);
  auto one = [&](uint16_t id) {
    uint16_t token = 0;
    Chain c;
    d.Post({{0x8000, 64, 0}}, id);
    CHECK(q.PopAvail(&token, &v) == PackedQueue::Pop::kChain);
    CHECK(q.ReadTxChain(token, 12, &c, &v));
    q.AddUsed(id, 0);
  };
  // Driver area: disable -> no interrupt; enable -> interrupt.
  *drv_flags = RING_EVENT_FLAGS_DISABLE;
  one(0);
  CHECK(!q.PublishUsed());
  *drv_flags = RING_EVENT_FLAGS_ENABLE;
  one(0);
  CHECK(q.PublishUsed());
  // Descriptor-specific: interrupt when the device passes slot 4 of this lap.
  *drv_flags = RING_EVENT_FLAGS_DESC;
  *drv_off = RING_PACKED_WRAP_BIT | 4;
  CHECK_EQ(q.UntilUsedEvent(), 3);  // slots 2, 3 and 4
  one(0);
  CHECK(!q.PublishUsed());  // slot 2
  one(0);
  one(1);
  CHECK(q.PublishUsed());  // slots 3 and 4
  // The same slot with the other wrap counter is a lap away.
  *drv_off = 4;
  for (int i = 0; i < 7; i++) {
    one(0);
    CHECK(!q.PublishUsed());  // slots 5..7, then 0..3 of the next lap
  }
  one(0);
  CHECK(q.PublishUsed());  // slot 4 with wrap counter 0
}

// Used descriptors reach the ring at PublishUsed(), all of a batch in one
// pass (across a wrap too): a driver polling its next used slot sees nothing
// of the batch before then, and all of it after, in ring order.
CASE(packed_used_descriptors_appear_at_publish) {
  Mem m;
  m.Add(0, 0x10000);
  const MemoryTable& t = m.Build();
  const QueueLayout l = PackedRing(0, 4);
  PackedQueue q;
  Violation v;
  CHECK(q.Init(t, l, false, false, RING_PACKED_WRAP_BIT, RING_PACKED_WRAP_BIT, &v));
  PackedDriver d(m, l);
  uint16_t token = 0, id = 0;
  uint32_t len = 0;
  Chain c;
  d.Post({{0x8000, 64, RING_DESC_F_WRITE}}, 0);
  d.Post({{0x8100, 64, RING_DESC_F_WRITE}}, 1);
  d.Post({{0x8200, 64, RING_DESC_F_WRITE}}, 2);
  for (uint16_t i = 0; i < 3; i++) {
    CHECK(q.PopAvail(&token, &v) == PackedQueue::Pop::kChain);
    CHECK(q.ReadRxChain(token, 12, 8, &c, &v));
  }
  q.AddUsed(0, 10);
  q.AddUsed(1, 11);
  q.PublishUsed();
  CHECK(d.Used(&id, &len) && id == 0 && len == 10);
  CHECK(d.Used(&id, &len) && id == 1 && len == 11);
  // Slots 3 and 0 (the wrap counter flips between): two chains decided, none written.
  d.Post({{0x8300, 64, RING_DESC_F_WRITE}}, 3);
  d.Post({{0x8400, 64, RING_DESC_F_WRITE}}, 0);
  for (uint16_t i = 0; i < 2; i++) {
    CHECK(q.PopAvail(&token, &v) == PackedQueue::Pop::kChain);
    CHECK(q.ReadRxChain(token, 12, 8, &c, &v));
  }
  q.AddUsed(2, 12);
  q.AddUsed(3, 13);
  q.AddUsed(0, 14);
  CHECK_EQ(q.used_idx(), 1);  // the device's position moved on: slot 1, wrap counter 0
  CHECK(!d.Used(&id, &len));
  CHECK_EQ(q.pending_used(), 3);
  q.PublishUsed();
  CHECK(d.Used(&id, &len) && id == 2 && len == 12);
  CHECK(d.Used(&id, &len) && id == 3 && len == 13);
  CHECK(d.Used(&id, &len) && id == 0 && len == 14);
  CHECK(!d.Used(&id, &len));
}

CASE(packed_in_order_skips_a_batch_with_one_used_descriptor) {
  Mem m;
  m.Add(0, 0x10000);
  const MemoryTable& t = m.Build();
  const QueueLayout l = PackedRing(0, 8);
  PackedQueue q;
  Violation v;
  q.SetInOrder(true);
  CHECK(q.Init(t, l, false, false, RING_PACKED_WRAP_BIT, RING_PACKED_WRAP_BIT, &v));
  PackedDriver d(m, l);
  d.Post({{0x8000, 64, 0}}, 0);
  d.Post({{0x8000, 64, 0}, {0x9000, 64, 0}}, 1);
  d.Post({{0x8000, 64, 0}}, 3);
  uint16_t token = 0;
  Chain c;
  for (uint16_t id : {0, 1, 3}) {
    CHECK(q.PopAvail(&token, &v) == PackedQueue::Pop::kChain);
    CHECK(q.ReadTxChain(token, 12, &c, &v) && c.head == id);
    q.AddUsed(id, 0);
  }
  CHECK_EQ(q.pending_used(), 3);
  q.PublishUsed();
  // One used descriptor at slot 0 naming buffer 3; the device skips all four
  // descriptors of the batch.
  CHECK_EQ(*reinterpret_cast<uint16_t*>(m.At(l.desc + 12)), 3);
  CHECK_EQ(*reinterpret_cast<uint16_t*>(m.At(l.desc + 14)), RING_PACKED_DESC_F_AVAIL | RING_PACKED_DESC_F_USED);
  CHECK_EQ(*reinterpret_cast<uint16_t*>(m.At(l.desc + 16 + 14)), RING_PACKED_DESC_F_AVAIL | RING_DESC_F_NEXT);  // still the driver's
  CHECK_EQ(q.used_idx(), RING_PACKED_WRAP_BIT | 4);
  // A used element with a length (RX) is written on its own.
  d.Post({{0x8000, 64, RING_DESC_F_WRITE}}, 2);
  CHECK(q.PopAvail(&token, &v) == PackedQueue::Pop::kChain);
  CHECK(q.ReadRxChain(token, 12, 8, &c, &v));
  q.AddUsed(2, 60);
  q.PublishUsed();
  CHECK_EQ(*reinterpret_cast<uint16_t*>(m.At(l.desc + 64 + 12)), 2);
  CHECK_EQ(*reinterpret_cast<uint32_t*>(m.At(l.desc + 64 + 8)), 60u);
}

CASE(packed_undo_pop_gives_chains_back) {
  Mem m;
  m.Add(0, 0x10000);
  const MemoryTable& t = m.Build();
  const QueueLayout l = PackedRing(0, 4);
  PackedQueue q;
  Violation v;
  CHECK(q.Init(t, l, false, false, RING_PACKED_WRAP_BIT, RING_PACKED_WRAP_BIT, &v));
  PackedDriver d(m, l);
  d.Post({{0x8000, 64, RING_DESC_F_WRITE}, {0x9000, 64, RING_DESC_F_WRITE}}, 1);
  d.Post({{0xa000, 64, RING_DESC_F_WRITE}}, 0);
  uint16_t a = 0, b = 0;
  CHECK(q.PopAvail(&a, &v) == PackedQueue::Pop::kChain);
  CHECK(q.PopAvail(&b, &v) == PackedQueue::Pop::kChain);
  CHECK_EQ(q.last_avail_before(1), RING_PACKED_WRAP_BIT | 2);
  CHECK_EQ(q.last_avail_before(2), RING_PACKED_WRAP_BIT | 0);
  q.UndoPop(2);
  CHECK_EQ(q.last_avail(), RING_PACKED_WRAP_BIT | 0);
  uint16_t a2 = 0;
  CHECK(q.PopAvail(&a2, &v) == PackedQueue::Pop::kChain);  // id 1 is free again: no 'buffer-id-in-use'
  CHECK_EQ(a2, a);
  RxStash s;
  Chain c;
  CHECK(q.ReadRxChain(a2, 12, 8, &c, &v));
  s.Push(c);
  CHECK_EQ(s.Place(q, 0, 0, 1, 100, true, true), 1u);
  s.Consume(1);
  q.PublishUsed();
  uint16_t id;
  uint32_t len;
  CHECK(d.Used(&id, &len) && id == 1 && len == 100);
}

// UndoPop and last_avail_before walk back over what the pops recorded per
// ring slot: linked chains, and a chain across the end of the ring (where
// the wrap counter flips back).
CASE(packed_undo_pop_walks_back_over_linked_chains_across_the_wrap) {
  Mem m;
  m.Add(0, 0x10000);
  const MemoryTable& t = m.Build();
  const QueueLayout l = PackedRing(0, 3);
  PackedQueue q;
  Violation v;
  CHECK(q.Init(t, l, false, false, RING_PACKED_WRAP_BIT, RING_PACKED_WRAP_BIT, &v));
  PackedDriver d(m, l);
  d.Post({{0x8000, 64, 0}, {0x9000, 64, 0}}, 0);  // slots 0, 1
  uint16_t a = 0, b = 0;
  CHECK(q.PopAvail(&a, &v) == PackedQueue::Pop::kChain);
  q.AddUsed(0, 0);
  q.PublishUsed();
  uint16_t id;
  uint32_t len;
  CHECK(d.Used(&id, &len) && id == 0);
  d.Post({{0xa000, 64, 0}, {0xb000, 64, 0}}, 2);  // slots 2, 0 (the driver's wrap counter flips between)
  CHECK(q.PopAvail(&b, &v) == PackedQueue::Pop::kChain);
  CHECK_EQ(b, 2);
  CHECK_EQ(q.last_avail(), 1);  // slot 1, wrap counter 0
  CHECK_EQ(q.last_avail_before(1), RING_PACKED_WRAP_BIT | 2);
  CHECK_EQ(q.last_avail_before(2), RING_PACKED_WRAP_BIT | 0);
  q.UndoPop(1);
  CHECK_EQ(q.last_avail(), RING_PACKED_WRAP_BIT | 2);
  uint16_t b2 = 0;
  CHECK(q.PopAvail(&b2, &v) == PackedQueue::Pop::kChain);  // id 2 is free again
  CHECK_EQ(b2, 2);
  Chain c;
  CHECK(q.ReadTxChain(b2, 12, &c, &v));
  CHECK_EQ(c.head, 2);
  CHECK_EQ(c.iov.size(), 2u);
  // An id the device does not hold is not answered (nothing to skip over).
  const uint16_t used_before = q.used_idx();
  q.AddUsed(1, 0);
  CHECK_EQ(q.used_idx(), used_before);
  q.AddUsed(2, 0);
  q.PublishUsed();
  CHECK(d.Used(&id, &len) && id == 2);
  CHECK_EQ(q.used_idx(), 1);  // past both chains: slot 1, wrap counter 0
}

// last_avail_before(n) is the position before the last n pops (the engine's
// "next to pop once the stash is given back"), walked back to; given the
// oldest one's buffer id, it is that chain's head slot and wrap counter, in
// one step. Both are checked against the driver's own record of where each
// popped chain began, over chains of one to three descriptors, undone pops
// (ids popped again) and many laps of a ring whose size is not a power of two,
// including a stash of the whole ring (head slot = next_avail).
CASE(packed_last_avail_before_follows_pops_undos_and_laps) {
  Mem m;
  m.Add(0, 0x10000);
  const MemoryTable& t = m.Build();
  const QueueLayout l = PackedRing(0, 7);
  PackedQueue q;
  Violation v;
  CHECK(q.Init(t, l, false, false, RING_PACKED_WRAP_BIT, RING_PACKED_WRAP_BIT, &v));
  PackedDriver d(m, l);
  struct Posted {
    uint16_t id, pos;  // pos: where the chain begins, wrap counter in bit 15
  };
  std::deque<Posted> posted;  // made available, not yet popped, in ring order
  std::deque<Posted> held;    // popped, not yet used, in pop order
  std::vector<bool> id_busy(l.size, false);
  uint32_t free_descs = l.size, rng = 12345, laps = 0, whole_ring_held = 0;
  auto next_rand = [&rng](uint32_t n) {
    rng = rng * 1103515245u + 12345u;
    return (rng >> 16) % n;
  };
  for (int step = 0; step < 3000; step++) {
    // The driver posts a chain when it has the descriptors and an id.
    const uint32_t len = 1 + next_rand(3);
    if (len <= free_descs) {
      uint16_t id = 0;
      while (id < l.size && id_busy[id]) id++;
      if (id < l.size) {
        const uint16_t pos = static_cast<uint16_t>(d.next | (d.wrap ? RING_PACKED_WRAP_BIT : 0));
        std::vector<PackedDriver::Buf> bufs(len, PackedDriver::Buf{0x8000, 64, RING_DESC_F_WRITE});
        d.Post(bufs, id);
        id_busy[id] = true;
        free_descs -= len;
        posted.push_back({id, pos});
      }
    }
    // The device pops some, sometimes gives the newest back, uses the oldest.
    for (uint32_t k = next_rand(3); k > 0 && !posted.empty(); k--) {
      uint16_t token = 0;
      CHECK(q.PopAvail(&token, &v) == PackedQueue::Pop::kChain);
      CHECK_EQ(q.BufferId(token), posted.front().id);
      held.push_back(posted.front());
      posted.pop_front();
    }
    if (!held.empty() && next_rand(4) == 0) {
      const uint32_t k = 1 + next_rand(static_cast<uint32_t>(held.size()));
      q.UndoPop(static_cast<uint16_t>(k));
      for (uint32_t i = 0; i < k; i++) {
        posted.push_front(held.back());
        held.pop_back();
      }
    }
    CHECK_EQ(q.last_avail_before(0), q.last_avail());
    for (uint32_t k = 1; k <= held.size(); k++) {
      const Posted& oldest = held[held.size() - k];
      CHECK_EQ(q.last_avail_before(static_cast<uint16_t>(k)), oldest.pos);
      CHECK_EQ(q.last_avail_before(static_cast<uint16_t>(k), oldest.id), oldest.pos);
    }
    if (!held.empty() && (held.front().pos & ~RING_PACKED_WRAP_BIT) == (q.last_avail() & ~RING_PACKED_WRAP_BIT))
      whole_ring_held++;
    const uint16_t driver_pos = static_cast<uint16_t>(d.next | (d.wrap ? RING_PACKED_WRAP_BIT : 0));
    if (held.empty()) CHECK_EQ(q.last_avail(), posted.empty() ? driver_pos : posted.front().pos);
    for (uint32_t k = next_rand(3); k > 0 && !held.empty(); k--) {
      q.AddUsed(held.front().id, 0);
      held.pop_front();
    }
    q.PublishUsed();
    uint16_t id;
    uint32_t used_len;
    while (d.Used(&id, &used_len)) {
      free_descs += d.ndesc[id];
      id_busy[id] = false;
      if (d.used_next < d.ndesc[id]) laps++;
    }
  }
  CHECK(laps > 100);  // the walk crossed the ring's end many times
  CHECK(whole_ring_held > 0);
}

// A queue whose Init failed holds no ids and no slots: nothing the engine may
// still call on it reads or writes out of bounds.
CASE(packed_failed_init_answers_nothing) {
  Mem m;
  m.Add(0, 0x10000);
  const MemoryTable& t = m.Build();
  PackedQueue q;
  Violation v;
  CHECK(q.Init(t, PackedRing(0, 8), false, false, RING_PACKED_WRAP_BIT, RING_PACKED_WRAP_BIT, &v));
  QueueLayout big = PackedRing(0, RING_MAX_SIZE + 1);
  CHECK(!q.Init(t, big, false, false, RING_PACKED_WRAP_BIT, RING_PACKED_WRAP_BIT, &v));
  CHECK_RULE(v, "ring-out-of-bounds");
  QueueLayout off = PackedRing(0xfff0, 8);  // outside guest memory
  v = Violation{};
  CHECK(!q.Init(t, off, false, false, RING_PACKED_WRAP_BIT, RING_PACKED_WRAP_BIT, &v));
  CHECK_RULE(v, "ring-out-of-bounds");
  uint16_t token;
  CHECK(q.PopAvail(&token, &v) == PackedQueue::Pop::kEmpty);
  q.AddUsed(0, 0);
  CHECK_EQ(q.pending_used(), 0);
  CHECK(!q.PublishUsed());
  q.UndoPop(3);  // more than was popped: a caller's mistake, still inside the ring
  CHECK((q.last_avail_before(2) & ~RING_PACKED_WRAP_BIT) < 8);
}

CASE(packed_ctrl_queue_decodes_and_acks) {
  Mem m;
  m.Add(0, 0x10000);
  const MemoryTable& t = m.Build();
  const QueueLayout l = PackedRing(0, 8);
  CtrlQueue q;
  Violation v;
  CHECK(q.Init(t, l, false, false, &v));
  PackedDriver d(m, l);
  m.Set<uint8_t>(0x8000, 0);  // class RX
  m.Set<uint8_t>(0x8001, 1);  // command ALLMULTI
  m.Set<uint8_t>(0x8002, 1);
  d.Post({{0x8000, 3, 0}, {0x9000, 1, RING_DESC_F_WRITE}}, 5);
  CtrlCommand c;
  uint64_t walked = 0;
  CHECK(q.Pop(&c, &walked, &v) == CtrlQueue::Next::kCommand);
  CHECK_EQ(c.head, 5);
  CHECK_EQ(c.cls, 0);
  CHECK_EQ(c.cmd, 1);
  CHECK_EQ(c.data.size(), 1u);
  CHECK_EQ(walked, 2u);
  q.Answer(c, 0);
  q.Publish();
  CHECK_EQ(*m.At(0x9000), 0);
  uint16_t id;
  uint32_t len;
  CHECK(d.Used(&id, &len) && id == 5 && len == 1);
  CHECK(q.Pop(&c, &walked, &v) == CtrlQueue::Next::kEmpty);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && strcmp(argv[1], "--list") == 0) {
    for (const auto& c : Cases()) printf("%s\n", c.first.c_str());
    return 0;
  }
  if (argc != 2 || Cases().count(argv[1]) == 0) {
    fprintf(stderr, "usage: ring_test --list | CASE\n");
    return 2;
  }
  Cases()[argv[1]]();
  return failures == 0 ? 0 : 1;
}
