// The virtio-net device model: feature negotiation, device status, config
// space, queue setup, the control queue, TAP programming from negotiated
// features, engine lifecycle and statistics. The only class users touch.

import { EventEmitter } from 'node:events';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';

import { ControlQueueServer } from './ctrlq';
import { convert, DeviceStateError, InvalidArgumentError, NamespaceError, native, VirtioNetError } from './errors';
import {
  BASE_FEATURES,
  Capabilities,
  GUEST_OFFLOAD_FEATURES,
  MQ_FEATURES,
  probeOffloads,
  rxFrameMax,
  tunOffloads,
  validateDriverFeatures,
} from './features';
import { GuestMemory, toNativeRegions } from './memory';
import { addon, NativeCtrlCommand, NativeEngine, NativeGuestMemory, NativeQueueStats } from './native';
import { RxFilter, RxFilterState } from './rxfilter';
import { CONFIG, CTRL, ctrlq, has, netHdrSize, STATUS, TUN } from './virtio';

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
  /** Data path I/O: 'auto' (default) io_uring batching where the kernel allows it, 'readv' one readv/writev per frame; stats().io says which runs. */
  io?: 'auto' | 'readv';
  /**
   * io_uring with a kernel thread polling the submission ring (IORING_SETUP_SQPOLL), opt-in:
   * costs a core per queue pair while busy; see README. stats().io says 'io_uring sqpoll' when it runs.
   */
  sqpoll?: boolean;
}

export interface QueueStats {
  index: number;
  kind: 'rx' | 'tx' | 'ctrl';
  packets: number;
  bytes: number;
  interrupts: number;
  kicks: number;
  /** TX: writes the TAP refused for lack of room (sent again later, in order). */
  tapFull: number;
  /** TX: frames that overtook an earlier one because the TAP's sndbuf shrank mid-batch (normally 0). */
  reordered: number;
  /** Dropped frames by reason. */
  drops: Record<string, number>;
  broken: boolean;
}

export interface DeviceStats {
  queues: QueueStats[];
  /** I/O method the workers use. */
  io: string;
  /** Frames the RX filter (RX modes, MAC table, VLAN filter) kept from the guest. */
  filtered: number;
  totals: { rxPackets: number; rxBytes: number; txPackets: number; txBytes: number; drops: number };
}

/** Where a virtqueue lives: its size (a power of two, 1..32768) and the guest addresses of its three parts. */
export interface QueueSetup {
  size: number;
  desc: number;
  avail: number;
  used: number;
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
  /** Something went wrong that does not stop the device (e.g. a control command the TAP refused). */
  warning: [error: Error];
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

const KNOWN_OPTIONS = new Set(['memory', 'tap', 'netns', 'queuePairs', 'mac', 'mtu', 'features', 'busyPollUs', 'napi', 'io', 'sqpoll']);

/** Longest busy-poll window accepted: beyond a second it is a spinning thread, not a latency trade. */
const MAX_BUSY_POLL_US = 1_000_000;

/** Default MTU when none is given: Ethernet's. */
const DEFAULT_MTU = 1500;

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
  private readonly tapFds: number[] = [];
  private readonly kickFds: number[] = [];
  private readonly callFds: number[] = [];
  private readonly queues: (QueueSetup | undefined)[];
  private readonly engines: (NativeEngine | undefined)[];
  /** Counters of engines that were stopped (reset, pair changes), so stats() stays monotonic. */
  private readonly retired: Map<number, QueueStats> = new Map();
  /** Ring positions of stopped queues, so a pair restarted by VQ_PAIRS_SET resumes where it was. */
  private readonly positions: Map<number, { lastAvailIdx: number; usedIdx: number }> = new Map();
  private readonly caps: Capabilities;
  private readonly mtu: number;
  private readonly busyPollUs: number;
  private readonly io: 'auto' | 'readv';
  private readonly sqpoll: boolean;
  private readonly macBytes: Uint8Array;
  private ctrl: ControlQueueServer | undefined;
  private ctrlWatcher: { close(): void } | undefined;
  private callWatchers: { close(): void }[] = [];
  private activePairs = 1;
  /** Whether each TAP queue is attached (the kernel refuses to attach twice); all are after open. */
  private attached: boolean[] = [];
  private guestOffloads = 0n;
  private closed = false;
  private featuresError: string | null = null;
  readonly rxFilter = new RxFilter();

