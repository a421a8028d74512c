// The back-end side of one vhost-user connection: feature and protocol-feature
// negotiation, ownership, the memory table, per-ring setup (NUM/ADDR/BASE,
// KICK/CALL/ERR, ENABLE), stopping a ring for GET_VRING_BASE, and refusing
// whatever breaks the protocol — with a REPLY_ACK error when the front end
// asked for one, otherwise by closing the connection — always with a reason.
// The data plane (guest memory mappings, workers, the TAP) sits behind the
// VhostUserBackend interface; this file holds the protocol's state machine.

import { EventEmitter } from 'node:events';

import { VhostUserError } from '../errors';
import { validateDriverFeatures } from '../features';
import { addon, NativeFdInfo, NativeVuHeader, NativeVuMessage } from '../native';
import { bit, F, featureNames, has, PACKED_RING, packedRingSizes, RING, splitRingSizes } from '../virtio';
import {
  F_LOG_ALL,
  F_PROTOCOL_FEATURES,
  HAS_REPLY,
  MAX_MEM_REGIONS,
  PROTOCOL_F,
  protocolBits,
  protocolFeatureNames,
  REQ,
  requestName,
  VRING_F_LOG,
  VRING_INDEX_MASK,
  VRING_NOFD,
} from './protocol';
import { macString, rarpFrame } from './announce';
import { VhostUserConnection } from './socket';

/** A region of the front end's memory as SET_MEM_TABLE describes it (all fit in a JS number). */
export interface MemoryRegion {
  guestAddr: number;
  size: number;
  /** The front end's virtual address of the region: ring addresses arrive in this space. */
  userAddr: number;
  /** Where the region starts in its fd. */
  mmapOffset: number;
}

/** A split ring's guest physical addresses. */
export interface RingLayout {
  size: number;
  desc: number;
  avail: number;
  used: number;
  /** VIRTIO_F_RING_PACKED: descriptor ring, driver event area, device event area. */
  packed?: boolean;
}

/** A packed ring position as vhost-user carries it: the index in bits 0-14, its wrap counter in bit 15. */
function packedPosition(v: number): { index: number; wrap: number } {
  return { index: v & (PACKED_RING.WRAP_BIT - 1), wrap: v & PACKED_RING.WRAP_BIT ? 1 : 0 };
}

/** Everything a worker needs to run one ring. */
export interface RingStart extends RingLayout {
  index: number;
  kickFd: number;
  callFd: number;
  lastAvailIdx: number;
  usedIdx: number;
}

/**
 * The data plane a session drives (one per TAP; sessions come and go). Methods throw an
 * Error whose message says what was wrong; the session turns it into a refusal.
 */
export interface VhostUserBackend {
  /** Queue pairs the TAP has: rings 0 .. 2*queuePairs-1 (the control queue stays with the VMM). */
  readonly queuePairs: number;
  /** Virtio features offered to the front end (offloads the TAP accepts, MQ, ...), without bit 30. */
  readonly features: bigint;
  /**
   * Replaces guest memory by the front end's regions, mapping each fd at its offset (checks
   * offset + size against the fd's size). The fds stay the caller's. Running workers switch
   * to the new table between batches.
   */
  setMemory(regions: MemoryRegion[], fds: number[]): void;
  /** Unmaps guest memory (the session ended); no worker runs then. */
  clearMemory(): void;
  /**
   * Ring layout rules in the current memory (size, alignment, each part inside one region, no
   * part overlapping another of any of these rings); null when they hold.
   */
  checkRings(layouts: RingLayout[]): { rule: string; detail: string } | null;
  /** used.idx as the ring holds it now: a ring resumes from there, as vhost does. */
  readUsedIdx(layout: RingLayout): number;
  /** Programs the TAP for the negotiated features: header size, little-endian headers, offloads. */
  setFeatures(features: bigint): void;
  /** Starts pair `pair`'s worker; `onBroken` reports a ring stopped because the guest broke a rule. */
  startPair(pair: number, rx: RingStart, tx: RingStart, onBroken: (ring: number, rule: string, detail: string) => void): void;
  /**
   * Stops pair `pair`'s worker; returns each ring's next avail index. `disable`: the front end
   * disabled the pair (SET_VRING_ENABLE 0, as QEMU does when the guest uses fewer queue
   * pairs), so its TAP queue should stop getting frames; otherwise the pair restarts soon
   * (a new call fd, GET_VRING_BASE) and what the TAP holds for it should wait.
   */
  stopPair(pair: number, disable: boolean): { rx: number; tx: number; rxUsed?: number; txUsed?: number };
  /**
   * Hands running pair `pair`'s worker a new call fd for its RX or TX ring without stopping
   * it (the worker keeps a duplicate; the fd stays the caller's). Without it, a new call fd
   * restarts the pair.
   */
  setCallFd?(pair: number, ring: 'rx' | 'tx', fd: number): void;
  /**
   * Maps the front end's dirty-page log (SET_LOG_BASE: `mmapSize` bytes at `mmapOffset` of
   * `fd`, one bit per 4 KiB guest-physical page); the fd stays the caller's. Throws when the fd
   * or range is bad or the log is too small for guest memory. Without it, VHOST_F_LOG_ALL and
   * LOG_SHMFD are not offered.
   */
  setDirtyLog?(fd: number, mmapSize: number, mmapOffset: number): void;
  /**
   * Starts or stops marking the log (VHOST_F_LOG_ALL negotiated or not): every write of the
   * workers into guest memory after dirtyLog(true) returns is marked.
   */
  dirtyLog?(on: boolean): void;
  /** An eventfd that fires when a SIGBUS was contained in guest memory (-1: none mapped yet). */
  faultFd?(): number;
  /** Guest addresses of the regions in which a SIGBUS was contained. */
  faulted?(): number[];
  /**
   * Writes one Ethernet frame the device makes itself (the announce of SEND_RARP) into the
   * network as though the guest had sent it. Without it, PROTOCOL_F_RARP is not offered.
   */
  sendFrame?(frame: Buffer): void;
}

/**
 * Protocol features offered: MQ (GET_QUEUE_NUM), LOG_SHMFD (the dirty log for live migration,
 * when the back end can map one), REPLY_ACK, RARP (SEND_RARP, when the back end can send a
 * frame), RESET_DEVICE, STATUS (SET/GET_STATUS: the virtio device status byte). Nothing that
 * is not implemented.
 */
export const OFFERED_PROTOCOL_FEATURES: bigint = protocolBits('MQ', 'LOG_SHMFD', 'REPLY_ACK', 'RARP', 'RESET_DEVICE', 'STATUS');

/** A refused request, as the 'refused' event reports it. */
export interface Refusal {
  request: string;
  reason: string;
  /**
   * What the session did: answered an error (a REPLY_ACK error, or the request's own reply
   * saying so) and went on, logged it and went on without an answer (a request that has
   * none), or closed the connection.
   */
  action: 'nack' | 'ignore' | 'close';
}

