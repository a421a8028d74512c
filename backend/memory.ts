// Guest memory as the public API takes it — one SharedArrayBuffer or shared
// WebAssembly.Memory at guest address 0, or a list of regions — checked here
// for what TypeScript can see, and turned into the region table that native
// code owns (native/memory.h), which checks the rest (overlap, wrap, real
// SharedArrayBuffers and not look-alikes).

import { types } from 'node:util';

import { InvalidArgumentError } from './errors';
import type { NativeBufferRegion } from './native';

/** The part of WebAssembly.Memory the device uses (Node's types do not declare WebAssembly). */
export interface WasmMemoryLike {
  readonly buffer: ArrayBuffer | SharedArrayBuffer;
  grow(delta: number): number;
}

/** One region of guest memory: `memory` appears in the guest at `guestAddr`. */
export interface MemoryRegion {
  guestAddr: number;
  memory: SharedArrayBuffer | WasmMemoryLike;
}

/**
 * Guest memory: a SharedArrayBuffer or shared WebAssembly.Memory (one region at guest
 * address 0), or a list of regions (RAM below and above a PCI hole, hot-plugged memory).
 */
export type GuestMemory = SharedArrayBuffer | WasmMemoryLike | readonly MemoryRegion[];

function wasmMemoryClass(): (new (...a: never[]) => WasmMemoryLike) | undefined {
  return (globalThis as { WebAssembly?: { Memory: new (...a: never[]) => WasmMemoryLike } }).WebAssembly?.Memory;
}

/** The SharedArrayBuffer behind one region's memory, as it is now (a Memory's buffer changes when it grows). */
function sharedBuffer(m: unknown, where: string): SharedArrayBuffer {
  if (types.isSharedArrayBuffer(m)) return m;
  const Memory = wasmMemoryClass();
  if (Memory && m instanceof Memory) {
    const b = m.buffer;
    if (types.isSharedArrayBuffer(b)) return b;
    throw new InvalidArgumentError(`${where}: a WebAssembly.Memory must be created with { shared: true } so device workers can use it`);
  }
  throw new InvalidArgumentError(
    `${where} must be a SharedArrayBuffer or a shared WebAssembly.Memory (an ArrayBuffer, a typed array or a Proxy cannot be shared with device threads), got ${describe(m)}`,
  );
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (types.isProxy(v)) return 'a Proxy';
  if (types.isArrayBuffer(v)) return 'an ArrayBuffer';
  if (ArrayBuffer.isView(v)) return `a ${(v as object).constructor.name}`;
  return typeof v === 'object' ? `an object (${(v as object).constructor?.name ?? 'no prototype'})` : typeof v;
}

/** The regions of a memory option, as native code takes them. Throws InvalidArgumentError. */
export function toNativeRegions(m: unknown, what = "option 'memory'"): NativeBufferRegion[] {
  if (!Array.isArray(m)) return [{ guestAddr: 0, buffer: sharedBuffer(m, what) }];
  if (m.length === 0) throw new InvalidArgumentError(`${what}: a list of regions needs at least one`);
  return m.map((r: unknown, i) => {
    const where = `${what}[${i}]`;
    if (!r || typeof r !== 'object') throw new InvalidArgumentError(`${where} must be { guestAddr, memory }`);
    const { guestAddr, memory } = r as Partial<MemoryRegion>;
    if (typeof guestAddr !== 'number' || !Number.isSafeInteger(guestAddr) || guestAddr < 0) {
      throw new InvalidArgumentError(`${where}.guestAddr must be a non-negative safe integer, got ${String(guestAddr)}`);
    }
    return { guestAddr, buffer: sharedBuffer(memory, `${where}.memory`) };
  });
}
