// The data plane behind a vhost-user session: the same TAP, engines, offload
// programming, multiqueue attach/detach/steering and statistics as the
// embedded device (backend/datapath.ts), on guest memory mapped from the
// front end's fds. One per TAP; sessions come and go, the TAP stays.

import * as fs from 'node:fs';

import { TapDataPath, DeviceStats } from '../datapath';
import { convert, InvalidArgumentError, NamespaceError, native } from '../errors';
import { Capabilities } from '../features';
import { addon, NativeGuestMemory } from '../native';
import { bits, TUN } from '../virtio';
import { MemoryRegion, RingLayout, RingStart, VhostUserBackend } from './session';

export interface TapBackendOptions {
  /** TAP device name (created if it does not exist), at most 15 bytes. */
  tap: string;
  /** Network namespace (a name under /run/netns) to create the TAP in; default: this process's. */
  netns?: string;
  /** Queue pairs (TAP queues), 1 .. 256. More than 1 offers VIRTIO_NET_F_MQ. */
  queuePairs?: number;
  /** Mask applied to the features offered (e.g. to leave offloads out). */
  features?: bigint;
  /** Busy-poll window of each worker, microseconds (0 .. 1000000, default 0). */
  busyPollUs?: number;
  /** 'auto' (io_uring where the kernel allows it) or 'readv'. */
  io?: 'auto' | 'readv';
  /** IFF_NAPI on the TAP. */
  napi?: boolean;
  /**
   * MTU set on the TAP (68 .. 65535); default: the kernel's (1500). Give the guest's MTU (QEMU's
   * host_mtu): the protocol does not tell the back end, and without mergeable buffers or GSO
   * it sizes the largest frame a guest's RX buffer must hold.
   */
  mtu?: number;
}

/**
 * Offered whatever the TAP can do: the ring features the engines implement (both ring layouts
 * and IN_ORDER among them), MRG_RXBUF;
 * GUEST_ANNOUNCE (the VMM announces the guest itself over its control queue; without it QEMU
 * would want SEND_RARP); CTRL_VQ, which the VMM serves itself and never hands over (QEMU
 * decides it alone; cloud-hypervisor keeps a control queue, and with it MQ, only when the
 * back end acks the bit). Not offered: the other CTRL_* commands, STATUS, MAC and MTU (the
 * VMM's config space and options), anything not implemented.
 */
/** What GET_FEATURES' u64 can name. */
export const VHOST_USER_FEATURE_MASK: bigint = (1n << 64n) - 1n;

export const VHOST_USER_BASE_FEATURES: bigint = bits('VERSION_1', 'MRG_RXBUF', 'RING_EVENT_IDX', 'RING_INDIRECT_DESC', 'RING_PACKED', 'IN_ORDER', 'GUEST_ANNOUNCE', 'CTRL_VQ');

const KNOWN_OPTIONS = new Set(['tap', 'netns', 'queuePairs', 'features', 'busyPollUs', 'io', 'napi', 'mtu']);
const MAX_BUSY_POLL_US = 1_000_000;
/** The TAP's MTU when none is given: Ethernet's, the kernel's default for a new TAP. */
const DEFAULT_MTU = 1500;

export class TapBackend implements VhostUserBackend {
  readonly queuePairs: number;
  readonly features: bigint;
  readonly tapName: string;
  readonly netns: string | undefined;
  private readonly dp: TapDataPath;
  private readonly mtu: number;
  private memory: NativeGuestMemory | undefined;
  private carrier = false;
  private closed = false;

