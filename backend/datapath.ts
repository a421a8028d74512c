// One TAP's data plane, shared by the embedded device (device.ts) and the
// vhost-user back end (vhost-user/backend.ts): the TAP's queues, the offload
// probe and the TAP programming that follows negotiated features, one native
// engine per running queue pair, attaching/detaching/steering TAP queues as
// pairs come and go, and statistics that stay monotonic across engines.
// Internal to backend/: what differs between the two (status writes and a
// control queue, or vhost-user messages) stays with them.

import * as fs from 'node:fs';

import { convert, DeviceStateError, native, PermissionError } from './errors';
import { Capabilities, GUEST_OFFLOAD_FEATURES, probeOffloads, rxFrameMax, tunOffloads } from './features';
import { addon, NativeEngine, NativeGuestMemory, NativeQueueConfig, NativeQueueStats, NativeTapOps, NativeTapStep, TAP_STEP } from './native';
import { RxFilterSnapshot } from './rxfilter';
import { has, netHdrSize } from './virtio';

/**
 * Frames read off a TAP queue (and counted) before it is detached with no engine running:
 * a queue holds at most txqueuelen frames (1000 by default), so this only bounds the work
 * a flood could make the JS thread do.
 */
const DISCARD_MAX = 65536;

/** A name for an errno the steering program's load failed with, and what it usually means. */
function errnoName(err: number): string {
  const known: Record<number, string> = {
    1: 'EPERM: loading BPF programs needs CAP_BPF (or CAP_SYS_ADMIN) here',
    13: 'EACCES: the verifier refused the program',
    22: 'EINVAL: the kernel refused the program',
    7: 'E2BIG: the program is too large for this kernel',
    12: 'ENOMEM: no memory (or memlock limit) for the map',
    38: 'ENOSYS: this kernel has no bpf()',
  };
  return known[err] ?? `errno ${err}`;
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
  /** Chains kept back because the I/O mechanism failed unconfirmed (see NativeQueueStats.withheld); normally 0. */
  withheld: number;
  /** UDP tunnel super-frames (a tunnel gso_type) moved, and their bytes (see NativeQueueStats). */
  udpTunnelGsoPackets: number;
  udpTunnelGsoBytes: number;
  /**
   * Chains returned to the guest in the used ring. TX: each is one frame, so
   * usedChains = packets + the sum of drops. RX: a mergeable frame may take several.
   */
  usedChains: number;
  /** Dropped frames by reason. */
  drops: Record<string, number>;
  broken: boolean;
}

/**
 * RSS steering: which part picks each received frame's queue. 'off': the kernel's own flow
 * steering, as the guest configured no RSS; 'ebpf': the guest's RSS_CONFIG compiled into the
 * TAP's steering program; 'kernel': the guest configured RSS but its program could not load
 * (`why`), so the kernel's own flow steering runs (hash reports stay exact, queues do not
 * follow the guest's table). `fallbacks` counts configurations that fell back so.
 */
export interface RssSteeringStats {
  steering: 'off' | 'ebpf' | 'kernel';
  fallbacks: number;
  why?: string;
}

/** What the RSS steering program is built from (backend/rss.ts checked it). */
export interface RssSteering {
  hashTypes: number;
  key: Uint8Array;
  table: Uint16Array;
  unclassifiedQueue: number;
}

export interface DeviceStats {
  queues: QueueStats[];
  /** I/O method the workers use. */
  io: string;
  /** Frames the RX filter (RX modes, MAC table, VLAN filter) kept from the guest. */
  filtered: number;
  totals: { rxPackets: number; rxBytes: number; txPackets: number; txBytes: number; drops: number };
  /**
   * GSO over UDP tunnels (VXLAN, GENEVE; features 65..68): whether this kernel's TAP has it
   * (Linux 6.17+; `why` says what is missing when not, and the features are then not offered),
   * and what the driver took: `guest` the TAP may hand it tunnel super-frames now (GUEST_UDP_TUNNEL_GSO,
   * switched by GUEST_OFFLOADS_SET), `host` it may send them (HOST_UDP_TUNNEL_GSO).
   */
  udpTunnelGso: { kernel: boolean; guest: boolean; host: boolean; why?: string };
  /** UDP tunnel super-frames moved, all queues: `rx` TAP → guest, `tx` guest → TAP (frames, bytes). */
  udpTunnelGsoFrames: { rx: { frames: number; bytes: number }; tx: { frames: number; bytes: number } };
  /** RSS steering: which part picks the queues, and how often the program could not load. */
  rss: RssSteeringStats;
}

/** One virtqueue as an engine runs it: where it lives, its eventfds, where to resume (always given here). */
export type RingConfig = Required<NativeQueueConfig>;

/** Where a ring stopped: the next avail index to read and the used index last published. */
export interface RingPosition {
  lastAvailIdx: number;
  usedIdx: number;
}

/** What a pair needs to run: its two rings and who hears about a rule the guest broke. */
export interface PairSetup {
  rx: RingConfig;
  tx: RingConfig;
  onBroken: (queue: number, rule: string, detail: string) => void;
}

