// The driver (guest) side of one virtio split virtqueue living in guest memory:
// posting buffer chains on the avail ring, deciding when to kick, reclaiming
// used chains (with IN_ORDER, one used entry may complete a whole batch) and
// steering interrupt suppression. Each ring part lies in one region of guest
// memory; buffers may lie anywhere in it. Also the face both layouts share
// (Virtqueue; the packed ring is driver/packed.ts).

import { RING } from '../backend';
import { DriverMemory, DriverMemoryInput, driverMemory, Region } from './memory';

// Typed-array views use host byte order while virtio 1.x rings are little-endian.
// Every Node target this project supports is little-endian; refuse the rest
// loudly instead of corrupting rings on a big-endian host.
const HOST_IS_LE = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** One chain returned by the device. */
export interface UsedElem {
  /** Head descriptor id, as returned by `add()`. */
  id: number;
  /** Bytes the device wrote into the chain's writable buffers. */
  len: number;
}

/** One buffer of a chain: guest address, length in bytes, device-writable or not. */
export interface Buf {
  addr: number;
  len: number;
  write: boolean;
}

/** Guest addresses of the three parts of one split ring. */
export interface QueueAddrs {
  size: number;
  desc: number;
  avail: number;
  used: number;
}

/**
 * What a driver does with one virtqueue, whatever its layout: the split DriverQueue and the
 * packed PackedDriverQueue (driver/packed.ts). Ids are head descriptor indexes (split) or
 * buffer ids (packed), both below `size`.
 */
export interface Virtqueue {
  readonly size: number;
  readonly eventIdx: boolean;
  readonly inOrder: boolean;
  readonly packed: boolean;
  /** Split: desc, avail, used. Packed: desc, the driver event area (avail), the device event area (used). */
  readonly addrs: Readonly<QueueAddrs>;
  readonly memory: DriverMemory;
  readonly freeCount: number;
  readonly inFlight: number;
  readonly pending: number;
  readonly unpublished: number;
  reset(): void;
  add(bufs: readonly Buf[]): number;
  addBuf(addr: number, len: number, write: boolean): number;
  addIndirect(bufs: readonly Buf[], table: number): number;
  publish(): boolean;
  popUsed(out?: UsedElem): UsedElem | null;
  disableInterrupts(): void;
  enableInterrupts(): boolean;
  enableInterruptsDelayed(): boolean;
}

/** Thrown when the device returns something no correct device can (unknown id, oversized len). */
export class DeviceBugError extends Error {
  override name = 'DeviceBugError';
}

const MAX_LEN = 0xffffffff;

// u16 word indices inside the avail and used views (virtio 1.x 2.7.6, 2.7.8).
const AVAIL_FLAGS = 0;
const AVAIL_IDX = 1;
const AVAIL_RING = 2;
const USED_FLAGS = 0;
const USED_IDX = 1;

