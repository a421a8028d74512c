// The TCP cases of the benchmark: guest-sim's TcpStack (GuestSim with the
// discard and source services, in this process) behind vhost-tap, and the
// namespace's kernel TCP as the host-side peer (a child Node process started
// with `ip netns exec`). tcp-h2g: the peer sends to the guest's discard port
// 9; tcp-g2h: the peer reads from the guest's source port 19. Only vhost-tap
// contenders run here: the C and Node loops have no guest TCP stack behind
// them, so there is no baseline to race. The overlay variants (vxlan-h2g,
// vxlan-g2h) run the same TCP inside VXLAN: guest-sim terminates the tunnel
// (guest-sim/tunnel.ts) and the namespace's kernel has a vxlan device over the
// TAP's address; with the UDP tunnel GSO features the flow crosses the TAP in
// tunnel super-frames, without them in MTU-sized encapsulated segments.

import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';

import { GuestSim, GUEST_SUPPORTED } from '../guest-sim/guest';
import { cpuOf, Env, ipNs, signalChild, tids } from './contenders';

export type TcpDir = 'h2g' | 'g2h';

export interface TcpSample {
  /** TCP payload bytes the host peer sent (h2g) or received (g2h) in the window. */
  bytes: number;
  /** Frames through the device in that direction (super-frames count once). */
  frames: number;
  wallNs: number;
  /** Engine thread CPU. For g2h it includes the host kernel's TCP receive: tun_get_user runs the stack in the writer's context. */
  backendCpuNs: number;
  backendThreads: number;
  /** guest-sim's queue-pair Worker(s): its TCP, the discard hash (SHA-256) or the source pattern fill. */
  guestCpuNs: number;
  /** The host peer process (user + system, 10 ms ticks): the kernel's socket side. */
  hostCpuNs: number;
  io: string;
}

const HOST4 = '10.203.9.1';
const GUEST4 = '10.203.9.2';
// The overlay: the inner addresses of the kernel's vxlan device and of guest-sim's endpoint.
const INNER_HOST4 = '10.204.9.1';
const INNER_GUEST4 = '10.204.9.2';
const VNI = 909;
const VXLAN_DEV = 'vtbvx0';

/** An overlay run: TCP inside VXLAN, with or without the UDP tunnel GSO features (65..67). */
export interface Overlay {
  tunnelGso: boolean;
}
// The source service sends this much per connection: more than any window moves.
const SOURCE_BYTES = 2 ** 40;

/**
 * The host peer. argv: mode (h2g|g2h), guest address. Prints 'connected' once
 * established, then one line with the payload byte count for every line it
 * reads on stdin (the bench's window edges), and exits when stdin closes.
 */
const PEER = `
const net = require('node:net');
const [mode, host] = process.argv.slice(1);
let n = 0;
const s = net.connect({ host, port: mode === 'h2g' ? 9 : 19 }, () => {
  console.log('connected');
  if (mode !== 'h2g') return;
  const chunk = Buffer.alloc(1 << 20, 0x5a);
  const pump = () => {
    // In steady state the socket's queue stays about as full at both window edges,
    // so the difference of these counts is what the guest took in between.
    for (;;) { n += chunk.length; if (!s.write(chunk)) return s.once('drain', pump); }
  };
  pump();
});
if (mode !== 'h2g') s.on('data', (d) => { n += d.length; });
s.on('error', (e) => { console.error(e.message); process.exit(1); });
let buf = '';
process.stdin.on('data', (d) => {
  buf += d;
  for (let i; (i = buf.indexOf('\\n')) >= 0; ) { buf = buf.slice(i + 1); console.log(String(n - s.writableLength)); }
});
process.stdin.on('end', () => process.exit(0));`;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function comm(tid: number): string {
  try {
    return fs.readFileSync(`/proc/self/task/${tid}/comm`, 'utf8').trim();
  } catch {
    return '';
  }
}

/** user + system CPU of a child process, ns (clock ticks of 10 ms). */
function procCpuNs(pid: number): number {
  try {
    const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    return (Number(f[11]) + Number(f[12])) * 1e7;
  } catch {
    return 0;
  }
}

/** Lines from a child's stdout, one at a time. */
function lines(child: ChildProcess): { next(timeoutMs: number): Promise<string> } {
  const queue: string[] = [];
  let waiter: ((l: string) => void) | undefined;
  let buf = '';
  child.stdout!.on('data', (d) => {
    buf += d;
    for (let i; (i = buf.indexOf('\n')) >= 0; ) {
      const l = buf.slice(0, i);
      buf = buf.slice(i + 1);
      if (waiter) {
        const w = waiter;
        waiter = undefined;
        w(l);
      } else queue.push(l);
    }
  });
  return {
    next(timeoutMs) {
      if (queue.length) return Promise.resolve(queue.shift()!);
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => {
          waiter = undefined;
          reject(new Error('TCP host peer did not answer'));
        }, timeoutMs);
        waiter = (l) => {
          clearTimeout(t);
          resolve(l);
        };
      });
    },
  };
}