/** Where each stopped pair's rings stopped. */
export type StoppedPairs = Map<number, { rx: RingPosition; tx: RingPosition }>;

/** What a step of a TapOps list changes here once it has run (applied on the JS thread). */
type StepEffect =
  | { kind: 'attach'; p: number; attach: boolean }
  | { kind: 'steer'; queue: number }
  | { kind: 'discard'; p: number }
  | { kind: 'start'; p: number; engine: NativeEngine }
  | { kind: 'stop'; p: number; engine: NativeEngine }
  | { kind: 'offload'; bits: bigint }
  | { kind: 'rss'; on: boolean }
  | { kind: 'none' };

/** A list of steps running off the JS thread, and what its outcome will change here. */
interface Work {
  effects: StepEffect[];
  stopped: StoppedPairs;
  /** `configVersion` when the list began: engines it starts were configured with that. */
  version: number;
}

export interface TapDataPathOptions {
  tap: string;
  /** /run/netns/NAME, or null for this process's namespace. */
  netnsPath: string | null;
  queuePairs: number;
  /** Extra TUNSETIFF flags (IFF_NAPI). */
  tapFlags: number;
  /** MTU set on the TAP at open; left alone when undefined. */
  mtu?: number;
  busyPollUs: number;
  io: 'auto' | 'readv';
  /** io_uring through a kernel thread polling the submission ring (engine option sqpoll). */
  sqpoll?: boolean;
}

export class TapDataPath {
  /** The TAP's name as the kernel reports it. */
  readonly tapName: string;
  readonly queuePairs: number;
  /** What the TAP accepted in the offload probe, and why anything is missing. */
  readonly caps: Capabilities;
  /** Offload feature bits the TAP can carry (CSUM, GUEST_TSO4, ...). */
  readonly offloads: bigint;
  /** The guest memory engines translate through; the owner sets it before pairs start. */
  memory: NativeGuestMemory | undefined;

  private readonly netnsPath: string | null;
  private readonly busyPollUs: number;
  private readonly io: 'auto' | 'readv';
  private readonly sqpoll: boolean;
  private readonly fds: number[];
  /** Whether each TAP queue is attached (the kernel refuses to attach twice); all are after open. */
  private readonly attached: boolean[];
  private readonly engines: (NativeEngine | undefined)[];
  /**
   * Engines a running TapOps list starts or stops: not in `engines` until their worker runs,
   * no longer once it is being joined; counted in stats() meanwhile.
   */
  private readonly transit: (NativeEngine | undefined)[];
  /** Runs the *Async changes' TAP and engine steps off the JS thread. */
  private readonly ops: NativeTapOps;
  /** The list running in `ops`, until its outcome is applied (by its continuation or abort()). */
  private work: Work | undefined;
  /** Every frame is steered to queue 0 (while pairs leave). */
  private steeredToZero = false;
  /**
   * Bumped by whatever engines must hear of (RX filter, coalescing, new memory): an engine that
   * started off the JS thread is told again only when it changed meanwhile, since telling a
   * running worker contends with it.
   */
  private configVersion = 0;
  /** Counters of engines that were stopped, so stats() stays monotonic. */
  private readonly retired = new Map<number, QueueStats>();
  private features = 0n;
  private guestOffloads = 0n;
  private mtu = 1500;
  private rxFilter: RxFilterSnapshot | null = null;
  /** The guest's hash configuration (hash reports); null until it sends one. */
  private rssHash: { hashTypes: number; key: Uint8Array } | null = null;
  /** The RSS steering program attached to the TAP (its fd, ours to close), or -1. */
  private rssProg = -1;
  private readonly rssStats: RssSteeringStats = { steering: 'off', fallbacks: 0 };
  /** The driver's interrupt coalescing for all RX and all TX queues (RX_SET / TX_SET). */
  private readonly coalescing: Record<'rx' | 'tx', Coalescing> = { rx: [0, 0], tx: [0, 0] };
  /** Per virtqueue, set since (VQ_SET): what differs from `coalescing` while the queue runs. */
  private readonly queueCoalescingSet = new Map<number, Coalescing>();
  private closed = false;
  /** The I/O method engines used last: the final statistics after sessions ended still say it ('none' before any ran). */
  private lastIo = 'none';
  /** Holds this process's claim on the TAP (tapLock) until close(). */
  private lockFd = -1;

  private constructor(opts: TapDataPathOptions, fds: number[], name: string, probe: { offered: bigint; caps: Capabilities }) {
    this.tapName = name;
    this.queuePairs = opts.queuePairs;
    this.netnsPath = opts.netnsPath;
    this.busyPollUs = opts.busyPollUs;
    this.io = opts.io;
    this.sqpoll = opts.sqpoll ?? false;
    this.fds = fds;
    this.attached = fds.map(() => true);
    this.engines = new Array(opts.queuePairs).fill(undefined);
    this.transit = new Array(opts.queuePairs).fill(undefined);
    this.ops = new (addon().TapOps)();
    this.caps = probe.caps;
    this.offloads = probe.offered;
    if (opts.mtu !== undefined) this.mtu = opts.mtu;
  }

