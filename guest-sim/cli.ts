#!/usr/bin/env node
// The `vhost-tap` command: `run` a simulated guest behind a TAP, `demo`
// (what `npm start` runs). Argument parsing, readiness and statistics
// printing, and clean teardown on signals live here; the work is in GuestSim.

import { parseArgs, ParseArgsConfig } from 'node:util';

import { VhostTapError } from '../backend';
import { DiscardEvent, GuestSim, OFFLOAD_NAMES, parseOffloads } from './guest';
import { haveProgram, Netns } from './netns';

class UsageError extends Error {}
/** The demo was stopped by a signal (the message is its name). */
class Interrupted extends Error {}

const HELP: Record<string, string> = {
  main: `vhost-tap — a virtio-net device backend on a Linux TAP, with a simulated guest

Usage: vhost-tap <command> [options]

Commands:
  run       run a simulated guest behind a TAP until SIGINT/SIGTERM
  demo      create a namespace, run a guest in it, ping and UDP-echo it, clean up
  gso-check check checksum/segmentation offloads both ways against this kernel
  bench     measure throughput against a C syscall loop and a Node loop (bench/)

Run 'vhost-tap <command> --help' for a command's options.`,
  run: `Usage: vhost-tap run --tap NAME [options]

Runs a simulated virtio-net guest behind TAP NAME (created; in namespace NS with
--netns) until SIGINT or SIGTERM, then removes the TAP and prints statistics.
The guest answers ARP, ping, IPv6 neighbour discovery, ping -6 and UDP echo (port 7),
and serves TCP (IPv4 and IPv6):
  port 7    echo
  port 9    discard: when the peer closes, prints one line
            'discard: PEER bytes N sha256 HEX' (everything received)
  port 19   source: sends --source-bytes bytes (byte i = i mod 251), then closes

Options:
  --tap NAME          TAP device name (at most 15 bytes)             (required)
  --netns NS          existing network namespace to create the TAP in
  --queues N          queue pairs (default 1)
  --mac MAC           guest MAC address (default: random, locally administered)
  --ip ADDR/PREFIX    guest IPv4 address, e.g. 10.0.0.2/24
  --ip6 ADDR/PREFIX   guest IPv6 address, e.g. fd00::2/64
  --mtu N             MTU of the guest and the TAP (default 1500)
  --offloads LIST     offloads the guest negotiates: 'none', or a comma-separated
                      list of ${Object.keys(OFFLOAD_NAMES).join(', ')}
                      (csum/tso4/tso6/uso: guest → kernel; guest-*: kernel → guest).
                      Default: every one the device offers. tso4, tso6 and uso need
                      csum; guest-tso*/guest-uso* need guest-csum.
  --source-bytes N    bytes the TCP source (port 19) sends per connection (default 1073741824)
  --json              print the final statistics as JSON
  -h, --help          this help`,
  demo: `Usage: vhost-tap demo [--queues N]

Creates its own network namespace, runs a simulated guest behind a TAP in it,
gives the host side an address, pings the guest over IPv4 and IPv6 (when
'ping' is installed), sends UDP echoes, moves 256 MiB over TCP each way (to
the guest's discard port, SHA-256 compared; from its source port, pattern
checked), prints what happened and deletes everything. Needs root (CAP_NET_ADMIN).

Options:
  --queues N   queue pairs (default 2)
  -h, --help   this help`,
};

function parse(cmd: string, argv: string[], options: ParseArgsConfig['options']): Record<string, string | boolean | undefined> {
  try {
    const { values } = parseArgs({ args: argv, options: { ...options, help: { type: 'boolean', short: 'h' } }, strict: true, allowPositionals: false });
    return values as Record<string, string | boolean | undefined>;
  } catch (e) {
    throw new UsageError(`${(e as Error).message.split('\n')[0]} (see 'vhost-tap ${cmd} --help')`);
  }
}

function int(name: string, v: string | boolean | undefined, def: number): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (typeof v !== 'string' || !/^\d+$/.test(v) || !Number.isSafeInteger(n)) throw new UsageError(`--${name} must be a whole number, got '${v}'`);
  return n;
}

/** The negotiated offloads in --offloads spelling. */
function offloadList(features: bigint): string {
  const on = Object.entries(OFFLOAD_NAMES).filter(([, b]) => (features & b) !== 0n).map(([n]) => n);
  return on.length ? on.join(',') : 'none';
}

