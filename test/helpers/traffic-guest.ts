// A guest driver on the test's main thread that keeps traffic flowing on
// every queue pair and counts exactly what it posted and got back, for the
// fault and soak runs: RX buffers reposted as frames arrive (or not, while
// paused), a steady stream of TX frames, the control queue for VQ_PAIRS_SET
// and RX modes, and re-initialisation after a reset. Also the host side: a
// UDP flood from inside the namespace, and the TAP's kernel counters.

import { spawn, type ChildProcess } from 'node:child_process';

import { bits, ctrlq, CTRL, has, netHdrSize, rxq, STATUS, txq, type DeviceStats, type VirtioNetDevice } from '../../backend';
import { ControlDriver, CTRL_BUF_BYTES } from '../../driver';
import { DriverQueue, openVirtqueue, PackedDriverQueue, Virtqueue } from '../../driver';
import type { Netns } from '../../host/netns';

/** What the guest negotiates (when offered): Linux's usual set for a multiqueue NIC without offloads. */
export const TRAFFIC_FEATURES = bits('VERSION_1', 'MAC', 'MTU', 'STATUS', 'MRG_RXBUF', 'RING_EVENT_IDX', 'CTRL_VQ', 'CTRL_RX', 'MQ');

const QSIZE = 256;
/** One mergeable RX buffer, as Linux's small ones. */
const RX_BUF = 2048;
/** One TX slot: header and a minimum-size frame. */
const TX_SLOT = 128;
const TX_FRAME = 60;

interface Pair {
  rx: Virtqueue;
  tx: Virtqueue;
  rxBase: number;
  rxBufOf: Int32Array;
  txBase: number;
  /** RX buffers popped while paused, reposted on resume. */
  held: number[];
  /** Next TX slot to post (round robin). */
  txNext: number;
}

export interface GuestCounts {
  /** Frames received (RX used chains; with mergeable buffers a frame of one buffer here). */
  rx: number;
  /** TX frames posted and returned used by the device. */
  txPosted: number;
  txDone: number;
}

export class TrafficGuest {
  readonly counts: GuestCounts = { rx: 0, txPosted: 0, txDone: 0 };
  /** Frames received since the last init(): proof that a session works. */
  sessionRx = 0;
  sessionTxDone = 0;
  features = 0n;
  hdrLen = 12;
  ctrl: ControlDriver | undefined;
  /** While true, used RX buffers are kept instead of reposted. */
  rxPaused = false;
  /** The same for some pairs only. */
  readonly rxPausedPairs = new Set<number>();
  private pairs: Pair[] = [];
  private readonly u8: Uint8Array;

  constructor(
    readonly device: VirtioNetDevice,
    readonly mem: SharedArrayBuffer,
  ) {
    this.u8 = new Uint8Array(mem);
  }

  /** Guest memory for `pairs` pairs of 256-entry rings with their buffers, and the control queue. */
  static memoryBytes(pairs: number): number {
    return (1 << 20) + pairs * (2 * 8192 + QSIZE * (RX_BUF + TX_SLOT));
  }

