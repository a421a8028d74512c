// Guest memory as the driver sees it: a table of regions, each a
// SharedArrayBuffer placed at a guest physical address, and the translation
// from guest addresses to bytes the driver reads and writes. A ring part or a
// buffer the driver itself carves out lies inside one region; a buffer someone
// else hands in may cross adjacent regions, and read()/write() follow it.

import { types } from 'node:util';

import type { GuestMemory, WasmMemoryLike } from '../backend';

/** A region given by its buffer (as native code and Workers carry it): `buffer` holds [guestAddr, guestAddr + byteLength). */
export interface BufferRegion {
  guestAddr: number;
  buffer: SharedArrayBuffer;
}

/**
 * What the driver accepts as guest memory: the value given to the device's `memory` option (a
 * SharedArrayBuffer or shared WebAssembly.Memory at guest address 0, or `[{ guestAddr, memory }]`),
 * or regions given by buffer, `[{ guestAddr, buffer }]`.
 */
export type DriverMemoryInput = GuestMemory | readonly BufferRegion[];

/** One region of the table, with its byte view. */
export interface Region {
  readonly guestAddr: number;
  readonly size: number;
  /** First guest address after the region. */
  readonly end: number;
  readonly buffer: SharedArrayBuffer;
  /** The whole region; guest address a is u8[a - guestAddr]. */
  readonly u8: Uint8Array;
}

/** A guest address range the memory does not hold (a hole, or past the last region). */
export class GuestAddressError extends RangeError {
  override name = 'GuestAddressError';
}

/** The SharedArrayBuffer behind a region's memory as it is now (a WebAssembly.Memory's buffer is replaced when it grows). */
function sharedBuffer(m: unknown, i: number): SharedArrayBuffer {
  if (types.isSharedArrayBuffer(m)) return m;
  const b = (m as Partial<WasmMemoryLike> | null)?.buffer;
  if (m !== null && typeof m === 'object' && typeof (m as WasmMemoryLike).grow === 'function' && types.isSharedArrayBuffer(b)) return b;
  throw new TypeError(`region ${i}: memory must be a SharedArrayBuffer or a shared WebAssembly.Memory (the device reads it from other threads)`);
}

/** Guest addresses are below 2^53 here: JS numbers are exact up to there. */
const MAX_ADDR = Number.MAX_SAFE_INTEGER;

export class DriverMemory {
  /** Sorted by guestAddr, non-overlapping, none empty. */
  readonly regions: readonly Region[];
  /** Bytes of every region together. */
  readonly totalSize: number;

  constructor(input: DriverMemoryInput) {
    const list: readonly unknown[] = Array.isArray(input) ? input : [{ guestAddr: 0, memory: input }];
    if (list.length === 0) throw new TypeError('guest memory: a list of regions needs at least one');
    const regions: Region[] = list.map((r, i) => {
      if (r === null || typeof r !== 'object') throw new TypeError(`region ${i} must be { guestAddr, memory } or { guestAddr, buffer }`);
      const { guestAddr, memory, buffer: buf } = r as { guestAddr: number; memory?: unknown; buffer?: unknown };
      const buffer = sharedBuffer(buf ?? memory, i);
      if (!Number.isSafeInteger(guestAddr) || guestAddr < 0) throw new RangeError(`region ${i}: guestAddr must be a non-negative integer, got ${guestAddr}`);
      if (buffer.byteLength === 0) throw new RangeError(`region ${i} is empty`);
      if (guestAddr + buffer.byteLength > MAX_ADDR) throw new RangeError(`region ${i} ends past guest address 2^53`);
      return { guestAddr, size: buffer.byteLength, end: guestAddr + buffer.byteLength, buffer, u8: new Uint8Array(buffer) };
    });
    regions.sort((a, b) => a.guestAddr - b.guestAddr);
    for (let i = 1; i < regions.length; i++) {
      const p = regions[i - 1];
      const r = regions[i];
      if (r.guestAddr < p.end) {
        throw new RangeError(`regions overlap: [${hex(p.guestAddr)}, ${hex(p.end)}) and [${hex(r.guestAddr)}, ${hex(r.end)})`);
      }
    }
    this.regions = regions;
    this.totalSize = regions.reduce((n, r) => n + r.size, 0);
  }

  /** Index of the region holding guest address `addr`, or -1 (a hole or outside). */
  regionIndex(addr: number): number {
    const rs = this.regions;
    // Few regions (RAM below and above a PCI hole): a linear scan beats a binary search.
    for (let i = 0; i < rs.length; i++) {
      const r = rs[i];
      if (addr < r.guestAddr) return -1;
      if (addr < r.end) return i;
    }
    return -1;
  }

  /** The region holding all of [addr, addr + len), or undefined when the range leaves one region. */
  regionOf(addr: number, len: number): Region | undefined {
    if (!Number.isSafeInteger(addr) || addr < 0 || !Number.isSafeInteger(len) || len < 0) return undefined;
    const i = this.regionIndex(addr);
    if (i < 0) return undefined;
    const r = this.regions[i];
    return addr + len <= r.end ? r : undefined;
  }

