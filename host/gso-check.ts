// The kernel offload conformance suite behind `vhost-tap gso-check`: checksum
// and segmentation offloads against the running kernel. It drives a VirtioNetDevice directly, as an
// emulator would (a small synchronous driver on the main thread), in two
// throw-away namespaces: A holds the TAP and routes to a veth with every
// offload off, so the kernel must segment the guest's super-frames in
// software; B holds the veth's peer, where tcpdump records the wire segments.
// Kernel→guest, sockets in A (python3: UDP_SEGMENT, a TCP client) send to the
// guest, which answers TCP itself and checks the super-frames it receives.

import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { bits, Capabilities, FeatureName, has, HDR, netHdrSize, rxq, STATUS, txq, VirtioNetDevice, waitCall } from '../backend';
import { DriverQueue } from '../driver';
import { IPPROTO, parseIPv4, parseIPv6, parseMac } from '../guest-sim/packets';
import {
  buildTcpFrame,
  buildUdpFrame,
  decapsulate,
  decodeNetHdrSized,
  describeHdr,
  encapsulate,
  encodeNetHdrSized,
  Flow,
  get32,
  GsoKind,
  NetHdr,
  parseFrame,
  pattern,
  patternByte,
  RxExpect,
  SentTcp,
  SentUdp,
  TCP_FLAG,
  TunnelKind,
  TunnelSpec,
  TUNNEL_PORT,
  tunnelTxHeader,
  txHeader,
  verifyRxFrame,
  verifyTcpSegments,
  verifyTunnelRxFrame,
  verifyTunnelSegments,
  verifyUdpFragments,
  verifyUdpSegments,
} from './gso-frames';
import { haveProgram, Netns, requireRoot } from './netns';
import { LINKTYPE_ETHERNET, parsePcap } from './pcap';

export type Direction = 'guest-to-kernel' | 'kernel-to-guest';
export type Outcome = 'pass' | 'fail' | 'unsupported';

export interface CaseResult {
  case: string;
  direction: Direction;
  result: Outcome;
  detail: string;
}

/**
 * GSO over UDP tunnels (virtio 1.4, Linux 6.17+): TCP inside VXLAN or GENEVE, inner and outer
 * IPv4 or IPv6 (<inner>IN<outer>), the outer UDP checksum off or on (_CSUM).
 */
export const TUNNEL_CASES = [
  'VXLAN_4IN4',
  'VXLAN_4IN4_CSUM',
  'VXLAN_6IN6',
  'VXLAN_6IN6_CSUM',
  'VXLAN_6IN4',
  'VXLAN_4IN6_CSUM',
  'GENEVE_6IN4',
  'GENEVE_6IN4_CSUM',
  'GENEVE_4IN6',
  'GENEVE_4IN6_CSUM',
] as const;

/** Every case, in the order they run and print. */
export const CASES = ['CSUM_TCP4', 'CSUM_UDP4', 'CSUM_TCP6', 'CSUM_UDP6', 'TSO4', 'TSO6', 'TSO_ECN', 'USO4', 'USO6', 'UFO4', 'UFO6', ...TUNNEL_CASES] as const;
export type CaseName = (typeof CASES)[number];
type TunnelCase = (typeof TUNNEL_CASES)[number];

/** What a tunnel case name says. */
function tunnelOf(n: CaseName): { kind: TunnelKind; innerV6: boolean; outerV6: boolean; csum: boolean } | null {
  const m = /^(VXLAN|GENEVE)_([46])IN([46])(_CSUM)?$/.exec(n);
  if (!m) return null;
  return { kind: m[1].toLowerCase() as TunnelKind, innerV6: m[2] === '6', outerV6: m[3] === '6', csum: !!m[4] };
}


// ------------------------------------------------------------------ the lab

const GUEST4 = '10.77.0.2';
const TAP4 = '10.77.0.1';
const VETH_A4 = '10.78.0.1';
const PEER4 = '10.78.0.2';
const GUEST6 = 'fd77::2';
const TAP6 = 'fd77::1';
const VETH_A6 = 'fd78::1';
const PEER6 = 'fd78::2';
const GUEST_MAC = '52:54:00:77:00:02';

/** What the guest is willing to negotiate; the device's offer narrows it. */
const WANTED: bigint = bits(
  'VERSION_1',
  'MAC',
  'MTU',
  'MRG_RXBUF',
  'CSUM',
  'GUEST_CSUM',
  'HOST_TSO4',
  'HOST_TSO6',
  'HOST_ECN',
  'HOST_UFO',
  'HOST_USO',
  'GUEST_TSO4',
  'GUEST_TSO6',
  'GUEST_ECN',
  'GUEST_UFO',
  'GUEST_USO4',
  'GUEST_USO6',
  'GUEST_UDP_TUNNEL_GSO',
  'GUEST_UDP_TUNNEL_GSO_CSUM',
  'HOST_UDP_TUNNEL_GSO',
  'HOST_UDP_TUNNEL_GSO_CSUM',
);

const QSIZE = 256;
const RX_BUF = 4096;
const TX_SLOTS = 32;
const TX_SLOT = 70 * 1024;
const MEM_BYTES = 8 << 20;

/**
 * The guest's side of one queue pair, driven synchronously: mergeable RX
 * buffers of one page each, TX frames copied into fixed slots. Interrupts
 * are waited for with waitCall, like a halted vCPU.
 */
class Driver {
  private readonly u8: Uint8Array;
  private readonly rx: DriverQueue;
  private readonly tx: DriverQueue;
  private readonly rxAddr = new Map<number, number>();
  private readonly txSlotOf = new Map<number, number>();
  private readonly freeSlots: number[] = [];
  private readonly calls: number[];

  constructor(
    private readonly device: VirtioNetDevice,
    mem: SharedArrayBuffer,
    /** 12, or 24 with the UDP tunnel features (struct virtio_net_hdr_v1_hash_tunnel). */
    private readonly hdrLen: number,
  ) {
    this.u8 = new Uint8Array(mem);
    const rxL = DriverQueue.layout(0, QSIZE, 4096);
    const txL = DriverQueue.layout(alignUp(rxL.end, 4096), QSIZE, 4096);
    this.rx = new DriverQueue(mem, { size: QSIZE, ...rxL }, { eventIdx: false });
    this.tx = new DriverQueue(mem, { size: QSIZE, ...txL }, { eventIdx: false });
    device.setQueue(rxq(0), { size: QSIZE, desc: rxL.desc, avail: rxL.avail, used: rxL.used });
    device.setQueue(txq(0), { size: QSIZE, desc: txL.desc, avail: txL.avail, used: txL.used });
    let next = alignUp(txL.end, 4096);
    for (let i = 0; i < QSIZE; i++) {
      const id = this.rx.addBuf(next, RX_BUF, true);
      this.rxAddr.set(id, next);
      next += RX_BUF;
    }
    for (let i = 0; i < TX_SLOTS; i++) this.freeSlots.push(next + i * TX_SLOT);
    if (next + TX_SLOTS * TX_SLOT > mem.byteLength) throw new Error('internal: guest memory too small');
    this.calls = [device.notifier(rxq(0)).callFd, device.notifier(txq(0)).callFd];
  }

