// Loads the C++ addon (through node-gyp-build: build/Release/vhost_tap.node,
// built at install) and declares its shape.
// This is the whole contract between backend/ and native/: nothing else in
// backend/ calls into C++. Errors thrown by the addon are plain Errors with
// `code` (errno name such as 'EPERM', or 'EVHOST_*') and `syscall`; backend/errors.ts
// turns them into typed errors once, at this boundary.

import * as path from 'node:path';

import type { RxFilterSnapshot } from './rxfilter';

/** An Error as thrown by the addon. */
export interface NativeError extends Error {
  code: string;
  errno?: number;
  syscall?: string;
}

/** Per-virtqueue counters kept by an engine (monotonic, read without stopping it). */
export interface NativeQueueStats {
  /** Frames moved (TX: written to the TAP; RX: read from the TAP into the ring). */
  packets: number;
  /** Bytes of frame moved, virtio_net_hdr excluded. */
  bytes: number;
  /** Chains returned to the used ring. */
  usedChains: number;
  /** Times the device signalled the call eventfd. */
  interrupts: number;
  /** Times the worker woke up because of this queue's kick eventfd. */
  kicks: number;
  /** TX: writes the TAP refused for lack of room (its sndbuf is finite); each frame is sent again later, in order. */
  tapFull: number;
  /**
   * TX: frames that reached the TAP ahead of an earlier frame of the guest's, because the TAP's
   * sndbuf shrank while a batch was being written (see README, "Ordering"). Normally 0.
   */
  reordered: number;
  /**
   * Chains of a batch whose I/O mechanism failed without the kernel confirming it was done
   * with their buffers (io_uring itself failing, which should not happen): whether those
   * frames went out is unknown, so they are neither completed nor reused nor given back;
   * the guest gets them back at its next reset. Normally 0.
   */
  withheld: number;
  /**
   * GSO over UDP tunnels: frames moved (part of packets) whose gso_type had a UDP tunnel bit,
   * i.e. VXLAN/GENEVE super-frames (TX: from the guest; RX: from the TAP), and their bytes
   * (virtio_net_hdr excluded). Always 0 without the 24-byte header.
   */
  udpTunnelGsoPackets: number;
  udpTunnelGsoBytes: number;
  /**
   * Dropped frames by reason; every drop has a named counter. Keys are stable snake_case names.
   * RX: 'rx_truncated', 'rx_runt', 'tap_read_error', 'rx_pair_detached' (still queued in the TAP
   * when stop(true) ran before its queue was detached and the guest had no buffers for them;
   * datapath.ts adds those of queues detached with no engine running),
   * 'rx_filtered' (refused by setRxFilter's
   * filter). TX: 'tap_write_einval', 'tap_write_eio', 'tap_write_efault', 'tap_write_error',
   * 'tx_too_many_segments', and for headers the kernel refuses (EINVAL), why:
   * 'tx_hdr_csum_past_frame', 'tx_hdr_len_past_frame', 'tx_hdr_bad_gso_type',
   * 'tx_hdr_gso_size_zero', 'tx_hdr_uso_without_csum'; 'tx_tap_full_reordered': refused by a full
   * TAP after later frames of its batch had gone out (counted in reordered) and still refused
   * after a short wait.
   */
  drops: Record<string, number>;
  /** True when the queue stopped because the guest broke a rule. */
  broken: boolean;
  /**
   * Next avail index the device will read. RX chains the worker popped but has not
   * filled yet (the mergeable stash) are not counted: they are handed back at stop().
   */
  lastAvailIdx: number;
  /** used.idx the device last published. */
  usedIdx: number;
}

