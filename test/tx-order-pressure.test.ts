// TX order and no loss under pressure, for both I/O methods (io: 'auto', which
// runs io_uring or readv/writev, whichever it measures cheaper here, and
// io: 'readv'; io_uring alone where VHOST_TAP_IO=uring pins it, and auto
// changing method every two batches through a test hook): the guest sends N sequence-numbered frames
// as fast as its ring allows into a TAP whose frames are redirected (tc mirred)
// to a veth with a slow token bucket, so the frames pile up behind a slow
// reader. Every frame must leave that veth exactly once and in the guest's
// order. Two set-ups: the TAP's default sndbuf (INT_MAX: io_uring writes
// unlinked; the pressure is the tbf backlog), and a 32 KiB sndbuf set by
// another queue holder after the device started (the TAP refuses writes:
// io_uring writes linked, readv/writev stops at the refusal; the pressure is
// the refusals, which the test requires to have happened); both set-ups also
// with option sqpoll (io_uring through a kernel polling thread). Then the race:
// the sndbuf shrinks while the guest sends (the worker usually switches to
// linked writes in time: then it proves no loss only), and forced through a
// test hook that keeps unlinked writes under the finite sndbuf — frames then
// overtake refused ones, and the test requires every frame exactly once and
// the overtaking frames to be exactly the ones counted in stats reordered.
//
// Capture: an AF_PACKET ETH_P_ALL socket on the veth keeps only frames the
// veth transmits (PACKET_OUTGOING): that is tbf's dequeue order, lossless. The
// veth's peer is not used: a veth's receive side can reorder (per-CPU
// backlogs), and a bridge drops the first frames after carrier-on.

import test from 'ava';

import { bits, STATUS, VirtioNetDevice, type VirtioNetError } from '../backend';
import { addon } from '../backend/native';
import { type Netns, withNetns } from '../host/netns';
import { readyPython } from './helpers/netns-python';
import { DriverQueue, GuestMem } from './helpers/rings';

const MiB = 1 << 20;
const HDR = 12;
const N = 20_000;
const QSIZE = 256;
const FRAME = 64; // bytes after the virtio_net_hdr
const ETHERTYPE = 0x88b5;

/** Sequence numbers of the frames `ifname` transmits (ethertype 0x88b5, u32 at byte 14), in order. */
async function captureOutgoing(ns: Netns, ifname: string, count: number, ms: number): Promise<{ done(): Promise<number[]> }> {
  const py = `import socket,struct,time
s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW,socket.htons(3))
s.setsockopt(socket.SOL_SOCKET,33,16<<20)
s.bind((${JSON.stringify(ifname)},0))
s.settimeout(0.2)
print('ready',flush=True)
got=[]
end=time.time()+${ms / 1000}
while len(got)<${count} and time.time()<end:
    try:
        f,a=s.recvfrom(2048)
    except socket.timeout:
        continue
    if a[2]==4 and len(f)>=18 and f[12:14]==b'\\x88\\xb5':
        got.append(struct.unpack('>I',f[14:18])[0])
print(' '.join(map(str,got)),flush=True)
`;
  const capture = await readyPython(ns, py, `capture on ${ifname}`);
  return {
    async done() {
      const [line = ''] = await capture.done();
      return line === '' ? [] : line.split(' ').map(Number);
    },
  };
}

function tbfOverlimits(ns: Netns, ifname: string): number {
  const qs = JSON.parse(ns.exec('tc', ['-s', '-j', 'qdisc', 'show', 'dev', ifname])) as { kind: string; overlimits?: number }[];
  return qs.filter((q) => q.kind === 'tbf').reduce((a, q) => a + (q.overlimits ?? 0), 0);
}

async function sleep(ms: number): Promise<void> {
  await new Promise((r) => setTimeout(r, ms));
}

/** How the sndbuf is set: before the guest sends, or when half of the frames are posted. */
type When = 'before' | 'midway' | 'forced';

