// The benchmark's real-guest case: the Linux test guest (host/linux-guest)
// under QEMU, booted once per round for each network back end — vhost-tap over
// vhost-user (a VhostUserServer in this process), QEMU's own `-netdev tap`, and
// `tap,vhost=on` (the kernel's vhost-net) where /dev/vhost-net exists — with
// the same guest, vCPUs and NIC. Each round moves TCP payload host → guest and
// guest → host (the host end in the bench namespace) and measures Mbps and the
// host CPU each byte cost: the QEMU process (its vCPU threads run the guest
// under TCG, its I/O thread runs the tap back end) plus the back end's own
// threads (vhost-tap's engine workers; vhost-net's kernel workers).

import * as fs from 'node:fs';

import { VhostUserServer } from '../backend';
import { addQemuTap, guestToHost, hostToGuest } from '../host/linux-guest/host';
import { buildGuestImage, GuestImage } from '../host/linux-guest/initramfs';
import { LinuxGuest } from '../host/linux-guest/qemu';
import { cpuOf, Env, ipNs, tids } from './contenders';

export type GuestBackend = 'vhost-tap' | 'tap' | 'vhost-net';
export const GUEST_BACKENDS: GuestBackend[] = ['vhost-tap', 'tap', 'vhost-net'];
export const GUEST_BACKEND_NAMES: Record<GuestBackend, string> = {
  'vhost-tap': 'vhost-tap (vhost-user)',
  tap: 'QEMU -netdev tap',
  'vhost-net': 'QEMU tap,vhost=on',
};

export type GuestDir = 'h2g' | 'g2h';

export interface GuestSample {
  dir: GuestDir;
  /** TCP payload moved (what the host peer sent or received). */
  bytes: number;
  /** From the host peer's connect to the end of the transfer. */
  wallNs: number;
  mbps: number;
  /** CPU of the QEMU process in the transfer (vCPU threads = the guest under TCG; the tap back end's I/O). */
  qemuCpuNs: number;
  /** CPU of the back end's own threads in the transfer (vhost-tap's workers, vhost-net's kernel workers; 0 for QEMU's tap). */
  backendCpuNs: number;
  /** Whether what arrived equals what was sent (SHA-256 on both ends). */
  intact: boolean;
  bootMs: number;
}

/** Each back end's TAP gets its own subnet: they share the bench namespace. */
const SUBNET: Record<GuestBackend, string> = { 'vhost-tap': '10.203.25', tap: '10.203.26', 'vhost-net': '10.203.27' };
const TRANSFER_TIMEOUT_MS = 900_000;
const BOOT_TIMEOUT_MS = 300_000;
/** Guest vCPUs: the measurements used 2; every back end gets the same guest. */
const GUEST_CPUS = 2;

/** Why a back end cannot run here, or null when it can. */
export function guestBackendUnavailable(b: GuestBackend): string | null {
  if (b === 'vhost-net' && !fs.existsSync('/dev/vhost-net')) return '/dev/vhost-net does not exist on this machine (modprobe vhost_net), so QEMU cannot use the kernel\'s vhost-net';
  return null;
}

/** user + system CPU of a process or thread, ns (clock ticks of 10 ms). */
function statCpuNs(path: string): number {
  try {
    const f = fs.readFileSync(path, 'utf8').split(') ')[1].split(' ');
    return (Number(f[11]) + Number(f[12])) * 1e7;
  } catch {
    return 0;
  }
}

/**
 * vhost-net's workers for QEMU `pid`: kernel threads named vhost-PID (before Linux 6.4 they
 * are not QEMU's threads, so its own /proc/PID/stat does not count them).
 */
function vhostWorkers(pid: number): number[] {
  const own = new Set(fs.readdirSync(`/proc/${pid}/task`).map(Number));
  const out: number[] = [];
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d) || own.has(Number(d))) continue;
    try {
      if (fs.readFileSync(`/proc/${d}/comm`, 'utf8').trim() === `vhost-${pid}`) out.push(Number(d));
    } catch {
      // Gone meanwhile.
    }
  }
  return out;
}

