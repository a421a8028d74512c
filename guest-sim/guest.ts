// The simulated guest as a whole, on the main thread: allocates guest
// memory, brings the device up the way Linux's virtio_net does (status
// handshake, feature negotiation, ring setup, DRIVER_OK), runs one Worker
// per queue pair, and speaks the control queue. Uses only the public API.

import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as v8 from 'node:v8';
import { MessageChannel, receiveMessageOnPort, Worker } from 'node:worker_threads';

import {
  bits,
  CTRL,
  ctrlq,
  DeviceStats,
  has,
  InvalidArgumentError,
  kick,
  netHdrSize,
  rxq,
  STATUS,
  TUN,
  txq,
  VirtioNetDevice,
  VirtioNetError,
} from '../backend';
import { CTRL_BUF_BYTES, ControlDriver, DriverMemory, DriverQueue, GuestAllocator, negotiate, PackedDriverQueue, setUpQueuePair, type NetQueuePairOptions } from '../driver';
import { formatMac, parseIPv4, parseIPv6, parseMac } from './packets';
import { pcapngHeader } from './pcapng';
import { CTL, CTL_BYTES, IsolateMemory, isolateMemory, PairConfig, PairMessage } from './worker';

/** Features guest-sim knows how to drive; the device offers, the guest takes the intersection. */
export const GUEST_SUPPORTED: bigint = bits(
  'VERSION_1',
  'MAC',
  'MTU',
  'STATUS',
  'MRG_RXBUF',
  'RING_EVENT_IDX',
  'RING_INDIRECT_DESC',
  'CTRL_VQ',
  'CTRL_RX',
  'CTRL_MAC_ADDR',
  // Interrupt coalescing, so that a caller (the soak) can ask for it over control();
  // guest-sim itself never does.
  'NOTF_COAL',
  // Per-queue reset: resetQueue() below.
  'RING_RESET',
  'MQ',
  'CSUM',
  'GUEST_CSUM',
  // Segmentation offloads guest-sim's TCP and UDP drive (see tcp.ts, responder.ts). Not UFO
  // (IP fragmentation, gone from Linux's send side) and not HOST_ECN (guest-sim sends no CWR).
  'HOST_TSO4',
  'HOST_TSO6',
  'HOST_USO',
  'GUEST_TSO4',
  'GUEST_TSO6',
  'GUEST_ECN',
  'GUEST_USO4',
  'GUEST_USO6',
);

/**
 * GSO over UDP tunnels (features 65..67), taken only by a guest that terminates a tunnel
 * (GuestOptions.tunnel): with them every frame carries the 24-byte header. Not
 * HOST_UDP_TUNNEL_GSO_CSUM: guest-sim's outer UDP checksum is 0 (tunnel.ts).
 */
export const TUNNEL_SUPPORTED: bigint = bits('HOST_UDP_TUNNEL_GSO', 'GUEST_UDP_TUNNEL_GSO', 'GUEST_UDP_TUNNEL_GSO_CSUM');

/** `--offloads` names → feature bits (what each lets the guest negotiate). */
export const OFFLOAD_NAMES: Readonly<Record<string, bigint>> = {
  csum: bits('CSUM'),
  tso4: bits('HOST_TSO4'),
  tso6: bits('HOST_TSO6'),
  uso: bits('HOST_USO'),
  'guest-csum': bits('GUEST_CSUM'),
  'guest-tso4': bits('GUEST_TSO4'),
  'guest-tso6': bits('GUEST_TSO6'),
  'guest-ecn': bits('GUEST_ECN'),
  'guest-uso4': bits('GUEST_USO4'),
  'guest-uso6': bits('GUEST_USO6'),
  // Only with a tunnel endpoint (--vxlan/--geneve); they need every plain GSO offload of their direction.
  'udp-tunnel': bits('HOST_UDP_TUNNEL_GSO'),
  'guest-udp-tunnel': bits('GUEST_UDP_TUNNEL_GSO', 'GUEST_UDP_TUNNEL_GSO_CSUM'),
};

/** Every offload bit guest-sim may negotiate. */
export const OFFLOAD_MASK: bigint = Object.values(OFFLOAD_NAMES).reduce((a, b) => a | b, 0n);