export interface SessionOptions {
  /** Called with each refusal and session event as a line of text (default: none). */
  log?: (line: string) => void;
  /** Called with every message received, for debugging the sequence a front end sends. */
  trace?: (line: string) => void;
  /**
   * A front end that has not sent SET_OWNER this long after connecting is dropped, so that a
   * connection that never speaks cannot hold the back end (default 10000 ms). QEMU and DPDK
   * send it first thing; after it a session never times out (a running guest is silent).
   */
  handshakeTimeoutMs?: number;
  /** A front end that reads none of its replies for this long is dropped (default 5000 ms). */
  sendStallMs?: number;
}

/** Default of SessionOptions.handshakeTimeoutMs: far beyond what a VMM takes to send SET_OWNER. */
export const HANDSHAKE_TIMEOUT_MS = 10_000;

/** Split rings hold at most 32768 entries (virtio 1.x §2.7). */
const MAX_RING_SIZE: number = RING.MAX_SIZE;
/** Split ring indexes are 16 bits; the packed ring's wrap bit is not offered. */
const MAX_RING_INDEX = 0xffff;

/** Requests allowed before SET_OWNER: what QEMU asks while it probes a back end. */
const BEFORE_OWNER: ReadonlySet<number> = new Set([
  REQ.GET_FEATURES,
  REQ.GET_PROTOCOL_FEATURES,
  REQ.SET_PROTOCOL_FEATURES,
  REQ.GET_QUEUE_NUM,
  REQ.SET_OWNER,
]);

/** Why a request the codec knows is refused: what it would need that is not offered. */
const UNSUPPORTED: Partial<Record<number, string>> = {
  [REQ.NET_SET_MTU]: 'protocol feature NET_MTU is not offered',
  [REQ.SET_BACKEND_REQ_FD]: 'protocol feature BACKEND_REQ is not offered',
  [REQ.IOTLB_MSG]: 'VIRTIO_F_ACCESS_PLATFORM (IOTLB) is not offered',
  [REQ.SET_VRING_ENDIAN]: 'protocol feature CROSS_ENDIAN is not offered',
  [REQ.GET_CONFIG]: 'protocol feature CONFIG is not offered',
  [REQ.SET_CONFIG]: 'protocol feature CONFIG is not offered',
  [REQ.CREATE_CRYPTO_SESSION]: 'this is a network device',
  [REQ.CLOSE_CRYPTO_SESSION]: 'this is a network device',
  [REQ.POSTCOPY_ADVISE]: 'protocol feature PAGEFAULT is not offered',
  [REQ.POSTCOPY_LISTEN]: 'protocol feature PAGEFAULT is not offered',
  [REQ.POSTCOPY_END]: 'protocol feature PAGEFAULT is not offered',
  [REQ.GET_INFLIGHT_FD]: 'protocol feature INFLIGHT_SHMFD is not offered',
  [REQ.SET_INFLIGHT_FD]: 'protocol feature INFLIGHT_SHMFD is not offered',
  [REQ.GPU_SET_SOCKET]: 'this is a network device',
  [REQ.VRING_KICK]: 'protocol feature INBAND_NOTIFICATIONS is not offered',
  [REQ.GET_MAX_MEM_SLOTS]: 'protocol feature CONFIGURE_MEM_SLOTS is not offered',
  [REQ.ADD_MEM_REG]: 'protocol feature CONFIGURE_MEM_SLOTS is not offered',
  [REQ.REM_MEM_REG]: 'protocol feature CONFIGURE_MEM_SLOTS is not offered',
};

/** A request broke a rule; thrown inside handlers, turned into a refusal once. */
class Refuse extends Error {}

/** One vring as the front end set it up. */
interface Ring {
  /** SET_VRING_NUM */
  num: number | undefined;
  /** SET_VRING_ADDR: front-end virtual addresses. */
  addr: { desc: number; avail: number; used: number } | undefined;
  /**
   * Next avail index to start from: SET_VRING_BASE, or where the ring last stopped. Packed
   * rings: bits 0-14 the position, bit 15 the driver's wrap counter.
   */
  base: number;
  /**
   * Packed rings: the device's used position (bit 15 its wrap counter), bits 16-31 of the
   * ring base; undefined when the front end sent only the avail half (DPDK's virtio-user does):
   * then it equals `base`, as after a clean stop.
   */
  usedBase: number | undefined;
  kickFd: number;
  callFd: number;
  errFd: number;
  /** A kick fd arrived since the last GET_VRING_BASE (the spec's "started"). */
  started: boolean;
  /** SET_VRING_ENABLE; every ring starts disabled while F_PROTOCOL_FEATURES is in play. */
  enabled: boolean;
  /**
   * SET_VRING_ADDR's VHOST_VRING_F_LOG: the front end wants used-ring writes logged, at
   * log_guest_addr (checked to be the used ring's, or the packed device area's, guest address).
   */
  log: boolean;
}

export interface RingSnapshot {
  index: number;
  num: number | undefined;
  base: number;
  started: boolean;
  enabled: boolean;
  hasKick: boolean;
  hasCall: boolean;
  hasErr: boolean;
}

const hex = (n: number | bigint): string => `0x${n.toString(16)}`;

/**
 * Serves one front end on a connected socket. Emits 'refused' (Refusal), 'ring-broken'
 * ({ ring, rule, detail }), 'pair' (pair, running), 'warning' (Error: the data plane failed
 * to let go of something at the end), once 'active' (its first message: a connection that
 * sends none, such as another back end probing the socket, is no session) and, once, 'end' (reason).
 */
export class VhostUserSession extends EventEmitter {
  private readonly conn: VhostUserConnection;
  private readonly rings: Ring[];
  private readonly running: boolean[];
  private owner = false;
  private features = 0n;
  private featuresSet = false;
  private protocolFeatures = 0n;
  /** The virtio device status byte (SET_STATUS / GET_STATUS). */
  private status = 0;
  private regions: MemoryRegion[] | undefined;
  private ended = false;
  private active = false;
  /** The connection ended on its own (the peer closed it, a socket error), not by this side's choice. */
  endedByConnection = false;
  private handshakeTimer: NodeJS.Timeout | undefined;
  private faultWatch: { close(): void } | undefined;
  /** SET_LOG_BASE mapped a log; marking runs while this and VHOST_F_LOG_ALL both hold. */
  private logBase = false;
  /** Whether the workers mark the log now. */
  private logging = false;

  constructor(
    fd: number,
    private readonly backend: VhostUserBackend,
    private readonly opts: SessionOptions = {},
  ) {
    super();
    this.rings = Array.from({ length: 2 * backend.queuePairs }, () => ({
      num: undefined,
      addr: undefined,
      base: 0,
      usedBase: undefined,
      kickFd: -1,
      callFd: -1,
      errFd: -1,
      started: false,
      enabled: false,
      log: false,
    }));
    this.running = new Array(backend.queuePairs).fill(false);
    this.conn = new VhostUserConnection(
      fd,
      'back-end',
      {
        message: (m) => this.onMessage(m),
        refused: (reason, h) => this.refuse(h, reason),
        closed: (reason) => {
          this.endedByConnection = true;
          this.end(reason);
        },
      },
      { sendStallMs: opts.sendStallMs },
    );
    const ms = opts.handshakeTimeoutMs ?? HANDSHAKE_TIMEOUT_MS;
    this.handshakeTimer = setTimeout(() => this.end(`the front end sent no SET_OWNER within ${ms} ms of connecting; dropping it`), ms);
    // The listener (or a client-mode retry) keeps the process alive, not this.
    this.handshakeTimer.unref();
  }

