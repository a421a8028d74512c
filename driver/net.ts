// The virtio-net driver half for one queue pair, as Linux's virtio_net does
// it: RX buffers kept posted (mergeable or not), received frames reaped with
// their virtio_net_hdr and num_buffers, TX frames sent from fixed slots with a
// virtio_net_hdr in front, TX slots reclaimed, kicks when the device wants
// them, and a vCPU-style wait on the call eventfds. Plus the setup steps around
// it: feature negotiation, carving rings and buffers out of guest memory.

import { CONFIG, HDR, HDR_HASH, has, kick, netHdrSize, rxq, STATUS, txq, waitCall } from '../backend';
import type { QueueSetup, VirtioNetDevice } from '../backend';
import { DriverMemory, DriverMemoryInput, driverMemory, GuestAddressError, Region } from './memory';
import { openVirtqueue, PackedDriverQueue } from './packed';
import { DriverQueue, QueueAddrs, Virtqueue } from './virtqueue';

/** The virtio_net_hdr fields (virtio 1.x 5.1.6), little-endian in guest memory. */
export interface NetHdr {
  /** HDR.F_NEEDS_CSUM, HDR.F_DATA_VALID, HDR.F_RSC_INFO */
  flags: number;
  /** HDR.GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_UDP_L4, optionally | GSO_ECN */
  gsoType: number;
  hdrLen: number;
  gsoSize: number;
  csumStart: number;
  csumOffset: number;
  /**
   * Only in the 24-byte header (GUEST_/HOST_UDP_TUNNEL_GSO negotiated), with a gso_type that has
   * HDR.GSO_UDP_TUNNEL_IPV4/IPV6 (the outer IP family, as Linux reads it): the offsets of the
   * outer UDP header and the inner IP header. Written as 0 when absent.
   */
  outerTh?: number;
  innerNh?: number;
}

/** A header that asks for nothing: a complete frame with a correct checksum. */
export const NO_OFFLOAD: Readonly<NetHdr> = Object.freeze({ flags: 0, gsoType: HDR.GSO_NONE, hdrLen: 0, gsoSize: 0, csumStart: 0, csumOffset: 0 });

/** Writes `h` as a `len`-byte virtio_net_hdr (10, 12, 20 or 24) at u8[off]; num_buffers and the rest are zero. */
export function writeNetHdr(u8: Uint8Array, off: number, h: Readonly<NetHdr>, len: number): void {
  u8[off + HDR.OFF_FLAGS] = h.flags;
  u8[off + HDR.OFF_GSO_TYPE] = h.gsoType;
  put16(u8, off + HDR.OFF_HDR_LEN, h.hdrLen);
  put16(u8, off + HDR.OFF_GSO_SIZE, h.gsoSize);
  put16(u8, off + HDR.OFF_CSUM_START, h.csumStart);
  put16(u8, off + HDR.OFF_CSUM_OFFSET, h.csumOffset);
  if (len > HDR.OFF_NUM_BUFFERS) u8.fill(0, off + HDR.OFF_NUM_BUFFERS, off + len);
  if (len >= HDR.SIZE_TUNNEL) {
    put16(u8, off + HDR.OFF_OUTER_TH_OFFSET, h.outerTh ?? 0);
    put16(u8, off + HDR.OFF_INNER_NH_OFFSET, h.innerNh ?? 0);
  }
}

/** Reads the virtio_net_hdr at u8[off] into `out`; `len` 24 reads the tunnel offsets too. */
export function readNetHdr(u8: Uint8Array, off: number, out: NetHdr, len: number = HDR.SIZE_V1): NetHdr {
  out.flags = u8[off + HDR.OFF_FLAGS];
  out.gsoType = u8[off + HDR.OFF_GSO_TYPE];
  out.hdrLen = get16(u8, off + HDR.OFF_HDR_LEN);
  out.gsoSize = get16(u8, off + HDR.OFF_GSO_SIZE);
  out.csumStart = get16(u8, off + HDR.OFF_CSUM_START);
  out.csumOffset = get16(u8, off + HDR.OFF_CSUM_OFFSET);
  if (len >= HDR.SIZE_TUNNEL) {
    out.outerTh = get16(u8, off + HDR.OFF_OUTER_TH_OFFSET);
    out.innerNh = get16(u8, off + HDR.OFF_INNER_NH_OFFSET);
  }
  return out;
}