/**
 * Parses `--offloads`: 'none', or a comma-separated list of OFFLOAD_NAMES.
 * Returns the features mask for GuestOptions.features (non-offload features all kept).
 * A list that breaks a dependency (tso4 without csum...) is refused at FEATURES_OK, so say so here.
 */
export function parseOffloads(list: string): bigint {
  const names = list === 'none' ? [] : list.split(',').map((n) => n.trim()).filter((n) => n !== '');
  let m = 0n;
  for (const n of names) {
    const b = OFFLOAD_NAMES[n];
    if (b === undefined) throw new RangeError(`unknown offload '${n}'; known: ${Object.keys(OFFLOAD_NAMES).join(', ')}, or 'none'`);
    m |= b;
  }
  const needs = (what: string, dep: string): void => {
    if (names.includes(what) && !names.includes(dep)) throw new RangeError(`offload '${what}' needs '${dep}'`);
  };
  for (const n of ['tso4', 'tso6', 'uso']) needs(n, 'csum');
  for (const n of ['guest-tso4', 'guest-tso6', 'guest-uso4', 'guest-uso6']) needs(n, 'guest-csum');
  for (const n of ['tso4', 'tso6', 'uso']) needs('udp-tunnel', n);
  for (const n of ['guest-tso4', 'guest-tso6', 'guest-uso4', 'guest-uso6']) needs('guest-udp-tunnel', n);
  if (names.includes('guest-ecn') && !names.includes('guest-tso4') && !names.includes('guest-tso6')) throw new RangeError("offload 'guest-ecn' needs 'guest-tso4' or 'guest-tso6'");
  return ((GUEST_SUPPORTED | TUNNEL_SUPPORTED) & ~OFFLOAD_MASK) | m;
}

/** Where guest-sim terminates a VXLAN or GENEVE tunnel (see tunnel.ts). */
export interface TunnelOptions {
  kind: 'vxlan' | 'geneve';
  /** Virtual network identifier, 0..2^24-1. */
  vni: number;
  /** The inner interface's addresses ('ADDR/PREFIX'); at least one. */
  ip4?: string;
  ip6?: string;
  /** The inner interface's MAC; default the guest's own with the last byte's low bit flipped and the locally administered bit set. */
  mac?: string;
}

export interface GuestOptions {
  tap: string;
  netns?: string;
  queuePairs?: number;
  mac?: string;
  mtu?: number;
  /** 'ADDR/PREFIX' */
  ip4?: string;
  ip6?: string;
  /** Mask over GUEST_SUPPORTED (and TUNNEL_SUPPORTED with `tunnel`): what the guest is willing to negotiate. */
  features?: bigint;
  /**
   * Also be a VXLAN/GENEVE endpoint over `ip4`: TCP services and ping on the inner addresses.
   * The UDP tunnel GSO features (TUNNEL_SUPPORTED) are then negotiated when the device offers
   * them and `features` allows.
   */
  tunnel?: TunnelOptions;
  /** Entries per RX/TX ring. */
  queueSize?: number;
  /**
   * Ask for the packed ring (VIRTIO_F_RING_PACKED) and/or IN_ORDER; taken when the device offers
   * them (features() says what was negotiated). Default: neither, the split ring.
   */
  packed?: boolean;
  inOrder?: boolean;
  /** Use every queue pair the device has (VQ_PAIRS_SET) right after start; default true. */
  useAllPairs?: boolean;
  /** Bytes the TCP source service (port 19) sends per connection; default 1 GiB. */
  sourceBytes?: number;
  /** Largest TCP receive window per connection; default 4 MiB with GUEST_TSO, 1 MiB without. */
  tcpRcvBuf?: number;
  /** The device's I/O method (VirtioNetDevice option io); default 'auto'. */
  io?: 'auto' | 'readv';
  /** The device's sqpoll option: io_uring through a kernel polling thread (costs a core). */
  sqpoll?: boolean;
  /**
   * Write every frame the device moves (both directions, super-frames whole) to this file as
   * pcapng, each frame's virtio_net_hdr in its packet comment. Off (and free) by default.
   */
  pcap?: string;
}

/** One TCP discard (port 9) connection closed by its peer. */
export interface DiscardEvent {
  pair: number;
  peer: string;
  bytes: number;
  sha256: string;
}

