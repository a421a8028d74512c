#!/usr/bin/env node
// `npm run soak -- --minutes N`: a long run of mixed traffic through one
// device, to see whether anything leaks or goes missing over time: UDP echo
// both ways, TCP transfers both ways, control commands, queue-pair changes
// and a driver reset with a fresh initialisation every 10 s. Samples the
// process's RSS, open fds and threads over time and ends with the frames not
// accounted for (the device's counters checked against the TAP's kernel
// counters). Everything runs in a throw-away 'vt…' namespace.

import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { parseArgs } from 'node:util';

import { CTRL, type DeviceStats } from '../backend';
import { GuestSim, parseOffloads } from '../guest-sim/guest';
import { Netns } from '../host/netns';
import { steadySoak } from './soak-steady';

const HELP = `Usage: npm run soak -- [options]

Runs a simulated guest (guest-sim) behind a TAP in a namespace of its own with
mixed traffic for a while: UDP echo (host → guest → host) on 16 flows, TCP to
the guest's discard port and from its source port, control commands every
3 s (RX modes, and RX interrupt coalescing on and off), a queue-pair change (VQ_PAIRS_SET) every 7 s and a
driver reset with a fresh initialisation every 10 s. Prints RSS, open fds and
threads of this process over time, and at the end the frames the device and
the kernel do not agree on. Exit status 1 when a frame is not accounted for.
Needs root.

Options:
  --minutes N      how long (default 10; fractions allowed)
  --pairs N        queue pairs (default 4)
  --sample S       seconds between resource samples (default 30)
  --udp-pps N      UDP echo requests per second (default 4000)
  --reset-every S  seconds between resets (default 10)
  --pairs-every S  seconds between queue-pair changes (default 7)
  --offloads LIST  what the guest negotiates, as 'vhost-tap run --offloads' (default: all
                   offered); 'none' makes the host verify every TCP/UDP checksum
  --no-reset, --no-pairs, --no-ctrl
                   leave out the resets, the queue-pair changes or the control commands
                   (to find which one a problem comes with)
  --json           print the whole report as JSON at the end
  --steady         the other mode: the guest of 'vhost-tap run' under steady traffic, no
                   resets, memory of every isolate over time (--steady --help)
  -h, --help       this help`;

const HOST4 = '10.203.31.1';
const GUEST4 = '10.203.31.2';
const GUEST_MAC = '52:54:00:1f:00:02';
/** Driver reset and fresh initialisation period (issue 12). */
const RESET_EVERY_MS = 10_000;
const CTRL_EVERY_MS = 3_000;
const PAIRS_EVERY_MS = 7_000;
/** Bytes of one TCP transfer each way: long enough to be real traffic, short enough that many finish between resets. */
const TCP_BYTES = 4 << 20;
/** After a re-initialisation, before sampling resources: the guest's Workers start asynchronously. */
const SETTLE_MS = 1000;

interface Sample {
  t: number;
  rssMiB: number;
  /** V8 heap in use and memory outside it (ArrayBuffers, the addon's): where RSS growth would come from. */
  heapMiB: number;
  externalMiB: number;
  fds: number;
  threads: number;
  resets: number;
  rxFrames: number;
  txFrames: number;
  udpSent: number;
  udpEchoed: number;
  tcpOk: number;
  tcpBroken: number;
}

interface PeerStatus {
  udpSent: number;
  udpEchoed: number;
  tcpOk: number;
  tcpBroken: number;
  tcpBad: number;
}

function resources(): { rssMiB: number; heapMiB: number; externalMiB: number; fds: number; threads: number } {
  const status = fs.readFileSync('/proc/self/status', 'utf8');
  const field = (name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(status)?.[1] ?? NaN);
  const m = process.memoryUsage();
  return {
    rssMiB: Math.round(field('VmRSS') / 1024),
    heapMiB: Math.round(m.heapUsed / 2 ** 20),
    externalMiB: Math.round(m.external / 2 ** 20),
    fds: fs.readdirSync('/proc/self/fd').length,
    threads: field('Threads'),
  };
}