  /** Reset, negotiate, lay out rings, DRIVER_OK, post RX buffers, use every pair. */
  async init(want = TRAFFIC_FEATURES): Promise<void> {
    const d = this.device;
    d.status = 0;
    d.status = STATUS.ACKNOWLEDGE;
    d.status |= STATUS.DRIVER;
    this.features = d.deviceFeatures & want;
    d.driverFeatures = this.features;
    d.status |= STATUS.FEATURES_OK;
    if (!(d.status & STATUS.FEATURES_OK)) throw new Error(`FEATURES_OK refused: ${d.featuresRefusal}`);
    this.hdrLen = netHdrSize(this.features);
    const eventIdx = has(this.features, 'RING_EVENT_IDX');
    // The ring layout follows what was negotiated: RING_PACKED (and IN_ORDER) when `want` asks for them.
    const packed = has(this.features, 'RING_PACKED');
    const ringOpts = { eventIdx, packed, inOrder: has(this.features, 'IN_ORDER') };
    const layoutOf = (base: number, size: number): { desc: number; avail: number; used: number; end: number } => (packed ? PackedDriverQueue.layout(base, size) : DriverQueue.layout(base, size));
    const n = has(this.features, 'MQ') ? d.queuePairs : 1;
    let next = 0;
    const ring = (): { size: number; desc: number; avail: number; used: number } => {
      const l = layoutOf(next, QSIZE);
      next = Math.ceil(l.end / 64) * 64;
      return { size: QSIZE, desc: l.desc, avail: l.avail, used: l.used };
    };
    this.pairs = [];
    for (let p = 0; p < n; p++) {
      const r = ring();
      const t = ring();
      const rxBase = next;
      next += QSIZE * RX_BUF;
      const txBase = next;
      next += QSIZE * TX_SLOT;
      d.setQueue(rxq(p), r);
      d.setQueue(txq(p), t);
      this.pairs.push({ rx: openVirtqueue(this.mem, r, ringOpts), tx: openVirtqueue(this.mem, t, ringOpts), rxBase, rxBufOf: new Int32Array(QSIZE), txBase, held: [], txNext: 0 });
      for (let i = 0; i < QSIZE; i++) this.writeFrame(txBase + i * TX_SLOT);
    }
    this.ctrl = undefined;
    if (has(this.features, 'CTRL_VQ')) {
      const c = layoutOf(next, 64);
      const buf = Math.ceil(c.end / 64) * 64;
      const addrs = { size: 64, desc: c.desc, avail: c.avail, used: c.used };
      this.ctrl = new ControlDriver(d, this.mem, ctrlq(d.queuePairs), addrs, ringOpts, buf);
      d.setQueue(ctrlq(d.queuePairs), addrs);
      next = buf + CTRL_BUF_BYTES + 64;
    }
    if (next > this.mem.byteLength) throw new Error('TrafficGuest: guest memory too small');
    d.status |= STATUS.DRIVER_OK;
    this.sessionRx = 0;
    this.sessionTxDone = 0;
    this.pairs.forEach((pr, p) => {
      for (let i = 0; i < QSIZE; i++) pr.rxBufOf[pr.rx.addBuf(pr.rxBase + i * RX_BUF, RX_BUF, true)] = i;
      pr.rx.publish();
      d.kick(rxq(p));
    });
    if (n > 1) await this.setPairs(n);
  }

  /** VQ_PAIRS_SET; resolves with the ack. */
  async setPairs(n: number): Promise<number> {
    if (!this.ctrl) throw new Error('no control queue');
    return this.ctrl.command(CTRL.CLASS_MQ, CTRL.MQ_VQ_PAIRS_SET, Uint8Array.of(n & 0xff, n >> 8));
  }

  /** TX frames of this session posted and not yet returned by the device. */
  get txInFlight(): number {
    return this.pairs.reduce((n, p) => n + p.tx.inFlight, 0);
  }

  get activePairs(): number {
    return this.device.activeQueuePairs;
  }

  /**
   * One round of the driver: takes used RX chains (counts them, reposts unless paused),
   * reclaims TX, and posts up to `txBudget` new TX frames per active pair.
   */
  pump(txBudget: number): void {
    const d = this.device;
    const active = Math.min(this.pairs.length, d.activeQueuePairs);
    this.pairs.forEach((pr, p) => {
      let got = false;
      for (let u = pr.rx.popUsed(); u; u = pr.rx.popUsed()) {
        this.counts.rx++;
        this.sessionRx++;
        const i = pr.rxBufOf[u.id];
        if (this.rxPaused || this.rxPausedPairs.has(p)) pr.held.push(i);
        else {
          pr.rxBufOf[pr.rx.addBuf(pr.rxBase + i * RX_BUF, RX_BUF, true)] = i;
          got = true;
        }
      }
      if (!this.rxPaused && !this.rxPausedPairs.has(p) && pr.held.length > 0) {
        for (const i of pr.held) pr.rxBufOf[pr.rx.addBuf(pr.rxBase + i * RX_BUF, RX_BUF, true)] = i;
        pr.held = [];
        got = true;
      }
      if (got && pr.rx.publish()) d.kick(rxq(p));
      for (let u = pr.tx.popUsed(); u; u = pr.tx.popUsed()) {
        this.counts.txDone++;
        this.sessionTxDone++;
      }
      if (p >= active) return;
      let posted = 0;
      // Every slot holds the same frame (written at init), so any slot may be posted again.
      const len = this.hdrLen + TX_FRAME;
      while (posted < txBudget && pr.tx.freeCount > 0) {
        if (pr.tx.addBuf(pr.txBase + (pr.txNext++ % QSIZE) * TX_SLOT, len, false) < 0) break;
        posted++;
      }
      this.counts.txPosted += posted;
      if (posted > 0 && pr.tx.publish()) d.kick(txq(p));
    });
  }