  constructor(opts: TapBackendOptions) {
    if (opts === null || typeof opts !== 'object') throw new InvalidArgumentError('TapBackend needs an options object { tap, ... }');
    for (const k of Object.keys(opts)) {
      if (!KNOWN_OPTIONS.has(k)) throw new InvalidArgumentError(`unknown option '${k}'; known options: ${[...KNOWN_OPTIONS].join(', ')}`);
    }
    if (typeof opts.tap !== 'string' || opts.tap.length === 0 || Buffer.byteLength(opts.tap) > TUN.MAX_NAME || !/^[A-Za-z0-9_.-]+$/.test(opts.tap)) {
      throw new InvalidArgumentError(`TAP name '${String(opts.tap)}' must be 1 to ${TUN.MAX_NAME} bytes of letters, digits, '_', '.' and '-'`);
    }
    this.queuePairs = opts.queuePairs ?? 1;
    if (!Number.isInteger(this.queuePairs) || this.queuePairs < 1 || this.queuePairs > TUN.MAX_QUEUES) {
      throw new InvalidArgumentError(`queuePairs must be an integer from 1 to ${TUN.MAX_QUEUES} (the TAP's queue limit), got ${opts.queuePairs}`);
    }
    if (opts.features !== undefined && typeof opts.features !== 'bigint') throw new InvalidArgumentError("option 'features' must be a bigint mask");
    const busyPollUs = opts.busyPollUs ?? 0;
    if (!Number.isInteger(busyPollUs) || busyPollUs < 0 || busyPollUs > MAX_BUSY_POLL_US) {
      throw new InvalidArgumentError(`busyPollUs must be an integer from 0 to ${MAX_BUSY_POLL_US} (microseconds), got ${opts.busyPollUs}`);
    }
    if (opts.io !== undefined && opts.io !== 'auto' && opts.io !== 'readv') throw new InvalidArgumentError("option 'io' must be 'auto' or 'readv'");
    this.mtu = opts.mtu ?? DEFAULT_MTU;
    if (!Number.isInteger(this.mtu) || this.mtu < 68 || this.mtu > 65535) throw new InvalidArgumentError(`mtu must be an integer from 68 to 65535, got ${opts.mtu}`);
    let netnsPath: string | null = null;
    if (opts.netns !== undefined) {
      if (typeof opts.netns !== 'string' || !/^[A-Za-z0-9_.-]+$/.test(opts.netns)) throw new InvalidArgumentError(`invalid network namespace name '${String(opts.netns)}'`);
      netnsPath = `/run/netns/${opts.netns}`;
      if (!fs.existsSync(netnsPath)) throw new NamespaceError(`network namespace '${opts.netns}' does not exist (create it with: ip netns add ${opts.netns})`);
    }
    this.netns = opts.netns;
    this.dp = TapDataPath.open({
      tap: opts.tap,
      netnsPath,
      queuePairs: this.queuePairs,
      tapFlags: opts.napi ? TUN.IFF_NAPI : 0,
      mtu: opts.mtu,
      busyPollUs,
      io: opts.io ?? 'auto',
    });
    this.tapName = this.dp.tapName;
    try {
      this.detachIdle();
    } catch (e) {
      this.dp.close();
      throw e;
    }
    // GET_FEATURES / SET_FEATURES carry a u64: features above 63 (the UDP tunnel offloads,
    // 65..68) cannot be offered over this protocol.
    let offered = (VHOST_USER_BASE_FEATURES | this.dp.offloads) & VHOST_USER_FEATURE_MASK;
    if (this.queuePairs > 1) offered |= bits('MQ');
    if (opts.features !== undefined) offered &= opts.features;
    this.features = offered;
  }

  /** What the running kernel's TAP can offload, and why anything is missing. */
  capabilities(): Capabilities {
    return { offloads: [...this.dp.caps.offloads], missing: this.dp.caps.missing.map((m) => ({ ...m })) };
  }

  /** Counters of every queue over every session so far (monotonic). */
  stats(): DeviceStats {
    return this.dp.stats();
  }

  /** Whether pair p's worker runs now. */
  running(p: number): boolean {
    return this.dp.running(p);
  }

  /** The regions mapped now (none between sessions). */
  mappedRegions(): { guestAddr: number; size: number; userAddr: number }[] {
    return this.memory?.regions() ?? [];
  }

  // --- VhostUserBackend ------------------------------------------------------------------

  setMemory(regions: MemoryRegion[], fds: number[]): void {
    this.assertOpen();
    const a = addon();
    // A session's first table gets a fresh GuestMemory: the previous session's is gone whole.
    const mem = this.memory ?? new a.GuestMemory();
    native('guest memory', () => mem.replaceFds(regions.map((r, i) => ({ ...r, fd: fds[i] }))));
    this.memory = mem;
    this.dp.memory = mem;
    // Running workers take the new table between batches; sleeping ones now.
    this.dp.wake();
  }

