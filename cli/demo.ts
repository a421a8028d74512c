// `vhost-tap demo` (what `npm start` runs): a simulated guest behind a TAP in
// a namespace it creates and deletes; pings it, UDP-echoes it and moves TCP
// both ways with the namespace's kernel as the peer, then prints what happened.

import { GuestSim, DiscardEvent } from '../guest-sim/guest';
import { TUN } from '../backend';
import { haveProgram, Netns, requireRoot } from '../host/netns';
import { intIn, parse } from './args';
import { printStats } from './run';

export const DEMO_HELP = `Usage: vhost-tap demo [--queues N]

Creates its own network namespace, runs a simulated guest behind a TAP in it,
gives the host side an address, pings the guest over IPv4 and IPv6 (when
'ping' is installed), sends UDP echoes, moves 256 MiB over TCP each way (to
the guest's discard port, SHA-256 compared; from its source port, pattern
checked), prints what happened and deletes everything. Needs root (CAP_NET_ADMIN).

Options:
  --queues N   queue pairs (default 2)
  -h, --help   this help`;

/** The demo was stopped by a signal (the message is its name). */
class Interrupted extends Error {}

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
  const r = ns.run(process.execPath, ['-e', script]);
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
  const send = ns.run(process.execPath, ['-e', `
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
  const recv = ns.run(process.execPath, ['-e', `
const net = require('node:net'); let n = 0, bad = 0; const t0 = process.hrtime.bigint();
const s = net.connect(19, ${JSON.stringify(addr)});
s.on('data', (b) => { for (let i = 0; i < b.length; i++) if (b[i] !== (n + i) % 251) bad++; n += b.length; });
s.on('end', () => console.log(n, bad, Number(process.hrtime.bigint() - t0) / 1e9));
s.on('error', (e) => { console.error(e.message); process.exit(1); });`]);
  // A receiver that printed nothing (it failed, see its stderr) leaves these NaN: reported, not thrown.
  const [n, bad, secs2] = [0, 1, 2].map((i) => Number(recv.stdout.trim().split(' ')[i]));
  const ok2 = recv.status === 0 && n === DEMO_TCP_BYTES && bad === 0;
  if (!ok2) failures++;
  console.log(`tcp ${addr} port 19 (source): ${(n / 2 ** 20).toFixed(0)} MiB guest → host in ${secs2.toFixed(2)} s` +
    ` (${((n * 8) / secs2 / 1e9).toFixed(2)} Gbit/s), pattern ${ok2 ? 'intact' : `BAD (${bad} wrong bytes, ${n} bytes) ${recv.stderr.trim()}`}`);
  return failures;
}

export async function cmdDemo(argv: string[]): Promise<number> {
  const o = parse('demo', argv, { queues: { type: 'string' } });
  if (o.help) {
    console.log(DEMO_HELP);
    return 0;
  }
  const queues = intIn('queues', o.queues, 2, 1, TUN.MAX_QUEUES, " (the TAP's queue limit)");
  requireRoot('demo creates a network namespace and a TAP');
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
        const r = ns.run('ping', [fam, '-c', '5', '-i', '0.2', '-W', '2', addr]);
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