  /**
   * Opens (creating) the TAP with one queue per pair, probes its offloads, sets its MTU,
   * carrier off (no guest yet) and brings it up. Throws a typed error.
   */
  static open(opts: TapDataPathOptions): TapDataPath {
    const a = addon();
    const what = `TAP '${opts.tap}'`;
    const fds: number[] = [];
    // First of all, so that a second back end on this TAP is refused before it attaches a queue.
    const lockFd = native(what, () => a.tapLock(opts.tap, opts.netnsPath));
    try {
      let name = opts.tap;
      for (let i = 0; i < opts.queuePairs; i++) {
        const q = native(what, () => a.tapOpen(opts.tap, opts.netnsPath, opts.tapFlags));
        fds.push(q.fd);
        name = q.name;
      }
      const probe = probeOffloads((flags) => native(what, () => a.tapSetOffload(fds[0], flags)));
      // Interface settings need CAP_NET_ADMIN, the TUN ioctls only the TAP's owner: a user's
      // persistent TAP (ip tuntap add ... user U) works when root already set it up as asked.
      const info = native(what, () => a.netdevInfo(opts.netnsPath, name));
      if (opts.mtu !== undefined && info.mtu !== opts.mtu) {
        unprivileged(what, `its MTU is ${info.mtu}, and setting it to ${opts.mtu}`, `ip link set ${name} mtu ${opts.mtu}`, () =>
          a.netdevSetMtu(opts.netnsPath, name, opts.mtu!),
        );
      }
      for (const fd of fds) native(what, () => a.tapSetCarrier(fd, false));
      if (!(info.flags & IFF_UP)) {
        unprivileged(what, 'it is down, and bringing it up', `ip link set ${name} up`, () => a.netdevSetUp(opts.netnsPath, name, true));
      }
      const dp = new TapDataPath(opts, fds, name, probe);
      dp.lockFd = lockFd;
      return dp;
    } catch (e) {
      for (const fd of fds) a.close(fd);
      a.close(lockFd);
      throw convert(what, e);
    }
  }

  private get what(): string {
    return `TAP '${this.tapName}'`;
  }

  /**
   * Programs the TAP for a negotiated feature set: virtio_net_hdr size, little-endian headers
   * with VERSION_1, the TUNSETOFFLOAD flags of the GUEST_* offloads. Engines started from now
   * on use these features; `mtu` sizes the largest RX frame without GSO.
   */
  program(features: bigint, mtu: number): void {
    const a = addon();
    const hdrLen = netHdrSize(features);
    for (const fd of this.fds) {
      native(this.what, () => a.tapSetVnetHdrSz(fd, hdrLen));
      // virtio 1.x headers are little-endian whatever the host; legacy ones are the guest's (here: the host's).
      if (has(features, 'VERSION_1')) native(this.what, () => a.tapSetVnetLe(fd, true));
    }
    this.features = features;
    this.mtu = mtu;
    this.setGuestOffloads(features & GUEST_OFFLOAD_FEATURES);
  }

  /** The GUEST_* offloads the guest takes now (CTRL_GUEST_OFFLOADS changes them at run time). */
  setGuestOffloads(bits: bigint): void {
    const flags = tunOffloads(bits);
    native(this.what, () => addon().tapSetOffload(this.fds[0], flags));
    this.guestOffloads = bits;
  }

  /**
   * Writes one frame the device makes itself (an announce) into the TAP on queue 0, as though
   * the guest had sent it: a zeroed virtio_net_hdr of the size the TAP takes now (no offload
   * asked), then the frame, in one write(), which the kernel takes whole beside the workers'.
   */
  writeFrame(frame: Buffer): void {
    const fd = this.fds[0];
    const hdrLen = native(this.what, () => addon().tapGetVnetHdrSz(fd));
    const all = Buffer.concat([Buffer.alloc(hdrLen), frame]);
    let n: number;
    try {
      n = fs.writeSync(fd, all);
    } catch (e) {
      throw new Error(`${this.what}: writing a frame failed: ${(e as Error).message}`);
    }
    if (n !== all.length) throw new Error(`${this.what}: the TAP took ${n} of ${all.length} bytes of a frame`);
  }

  /** The TAP's carrier, on every queue. */
  setCarrier(up: boolean): void {
    for (const fd of this.fds) native(this.what, () => addon().tapSetCarrier(fd, up));
  }

  /** TUNSETTXFILTER: the coarse filter the kernel applies before frames reach the queues. */
  setTxFilter(flags: number, macs: Uint8Array): void {
    native(this.what, () => addon().tapSetTxFilter(this.fds[0], flags, macs));
  }

  /** The exact per-frame RX filter for every engine, running or started later (null: accept all). */
  setRxFilter(snapshot: RxFilterSnapshot | null): void {
    this.configVersion++;
    this.rxFilter = snapshot;
    for (const e of this.engines) e?.setRxFilter(snapshot);
  }