  /**
   * Features offered in GET_FEATURES: the device's plus F_PROTOCOL_FEATURES, and
   * VHOST_F_LOG_ALL when the back end can keep a dirty log (live migration).
   */
  get offeredFeatures(): bigint {
    const log = this.backend.setDirtyLog && this.backend.dirtyLog ? 1n << BigInt(F_LOG_ALL) : 0n;
    return this.backend.features | (1n << BigInt(F_PROTOCOL_FEATURES)) | log;
  }

  /** Protocol features offered: LOG_SHMFD only with a back end that can map a log. */
  get offeredProtocolFeatures(): bigint {
    const canLog = this.backend.setDirtyLog && this.backend.dirtyLog;
    let offered = canLog ? OFFERED_PROTOCOL_FEATURES : OFFERED_PROTOCOL_FEATURES & ~(1n << BigInt(PROTOCOL_F.LOG_SHMFD));
    // RARP only when the data plane can send the announce.
    if (!this.backend.sendFrame) offered &= ~protocolBits('RARP');
    return offered;
  }

  get isOpen(): boolean {
    return !this.ended;
  }

  /** The state as tests and statistics see it. */
  snapshot(): {
    owner: boolean;
    features: bigint;
    protocolFeatures: bigint;
    regions: MemoryRegion[] | undefined;
    rings: RingSnapshot[];
    running: boolean[];
    /** The workers mark the dirty log (VHOST_F_LOG_ALL negotiated and SET_LOG_BASE given). */
    logging: boolean;
  } {
    return {
      logging: this.logging,
      owner: this.owner,
      features: this.features,
      protocolFeatures: this.protocolFeatures,
      regions: this.regions?.map((r) => ({ ...r })),
      rings: this.rings.map((r, index) => ({
        index,
        num: r.num,
        base: r.base,
        started: r.started,
        enabled: r.enabled,
        hasKick: r.kickFd >= 0,
        hasCall: r.callFd >= 0,
        hasErr: r.errFd >= 0,
      })),
      running: [...this.running],
    };
  }

  /** Ends the session: workers stop, fds close, mappings go, the connection closes. */
  close(reason = 'closed by the back end'): void {
    this.end(reason);
  }

  // --- message dispatch -----------------------------------------------------------------

  private onMessage(m: NativeVuMessage): void {
    if (this.ended) {
      for (const fd of m.fds) this.closeFd(fd);
      return;
    }
    if (!this.active) {
      this.active = true;
      this.emit('active');
    }
    this.opts.trace?.(`vhost-user: ${describe(m)}`);
    const taken = new Set<number>();
    try {
      if (m.needReply && !this.replyAck) {
        throw new Refuse('need_reply is set but REPLY_ACK was not negotiated (SET_PROTOCOL_FEATURES)');
      }
      if (!this.owner && !BEFORE_OWNER.has(m.request)) throw new Refuse('the front end has not sent SET_OWNER yet');
      this.handle(m, taken);
      if (m.needReply && !this.hasOwnReply(m.request) && !this.ended) this.conn.replyU64(m.request, 0n);
    } catch (e) {
      if (e instanceof Refuse) this.refuse(m, e.message);
      // A reply that could not be sent: the connection is gone (one line, no stack).
      else if (e instanceof VhostUserError) this.end(e.message);
      else this.refuse(m, `internal error: ${oneLine(e)}`);
    } finally {
      for (const fd of m.fds) if (!taken.has(fd)) this.closeFd(fd);
    }
  }

  /** Requests answered by a reply of their own (REPLY_ACK adds nothing to them). */
  private hasOwnReply(request: number): boolean {
    return HAS_REPLY.has(request) || (request === REQ.SET_LOG_BASE && this.logShmfd);
  }

  private get logShmfd(): boolean {
    return ((this.protocolFeatures >> BigInt(PROTOCOL_F.LOG_SHMFD)) & 1n) === 1n;
  }

  private negotiated(name: keyof typeof PROTOCOL_F): boolean {
    return ((this.protocolFeatures >> BigInt(PROTOCOL_F[name])) & 1n) === 1n;
  }

  private get replyAck(): boolean {
    return ((this.protocolFeatures >> BigInt(PROTOCOL_F.REPLY_ACK)) & 1n) === 1n;
  }

  /**
   * Refuses a request: a REPLY_ACK error when the front end asked for an answer and can read
   * one (REPLY_ACK negotiated, a request without its own reply), else the connection closes.
   */
  private refuse(h: NativeVuHeader, reason: string): void {
    if (this.ended) return;
    const request = h.name ?? requestName(h.request);
    // SET_LOG_BASE with LOG_SHMFD has its own reply, which the front end waits for: it says
    // the log was refused (a non-zero u64) and the session goes on.
    const ownReply = h.request === REQ.SET_LOG_BASE && this.logShmfd;
    // The dirty log is the front end's business during migration; refusing one without an
    // answer to give is logged and the session goes on (the guest keeps running).
    const ignore = !ownReply && (h.request === REQ.SET_LOG_BASE || h.request === REQ.SET_LOG_FD) && !(h.needReply && this.replyAck);
    const nack = ownReply || (h.needReply && this.replyAck && !HAS_REPLY.has(h.request));
    const refusal: Refusal = { request, reason, action: nack ? 'nack' : ignore ? 'ignore' : 'close' };
    this.opts.log?.(`vhost-user: refused ${request}: ${reason}${nack || ignore ? '' : '; closing the connection'}`);
    this.emit('refused', refusal);
    if (ignore) return;
    if (nack) {
      try {
        this.conn.replyU64(h.request, 1n);
        return;
      } catch (e) {
        this.end(`could not send the REPLY_ACK error for ${request}: ${(e as Error).message}`);
        return;
      }
    }
    this.end(`refused ${request}: ${reason}`);
  }

