#!/usr/bin/env python3
# Writes the seed corpora of the fuzz targets (each target's source documents
# its input format): well-formed TX and RX rings, chains with NEXT links and
# indirect tables, EVENT_IDX, resumed positions, guest rewrites between steps,
# control commands, RX frames placed across chains, and classic hostile
# shapes, so the fuzzer starts from inputs that reach deep into the code
# instead of failing the layout check.
# Run from the repository root: python3 fuzz/seeds.py (rewrites the files).
import os
import struct

CORPUS = os.path.join(os.path.dirname(__file__), 'corpus')

NEXT, WRITE, INDIRECT = 1, 2, 4
# Steps (op % 9): 0 pop, 1 pop-or-arm, 2 publish, 3 disable, 4 enable, 5 undo, 6 peek, 7/8 guest write.
POP, ARM, PUB, DIS, ENA, UNDO, PEEK, WR = 0, 1, 2, 3, 4, 5, 6, 7


class Ring:
    def __init__(self, size, desc, avail, used, mem=16384):
        self.size, self.desc, self.avail, self.used = size, desc, avail, used
        self.mem = bytearray(mem)
        self.idx = 0

    def set_desc(self, i, addr, length, flags, nxt=0, table=None):
        base = (self.desc if table is None else table) + 16 * i
        struct.pack_into('<QIHH', self.mem, base, addr, length, flags, nxt)

    def post(self, head):
        struct.pack_into('<H', self.mem, self.avail + 4 + 2 * (self.idx % self.size), head)
        self.idx = (self.idx + 1) & 0xffff
        struct.pack_into('<H', self.mem, self.avail + 2, self.idx)

    def image(self):
        return bytes(self.mem[:len(self.mem.rstrip(b'\0'))])

    def short_seed(self, flags, steps, shape=0, split=0, hole=0):
        # The header of the ctrl_queue and rx_stash targets.
        log2 = self.size.bit_length() - 1
        hdr = struct.pack('<BBHHHHBHH', flags, log2, self.desc // 16, self.avail // 2, self.used // 4,
                          len(steps), shape, split // 16, hole // 16)
        return hdr + bytes(steps) + self.image()

    def seed(self, flags, steps, last_avail=0, used_idx=0, shape=0, split=0, hole=0):
        log2 = self.size.bit_length() - 1
        hdr = struct.pack('<BBHHHHHHBHH', flags, log2, self.desc // 16, self.avail // 2, self.used // 4,
                          last_avail, used_idx, len(steps), shape, split // 16, hole // 16)
        end = len(self.mem.rstrip(b'\0'))
        return hdr + bytes(steps) + bytes(self.mem[:end])


def layout(size, base=0):
    desc = base
    avail = desc + 16 * size
    used = (avail + 6 + 2 * size + 3) // 4 * 4
    return desc, avail, used


def write(off, val):
    return [WR, off // 2 & 0xff, off // 2 >> 8, val & 0xff, val >> 8]


def seeds():
    out = {}
    EV, IND, RX = 1, 2, 16
    H12 = 1 << 2

    # TX: four one-buffer frames, popped, published, re-armed.
    r = Ring(16, *layout(16))
    for i in range(4):
        r.set_desc(i, 0x1000 + 128 * i, 72, 0)
        r.post(i)
    out['tx-simple'] = r.seed(H12, [POP, POP, POP, POP, PUB, ARM, ENA])

    # TX: header and frame in separate descriptors (NEXT), EVENT_IDX.
    r = Ring(16, *layout(16))
    for i in range(3):
        r.set_desc(2 * i, 0x1000 + 256 * i, 12, NEXT, 2 * i + 1)
        r.set_desc(2 * i + 1, 0x1000 + 256 * i + 12, 60, 0)
        r.post(2 * i)
    out['tx-next-eventidx'] = r.seed(H12 | EV, [DIS, ARM, ARM, ARM, PUB, ARM, ENA, PEEK])

    # TX through an indirect table of three entries.
    r = Ring(8, *layout(8))
    table = 0x800
    r.set_desc(0, 0x1000, 12, NEXT, 1, table)
    r.set_desc(1, 0x1100, 40, NEXT, 2, table)
    r.set_desc(2, 0x1200, 20, 0, 0, table)
    r.set_desc(0, table, 48, INDIRECT)
    r.post(0)
    out['tx-indirect'] = r.seed(H12 | IND, [POP, PUB, ARM])

    # RX: writable buffers, filled, published; kicks re-enabled between batches.
    r = Ring(16, *layout(16))
    for i in range(8):
        r.set_desc(i, 0x1000 + 1536 * i, 1536, WRITE)
        r.post(i)
    out['rx-simple'] = r.seed(RX | H12, [DIS, POP, POP, PUB, POP | 0x30, POP, PUB, ENA, ARM, ARM, ARM, ARM, PUB])

    # RX: a chain of small writable buffers (mergeable-like), kept iovecs capped by the step's high bits.
    r = Ring(16, *layout(16))
    for i in range(6):
        r.set_desc(i, 0x1000 + 64 * i, 64, WRITE | (NEXT if i < 5 else 0), i + 1)
    r.post(0)
    out['rx-chain'] = r.seed(RX | H12, [POP | 0x20, PUB])

    # RX through an indirect table, EVENT_IDX, legacy 10-byte header.
    r = Ring(4, *layout(4))
    table = 0x400
    for i in range(4):
        r.set_desc(i, 0x2000 + 512 * i, 512, WRITE | (NEXT if i < 3 else 0), i + 1, table)
    r.set_desc(0, table, 64, INDIRECT)
    r.post(0)
    out['rx-indirect'] = r.seed(RX | IND | EV, [POP, PUB, ENA])

    # Resumed at avail/used 65530 (wrap-around of the free-running indices).
    r = Ring(8, *layout(8))
    r.idx = 65530
    for i in range(8):
        r.set_desc(i, 0x1000 + 128 * i, 100, 0)
        r.post(i)
    out['tx-wrap'] = r.seed(H12, [ARM] * 8 + [PUB, ENA], last_avail=65530, used_idx=65530)

    # TX: EAGAIN handling gives chains back and takes them again.
    r = Ring(8, *layout(8))
    for i in range(4):
        r.set_desc(i, 0x1000 + 128 * i, 80, 0)
        r.post(i)
    out['tx-undo'] = r.seed(H12, [POP, POP, POP, UNDO | 0x10, POP, POP, PUB, ARM])

    # The guest keeps publishing (rewrites avail.idx) between device steps.
    r = Ring(16, *layout(16))
    for i in range(16):
        r.set_desc(i, 0x1000 + 128 * i, 72, 0)
        struct.pack_into('<H', r.mem, r.avail + 4 + 2 * i, i)
    steps = []
    for n in range(1, 17):
        steps += write(r.avail + 2, n) + [ARM]
    out['tx-guest-publishes'] = r.seed(H12, steps + [PUB, ENA])

    # Region tables (when native/ has them): a frame crossing from one region into the next,
    # and buffers past a hole between regions.
    r = Ring(16, *layout(16))
    r.set_desc(0, 0x2000 - 40, 72, 0)
    r.post(0)
    out['tx-across-regions'] = r.seed(H12, [POP, PUB], shape=1, split=0x2000 - 16)
    r = Ring(16, *layout(16))
    for i in range(4):
        r.set_desc(i, 0x1f00 + 128 * i, 128, WRITE)
        r.post(i)
    out['rx-around-hole'] = r.seed(RX | H12, [POP, POP, POP, POP, PUB], shape=2, split=0x2000 - 16, hole=0x1000)

    # Hostile: a loop of NEXT links, an index out of range, an indirect table inside an indirect table.
    r = Ring(8, *layout(8))
    r.set_desc(0, 0x1000, 12, NEXT, 1)
    r.set_desc(1, 0x1100, 12, NEXT, 0)
    r.post(0)
    out['hostile-loop'] = r.seed(H12, [POP])
    r = Ring(8, *layout(8))
    r.set_desc(0, 0x1000, 12, NEXT, 9)
    r.post(0)
    out['hostile-next-range'] = r.seed(H12, [POP])
    r = Ring(8, *layout(8))
    table = 0x800
    r.set_desc(0, table + 0x100, 16, INDIRECT, 0, table)
    r.set_desc(0, table, 16, INDIRECT)
    r.post(0)
    out['hostile-nested-indirect'] = r.seed(H12 | IND, [POP])
    # Hostile: avail.idx far ahead of the device.
    r = Ring(8, *layout(8))
    struct.pack_into('<H', r.mem, r.avail + 2, 300)
    out['hostile-idx-jump'] = r.seed(H12, [ARM])
    # Hostile: used ring two bytes after avail (used.flags is avail.idx), no EVENT_IDX.
    r = Ring(16, 0, 258, 260)
    r.set_desc(0, 0x1000, 72, 0)
    struct.pack_into('<H', r.mem, r.avail + 2, 1)
    out['hostile-used-over-avail'] = r.seed(H12, [DIS, ARM, ARM, PUB])
    # Hostile: used ring over the descriptor table.
    r = Ring(16, 0, 512, 0)
    for i in range(4):
        r.set_desc(i, 0x1000 + 128 * i, 72, 0)
        r.post(i)
    out['hostile-used-over-desc'] = r.seed(H12, [ARM, ARM, PUB, ARM, ARM, PUB])
    # Hostile: a descriptor whose buffer runs off the end of memory.
    r = Ring(8, *layout(8))
    r.set_desc(0, 256 * 1024 - 8, 64, 0)
    r.post(0)
    out['hostile-past-end'] = r.seed(H12, [POP])
    return out


def ctrl_seeds():
    # Steps (op % 6): 0/1 pop, 2 answer (ack = op >> 4), 3 publish, 4 disable kicks, 5 guest write.
    POPC, ANS, PUBC, DISC, WRC = 0, 2, 3, 4, 5
    out = {}
    EV, IND = 1, 2

    def cmd(r, first, parts, ack_at, table=None):
        # parts: (addr, bytes) readable, then one writable ack byte at ack_at.
        n = len(parts) + 1
        for k, (addr, data) in enumerate(parts):
            r.mem[addr:addr + len(data)] = data
            r.set_desc(first + k, addr, len(data), NEXT, first + k + 1, table)
        r.set_desc(first + n - 1, ack_at, 1, WRITE, 0, table)
        return first

    r = Ring(16, *layout(16))
    r.post(cmd(r, 0, [(0x1000, bytes([0, 0, 1]))], 0x1100))
    out['rx-promisc'] = r.short_seed(0, [POPC, ANS, PUBC])
    r = Ring(16, *layout(16))
    table = bytes([1, 0]) + struct.pack('<I', 2) + bytes(12) + struct.pack('<I', 1) + bytes(6)
    r.post(cmd(r, 0, [(0x1000, table[:2]), (0x1100, table[2:10]), (0x1200, table[10:])], 0x1300))
    r.post(cmd(r, 4, [(0x1400, bytes([4, 0, 2, 0]))], 0x1500))
    out['mac-table-and-mq'] = r.short_seed(EV, [DISC, POPC, POPC, ANS, ANS | 0x10, PUBC, POPC])
    r = Ring(8, *layout(8))
    t = 0x800
    cmd(r, 0, [(0x1000, bytes([2, 0, 5, 0]))], 0x1100, table=t)
    r.set_desc(0, t, 32, INDIRECT)
    r.post(0)
    out['vlan-indirect'] = r.short_seed(IND, [POPC, ANS, PUBC])
    r = Ring(16, *layout(16))
    r.post(cmd(r, 0, [(0x2000 - 2, bytes([0, 1, 1]))], 0x2100))
    out['across-regions'] = r.short_seed(0, [POPC, ANS, PUBC], shape=1, split=0x2000 - 16)
    # Many zero-length readable descriptors before the ack (issue 12, defect 3, small).
    r = Ring(64, *layout(64))
    for i in range(63):
        r.set_desc(i, 0x1000, 0, NEXT, i + 1)
    r.set_desc(63, 0x1100, 1, WRITE)
    for _ in range(8):
        r.post(0)
    out['zero-length-walk'] = r.short_seed(0, [POPC, ANS] * 8 + [PUBC])
    # Hostile: no ack byte; readable after writable.
    r = Ring(8, *layout(8))
    r.mem[0x1000:0x1003] = bytes([0, 0, 1])
    r.set_desc(0, 0x1000, 3, 0)
    r.post(0)
    out['no-ack'] = r.short_seed(0, [POPC])
    r = Ring(8, *layout(8))
    r.set_desc(0, 0x1100, 1, WRITE | NEXT, 1)
    r.set_desc(1, 0x1000, 3, 0)
    r.post(0)
    out['readable-after-ack'] = r.short_seed(0, [POPC])
    # The guest rewrites avail.idx under the device between pops.
    r = Ring(16, *layout(16))
    for i in range(4):
        cmd(r, 2 * i, [(0x1000 + 64 * i, bytes([0, i % 6, 1]))], 0x1800 + i)
        struct.pack_into('<H', r.mem, r.avail + 4 + 2 * i, 2 * i)
    steps = []
    for n in range(1, 5):
        steps += [WRC, (r.avail + 2) // 2 & 0xff, (r.avail + 2) // 2 >> 8, n, 0, POPC, ANS]
    out['guest-publishes'] = r.short_seed(0, steps + [PUBC])
    return out


def stash_seeds():
    # Steps (op % 5): 0 push a chain, 1/2 place a frame (then at, end: u8 each; len: u16),
    # 3 consume the placed chains, 4 give the rest back.
    PUSH, PLACE, CONS, BACK = 0, 1, 3, 4
    MRG, NB, IND = 1, 2, 4
    H12 = 1 << 3
    out = {}

    def place(at, end, length):
        return [PLACE, at, end, length & 0xff, length >> 8]

    # One frame per chain, as with MTU-sized buffers.
    r = Ring(16, *layout(16))
    for i in range(8):
        r.set_desc(i, 0x1000 + 1600 * i, 1600, WRITE)
        r.post(i)
    out['one-per-chain'] = r.short_seed(NB | H12, [PUSH] * 8 + place(0, 1, 100) + place(0, 1, 1500) + [CONS] + place(0, 1, 60) + [BACK])
    # Mergeable small buffers: a frame spread over several chains.
    r = Ring(16, *layout(16))
    for i in range(12):
        r.set_desc(i, 0x1000 + 256 * i, 256, WRITE)
        r.post(i)
    out['mergeable-spread'] = r.short_seed(MRG | NB | H12, [PUSH] * 12 + place(0, 6, 1400) + place(0, 6, 200) + [CONS, BACK])
    # A hole in a batch: the frame read into a later chain moves down into the first free one.
    r = Ring(16, *layout(16))
    for i in range(6):
        r.set_desc(i, 0x1000 + 2048 * i, 2048, WRITE)
        r.post(i)
    out['move-down'] = r.short_seed(MRG | NB | H12, [PUSH] * 6 + place(2, 3, 1000) + place(1, 3, 1800) + [CONS])
    # Chains of several buffers, through an indirect table, and across two regions.
    r = Ring(8, *layout(8))
    t = 0x800
    for k in range(3):
        r.set_desc(k, 0x1000 + 100 * k, 100, WRITE | (NEXT if k < 2 else 0), k + 1, t)
    r.set_desc(0, t, 48, INDIRECT)
    r.post(0)
    r.set_desc(1, 0x1ff0, 64, WRITE)
    r.post(1)
    out['indirect-and-regions'] = r.short_seed(MRG | NB | IND | H12, [PUSH, PUSH] + place(1, 2, 50) + place(0, 2, 200), shape=1, split=0x2000 - 16)
    # Hostile: the same buffer posted twice, and a buffer over the used ring.
    r = Ring(8, *layout(8))
    r.set_desc(0, 0x1000, 512, WRITE)
    r.set_desc(1, 0x1000, 512, WRITE)
    r.set_desc(2, r.used, 64, WRITE)
    for i in range(3):
        r.post(i)
    out['aliased-buffers'] = r.short_seed(MRG | NB | H12, [PUSH] * 3 + place(1, 3, 700) + place(0, 1, 300) + [CONS])
    return out


def vhost_user_seeds():
    # fuzz/targets/vhost_user.cc: 16 bytes shaping the reads (per read: low 6 bits = bytes - 1,
    # top bits 10 = one fd, 11 = (s % 3) + 1 fds), then the message stream.
    V1, NEED_REPLY = 1, 1 << 3

    def msg(req, payload=b'', flags=V1):
        return struct.pack('<III', req, flags, len(payload)) + payload

    def u64(v):
        return struct.pack('<Q', v)

    def state(index, num):
        return struct.pack('<II', index, num)

    def addr(index, desc, used, avail):
        return struct.pack('<IIQQQQ', index, 0, desc, used, avail, 0)

    def memtable(regions):
        return struct.pack('<II', len(regions), 0) + b''.join(struct.pack('<QQQQ', *r) for r in regions)

    plain = bytes([0x3e] * 16)  # 63-byte reads, no fds
    out = {}
    # QEMU's start-up sequence for one pair, without fds.
    stream = (msg(1) + msg(15) + msg(16, u64(0b1011)) + msg(17) + msg(3) + msg(2, u64(1 << 32 | 1 << 15)) +
              msg(8, state(0, 256)) + msg(10, state(0, 0)) + msg(9, addr(0, 0x10000, 0x12000, 0x11000)) +
              msg(13, u64(1 << 8)) + msg(12, u64(1 << 8)) + msg(18, state(0, 1)) + msg(11, state(0, 0), V1 | NEED_REPLY))
    out['startup-no-fds'] = plain + stream
    # A memory table of two regions, its two fds on the message's first read.
    shape = bytes([0xc1] + [0x3e] * 15)
    out['memtable-two-fds'] = shape + msg(5, memtable([(0, 1 << 20, 0x7f0000000000, 0), (1 << 32, 1 << 20, 0x7f0000100000, 0)]))
    # Kick and call with an fd each.
    out['vring-fds'] = bytes([0x80, 0x3e, 0x80] + [0x3e] * 13) + msg(12, u64(0)) + msg(13, u64(1))
    # Reads of one byte at a time across several messages; a truncated control message.
    out['byte-reads'] = bytes([0x00] * 15 + [0x3f]) + msg(1) + msg(8, state(1, 128)) + msg(20, u64(1500))
    # Hostile: a size past the limit, a reply flag on a request, an unknown request, a stream cut short.
    # Live migration (QEMU 7.2 starting it): SET_LOG_BASE with its fd (a 32-byte log), LOG_ALL,
    # SET_VRING_ADDR with the LOG flag and log_guest_addr; then one whose log address is past the log.
    log_addr = struct.pack('<IIQQQQ', 0, 1, 0x10000, 0x12000, 0x11000, 0x12000)
    far_addr = struct.pack('<IIQQQQ', 1, 1, 0x10000, 0x12000, 0x11000, 1 << 40)
    out['migration-log'] = (bytes([0x3e, 0x3e, 0x3e, 0xbe] + [0x3e] * 12) + msg(16, u64(0b1011)) + msg(15) +
                            msg(6, struct.pack('<QQ', 32, 0)) + msg(2, u64(1 << 32 | 1 << 26 | 1 << 15), V1 | NEED_REPLY) +
                            msg(9, log_addr, V1 | NEED_REPLY) + msg(9, far_addr))
    out['hostile-headers'] = plain + struct.pack('<III', 2, V1, 5000) + msg(1, b'', V1 | 4) + msg(99) + msg(9, addr(0, 1, 2, 3))[:20]
    return out


class PackedRing:
    # A packed ring: descriptors { addr u64, len u32, id u16, flags u16 } and the two event areas.
    AVAIL, USED = 1 << 7, 1 << 15

    def __init__(self, size, desc=0, mem=16384):
        self.size, self.desc = size, desc
        self.driver = desc + 16 * size
        self.device = self.driver + 4
        self.mem = bytearray(mem)
        self.next, self.wrap = 0, 1

    def post(self, bufs, buf_id):
        # bufs: [(addr, len, flags)]; the head's flags are written last, as a driver must.
        head, head_wrap, head_flags = self.next, self.wrap, 0
        for i, (addr, length, flags) in enumerate(bufs):
            f = flags | (NEXT if i + 1 < len(bufs) else 0) | (self.AVAIL if self.wrap else self.USED)
            struct.pack_into('<QIHH', self.mem, self.desc + 16 * self.next, addr, length, buf_id, f)
            if i == 0:
                head_flags = f
            self.next += 1
            if self.next == self.size:
                self.next, self.wrap = 0, self.wrap ^ 1
        struct.pack_into('<H', self.mem, self.desc + 16 * head + 14, head_flags)

    def seed(self, flags, steps, last_avail=0x8000, used_idx=0x8000, shape=0, split=0, hole=0):
        hdr = struct.pack('<BHHHHHHHBHH', flags, self.size - 1, self.desc // 16, self.driver // 4, self.device // 4,
                          last_avail, used_idx, len(steps), shape, split // 16, hole // 16)
        end = len(self.mem.rstrip(b'\0'))
        return hdr + bytes(steps) + bytes(self.mem[:end])


def packed_seeds():
    out = {}
    r = PackedRing(8)
    for i in range(6):
        r.post([(0x2000 + 0x100 * i, 40, 0), (0x3000 + 0x100 * i, 60, 0)] if i % 2 else [(0x2000 + 0x100 * i, 100, 0)], i)
    out['tx-chains'] = r.seed(0, [POP, POP, PUB, ARM, ARM, UNDO | 0x10, POP, PUB, DIS, ENA, PEEK, ARM, ARM, PUB])
    out['tx-in-order-event-idx'] = r.seed(1 | 32, [POP, POP, POP, PUB, ARM, ARM, ARM, PUB, ENA, PEEK] + write(r.driver + 2, 2) + write(r.driver, 0x8003) + [POP, PUB])
    r = PackedRing(5)  # not a power of two
    for i in range(4):
        r.post([(0x2000 + 0x400 * i, 0x400, WRITE)], i)
    out['rx-odd-size'] = r.seed(16 | 4, [POP | 0x30, POP, POP | 0x70, PUB, ARM, ARM, PUB, PEEK | 0x20])
    r = PackedRing(4)
    struct.pack_into('<QIHH', r.mem, 0x1000, 0x2000, 64, 0, WRITE)
    struct.pack_into('<QIHH', r.mem, 0x1010, 0x2100, 64, 0, WRITE)
    r.post([(0x1000, 32, INDIRECT)], 2)
    out['rx-indirect'] = r.seed(16 | 2, [POP, PUB, ARM])
    r = PackedRing(4)
    r.post([(0x2000, 64, 0)], 7)  # buffer id out of range
    out['hostile-id'] = r.seed(0, [POP])
    r = PackedRing(2)
    for i in range(2):
        struct.pack_into('<QIHH', r.mem, 16 * i, 0x2000, 64, 0, NEXT | PackedRing.AVAIL)
    out['hostile-endless-chain'] = r.seed(0, [POP])
    r = PackedRing(4)
    r.post([(0x1000, 32, INDIRECT)], 0)
    struct.pack_into('<QIHH', r.mem, 0x1000, 0x1000, 32, 0, INDIRECT)
    out['hostile-nested-indirect'] = r.seed(2, [POP])
    r = PackedRing(4)
    r.post([(0x2000, 64, 0)], 1)
    r.post([(0x2000, 64, 0)], 1)  # the same id twice
    out['hostile-id-in-use'] = r.seed(0, [POP, POP])
    return out


def save(target, seeds_by_name):
    out = os.path.join(CORPUS, target)
    os.makedirs(out, exist_ok=True)
    for f in os.listdir(out):
        os.remove(os.path.join(out, f))
    for name, data in seeds_by_name.items():
        with open(os.path.join(out, name), 'wb') as fh:
            fh.write(data)
    print(f'{len(seeds_by_name)} seeds in {out}')


def main():
    save('virtqueue', seeds())
    save('ctrl_queue', ctrl_seeds())
    save('rx_stash', stash_seeds())
    save('vhost_user', vhost_user_seeds())
    save('packed_queue', packed_seeds())


if __name__ == '__main__':
    main()