  /** A zero header and a broadcast frame of an unassigned EtherType (the host stack counts and drops it). */
  private writeFrame(at: number): void {
    const u8 = this.u8;
    u8.fill(0, at, at + this.hdrLen + TX_FRAME);
    u8.set([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x88, 0xb5], at + this.hdrLen);
  }
}

/** The TAP's kernel counters inside the namespace (`ip -s link`). */
export interface TapCounters {
  rxPackets: number;
  rxDropped: number;
  txPackets: number;
  txDropped: number;
}

export function tapCounters(ns: Netns, tap: string): TapCounters {
  const [l] = ns.ipJson<{ stats64: { rx: { packets: number; dropped: number }; tx: { packets: number; dropped: number } } }[]>('-s', 'link', 'show', tap);
  return { rxPackets: l.stats64.rx.packets, rxDropped: l.stats64.rx.dropped, txPackets: l.stats64.tx.packets, txDropped: l.stats64.tx.dropped };
}

/** Device-side accounting over the device's whole life (its counters are monotonic). */
export interface DeviceAccounting {
  rxPackets: number;
  /** Frames read from the TAP and not delivered, by named reason (rx_truncated, rx_runt, rx_filtered, rx_pair_detached). */
  rxFrameDrops: number;
  /** readv errors other than EAGAIN (a frame may or may not have been consumed). */
  rxReadErrors: number;
  txPackets: number;
  txDrops: number;
  txUsedChains: number;
  drops: Record<string, number>;
}

export function deviceAccounting(s: DeviceStats): DeviceAccounting {
  const a: DeviceAccounting = { rxPackets: 0, rxFrameDrops: 0, rxReadErrors: 0, txPackets: 0, txDrops: 0, txUsedChains: 0, drops: {} };
  for (const q of s.queues) {
    for (const [k, v] of Object.entries(q.drops)) if (v) a.drops[`${q.kind}${q.index}.${k}`] = v;
    if (q.kind === 'rx') {
      a.rxPackets += q.packets;
      a.rxFrameDrops += (q.drops.rx_truncated ?? 0) + (q.drops.rx_runt ?? 0) + (q.drops.rx_filtered ?? 0) + (q.drops.rx_pair_detached ?? 0);
      a.rxReadErrors += q.drops.tap_read_error ?? 0;
    } else if (q.kind === 'tx') {
      a.txPackets += q.packets;
      a.txUsedChains += q.usedChains;
      for (const v of Object.values(q.drops)) a.txDrops += v;
    }
  }
  return a;
}

/** A UDP flood into the TAP from inside the namespace, towards the guest, on many source ports. */
export interface Flood {
  child: ChildProcess;
  /** Resolves with what the sender counted when it ends (after `seconds`, or when stopped). */
  done: Promise<{ sent: number; errors: number }>;
  stop(): void;
}

export function startFlood(ns: Netns, dst: string, seconds: number, pps: number): Flood {
  const py = `
import json, signal, socket, sys, time
dst, secs, pps = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
stop = False
def on_term(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)
print('ready', flush=True)
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(32)]
for s in socks: s.setblocking(False)
payload = b'v' * 32
sent = errors = n = 0
t0 = time.monotonic()
while not stop:
    el = time.monotonic() - t0
    if el >= secs: break
    target = int(el * pps)
    while n < target and not stop:
        try:
            socks[n % 32].sendto(payload, (dst, 9 + n % 7))
            sent += 1
        except OSError:
            errors += 1
        n += 1
    time.sleep(0.0005)
print(json.dumps({'sent': sent, 'errors': errors}), flush=True)
`;
  const child = spawn('ip', ['netns', 'exec', ns.name, 'python3', '-c', py, dst, String(seconds), String(pps)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  // SIGTERM before Python installed its handler would end it without a report: stop() waits for 'ready'.
  let ready = false;
  let stopWanted = false;
  const term = (): void => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
  };
  child.stdout!.on('data', (d: Buffer) => {
    out += d;
    if (!ready && out.includes('ready\n')) {
      ready = true;
      if (stopWanted) term();
    }
  });
  child.stderr!.on('data', (d: Buffer) => (err += d));
  ns.defer(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  const done = new Promise<{ sent: number; errors: number }>((resolve, reject) => {
    child.once('close', () => {
      try {
        resolve(JSON.parse(out.trim().split('\n').pop() ?? '') as { sent: number; errors: number });
      } catch {
        reject(new Error(`flood sender failed: ${err || out}`));
      }
    });
  });
  return {
    child,
    done,
    stop: () => {
      stopWanted = true;
      if (ready) term();
    },
  };
}
