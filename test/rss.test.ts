// RSS_CONFIG / HASH_CONFIG decoding (backend/rss.ts) on its own, then through
// a device: hostile configurations get VIRTIO_NET_ERR and change nothing, and
// every frame sent into the TAP arrives with the hash value and report type
// the test's own Toeplitz hash (test/helpers/toeplitz.ts, checked against the
// published vectors) computes from the guest's key.

import { spawn } from 'node:child_process';

import * as path from 'node:path';

import test from 'ava';

import { bits, CONFIG, CTRL, VirtioNetDevice } from '../backend';
import { decodeHashConfig, decodeRssConfig, encodeHashConfig, encodeRssConfig, HASH_REPORT, HASH_TYPE, HDR_HASH, RSS_MAX_INDIRECTION_TABLE_LENGTH, RSS_MAX_KEY_SIZE, SUPPORTED_HASH_TYPES } from '../backend/rss';
import { Netns, withNetns } from '../host/netns';
import { MINI_FEATURES, MiniGuest, rawSendScript, RxFrame } from './helpers/mini-guest';
import { hashInput, MS_RSS_KEY, toeplitz } from './helpers/toeplitz';

const ALL = SUPPORTED_HASH_TYPES;
const rss = (o: Partial<{ hashTypes: number; key: Uint8Array; table: number[]; unclassifiedQueue: number; pairs: number }> = {}): Uint8Array =>
  encodeRssConfig({ hashTypes: ALL, key: MS_RSS_KEY, table: [0, 1, 0, 1], unclassifiedQueue: 0, pairs: 2, ...o });

// --- decoding ----------------------------------------------------------------------------

test('RSS_CONFIG: a good one decodes to what was sent', (t) => {
  const c = decodeRssConfig(rss({ table: [1, 0, 1, 1, 0, 0, 1, 0], unclassifiedQueue: 1 }), 2);
  if (typeof c === 'string') return t.fail(c);
  t.is(c.hashTypes, ALL);
  t.deepEqual([...c.key], [...MS_RSS_KEY]);
  t.deepEqual([...c.table!], [1, 0, 1, 1, 0, 0, 1, 0]);
  t.is(c.unclassifiedQueue, 1);
  t.is(c.pairs, 2);
});

const hostileRss: Array<[string, Uint8Array, RegExp]> = [
  ['table length 3 (not a power of two)', rss({ table: [0, 1, 0] }), /not a power of two/],
  ['table length over the maximum', rss({ table: new Array<number>(2 * RSS_MAX_INDIRECTION_TABLE_LENGTH).fill(0) }), /over 128/],
  ['mask 0xffff (65536 entries)', (() => { const b = rss(); b[4] = 0xff; b[5] = 0xff; return b; })(), /over 128/],
  ['an unsupported hash type (IP_EX)', rss({ hashTypes: ALL | HASH_TYPE.IP_EX }), /does not support/],
  ['a reserved hash type bit', rss({ hashTypes: 1 << 20 }), /does not support/],
  ['a table entry >= max_tx_vq', rss({ table: [0, 1, 2, 0] }), /indirection_table\[2\] = 2/],
  ['unclassified_queue >= max_tx_vq', rss({ unclassifiedQueue: 2 }), /unclassified_queue 2/],
  ['max_tx_vq over the pairs', rss({ pairs: 3, table: [0, 1, 2, 0] }), /max_tx_vq 3/],
  ['max_tx_vq 0', rss({ pairs: 0, table: [0] }), /max_tx_vq 0/],
  ['a key longer than the maximum', rss({ key: new Uint8Array(RSS_MAX_KEY_SIZE + 1) }), /over rss_max_key_size/],
  ['an empty key with types enabled', rss({ key: new Uint8Array(0) }), /hash_key_length 0/],
  ['truncated before the table', rss().subarray(0, 7), /truncated/],
  ['truncated in the table', rss().subarray(0, 12), /truncated/],
  ['truncated in the key', rss().subarray(0, rss().length - 1), /does not match its key length/],
  ['trailing bytes after the key', Uint8Array.from([...rss(), 0]), /does not match its key length/],
];
for (const [what, bytes, why] of hostileRss) {
  test(`RSS_CONFIG refused: ${what}`, (t) => {
    const c = decodeRssConfig(bytes, 2);
    t.is(typeof c, 'string');
    t.regex(c as string, why);
  });
}