export interface NativeEngineStats {
  rx: NativeQueueStats;
  tx: NativeQueueStats;
  /**
   * Which I/O method the worker uses: 'io_uring' (TX: up to 64 WRITEVs per io_uring_enter,
   * unlinked while the TAP's sndbuf is unlimited, linked while it is finite, order kept
   * across EAGAIN; 'io_uring sqpoll' the same through a kernel polling thread; RX: up to 64 READVs per submission when
   * frames are queued and each RX chain holds rxFrameMax alone) or 'readv/writev' (one
   * system call per frame; read()/write() for a one-buffer frame). With io: 'auto' each
   * direction runs on whichever of the two costs the worker less CPU per frame, measured
   * as it runs (a short timed window of both about every 16k batches): io_uring where
   * system calls are expensive, readv/writev where they are cheap; a mixed choice reads
   * 'io_uring tx, readv/writev rx' or 'readv/writev tx, io_uring rx'. Set up at each
   * start(): readv/writev only when the kernel refuses io_uring (ENOSYS, EPERM:
   * kernel.io_uring_disabled, seccomp) or the environment variable VHOST_TAP_IO=readv
   * forces it; VHOST_TAP_IO=uring keeps io_uring without measuring. Every method moves
   * the same frames in the same order, and changes only between batches.
   */
  io: 'io_uring' | 'io_uring sqpoll' | 'readv/writev' | 'io_uring tx, readv/writev rx' | 'readv/writev tx, io_uring rx';
  /** Batches (both directions) moved over io_uring and over readv/writev, over this engine's life (restarts included). */
  ioBatches: { uring: number; readv: number };
  /** Worker wake-ups (epoll_wait returns after sleeping; busy-poll hits are not counted). */
  wakeups: number;
  running: boolean;
}

export interface NativeQueueConfig {
  /**
   * Virtqueue index in the device (2p for RX, 2p+1 for TX): used in error reports, and the
   * worker thread is named 'vt-pair<p>' after the RX queue's (see /proc/self/task/N/comm).
   */
  index: number;
  /** Queue size, a power of two, 1..32768. */
  size: number;
  /** Guest addresses of the three parts. */
  desc: number;
  avail: number;
  used: number;
  /** eventfd the guest writes after publishing avail.idx. */
  kickFd: number;
  /** eventfd the device writes when an interrupt is due. */
  callFd: number;
  /**
   * Where to resume (0 for a fresh split queue). Packed rings: bits 0-14 the position in the
   * ring, bit 15 the wrap counter (0x8000 for a fresh queue, the default).
   */
  lastAvailIdx?: number;
  usedIdx?: number;
}

/** One region of guest memory backed by a SharedArrayBuffer (embedded guests). */
export interface NativeBufferRegion {
  guestAddr: number;
  buffer: SharedArrayBuffer;
}

/** One region of guest memory a vhost-user front end sent as an fd. */
export interface NativeFdRegion {
  guestAddr: number;
  size: number;
  /** The front end's virtual address of the region (ring addresses arrive in that space). */
  userAddr: number;
  /** Where the region starts in the fd. */
  mmapOffset: number;
  fd: number;
}

/** A ring layout for checkRings(). */
export interface NativeRingLayout {
  size: number;
  desc: number;
  avail: number;
  used: number;
  /** A packed ring (any size 1..32768; desc, driver event area, device event area). */
  packed?: boolean;
}

/**
 * Guest memory as a region table owned by native code (native/memory.h). Engines and the
 * control queue of a device share one; replacing its table (replace/replaceFds) takes effect
 * in each worker at its next batch, and the old table (its buffers or mappings) is released
 * once no worker can use it. Every guest address the device touches is translated through it.
 */
