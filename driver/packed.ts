// The driver (guest) side of one virtio packed virtqueue (virtio 1.1 §2.8)
// living in guest memory: one descriptor ring that the driver and the device
// both write, told apart by the AVAIL/USED flag bits and each side's wrap
// counter; buffer ids; the two event suppression areas (the driver's, which
// asks for or refuses interrupts, and the device's, read to decide a kick);
// reclaiming used buffers, and with IN_ORDER a single used descriptor that
// completes a whole batch. The same face as the split DriverQueue.

import { PACKED_RING, RING } from '../backend';
import { DriverMemory, DriverMemoryInput, driverMemory, Region } from './memory';
import { Buf, checkPart, DeviceBugError, DriverQueue, needEvent, QueueAddrs, UsedElem, Virtqueue } from './virtqueue';

/** Packed ring constants, the device side's own (backend/virtio.ts), under the names this driver uses. */
export const PACKED = {
  DESC_F_AVAIL: PACKED_RING.DESC_F_AVAIL,
  DESC_F_USED: PACKED_RING.DESC_F_USED,
  EVENT_ENABLE: PACKED_RING.EVENT_FLAGS_ENABLE,
  EVENT_DISABLE: PACKED_RING.EVENT_FLAGS_DISABLE,
  /** Only with EVENT_IDX: notify once the ring reaches desc_event_off_wrap. */
  EVENT_DESC: PACKED_RING.EVENT_FLAGS_DESC,
  /** Event suppression area: off_wrap (u16) then flags (u16). */
  EVENT_SIZE: PACKED_RING.EVENT_AREA_SIZE,
  EVENT_ALIGN: PACKED_RING.EVENT_AREA_ALIGN,
  /** The ring may have any size up to 2^15: positions and the wrap bit share a u16. */
  MAX_SIZE: RING.MAX_SIZE,
} as const;

const MAX_LEN = 0xffffffff;
// u16 word indices inside one 16-byte descriptor (addr u64, len u32, id u16, flags u16) and one event area.
const W_ID = 6;
const W_FLAGS = 7;
const EV_OFF_WRAP = 0;
const EV_FLAGS = 1;
const WRAP_BIT = 15;
/**
 * writeDesc() leaves a head's flags as they are until publish(): whatever is there (zero, or
 * the device's used marks from the lap before) reads as neither available to the device nor
 * used to us. A placeholder such as 0 would read as "used" on a lap whose wrap counter is 0.
 */
const KEEP_FLAGS = -1;

/** Whether a descriptor's flags say "used" for a side whose wrap counter is `wrap`: AVAIL and USED both equal it. */
function isUsedFlags(flags: number, wrap: number): boolean {
  return ((flags >>> 7) & 1) === wrap && ((flags >>> 15) & 1) === wrap;
}

/** The AVAIL/USED bits that make a descriptor available under the driver's wrap counter `wrap`. */
function availBits(wrap: number): number {
  return wrap ? PACKED.DESC_F_AVAIL : PACKED.DESC_F_USED;
}

export class PackedDriverQueue implements Virtqueue {
  readonly packed = true;
  readonly size: number;
  readonly eventIdx: boolean;
  readonly inOrder: boolean;
  /** desc: the descriptor ring; avail: the driver event suppression area; used: the device's (virtio-pci's names: desc, driver, device). */
  readonly addrs: Readonly<QueueAddrs>;
  readonly memory: DriverMemory;

  private readonly desc32: Uint32Array; // 4 words per descriptor: addr lo, addr hi, len, id|flags
  private readonly desc16: Uint16Array; // 8 words per descriptor: id at 6, flags at 7
  private readonly driverEv: Uint16Array; // written by us: asks for / refuses interrupts
  private readonly deviceEv: Uint16Array; // written by the device: asks for / refuses kicks
  private readonly single: Region | undefined;