  /** After DRIVER_OK: hand the RX buffers to the device. */
  start(): void {
    if (this.rx.publish()) this.device.kick(rxq(0));
  }

  /** Sends one frame with its header. Waits for a TX slot if all are in flight. */
  send(hdr: NetHdr, frame: Uint8Array): void {
    const HDR_LEN = this.hdrLen;
    if (HDR_LEN + frame.length > TX_SLOT) throw new Error(`internal: frame of ${frame.length} B does not fit a TX slot`);
    const deadline = Date.now() + 2000;
    while (this.freeSlots.length === 0) {
      this.reclaimTx();
      if (this.freeSlots.length) break;
      if (Date.now() > deadline) throw new Error('the device did not complete TX chains within 2 s');
      waitCall(this.calls[1], 20);
    }
    const slot = this.freeSlots.pop()!;
    encodeNetHdrSized(hdr, HDR_LEN, this.u8, slot);
    this.u8.set(frame, slot + HDR_LEN);
    const id = this.tx.addBuf(slot, HDR_LEN + frame.length, false);
    this.txSlotOf.set(id, slot);
    if (this.tx.publish()) this.device.kick(txq(0));
  }

  private reclaimTx(): void {
    for (let u = this.tx.popUsed(); u; u = this.tx.popUsed()) {
      const slot = this.txSlotOf.get(u.id);
      this.txSlotOf.delete(u.id);
      if (slot !== undefined) this.freeSlots.push(slot);
    }
  }

  /** Waits until every TX chain came back (the kernel has taken the frames). */
  flushTx(timeoutMs = 2000): boolean {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      this.reclaimTx();
      if (this.txSlotOf.size === 0) return true;
      if (Date.now() > deadline) return false;
      waitCall(this.calls[1], 20);
    }
  }

  /**
   * Receives frames for up to `timeoutMs`, handing each (header, frame copy) to
   * `onFrame` until it returns true. Returns whether it did.
   */
  poll(timeoutMs: number, onFrame: (h: NetHdr, f: Uint8Array) => boolean): boolean {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      this.reclaimTx();
      let done = false;
      while (!done && this.rx.pending > 0) {
        const got = this.receiveOne();
        if (got && onFrame(got.h, got.f)) done = true;
      }
      if (this.rx.publish()) this.device.kick(rxq(0));
      if (done) return true;
      const left = deadline - Date.now();
      if (left <= 0) return false;
      waitCall(this.calls, Math.min(left, 20));
    }
  }

  /** Pops one frame (num_buffers used chains), copies it out and reposts the buffers. */
  private receiveOne(): { h: NetHdr; f: Uint8Array } | null {
    const first = this.rx.popUsed({ id: 0, len: 0 })!;
    const addr = this.rxAddr.get(first.id)!;
    const HDR_LEN = this.hdrLen;
    const h = decodeNetHdrSized(this.u8, addr, HDR_LEN);
    const parts: Uint8Array[] = [this.u8.slice(addr + HDR_LEN, addr + first.len)];
    this.repost(first.id);
    for (let k = 1; k < h.numBuffers; k++) {
      // The device publishes a frame's chains together; wait a little in case it has not yet.
      const until = Date.now() + 500;
      while (this.rx.pending === 0 && Date.now() < until) waitCall(this.calls[0], 10);
      const u = this.rx.popUsed({ id: 0, len: 0 });
      if (!u) throw new Error(`the device announced num_buffers ${h.numBuffers} but published ${k}`);
      const a = this.rxAddr.get(u.id)!;
      parts.push(this.u8.slice(a, a + u.len));
      this.repost(u.id);
    }
    const total = parts.reduce((n, p) => n + p.length, 0);
    const f = new Uint8Array(total);
    let o = 0;
    for (const p of parts) {
      f.set(p, o);
      o += p.length;
    }
    return { h, f };
  }

  private repost(id: number): void {
    const addr = this.rxAddr.get(id)!;
    this.rxAddr.delete(id);
    const nid = this.rx.addBuf(addr, RX_BUF, true);
    this.rxAddr.set(nid, addr);
  }
}

/** Two namespaces, a TAP with the guest behind it, a veth with offloads off, and cleanup of all of it. */
class Lab {
  readonly children = new Set<ChildProcess>();
  device: VirtioNetDevice | undefined;
  driver!: Driver;
  features = 0n;
  caps!: Capabilities;
  tapMac!: Uint8Array;
  vethAMac!: Uint8Array;
  vethBMac!: Uint8Array;
  readonly guestMac = parseMac(GUEST_MAC);
  /** The interpreter itself: version-manager shims (pyenv) cost a second per start. */
  readonly python = resolvePython();
  readonly tmp: string;
  readonly vethB: string;
  private closed = false;

  private constructor(
    readonly a: Netns,
    readonly b: Netns,
    readonly tap: string,
    readonly vethA: string,
  ) {
    const id = process.pid.toString(36);
    this.vethB = `vtgb${id}`;
    this.tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vt-gso-'));
  }

  static create(): Lab {
    const id = process.pid.toString(36);
    const a = Netns.create('gA');
    let b: Netns | undefined;
    try {
      b = Netns.create('gB');
      const lab = new Lab(a, b, `vtgt${id}`, `vtga${id}`);
      try {
        lab.setup();
      } catch (e) {
        lab.close();
        throw e;
      }
      return lab;
    } catch (e) {
      b?.delete();
      a.delete();
      throw e;
    }
  }

