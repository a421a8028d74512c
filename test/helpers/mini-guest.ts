// A bare driver on the test's main thread, for tests that need to see
// exactly which frames reach the guest (filters, resets): brings the device
// up with chosen features, keeps RX buffers posted on every pair, collects
// received frames with their virtio_net_hdr, and speaks the control queue.

import { bits, ctrlq, has, netHdrSize, rxq, STATUS, txq, VirtioNetDevice } from '../../backend';
import { CTRL_BUF_BYTES, ControlDriver } from '../../driver/control';
import { openVirtqueue, PackedDriverQueue } from '../../driver/packed';
import { DriverQueue, Virtqueue } from '../../driver/virtqueue';

const QSIZE = 64;
const RX_BUF = 2048;
/** Guest memory for floodCtrl's commands (class, command, data, then the ack byte each): two 1024-entry MAC tables are 12 KiB. */
const FLOOD_BYTES = 512 * 1024;

export interface RxFrame {
  pair: number;
  hdr: Uint8Array;
  frame: Uint8Array;
  /** Where it stood in its RX ring's used order (0 = the first entry since init). */
  seq: number;
}

export class MiniGuest {
  readonly mem: SharedArrayBuffer;
  readonly u8: Uint8Array;
  ctrl: ControlDriver | undefined;
  /** With init's `ctrlFlood`: the control ring driven directly, for many commands in flight at once. */
  private flood: { q: Virtqueue; buf: number } | undefined;
  private rx: { q: Virtqueue; bufOf: Int32Array; base: number; popped: number }[] = [];
  private tx: { q: Virtqueue; base: number; next: number }[] = [];
  features = 0n;
  hdrLen = 12;

  constructor(
    readonly device: VirtioNetDevice,
    mem: SharedArrayBuffer,
  ) {
    this.mem = mem;
    this.u8 = new Uint8Array(mem);
  }

  /** Guest memory enough for `pairs` pairs of 64-entry rings with 2 KiB buffers, plus the control queue. */
  static memoryBytes(pairs: number): number {
    return (1 << 20) + pairs * (2 * QSIZE * RX_BUF + 8192);
  }

  /**
   * Handshake, rings, DRIVER_OK, RX buffers posted; `want` masks the offered features.
   * `opts.ctrlFlood`: a control ring of that size driven by floodCtrl() instead of a ControlDriver
   * (which, as Linux's driver, has one command in flight), for tests of what a hostile guest queues.
   */
  async init(want: bigint, pairs = this.device.queuePairs, opts: { ctrlFlood?: number } = {}): Promise<void> {
    const d = this.device;
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
    let next = 0;
    const ring = (): { size: number; desc: number; avail: number; used: number } => {
      const l = layoutOf(next, QSIZE);
      next = l.end;
      return { size: QSIZE, desc: l.desc, avail: l.avail, used: l.used };
    };
    const usePairs = has(this.features, 'MQ') ? pairs : 1;
    const layouts: { r: ReturnType<typeof ring>; t: ReturnType<typeof ring>; rb: number; tb: number }[] = [];
    for (let p = 0; p < usePairs; p++) {
      const r = ring();
      const t = ring();
      const rb = Math.ceil(next / 64) * 64;
      next = rb + QSIZE * RX_BUF;
      const tb = next;
      next = tb + QSIZE * RX_BUF;
      d.setQueue(rxq(p), r);
      d.setQueue(txq(p), t);
      layouts.push({ r, t, rb, tb });
    }
    let ctrlAddrs;
    if (has(this.features, 'CTRL_VQ')) {
      const size = opts.ctrlFlood ?? 16;
      const l = layoutOf(next, size);
      const buf = Math.ceil(l.end / 64) * 64;
      next = buf + (opts.ctrlFlood ? FLOOD_BYTES : CTRL_BUF_BYTES + 64);
      ctrlAddrs = { size, desc: l.desc, avail: l.avail, used: l.used, buf };
      d.setQueue(ctrlq(d.queuePairs), { size, desc: l.desc, avail: l.avail, used: l.used });
    }
    if (next > this.mem.byteLength) throw new Error('MiniGuest: guest memory too small');
    this.rx = layouts.map(({ r, rb }) => ({ q: openVirtqueue(this.mem, r, ringOpts), bufOf: new Int32Array(QSIZE), base: rb, popped: 0 }));
    this.tx = layouts.map(({ t, tb }) => ({ q: openVirtqueue(this.mem, t, ringOpts), base: tb, next: 0 }));
    const ca = ctrlAddrs && { size: ctrlAddrs.size, desc: ctrlAddrs.desc, avail: ctrlAddrs.avail, used: ctrlAddrs.used };
    this.ctrl = ca && !opts.ctrlFlood ? new ControlDriver(d, this.mem, ctrlq(d.queuePairs), ca, ringOpts, ctrlAddrs!.buf) : undefined;
    this.flood = ca && opts.ctrlFlood ? { q: openVirtqueue(this.mem, ca, ringOpts), buf: ctrlAddrs!.buf } : undefined;
    d.status |= STATUS.DRIVER_OK;
    this.rx.forEach((r, p) => {
      for (let i = 0; i < QSIZE; i++) r.bufOf[r.q.addBuf(r.base + i * RX_BUF, RX_BUF, true)] = i;
      r.q.publish();
      d.kick(rxq(p));
    });
  }