export interface NativeGuestMemory {
  /**
   * Replaces the table with SharedArrayBuffer regions. Throws EVHOST_BADARG for anything that is
   * not a real SharedArrayBuffer (a Proxy, a view, an ArrayBuffer), overlapping or wrapping regions.
   */
  replace(regions: NativeBufferRegion[]): void;
  /**
   * Replaces the table with regions mapped from fds (mmap MAP_SHARED, read/write, from the
   * page holding mmapOffset). Refuses a region whose mmapOffset + size exceeds the fd's size,
   * and overlapping regions. The fds stay the caller's; the mappings go with the table.
   */
  replaceFds(regions: NativeFdRegion[]): void;
  /**
   * An eventfd (owned by the memory) that fires when a SIGBUS was contained in one of the fd
   * mappings: the front end shrank a region's file under the device. The pages from the fault
   * to the mapping's end read zeros since; faulted() says which regions.
   */
  faultFd(): number;
  /** Guest addresses of the current table's regions in which a SIGBUS was contained. */
  faulted(): number[];
  /**
   * Maps the front end's dirty-page log (vhost-user SET_LOG_BASE: a memfd, `mmapSize` bytes
   * from `mmapOffset`), one bit per 4 KiB guest-physical page. Throws EVHOST_BADARG when the
   * log is smaller than the current memory table needs, or the fd or range is bad.
   * Not used until dirtyLog(true).
   */
  setDirtyLog(fd: number, mmapSize: number, mmapOffset: number): void;
  /** The same with a log in this process's memory (embedders, tests). */
  setDirtyLogBuffer(buffer: SharedArrayBuffer): void;
  /**
   * Starts (true) or stops (false) marking the dirty log: every write of the device into guest
   * memory after this returns is marked. Throws EVHOST_STATE when no log was given.
   */
  dirtyLog(on: boolean): void;
  /** Stops marking and lets go of the log. */
  clearDirtyLog(): void;
  /**
   * Drops the table: no regions at all (a vhost-user session ended). Its mappings go now, or
   * when the last worker still holding the table lets go of it (stop and close engines first).
   * Nothing can start on a cleared memory until the next replace/replaceFds.
   */
  clear(): void;
  /** The guest address of front-end address `userAddr` when [userAddr, +len) lies in one region; -1 otherwise. */
  userToGuest(userAddr: number, len: number): number;
  regions(): { guestAddr: number; size: number; userAddr: number }[];
  /**
   * The ring layout rules for these queues against the current table: size, alignment, each
   * part inside one region, no part overlapping another (of the same queue or another one).
   * null when they hold; otherwise the first broken rule ('ring-out-of-bounds' or 'ring-overlap').
   */
  checkRings(rings: NativeRingLayout[]): null | { rule: string; detail: string };
  /** A copy of guest memory (tests, diagnostics); throws EVHOST_BADARG where it is not mapped. */
  read(guestAddr: number, len: number): Buffer;
}

/** A control-queue command as the native walker decoded it. */
export interface NativeCtrlCommand {
  cls: number;
  cmd: number;
  data: Uint8Array;
  /** Shorter than class + command, or longer than the longest command understood: answer ERR. */
  malformed: boolean;
}

/** How the device answers one control command: the ack, or the ack and the command's result. */
export type CtrlAnswer = number | { ack: number; result: Uint8Array };

/**
 * The device side of the control virtqueue, walked by the same native ring code as the data
 * queues (native/ctrl_queue.h). Runs on the JS thread.
 */
export interface NativeControlQueue {
  /**
   * Decodes up to maxCommands available commands, within a per-call descriptor budget.
   * `more`: the budget ran out with commands left (call again on a later turn); otherwise the
   * ring is empty and kicks are re-enabled. `broken`: the guest broke a ring rule; the queue
   * is dead (commands already decoded are still returned and must be answered).
   */
  pop(maxCommands: number): { commands: NativeCtrlCommand[]; more: boolean; broken: null | { rule: string; detail: string } };
  /**
   * Answers the commands of the last pop() in order: CTRL.OK / CTRL.ERR, or { ack, result }
   * for a command that returns data (at most 8 bytes, written before the ack; a driver that
   * left no room for it gets ERR). Fewer answers than commands answer the first ones not yet
   * answered and publish them; pop() throws until every command is. Returns whether an
   * interrupt is due.
   */
  answer(answers: CtrlAnswer[]): boolean;
}

export interface NativeControlQueueOptions extends NativeRingLayout {
  memory: NativeGuestMemory;
  /** VIRTIO_F_RING_PACKED (as NativeRingLayout.packed). */
  packed?: boolean;
  eventIdx: boolean;
  indirect: boolean;
}