  private setup(): void {
    const { a, b } = this;
    const mem = new SharedArrayBuffer(MEM_BYTES);
    const dev = new VirtioNetDevice({ memory: mem, tap: this.tap, netns: a.name, mac: GUEST_MAC, mtu: 1500 });
    this.device = dev;
    this.caps = dev.capabilities();
    // The order of virtio 1.x §3.1.1, as Linux's driver does it.
    dev.status = 0;
    dev.status = STATUS.ACKNOWLEDGE;
    dev.status = STATUS.ACKNOWLEDGE | STATUS.DRIVER;
    this.features = dev.deviceFeatures & WANTED;
    dev.driverFeatures = this.features;
    dev.status |= STATUS.FEATURES_OK;
    if (!(dev.status & STATUS.FEATURES_OK)) throw new Error(`device refused the features: ${dev.featuresRefusal}`);
    this.driver = new Driver(dev, mem, netHdrSize(this.features));
    dev.status |= STATUS.DRIVER_OK;
    this.driver.start();

    const tap = this.tap;
    a.ip('link', 'add', this.vethA, 'type', 'veth', 'peer', 'name', this.vethB, 'netns', b.name);
    a.ip('addr', 'add', `${TAP4}/24`, 'dev', tap);
    a.ip('-6', 'addr', 'add', `${TAP6}/64`, 'dev', tap, 'nodad');
    a.ip('addr', 'add', `${VETH_A4}/24`, 'dev', this.vethA);
    a.ip('-6', 'addr', 'add', `${VETH_A6}/64`, 'dev', this.vethA, 'nodad');
    b.ip('addr', 'add', `${PEER4}/24`, 'dev', this.vethB);
    b.ip('-6', 'addr', 'add', `${PEER6}/64`, 'dev', this.vethB, 'nodad');
    // Software segmentation is the point: with no TSO/USO/GSO, checksum or SG on
    // the veth, the kernel must cut and checksum every segment itself. GRO off
    // on the receiving side so B sees the segments as they were sent.
    for (const [ns, dev2] of [[a, this.vethA], [b, this.vethB]] as const) {
      const r = ns.run('ethtool', ['-K', dev2, 'tso', 'off', 'gso', 'off', 'gro', 'off', 'tx', 'off', 'sg', 'off', 'tx-udp-segmentation', 'off']);
      if (r.status !== 0) throw new Error(`ethtool -K ${dev2} failed: ${r.stderr.trim()}`);
    }
    a.ip('link', 'set', this.vethA, 'up');
    b.ip('link', 'set', this.vethB, 'up');
    this.tapMac = parseMac(linkMac(a, tap));
    this.vethAMac = parseMac(linkMac(a, this.vethA));
    this.vethBMac = parseMac(linkMac(b, this.vethB));
    // Static neighbours: no ARP/ND between the frames under test.
    a.ip('neigh', 'replace', GUEST4, 'lladdr', GUEST_MAC, 'dev', tap, 'nud', 'permanent');
    a.ip('-6', 'neigh', 'replace', GUEST6, 'lladdr', GUEST_MAC, 'dev', tap, 'nud', 'permanent');
    a.ip('neigh', 'replace', PEER4, 'lladdr', linkMac(b, this.vethB), 'dev', this.vethA, 'nud', 'permanent');
    a.ip('-6', 'neigh', 'replace', PEER6, 'lladdr', linkMac(b, this.vethB), 'dev', this.vethA, 'nud', 'permanent');
    for (const kv of ['net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1', 'net.ipv4.tcp_ecn=1']) {
      const r = a.run('sysctl', ['-qw', kv]);
      if (r.status !== 0) throw new Error(`sysctl ${kv} in ${a.name} failed: ${r.stderr.trim()}`);
    }
  }

  /** Starts a program inside namespace `ns`; it is killed (by pid) at close() if still running. */
  spawnIn(ns: Netns, cmd: string, args: string[]): { child: ChildProcess; stderr: () => string; exited: Promise<number | null> } {
    const child = spawn('ip', ['netns', 'exec', ns.name, cmd, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    this.children.add(child);
    let err = '';
    child.stderr!.on('data', (d) => (err += d));
    const exited = new Promise<number | null>((resolve) => {
      child.once('exit', (code) => {
        this.children.delete(child);
        resolve(code);
      });
      child.once('error', (e) => {
        err += String(e);
        this.children.delete(child);
        resolve(-1);
      });
    });
    return { child, stderr: () => err, exited };
  }

  has(f: FeatureName): boolean {
    return has(this.features, f);
  }

  /** Why a feature is not in use: the probe's reason, or that the device did not offer it. */
  whyNot(f: FeatureName): string {
    const m = this.caps.missing.find((x) => x.feature === f);
    return m ? `${f} not offered: ${m.reason}` : `${f} not negotiated (the device did not offer it)`;
  }

  /** Synchronous, so it can run from a signal handler or 'exit'. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const c of this.children) {
      if (c.exitCode === null && c.pid !== undefined) {
        try {
          process.kill(c.pid, 'SIGKILL');
        } catch {
          // Already gone.
        }
      }
    }
    if (this.device) void this.device.close();
    this.b.delete();
    this.a.delete();
    fs.rmSync(this.tmp, { recursive: true, force: true });
  }
}

/** The first python3 on PATH that is a real executable (not a shim script), else what the shim runs. */
function resolvePython(): string {
  for (const dir of (process.env.PATH ?? '').split(':')) {
    if (!dir) continue;
    try {
      const exe = fs.realpathSync(path.join(dir, 'python3'));
      const fd = fs.openSync(exe, 'r');
      const magic = Buffer.alloc(4);
      fs.readSync(fd, magic, 0, 4, 0);
      fs.closeSync(fd);
      if (magic.equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46]))) return exe;
    } catch {
      // Not there or not readable: the next PATH entry.
    }
  }
  const r = spawnSync('python3', ['-c', 'import sys; print(sys.executable)'], { encoding: 'utf8' });
  const exe = (r.stdout ?? '').trim();
  return r.status === 0 && exe && fs.existsSync(exe) ? exe : 'python3';
}

function linkMac(ns: Netns, dev: string): string {
  const j = JSON.parse(ns.ip('-j', 'link', 'show', 'dev', dev)) as { address: string }[];
  return j[0].address;
}

function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Waits for `p` at most `ms`; the timer is cleared so it cannot hold the process open afterwards. */
async function within<T>(p: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<undefined>((r) => (timer = setTimeout(r, ms, undefined)))]);
  } finally {
    clearTimeout(timer);
  }
}

// ------------------------------------------------------------------ guest → kernel

interface Expectation {
  name: CaseName;
  /** Which captured frames belong to this case. */
  match: (f: Uint8Array) => boolean;
  /** How many wire frames the case should produce. */
  count: number;
  verify: (frames: Uint8Array[]) => string[];
  what: string;
}

/** The flow from the guest to the peer in B, through A. */
function outFlow(lab: Lab, v6: boolean, dport: number): Flow {
  return {
    v6,
    srcMac: lab.guestMac,
    dstMac: lab.tapMac,
    src: v6 ? parseIPv6(GUEST6) : parseIPv4(GUEST4),
    dst: v6 ? parseIPv6(PEER6) : parseIPv4(PEER4),
    sport: 33000,
    dport,
  };
}

function portMatch(proto: number, dport: number): (f: Uint8Array) => boolean {
  return (f) => {
    const p = parseFrame(f);
    return !!p && p.proto === proto && !p.isFragment && ((f[p.l4 + 2] << 8) | f[p.l4 + 3]) === dport;
  };
}

/** Needed device feature per guest→kernel case. */
const TX_NEEDS: Record<Exclude<CaseName, TunnelCase>, FeatureName[]> = {
  CSUM_TCP4: ['CSUM'],
  CSUM_UDP4: ['CSUM'],
  CSUM_TCP6: ['CSUM'],
  CSUM_UDP6: ['CSUM'],
  TSO4: ['HOST_TSO4'],
  TSO6: ['HOST_TSO6'],
  TSO_ECN: ['HOST_TSO4', 'HOST_ECN'],
  USO4: ['HOST_USO'],
  USO6: ['HOST_USO'],
  UFO4: ['HOST_UFO'],
  UFO6: ['HOST_UFO'],
};

function txNeeds(n: CaseName): FeatureName[] {
  const t = tunnelOf(n);
  if (!t) return TX_NEEDS[n as Exclude<CaseName, TunnelCase>];
  return t.csum ? ['HOST_UDP_TUNNEL_GSO', 'HOST_UDP_TUNNEL_GSO_CSUM'] : ['HOST_UDP_TUNNEL_GSO'];
}