/** `count` buffers of `size` bytes each, back to back from guest address `base`; the area lies in one region. */
export interface BufferArea {
  base: number;
  count: number;
  size: number;
}

/** A queue's ring addresses and its eventfds (dev.notifier(index)). */
export interface DriverQueueSetup extends QueueAddrs {
  kickFd: number;
  callFd: number;
}

/**
 * Everything a NetQueuePair needs: plain data, so it can be posted to the Worker that drives the
 * pair (a DriverMemory posted to a Worker arrives as `{ regions }` and is rebuilt there).
 */
export interface NetQueuePairOptions {
  memory: DriverMemory | DriverMemoryInput | { regions: readonly { guestAddr: number; buffer: SharedArrayBuffer }[] };
  rx: DriverQueueSetup;
  tx: DriverQueueSetup;
  /** RX buffers: at least one per RX descriptor is usual. Mergeable: any size; else each holds the largest frame. */
  rxBuffers: BufferArea;
  /** TX slots: a virtio_net_hdr then the frame. */
  txBuffers: BufferArea;
  /** virtio_net_hdr size the device uses: netHdrSize(negotiated features). */
  hdrLen: number;
  /** VIRTIO_NET_F_MRG_RXBUF negotiated: a frame may span num_buffers RX buffers. */
  mergeable: boolean;
  /** VIRTIO_F_RING_EVENT_IDX negotiated. */
  eventIdx: boolean;
  /** VIRTIO_F_RING_PACKED negotiated: rx and tx are packed rings (desc, driver area as avail, device area as used). */
  packed?: boolean;
  /** VIRTIO_F_IN_ORDER negotiated. */
  inOrder?: boolean;
}

/**
 * A received frame, valid until the next flush() (its buffers are already re-posted and the device
 * may fill them once they are published). The frame (header excluded) is `parts` pieces:
 * piece i is rxU8[off[i], off[i] + len[i]).
 */
export interface RxFrame {
  hdr: NetHdr;
  /** num_buffers from the header (1 without MRG_RXBUF). */
  numBuffers: number;
  /**
   * With VIRTIO_NET_F_HASH_REPORT (20-byte header): hash_value and hash_report (HASH_REPORT.*,
   * NONE = 0 when the frame's type is not enabled); 0 and 0 with a shorter header.
   */
  hashValue: number;
  hashReport: number;
  /** Frame bytes, virtio_net_hdr excluded. */
  len: number;
  parts: number;
  off: Int32Array;
  partLen: Int32Array;
}

/** Driver-side counters of a queue pair. */
export interface NetQueuePairStats {
  rxFrames: number;
  rxBytes: number;
  /** Used RX chains shorter than a virtio_net_hdr (a device bug): dropped. */
  rxBadHeader: number;
  /** Frames announced by num_buffers whose continuation buffers had not arrived: cut short. */
  rxShort: number;
  txFrames: number;
  txBytes: number;
  /** reserve()/send() found no free TX slot. */
  txRingFull: number;
  /** wait() calls that slept. */
  waits: number;
  /** TX frames queued but not yet used by the device when their queue was reset (resetRing): the device never sent them. */
  txReclaimedAtReset: number;
  /** RX frames the device had delivered but nobody had taken with receive() when RX was reset (resetRing): counted in rxFrames too, then dropped. */
  rxDiscardedAtReset: number;
  /** Queue resets this pair went through (resetRing). */
  queueResets: number;
}

export class NetQueuePair {
  readonly memory: DriverMemory;
  /** The rings as this pair drives them now (replaced by resetRing()). */
  rxq: Virtqueue;
  txq: Virtqueue;
  readonly hdrLen: number;
  readonly mergeable: boolean;
  /** The RX buffer area's bytes: RxFrame offsets index it. */
  readonly rxU8: Uint8Array;
  /** The TX slot area's bytes: reserve() returns an offset in it. */
  readonly txU8: Uint8Array;
  /** Largest frame (header excluded) one TX slot holds. */
  readonly maxTxFrame: number;
  readonly stats: NetQueuePairStats = { rxFrames: 0, rxBytes: 0, rxBadHeader: 0, rxShort: 0, txFrames: 0, txBytes: 0, txRingFull: 0, waits: 0, txReclaimedAtReset: 0, rxDiscardedAtReset: 0, queueResets: 0 };

