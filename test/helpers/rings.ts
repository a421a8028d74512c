// The driver side of virtqueues in a SharedArrayBuffer, for native engine
// tests, in either layout: lay out rings, write descriptors (hostile ones
// included), publish available buffers with Atomics, read used elements back.
// DriverQueue is the split ring; PackedRingQueue gives the packed ring the
// same face (a buffer is named by its head/id, used elements are counted and
// read in order), so a test written against RingQueue runs in both layouts;
// makeQueue(layout, ...) picks one.

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
  /** The packed ring: desc is its descriptor ring, avail the driver event area, used the device event area. */
  packed?: boolean;
}

export type RingLayout = 'split' | 'packed';
/** Every layout, for tests that loop over them: `for (const layout of RING_LAYOUTS) test(`${layout}: ...`)`. */
export const RING_LAYOUTS: readonly RingLayout[] = ['split', 'packed'];

/** What tests use of a driver queue in either layout. */
export interface RingQueue {
  readonly layout: QueueLayout;
  readonly size: number;
  /** First byte after the queue's memory. */
  readonly end: number;
  /** The bytes the device may write ([start, end)). */
  usedRegion(): [number, number];
  /** Descriptor `i` of an indirect table at `table` (or, without `table`, the one-descriptor buffer `i`). */
  setDesc(i: number, addr: number | bigint, len: number, flags: number, next?: number, table?: number): void;
  /** Buffer `first` as a chain of `bufs` ([addr, len, writable]); with `table`, written there as an indirect table instead. */
  setChain(first: number, bufs: Array<[number, number, boolean]>, table?: number): void;
  /** Make buffer `head` available without publishing it. */
  place(head: number): void;
  /** Publish everything placed so far. */
  publish(): void;
  post(...heads: number[]): void;
  /** Buffers made available so far. */
  readonly published: number;
  /** The driver asks for no interrupts (split avail.flags NO_INTERRUPT, packed driver event DISABLE: both 1). */
  availFlags: number;
  /** The device asks for no kicks (split used.flags NO_NOTIFY, packed device event DISABLE: both 1; 0 = kick me). */
  readonly usedFlags: number;
  /** Used elements the device returned so far (mod 2^16). */
  readonly usedIdx: number;
  /** The i-th used element. */
  usedElem(i: number): { id: number; len: number };
  /** The driver's own avail position as the engine's stats report it (lastAvailIdx once it caught up). */
  readonly availStat: number;
  /** The avail position (as availStat) after the first `k` buffers this driver placed. */
  positionAfter(k: number): number;
  /** Where the device's next used element goes, as the engine's stats().usedIdx reports it. */
  readonly usedStat: number;
}

/** A queue of `layout` from `base`. */
export function makeQueue(layout: RingLayout, mem: GuestMem, size: number, base: number, inOrder = false): RingQueue {
  return layout === 'packed' ? new PackedRingQueue(mem, size, base, inOrder) : new DriverQueue(mem, size, base);
}

/** One split virtqueue as the driver sees it. */
export class DriverQueue implements RingQueue {
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

  get availStat(): number {
    return this.availIdx;
  }

  positionAfter(k: number): number {
    return k & 0xffff;
  }