function tapCounters(ns: Netns, tap: string): { rxPackets: number; rxDropped: number; txPackets: number; txDropped: number } {
  const [l] = JSON.parse(ns.ip('-s', '-j', 'link', 'show', tap)) as { stats64: { rx: { packets: number; dropped: number }; tx: { packets: number; dropped: number } } }[];
  return { rxPackets: l.stats64.rx.packets, rxDropped: l.stats64.rx.dropped, txPackets: l.stats64.tx.packets, txDropped: l.stats64.tx.dropped };
}

/** The host side: UDP echo on 16 flows at a steady rate, and TCP transfers both ways one after another. */
const PEER = `
const dgram = require('node:dgram'), net = require('node:net');
const [guest, pps, tcpBytes] = [process.argv[1], Number(process.argv[2]), Number(process.argv[3])];
const st = { udpSent: 0, udpEchoed: 0, tcpOk: 0, tcpBroken: 0, tcpBad: 0 };
const seen = new Set();
const socks = [];
for (let i = 0; i < 16; i++) {
  const s = dgram.createSocket('udp4');
  s.on('message', (m) => { const id = m.readUInt32BE(0); if (!seen.has(id)) { seen.add(id); st.udpEchoed++; } if (seen.size > 1e6) seen.clear(); });
  s.on('error', () => {});
  socks.push(s);
}
let id = 0;
const udp = setInterval(() => {
  for (let k = 0; k < pps / 100; k++) { const b = Buffer.alloc(64); b.writeUInt32BE(id >>> 0, 0); socks[id % 16].send(b, 7, guest); id++; st.udpSent++; }
}, 10);
let stopping = false;
function discard() {
  return new Promise((resolve) => {
    const chunk = Buffer.alloc(64 * 1024, 7); let sent = 0; let done = false;
    const s = net.connect(9, guest);
    s.setTimeout(15000, () => s.destroy(new Error('timeout')));
    const more = () => { while (sent < tcpBytes) { sent += chunk.length; if (!s.write(chunk)) return s.once('drain', more); } s.end(); };
    s.on('connect', more);
    s.on('close', (err) => { if (!done) { done = true; if (err || sent < tcpBytes) st.tcpBroken++; else st.tcpOk++; resolve(); } });
    s.on('error', () => {});
  });
}
function source() {
  return new Promise((resolve) => {
    let n = 0, bad = 0, done = false, firstBad = -1, lastBad = -1; const shifts = new Map(); const sample = [];
    const s = net.connect(19, guest);
    s.setTimeout(15000, () => s.destroy(new Error('timeout')));
    s.on('data', (b) => {
      for (let i = 0; i < b.length; i++) if (b[i] !== (n + i) % 251) {
        if (firstBad < 0) firstBad = n + i;
        lastBad = n + i; bad++;
        // Which offset of the pattern the wrong byte belongs to (mod 251): one shift = data from elsewhere in the stream.
        const sh = (((b[i] - (n + i)) % 251) + 251) % 251; shifts.set(sh, (shifts.get(sh) || 0) + 1);
        if (sample.length < 16) sample.push(b[i]);
      }
      n += b.length;
    });
    s.on('close', () => {
      if (done) return; done = true;
      if (bad) { st.tcpBad++; console.error('soak peer: source transfer with wrong bytes: ' + JSON.stringify({ bytes: n, bad, firstBad, lastBad, shifts: [...shifts].slice(0, 4), sample, port: s.localPort })); }
      if (n === tcpBytes && !bad) st.tcpOk++; else st.tcpBroken++; resolve();
    });
    s.on('error', () => {});
  });
}
(async () => { while (!stopping) { await discard(); if (stopping) break; await source(); } })();
const report = setInterval(() => console.log(JSON.stringify(st)), 1000);
process.on('SIGTERM', () => {
  stopping = true; clearInterval(udp);
  // Late echoes still count.
  setTimeout(() => { clearInterval(report); console.log(JSON.stringify(st)); process.exit(0); }, 1500);
});`;