  // Private bookkeeping per buffer id (the device could scribble on the ring).
  private readonly idSlots: Uint16Array; // ring slots the buffer takes (1 when indirect)
  private readonly idWritable: Float64Array;
  private readonly idInFlight: Uint8Array;
  private readonly idFree: Uint16Array; // stack of free ids (without IN_ORDER)
  private idFreeN = 0;
  // Ids in the order they were made available (IN_ORDER: a used id completes every older one).
  private readonly fifo: Uint16Array;
  private fifoRd = 0;
  private fifoN = 0;
  private nextId = 0; // IN_ORDER hands out ids in ring order

  // Heads written but not yet flagged available: publish() flips their flags (the release point).
  private readonly pendPos: Uint16Array;
  private readonly pendFlags: Uint16Array;
  private pendN = 0;

  private nextAvail = 0;
  private availWrap = 1;
  private nextUsed = 0;
  private usedWrap = 1;
  private numFree = 0;
  private slotsSinceKick = 0;
  private outstanding = 0;
  private interruptsOff = false;
  // IN_ORDER: a used descriptor read and not yet handed out in full: the batch ends at batchEnd.
  private batchEnd = -1;
  private batchLen = 0;
  private readonly scratch: UsedElem = { id: 0, len: 0 };

  /** Guest addresses for a packed ring of `size` entries at or after `base`: desc, then the driver and device event areas. */
  static layout(base: number, size: number): { desc: number; avail: number; used: number; end: number } {
    checkPackedSize(size);
    if (!Number.isSafeInteger(base) || base < 0) throw new RangeError(`layout: base must be a non-negative integer, got ${base}`);
    const desc = Math.ceil(base / RING.DESC_ALIGN) * RING.DESC_ALIGN;
    const avail = desc + RING.DESC_SIZE * size;
    const used = avail + PACKED.EVENT_SIZE;
    return { desc, avail, used, end: used + PACKED.EVENT_SIZE };
  }

  /** Takes the ring memory and zeroes it: construct before the queue is enabled on the device. */
  constructor(mem: DriverMemory | DriverMemoryInput, q: QueueAddrs, opts: { eventIdx: boolean; inOrder?: boolean }) {
    const memory = driverMemory(mem);
    if (q === null || typeof q !== 'object') throw new TypeError('PackedDriverQueue: q must be { size, desc, avail, used }');
    if (opts === null || typeof opts !== 'object' || typeof opts.eventIdx !== 'boolean') throw new TypeError('PackedDriverQueue: opts.eventIdx must be a boolean');
    if (opts.inOrder !== undefined && typeof opts.inOrder !== 'boolean') throw new TypeError('PackedDriverQueue: opts.inOrder must be a boolean');
    const { size, desc, avail, used } = q;
    checkPackedSize(size);
    const descLen = RING.DESC_SIZE * size;
    const descR = checkPart(memory, 'desc', desc, descLen, RING.DESC_ALIGN);
    const drvR = checkPart(memory, 'driver event area', avail, PACKED.EVENT_SIZE, PACKED.EVENT_ALIGN);
    const devR = checkPart(memory, 'device event area', used, PACKED.EVENT_SIZE, PACKED.EVENT_ALIGN);
    const parts: [string, number, number][] = [
      ['descriptor ring', desc, descLen],
      ['driver event area', avail, PACKED.EVENT_SIZE],
      ['device event area', used, PACKED.EVENT_SIZE],
    ];
    for (let i = 0; i < 3; i++) {
      for (let j = i + 1; j < 3; j++) {
        const [na, a, la] = parts[i];
        const [nb, b, lb] = parts[j];
        if (a < b + lb && b < a + la) throw new RangeError(`PackedDriverQueue: ${na} [${a}, ${a + la}) overlaps ${nb} [${b}, ${b + lb})`);
      }
    }
    this.memory = memory;
    this.size = size;
    this.eventIdx = opts.eventIdx;
    this.inOrder = opts.inOrder ?? false;
    this.addrs = Object.freeze({ size, desc, avail, used });
    this.desc32 = new Uint32Array(descR.buffer, desc - descR.guestAddr, descLen / 4);
    this.desc16 = new Uint16Array(descR.buffer, desc - descR.guestAddr, descLen / 2);
    this.driverEv = new Uint16Array(drvR.buffer, avail - drvR.guestAddr, 2);
    this.deviceEv = new Uint16Array(devR.buffer, used - devR.guestAddr, 2);
    this.single = memory.regions.length === 1 ? memory.regions[0] : undefined;
    this.idSlots = new Uint16Array(size);
    this.idWritable = new Float64Array(size);
    this.idInFlight = new Uint8Array(size);
    this.idFree = new Uint16Array(size);
    this.fifo = new Uint16Array(size);
    this.pendPos = new Uint16Array(size);
    this.pendFlags = new Uint16Array(size);
    this.reset();
  }