function rxNeeds(n: CaseName): FeatureName[] {
  const t = tunnelOf(n);
  if (!t) return RX_NEEDS[n as Exclude<CaseName, TunnelCase>];
  return t.csum ? ['GUEST_UDP_TUNNEL_GSO', 'GUEST_UDP_TUNNEL_GSO_CSUM'] : ['GUEST_UDP_TUNNEL_GSO'];
}

/** Inner addresses of the overlay: the guest's end and the other end (in A for kernel→guest). */
const INNER4 = { guest: '10.79.0.2', far: '10.79.0.1', wire: '10.79.0.9' };
const INNER6 = { guest: 'fd79::2', far: 'fd79::1', wire: 'fd79::9' };
const INNER_GUEST_MAC = '52:54:00:79:00:02';
const VNI = 4242;

/**
 * A TCP super-frame inside VXLAN/GENEVE from the guest to the peer in B (outer addresses: the
 * guest's and the peer's; outer UDP source port: the case's, so its segments are told apart).
 * The kernel segments it in software on the veth: each wire frame must carry a complete outer
 * header and one inner segment.
 */
function sendTunnelCase(lab: Lab, name: CaseName, port: number): Expectation {
  const t = tunnelOf(name)!;
  const inner = t.innerV6 ? INNER6 : INNER4;
  const innerFlow: Flow = {
    v6: t.innerV6,
    srcMac: parseMac(INNER_GUEST_MAC),
    dstMac: parseMac('52:54:00:79:00:09'),
    src: t.innerV6 ? parseIPv6(inner.guest) : parseIPv4(inner.guest),
    dst: t.innerV6 ? parseIPv6(inner.wire) : parseIPv4(inner.wire),
    sport: 33000,
    dport: port,
  };
  const mss = t.innerV6 ? 1300 : 1320;
  const len = 20000 + 17;
  const spec = { flow: innerFlow, seq: 0x20304050 + port, ack: 0x66778899, flags: TCP_FLAG.ACK | TCP_FLAG.PSH, window: 501, ipId: (port * 3) & 0xffff, ttl: 64, df: true, payload: pattern(len) };
  const outer = outFlow(lab, t.outerV6, TUNNEL_PORT[t.kind]);
  outer.sport = port;
  const tunnel: TunnelSpec = { kind: t.kind, outer, vni: VNI, ipId: (port * 5) & 0xffff, ttl: 64, df: false };
  const frame = encapsulate(buildTcpFrame(spec, 'partial'), tunnel, t.csum ? 'partial' : 'none');
  lab.driver.send(tunnelTxHeader(frame, mss, t.csum), frame);
  return {
    name,
    match: (f) => {
      const d = decapsulate(f);
      return !!d && get16be(f, d.outerTh) === port;
    },
    count: Math.ceil(len / mss),
    verify: (fr) => verifyTunnelSegments({ tunnel, inner: { spec, mss, hops: 0 }, outerCsum: t.csum, hops: 1 }, fr),
    what: `${len} B TCP${t.innerV6 ? 'v6' : 'v4'} super-frame in ${t.kind.toUpperCase()} over IPv${t.outerV6 ? 6 : 4}, gso_size ${mss}, outer UDP checksum ${t.csum ? 'partial (UDP_TUNNEL_CSUM)' : '0'}`,
  };
}

function get16be(b: Uint8Array, off: number): number {
  return (b[off] << 8) | b[off + 1];
}

/** Builds the guest's frame for a case, sends it, and says what the wire must show. */
function sendCase(lab: Lab, name: CaseName, port: number): Expectation {
  if (tunnelOf(name)) return sendTunnelCase(lab, name, port);
  const tcp = (v6: boolean, len: number, mss: number, kind: GsoKind, flags: number, ecn = false): Expectation => {
    const spec = {
      flow: outFlow(lab, v6, port),
      seq: 0x10203040 + port,
      ack: 0x55667788,
      flags,
      window: 502,
      ipId: (port * 7) & 0xffff,
      ttl: 64,
      df: true,
      tos: ecn ? 0x02 : 0,
      payload: pattern(len),
    };
    const frame = buildTcpFrame(spec, 'partial');
    lab.driver.send(txHeader(frame, IPPROTO.TCP, kind, mss, ecn), frame);
    const sent: SentTcp = { spec, mss: kind === 'none' ? 0xffff : mss, hops: 1 };
    return {
      name,
      match: portMatch(IPPROTO.TCP, port),
      count: kind === 'none' ? 1 : Math.ceil(len / mss),
      verify: (fr) => verifyTcpSegments(sent, fr),
      what: kind === 'none' ? `${len} B TCP segment, NEEDS_CSUM` : `${len} B TCP super-frame, gso_size ${mss}${ecn ? ', CWR + GSO_ECN' : ''}`,
    };
  };
  const udp = (v6: boolean, len: number, mss: number, kind: GsoKind): Expectation => {
    const spec = { flow: outFlow(lab, v6, port), ipId: (port * 7) & 0xffff, ttl: 64, df: kind !== 'ufo', payload: pattern(len) };
    const frame = buildUdpFrame(spec, 'partial');
    lab.driver.send(txHeader(frame, IPPROTO.UDP, kind, mss), frame);
    const sent: SentUdp = { spec, mss: kind === 'none' ? 0xffff : mss, hops: 1 };
    if (kind === 'ufo') {
      // Fragments after the first carry no ports: an IPv4 one is known by its ID
      // (kept for every fragment); IPv6 UFO is the only IPv6 fragmenting case.
      const id = spec.ipId;
      return {
        name,
        match: (f) => {
          const p = parseFrame(f);
          return !!p && p.proto === IPPROTO.UDP && p.isFragment && p.v6 === v6 && (v6 || p.id === id);
        },
        count: Math.ceil((len + 8) / mss),
        verify: (fr) => verifyUdpFragments(sent, fr),
        what: `${len} B UDP super-frame, gso UDP (UFO), gso_size ${mss}`,
      };
    }
    return {
      name,
      match: portMatch(IPPROTO.UDP, port),
      count: kind === 'none' ? 1 : Math.ceil(len / mss),
      verify: (fr) => verifyUdpSegments(sent, fr),
      what: kind === 'none' ? `${len} B UDP datagram, NEEDS_CSUM` : `${len} B UDP super-frame, gso UDP_L4, gso_size ${mss}`,
    };
  };
  const ACKPSH = TCP_FLAG.ACK | TCP_FLAG.PSH;
  switch (name) {
    case 'CSUM_TCP4':
      return tcp(false, 1000, 0, 'none', ACKPSH);
    case 'CSUM_UDP4':
      return udp(false, 1000, 0, 'none');
    case 'CSUM_TCP6':
      return tcp(true, 1000, 0, 'none', ACKPSH);
    case 'CSUM_UDP6':
      return udp(true, 1000, 0, 'none');
    case 'TSO4':
      return tcp(false, 30000, 1400, 'tso', ACKPSH | TCP_FLAG.FIN);
    case 'TSO6':
      return tcp(true, 40000, 1380, 'tso', ACKPSH);
    case 'TSO_ECN':
      return tcp(false, 20000, 1400, 'tso', ACKPSH | TCP_FLAG.CWR, true);
    case 'USO4':
      return udp(false, 14123, 1400, 'uso');
    case 'USO6':
      return udp(true, 20000, 1300, 'uso');
    case 'UFO4':
      return udp(false, 8000, 1400, 'ufo');
    case 'UFO6':
      return udp(true, 8000, 1400, 'ufo');
    default:
      throw new Error(`internal: no guest→kernel case ${name}`);
  }
}