/** V8 heaps of every isolate guest-sim runs: this (main) thread's and each queue-pair Worker's. */
export interface GuestMemory {
  main: IsolateMemory;
  workers: IsolateMemory[];
}

/**
 * Young generation of a queue-pair Worker's V8 heap (Worker resourceLimits.maxYoungGenerationSizeMb;
 * V8 makes each of its two semi-spaces a third of it: 2 MiB). A Worker allocates only short-lived
 * garbage per frame (views, parsed headers), which a few MiB of nursery collect as well as more.
 * Left to V8, the nursery of a busy Worker only grows: V8 doubles it each time the bytes that
 * survived scavenges since the last doubling exceed its size, which steady traffic always reaches,
 * up to 16 MiB semi-spaces; and it shrinks only when allocation slows down or memory is to be
 * reduced (the memory reducer is a task: a Worker that never returns to its event loop never runs
 * it). That was issue 24's growth: +8 then +16 MiB per Worker, in steps minutes apart.
 * Even pinned (pinWorkerNurseries), V8 gives back and takes again a semi-space as a Worker's
 * allocation rate crosses its thresholds: 6 MiB keeps those steps at 2 MiB (with 12, the
 * steady soak's RSS went 5.3% past its baseline; with 6, 4.9%).
 */
export const WORKER_YOUNG_GENERATION_MB = 6;

let nurseriesPinned = false;

/**
 * Makes the young generation of every Worker created from now on in this process stay at its
 * largest size (its semi-spaces at a third of WORKER_YOUNG_GENERATION_MB) instead of following
 * the allocation rate. Once a Worker allocates little per frame, V8 shrinks its nursery when
 * traffic eases and doubles it again on the next burst, each time moving that Worker's committed
 * heap by up to 8 MiB: a process whose memory is watched for growth (`vhost-tap run`, the steady
 * soak) then shows steps that are neither a leak nor flat. The flag is process-wide (V8 reads it
 * when it sets up an isolate's heap), so guest-sim does not set it for an embedder; `vhost-tap
 * run` and the soak call this before the guest starts.
 */
export function pinWorkerNurseries(): void {
  if (nurseriesPinned) return;
  nurseriesPinned = true;
  v8.setFlagsFromString(`--min-semi-space-size=${WORKER_YOUNG_GENERATION_MB / 3}`);
}

/**
 * Old generation limit of a queue-pair Worker (resourceLimits.maxOldGenerationSizeMb). A Worker's
 * live heap is a few MiB (its TCP connections, the responder): 256 MiB is far above anything it
 * keeps, and a Worker that did exceed it ends with ERR_WORKER_OUT_OF_MEMORY ('error'). The limit
 * is here for what it does below it: V8 lets the old generation grow to up to 4 times what
 * survived the last mark-compact before the next one when the limit is 2 GiB or more (the
 * default V8 derives from the machine's memory: 4 GiB on a 24 GiB one), and 1.3 times at 256 MiB.
 * Under steady traffic a Worker promotes garbage (connections that lived across two scavenges)
 * all the time: with the default, its committed heap kept rising for 20 minutes and more after
 * warm-up, a sawtooth with an ever higher top (issue 24, RESULTS.md).
 */
export const WORKER_OLD_GENERATION_MB = 256;

/** How long memoryUsage() waits for a Worker's answer (it answers between two batches, so within milliseconds). */
const MEMORY_REPLY_MS = 5000;

export interface GuestStats {
  pairs: { rxFrames: number; rxBytes: number; txFrames: number; txBytes: number; txRingFull: number; wakeups: number }[];
  device: DeviceStats;
}

/** Size of one mergeable RX buffer: one page minus nothing, like Linux's small mergeable buffers. */
const MRG_RX_BUF = 2048;
const DEFAULT_QUEUE_SIZE = 256;
const CTRL_QUEUE_SIZE = 64;

function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

/** Largest RX buffer a driver without mergeable buffers posts when it takes GSO (virtio 1.x §5.1.6.3.1). */
const RX_BUF_MAX = 65562;

/** TX slot size: a TSO/USO super-frame is up to 64 KiB of IP packet behind Ethernet (+ VLAN) and the 20-byte maximal header. */
/** What guest-sim may negotiate with these options: the tunnel offloads only for a tunnel endpoint. */
function supportedFor(opts: GuestOptions): bigint {
  return opts.tunnel ? GUEST_SUPPORTED | TUNNEL_SUPPORTED : GUEST_SUPPORTED;
}

