// Live migration of the test guest between two QEMUs on this host, each on
// its own network back end (QEMU's own TAP code, or a vhost-user socket), the
// way an operator moves a VM: the destination QEMU waits with `-incoming`,
// the source is told `migrate` over QMP, `query-migrate` is polled until it
// completes. Both back ends' TAPs sit in one bridge inside the test's
// namespace, the host's address on the bridge, so the guest keeps its address
// wherever it runs. Also: a TCP transfer that outlives the QEMU it started
// on, and a ping that measures the longest gap in the guest's answers (what
// the host saw of the downtime).
//
// QEMU 7.2 under TCG migrated reliably here only with 1 vCPU and -cpu qemu64
// (with -smp 2 or -cpu max the guest's memory arrived corrupted, even with
// QEMU's own tap back end): MIGRATION_GUEST holds those settings.

import { ChildProcess, spawn } from 'node:child_process';
import { execFileSync } from 'node:child_process';

import { parsePeer, PEER, runChild } from './host';
import { GuestImage } from './initramfs';
import { MARK } from './init';
import { Qmp } from './qmp';
import { BootOptions, LinuxGuest, Netdev } from './qemu';

/** The guest settings with which TCG migration is sound (see the file comment). */
export const MIGRATION_GUEST = { cpus: 1, cpuModel: 'qemu64', memMiB: 256 } as const;

/** QEMU's own default (32 MiB/s in 7.2) would make a 256 MiB guest take seconds per pass; the stream is a local socket. */
const MIGRATE_MAX_BANDWIDTH = 4 * 1024 * 1024 * 1024;
const QUERY_MIGRATE_STEP_MS = 100;
/**
 * The console command that stops or resumes the guest's reader. Generous: once, under load 20
 * on 2 cores, the guest just resumed on the destination did not answer it within 30 s.
 */
const PAUSE_COMMAND_TIMEOUT_MS = 120_000;

/** One running QEMU of the migrating guest and its monitor. */
export interface GuestInstance {
  guest: LinuxGuest;
  qmp: Qmp;
  netdev: Netdev;
}

/** What both QEMUs share: they must be started with identical devices and memory. */
export interface MigratingGuestOptions extends Omit<BootOptions, 'netdev' | 'qmp' | 'incoming' | 'netns'> {
  image: GuestImage;
  mac: string;
}

/** Where one QEMU's network back end is: a netdev and, for a tap netdev, the namespace QEMU must run in to open it. */
export interface Site {
  netdev: Netdev;
  netns?: string;
}

let qmpCounter = 0;
const qmpPath = (): string => `/tmp/vt-qmp-${process.pid}-${qmpCounter++}.sock`;

/** Boots the guest on `site` with a QMP monitor. */
export async function bootOn(site: Site, opts: MigratingGuestOptions): Promise<GuestInstance> {
  const qmp = qmpPath();
  const guest = await LinuxGuest.boot({ ...MIGRATION_GUEST, ...opts, netdev: site.netdev, netns: site.netns, qmp });
  try {
    return { guest, qmp: await Qmp.connect(qmp), netdev: site.netdev };
  } catch (e) {
    await guest.kill();
    throw e;
  }
}

/** Starts a QEMU on `site` that waits for the guest on `incoming` (e.g. unix:/tmp/x.sock). */
export async function incomingOn(site: Site, opts: MigratingGuestOptions, incoming: string): Promise<GuestInstance> {
  const qmp = qmpPath();
  const guest = LinuxGuest.incoming({ ...MIGRATION_GUEST, ...opts, netdev: site.netdev, netns: site.netns, qmp, incoming });
  try {
    const q = await Qmp.connect(qmp);
    return { guest, qmp: q, netdev: site.netdev };
  } catch (e) {
    await guest.kill();
    throw e;
  }
}

