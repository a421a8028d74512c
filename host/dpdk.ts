// DPDK's testpmd as a second real virtio-net driver (its virtio-user PMD,
// connecting to a vhost-user socket as the front end) or as a reference back
// end (its vhost PMD forwarding to its TAP PMD), run inside a namespace the
// caller created. Drives testpmd's interactive prompt over a pipe, reads its
// port counters, and ends it by its pid — also when the caller forgets, at
// process exit. One Testpmd is one dpdk-testpmd process.

import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';

/** Where testpmd is installed by Debian's `dpdk` package. */
export const TESTPMD = '/usr/bin/dpdk-testpmd';
/** DPDK keeps a runtime directory per --file-prefix here; the prefix is ours, so its directory is too. */
const DPDK_RUN_DIR = '/var/run/dpdk';
/** The prompt testpmd prints when it waits for a command (written without a newline). */
const PROMPT = 'testpmd> ';
/**
 * Memory DPDK takes without hugepages (MB): 8192 mbufs of 2176 B are ~18 MB; the rest is the
 * rings and the heap. Small, because six helpers share this machine's RAM.
 */
const MEMORY_MB = 128;
/** Mbufs in testpmd's pool: a 256-entry RX and TX ring, their caches and bursts in flight. */
const MBUFS = 8192;
/** testpmd takes a few seconds to start, and tens of seconds on a 2-core machine loaded 10× over (EAL init, mempool, the vhost-user handshake). */
const START_TIMEOUT_MS = 60_000;
const COMMAND_TIMEOUT_MS = 15_000;

/** Why this machine cannot run testpmd's virtio-user driver, or undefined when it can. */
export function dpdkMissing(): string | undefined {
  if (!fs.existsSync(TESTPMD)) return `${TESTPMD} is missing: apt-get install dpdk librte-net-virtio23 librte-net-vhost23 librte-net-tap23 librte-mempool-ring23`;
  if (spawnSync('sh', ['-c', 'command -v stdbuf'], { encoding: 'utf8' }).status !== 0) return 'stdbuf (coreutils) is missing';
  return undefined;
}

/** The virtio-user vdev options DPDK takes (its virtio-user documentation names them). */
export interface VirtioUserOptions {
  /** VIRTIO_F_RING_PACKED: the driver asks for the packed ring (the device may still refuse it). */
  packed?: boolean;
  /** VIRTIO_F_IN_ORDER. */
  inOrder?: boolean;
  /** VIRTIO_NET_F_MRG_RXBUF; DPDK's default is on. */
  mrgRxbuf?: boolean;
  /** Ring size (DPDK's default 256). */
  queueSize?: number;
  queues?: number;
}

/** `--vdev` for DPDK's virtio-user driver as the front end of the vhost-user socket `path`. */
export function virtioUserVdev(path: string, o: VirtioUserOptions = {}): string {
  const kv = [`path=${path}`, `queues=${o.queues ?? 1}`];
  if (o.packed !== undefined) kv.push(`packed_vq=${o.packed ? 1 : 0}`);
  if (o.inOrder !== undefined) kv.push(`in_order=${o.inOrder ? 1 : 0}`);
  if (o.mrgRxbuf !== undefined) kv.push(`mrg_rxbuf=${o.mrgRxbuf ? 1 : 0}`);
  if (o.queueSize !== undefined) kv.push(`queue_size=${o.queueSize}`);
  return `net_virtio_user0,${kv.join(',')}`;
}

export interface TestpmdOptions {
  /** Network namespace (name under /run/netns) to run testpmd in. */
  netns: string;
  /** DPDK --file-prefix: unique per process, so concurrent testpmds do not share their runtime files. */
  prefix: string;
  /** --vdev arguments (virtioUserVdev(), or net_vhost0/net_tap0 for DPDK's own back end). */
  vdevs: string[];
  /** testpmd's forwarding mode when started: txonly, rxonly, io, mac. */
  forwardMode: string;
  /** txonly frame length in bytes (Ethernet header and FCS-less payload), default 64. */
  txpkts?: number;
  /** The lcore ids: the first polls (forwards), the second is the main lcore that reads commands; both float over every CPU unless pollCpu is given. */
  lcores?: [number, number];
  /** The CPU the polling lcore is pinned to (default: it floats over every CPU, as the main lcore always does). */
  pollCpu?: number;
  /** More testpmd application arguments (after `--`). */
  args?: string[];
}

/** testpmd's `show port stats` for one port: what its driver counted. */
export interface PortStats {
  rxPackets: number;
  rxMissed: number;
  rxBytes: number;
  rxErrors: number;
  rxNombuf: number;
  txPackets: number;
  txErrors: number;
  txBytes: number;
}

const live = new Set<Testpmd>();
let hooked = false;

export class Testpmd {
  readonly pid: number;
  private out = '';
  /**
   * stdout alone: prompts and command answers are looked for here. In `out` a line testpmd
   * writes to stderr can land inside a prompt ("testp" … "md> "), which then never matches.
   */
  private stdout = '';
  private exited: Promise<number | null>;
  private done = false;

  private constructor(
    private readonly child: ChildProcess,
    readonly prefix: string,
  ) {
    this.pid = child.pid!;
    child.stdout!.on('data', (d: Buffer) => {
      const text = d.toString();
      this.stdout += text;
      this.out += text;
    });
    child.stderr!.on('data', (d: Buffer) => (this.out += d.toString()));
    this.exited = new Promise((resolve) =>
      child.once('exit', (code) => {
        this.done = true;
        live.delete(this);
        resolve(code);
      }),
    );
    live.add(this);
    if (!hooked) {
      hooked = true;
      process.on('exit', () => {
        for (const t of [...live]) t.kill();
      });
    }
  }

