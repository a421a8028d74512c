// Integration: live migration of a Linux guest under QEMU 7.2 (TCG, 1 vCPU,
// -cpu qemu64, memfd memory shared, checksum offload negotiated so the guest
// trusts what the device wrote) between two QEMUs, each on its own back end,
// both back ends' TAPs in one bridge in the test's namespace with the host's
// address on the bridge.
// - vhost-tap: each QEMU on its own `vhost-tap vhost-user` process. While
//   100 MB flow host → guest the guest migrates A → B: equal SHA-256; then
//   100 MB guest → host from B; then back to a new QEMU on A's socket under
//   traffic again. Ping 0% loss after each migration. The guest does not
//   announce itself (guest_announce=off): QEMU asks the destination back end
//   (SEND_RARP), whose RARP is seen on the bridge and moves the bridge's
//   entry for the guest's MAC to B's TAP.
// - The proof that this can fail: the same A → B leg with the source back end's
//   workers marking nothing (test hook VHOST_TAP_TEST_NO_DIRTY_LOG=1) must end
//   with a hash mismatch. It needs the guest not to zero pages at allocation
//   (see MIGRATION_KERNEL_ARGS); both tests boot it that way.
// - A destination guest that wedges (console silent, or its QEMU exits) is
//   diagnosed, logged and tried again with a fresh guest (WEDGE_ATTEMPTS): the
//   same leg wedges on QEMU's own TAP back end too.
// The downtime (longest gap between ping replies, and QEMU's own figure) is
// logged, not asserted.
// The harness was first proven on QEMU's own tap back end (A → B under 100 MB,
// equal SHA-256, four runs); that control is not in the suite: in one run under
// load its transfer stalled after the migration until the 10-minute timeout,
// and it tests QEMU, not vhost-tap.

import test, { ExecutionContext } from 'ava';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';

import { has } from '../backend';
import { guestToHost, ping, waitReachable } from '../host/linux-guest/host';
import { buildGuestImage } from '../host/linux-guest/initramfs';
import { bootOn, GuestInstance, incomingOn, makeBridge, MigratingGuestOptions, migrate, pingAcross, Site, startHostToGuest, stop } from '../host/linux-guest/migration';
import { GUEST_KERNEL_ARGS, LinuxGuest, randomGuestMac } from '../host/linux-guest/qemu';
import { Netns, withNetns } from '../host/netns';
import { RunningCli, startCommand } from './helpers/cli';
import { readyPython } from './helpers/netns-python';

const HOST4 = '10.203.19.1';
const GUEST4 = '10.203.19.2';
/** 100 MB as issue 19 asks; VT_MIGRATION_TCP_BYTES overrides it for quick local runs. */
const BYTES = Number(process.env.VT_MIGRATION_TCP_BYTES ?? 100e6);
/** TCG on 2 shared cores moves ~20–300 Mbps; 100 MB may take minutes when the machine is busy. */
const TRANSFER_TIMEOUT_MS = 600_000;
const BOOT_TIMEOUT_MS = 300_000;
/** Let the transfer get going before the migration starts, so the migration happens under traffic. */
const TRAFFIC_LEAD_MS = 1500;
/** How long the RARP capture listens at most (it ends at the first RARP from the guest). */
const RARP_CAPTURE_S = 600;
/**
 * The proof leg's transfer: with stale pages the data still arrives (TCP trusts the checksum
 * the device vouched for), so a transfer that has not ended by then fails the proof.
 */
const PROOF_TRANSFER_TIMEOUT_MS = 300_000;

/**
 * The migration stream's bandwidth on the legs with a paused reader: slow enough that the
 * first pass takes seconds (256 MiB at 32 MiB/s: ~3 s of non-zero pages here), so the reader
 * stops while it runs.
 */
const PAUSED_LEG_BANDWIDTH = 32 * 1024 * 1024;

/** The guest's TCP receive buffer limit on those legs (tcp_rmem max): 64 MiB of its 256 MiB. */
const GUEST_TCP_RMEM_MAX = 64 * 1024 * 1024;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface Leg {
  label: string;
  port: number;
  /**
   * Stop the guest's reader while the migration runs and resume it on the destination: the
   * data that arrives meanwhile waits in RX buffers the device wrote during the migration, so
   * a page the dirty log missed would reach the reader stale (TCP already acknowledged it and
   * cannot repair it). The reader stops when the migration's first pass has gone through half
   * of RAM, to leave such buffers in pages that pass already sent. With the source's logging
   * switched off by the test hook this gives a hash mismatch (the proof test below), as long as
   * the guest does not zero the buffers' pages when it allocates them (MIGRATION_KERNEL_ARGS).
   */
  pauseReader?: boolean;
}