  /** The guest's hash configuration for hash reports, for every engine, running or started later. */
  setRssHash(config: { hashTypes: number; key: Uint8Array } | null): void {
    this.configVersion++;
    this.rssHash = config;
    for (const e of this.engines) e?.setRssHash(config);
  }

  /**
   * The guest's RSS_CONFIG or HASH_CONFIG, applied off the JS thread so that its ack can
   * follow it: the engines take `hash` for their hash reports; with `steering` the RSS
   * program for it is loaded and attached to the TAP (replacing the one before under RCU:
   * each frame the kernel steers runs the old program or the new one), null detaches it
   * (the kernel's own steering), undefined leaves steering as it is. Resolves once every
   * running worker ended the RX round it was in, so every frame published afterwards carries
   * the new hash. A program that cannot load (no CAP_BPF, the verifier) leaves the kernel's
   * own steering: stats().rss says 'kernel' and why, and the result carries that reason.
   */
  async setRssAsync(hash: { hashTypes: number; key: Uint8Array } | null, steering: RssSteering | null | undefined): Promise<{ fellBack?: string }> {
    this.assertIdle();
    this.setRssHash(hash);
    const steps: NativeTapStep[] = [];
    const effects: StepEffect[] = [];
    if (steering) {
      steps.push({ op: 'rss', fd: this.fds[0], ...steering });
      effects.push({ kind: 'rss', on: true });
    } else if (steering === null && (this.rssProg >= 0 || this.rssStats.steering !== 'off')) {
      steps.push({ op: 'program', fd: this.fds[0], prog: -1 });
      effects.push({ kind: 'rss', on: false });
    }
    for (const e of this.engines) {
      if (!e) continue;
      steps.push({ op: 'rxsync', engine: e });
      effects.push({ kind: 'none' });
    }
    const was = this.rssStats.steering;
    const w = await this.run(steps, effects);
    if (w.error) throw w.error;
    // Said once when it starts, not at every command of a guest that keeps sending them.
    return this.rssStats.steering === 'kernel' && was !== 'kernel' ? { fellBack: this.rssStats.why } : {};
  }

  /**
   * Steering back to the kernel's own, on the JS thread (a device reset: the next driver
   * starts without RSS). Throws a TAP refusal after letting go of the program either way.
   */
  clearRss(): void {
    this.setRssHash(null);
    if (this.rssProg < 0 && this.rssStats.steering === 'off') return;
    try {
      native(this.what, () => addon().tapSetSteeringProgram(this.fds[0], -1));
    } finally {
      this.rssSteered(-1, false, '');
    }
  }

  /** What an 'rss' or 'program' step did: `prog` the program now attached (or -errno / -1). */
  private rssSteered(prog: number, on: boolean, note: string | undefined): void {
    if (this.rssProg >= 0 && this.rssProg !== prog) addon().close(this.rssProg);
    this.rssProg = prog >= 0 ? prog : -1;
    delete this.rssStats.why;
    if (!on) {
      this.rssStats.steering = 'off';
    } else if (prog >= 0) {
      this.rssStats.steering = 'ebpf';
    } else {
      this.rssStats.steering = 'kernel';
      this.rssStats.fallbacks++;
      this.rssStats.why = `${errnoName(-prog)}${note ? ` (${note})` : ''}`;
    }
  }

  /**
   * Interrupt coalescing for every RX or TX queue, running or started later (0, 0: off); it
   * replaces what setQueueCoalescing() gave queues of that kind.
   */
  setCoalescing(kind: 'rx' | 'tx', maxPackets: number, maxUsecs: number): void {
    this.configVersion++;
    this.coalescing[kind] = [maxPackets, maxUsecs];
    for (const vq of this.queueCoalescingSet.keys()) if (kindOf(vq) === kind) this.queueCoalescingSet.delete(vq);
    for (const e of this.engines) e?.setCoalescing(kind, maxPackets, maxUsecs);
  }

  /** Interrupt coalescing for virtqueue `vq` of a running pair, until the pair stops or setCoalescing(). */
  setQueueCoalescing(vq: number, maxPackets: number, maxUsecs: number): void {
    const e = this.engines[vq >> 1];
    if (!e) throw new DeviceStateError(`virtqueue ${vq} is not running`);
    this.configVersion++;
    this.queueCoalescingSet.set(vq, [maxPackets, maxUsecs]);
    e.setCoalescing(kindOf(vq), maxPackets, maxUsecs);
  }

  /** The coalescing virtqueue `vq` runs with (or would start with). */
  queueCoalescing(vq: number): Coalescing {
    return this.queueCoalescingSet.get(vq) ?? this.coalescing[kindOf(vq)];
  }

  running(p: number): boolean {
    return this.engines[p] !== undefined;
  }