async function startCapture(lab: Lab): Promise<{ file: string; stop: () => Promise<Uint8Array[]> }> {
  const file = path.join(lab.tmp, 'wire.pcap');
  // -Z root: tcpdump would otherwise drop to its own user before opening the file.
  const cap = lab.spawnIn(lab.b, 'tcpdump', ['-i', lab.vethB, '-n', '-s', '0', '-U', '--immediate-mode', '-Z', 'root', '-w', file]);
  const until = Date.now() + 5000;
  while (!/listening on/.test(cap.stderr())) {
    if (cap.child.exitCode !== null || Date.now() > until) throw new Error(`tcpdump did not start: ${cap.stderr().trim() || 'no output'}`);
    await sleep(10);
  }
  return {
    file,
    stop: async () => {
      // SIGINT: tcpdump flushes the file and exits.
      if (cap.child.exitCode === null && cap.child.pid !== undefined) process.kill(cap.child.pid, 'SIGINT');
      await within(cap.exited, 3000);
      return readCapture(file);
    },
  };
}

function readCapture(file: string): Uint8Array[] {
  if (!fs.existsSync(file)) return [];
  const buf = new Uint8Array(fs.readFileSync(file));
  if (buf.length < 24) return [];
  const pc = parsePcap(buf);
  if (pc.linkType !== LINKTYPE_ETHERNET) throw new Error(`capture has link type ${pc.linkType}, expected Ethernet`);
  return pc.packets.map((p) => p.data);
}

async function guestToKernel(lab: Lab, names: CaseName[], progress: (r: CaseResult) => void): Promise<CaseResult[]> {
  const results: CaseResult[] = [];
  const runnable: CaseName[] = [];
  for (const n of names) {
    const lacking = txNeeds(n).filter((f) => !lab.has(f));
    if (lacking.length) {
      const r: CaseResult = { case: n, direction: 'guest-to-kernel', result: 'unsupported', detail: lacking.map((f) => lab.whyNot(f)).join('; ') };
      results.push(r);
      progress(r);
    } else runnable.push(n);
  }
  if (runnable.length === 0) return results;
  const cap = await startCapture(lab);
  const exps: Expectation[] = [];
  let captured: Uint8Array[] | undefined;
  try {
    for (const n of runnable) exps.push(sendCase(lab, n, 40000 + CASES.indexOf(n) * 10));
    const tookAll = lab.driver.flushTx();
    const want = exps.reduce((s, e) => s + e.count, 0);
    // Wait until every expected wire frame is in the file, then a little longer for any extra.
    const until = Date.now() + 3000;
    for (;;) {
      await sleep(50);
      const frames = readCapture(cap.file);
      const mine = frames.filter((f) => exps.some((e) => e.match(f))).length;
      if (mine >= want || Date.now() > until) break;
    }
    await sleep(150);
    captured = await cap.stop();
    if (!tookAll) throw new Error('the device did not return every TX chain');
  } finally {
    if (!captured) await cap.stop().catch(() => []);
  }
  const drops = lab.device!.stats().queues.find((q) => q.kind === 'tx')?.drops ?? {};
  const dropText = Object.entries(drops).filter(([, v]) => v > 0).map(([k, v]) => `${k}=${v}`).join(' ');
  for (const e of exps) {
    const frames = captured.filter((f) => e.match(f));
    let problems = e.verify(frames);
    if (frames.length === 0) problems = [`nothing reached the wire${dropText ? ` (device TX drops: ${dropText})` : ''}`];
    const r: CaseResult = {
      case: e.name,
      direction: 'guest-to-kernel',
      result: problems.length ? 'fail' : 'pass',
      detail: problems.length ? `${e.what}: ${problems.join('; ')}` : `${e.what} → ${frames.length} correct wire frame${frames.length === 1 ? '' : 's'}`,
    };
    results.push(r);
    progress(r);
  }
  return results;
}

// ------------------------------------------------------------------ kernel → guest

const PY_UDP = `
import socket, sys
host, port, n, seg = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET, socket.SOCK_DGRAM)
if seg:
    s.setsockopt(socket.IPPROTO_UDP, 103, seg)  # UDP_SEGMENT
s.sendto(bytes(i % 251 for i in range(n)), (host, port))
`;

const PY_TCP = `
import socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.create_connection((host, port), timeout=8)
try:
    s.sendall(bytes(i % 251 for i in range(n)))
except OSError:
    pass
time.sleep(3)
`;

/** Needed negotiated feature per kernel→guest case (UFO has its own reasoning). */
const RX_NEEDS: Record<Exclude<CaseName, TunnelCase>, FeatureName[]> = {
  CSUM_TCP4: ['GUEST_CSUM'],
  CSUM_UDP4: ['GUEST_CSUM'],
  CSUM_TCP6: ['GUEST_CSUM'],
  CSUM_UDP6: ['GUEST_CSUM'],
  TSO4: ['GUEST_TSO4'],
  TSO6: ['GUEST_TSO6'],
  TSO_ECN: ['GUEST_TSO4', 'GUEST_ECN'],
  USO4: ['GUEST_USO4'],
  USO6: ['GUEST_USO6'],
  UFO4: [],
  UFO6: [],
};

function udpFrom(f: Uint8Array, port: number): boolean {
  const p = parseFrame(f);
  return !!p && p.proto === IPPROTO.UDP && !p.isFragment && ((f[p.l4 + 2] << 8) | f[p.l4 + 3]) === port;
}

/** The L4 payload of a received frame equals the pattern starting at `start`. */
function payloadProblem(f: Uint8Array, start: number): string | null {
  const p = parseFrame(f)!;
  const hl = p.proto === IPPROTO.TCP ? (f[p.l4 + 12] >> 4) * 4 : 8;
  for (let i = p.l4 + hl, k = start; i < p.l4 + p.l4Len; i++, k++) if (f[i] !== patternByte(k)) return `payload byte ${k} differs from what the socket sent`;
  return null;
}