  private handle(m: NativeVuMessage, taken: Set<number>): void {
    switch (m.request) {
      case REQ.GET_FEATURES:
        return this.conn.replyU64(m.request, this.offeredFeatures);
      case REQ.SET_FEATURES:
        return this.setFeatures(u64(m));
      case REQ.GET_PROTOCOL_FEATURES:
        return this.conn.replyU64(m.request, this.offeredProtocolFeatures);
      case REQ.SET_PROTOCOL_FEATURES:
        return this.setProtocolFeatures(u64(m));
      case REQ.SET_OWNER:
        if (this.owner) throw new Refuse('the session already has an owner (SET_OWNER twice)');
        this.owner = true;
        clearTimeout(this.handshakeTimer);
        this.handshakeTimer = undefined;
        return;
      case REQ.RESET_OWNER:
        // Deprecated; the spec recommends treating it as "disable all rings".
        for (let p = 0; p < this.running.length; p++) this.stopPair(p, true);
        this.rings.forEach((r) => {
          r.enabled = false;
          this.stopRing(r);
        });
        return;
      case REQ.GET_QUEUE_NUM:
        // Virtqueues, as the spec words it ("the maximum number of queues") and as
        // cloud-hypervisor compares it with its num_queues; QEMU reads it as queue pairs and
        // only checks its queues= against it, so a QEMU asking for more pairs than the TAP has
        // gets its extra rings refused by index, with the reason logged.
        return this.conn.replyU64(m.request, BigInt(2 * this.backend.queuePairs));
      case REQ.SET_MEM_TABLE:
        if (m.kind !== 'memTable') throw new Refuse('internal: SET_MEM_TABLE without regions');
        return this.setMemTable(m.regions, m.fds);
      case REQ.SET_VRING_NUM:
        return this.setVringNum(state(m));
      case REQ.SET_VRING_ADDR:
        if (m.kind !== 'addr') throw new Refuse('internal: SET_VRING_ADDR without addresses');
        return this.setVringAddr(m);
      case REQ.SET_VRING_BASE:
        return this.setVringBase(state(m));
      case REQ.GET_VRING_BASE:
        return this.getVringBase(state(m).index);
      case REQ.SET_VRING_KICK:
      case REQ.SET_VRING_CALL:
      case REQ.SET_VRING_ERR:
        return this.setVringFd(m.request, u64(m), m.fds, taken);
      case REQ.SET_VRING_ENABLE:
        return this.setVringEnable(state(m));
      case REQ.SEND_RARP:
        return this.sendRarp(u64(m));
      case REQ.SET_STATUS:
        return this.setStatus(u64(m));
      case REQ.GET_STATUS:
        if (!this.negotiated('STATUS')) throw new Refuse('protocol feature STATUS was not negotiated (SET_PROTOCOL_FEATURES)');
        return this.conn.replyU64(m.request, BigInt(this.status));
      case REQ.RESET_DEVICE:
        if (!this.negotiated('RESET_DEVICE')) throw new Refuse('protocol feature RESET_DEVICE was not negotiated (SET_PROTOCOL_FEATURES)');
        return this.resetDevice();
      case REQ.SET_LOG_BASE:
        return this.setLogBase(m);
      case REQ.SET_LOG_FD:
        // An eventfd the back end could signal after logging: the log is read by the front end
        // when it syncs, so nothing is ever signalled (the fd is closed).
        if (m.fds.length !== 1) throw new Refuse(`SET_LOG_FD carries ${m.fds.length} file descriptors, must be 1`);
        this.opts.trace?.('vhost-user: SET_LOG_FD accepted; the back end never signals it');
        return;
      default: {
        const why = UNSUPPORTED[m.request];
        throw new Refuse(why ? `not supported: ${why}` : `not supported by this back end`);
      }
    }
  }

  // --- features --------------------------------------------------------------------------

  private setFeatures(v: bigint): void {
    const extra = v & ~this.offeredFeatures;
    if (extra) {
      const log = (extra >> BigInt(F_LOG_ALL)) & 1n ? ' (LOG_ALL: this back end cannot keep a dirty log)' : '';
      throw new Refuse(`features ${hex(v)} include bits not offered: ${featureNames(extra).join(', ')}${log}`);
    }
    const logAll = 1n << BigInt(F_LOG_ALL);
    // LOG_ALL is the vhost layer's, not the device's: QEMU sets and clears it while the rings
    // run, when live migration starts and ends, and the workers go on.
    if (this.running.some(Boolean) && (v ^ this.features) === logAll) {
      this.features = v;
      this.applyLogging();
      return;
    }
    const device = v & ~(1n << BigInt(F_PROTOCOL_FEATURES)) & ~logAll;
    // The VMM keeps the control queue (CTRL_VQ and what hangs off it, such as MQ and
    // GUEST_ANNOUNCE) and never sends it; the offload dependencies still hold.
    const ctrl = bit('CTRL_VQ');
    const why = validateDriverFeatures(device | ctrl, this.backend.features | ctrl);
    if (why) throw new Refuse(`features ${hex(v)}: ${why}`);
    if (this.running.some(Boolean)) {
      if (v !== this.features) throw new Refuse(`features ${hex(v)} differ from ${hex(this.features)} while rings run; stop them first (GET_VRING_BASE)`);
      return;
    }
    try {
      this.backend.setFeatures(device);
    } catch (e) {
      throw new Refuse(`programming the TAP for features ${hex(device)} failed: ${(e as Error).message}`);
    }
    if (v !== this.features || !this.featuresSet) this.opts.log?.(`vhost-user: features ${hex(v)} negotiated: ${featureNames(device).join(', ') || 'none'}`);
    this.features = v;
    this.featuresSet = true;
    this.applyLogging();
    // Without F_PROTOCOL_FEATURES there is no SET_VRING_ENABLE: rings are enabled from the start.
    if (!((v >> BigInt(F_PROTOCOL_FEATURES)) & 1n)) {
      for (const r of this.rings) r.enabled = true;
      for (let p = 0; p < this.running.length; p++) this.tryStartPair(p);
    }
  }

  private setProtocolFeatures(v: bigint): void {
    const extra = v & ~this.offeredProtocolFeatures;
    if (extra) throw new Refuse(`protocol features ${hex(v)} include bits not offered: ${protocolFeatureNames(extra).join(', ')}`);
    if (this.running.some(Boolean) && v !== this.protocolFeatures) throw new Refuse('protocol features change while rings run');
    this.protocolFeatures = v;
  }

  /**
   * SET_STATUS (STATUS negotiated): the virtio device status byte. Seen from QEMU 7.2 with
   * --trace: GET_STATUS then SET_STATUS 0x8 (FEATURES_OK) after SET_FEATURES, GET_STATUS and
   * SET_STATUS 0xf when the rings start, SET_STATUS 0 when it stops the device. The rings are
   * driven by the ring messages, so the byte is kept, answered by GET_STATUS, and logged.
   */
  private setStatus(v: bigint): void {
    if (!this.negotiated('STATUS')) throw new Refuse('protocol feature STATUS was not negotiated (SET_PROTOCOL_FEATURES)');
    if (v > 0xffn) throw new Refuse(`status ${hex(v)} is not a byte`);
    const next = Number(v);
    if (next !== this.status) this.opts.log?.(`vhost-user: device status ${hex(next)}${next === 0 ? ' (reset/stopped by the front end)' : ''}`);
    this.status = next;
  }

  /**
   * RESET_DEVICE (RESET_DEVICE negotiated; QEMU sends it where it would send RESET_OWNER, which
   * QEMU 7.2 did not send here for a net device, neither on a driver reload nor at power-off):
   * every ring stops and forgets its setup, features are forgotten, the owner and the memory
   * table stay, as the spec has it; the front end sets the device up again.
   */
  private resetDevice(): void {
    for (let p = 0; p < this.running.length; p++) this.stopPair(p, true);
    for (const r of this.rings) {
      this.stopRing(r);
      for (const fd of [r.callFd, r.errFd]) this.closeFd(fd);
      Object.assign(r, { num: undefined, addr: undefined, base: 0, usedBase: undefined, callFd: -1, errFd: -1, enabled: false });
    }
    this.features = 0n;
    this.featuresSet = false;
    this.status = 0;
    this.applyLogging();
    this.opts.log?.('vhost-user: device reset by the front end (RESET_DEVICE)');
  }

