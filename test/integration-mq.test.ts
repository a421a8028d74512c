// Integration for multiqueue and the control queue on a real TAP in a
// namespace the test creates: every pair carries traffic, VQ_PAIRS_SET under
// traffic, RX modes / MAC tables / VLAN filter deliver exactly what they
// should, GUEST_OFFLOADS changes what the kernel hands the guest, link state
// reaches the kernel, and reset x100 under traffic leaks nothing. The tests
// whose subject is the rings (traffic on every pair, VQ_PAIRS_SET under
// traffic, interrupt coalescing, reset x100) run on split and packed rings;
// the RX filter and link tests, which only the control queue drives, on split.

import * as fs from 'node:fs';

import test from 'ava';

import { bits, CTRL, STATUS, VirtioNetDevice } from '../backend';
import { GuestSim } from '../guest-sim/guest';
import { markerOf, MINI_FEATURES, MiniGuest, rawSendScript, RxFrame, testFrame } from './helpers/mini-guest';
import { Netns, withNetns } from '../host/netns';
import { RING_LAYOUTS, type RingLayout } from './helpers/rings';
import { udpEcho } from './helpers/udp';

const HOST4 = '10.203.2.1';
const GUEST4 = '10.203.2.2';
const GUEST_MAC = '52:54:00:12:34:56';
const OTHER_MAC = '52:54:00:aa:bb:cc';

function range(from: number, to: number): number[] {
  return Array.from({ length: to - from + 1 }, (_, i) => from + i);
}

/** The feature bit that asks for `layout`'s rings. */
const ringBits = (layout: RingLayout): bigint => (layout === 'packed' ? bits('RING_PACKED') : 0n);

/** A MiniGuest on `layout` rings (RING_PACKED added to `want` for the packed ring). */
async function miniGuest(ns: Netns, layout: RingLayout, pairs = 1, want = MINI_FEATURES): Promise<{ g: MiniGuest; tap: string }> {
  const tap = ns.ifname();
  const mem = new SharedArrayBuffer(MiniGuest.memoryBytes(pairs));
  const device = new VirtioNetDevice({ memory: mem, tap, netns: ns.name, queuePairs: pairs, mac: GUEST_MAC });
  ns.defer(() => void device.close());
  const g = new MiniGuest(device, mem);
  await g.init(want | ringBits(layout));
  if ((device.driverFeatures & bits('RING_PACKED')) !== ringBits(layout)) throw new Error(`the guest did not get ${layout} rings`);
  return { g, tap };
}

/**
 * Sends raw frames out of `tap` in the namespace (towards the guest), then returns the markers that arrived.
 * Waits (bounded) until every marker in `expect` is there, so a slow machine cannot make a frame look
 * filtered; then a short settle catches frames that should have been filtered but arrive.
 */
async function deliver(ns: Netns, g: MiniGuest, tap: string, frames: string[], expect: number[]): Promise<number[]> {
  g.drain();
  ns.exec('python3', rawSendScript(tap, frames));
  const markers = (f: RxFrame[]): number[] => f.map((x) => markerOf(x.frame)).filter((m) => m >= 0);
  const got = await g.collect(10_000, (f) => {
    const m = markers(f);
    return expect.every((e) => m.includes(e));
  });
  got.push(...(await g.collect(300)));
  return markers(got).sort((a, b) => a - b);
}

async function ctrl(g: MiniGuest, cls: number, cmd: number, data: number[] | Uint8Array): Promise<number> {
  return g.ctrl!.command(cls, cmd, Uint8Array.from(data));
}

function macTable(uni: string[], multi: string[]): Uint8Array {
  const out: number[] = [];
  for (const t of [uni, multi]) {
    out.push(t.length & 0xff, (t.length >> 8) & 0xff, 0, 0);
    for (const m of t) out.push(...m.split(':').map((x) => parseInt(x, 16)));
  }
  return Uint8Array.from(out);
}