  /** Zeroes the ring and both event areas and forgets every buffer; both wrap counters start at 1. */
  reset(): void {
    this.desc32.fill(0);
    this.driverEv.fill(0);
    this.deviceEv.fill(0);
    this.idSlots.fill(0);
    this.idWritable.fill(0);
    this.idInFlight.fill(0);
    this.idFreeN = 0;
    for (let i = this.size - 1; i >= 0; i--) this.idFree[this.idFreeN++] = i;
    this.fifoRd = 0;
    this.fifoN = 0;
    this.nextId = 0;
    this.pendN = 0;
    this.nextAvail = 0;
    this.availWrap = 1;
    this.nextUsed = 0;
    this.usedWrap = 1;
    this.numFree = this.size;
    this.slotsSinceKick = 0;
    this.outstanding = 0;
    this.interruptsOff = false;
    this.batchEnd = -1;
    this.batchLen = 0;
  }

  /** Ring slots not owned by the device. */
  get freeCount(): number {
    return this.numFree;
  }

  get inFlight(): number {
    return this.outstanding;
  }

  /** 1 when the device has used a buffer popUsed() has not handed out yet, else 0 (the packed ring has no used count to read). */
  get pending(): number {
    return this.batchEnd >= 0 || isUsedFlags(Atomics.load(this.desc16, this.nextUsed * 8 + W_FLAGS), this.usedWrap) ? 1 : 0;
  }

  get unpublished(): number {
    return this.pendN;
  }

  /** The driver's wrap counters and positions, for tests and for saving a queue's state. */
  get state(): { nextAvail: number; availWrap: number; nextUsed: number; usedWrap: number } {
    return { nextAvail: this.nextAvail, availWrap: this.availWrap, nextUsed: this.nextUsed, usedWrap: this.usedWrap };
  }

  /**
   * Writes a chain into the next ring slots (not yet visible to the device: call publish()).
   * Readable buffers precede writable ones. Returns the buffer id, or -1 when fewer than
   * `bufs.length` slots are free.
   */
  add(bufs: readonly Buf[]): number {
    if (!Array.isArray(bufs) || bufs.length === 0) throw new TypeError('add: bufs must be a non-empty array');
    const n = bufs.length;
    if (n > this.size) throw new RangeError(`add: chain of ${n} buffers exceeds queue size ${this.size}`);
    let sawWrite = false;
    let writable = 0;
    for (let i = 0; i < n; i++) {
      const b = bufs[i];
      this.checkBuf(b.addr, b.len, 'add', i);
      if (b.write) {
        sawWrite = true;
        writable += b.len;
      } else if (sawWrite) throw new RangeError(`add: buffer ${i} is device-readable after a device-writable one (virtio 2.8.6)`);
    }
    if (this.numFree < n) return -1;
    const id = this.takeId();
    const head = this.nextAvail;
    for (let i = 0; i < n; i++) {
      const b = bufs[i];
      const flags = (b.write ? RING.DESC_F_WRITE : 0) | (i < n - 1 ? RING.DESC_F_NEXT : 0) | availBits(this.availWrap);
      // Every descriptor but the head is flagged now: the device reads none of them before the head.
      this.writeDesc(this.nextAvail, b.addr, b.len, id, i === 0 ? KEEP_FLAGS : flags);
      if (i === 0) this.pendFlags[this.pendN] = flags;
      this.advanceAvail();
    }
    this.commit(id, head, n, writable);
    return id;
  }