  private rx: DriverQueueSetup;
  private tx: DriverQueueSetup;
  private readonly ringOpts: { eventIdx: boolean; packed: boolean; inOrder: boolean };
  private readonly rxArea: BufferArea;
  private readonly txArea: BufferArea;
  private rxBufOfHead: Int32Array;
  private txSlotOfHead: Int32Array;
  private readonly txFree: Int32Array;
  private txFreeN = 0;
  /** RX buffers not posted because the ring was full when they came back; posted first at the next refill. */
  private readonly rxSpare: Int32Array;
  private rxSpareN = 0;
  private curSlot = -1;
  private rxPosted = false;
  private txAdded = false;
  private readonly frame: RxFrame;
  private readonly waitFds: number[];

  constructor(o: NetQueuePairOptions) {
    this.memory = driverMemory(o.memory);
    if (![10, 12, 20, 24].includes(o.hdrLen)) throw new RangeError(`hdrLen must be 10, 12, 20 or 24, got ${o.hdrLen}`);
    this.hdrLen = o.hdrLen;
    this.mergeable = !!o.mergeable;
    this.rx = o.rx;
    this.tx = o.tx;
    const ring = { eventIdx: !!o.eventIdx, packed: !!o.packed, inOrder: !!o.inOrder };
    this.ringOpts = ring;
    this.rxq = openVirtqueue(this.memory, o.rx, ring);
    this.txq = openVirtqueue(this.memory, o.tx, ring);
    this.rxArea = { ...o.rxBuffers };
    this.txArea = { ...o.txBuffers };
    this.rxU8 = areaView(this.memory, 'rxBuffers', o.rxBuffers, this.mergeable ? 1 : this.hdrLen + 1);
    this.txU8 = areaView(this.memory, 'txBuffers', o.txBuffers, this.hdrLen + 1);
    this.maxTxFrame = o.txBuffers.size - this.hdrLen;
    this.rxBufOfHead = new Int32Array(o.rx.size);
    this.txSlotOfHead = new Int32Array(o.tx.size);
    this.txFree = new Int32Array(o.txBuffers.count);
    for (let i = o.txBuffers.count - 1; i >= 0; i--) this.txFree[this.txFreeN++] = i;
    this.rxSpare = new Int32Array(o.rxBuffers.count);
    for (let i = o.rxBuffers.count - 1; i >= 0; i--) this.rxSpare[this.rxSpareN++] = i;
    const max = o.rx.size;
    this.frame = { hdr: { ...NO_OFFLOAD }, numBuffers: 1, hashValue: 0, hashReport: 0, len: 0, parts: 0, off: new Int32Array(max), partLen: new Int32Array(max) };
    this.waitFds = [o.rx.callFd, o.tx.callFd];
  }

  /** Posts every RX buffer the ring takes and tells the device (call once, after DRIVER_OK). */
  start(): void {
    this.refillRx();
    this.flush();
  }

  /**
   * The driver's half of a per-queue reset (VIRTIO_F_RING_RESET), after the device reset the
   * queue (VirtioNetDevice.resetQueue) and before it enables it again: takes every buffer of
   * the old ring back and starts `setup`'s ring (any size; its memory is cleared here). TX:
   * what the device used is reclaimed first; frames queued and not used were never sent: they
   * are counted in stats.txReclaimedAtReset and their slots are free again. RX: frames the
   * device delivered and nobody took with receive() yet are counted in stats.rxDiscardedAtReset
   * (take them first to keep them); every buffer is posted on the new ring (published at the
   * next flush()). Returns the TX frames reclaimed unsent, or the RX frames discarded.
   */
  resetRing(which: 'rx' | 'tx', setup: DriverQueueSetup): number {
    if (which !== 'rx' && which !== 'tx') throw new TypeError(`resetRing: which must be 'rx' or 'tx', got ${String(which)}`);
    // The device stopped at a batch boundary: everything it used is published in the old ring.
    let discarded = 0;
    if (which === 'tx') this.reclaim();
    else for (let f = this.receive(); f; f = this.receive()) discarded++;
    this.stats.rxDiscardedAtReset += discarded;
    clearRing(this.memory, setup, this.ringOpts.packed);
    const q = openVirtqueue(this.memory, setup, this.ringOpts);
    this.stats.queueResets++;
    if (which === 'tx') {
      this.tx = setup;
      this.txq = q;
      this.txSlotOfHead = new Int32Array(setup.size);
      const lost = this.txArea.count - this.txFreeN - (this.curSlot >= 0 ? 1 : 0);
      this.txFreeN = 0;
      for (let i = this.txArea.count - 1; i >= 0; i--) if (i !== this.curSlot) this.txFree[this.txFreeN++] = i;
      this.txAdded = false;
      this.stats.txReclaimedAtReset += lost;
      this.waitFds[1] = setup.callFd;
      return lost;
    }
    this.rx = setup;
    this.rxq = q;
    this.rxBufOfHead = new Int32Array(setup.size);
    this.rxSpareN = 0;
    for (let i = this.rxArea.count - 1; i >= 0; i--) this.rxSpare[this.rxSpareN++] = i;
    this.waitFds[0] = setup.callFd;
    this.refillRx();
    return discarded;
  }