for (const layout of RING_LAYOUTS) {
test.serial(`${layout}: 4 queue pairs: traffic from many host flows reaches every pair`, async (t) => {
  await withNetns(async (ns) => {
    const tap = ns.ifname();
    const guest = await GuestSim.start({ tap, netns: ns.name, packed: layout === 'packed', queuePairs: 4, ip4: `${GUEST4}/24` });
    ns.defer(() => void guest.stop());
    t.is(guest.device.driverFeatures & bits('RING_PACKED'), ringBits(layout), `${layout} rings negotiated`);
    t.is(guest.device.activeQueuePairs, 4);
    ns.ip('addr', 'add', `${HOST4}/24`, 'dev', tap);
    const u = udpEcho(ns, GUEST4, range(64, 71), 64);
    t.deepEqual([u.echoed, u.corrupt], [u.sent, 0]);
    const s = guest.stats();
    const perPair = [0, 2, 4, 6].map((i) => s.device.queues[i].packets);
    t.true(perPair.every((n) => n > 0), `every RX queue carried frames: ${perPair.join(', ')}`);
  });
});

test.serial(`${layout}: VQ_PAIRS_SET 4 -> 1 -> 4 under traffic: the guest keeps answering, losses are accounted for`, async (t) => {
  await withNetns(async (ns) => {
    const tap = ns.ifname();
    const guest = await GuestSim.start({ tap, netns: ns.name, packed: layout === 'packed', queuePairs: 4, ip4: `${GUEST4}/24`, mac: GUEST_MAC });
    ns.defer(() => void guest.stop());
    t.is(guest.device.driverFeatures & bits('RING_PACKED'), ringBits(layout), `${layout} rings negotiated`);
    ns.ip('addr', 'add', `${HOST4}/24`, 'dev', tap);
    ns.ip('neigh', 'replace', GUEST4, 'lladdr', GUEST_MAC, 'dev', tap, 'nud', 'permanent');
    // A paced sender with unique ids on 32 source ports; replies are matched by id, late ones count.
    const script = `
const dgram = require('node:dgram');
const socks = [], seen = new Set(); let sent = 0;
for (let i = 0; i < 32; i++) { const s = dgram.createSocket('udp4'); s.on('message', (m) => seen.add(m.readUInt32BE(0))); socks.push(s); }
const timer = setInterval(() => { for (let k = 0; k < 8; k++) { const b = Buffer.alloc(64); b.writeUInt32BE(sent, 0); socks[sent % 32].send(b, 7, '${GUEST4}'); sent++; } }, 2);
setTimeout(() => { clearInterval(timer); setTimeout(() => { console.log(JSON.stringify({ sent, echoed: seen.size })); socks.forEach((s) => s.close()); }, 1500); }, 4000);`;
    const child = require('node:child_process').spawn('ip', ['netns', 'exec', ns.name, process.execPath, '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    ns.defer(() => {
      if (child.exitCode === null) child.kill('SIGKILL');
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d));
    const done = new Promise((r) => child.once('exit', r));
    const tapDropsBefore = tapTxDropped(ns, tap);
    for (const n of [1, 4, 1, 4]) {
      await new Promise((r) => setTimeout(r, 700));
      await guest.setQueuePairs(n);
      t.is(guest.device.activeQueuePairs, n);
    }
    await done;
    const r = JSON.parse(out.trim()) as { sent: number; echoed: number };
    const s = guest.stats();
    const accounted = s.device.totals.drops + (tapTxDropped(ns, tap) - tapDropsBefore);
    t.true(r.sent > 1000, `traffic ran: ${out}`);
    t.true(r.sent - r.echoed <= accounted, `lost ${r.sent - r.echoed} of ${r.sent}; accounted for by statistics: ${accounted} ${JSON.stringify(s.device.queues.map((q) => q.drops))}`);
    const after = udpEcho(ns, GUEST4, [100, 200], 16);
    t.is(after.echoed, after.sent, 'the guest answers on all pairs after the changes');
  });
});
}

function tapTxDropped(ns: Netns, tap: string): number {
  const [l] = ns.ipJson<{ stats64: { tx: { dropped: number } } }[]>('-s', 'link', 'show', tap);
  return l.stats64.tx.dropped;
}