test('HASH_CONFIG: a good one decodes; hostile ones are refused', (t) => {
  const c = decodeHashConfig(encodeHashConfig({ hashTypes: HASH_TYPE.TCPv4, key: MS_RSS_KEY }));
  if (typeof c === 'string') return t.fail(c);
  t.is(c.hashTypes, HASH_TYPE.TCPv4);
  t.deepEqual([...c.key], [...MS_RSS_KEY]);
  t.is(c.table, undefined);
  t.regex(decodeHashConfig(encodeHashConfig({ hashTypes: HASH_TYPE.UDP_EX, key: MS_RSS_KEY })) as string, /does not support/);
  t.regex(decodeHashConfig(encodeHashConfig({ hashTypes: ALL, key: new Uint8Array(41) })) as string, /over rss_max_key_size/);
  t.regex(decodeHashConfig(new Uint8Array(12)) as string, /truncated/);
  t.regex(decodeHashConfig(encodeHashConfig({ hashTypes: ALL, key: MS_RSS_KEY }).subarray(0, 30)) as string, /key length/);
});

// --- frames ------------------------------------------------------------------------------

const GUEST_MAC = '52:54:00:12:34:56';
const macBytes = (s: string): number[] => s.split(':').map((x) => parseInt(x, 16));

type Kind = 'tcp4' | 'udp4' | 'icmp4' | 'frag4' | 'tcp6' | 'udp6' | 'icmp6' | 'tcp6-ext' | 'frag6' | 'arp';
const KINDS: Kind[] = ['tcp4', 'udp4', 'icmp4', 'frag4', 'tcp6', 'udp6', 'icmp6', 'tcp6-ext', 'frag6', 'arp'];

interface Flow {
  kind: Kind;
  src: number[];
  dst: number[];
  sport: number;
  dport: number;
  /** Marker in the payload: which flow a received frame is. */
  id: number;
}

/** A frame of `f` as bytes, built by hand (no parser shared with the device). */
function frameOf(f: Flow): Uint8Array {
  const eth = [...macBytes(GUEST_MAC), 2, 0, 0, 0, 0, 1];
  const payload = [(f.id >> 24) & 0xff, (f.id >> 16) & 0xff, (f.id >> 8) & 0xff, f.id & 0xff, ...new Array<number>(20).fill(0x5a)];
  const ports = [f.sport >> 8, f.sport & 0xff, f.dport >> 8, f.dport & 0xff];
  const l4 = (proto: number): number[] => (proto === 6 ? [...ports, 0, 0, 0, 0, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0] : proto === 17 ? [...ports, 0, 8 + payload.length, 0, 0] : [8, 0, 0, 0, 0, 0, 0, 0]);
  if (f.kind === 'arp') return Uint8Array.from([...eth, 0x08, 0x06, ...payload, ...new Array<number>(20).fill(0)]);
  if (f.kind.endsWith('4')) {
    const proto = f.kind === 'tcp4' || f.kind === 'frag4' ? 6 : f.kind === 'udp4' ? 17 : 1;
    const body = [...l4(proto), ...payload];
    const frag = f.kind === 'frag4' ? [0x20, 0x00] : [0x40, 0x00]; // MF set: the first fragment of several
    const ip = [0x45, 0, (20 + body.length) >> 8, (20 + body.length) & 0xff, 0, 1, ...frag, 64, proto, 0, 0, ...f.src, ...f.dst];
    return Uint8Array.from([...eth, 0x08, 0x00, ...ip, ...body]);
  }
  let next = f.kind === 'udp6' ? 17 : f.kind === 'icmp6' ? 58 : 6;
  let ext: number[] = [];
  if (f.kind === 'tcp6-ext') {
    ext = [6, 0, 1, 4, 0, 0, 0, 0]; // destination options: PadN, then TCP
    next = 60;
  } else if (f.kind === 'frag6') {
    ext = [6, 0, 0, 1, 0, 0, 0, 7]; // fragment header, offset 0 with more to come, then TCP
    next = 44;
  }
  const body = [...ext, ...l4(f.kind === 'udp6' ? 17 : f.kind === 'icmp6' ? 58 : 6), ...payload];
  const ip = [0x60, 0, 0, 0, body.length >> 8, body.length & 0xff, next, 64, ...f.src, ...f.dst];
  return Uint8Array.from([...eth, 0x86, 0xdd, ...ip, ...body]);
}