  /**
   * SEND_RARP: the guest moved here (QEMU sends it after a migration, or for QMP announce-self,
   * when the guest did not negotiate GUEST_ANNOUNCE); announce its MAC, the first 6 bytes of the
   * u64 as it lies in the message, with a RARP on the TAP. A frame the TAP does not take is
   * logged, and the session goes on: the guest still works, switches learn later.
   */
  private sendRarp(v: bigint): void {
    if (!((this.protocolFeatures >> BigInt(PROTOCOL_F.RARP)) & 1n)) throw new Refuse('protocol feature RARP was not negotiated (SET_PROTOCOL_FEATURES)');
    const payload = Buffer.alloc(8);
    payload.writeBigUInt64LE(v);
    const mac = payload.subarray(0, 6);
    if (mac[0] & 1) throw new Refuse(`SEND_RARP: ${macString(mac)} is a multicast address, not a guest's MAC`);
    try {
      this.backend.sendFrame!(rarpFrame(mac));
    } catch (e) {
      this.opts.log?.(`vhost-user: announcing ${macString(mac)} (RARP) failed: ${oneLine(e)}`);
      return;
    }
    this.opts.log?.(`vhost-user: announced ${macString(mac)} with a RARP on the TAP (SEND_RARP)`);
    this.emit('announced', macString(mac));
  }

  // --- dirty-page log (live migration) --------------------------------------------------

  /**
   * SET_LOG_BASE: u64 mmap_size, u64 mmap_offset and the log's fd. With LOG_SHMFD the front
   * end waits for a reply (QEMU 7.2 reads it and checks only its request code): u64 0 when the
   * log is mapped, non-zero when refused (see refuse()).
   */
  private setLogBase(m: NativeVuMessage): void {
    if (!this.logShmfd) throw new Refuse('SET_LOG_BASE needs protocol feature LOG_SHMFD (SET_PROTOCOL_FEATURES) first; the log is not used');
    if (!this.backend.setDirtyLog) throw new Refuse('this back end cannot keep a dirty log');
    if (m.fds.length !== 1) throw new Refuse(`SET_LOG_BASE carries ${m.fds.length} file descriptors; the log's fd (one) is missing`);
    const p = m.payload;
    if (p.length !== 16) throw new Refuse(`SET_LOG_BASE payload is ${p.length} bytes, must be 16 (mmap_size, mmap_offset)`);
    const size = p.readBigUInt64LE(0);
    const offset = p.readBigUInt64LE(8);
    if (size === 0n) throw new Refuse('SET_LOG_BASE: mmap_size is 0');
    const sizeN = safe(size, 'SET_LOG_BASE mmap_size');
    const offsetN = safe(offset, 'SET_LOG_BASE mmap_offset');
    if (sizeN + offsetN > Number.MAX_SAFE_INTEGER) throw new Refuse(`SET_LOG_BASE: mmap_offset ${hex(offset)} + mmap_size ${hex(size)} wraps`);
    try {
      this.backend.setDirtyLog(m.fds[0], sizeN, offsetN);
    } catch (e) {
      throw new Refuse(`the dirty log was not mapped: ${oneLine(e)}`);
    }
    this.logBase = true;
    this.opts.log?.(`vhost-user: dirty log of ${sizeN} bytes (offset ${offsetN}) mapped`);
    this.applyLogging();
    this.conn.replyU64(REQ.SET_LOG_BASE, 0n);
  }

  /** Marks the log while VHOST_F_LOG_ALL is negotiated and a log was given. */
  private applyLogging(): void {
    const want = this.logBase && ((this.features >> BigInt(F_LOG_ALL)) & 1n) === 1n;
    if (want === this.logging || !this.backend.dirtyLog) return;
    try {
      this.backend.dirtyLog(want);
    } catch (e) {
      throw new Refuse(`${want ? 'starting' : 'stopping'} dirty-page logging failed: ${oneLine(e)}`);
    }
    this.logging = want;
    this.opts.log?.(`vhost-user: dirty-page logging ${want ? 'on' : 'off'}`);
  }

  // --- memory ----------------------------------------------------------------------------

  private setMemTable(raw: { guestAddr: bigint; size: bigint; userAddr: bigint; mmapOffset: bigint }[], fds: number[]): void {
    if (raw.length === 0 || raw.length > MAX_MEM_REGIONS) throw new Refuse(`${raw.length} regions, must be 1 to ${MAX_MEM_REGIONS}`);
    if (fds.length !== raw.length) throw new Refuse(`${raw.length} regions but ${fds.length} file descriptors`);
    const regions = raw.map((r, i) => checkRegion(r, i));
    const kinds = fds.map((fd, i) => memoryFdOrRefuse(fd, i));
    // No two regions may claim the same guest or front-end addresses: translations must be unambiguous.
    for (const [space, key] of [['guest physical', 'guestAddr'], ['front-end virtual', 'userAddr']] as const) {
      const sorted = regions.map((r, i) => ({ r, i })).sort((a, b) => a.r[key] - b.r[key]);
      for (let k = 1; k < sorted.length; k++) {
        const prev = sorted[k - 1];
        const cur = sorted[k];
        if (prev.r[key] + prev.r.size > cur.r[key]) {
          throw new Refuse(`regions ${prev.i} and ${cur.i} overlap in ${space} addresses (${hex(prev.r[key])}+${hex(prev.r.size)} and ${hex(cur.r[key])})`);
        }
      }
    }
    // Rings already started must stay inside the new table.
    const moved: number[] = [];
    for (let i = 0; i < this.rings.length; i++) {
      const r = this.rings[i];
      if (!r.started || !r.addr || r.num === undefined) continue;
      const before = this.regions ? translateRing(this.regions, r.addr, r.num, this.packed()) : undefined;
      const after = translateRing(regions, r.addr, r.num, this.packed());
      if (typeof after === 'string') throw new Refuse(`ring ${i} would lie outside the new memory table: ${after}`);
      if (typeof before !== 'object' || before.desc !== after.desc || before.avail !== after.avail || before.used !== after.used) moved.push(i);
    }
    try {
      this.backend.setMemory(regions, fds);
    } catch (e) {
      throw new Refuse(`mapping the regions failed: ${(e as Error).message}`);
    }
    this.regions = regions;
    this.opts.trace?.(`vhost-user: memory: ${kinds.join('; ')}`);
    this.watchFaults();
    // A running ring whose guest addresses changed restarts at its position with the new ones.
    for (const p of new Set(moved.map((i) => i >> 1))) {
      if (!this.running[p]) continue;
      this.stopPair(p);
      this.tryStartPair(p);
    }
  }

  // --- rings -----------------------------------------------------------------------------

  private ring(index: number): Ring {
    if (!Number.isInteger(index) || index < 0 || index >= this.rings.length) {
      throw new Refuse(`vring index ${index} is out of range: this back end has ${this.backend.queuePairs} queue pair(s), rings 0 to ${this.rings.length - 1}`);
    }
    return this.rings[index];
  }

  private notStarted(index: number, what: string): Ring {
    const r = this.ring(index);
    if (r.started) throw new Refuse(`${what} for ring ${index} while it is started; stop it first (GET_VRING_BASE)`);
    return r;
  }