test.serial('RX modes: promiscuous off drops frames for other MACs, on delivers them; NOBCAST, ALLMULTI, NOMULTI', async (t) => {
  await withNetns(async (ns) => {
    const { g, tap } = await miniGuest(ns, 'split');
    const mine = testFrame(GUEST_MAC, 1);
    const other = testFrame(OTHER_MAC, 2);
    const bcast = testFrame('ff:ff:ff:ff:ff:ff', 3);
    const mcast = testFrame('01:00:5e:01:02:03', 4);
    const all = [mine, other, bcast, mcast];
    t.deepEqual(await deliver(ns, g, tap, all, [1, 2, 3, 4]), [1, 2, 3, 4], 'promiscuous after reset: everything');
    t.is(await ctrl(g, CTRL.CLASS_RX, CTRL.RX_PROMISC, [0]), CTRL.OK);
    const before = g.device.stats().filtered;
    t.deepEqual(await deliver(ns, g, tap, all, [1, 3]), [1, 3], 'promiscuous off: own MAC and broadcast only');
    t.is(await ctrl(g, CTRL.CLASS_RX, CTRL.RX_NOBCAST, [1]), CTRL.OK);
    t.deepEqual(await deliver(ns, g, tap, all, [1]), [1]);
    t.is(await ctrl(g, CTRL.CLASS_RX, CTRL.RX_ALLMULTI, [1]), CTRL.OK);
    t.deepEqual(await deliver(ns, g, tap, all, [1, 4]), [1, 4]);
    t.is(await ctrl(g, CTRL.CLASS_RX, CTRL.RX_NOMULTI, [1]), CTRL.OK);
    t.deepEqual(await deliver(ns, g, tap, all, [1]), [1]);
    t.is(await ctrl(g, CTRL.CLASS_RX, CTRL.RX_NOUNI, [1]), CTRL.OK);
    t.deepEqual(await deliver(ns, g, tap, all, []), []);
    t.is(await ctrl(g, CTRL.CLASS_RX, CTRL.RX_PROMISC, [1]), CTRL.OK);
    t.deepEqual(await deliver(ns, g, tap, all, [1, 2, 3, 4]), [1, 2, 3, 4], 'promiscuous on again: everything');
    // Frames the kernel's own TAP filter drops never reach the engine; the rest are counted as filtered.
    const kernelDrops = tapTxDropped(ns, tap);
    t.true(g.device.stats().filtered - before + kernelDrops > 0, 'filtered frames are counted');
    t.is(await ctrl(g, CTRL.CLASS_RX, 9, [1]), CTRL.ERR, 'unknown RX command: ERR');
    t.is(await ctrl(g, CTRL.CLASS_RX, CTRL.RX_PROMISC, [1, 2]), CTRL.ERR, 'bad length: ERR');
  });
});

test.serial('MAC table and ADDR_SET deliver exactly the listed addresses', async (t) => {
  await withNetns(async (ns) => {
    const { g, tap } = await miniGuest(ns, 'split');
    t.is(await ctrl(g, CTRL.CLASS_RX, CTRL.RX_PROMISC, [0]), CTRL.OK);
    const uni = ['52:54:00:00:00:0a', '52:54:00:00:00:0b'];
    const multi = ['33:33:00:00:00:01', '01:00:5e:00:00:fb'];
    t.is(await ctrl(g, CTRL.CLASS_MAC, CTRL.MAC_TABLE_SET, macTable(uni, multi)), CTRL.OK);
    const frames = [
      testFrame(GUEST_MAC, 1),
      testFrame(uni[0], 2),
      testFrame(uni[1], 3),
      testFrame('52:54:00:00:00:0c', 4),
      testFrame(multi[0], 5),
      testFrame(multi[1], 6),
      testFrame('33:33:00:00:00:02', 7),
      testFrame('01:00:5e:00:00:fc', 8),
    ];
    t.deepEqual(await deliver(ns, g, tap, frames, [1, 2, 3, 5, 6]), [1, 2, 3, 5, 6]);
    // More than the tun filter's 8 exact slots: the native check must still be exact.
    const many = range(1, 12).map((i) => `52:54:00:00:01:${i.toString(16).padStart(2, '0')}`);
    t.is(await ctrl(g, CTRL.CLASS_MAC, CTRL.MAC_TABLE_SET, macTable(many, [])), CTRL.OK);
    const got = await deliver(ns, g, tap, [...many.map((m, i) => testFrame(m, 10 + i)), testFrame('52:54:00:00:01:ff', 99), testFrame(multi[0], 98)], range(10, 21));
    t.deepEqual(got, range(10, 21));
    t.is(await ctrl(g, CTRL.CLASS_MAC, CTRL.MAC_ADDR_SET, [0x52, 0x54, 0, 0, 0x77, 0x77]), CTRL.OK);
    t.deepEqual(Array.from(new Uint8Array(g.device.config.buffer, 0, 6)), [0x52, 0x54, 0, 0, 0x77, 0x77], 'config space follows ADDR_SET');
    t.deepEqual(await deliver(ns, g, tap, [testFrame('52:54:00:00:77:77', 1), testFrame(GUEST_MAC, 2)], [1]), [1]);
    t.is(await ctrl(g, CTRL.CLASS_MAC, CTRL.MAC_TABLE_SET, [1, 0, 0, 0, 1, 2]), CTRL.ERR, 'truncated table: ERR');
  });
});