interface LegResult {
  dst: GuestInstance;
  /** Whether the host end finished and the guest's sink printed its hash, and both hashes. */
  host?: { bytes: number; sha256: string; ms: number };
  guestSha256?: string;
  failure?: string;
  /** The whole message, with the guest's console tail when it came from the guest. */
  failureDetail?: string;
  /** After a failure: the destination guest no longer ran its console (or its QEMU exited). */
  wedged?: boolean;
  gapMs: number;
  qemuDowntimeMs: number;
  totalMs: number;
  pingAcross: string;
}

/** Migrates the guest from `from` to a new QEMU on `to` while BYTES flow host → guest. */
async function migrateUnderTraffic(ns: string, from: GuestInstance, to: Site, opts: MigratingGuestOptions, leg: Leg, transferMs = TRANSFER_TIMEOUT_MS): Promise<LegResult> {
  const uri = `unix:/tmp/vt-mig-${process.pid}-${leg.port}.sock`;
  const dst = await incomingOn(to, opts, uri);
  // A receive buffer far larger than what the host keeps in flight: the queue never reaches it,
  // so TCP never prunes it by copying (a copy is a CPU write, which QEMU tracks itself).
  if (leg.pauseReader) await from.guest.check(`echo '4096 131072 ${GUEST_TCP_RMEM_MAX}' > /proc/sys/net/ipv4/tcp_rmem`);
  const transfer = await startHostToGuest(from.guest, ns, GUEST4, leg.port, BYTES, transferMs);
  await sleep(TRAFFIC_LEAD_MS);
  const gap = pingAcross(ns, GUEST4);
  let m;
  try {
    m = await migrate(
      from,
      dst,
      uri,
      leg.pauseReader ? { maxBandwidth: PAUSED_LEG_BANDWIDTH, halfway: () => transfer.pauseReader(from.guest, true) } : {},
    );
  } catch (e) {
    // The ping must not outlive a failed leg (it would keep the test's process alive).
    await gap();
    throw e;
  } finally {
    await stop(from);
  }
  const out: LegResult = { dst, gapMs: NaN, qemuDowntimeMs: m.downtimeMs, totalMs: m.totalMs, pingAcross: '' };
  try {
    // A guest that no longer answers its console fails here.
    if (leg.pauseReader) await transfer.pauseReader(dst.guest, false);
    // A destination QEMU that exits (its guest panicked: -no-reboot) fails the leg now, not
    // when the host end gives up after TRANSFER_TIMEOUT_MS.
    out.host = await Promise.race([
      transfer.host,
      dst.guest.exited.then((x) => Promise.reject(new Error(`the destination QEMU exited (${x.signal ?? `code ${x.code}`}) during the transfer`))),
    ]);
    // The sink prints its hash when the connection ends, right after the host's end closes.
    out.guestSha256 = await transfer.guestOn(dst.guest, 60_000);
  } catch (e) {
    out.failure = (e as Error).message.split('\n')[0];
    out.failureDetail = (e as Error).message;
  }
  const g = await gap();
  out.gapMs = g.longestGapMs;
  out.pingAcross = `${g.received}/${g.transmitted}`;
  return out;
}

function logLeg(t: ExecutionContext, leg: Leg, r: LegResult): void {
  t.log(
    `${leg.label}: downtime ${r.gapMs.toFixed(0)} ms (longest gap between ping replies; QEMU: ${r.qemuDowntimeMs} ms stopped), ` +
      `migration ${r.totalMs} ms, ${BYTES / 1e6} MB host → guest in ${r.host ? `${(r.host.ms / 1000).toFixed(1)} s` : '—'}, ping ${r.pingAcross} across`,
  );
}

/** A text symbol of the guest's modules (from its /proc/kallsyms at boot). */
interface GuestSymbol {
  addr: bigint;
  name: string;
}

