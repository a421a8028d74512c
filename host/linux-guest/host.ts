// The host side of talking to the guest over its network: ping from a
// namespace, and TCP transfers both ways with the pattern (tcp-peer.ts runs
// in the namespace as a child process; every child is ended by pid).

import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import * as path from 'node:path';

import { patternSha256 } from './pattern';
import { LinuxGuest } from './qemu';

export interface PingResult {
  transmitted: number;
  received: number;
  lossPct: number;
  avgMs: number;
  output: string;
}

export interface TransferResult {
  /** Bytes the host sent (h2g) or received (g2h). */
  bytes: number;
  /** SHA-256 of what the host sent or received. */
  hostSha256: string;
  /** SHA-256 of what the guest received (h2g) or of what it was told to send (g2h, the pattern). */
  guestSha256: string;
  ms: number;
  mbps: number;
}

/** The host end of a transfer (tcp-peer.ts, compiled), run with node inside the namespace. */
export const PEER = path.join(__dirname, 'tcp-peer.js');

function inNs(ns: string | undefined, cmd: string, args: string[]): [string, string[]] {
  return ns ? ['ip', ['netns', 'exec', ns, cmd, ...args]] : [cmd, args];
}

/** Options of a transfer: `signal` ends the host peer (SIGKILL by pid) early, e.g. when the guest was killed. */
export interface TransferOptions {
  signal?: AbortSignal;
}

