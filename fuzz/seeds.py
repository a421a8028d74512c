#!/usr/bin/env python3
# Writes the seed corpus of the virtqueue fuzz target (fuzz/targets/virtqueue.cc
# documents the input format): well-formed TX and RX rings, chains with NEXT
# links and indirect tables, EVENT_IDX, resumed positions, guest rewrites
# between steps, and a few classic hostile shapes, so the fuzzer starts from
# inputs that reach deep into the walker instead of failing the layout check.
# Run from the repository root: python3 fuzz/seeds.py (rewrites the files).
import os
import struct

OUT = os.path.join(os.path.dirname(__file__), 'corpus', 'virtqueue')

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

    def seed(self, flags, steps, last_avail=0, used_idx=0):
        log2 = self.size.bit_length() - 1
        hdr = struct.pack('<BBHHHHHH', flags, log2, self.desc // 16, self.avail // 2, self.used // 4,
                          last_avail, used_idx, len(steps))
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


def main():
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        os.remove(os.path.join(OUT, f))
    for name, data in seeds().items():
        with open(os.path.join(OUT, name), 'wb') as fh:
            fh.write(data)
    print(f'{len(os.listdir(OUT))} seeds in {OUT}')


if __name__ == '__main__':
    main()