  // --- TX --------------------------------------------------------------------------

  /**
   * Reserves a TX slot for a frame of `len` bytes (Ethernet header on, no virtio_net_hdr):
   * returns the offset in txU8 where the frame goes, or -1 when no slot is free (or `len` does
   * not fit one). Follow with commit().
   */
  reserve(len: number): number {
    if (this.txFreeN === 0) this.reclaim();
    if (this.txFreeN === 0 || len > this.maxTxFrame || len < 1) {
      this.stats.txRingFull++;
      return -1;
    }
    this.curSlot = this.txFree[--this.txFreeN];
    return this.curSlot * this.txArea.size + this.hdrLen;
  }

  /** Queues the frame just reserved (its first `len` bytes) with these header fields; flush() sends. */
  commit(len: number, hdr: Readonly<NetHdr> = NO_OFFLOAD): void {
    const slot = this.curSlot;
    if (slot < 0) throw new Error('commit() without reserve()');
    this.curSlot = -1;
    const off = slot * this.txArea.size;
    writeNetHdr(this.txU8, off, hdr, this.hdrLen);
    const head = this.txq.addBuf(this.txArea.base + off, this.hdrLen + len, false);
    this.txSlotOfHead[head] = slot;
    this.stats.txFrames++;
    this.stats.txBytes += len;
    this.txAdded = true;
  }

  /** Copies `frame` into a TX slot and queues it; false when no slot is free. flush() sends. */
  send(frame: Uint8Array, hdr: Readonly<NetHdr> = NO_OFFLOAD): boolean {
    const o = this.reserve(frame.length);
    if (o < 0) return false;
    this.txU8.set(frame, o);
    this.commit(frame.length, hdr);
    return true;
  }

  /** Takes back TX slots the device is done with; returns how many. */
  reclaim(): number {
    let n = 0;
    for (let u = this.txq.popUsed(); u; u = this.txq.popUsed()) {
      this.txFree[this.txFreeN++] = this.txSlotOfHead[u.id];
      n++;
    }
    return n;
  }

  /** TX slots free now (without reclaiming). */
  get txFreeSlots(): number {
    return this.txFreeN;
  }

  // --- RX --------------------------------------------------------------------------

  /**
   * The next received frame, or null. Its buffers go back on the RX ring right away (published at
   * the next flush()), so read the frame before calling flush(). One RxFrame object is reused.
   */
  receive(): RxFrame | null {
    for (;;) {
      const u = this.rxq.popUsed();
      if (!u) return null;
      const f = this.frame;
      const buf = this.rxBufOfHead[u.id];
      const off = buf * this.rxArea.size;
      const len = u.len;
      this.repost(buf);
      if (len < this.hdrLen) {
        this.stats.rxBadHeader++;
        continue;
      }
      readNetHdr(this.rxU8, off, f.hdr, this.hdrLen);
      const n = this.mergeable ? get16(this.rxU8, off + HDR.OFF_NUM_BUFFERS) : 1;
      f.numBuffers = n;
      const hashed = this.hdrLen >= HDR.SIZE_HASH;
      f.hashValue = hashed ? (get16(this.rxU8, off + HDR_HASH.OFF_HASH_VALUE) | (get16(this.rxU8, off + HDR_HASH.OFF_HASH_VALUE + 2) << 16)) >>> 0 : 0;
      f.hashReport = hashed ? get16(this.rxU8, off + HDR_HASH.OFF_HASH_REPORT) : 0;
      f.off[0] = off + this.hdrLen;
      f.partLen[0] = len - this.hdrLen;
      let total = len - this.hdrLen;
      let parts = 1;
      for (let i = 1; i < n; i++) {
        const more = this.rxq.popUsed();
        if (!more) {
          // The device publishes every buffer of a frame with one used.idx store, so this is a
          // device bug; give what arrived rather than hang.
          this.stats.rxShort++;
          break;
        }
        const b = this.rxBufOfHead[more.id];
        this.repost(b);
        if (parts < f.off.length) {
          f.off[parts] = b * this.rxArea.size;
          f.partLen[parts] = more.len;
          parts++;
          total += more.len;
        }
      }
      f.parts = parts;
      f.len = total;
      this.stats.rxFrames++;
      this.stats.rxBytes += total;
      return f;
    }
  }