export interface NativeEngineOptions {
  /** Guest memory (shared with the device's other engines and its control queue). */
  memory: NativeGuestMemory;
  /** TAP queue fd (or, in tests, one end of a SOCK_SEQPACKET socketpair). */
  tapFd: number;
  /** virtio_net_hdr size the guest uses and the TAP was told (10, 12, 20 or 24). */
  hdrLen: number;
  /**
   * VIRTIO_NET_F_HOST_UDP_TUNNEL_GSO / _CSUM negotiated (need hdrLen 24). Without them a TX
   * header asking for a UDP tunnel (or its outer checksum) is dropped and counted before the
   * TAP sees it (tun would take it: it cannot know what was negotiated).
   */
  hostUdpTunnel?: boolean;
  hostUdpTunnelCsum?: boolean;
  /** VIRTIO_NET_F_MRG_RXBUF negotiated: RX frames may span several chains; num_buffers is set. */
  mergeable: boolean;
  /** VIRTIO_F_RING_EVENT_IDX negotiated. */
  eventIdx: boolean;
  /** VIRTIO_F_RING_INDIRECT_DESC negotiated. */
  indirect: boolean;
  /**
   * VIRTIO_F_RING_PACKED negotiated: both rings are packed (as rx.packed / tx.packed). The
   * layout is chosen once, here: the worker is compiled per layout.
   */
  packed?: boolean;
  /**
   * VIRTIO_F_IN_ORDER negotiated: a batch of TX chains is answered with one used element
   * naming its last buffer; on the split ring the driver must post descriptors in table
   * order (rule 'in-order-head').
   */
  inOrder?: boolean;
  /**
   * Largest RX frame, virtio_net_hdr included, that the negotiated features allow.
   * Mergeable: the device gathers chains until they hold this many bytes before a read.
   * Not mergeable: a chain smaller than this breaks rule 'rx-chain-too-small'.
   */
  rxFrameMax: number;
  rx: NativeQueueConfig;
  tx: NativeQueueConfig;
  /**
   * Opt-in busy polling, as vhost-net's busyloop_timeout: before sleeping, the worker polls
   * avail.idx of both rings and the TAP for up to this many microseconds (0..1000000,
   * default 0 = never) and goes on without sleeping when it finds work. Costs a CPU while
   * idle; saves wake-up latency and lets a guest that skips a kick still be served.
   * stats().wakeups counts only real sleeps that ended, not busy-poll hits.
   */
  busyPollUs?: number;
  /**
   * 'auto' (default): per direction, io_uring batching or readv/writev, whichever costs
   * less CPU per frame here (measured while running); readv/writev where the kernel
   * refuses io_uring.
   * 'readv': readv/writev even where io_uring works (stats().io says which runs).
   */
  io?: 'auto' | 'readv';
  /**
   * io_uring with a kernel thread polling its submission ring (IORING_SETUP_SQPOLL): no
   * system call per batch while the worker is busy, at the cost of that thread's core.
   * Falls back to an ordinary ring where the kernel refuses it; stats().io says
   * 'io_uring sqpoll' when it runs. Ignored with io: 'readv'.
   */
  sqpoll?: boolean;
  /**
   * Called on the JS thread (through a thread-safe function) when the guest broke a
   * rule and the queue stopped: (queueIndex, rule, detail). Only that queue stops; the
   * other direction of the pair keeps running. Rules are kebab-case names:
   * 'desc-out-of-bounds', 'desc-index-out-of-range', 'chain-too-long', 'nested-indirect',
   * 'indirect-with-next', 'indirect-bad-len', 'indirect-not-negotiated',
   * 'indirect-out-of-bounds', 'writable-on-tx', 'readable-on-rx',
   * 'readable-after-writable', 'header-too-short', 'avail-idx-jump', 'avail-idx-backwards',
   * 'rx-chain-too-small', 'ring-out-of-bounds', 'ring-overlap', 'empty-chain', 'in-order-head';
   * packed rings also 'chain-not-available', 'buffer-id-out-of-range', 'buffer-id-in-use',
   * 'avail-withdrawn', 'ring-base-out-of-range'.
   */
  onBroken: (queueIndex: number, rule: string, detail: string) => void;
}

/** One step of a TapOps list (native/tap_ops_binding.cc); `always`: runs even after an earlier step failed. */
export type NativeTapStep = { always?: boolean } & (
  | { op: 'attach' | 'detach'; fd: number }
  | { op: 'steer'; fd: number; queue: number }
  | { op: 'discard'; fd: number; max: number }
  | { op: 'txfilter'; fd: number; flags: number; macs: Uint8Array }
  | { op: 'offload'; fd: number; flags: number }
  | { op: 'start'; engine: NativeEngine }
  | { op: 'stop'; engine: NativeEngine; drain: boolean }
  /** Waits for the worker's current RX round: frames published after it carry the hash config set before. */
  | { op: 'rxsync'; engine: NativeEngine }
  /** Loads and attaches the RSS steering program; result: its fd, or -errno (then the kernel steers; note says why). */
  | { op: 'rss'; fd: number; hashTypes: number; key: Uint8Array; table: Uint16Array; unclassifiedQueue: number }
  /** Attaches a loaded steering program by fd (-1: the kernel's own steering). */
  | { op: 'program'; fd: number; prog: number }
);