/** What the spec says the device reports for `f` with `types` enabled: computed from how the frame was built. */
function expected(f: Flow, types: number, key: Uint8Array): { report: number; value: number } {
  const p = { src: f.sport, dst: f.dport };
  const v4 = f.kind.endsWith('4');
  if (f.kind === 'arp') return { report: HASH_REPORT.NONE, value: 0 };
  if (v4) {
    if (f.kind === 'tcp4' && types & HASH_TYPE.TCPv4) return { report: HASH_REPORT.TCPv4, value: toeplitz(key, hashInput(f.src, f.dst, p)) };
    if (f.kind === 'udp4' && types & HASH_TYPE.UDPv4) return { report: HASH_REPORT.UDPv4, value: toeplitz(key, hashInput(f.src, f.dst, p)) };
    if (types & HASH_TYPE.IPv4) return { report: HASH_REPORT.IPv4, value: toeplitz(key, hashInput(f.src, f.dst)) };
    return { report: HASH_REPORT.NONE, value: 0 };
  }
  const tcp = f.kind === 'tcp6' || f.kind === 'tcp6-ext';
  if (tcp && types & HASH_TYPE.TCPv6) return { report: HASH_REPORT.TCPv6, value: toeplitz(key, hashInput(f.src, f.dst, p)) };
  if (f.kind === 'udp6' && types & HASH_TYPE.UDPv6) return { report: HASH_REPORT.UDPv6, value: toeplitz(key, hashInput(f.src, f.dst, p)) };
  if (types & HASH_TYPE.IPv6) return { report: HASH_REPORT.IPv6, value: toeplitz(key, hashInput(f.src, f.dst)) };
  return { report: HASH_REPORT.NONE, value: 0 };
}

/** Deterministic pseudo-random flows: every kind, varied addresses and ports. */
function flows(n: number, seed: number): Flow[] {
  let s = seed >>> 0;
  const rnd = (): number => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) >>> 24;
  const out: Flow[] = [];
  for (let i = 0; i < n; i++) {
    const kind = KINDS[i % KINDS.length];
    const len = kind.endsWith('4') || kind === 'arp' ? 4 : 16;
    const addr = (): number[] => Array.from({ length: len }, rnd);
    out.push({ kind, src: addr(), dst: addr(), sport: (rnd() << 8) | rnd(), dport: (rnd() << 8) | rnd(), id: 0x7a000000 + i });
  }
  return out;
}

const markerOf = (frame: Uint8Array): number => {
  // The payload marker sits after the headers; find it by its fixed high byte and the 0x5a fill after it.
  for (let i = 14; i + 24 <= frame.length; i++) {
    if (frame[i] === 0x7a && frame[i + 4] === 0x5a && frame[i + 23] === 0x5a) return ((frame[i] << 24) | (frame[i + 1] << 16) | (frame[i + 2] << 8) | frame[i + 3]) >>> 0;
  }
  return -1;
};

async function hashGuest(ns: Netns, opts: { rss: boolean; pairs: number }): Promise<{ g: MiniGuest; tap: string; dev: VirtioNetDevice }> {
  const tap = ns.ifname();
  const mem = new SharedArrayBuffer(MiniGuest.memoryBytes(opts.pairs));
  const dev = new VirtioNetDevice({ memory: mem, tap, netns: ns.name, queuePairs: opts.pairs, mac: GUEST_MAC, hashReport: true, rss: opts.rss });
  ns.defer(() => void dev.close());
  const g = new MiniGuest(dev, mem);
  await g.init(MINI_FEATURES | bits('HASH_REPORT') | (opts.rss ? bits('RSS') : 0n));
  return { g, tap, dev };
}

/** Sends the flows' frames out of the TAP (towards the guest), in chunks; returns what arrived, by marker. */
async function sendAll(ns: Netns, g: MiniGuest, tap: string, fl: Flow[]): Promise<Map<number, RxFrame>> {
  const got = new Map<number, RxFrame>();
  g.drain();
  const CHUNK = 100; // frames per python run: the guest's 64 RX buffers per pair are re-posted between runs
  for (let i = 0; i < fl.length; i += CHUNK) {
    const chunk = fl.slice(i, i + CHUNK);
    ns.exec('python3', rawSendScript(tap, chunk.map((f) => Buffer.from(frameOf(f)).toString('hex'))));
    const want = new Set(chunk.map((f) => f.id));
    const frames = await g.collect(10_000, (fs) => {
      for (const x of fs) want.delete(markerOf(x.frame));
      return want.size === 0;
    });
    for (const x of frames) got.set(markerOf(x.frame), x);
  }
  return got;
}

