// The simulated guest as a whole, on the main thread: allocates guest
// memory, brings the device up the way Linux's virtio_net does (status
// handshake, feature negotiation, ring setup, DRIVER_OK), runs one Worker
// per queue pair, and speaks the control queue. Uses only the public API.

import { EventEmitter } from 'node:events';
import * as path from 'node:path';
import { MessageChannel, Worker } from 'node:worker_threads';

import {
  bits,
  CTRL,
  ctrlq,
  DeviceStats,
  has,
  kick,
  netHdrSize,
  rxq,
  STATUS,
  txq,
  VirtioNetDevice,
  VirtioNetError,
} from '../backend';
import { CTRL_BUF_BYTES, ControlDriver } from './control';
import { formatMac, parseIPv4, parseIPv6, parseMac } from './packets';
import { DriverQueue } from './virtqueue';
import { CTL, CTL_BYTES, PairConfig } from './worker';

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
  'MQ',
  'CSUM',
  'GUEST_CSUM',
);

export interface GuestOptions {
  tap: string;
  netns?: string;
  queuePairs?: number;
  mac?: string;
  mtu?: number;
  /** 'ADDR/PREFIX' */
  ip4?: string;
  ip6?: string;
  /** Mask over GUEST_SUPPORTED: what the guest is willing to negotiate. */
  features?: bigint;
  /** Entries per RX/TX ring. */
  queueSize?: number;
  /** Use every queue pair the device has (VQ_PAIRS_SET) right after start; default true. */
  useAllPairs?: boolean;
}

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
  readonly mac: string;
  readonly features: bigint;
  private readonly workers: { worker: Worker; ctl: SharedArrayBuffer; port: import('node:worker_threads').MessagePort; done: Promise<unknown> }[] = [];
  private ctrl: ControlDriver | undefined;
  private stopped = false;

  private constructor(device: VirtioNetDevice, mem: SharedArrayBuffer, mac: string, features: bigint) {
    super();
    this.device = device;
    this.mem = mem;
    this.mac = mac;
    this.features = features;
  }

  /** Creates the device (and its TAP), negotiates, starts the queue-pair Workers. */
  static async start(opts: GuestOptions): Promise<GuestSim> {
    const pairs = opts.queuePairs ?? 1;
    const qsize = opts.queueSize ?? DEFAULT_QUEUE_SIZE;
    const mtu = opts.mtu ?? 1500;
    const ip4 = opts.ip4 ? parseCidr(opts.ip4, 4) : undefined;
    const ip6 = opts.ip6 ? parseCidr(opts.ip6, 6) : undefined;

    // Memory is sized from the worst case the guest may negotiate, then laid out.
    const rxBufMax = 65562;
    const txSlot = alignUp(20 + 14 + 4 + Math.max(mtu, 1500), 64);
    const perPair = 2 * (DriverQueue.layout(0, qsize, 4096).end + 4096) + qsize * rxBufMax + qsize * txSlot;
    const memBytes = alignUp(pairs * perPair + DriverQueue.layout(0, CTRL_QUEUE_SIZE, 4096).end + 4096 + CTRL_BUF_BYTES + 4096, 1 << 20);
    const mem = new SharedArrayBuffer(memBytes);

    const device = new VirtioNetDevice({ memory: mem, tap: opts.tap, netns: opts.netns, queuePairs: pairs, mac: opts.mac, mtu });
    let guest: GuestSim | undefined;
    try {
      // Linux's order (virtio 1.x §3.1.1): reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK, queues, DRIVER_OK.
      device.status = 0;
      device.status = STATUS.ACKNOWLEDGE;
      device.status = STATUS.ACKNOWLEDGE | STATUS.DRIVER;
      const wanted = GUEST_SUPPORTED & (opts.features ?? GUEST_SUPPORTED);
      const features = device.deviceFeatures & wanted;
      device.driverFeatures = features;
      device.status |= STATUS.FEATURES_OK;
      if (!(device.status & STATUS.FEATURES_OK)) throw new Error(`device refused features: ${device.featuresRefusal}`);

      const mac = has(features, 'MAC') ? formatMac(new Uint8Array(device.config.buffer, 0, 6)) : opts.mac ?? formatMac(new Uint8Array(device.config.buffer, 0, 6));
      const hdrLen = netHdrSize(features);
      const mergeable = has(features, 'MRG_RXBUF');
      const gso = (features & bits('GUEST_TSO4', 'GUEST_TSO6', 'GUEST_UFO', 'GUEST_USO4', 'GUEST_USO6')) !== 0n;
      // Buffer sizes the spec asks of a driver (virtio 1.x §5.1.6.3.1).
      const rxBufSize = mergeable ? MRG_RX_BUF : gso ? rxBufMax : hdrLen + 14 + mtu;
      const eventIdx = has(features, 'RING_EVENT_IDX');
      const usePairs = has(features, 'MQ') ? pairs : 1;

      guest = new GuestSim(device, mem, mac, features);
      let next = 0;
      const ring = (): { desc: number; avail: number; used: number } => {
        const l = DriverQueue.layout(next, qsize, 4096);
        next = alignUp(l.end, 4096);
        return { desc: l.desc, avail: l.avail, used: l.used };
      };
      const configs: Omit<PairConfig, 'port'>[] = [];
      for (let p = 0; p < usePairs; p++) {
        const rx = ring();
        const tx = ring();
        const rxBufBase = next;
        next += qsize * rxBufSize;
        const txBufBase = alignUp(next, 64);
        next = txBufBase + qsize * txSlot;
        device.setQueue(rxq(p), { size: qsize, ...rx });
        device.setQueue(txq(p), { size: qsize, ...tx });
        configs.push({
          pair: p,
          mem,
          ctl: new SharedArrayBuffer(CTL_BYTES),
          rx: { size: qsize, ...rx, ...device.notifier(rxq(p)) },
          tx: { size: qsize, ...tx, ...device.notifier(txq(p)) },
          rxBufBase,
          rxBufSize,
          txBufBase,
          txBufSize: txSlot,
          hdrLen,
          mergeable,
          eventIdx,
          mac: parseMac(mac),
          ip4,
          ip6,
          mtu,
        });
      }
      if (has(features, 'CTRL_VQ')) {
        const l = DriverQueue.layout(alignUp(next, 4096), CTRL_QUEUE_SIZE, 4096);
        const cmdBuf = alignUp(l.end, 64);
        const addrs = { size: CTRL_QUEUE_SIZE, desc: l.desc, avail: l.avail, used: l.used };
        guest.ctrl = new ControlDriver(device, mem, ctrlq(pairs), addrs, eventIdx, cmdBuf);
        device.setQueue(ctrlq(pairs), addrs);
      }
      device.on('needs-reset', (e: VirtioNetError) => guest!.emit('needs-reset', e));
      device.status |= STATUS.DRIVER_OK;

      for (const cfg of configs) guest.spawn(cfg);
      if (guest.ctrl && has(features, 'MQ') && usePairs > 1 && opts.useAllPairs !== false) {
        await guest.setQueuePairs(usePairs);
      }
      return guest;
    } catch (e) {
      if (guest) await guest.stop().catch(() => undefined);
      else await device.close();
      throw e;
    }
  }

  private spawn(cfg: Omit<PairConfig, 'port'>): void {
    const { port1, port2 } = new MessageChannel();
    const worker = new Worker(path.join(__dirname, 'worker.js'), {
      workerData: { ...cfg, port: port2 },
      transferList: [port2],
    });
    const done = new Promise((resolve, reject) => {
      worker.once('exit', resolve);
      worker.once('error', (e) => {
        this.emit('error', e);
        reject(e);
      });
    });
    done.catch(() => undefined);
    port1.on('message', (m: { final?: boolean; responder?: Record<string, number> }) => {
      if (m.final) this.emit('pair-stats', cfg.pair, m.responder);
    });
    port1.unref();
    this.workers.push({ worker, ctl: cfg.ctl, port: port1, done });
  }

  /** Sends a control command; resolves with CTRL.OK or CTRL.ERR. */
  async control(cls: number, cmd: number, data?: Uint8Array): Promise<number> {
    if (!this.ctrl) throw new Error('the control queue was not negotiated (CTRL_VQ)');
    return this.ctrl.command(cls, cmd, data);
  }

  /** VQ_PAIRS_SET. */
  async setQueuePairs(n: number): Promise<void> {
    const d = new Uint8Array([n & 0xff, n >> 8]);
    const ack = await this.control(CTRL.CLASS_MQ, CTRL.MQ_VQ_PAIRS_SET, d);
    if (ack !== CTRL.OK) throw new Error(`device refused VQ_PAIRS_SET ${n}`);
  }

  stats(): GuestStats {
    const pairs = this.workers.map((w) => {
      const c = new Float64Array(w.ctl, 8, CTL.SIZE);
      return {
        rxFrames: c[CTL.RX_FRAMES],
        rxBytes: c[CTL.RX_BYTES],
        txFrames: c[CTL.TX_FRAMES],
        txBytes: c[CTL.TX_BYTES],
        txRingFull: c[CTL.TX_RING_FULL],
        wakeups: c[CTL.WAKEUPS],
      };
    });
    return { pairs, device: this.device.stats() };
  }

  /** Stops the Workers, then the device (which removes the TAP). Returns final statistics. */
  async stop(): Promise<GuestStats> {
    if (this.stopped) return this.stats();
    this.stopped = true;
    for (let i = 0; i < this.workers.length; i++) {
      Atomics.store(new Int32Array(this.workers[i].ctl, 0, 1), 0, 1);
      // A spurious interrupt wakes the vCPU so it sees the stop request now.
      kick(this.device.notifier(rxq(i)).callFd);
    }
    await Promise.all(this.workers.map((w) => w.done.catch(() => undefined)));
    const s = this.stats();
    await this.device.close();
    return s;
  }
}