/** The inner interface's default MAC: the guest's, locally administered, last bit flipped (distinct, stable). */
function innerMac(outer: Uint8Array): Uint8Array {
  const m = Uint8Array.from(outer);
  m[0] = (m[0] | 0x02) & 0xfe;
  m[5] ^= 1;
  return m;
}

function txSlotFor(f: bigint, mtu: number): number {
  return alignUp(20 + 14 + 4 + ((f & bits('HOST_TSO4', 'HOST_TSO6', 'HOST_USO')) !== 0n ? 65535 : Math.max(mtu, 1500)), 64);
}

function parseCidr(s: string, v: 4 | 6): { addr: Uint8Array; prefix: number } {
  const [a, p] = s.split('/');
  const prefix = p === undefined ? (v === 4 ? 24 : 64) : Number(p);
  const max = v === 4 ? 32 : 128;
  if (!Number.isInteger(prefix) || prefix < 0 || prefix > max) throw new RangeError(`invalid prefix length in '${s}'`);
  return { addr: v === 4 ? parseIPv4(a) : parseIPv6(a), prefix };
}

export class GuestSim extends EventEmitter {
  readonly device: VirtioNetDevice;
  readonly mem: SharedArrayBuffer;
  private _mac = '';
  private _features = 0n;
  private readonly workers: { worker: Worker; ctl: SharedArrayBuffer; port: import('node:worker_threads').MessagePort; done: Promise<unknown> }[] = [];
  private ctrl: ControlDriver | undefined;
  /** This session's allocator and each pair's rings, for resetQueue(). */
  private alloc: GuestAllocator | undefined;
  private pairQueues: NetQueuePairOptions[] = [];
  /** resetQueue() callers waiting for a Worker to start its new ring, per pair. */
  private readonly resetWaiters = new Map<number, ((n: number) => void)[]>();
  private stopped = false;
  /** Counters of the Workers of earlier sessions (before restart()), so stats() stays monotonic. */
  private retiredPairs: GuestStats['pairs'] = [];
  /** memoryUsage() callers waiting for a Worker's answer, per pair, oldest first. */
  private readonly memoryWaiters = new Map<number, ((m: IsolateMemory) => void)[]>();

  private constructor(
    device: VirtioNetDevice,
    mem: SharedArrayBuffer,
    private readonly opts: GuestOptions,
    /** The pcapng file the Workers' captures go to (GuestOptions.pcap). */
    private pcapFd: number | undefined,
  ) {
    super();
    this.device = device;
    this.mem = mem;
  }

  /** The guest's MAC address (from config space when MAC was negotiated). */
  get mac(): string {
    return this._mac;
  }

  /** The features the guest negotiated. */
  get features(): bigint {
    return this._features;
  }