/** Resolves with the signal's name, or with 'error' once `failed` resolves (whichever comes first). */
function waitForSignal(failed?: Promise<unknown>): Promise<string> {
  return new Promise((resolve) => {
    const on = (sig: string): void => {
      process.removeListener('SIGINT', on);
      process.removeListener('SIGTERM', on);
      resolve(sig);
    };
    process.on('SIGINT', on);
    process.on('SIGTERM', on);
    void failed?.then(() => on('error'));
  });
}

function printStats(s: Awaited<ReturnType<GuestSim['stop']>>, json: boolean): void {
  if (json) {
    console.log(JSON.stringify(s));
    return;
  }
  const t = s.device.totals;
  console.log(`device: rx ${t.rxPackets} frames ${t.rxBytes} B, tx ${t.txPackets} frames ${t.txBytes} B, drops ${t.drops}, io ${s.device.io}`);
  for (const q of s.device.queues) {
    const drops = Object.entries(q.drops).filter(([, v]) => v > 0).map(([k, v]) => `${k}=${v}`).join(' ');
    console.log(`  queue ${q.index} ${q.kind}: ${q.packets} frames ${q.bytes} B, ${q.interrupts} interrupts, ${q.kicks} kicks${drops ? `, drops ${drops}` : ''}${q.broken ? ', BROKEN' : ''}`);
  }
  s.pairs.forEach((p, i) => console.log(`  guest pair ${i}: rx ${p.rxFrames} frames, tx ${p.txFrames} frames, wakeups ${p.wakeups}`));
}

async function cmdRun(argv: string[]): Promise<number> {
  const o = parse('run', argv, {
    tap: { type: 'string' },
    netns: { type: 'string' },
    queues: { type: 'string' },
    mac: { type: 'string' },
    ip: { type: 'string' },
    ip6: { type: 'string' },
    mtu: { type: 'string' },
    offloads: { type: 'string' },
    'source-bytes': { type: 'string' },
    json: { type: 'boolean' },
  });
  if (o.help) {
    console.log(HELP.run);
    return 0;
  }
  if (typeof o.tap !== 'string') throw new UsageError("--tap NAME is required (see 'vhost-tap run --help')");
  const queues = int('queues', o.queues, 1);
  if (queues < 1) throw new UsageError('--queues must be at least 1');
  let features: bigint | undefined;
  if (o.offloads !== undefined) {
    try {
      features = parseOffloads(String(o.offloads));
    } catch (e) {
      throw new UsageError(`--offloads: ${(e as Error).message}`);
    }
  }
  const sourceBytes = int('source-bytes', o['source-bytes'], 1 << 30);
  const guest = await GuestSim.start({
    tap: o.tap,
    netns: o.netns as string | undefined,
    queuePairs: queues,
    mac: o.mac as string | undefined,
    ip4: o.ip as string | undefined,
    ip6: o.ip6 as string | undefined,
    mtu: o.mtu === undefined ? undefined : int('mtu', o.mtu, 1500),
    features,
    sourceBytes,
  });
  guest.on('needs-reset', (e: Error) => console.error(`vhost-tap: ${e.message}`));
  // A queue-pair Worker that dies is reported as 'error'. Without a listener EventEmitter throws
  // it as an uncaught exception (a stack trace, no statistics); stop cleanly and exit 1 instead.
  let workerError: Error | undefined;
  const failed = new Promise<void>((resolve) =>
    guest.on('error', (e: Error) => {
      workerError ??= e;
      resolve();
    }),
  );
  guest.on('discard', (d: DiscardEvent) => console.log(`discard: ${d.peer} bytes ${d.bytes} sha256 ${d.sha256}`));
  const where = o.netns ? ` in netns ${o.netns}` : '';
  console.log(`ready: tap ${guest.device.tapName}${where}, guest mac ${guest.mac}${o.ip ? `, ip ${o.ip}` : ''}${o.ip6 ? `, ip6 ${o.ip6}` : ''}, ${guest.device.activeQueuePairs} queue pair(s), offloads ${offloadList(guest.features)}`);
  const sig = await waitForSignal(failed);
  const s = await guest.stop();
  if (workerError) console.error(`vhost-tap: a guest queue-pair worker failed: ${workerError.message}`);
  else if (!o.json) console.log(`stopped on ${sig}`);
  printStats(s, !!o.json);
  return workerError ? 1 : 0;
}

