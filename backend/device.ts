// The virtio-net device model: feature negotiation, device status, config
// space, queue setup, the control queue, and when the TAP is programmed and
// which pairs run. The TAP and the engines themselves are datapath.ts's,
// shared with the vhost-user back end. The only class users touch.

import { EventEmitter } from 'node:events';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';

import { ControlQueueServer } from './ctrlq';
import { DeviceStats, PairSetup, RingPosition, TapDataPath } from './datapath';
import { convert, DeviceStateError, InvalidArgumentError, NamespaceError, native, TapError, VirtioNetError } from './errors';
import { BASE_FEATURES, Capabilities, GUEST_OFFLOAD_FEATURES, MQ_FEATURES, offloadsFromWord, validateDriverFeatures } from './features';
import { GuestMemory, toNativeRegions } from './memory';
import { addon, CtrlAnswer, NativeCtrlCommand, NativeGuestMemory } from './native';
import { RxFilter, RxFilterState } from './rxfilter';
import { decodeHashConfig, decodeRssConfig, RSS_MAX_INDIRECTION_TABLE_LENGTH, RSS_MAX_KEY_SIZE, RSS_OFF, RssConfig, SUPPORTED_HASH_TYPES } from './rss';
import { bit, bits, CONFIG, CTRL, ctrlq, has, PACKED_RING, STATUS, TUN } from './virtio';

export type { DeviceStats, QueueStats } from './datapath';

export interface VirtioNetDeviceOptions {
  /**
   * Guest memory: a SharedArrayBuffer or shared WebAssembly.Memory (one region at guest
   * address 0), or a list of regions `[{ guestAddr, memory }]`. The device keeps raw pointers
   * into these buffers (it holds the buffers themselves, never a copy).
   */
  memory: GuestMemory;
  /** TAP device name (created if it does not exist), at most 15 bytes. */
  tap: string;
  /** Network namespace (a name under /run/netns) to create the TAP in; default: this process's. */
  netns?: string;
  /** Queue pairs (TAP queues); 1 .. 256. More than 1 offers VIRTIO_NET_F_MQ. */
  queuePairs?: number;
  /** The guest's MAC address, reported in config space; default: a random locally administered one. */
  mac?: string;
  /** MTU reported to the guest (VIRTIO_NET_F_MTU) and set on the TAP; 68 .. 65535. */
  mtu?: number;
  /** Mask applied to what the device would offer. */
  features?: bigint;
  /** Busy-poll window in microseconds before a worker sleeps (as vhost-net's busyloop_timeout); 0 .. 1000000, default 0 (off). */
  busyPollUs?: number;
  /** Open the TAP with IFF_NAPI: frames the guest sends go through NAPI/GRO in the kernel; default false. */
  napi?: boolean;
  /** Data path I/O: 'auto' (default) per direction io_uring batching or readv/writev, whichever costs less CPU per frame on this machine (measured while running); 'readv' one readv/writev per frame; stats().io says which runs. */
  io?: 'auto' | 'readv';
  /**
   * io_uring with a kernel thread polling the submission ring (IORING_SETUP_SQPOLL), opt-in:
   * costs a core per queue pair while busy; see README. stats().io says 'io_uring sqpoll' when it runs.
   */
  sqpoll?: boolean;
  /**
   * Offer VIRTIO_NET_F_HASH_REPORT: a 20-byte net header whose hash_value / hash_report the
   * device fills for every received frame from the guest's key and hash types (HASH_CONFIG,
   * or RSS_CONFIG with RSS). Default false.
   */
  hashReport?: boolean;
  /**
   * Offer VIRTIO_NET_F_RSS (RSS_CONFIG: key, hash types, indirection table, max_tx_vq).
   * Experimental, default false: the configuration is checked, sets the active pairs and
   * drives hash reports, but the queue a frame lands on is still the TAP's own choice.
   */
  rss?: boolean;
}

/** Where a virtqueue lives: its size (a power of two, 1..32768) and the guest addresses of its three parts. */
export interface QueueSetup {
  size: number;
  desc: number;
  avail: number;
  used: number;
  /**
   * Set by the device, not the caller: the driver negotiated VIRTIO_F_RING_PACKED, so desc,
   * avail and used are the descriptor ring and the driver and device event suppression areas,
   * and the size need not be a power of two.
   */
  packed?: boolean;
}

/** The events a VirtioNetDevice emits and their arguments. */
export interface VirtioNetDeviceEvents {
  /** The device signalled queue `queue`'s call eventfd (emitted only while someone listens). */
  interrupt: [queue: number];
  /** The guest broke a virtio rule on a queue: it stopped and DEVICE_NEEDS_RESET is set. */
  'needs-reset': [error: VirtioNetError];
  /** Config space changed (link, announce, needs-reset): raise the config-change interrupt. */
  config: [];
  /** The guest changed the number of active queue pairs (VQ_PAIRS_SET). */
  'queue-pairs': [pairs: number];
  /** The guest changed RX modes, MAC tables or VLANs. */
  'rx-filter': [state: RxFilterState];
  /**
   * The guest set interrupt coalescing (0 in either field: off) for all RX or all TX queues
   * (NOTF_COAL RX_SET / TX_SET), or for one virtqueue by index (VQ_NOTF_COAL VQ_SET).
   */
  coalescing: [change: { queues: 'rx' | 'tx' | number; maxPackets: number; maxUsecs: number }];
  /** Something went wrong that does not stop the device (e.g. a control command the TAP refused). */
  warning: [error: Error];
  /** The guest's RSS_CONFIG or HASH_CONFIG was accepted (after its pairs run): what it set. */
  rss: [config: RssConfig];
}

type DeviceEvent = keyof VirtioNetDeviceEvents;
type DeviceListener<K extends DeviceEvent> = (...args: VirtioNetDeviceEvents[K]) => void;