  /** One-buffer add() without the array. */
  addBuf(addr: number, len: number, write: boolean): number {
    this.checkBuf(addr, len, 'addBuf', 0);
    if (this.numFree < 1) return -1;
    const id = this.takeId();
    const head = this.nextAvail;
    this.writeDesc(head, addr, len, id, KEEP_FLAGS);
    this.pendFlags[this.pendN] = (write ? RING.DESC_F_WRITE : 0) | availBits(this.availWrap);
    this.advanceAvail();
    this.commit(id, head, 1, write ? len : 0);
    return id;
  }

  /**
   * Posts `bufs` through one INDIRECT descriptor whose table the caller reserved at `table`
   * (16-aligned, 16 * bufs.length bytes, untouched until the buffer comes back). The table's
   * descriptors are consecutive: the packed layout has no NEXT inside an indirect table.
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
      } else if (sawWrite) throw new RangeError(`addIndirect: buffer ${i} is device-readable after a device-writable one (virtio 2.8.6)`);
    }
    if (this.numFree < 1) return -1;
    const t32 = new Uint32Array(tableR.buffer, table - tableR.guestAddr, 4 * n);
    const t16 = new Uint16Array(tableR.buffer, table - tableR.guestAddr, 8 * n);
    for (let i = 0; i < n; i++) {
      const b = bufs[i];
      t32[i * 4] = b.addr >>> 0;
      t32[i * 4 + 1] = Math.floor(b.addr / 0x100000000);
      t32[i * 4 + 2] = b.len;
      t16[i * 8 + W_ID] = 0;
      t16[i * 8 + W_FLAGS] = b.write ? RING.DESC_F_WRITE : 0;
    }
    const id = this.takeId();
    const head = this.nextAvail;
    this.writeDesc(head, table, tableLen, id, KEEP_FLAGS);
    this.pendFlags[this.pendN] = RING.DESC_F_INDIRECT | availBits(this.availWrap);
    this.advanceAvail();
    this.commit(id, head, 1, writable);
    return id;
  }

  /**
   * Makes every chain added since the last publish() available (each head's flags stored with
   * release, in ring order) and says whether the device wants a kick for them: its event area
   * says enable, disable, or (EVENT_IDX) the ring position whose crossing needs one.
   */
  publish(): boolean {
    const n = this.pendN;
    if (n === 0) return false;
    for (let i = 0; i < n; i++) Atomics.store(this.desc16, this.pendPos[i] * 8 + W_FLAGS, this.pendFlags[i]);
    this.pendN = 0;
    const newPos = this.nextAvail;
    const oldPos = newPos - this.slotsSinceKick;
    this.slotsSinceKick = 0;
    // Seq-cst store above, seq-cst load here: the full fence against a device that re-enables
    // kicks and then looks at the ring again.
    const flags = Atomics.load(this.deviceEv, EV_FLAGS);
    if (flags !== PACKED.EVENT_DESC || !this.eventIdx) return flags !== PACKED.EVENT_DISABLE;
    const offWrap = Atomics.load(this.deviceEv, EV_OFF_WRAP);
    const off = offWrap & 0x7fff;
    // An event position on the lap before ours lies `size` behind in our linear numbering.
    const event = offWrap >>> WRAP_BIT === this.availWrap ? off : off - this.size;
    return needEvent(event & 0xffff, newPos & 0xffff, oldPos & 0xffff);
  }