  get usedStat(): number {
    return this.usedIdx;
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

const PACKED_F_AVAIL = 1 << 7;
const PACKED_F_USED = 1 << 15;
const WRAP_BIT = 0x8000;

/**
 * One packed virtqueue as the driver sees it (virtio 1.1 §2.8), with the split DriverQueue's
 * face: setChain/setDesc(i) describe buffer id i (kept here until place() writes it into the
 * ring at the driver's next slots), publish() flips the heads' flags last, usedIdx/usedElem
 * read the used descriptors in the order the device wrote them.
 */
export class PackedRingQueue implements RingQueue {
  readonly layout: QueueLayout;
  private readonly u16: Uint16Array;
  private readonly pending = new Map<number, Array<[number | bigint, number, number]>>();
  private readonly heads: Array<[number, number]> = []; // [slot, flags] placed, not yet published
  private readonly slotsOf: number[] = []; // ring slots each buffer id took
  private nextAvail = 0;
  private availWrap = 1;
  private usedPos = 0;
  private usedWrap = 1;
  private placed = 0;
  private readonly used: Array<{ id: number; len: number }> = [];
  private readonly positions: number[] = []; // availStat after each placed buffer
  private readonly fifo: number[] = []; // ids in the order they were placed (IN_ORDER batches)

  /**
   * Lays the ring out from `base`: descriptors, the driver event area, the device event area.
   * With `inOrder` one used descriptor completes every buffer placed before its id too; each
   * counts as a used element (len 0 but the last), as split's used.idx counts them.
   */
  constructor(readonly mem: GuestMem, readonly size: number, base: number, readonly inOrder = false) {
    const desc = base;
    const avail = desc + 16 * size;
    this.layout = { size, desc, avail, used: avail + 4, packed: true };
    this.u16 = new Uint16Array(mem.sab);
    for (let i = desc; i < this.end; i++) mem.u8[i] = 0;
  }

  get end(): number {
    return this.layout.used + 4;
  }

  /** The device writes used descriptors over the whole ring, and its event area. */
  usedRegion(): [number, number] {
    return [this.layout.desc, this.end];
  }

  setDesc(i: number, addr: number | bigint, len: number, flags: number, _next = 0, table?: number): void {
    if (table === undefined) {
      this.pending.set(i, [[addr, len, flags]]);
      return;
    }
    // An indirect table in the packed format: no NEXT, entries follow each other (§2.8.19).
    const at = table + 16 * i;
    this.mem.dv.setBigUint64(at, BigInt(addr), true);
    this.mem.dv.setUint32(at + 8, len >>> 0, true);
    this.mem.dv.setUint16(at + 12, 0, true);
    this.mem.dv.setUint16(at + 14, flags, true);
  }

  setChain(first: number, bufs: Array<[number, number, boolean]>, table?: number): void {
    if (table !== undefined) {
      bufs.forEach(([addr, len, w], k) => this.setDesc(k, addr, len, w ? DESC_F_WRITE : 0, 0, table));
      return;
    }
    this.pending.set(first, bufs.map(([addr, len, w], k) => [addr, len, (w ? DESC_F_WRITE : 0) | (k < bufs.length - 1 ? DESC_F_NEXT : 0)]));
  }

  place(head: number): void {
    const descs = this.pending.get(head);
    if (!descs) throw new Error(`buffer ${head} has no descriptors (setChain/setDesc first)`);
    this.placeRaw(descs.map(([addr, len, flags]) => [addr, len, flags, head]));
  }

  /**
   * Writes descriptors as given ([addr, len, flags without AVAIL/USED, id]) into the next ring
   * slots, the AVAIL/USED bits of the driver's wrap counter added unless `bits` overrides them
   * (per descriptor; hostile). The first is the head, flagged at publish(); its id names the buffer.
   */
  placeRaw(descs: Array<[number | bigint, number, number, number]>, bits?: Array<number | undefined>): void {
    const head = descs[descs.length - 1][3];
    this.slotsOf[head] = descs.length;
    this.fifo.push(head);
    descs.forEach(([addr, len, flags, id], k) => {
      const at = this.layout.desc + 16 * this.nextAvail;
      this.mem.dv.setBigUint64(at, BigInt(addr), true);
      this.mem.dv.setUint32(at + 8, len >>> 0, true);
      this.mem.dv.setUint16(at + 12, id, true);
      const f = flags | (bits?.[k] ?? (this.availWrap ? PACKED_F_AVAIL : PACKED_F_USED));
      // The head is flagged available last, at publish(); the rest of the chain now.
      if (k === 0) this.heads.push([this.nextAvail, f]);
      else Atomics.store(this.u16, (at + 14) / 2, f);
      if (++this.nextAvail === this.size) {
        this.nextAvail = 0;
        this.availWrap ^= 1;
      }
    });
    this.placed = (this.placed + 1) & 0xffff;
    this.positions.push(this.availStat);
  }

  positionAfter(k: number): number {
    return k === 0 ? WRAP_BIT : this.positions[k - 1];
  }

  get usedStat(): number {
    this.collect();
    return this.usedPos | (this.usedWrap ? WRAP_BIT : 0);
  }

  publish(): void {
    // Release stores, last chain first: the device never sees a head before the chains before it.
    for (let k = this.heads.length - 1; k >= 0; k--) {
      const [slot, f] = this.heads[k];
      Atomics.store(this.u16, (this.layout.desc + 16 * slot + 14) / 2, f);
    }
    this.heads.length = 0;
  }

  post(...heads: number[]): void {
    for (const h of heads) this.place(h);
    this.publish();
  }

  get published(): number {
    return this.placed;
  }

  get availStat(): number {
    return this.nextAvail | (this.availWrap ? WRAP_BIT : 0);
  }

  set availFlags(v: number) {
    Atomics.store(this.u16, (this.layout.avail + 2) / 2, v);
  }

  get usedFlags(): number {
    return Atomics.load(this.u16, (this.layout.used + 2) / 2);
  }

  /** Reads the used descriptors the device wrote since the last look (acquire on their flags). */
  private collect(): void {
    for (;;) {
      const at = this.layout.desc + 16 * this.usedPos;
      const f = Atomics.load(this.u16, (at + 14) / 2);
      const w = this.usedWrap ? 1 : 0;
      if (((f & PACKED_F_AVAIL) !== 0 ? 1 : 0) !== w || ((f & PACKED_F_USED) !== 0 ? 1 : 0) !== w) return;
      const id = this.mem.dv.getUint16(at + 12, true);
      const len = this.mem.dv.getUint32(at + 8, true);
      let skip = 0;
      if (this.inOrder && this.fifo.includes(id)) {
        // One used descriptor for the batch: every buffer placed up to `id` is used.
        for (let done = -1; done !== id; ) {
          done = this.fifo.shift()!;
          skip += this.slotsOf[done];
          this.used.push({ id: done, len: done === id ? len : 0 });
        }
      } else {
        const k = this.fifo.indexOf(id);
        if (k >= 0) this.fifo.splice(k, 1);
        skip = this.slotsOf[id] ?? 1;
        this.used.push({ id, len });
      }
      this.usedPos += skip;
      while (this.usedPos >= this.size) {
        this.usedPos -= this.size;
        this.usedWrap ^= 1;
      }
    }
  }

  get usedIdx(): number {
    this.collect();
    return this.used.length & 0xffff;
  }

  usedElem(i: number): { id: number; len: number } {
    this.collect();
    return this.used[i];
  }
}
