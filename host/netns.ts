// Throw-away network namespaces on the host, for the CLI (demo, gso-check,
// bench) and the tests alike: create one named 'vt' + something unique, run
// `ip` and programs inside it, and delete it when done, on failure, or when
// the process exits. Never touches the root namespace's interfaces.

import { execFileSync, spawnSync, type ExecFileSyncOptions } from 'node:child_process';
import * as fs from 'node:fs';

const NETNS_DIR = '/run/netns';

/** Linux interface names hold at most IFNAMSIZ - 1 = 15 bytes. */
export const MAX_IFNAME = 15;

/** Thrown when the process lacks what creating namespaces and TAPs takes. The message is one line. */
export class NeedsRootError extends Error {
  override name = 'NeedsRootError';
}

/** Capabilities the host-side work needs: creating TAPs and veths, and entering or creating namespaces. */
export type Capability = 'CAP_NET_ADMIN' | 'CAP_SYS_ADMIN';

const CAP_BITS: Record<Capability, bigint> = { CAP_NET_ADMIN: 12n, CAP_SYS_ADMIN: 21n };

/** The capabilities of `caps` this process does not have in its effective set (/proc/self/status CapEff). */
export function missingCapabilities(caps: readonly Capability[]): Capability[] {
  let eff = 0n;
  try {
    const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(fs.readFileSync('/proc/self/status', 'utf8'));
    if (m) eff = BigInt(`0x${m[1]}`);
  } catch {
    // No /proc: say everything is missing rather than fail later with a raw EPERM.
  }
  return caps.filter((c) => ((eff >> CAP_BITS[c]) & 1n) === 0n);
}

/** Whether this process has what creating namespaces and TAPs takes (root, or both capabilities). */
export function isRoot(): boolean {
  return missingCapabilities(['CAP_NET_ADMIN', 'CAP_SYS_ADMIN']).length === 0;
}

/**
 * Throws NeedsRootError, one line saying what needs what, unless the process has `caps`.
 * `what` names the work, e.g. "vhost-tap demo creates a network namespace and a TAP". Tests
 * that need it must fail, not skip, when it is missing: CI runs them as root.
 */
export function requireRoot(what = 'this creates network namespaces and TAP devices', caps: readonly Capability[] = ['CAP_NET_ADMIN', 'CAP_SYS_ADMIN']): void {
  const missing = missingCapabilities(caps);
  if (missing.length > 0) throw new NeedsRootError(`${what}, which needs ${caps.join(' and ')}: run it as root, e.g. with sudo`);
}

/** Namespaces this process created and has not deleted yet: one exit hook deletes them all. */
const live = new Set<Netns>();
let hooked = false;
let counter = 0;

/** The result of a command run with Netns.run(). */
export interface RunResult {
  status: number;
  stdout: string;
  stderr: string;
}

export class Netns {
  /** Path of the namespace file, e.g. for `netnsPath`: /run/netns/NAME. */
  readonly path: string;
  private deleted = false;
  private readonly deferred: (() => void)[] = [];
  private ifCounter = 0;

  private constructor(readonly name: string) {
    this.path = `${NETNS_DIR}/${name}`;
  }

  /**
   * Creates `vt<tag><pid><n><rr>` (pid and a per-process counter in base 36, two random
   * characters) with its loopback up. It is deleted by delete(), or when the process exits.
   */
  static create(tag = ''): Netns {
    if (!/^[A-Za-z0-9]*$/.test(tag)) throw new Error(`namespace tag must be letters and digits, got '${tag}'`);
    const rnd = Math.floor(Math.random() * 36 * 36)
      .toString(36)
      .padStart(2, '0');
    const name = `vt${tag}${process.pid.toString(36)}${(counter++).toString(36)}${rnd}`;
    if (name.length > MAX_IFNAME) throw new Error(`namespace name '${name}' is longer than ${MAX_IFNAME} bytes: use a shorter tag`);
    run('ip', ['netns', 'add', name]);
    const ns = new Netns(name);
    live.add(ns);
    if (!hooked) {
      hooked = true;
      process.on('exit', () => {
        for (const n of [...live]) n.delete();
      });
    }
    try {
      ns.ip('link', 'set', 'lo', 'up');
    } catch (e) {
      ns.delete();
      throw e;
    }
    return ns;
  }