test.serial('VLAN filter: tagged frames only for added VLAN ids, untagged always', async (t) => {
  await withNetns(async (ns) => {
    const { g, tap } = await miniGuest(ns, 'split');
    const frames = [testFrame(GUEST_MAC, 1), testFrame(GUEST_MAC, 2, 10), testFrame(GUEST_MAC, 3, 20), testFrame(GUEST_MAC, 4, 4095)];
    t.deepEqual(await deliver(ns, g, tap, frames, [1, 2, 3, 4]), [1, 2, 3, 4], 'promiscuous (after reset) takes every VLAN');
    t.is(await ctrl(g, CTRL.CLASS_RX, CTRL.RX_PROMISC, [0]), CTRL.OK);
    t.deepEqual(await deliver(ns, g, tap, frames, [1]), [1], 'VLAN filtering on with CTRL_VLAN, no ids added');
    t.is(await ctrl(g, CTRL.CLASS_VLAN, CTRL.VLAN_ADD, [10, 0]), CTRL.OK);
    t.deepEqual(await deliver(ns, g, tap, frames, [1, 2]), [1, 2]);
    t.is(await ctrl(g, CTRL.CLASS_VLAN, CTRL.VLAN_ADD, [20, 0]), CTRL.OK);
    t.is(await ctrl(g, CTRL.CLASS_VLAN, CTRL.VLAN_DEL, [10, 0]), CTRL.OK);
    t.deepEqual(await deliver(ns, g, tap, frames, [1, 3]), [1, 3]);
    t.is(await ctrl(g, CTRL.CLASS_VLAN, CTRL.VLAN_ADD, [0, 0x10]), CTRL.ERR, 'vid 4096: ERR');
  });
});

test.serial('GUEST_OFFLOADS SET changes what the kernel hands the guest', async (t) => {
  await withNetns(async (ns) => {
    const { g, tap } = await miniGuest(ns, 'split');
    ns.ip('addr', 'add', `${HOST4}/24`, 'dev', tap);
    ns.ip('neigh', 'replace', GUEST4, 'lladdr', GUEST_MAC, 'dev', tap, 'nud', 'permanent');
    const sendUdp = (): Promise<RxFrame[]> => {
      g.drain();
      ns.exec(process.execPath, ['-e', `const s=require('node:dgram').createSocket('udp4');s.send(Buffer.alloc(200,1),9999,'${GUEST4}',()=>s.close())`]);
      return g.collect(2000, (f) => f.some((x) => x.frame[23] === 17));
    };
    const flagsOf = (f: RxFrame[]): number => f.find((x) => x.frame[23] === 17)!.hdr[0];
    t.is(flagsOf(await sendUdp()) & 1, 1, 'GUEST_CSUM on: the kernel leaves the checksum to the guest (NEEDS_CSUM)');
    t.is(await ctrl(g, CTRL.CLASS_GUEST_OFFLOADS, CTRL.GUEST_OFFLOADS_SET, [0, 0, 0, 0, 0, 0, 0, 0]), CTRL.OK);
    t.is(flagsOf(await sendUdp()) & 1, 0, 'all guest offloads off: the kernel completes the checksum');
    t.is(await ctrl(g, CTRL.CLASS_GUEST_OFFLOADS, CTRL.GUEST_OFFLOADS_SET, [2, 0, 0, 0, 0, 0, 0, 0]), CTRL.OK);
    t.is(flagsOf(await sendUdp()) & 1, 1, 'back on');
    t.is(await ctrl(g, CTRL.CLASS_GUEST_OFFLOADS, CTRL.GUEST_OFFLOADS_SET, [0x80, 0, 0, 0, 0, 0, 0, 0]), CTRL.ERR, 'a bit not negotiated: ERR');
  });
});