  /** The frame's bytes in one array (a copy when it spans several buffers, else a view valid until flush()). */
  frameBytes(f: RxFrame, dst?: Uint8Array): Uint8Array {
    if (f.parts === 1 && !dst) return this.rxU8.subarray(f.off[0], f.off[0] + f.len);
    const out = dst ?? new Uint8Array(f.len);
    let n = 0;
    for (let i = 0; i < f.parts && n < out.length; i++) {
      const take = Math.min(f.partLen[i], out.length - n);
      out.set(this.rxU8.subarray(f.off[i], f.off[i] + take), n);
      n += take;
    }
    return out.subarray(0, n);
  }

  // --- notifications -----------------------------------------------------------------

  /** Publishes re-posted RX buffers and queued TX frames, kicking each queue whose device wants it. */
  flush(): void {
    if (this.rxPosted) {
      this.rxPosted = false;
      if (this.rxq.publish()) kick(this.rx.kickFd);
    }
    if (this.txAdded) {
      this.txAdded = false;
      if (this.txq.publish()) kick(this.tx.kickFd);
    }
  }

  /**
   * Sleeps like a halted vCPU until the device interrupts (RX frames, or TX slots coming back
   * when `needTxSlots`) or `timeoutMs` passes. Re-arms interrupts and looks again first, so an
   * entry published before the re-arm is never slept through. Returns true when there is work.
   */
  wait(timeoutMs: number, needTxSlots = false): boolean {
    this.flush();
    if (this.rxq.pending > 0) return true;
    if (this.rxq.enableInterrupts()) return true;
    if (this.txq.enableInterruptsDelayed() && needTxSlots) return true;
    this.stats.waits++;
    const fired = timeoutMs === 0 ? 0 : waitCall(this.waitFds, timeoutMs);
    this.rxq.disableInterrupts();
    return fired !== 0 || this.rxq.pending > 0 || (needTxSlots && this.txq.pending > 0);
  }

  private repost(buf: number): void {
    const head = this.rxq.addBuf(this.rxArea.base + buf * this.rxArea.size, this.rxArea.size, true);
    if (head < 0) {
      this.rxSpare[this.rxSpareN++] = buf;
      return;
    }
    this.rxBufOfHead[head] = buf;
    this.rxPosted = true;
  }

  private refillRx(): void {
    while (this.rxSpareN > 0 && this.rxq.freeCount > 0) {
      const buf = this.rxSpare[--this.rxSpareN];
      const head = this.rxq.addBuf(this.rxArea.base + buf * this.rxArea.size, this.rxArea.size, true);
      this.rxBufOfHead[head] = buf;
      this.rxPosted = true;
    }
  }
}

// --- setup: negotiation and carving guest memory ------------------------------------------

/**
 * Brings `device` from reset to FEATURES_OK the way Linux does (virtio 1.x 3.1.1): reset,
 * ACKNOWLEDGE, DRIVER, features, FEATURES_OK. Takes what the device offers of `wanted` and
 * returns it; throws with the device's reason when FEATURES_OK does not stick.
 */
export function negotiate(device: VirtioNetDevice, wanted: bigint): bigint {
  device.status = 0;
  device.status = STATUS.ACKNOWLEDGE;
  device.status = STATUS.ACKNOWLEDGE | STATUS.DRIVER;
  const features = device.deviceFeatures & wanted;
  device.driverFeatures = features;
  device.status |= STATUS.FEATURES_OK;
  if (!(device.status & STATUS.FEATURES_OK)) throw new Error(`the device refused the features: ${device.featuresRefusal}`);
  return features;
}