/** What each step of a list did: TAP_STEP.PENDING (did not run), DONE, FAILED or SKIPPED (after a failure). */
export const TAP_STEP = { PENDING: 0, DONE: 1, FAILED: 2, SKIPPED: 3 } as const;

/**
 * Runs lists of TAP and engine steps in order on a libuv pool thread, so that the JS thread
 * never waits for the RTNL lock, an RCU grace period or a worker's join. One list at a time.
 */
export interface NativeTapOps {
  /**
   * Runs `steps`; settles with each step's status and result (discard: frames dropped), and
   * the first failure (`failed` its index, `error` an errno Error; later steps are skipped
   * unless `always`). `cancelled`: cancel() stopped it.
   */
  run(steps: NativeTapStep[]): Promise<{ status: number[]; result: number[]; note: string[]; failed: number; error: Error | null; cancelled: boolean }>;
  /**
   * Stops the last list once its current step has ended (waits for that step only) and
   * returns what its steps did, finished or not; null when there was none or cancel() already
   * answered for it. No step of it runs afterwards.
   */
  cancel(): { status: number[]; result: number[] } | null;
}

/** One worker thread serving one queue pair. */
export interface NativeEngine {
  /** Start the worker thread (again after stop(), resuming). Throws code 'EVHOST_STATE' if already running. */
  start(): void;
  /**
   * Stop and join the worker; afterwards stats().rx/tx.lastAvailIdx/usedIdx say where to resume.
   * With `drainRx`, the worker first moves the frames its TAP queue holds into posted guest
   * buffers (bounded), because detaching the queue would drop them.
   */
  stop(drainRx?: boolean): void;
  stats(): NativeEngineStats;
  /** The GuestMemory was replaced: a sleeping worker takes the new table now instead of at its next wake-up. */
  wake(): void;
  /**
   * The exact per-frame RX filter (RX modes, primary MAC + unicast table, multicast table,
   * VLAN filter), with the semantics of RxFilter.accepts() in backend/rxfilter.ts; null (the
   * initial state) accepts every frame. Applied after the read, on the Ethernet header in
   * guest memory (802.1Q tag 0x8100 gives the VLAN id; untagged frames pass the VLAN filter;
   * `vlans: null` turns VLAN filtering off). A refused frame is counted in rx.drops.rx_filtered
   * and its buffers take the next frame. Callable from the JS thread at any time, running or
   * not; the worker switches filters atomically at its next RX round and keeps the filter
   * across stop()/start(). Throws 'EVHOST_BADARG' for a malformed snapshot (tables not whole
   * 6-byte addresses, vlans not 512 bytes).
   */
  setRxFilter(snapshot: RxFilterSnapshot | null): void;
  /**
   * The guest's hash configuration for hash reports (backend/rss.ts checked it; key at most
   * 40 bytes): with a 20-byte header the worker writes hash_value and hash_report into every
   * RX header, NONE for null or a frame of a type not enabled. Same timing as setRxFilter.
   */
  setRssHash(config: { hashTypes: number; key: Uint8Array } | null): void;
  /**
   * The driver's interrupt coalescing for this pair's RX or TX queue
   * (VIRTIO_NET_CTRL_NOTF_COAL_RX_SET / TX_SET): the worker holds a queue's used-buffer
   * notification until `maxPackets` packets were used or `maxUsecs` microseconds passed
   * since the first of them, whichever comes first; a notification the driver suppressed
   * stays suppressed. Either value 0 (the initial state) notifies per batch. Callable at
   * any time, running or not; kept across stop()/start(); takes effect at the worker's next
   * round, sending at once what the new values make due. Throws 'EVHOST_BADARG' unless the
   * values are integers 0..2^32-1.
   */
  setCoalescing(queue: 'rx' | 'tx', maxPackets: number, maxUsecs: number): void;
  /**
   * A new call fd for the RX or TX queue, swapped into the running worker without a restart
   * (the worker signals it once when it takes it); used by the next start() too. The engine
   * writes its own duplicate: the caller keeps `fd` and may close it. It must be non-blocking.
   */
  setCallFd(queue: 'rx' | 'tx', fd: number): void;
  /**
   * Per-queue reset (VIRTIO_F_RING_RESET) of this pair's RX or TX ring; the other ring keeps
   * running. The worker stops serving the ring at its next batch boundary (nothing of it is in
   * flight there: TX chains are written and used within their batch, RX chains popped but not
   * filled go back) and this returns where the ring stood. Frames for a reset RX ring wait in
   * the TAP queue. The ring stays reset across stop()/start() until enableQueue().
   */
  resetQueue(queue: 'rx' | 'tx'): { lastAvailIdx: number; usedIdx: number };
  /**
   * Serves a reset ring again with a new layout (size may change; packed as the engine's
   * layout) from the given positions (default: a fresh ring). Throws 'EVHOST_BADARG' with the
   * rule when the ring does not fit guest memory, overlaps the pair's other ring, or the ring
   * was not reset.
   */
  enableQueue(queue: 'rx' | 'tx', ring: { size: number; desc: number; avail: number; used: number; packed?: boolean; lastAvailIdx?: number; usedIdx?: number }): void;
  /**
   * Stops the worker and releases what the engine holds now rather than at garbage
   * collection: the thread, its reference to the guest memory and the table it last used
   * (for vhost-user, the front end's mappings). Idempotent; stop() and wake() do nothing
   * afterwards, every other method throws 'EVHOST_STATE'. Read stats() before.
   */
  close(): void;
}