  /** A new call fd for running pair p's RX or TX ring, swapped into its worker (no restart). */
  setCallFd(p: number, ring: 'rx' | 'tx', fd: number): void {
    const e = this.engines[p];
    if (!e) throw new DeviceStateError(`queue pair ${p} is not running`);
    native(this.what, () => e.setCallFd(ring, fd));
  }

  /**
   * Per-queue reset of virtqueue `vq` of running pair vq/2 (VIRTIO_F_RING_RESET): only that
   * ring stops, the pair's other ring and the other pairs run on. Returns where it stood.
   */
  resetQueue(vq: number): RingPosition {
    const e = this.engines[vq >> 1];
    if (!e) throw new DeviceStateError(`virtqueue ${vq} is not running`);
    this.queueCoalescingSet.delete(vq);
    return native(`virtqueue ${vq}`, () => e.resetQueue(kindOf(vq)));
  }

  /** Serves reset virtqueue `vq` again with a new ring (from a fresh position); the pair must run. */
  enableQueue(vq: number, ring: { size: number; desc: number; avail: number; used: number; packed?: boolean }): void {
    const e = this.engines[vq >> 1];
    if (!e) throw new DeviceStateError(`virtqueue ${vq} is not running`);
    native(`virtqueue ${vq}`, () => e.enableQueue(kindOf(vq), ring));
    // A queue enabled again takes RX_SET's / TX_SET's values (virtio 1.3, Notifications Coalescing).
    e.setCoalescing(kindOf(vq), ...this.coalescing[kindOf(vq)]);
  }

  /** Starts pair p's engine on its TAP queue, attaching the queue if it was detached. */
  startPair(p: number, setup: PairSetup): void {
    if (this.engines[p]) return;
    this.attach(p, true);
    let e: NativeEngine | undefined;
    try {
      e = this.makeEngine(p, setup);
      this.configure(p, e);
      e.start();
      this.engines[p] = e;
    } catch (err) {
      e?.close();
      // An attached queue without an engine would take frames nobody reads.
      if (p > 0) {
        try {
          this.attach(p, false);
        } catch {
          // The start failure is the one worth reporting.
        }
      }
      throw err;
    }
  }

  /**
   * Stops pair p's engine, keeps its counters, releases it, and returns where its rings
   * stopped (undefined when it was not running). With `drainRx` the worker first moves what
   * the TAP queue holds into posted buffers (before a detach, which would drop it).
   */
  stopPair(p: number, drainRx = false): { rx: RingPosition; tx: RingPosition } | undefined {
    const e = this.engines[p];
    if (!e) return undefined;
    this.engines[p] = undefined;
    // A queue enabled again takes RX_SET's / TX_SET's values (virtio 1.3, Notifications Coalescing).
    this.queueCoalescingSet.delete(2 * p);
    this.queueCoalescingSet.delete(2 * p + 1);
    e.stop(drainRx);
    return this.retire(p, e);
  }

  /** A stopped engine of pair p: keeps its counters, releases it, returns where its rings stopped. */
  private retire(p: number, e: NativeEngine): { rx: RingPosition; tx: RingPosition } {
    const s = e.stats();
    this.lastIo = s.io;
    e.close();
    for (const [i, kind, live] of [[2 * p, 'rx', s.rx], [2 * p + 1, 'tx', s.tx]] as const) this.retired.set(i, this.merge(i, kind, live));
    return { rx: { lastAvailIdx: s.rx.lastAvailIdx, usedIdx: s.rx.usedIdx }, tx: { lastAvailIdx: s.tx.lastAvailIdx, usedIdx: s.tx.usedIdx } };
  }

  /**
   * Starts and stops pairs together: a pair mapped to a setup runs, one mapped to null stops
   * and its TAP queue is detached (never queue 0), so the kernel's steering stops giving it
   * frames. Detaching drops what the kernel still holds for that queue, so while pairs leave
   * all new frames are steered to queue 0 and the leaving pairs first drain into their rings.
   * Returns where the stopped pairs' rings stopped. Pairs not in `changes` are left alone.
   * On failure the pairs already switched stay switched; running() says what runs.
   */
  setPairs(changes: Map<number, PairSetup | null>): Map<number, { rx: RingPosition; tx: RingPosition }> {
    const a = addon();
    const stopped = new Map<number, { rx: RingPosition; tx: RingPosition }>();
    // A queue leaves the kernel's steering when its pair stops (its engine drains it first)
    // or when it is attached with no engine at all (after a reset, until DRIVER_OK says how
    // many pairs run): either way it may hold frames.
    const shrinking = [...changes].some(([p, s]) => s === null && (this.engines[p] || (p > 0 && this.attached[p])));
    // Loading the steering program needs CAP_BPF (or CAP_SYS_ADMIN) on kernels that keep
    // unprivileged BPF off (Debian's default). Without it a user's TAP still shrinks: the
    // kernel's own steering may then hand a leaving queue a frame between its drain and its
    // detach, which the kernel frees on detach.
    let steered = false;
    if (shrinking) {
      try {
        native(this.what, () => a.tapSteerAllTo(this.fds[0], 0));
        steered = true;
      } catch (e) {
        if (!(e instanceof PermissionError)) throw e;
      }
    }
    let failure: unknown;
    try {
      for (const [p, s] of [...changes].sort((x, y) => x[0] - y[0])) {
        if (s) {
          this.startPair(p, s);
          continue;
        }
        const pos = this.stopPair(p, true);
        if (pos) stopped.set(p, pos);
        // Detached queues get no frames from the kernel's steering; pair 0 never detaches.
        if (p > 0) {
          if (!pos && this.attached[p]) this.discardQueued(p);
          this.attach(p, false);
        }
      }
    } catch (e) {
      failure = e;
    }
    if (steered) {
      try {
        native(this.what, () => a.tapSetSteeringProgram(this.fds[0], this.rssProg));
      } catch (e) {
        failure ??= e;
      }
    }
    if (failure) throw failure;
    return stopped;
  }