export async function runTcp(env: Env, dir: TcpDir, io: 'auto' | 'readv', overlay?: Overlay): Promise<TcpSample> {
  const before = tids();
  const guest = await GuestSim.start({
    tap: env.tap,
    netns: env.ns,
    queuePairs: 1,
    ip4: `${GUEST4}/24`,
    sourceBytes: SOURCE_BYTES,
    queueSize: env.ringSize,
    io,
    ...(overlay ? { tunnel: { kind: 'vxlan' as const, vni: VNI, ip4: `${INNER_GUEST4}/24` }, features: overlay.tunnelGso ? undefined : GUEST_SUPPORTED } : {}),
  });
  let child: ChildProcess | undefined;
  let err = '';
  const peerAddr = overlay ? INNER_GUEST4 : GUEST4;
  try {
    ipNs(env, 'addr', 'add', `${HOST4}/24`, 'dev', env.tap);
    if (overlay) {
      const u = guest.device.stats().udpTunnelGso;
      if (overlay.tunnelGso && !(u.guest && u.host)) throw new Error(`the UDP tunnel GSO features were not negotiated: ${JSON.stringify(u)}`);
      ipNs(env, 'link', 'add', VXLAN_DEV, 'type', 'vxlan', 'id', String(VNI), 'local', HOST4, 'remote', GUEST4, 'dstport', '4789', 'dev', env.tap);
      ipNs(env, 'addr', 'add', `${INNER_HOST4}/24`, 'dev', VXLAN_DEV);
      ipNs(env, 'link', 'set', VXLAN_DEV, 'up');
    }
    // The engine thread names itself vt-pair0 first thing it runs, which may be a moment after
    // it exists on a busy machine; the other new threads are the guest's Worker.
    let fresh: number[] = [];
    let engine: number[] = [];
    for (let tries = 0; tries < 200 && engine.length === 0; tries++) {
      if (tries > 0) await sleep(5);
      fresh = [...tids()].filter((x) => !before.has(x));
      engine = fresh.filter((x) => comm(x).startsWith('vt-pair'));
    }
    const guestT = fresh.filter((x) => !engine.includes(x));
    if (engine.length !== 1) throw new Error(`expected one engine thread, found ${engine.length}`);
    child = spawn('ip', ['netns', 'exec', env.ns, process.execPath, '-e', PEER, dir, peerAddr], { stdio: ['pipe', 'pipe', 'pipe'] });
    env.children.add(child);
    child.stderr!.on('data', (d) => (err += d));
    const out = lines(child);
    const first = await out.next(10_000).catch((e: Error) => Promise.reject(new Error(`${e.message}: ${err.trim()}`)));
    if (first !== 'connected') throw new Error(`TCP host peer: ${first} ${err.trim()}`);
    await sleep(env.warmupMs);
    const pid = child.pid!;
    const snap = async () => {
      child!.stdin!.write('\n');
      const bytes = Number(await out.next(5000));
      const s = guest.device.stats();
      return {
        bytes,
        frames: dir === 'h2g' ? s.totals.rxPackets : s.totals.txPackets,
        backend: cpuOf(engine),
        guest: cpuOf(guestT),
        host: procCpuNs(pid),
        t: process.hrtime.bigint(),
        io: s.io,
      };
    };
    const a = await snap();
    await sleep(env.durationMs);
    const b = await snap();
    if (io === 'readv' && b.io !== 'readv/writev') throw new Error(`option io 'readv' ran ${b.io}`);
    return {
      bytes: b.bytes - a.bytes,
      frames: b.frames - a.frames,
      wallNs: Number(b.t - a.t),
      backendCpuNs: b.backend - a.backend,
      backendThreads: engine.length,
      guestCpuNs: b.guest - a.guest,
      hostCpuNs: b.host - a.host,
      io: b.io,
    };
  } finally {
    if (child) {
      const c = child;
      const exited = c.exitCode === null ? new Promise((r) => c.once('exit', r)) : Promise.resolve();
      signalChild(c, 'SIGKILL');
      await exited;
      env.children.delete(c);
    }
    if (overlay) {
      try {
        ipNs(env, 'link', 'del', VXLAN_DEV);
      } catch {
        // Not made (the run failed before), or gone with the TAP it was bound to.
      }
    }
    await guest.stop();
  }
}
