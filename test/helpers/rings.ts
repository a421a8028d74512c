// The driver side of split virtqueues in a SharedArrayBuffer, for native
// engine tests: lay out rings, write descriptors (hostile ones included),
// publish avail entries with Atomics, read the used ring back.

import { addon, type NativeGuestMemory } from '../../backend/native';

export const DESC_F_NEXT = 1;
export const DESC_F_WRITE = 2;
export const DESC_F_INDIRECT = 4;

/** Guest memory with a bump allocator for buffers and a byte pattern to detect stray writes. */
export class GuestMem {
  readonly sab: SharedArrayBuffer;
  readonly u8: Uint8Array;
  readonly dv: DataView;
  /** The same memory as the device sees it: one region at guest address 0. */
  readonly native: NativeGuestMemory;
  private next: number;

  constructor(size: number, heapStart: number, sab?: SharedArrayBuffer) {
    this.sab = sab ?? new SharedArrayBuffer(size);
    this.u8 = new Uint8Array(this.sab);
    this.dv = new DataView(this.sab);
    this.native = new (addon().GuestMemory)([{ guestAddr: 0, buffer: this.sab }]);
    this.next = heapStart;
  }

  get size(): number {
    return this.u8.length;
  }

  /** Reserve `len` bytes aligned to `align`; returns the guest address. */
  alloc(len: number, align = 16): number {
    const at = Math.ceil(this.next / align) * align;
    if (at + len > this.u8.length) throw new Error('guest memory exhausted');
    this.next = at + len;
    return at;
  }

  /** Fill [from, to) with a position-dependent pattern (not zero, so stray zeroing shows too). */
  fillPattern(from = 0, to = this.u8.length): void {
    for (let i = from; i < to; i++) this.u8[i] = (i * 131 + 7) & 0xff;
  }

  snapshot(): Uint8Array {
    return this.u8.slice();
  }

  /**
   * First offset where memory differs from `snap` outside `allowed` ([start, end) ranges),
   * or -1 when everything outside them is byte-for-byte the same.
   */
  diffOutside(snap: Uint8Array, allowed: Array<[number, number]>): number {
    const sorted = [...allowed].sort((a, b) => a[0] - b[0]);
    let i = 0;
    for (const [s, e] of [...sorted, [this.u8.length, this.u8.length] as [number, number]]) {
      for (; i < s; i++) if (this.u8[i] !== snap[i]) return i;
      i = Math.max(i, e);
    }
    return -1;
  }
}

export interface QueueLayout {
  size: number;
  desc: number;
  avail: number;
  used: number;
}

/** One split virtqueue as the driver sees it. */
export class DriverQueue {
  readonly layout: QueueLayout;
  private readonly u16: Uint16Array;
  private readonly u32: Uint32Array;
  private availIdx = 0;

  /** Lays the three parts out from `base` (desc, avail, used; used 4-aligned; event fields included). */
  constructor(readonly mem: GuestMem, readonly size: number, base: number) {
    const desc = base;
    const avail = desc + 16 * size;
    const used = Math.ceil((avail + 4 + 2 * size + 2) / 4) * 4;
    this.layout = { size, desc, avail, used };
    this.u16 = new Uint16Array(mem.sab);
    this.u32 = new Uint32Array(mem.sab);
    for (let i = 0; i < 16 * size; i++) mem.u8[desc + i] = 0;
    for (let i = avail; i < this.end; i++) mem.u8[i] = 0;
  }

  /** First byte after the used ring (avail_event included). */
  get end(): number {
    return this.layout.used + 4 + 8 * this.size + 2;
  }

  /** The part the device may write: the used ring with its flags and avail_event. */
  usedRegion(): [number, number] {
    return [this.layout.used, this.end];
  }

  /** Write descriptor `i` of a table (the queue's own by default). */
  setDesc(i: number, addr: number | bigint, len: number, flags: number, next = 0, table = this.layout.desc): void {
    const at = table + 16 * i;
    this.mem.dv.setBigUint64(at, BigInt(addr), true);
    this.mem.dv.setUint32(at + 8, len >>> 0, true);
    this.mem.dv.setUint16(at + 12, flags, true);
    this.mem.dv.setUint16(at + 14, next, true);
  }

  /**
   * Write a chain of buffers into consecutive descriptors from `first`, linked with NEXT.
   * `bufs` are [addr, len, writable].
   */
  setChain(first: number, bufs: Array<[number, number, boolean]>, table = this.layout.desc): void {
    bufs.forEach(([addr, len, w], k) => {
      const last = k === bufs.length - 1;
      this.setDesc(first + k, addr, len, (w ? DESC_F_WRITE : 0) | (last ? 0 : DESC_F_NEXT), last ? 0 : first + k + 1, table);
    });
  }

  /** Put `head` in the next avail slot without publishing it. */
  place(head: number): void {
    this.u16[(this.layout.avail + 4 + 2 * (this.availIdx % this.size)) / 2] = head;
    this.availIdx = (this.availIdx + 1) & 0xffff;
  }

  /** Publish everything placed so far (release store of avail.idx). */
  publish(): void {
    Atomics.store(this.u16, (this.layout.avail + 2) / 2, this.availIdx);
  }

  /** place() + publish() for each head. */
  post(...heads: number[]): void {
    for (const h of heads) this.place(h);
    this.publish();
  }

  /** Store an arbitrary avail.idx (hostile). */
  setAvailIdx(v: number): void {
    this.availIdx = v & 0xffff;
    this.publish();
  }

  get published(): number {
    return this.availIdx;
  }

  set availFlags(v: number) {
    Atomics.store(this.u16, this.layout.avail / 2, v);
  }

  set usedEvent(v: number) {
    Atomics.store(this.u16, (this.layout.avail + 4 + 2 * this.size) / 2, v);
  }

  get usedFlags(): number {
    return Atomics.load(this.u16, this.layout.used / 2);
  }

  get availEvent(): number {
    return Atomics.load(this.u16, (this.layout.used + 4 + 8 * this.size) / 2);
  }

  get usedIdx(): number {
    return Atomics.load(this.u16, (this.layout.used + 2) / 2);
  }

  usedElem(i: number): { id: number; len: number } {
    const at = (this.layout.used + 4 + 8 * (i % this.size)) / 4;
    return { id: Atomics.load(this.u32, at), len: Atomics.load(this.u32, at + 1) };
  }
}