  setDirtyLog(fd: number, mmapSize: number, mmapOffset: number): void {
    this.assertOpen();
    // A log before any memory table (no front end does this, but nothing forbids it) is kept
    // by the GuestMemory the first table then fills.
    const mem = this.memory ?? new (addon().GuestMemory)();
    native('dirty log', () => mem.setDirtyLog(fd, mmapSize, mmapOffset));
    this.memory = mem;
  }

  dirtyLog(on: boolean): void {
    if (!this.memory) {
      if (on) throw new Error('no dirty log was given (SET_LOG_BASE)');
      return;
    }
    const mem = this.memory;
    native('dirty log', () => mem.dirtyLog(on));
  }

  clearMemory(): void {
    // The session stopped every pair first, and stopped engines are closed: nothing else
    // holds the table, so the mappings go now.
    this.memory?.clearDirtyLog();
    this.memory?.clear();
    this.memory = undefined;
    this.dp.memory = undefined;
    if (this.closed) return;
    if (this.carrier) {
      this.carrier = false;
      this.dp.setCarrier(false);
    }
    this.detachIdle();
  }

  checkRings(layouts: RingLayout[]): { rule: string; detail: string } | null {
    if (!this.memory) return { rule: 'ring-out-of-bounds', detail: 'no memory table yet (SET_MEM_TABLE)' };
    return this.memory.checkRings(layouts);
  }

  readUsedIdx(layout: RingLayout): number {
    return this.memory!.read(layout.used + 2, 2).readUInt16LE(0);
  }

  setFeatures(features: bigint): void {
    this.assertOpen();
    this.dp.program(features, this.mtu);
  }

  startPair(pair: number, rx: RingStart, tx: RingStart, onBroken: (ring: number, rule: string, detail: string) => void): void {
    this.assertOpen();
    this.dp.startPair(pair, { rx, tx, onBroken });
    if (!this.carrier) {
      // The link comes up with the first running pair and stays up until the session ends:
      // a pair restarting for a new call fd must not flap it.
      this.dp.setCarrier(true);
      this.carrier = true;
    }
  }

  stopPair(pair: number, disable: boolean): { rx: number; tx: number; rxUsed: number; txUsed: number } {
    const pos = disable ? this.dp.setPairs(new Map([[pair, null]])).get(pair) : this.dp.stopPair(pair);
    if (!pos) throw new Error(`queue pair ${pair} was not running`);
    // Packed rings keep their used position (with its wrap counter) in the device alone.
    return { rx: pos.rx.lastAvailIdx, tx: pos.tx.lastAvailIdx, rxUsed: pos.rx.usedIdx, txUsed: pos.tx.usedIdx };
  }

  setCallFd(pair: number, ring: 'rx' | 'tx', fd: number): void {
    this.assertOpen();
    this.dp.setCallFd(pair, ring, fd);
  }

  faultFd(): number {
    return this.memory ? this.memory.faultFd() : -1;
  }

  faulted(): number[] {
    return this.memory?.faulted() ?? [];
  }

  sendFrame(frame: Buffer): void {
    this.assertOpen();
    this.dp.writeFrame(frame);
  }

  /** Stops every worker, unmaps, closes the TAP (it disappears). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    let failure: unknown;
    try {
      this.dp.stopAll();
      this.clearMemory();
    } catch (e) {
      failure = e;
    }
    this.dp.close();
    if (failure) throw convert(`TAP '${this.tapName}'`, failure);
  }

  /**
   * Detaches the TAP queues of pairs that do not run (never queue 0): the kernel's steering
   * would otherwise park frames on a queue no worker reads (a front end that starts fewer
   * pairs than the TAP has). startPair attaches a pair's queue again.
   */
  private detachIdle(): void {
    const idle = new Map<number, null>();
    for (let p = 1; p < this.queuePairs; p++) if (!this.dp.running(p)) idle.set(p, null);
    if (idle.size) this.dp.setPairs(idle);
  }

  private assertOpen(): void {
    if (this.closed) throw new Error('the back end is closed');
  }
}