  /** Creates the device (and its TAP), negotiates, starts the queue-pair Workers. */
  static async start(opts: GuestOptions): Promise<GuestSim> {
    const pairs = opts.queuePairs ?? 1;
    // Checked here, not only by the device: guest memory is sized per pair before the device
    // exists, and an absurd count would otherwise fail as "Array buffer allocation failed".
    if (!Number.isInteger(pairs) || pairs < 1 || pairs > TUN.MAX_QUEUES) {
      throw new InvalidArgumentError(`queuePairs must be an integer from 1 to ${TUN.MAX_QUEUES} (the TAP's queue limit), got ${pairs}`);
    }
    const qsize = opts.queueSize ?? DEFAULT_QUEUE_SIZE;
    const mtu = opts.mtu ?? 1500;
    if (opts.ip4) parseCidr(opts.ip4, 4);
    if (opts.ip6) parseCidr(opts.ip6, 6);
    if (opts.tunnel) {
      const t = opts.tunnel;
      if (!opts.ip4) throw new InvalidArgumentError('tunnel: the guest needs an IPv4 address (ip4) for the underlay');
      if (t.kind !== 'vxlan' && t.kind !== 'geneve') throw new InvalidArgumentError(`tunnel.kind must be 'vxlan' or 'geneve', got ${String(t.kind)}`);
      if (!Number.isInteger(t.vni) || t.vni < 0 || t.vni > 0xffffff) throw new InvalidArgumentError(`tunnel.vni must be an integer in 0..16777215, got ${t.vni}`);
      if (!t.ip4 && !t.ip6) throw new InvalidArgumentError('tunnel: give the inner interface an address (ip4 and/or ip6)');
      if (t.ip4) parseCidr(t.ip4, 4);
      if (t.ip6) parseCidr(t.ip6, 6);
      if (mtu - 50 < (t.ip6 ? 1280 : 576)) throw new InvalidArgumentError(`tunnel: mtu ${mtu} leaves the inner interface ${mtu - 50} bytes, too few`);
    }

    // Memory is sized before negotiation (the device needs it to exist), from the
    // worst case the guest may negotiate; the layout in initialise() uses what was negotiated.
    const wantedMask = supportedFor(opts) & (opts.features ?? ~0n);
    const txSlotMax = txSlotFor(wantedMask, mtu);
    const perPair = 2 * (DriverQueue.layout(0, qsize, 4096).end + 4096) + qsize * RX_BUF_MAX + qsize * txSlotMax;
    const memBytes = alignUp(pairs * perPair + DriverQueue.layout(0, CTRL_QUEUE_SIZE, 4096).end + 4096 + CTRL_BUF_BYTES + 4096, 1 << 20);
    const mem = new SharedArrayBuffer(memBytes);

    // The capture file first: a path that cannot be written fails before a TAP exists.
    let pcapFd: number | undefined;
    if (opts.pcap !== undefined) {
      pcapFd = fs.openSync(opts.pcap, 'w');
      fs.writeSync(pcapFd, pcapngHeader(`${opts.tap} (virtio-net guest side)`));
    }
    let device: VirtioNetDevice;
    try {
      device = new VirtioNetDevice({ memory: mem, tap: opts.tap, netns: opts.netns, queuePairs: pairs, mac: opts.mac, mtu, io: opts.io, sqpoll: opts.sqpoll });
    } catch (e) {
      if (pcapFd !== undefined) fs.closeSync(pcapFd);
      throw e;
    }
    const guest = new GuestSim(device, mem, opts, pcapFd);
    try {
      await guest.initialise();
      device.on('needs-reset', (e: VirtioNetError) => guest.emit('needs-reset', e));
      return guest;
    } catch (e) {
      await guest.stop().catch(() => undefined);
      throw e;
    }
  }

  /**
   * A driver reset and a fresh initialisation of the same device, as a rebooting guest's
   * driver does: the queue-pair Workers stop, status 0 is written, then the whole
   * initialisation runs again with new Workers. Open TCP connections are lost.
   */
  async restart(): Promise<void> {
    if (this.stopped) throw new Error('GuestSim.restart: the guest was stopped');
    const before = this.pairStats();
    await this.stopWorkers();
    this.retiredPairs = before;
    this.workers.length = 0;
    this.ctrl = undefined;
    await this.initialise();
  }