export interface NetdevInfo {
  ifindex: number;
  /** 'aa:bb:cc:dd:ee:ff' */
  mac: string;
  mtu: number;
  /** IFF_* interface flags (IFF_UP = 1, IFF_RUNNING = 0x40, IFF_LOWER_UP = 0x10000 not included). */
  flags: number;
}

export interface Addon {
  /** Every numeric constant native/virtio.h defines, by the same names as backend/virtio.ts groups them: 'F_CSUM', 'RING_DESC_F_NEXT', 'HDR_GSO_TCPV4', 'TUN_F_USO4', ... */
  constants: Record<string, number>;

  // --- TAP (native/tap.cc) ---------------------------------------------------
  /**
   * Open one queue of TAP `name` with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR|IFF_MULTI_QUEUE
   * (plus `extraFlags`, e.g. IFF_NAPI), creating the device on the first call.
   * With `netnsPath` (e.g. '/run/netns/NS') the calling thread enters that network
   * namespace for the open and returns to its own afterwards, so the device lives there.
   * Returns the fd (O_NONBLOCK, O_CLOEXEC) and the kernel's name for the device.
   */
  tapOpen(name: string, netnsPath: string | null, extraFlags: number): { fd: number; name: string };
  /** TUNGETFEATURES: IFF_* flags this kernel's tun supports. */
  tapGetFeatures(fd: number): number;
  tapSetVnetHdrSz(fd: number, size: number): void;
  tapGetVnetHdrSz(fd: number): number;
  /** TUNSETVNETLE */
  tapSetVnetLe(fd: number, on: boolean): void;
  /** TUNSETOFFLOAD with TUN_F_* flags. */
  tapSetOffload(fd: number, flags: number): void;
  /** TUNSETQUEUE with IFF_ATTACH_QUEUE or IFF_DETACH_QUEUE. */
  tapSetQueue(fd: number, attach: boolean): void;
  /** TUNSETCARRIER */
  tapSetCarrier(fd: number, up: boolean): void;
  /** Reads and throws away up to `max` frames the queue holds; returns how many. */
  tapDiscardQueued(fd: number, max: number): number;
  /**
   * TUNSETSTEERINGEBPF with a program that sends every frame to `queue`; -1 removes it
   * and the kernel's flow steering applies again.
   */
  /**
   * Claims TAP `name` in its namespace for this process (an abstract Unix socket bound there):
   * returns the fd that holds the claim (close it to let go; it goes with the process too).
   * Throws EBUSY when another process holds it.
   */
  tapLock(name: string, netnsPath: string | null): number;
  tapSteerAllTo(fd: number, queue: number): void;
  /** TUNSETSTEERINGEBPF with a loaded program's fd (tun takes its own reference); -1 removes it. */
  tapSetSteeringProgram(fd: number, prog: number): void;
  /** TUNSETTXFILTER: flags (TUN_FLT_ALLMULTI = 1) and a Buffer of 6-byte addresses. */
  tapSetTxFilter(fd: number, flags: number, macs: Uint8Array): void;
  /** TUNSETSNDBUF */
  tapSetSndBuf(fd: number, bytes: number): void;
  /** close(2) */
  close(fd: number): void;