  private setVringNum(s: { index: number; num: number }): void {
    const r = this.notStarted(s.index, 'SET_VRING_NUM');
    if (this.packed()) {
      // A packed ring's size need not be a power of two (virtio 1.x §2.8.10).
      if (!Number.isInteger(s.num) || s.num < 1 || s.num > MAX_RING_SIZE) throw new Refuse(`ring ${s.index}: packed ring size ${s.num} must be from 1 to ${MAX_RING_SIZE}`);
    } else if (s.num < 1 || s.num > MAX_RING_SIZE || (s.num & (s.num - 1)) !== 0) {
      throw new Refuse(`ring ${s.index}: size ${s.num} must be a power of two from 1 to ${MAX_RING_SIZE}`);
    }
    if (r.addr && this.regions) this.layoutOrRefuse(s.index, r.addr, s.num);
    r.num = s.num;
  }

  private setVringAddr(m: { index: number; addrFlags: number; desc: bigint; used: bigint; avail: bigint; log: bigint }): void {
    const r = this.ring(m.index);
    if ((m.addrFlags & ~VRING_F_LOG) !== 0) throw new Refuse(`ring ${m.index}: flags ${hex(m.addrFlags)}; only bit 0 (VHOST_VRING_F_LOG) is defined`);
    const log = (m.addrFlags & VRING_F_LOG) !== 0;
    const addr = { desc: safe(m.desc, `ring ${m.index} descriptor table`), avail: safe(m.avail, `ring ${m.index} available ring`), used: safe(m.used, `ring ${m.index} used ring`) };
    if (r.started) {
      // QEMU switches used-ring logging on and off with the same addresses while the ring runs.
      const same = r.addr && r.addr.desc === addr.desc && r.addr.avail === addr.avail && r.addr.used === addr.used;
      if (!same) throw new Refuse(`SET_VRING_ADDR for ring ${m.index} while it is started moves the ring; stop it first (GET_VRING_BASE)`);
    }
    let layout: RingLayout | undefined;
    if (r.num !== undefined && this.regions) layout = this.layoutOrRefuse(m.index, addr, r.num);
    if (log && layout) {
      // The workers log used-ring writes at the ring's own guest address (the device area for
      // packed rings, whose written-back descriptors are logged too); log_guest_addr must name it.
      const at = safe(m.log, `ring ${m.index} log_guest_addr`);
      if (at !== layout.used) throw new Refuse(`ring ${m.index}: log_guest_addr ${hex(at)} is not the ${layout.packed ? 'device area' : 'used ring'}'s guest address ${hex(layout.used)}`);
    }
    r.addr = addr;
    r.log = log;
  }

  private setVringBase(s: { index: number; num: number }): void {
    const r = this.notStarted(s.index, 'SET_VRING_BASE');
    if (this.packed()) {
      // Bits 0-14 the driver's next avail position, bit 15 its wrap counter; bits 16-31 the
      // same for the device's used position. QEMU sends both halves; DPDK's virtio-user sends
      // the avail half alone (then both start there).
      const avail = s.num & 0xffff;
      const used = s.num >>> 16;
      r.base = avail;
      r.usedBase = used === 0 ? undefined : used;
      const say = (v: number): string => {
        const { index, wrap } = packedPosition(v);
        return `${index} wrap ${wrap}`;
      };
      this.opts.log?.(`vhost-user: ring ${s.index}: packed ring base ${hex(s.num)} (avail ${say(avail)}, used ${used === 0 ? 'as avail' : say(used)})`);
      return;
    }
    if (s.num > MAX_RING_INDEX) throw new Refuse(`ring ${s.index}: base ${s.num} is not a 16-bit split-ring index (packed rings were not negotiated)`);
    r.base = s.num;
  }

  /** Stops the ring (its pair's worker) and answers where it stopped. */
  private getVringBase(index: number): void {
    const r = this.ring(index);
    this.stopPair(index >> 1);
    this.stopRing(r);
    // Packed: the avail half and, in bits 16-31, the used half (each with its wrap counter
    // in bit 15), as QEMU reads it back.
    const num = this.packed() ? (r.base | ((r.usedBase ?? r.base) << 16)) >>> 0 : r.base;
    this.conn.replyState(REQ.GET_VRING_BASE, index, num);
  }

  private packed(): boolean {
    return ((this.features >> BigInt(F.RING_PACKED)) & 1n) === 1n;
  }

  private setVringFd(request: number, v: bigint, fds: number[], taken: Set<number>): void {
    const index = Number(v & BigInt(VRING_INDEX_MASK));
    const nofd = (v & BigInt(VRING_NOFD)) !== 0n;
    const r = this.ring(index);
    const fd = nofd ? -1 : fds[0];
    const p = index >> 1;
    if (!nofd) {
      const kind = request === REQ.SET_VRING_KICK ? 'kick' : request === REQ.SET_VRING_CALL ? 'call' : 'error';
      const wasNonblocking = eventfdOrRefuse(fd, index, kind);
      this.opts.trace?.(`vhost-user: ring ${index} ${kind} fd: eventfd, ${wasNonblocking ? 'non-blocking as sent' : 'sent blocking, made non-blocking'}`);
    }
    if (request === REQ.SET_VRING_KICK) {
      if (nofd) throw new Refuse(`ring ${index}: no kick fd (polling mode) is not supported`);
      if (!this.regions) throw new Refuse(`ring ${index}: SET_VRING_KICK before SET_MEM_TABLE`);
      if (r.num === undefined) throw new Refuse(`ring ${index}: SET_VRING_KICK before SET_VRING_NUM`);
      if (!r.addr) throw new Refuse(`ring ${index}: SET_VRING_KICK before SET_VRING_ADDR`);
      this.layoutOrRefuse(index, r.addr, r.num);
      const wasRunning = this.stopPair(p);
      taken.add(fd);
      this.closeFd(r.kickFd);
      r.kickFd = fd;
      r.started = true;
      if (!this.tryStartPair(p) && wasRunning) this.opts.log?.(`vhost-user: pair ${p} did not restart after a new kick fd for ring ${index}`);
      return;
    }
    if (request === REQ.SET_VRING_CALL) {
      // Without a call fd the front end polls; the worker still needs an eventfd to write.
      const callFd = nofd ? addon().eventfd() : fd;
      if (!nofd) taken.add(fd);
      if (this.running[p] && this.backend.setCallFd) {
        // Swapped into the running worker: a burst of SET_VRING_CALL costs a dup each, not a
        // worker restart each.
        try {
          this.backend.setCallFd(p, (index & 1) === 0 ? 'rx' : 'tx', callFd);
        } catch (e) {
          this.closeFd(callFd);
          throw new Refuse(`ring ${index}: handing the worker the new call fd failed: ${oneLine(e)}`);
        }
        this.closeFd(r.callFd);
        r.callFd = callFd;
        return;
      }
      const wasRunning = this.stopPair(p);
      this.closeFd(r.callFd);
      r.callFd = callFd;
      if (wasRunning) this.tryStartPair(p);
      return;
    }
    if (!nofd) taken.add(fd);
    this.closeFd(r.errFd);
    r.errFd = fd;
  }