/** A UDP send from a socket in A; returns every frame for `port` that arrived within the wait. */
async function udpToGuest(lab: Lab, v6: boolean, port: number, len: number, seg: number): Promise<{ frames: { h: NetHdr; f: Uint8Array }[]; err: string }> {
  const py = lab.spawnIn(lab.a, lab.python, ['-c', PY_UDP, v6 ? GUEST6 : GUEST4, String(port), String(len), String(seg)]);
  const frames: { h: NetHdr; f: Uint8Array }[] = [];
  let bytes = 0;
  // Fragments have no port: count any UDP fragment toward the datagram too.
  lab.driver.poll(3000, (h, f) => {
    const p = parseFrame(f);
    if (!p || p.proto !== IPPROTO.UDP) return false;
    if (!p.isFragment && !udpFrom(f, port)) return false;
    frames.push({ h, f });
    bytes += p.isFragment ? p.l4Len : p.l4Len - 8;
    return bytes >= len;
  });
  await within(py.exited, 2000);
  return { frames, err: py.stderr().trim() };
}

async function udpCase(lab: Lab, name: CaseName, v6: boolean, port: number): Promise<CaseResult> {
  const dir: Direction = 'kernel-to-guest';
  if (name.startsWith('CSUM')) {
    const len = 1000;
    const { frames, err } = await udpToGuest(lab, v6, port, len, 0);
    if (frames.length === 0) return { case: name, direction: dir, result: 'fail', detail: `no UDP datagram reached the guest${err ? `: ${err}` : ''}` };
    const { h, f } = frames[0];
    const probs = verifyRxFrame(h, f, { proto: IPPROTO.UDP, gsoType: HDR.GSO_NONE });
    if (!(h.flags & (HDR.F_NEEDS_CSUM | HDR.F_DATA_VALID))) probs.push('GUEST_CSUM negotiated but the kernel used no checksum offload (flags 0)');
    const pp = payloadProblem(f, 0);
    if (pp) probs.push(pp);
    return { case: name, direction: dir, result: probs.length ? 'fail' : 'pass', detail: `${len} B datagram: ${describeHdr(h)}${probs.length ? ` — ${probs.join('; ')}` : ''}` };
  }
  if (name.startsWith('USO')) {
    const len = 14000 + 77;
    const seg = 1400;
    const { frames, err } = await udpToGuest(lab, v6, port, len, seg);
    if (frames.length === 0) return { case: name, direction: dir, result: 'fail', detail: `nothing reached the guest${err ? `: ${err}` : ''}` };
    const { h, f } = frames[0];
    const probs = verifyRxFrame(h, f, { proto: IPPROTO.UDP, gsoType: HDR.GSO_UDP_L4, gsoSize: seg });
    if (frames.length !== 1) probs.push(`${frames.length} frames arrived, expected one super-frame`);
    const pp = payloadProblem(f, 0);
    if (pp) probs.push(pp);
    return { case: name, direction: dir, result: probs.length ? 'fail' : 'pass', detail: `UDP_SEGMENT ${seg}, ${len} B: ${describeHdr(h)}${probs.length ? ` — ${probs.join('; ')}` : ''}` };
  }
  // UFO: a datagram larger than the MTU, sent without UDP_SEGMENT. A kernel that
  // produced UFO would hand it over whole with gso_type UDP; Linux ≥ 4.14 fragments it.
  const len = 4000;
  const { frames, err } = await udpToGuest(lab, v6, port, len, 0);
  const ufo = frames.find((x) => (x.h.gsoType & 0x7f) === HDR.GSO_UDP);
  if (ufo) {
    const probs = verifyRxFrame(ufo.h, ufo.f, { proto: IPPROTO.UDP, gsoType: HDR.GSO_UDP });
    return { case: name, direction: dir, result: probs.length ? 'fail' : 'pass', detail: `${describeHdr(ufo.h)}${probs.length ? ` — ${probs.join('; ')}` : ''}` };
  }
  const frags = frames.filter((x) => parseFrame(x.f)?.isFragment).length;
  const offered = lab.has('GUEST_UFO') ? 'GUEST_UFO negotiated (TUNSETOFFLOAD accepted TUN_F_UFO)' : lab.whyNot('GUEST_UFO');
  const seen = frames.length ? `a ${len} B datagram arrived as ${frags} IP fragment${frags === 1 ? '' : 's'}` : `nothing arrived${err ? ` (${err})` : ''}`;
  return {
    case: name,
    direction: dir,
    result: 'unsupported',
    detail: `Linux ≥ 4.14 never hands UFO to user space (UFO output was removed; TUN_F_UFO is accepted and ignored): ${offered}; ${seen}`,
  };
}

interface TcpSession {
  syn?: { h: NetHdr; f: Uint8Array };
  firstSuper?: { h: NetHdr; f: Uint8Array };
  cwr?: { h: NetHdr; f: Uint8Array };
  nonGsoCwr: number;
  dataFrames: number;
  payloadProblem?: string;
  err: string;
}

/**
 * A kernel TCP client in A connects to the guest and sends; the guest answers
 * the SYN (MSS, window scale, a large window; ECN when asked) and ACKs data,
 * until it has the first super-frame (or, for ECN, a CWR super-frame).
 */