/** Where RSS puts a frame: the table's entry for its hash, or unclassified_queue when nothing was hashed. */
interface Steer {
  table: number[];
  unclassifiedQueue: number;
}

const queueOf = (e: { report: number; value: number }, s: Steer): number => (e.report === HASH_REPORT.NONE ? s.unclassifiedQueue : s.table[e.value & (s.table.length - 1)]);

/**
 * Every flow arrived with the hash and report type the test computes, and (with `steer`)
 * on the receive queue the guest's table names for that hash.
 */
function checkHashes(t: import('ava').ExecutionContext, fl: Flow[], got: Map<number, RxFrame>, types: number, key: Uint8Array, steer?: Steer): void {
  let bad = 0;
  let misplaced = 0;
  for (const f of fl) {
    const r = got.get(f.id);
    if (!r) {
      bad++;
      if (bad < 5) t.fail(`flow ${f.id.toString(16)} (${f.kind}) did not arrive`);
      continue;
    }
    t.is(r.hdr.length, 20);
    const d = new DataView(r.hdr.buffer, r.hdr.byteOffset, 20);
    const e = expected(f, types, key);
    const value = d.getUint32(HDR_HASH.OFF_HASH_VALUE, true);
    const report = d.getUint16(HDR_HASH.OFF_HASH_REPORT, true);
    if (value !== e.value || report !== e.report) {
      bad++;
      if (bad < 5) t.fail(`${f.kind} flow ${f.id.toString(16)}: got hash 0x${value.toString(16)} report ${report}, expected 0x${e.value.toString(16)} report ${e.report}`);
    }
    t.is(d.getUint16(18, true), 0, 'padding is 0');
    if (steer && r.pair !== queueOf(e, steer)) {
      misplaced++;
      if (misplaced < 5) t.fail(`${f.kind} flow ${f.id.toString(16)} (hash 0x${e.value.toString(16)}, report ${e.report}) arrived on queue ${r.pair}, the table names ${queueOf(e, steer)}`);
    }
  }
  t.is(bad, 0, `${bad} of ${fl.length} frames wrong or missing`);
  if (steer) t.is(misplaced, 0, `${misplaced} of ${fl.length} frames on another queue than the table names`);
}

test.serial('config space: rss_max_key_size, rss_max_indirection_table_length, supported_hash_types', async (t) => {
  await withNetns(async (ns) => {
    const { dev } = await hashGuest(ns, { rss: true, pairs: 2 });
    t.is(dev.config.byteLength, CONFIG.SIZE_RSS);
    t.is(dev.config.getUint8(CONFIG.OFF_RSS_MAX_KEY_SIZE), RSS_MAX_KEY_SIZE);
    t.is(dev.config.getUint16(CONFIG.OFF_RSS_MAX_INDIRECTION_TABLE_LENGTH, true), RSS_MAX_INDIRECTION_TABLE_LENGTH);
    t.is(dev.config.getUint32(CONFIG.OFF_SUPPORTED_HASH_TYPES, true), SUPPORTED_HASH_TYPES);
  });
});