// Typed overloads for the events above; EventEmitter's own signatures stay for anything else.
/* eslint-disable @typescript-eslint/no-explicit-any */
export interface VirtioNetDevice {
  on<K extends DeviceEvent>(event: K, listener: DeviceListener<K>): this;
  on(event: string | symbol, listener: (...args: any[]) => void): this;
  once<K extends DeviceEvent>(event: K, listener: DeviceListener<K>): this;
  once(event: string | symbol, listener: (...args: any[]) => void): this;
  off<K extends DeviceEvent>(event: K, listener: DeviceListener<K>): this;
  off(event: string | symbol, listener: (...args: any[]) => void): this;
  addListener<K extends DeviceEvent>(event: K, listener: DeviceListener<K>): this;
  addListener(event: string | symbol, listener: (...args: any[]) => void): this;
  removeListener<K extends DeviceEvent>(event: K, listener: DeviceListener<K>): this;
  removeListener(event: string | symbol, listener: (...args: any[]) => void): this;
  emit<K extends DeviceEvent>(event: K, ...args: VirtioNetDeviceEvents[K]): boolean;
  emit(event: string | symbol, ...args: any[]): boolean;
}
/* eslint-enable @typescript-eslint/no-explicit-any */

const KNOWN_OPTIONS = new Set(['memory', 'tap', 'netns', 'queuePairs', 'mac', 'mtu', 'features', 'busyPollUs', 'napi', 'io', 'sqpoll', 'hashReport', 'rss']);

/** Longest busy-poll window accepted: beyond a second it is a spinning thread, not a latency trade. */
const MAX_BUSY_POLL_US = 1_000_000;

/** The largest feature mask: virtio features are 64 bits. */
// virtio 1.4 defines features up to bit 127 (driver_feature_select 0..3); the tunnel
// offloads are bits 65..68.
const MAX_FEATURES = (1n << 128n) - 1n;

/** Eventfds one waitCall() takes (its result is a 32-bit mask). */
const WAIT_FDS = 32;

/** Default MTU when none is given: Ethernet's. */
const DEFAULT_MTU = 1500;

/** Period of the idle timer that keeps the event loop alive: the longest Node allows (~24.8 days). */
const KEEP_ALIVE_MS = 2 ** 31 - 1;

export class VirtioNetDevice extends EventEmitter {
  readonly deviceFeatures: bigint;
  readonly config: DataView;
  readonly queuePairs: number;
  /** The TAP's name as the kernel reports it. */
  readonly tapName: string;
  readonly netns: string | undefined;

  private _driverFeatures = 0n;
  private _status = 0;
  private readonly memory: NativeGuestMemory;
  private readonly netnsPath: string | null;
  /** The TAP, its queues and the engines serving them. */
  private readonly dp: TapDataPath;
  private readonly kickFds: number[] = [];
  private readonly callFds: number[] = [];
  private readonly queues: (QueueSetup | undefined)[];
  /** Ring positions of stopped queues, so a pair restarted by VQ_PAIRS_SET resumes where it was. */
  private readonly positions: Map<number, RingPosition> = new Map();
  /** Virtqueues reset by resetQueue() and not yet enabled again. */
  private readonly resetQueues = new Set<number>();
  private readonly mtu: number;
  private readonly macBytes: Uint8Array;
  private ctrl: ControlQueueServer | undefined;
  private ctrlWatcher: { close(): void } | undefined;
  private callWatchers: { close(): void }[] = [];
  /**
   * Keeps the process alive while the device is open, as a net.Server does: the workers are
   * native threads and the eventfd watchers are unreferenced, which the event loop cannot see.
   */
  private readonly keepAlive: NodeJS.Timeout;
  private activePairs = 1;
  /** The guest's last accepted RSS_CONFIG / HASH_CONFIG (RSS_OFF after reset). */
  private rss: RssConfig = RSS_OFF;
  private closed = false;
  private featuresError: string | null = null;
  /**
   * Bumped at every reset: an engine's rule-violation report crosses threads and may arrive
   * after the driver reset the device, so it carries the session it belongs to.
   */
  private session = 0;
  readonly rxFilter = new RxFilter();