  /**
   * Next used buffer, or null. Without IN_ORDER each used descriptor returns one buffer; with it,
   * a used descriptor returns every buffer made available before the one it names too (each
   * earlier one with len 0: the device reports one length per batch), one per call.
   */
  popUsed(out?: UsedElem): UsedElem | null {
    const r = out ?? this.scratch;
    if (this.batchEnd >= 0) return this.nextOfBatch(r);
    const p = this.nextUsed;
    const flags = Atomics.load(this.desc16, p * 8 + W_FLAGS);
    if (!isUsedFlags(flags, this.usedWrap)) return null;
    // id and len are read after the acquire (seq-cst) load of the flags.
    const id = this.desc16[p * 8 + W_ID];
    const len = this.desc32[p * 4 + 2];
    if (id >= this.size || this.idInFlight[id] === 0) {
      throw new DeviceBugError(`popUsed: used descriptor ${p} names buffer id ${id}, which is not a buffer the device owns (queue size ${this.size})`);
    }
    if (len > this.idWritable[id]) throw new DeviceBugError(`popUsed: used descriptor ${p} has len ${len}, more than the ${this.idWritable[id]} writable bytes of buffer ${id}`);
    if (this.inOrder) {
      // Every buffer from the oldest in flight through `id` is used: skip all their slots now.
      let slots = 0;
      for (let i = 0, k = this.fifoRd; ; i++, k = k + 1 === this.size ? 0 : k + 1) {
        if (i >= this.fifoN) throw new DeviceBugError(`popUsed: used buffer id ${id} was not made available (IN_ORDER)`);
        slots += this.idSlots[this.fifo[k]];
        if (this.fifo[k] === id) break;
      }
      this.advanceUsed(slots);
      this.batchEnd = id;
      this.batchLen = len;
      return this.nextOfBatch(r);
    }
    this.advanceUsed(this.idSlots[id]);
    this.release(id);
    r.id = id;
    r.len = len;
    return r;
  }

  /** Asks the device not to interrupt (flags DISABLE); best effort. */
  disableInterrupts(): void {
    if (this.interruptsOff) return;
    this.interruptsOff = true;
    Atomics.store(this.driverEv, EV_FLAGS, PACKED.EVENT_DISABLE);
  }

  /**
   * Re-arms interrupts for the next used descriptor (ENABLE, or with EVENT_IDX DESC at the next
   * used position). True when a used descriptor is already there: the caller polls again.
   */
  enableInterrupts(): boolean {
    return this.arm(this.nextUsed, this.usedWrap);
  }

  /** With EVENT_IDX: asks for an interrupt only once about 3/4 of the slots in flight are used. */
  enableInterruptsDelayed(): boolean {
    if (!this.eventIdx) return this.arm(this.nextUsed, this.usedWrap);
    const inFlightSlots = this.size - this.numFree;
    let pos = this.nextUsed + ((inFlightSlots * 3) >>> 2);
    let wrap = this.usedWrap;
    if (pos >= this.size) {
      pos -= this.size;
      wrap ^= 1;
    }
    return this.arm(pos, wrap);
  }

  private arm(pos: number, wrap: number): boolean {
    this.interruptsOff = false;
    if (this.eventIdx) {
      // off_wrap before the flags that make the device read it.
      Atomics.store(this.driverEv, EV_OFF_WRAP, pos | (wrap << WRAP_BIT));
      Atomics.store(this.driverEv, EV_FLAGS, PACKED.EVENT_DESC);
    } else {
      Atomics.store(this.driverEv, EV_FLAGS, PACKED.EVENT_ENABLE);
    }
    // Seq-cst store then load: pairs with the device's "write used flags, fence, read our event area".
    return this.pending > 0;
  }

  private nextOfBatch(r: UsedElem): UsedElem {
    const id = this.fifo[this.fifoRd];
    const last = id === this.batchEnd;
    r.id = id;
    r.len = last ? this.batchLen : 0;
    if (last) this.batchEnd = -1;
    this.release(id);
    return r;
  }

  private takeId(): number {
    let id: number;
    if (this.inOrder) {
      id = this.nextId;
      this.nextId = id + 1 === this.size ? 0 : id + 1;
    } else {
      id = this.idFree[--this.idFreeN];
    }
    return id;
  }