export interface MigrationResult {
  /** QEMU's own figure: how long the guest was stopped (query-migrate "downtime"). */
  downtimeMs: number;
  /** From `migrate` to "completed" (query-migrate "total-time"). */
  totalMs: number;
  /** RAM passes, pages sent, dirty rate as QEMU reported them. */
  ram: Record<string, unknown>;
}

export class MigrationError extends Error {}

/**
 * Migrates the guest from `src` to `dst` over `uri` (which `dst` was started to listen on) and
 * waits until the destination runs it. The source QEMU is left paused; the caller ends it.
 */
export interface MigrateOptions {
  /** Bytes per second the stream may use (QEMU's max-bandwidth); default MIGRATE_MAX_BANDWIDTH. */
  maxBandwidth?: number;
  /** Called once, while the guest still runs on the source, when the first pass has gone through half of its RAM. */
  halfway?: () => Promise<void>;
  timeoutMs?: number;
}

export async function migrate(src: GuestInstance, dst: GuestInstance, uri: string, o: MigrateOptions = {}): Promise<MigrationResult> {
  const timeoutMs = o.timeoutMs ?? 300_000;
  await src.qmp.execute('migrate-set-parameters', { 'max-bandwidth': o.maxBandwidth ?? MIGRATE_MAX_BANDWIDTH });
  await src.qmp.execute('migrate', { uri });
  const deadline = Date.now() + timeoutMs;
  let halfway = o.halfway;
  for (;;) {
    const r = await src.qmp.execute<{ status: string; 'error-desc'?: string; downtime?: number; 'total-time'?: number; ram?: Record<string, unknown> }>('query-migrate');
    const ram = r.ram as { remaining?: number; total?: number } | undefined;
    // "remaining": what the current pass has still to go through (zero pages included).
    if (halfway && r.status === 'active' && ram?.remaining !== undefined && ram.total !== undefined && ram.remaining <= ram.total / 2) {
      const h = halfway;
      halfway = undefined;
      await h();
    }
    if (r.status === 'completed') {
      await waitRunning(dst, Math.max(10_000, deadline - Date.now()));
      return { downtimeMs: r.downtime ?? NaN, totalMs: r['total-time'] ?? NaN, ram: r.ram ?? {} };
    }
    if (r.status === 'failed' || r.status === 'cancelled') {
      throw new MigrationError(`migration ${r.status}: ${r['error-desc'] ?? '(no reason given)'}${src.guest.describe()}${dst.guest.describe()}`);
    }
    if (Date.now() > deadline) throw new MigrationError(`migration still '${r.status}' after ${timeoutMs} ms: ${JSON.stringify(r)}`);
    await new Promise((res) => setTimeout(res, QUERY_MIGRATE_STEP_MS));
  }
}

async function waitRunning(g: GuestInstance, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const s = await g.qmp.execute<{ status: string; running: boolean }>('query-status');
    if (s.running) return;
    if (Date.now() > deadline) throw new MigrationError(`the destination is '${s.status}', not running, ${timeoutMs} ms after the migration completed${g.guest.describe()}`);
    await new Promise((res) => setTimeout(res, QUERY_MIGRATE_STEP_MS));
  }
}

/** Ends a QEMU of the guest (the source after a migration): QMP first, then the process by pid. */
export async function stop(g: GuestInstance): Promise<void> {
  g.qmp.close();
  await g.guest.kill();
}

/**
 * A bridge `name` in namespace `ns` with the host's addresses on it, up; returns a function that
 * makes an interface of the namespace one of its ports.
 */
export function makeBridge(ns: string, name: string, addrs: string[]): (port: string) => void {
  const ip = (...a: string[]): void => void execFileSync('ip', ['-n', ns, ...a], { stdio: ['ignore', 'ignore', 'pipe'] });
  ip('link', 'add', name, 'type', 'bridge');
  for (const a of addrs) ip(...(a.includes(':') ? ['-6', 'addr', 'add', a, 'dev', name, 'nodad'] : ['addr', 'add', a, 'dev', name]));
  ip('link', 'set', name, 'up');
  return (port) => {
    ip('link', 'set', port, 'master', name);
    ip('link', 'set', port, 'up');
  };
}