async function tcpToGuest(lab: Lab, v6: boolean, port: number, mss: number, ecn: boolean, tnl?: GuestTunnel): Promise<TcpSession> {
  const to = tnl ? (v6 ? INNER6.guest : INNER4.guest) : v6 ? GUEST6 : GUEST4;
  const py = lab.spawnIn(lab.a, lab.python, ['-c', PY_TCP, to, String(port), String(400_000)]);
  const s: TcpSession = { nonGsoCwr: 0, dataFrames: 0, err: '' };
  const iss = 0x01000000;
  let peerIsn = 0;
  let rcvNxt = 0;
  let flow: Flow | undefined;
  let echoCe = false;
  let sawData = false;
  const reply = (flags: number, options?: Uint8Array): void => {
    let frame = buildTcpFrame({ flow: flow!, seq: flags & TCP_FLAG.SYN ? iss : iss + 1, ack: rcvNxt, flags, window: 0xffff, ipId: 0, ttl: 64, df: true, options, payload: new Uint8Array(0) }, 'full');
    if (tnl) frame = encapsulate(frame, tnl.back, 'full');
    lab.driver.send({ flags: 0, gsoType: 0, hdrLen: 0, gsoSize: 0, csumStart: 0, csumOffset: 0, numBuffers: 0 }, frame);
  };
  lab.driver.poll(4000, (h, whole) => {
    // Over a tunnel the TCP conversation is the inner frame; the header describes the whole one.
    let f = whole;
    if (tnl) {
      const d = decapsulate(whole);
      if (!d) return false;
      f = d.inner.slice();
    }
    const p = parseFrame(f);
    if (!p || p.proto !== IPPROTO.TCP || p.isFragment || ((f[p.l4 + 2] << 8) | f[p.l4 + 3]) !== port) return false;
    const l4 = p.l4;
    const fl = f[l4 + 13];
    const seq = get32(f, l4 + 4);
    const dataLen = p.l4Len - (f[l4 + 12] >> 4) * 4;
    if (fl & TCP_FLAG.SYN && !(fl & TCP_FLAG.ACK)) {
      s.syn = { h, f: whole };
      peerIsn = seq;
      rcvNxt = (seq + 1) >>> 0;
      flow = {
        v6,
        srcMac: tnl ? tnl.innerMac : lab.guestMac,
        dstMac: tnl ? f.slice(6, 12) : lab.tapMac,
        src: f.slice(p.dst, p.dst + p.alen),
        dst: f.slice(p.src, p.src + p.alen),
        sport: port,
        dport: (f[l4] << 8) | f[l4 + 1],
      };
      const askedEcn = (fl & (TCP_FLAG.ECE | TCP_FLAG.CWR)) === (TCP_FLAG.ECE | TCP_FLAG.CWR);
      // MSS, NOP, window scale 7: the sender may fill 8 MB, so cwnd alone limits its bursts.
      const opts = new Uint8Array([2, 4, mss >> 8, mss & 0xff, 1, 3, 3, 7]);
      reply(TCP_FLAG.SYN | TCP_FLAG.ACK | (ecn && askedEcn ? TCP_FLAG.ECE : 0), opts);
      return false;
    }
    if (!flow || dataLen === 0) return false;
    s.dataFrames++;
    if (s.payloadProblem === undefined) {
      const pp = payloadProblem(f, (seq - peerIsn - 1) >>> 0);
      if (pp) s.payloadProblem = pp;
    }
    const gso = h.gsoType !== HDR.GSO_NONE;
    if (gso && !s.firstSuper) s.firstSuper = { h, f: whole };
    const end = (seq + dataLen) >>> 0;
    if (((seq - rcvNxt) | 0) <= 0 && ((end - rcvNxt) | 0) > 0) rcvNxt = end;
    let done = !ecn && !!s.firstSuper;
    if (ecn) {
      if (fl & TCP_FLAG.CWR && sawData) {
        echoCe = false;
        if (gso) {
          s.cwr = { h, f: whole };
          done = true;
        } else s.nonGsoCwr++;
      } else if (!echoCe) {
        // Pretend the network marked CE: echo it until the sender says CWR (RFC 3168 §6.1.3).
        echoCe = true;
      }
      sawData = true;
    }
    reply(TCP_FLAG.ACK | (echoCe ? TCP_FLAG.ECE : 0));
    if (done) {
      // The sender is done being useful; reset it so it stops retransmitting into later cases.
      reply(TCP_FLAG.RST | TCP_FLAG.ACK);
    }
    return done;
  });
  if (py.child.exitCode === null && py.child.pid !== undefined) process.kill(py.child.pid, 'SIGKILL');
  await py.exited;
  s.err = py.stderr().trim();
  return s;
}

/** The guest's end of an overlay: its inner MAC, and the outer headers its replies go in. */
interface GuestTunnel {
  innerMac: Uint8Array;
  back: TunnelSpec;
}

/**
 * Kernel → guest over an overlay: a VXLAN/GENEVE device in A whose remote is the guest, a
 * kernel TCP client in A connecting to the guest's inner address. The kernel builds TCP
 * super-frames on the overlay device, encapsulates them whole, and (with TUN_F_UDP_TUNNEL_GSO,
 * and _CSUM when the tunnel sends outer checksums) hands them to the guest unsegmented; the
 * guest answers inside the tunnel until it has the first super-frame.
 */
async function tunnelToGuest(lab: Lab, n: CaseName, port: number): Promise<CaseResult> {
  const t = tunnelOf(n)!;
  const dir: Direction = 'kernel-to-guest';
  const dev = `vtov${process.pid.toString(36)}`;
  const args = ['link', 'add', dev, 'type', t.kind, 'id', String(VNI), 'remote', t.outerV6 ? GUEST6 : GUEST4];
  if (t.kind === 'vxlan') args.push('local', t.outerV6 ? TAP6 : TAP4, 'dstport', String(TUNNEL_PORT.vxlan));
  if (t.outerV6) {
    if (!t.csum) args.push('udp6zerocsumtx', 'udp6zerocsumrx');
  } else args.push(t.csum ? 'udpcsum' : 'noudpcsum');
  const made = lab.a.run('ip', args);
  if (made.status !== 0) {
    // A kernel built without the overlay device (no geneve module) cannot make the frames.
    const err = made.stderr.trim();
    const result: Outcome = /Unknown device type/i.test(err) ? 'unsupported' : 'fail';
    return { case: n, direction: dir, result, detail: `this kernel cannot make a ${t.kind} device to send from (ip link add ... type ${t.kind}: ${err})` };
  }
  try {
    const inner = t.innerV6 ? INNER6 : INNER4;
    if (t.innerV6) lab.a.ip('-6', 'addr', 'add', `${inner.far}/64`, 'dev', dev, 'nodad');
    else lab.a.ip('addr', 'add', `${inner.far}/24`, 'dev', dev);
    lab.a.ip('link', 'set', dev, 'up');
    lab.a.ip(...(t.innerV6 ? ['-6'] : []), 'neigh', 'replace', inner.guest, 'lladdr', INNER_GUEST_MAC, 'dev', dev, 'nud', 'permanent');
    const back: TunnelSpec = {
      kind: t.kind,
      outer: {
        v6: t.outerV6,
        srcMac: lab.guestMac,
        dstMac: lab.tapMac,
        src: t.outerV6 ? parseIPv6(GUEST6) : parseIPv4(GUEST4),
        dst: t.outerV6 ? parseIPv6(TAP6) : parseIPv4(TAP4),
        sport: 50000,
        dport: TUNNEL_PORT[t.kind],
      },
      vni: VNI,
      ipId: 0,
      ttl: 64,
      df: false,
    };
    // Below every overlay's path MTU (1500 less 50 to 70 bytes of outer headers), so gso_size is ours.
    const mss = 1300;
    const s = await tcpToGuest(lab, t.innerV6, port, mss, false, { innerMac: parseMac(INNER_GUEST_MAC), back });
    const what = `TCP${t.innerV6 ? 'v6' : 'v4'} in ${t.kind.toUpperCase()} over IPv${t.outerV6 ? 6 : 4}, outer UDP checksum ${t.csum ? 'on' : 'off'}`;
    if (!s.firstSuper) {
      const why = !s.syn ? `no SYN reached the guest through the tunnel${s.err ? `: ${s.err}` : ''}` : `no super-frame in ${s.dataFrames} data frames (the kernel segmented before the TAP)`;
      return { case: n, direction: dir, result: 'fail', detail: `${what}: ${why}` };
    }
    const { h, f } = s.firstSuper;
    const probs = verifyTunnelRxFrame(h, f, { innerV6: t.innerV6, gsoSize: mss, outerCsum: t.csum });
    if (s.payloadProblem) probs.push(s.payloadProblem);
    return {
      case: n,
      direction: dir,
      result: probs.length ? 'fail' : 'pass',
      detail: `${what}: first super-frame of ${f.length} B: ${describeHdr(h)}${probs.length ? ` — ${probs.join('; ')}` : ''}`,
    };
  } finally {
    lab.a.run('ip', ['link', 'del', dev]);
  }
}