  constructor(opts: VirtioNetDeviceOptions) {
    super();
    for (const k of Object.keys(opts ?? {})) {
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
    this.busyPollUs = opts.busyPollUs ?? 0;
    if (!Number.isInteger(this.busyPollUs) || this.busyPollUs < 0 || this.busyPollUs > MAX_BUSY_POLL_US) {
      throw new InvalidArgumentError(`busyPollUs must be an integer from 0 to ${MAX_BUSY_POLL_US} (microseconds), got ${opts.busyPollUs}`);
    }
    if (opts.napi !== undefined && typeof opts.napi !== 'boolean') throw new InvalidArgumentError("option 'napi' must be a boolean");
    if (opts.io !== undefined && opts.io !== 'auto' && opts.io !== 'readv') throw new InvalidArgumentError("option 'io' must be 'auto' or 'readv'");
    this.io = opts.io ?? 'auto';
    if (opts.sqpoll !== undefined && typeof opts.sqpoll !== 'boolean') throw new InvalidArgumentError("option 'sqpoll' must be a boolean");
    this.sqpoll = opts.sqpoll ?? false;
    const tapFlags = opts.napi ? TUN.IFF_NAPI : 0;

    this.netns = opts.netns;
    this.netnsPath = null;
    if (opts.netns !== undefined) {
      if (typeof opts.netns !== 'string' || !/^[A-Za-z0-9_.-]+$/.test(opts.netns)) throw new InvalidArgumentError(`invalid network namespace name '${opts.netns}'`);
      this.netnsPath = `/run/netns/${opts.netns}`;
      if (!fs.existsSync(this.netnsPath)) throw new NamespaceError(`network namespace '${opts.netns}' does not exist (create it with: ip netns add ${opts.netns})`);
    }

    const a = addon();
    const what = `TAP '${opts.tap}'`;
    let name = opts.tap;
    try {
      for (let i = 0; i < this.queuePairs; i++) {
        const q = native(what, () => a.tapOpen(opts.tap, this.netnsPath, tapFlags));
        this.tapFds.push(q.fd);
        name = q.name;
      }
      this.tapName = name;
      this.attached = this.tapFds.map(() => true);
      const probe = probeOffloads((flags) => native(what, () => a.tapSetOffload(this.tapFds[0], flags)));
      this.caps = probe.caps;
      let offered = BASE_FEATURES | probe.offered;
      if (this.queuePairs > 1) offered |= MQ_FEATURES;
      if (opts.features !== undefined) offered &= opts.features;
      this.deviceFeatures = offered;
      native(what, () => a.netdevSetMtu(this.netnsPath, name, this.mtu));
      for (const fd of this.tapFds) native(what, () => a.tapSetCarrier(fd, false));
      native(what, () => a.netdevSetUp(this.netnsPath, name, true));
      for (let i = 0; i <= 2 * this.queuePairs; i++) {
        this.kickFds.push(a.eventfd());
        this.callFds.push(a.eventfd());
      }
    } catch (e) {
      this.releaseFds();
      throw convert(what, e);
    }
    this.queues = new Array(2 * this.queuePairs + 1).fill(undefined);
    this.engines = new Array(this.queuePairs).fill(undefined);
    this.config = new DataView(new ArrayBuffer(CONFIG.SIZE));
    this.resetConfig();

    this.on('newListener', (event) => {
      if (event === 'interrupt' && this.listenerCount('interrupt') === 0) this.watchCalls();
    });
    this.on('removeListener', (event) => {
      if (event === 'interrupt' && this.listenerCount('interrupt') === 0) this.unwatchCalls();
    });
  }

  /** What the running kernel's TAP can offload, and why anything is missing. */
  capabilities(): Capabilities {
    return { offloads: [...this.caps.offloads], missing: this.caps.missing.map((m) => ({ ...m })) };
  }

  get driverFeatures(): bigint {
    return this._driverFeatures;
  }

  set driverFeatures(v: bigint) {
    this.assertOpen();
    if (typeof v !== 'bigint') throw new InvalidArgumentError('driverFeatures must be a bigint');
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
      this.guestOffloads = this._driverFeatures & GUEST_OFFLOAD_FEATURES;
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
    if (this._status & STATUS.DRIVER_OK) throw new DeviceStateError(`setQueue(${index}) after DRIVER_OK; reset the device first`);
    if (!q || typeof q !== 'object') throw new InvalidArgumentError('setQueue needs { size, desc, avail, used }');
    const { size, desc, avail, used } = q;
    for (const [name, v] of [['size', size], ['desc', desc], ['avail', avail], ['used', used]] as const) {
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
        throw new InvalidArgumentError(`queue ${index}: ${name} must be a non-negative integer, got ${String(v)}`);
      }
    }
    const ring = { size, desc, avail, used };
    const others = this.queues.filter((o, i): o is QueueSetup => o !== undefined && i !== index);
    const bad = this.memory.checkRings([ring]) ?? this.memory.checkRings([ring, ...others]);
    if (bad) throw new InvalidArgumentError(`queue ${index}: ${bad.detail} (${bad.rule})`);
    this.queues[index] = ring;
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
    for (const e of this.engines) e?.wake();
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
    if (this._status & STATUS.DRIVER_OK) for (const fd of this.tapFds) native(`TAP '${this.tapName}'`, () => addon().tapSetCarrier(fd, up));
    this.emit('config');
  }