  private commit(id: number, head: number, slots: number, writable: number): void {
    this.pendPos[this.pendN++] = head;
    this.idSlots[id] = slots;
    this.idWritable[id] = writable;
    this.idInFlight[id] = 1;
    this.numFree -= slots;
    this.slotsSinceKick += slots;
    this.outstanding++;
    if (this.inOrder) {
      const w = this.fifoRd + this.fifoN;
      this.fifo[w >= this.size ? w - this.size : w] = id;
      this.fifoN++;
    }
  }

  /** Gives a used buffer's id and slots back: IN_ORDER, the oldest in the FIFO; else onto the free-id stack. */
  private release(id: number): void {
    this.idInFlight[id] = 0;
    this.numFree += this.idSlots[id];
    this.outstanding--;
    if (this.inOrder) {
      this.fifoRd = this.fifoRd + 1 === this.size ? 0 : this.fifoRd + 1;
      this.fifoN--;
    } else {
      this.idFree[this.idFreeN++] = id;
    }
    if (this.eventIdx && !this.interruptsOff) Atomics.store(this.driverEv, EV_OFF_WRAP, this.nextUsed | (this.usedWrap << WRAP_BIT));
  }

  private advanceAvail(): void {
    if (++this.nextAvail === this.size) {
      this.nextAvail = 0;
      this.availWrap ^= 1;
    }
  }

  private advanceUsed(slots: number): void {
    this.nextUsed += slots;
    if (this.nextUsed >= this.size) {
      this.nextUsed -= this.size;
      this.usedWrap ^= 1;
    }
  }

  private writeDesc(d: number, addr: number, len: number, id: number, flags: number): void {
    const o = d * 4;
    this.desc32[o] = addr >>> 0;
    this.desc32[o + 1] = Math.floor(addr / 0x100000000);
    this.desc32[o + 2] = len;
    this.desc16[d * 8 + W_ID] = id;
    if (flags !== KEEP_FLAGS) this.desc16[d * 8 + W_FLAGS] = flags;
  }

  private checkBuf(addr: number, len: number, who: string, i: number): void {
    if (!Number.isSafeInteger(addr) || addr < 0) throw new RangeError(`${who}: buffer ${i} addr ${addr} is not a non-negative integer`);
    if (!Number.isInteger(len) || len < 1 || len > MAX_LEN) throw new RangeError(`${who}: buffer ${i} len ${len} must be an integer in 1..${MAX_LEN}`);
    const r = this.single;
    if (r !== undefined ? addr < r.guestAddr || addr + len > r.end : !this.memory.contains(addr, len)) {
      throw new RangeError(`${who}: buffer ${i} [${addr}, ${addr + len}) is not guest memory`);
    }
  }
}

function checkPackedSize(size: number): void {
  if (!Number.isInteger(size) || size < 1 || size > PACKED.MAX_SIZE) throw new RangeError(`packed virtqueue size must be an integer in 1..${PACKED.MAX_SIZE}, got ${size}`);
}

/** Ring options a driver negotiated: the layout and how the device may return buffers. */
export interface VirtqueueOptions {
  eventIdx: boolean;
  /** VIRTIO_F_RING_PACKED: the packed layout (addrs: desc, driver event area, device event area). */
  packed?: boolean;
  /** VIRTIO_F_IN_ORDER. */
  inOrder?: boolean;
}

/** The driver side of a queue in the layout the features chose. */
export function openVirtqueue(mem: DriverMemory | DriverMemoryInput, q: QueueAddrs, opts: VirtqueueOptions): Virtqueue {
  if (opts === null || typeof opts !== 'object') throw new TypeError('openVirtqueue: opts must be { eventIdx, packed?, inOrder? }');
  const o = { eventIdx: opts.eventIdx, inOrder: opts.inOrder ?? false };
  return opts.packed ? new PackedDriverQueue(mem, q, o) : new DriverQueue(mem, q, o);
}
