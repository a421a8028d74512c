// The device side of the control virtqueue (queue 2N). Commands are rare,
// so they are handled in TypeScript on the JS thread when the guest kicks:
// walk each available chain with the same rules the native walker enforces,
// hand the command to a handler, write the ack byte, publish used.

import { RING } from './virtio';

/** Largest command accepted: class + command + two full MAC tables of a generous size. */
const MAX_COMMAND_BYTES = 2 + 2 * (4 + 6 * 1024);

export class RingRuleError extends Error {
  constructor(
    readonly rule: string,
    message: string,
  ) {
    super(message);
  }
}

export interface CtrlQueueConfig {
  size: number;
  desc: number;
  avail: number;
  used: number;
}

/** Returns the ack (CTRL.OK or CTRL.ERR) for one command. */
export type CtrlHandler = (cls: number, cmd: number, data: Uint8Array) => number;

export class ControlQueue {
  private readonly u8: Uint8Array;
  private readonly dv: DataView;
  private readonly u16: Uint16Array;
  private lastAvail = 0;
  private usedIdx = 0;

  constructor(
    mem: SharedArrayBuffer,
    private readonly q: CtrlQueueConfig,
    private readonly eventIdx: boolean,
    private readonly indirect: boolean,
  ) {
    this.u8 = new Uint8Array(mem);
    this.dv = new DataView(mem);
    this.u16 = new Uint16Array(mem, 0, mem.byteLength >> 1);
  }

  /**
   * Handles every available command. Returns whether an interrupt is due.
   * Throws RingRuleError when the guest broke a rule (the caller stops the queue).
   */
  process(handler: CtrlHandler): boolean {
    const { size, avail, used } = this.q;
    const oldUsed = this.usedIdx;
    for (;;) {
      const availIdx = Atomics.load(this.u16, (avail + 2) >> 1);
      const pending = (availIdx - this.lastAvail) & 0xffff;
      if (pending === 0) break;
      if (pending > size) {
        throw new RingRuleError('avail-idx-jump', `avail.idx ${availIdx} is ${pending} past ${this.lastAvail}, more than the queue size ${size}`);
      }
      const head = this.dv.getUint16(avail + 4 + 2 * (this.lastAvail % size), true);
      const { readable, ack } = this.walk(head);
      let status = 1;
      if (readable.length >= 2) status = handler(readable[0], readable[1], readable.subarray(2));
      this.u8[ack] = status;
      const slot = used + 4 + RING.USED_ELEM_SIZE * (this.usedIdx % size);
      this.dv.setUint32(slot, head, true);
      this.dv.setUint32(slot + 4, 1, true);
      this.usedIdx = (this.usedIdx + 1) & 0xffff;
      Atomics.store(this.u16, (used + 2) >> 1, this.usedIdx);
      this.lastAvail = (this.lastAvail + 1) & 0xffff;
    }
    if (this.eventIdx) Atomics.store(this.u16, (used + 4 + RING.USED_ELEM_SIZE * size) >> 1, this.lastAvail);
    if (this.usedIdx === oldUsed) return false;
    if (this.eventIdx) {
      const ev = Atomics.load(this.u16, (avail + 4 + 2 * size) >> 1);
      return ((this.usedIdx - ev - 1) & 0xffff) < ((this.usedIdx - oldUsed) & 0xffff);
    }
    return (Atomics.load(this.u16, avail >> 1) & RING.AVAIL_F_NO_INTERRUPT) === 0;
  }

  /** Gathers a chain's readable bytes (copied: commands are tiny) and locates the ack byte. */
  private walk(head: number): { readable: Uint8Array; ack: number } {
    const { size, desc } = this.q;
    const parts: Uint8Array[] = [];
    let total = 0;
    let ack = -1;
    let table = desc;
    let tableSize = size;
    let i = head;
    let seen = 0;
    let inIndirect = false;
    const memLen = this.u8.length;
    for (;;) {
      if (i >= tableSize) throw new RingRuleError('desc-index-out-of-range', `descriptor index ${i} >= ${tableSize}`);
      if (++seen > tableSize) throw new RingRuleError('chain-too-long', `chain from head ${head} visits more than ${tableSize} descriptors`);
      const d = table + RING.DESC_SIZE * i;
      const addr = Number(this.dv.getBigUint64(d, true));
      const len = this.dv.getUint32(d + 8, true);
      const flags = this.dv.getUint16(d + 12, true);
      const next = this.dv.getUint16(d + 14, true);
      if (flags & RING.DESC_F_INDIRECT) {
        if (!this.indirect) throw new RingRuleError('indirect-not-negotiated', 'INDIRECT descriptor without VIRTIO_F_RING_INDIRECT_DESC');
        if (inIndirect) throw new RingRuleError('nested-indirect', 'INDIRECT descriptor inside an indirect table');
        if (flags & RING.DESC_F_NEXT) throw new RingRuleError('indirect-with-next', 'INDIRECT and NEXT both set');
        // As the native walker: no table longer than the largest queue, so a guest cannot
        // make the JS thread walk millions of descriptors for one command.
        if (len === 0 || len % RING.DESC_SIZE !== 0 || len / RING.DESC_SIZE > RING.MAX_SIZE) {
          throw new RingRuleError('indirect-bad-len', `indirect table length ${len} is not a non-zero multiple of 16 of at most ${RING.MAX_SIZE} entries`);
        }
        if (addr + len > memLen) throw new RingRuleError('indirect-out-of-bounds', `indirect table at 0x${addr.toString(16)}+${len} is outside guest memory`);
        table = addr;
        tableSize = len / RING.DESC_SIZE;
        i = 0;
        seen = 0;
        inIndirect = true;
        continue;
      }
      if (addr + len > memLen) throw new RingRuleError('desc-out-of-bounds', `buffer 0x${addr.toString(16)}+${len} is outside guest memory`);
      if (flags & RING.DESC_F_WRITE) {
        if (ack < 0 && len > 0) ack = addr;
      } else {
        if (ack >= 0) throw new RingRuleError('readable-after-writable', 'readable descriptor after a writable one');
        total += len;
        if (total > MAX_COMMAND_BYTES) throw new RingRuleError('chain-too-long', `control command longer than ${MAX_COMMAND_BYTES} bytes`);
        parts.push(this.u8.subarray(addr, addr + len));
      }
      if (!(flags & RING.DESC_F_NEXT)) break;
      i = next;
    }
    if (ack < 0) throw new RingRuleError('header-too-short', 'control command has no writable ack byte');
    const readable = new Uint8Array(total);
    let off = 0;
    for (const p of parts) {
      readable.set(p, off);
      off += p.length;
    }
    return { readable, ack };
  }

  /** Where to resume after a reset of this object (not needed across device resets: those start at 0). */
  get position(): { lastAvail: number; usedIdx: number } {
    return { lastAvail: this.lastAvail, usedIdx: this.usedIdx };
  }
}