  /** Whether every byte of [addr, addr + len) is guest memory (adjacent regions may share the range; no holes). */
  contains(addr: number, len: number): boolean {
    if (!Number.isSafeInteger(addr) || addr < 0 || !Number.isSafeInteger(len) || len < 0) return false;
    if (len === 0) return this.regionIndex(addr) >= 0;
    let i = this.regionIndex(addr);
    if (i < 0) return false;
    const end = addr + len;
    for (;;) {
      const r = this.regions[i];
      if (end <= r.end) return true;
      const next = this.regions[i + 1];
      if (next === undefined || next.guestAddr !== r.end) return false;
      i++;
    }
  }

  /**
   * A view of [addr, addr + len) that writes through to guest memory. The range must lie in one
   * region (ring parts and the driver's own buffers do); read()/write() handle ranges that cross.
   */
  view(addr: number, len: number): Uint8Array {
    const r = this.regionOf(addr, len);
    if (!r) throw new GuestAddressError(`guest range [${hex(addr)}, ${hex(addr + len)}) is not inside one memory region`);
    return r.u8.subarray(addr - r.guestAddr, addr - r.guestAddr + len);
  }

  /** Copies guest bytes [addr, addr + dst.length) into `dst`, across adjacent regions. Throws on a hole. */
  read(addr: number, dst: Uint8Array): Uint8Array {
    this.walk(addr, dst.length, 'read', (r, off, done, n) => dst.set(r.u8.subarray(off, off + n), done));
    return dst;
  }

  /** Copies `src` into guest memory at `addr`, across adjacent regions. Throws on a hole. */
  write(addr: number, src: Uint8Array): void {
    this.walk(addr, src.length, 'write', (r, off, done, n) => r.u8.set(src.subarray(done, done + n), off));
  }

  /** Sets `len` guest bytes at `addr` to `value`, across adjacent regions. */
  fill(addr: number, len: number, value = 0): void {
    this.walk(addr, len, 'fill', (r, off, _done, n) => r.u8.fill(value, off, off + n));
  }

  /** Little-endian 16-bit read at any guest address (may straddle two adjacent regions). */
  getUint16(addr: number): number {
    const r = this.regionOf(addr, 2);
    if (r) return r.u8[addr - r.guestAddr] | (r.u8[addr - r.guestAddr + 1] << 8);
    const b = this.read(addr, new Uint8Array(2));
    return b[0] | (b[1] << 8);
  }

  setUint16(addr: number, v: number): void {
    const r = this.regionOf(addr, 2);
    if (r) {
      r.u8[addr - r.guestAddr] = v & 0xff;
      r.u8[addr - r.guestAddr + 1] = (v >>> 8) & 0xff;
    } else this.write(addr, new Uint8Array([v & 0xff, (v >>> 8) & 0xff]));
  }

  /** Calls fn(region, offset in region, bytes done so far, bytes here) for each piece of [addr, addr + len). */
  private walk(addr: number, len: number, what: string, fn: (r: Region, off: number, done: number, n: number) => void): void {
    if (!Number.isSafeInteger(addr) || addr < 0 || !Number.isSafeInteger(len) || len < 0) {
      throw new GuestAddressError(`${what}: bad guest range at ${addr}, ${len} bytes`);
    }
    if (len === 0) return;
    let i = this.regionIndex(addr);
    if (i < 0) throw new GuestAddressError(`${what}: guest address ${hex(addr)} is not in guest memory`);
    let done = 0;
    let a = addr;
    for (;;) {
      const r = this.regions[i];
      const n = Math.min(len - done, r.end - a);
      fn(r, a - r.guestAddr, done, n);
      done += n;
      a += n;
      if (done === len) return;
      const next = this.regions[i + 1];
      if (next === undefined || next.guestAddr !== a) {
        throw new GuestAddressError(`${what}: guest range [${hex(addr)}, ${hex(addr + len)}) runs into a hole at ${hex(a)}`);
      }
      i++;
    }
  }
}

/**
 * `m` as a DriverMemory. A DriverMemory is returned as is; one that crossed a thread boundary
 * (postMessage/workerData clone it into a plain `{ regions }` object) is rebuilt from its regions.
 */
export function driverMemory(m: DriverMemory | DriverMemoryInput | { regions: readonly BufferRegion[] }): DriverMemory {
  if (m instanceof DriverMemory) return m;
  const regions = !Array.isArray(m) && !types.isSharedArrayBuffer(m) ? (m as { regions?: unknown } | null)?.regions : undefined;
  if (Array.isArray(regions)) return new DriverMemory(regions.map((r: BufferRegion) => ({ guestAddr: r.guestAddr, buffer: r.buffer })));
  return new DriverMemory(m as DriverMemoryInput);
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}