/** Runs a child to its end (SIGKILL by pid after `timeoutMs`, or when `signal` aborts). */
export function runChild(
  ns: string | undefined,
  cmd: string,
  args: string[],
  timeoutMs: number,
  onStdout?: (s: string, child: ChildProcess) => void,
  signal?: AbortSignal,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const [c, a] = inNs(ns, cmd, args);
  const child = spawn(c, a, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  const killer = (): void => {
    if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
      try {
        process.kill(child.pid, 'SIGKILL');
      } catch {
        // Gone already.
      }
    }
  };
  process.once('exit', killer);
  child.stdout!.on('data', (d) => {
    stdout += d;
    onStdout?.(stdout, child);
  });
  child.stderr!.on('data', (d) => (stderr += d));
  const timer = setTimeout(killer, timeoutMs);
  signal?.addEventListener('abort', killer);
  if (signal?.aborted) killer();
  return new Promise((resolve) => {
    child.once('close', (code) => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', killer);
      process.removeListener('exit', killer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** `ping` (or `ping -6`) from namespace `ns`; never throws for loss, only when ping cannot run. */
export async function ping(ns: string | undefined, addr: string, count = 100, intervalS = 0.02): Promise<PingResult> {
  const args = [...(addr.includes(':') ? ['-6'] : []), '-c', String(count), '-i', String(intervalS), '-W', '2', '-q', addr];
  const r = await runChild(ns, 'ping', args, 60_000 + count * 1000 * Math.max(intervalS, 0.2));
  const m = r.stdout.match(/(\d+) packets transmitted, (\d+) (?:packets )?received/);
  if (!m) throw new Error(`ping ${addr} gave no summary (exit ${r.code}): ${r.stdout}${r.stderr}`);
  const rtt = r.stdout.match(/= [\d.]+\/([\d.]+)\//);
  const transmitted = Number(m[1]);
  const received = Number(m[2]);
  return { transmitted, received, lossPct: (100 * (transmitted - received)) / transmitted, avgMs: rtt ? Number(rtt[1]) : NaN, output: r.stdout };
}

/**
 * Waits (bounded) until `addr` answers one ping from `ns`: a guest that just booted, or that
 * took over an address another guest had, is reachable once neighbour resolution catches up.
 * Returns whether it answered within `tries` seconds.
 */
export async function waitReachable(ns: string | undefined, addr: string, tries = 20): Promise<boolean> {
  for (let i = 0; i < tries; i++) {
    const r = await runChild(ns, 'ping', [...(addr.includes(':') ? ['-6'] : []), '-c', '1', '-W', '1', '-q', addr], 10_000);
    if (r.code === 0) return true;
  }
  return false;
}

/** The JSON line tcp-peer prints, or an Error saying how it failed. */
export function parsePeer(r: { code: number | null; stdout: string; stderr: string }, what: string): { bytes: number; sha256: string; ms: number } {
  const line = r.stdout.split('\n').find((l) => l.startsWith('{'));
  if (r.code !== 0 || !line) throw new Error(`${what}: tcp-peer exited ${r.code}: ${r.stderr.trim()} ${r.stdout.trim()}`);
  return JSON.parse(line) as { bytes: number; sha256: string; ms: number };
}

/** Host → guest: the guest sinks on `port`, the host (in `ns`) sends `bytes` of the pattern to guestAddr. */
export async function hostToGuest(
  guest: LinuxGuest,
  ns: string | undefined,
  guestAddr: string,
  port: number,
  bytes: number,
  timeoutMs: number,
  opts: TransferOptions = {},
): Promise<TransferResult> {
  const tag = `h2g${port}`;
  const sink = await guest.sink(port, tag, timeoutMs);
  const run = await runChild(ns, process.execPath, [PEER, 'send', guestAddr, String(port), String(bytes)], timeoutMs, undefined, opts.signal);
  const peer = parsePeer(run, `host → guest ${guestAddr}:${port}`);
  const g = await sink.done;
  return { bytes: peer.bytes, hostSha256: peer.sha256, guestSha256: g, ms: peer.ms, mbps: (peer.bytes * 8) / peer.ms / 1000 };
}

/**
 * Guest → host: the host (in `ns`) listens on `port`, the guest sends `bytes` of the pattern to
 * hostAddr (from guest CPU `cpu` when given: its driver's XPS picks that CPU's TX queue).
 */
export async function guestToHost(
  guest: LinuxGuest,
  ns: string | undefined,
  hostAddr: string,
  port: number,
  bytes: number,
  timeoutMs: number,
  opts: TransferOptions & { cpu?: number } = {},
): Promise<TransferResult> {
  const tag = `g2h${port}`;
  let listening!: () => void;
  const isListening = new Promise<void>((r) => (listening = r));
  const peerRun = runChild(
    ns,
    process.execPath,
    [PEER, 'recv', String(port)],
    timeoutMs,
    (out) => {
      if (out.includes('listening\n')) listening();
    },
    opts.signal,
  );
  await Promise.race([isListening, peerRun.then((r) => Promise.reject(new Error(`tcp-peer recv exited early (${r.code}): ${r.stderr}`)))]);
  const source = await guest.source(hostAddr, port, bytes, tag, timeoutMs, opts.cpu);
  const peer = parsePeer(await peerRun, `guest → host ${hostAddr}:${port}`);
  const rc = await source.done;
  if (rc !== 0) throw new Error(`guest nc exited ${rc} sending to ${hostAddr}:${port}`);
  return { bytes: peer.bytes, hostSha256: peer.sha256, guestSha256: patternSha256(bytes), ms: peer.ms, mbps: (peer.bytes * 8) / peer.ms / 1000 };
}

/**
 * Creates TAP `name` in namespace `ns` the way QEMU's tap netdev opens it (IFF_TAP|IFF_NO_PI|
 * IFF_VNET_HDR, plus IFF_MULTI_QUEUE for several queues), with host addresses, up; QEMU then
 * attaches to it. The TAP goes when the namespace is deleted.
 */
export function addQemuTap(ns: string, name: string, queues: number, addrs: string[]): void {
  const ip = (...a: string[]): void => void execFileSync('ip', ['-n', ns, ...a], { stdio: ['ignore', 'ignore', 'pipe'] });
  ip('tuntap', 'add', 'dev', name, 'mode', 'tap', 'vnet_hdr', ...(queues > 1 ? ['multi_queue'] : []));
  for (const a of addrs) ip(...(a.includes(':') ? ['-6', 'addr', 'add', a, 'dev', name, 'nodad'] : ['addr', 'add', a, 'dev', name]));
  ip('link', 'set', name, 'up');
}