  /** Asks the guest to announce itself (GUEST_ANNOUNCE), as after a migration. */
  announce(): void {
    this.assertOpen();
    if (!has(this._driverFeatures, 'GUEST_ANNOUNCE')) throw new DeviceStateError('the driver did not negotiate GUEST_ANNOUNCE');
    this.config.setUint16(CONFIG.OFF_STATUS, this.config.getUint16(CONFIG.OFF_STATUS, true) | CONFIG.S_ANNOUNCE, true);
    this.emit('config');
  }

  /** Queue pairs the driver currently uses (1 until VQ_PAIRS_SET with MQ). */
  get activeQueuePairs(): number {
    return this.activePairs;
  }

  stats(): DeviceStats {
    const queues: QueueStats[] = [];
    let io = 'none';
    for (let p = 0; p < this.queuePairs; p++) {
      const s = this.engines[p]?.stats();
      if (s) io = s.io;
      queues.push(this.merge(2 * p, 'rx', s?.rx));
      queues.push(this.merge(2 * p + 1, 'tx', s?.tx));
    }
    const totals = { rxPackets: 0, rxBytes: 0, txPackets: 0, txBytes: 0, drops: 0 };
    for (const q of queues) {
      if (q.kind === 'rx') {
        totals.rxPackets += q.packets;
        totals.rxBytes += q.bytes;
      } else {
        totals.txPackets += q.packets;
        totals.txBytes += q.bytes;
      }
      for (const v of Object.values(q.drops)) totals.drops += v;
    }
    const filtered = queues.reduce((n, q) => n + (q.drops.rx_filtered ?? 0), 0);
    return { queues, io, filtered, totals };
  }