  /**
   * setPairs() with its TAP and engine work off the JS thread (TapOps): for a guest's
   * VQ_PAIRS_SET, which may come 64 at a time. The same steps in the same order; resolves
   * once every step ran, so what runs afterwards is what `changes` asked for (running() says
   * nothing new before that). One change at a time; abort() (reset, close) stops it after
   * its current step, and its promise then rejects with a DeviceStateError.
   */
  async setPairsAsync(changes: Map<number, PairSetup | null>): Promise<StoppedPairs> {
    const steps: NativeTapStep[] = [];
    const effects: StepEffect[] = [];
    const add = (step: NativeTapStep, effect: StepEffect): void => {
      steps.push(step);
      effects.push(effect);
    };
    this.assertIdle();
    const shrinking = [...changes].some(([p, s]) => s === null && (this.engines[p] || (p > 0 && this.attached[p])));
    if (shrinking) add({ op: 'steer', fd: this.fds[0], queue: 0 }, { kind: 'steer', queue: 0 });
    try {
      for (const [p, s] of [...changes].sort((x, y) => x[0] - y[0])) {
        if (s) {
          if (this.engines[p]) continue;
          if (!this.attached[p]) add({ op: 'attach', fd: this.fds[p] }, { kind: 'attach', p, attach: true });
          const e = this.makeEngine(p, s);
          this.transit[p] = e;
          add({ op: 'start', engine: e }, { kind: 'start', p, engine: e });
          this.configure(p, e);
          continue;
        }
        const e = this.engines[p];
        if (e) {
          this.engines[p] = undefined;
          this.transit[p] = e;
          this.queueCoalescingSet.delete(2 * p);
          this.queueCoalescingSet.delete(2 * p + 1);
          add({ op: 'stop', engine: e, drain: true }, { kind: 'stop', p, engine: e });
        }
        if (p > 0 && this.attached[p]) {
          if (!e) add({ op: 'discard', fd: this.fds[p], max: DISCARD_MAX }, { kind: 'discard', p });
          add({ op: 'detach', fd: this.fds[p] }, { kind: 'attach', p, attach: false });
        }
      }
    } catch (err) {
      // Nothing ran yet: engines made go, engines taken out run on.
      this.settle({ effects, stopped: new Map(), version: this.configVersion }, [], []);
      throw err;
    }
    // Back to the guest's RSS program when one runs, else the kernel's own steering.
    if (shrinking) add({ op: 'program', fd: this.fds[0], prog: this.rssProg, always: true }, { kind: 'steer', queue: -1 });
    const w = await this.run(steps, effects);
    // A worker that could not start leaves its queue attached: it would take frames nobody reads.
    const orphans = effects.filter((e, i): e is StepEffect & { kind: 'start' } => e.kind === 'start' && e.p > 0 && !w.ok[i] && this.attached[e.p]);
    if (orphans.length) {
      await this.run(
        orphans.map((o) => ({ op: 'detach', fd: this.fds[o.p] })),
        orphans.map((o) => ({ kind: 'attach', p: o.p, attach: false })),
      ).catch(() => undefined); // the start failure is the one worth reporting
    }
    if (w.error) throw w.error;
    return w.stopped;
  }

  /** setTxFilter() off the JS thread (TUNSETTXFILTER takes the RTNL lock). */
  async setTxFilterAsync(flags: number, macs: Uint8Array): Promise<void> {
    this.assertIdle();
    const w = await this.run([{ op: 'txfilter', fd: this.fds[0], flags, macs }], [{ kind: 'none' }]);
    if (w.error) throw w.error;
  }

  /** setGuestOffloads() off the JS thread (TUNSETOFFLOAD takes the RTNL lock). */
  async setGuestOffloadsAsync(bits: bigint): Promise<void> {
    this.assertIdle();
    const w = await this.run([{ op: 'offload', fd: this.fds[0], flags: tunOffloads(bits) }], [{ kind: 'offload', bits }]);
    if (w.error) throw w.error;
  }