/**
 * The guest's module text symbols, read once after boot: the guest's memory (and so its module
 * addresses) moves with it, so they resolve a RIP in module space on any later QEMU.
 */
async function moduleSymbols(g: LinuxGuest): Promise<GuestSymbol[]> {
  const out = await g.check(`grep -e ' [tT] .*\\[' -e ' __log_buf$' /proc/kallsyms`);
  const logBuf = out.map((l) => /^([0-9a-f]+) \S __log_buf$/.exec(l)).find((m) => m);
  if (logBuf) guestLogBuf = BigInt(`0x${logBuf[1]}`);
  const syms = out
    .map((l) => /^([0-9a-f]+) [tT] (\S+)\s+\[(\S+)\]/.exec(l))
    .filter((m): m is RegExpExecArray => m !== null && BigInt(`0x${m[1]}`) !== 0n)
    .map((m) => ({ addr: BigInt(`0x${m[1]}`), name: `${m[3]}:${m[2]}` }));
  return syms.sort((x, y) => (x.addr < y.addr ? -1 : x.addr > y.addr ? 1 : 0));
}

/** The guest kernel's log buffer (its virtual address), read with the module symbols. */
let guestLogBuf: bigint | undefined;
/** What of the log buffer is read: the kernel's default for this config (CONFIG_LOG_BUF_SHIFT 18). */
const LOG_BUF_BYTES = 256 * 1024;

/**
 * The guest kernel's messages about virtio from its log buffer, read from the destination's
 * memory (QMP memsave, through the vCPU's page tables): the console has `dmesg -n 1`, and a
 * wedged guest cannot run dmesg, but a driver that gave up on a ring said why there.
 */
async function guestKernelLog(g: GuestInstance): Promise<string[]> {
  if (guestLogBuf === undefined) return ['(no __log_buf symbol)'];
  const file = `/tmp/vt-miglog-${process.pid}.bin`;
  try {
    await g.qmp.execute('memsave', { val: Number(BigInt.asIntN(64, guestLogBuf)), size: LOG_BUF_BYTES, filename: file });
    const text = fs.readFileSync(file).toString('latin1');
    const strings = text.split(/[^\x20-\x7e]+/).filter((x) => /virtio|vring|eth0|BUG|WARN|head|out of range/i.test(x));
    return strings.length ? strings.slice(-20) : ['(nothing about virtio in the kernel log)'];
  } catch (e) {
    return [`reading the kernel log failed: ${(e as Error).message.split('\n')[0]}`];
  } finally {
    fs.rmSync(file, { force: true });
  }
}

/** `rip` as module:function+offset when a module symbol at or below it is known. */
function symbolize(rip: string, syms: GuestSymbol[]): string {
  const a = BigInt(`0x${rip}`);
  let best: GuestSymbol | undefined;
  for (const s of syms) if (s.addr <= a) best = s;
  return best && a - best.addr < 0x10000n ? `${best.name}+0x${(a - best.addr).toString(16)}` : rip;
}

const DIAGNOSE_SAMPLES = 12;
const DIAGNOSE_STEP_MS = 250;

/**
 * What a failed leg leaves to go on: where the destination's vCPU is (halted, or where it runs,
 * sampled a dozen times and resolved against the guest's module symbols), the interrupt counts
 * over the sampling, the rings and the kernel's log as they are in guest memory, and each back
 * end's last log lines.
 */