/**
 * Hands out guest memory for rings and buffers, each piece inside one region, in address order
 * from `start` (skipping to the next region when the current one has no room).
 */
export class GuestAllocator {
  readonly memory: DriverMemory;
  private next: number;

  constructor(memory: DriverMemory | DriverMemoryInput, start = 0) {
    this.memory = driverMemory(memory);
    this.next = start;
  }

  /** `len` bytes aligned to `align` (a power of two) inside one region; returns the guest address. */
  alloc(len: number, align = 64): number {
    if (!Number.isSafeInteger(len) || len < 1) throw new RangeError(`alloc: len must be a positive integer, got ${len}`);
    for (const r of this.memory.regions) {
      if (r.end <= this.next) continue;
      const a = alignUp(Math.max(this.next, r.guestAddr), align);
      if (a + len <= r.end) {
        this.next = a + len;
        return a;
      }
    }
    throw new GuestAddressError(`guest memory has no room for ${len} more bytes (aligned to ${align}) after ${this.next}`);
  }

  /** A split ring of `size` entries, every part in one region (page-aligned, as legacy layouts put it). */
  ring(size: number): QueueAddrs {
    const l = DriverQueue.layout(0, size, 4096);
    const base = this.alloc(l.end, 4096);
    return { size, desc: base + l.desc, avail: base + l.avail, used: base + l.used };
  }

  /** A packed ring of `size` entries: the descriptor ring then the driver and device event areas, page-aligned. */
  packedRing(size: number): QueueAddrs {
    const l = PackedDriverQueue.layout(0, size);
    const base = this.alloc(l.end, 4096);
    return { size, desc: base + l.desc, avail: base + l.avail, used: base + l.used };
  }

  /** `count` buffers of `size` bytes in one region. */
  buffers(count: number, size: number): BufferArea {
    return { base: this.alloc(count * size, 64), count, size };
  }
}

export interface QueuePairLayout {
  /** Entries per ring (a power of two); default 256. */
  queueSize?: number;
  /** RX buffers (default queueSize) and their size (default: 2048 with MRG_RXBUF, else the largest frame the features allow). */
  rxBufCount?: number;
  rxBufSize?: number;
  /** TX slots (default queueSize) and their size, virtio_net_hdr included (default: hdrLen + 1518, or 64 KiB with HOST_TSO/USO). */
  txBufCount?: number;
  txBufSize?: number;
}

/**
 * For queue pair `pair` of a device past FEATURES_OK (and before DRIVER_OK): carves its rings and
 * buffers out of `alloc`, tells the device where the rings are (setQueue), and returns the options
 * for the NetQueuePair that drives it (here or in a Worker).
 */
export function setUpQueuePair(device: VirtioNetDevice, pair: number, alloc: GuestAllocator, layout: QueuePairLayout = {}): NetQueuePairOptions {
  const f = device.driverFeatures;
  const hdrLen = netHdrSize(f);
  const mergeable = has(f, 'MRG_RXBUF');
  const gsoIn = has(f, 'GUEST_TSO4') || has(f, 'GUEST_TSO6') || has(f, 'GUEST_UFO') || has(f, 'GUEST_USO4') || has(f, 'GUEST_USO6');
  const gsoOut = has(f, 'HOST_TSO4') || has(f, 'HOST_TSO6') || has(f, 'HOST_UFO') || has(f, 'HOST_USO');
  const mtu = has(f, 'MTU') ? device.config.getUint16(CONFIG.OFF_MTU, true) : 1500;
  const qsize = layout.queueSize ?? 256;
  // virtio 1.x 5.1.6.3.1: without MRG_RXBUF each buffer must hold the largest frame the features allow.
  const rxBufSize = layout.rxBufSize ?? (mergeable ? 2048 : gsoIn ? hdrLen + 65550 : hdrLen + 14 + 4 + Math.max(mtu, 1500));
  const txBufSize = layout.txBufSize ?? alignUp(hdrLen + 14 + 4 + (gsoOut ? 65535 : Math.max(mtu, 1500)), 64);
  const packed = has(f, 'RING_PACKED');
  const rx = packed ? alloc.packedRing(qsize) : alloc.ring(qsize);
  const tx = packed ? alloc.packedRing(qsize) : alloc.ring(qsize);
  const rxBuffers = alloc.buffers(layout.rxBufCount ?? qsize, rxBufSize);
  const txBuffers = alloc.buffers(layout.txBufCount ?? qsize, txBufSize);
  const setup = (q: QueueAddrs): QueueSetup => ({ size: q.size, desc: q.desc, avail: q.avail, used: q.used });
  device.setQueue(rxq(pair), setup(rx));
  device.setQueue(txq(pair), setup(tx));
  return {
    memory: alloc.memory,
    rx: { ...rx, ...device.notifier(rxq(pair)) },
    tx: { ...tx, ...device.notifier(txq(pair)) },
    rxBuffers,
    txBuffers,
    hdrLen,
    mergeable,
    eventIdx: has(f, 'RING_EVENT_IDX'),
    packed,
    inOrder: has(f, 'IN_ORDER'),
  };
}