async function main(): Promise<number> {
  if (process.argv.includes('--steady')) return steadySoak(process.argv.slice(2).filter((a) => a !== '--steady'));
  const { values: o } = parseArgs({
    args: process.argv.slice(2),
    options: {
      minutes: { type: 'string' },
      pairs: { type: 'string' },
      sample: { type: 'string' },
      'udp-pps': { type: 'string' },
      'reset-every': { type: 'string' },
      'pairs-every': { type: 'string' },
      offloads: { type: 'string' },
      'no-reset': { type: 'boolean' },
      'no-pairs': { type: 'boolean' },
      'no-ctrl': { type: 'boolean' },
      json: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (o.help) {
    console.log(HELP);
    return 0;
  }
  const num = (name: string, v: string | undefined, def: number, min: number): number => {
    const n = v === undefined ? def : Number(v);
    if (!Number.isFinite(n) || n < min) throw new Error(`--${name} must be a number >= ${min}, got '${v}'`);
    return n;
  };
  const minutes = num('minutes', o.minutes, 10, 0.1);
  const pairs = Math.floor(num('pairs', o.pairs, 4, 1));
  const sampleS = num('sample', o.sample, 30, 1);
  const pps = Math.floor(num('udp-pps', o['udp-pps'], 4000, 100));
  const resetEveryMs = num('reset-every', o['reset-every'], RESET_EVERY_MS / 1000, 1) * 1000;
  const pairsEveryMs = num('pairs-every', o['pairs-every'], PAIRS_EVERY_MS / 1000, 0.5) * 1000;
  const features = o.offloads === undefined ? undefined : parseOffloads(o.offloads);
  if (process.getuid?.() !== 0) throw new Error('the soak creates a network namespace and a TAP: run it as root');

  const ns = Netns.create('soak');
  const tap = `vts${process.pid.toString(36)}`;
  let guest: GuestSim | undefined;
  let peer: ReturnType<typeof spawn> | undefined;
  let interrupted = false;
  const onSignal = (): void => {
    interrupted = true;
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    guest = await GuestSim.start({ tap, netns: ns.name, queuePairs: pairs, ip4: `${GUEST4}/24`, mac: GUEST_MAC, sourceBytes: TCP_BYTES, features });
    const errors: string[] = [];
    guest.on('needs-reset', (e: Error) => errors.push(`needs-reset: ${e.message}`));
    guest.on('error', (e: Error) => errors.push(`guest worker: ${e.message}`));
    guest.device.on('warning', (e: Error) => errors.push(`warning: ${e.message}`));
    ns.ip('addr', 'add', `${HOST4}/24`, 'dev', tap);
    ns.ip('neigh', 'replace', GUEST4, 'lladdr', GUEST_MAC, 'dev', tap, 'nud', 'permanent');
    // Guest memory pages count in RSS once touched, and traffic touches more of its buffers
    // over minutes: touch every page now (an atomic add of 0 changes nothing, even in live
    // rings), so RSS growth after this is the process's own.
    const u8 = new Uint8Array(guest.mem);
    for (let i = 0; i < u8.length; i += 4096) Atomics.add(u8, i, 0);
    const guestMiB = Math.round(guest.mem.byteLength / 2 ** 20);
    if (!o.json) console.log(`guest memory ${guestMiB} MiB (in RSS from the start), ${pairs} queue pairs, UDP ${pps}/s, TCP transfers of ${TCP_BYTES >> 20} MiB each way`);

    const hostOut0 = hostPacketsOut(ns);
    const tap0 = tapCounters(ns, tap);
    let peerStatus: PeerStatus = { udpSent: 0, udpEchoed: 0, tcpOk: 0, tcpBroken: 0, tcpBad: 0 };
    peer = spawn('ip', ['netns', 'exec', ns.name, process.execPath, '-e', PEER, GUEST4, String(pps), String(TCP_BYTES)], { stdio: ['ignore', 'pipe', 'inherit'] });
    let buf = '';
    peer.stdout!.on('data', (d: Buffer) => {
      buf += d;
      const lines = buf.split('\n');
      buf = lines.pop() ?? '';
      for (const l of lines) if (l.startsWith('{')) peerStatus = JSON.parse(l) as PeerStatus;
    });
    const peerExit = new Promise((r) => peer!.once('exit', r));

    const start = Date.now();
    const endAt = start + minutes * 60_000;
    const samples: Sample[] = [];
    let resets = 0;
    let ctrlCommands = 0;
    let ctrlErrors = 0;
    let pairChanges = 0;
    let nextReset = o['no-reset'] ? Infinity : start + resetEveryMs;
    let nextCtrl = o['no-ctrl'] ? Infinity : start + CTRL_EVERY_MS;
    let nextPairs = o['no-pairs'] ? Infinity : start + pairsEveryMs;
    let nextSample = start;
    let promisc = false;
    const sample = (): void => {
      const s = guest!.device.stats();
      const row: Sample = {
        t: Math.round((Date.now() - start) / 1000),
        ...resources(),
        resets,
        rxFrames: s.totals.rxPackets,
        txFrames: s.totals.txPackets,
        ...peerStatus,
      };
      samples.push(row);
      if (!o.json) {
        if (samples.length === 1) console.log('   t s  RSS MiB  heap  ext   fds  threads  resets   RX frames   TX frames   UDP sent  echoed   TCP ok  broken');
        console.log(
          `${String(row.t).padStart(6)} ${String(row.rssMiB).padStart(8)} ${String(row.heapMiB).padStart(5)} ${String(row.externalMiB).padStart(4)} ${String(row.fds).padStart(5)} ${String(row.threads).padStart(8)} ${String(row.resets).padStart(7)} ` +
            `${String(row.rxFrames).padStart(11)} ${String(row.txFrames).padStart(11)} ${String(row.udpSent).padStart(10)} ${String(row.udpEchoed).padStart(7)} ` +
            `${String(row.tcpOk).padStart(8)} ${String(row.tcpBroken).padStart(7)}`,
        );
      }
    };
    // Resources are sampled right after a reset and re-initialisation, when every pair is
    // active again: the number of engine threads and fds depends on the active pairs, so
    // samples taken at the same point of the cycle compare like with like.
    sample();
    nextSample += sampleS * 1000;
    while (!interrupted && Date.now() < endAt) {
      const now = Date.now();
      if (o['no-reset'] && now >= nextSample) {
        sample();
        nextSample += sampleS * 1000;
      }
      if (now >= nextReset) {
        await guest.restart();
        resets++;
        nextReset += resetEveryMs;
        if (Date.now() >= nextSample) {
          // The new session's Workers start asynchronously: let them come up first.
          await new Promise((r) => setTimeout(r, SETTLE_MS));
          sample();
          nextSample += sampleS * 1000;
        }
      } else if (now >= nextCtrl) {
        let ack: number;
        if (ctrlCommands % 2 === 0) {
          promisc = !promisc;
          const cmd = ctrlCommands % 4 === 0 ? CTRL.RX_PROMISC : CTRL.RX_ALLMULTI;
          ack = await guest.control(CTRL.CLASS_RX, cmd, Uint8Array.of(promisc ? 1 : 0)).catch(() => CTRL.ERR);
        } else {
          // RX interrupt coalescing on (64 packets or 50 us) and off again, every other time:
          // windows held across resets and queue-pair changes must lose nothing either.
          const on = ctrlCommands % 4 === 1;
          const d = new DataView(new ArrayBuffer(8));
          d.setUint32(0, on ? 64 : 0, true);
          d.setUint32(4, on ? 50 : 0, true);
          ack = await guest.control(CTRL.CLASS_NOTF_COAL, CTRL.NOTF_COAL_RX_SET, new Uint8Array(d.buffer)).catch(() => CTRL.ERR);
        }
        ctrlCommands++;
        if (ack !== CTRL.OK) ctrlErrors++;
        nextCtrl += CTRL_EVERY_MS;
      } else if (now >= nextPairs) {
        const n = 1 + ((pairChanges * 3 + 1) % pairs);
        await guest.setQueuePairs(n).catch((e: Error) => errors.push(`VQ_PAIRS_SET ${n}: ${e.message}`));
        pairChanges++;
        nextPairs += pairsEveryMs;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    // Stop the host side, let the guest take what is in flight, then count.
    peer.kill('SIGTERM');
    await peerExit;
    await new Promise((r) => setTimeout(r, 1000));
    // The last sample at the same point of the cycle as the others.
    if (!o['no-reset']) {
      await guest.restart();
      resets++;
      await new Promise((r) => setTimeout(r, SETTLE_MS));
    }
    sample();
    // The device's and the TAP's counters at one quiet moment: read the device on both sides
    // of the TAP and retry while a stray frame (the host stack's own) moves in between.
    let devStats = guest.device.stats();
    let tapc = tapCounters(ns, tap);
    for (let i = 0; i < 20; i++) {
      const again = guest.device.stats();
      if (JSON.stringify(again.totals) === JSON.stringify(devStats.totals)) break;
      devStats = again;
      tapc = tapCounters(ns, tap);
      await new Promise((r) => setTimeout(r, 100));
    }
    const acc = account(devStats, tapc);
    const csumErrors = hostChecksumErrors(ns);
    // Host side: packets the namespace sent that reached neither the device nor a TAP counter
    // (tx_dropped counts what a TAP with its carrier off, or a full queue, refuses). The one
    // place the kernel frees frames uncounted is a TAP queue being detached, so the device
    // reads such a queue off first and counts what it held (rx_pair_detached).
    const hostOut = hostPacketsOut(ns) - hostOut0;
    const hostUncounted = hostOut - (tapc.txPackets - tap0.txPackets) - (tapc.txDropped - tap0.txDropped);
    await guest.stop();
    guest = undefined;
    const final = { device: devStats };
    const first = samples.find((s) => s.t >= 60) ?? samples[0];
    const last = samples[samples.length - 1];
    const report = {
      minutes,
      pairs,
      resets,
      controlCommands: ctrlCommands,
      controlErrors: ctrlErrors,
      pairChanges,
      peer: peerStatus,
      tap: tapc,
      accounting: acc,
      resources: {
        after1min: first,
        end: last,
        max: { rssMiB: Math.max(...samples.map((s) => s.rssMiB)), fds: Math.max(...samples.map((s) => s.fds)), threads: Math.max(...samples.map((s) => s.threads)) },
      },
      drops: dropsOf(final.device),
      hostChecksumErrors: csumErrors,
      host: { packetsOut: hostOut, notReachingTheTapCounters: hostUncounted },
      errors,
      samples,
    };
    if (o.json) console.log(JSON.stringify(report, null, 2));
    else {
      console.log(`\n${resets} resets, ${ctrlCommands} control commands (${ctrlErrors} not OK), ${pairChanges} queue-pair changes in ${minutes} min`);
      console.log(`UDP: ${peerStatus.udpSent} sent, ${peerStatus.udpEchoed} echoed (the rest: in the guest's rings or Workers at a reset, or dropped by the kernel); TCP transfers: ${peerStatus.tcpOk} complete, ${peerStatus.tcpBroken} broken (resets cut connections), ${peerStatus.tcpBad} with wrong bytes`);
      console.log(`device: RX ${acc.rxPackets} frames delivered + ${acc.rxFrameDrops} dropped by name; TX ${acc.txPackets} written + ${acc.txDrops} dropped by name (of ${acc.txUsedChains} chains)`);
      console.log(`TAP (kernel): handed ${tapc.txPackets} frames to the device, got ${tapc.rxPackets} from it; dropped before the device (tx_dropped) ${tapc.txDropped}`);
      console.log(`drops by name: ${JSON.stringify(report.drops)}; checksum errors the host stack saw: ${JSON.stringify(csumErrors)}`);
      console.log(`resources (sampled after a reset) after 1 min → end (max): RSS ${first.rssMiB} → ${last.rssMiB} MiB (${report.resources.max.rssMiB}), fds ${first.fds} → ${last.fds} (${report.resources.max.fds}), threads ${first.threads} → ${last.threads} (${report.resources.max.threads})`);
      console.log(`host stack → TAP: ${hostOut} packets sent, ${hostUncounted} of them reached neither the device nor a TAP counter`);
      const why = [...acc.why, ...(hostUncounted ? [`${hostUncounted} sent by the host stack reached neither the device nor a TAP counter`] : [])];
      console.log(`frames not accounted for: ${acc.unaccounted + Math.abs(hostUncounted)}${why.length ? ` (${why.join('; ')})` : ''}`);
      if (errors.length) console.log(`errors: ${errors.slice(0, 10).join(' | ')}`);
    }
    return acc.unaccounted === 0 && hostUncounted === 0 && peerStatus.tcpBad === 0 && errors.length === 0 ? 0 : 1;
  } finally {
    if (peer && peer.exitCode === null) peer.kill('SIGKILL');
    if (guest) await guest.stop().catch(() => undefined);
    ns.delete();
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
  }
}

/** Packets the namespace's IPv4 and IPv6 stacks sent (OutRequests): every frame towards the guest starts as one. */
function hostPacketsOut(ns: Netns): number {
  const r = ns.exec('cat', ['/proc/net/snmp']);
  const ip = r.split('\n').filter((l) => l.startsWith('Ip:'));
  const v4 = ip.length < 2 ? NaN : Number(ip[1].split(/\s+/)[ip[0].split(/\s+/).indexOf('OutRequests')]);
  const v6line = ns.exec('cat', ['/proc/net/snmp6']).split('\n').find((l) => l.startsWith('Ip6OutRequests'));
  const v6 = v6line ? Number(v6line.split(/\s+/)[1]) : NaN;
  return v4 + v6;
}

/** InCsumErrors of TCP and UDP in the namespace (/proc/net/snmp): frames whose payload did not match its checksum. */
function hostChecksumErrors(ns: Netns): { tcp: number; udp: number } {
  const r = ns.exec('cat', ['/proc/net/snmp']);
  const field = (proto: string): number => {
    const lines = r.split('\n').filter((l) => l.startsWith(`${proto}:`));
    if (lines.length < 2) return NaN;
    const names = lines[0].split(/\s+/);
    const values = lines[1].split(/\s+/);
    return Number(values[names.indexOf('InCsumErrors')]);
  };
  return { tcp: field('Tcp'), udp: field('Udp') };
}

function dropsOf(s: DeviceStats): Record<string, number> {
  const out: Record<string, number> = {};
  for (const q of s.queues) for (const [k, v] of Object.entries(q.drops)) if (v) out[k] = (out[k] ?? 0) + v;
  return out;
}

/**
 * Frames the device and the kernel do not agree on: TX chains used that are neither a
 * frame written nor a named drop; frames the TAP received that the device did not write
 * (or the reverse); frames the TAP handed out that the device neither delivered nor dropped
 * by name.
 */
function account(s: DeviceStats, tap: ReturnType<typeof tapCounters>): {
  rxPackets: number;
  rxFrameDrops: number;
  txPackets: number;
  txDrops: number;
  txUsedChains: number;
  unaccounted: number;
  why: string[];
} {
  let rxPackets = 0;
  let rxFrameDrops = 0;
  let rxReadErrors = 0;
  let txPackets = 0;
  let txDrops = 0;
  let txUsedChains = 0;
  for (const q of s.queues) {
    if (q.kind === 'rx') {
      rxPackets += q.packets;
      rxFrameDrops += (q.drops.rx_truncated ?? 0) + (q.drops.rx_runt ?? 0) + (q.drops.rx_filtered ?? 0) + (q.drops.rx_pair_detached ?? 0);
      rxReadErrors += q.drops.tap_read_error ?? 0;
    } else if (q.kind === 'tx') {
      txPackets += q.packets;
      txUsedChains += q.usedChains;
      for (const v of Object.values(q.drops)) txDrops += v;
    }
  }
  const why: string[] = [];
  const tx = txUsedChains - txPackets - txDrops;
  if (tx) why.push(`${tx} TX chains neither written nor dropped by name`);
  const toTap = Math.abs(tap.rxPackets - txPackets);
  if (toTap) why.push(`the TAP received ${tap.rxPackets}, the device wrote ${txPackets}`);
  const fromTap = Math.max(0, tap.txPackets - rxPackets - rxFrameDrops - rxReadErrors) + Math.max(0, rxPackets + rxFrameDrops - tap.txPackets);
  if (fromTap) why.push(`the TAP handed out ${tap.txPackets}, the device delivered ${rxPackets} and dropped ${rxFrameDrops} (+${rxReadErrors} read errors)`);
  return { rxPackets, rxFrameDrops, txPackets, txDrops, txUsedChains, unaccounted: Math.abs(tx) + toTap + fromTap, why };
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    console.error(`soak: ${(e as Error).message ?? e}`);
    process.exitCode = 2;
  },
);