async function diagnose(t: ExecutionContext, r: LegResult, backEnds: Record<string, RunningCli>, syms: GuestSymbol[]): Promise<void> {
  const hmp = (cmd: string): Promise<string> => r.dst.qmp.execute<string>('human-monitor-command', { 'command-line': cmd });
  try {
    const s = await r.dst.qmp.execute<{ status: string }>('query-status');
    const irqBefore = await hmp('info irq').catch(() => '');
    const seen = new Map<string, number>();
    let halted = 0;
    let ifClear = 0;
    for (let i = 0; i < DIAGNOSE_SAMPLES; i++) {
      const regs = await hmp('info registers');
      const rip = /RIP=([0-9a-f]+)/.exec(regs)?.[1] ?? '?';
      const where = rip === '?' ? rip : symbolize(rip, syms);
      seen.set(where, (seen.get(where) ?? 0) + 1);
      if (/HLT=1/.test(regs)) halted++;
      // EFL's bit 9 is IF: clear means the guest runs with interrupts off (a hard irq or a spinning lock).
      const efl = /EFL=([0-9a-f]+)/.exec(regs)?.[1];
      if (efl && (parseInt(efl, 16) & 0x200) === 0) ifClear++;
      await sleep(DIAGNOSE_STEP_MS);
    }
    const irqAfter = await hmp('info irq').catch(() => '');
    for (const line of await ringDump(r.dst, hmp)) t.log(line);
    t.log(`guest kernel log (virtio lines):\n${(await guestKernelLog(r.dst)).join('\n')}`);
    const where = [...seen].sort((x, y) => y[1] - x[1]).map(([w, n]) => `${w} ×${n}`).join(', ');
    t.log(`destination: ${s.status}; ${DIAGNOSE_SAMPLES} samples ${DIAGNOSE_STEP_MS} ms apart: halted ${halted}, interrupts off ${ifClear}; RIP ${where}`);
    t.log(`interrupts over the sampling: ${irqDelta(irqBefore, irqAfter) || '(info irq gave nothing)'}`);
  } catch (e) {
    t.log(`destination: QMP did not answer (${(e as Error).message.split('\n')[0]})`);
  }
  for (const [name, cli] of Object.entries(backEnds)) t.log(`back end ${name}, last lines:\n${cli.errors().split('\n').slice(-25).join('\n')}`);
}

/** Reads `count` 16-bit words of guest-physical memory at `gpa` (HMP xp). */
async function readWords(hmp: (cmd: string) => Promise<string>, gpa: number, count: number): Promise<number[]> {
  const out = await hmp(`xp /${count}hx 0x${gpa.toString(16)}`);
  return [...out.matchAll(/0x([0-9a-f]{4})\b/g)].map((m) => parseInt(m[1], 16));
}

/**
 * The split rings of the destination's virtio-net as they are in guest memory: avail and used
 * index, each side's event index, and the last used elements (id, len). A driver that marked
 * a ring broken stops reading it, so this is what it last disagreed with.
 */
async function ringDump(g: GuestInstance, hmp: (cmd: string) => Promise<string>): Promise<string[]> {
  const lines: string[] = [];
  try {
    const devs = await g.qmp.execute<{ path: string; name: string }[]>('x-query-virtio');
    const net = devs.find((d) => d.name === 'virtio-net');
    if (!net) return [`no virtio-net among ${JSON.stringify(devs)}`];
    for (const queue of [0, 1]) {
      const q = await g.qmp.execute<Record<string, number>>('x-query-virtio-vhost-queue-status', { path: net.path, queue });
      const num = q.num;
      const [aflags, aidx] = await readWords(hmp, q['avail-phys'], 2);
      const [usedEvent] = await readWords(hmp, q['avail-phys'] + 4 + 2 * num, 1);
      const [uflags, uidx] = await readWords(hmp, q['used-phys'], 2);
      const [availEvent] = await readWords(hmp, q['used-phys'] + 4 + 8 * num, 1);
      const elems: string[] = [];
      for (let k = 8; k >= 1; k--) {
        const slot = (uidx - k) & (num - 1);
        const w = await readWords(hmp, q['used-phys'] + 4 + 8 * slot, 4);
        elems.push(`[${(uidx - k) & 0xffff}] id ${w[0] | (w[1] << 16)} len ${w[2] | (w[3] << 16)}`);
      }
      lines.push(`ring ${queue} in guest memory: avail idx ${aidx} flags ${aflags} used_event ${usedEvent}; used idx ${uidx} flags ${uflags} avail_event ${availEvent}; last used: ${elems.join(', ')}`);
    }
  } catch (e) {
    lines.push(`ring dump failed: ${(e as Error).message.split('\n')[0]}`);
  }
  return lines;
}

/** The lines of HMP `info irq` ("IRQ n: count") whose count changed, as n:+delta. */
function irqDelta(before: string, after: string): string {
  const counts = (s: string): Map<string, number> => new Map([...s.matchAll(/^\s*(\d+):\s*(\d+)/gm)].map((m) => [m[1], Number(m[2])]));
  const b = counts(before);
  return [...counts(after)]
    .filter(([irq, n]) => n !== (b.get(irq) ?? 0))
    .map(([irq, n]) => `${irq}:+${n - (b.get(irq) ?? 0)}`)
    .join(' ');
}