/**
 * No IPv6 in the namespace: the kernel's own frames (router solicitations, MLD) would reach
 * the guest on their own schedule, and one published just as a command changes the
 * coalescing could be counted on either side of it.
 */
function quietNamespace(ns: Netns): void {
  ns.exec('sysctl', ['-qw', 'net.ipv6.conf.default.disable_ipv6=1']);
  ns.exec('sysctl', ['-qw', 'net.ipv6.conf.all.disable_ipv6=1']);
}

/** NOTF_COAL commands: RX_SET / TX_SET (8 bytes), VQ_SET (vq index, reserved, then the same). */
function coalCommand(g: MiniGuest, cmd: number, maxPackets: number, maxUsecs: number, vq?: number): Promise<number> {
  const d = new DataView(new ArrayBuffer(vq === undefined ? 8 : 12));
  const at = vq === undefined ? 0 : 4;
  if (vq !== undefined) d.setUint16(0, vq, true);
  d.setUint32(at, maxPackets, true);
  d.setUint32(at + 4, maxUsecs, true);
  return ctrl(g, CTRL.CLASS_NOTF_COAL, cmd, new Uint8Array(d.buffer));
}

for (const layout of RING_LAYOUTS) {
test.serial(`${layout}: NOTF_COAL: RX_SET holds RX interrupts in a window, turning it off sends the owed one, reset clears it`, async (t) => {
  await withNetns(async (ns) => {
    quietNamespace(ns);
    const want = MINI_FEATURES | bits('NOTF_COAL') | ringBits(layout);
    const { g, tap } = await miniGuest(ns, layout, 1, want);
    const coal = (cmd: number, maxPackets: number, maxUsecs: number): Promise<number> => coalCommand(g, cmd, maxPackets, maxUsecs);
    const events: unknown[] = [];
    g.device.on('coalescing', (c) => events.push(c));
    const rxInterrupts = (): number => g.device.stats().queues[0].interrupts;
    const frames = (from: number, n: number): string[] => range(from, from + n - 1).map((i) => testFrame(GUEST_MAC, i));
    // A window of 1000 packets or 30 s: five frames cannot close it.
    t.is(await coal(CTRL.NOTF_COAL_RX_SET, 1000, 30_000_000), CTRL.OK);
    t.deepEqual(events, [{ queues: 'rx', maxPackets: 1000, maxUsecs: 30_000_000 }]);
    let before = rxInterrupts();
    t.deepEqual(await deliver(ns, g, tap, frames(1, 5), range(1, 5)), range(1, 5));
    t.is(rxInterrupts() - before, 0, 'the guest polled them in; no interrupt yet');
    // Off (0): the open window closes and its interrupt, wanted by the guest, goes out.
    t.is(await coal(CTRL.NOTF_COAL_RX_SET, 0, 0), CTRL.OK);
    await g.collect(10_000, () => rxInterrupts() > before);
    t.true(rxInterrupts() > before);
    // A reset sets the parameters back to 0: interrupts flow without a command.
    t.is(await coal(CTRL.NOTF_COAL_RX_SET, 1000, 30_000_000), CTRL.OK);
    g.device.status = 0;
    await g.init(want);
    before = rxInterrupts();
    t.deepEqual(await deliver(ns, g, tap, frames(11, 5), range(11, 15)), range(11, 15));
    t.true(rxInterrupts() > before, 'no window after the reset');
    t.is(await coal(CTRL.NOTF_COAL_TX_SET, 32, 50), CTRL.OK);
    t.deepEqual(events.at(-1), { queues: 'tx', maxPackets: 32, maxUsecs: 50 });
    t.is(await ctrl(g, CTRL.CLASS_NOTF_COAL, CTRL.NOTF_COAL_RX_SET, [1, 0, 0, 0, 1, 0, 0]), CTRL.ERR, 'short: ERR');
    t.is(await coalCommand(g, CTRL.NOTF_COAL_VQ_SET, 1, 1, 0), CTRL.ERR, 'VQ_SET without VQ_NOTF_COAL negotiated: ERR');
    g.device.status = 0;
    await g.init(MINI_FEATURES | ringBits(layout));
    t.is(await coal(CTRL.NOTF_COAL_RX_SET, 8, 8), CTRL.ERR, 'NOTF_COAL not negotiated: ERR');
  });
});

test.serial(`${layout}: VQ_NOTF_COAL: VQ_SET / VQ_GET per enabled virtqueue; RX_SET overrides; a pair enabled again takes RX_SET / TX_SET values`, async (t) => {
  await withNetns(async (ns) => {
    quietNamespace(ns);
    const { g, tap } = await miniGuest(ns, layout, 2, MINI_FEATURES | bits('NOTF_COAL', 'VQ_NOTF_COAL'));
    const get = async (vq: number): Promise<{ ack: number; maxPackets?: number; maxUsecs?: number }> => {
      const { ack, result } = await g.ctrl!.query(CTRL.CLASS_NOTF_COAL, CTRL.NOTF_COAL_VQ_GET, Uint8Array.from([vq, 0, 0, 0]), 8);
      if (ack !== CTRL.OK) return { ack };
      const d = new DataView(result.buffer, result.byteOffset, 8);
      return { ack, maxPackets: d.getUint32(0, true), maxUsecs: d.getUint32(4, true) };
    };
    t.is(await ctrl(g, CTRL.CLASS_MQ, CTRL.MQ_VQ_PAIRS_SET, [2, 0]), CTRL.OK);
    t.deepEqual(await get(0), { ack: CTRL.OK, maxPackets: 0, maxUsecs: 0 }, 'after reset: 0');
    t.is(await coalCommand(g, CTRL.NOTF_COAL_RX_SET, 16, 100), CTRL.OK);
    t.is(await coalCommand(g, CTRL.NOTF_COAL_VQ_SET, 1000, 30_000_000, 0), CTRL.OK);
    t.is(await coalCommand(g, CTRL.NOTF_COAL_VQ_SET, 7, 9, 3), CTRL.OK);
    t.deepEqual(await get(0), { ack: CTRL.OK, maxPackets: 1000, maxUsecs: 30_000_000 });
    t.deepEqual(await get(2), { ack: CTRL.OK, maxPackets: 16, maxUsecs: 100 }, 'the other RX queue keeps RX_SET');
    t.deepEqual(await get(3), { ack: CTRL.OK, maxPackets: 7, maxUsecs: 9 });
    t.deepEqual(await get(1), { ack: CTRL.OK, maxPackets: 0, maxUsecs: 0 });
    // It reaches the engines: with both RX queues holding a long window, whichever queue the
    // kernel steers the frames to, the guest polls them in without an RX interrupt.
    t.is(await coalCommand(g, CTRL.NOTF_COAL_VQ_SET, 1000, 30_000_000, 2), CTRL.OK);
    const rxInterrupts = (): number => g.device.stats().queues[0].interrupts + g.device.stats().queues[2].interrupts;
    const before = rxInterrupts();
    t.deepEqual(await deliver(ns, g, tap, [1, 2, 3].map((i) => testFrame(GUEST_MAC, i)), [1, 2, 3]), [1, 2, 3]);
    t.is(rxInterrupts() - before, 0);
    t.is((await get(4)).ack, CTRL.ERR, 'the control queue is not an RX/TX queue');
    t.is((await get(99)).ack, CTRL.ERR, 'no such queue');
    // RX_SET applies to every RX queue, replacing VQ_SET's.
    t.is(await coalCommand(g, CTRL.NOTF_COAL_RX_SET, 32, 64), CTRL.OK);
    t.deepEqual(await get(0), { ack: CTRL.OK, maxPackets: 32, maxUsecs: 64 });
    t.deepEqual(await get(3), { ack: CTRL.OK, maxPackets: 7, maxUsecs: 9 }, 'TX queues untouched');
    // Pair 1 disabled, then enabled again: its queues take RX_SET's / TX_SET's values.
    t.is(await ctrl(g, CTRL.CLASS_MQ, CTRL.MQ_VQ_PAIRS_SET, [1, 0]), CTRL.OK);
    t.is((await get(3)).ack, CTRL.ERR, 'a queue of a disabled pair');
    t.is(await coalCommand(g, CTRL.NOTF_COAL_VQ_SET, 1, 1, 2), CTRL.ERR, 'VQ_SET on a disabled queue');
    t.is(await ctrl(g, CTRL.CLASS_MQ, CTRL.MQ_VQ_PAIRS_SET, [2, 0]), CTRL.OK);
    t.deepEqual(await get(3), { ack: CTRL.OK, maxPackets: 0, maxUsecs: 0 });
    t.deepEqual(await get(2), { ack: CTRL.OK, maxPackets: 32, maxUsecs: 64 });
    t.is(await ctrl(g, CTRL.CLASS_NOTF_COAL, CTRL.NOTF_COAL_VQ_GET, [0, 0]), CTRL.ERR, 'VQ_GET too short');
  });
});
}