/** UDP echo round trips from inside the namespace, via a child Node process there. */
function udpEchoFromNs(ns: Netns, host: string, count: number, size: number): { ok: number; sent: number } {
  const script = `
const dgram = require('node:dgram');
const s = dgram.createSocket(${JSON.stringify(host.includes(':') ? 'udp6' : 'udp4')});
let ok = 0, i = 0;
const send = () => { if (i === ${count}) { console.log(ok); s.close(); return; }
  const b = Buffer.alloc(${size}, i & 255); const t = setTimeout(() => { i++; send(); }, 1000);
  s.once('message', (m) => { clearTimeout(t); if (m.equals(b)) ok++; i++; send(); });
  s.send(b, 7, ${JSON.stringify(host)}); };
send();`;
  const r = ns.exec(process.execPath, ['-e', script]);
  return { ok: Number(r.stdout.trim()) || 0, sent: count };
}

/** Bytes each demo TCP transfer moves: big enough to show offloads at work, quick on a small machine. */
const DEMO_TCP_BYTES = 256 << 20;

/**
 * TCP both ways with the namespace's kernel as the peer: DEMO_TCP_BYTES to the guest's
 * discard port (the guest's SHA-256 must match the sender's), then the same from its source
 * port (the pattern byte i = i mod 251 is checked). Returns the number of failed checks.
 */
async function tcpDemo(ns: Netns, guest: GuestSim, addr: string): Promise<number> {
  let failures = 0;
  const discard = new Promise<DiscardEvent>((resolve) => guest.once('discard', resolve));
  const send = ns.exec(process.execPath, ['-e', `
const net = require('node:net'), h = require('node:crypto').createHash('sha256');
const chunk = Buffer.alloc(1 << 20); for (let i = 0; i < chunk.length; i++) chunk[i] = (i * 31) & 255;
const t0 = process.hrtime.bigint(); let sent = 0;
const s = net.connect(9, ${JSON.stringify(addr)}, () => {
  const more = () => { while (sent < ${DEMO_TCP_BYTES}) { h.update(chunk); sent += chunk.length; if (!s.write(chunk)) return s.once('drain', more); } s.end(); };
  more();
});
s.on('close', () => console.log(h.digest('hex'), Number(process.hrtime.bigint() - t0) / 1e9));
s.on('error', (e) => { console.error(e.message); process.exit(1); });`]);
  const [hash, secs] = send.stdout.trim().split(' ');
  const got = await Promise.race([discard, new Promise<undefined>((r) => setTimeout(r, 10_000, undefined))]);
  const ok = send.status === 0 && got !== undefined && got.sha256 === hash && got.bytes === DEMO_TCP_BYTES;
  if (!ok) failures++;
  console.log(`tcp ${addr} port 9 (discard): ${DEMO_TCP_BYTES >> 20} MiB host → guest in ${Number(secs).toFixed(2)} s` +
    ` (${((DEMO_TCP_BYTES * 8) / Number(secs) / 1e9).toFixed(2)} Gbit/s), SHA-256 ${ok ? 'matches' : `MISMATCH (${got?.sha256 ?? 'no discard line'} vs ${hash})`}`);
  const recv = ns.exec(process.execPath, ['-e', `
const net = require('node:net'); let n = 0, bad = 0; const t0 = process.hrtime.bigint();
const s = net.connect(19, ${JSON.stringify(addr)});
s.on('data', (b) => { for (let i = 0; i < b.length; i++) if (b[i] !== (n + i) % 251) bad++; n += b.length; });
s.on('end', () => console.log(n, bad, Number(process.hrtime.bigint() - t0) / 1e9));
s.on('error', (e) => { console.error(e.message); process.exit(1); });`]);
  const [n, bad, secs2] = recv.stdout.trim().split(' ').map(Number);
  const ok2 = recv.status === 0 && n === DEMO_TCP_BYTES && bad === 0;
  if (!ok2) failures++;
  console.log(`tcp ${addr} port 19 (source): ${(n / 2 ** 20).toFixed(0)} MiB guest → host in ${secs2.toFixed(2)} s` +
    ` (${((n * 8) / secs2 / 1e9).toFixed(2)} Gbit/s), pattern ${ok2 ? 'intact' : `BAD (${bad} wrong bytes, ${n} bytes) ${recv.stderr.trim()}`}`);
  return failures;
}