  /**
   * Stops an *Async change in progress (reset, close, FAILED): waits for its current step
   * only, then applies what it did; engines it was starting or stopping are in `engines` if
   * their worker runs (so that stopPair() stops them), and steering is the kernel's again.
   * Returns where the pairs it stopped stopped.
   */
  abort(): StoppedPairs {
    const w = this.work;
    if (!w) return new Map();
    this.work = undefined;
    const r = this.ops.cancel();
    this.settle(w, r?.status ?? [], r?.result ?? []);
    if (this.steeredToZero) {
      try {
        native(this.what, () => addon().tapSetSteeringProgram(this.fds[0], this.rssProg));
        this.steeredToZero = false;
      } catch {
        // A TAP that refuses (deleted from outside) refuses the rest too; the caller reports that.
      }
    }
    return w.stopped;
  }

  private assertIdle(): void {
    if (this.work) throw new DeviceStateError('a change of the TAP is still in progress; changes are made one at a time');
    if (this.closed) throw new DeviceStateError('the TAP is closed');
  }

  /** Runs a list on `ops` and applies its outcome, unless abort() got there first. */
  private async run(steps: NativeTapStep[], effects: StepEffect[]): Promise<Work & { ok: boolean[]; error: Error | undefined }> {
    const w: Work = { effects, stopped: new Map(), version: this.configVersion };
    this.work = w;
    let r: Awaited<ReturnType<NativeTapOps['run']>>;
    try {
      r = await this.ops.run(steps);
    } catch (e) {
      if (this.work === w) {
        this.work = undefined;
        this.settle(w, [], []);
      }
      throw convert(this.what, e);
    }
    if (this.work !== w) throw new DeviceStateError('the change was cut short by a reset or close of the device');
    this.work = undefined;
    this.settle(w, r.status, r.result, r.note);
    return { ...w, ok: r.status.map((s) => s === TAP_STEP.DONE), error: r.error ? convert(this.what, r.error) : undefined };
  }

  /**
   * Applies what the steps of `w` did (status[i] DONE) on the JS thread. An engine whose
   * start did not run is released; one whose stop did not run still runs and goes back to
   * `engines`.
   */
  private settle(w: Work, status: number[], result: number[], note: string[] = []): void {
    w.effects.forEach((e, i) => {
      const done = status[i] === TAP_STEP.DONE;
      switch (e.kind) {
        case 'rss':
          if (done) this.rssSteered(e.on ? result[i] : -1, e.on, note[i]);
          break;
        case 'attach':
          if (done) this.attached[e.p] = e.attach;
          break;
        case 'steer':
          if (done) this.steeredToZero = e.queue >= 0;
          break;
        case 'discard':
          if (done) this.countDetached(e.p, result[i]);
          break;
        case 'start':
          this.transit[e.p] = undefined;
          if (done) {
            this.engines[e.p] = e.engine;
            // What changed while it started (filters, coalescing, memory) reaches it now.
            if (this.configVersion !== w.version) {
              this.configure(e.p, e.engine);
              e.engine.wake();
            }
          } else {
            e.engine.close();
          }
          break;
        case 'stop':
          this.transit[e.p] = undefined;
          if (done) w.stopped.set(e.p, this.retire(e.p, e.engine));
          else this.engines[e.p] = e.engine;
          break;
        case 'offload':
          if (done) this.guestOffloads = e.bits;
          break;
        case 'none':
          break;
      }
    });
  }

  /** The RX filter and coalescing pair p's engine runs with. */
  private configure(p: number, e: NativeEngine): void {
    e.setRxFilter(this.rxFilter);
    e.setRssHash(this.rssHash);
    for (const vq of [2 * p, 2 * p + 1]) e.setCoalescing(kindOf(vq), ...this.queueCoalescing(vq));
  }

  /**
   * Reads off and counts (rx_pair_detached) what pair p's TAP queue holds while no engine
   * runs for it: detaching the queue would make the kernel free those frames uncounted.
   * Steering must already send new frames elsewhere.
   */
  private discardQueued(p: number): void {
    this.countDetached(p, native(this.what, () => addon().tapDiscardQueued(this.fds[p], DISCARD_MAX)));
  }

  /** Counts `n` frames of pair p's TAP queue dropped with no engine to take them (rx_pair_detached). */
  private countDetached(p: number, n: number): void {
    if (n === 0) return;
    const q = this.merge(2 * p, 'rx', undefined);
    q.drops.rx_pair_detached = (q.drops.rx_pair_detached ?? 0) + n;
    this.retired.set(2 * p, q);
  }

  /** Stops every engine (no drain), keeping counters; an *Async change in progress first. */
  stopAll(): void {
    this.abort();
    for (let p = 0; p < this.queuePairs; p++) this.stopPair(p);
  }

  /**
   * Attaches every TAP queue again (after a reset: the next driver starts with all pairs
   * available to the kernel's steering). Throws the first TAP refusal after trying them all.
   */
  attachAll(): void {
    let failure: unknown;
    for (let p = 1; p < this.queuePairs; p++) {
      try {
        this.attach(p, true);
      } catch (e) {
        failure ??= e;
      }
    }
    if (failure) throw failure;
  }