  static exists(name: string): boolean {
    return fs.existsSync(`${NETNS_DIR}/${name}`);
  }

  /** `ip -n NAME ...args`; returns stdout, throws on failure. */
  ip(...args: string[]): string {
    return run('ip', ['-n', this.name, ...args]);
  }

  /** `ip -n NAME -j ...args`, parsed. */
  ipJson<T = unknown>(...args: string[]): T {
    return JSON.parse(this.ip('-j', ...args)) as T;
  }

  /** Runs `cmd args` inside the namespace (`ip netns exec`); returns stdout, throws on a non-zero exit. */
  exec(cmd: string, args: string[], opts?: ExecFileSyncOptions): string {
    return run('ip', ['netns', 'exec', this.name, cmd, ...args], opts);
  }

  /** Runs `cmd args` inside the namespace; returns its exit status and output, never throws on failure. */
  run(cmd: string, args: string[], timeoutMs = 60_000): RunResult {
    const r = spawnSync('ip', ['netns', 'exec', this.name, cmd, ...args], { encoding: 'utf8', timeout: timeoutMs });
    return { status: r.status ?? -1, stdout: r.stdout ?? '', stderr: (r.stderr ?? '') + (r.error ? String(r.error) : '') };
  }

  /** A new interface name for this namespace, 'vt…', at most 15 bytes, unique in this process. */
  ifname(): string {
    const s = `${this.name}i${(this.ifCounter++).toString(36)}`;
    // Long pids can push namespace-derived names over the limit; keep the unique tail.
    return s.length <= MAX_IFNAME ? s : `vt${s.slice(s.length - (MAX_IFNAME - 2))}`;
  }

  /** Registers cleanup (e.g. closing TAP fds) run, last first, before the namespace is deleted. */
  defer(fn: () => void): void {
    this.deferred.push(fn);
  }

  /**
   * Runs what defer() registered, then deletes the namespace (TAPs in it go when their last fd
   * closes). Idempotent and synchronous, so it can run from 'exit' or a signal handler. Throws the
   * first error a deferred function threw, after deleting.
   */
  delete(): void {
    if (this.deleted) return;
    this.deleted = true;
    live.delete(this);
    const errors: unknown[] = [];
    while (this.deferred.length > 0) {
      try {
        this.deferred.pop()!();
      } catch (e) {
        errors.push(e);
      }
    }
    if (fs.existsSync(this.path)) {
      try {
        run('ip', ['netns', 'del', this.name]);
      } catch {
        // Already gone (another cleanup path won the race).
      }
    }
    if (errors.length > 0) throw errors[0];
  }
}

/**
 * Runs `fn` with a new namespace and deletes the namespace afterwards, on success or failure,
 * after running what `fn` registered with `ns.defer`.
 */
export async function withNetns<T>(fn: (ns: Netns) => Promise<T> | T): Promise<T> {
  requireRoot();
  const ns = Netns.create();
  let failed = true;
  try {
    const out = await fn(ns);
    failed = false;
    return out;
  } finally {
    try {
      ns.delete();
    } catch (e) {
      // A cleanup error must not hide the caller's own failure.
      if (!failed) throw e;
    }
  }
}

/**
 * The 'net:[inode]' identity of a namespace file (/run/netns/NAME is a bind mount of an nsfs
 * inode, not a symlink), comparable with what /proc/thread-self/ns/net reads.
 */
export function netnsId(path: string): string {
  return `net:[${fs.statSync(path).ino}]`;
}

/** Whether a program is on PATH. */
export function haveProgram(name: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' }).status === 0;
}

/** The Debian package of each program this file runs, for the message when one is missing. */
const PACKAGE_OF: Record<string, string> = { ip: 'iproute2', ping: 'iputils-ping', tcpdump: 'tcpdump', ethtool: 'ethtool', python3: 'python3' };

function run(cmd: string, args: string[], opts: ExecFileSyncOptions = {}): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], ...opts }) as string;
  } catch (e) {
    // Not installed: say which package, not "spawnSync ip ENOENT".
    if ((e as NodeJS.ErrnoException).code === 'ENOENT' && (e as { status?: number | null }).status == null) {
      const pkg = PACKAGE_OF[cmd];
      throw new Error(`the '${cmd}' command is not installed${pkg ? ` (Debian/Ubuntu: apt-get install ${pkg})` : ''}`);
    }
    throw e;
  }
}