  private setVringEnable(s: { index: number; num: number }): void {
    const r = this.ring(s.index);
    if (s.num !== 0 && s.num !== 1) throw new Refuse(`ring ${s.index}: enable must be 0 or 1, got ${s.num}`);
    r.enabled = s.num === 1;
    if (r.enabled) this.tryStartPair(s.index >> 1);
    else this.stopPair(s.index >> 1, true);
  }

  /**
   * The ring's guest layout in the current table, checked with the started rings (no part may
   * overlap another ring's); refuses when it is not inside guest memory or breaks a layout rule.
   */
  private layoutOrRefuse(index: number, addr: { desc: number; avail: number; used: number }, num: number): RingLayout {
    const t = translateRing(this.regions!, addr, num, this.packed());
    if (typeof t === 'string') throw new Refuse(`ring ${index}: ${t}`);
    const others: RingLayout[] = [];
    this.rings.forEach((r, i) => {
      if (i === index || !r.started || !r.addr || r.num === undefined) return;
      const o = translateRing(this.regions!, r.addr, r.num, this.packed());
      if (typeof o === 'object') others.push(o);
    });
    const v = this.backend.checkRings([t, ...others]);
    if (v) throw new Refuse(`ring ${index} breaks rule '${v.rule}': ${v.detail}`);
    return t;
  }

  /** GET_VRING_BASE / RESET_OWNER: the ring no longer runs and waits for a new kick fd. */
  private stopRing(r: Ring): void {
    r.started = false;
    this.closeFd(r.kickFd);
    r.kickFd = -1;
  }

  /**
   * Starts pair p when both its rings are started and enabled. A vhost-tap worker serves a
   * pair, so one started ring waits for its partner. Returns whether the pair runs.
   */
  private tryStartPair(p: number): boolean {
    if (this.running[p]) return true;
    const rx = this.rings[2 * p];
    const tx = this.rings[2 * p + 1];
    if (!rx.started || !tx.started || !rx.enabled || !tx.enabled || !this.regions) return false;
    if (!this.featuresSet) {
      // No SET_FEATURES: nothing was negotiated, so legacy 10-byte headers and no offloads.
      try {
        this.backend.setFeatures(0n);
      } catch (e) {
        throw new Refuse(`programming the TAP for no features failed: ${(e as Error).message}`);
      }
      this.featuresSet = true;
    }
    const start = (index: number, r: Ring): RingStart => {
      const layout = this.layoutOrRefuse(index, r.addr!, r.num!);
      if (r.callFd < 0) r.callFd = addon().eventfd();
      const usedIdx = layout.packed ? (r.usedBase ?? r.base) : this.backend.readUsedIdx(layout);
      return { index, ...layout, kickFd: r.kickFd, callFd: r.callFd, lastAvailIdx: r.base, usedIdx };
    };
    const a = start(2 * p, rx);
    const b = start(2 * p + 1, tx);
    try {
      this.backend.startPair(p, a, b, (ring, rule, detail) => this.ringBroken(ring, rule, detail));
    } catch (e) {
      throw new Refuse(`starting queue pair ${p} failed: ${(e as Error).message}`);
    }
    this.running[p] = true;
    const format = [a.packed ? 'packed' : 'split', ...(has(this.features, 'IN_ORDER') ? ['in-order'] : []), ...(has(this.features, 'RING_EVENT_IDX') ? ['event-idx'] : [])];
    // Where each ring starts (avail/used): after a migration or a reconnect, the positions the
    // front end and the guest's memory gave, to compare with where the previous back end stopped.
    const pos = (v: number, packed?: boolean): string => {
      if (!packed) return `${v}`;
      const { index, wrap } = packedPosition(v);
      return `${index}.${wrap}`;
    };
    const at = (r: RingStart): string => `${pos(r.lastAvailIdx, r.packed)}/${pos(r.usedIdx, r.packed)}`;
    this.opts.log?.(`vhost-user: queue pair ${p} running (${format.join(', ')}, ${a.size} entries; rings ${2 * p} and ${2 * p + 1} from avail/used ${at(a)} and ${at(b)})`);
    this.emit('pair', p, true);
    return true;
  }

  /** Stops pair p's worker if it runs, keeping where each ring stopped. Returns whether it ran. */
  private stopPair(p: number, disable = false): boolean {
    if (!this.running[p]) return false;
    this.running[p] = false;
    const pos = this.backend.stopPair(p, disable);
    this.rings[2 * p].base = pos.rx;
    this.rings[2 * p + 1].base = pos.tx;
    this.rings[2 * p].usedBase = pos.rxUsed;
    this.rings[2 * p + 1].usedBase = pos.txUsed;
    // Said like the start, so a restart (GET_VRING_BASE, a new kick fd, a disable) reads as one;
    // the session's end says itself.
    if (!this.ended) this.opts.log?.(`vhost-user: queue pair ${p} stopped (ring ${2 * p} at avail ${pos.rx}, ring ${2 * p + 1} at avail ${pos.tx}; used ${pos.rxUsed} and ${pos.txUsed})`);
    this.emit('pair', p, false);
    return true;
  }

  private ringBroken(ring: number, rule: string, detail: string): void {
    if (this.ended) return;
    this.opts.log?.(`vhost-user: ring ${ring} stopped: the guest broke rule '${rule}': ${detail}`);
    const err = this.rings[ring]?.errFd ?? -1;
    if (err >= 0) {
      try {
        addon().kick(err);
      } catch {
        // The front end closed its end of the error eventfd; the log line stands.
      }
    }
    this.emit('ring-broken', { ring, rule, detail });
  }

  // --- the end ---------------------------------------------------------------------------

  /** Ends the session when the front end shrank guest memory under a worker (a contained SIGBUS). */
  private watchFaults(): void {
    if (this.faultWatch || !this.backend.faultFd) return;
    const fd = this.backend.faultFd();
    if (fd < 0) return;
    this.faultWatch = new (addon().FdWatcher)(fd, () => {
      const at = this.backend.faulted?.() ?? [];
      if (at.length === 0) return;
      this.end(
        `the front end shrank the file behind guest memory (region at guest address ${at.map((a) => hex(a)).join(', ')}): ` +
          'an access past its end faulted and was contained; dropping it',
      );
    });
  }

  private end(reason: string): void {
    if (this.ended) return;
    this.ended = true;
    clearTimeout(this.handshakeTimer);
    this.handshakeTimer = undefined;
    this.faultWatch?.close();
    this.faultWatch = undefined;
    let failure: unknown;
    for (let p = 0; p < this.running.length; p++) {
      try {
        this.stopPair(p);
      } catch (e) {
        failure ??= e;
      }
    }
    for (const r of this.rings) {
      for (const fd of [r.kickFd, r.callFd, r.errFd]) this.closeFd(fd);
      r.kickFd = r.callFd = r.errFd = -1;
      r.started = false;
    }
    this.logging = false;
    this.logBase = false;
    if (this.regions) {
      try {
        this.backend.clearMemory();
      } catch (e) {
        failure ??= e;
      }
      this.regions = undefined;
    }
    this.conn.close();
    this.opts.log?.(`vhost-user: session ended: ${reason}`);
    this.emit('end', reason);
    // Reported, never thrown: an 'error' event nobody listens to would end the process.
    if (failure) {
      this.opts.log?.(`vhost-user: releasing the session's data plane failed: ${(failure as Error)?.message ?? String(failure)}`);
      this.emit('warning', failure);
    }
  }