/** A host → guest transfer whose guest end may finish on another QEMU than the one it started on. */
export interface MovingTransfer {
  tag: string;
  /** The host end: bytes sent and their SHA-256. */
  host: Promise<{ bytes: number; sha256: string; ms: number }>;
  /** The SHA-256 the guest's sink printed, read from the console of whichever QEMU runs the guest at the end. */
  guestOn(g: LinuxGuest, timeoutMs: number): Promise<string>;
  /**
   * Stops (SIGSTOP) or resumes the program that reads the sink's data in the guest `g`: while it
   * is stopped, what arrives waits in the guest's socket receive queue — in the RX buffers the
   * device wrote (their pages are the skbs' fragments), up to the receive window.
   */
  pauseReader(g: LinuxGuest, paused: boolean): Promise<void>;
}

/** Starts the guest's sink on `guest` and the host's sender in `ns`; returns at once. */
export async function startHostToGuest(guest: LinuxGuest, ns: string, addr: string, port: number, bytes: number, timeoutMs: number): Promise<MovingTransfer> {
  const tag = `mig${port}`;
  await guest.check(`vt_sink ${port} ${tag}`);
  const host = runChild(ns, process.execPath, [PEER, 'send', addr, String(port), String(bytes)], timeoutMs).then((r) => parsePeer(r, `host → guest ${addr}:${port}`));
  host.catch(() => undefined);
  return {
    tag,
    host,
    guestOn: async (g, ms) => (await g.waitFor((l) => l.startsWith(`${MARK.SINK} ${tag} `), ms, `TCP sink '${tag}' to finish`, true)).split(/\s+/)[2],
    // One sink runs at a time, so sha256sum names its reader.
    pauseReader: async (g, paused) => void (await g.check(`kill -${paused ? 'STOP' : 'CONT'} $(pidof sha256sum)`, PAUSE_COMMAND_TIMEOUT_MS)),
  };
}

/** Replies of a ping that runs across a migration, and the longest silence between two of them. */
export interface PingGap {
  transmitted: number;
  received: number;
  /** Longest time between two consecutive replies (ms): what the host saw of the downtime. */
  longestGapMs: number;
}

/**
 * Pings `addr` from `ns` every `intervalMs` until the returned function is called; that
 * function ends ping (SIGINT, by pid) and reports the longest gap between replies.
 */
export function pingAcross(ns: string, addr: string, intervalMs = 20): () => Promise<PingGap> {
  const child: ChildProcess = spawn('ip', ['netns', 'exec', ns, 'ping', '-D', '-n', '-i', String(intervalMs / 1000), '-W', '1', addr], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.setEncoding('utf8');
  child.stdout!.on('data', (d: string) => (out += d));
  const closed = new Promise<void>((r) => child.once('close', () => r()));
  const killer = (): void => {
    if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) process.kill(child.pid, 'SIGKILL');
  };
  process.once('exit', killer);
  return async () => {
    if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) process.kill(child.pid, 'SIGINT');
    const t = setTimeout(killer, 5000);
    await closed;
    clearTimeout(t);
    process.removeListener('exit', killer);
    const times = [...out.matchAll(/^\[(\d+\.\d+)\] \d+ bytes from .* icmp_seq=\d+/gm)].map((m) => Number(m[1]) * 1000);
    let gap = 0;
    for (let i = 1; i < times.length; i++) gap = Math.max(gap, times[i] - times[i - 1]);
    const m = out.match(/(\d+) packets transmitted, (\d+) (?:packets )?received/);
    return { transmitted: m ? Number(m[1]) : NaN, received: m ? Number(m[2]) : times.length, longestGapMs: gap };
  };
}