test.serial('RSS_CONFIG through the device: hostile ones get ERR and change nothing; a good one sets the pairs and the hash', async (t) => {
  await withNetns(async (ns) => {
    const { g, dev } = await hashGuest(ns, { rss: true, pairs: 2 });
    const send = (b: Uint8Array): Promise<number> => g.ctrl!.command(CTRL.CLASS_MQ, CTRL.MQ_RSS_CONFIG, b);
    t.is(await send(rss({ pairs: 1, table: [0], hashTypes: HASH_TYPE.IPv4 })), CTRL.OK);
    t.is(dev.activeQueuePairs, 1);
    const before = dev.rssConfig;
    const steeringBefore = dev.stats().rss;
    t.is(steeringBefore.steering, 'ebpf');
    for (const [what, bytes] of hostileRss) {
      t.is(await send(bytes), CTRL.ERR, what);
      t.deepEqual(dev.rssConfig, before, `${what}: configuration unchanged`);
      t.deepEqual(dev.stats().rss, steeringBefore, `${what}: steering unchanged`);
      t.is(dev.activeQueuePairs, 1, `${what}: pairs unchanged`);
    }
    t.is(await g.ctrl!.command(CTRL.CLASS_MQ, CTRL.MQ_HASH_CONFIG, encodeHashConfig({ hashTypes: ALL, key: MS_RSS_KEY })), CTRL.ERR, 'HASH_CONFIG with RSS negotiated');
    // The driver's own encoder (vhost-tap/driver), as an emulator would send it.
    t.is(await g.ctrl!.setRss({ key: MS_RSS_KEY, hashTypes: ALL, table: [0, 1, 0, 1], pairs: 2 }), CTRL.OK);
    t.is(dev.activeQueuePairs, 2, 'max_tx_vq 2 runs both pairs');
    t.deepEqual([...dev.rssConfig.table!], [0, 1, 0, 1]);
  });
});

test.serial('RSS (RSS_CONFIG): 1000 flows of every kind land on the queue the table names for the test\'s hash, with that hash and type reported', async (t) => {
  await withNetns(async (ns) => {
    const { g, tap, dev } = await hashGuest(ns, { rss: true, pairs: 2 });
    // Unclassified frames (ARP) go to queue 1, so a program that hashed nothing would show.
    const steer: Steer = { table: [1, 0, 0, 1, 1, 1, 0, 0], unclassifiedQueue: 1 };
    t.is(await g.ctrl!.command(CTRL.CLASS_MQ, CTRL.MQ_RSS_CONFIG, rss(steer)), CTRL.OK);
    t.is(dev.stats().rss.steering, 'ebpf', `the steering program runs (${dev.stats().rss.why ?? ''})`);
    const fl = flows(1000, 1);
    const got = await sendAll(ns, g, tap, fl);
    checkHashes(t, fl, got, ALL, MS_RSS_KEY, steer);
    const onQueue = [0, 0];
    for (const r of got.values()) onQueue[r.pair]++;
    t.true(onQueue[0] > 100 && onQueue[1] > 100, `both queues get flows (${onQueue.join(', ')})`);
  });
});

test.serial('RSS: only the enabled hash types steer; the rest fall back to the IP hash or to unclassified_queue; RSS off gives steering back to the kernel', async (t) => {
  await withNetns(async (ns) => {
    const { g, tap, dev } = await hashGuest(ns, { rss: true, pairs: 2 });
    const key = Uint8Array.from({ length: 40 }, (_, i) => (i * 53 + 7) & 0xff);
    const fl = flows(300, 3);
    for (const [types, steer] of [
      [HASH_TYPE.TCPv4 | HASH_TYPE.IPv6, { table: [0, 1], unclassifiedQueue: 1 }],
      [HASH_TYPE.UDPv4 | HASH_TYPE.TCPv6 | HASH_TYPE.UDPv6, { table: [1, 0, 1, 1], unclassifiedQueue: 0 }],
      [HASH_TYPE.IPv4, { table: [0, 1, 1, 0, 1, 0, 0, 1, 1, 0, 0, 1, 0, 1, 1, 0], unclassifiedQueue: 1 }],
    ] as Array<[number, Steer]>) {
      t.is(await g.ctrl!.command(CTRL.CLASS_MQ, CTRL.MQ_RSS_CONFIG, rss({ hashTypes: types, key, ...steer })), CTRL.OK);
      t.is(dev.stats().rss.steering, 'ebpf');
      checkHashes(t, fl, await sendAll(ns, g, tap, fl), types, key, steer);
    }
    // No key, no type: RSS off. Every frame reports NONE; the kernel's steering is back.
    t.is(await g.ctrl!.command(CTRL.CLASS_MQ, CTRL.MQ_RSS_CONFIG, rss({ hashTypes: 0, key: new Uint8Array(0) })), CTRL.OK);
    t.is(dev.stats().rss.steering, 'off');
    checkHashes(t, fl, await sendAll(ns, g, tap, fl), 0, key);
    t.is(dev.stats().rss.fallbacks, 0);
  });
});