function comm(tid: number): string {
  try {
    return fs.readFileSync(`/proc/self/task/${tid}/comm`, 'utf8').trim();
  } catch {
    return '';
  }
}

/** One back end prepared in the bench namespace for the whole run (rounds reuse it). */
export interface GuestRig {
  backend: GuestBackend;
  /** Namespace of the host end of the transfers. */
  ns: string;
  host4: string;
  guest4: string;
  /** Boots a guest networked by this back end. */
  boot(image: GuestImage): Promise<LinuxGuest>;
  /** CPU of the back end's own threads now (ns). */
  backendCpuNs(guest: LinuxGuest): number;
  close(): Promise<void>;
}

export function makeGuestRig(env: Env, backend: GuestBackend, queues: number): GuestRig {
  const host4 = `${SUBNET[backend]}.1`;
  const guest4 = `${SUBNET[backend]}.2`;
  const common = { cpus: GUEST_CPUS, ip4: `${guest4}/24`, bootTimeoutMs: BOOT_TIMEOUT_MS };
  if (backend === 'vhost-tap') {
    const tap = `${env.tap.slice(0, 14)}u`;
    const socket = `/tmp/vt-bench-${process.pid}.sock`;
    const before = tids();
    const server = new VhostUserServer({ socket, tap, netns: env.ns, queuePairs: queues });
    ipNs(env, 'addr', 'add', `${host4}/24`, 'dev', tap);
    return {
      backend,
      ns: env.ns,
      host4,
      guest4,
      boot: (image) => LinuxGuest.boot({ ...common, image, netdev: { kind: 'vhost-user', socket, queues } }),
      // Engine workers name themselves vt-pair<p>; they are this process's threads.
      backendCpuNs: () => cpuOf([...tids()].filter((t) => !before.has(t) && comm(t).startsWith('vt-pair'))),
      close: () => server.close(),
    };
  }
  const tap = `${env.tap.slice(0, 14)}${backend === 'tap' ? 'q' : 'k'}`;
  addQemuTap(env.ns, tap, queues, [`${host4}/24`]);
  return {
    backend,
    ns: env.ns,
    host4,
    guest4,
    boot: (image) => LinuxGuest.boot({ ...common, image, netns: env.ns, netdev: { kind: 'tap', ifname: tap, queues, vhost: backend === 'vhost-net' } }),
    backendCpuNs: (g) => vhostWorkers(g.pid).reduce((s, t) => s + statCpuNs(`/proc/${t}/stat`), 0),
    close: async () => {
      ipNs(env, 'link', 'del', tap);
    },
  };
}

/** Boots a guest on `rig`, moves `bytes` each way, powers it off; one sample per direction. */
export async function runGuestRound(rig: GuestRig, image: GuestImage, bytes: number, port: number): Promise<GuestSample[]> {
  const g = await rig.boot(image);
  try {
    const out: GuestSample[] = [];
    for (const dir of ['h2g', 'g2h'] as GuestDir[]) {
      // The engine threads of a vhost-user session exist once the guest driver is up.
      const q0 = statCpuNs(`/proc/${g.pid}/stat`);
      const b0 = rig.backendCpuNs(g);
      const r =
        dir === 'h2g'
          ? await hostToGuest(g, rig.ns, rig.guest4, port, bytes, TRANSFER_TIMEOUT_MS).catch(rethrowIn(g))
          : await guestToHost(g, rig.ns, rig.host4, port + 1, bytes, TRANSFER_TIMEOUT_MS).catch(rethrowIn(g));
      const q1 = statCpuNs(`/proc/${g.pid}/stat`);
      const b1 = rig.backendCpuNs(g);
      out.push({
        dir,
        bytes: r.bytes,
        wallNs: r.ms * 1e6,
        mbps: r.mbps,
        qemuCpuNs: q1 - q0,
        backendCpuNs: b1 - b0,
        intact: r.hostSha256 === r.guestSha256,
        bootMs: g.bootMs,
      });
    }
    return out;
  } finally {
    await g.kill();
  }
}

function rethrowIn(g: LinuxGuest): (e: Error) => never {
  return (e) => {
    throw new Error(`${e.message} ${g.describe()}`);
  };
}

export { buildGuestImage };