  /**
   * Queues every command at once (command readable, ack writable, as Linux lays them out), kicks
   * once, and returns a promise of the answers in the order the device used them: the command's
   * index and its ack byte.
   */
  floodCtrl(cmds: { cls: number; cmd: number; data: ArrayLike<number> }[], timeoutMs = 30_000): Promise<{ index: number; ack: number }[]> {
    const f = this.flood;
    if (!f) throw new Error('floodCtrl: init() without ctrlFlood');
    const ackAt: number[] = [];
    const indexOf = new Map<number, number>();
    let at = f.buf;
    cmds.forEach((c, i) => {
      const len = 2 + c.data.length;
      if (at + len + 1 > f.buf + FLOOD_BYTES) throw new RangeError('floodCtrl: the commands do not fit in the flood buffer');
      this.u8[at] = c.cls;
      this.u8[at + 1] = c.cmd;
      this.u8.set(Array.from(c.data), at + 2);
      this.u8[at + len] = 0xff;
      const head = f.q.add([
        { addr: at, len, write: false },
        { addr: at + len, len: 1, write: true },
      ]);
      if (head < 0) throw new Error(`floodCtrl: the control ring (${f.q.size}) has no room for command ${i}`);
      indexOf.set(head, i);
      ackAt.push(at + len);
      at += len + 1;
    });
    if (f.q.publish()) this.device.kick(ctrlq(this.device.queuePairs));
    const out: { index: number; ack: number }[] = [];
    const end = Date.now() + timeoutMs;
    return new Promise((resolve, reject) => {
      const poll = (): void => {
        // The ring is the guest's: after a re-init, a flood still waiting reads another session's ring.
        if (this.flood !== f) return reject(new Error('floodCtrl: the guest re-initialised its control queue'));
        for (let u = f.q.popUsed(); u; u = f.q.popUsed()) {
          const i = indexOf.get(u.id)!;
          out.push({ index: i, ack: this.u8[ackAt[i]] });
        }
        if (out.length === cmds.length) resolve(out);
        else if (Date.now() > end) reject(new Error(`floodCtrl: ${out.length} of ${cmds.length} commands answered in ${timeoutMs} ms`));
        else setTimeout(poll, 1);
      };
      poll();
    });
  }

  /** The control ring's used.idx as the guest sees it now (floodCtrl's ring). */
  ctrlUsedIdx(): number {
    const f = this.flood;
    if (!f) throw new Error('ctrlUsedIdx: init() without ctrlFlood');
    return Atomics.load(new Uint16Array(this.mem, f.q.addrs.used, 2), 1);
  }