  // --- network device control, via an ioctl socket in the given namespace -----
  netdevInfo(netnsPath: string | null, name: string): NetdevInfo;
  netdevSetUp(netnsPath: string | null, name: string, up: boolean): void;
  netdevSetMtu(netnsPath: string | null, name: string, mtu: number): void;
  netdevSetMac(netnsPath: string | null, name: string, mac: string): void;

  // --- notifications (native/notify.cc) ---------------------------------------
  /** A new eventfd (EFD_NONBLOCK | EFD_CLOEXEC). */
  eventfd(): number;
  /** Add 1 to an eventfd. Safe from any thread, including worker_threads Workers. */
  kick(fd: number): void;
  /**
   * Block the calling thread until one of `fds` is readable or `timeoutMs` passes
   * (-1 waits forever). Reads (and so clears) every readable eventfd.
   * Returns a bit mask: bit i set when fds[i] had fired; 0 on timeout.
   */
  waitCall(fds: number[], timeoutMs: number): number;
  /** Calls `cb` on the JS thread each time `fd` (an eventfd) fires, after reading it. */
  FdWatcher: new (fd: number, cb: () => void) => { close(): void };

  // --- test support ---------------------------------------------------------------
  /**
   * readlink('/proc/thread-self/ns/net') for the calling thread, e.g. 'net:[4026531840]'.
   * Lets tests check that tapOpen/netdev* with a netnsPath left the thread where it was.
   */
  currentNetns(): string;
  /** socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC): message boundaries like a TAP. */
  seqpacketPair(): [number, number];

  // --- guest memory (native/memory.cc), engine (native/engine.cc), control queue ---------
  /** With no argument the table is empty until replace()/replaceFds(). */
  GuestMemory: new (regions?: NativeBufferRegion[]) => NativeGuestMemory;
  Engine: new (opts: NativeEngineOptions) => NativeEngine;
  TapOps: new () => NativeTapOps;
  ControlQueue: new (opts: NativeControlQueueOptions) => NativeControlQueue;

  // --- vhost-user socket (native/vhost_user_binding.cc) -------------------------
  vhostUser: NativeVhostUser;
}

/** The header of a vhost-user message as the codec read it. */
export interface NativeVuHeader {
  request: number;
  flags: number;
  /** Payload bytes announced by the header. */
  size: number;
  /** The spec's name without VHOST_USER_ (e.g. 'SET_MEM_TABLE'), null for an unknown request. */
  name: string | null;
  needReply: boolean;
}

/** A message the codec accepted: size and fd-count rules hold; the payload is decoded by kind. */
export type NativeVuMessage = NativeVuHeader & {
  payload: Buffer;
  /** Received with the message (close-on-exec); the receiver owns and must close them. */
  fds: number[];
} & (
    | { kind: 'none' | 'opaque' }
    | { kind: 'u64'; u64: bigint }
    | { kind: 'state'; index: number; num: number }
    | { kind: 'addr'; index: number; addrFlags: number; desc: bigint; used: bigint; avail: bigint; log: bigint }
    | { kind: 'memTable'; regions: { guestAddr: bigint; size: bigint; userAddr: bigint; mmapOffset: bigint }[] }
  );

export interface NativeVuCallbacks {
  /** A well-formed message (a back end gets requests; a front end gets replies, kind 'opaque'). */
  message(m: NativeVuMessage): void;
  /** A whole message broke a codec rule (`reason`); its fds are closed; the stream is still in step. */
  refused(reason: string, header: NativeVuHeader): void;
  /** The connection ended (peer closed, read error, untrustworthy header); the fd is closed. Not called after close(). */
  closed(reason: string): void;
}