  /** Guest memory was replaced: sleeping workers take the new table now. */
  wake(): void {
    this.configVersion++;
    for (const e of this.engines) e?.wake();
  }

  stats(): DeviceStats {
    const queues: QueueStats[] = [];
    for (let p = 0; p < this.queuePairs; p++) {
      const s = (this.engines[p] ?? this.transit[p])?.stats();
      if (s) this.lastIo = s.io;
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
    const udpTunnelGsoFrames = { rx: { frames: 0, bytes: 0 }, tx: { frames: 0, bytes: 0 } };
    for (const q of queues) {
      if (q.kind === 'ctrl') continue;
      udpTunnelGsoFrames[q.kind].frames += q.udpTunnelGsoPackets;
      udpTunnelGsoFrames[q.kind].bytes += q.udpTunnelGsoBytes;
    }
    const kernel = has(this.offloads, 'GUEST_UDP_TUNNEL_GSO') || has(this.offloads, 'HOST_UDP_TUNNEL_GSO');
    const udpTunnelGso: DeviceStats['udpTunnelGso'] = { kernel, guest: has(this.guestOffloads, 'GUEST_UDP_TUNNEL_GSO'), host: has(this.features, 'HOST_UDP_TUNNEL_GSO') };
    if (!kernel) udpTunnelGso.why = this.caps.missing.find((m) => m.feature === 'GUEST_UDP_TUNNEL_GSO')?.reason ?? 'not probed';
    return { queues, io: this.lastIo, filtered, totals, udpTunnelGso, udpTunnelGsoFrames, rss: { ...this.rssStats } };
  }

  /** Stops the engines and closes the TAP queues: the TAP goes with the last one. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.stopAll();
    const a = addon();
    if (this.rssProg >= 0) a.close(this.rssProg);
    this.rssProg = -1;
    for (const fd of this.fds) {
      try {
        a.close(fd);
      } catch {
        // Already closed: nothing left to release.
      }
    }
    this.fds.length = 0;
    if (this.lockFd >= 0) a.close(this.lockFd);
    this.lockFd = -1;
  }

  // --- internals -----------------------------------------------------------------------

  private attach(p: number, attach: boolean): void {
    if (this.attached[p] === attach) return;
    native(this.what, () => addon().tapSetQueue(this.fds[p], attach));
    this.attached[p] = attach;
  }

  private makeEngine(p: number, s: PairSetup): NativeEngine {
    const f = this.features;
    const hdrLen = netHdrSize(f);
    const memory = this.memory;
    return native(`queue pair ${p}`, () =>
      new (addon().Engine)({
        memory: memory!,
        tapFd: this.fds[p],
        hdrLen,
        mergeable: has(f, 'MRG_RXBUF'),
        eventIdx: has(f, 'RING_EVENT_IDX'),
        indirect: has(f, 'RING_INDIRECT_DESC'),
        packed: has(f, 'RING_PACKED'),
        inOrder: has(f, 'IN_ORDER'),
        rxFrameMax: rxFrameMax(this.guestOffloads, hdrLen, this.mtu),
        hostUdpTunnel: has(f, 'HOST_UDP_TUNNEL_GSO'),
        hostUdpTunnelCsum: has(f, 'HOST_UDP_TUNNEL_GSO_CSUM'),
        busyPollUs: this.busyPollUs,
        io: this.io,
        sqpoll: this.sqpoll,
        rx: s.rx,
        tx: s.tx,
        onBroken: s.onBroken,
      }),
    );
  }

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
      withheld: (old?.withheld ?? 0) + (live?.withheld ?? 0),
      udpTunnelGsoPackets: (old?.udpTunnelGsoPackets ?? 0) + (live?.udpTunnelGsoPackets ?? 0),
      udpTunnelGsoBytes: (old?.udpTunnelGsoBytes ?? 0) + (live?.udpTunnelGsoBytes ?? 0),
      usedChains: (old?.usedChains ?? 0) + (live?.usedChains ?? 0),
      drops,
      broken: live?.broken ?? false,
    };
  }
}

/** Interrupt coalescing of one queue: [maxPackets, maxUsecs]; 0 in either turns it off. */
export type Coalescing = [maxPackets: number, maxUsecs: number];

/** IFF_UP in SIOCGIFFLAGS. */
const IFF_UP = 0x1;

/**
 * Runs an interface change that needs CAP_NET_ADMIN; without it, says what root has to do
 * once for this TAP instead of the bare EPERM.
 */
function unprivileged(what: string, state: string, rootCommand: string, fn: () => void): void {
  try {
    native(what, fn);
  } catch (e) {
    if (!(e instanceof PermissionError)) throw e;
    throw new PermissionError(`${what}: ${state} needs CAP_NET_ADMIN: have root run '${rootCommand}' once, or run as root`);
  }
}

function kindOf(vq: number): 'rx' | 'tx' {
  return vq % 2 === 0 ? 'rx' : 'tx';
}