async function cmdDemo(argv: string[]): Promise<number> {
  const o = parse('demo', argv, { queues: { type: 'string' } });
  if (o.help) {
    console.log(HELP.demo);
    return 0;
  }
  const queues = int('queues', o.queues, 2);
  const ns = Netns.create('demo');
  const tap = `vtd${process.pid.toString(36)}`;
  let guest: GuestSim | undefined;
  const cleanup = async (): Promise<void> => {
    if (guest) await guest.stop().catch(() => undefined);
    ns.delete();
  };
  // The checks below run child processes synchronously, so a signal handler only runs between
  // steps: it records the signal and step() ends the demo there (cleanup in finally). A second
  // signal exits at once; the namespace's exit hook still deletes it and the TAP goes with its fds.
  let interrupted: string | undefined;
  const onSignal = (sig: string): void => {
    if (interrupted) process.exit(130);
    interrupted = sig;
  };
  const step = async (): Promise<void> => {
    await new Promise((r) => setImmediate(r));
    if (interrupted) throw new Interrupted(interrupted);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    console.log(`namespace ${ns.name}: starting a simulated guest behind TAP ${tap} with ${queues} queue pair(s)`);
    guest = await GuestSim.start({ tap, netns: ns.name, queuePairs: queues, ip4: '10.203.0.2/24', ip6: 'fd00:cb::2/64', sourceBytes: DEMO_TCP_BYTES });
    await step();
    ns.ip('addr', 'add', '10.203.0.1/24', 'dev', tap);
    ns.ip('-6', 'addr', 'add', 'fd00:cb::1/64', 'dev', tap, 'nodad');
    console.log(`guest up: mac ${guest.mac}, 10.203.0.2 and fd00:cb::2; host side ${tap}: 10.203.0.1 and fd00:cb::1`);
    let failures = 0;
    if (haveProgram('ping')) {
      for (const [fam, addr] of [['-4', '10.203.0.2'], ['-6', 'fd00:cb::2']] as const) {
        await step();
        const r = ns.exec('ping', [fam, '-c', '5', '-i', '0.2', '-W', '2', addr]);
        const summary = r.stdout.split('\n').filter((l) => /packets transmitted|rtt/.test(l)).join('; ');
        console.log(`ping ${fam} ${addr}: ${summary || r.stderr.trim()}`);
        if (r.status !== 0) failures++;
      }
    } else {
      console.log("ping: not installed here (apt-get install iputils-ping); skipping the ICMP part, UDP below still exercises ARP/ND");
    }
    for (const [addr, size] of [['10.203.0.2', 64], ['10.203.0.2', 1472], ['fd00:cb::2', 64], ['fd00:cb::2', 1452]] as const) {
      await step();
      const r = udpEchoFromNs(ns, addr, 20, size);
      console.log(`udp echo ${addr} port 7, ${size} B: ${r.ok}/${r.sent} echoed back intact`);
      if (r.ok !== r.sent) failures++;
    }
    for (const addr of ['10.203.0.2', 'fd00:cb::2']) {
      await step();
      failures += await tcpDemo(ns, guest, addr);
    }
    const s = guest.stats();
    printStats({ ...s }, false);
    console.log(failures === 0 ? 'demo: everything answered' : `demo: ${failures} check(s) failed`);
    return failures === 0 ? 0 : 1;
  } catch (e) {
    if (!(e instanceof Interrupted)) throw e;
    console.log(`demo: stopped on ${e.message}`);
    return 130;
  } finally {
    await cleanup();
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
    console.log(`cleaned up: namespace ${ns.name} and TAP ${tap} removed`);
  }
}

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (cmd === undefined || cmd === '-h' || cmd === '--help' || cmd === 'help') {
    console.log(HELP.main);
    return cmd === undefined ? 1 : 0;
  }
  switch (cmd) {
    case 'run':
      return cmdRun(rest);
    case 'demo':
      return cmdDemo(rest);
    case 'gso-check':
      return (await import('./gso-check')).gsoCheckMain(rest);
    case 'bench': {
      // A child process, so guest-sim never imports bench/ (it lives outside the package's runtime).
      const { spawnSync } = await import('node:child_process');
      const runJs = (await import('node:path')).join(__dirname, '..', 'bench', 'run.js');
      const r = spawnSync(process.execPath, [runJs, ...rest], { stdio: 'inherit' });
      if (r.error) throw r.error;
      return r.status ?? 1;
    }
    default:
      throw new UsageError(`unknown command '${cmd}' (see 'vhost-tap --help')`);
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    const msg = e instanceof UsageError || e instanceof VhostTapError || e instanceof Error ? e.message : String(e);
    console.error(`vhost-tap: ${msg}`);
    process.exitCode = 2;
  },
);