  constructor(opts: VirtioNetDeviceOptions) {
    super();
    if (opts === null || typeof opts !== 'object') {
      throw new InvalidArgumentError(`VirtioNetDevice needs an options object { memory, tap, ... }, got ${opts === null ? 'null' : typeof opts}`);
    }
    for (const k of Object.keys(opts)) {
      if (!KNOWN_OPTIONS.has(k)) throw new InvalidArgumentError(`unknown option '${k}'; known options: ${[...KNOWN_OPTIONS].join(', ')}`);
    }
    this.memory = native('guest memory', () => new (addon().GuestMemory)(toNativeRegions(opts.memory)));
    if (typeof opts.tap !== 'string' || opts.tap.length === 0) throw new InvalidArgumentError("option 'tap' must be a non-empty TAP device name");
    if (Buffer.byteLength(opts.tap) > TUN.MAX_NAME) {
      throw new InvalidArgumentError(`TAP name '${opts.tap}' is ${Buffer.byteLength(opts.tap)} bytes; Linux allows at most ${TUN.MAX_NAME}`);
    }
    if (!/^[A-Za-z0-9_.-]+$/.test(opts.tap)) throw new InvalidArgumentError(`TAP name '${opts.tap}' may contain only letters, digits, '_', '.' and '-'`);
    this.queuePairs = opts.queuePairs ?? 1;
    if (!Number.isInteger(this.queuePairs) || this.queuePairs < 1 || this.queuePairs > TUN.MAX_QUEUES) {
      throw new InvalidArgumentError(`queuePairs must be an integer from 1 to ${TUN.MAX_QUEUES} (the TAP's queue limit), got ${opts.queuePairs}`);
    }
    this.mtu = opts.mtu ?? DEFAULT_MTU;
    if (!Number.isInteger(this.mtu) || this.mtu < 68 || this.mtu > 65535) throw new InvalidArgumentError(`mtu must be an integer from 68 to 65535, got ${opts.mtu}`);
    this.macBytes = opts.mac === undefined ? randomMac() : parseMacOption(opts.mac);
    if (opts.features !== undefined && typeof opts.features !== 'bigint') throw new InvalidArgumentError("option 'features' must be a bigint mask");
    const busyPollUs = opts.busyPollUs ?? 0;
    if (!Number.isInteger(busyPollUs) || busyPollUs < 0 || busyPollUs > MAX_BUSY_POLL_US) {
      throw new InvalidArgumentError(`busyPollUs must be an integer from 0 to ${MAX_BUSY_POLL_US} (microseconds), got ${opts.busyPollUs}`);
    }
    if (opts.napi !== undefined && typeof opts.napi !== 'boolean') throw new InvalidArgumentError("option 'napi' must be a boolean");
    if (opts.io !== undefined && opts.io !== 'auto' && opts.io !== 'readv') throw new InvalidArgumentError("option 'io' must be 'auto' or 'readv'");
    if (opts.sqpoll !== undefined && typeof opts.sqpoll !== 'boolean') throw new InvalidArgumentError("option 'sqpoll' must be a boolean");
    const tapFlags = opts.napi ? TUN.IFF_NAPI : 0;

    this.netns = opts.netns;
    this.netnsPath = null;
    if (opts.netns !== undefined) {
      if (typeof opts.netns !== 'string' || !/^[A-Za-z0-9_.-]+$/.test(opts.netns)) throw new InvalidArgumentError(`invalid network namespace name '${opts.netns}'`);
      this.netnsPath = `/run/netns/${opts.netns}`;
      if (!fs.existsSync(this.netnsPath)) throw new NamespaceError(`network namespace '${opts.netns}' does not exist (create it with: ip netns add ${opts.netns})`);
    }

    const a = addon();
    this.dp = TapDataPath.open({ tap: opts.tap, netnsPath: this.netnsPath, queuePairs: this.queuePairs, tapFlags, mtu: this.mtu, busyPollUs, io: opts.io ?? 'auto', sqpoll: opts.sqpoll ?? false });
    this.dp.memory = this.memory;
    this.tapName = this.dp.tapName;
    let offered = BASE_FEATURES | this.dp.offloads;
    if (this.queuePairs > 1) offered |= MQ_FEATURES;
    if (opts.hashReport !== undefined && typeof opts.hashReport !== 'boolean') throw new InvalidArgumentError("option 'hashReport' must be a boolean");
    if (opts.rss !== undefined && typeof opts.rss !== 'boolean') throw new InvalidArgumentError("option 'rss' must be a boolean");
    if (opts.hashReport) offered |= bit('HASH_REPORT');
    if (opts.rss) offered |= bit('RSS');
    if (opts.features !== undefined) offered &= opts.features;
    this.deviceFeatures = offered;
    try {
      for (let i = 0; i <= 2 * this.queuePairs; i++) {
        this.kickFds.push(a.eventfd());
        this.callFds.push(a.eventfd());
      }
    } catch (e) {
      this.releaseFds();
      throw convert('eventfd', e);
    }
    this.queues = new Array(2 * this.queuePairs + 1).fill(undefined);
    // The RSS fields exist in config space only when a feature that has them is offered.
    this.config = new DataView(new ArrayBuffer((offered & bits('RSS', 'HASH_REPORT')) !== 0n ? CONFIG.SIZE_RSS : CONFIG.SIZE));
    this.resetConfig();

    this.keepAlive = setInterval(() => {}, KEEP_ALIVE_MS);

    this.on('newListener', (event) => {
      if (event === 'interrupt' && this.listenerCount('interrupt') === 0) this.watchCalls();
    });
    this.on('removeListener', (event) => {
      if (event === 'interrupt' && this.listenerCount('interrupt') === 0) this.unwatchCalls();
    });
  }

  /** What the running kernel's TAP can offload, and why anything is missing. */
  capabilities(): Capabilities {
    const caps = this.dp.caps;
    return { offloads: [...caps.offloads], missing: caps.missing.map((m) => ({ ...m })) };
  }

  get driverFeatures(): bigint {
    return this._driverFeatures;
  }

  set driverFeatures(v: bigint) {
    this.assertOpen();
    if (typeof v !== 'bigint') throw new InvalidArgumentError('driverFeatures must be a bigint');
    // The driver writes 32-bit words through driver_feature_select (virtio 1.x §4.1.4.3; bits
    // 64..127 since virtio 1.4); anything wider is not a feature set, and a negative bigint has
    // infinitely many bits set.
    if (v < 0n || v > MAX_FEATURES) {
      throw new InvalidArgumentError(`driverFeatures must be a 128-bit mask (0 .. 2^128 - 1), got ${v < 0n ? 'a negative value' : `0x${v.toString(16)}`}`);
    }
    if (!(this._status & STATUS.DRIVER) || this._status & STATUS.FEATURES_OK) {
      throw new DeviceStateError('driverFeatures may be written only after DRIVER and before FEATURES_OK (virtio 1.x §3.1.1)');
    }
    this._driverFeatures = v;
  }

  /** Why the last FEATURES_OK was refused, if it was. */
  get featuresRefusal(): string | null {
    return this.featuresError;
  }

  get status(): number {
    return this._status;
  }

  set status(v: number) {
    this.assertOpen();
    if (!Number.isInteger(v) || v < 0 || v > 0xff) throw new InvalidArgumentError(`status must be a byte, got ${v}`);
    if (v === 0) {
      this.reset();
      return;
    }
    const cleared = this._status & ~v & ~STATUS.DEVICE_NEEDS_RESET;
    if (cleared) throw new DeviceStateError(`the driver may not clear status bits (0x${cleared.toString(16)}); write 0 to reset`);
    const added = v & ~this._status;
    if (added & STATUS.FAILED) {
      this.stopAll();
      this._status |= STATUS.FAILED;
      return;
    }
    if (added & STATUS.FEATURES_OK) {
      this.featuresError = validateDriverFeatures(this._driverFeatures, this.deviceFeatures);
      if (this.featuresError) {
        // The spec's way to refuse: FEATURES_OK does not stick, the driver reads it back.
        this._status |= added & ~STATUS.FEATURES_OK & ~STATUS.DRIVER_OK;
        return;
      }
    }
    if (added & STATUS.DRIVER_OK) {
      if (!((this._status | added) & STATUS.FEATURES_OK)) throw new DeviceStateError('DRIVER_OK before FEATURES_OK was accepted');
      this._status |= added & ~STATUS.DRIVER_OK;
      this.start();
      this._status |= STATUS.DRIVER_OK;
      return;
    }
    this._status |= added;
  }