async function kernelToGuest(lab: Lab, names: CaseName[], progress: (r: CaseResult) => void): Promise<CaseResult[]> {
  const out = new Map<CaseName, CaseResult>();
  const dir: Direction = 'kernel-to-guest';
  const put = (r: CaseResult): void => {
    out.set(r.case as CaseName, r);
    progress(r);
  };
  for (const n of names) {
    if (out.has(n)) continue;
    const lacking = rxNeeds(n).filter((f) => !lab.has(f));
    const port = 40000 + CASES.indexOf(n) * 10 + 1;
    if (lacking.length) {
      put({ case: n, direction: dir, result: 'unsupported', detail: lacking.map((f) => lab.whyNot(f)).join('; ') });
      continue;
    }
    if (tunnelOf(n)) {
      put(await tunnelToGuest(lab, n, port));
      continue;
    }
    if (n === 'CSUM_UDP4' || n === 'CSUM_UDP6' || n === 'USO4' || n === 'USO6' || n === 'UFO4' || n === 'UFO6') {
      put(await udpCase(lab, n, n.endsWith('6'), port));
      continue;
    }
    // TCP: one session serves both the checksum case (its SYN) and the TSO case (its data).
    const v6 = n.endsWith('6');
    const ecn = n === 'TSO_ECN';
    const mss = v6 ? 1440 : 1460;
    const s = await tcpToGuest(lab, v6, port, mss, ecn);
    const fail = (c: CaseName, d: string): void => put({ case: c, direction: dir, result: 'fail', detail: d });
    const csumCase: CaseName = v6 ? 'CSUM_TCP6' : 'CSUM_TCP4';
    if (!ecn && names.includes(csumCase) && !out.has(csumCase)) {
      if (!s.syn) fail(csumCase, `no SYN reached the guest${s.err ? `: ${s.err}` : ''}`);
      else {
        const probs = verifyRxFrame(s.syn.h, s.syn.f, { proto: IPPROTO.TCP, gsoType: HDR.GSO_NONE });
        if (!(s.syn.h.flags & (HDR.F_NEEDS_CSUM | HDR.F_DATA_VALID))) probs.push('GUEST_CSUM negotiated but the kernel used no checksum offload (flags 0)');
        put({ case: csumCase, direction: dir, result: probs.length ? 'fail' : 'pass', detail: `kernel SYN: ${describeHdr(s.syn.h)}${probs.length ? ` — ${probs.join('; ')}` : ''}` });
      }
    }
    const tsoCase: CaseName = ecn ? 'TSO_ECN' : v6 ? 'TSO6' : 'TSO4';
    if (!names.includes(tsoCase) || out.has(tsoCase)) continue;
    const got = ecn ? s.cwr : s.firstSuper;
    if (!got) {
      const why = !s.syn
        ? `no SYN reached the guest${s.err ? `: ${s.err}` : ''}`
        : ecn
          ? `no CWR super-frame in ${s.dataFrames} data frames (${s.nonGsoCwr} CWR frame(s) were single segments)`
          : `no super-frame in ${s.dataFrames} data frames`;
      fail(tsoCase, why);
      continue;
    }
    const gsoType = (v6 ? HDR.GSO_TCPV6 : HDR.GSO_TCPV4) | (ecn ? HDR.GSO_ECN : 0);
    const expect: RxExpect = { proto: IPPROTO.TCP, gsoType, gsoSize: mss, exactHdrLen: lab.has('GUEST_HDRLEN') };
    const probs = verifyRxFrame(got.h, got.f, expect);
    if (s.payloadProblem) probs.push(s.payloadProblem);
    const segs = Math.ceil((parseFrame(got.f)!.l4Len - 20) / Math.max(1, got.h.gsoSize));
    put({
      case: tsoCase,
      direction: dir,
      result: probs.length ? 'fail' : 'pass',
      detail: `${ecn ? 'CWR ' : 'first '}super-frame of ${got.f.length} B (${segs} segments): ${describeHdr(got.h)}${lab.has('GUEST_HDRLEN') ? '' : ' (hdr_len advisory: no GUEST_HDRLEN)'}${probs.length ? ` — ${probs.join('; ')}` : ''}`,
    });
  }
  return names.map((n) => out.get(n)!).filter(Boolean);
}

// ------------------------------------------------------------------ entry points

export interface GsoCheckOptions {
  json?: boolean;
  /** Case names (see CASES); default all. */
  cases?: string[];
  /** Called as each result is known (the CLI prints progress on stderr). */
  onResult?: (r: CaseResult) => void;
}

/** Tools gso-check runs, and the Debian package that has each. */
const TOOLS: [string, string][] = [
  ['ip', 'iproute2'],
  ['ethtool', 'ethtool'],
  ['tcpdump', 'tcpdump'],
  ['python3', 'python3'],
  ['sysctl', 'procps'],
];

export async function runGsoCheck(opts: GsoCheckOptions = {}): Promise<{ results: CaseResult[]; ok: boolean }> {
  const names = (opts.cases ?? [...CASES]).map((c) => c.toUpperCase());
  for (const n of names) if (!(CASES as readonly string[]).includes(n)) throw new Error(`unknown case '${n}'; cases: ${CASES.join(', ')}`);
  const selected = CASES.filter((c) => names.includes(c));
  requireRoot('gso-check creates network namespaces, a TAP and a veth');
  const missing = TOOLS.filter(([t]) => !haveProgram(t));
  if (missing.length) throw new Error(`gso-check needs ${missing.map(([t]) => t).join(', ')}: apt-get install ${missing.map(([, p]) => p).join(' ')}`);

  // Ctrl-C at any point: remove namespaces, TAP and children before leaving. The
  // handlers go in first: a signal during the (synchronous) setup is delivered
  // right after it, when `lab` exists; one that killed a setup command makes
  // Lab.create undo what it did.
  let lab: Lab | undefined;
  const onSignal = (sig: NodeJS.Signals): void => {
    lab?.close();
    process.exit(sig === 'SIGINT' ? 130 : 143);
  };
  const onExit = (): void => lab?.close();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  process.once('exit', onExit);
  const progress = (r: CaseResult): void => opts.onResult?.(r);
  try {
    lab = Lab.create();
    const g2k = await guestToKernel(lab, selected, progress);
    const k2g = await kernelToGuest(lab, selected, progress);
    const results: CaseResult[] = [];
    for (const n of selected) {
      for (const r of [...g2k, ...k2g]) if (r.case === n) results.push(r);
    }
    return { results, ok: results.every((r) => r.result !== 'fail') };
  } finally {
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
    process.removeListener('exit', onExit);
    lab?.close();
  }
}

export function formatTable(results: CaseResult[]): string {
  const head = ['case', 'direction', 'result', 'detail'];
  const rows = results.map((r) => [r.case, r.direction, r.result, r.detail]);
  const w = [0, 1, 2].map((i) => Math.max(head[i].length, ...rows.map((r) => r[i].length)));
  const line = (r: string[]): string => `${r[0].padEnd(w[0])}  ${r[1].padEnd(w[1])}  ${r[2].padEnd(w[2])}  ${r[3]}`;
  return [line(head), ...rows.map(line)].join('\n');
}