/** How long a guest that failed a leg gets to answer a trivial console command. */
const ALIVE_TIMEOUT_MS = 30_000;

/** Whether the guest still runs its console (a trivial command within ALIVE_TIMEOUT_MS). */
async function answers(g: GuestInstance): Promise<boolean> {
  try {
    await g.guest.check('true', ALIVE_TIMEOUT_MS);
    return true;
  } catch {
    return false;
  }
}

/** Asserts the leg delivered every byte intact and the guest answers 100 pings afterwards. */
async function checkLeg(t: ExecutionContext, ns: string, leg: Leg, r: LegResult, backEnds: Record<string, RunningCli> = {}, syms: GuestSymbol[] = []): Promise<void> {
  if (r.failureDetail) {
    t.log(r.failureDetail);
    await diagnose(t, r, backEnds, syms);
    r.wedged = !(await answers(r.dst));
    if (r.wedged) throw new GuestWedged(`${leg.label}: the destination guest stopped running (its console does not answer, or its QEMU exited): ${r.failure}`);
  }
  t.is(r.failure, undefined, `${leg.label}: the transfer across the migration finished`);
  t.is(r.host?.bytes, BYTES);
  t.is(r.guestSha256, r.host?.sha256, `${leg.label}: the guest received exactly what the host sent across the migration`);
  const after = await ping(ns, GUEST4, 100, 0.02);
  t.is(after.received, 100, `${leg.label}: ping after the migration: ${after.output}`);
  logLeg(t, leg, r);
}

/**
 * Attempts of a scenario whose destination guest wedged. Seen here: after a migration under
 * traffic the destination guest sometimes stops running its console (the vCPU busy at one place,
 * or the guest panics and QEMU exits): 2 of 15 A → B legs with vhost-tap's back end on one day,
 * and 1 of 2 runs of the same leg on QEMU's own TAP back end (no vhost-tap involved), so at least
 * part of it is QEMU 7.2's TCG migration or the guest. Whether every wedge is, is not known: the
 * diagnosis each one logs (the guest kernel's log above all) is there to tell. A wedge is only
 * retried with a fresh guest; wrong data, lost pings or a stalled transfer on a guest that still
 * answers fail at once.
 */
const WEDGE_ATTEMPTS = 3;

/** A destination guest that no longer runs (thrown after its diagnosis is logged). */
class GuestWedged extends Error {}

/** Runs `scenario` in a t.try attempt, again (up to WEDGE_ATTEMPTS) when it ends with a wedged guest. */
async function retryWedged(t: ExecutionContext, scenario: (tt: ExecutionContext) => Promise<void>): Promise<void> {
  for (let i = 1; ; i++) {
    let wedged: string | undefined;
    const attempt = await t.try(async (tt) => {
      try {
        await scenario(tt);
      } catch (e) {
        if (e instanceof GuestWedged) wedged = e.message;
        throw e;
      }
    });
    if (attempt.passed || wedged === undefined || i === WEDGE_ATTEMPTS) {
      if (i > 1) t.log(`attempt ${i} of ${WEDGE_ATTEMPTS}`);
      attempt.commit();
      return;
    }
    t.log(`attempt ${i}: ${wedged}; a fresh guest tries again. The attempt's log:`);
    // Its log (with the wedge's diagnosis) stays in the test's output.
    attempt.discard({ retainLogs: true });
  }
}

/** A vhost-tap vhost-user process with its TAP in the bridge. */
async function vhostTapSite(ns: Netns, port: (ifname: string) => void, name: string, env?: Record<string, string>): Promise<Site & { cli: RunningCli; tap: string }> {
  const tap = ns.ifname();
  const socket = `/tmp/vt-migvu-${process.pid}-${name}.sock`;
  const cli = await startCommand('vhost-user', ['--socket', socket, '--tap', tap, '--netns', ns.name], 30_000, env);
  const pid = cli.child.pid!;
  ns.defer(() => {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // Already stopped.
    }
  });
  port(tap);
  return { netdev: { kind: 'vhost-user', socket }, cli, tap };
}