  /** Linux's order (virtio 1.x §3.1.1): reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK, queues, DRIVER_OK; then the Workers. */
  private async initialise(): Promise<void> {
    const { device, mem, opts } = this;
    const pairs = device.queuePairs;
    const qsize = opts.queueSize ?? DEFAULT_QUEUE_SIZE;
    const mtu = opts.mtu ?? 1500;
    const ip4 = opts.ip4 ? parseCidr(opts.ip4, 4) : undefined;
    const ip6 = opts.ip6 ? parseCidr(opts.ip6, 6) : undefined;
    const ringWanted = (opts.packed ? bits('RING_PACKED') : 0n) | (opts.inOrder ? bits('IN_ORDER') : 0n);
    const features = negotiate(device, (supportedFor(opts) & (opts.features ?? ~0n)) | ringWanted);

    const mac = has(features, 'MAC') ? formatMac(new Uint8Array(device.config.buffer, 0, 6)) : opts.mac ?? formatMac(new Uint8Array(device.config.buffer, 0, 6));
    const hdrLen = netHdrSize(features);
    const mergeable = has(features, 'MRG_RXBUF');
    const gso = (features & bits('GUEST_TSO4', 'GUEST_TSO6', 'GUEST_UFO', 'GUEST_USO4', 'GUEST_USO6')) !== 0n;
    // Buffer sizes the spec asks of a driver (virtio 1.x §5.1.6.3.1).
    const rxBufSize = mergeable ? MRG_RX_BUF : gso ? RX_BUF_MAX : hdrLen + 14 + mtu;
    const eventIdx = has(features, 'RING_EVENT_IDX');
    const usePairs = has(features, 'MQ') ? pairs : 1;
    const txSlot = txSlotFor(features, mtu);
    const offloads = {
      csum: has(features, 'CSUM'),
      tso4: has(features, 'HOST_TSO4'),
      tso6: has(features, 'HOST_TSO6'),
      uso: has(features, 'HOST_USO'),
    };
    // The kernel's TAP queue holds 1000 frames (txqueuelen): a window much larger than
    // that many MSS-sized frames only turns into drops when the guest falls behind.
    const guestTso = (features & bits('GUEST_TSO4', 'GUEST_TSO6')) !== 0n;
    const tcpRcvBuf = opts.tcpRcvBuf ?? (guestTso ? 4 << 20 : 1 << 20);

    this._features = features;
    this._mac = mac;
    const alloc = new GuestAllocator(new DriverMemory(mem));
    this.alloc = alloc;
    this.pairQueues = [];
    const configs: Omit<PairConfig, 'port'>[] = [];
    const u8 = new Uint8Array(mem);
    for (let p = 0; p < usePairs; p++) {
      const queues = setUpQueuePair(device, p, alloc, { queueSize: qsize, rxBufSize, txBufSize: txSlot });
      this.pairQueues.push(queues);
      // A driver initialises its rings before DRIVER_OK tells the device to look at them:
      // after a restart they still hold the last session's indices.
      for (const q of [queues.rx, queues.tx]) u8.fill(0, q.desc, queues.packed ? q.used + 4 : q.used + 6 + 8 * q.size);
      configs.push({
        pair: p,
        queues,
        ctl: new SharedArrayBuffer(CTL_BYTES),
        mac: parseMac(mac),
        ip4,
        ip6,
        mtu,
        offloads,
        tcpRcvBuf,
        sourceBytes: opts.sourceBytes ?? 1 << 30,
        capture: this.pcapFd !== undefined,
        tunnel: opts.tunnel && {
          kind: opts.tunnel.kind,
          vni: opts.tunnel.vni,
          mac: opts.tunnel.mac ? parseMac(opts.tunnel.mac) : innerMac(parseMac(mac)),
          ip4: opts.tunnel.ip4 ? parseCidr(opts.tunnel.ip4, 4) : undefined,
          ip6: opts.tunnel.ip6 ? parseCidr(opts.tunnel.ip6, 6) : undefined,
          gso: has(features, 'HOST_UDP_TUNNEL_GSO'),
        },
      });
    }
    if (has(features, 'CTRL_VQ')) {
      const packed = has(features, 'RING_PACKED');
      const addrs = packed ? alloc.packedRing(CTRL_QUEUE_SIZE) : alloc.ring(CTRL_QUEUE_SIZE);
      const cmdBuf = alloc.alloc(CTRL_BUF_BYTES + 1, 64);
      this.ctrl = new ControlDriver(device, alloc.memory, ctrlq(pairs), addrs, { eventIdx, packed, inOrder: has(features, 'IN_ORDER') }, cmdBuf);
      device.setQueue(ctrlq(pairs), addrs);
    }
    device.status |= STATUS.DRIVER_OK;

    for (const cfg of configs) this.spawn(cfg);
    if (this.ctrl && has(features, 'MQ') && usePairs > 1 && opts.useAllPairs !== false) {
      await this.setQueuePairs(usePairs);
    }
  }

  private spawn(cfg: Omit<PairConfig, 'port'>): void {
    const { port1, port2 } = new MessageChannel();
    const worker = new Worker(path.join(__dirname, 'worker.js'), {
      workerData: { ...cfg, port: port2 },
      transferList: [port2],
      resourceLimits: { maxYoungGenerationSizeMb: WORKER_YOUNG_GENERATION_MB, maxOldGenerationSizeMb: WORKER_OLD_GENERATION_MB },
    });
    const done = new Promise((resolve, reject) => {
      worker.once('exit', resolve);
      worker.once('error', (e) => {
        this.emit('error', e);
        reject(e);
      });
    });
    done.catch(() => undefined);
    port1.on('message', (m: PairMessage) => this.onPairMessage(cfg.pair, m));
    port1.unref();
    this.workers.push({ worker, ctl: cfg.ctl, port: port1, done });
  }