  /**
   * Sets a virtqueue's size and guest addresses. Allowed before DRIVER_OK. The ring rules are
   * checked here (native/virtqueue.cc, the same checks the workers make): size a power of two
   * up to 32768, each part aligned and inside one region of guest memory, and no part
   * overlapping another part of this or any other queue already set.
   */
  setQueue(index: number, q: QueueSetup): void {
    this.assertOpen();
    this.checkIndex(index);
    if (this._status & STATUS.DRIVER_OK && !this.resetQueues.has(index)) {
      throw new DeviceStateError(`setQueue(${index}) after DRIVER_OK; reset the device first, or the queue alone with resetQueue(${index}) (VIRTIO_F_RING_RESET)`);
    }
    if (!q || typeof q !== 'object') throw new InvalidArgumentError('setQueue needs { size, desc, avail, used }');
    const { size, desc, avail, used } = q;
    for (const [name, v] of [['size', size], ['desc', desc], ['avail', avail], ['used', used]] as const) {
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
        throw new InvalidArgumentError(`queue ${index}: ${name} must be a non-negative integer, got ${String(v)}`);
      }
    }
    // The layout follows the negotiated features (set before the queues, virtio 1.x §3.1.1).
    const ring = has(this._driverFeatures, 'RING_PACKED') ? { size, desc, avail, used, packed: true } : { size, desc, avail, used };
    const others = this.queues.filter((o, i): o is QueueSetup => o !== undefined && i !== index);
    const bad = this.memory.checkRings([ring]) ?? this.memory.checkRings([ring, ...others]);
    if (bad) throw new InvalidArgumentError(`queue ${index}: ${bad.detail} (${bad.rule})`);
    this.queues[index] = ring;
  }

  /**
   * Per-queue reset (VIRTIO_F_RING_RESET, virtio 1.2 §2.6.1; virtio-pci's queue_reset): the
   * device stops using RX or TX virtqueue `index` of a running pair while every other queue
   * keeps carrying traffic, and forgets its ring. Nothing is lost uncounted: the worker stops at
   * a batch boundary, where every chain it took is used and published; chains the driver had
   * made available and the device had not taken are the driver's again; frames for a reset RX
   * queue wait in the TAP queue. Then setQueue(index, ...) (any size and addresses) and
   * enableQueue(index). Needs RING_RESET negotiated and DRIVER_OK; the control queue cannot be
   * reset here (InvalidArgumentError).
   */
  resetQueue(index: number): void {
    this.assertOpen();
    this.checkIndex(index);
    if (index === ctrlq(this.queuePairs)) throw new InvalidArgumentError(`virtqueue ${index} is the control queue: only RX and TX queues can be reset alone`);
    if (!has(this._driverFeatures, 'RING_RESET')) throw new DeviceStateError(`resetQueue(${index}): the driver did not negotiate VIRTIO_F_RING_RESET`);
    if (!(this._status & STATUS.DRIVER_OK)) throw new DeviceStateError(`resetQueue(${index}) before DRIVER_OK: queues are not running yet`);
    if (this.resetQueues.has(index)) return; // already reset: as the register reads 1 until enabled
    if (!this.dp.running(index >> 1)) throw new DeviceStateError(`resetQueue(${index}): queue pair ${index >> 1} is not active (VQ_PAIRS_SET)`);
    this.dp.resetQueue(index);
    this.resetQueues.add(index);
    this.queues[index] = undefined;
    this.positions.delete(index);
  }

  /**
   * Enables virtqueue `index` again after resetQueue() and setQueue() (virtio-pci's
   * queue_enable): the device serves its new ring from the start. DeviceStateError when the
   * queue was not reset or not set up again.
   */
  enableQueue(index: number): void {
    this.assertOpen();
    this.checkIndex(index);
    if (!this.resetQueues.has(index)) throw new DeviceStateError(`enableQueue(${index}): the queue was not reset with resetQueue(${index}); it is enabled`);
    const q = this.queues[index];
    if (!q) throw new DeviceStateError(`enableQueue(${index}) before setQueue(${index}): give the reset queue its ring first`);
    if (!this.dp.running(index >> 1)) throw new DeviceStateError(`enableQueue(${index}): queue pair ${index >> 1} is not active (VQ_PAIRS_SET)`);
    this.dp.enableQueue(index, q);
    this.resetQueues.delete(index);
  }

  /** Whether virtqueue `index` is reset (resetQueue()) and not enabled again. */
  queueReset(index: number): boolean {
    this.checkIndex(index);
    return this.resetQueues.has(index);
  }

  /**
   * Replaces guest memory while the device runs: a WebAssembly.Memory that grew, memory
   * hot-plug. Takes what the `memory` option takes. Every ring set up must still lie inside
   * the new memory (else InvalidArgumentError and nothing changes). Workers switch to the new
   * table between batches, so traffic does not stop; the old buffers are let go once no
   * worker can still use them.
   */
  setMemory(memory: GuestMemory): void {
    this.assertOpen();
    const regions = toNativeRegions(memory, 'setMemory');
    const a = addon();
    const probe = native('guest memory', () => new a.GuestMemory(regions));
    const rings = this.queues.filter((o): o is QueueSetup => o !== undefined);
    const bad = rings.length ? probe.checkRings(rings) : null;
    if (bad) throw new InvalidArgumentError(`setMemory: the rings set up would not fit the new memory: ${bad.detail} (${bad.rule})`);
    native('guest memory', () => this.memory.replace(regions));
    this.dp.wake();
  }

  /** Guest → device doorbell from the JS thread. */
  kick(index: number): void {
    this.assertOpen();
    this.checkIndex(index);
    addon().kick(this.kickFds[index]);
  }

  /** The eventfds of a virtqueue, for Workers and native embedders. */
  notifier(index: number): { kickFd: number; callFd: number } {
    this.assertOpen();
    this.checkIndex(index);
    return { kickFd: this.kickFds[index], callFd: this.callFds[index] };
  }

  /** Link state as the guest sees it (config status LINK_UP) and the TAP's carrier. */
  setLink(up: boolean): void {
    this.assertOpen();
    const st = this.config.getUint16(CONFIG.OFF_STATUS, true);
    this.config.setUint16(CONFIG.OFF_STATUS, up ? st | CONFIG.S_LINK_UP : st & ~CONFIG.S_LINK_UP, true);
    if (this._status & STATUS.DRIVER_OK) this.dp.setCarrier(up);
    this.emit('config');
  }

  /** Asks the guest to announce itself (GUEST_ANNOUNCE), as after a migration. */
  announce(): void {
    this.assertOpen();
    if (!has(this._driverFeatures, 'GUEST_ANNOUNCE')) throw new DeviceStateError('the driver did not negotiate GUEST_ANNOUNCE');
    this.config.setUint16(CONFIG.OFF_STATUS, this.config.getUint16(CONFIG.OFF_STATUS, true) | CONFIG.S_ANNOUNCE, true);
    this.emit('config');
  }

  /** The guest's last accepted RSS_CONFIG / HASH_CONFIG (a copy); no type enabled after reset. */
  get rssConfig(): RssConfig {
    const c = this.rss;
    return { ...c, key: c.key.slice(), ...(c.table ? { table: c.table.slice() } : {}) };
  }

  /** Queue pairs the driver currently uses (1 until VQ_PAIRS_SET with MQ). */
  get activeQueuePairs(): number {
    return this.activePairs;
  }

  stats(): DeviceStats {
    return this.dp.stats();
  }

  /** Lets the process exit while this device is open (like net.Server's unref()); ref() undoes it. */
  unref(): this {
    this.keepAlive.unref();
    return this;
  }

  /** Keeps the process alive while this device is open (the default). */
  ref(): this {
    if (!this.closed) this.keepAlive.ref();
    return this;
  }

  /** Stops the workers, closes the TAP queues (the TAP disappears) and the eventfds; the process may exit. */
  async close(): Promise<void> {
    if (this.closed) return;
    clearInterval(this.keepAlive);
    this.stopAll();
    this.unwatchCalls();
    this.closed = true;
    // A vCPU Worker blocked in waitCall() on these fds would never wake once they are
    // closed (poll keeps the file open): one last interrupt sends it to look at the device.
    const a = addon();
    for (const fd of this.callFds) {
      try {
        a.kick(fd);
      } catch {
        // Nothing waits on an fd that cannot be written.
      }
    }
    this.releaseFds();
    this.removeAllListeners('interrupt');
  }

  // --- internals -----------------------------------------------------------------------

  private checkIndex(index: number): void {
    const max = 2 * this.queuePairs;
    if (!Number.isInteger(index) || index < 0 || index > max) {
      throw new InvalidArgumentError(`virtqueue index must be an integer from 0 to ${max} (RX/TX pairs, then the control queue), got ${index}`);
    }
  }

  private assertOpen(): void {
    if (this.closed) throw new DeviceStateError('the device is closed');
  }

  private resetConfig(): void {
    const c = this.config;
    for (let i = 0; i < 6; i++) c.setUint8(CONFIG.OFF_MAC + i, this.macBytes[i]);
    c.setUint16(CONFIG.OFF_STATUS, CONFIG.S_LINK_UP, true);
    c.setUint16(CONFIG.OFF_MAX_VQ_PAIRS, this.queuePairs, true);
    c.setUint16(CONFIG.OFF_MTU, this.mtu, true);
    c.setUint32(CONFIG.OFF_SPEED, 0xffffffff, true);
    c.setUint8(CONFIG.OFF_DUPLEX, 0xff);
    if (c.byteLength >= CONFIG.SIZE_RSS) {
      c.setUint8(CONFIG.OFF_RSS_MAX_KEY_SIZE, RSS_MAX_KEY_SIZE);
      c.setUint16(CONFIG.OFF_RSS_MAX_INDIRECTION_TABLE_LENGTH, has(this.deviceFeatures, 'RSS') ? RSS_MAX_INDIRECTION_TABLE_LENGTH : 0, true);
      c.setUint32(CONFIG.OFF_SUPPORTED_HASH_TYPES, SUPPORTED_HASH_TYPES, true);
    }
  }

  /** DRIVER_OK: program the TAP from the negotiated features and start the active pairs. */
  private start(): void {
    const a = addon();
    const f = this._driverFeatures;
    for (let p = 0; p < this.queuePairs; p++) {
      if (!this.queues[2 * p] || !this.queues[2 * p + 1]) {
        if (p === 0 || has(f, 'MQ')) throw new DeviceStateError(`DRIVER_OK before queues ${2 * p} and ${2 * p + 1} were set up with setQueue()`);
      }
    }
    this.dp.program(f, this.mtu);
    this.rxFilter.reset(this.macBytes, has(f, 'CTRL_VLAN'));
    this.applyRxFilter();
    // Coalescing parameters start at 0 after every reset (virtio 1.3, Notifications Coalescing).
    for (const q of ['rx', 'tx'] as const) this.dp.setCoalescing(q, 0, 0);
    // No hash type is enabled until the guest configures one: every report is NONE, and
    // the kernel's own steering picks queues.
    this.rss = RSS_OFF;
    this.dp.clearRss();
    if (has(f, 'CTRL_VQ')) {
      const cq = this.queues[ctrlq(this.queuePairs)];
      if (!cq) throw new DeviceStateError(`CTRL_VQ negotiated but the control queue ${ctrlq(this.queuePairs)} was not set up`);
      const index = ctrlq(this.queuePairs);
      const q = native(`control queue ${index}`, () =>
        new a.ControlQueue({
          memory: this.memory,
          ...cq,
          eventIdx: has(f, 'RING_EVENT_IDX'),
          indirect: has(f, 'RING_INDIRECT_DESC'),
          packed: has(f, 'RING_PACKED'),
        }),
      );
      const ctrl = new ControlQueueServer(q, (c) => this.handleCtrl(c), {
        interrupt: () => addon().kick(this.callFds[index]),
        broken: (rule, detail) => {
          this.stopCtrl();
          this.guestBrokeRule(index, rule, detail);
        },
      });
      this.ctrl = ctrl;
      this.ctrlWatcher = new a.FdWatcher(this.kickFds[index], () => ctrl.kick());
    }
    this.activePairs = 1;
    this.setActivePairs(1);
    this.dp.setCarrier((this.config.getUint16(CONFIG.OFF_STATUS, true) & CONFIG.S_LINK_UP) !== 0);
  }

  private applyRxFilter(): void {
    const { flags, macs } = this.rxFilter.tapFilter();
    this.dp.setTxFilter(flags, macs);
    // The TAP's filter is coarse (exact for 8 addresses, hashed after; no VLANs):
    // the engines apply the exact rules to what it lets through.
    this.dp.setRxFilter(this.rxFilter.snapshot());
  }

  /**
   * Runs pairs [0, n) and stops the rest (datapath.ts attaches/detaches and steers their TAP
   * queues so that nothing the kernel holds is dropped); stopped pairs keep their ring
   * positions so that a pair started again resumes where it was.
   */
  private setActivePairs(n: number): void {
    this.assertNoResetQueues(n);
    const changes = new Map<number, PairSetup | null>();
    for (let p = 0; p < this.queuePairs; p++) {
      if (p < n && !this.dp.running(p)) changes.set(p, this.pairSetup(p));
      else if (p >= n) changes.set(p, null);
    }
    let failure: unknown;
    try {
      for (const [p, pos] of this.dp.setPairs(changes)) this.keepPositions(p, pos);
    } catch (e) {
      failure = e;
    }
    // What actually runs, even when a step failed half way.
    let active = 0;
    while (active < this.queuePairs && this.dp.running(active)) active++;
    this.activePairs = Math.max(active, 1);
    if (failure) throw failure;
  }

  /**
   * setActivePairs() for VQ_PAIRS_SET: the TAP queues' attach/detach/steering and the workers'
   * start/join run off the JS thread (datapath.ts setPairsAsync), so a guest that queues many
   * commands cannot stall the event loop; it resolves once pairs [0, n) run and the rest are
   * stopped, before the command's ack goes out.
   */
  private async setActivePairsAsync(n: number): Promise<void> {
    this.assertNoResetQueues(n);
    const changes = new Map<number, PairSetup | null>();
    for (let p = 0; p < this.queuePairs; p++) {
      if (p < n && !this.dp.running(p)) changes.set(p, this.pairSetup(p));
      else if (p >= n) changes.set(p, null);
    }
    const session = this.session;
    let failure: unknown;
    try {
      for (const [p, pos] of await this.dp.setPairsAsync(changes)) this.keepPositions(p, pos);
    } catch (e) {
      failure = e;
    }
    // A reset or close cut it short: the device has moved on, nothing here is current.
    if (session !== this.session || this.closed) throw failure ?? new DeviceStateError('the device was reset during VQ_PAIRS_SET');
    let active = 0;
    while (active < this.queuePairs && this.dp.running(active)) active++;
    this.activePairs = Math.max(active, 1);
    if (failure) throw failure;
  }

  /** applyRxFilter() with the TAP's filter set off the JS thread (TUNSETTXFILTER takes the RTNL lock). */
  private async applyRxFilterAsync(): Promise<void> {
    const { flags, macs } = this.rxFilter.tapFilter();
    const session = this.session;
    await this.dp.setTxFilterAsync(flags, macs);
    if (session !== this.session || this.closed) throw new DeviceStateError('the device was reset during a control command');
    this.dp.setRxFilter(this.rxFilter.snapshot());
  }

  /** A pair changing state (VQ_PAIRS_SET) must not have a queue reset and not enabled again. */
  private assertNoResetQueues(n: number): void {
    for (const i of this.resetQueues) {
      const p = i >> 1;
      if (p >= n || !this.dp.running(p)) {
        throw new DeviceStateError(`queue pair ${p} would start or stop while its virtqueue ${i} is reset; enable it first (enableQueue)`);
      }
    }
  }

  private pairSetup(p: number): PairSetup {
    const rx = this.queues[2 * p]!;
    const tx = this.queues[2 * p + 1]!;
    const ring = (i: number, q: QueueSetup) => ({
      index: i,
      ...q,
      kickFd: this.kickFds[i],
      callFd: this.callFds[i],
      ...(this.positions.get(i) ?? (q.packed ? { lastAvailIdx: PACKED_RING.INITIAL_POSITION, usedIdx: PACKED_RING.INITIAL_POSITION } : { lastAvailIdx: 0, usedIdx: 0 })),
    });
    const session = this.session;
    return {
      rx: ring(2 * p, rx),
      tx: ring(2 * p + 1, tx),
      // A report from before the last reset is about a session the driver already ended.
      onBroken: (queue: number, rule: string, detail: string) => {
        if (session === this.session) this.guestBrokeRule(queue, rule, detail);
      },
    };
  }

  private keepPositions(p: number, pos: { rx: RingPosition; tx: RingPosition }): void {
    this.positions.set(2 * p, pos.rx);
    this.positions.set(2 * p + 1, pos.tx);
  }

  private stopAll(): void {
    // A control command's change in progress stops after its current step (never a whole list).
    for (const [p, pos] of this.dp.abort()) this.keepPositions(p, pos);
    for (let p = 0; p < this.queuePairs; p++) {
      const pos = this.dp.stopPair(p);
      if (pos) this.keepPositions(p, pos);
    }
    this.stopCtrl();
  }

  private stopCtrl(): void {
    this.ctrlWatcher?.close();
    this.ctrlWatcher = undefined;
    this.ctrl?.close();
    this.ctrl = undefined;
  }

  private guestBrokeRule(queue: number, rule: string, detail: string): void {
    if (this.closed) return;
    this._status |= STATUS.DEVICE_NEEDS_RESET;
    const err = new VirtioNetError(`queue ${queue}: the guest broke rule '${rule}': ${detail}; the queue stopped, reset the device`, queue, rule);
    this.emit('needs-reset', err);
    this.emit('config');
  }

  /** Status 0: stop everything and return to the state right after construction. */
  private reset(): void {
    this.session++;
    this.stopAll();
    // Ring positions start from 0 after a reset; counters stay monotonic.
    this.positions.clear();
    const a = addon();
    // Writing 0 cannot fail for the driver (virtio 1.x §2.1.2): the device's own state is
    // reset whatever the TAP says. A TAP that refuses (deleted from outside: EBADFD) is
    // reported as a warning here and fails the next DRIVER_OK with a TapError.
    let tapFailure: unknown;
    // RSS ends with the session: the kernel's own steering until the next driver configures it.
    for (const step of [() => this.dp.attachAll(), () => this.dp.clearRss(), () => this.dp.setCarrier(false)]) {
      try {
        step();
      } catch (e) {
        tapFailure ??= e;
      }
    }
    this._status = 0;
    this._driverFeatures = 0n;
    this.featuresError = null;
    this.queues.fill(undefined);
    this.resetQueues.clear();
    this.activePairs = 1;
    this.resetConfig();
    // Drain stale doorbells so the next initialisation starts quiet (waitCall takes at most
    // WAIT_FDS at a time; 8 pairs already have 34 eventfds).
    const fds = [...this.kickFds, ...this.callFds];
    for (let i = 0; i < fds.length; i += WAIT_FDS) a.waitCall(fds.slice(i, i + WAIT_FDS), 0);
    if (tapFailure) this.emit('warning', convert(`TAP '${this.tapName}'`, tapFailure));
  }

  /**
   * RSS_CONFIG (with RSS) or HASH_CONFIG (with HASH_REPORT and not RSS): decoded and checked
   * whole by backend/rss.ts first, so a refused one changes nothing. RSS_CONFIG's max_tx_vq
   * sets the active pairs as VQ_PAIRS_SET does (Linux sends no VQ_PAIRS_SET once RSS is
   * negotiated); the ack goes out once the pairs run and the engines have the new hash.
   */
  private hashConfig(cmd: number, data: Uint8Array): CtrlAnswer | Promise<CtrlAnswer> {
    const f = this._driverFeatures;
    let c: RssConfig | string;
    if (cmd === CTRL.MQ_RSS_CONFIG) {
      if (!has(f, 'RSS')) return CTRL.ERR;
      c = decodeRssConfig(data, has(f, 'MQ') ? this.queuePairs : 1);
    } else {
      if (!has(f, 'HASH_REPORT') || has(f, 'RSS')) return CTRL.ERR;
      c = decodeHashConfig(data);
    }
    // Why it was refused is not reported: a guest could flood the log as it can flood the queue.
    if (typeof c === 'string') return CTRL.ERR;
    const config = c;
    const session = this.session;
    const apply = async (): Promise<CtrlAnswer> => {
      // RSS_CONFIG steers with its table; one with no key and no hash type turns RSS off
      // (the kernel's own steering again). HASH_CONFIG leaves steering alone.
      const steering = config.table === undefined ? undefined : config.key.length === 0 && config.hashTypes === 0 ? null : { hashTypes: config.hashTypes, key: config.key, table: config.table, unclassifiedQueue: config.unclassifiedQueue ?? 0 };
      const r = await this.dp.setRssAsync(config.hashTypes ? { hashTypes: config.hashTypes, key: config.key } : null, steering);
      if (session !== this.session || this.closed) throw new DeviceStateError('the device was reset during a control command');
      this.rss = config;
      if (r.fellBack) this.emit('warning', new TapError(`RSS: the steering program could not load (${r.fellBack}); the kernel's own flow steering picks the receive queues instead of the guest's indirection table (hash reports stay exact); stats().rss.steering says 'kernel'`));
      // The ack goes out right after this (same tick), once the engines run the new hash.
      this.emit('rss', { ...config });
      return CTRL.OK;
    };
    if (config.pairs === undefined || config.pairs === this.activePairs) return this.offThread(apply());
    const n = config.pairs;
    return this.offThread(
      this.setActivePairsAsync(n).then(() => {
        this.emit('queue-pairs', n);
        return apply();
      }),
    );
  }

  /**
   * One control command; returns the ack (and a result), or a promise of it for a command
   * whose TAP or worker changes run off the JS thread (the ack goes out once they are done).
   * Malformed commands get ERR, never an exception.
   */
  private handleCtrl({ cls, cmd, data }: NativeCtrlCommand): CtrlAnswer | Promise<CtrlAnswer> {
    const f = this._driverFeatures;
    try {
      switch (cls) {
        case CTRL.CLASS_RX: {
          if (!has(f, 'CTRL_RX') || data.length !== 1) return CTRL.ERR;
          const extra = cmd >= CTRL.RX_ALLUNI;
          if (extra && !has(f, 'CTRL_RX_EXTRA')) return CTRL.ERR;
          if (!this.rxFilter.setMode(cmd, data[0] !== 0)) return CTRL.ERR;
          return this.offThread(this.rxFilterChanged());
        }
        case CTRL.CLASS_MAC: {
          if (cmd === CTRL.MAC_TABLE_SET) {
            if (!has(f, 'CTRL_RX') || !this.rxFilter.setTables(data)) return CTRL.ERR;
          } else if (cmd === CTRL.MAC_ADDR_SET) {
            if (!has(f, 'CTRL_MAC_ADDR') || data.length !== 6) return CTRL.ERR;
            this.macBytes.set(data);
            for (let i = 0; i < 6; i++) this.config.setUint8(CONFIG.OFF_MAC + i, data[i]);
            this.rxFilter.setPrimary(data);
          } else return CTRL.ERR;
          return this.offThread(this.rxFilterChanged());
        }
        case CTRL.CLASS_VLAN: {
          if (!has(f, 'CTRL_VLAN') || data.length !== 2) return CTRL.ERR;
          const vid = data[0] | (data[1] << 8);
          if (vid >= 4096) return CTRL.ERR;
          if (cmd === CTRL.VLAN_ADD) this.rxFilter.setVlan(vid, true);
          else if (cmd === CTRL.VLAN_DEL) this.rxFilter.setVlan(vid, false);
          else return CTRL.ERR;
          return this.offThread(this.rxFilterChanged());
        }
        case CTRL.CLASS_ANNOUNCE: {
          if (!has(f, 'GUEST_ANNOUNCE') || cmd !== CTRL.ANNOUNCE_ACK || data.length !== 0) return CTRL.ERR;
          this.config.setUint16(CONFIG.OFF_STATUS, this.config.getUint16(CONFIG.OFF_STATUS, true) & ~CONFIG.S_ANNOUNCE, true);
          return CTRL.OK;
        }
        case CTRL.CLASS_MQ: {
          if (cmd === CTRL.MQ_RSS_CONFIG || cmd === CTRL.MQ_HASH_CONFIG) return this.hashConfig(cmd, data);
          if (!has(f, 'MQ') || cmd !== CTRL.MQ_VQ_PAIRS_SET || data.length !== 2) return CTRL.ERR;
          const n = data[0] | (data[1] << 8);
          if (n < CTRL.MQ_VQ_PAIRS_MIN || n > this.queuePairs) return CTRL.ERR;
          return this.offThread(
            this.setActivePairsAsync(n).then(() => {
              this.emit('queue-pairs', n);
              return CTRL.OK;
            }),
          );
        }
        case CTRL.CLASS_GUEST_OFFLOADS: {
          if (!has(f, 'CTRL_GUEST_OFFLOADS') || cmd !== CTRL.GUEST_OFFLOADS_SET || data.length !== 8) return CTRL.ERR;
          // The le64 names the tunnel offloads (features 65, 66) at bits 46, 47.
          const want = offloadsFromWord(new DataView(data.buffer, data.byteOffset, 8).getBigUint64(0, true));
          // Only GUEST_* bits that were negotiated may be switched (virtio 1.x §5.1.6.5.6.1).
          if (want & ~(f & GUEST_OFFLOAD_FEATURES)) return CTRL.ERR;
          if (validateDriverFeatures(want | (f & ~GUEST_OFFLOAD_FEATURES), this.deviceFeatures)) return CTRL.ERR;
          return this.offThread(this.dp.setGuestOffloadsAsync(want).then(() => CTRL.OK));
        }
        case CTRL.CLASS_NOTF_COAL: {
          const d = new DataView(data.buffer, data.byteOffset, data.length);
          if (cmd === CTRL.NOTF_COAL_RX_SET || cmd === CTRL.NOTF_COAL_TX_SET) {
            if (!has(f, 'NOTF_COAL') || data.length !== 8) return CTRL.ERR;
            const queues = cmd === CTRL.NOTF_COAL_RX_SET ? 'rx' : 'tx';
            const maxPackets = d.getUint32(0, true);
            const maxUsecs = d.getUint32(4, true);
            this.dp.setCoalescing(queues, maxPackets, maxUsecs);
            this.emit('coalescing', { queues, maxPackets, maxUsecs });
            return CTRL.OK;
          }
          if (cmd !== CTRL.NOTF_COAL_VQ_SET && cmd !== CTRL.NOTF_COAL_VQ_GET) return CTRL.ERR;
          // VQ_GET's result comes before the ack whatever the answer: an ERR goes where the driver looks for it.
          const err: CtrlAnswer = cmd === CTRL.NOTF_COAL_VQ_GET ? { ack: CTRL.ERR, result: new Uint8Array(8) } : CTRL.ERR;
          if (!has(f, 'VQ_NOTF_COAL') || data.length !== (cmd === CTRL.NOTF_COAL_VQ_SET ? 12 : 4)) return err;
          const vq = d.getUint16(0, true); // then le16 reserved, ignored
          // Only an enabled RX or TX queue: one of a running pair (not the control queue).
          if (vq >= 2 * this.queuePairs || !this.dp.running(vq >> 1)) return err;
          if (cmd === CTRL.NOTF_COAL_VQ_SET) {
            const maxPackets = d.getUint32(4, true);
            const maxUsecs = d.getUint32(8, true);
            this.dp.setQueueCoalescing(vq, maxPackets, maxUsecs);
            this.emit('coalescing', { queues: vq, maxPackets, maxUsecs });
            return CTRL.OK;
          }
          const result = new Uint8Array(8);
          const [maxPackets, maxUsecs] = this.dp.queueCoalescing(vq);
          const r = new DataView(result.buffer);
          r.setUint32(0, maxPackets, true);
          r.setUint32(4, maxUsecs, true);
          return { ack: CTRL.OK, result };
        }
        default:
          return CTRL.ERR;
      }
    } catch (e) {
      this.emit('warning', convert('control queue', e));
      return CTRL.ERR;
    }
  }

  /** A command's work off the JS thread: its failure is an ERR ack and a warning, as on the thread. */
  private offThread(work: Promise<CtrlAnswer>): Promise<CtrlAnswer> {
    const session = this.session;
    return work.catch((e: unknown) => {
      // Cut short by a reset or close: nobody waits for this answer any more.
      if (session === this.session && !this.closed) this.emit('warning', convert('control queue', e));
      return CTRL.ERR;
    });
  }

  /** The RX filter changed: the TAP's and the engines' filters follow, then listeners hear of it. */
  private async rxFilterChanged(): Promise<CtrlAnswer> {
    await this.applyRxFilterAsync();
    this.emit('rx-filter', this.rxFilter.describe());
    return CTRL.OK;
  }

  private watchCalls(): void {
    const a = addon();
    this.callWatchers = this.callFds.map((fd, i) => new (a.FdWatcher)(fd, () => this.emit('interrupt', i)));
  }

  private unwatchCalls(): void {
    for (const w of this.callWatchers) w.close();
    this.callWatchers = [];
  }

  private releaseFds(): void {
    const a = addon();
    this.dp?.close();
    for (const fd of [...this.kickFds, ...this.callFds]) {
      try {
        a.close(fd);
      } catch {
        // Already closed: nothing left to release.
      }
    }
    this.kickFds.length = 0;
    this.callFds.length = 0;
  }
}

export function parseMacOption(s: string): Uint8Array {
  if (typeof s !== 'string' || !/^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/.test(s)) {
    throw new InvalidArgumentError(`invalid MAC address '${s}': expected six hex bytes like 52:54:00:12:34:56`);
  }
  const b = Uint8Array.from(s.split(':').map((x) => parseInt(x, 16)));
  if (b[0] & 1) throw new InvalidArgumentError(`invalid MAC address '${s}': a multicast address cannot be a station address`);
  return b;
}

function randomMac(): Uint8Array {
  const b = new Uint8Array(randomBytes(6));
  b[0] = (b[0] & 0xfe) | 0x02;
  return b;
}