function isPow2(n: number): boolean {
  return Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

export class DriverQueue implements Virtqueue {
  readonly packed = false;
  /** Queue size (number of descriptors), a power of two. */
  readonly size: number;
  readonly eventIdx: boolean;
  /**
   * VIRTIO_F_IN_ORDER: descriptors are handed out in ring order (the free list is a FIFO, which
   * in-order completion keeps in ring order), and a used entry completes its chain and every
   * chain made available before it: the device may write only the batch's first used slot,
   * naming the batch's last head, and advance used.idx by the whole batch.
   */
  readonly inOrder: boolean;
  readonly addrs: Readonly<QueueAddrs>;

  /** The guest memory the ring and its buffers live in. */
  readonly memory: DriverMemory;
  private readonly mask: number;

  // One view per ring part (each lies in one region), so the hot paths are plain array
  // accesses at small constant word indices.
  private readonly desc32: Uint32Array; // 4 words per descriptor: addr lo, addr hi, len, flags|next
  private readonly desc16: Uint16Array; // 8 words per descriptor: flags at 6, next at 7
  private readonly avail16: Uint16Array; // flags, idx, ring[size], used_event
  private readonly used16: Uint16Array; // flags, idx, ..., avail_event
  private readonly used32: Uint32Array; // word 0 = flags|idx, then { id, len } per entry
  private readonly usedEventW: number;
  private readonly availEventW: number;
  // Buffer bounds check: one range when guest memory is one region (the fast path), else the table.
  private readonly single: Region | undefined;

  // Bookkeeping is kept in private memory, not in the descriptors' `next`
  // fields: the device can read (or, if buggy, scribble on) guest memory, and
  // the driver's free list must survive that.
  private readonly link: Uint16Array; // next descriptor in a chain or in the free list
  private readonly chainTail: Uint16Array; // last descriptor of the chain headed here
  private readonly chainCount: Uint16Array; // descriptors in the chain headed here
  private readonly chainWritable: Float64Array; // device-writable bytes of the chain headed here
  private readonly inFlightHead: Uint8Array; // 1 while the head is owned by the device
  private freeHead = 0;
  private freeTail = 0;
  private numFree = 0;
  // IN_ORDER: heads in the order they were made available, and the batch a used entry ended.
  private readonly fifo: Uint16Array;
  private fifoRd = 0;
  private fifoN = 0;
  private batchEnd = -1;
  private batchLen = 0;
  private availShadow = 0; // next avail.idx to publish (u16)
  private lastKickIdx = 0; // avail.idx at the previous publish(), for vring_need_event's `old`
  private lastUsed = 0; // next used.idx slot we will consume (u16)
  private outstanding = 0; // chains added and not yet popped
  private interruptsOff = false;
  private readonly scratch: UsedElem = { id: 0, len: 0 };

  /** Guest addresses for a ring of `size` entries starting at or after `base`; `end` is the first byte after it. */
  static layout(
    base: number,
    size: number,
    usedAlign: number = RING.USED_ALIGN,
  ): { desc: number; avail: number; used: number; end: number } {
    checkSize(size);
    if (!Number.isSafeInteger(base) || base < 0) throw new RangeError(`layout: base must be a non-negative integer, got ${base}`);
    if (!isPow2(usedAlign) || usedAlign < RING.USED_ALIGN) {
      throw new RangeError(`layout: usedAlign must be a power of two >= ${RING.USED_ALIGN}, got ${usedAlign}`);
    }
    const desc = alignUp(base, RING.DESC_ALIGN);
    const avail = desc + RING.DESC_SIZE * size;
    const used = alignUp(avail + 4 + 2 * size + 2, usedAlign);
    const end = used + 4 + RING.USED_ELEM_SIZE * size + 2;
    return { desc, avail, used, end };
  }

  /**
   * Takes ownership of the ring memory and zeroes it (a driver initialises its
   * rings before telling the device where they are), so construct before the
   * queue is enabled on the device.
   */
  constructor(mem: DriverMemory | DriverMemoryInput, q: QueueAddrs, opts: { eventIdx: boolean; inOrder?: boolean }) {
    if (!HOST_IS_LE) throw new Error('DriverQueue: big-endian hosts are not supported (virtio 1.x rings are little-endian)');
    const memory = driverMemory(mem);
    if (q === null || typeof q !== 'object') throw new TypeError('DriverQueue: q must be { size, desc, avail, used }');
    if (opts === null || typeof opts !== 'object' || typeof opts.eventIdx !== 'boolean') {
      throw new TypeError('DriverQueue: opts.eventIdx must be a boolean');
    }
    if (opts.inOrder !== undefined && typeof opts.inOrder !== 'boolean') throw new TypeError('DriverQueue: opts.inOrder must be a boolean');
    const { size, desc, avail, used } = q;
    checkSize(size);
    const sizes = {
      desc: RING.DESC_SIZE * size,
      avail: 4 + 2 * size + 2,
      used: 4 + RING.USED_ELEM_SIZE * size + 2,
    };
    const descR = checkPart(memory, 'desc', desc, sizes.desc, RING.DESC_ALIGN);
    const availR = checkPart(memory, 'avail', avail, sizes.avail, RING.AVAIL_ALIGN);
    const usedR = checkPart(memory, 'used', used, sizes.used, RING.USED_ALIGN);
    const parts: [string, number, number][] = [
      ['desc', desc, sizes.desc],
      ['avail', avail, sizes.avail],
      ['used', used, sizes.used],
    ];
    for (let i = 0; i < 3; i++) {
      for (let j = i + 1; j < 3; j++) {
        const [na, a, la] = parts[i];
        const [nb, b, lb] = parts[j];
        if (a < b + lb && b < a + la) throw new RangeError(`DriverQueue: ${na} ring [${a}, ${a + la}) overlaps ${nb} ring [${b}, ${b + lb})`);
      }
    }

    this.memory = memory;
    this.size = size;
    this.mask = size - 1;
    this.eventIdx = opts.eventIdx;
    this.inOrder = opts.inOrder ?? false;
    this.fifo = new Uint16Array(size);
    this.addrs = Object.freeze({ size, desc, avail, used });
    this.desc32 = new Uint32Array(descR.buffer, desc - descR.guestAddr, sizes.desc / 4);
    this.desc16 = new Uint16Array(descR.buffer, desc - descR.guestAddr, sizes.desc / 2);
    this.avail16 = new Uint16Array(availR.buffer, avail - availR.guestAddr, sizes.avail / 2);
    // The used ring is 4 + 8 * size + 2 bytes: the u32 view stops before avail_event.
    this.used16 = new Uint16Array(usedR.buffer, used - usedR.guestAddr, sizes.used / 2);
    this.used32 = new Uint32Array(usedR.buffer, used - usedR.guestAddr, 1 + 2 * size);
    this.usedEventW = 2 + size;
    this.availEventW = (4 + RING.USED_ELEM_SIZE * size) / 2;
    this.single = memory.regions.length === 1 ? memory.regions[0] : undefined;

    this.link = new Uint16Array(size);
    this.chainTail = new Uint16Array(size);
    this.chainCount = new Uint16Array(size);
    this.chainWritable = new Float64Array(size);
    this.inFlightHead = new Uint8Array(size);
    this.reset();
  }

  /** Zeroes the rings and forgets every chain: the state after a device reset. */
  reset(): void {
    const size = this.size;
    this.desc32.fill(0);
    this.avail16.fill(0);
    this.used16.fill(0);
    for (let i = 0; i < size; i++) this.link[i] = (i + 1) & this.mask;
    this.chainTail.fill(0);
    this.chainCount.fill(0);
    this.chainWritable.fill(0);
    this.inFlightHead.fill(0);
    this.freeHead = 0;
    this.freeTail = size - 1;
    this.numFree = size;
    this.fifoRd = 0;
    this.fifoN = 0;
    this.batchEnd = -1;
    this.batchLen = 0;
    this.availShadow = 0;
    this.lastKickIdx = 0;
    this.lastUsed = 0;
    this.outstanding = 0;
    this.interruptsOff = false;
  }

  /** Descriptors not owned by the device. */
  get freeCount(): number {
    return this.numFree;
  }

  /** Chains added (published or not) and not yet returned by popUsed(). */
  get inFlight(): number {
    return this.outstanding;
  }

  /** Used entries the device has published that popUsed() has not consumed yet. */
  get pending(): number {
    return (Atomics.load(this.used16, USED_IDX) - this.lastUsed) & 0xffff;
  }

  /** Chains added since the last publish(). */
  get unpublished(): number {
    return (this.availShadow - this.lastKickIdx) & 0xffff;
  }

  /**
   * Puts a chain on the avail ring (not yet visible to the device: call
   * publish()). Readable buffers must precede writable ones. Returns the head
   * descriptor id, or -1 when fewer than `bufs.length` descriptors are free.
   */
  add(bufs: readonly Buf[]): number {
    if (!Array.isArray(bufs) || bufs.length === 0) throw new TypeError('add: bufs must be a non-empty array');
    const n = bufs.length;
    if (n > this.size) throw new RangeError(`add: chain of ${n} buffers exceeds queue size ${this.size}`);
    let sawWrite = false;
    for (let i = 0; i < n; i++) {
      const b = bufs[i];
      this.checkBuf(b.addr, b.len, 'add', i);
      if (b.write) sawWrite = true;
      else if (sawWrite) throw new RangeError(`add: buffer ${i} is device-readable after a device-writable one (virtio 2.7.4.2)`);
    }
    if (this.numFree < n) return -1;

    const head = this.freeHead;
    let d = head;
    let prev = head;
    let writable = 0;
    for (let i = 0; i < n; i++) {
      const b = bufs[i];
      const next = this.link[d];
      const last = i === n - 1;
      this.writeDesc(d, b.addr, b.len, (b.write ? RING.DESC_F_WRITE : 0) | (last ? 0 : RING.DESC_F_NEXT), last ? 0 : next);
      if (b.write) writable += b.len;
      prev = d;
      d = next;
    }
    this.freeHead = d;
    this.numFree -= n;
    this.commitChain(head, prev, n, writable);
    return head;
  }

  /** One-buffer add() without the array: the common RX (one writable page) and TX (header + frame) case. */
  addBuf(addr: number, len: number, write: boolean): number {
    this.checkBuf(addr, len, 'addBuf', 0);
    if (this.numFree < 1) return -1;
    const head = this.freeHead;
    this.freeHead = this.link[head];
    this.numFree -= 1;
    this.writeDesc(head, addr, len, write ? RING.DESC_F_WRITE : 0, 0);
    this.commitChain(head, head, 1, write ? len : 0);
    return head;
  }

  /**
   * Posts `bufs` through one INDIRECT descriptor whose table the caller has
   * reserved at `table` (16-aligned, `16 * bufs.length` bytes, not touched
   * until the chain comes back). Only meaningful if RING_INDIRECT_DESC was
   * negotiated. Returns the head id or -1 when no descriptor is free.
   */
  addIndirect(bufs: readonly Buf[], table: number): number {
    if (!Array.isArray(bufs) || bufs.length === 0) throw new TypeError('addIndirect: bufs must be a non-empty array');
    const n = bufs.length;
    const tableLen = n * RING.DESC_SIZE;
    if (tableLen > MAX_LEN) throw new RangeError(`addIndirect: table of ${n} descriptors is too long`);
    const tableR = checkPart(this.memory, 'addIndirect: table', table, tableLen, RING.DESC_ALIGN);
    let sawWrite = false;
    let writable = 0;
    for (let i = 0; i < n; i++) {
      const b = bufs[i];
      this.checkBuf(b.addr, b.len, 'addIndirect', i);
      if (b.write) {
        sawWrite = true;
        writable += b.len;
      } else if (sawWrite) throw new RangeError(`addIndirect: buffer ${i} is device-readable after a device-writable one (virtio 2.7.4.2)`);
    }
    if (this.numFree < 1) return -1;
    const t32 = new Uint32Array(tableR.buffer, table - tableR.guestAddr, 4 * n);
    const t16 = new Uint16Array(tableR.buffer, table - tableR.guestAddr, 8 * n);
    for (let i = 0; i < n; i++) {
      const b = bufs[i];
      const last = i === n - 1;
      const o = i * 4;
      t32[o] = b.addr >>> 0;
      t32[o + 1] = Math.floor(b.addr / 0x100000000);
      t32[o + 2] = b.len;
      t16[o * 2 + 6] = (b.write ? RING.DESC_F_WRITE : 0) | (last ? 0 : RING.DESC_F_NEXT);
      t16[o * 2 + 7] = last ? 0 : i + 1;
    }
    const head = this.freeHead;
    this.freeHead = this.link[head];
    this.numFree -= 1;
    this.writeDesc(head, table, tableLen, RING.DESC_F_INDIRECT, 0);
    this.commitChain(head, head, 1, writable);
    return head;
  }

  /**
   * Makes every chain added since the last publish() visible to the device
   * and says whether the device wants a kick for them.
   */
  publish(): boolean {
    const newIdx = this.availShadow;
    const oldIdx = this.lastKickIdx;
    // Release: the plain ring/descriptor writes above are ordered before this
    // seq-cst store, so a device that loads avail.idx with acquire sees them.
    Atomics.store(this.avail16, AVAIL_IDX, newIdx);
    this.lastKickIdx = newIdx;
    if (newIdx === oldIdx) return false;
    // The load below is seq-cst too, so it cannot be satisfied before the
    // store above is visible: this is the full fence that closes the race
    // with a device that re-enables notifications and then re-checks avail.idx.
    if (this.eventIdx) {
      const event = Atomics.load(this.used16, this.availEventW);
      return needEvent(event, newIdx, oldIdx);
    }
    return (Atomics.load(this.used16, USED_FLAGS) & RING.USED_F_NO_NOTIFY) === 0;
  }

  /**
   * Next used chain in device order, or null. The chain's descriptors go back
   * on the free list. Without `out` the result is one object reused by every
   * call (hot loops allocate nothing): copy the fields before calling again.
   */
  popUsed(out?: UsedElem): UsedElem | null {
    if (this.batchEnd >= 0) return this.nextOfBatch(out ?? this.scratch);
    const usedIdx = Atomics.load(this.used16, USED_IDX);
    if (usedIdx === this.lastUsed) return null;
    // Reading the entry after the seq-cst load of used.idx is the acquire side
    // of the device's release store.
    const slot = this.lastUsed & this.mask;
    const o = 1 + slot * 2;
    const id = this.used32[o];
    const len = this.used32[o + 1];
    if (id >= this.size || this.inFlightHead[id] === 0) {
      throw new DeviceBugError(`popUsed: used.ring[${slot}].id = ${id} is not a chain the device owns (queue size ${this.size})`);
    }
    if (len > this.chainWritable[id]) {
      throw new DeviceBugError(`popUsed: used.ring[${slot}].len = ${len} exceeds the ${this.chainWritable[id]} writable bytes of chain ${id}`);
    }
    if (this.inOrder) {
      // The entry at the batch's first slot names its last chain; used.idx counts every chain
      // of the batch, so it must cover them all.
      let k = 1;
      for (let i = this.fifoRd; this.fifo[i] !== id; i = (i + 1) & this.mask) k++;
      if (k > ((usedIdx - this.lastUsed) & 0xffff)) {
        throw new DeviceBugError(`popUsed: used.ring[${slot}] names chain ${id}, the end of a batch of ${k} chains, but used.idx covers only ${(usedIdx - this.lastUsed) & 0xffff}`);
      }
      this.batchEnd = id;
      this.batchLen = len;
      return this.nextOfBatch(out ?? this.scratch);
    }
    this.inFlightHead[id] = 0;
    this.link[this.chainTail[id]] = this.freeHead;
    this.freeHead = id;
    this.numFree += this.chainCount[id];
    this.outstanding -= 1;
    this.lastUsed = (this.lastUsed + 1) & 0xffff;
    // With EVENT_IDX, moving used_event along with our progress is how
    // "interrupts on" is expressed: ask for one at the very next used entry.
    if (this.eventIdx && !this.interruptsOff) Atomics.store(this.avail16, this.usedEventW, this.lastUsed);
    const r = out ?? this.scratch;
    r.id = id;
    r.len = len;
    return r;
  }

  /**
   * IN_ORDER: hands out the oldest chain in flight, one used.idx step each; the one the used
   * entry named gets its len, earlier ones 0.
   */
  private nextOfBatch(r: UsedElem): UsedElem {
    const id = this.fifo[this.fifoRd];
    const last = id === this.batchEnd;
    this.lastUsed = (this.lastUsed + 1) & 0xffff;
    this.fifoRd = (this.fifoRd + 1) & this.mask;
    this.fifoN--;
    this.inFlightHead[id] = 0;
    // Back on the tail of the free list: descriptors keep being handed out in ring order.
    if (this.numFree === 0) this.freeHead = id;
    else this.link[this.freeTail] = id;
    this.freeTail = this.chainTail[id];
    this.numFree += this.chainCount[id];
    this.outstanding -= 1;
    if (last) this.batchEnd = -1;
    if (this.eventIdx && !this.interruptsOff) Atomics.store(this.avail16, this.usedEventW, this.lastUsed);
    r.id = id;
    r.len = last ? this.batchLen : 0;
    return r;
  }

  /** Asks the device not to interrupt; best effort, the device may still do so. */
  disableInterrupts(): void {
    if (this.interruptsOff) return;
    this.interruptsOff = true;
    if (this.eventIdx) {
      // used_event one behind what we have consumed is never crossed again
      // before we re-enable (at most `size` < 32768 entries can be outstanding).
      Atomics.store(this.avail16, this.usedEventW, (this.lastUsed - 1) & 0xffff);
    } else {
      Atomics.store(this.avail16, AVAIL_FLAGS, RING.AVAIL_F_NO_INTERRUPT);
    }
  }

  /**
   * Re-arms interrupts for the next used entry. Returns true if used entries
   * are already pending: the device may have published them before it could
   * see the re-arm, so no interrupt is guaranteed for them and the caller must
   * poll again instead of sleeping.
   */
  enableInterrupts(): boolean {
    return this.arm(this.lastUsed);
  }

  /**
   * Like enableInterrupts() but only asks for an interrupt once about 3/4 of
   * the in-flight chains are used (EVENT_IDX only; otherwise identical): TX
   * reclaim does not need one interrupt per frame.
   */
  enableInterruptsDelayed(): boolean {
    if (!this.eventIdx) return this.arm(this.lastUsed);
    const outstandingNow = (this.availShadow - this.lastUsed) & 0xffff;
    return this.arm((this.lastUsed + ((outstandingNow * 3) >>> 2)) & 0xffff);
  }

  private arm(event: number): boolean {
    this.interruptsOff = false;
    if (this.eventIdx) Atomics.store(this.avail16, this.usedEventW, event);
    else Atomics.store(this.avail16, AVAIL_FLAGS, 0);
    // Seq-cst store then seq-cst load: the fence that pairs with the device's
    // "store used.idx, fence, read used_event/flags".
    const usedIdx = Atomics.load(this.used16, USED_IDX);
    if (this.eventIdx && event !== this.lastUsed) {
      return ((usedIdx - this.lastUsed) & 0xffff) > ((event - this.lastUsed) & 0xffff);
    }
    return usedIdx !== this.lastUsed;
  }

  private checkBuf(addr: number, len: number, who: string, i: number): void {
    if (!Number.isSafeInteger(addr) || addr < 0) throw new RangeError(`${who}: buffer ${i} addr ${addr} is not a non-negative integer`);
    if (!Number.isInteger(len) || len < 1 || len > MAX_LEN) throw new RangeError(`${who}: buffer ${i} len ${len} must be an integer in 1..${MAX_LEN}`);
    const r = this.single;
    if (r !== undefined ? addr < r.guestAddr || addr + len > r.end : !this.memory.contains(addr, len)) {
      throw new RangeError(`${who}: buffer ${i} [${addr}, ${addr + len}) is not guest memory`);
    }
  }

  private writeDesc(d: number, addr: number, len: number, flags: number, next: number): void {
    const o = d * 4;
    this.desc32[o] = addr >>> 0;
    this.desc32[o + 1] = Math.floor(addr / 0x100000000);
    this.desc32[o + 2] = len;
    const o16 = d * 8;
    this.desc16[o16 + 6] = flags;
    this.desc16[o16 + 7] = next;
  }

  private commitChain(head: number, tail: number, count: number, writable: number): void {
    this.chainTail[head] = tail;
    this.chainCount[head] = count;
    this.chainWritable[head] = writable;
    this.inFlightHead[head] = 1;
    this.outstanding += 1;
    if (this.inOrder) this.fifo[(this.fifoRd + this.fifoN++) & this.mask] = head;
    this.avail16[AVAIL_RING + (this.availShadow & this.mask)] = head;
    this.availShadow = (this.availShadow + 1) & 0xffff;
  }
}

/** virtio's vring_need_event: has `newIdx` just crossed `event` coming from `oldIdx`? All u16. */
export function needEvent(event: number, newIdx: number, oldIdx: number): boolean {
  return ((newIdx - event - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff);
}

function checkSize(size: number): void {
  if (!isPow2(size) || size > RING.MAX_SIZE) {
    throw new RangeError(`virtqueue size must be a power of two in 1..${RING.MAX_SIZE}, got ${size}`);
  }
}

/** The region holding a ring part (or an indirect table) whole; checks alignment in guest and in host memory. */
export function checkPart(mem: DriverMemory, what: string, addr: number, len: number, align: number): Region {
  if (!Number.isSafeInteger(addr) || addr < 0) throw new RangeError(`${what} address ${addr} is not a non-negative integer`);
  if (addr % align !== 0) throw new RangeError(`${what} address ${addr} must be ${align}-byte aligned`);
  const r = mem.regionOf(addr, len);
  if (!r) throw new RangeError(`${what} [${addr}, ${addr + len}) is not inside one region of guest memory (each ring part must be)`);
  // Typed-array views need the part aligned inside its buffer too; page-aligned regions always are.
  const viewAlign = Math.min(align, 4);
  if ((addr - r.guestAddr) % viewAlign !== 0) throw new RangeError(`${what} at ${addr} is not ${viewAlign}-byte aligned within its region (region at ${r.guestAddr})`);
  return r;
}