  private onPairMessage(pair: number, m: PairMessage): void {
    if ('pcap' in m) {
      if (this.pcapFd !== undefined) fs.writeSync(this.pcapFd, m.pcap);
    } else if ('discard' in m) this.emit('discard', { pair, ...m.discard } satisfies DiscardEvent);
    else if ('final' in m) this.emit('pair-stats', pair, m.responder, m.tcp);
    else if ('memory' in m) this.memoryWaiters.get(pair)?.shift()?.(m.memory);
    else if ('ringReset' in m) this.resetWaiters.get(pair)?.shift()?.(m.ringReset);
  }

  /**
   * Per-queue reset (VIRTIO_F_RING_RESET) of pair `pair`'s RX or TX queue while every other
   * queue runs on, as a Linux driver does it (virtio 1.2 §2.6.1.3.2): the device resets the
   * queue, the ring is set up again with `size` entries (default: as before; in place when it
   * fits, else in new guest memory), the pair's Worker takes every buffer of the old ring back
   * and starts the new one, and the device enables it. Resolves with the TX frames that were
   * queued and never sent, or the RX frames delivered and not yet taken (the Worker's
   * NetQueuePair counts them: txReclaimedAtReset / rxDiscardedAtReset); TCP retransmits.
   */
  async resetQueue(pair: number, which: 'rx' | 'tx', size?: number): Promise<number> {
    const queues = this.pairQueues[pair];
    const w = this.workers[pair];
    if (!queues || !w || !this.alloc) throw new InvalidArgumentError(`guest-sim: no running queue pair ${pair}`);
    if (which !== 'rx' && which !== 'tx') throw new InvalidArgumentError(`guest-sim: resetQueue: which must be 'rx' or 'tx', got ${String(which)}`);
    const index = which === 'rx' ? rxq(pair) : txq(pair);
    const old = queues[which];
    const qsize = size ?? old.size;
    this.device.resetQueue(index);
    // In place when the new ring fits the old one's space (the allocator laid each ring out
    // from its desc address), else in new guest memory.
    const l = queues.packed ? PackedDriverQueue.layout(0, qsize) : DriverQueue.layout(0, qsize, 4096);
    const ring =
      qsize <= old.size
        ? { size: qsize, desc: old.desc + l.desc, avail: old.desc + l.avail, used: old.desc + l.used }
        : queues.packed
          ? this.alloc.packedRing(qsize)
          : this.alloc.ring(qsize);
    this.device.setQueue(index, { size: ring.size, desc: ring.desc, avail: ring.avail, used: ring.used });
    const setup = { ...ring, ...this.device.notifier(index) };
    const n = await new Promise<number>((resolve) => {
      const q = this.resetWaiters.get(pair) ?? [];
      this.resetWaiters.set(pair, q);
      q.push(resolve);
      w.port.postMessage({ resetRing: { which, setup } });
    });
    queues[which] = setup;
    this.device.enableQueue(index);
    this.device.kick(index);
    return n;
  }

  /**
   * The V8 heap of every isolate: this thread's and each queue-pair Worker's (a Worker's heap
   * is not in the main thread's process.memoryUsage()). Rejects when a Worker does not answer
   * within 5 s.
   */
  async memoryUsage(): Promise<GuestMemory> {
    const workers = await Promise.all(
      this.workers.map(
        (w, pair) =>
          new Promise<IsolateMemory>((resolve, reject) => {
            const q = this.memoryWaiters.get(pair) ?? [];
            this.memoryWaiters.set(pair, q);
            const timer = setTimeout(() => {
              const i = q.indexOf(done);
              if (i >= 0) q.splice(i, 1);
              reject(new Error(`guest-sim: queue-pair Worker ${pair} did not report its memory within ${MEMORY_REPLY_MS} ms`));
            }, MEMORY_REPLY_MS);
            const done = (m: IsolateMemory): void => {
              clearTimeout(timer);
              resolve(m);
            };
            q.push(done);
            w.port.postMessage('memory');
          }),
      ),
    );
    return { main: isolateMemory(), workers };
  }