async function run(t: import('ava').ExecutionContext, io: 'auto' | 'readv', sndbuf: number | null, sqpoll = false, when: When = 'before'): Promise<void> {
  await withNetns(async (ns) => {
    ns.exec('sysctl', ['-qw', 'net.ipv6.conf.default.disable_ipv6=1']);
    ns.exec('sysctl', ['-qw', 'net.ipv6.conf.all.disable_ipv6=1']);
    const tap = ns.ifname();
    const slow = ns.ifname();
    const peer = ns.ifname();
    const sab = new SharedArrayBuffer(4 * MiB);
    const dev = new VirtioNetDevice({ memory: sab, tap, netns: ns.name, io, sqpoll });
    ns.defer(() => void dev.close());
    const broken: VirtioNetError[] = [];
    dev.on('needs-reset', (e) => broken.push(e));

    // The slow reader: everything the TAP receives from the device goes out of
    // `slow` through a 5 Mbit/s token bucket (slow enough that even a writer starved of CPU outruns it) with a queue long enough for all N.
    ns.ip('link', 'add', slow, 'type', 'veth', 'peer', 'name', peer);
    ns.ip('link', 'set', slow, 'up');
    ns.ip('link', 'set', peer, 'up');
    ns.exec('tc', ['qdisc', 'add', 'dev', slow, 'root', 'tbf', 'rate', '5mbit', 'burst', '16kb', 'limit', '200mb']);
    ns.exec('tc', ['qdisc', 'add', 'dev', tap, 'ingress']);
    ns.exec('tc', ['filter', 'add', 'dev', tap, 'parent', 'ffff:', 'protocol', 'all', 'u32', 'match', 'u32', '0', '0', 'action', 'mirred', 'egress', 'redirect', 'dev', slow]);

    dev.status = STATUS.ACKNOWLEDGE;
    dev.status = STATUS.ACKNOWLEDGE | STATUS.DRIVER;
    dev.driverFeatures = dev.deviceFeatures & bits('VERSION_1');
    dev.status = STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK;
    const mem = new GuestMem(4 * MiB, 0, sab);
    const rx = new DriverQueue(mem, QSIZE, 0x10000);
    const tx = new DriverQueue(mem, QSIZE, 0x20000);
    dev.setQueue(0, rx.layout);
    dev.setQueue(1, tx.layout);
    dev.status |= STATUS.DRIVER_OK;

    const shrink = (): void => {
      if (sndbuf === null) return;
      // Another holder of a queue of the same TAP sets the sndbuf: it applies to
      // every queue attached at that moment, the device's included.
      const a = addon();
      const extra = a.tapOpen(tap, ns.path, 0);
      try {
        a.tapSetSndBuf(extra.fd, sndbuf);
      } finally {
        a.close(extra.fd);
      }
    };
    if (when !== 'midway') shrink();
    let shrunk = false;

    const cap = await captureOutgoing(ns, slow, N, 60_000);
    // One buffer per slot (header + frame), rewritten before each post.
    const BUF = 0x100000;
    const frameAt = (slot: number): number => BUF + 128 * slot;
    const write = (slot: number, seq: number): void => {
      const at = frameAt(slot);
      mem.u8.fill(0, at, at + HDR + FRAME);
      mem.u8.set([0x02, 0xaa, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2], at + HDR);
      mem.dv.setUint16(at + HDR + 12, ETHERTYPE);
      mem.dv.setUint32(at + HDR + 14, seq);
    };
    let posted = 0;
    const deadline = Date.now() + 60_000;
    while (posted < N && Date.now() < deadline && broken.length === 0) {
      const inFlight = (posted - tx.usedIdx) & 0xffff;
      const room = Math.min(QSIZE - inFlight, N - posted);
      if (room === 0) {
        await sleep(1);
        continue;
      }
      if (when === 'midway' && !shrunk && posted >= N / 2) {
        shrunk = true;
        shrink();
      }
      for (let i = 0; i < room; i++) {
        const slot = posted % QSIZE;
        write(slot, posted);
        tx.setChain(slot, [[frameAt(slot), HDR + FRAME, false]]);
        tx.place(slot);
        posted++;
      }
      tx.publish();
      dev.kick(1);
    }
    const got = await cap.done();
    const q = dev.stats().queues.find((s) => s.index === 1)!;

    t.deepEqual(broken, []);
    t.is(posted, N, 'the guest posted every frame');
    if (when !== 'before') {
      // The race: the sndbuf shrinks while batches are written unlinked. Every frame
      // still arrives exactly once, and any frame that overtook an earlier one is counted.
      t.deepEqual([...new Set(got)].sort((x, y) => x - y), Array.from({ length: N }, (_, i) => i), 'every frame once');
      let overtook = 0;
      let min = Infinity;
      for (let i = got.length - 1; i >= 0; i--) {
        if (got[i] > min) overtook++;
        min = Math.min(min, got[i]);
      }
      const q1 = dev.stats().queues.find((s) => s.index === 1)!;
      t.is(q1.reordered, overtook, 'frames that arrived ahead of an earlier one are exactly the counted ones');
      t.is(q1.drops.tx_tap_full_reordered ?? 0, 0);
      if (when === 'forced') t.true(q1.reordered > 0, 'the forced race happened: frames overtook refused ones');
      t.true(q1.tapFull > 0, `the TAP refused writes after the shrink (tapFull ${q1.tapFull})`);
      t.log(`sndbuf shrunk ${when}: reordered ${q1.reordered}${q1.reordered === 0 ? ' (the switch to linked writes won the race: this run proves no loss only)' : ''}, tapFull ${q1.tapFull}`);
      return;
    }
    t.is(got.length, N, `every frame left the slow veth (got ${got.length} of ${N})`);
    let inversions = 0;
    const where: string[] = [];
    for (let i = 1; i < got.length; i++) {
      if (got[i] <= got[i - 1]) {
        inversions++;
        if (where.length < 5) where.push(`${got.slice(Math.max(0, i - 3), i + 3).join(',')}`);
      }
    }
    if (inversions) t.log(`inversions at: ${where.join(' | ')}; reordered ${q.reordered}, tapFull ${q.tapFull}, drops ${JSON.stringify(q.drops)}`);
    t.is(inversions, 0, 'frames left in the guest order, none twice');
    t.deepEqual(got.slice(0, 3), [0, 1, 2]);
    t.is(got[got.length - 1], N - 1);
    t.is(q.packets, N);
    t.deepEqual(Object.entries(q.drops).filter(([, v]) => v !== 0), [], 'no drops');
    t.is(q.reordered, 0);
    if (sqpoll) t.is(dev.stats().io, 'io_uring sqpoll', 'the kernel polled the submission ring');
    // Pressure really happened, else the test proves nothing.
    t.true(tbfOverlimits(ns, slow) > 0, 'the token bucket held frames back');
    if (sndbuf !== null) t.true(q.tapFull > 0, `the TAP refused writes for lack of room (tapFull ${q.tapFull})`);
    else t.is(q.tapFull, 0, 'with the default sndbuf the TAP never refuses a small frame');
    t.log(`io ${dev.stats().io}, sndbuf ${sndbuf ?? 'default'}: tapFull ${q.tapFull}, tbf overlimits ${tbfOverlimits(ns, slow)}`);
  });
}