/** Listens on `ifname` for RARP frames (EtherType 0x8035) until one comes from `mac`; resolves with the frames' bytes. */
async function captureRarp(ns: Netns, ifname: string, mac: string): Promise<{ done(): Promise<Buffer[]> }> {
  const py = `
import socket, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x8035))
s.bind((${JSON.stringify(ifname)}, 0))
s.settimeout(1.0)
print('ready', flush=True)
end = time.time() + ${RARP_CAPTURE_S}
while time.time() < end:
    try:
        f = s.recv(2048)
    except socket.timeout:
        continue
    print(f.hex(), flush=True)
    if f[6:12] == bytes.fromhex(${JSON.stringify(mac.replace(/:/g, ''))}):
        break
`;
  const c = await readyPython(ns, py, `RARP capture on ${ifname}`);
  return { done: async () => (await c.done()).map((l) => Buffer.from(l, 'hex')) };
}

/** The bridge port that has learned `mac` (bridge fdb), or undefined. */
function fdbPort(ns: string, mac: string): string | undefined {
  const out = execFileSync('bridge', ['-n', ns, 'fdb', 'show'], { encoding: 'utf8' });
  return out.split('\n').find((l) => l.startsWith(`${mac} dev `))?.split(' ')[2];
}

/**
 * The guest kernel does not zero pages when it allocates them (init_on_alloc=0; Debian's kernel
 * has it on by default). Zeroing is a CPU write, which QEMU tracks itself: an RX buffer page
 * zeroed just before the device filled it was resent by QEMU with the device's data, so a
 * missing dirty log went unseen (the first three tries with the test hook). Without it, only
 * the device's own log tells QEMU about those pages.
 */
const MIGRATION_KERNEL_ARGS = [...GUEST_KERNEL_ARGS, 'init_on_alloc=0'];

function guestOptions(extra: Partial<MigratingGuestOptions> = {}): MigratingGuestOptions {
  return { image: buildGuestImage(), mac: randomGuestMac(), ip4: `${GUEST4}/24`, bootTimeoutMs: BOOT_TIMEOUT_MS, kernelArgs: MIGRATION_KERNEL_ARGS, ...extra };
}

async function bootChecked(t: ExecutionContext, ns: string, site: Site, opts: MigratingGuestOptions): Promise<GuestInstance> {
  const a = await bootOn(site, opts);
  t.log(`guest booted on A in ${(a.guest.bootMs / 1000).toFixed(1)} s`);
  const f = await a.guest.features();
  t.true(has(f, 'GUEST_CSUM'), `the guest trusts checksums the device wrote (features 0x${f.toString(16)})`);
  t.true(await waitReachable(ns, GUEST4), 'the guest answers before the migration');
  return a;
}

