// Boots the test guest (host/linux-guest/initramfs.ts) under QEMU with TCG
// and a chosen network back end, waits for its console markers, runs commands
// over the serial console, and ends QEMU by its pid — also when the caller
// forgets, at process exit. One LinuxGuest is one QEMU process.

import { ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';

import { MARK } from './init';
import { buildGuestImage, GuestImage } from './initramfs';

/** The guest's network back end: QEMU's own TAP code (vhost=on: the kernel's vhost-net), or a vhost-user back end. */
export type Netdev =
  | { kind: 'tap'; ifname: string; queues?: number; vhost?: boolean }
  | { kind: 'vhost-user'; socket: string; queues?: number; server?: boolean };

export interface BootOptions {
  netdev: Netdev;
  /** Run QEMU inside this network namespace (`ip netns exec`): where a tap netdev's TAP lives. */
  netns?: string;
  /** Guest MAC; default a random locally administered one. */
  mac?: string;
  /** 'A/N' addresses for eth0. */
  ip4?: string;
  ip6?: string;
  mtu?: number;
  /** virtio-net-pci packed=on: the guest may negotiate VIRTIO_F_RING_PACKED. */
  packed?: boolean;
  /**
   * virtio-net-pci guest_announce (default on, QEMU's default): off keeps VIRTIO_NET_F_GUEST_ANNOUNCE
   * from the guest, so after a migration QEMU announces it itself (a RARP, through a vhost-user
   * back end's SEND_RARP) instead of asking the guest to.
   */
  guestAnnounce?: boolean;
  /** vCPUs, default 2 (multiqueue needs one per queue pair). */
  cpus?: number;
  /**
   * QEMU's -cpu model, default 'max'. Migration under TCG needs 'qemu64' (with 1 vCPU): with
   * 'max' the guest's memory arrived corrupted here even with QEMU's own tap back end.
   */
  cpuModel?: string;
  /** A QMP monitor on this unix socket path (QEMU listens; see qmp.ts). */
  qmp?: string;
  /** `-incoming URI`: this QEMU waits for a migration stream instead of booting (use LinuxGuest.incoming). */
  incoming?: string;
  /** Guest RAM in MiB, default 512; the memfd backend has the same size. */
  memMiB?: number;
  /**
   * Give the NIC MSI-X vectors. Default false (legacy INTx, vectors=0): QEMU 7.2 under TCG dies
   * with SIGSEGV in msix_set_vector_notifiers when a vhost-user NIC with vectors starts, and every
   * back end gets the same device so benchmark numbers compare.
   */
  msix?: boolean;
  image?: GuestImage;
  /** From spawn to the READY marker; default 180 s (TCG on a busy 2-core machine). */
  bootTimeoutMs?: number;
  qemu?: string;
  /** Kernel command-line arguments besides the console and vt.* ones; default GUEST_KERNEL_ARGS. */
  kernelArgs?: string[];
  /** Each console line as it arrives (for debugging). */
  onLine?: (line: string) => void;
}

export class GuestError extends Error {}

/**
 * What the guest kernel is told so that a TCG guest on a busy host boots in bounded time.
 * Measured here (2 shared cores, load 3.4–4.5, 3 boots each, alternating): spawn to READY
 * 6.6–11.1 s without them, 5.9–8.0 s with them; guest uptime at READY 3.1–3.3 s → 2.7–3.1 s.
 */
export const GUEST_KERNEL_ARGS: readonly string[] = [
  // The crypto self-tests run in kernel threads at boot; under TCG on a loaded host one once
  // ran for minutes ("watchdog: BUG: soft lockup ... cryptomgr_test") and the boot hung.
  'cryptomgr.notests',
  // A vCPU thread the host does not schedule for a while is not a lockup of the guest: no
  // soft/hard lockup detector, no RCU stall reports (they print, slow the console, can panic).
  'nowatchdog',
  'nmi_watchdog=0',
  'rcupdate.rcu_cpu_stall_suppress=1',
  // TCG's TSC is the host's clock: no calibration check, no clocksource watchdog switching to
  // the slow emulated HPET when the host is busy.
  'tsc=reliable',
  'no_timer_check',
  // Speculation mitigations only cost emulated instructions here; every back end gets the same.
  'mitigations=off',
];

const DEFAULT_BOOT_TIMEOUT_MS = 180_000;
const DEFAULT_COMMAND_TIMEOUT_MS = 60_000;
/** Console lines kept for error messages. */
const TAIL_LINES = 40;

const live = new Set<LinuxGuest>();
process.once('exit', () => {
  for (const g of live) g.killNow();
});

interface Waiter {
  test: (line: string) => boolean;
  resolve: (line: string) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

export class LinuxGuest {
  /** QEMU's pid (`ip netns exec` execs it, so this is QEMU itself). */
  readonly pid: number;
  /** Milliseconds from spawning QEMU to the guest's READY marker. */
  bootMs = 0;
  /** The guest's eth0 MAC as it reported it. */
  mac = '';
  readonly image: GuestImage;
  readonly args: string[];
  /** Resolves when QEMU has exited. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  private readonly child: ChildProcess;
  private readonly lines: string[] = [];
  private partial = '';
  private stderr = '';
  private waiters: Waiter[] = [];
  private nextId = 1;
  private exitInfo: { code: number | null; signal: NodeJS.Signals | null } | undefined;

  private constructor(opts: BootOptions, image: GuestImage) {
    this.image = image;
    const qemu = opts.qemu ?? 'qemu-system-x86_64';
    this.args = qemuArgs(opts, image);
    const [cmd, argv] = opts.netns ? ['ip', ['netns', 'exec', opts.netns, qemu, ...this.args]] : [qemu, this.args];
    this.child = spawn(cmd, argv, { stdio: ['pipe', 'pipe', 'pipe'] });
    if (this.child.pid === undefined) throw new GuestError(`could not start ${cmd}`);
    this.pid = this.child.pid;
    live.add(this);
    this.child.stdout!.setEncoding('utf8');
    this.child.stdout!.on('data', (d: string) => this.onData(d, opts.onLine));
    this.child.stderr!.setEncoding('utf8');
    this.child.stderr!.on('data', (d: string) => (this.stderr = (this.stderr + d).slice(-8192)));
    // A guest that went away while we write gives EPIPE; the exit handler reports it.
    this.child.stdin!.on('error', () => undefined);
    this.exited = new Promise((resolve) => {
      this.child.once('exit', (code, signal) => {
        live.delete(this);
        this.exitInfo = { code, signal };
        const why = new GuestError(`QEMU exited (${signal ?? `code ${code}`}) ${this.describe()}`);
        for (const w of this.waiters) {
          clearTimeout(w.timer);
          w.reject(why);
        }
        this.waiters = [];
        resolve({ code, signal });
      });
    });
  }

  /**
   * Starts a QEMU that waits for a migration stream (`-incoming`): it does not boot, so there is
   * no READY marker to wait for; the guest's console continues here once the migration
   * completes. Give the same image, MAC and device options as the source.
   */
  static incoming(opts: BootOptions & { incoming: string; image: GuestImage; mac: string }): LinuxGuest {
    const g = new LinuxGuest(opts, opts.image);
    g.mac = opts.mac;
    return g;
  }

  /** Builds (or takes from the cache) the guest image, starts QEMU and waits until eth0 is up. */
  static async boot(opts: BootOptions): Promise<LinuxGuest> {
    const image = opts.image ?? buildGuestImage();
    const t0 = process.hrtime.bigint();
    const g = new LinuxGuest(opts, image);
    try {
      const ready = await g.waitFor((l) => l.startsWith(MARK.READY) || l.startsWith(MARK.ERROR), opts.bootTimeoutMs ?? DEFAULT_BOOT_TIMEOUT_MS, 'the guest to boot');
      if (ready.startsWith(MARK.ERROR)) throw new GuestError(`guest init failed: ${ready} ${g.describe()}`);
      g.bootMs = Number(process.hrtime.bigint() - t0) / 1e6;
      g.mac = ready.split(/\s+/)[1] ?? '';
    } catch (e) {
      await g.kill();
      throw e;
    }
    return g;
  }

  /** Every console line so far. */
  console(): string[] {
    return [...this.lines];
  }

  get running(): boolean {
    return this.exitInfo === undefined;
  }

  /**
   * Waits for a console line (from now on, or among the lines already printed when `past` is
   * true) that passes `test`.
   */
  waitFor(test: (line: string) => boolean, timeoutMs: number, what: string, past = false): Promise<string> {
    if (past) {
      const hit = this.lines.find(test);
      if (hit !== undefined) return Promise.resolve(hit);
    }
    if (this.exitInfo) return Promise.reject(new GuestError(`QEMU has exited; cannot wait for ${what} ${this.describe()}`));
    return new Promise((resolve, reject) => {
      const w: Waiter = {
        test,
        resolve,
        reject,
        timer: setTimeout(() => {
          this.waiters = this.waiters.filter((x) => x !== w);
          reject(new GuestError(`timed out after ${timeoutMs} ms waiting for ${what} ${this.describe()}`));
        }, timeoutMs),
      };
      this.waiters.push(w);
    });
  }

  /** Runs a shell command in the guest; resolves with its exit status and output lines. */
  async run(command: string, timeoutMs = DEFAULT_COMMAND_TIMEOUT_MS): Promise<{ status: number; output: string[] }> {
    if (command.includes('\n')) throw new GuestError('a guest command is one line');
    const id = String(this.nextId++);
    const start = this.lines.length;
    const end = this.waitFor((l) => l.startsWith(`${MARK.END} ${id} `), timeoutMs, `the end of guest command ${id} '${command}'`);
    this.child.stdin!.write(`${id} ${command}\n`);
    const last = await end;
    const all = this.lines.slice(start);
    const b = all.findIndex((l) => l === `${MARK.BEGIN} ${id}`);
    const e = all.findIndex((l) => l.startsWith(`${MARK.END} ${id} `));
    // Lines of background services (sink/source reports) are not the command's output.
    const output = all.slice(b + 1, e).filter((l) => !l.startsWith(MARK.SINK) && !l.startsWith(MARK.SOURCE));
    return { status: Number(last.split(' ')[2]), output };
  }

  /** Like run() but throws unless the command exits 0; returns its output. */
  async check(command: string, timeoutMs = DEFAULT_COMMAND_TIMEOUT_MS): Promise<string[]> {
    const r = await this.run(command, timeoutMs);
    if (r.status !== 0) throw new GuestError(`guest command '${command}' exited ${r.status}: ${r.output.join('\n')}`);
    return r.output;
  }

  /** The feature bits the guest driver negotiated (/sys/class/net/eth0/device/features: '0'/'1' per bit, bit 0 first). */
  async features(): Promise<bigint> {
    const s = (await this.check('cat /sys/class/net/eth0/device/features')).join('').trim();
    if (!/^[01]+$/.test(s)) throw new GuestError(`unexpected features string '${s}'`);
    let f = 0n;
    for (let i = 0; i < s.length; i++) if (s[i] === '1') f |= 1n << BigInt(i);
    return f;
  }

  /** `ethtool -S eth0` as name → value (per-queue counters such as rx_queue_0_packets). */
  async ethtoolStats(): Promise<Record<string, number>> {
    if (!this.image.ethtool) throw new GuestError('the guest image has no ethtool (install ethtool on the host and rebuild)');
    const out: Record<string, number> = {};
    for (const l of await this.check('ethtool -S eth0')) {
      const m = l.match(/^\s*([\w.-]+):\s*(\d+)\s*$/);
      if (m) out[m[1]] = Number(m[2]);
    }
    return out;
  }

  /**
   * Starts a one-connection TCP sink on `port` and returns once it listens; `done` resolves with
   * the SHA-256 (hex) of what it received. (An object, not a nested promise: an async function
   * would flatten that and wait for the transfer.)
   */
  async sink(port: number, tag: string, timeoutMs: number): Promise<{ done: Promise<string> }> {
    const done = this.waitFor((l) => l.startsWith(`${MARK.SINK} ${tag} `), timeoutMs, `TCP sink '${tag}' to finish`);
    done.catch(() => undefined);
    await this.check(`vt_sink ${port} ${tag}`);
    // A caller that gave up on the transfer (the host end failed first) may never await this.
    const result = done.then((l) => l.split(/\s+/)[2]);
    result.catch(() => undefined);
    return { done: result };
  }

  /**
   * Starts sending `bytes` of the pattern to host:port (from nc pinned to guest CPU `cpu` when
   * given); `done` resolves with nc's exit status.
   */
  async source(host: string, port: number, bytes: number, tag: string, timeoutMs: number, cpu?: number): Promise<{ done: Promise<number> }> {
    const done = this.waitFor((l) => l.startsWith(`${MARK.SOURCE} ${tag} `), timeoutMs, `TCP source '${tag}' to finish`);
    done.catch(() => undefined);
    await this.check(`vt_source ${host} ${port} ${bytes} ${tag}${cpu === undefined ? '' : ` ${cpu}`}`);
    const result = done.then((l) => Number(l.split(/\s+/)[2]));
    result.catch(() => undefined);
    return { done: result };
  }

  /** Ends QEMU by its pid (SIGKILL unless told otherwise) and waits for it to exit. */
  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (this.exitInfo) return this.exitInfo;
    try {
      process.kill(this.pid, signal);
    } catch {
      // Already gone; 'exit' is on its way.
    }
    return this.exited;
  }

  /** Synchronous SIGKILL for process-exit cleanup. */
  killNow(): void {
    if (this.exitInfo) return;
    try {
      process.kill(this.pid, 'SIGKILL');
    } catch {
      // Already gone.
    }
  }

  /** The console's last lines and QEMU's stderr, for error messages. */
  describe(): string {
    const tail = this.lines.slice(-TAIL_LINES).join('\n');
    return `\n--- guest console (last ${TAIL_LINES} lines) ---\n${tail}${this.partial ? `\n${this.partial}` : ''}\n--- qemu stderr ---\n${this.stderr.trim()}\n---`;
  }

  private onData(d: string, onLine?: (line: string) => void): void {
    const parts = (this.partial + d).split('\n');
    this.partial = parts.pop() ?? '';
    for (const raw of parts) {
      const line = raw.replace(/\r/g, '');
      this.lines.push(line);
      onLine?.(line);
      for (const w of [...this.waiters]) {
        if (!w.test(line)) continue;
        clearTimeout(w.timer);
        this.waiters = this.waiters.filter((x) => x !== w);
        w.resolve(line);
      }
    }
  }
}

/** A random locally administered unicast MAC in QEMU's 52:54:00 style. */
export function randomGuestMac(): string {
  const b = randomBytes(3);
  return ['52', '54', '00', ...[...b].map((x) => x.toString(16).padStart(2, '0'))].join(':');
}

export function qemuArgs(opts: BootOptions, image: GuestImage): string[] {
  const cpus = opts.cpus ?? 2;
  const mem = opts.memMiB ?? 512;
  const n = opts.netdev;
  const queues = n.queues ?? 1;
  if (!Number.isInteger(queues) || queues < 1) throw new GuestError(`queues must be a positive integer, got ${queues}`);
  const append = ['console=ttyS0', 'quiet', 'panic=-1', ...(opts.kernelArgs ?? GUEST_KERNEL_ARGS)];
  if (opts.ip4) append.push(`vt.ip4=${opts.ip4}`);
  if (opts.ip6) append.push(`vt.ip6=${opts.ip6}`);
  if (opts.mtu) append.push(`vt.mtu=${opts.mtu}`);
  const args = [
    '-M', 'q35', '-cpu', opts.cpuModel ?? 'max', '-smp', String(cpus), '-m', `${mem}M`,
    // A vhost-user back end maps guest RAM, so RAM must be a shareable fd; every back end gets the same.
    '-object', `memory-backend-memfd,id=mem,size=${mem}M,share=on`, '-numa', 'node,memdev=mem',
    '-nodefaults', '-no-user-config', '-display', 'none', '-serial', 'stdio', '-no-reboot',
    '-kernel', image.kernel, '-initrd', image.initrd, '-append', append.join(' '),
  ];
  if (opts.qmp) args.push('-qmp', `unix:${opts.qmp},server=on,wait=off`);
  if (opts.incoming) args.push('-incoming', opts.incoming);
  if (n.kind === 'tap') {
    args.push('-netdev', `tap,id=n0,ifname=${n.ifname},script=no,downscript=no,vhost=${n.vhost ? 'on' : 'off'}${queues > 1 ? `,queues=${queues}` : ''}`);
  } else {
    args.push('-chardev', `socket,id=c0,path=${n.socket}${n.server ? ',server=on,wait=off' : ''}`);
    args.push('-netdev', `vhost-user,id=n0,chardev=c0,queues=${queues}`);
  }
  const dev = [`virtio-net-pci,netdev=n0,mac=${opts.mac ?? randomGuestMac()}`];
  if (queues > 1) dev.push('mq=on');
  if (opts.packed) dev.push('packed=on');
  if (opts.guestAnnounce === false) dev.push('guest_announce=off');
  if (!opts.msix) dev.push('vectors=0');
  else if (queues > 1) dev.push(`vectors=${2 * queues + 2}`);
  args.push('-device', dev.join(','));
  return args;
}