test.serial('setLink(false) makes the kernel see no carrier; the guest sees LINK_UP cleared and a config event', async (t) => {
  await withNetns(async (ns) => {
    const { g, tap } = await miniGuest(ns, 'split');
    const link = (): string => ns.ip('link', 'show', tap);
    t.notRegex(link(), /NO-CARRIER/);
    let configEvents = 0;
    g.device.on('config', () => configEvents++);
    g.device.setLink(false);
    t.regex(link(), /NO-CARRIER/);
    t.is(g.device.config.getUint16(6, true) & 1, 0);
    g.device.setLink(true);
    t.notRegex(link(), /NO-CARRIER/);
    t.is(g.device.config.getUint16(6, true) & 1, 1);
    t.is(configEvents, 2);
    g.device.announce();
    t.is(g.device.config.getUint16(6, true) & 2, 2, 'ANNOUNCE set');
    t.is(await ctrl(g, 3, 0, []), CTRL.OK, 'ANNOUNCE_ACK');
    t.is(g.device.config.getUint16(6, true) & 2, 0, 'ANNOUNCE cleared by the ack');
  });
});

function countFds(): number {
  return fs.readdirSync('/proc/self/fd').length;
}
function countThreads(): number {
  return fs.readdirSync('/proc/self/task').length;
}
function rssBytes(): number {
  return Number(fs.readFileSync('/proc/self/statm', 'utf8').split(' ')[1]) * 4096;
}