/** The round trip of the first test. */
async function roundTrip(t: ExecutionContext): Promise<void> {
  await withNetns(async (ns) => {
    const bridge = ns.ifname();
    const port = makeBridge(ns.name, bridge, [`${HOST4}/24`]);
    const siteA = await vhostTapSite(ns, port, 'A');
    const siteB = await vhostTapSite(ns, port, 'B');
    // The guest does not announce itself: QEMU asks the back end to (SEND_RARP).
    const opts = guestOptions({ guestAnnounce: false });
    const live: GuestInstance[] = [];
    ns.defer(() => live.forEach((g) => g.guest.killNow()));

    const a = await bootChecked(t, ns.name, siteA, opts);
    live.push(a);
    const syms = await moduleSymbols(a.guest);
    t.false(has(await a.guest.features(), 'GUEST_ANNOUNCE'), 'GUEST_ANNOUNCE is off');
    t.is(fdbPort(ns.name, opts.mac), siteA.tap, "the bridge has the guest's MAC on A's TAP");

    const ab = { label: 'A → B (reader paused during the migration)', port: 5201, pauseReader: true };
    const rarp = await captureRarp(ns, bridge, opts.mac);
    const r1 = await migrateUnderTraffic(ns.name, a, siteB, opts, ab);
    live.push(r1.dst);
    await checkLeg(t, ns.name, ab, r1, { A: siteA.cli, B: siteB.cli }, syms);
    t.regex(siteA.cli.errors(), /dirty-page logging on/, 'the source back end logged dirty pages during the migration');
    t.regex(siteB.cli.errors(), new RegExp(`announced ${opts.mac} with a RARP`), 'QEMU asked the destination back end to announce the guest');
    const frames = await rarp.done();
    const fromGuest = frames.find((f) => f.subarray(6, 12).equals(Buffer.from(opts.mac.replace(/:/g, ''), 'hex')));
    t.truthy(fromGuest, `a RARP from the guest's MAC reached the bridge (${frames.length} RARP frames seen)`);
    t.deepEqual(fromGuest?.subarray(0, 6), Buffer.alloc(6, 0xff), 'to broadcast');
    t.is(fromGuest?.readUInt16BE(12), 0x8035);
    t.is(fdbPort(ns.name, opts.mac), siteB.tap, "the bridge moved the guest's MAC to B's TAP");

    const g2h = await guestToHost(r1.dst.guest, ns.name, HOST4, 5202, BYTES, TRANSFER_TIMEOUT_MS);
    t.is(g2h.bytes, BYTES);
    t.is(g2h.hostSha256, g2h.guestSha256, 'guest → host from B: the host received exactly what the guest sent');
    t.log(`guest → host on B: ${BYTES / 1e6} MB in ${(g2h.ms / 1000).toFixed(1)} s`);

    // A's back end served the first QEMU; a new QEMU takes its socket for the way back.
    const ba = { label: 'B → A', port: 5203 };
    const r2 = await migrateUnderTraffic(ns.name, r1.dst, siteA, opts, ba);
    live.push(r2.dst);
    await checkLeg(t, ns.name, ba, r2, { A: siteA.cli, B: siteB.cli }, syms);
    t.is(fdbPort(ns.name, opts.mac), siteA.tap, "the bridge moved the guest's MAC back to A's TAP");
    t.notRegex(siteA.cli.errors() + siteB.cli.errors(), /refused/, 'neither back end refused anything');
    await stop(r2.dst);
  });
}

test.serial('vhost-tap: a guest on vhost-tap vhost-user migrates A → B and back under 100 MB of TCP each time with equal SHA-256; 100 MB guest → host on B; the destination announces the guest (RARP) and the bridge learns it', async (t) => {
  t.timeout(1_800_000);
  await retryWedged(t, roundTrip);
});

/** The proof's leg. */
async function proofLeg(t: ExecutionContext): Promise<void> {
  await withNetns(async (ns) => {
    const bridge = ns.ifname();
    const port = makeBridge(ns.name, bridge, [`${HOST4}/24`]);
    const siteA = await vhostTapSite(ns, port, 'A', { VHOST_TAP_TEST_NO_DIRTY_LOG: '1' });
    const siteB = await vhostTapSite(ns, port, 'B');
    const opts = guestOptions({ guestAnnounce: false });
    const live: GuestInstance[] = [];
    ns.defer(() => live.forEach((g) => g.guest.killNow()));
    const a = await bootChecked(t, ns.name, siteA, opts);
    live.push(a);

    const leg = { label: 'A → B without dirty logging (reader paused during the migration)', port: 5211, pauseReader: true };
    const r = await migrateUnderTraffic(ns.name, a, siteB, opts, leg, PROOF_TRANSFER_TIMEOUT_MS);
    live.push(r.dst);
    // QEMU did ask for the log and the session switched it on: only the workers' marking was off.
    t.regex(siteA.cli.errors(), /dirty-page logging on/, 'the source back end had logging switched on by QEMU');
    logLeg(t, leg, r);
    if (r.failure) {
      t.log(r.failureDetail);
      r.wedged = !(await answers(r.dst));
      // A wedge proves nothing: guests wedge on QEMU's own back end too (see WEDGE_ATTEMPTS).
      if (r.wedged) throw new GuestWedged(`${leg.label}: the destination guest stopped running: ${r.failure}`);
    }
    t.is(r.failure, undefined, 'the transfer finished');
    t.log(`the host sent ${r.host?.bytes} bytes with SHA-256 ${r.host?.sha256}, the guest received ${r.guestSha256}`);
    t.not(r.guestSha256, r.host?.sha256, 'without the dirty log the migration corrupted the data in flight');
  });
}

test.serial('proof that the migration test can fail: with the source back end marking no dirty pages (test hook VHOST_TAP_TEST_NO_DIRTY_LOG=1), the same A → B leg delivers data that differs from what the host sent', async (t) => {
  t.timeout(1_200_000);
  await retryWedged(t, proofLeg);
});