for (const io of ['auto', 'readv'] as const) {
  test.serial(`TX order under pressure (io '${io}', default sndbuf): a slow reader behind the TAP, every frame once and in order`, (t) => run(t, io, null));
  test.serial(`TX order under pressure (io '${io}', 32 KiB sndbuf set by another queue holder): the TAP refuses writes, every frame once and in order`, (t) => run(t, io, 32768));
}
/** Runs `f` with environment variables set (read by the engine at start()), then restores them. */
async function withEnv(vars: Record<string, string>, f: () => Promise<void>): Promise<void> {
  const saved = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]));
  Object.assign(process.env, vars);
  try {
    await f();
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

// io_uring's unlinked writes are what the sndbuf race is about: VHOST_TAP_IO=uring keeps
// auto on io_uring (it could otherwise measure readv/writev cheaper and take that).
test.serial('TX under pressure (io_uring): the sndbuf shrinks while the guest sends; every frame once, any overtaking counted', (t) =>
  withEnv({ VHOST_TAP_IO: 'uring' }, () => run(t, 'auto', 32768, false, 'midway')));
test.serial('TX under pressure (io_uring), the race forced: unlinked writes under a 32 KiB sndbuf; every frame once, every overtaking frame counted', (t) =>
  // Test hook (tap_io_uring.cc): keeps writing unlinked after the sndbuf became finite,
  // which is what the worker does for the ~1 ms until it next reads the sndbuf.
  withEnv({ VHOST_TAP_IO: 'uring', VHOST_TAP_TEST_UNLINKED_ALWAYS: '1' }, () => run(t, 'auto', 32768, false, 'forced')));
// Test hook (tap_io_auto.cc): auto changes method every 2 batches, so refused suffixes are
// sent again on the other method and waits for room end on either.
for (const sndbuf of [null, 32768]) {
  test.serial(`TX order under pressure (io auto changing method every 2 batches, ${sndbuf === null ? 'default sndbuf' : '32 KiB sndbuf'}): every frame once and in order`, (t) =>
    withEnv({ VHOST_TAP_TEST_AUTO_FLIP: '2' }, () => run(t, 'auto', sndbuf)));
}
test.serial('TX order under pressure (sqpoll, default sndbuf): every frame once and in order through the kernel polling thread', (t) => run(t, 'auto', null, true));
test.serial('TX order under pressure (sqpoll, 32 KiB sndbuf): the TAP refuses writes, every frame once and in order', (t) => run(t, 'auto', 32768, true));