  /** Sends a control command; resolves with CTRL.OK or CTRL.ERR. */
  async control(cls: number, cmd: number, data?: Uint8Array): Promise<number> {
    if (!this.ctrl) throw new Error('the control queue was not negotiated (CTRL_VQ)');
    return this.ctrl.command(cls, cmd, data);
  }

  /** RSS_CONFIG (with VIRTIO_NET_F_RSS): see ControlDriver.setRss. */
  async setRss(c: { key: Uint8Array; hashTypes: number; table: ArrayLike<number>; unclassifiedQueue?: number; pairs: number }): Promise<void> {
    if (!this.ctrl) throw new Error('the control queue was not negotiated (CTRL_VQ)');
    if ((await this.ctrl.setRss(c)) !== CTRL.OK) throw new Error('device refused RSS_CONFIG');
  }

  /** HASH_CONFIG (with VIRTIO_NET_F_HASH_REPORT, without RSS): see ControlDriver.setHashConfig. */
  async setHashConfig(c: { key: Uint8Array; hashTypes: number }): Promise<void> {
    if (!this.ctrl) throw new Error('the control queue was not negotiated (CTRL_VQ)');
    if ((await this.ctrl.setHashConfig(c)) !== CTRL.OK) throw new Error('device refused HASH_CONFIG');
  }

  /** VQ_PAIRS_SET. */
  async setQueuePairs(n: number): Promise<void> {
    const d = new Uint8Array([n & 0xff, n >> 8]);
    const ack = await this.control(CTRL.CLASS_MQ, CTRL.MQ_VQ_PAIRS_SET, d);
    if (ack !== CTRL.OK) throw new Error(`device refused VQ_PAIRS_SET ${n}`);
  }

  stats(): GuestStats {
    return { pairs: this.pairStats(), device: this.device.stats() };
  }

  /** Per-pair counters of the Workers, added to those of earlier sessions. */
  private pairStats(): GuestStats['pairs'] {
    const n = Math.max(this.workers.length, this.retiredPairs.length);
    return Array.from({ length: n }, (_, i) => {
      const old = this.retiredPairs[i];
      const w = this.workers[i];
      const c = w ? new Float64Array(w.ctl, 8, CTL.SIZE) : undefined;
      return {
        rxFrames: (old?.rxFrames ?? 0) + (c?.[CTL.RX_FRAMES] ?? 0),
        rxBytes: (old?.rxBytes ?? 0) + (c?.[CTL.RX_BYTES] ?? 0),
        txFrames: (old?.txFrames ?? 0) + (c?.[CTL.TX_FRAMES] ?? 0),
        txBytes: (old?.txBytes ?? 0) + (c?.[CTL.TX_BYTES] ?? 0),
        txRingFull: (old?.txRingFull ?? 0) + (c?.[CTL.TX_RING_FULL] ?? 0),
        wakeups: (old?.wakeups ?? 0) + (c?.[CTL.WAKEUPS] ?? 0),
      };
    });
  }

  /** Asks every Worker to stop, waits for them, and takes what they posted last (capture buffers). */
  private async stopWorkers(): Promise<void> {
    for (let i = 0; i < this.workers.length; i++) {
      Atomics.store(new Int32Array(this.workers[i].ctl, 0, 1), 0, 1);
      // A spurious interrupt wakes the vCPU so it sees the stop request now.
      kick(this.device.notifier(rxq(i)).callFd);
    }
    await Promise.all(this.workers.map((w) => w.done.catch(() => undefined)));
    this.workers.forEach((w, i) => {
      for (let m = receiveMessageOnPort(w.port); m; m = receiveMessageOnPort(w.port)) this.onPairMessage(i, m.message as PairMessage);
    });
  }

  /** Stops the Workers, then the device (which removes the TAP). Returns final statistics. */
  async stop(): Promise<GuestStats> {
    if (this.stopped) return this.stats();
    this.stopped = true;
    await this.stopWorkers();
    if (this.pcapFd !== undefined) {
      fs.closeSync(this.pcapFd);
      this.pcapFd = undefined;
    }
    const s = this.stats();
    await this.device.close();
    return s;
  }
}