  private closeFd(fd: number): void {
    if (fd < 0) return;
    try {
      addon().close(fd);
    } catch {
      // Already closed: nothing to release.
    }
  }
}

/** An error's message as one line: a reason, never a stack trace. */
function oneLine(e: unknown): string {
  return String((e as Error)?.message ?? e).split('\n')[0];
}

function describeFd(info: NativeFdInfo): string {
  const what = info.type === 'other' ? `'${info.link}'` : info.type === 'regular' ? `a regular file (${info.link})` : `a ${info.type}`;
  return what;
}

/**
 * Kick, call and error fds must be eventfds: anything else (a pipe at EOF, a socket) would be
 * readable for ever to the worker that polls it, or block whoever writes it. Each is made
 * non-blocking (QEMU's and DPDK's already are), so that a counter at its maximum never blocks
 * a worker's interrupt or the JS thread's error signal.
 */
function eventfdOrRefuse(fd: number, index: number, kind: 'kick' | 'call' | 'error'): boolean {
  let info: NativeFdInfo;
  try {
    info = addon().vhostUser.inspectFd(fd);
  } catch (e) {
    throw new Refuse(`ring ${index}: the ${kind} fd cannot be inspected: ${oneLine(e)}`);
  }
  if (info.type !== 'eventfd') throw new Refuse(`ring ${index}: the ${kind} fd is ${describeFd(info)}, not an eventfd`);
  try {
    addon().vhostUser.setNonblock(fd);
  } catch (e) {
    throw new Refuse(`ring ${index}: the ${kind} fd cannot be made non-blocking: ${oneLine(e)}`);
  }
  return info.nonblock;
}

/** F_SEAL_SHRINK (linux/fcntl.h): the memfd can never get smaller. */
const F_SEAL_SHRINK = 0x2;

/**
 * Guest memory must be a memfd or a regular file (tmpfs, hugetlbfs): shared memory that maps.
 * QEMU's memory-backend-memfd seals it against shrinking; DPDK and memory-backend-file send
 * files that carry no seals. Either is accepted: a file shrunk after SET_MEM_TABLE faults
 * (SIGBUS) where it is touched, and the data plane contains that fault and ends the session.
 * Returns how the region is held, for the trace.
 */
function memoryFdOrRefuse(fd: number, i: number): string {
  let info: NativeFdInfo;
  try {
    info = addon().vhostUser.inspectFd(fd);
  } catch (e) {
    throw new Refuse(`region ${i}: its fd cannot be inspected: ${oneLine(e)}`);
  }
  if (info.type !== 'memfd' && info.type !== 'regular') {
    throw new Refuse(`region ${i}: the fd is ${describeFd(info)}; guest memory must be a memfd or a regular file (shared memory)`);
  }
  const sealed = info.seals >= 0 && (info.seals & F_SEAL_SHRINK) !== 0;
  const seals = info.seals < 0 ? 'no seals possible' : `seals ${hex(info.seals)}`;
  return `region ${i}: ${info.type === 'memfd' ? 'memfd' : info.link}, ${info.size} bytes, ${seals}, ${sealed ? 'sealed against shrinking' : 'not sealed (a shrink is contained)'}`;
}

function u64(m: NativeVuMessage): bigint {
  if (m.kind !== 'u64') throw new Refuse(`internal: ${m.name} without a u64 payload`);
  return m.u64;
}

function state(m: NativeVuMessage): { index: number; num: number } {
  if (m.kind !== 'state') throw new Refuse(`internal: ${m.name} without a vring state payload`);
  return { index: m.index, num: m.num };
}

/** A 64-bit address or size from the front end as a JS number, refused when it is not exactly representable. */
function safe(v: bigint, what: string): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new Refuse(`${what} ${hex(v)} is beyond 2^53 (no such address on this host)`);
  return Number(v);
}

function checkRegion(r: { guestAddr: bigint; size: bigint; userAddr: bigint; mmapOffset: bigint }, i: number): MemoryRegion {
  const what = `region ${i}`;
  if (r.size === 0n) throw new Refuse(`${what} has size 0`);
  const out = {
    guestAddr: safe(r.guestAddr, `${what} guest address`),
    size: safe(r.size, `${what} size`),
    userAddr: safe(r.userAddr, `${what} user address`),
    mmapOffset: safe(r.mmapOffset, `${what} mmap offset`),
  };
  // Sums stay exact below 2^53, so the end of each range is checked, not just its start.
  for (const [name, start] of [['guest address', out.guestAddr], ['user address', out.userAddr], ['mmap offset', out.mmapOffset]] as const) {
    if (start + out.size > Number.MAX_SAFE_INTEGER) throw new Refuse(`${what}: ${name} ${hex(start)} + size ${hex(out.size)} wraps`);
  }
  return out;
}

/**
 * Translates a ring's front-end virtual addresses to guest physical ones through the regions'
 * user addresses; each part must lie inside one region. Returns the reason as a string when not.
 */
/**
 * A ring's front-end addresses as guest addresses. Packed rings (VIRTIO_F_RING_PACKED): the
 * three addresses of SET_VRING_ADDR are the descriptor ring, the driver event suppression area
 * (in the avail field) and the device event suppression area (in the used field).
 */
export function translateRing(regions: MemoryRegion[], addr: { desc: number; avail: number; used: number }, num: number, packed = false): RingLayout | string {
  const sizes = packed ? packedRingSizes(num) : splitRingSizes(num);
  const out: RingLayout = packed ? { size: num, desc: 0, avail: 0, used: 0, packed: true } : { size: num, desc: 0, avail: 0, used: 0 };
  for (const part of ['desc', 'avail', 'used'] as const) {
    const ua = addr[part];
    const len = sizes[part];
    const r = regions.find((g) => ua >= g.userAddr && ua + len <= g.userAddr + g.size);
    if (!r) return `${part} ${hex(ua)}+${len} lies outside every memory region (front-end virtual addresses)`;
    out[part] = r.guestAddr + (ua - r.userAddr);
  }
  return out;
}

function describe(m: NativeVuMessage): string {
  const flags = m.needReply ? ' need_reply' : '';
  const fds = m.fds.length ? ` fds=${m.fds.length}` : '';
  switch (m.kind) {
    case 'u64':
      return `${m.name}${flags} ${hex(m.u64)}${fds}`;
    case 'state':
      return `${m.name}${flags} index=${m.index} num=${m.num}${fds}`;
    case 'addr':
      return `${m.name}${flags} index=${m.index} flags=${hex(m.addrFlags)} desc=${hex(m.desc)} avail=${hex(m.avail)} used=${hex(m.used)}`;
    case 'memTable':
      return `${m.name}${flags} ${m.regions.map((r) => `[gpa ${hex(r.guestAddr)} size ${hex(r.size)} uva ${hex(r.userAddr)} off ${hex(r.mmapOffset)}]`).join(' ')}${fds}`;
    default:
      return `${m.name}${flags}${fds}`;
  }
}