test.serial('hash reports (HASH_CONFIG, no RSS): only enabled types are hashed, others fall back to IP or NONE; a new key applies after the ack', async (t) => {
  await withNetns(async (ns) => {
    const { g, tap } = await hashGuest(ns, { rss: false, pairs: 1 });
    const fl = flows(100, 2);
    // Before any configuration: every frame reports NONE with hash 0 (not what the buffer held).
    // RX buffers full of 0xab: tun leaves the hash fields alone, so only the device can zero them.
    for (const r of (g as unknown as { rx: { base: number }[] }).rx) g.u8.fill(0xab, r.base, r.base + 64 * 2048);
    checkHashes(t, fl, await sendAll(ns, g, tap, fl), 0, MS_RSS_KEY);
    const types = HASH_TYPE.TCPv4 | HASH_TYPE.IPv6 | HASH_TYPE.UDPv6;
    t.is(await g.ctrl!.command(CTRL.CLASS_MQ, CTRL.MQ_HASH_CONFIG, encodeHashConfig({ hashTypes: types, key: MS_RSS_KEY })), CTRL.OK);
    checkHashes(t, fl, await sendAll(ns, g, tap, fl), types, MS_RSS_KEY);
    const key2 = Uint8Array.from({ length: 40 }, (_, i) => (i * 37 + 11) & 0xff);
    t.is(await g.ctrl!.command(CTRL.CLASS_MQ, CTRL.MQ_HASH_CONFIG, encodeHashConfig({ hashTypes: ALL, key: key2 })), CTRL.OK);
    checkHashes(t, fl, await sendAll(ns, g, tap, fl), ALL, key2);
    t.is(await g.ctrl!.command(CTRL.CLASS_MQ, CTRL.MQ_HASH_CONFIG, encodeHashConfig({ hashTypes: HASH_TYPE.TCP_EX, key: key2 })), CTRL.ERR);
    t.is(await g.ctrl!.command(CTRL.CLASS_MQ, CTRL.MQ_RSS_CONFIG, rss({ pairs: 1, table: [0] })), CTRL.ERR, 'RSS_CONFIG without RSS negotiated');
    checkHashes(t, fl, await sendAll(ns, g, tap, fl), ALL, key2);
  });
});

/**
 * A sender inside the namespace: `flows`' frames in bursts, round after round, each stamped
 * (in the payload's filler, after the marker) with a running number and CLOCK_MONOTONIC just
 * before it is handed to the kernel (the clock process.hrtime.bigint() reads). Ends when its
 * stdin closes; prints how many frames it sent.
 */