  /**
   * Starts testpmd in interactive mode (commands on stdin, which stays open) and resolves once
   * it printed its first prompt: its ports are configured and started. `ip netns exec` and
   * `stdbuf` both exec, so the child's pid is testpmd's; stdbuf makes its stdout line-buffered
   * (a pipe is block-buffered, which would hold back command output).
   */
  static async start(o: TestpmdOptions): Promise<Testpmd> {
    const missing = dpdkMissing();
    if (missing) throw new Error(missing);
    if (!/^[A-Za-z0-9_-]+$/.test(o.prefix)) throw new Error(`DPDK file prefix '${o.prefix}' must be letters, digits, '_' and '-'`);
    const [fwd, main] = o.lcores ?? [0, 1];
    // By default each lcore thread may run on any CPU, as the back ends it is compared with do:
    // pinned to one CPU, a poller on a machine shared with other work gets that CPU's share and
    // no more. pollCpu pins the poller (the bench's --pin, for a machine with nothing else on it).
    const cpus = `(0-${os.cpus().length - 1})`;
    const pollCpus = o.pollCpu === undefined ? cpus : String(o.pollCpu);
    const eal = ['--lcores', `${fwd}@${pollCpus},${main}@${cpus}`, '--main-lcore', String(main), '--no-huge', '--single-file-segments', '-m', String(MEMORY_MB), '--no-pci', '--iova-mode=va', '--file-prefix', o.prefix];
    for (const v of o.vdevs) eal.push('--vdev', v);
    const app = ['-i', `--forward-mode=${o.forwardMode}`, '--nb-cores=1', `--total-num-mbufs=${MBUFS}`, `--txpkts=${o.txpkts ?? 64}`, ...(o.args ?? [])];
    const child = spawn('ip', ['netns', 'exec', o.netns, 'stdbuf', '-oL', TESTPMD, ...eal, '--', ...app], { stdio: ['pipe', 'pipe', 'pipe'] });
    const t = new Testpmd(child, o.prefix);
    try {
      await t.waitFor(() => t.stdout.includes(PROMPT), START_TIMEOUT_MS, 'its first prompt');
    } catch (e) {
      t.kill();
      throw e;
    }
    return t;
  }

  /** Everything it printed so far (stdout and stderr). */
  output(): string {
    return this.out;
  }

  /** Runs one command at the prompt and resolves with what it printed before the next prompt. */
  async command(cmd: string, timeoutMs = COMMAND_TIMEOUT_MS): Promise<string> {
    if (this.done) throw new Error(`testpmd exited before '${cmd}': ${this.tail()}`);
    const start = this.stdout.lastIndexOf(PROMPT) + PROMPT.length;
    this.child.stdin!.write(`${cmd}\n`);
    await this.waitFor(() => this.stdout.indexOf(PROMPT, start) >= 0, timeoutMs, `the answer to '${cmd}'`);
    return this.stdout.slice(start, this.stdout.indexOf(PROMPT, start));
  }

  /** `show port stats PORT`: the driver's counters. */
  async portStats(port = 0): Promise<PortStats> {
    const s = await this.command(`show port stats ${port}`);
    const num = (re: RegExp): number => {
      const m = re.exec(s);
      if (!m) throw new Error(`testpmd's port stats lack ${re}: ${s}`);
      return Number(m[1]);
    };
    return {
      rxPackets: num(/RX-packets:\s*(\d+)/),
      rxMissed: num(/RX-missed:\s*(\d+)/),
      rxBytes: num(/RX-bytes:\s*(\d+)/),
      rxErrors: num(/RX-errors:\s*(\d+)/),
      rxNombuf: num(/RX-nombuf:\s*(\d+)/),
      txPackets: num(/TX-packets:\s*(\d+)/),
      txErrors: num(/TX-errors:\s*(\d+)/),
      txBytes: num(/TX-bytes:\s*(\d+)/),
    };
  }

  /** Ends it with `quit` (ports stopped and closed: the front end says goodbye), SIGKILL after `timeoutMs`. */
  async quit(timeoutMs = COMMAND_TIMEOUT_MS): Promise<number | null> {
    if (!this.done) {
      this.child.stdin!.write('quit\n');
      const timer = setTimeout(() => this.kill(), timeoutMs);
      await this.exited;
      clearTimeout(timer);
    }
    this.removeRunDir();
    return this.exited;
  }

  /** SIGKILL by pid (idempotent, synchronous: usable from exit hooks and defer()). */
  kill(): void {
    if (!this.done) {
      try {
        process.kill(this.pid, 'SIGKILL');
      } catch {
        // Already gone.
      }
    }
    this.removeRunDir();
  }

  /** Resolves once it exited; with its code. */
  wait(): Promise<number | null> {
    return this.exited;
  }

  private removeRunDir(): void {
    // Its runtime files (config, mp socket) are left behind by a killed testpmd, and by a clean one too.
    if (this.done) fs.rmSync(`${DPDK_RUN_DIR}/${this.prefix}`, { recursive: true, force: true });
    else void this.exited.then(() => fs.rmSync(`${DPDK_RUN_DIR}/${this.prefix}`, { recursive: true, force: true }));
  }

  private tail(): string {
    return this.out.trim().split('\n').slice(-15).join('\n');
  }

  private async waitFor(cond: () => boolean, ms: number, what: string): Promise<void> {
    const end = Date.now() + ms;
    while (!cond()) {
      if (this.done) throw new Error(`testpmd exited while waiting for ${what}: ${this.tail()}`);
      if (Date.now() > end) throw new Error(`testpmd did not print ${what} in ${ms} ms: ${this.tail()}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}