for (const layout of RING_LAYOUTS) {
test.serial(`${layout}: reset x100 under traffic: fds, threads and RSS stay flat; each re-initialisation works`, async (t) => {
  await withNetns(async (ns) => {
    const { g, tap } = await miniGuest(ns, layout, 2);
    ns.ip('addr', 'add', `${HOST4}/24`, 'dev', tap);
    ns.ip('neigh', 'replace', GUEST4, 'lladdr', GUEST_MAC, 'dev', tap, 'nud', 'permanent');
    const flood = require('node:child_process').spawn('ip', ['netns', 'exec', ns.name, process.execPath, '-e',
      `const s=require('node:dgram').createSocket('udp4');const b=Buffer.alloc(100);let p=0;setInterval(()=>{for(let i=0;i<20;i++)s.send(b,1000+(p++%50),'${GUEST4}')},1)`], { stdio: 'ignore' });
    ns.defer(() => {
      if (flood.exitCode === null) flood.kill('SIGKILL');
    });
    let base: { fds: number; threads: number; rss: number } | undefined;
    let received = 0;
    for (let i = 0; i < 100; i++) {
      // A bound, not a timing check: it ends at the third frame; 5 s leaves room on a loaded CI machine.
      const got = await g.collect(5000, (f) => f.length >= 3);
      t.true(got.length > 0, `iteration ${i}: frames arrived after initialisation`);
      received += got.length;
      g.send(0, Uint8Array.from(Buffer.from(testFrame('02:00:00:00:00:99', i), 'hex')));
      g.device.status = 0;
      t.is(g.device.status, 0);
      t.is(g.device.driverFeatures, 0n);
      await g.init(MINI_FEATURES | ringBits(layout));
      t.truthy(g.device.status & STATUS.DRIVER_OK);
      if (i === 9) base = { fds: countFds(), threads: countThreads(), rss: rssBytes() };
    }
    const end = { fds: countFds(), threads: countThreads(), rss: rssBytes() };
    t.is(end.fds, base!.fds, 'fd count flat');
    t.is(end.threads, base!.threads, 'thread count flat');
    t.true(end.rss - base!.rss < 32 << 20, `RSS growth ${(end.rss - base!.rss) >> 10} KiB over 90 resets`);
    t.true(received >= 100);
  });
});
}