  /** Stops the workers, closes the TAP queues (the TAP disappears) and the eventfds. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.stopAll();
    this.unwatchCalls();
    this.closed = true;
    this.releaseFds();
    this.removeAllListeners('interrupt');
  }

  // --- internals -----------------------------------------------------------------------

  private merge(index: number, kind: 'rx' | 'tx', live: NativeQueueStats | undefined): QueueStats {
    const old = this.retired.get(index);
    const drops: Record<string, number> = { ...(old?.drops ?? {}) };
    for (const [k, v] of Object.entries(live?.drops ?? {})) drops[k] = (drops[k] ?? 0) + v;
    return {
      index,
      kind,
      packets: (old?.packets ?? 0) + (live?.packets ?? 0),
      bytes: (old?.bytes ?? 0) + (live?.bytes ?? 0),
      interrupts: (old?.interrupts ?? 0) + (live?.interrupts ?? 0),
      kicks: (old?.kicks ?? 0) + (live?.kicks ?? 0),
      tapFull: (old?.tapFull ?? 0) + (live?.tapFull ?? 0),
      reordered: (old?.reordered ?? 0) + (live?.reordered ?? 0),
      drops,
      broken: live?.broken ?? false,
    };
  }

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
  }

  /** DRIVER_OK: program the TAP from the negotiated features and start the active pairs. */
  private start(): void {
    const a = addon();
    const f = this._driverFeatures;
    const what = `TAP '${this.tapName}'`;
    for (let p = 0; p < this.queuePairs; p++) {
      if (!this.queues[2 * p] || !this.queues[2 * p + 1]) {
        if (p === 0 || has(f, 'MQ')) throw new DeviceStateError(`DRIVER_OK before queues ${2 * p} and ${2 * p + 1} were set up with setQueue()`);
      }
    }
    const hdrLen = netHdrSize(f);
    for (const fd of this.tapFds) {
      native(what, () => a.tapSetVnetHdrSz(fd, hdrLen));
      // virtio 1.x headers are little-endian whatever the host; legacy ones are the guest's (here: the host's).
      if (has(f, 'VERSION_1')) native(what, () => a.tapSetVnetLe(fd, true));
    }
    this.programOffloads();
    this.rxFilter.reset(this.macBytes, has(f, 'CTRL_VLAN'));
    this.applyRxFilter();
    if (has(f, 'CTRL_VQ')) {
      const cq = this.queues[ctrlq(this.queuePairs)];
      if (!cq) throw new DeviceStateError(`CTRL_VQ negotiated but the control queue ${ctrlq(this.queuePairs)} was not set up`);
      const index = ctrlq(this.queuePairs);
      const q = native(`control queue ${index}`, () =>
        new a.ControlQueue({ memory: this.memory, ...cq, eventIdx: has(f, 'RING_EVENT_IDX'), indirect: has(f, 'RING_INDIRECT_DESC') }),
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
    for (const fd of this.tapFds) native(what, () => a.tapSetCarrier(fd, (this.config.getUint16(CONFIG.OFF_STATUS, true) & CONFIG.S_LINK_UP) !== 0));
  }

  private programOffloads(): void {
    const flags = tunOffloads(this.guestOffloads);
    native(`TAP '${this.tapName}'`, () => addon().tapSetOffload(this.tapFds[0], flags));
  }

  private applyRxFilter(): void {
    const { flags, macs } = this.rxFilter.tapFilter();
    native(`TAP '${this.tapName}'`, () => addon().tapSetTxFilter(this.tapFds[0], flags, macs));
    // The TAP's filter is coarse (exact for 8 addresses, hashed after; no VLANs):
    // the engines apply the exact rules to what it lets through.
    const snap = this.rxFilter.snapshot();
    for (const e of this.engines) e?.setRxFilter(snap);
  }

  /**
   * Starts engines for pairs [0, n), stops the rest; attaches/detaches TAP queues to match.
   * Detaching a TAP queue drops what the kernel still holds for it, so before pairs go away
   * all new frames are steered to queue 0, the leaving pairs drain into their rings, and
   * only then are their queues detached.
   */
  private setActivePairs(n: number): void {
    const a = addon();
    const what = `TAP '${this.tapName}'`;
    const shrinking = this.engines.some((e, p) => e && p >= n);
    if (shrinking) native(what, () => a.tapSteerAllTo(this.tapFds[0], 0));
    let failure: unknown;
    try {
      this.switchPairs(n);
    } catch (e) {
      failure = e;
    }
    if (shrinking) {
      try {
        native(what, () => a.tapSteerAllTo(this.tapFds[0], -1));
      } catch (e) {
        failure ??= e;
      }
    }
    // What actually runs, even when a step failed half way.
    let active = 0;
    while (active < this.queuePairs && this.engines[active]) active++;
    this.activePairs = Math.max(active, 1);
    if (failure) throw failure;
  }

  private switchPairs(n: number): void {
    for (let p = 0; p < this.queuePairs; p++) {
      if (p < n && !this.engines[p]) {
        this.attachQueue(p, true);
        try {
          const e = this.makeEngine(p);
          e.setRxFilter(this.rxFilter.snapshot());
          e.start();
          this.engines[p] = e;
        } catch (e) {
          // An attached queue without an engine would take frames nobody reads.
          if (p > 0) this.attachQueue(p, false);
          throw e;
        }
      } else if (p >= n) {
        this.stopEngine(p, true);
        // Detached queues get no frames from the kernel's steering; pair 0 never detaches.
        if (p > 0) this.attachQueue(p, false);
      }
    }
  }

  private attachQueue(p: number, attach: boolean): void {
    if (this.attached[p] === attach) return;
    native(`TAP '${this.tapName}'`, () => addon().tapSetQueue(this.tapFds[p], attach));
    this.attached[p] = attach;
  }

  private makeEngine(p: number): NativeEngine {
    const f = this._driverFeatures;
    const hdrLen = netHdrSize(f);
    const rx = this.queues[2 * p]!;
    const tx = this.queues[2 * p + 1]!;
    const resume = (i: number): { lastAvailIdx: number; usedIdx: number } => this.positions.get(i) ?? { lastAvailIdx: 0, usedIdx: 0 };
    return native(`queue pair ${p}`, () =>
      new (addon().Engine)({
        memory: this.memory,
        tapFd: this.tapFds[p],
        hdrLen,
        mergeable: has(f, 'MRG_RXBUF'),
        eventIdx: has(f, 'RING_EVENT_IDX'),
        indirect: has(f, 'RING_INDIRECT_DESC'),
        rxFrameMax: rxFrameMax(this.guestOffloads, hdrLen, this.mtu),
        busyPollUs: this.busyPollUs,
        io: this.io,
        sqpoll: this.sqpoll,
        rx: { index: 2 * p, ...rx, kickFd: this.kickFds[2 * p], callFd: this.callFds[2 * p], ...resume(2 * p) },
        tx: { index: 2 * p + 1, ...tx, kickFd: this.kickFds[2 * p + 1], callFd: this.callFds[2 * p + 1], ...resume(2 * p + 1) },
        onBroken: (queue: number, rule: string, detail: string) => this.guestBrokeRule(queue, rule, detail),
      }),
    );
  }

  /** Stops pair p's engine and keeps its counters and ring positions. */
  private stopEngine(p: number, drainRx = false): void {
    const e = this.engines[p];
    if (!e) return;
    e.stop(drainRx);
    const s = e.stats();
    for (const [i, kind, live] of [[2 * p, 'rx', s.rx], [2 * p + 1, 'tx', s.tx]] as const) {
      this.retired.set(i, this.merge(i, kind, live));
      this.positions.set(i, { lastAvailIdx: live.lastAvailIdx, usedIdx: live.usedIdx });
    }
    this.engines[p] = undefined;
  }

  private stopAll(): void {
    for (let p = 0; p < this.queuePairs; p++) this.stopEngine(p);
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
    this.stopAll();
    // Ring positions start from 0 after a reset; counters stay monotonic.
    this.positions.clear();
    const a = addon();
    for (let p = 1; p < this.queuePairs; p++) this.attachQueue(p, true);
    for (const fd of this.tapFds) native(`TAP '${this.tapName}'`, () => a.tapSetCarrier(fd, false));
    this._status = 0;
    this._driverFeatures = 0n;
    this.guestOffloads = 0n;
    this.featuresError = null;
    this.queues.fill(undefined);
    this.activePairs = 1;
    this.resetConfig();
    // Drain stale doorbells so the next initialisation starts quiet.
    a.waitCall([...this.kickFds, ...this.callFds], 0);
  }

  /** One control command; returns the ack. Malformed commands get ERR, never an exception. */
  private handleCtrl({ cls, cmd, data }: NativeCtrlCommand): number {
    const f = this._driverFeatures;
    try {
      switch (cls) {
        case CTRL.CLASS_RX: {
          if (!has(f, 'CTRL_RX') || data.length !== 1) return CTRL.ERR;
          const extra = cmd >= CTRL.RX_ALLUNI;
          if (extra && !has(f, 'CTRL_RX_EXTRA')) return CTRL.ERR;
          if (!this.rxFilter.setMode(cmd, data[0] !== 0)) return CTRL.ERR;
          this.applyRxFilter();
          this.emit('rx-filter', this.rxFilter.describe());
          return CTRL.OK;
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
          this.applyRxFilter();
          this.emit('rx-filter', this.rxFilter.describe());
          return CTRL.OK;
        }
        case CTRL.CLASS_VLAN: {
          if (!has(f, 'CTRL_VLAN') || data.length !== 2) return CTRL.ERR;
          const vid = data[0] | (data[1] << 8);
          if (vid >= 4096) return CTRL.ERR;
          if (cmd === CTRL.VLAN_ADD) this.rxFilter.setVlan(vid, true);
          else if (cmd === CTRL.VLAN_DEL) this.rxFilter.setVlan(vid, false);
          else return CTRL.ERR;
          this.applyRxFilter();
          this.emit('rx-filter', this.rxFilter.describe());
          return CTRL.OK;
        }
        case CTRL.CLASS_ANNOUNCE: {
          if (!has(f, 'GUEST_ANNOUNCE') || cmd !== CTRL.ANNOUNCE_ACK || data.length !== 0) return CTRL.ERR;
          this.config.setUint16(CONFIG.OFF_STATUS, this.config.getUint16(CONFIG.OFF_STATUS, true) & ~CONFIG.S_ANNOUNCE, true);
          return CTRL.OK;
        }
        case CTRL.CLASS_MQ: {
          if (!has(f, 'MQ') || cmd !== CTRL.MQ_VQ_PAIRS_SET || data.length !== 2) return CTRL.ERR;
          const n = data[0] | (data[1] << 8);
          if (n < CTRL.MQ_VQ_PAIRS_MIN || n > this.queuePairs) return CTRL.ERR;
          this.setActivePairs(n);
          this.emit('queue-pairs', n);
          return CTRL.OK;
        }
        case CTRL.CLASS_GUEST_OFFLOADS: {
          if (!has(f, 'CTRL_GUEST_OFFLOADS') || cmd !== CTRL.GUEST_OFFLOADS_SET || data.length !== 8) return CTRL.ERR;
          const want = new DataView(data.buffer, data.byteOffset, 8).getBigUint64(0, true);
          // Only GUEST_* bits that were negotiated may be switched (virtio 1.x §5.1.6.5.6.1).
          if (want & ~(f & GUEST_OFFLOAD_FEATURES)) return CTRL.ERR;
          if (validateDriverFeatures(want | (f & ~GUEST_OFFLOAD_FEATURES), this.deviceFeatures)) return CTRL.ERR;
          this.guestOffloads = want;
          this.programOffloads();
          return CTRL.OK;
        }
        default:
          return CTRL.ERR;
      }
    } catch (e) {
      this.emit('warning', convert('control queue', e));
      return CTRL.ERR;
    }
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
    for (const fd of [...this.tapFds, ...this.kickFds, ...this.callFds]) {
      try {
        a.close(fd);
      } catch {
        // Already closed: nothing left to release.
      }
    }
    this.tapFds.length = 0;
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
