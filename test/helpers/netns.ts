// Throw-away network namespaces for tests that need real TAP devices.
// Every namespace is named 'vt' + a suffix unique to this process, and
// withNetns() deletes it whatever the test does, so nothing a test creates
// can outlive it or reach the host's own (root) namespace. Needs root.

import { execFileSync, type ExecFileSyncOptions } from 'node:child_process';
import * as fs from 'node:fs';

const NETNS_DIR = '/run/netns';

/** Linux interface names hold at most IFNAMSIZ - 1 = 15 bytes. */
export const MAX_IFNAME = 15;

let counter = 0;

/**
 * Throws unless the process can create namespaces and TAPs. Tests that need
 * this must fail, not skip, when it is missing: CI runs them as root.
 */
export function requireRoot(): void {
  if (typeof process.getuid === 'function' && process.getuid() !== 0) {
    throw new Error(
      'these tests create network namespaces and TAP devices and need root (CAP_NET_ADMIN, CAP_SYS_ADMIN): ' +
        'run them as root, e.g. `sudo npx ava ...` (CI runs as root)',
    );
  }
}

/** A fresh 'vt…' namespace name: pid and counter in base 36 plus two random characters (≤ 12 bytes). */
export function uniqueNetnsName(): string {
  const rnd = Math.floor(Math.random() * 36 * 36)
    .toString(36)
    .padStart(2, '0');
  return `vt${process.pid.toString(36)}${(counter++).toString(36)}${rnd}`;
}

export interface Netns {
  /** Namespace name as `ip netns` knows it. */
  readonly name: string;
  /** Path to pass as `netnsPath`: /run/netns/NAME. */
  readonly path: string;
  /** `ip -n NAME ...args`; returns stdout. */
  ip(...args: string[]): string;
  /** `ip -n NAME -j ...args`, parsed. */
  ipJson<T = unknown>(...args: string[]): T;
  /** Runs `cmd args` inside the namespace (`ip netns exec`); returns stdout. */
  exec(cmd: string, args: string[], opts?: ExecFileSyncOptions): string;
  /** A new interface name for this namespace, 'vt…', at most 15 bytes, unique in this process. */
  ifname(): string;
  /** Registers cleanup (e.g. closing TAP fds) run, last first, before the namespace is deleted. */
  defer(fn: () => void): void;
}

function run(cmd: string, args: string[], opts: ExecFileSyncOptions = {}): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], ...opts }) as string;
}

/** Creates a namespace with its loopback up. Prefer withNetns(), which also deletes it. */
export function createNetns(name: string = uniqueNetnsName()): Netns & { cleanup(): void } {
  if (!/^vt[a-z0-9]+$/.test(name)) throw new Error(`test namespaces are named 'vt' + [a-z0-9]: got '${name}'`);
  run('ip', ['netns', 'add', name]);
  const deferred: Array<() => void> = [];
  let ifCounter = 0;
  const ns = {
    name,
    path: `${NETNS_DIR}/${name}`,
    ip: (...args: string[]) => run('ip', ['-n', name, ...args]),
    ipJson: <T>(...args: string[]) => JSON.parse(run('ip', ['-n', name, '-j', ...args])) as T,
    exec: (cmd: string, args: string[], opts?: ExecFileSyncOptions) =>
      run('ip', ['netns', 'exec', name, cmd, ...args], opts),
    ifname: () => {
      const s = `${name}i${(ifCounter++).toString(36)}`;
      // Long pids can push ns-derived names over the limit; keep the unique tail.
      return s.length <= MAX_IFNAME ? s : `vt${s.slice(s.length - (MAX_IFNAME - 2))}`;
    },
    defer: (fn: () => void) => {
      deferred.push(fn);
    },
    cleanup: () => {
      const errors: unknown[] = [];
      while (deferred.length > 0) {
        try {
          deferred.pop()!();
        } catch (e) {
          errors.push(e);
        }
      }
      deleteNetns(name);
      if (errors.length > 0) throw errors[0];
    },
  };
  try {
    ns.ip('link', 'set', 'lo', 'up');
  } catch (e) {
    deleteNetns(name);
    throw e;
  }
  return ns;
}

/** Deletes a namespace if it exists. Non-persistent TAPs in it go when their last fd closes. */
export function deleteNetns(name: string): void {
  if (!fs.existsSync(`${NETNS_DIR}/${name}`)) return;
  run('ip', ['netns', 'del', name]);
}

/**
 * Runs `fn` with a new namespace and deletes the namespace afterwards, on
 * success or failure, after running what `fn` registered with `ns.defer`.
 */
export async function withNetns<T>(fn: (ns: Netns) => Promise<T> | T): Promise<T> {
  requireRoot();
  const ns = createNetns();
  let failed = true;
  try {
    const out = await fn(ns);
    failed = false;
    return out;
  } finally {
    try {
      ns.cleanup();
    } catch (e) {
      // A cleanup error must not hide the test's own failure.
      if (!failed) throw e;
    }
  }
}

/**
 * The 'net:[inode]' identity of a namespace file (/run/netns/NAME is a bind
 * mount of an nsfs inode, not a symlink), comparable with currentNetns().
 */
export function netnsId(path: string): string {
  return `net:[${fs.statSync(path).ino}]`;
}