function stampedSender(ns: Netns, tap: string, fl: Flow[]): { child: import('node:child_process').ChildProcess; sent: Promise<number> } {
  const py = `import socket,sys,select,struct,time
s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW)
s.bind((sys.argv[1],0))
fs=[bytearray.fromhex(h) for h in sys.argv[2:]]
n=0
while True:
    r,_,_=select.select([sys.stdin],[],[],0)
    if r and not sys.stdin.buffer.read1(64): break
    for f in fs:
        struct.pack_into('<IQ',f,len(f)-24+5,n,time.monotonic_ns())
        s.send(f)
        n+=1
    time.sleep(0.005)
print(n)`;
  const child = spawn('ip', ['netns', 'exec', ns.name, 'python3', '-c', py, tap, ...fl.map((f) => Buffer.from(frameOf(f)).toString('hex'))], { stdio: ['pipe', 'pipe', 'inherit'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  const sent = new Promise<number>((resolve, reject) => child.on('exit', (code) => (code === 0 ? resolve(Number(out.trim())) : reject(new Error(`sender exited ${code}`)))));
  return { child, sent };
}

test.serial('RSS under traffic: the table (and key, and types) change while frames flow; flows move, nothing is lost uncounted, no frame after the ack has the old hash', async (t) => {
  await withNetns(async (ns) => {
    const { g, tap, dev } = await hashGuest(ns, { rss: true, pairs: 2 });
    const key2 = Uint8Array.from({ length: 40 }, (_, i) => (i * 91 + 3) & 0xff);
    const T = [0, 1, 1, 0, 1, 0, 0, 1];
    const configs: Array<{ types: number; key: Uint8Array } & Steer> = [
      { types: ALL, key: MS_RSS_KEY, table: T, unclassifiedQueue: 0 },
      // The same hash, every entry flipped: every flow moves.
      { types: ALL, key: MS_RSS_KEY, table: T.map((q) => 1 - q), unclassifiedQueue: 1 },
      // A new key: new hashes, new queues.
      { types: ALL, key: key2, table: T, unclassifiedQueue: 0 },
      // Fewer types: TCPv6 and UDPv4 flows fall back to the IP hash / unclassified_queue.
      { types: HASH_TYPE.TCPv4 | HASH_TYPE.UDPv6 | HASH_TYPE.IPv4, key: key2, table: [1, 0], unclassifiedQueue: 1 },
    ];
    const fl = flows(80, 9).filter((f) => ['tcp4', 'udp4', 'tcp6', 'udp6'].includes(f.kind));
    const byId = new Map(fl.map((f, i) => [f.id, i]));
    // Per configuration: when its command went out, and (at its 'rss' event, which comes right
    // before the ack in the same tick) the time and each RX ring's published count.
    const tCmd: bigint[] = [];
    const tEvent: bigint[] = [];
    const published: number[][] = [];
    dev.on('rss', () => {
      tEvent.push(process.hrtime.bigint());
      published.push([0, 1].map((p) => g.rxPublished(p)));
    });
    const apply = async (c: (typeof configs)[number]): Promise<void> => {
      tCmd.push(process.hrtime.bigint());
      t.is(await g.ctrl!.command(CTRL.CLASS_MQ, CTRL.MQ_RSS_CONFIG, rss({ hashTypes: c.types, key: c.key, table: c.table, unclassifiedQueue: c.unclassifiedQueue })), CTRL.OK);
    };
    await apply(configs[0]);
    g.drain();
    const got: RxFrame[] = [];
    const sender = stampedSender(ns, tap, fl);
    ns.defer(() => sender.child.kill());
    const collectFor = async (ms: number): Promise<void> => {
      got.push(...(await g.collect(ms)));
    };
    // Each configuration gets this many frames to itself (counted as they arrive: the sender's
    // pace under load is not known); the wait for them is bounded, not asserted.
    const PER_CONFIG = 600;
    const collectFrames = async (n: number): Promise<void> => {
      const until = got.length + n;
      const end = Date.now() + 60_000;
      while (got.length < until && Date.now() < end) await collectFor(20);
    };
    await collectFrames(PER_CONFIG);
    for (const c of configs.slice(1)) {
      // The command goes out while frames flow; the guest keeps taking frames meanwhile.
      let acked = false;
      const done = apply(c).finally(() => (acked = true));
      while (!acked) await collectFor(5);
      await done;
      await collectFrames(PER_CONFIG);
    }
    sender.child.stdin!.end();
    const sent = await sender.sent;
    const wantBy = Date.now() + 5000;
    const kernelDrops = (): number => Number(ns.exec('cat', [`/sys/class/net/${tap}/statistics/tx_dropped`]).trim());
    const deviceDrops = (): number => dev.stats().totals.drops;
    while (got.length + kernelDrops() + deviceDrops() < sent && Date.now() < wantBy) await collectFor(50);

    // Nothing lost that a counter does not name, nothing twice.
    const stamp = (r: RxFrame): { flow: number; n: number; t0: bigint } => {
      const off = r.frame.length - 24;
      const d = new DataView(r.frame.buffer, r.frame.byteOffset + off);
      return { flow: byId.get(d.getUint32(0))!, n: d.getUint32(5, true), t0: d.getBigUint64(9, true) };
    };
    const seen = new Map<number, { r: RxFrame; s: ReturnType<typeof stamp> }>();
    let others = 0;
    for (const r of got) {
      const s = stamp(r);
      // The kernel's own frames on the TAP (IPv6 router and multicast listener messages).
      if (s.flow === undefined) {
        others++;
        continue;
      }
      t.false(seen.has(s.n), `frame ${s.n} arrived once`);
      seen.set(s.n, { r, s });
    }
    t.log(`sent ${sent}, received ${seen.size} (and ${others} of the kernel's own), dropped by the TAP (tx_dropped) ${kernelDrops()}, by the device ${deviceDrops()}`);
    t.is(seen.size + kernelDrops() + deviceDrops(), sent, 'every frame sent arrived or was counted as dropped');

    // Hashes: a frame published after configuration k's ack carries k's hash, or (published
    // just before k+1's ack) k+1's; never an earlier one's.
    const expect = (f: Flow, k: number): { report: number; value: number } => expected(f, configs[k].types, configs[k].key);
    let badHash = 0;
    // Queues: a frame is steered while its sender hands it to the kernel, between its stamp
    // and the next frame's. A configuration may steer from its command on, and certainly no
    // longer once the next one's ack went out: the frame's queue is one of those configurations'.
    let badQueue = 0;
    const exact = new Array<number>(configs.length).fill(0);
    for (const { r, s } of seen.values()) {
      const f = fl[s.flow];
      let k = 0;
      while (k + 1 < published.length && published[k + 1][r.pair] <= r.seq) k++;
      const okHash = [k, k + 1].filter((j) => j < configs.length).map((j) => expect(f, j));
      const d = new DataView(r.hdr.buffer, r.hdr.byteOffset, 20);
      const value = d.getUint32(HDR_HASH.OFF_HASH_VALUE, true);
      const report = d.getUint16(HDR_HASH.OFF_HASH_REPORT, true);
      if (!okHash.some((e) => e.value === value && e.report === report)) {
        if (++badHash < 5) t.fail(`frame ${s.n} (${f.kind}) at ring ${r.pair} #${r.seq}, after ack ${k}: hash 0x${value.toString(16)} report ${report}, expected configuration ${k}'s 0x${okHash[0].value.toString(16)}`);
      }
      const next = seen.get(s.n + 1)?.s.t0;
      const may: number[] = [];
      for (let j = 0; j < configs.length; j++) {
        const from = tCmd[j];
        const until = j + 1 < tEvent.length ? tEvent[j + 1] : undefined;
        if ((until === undefined || s.t0 < until) && (next === undefined || next > from)) may.push(j);
      }
      if (may.length === 1) exact[may[0]]++;
      if (!may.some((j) => queueOf(expect(f, j), configs[j]) === r.pair)) {
        if (++badQueue < 5) t.fail(`frame ${s.n} (${f.kind}) on queue ${r.pair}; configurations ${may.join(', ')} name ${may.map((j) => queueOf(expect(f, j), configs[j])).join(', ')}`);
      }
    }
    t.is(badHash, 0, `${badHash} frames with a hash older than the last ack before them`);
    t.is(badQueue, 0, `${badQueue} frames on a queue no configuration in force when they were sent names`);
    t.log(`frames steered by exactly one configuration: ${exact.join(', ')}`);
    // The test saw each configuration alone steer many frames, so the checks above bite.
    for (const [j, n] of exact.entries()) t.true(n >= 100, `configuration ${j} alone steered ${n} frames`);
    t.is(dev.stats().rss.steering, 'ebpf');
  });
});

test.serial('RSS where the steering program cannot load (no CAP_BPF): the command is still OK, the kernel steers, stats().rss and a warning say so, hash reports stay exact', async (t) => {
  await withNetns(async (ns) => {
    const tap = ns.ifname();
    const fl = flows(40, 5).filter((f) => f.kind === 'udp4' || f.kind === 'tcp4');
    const child = path.join(__dirname, 'helpers', 'rss-fallback-child.js');
    // Root less CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN: with unprivileged BPF off (this machine's
    // kernel.unprivileged_bpf_disabled) bpf() answers EPERM.
    const r = ns.run('setpriv', ['--bounding-set=-bpf,-perfmon,-sys_admin', process.execPath, child, tap, ...fl.map((f) => Buffer.from(frameOf(f)).toString('hex'))], 120_000);
    t.is(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout.trim().split('\n').pop()!) as { ack: number; ok: number; rss: { steering: string; fallbacks: number; why?: string }; warnings: string[]; hashes: { frame: string; value: number; report: number }[] };
    t.is(out.ack, out.ok, 'RSS_CONFIG acked OK');
    t.is(out.rss.steering, 'kernel');
    t.is(out.rss.fallbacks, 1);
    t.regex(out.rss.why ?? '', /EPERM/);
    t.is(out.warnings.filter((w) => /steering program could not load/.test(w)).length, 1, out.warnings.join('\n'));
    t.is(out.hashes.length, fl.length, 'every frame arrived');
    for (const h of out.hashes) {
      const f = fl.find((x) => Buffer.from(frameOf(x)).toString('hex') === h.frame)!;
      const e = expected(f, ALL, MS_RSS_KEY);
      t.deepEqual({ value: h.value, report: h.report }, e, `${f.kind} flow ${f.id.toString(16)}`);
    }
  });
});