  /** Frames received since the last call (copies), with buffers re-posted. */
  drain(): RxFrame[] {
    const out: RxFrame[] = [];
    this.rx.forEach((r, p) => {
      let any = false;
      for (let u = r.q.popUsed(); u; u = r.q.popUsed()) {
        any = true;
        const i = r.bufOf[u.id];
        const a = r.base + i * RX_BUF;
        out.push({ pair: p, hdr: this.u8.slice(a, a + this.hdrLen), frame: this.u8.slice(a + this.hdrLen, a + u.len), seq: r.popped++ });
        r.bufOf[r.q.addBuf(a, RX_BUF, true)] = i;
      }
      if (any && r.q.publish()) this.device.kick(rxq(p));
    });
    return out;
  }

  /**
   * How many entries the device has published on pair p's RX ring so far (split rings): a
   * frame whose RxFrame.seq is at least this was published after the call.
   */
  rxPublished(p: number): number {
    const r = this.rx[p];
    if (has(this.features, 'RING_PACKED')) throw new Error('rxPublished: split rings only');
    const used = Atomics.load(new Uint16Array(this.mem, r.q.addrs.used, 2), 1);
    return r.popped + ((used - r.popped) & 0xffff);
  }

  /** Collects frames until `until(frames)` holds or `ms` passes (a bound on waiting, not an assertion). */
  async collect(ms: number, until: (f: RxFrame[]) => boolean = () => false): Promise<RxFrame[]> {
    const all: RxFrame[] = [];
    const end = Date.now() + ms;
    while (Date.now() < end) {
      all.push(...this.drain());
      if (until(all)) break;
      await new Promise((r) => setTimeout(r, 5));
    }
    return all;
  }

  /** Sends one frame on pair p, with a zero virtio_net_hdr or the given header bytes. */
  send(p: number, frame: Uint8Array, hdr?: Uint8Array): void {
    const t = this.tx[p];
    for (let u = t.q.popUsed(); u; u = t.q.popUsed());
    const a = t.base + (t.next++ % QSIZE) * RX_BUF;
    if (this.hdrLen + frame.length > RX_BUF) throw new RangeError('MiniGuest.send: frame too long for its buffers');
    this.u8.fill(0, a, a + this.hdrLen);
    if (hdr) this.u8.set(hdr.subarray(0, this.hdrLen), a);
    this.u8.set(frame, a + this.hdrLen);
    t.q.addBuf(a, this.hdrLen + frame.length, false);
    if (t.q.publish()) this.device.kick(txq(p));
  }
}

export const MINI_FEATURES = bits(
  'VERSION_1',
  'MAC',
  'MTU',
  'STATUS',
  'RING_EVENT_IDX',
  'CTRL_VQ',
  'CTRL_RX',
  'CTRL_RX_EXTRA',
  'CTRL_VLAN',
  'CTRL_MAC_ADDR',
  'CTRL_GUEST_OFFLOADS',
  'GUEST_ANNOUNCE',
  'GUEST_CSUM',
  'MQ',
);

/**
 * A python3 one-shot that sends raw Ethernet frames out of `ifname` through an
 * AF_PACKET socket (so the kernel transmits them into the TAP, towards the guest).
 * Each frame is hex.
 */
export function rawSendScript(ifname: string, framesHex: string[]): string[] {
  const py = `import socket,sys
s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW)
s.bind((${JSON.stringify(ifname)},0))
for h in sys.argv[1:]:
    s.send(bytes.fromhex(h))`;
  return ['-c', py, ...framesHex];
}

/** An Ethernet frame: dst, src, optional 802.1Q tag, EtherType 0x88b5 (local experimental), a marker payload. */
export function testFrame(dst: string, marker: number, vid = -1, src = '02:00:00:00:00:01'): string {
  const mac = (s: string): string => s.split(':').join('');
  const tag = vid >= 0 ? `8100${vid.toString(16).padStart(4, '0')}` : '';
  const payload = marker.toString(16).padStart(8, '0') + '00'.repeat(42);
  return mac(dst) + mac(src) + tag + '88b5' + payload;
}

/** The marker of a frame built by testFrame, or -1. */
export function markerOf(f: Uint8Array): number {
  let off = 12;
  if (f[off] === 0x81 && f[off + 1] === 0x00) off += 4;
  if (f[off] !== 0x88 || f[off + 1] !== 0xb5) return -1;
  return new DataView(f.buffer, f.byteOffset).getUint32(off + 2);
}