export interface NativeVuConnection {
  /** The socket fd, -1 once closed. */
  readonly fd: number;
  /** Reply header (version 1, reply flag) and a u64 payload. */
  replyU64(request: number, value: bigint): void;
  /** Reply header and a vring state payload. */
  replyState(request: number, index: number, num: number): void;
  /** Raw bytes with up to 32 fds attached to the first byte (test front ends; a back end accepts 8). */
  sendRaw(bytes: Uint8Array, fds?: number[]): void;
  /** Stops (true) or resumes reading messages: a test front end that does not read its replies. */
  pauseReading(paused: boolean): void;
  /** Bytes queued for the peer (sends never wait; what the socket does not take waits here). */
  readonly queuedBytes: number;
  /** Stops reading and closes the socket; fds of a message half read are closed. */
  close(): void;
}

export interface NativeFdInfo {
  type: 'eventfd' | 'memfd' | 'regular' | 'socket' | 'pipe' | 'chardev' | 'blockdev' | 'directory' | 'other';
  /** The /proc/self/fd link: a path, "anon_inode:[eventfd]", "socket:[N]", ... */
  link: string;
  nonblock: boolean;
  /** F_GET_SEALS; -1 when the file cannot carry seals (not a memfd or shmem file). */
  seals: number;
  size: number;
}

export interface NativeVhostUser {
  /**
   * A listening AF_UNIX stream socket bound to `path` (non-blocking, close-on-exec); `mode`,
   * `uid` and `gid` are set on the socket file before it listens.
   */
  listen(path: string, opts?: { mode?: number; uid?: number; gid?: number }): number;
  /** A waiting connection's fd, or -1 when none is waiting. */
  accept(listenFd: number): number;
  /**
   * Connects to `path` without blocking; returns the (non-blocking) fd. Throws with code
   * ENOENT (no socket), ECONNREFUSED (nobody listens: a stale socket file) or EAGAIN (someone
   * listens but its backlog is full).
   */
  connect(path: string): number;
  /** socketpair(AF_UNIX, SOCK_STREAM) for tests. */
  streamPair(): [number, number];
  /** memfd_create + ftruncate: shareable memory for test front ends; `sealed`: F_SEAL_SHRINK | F_SEAL_GROW. */
  memfd(size: number, sealed?: boolean): number;
  /** What an fd is, in the kernel's words (fstat, the /proc/self/fd link, F_GETFL, F_GET_SEALS). */
  inspectFd(fd: number): NativeFdInfo;
  /** A blocking eventfd whose counter is at its maximum (a write blocks): a hostile call/error fd for tests. */
  fullEventfd(): number;
  /** Sets O_NONBLOCK on the fd's file description (shared with whoever handed it over). */
  setNonblock(fd: number): void;
  /**
   * Reads messages on this thread's event loop; takes ownership of `fd`. Sends never wait:
   * output the socket does not take queues; a peer that reads none of it for `sendStallMs`
   * (default 5000) is dropped (`closed` is called with the reason).
   */
  Connection: new (fd: number, role: 'back-end' | 'front-end', callbacks: NativeVuCallbacks, opts?: { sendStallMs?: number }) => NativeVuConnection;
  /** Calls `cb` (with an error string or null) when the listening socket has a connection waiting. */
  Listener: new (fd: number, cb: (error: string | null) => void) => { close(): void; pause(): void; resume(): void };
  constants: {
    HEADER_SIZE: number;
    MAX_PAYLOAD: number;
    MAX_FDS: number;
    MAX_MEM_REGIONS: number;
    VERSION: number;
    FLAG_REPLY: number;
    FLAG_NEED_REPLY: number;
    VRING_NOFD: number;
    /** Request numbers by the spec's names. */
    REQUESTS: Record<string, number>;
  };
}

let cached: Addon | undefined;

/** The addon, loaded once per thread (it is context-aware, so Workers may load it too). */
export function addon(): Addon {
  if (!cached) {
    // The package root, where binding.gyp built the addon: two levels above dist/backend/.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    cached = (require('node-gyp-build') as (dir: string) => unknown)(path.join(__dirname, '..', '..')) as Addon;
  }
  return cached;
}