/**
 * A per-queue reset on the driver's side, for queue pair `pair` driven by `qp` (virtio 1.2
 * §2.6.1.3.2): resets RX or TX virtqueue at the device, carves a new ring of `size` entries
 * (default: the old size) out of `alloc`, tells the device (setQueue), starts it in `qp`
 * (resetRing), enables it and publishes. The other queues keep running throughout. Returns the
 * TX frames that were queued and never sent (qp.stats.txReclaimedAtReset), or the RX frames
 * delivered but not yet received, dropped (qp.stats.rxDiscardedAtReset).
 */
export function resetQueue(device: VirtioNetDevice, pair: number, qp: NetQueuePair, which: 'rx' | 'tx', alloc: GuestAllocator, size?: number): number {
  const index = which === 'rx' ? rxq(pair) : txq(pair);
  const old = which === 'rx' ? qp.rxq : qp.txq;
  const qsize = size ?? old.size;
  device.resetQueue(index);
  const ring = has(device.driverFeatures, 'RING_PACKED') ? alloc.packedRing(qsize) : alloc.ring(qsize);
  device.setQueue(index, { size: ring.size, desc: ring.desc, avail: ring.avail, used: ring.used });
  const lost = qp.resetRing(which, { ...ring, ...device.notifier(index) });
  device.enableQueue(index);
  qp.flush();
  // The device looks at an enabled ring at once; the kick covers a worker asleep meanwhile.
  device.kick(index);
  return lost;
}

/** Zeroes a ring's three parts: a ring reused after a reset must not show the old one's indices or flags. */
function clearRing(mem: DriverMemory, q: QueueAddrs, packed: boolean): void {
  const parts: [number, number][] = packed
    ? [[q.desc, 16 * q.size], [q.avail, 4], [q.used, 4]]
    : [[q.desc, 16 * q.size], [q.avail, 6 + 2 * q.size], [q.used, 6 + 8 * q.size]];
  for (const [addr, len] of parts) {
    const r = mem.regionOf(addr, len);
    if (!r) throw new RangeError(`ring part [${addr}, ${addr + len}) is not inside one region of guest memory`);
    r.u8.fill(0, addr - r.guestAddr, addr - r.guestAddr + len);
  }
}

function areaView(mem: DriverMemory, what: string, a: BufferArea, minSize: number): Uint8Array {
  if (a === null || typeof a !== 'object') throw new TypeError(`${what} must be { base, count, size }`);
  if (!Number.isSafeInteger(a.count) || a.count < 1) throw new RangeError(`${what}.count must be a positive integer, got ${a.count}`);
  if (!Number.isSafeInteger(a.size) || a.size < minSize || a.size > 0xffffffff) throw new RangeError(`${what}.size must be an integer from ${minSize}, got ${a.size}`);
  const r: Region | undefined = mem.regionOf(a.base, a.count * a.size);
  if (!r) throw new RangeError(`${what} [${a.base}, ${a.base + a.count * a.size}) is not inside one region of guest memory`);
  return r.u8.subarray(a.base - r.guestAddr, a.base - r.guestAddr + a.count * a.size);
}

function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

function put16(u8: Uint8Array, o: number, v: number): void {
  u8[o] = v & 0xff;
  u8[o + 1] = (v >>> 8) & 0xff;
}

function get16(u8: Uint8Array, o: number): number {
  return u8[o] | (u8[o + 1] << 8);
}
