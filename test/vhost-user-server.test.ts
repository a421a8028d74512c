// The vhost-user back end with its real data plane (VhostUserServer over a
// TapBackend: the embedded device's engines on memory mapped from the front
// end's memfd, a real TAP in a namespace), driven by test front ends: frames
// both ways through the mapped rings (an ARP exchange with the namespace's
// kernel), statistics per queue, one session at a time, client mode with
// retries, a stale socket file replaced and a live one left alone, and every
// hostile case refused with nothing left behind: no worker, no mapping, no fd.

import test from 'ava';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';

import { bits, featureNames, VhostUserServer } from '../backend';
import { addon } from '../backend/native';
import { VhostUserListener } from '../backend/vhost-user/socket';
import { Netns, withNetns } from '../host/netns';
import { REQ } from '../backend/vhost-user/protocol';
import { arpRequest, expectOk, FrontEnd, HOSTILE_CASES, MemfdGuest, memTable, playHostileCase, u64 } from './helpers/vhost-user-frontend';

const GUEST_MAC = Buffer.from([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
const HOST_IP = [10, 203, 22, 1];
const GUEST_IP = [10, 203, 22, 2];

const openFds = (): number => fs.readdirSync('/proc/self/fd').length;
/** Mappings of test memfds (named 'vhost-tap-test') in this process. */
const memfdMappings = (): number => fs.readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes('memfd:vhost-tap-test')).length;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function sockPath(tag: string): string {
  return `/tmp/vt-vus-${tag}-${process.pid}.sock`;
}

function server(ns: Netns, socket: string, extra: Partial<ConstructorParameters<typeof VhostUserServer>[0]> = {}): { srv: VhostUserServer; tap: string; logs: string[] } {
  const tap = ns.ifname();
  const logs: string[] = [];
  const srv = new VhostUserServer({ socket, tap, netns: ns.name, log: (l) => logs.push(l), ...extra });
  ns.defer(() => void srv.close());
  return { srv, tap, logs };
}

/**
 * Waits until the kernel treats the TAP's link as up. The carrier comes on with the first
 * running pair, but the kernel activates the TAP's transmit queues later (linkwatch, up to a
 * second): until then what it sends to the TAP — an ARP reply — is dropped at the qdisc
 * (QDISC_DROP). A real guest retries; this test front end sends once.
 */
async function linkUp(ns: Netns, tap: string): Promise<void> {
  for (let i = 0; i < 100; i++) {
    if (/state UP/.test(ns.run('ip', ['link', 'show', tap]).stdout)) return;
    await sleep(50);
  }
  throw new Error(`${tap} did not come up: ${ns.run('ip', ['link', 'show', tap]).stdout}`);
}

/** What the back end and the TAP saw, for a timeout's message. */
function diagnose(ns: Netns, tap: string, srv: VhostUserServer, seen: string[]): string {
  const q = srv.stats().device.queues.map((x) => `${x.kind}${x.index} ${x.packets} pkts ${x.kicks} kicks ${JSON.stringify(Object.fromEntries(Object.entries(x.drops).filter(([, v]) => v)))}`);
  const link = ns.run('ip', ['-s', 'link', 'show', tap]).stdout.replace(/\s+/g, ' ');
  const neigh = ns.run('ip', ['neigh']).stdout.replace(/\s+/g, ' ');
  return `queues: ${q.join(', ')}; frames seen: ${seen.join(' ')}; ${link}; neigh: ${neigh}`;
}

function nextEnd(srv: VhostUserServer): Promise<string> {
  return new Promise((r) => srv.once('session-end', r));
}

test.serial('a good front end moves frames both ways through the mapped rings; its session end stops the worker, unmaps and closes every fd', async (t) => {
  await withNetns(async (ns) => {
    const sock = sockPath('good');
    const { srv, tap, logs } = server(ns, sock);
    execFileSync('ip', ['-n', ns.name, 'addr', 'add', `${HOST_IP.join('.')}/24`, 'dev', tap]);
    const fds0 = openFds();
    const maps0 = memfdMappings();
    const g = await MemfdGuest.start(sock);
    try {
      await g.until(() => srv.backend.running(0), 5000, 'pair 0 to run');
      await linkUp(ns, tap);
      t.true(memfdMappings() > maps0, 'the memfd is mapped while the session runs');
      // Room for what else the namespace's kernel sends on a new link (IPv6 MLD, router solicitations).
      g.postRx(64);
      g.send(arpRequest(GUEST_MAC, GUEST_IP, HOST_IP));
      await g.until(() => g.usedIdx(1) === 1, 5000, 'the TX chain to come back used');
      let reply: Buffer | undefined;
      const seen: string[] = [];
      await g.until(
        () => {
          for (const f of g.received()) {
            seen.push(f.subarray(0, 34).toString('hex'));
            if (f.readUInt16BE(12) === 0x0806 && f.readUInt16BE(20) === 2) reply ??= f;
          }
          return reply !== undefined;
        },
        5000,
        "the kernel's ARP reply on RX",
        () => diagnose(ns, tap, srv, seen),
      );
      t.deepEqual([...reply!.subarray(0, 6)], [...GUEST_MAC], 'the reply is addressed to the guest');
      t.deepEqual([...reply!.subarray(28, 32)], HOST_IP, 'from the TAP address');
      const s = srv.stats();
      t.is(s.sessions, 1);
      t.true(s.connected);
      t.is(s.device.queues[1].packets, 1, 'queue 1 (TX) sent the request');
      t.true(s.device.queues[0].packets >= 1, 'queue 0 (RX) received the reply');
      t.is(s.device.totals.drops, 0);
    } finally {
      const ended = nextEnd(srv);
      g.close();
      t.regex(await ended, /peer closed/);
    }
    t.false(srv.backend.running(0), 'the worker stopped');
    t.deepEqual(srv.backend.mappedRegions(), []);
    t.is(memfdMappings(), maps0, 'no mapping of the front end memory is left');
    t.is(openFds(), fds0, 'every fd the session took is closed');
    t.false(srv.connected);
    // The counters stay for the server's statistics.
    t.is(srv.stats().device.queues[1].packets, 1);
    t.true(logs.some((l) => /queue pair 0 running/.test(l)), logs.join('\n'));
    await srv.close();
    t.false(fs.existsSync(sock), 'close() removes the socket file');
  });
});

test.serial('a new memory table while the rings run: the workers move to the new mapping without a restart, the old one is unmapped, frames keep flowing', async (t) => {
  await withNetns(async (ns) => {
    const sock = sockPath('remap');
    const { srv, tap, logs } = server(ns, sock);
    execFileSync('ip', ['-n', ns.name, 'addr', 'add', `${HOST_IP.join('.')}/24`, 'dev', tap]);
    const maps0 = memfdMappings();
    const g = await MemfdGuest.start(sock);
    try {
      await linkUp(ns, tap);
      g.postRx(64);
      const arp = (): Promise<void> => {
        const before = g.usedIdx(1);
        g.send(arpRequest(GUEST_MAC, GUEST_IP, HOST_IP));
        return g.until(() => g.usedIdx(1) === ((before + 1) & 0xffff) && g.received().some((f) => f.readUInt16BE(12) === 0x0806 && f.readUInt16BE(20) === 2), 5000, 'an ARP exchange');
      };
      await arp();
      const mapped = memfdMappings();
      const starts = logs.filter((l) => /queue pair 0 running/.test(l)).length;
      // The same memory again (QEMU sends a new table on hotplug or a PCI BAR remap): a new
      // mapping; ring addresses translate to the same guest addresses, so nothing restarts.
      await expectOk(g.fe, REQ.SET_MEM_TABLE, memTable([g.mem.region]), [g.mem.fd]);
      await arp();
      t.is(logs.filter((l) => /queue pair 0 running/.test(l)).length, starts, 'the pair kept running');
      t.is(memfdMappings(), mapped, 'the old mapping went once the worker let go of it');
      t.true(srv.backend.running(0));
    } finally {
      const ended = nextEnd(srv);
      g.close();
      await ended;
    }
    t.is(memfdMappings(), maps0);
  });
});

test.serial('a guest that breaks a ring rule: that ring stops, the error eventfd fires, the session and the other ring go on', async (t) => {
  await withNetns(async (ns) => {
    const sock = sockPath('broken');
    const { srv, tap } = server(ns, sock);
    execFileSync('ip', ['-n', ns.name, 'addr', 'add', `${HOST_IP.join('.')}/24`, 'dev', tap]);
    const g = await MemfdGuest.start(sock);
    const err = addon().eventfd();
    try {
      await linkUp(ns, tap);
      await expectOk(g.fe, REQ.SET_VRING_ERR, u64(1n), [err]);
      const broken = new Promise<{ ring: number; rule: string }>((r) => srv.once('ring-broken', r));
      g.sendOutOfBounds();
      const b = await broken;
      t.is(b.ring, 1);
      t.is(b.rule, 'desc-out-of-bounds');
      t.is(addon().waitCall([err], 2000), 1, "the front end's error eventfd was signalled");
      t.true(srv.connected, 'the session goes on');
      t.true(srv.stats().device.queues[1].broken);
      // RX still runs: a ping from the namespace makes its kernel ask for the guest's MAC.
      g.postRx(64);
      ns.run('ping', ['-c', '1', '-W', '1', GUEST_IP.join('.')]);
      await g.until(() => g.received().some((f) => f.readUInt16BE(12) === 0x0806 && f.readUInt16BE(20) === 1), 5000, 'an ARP request on the healthy RX ring');
      t.false(srv.stats().device.queues[0].broken);
    } finally {
      const ended = nextEnd(srv);
      g.close();
      await ended;
      addon().close(err);
    }
  });
});

test.serial('options: the TAP gets the MTU asked for; a features mask without offloads leaves ring features, GUEST_ANNOUNCE and CTRL_VQ offered', async (t) => {
  await withNetns(async (ns) => {
    const { srv, tap } = server(ns, sockPath('opts'), { mtu: 9000, features: bits('VERSION_1', 'MRG_RXBUF', 'RING_EVENT_IDX', 'RING_INDIRECT_DESC', 'GUEST_ANNOUNCE', 'CTRL_VQ', 'MQ') });
    t.regex(ns.run('ip', ['link', 'show', tap]).stdout, / mtu 9000 /);
    t.deepEqual(featureNames(srv.backend.features).sort(), ['CTRL_VQ', 'GUEST_ANNOUNCE', 'MRG_RXBUF', 'RING_EVENT_IDX', 'RING_INDIRECT_DESC', 'VERSION_1'].sort(), 'no MQ with one pair, no offload');
    t.throws(() => new VhostUserServer({ socket: sockPath('bad'), tap: ns.ifname(), netns: ns.name, mtu: 10 }), { message: /mtu must be an integer from 68 to 65535/ });
  });
});

test.serial('one front end at a time: a second one waits in the backlog and is served when the first leaves', async (t) => {
  await withNetns(async (ns) => {
    const sock = sockPath('one');
    const { srv } = server(ns, sock);
    const a = FrontEnd.connect(sock);
    await a.handshake();
    const b = FrontEnd.connect(sock);
    // b's connect succeeded (backlog) but nobody reads it: no reply comes while a is served.
    b.send(3 /* SET_OWNER is one-way */);
    const getFeatures = b.getU64(1).then((v) => v);
    await sleep(300);
    t.is(srv.stats().sessions, 1);
    const ended = nextEnd(srv);
    a.close();
    await ended;
    const f = await getFeatures;
    // Bit 30: F_PROTOCOL_FEATURES; bit 26: VHOST_F_LOG_ALL (live migration's dirty log).
    t.is(f, srv.backend.features | (1n << 30n) | (1n << 26n), 'the second front end is answered once the first is gone');
    t.is(srv.stats().sessions, 2);
    const ended2 = nextEnd(srv);
    b.close();
    await ended2;
  });
});

test.serial('client mode: connects once the front end listens, retrying; after it leaves, waits for the next', async (t) => {
  await withNetns(async (ns) => {
    const sock = sockPath('cli');
    const { srv, logs } = server(ns, sock, { client: true });
    await sleep(400);
    t.is(srv.stats().sessions, 0);
    t.true(logs.some((l) => /waiting for a front end to listen/.test(l)));
    const accepted: FrontEnd[] = [];
    const listener = new VhostUserListener(sock, (fd) => accepted.push(new FrontEnd(fd)), (e) => t.fail(e.message));
    try {
      const until = async (n: number): Promise<void> => {
        for (let i = 0; i < 100 && accepted.length < n; i++) await sleep(50);
      };
      await until(1);
      t.is(accepted.length, 1, 'the back end connected');
      const h = await accepted[0].handshake();
      t.is(h.queues, 2n, 'GET_QUEUE_NUM: the virtqueues of one pair');
      const ended = nextEnd(srv);
      accepted[0].close();
      await ended;
      await until(2);
      t.is(accepted.length, 2, 'and connected again after the first front end left');
      await accepted[1].handshake();
      t.is(srv.stats().sessions, 2);
    } finally {
      for (const fe of accepted) fe.close();
      listener.close();
    }
  });
});

test.serial('the socket path: a stale socket file is replaced, a live one or a file that is not a socket is refused', async (t) => {
  await withNetns(async (ns) => {
    const sock = sockPath('stale');
    // A socket file whose listener is gone: bind, then close the fd without unlinking.
    const a = addon();
    a.close(a.vhostUser.listen(sock));
    t.true(fs.existsSync(sock));
    const { srv } = server(ns, sock);
    const fe = FrontEnd.connect(sock);
    t.is((await fe.handshake()).queues, 2n, 'listening on the replaced socket');
    fe.close();
    // A second back end on the same path while the first listens.
    t.throws(() => new VhostUserServer({ socket: sock, tap: ns.ifname(), netns: ns.name }), { message: /another process is listening/ });
    await srv.close();
    const file = `/tmp/vt-vus-file-${process.pid}`;
    fs.writeFileSync(file, 'not a socket');
    try {
      t.throws(() => new VhostUserServer({ socket: file, tap: ns.ifname(), netns: ns.name }), { message: /is not a socket/ });
      t.is(fs.readFileSync(file, 'utf8'), 'not a socket', 'the file is left alone');
    } finally {
      fs.unlinkSync(file);
    }
    // Nothing of the refused servers is left: their TAPs were closed again (and the first one's by close()).
    const links = ns.run('ip', ['-o', 'link', 'show']).stdout;
    t.deepEqual(links.split('\n').filter((l) => / vt\S*:/.test(l)), [], links);
  });
});

test.serial('every hostile case against the real back end: refused as the case expects, then a good front end moves frames; no worker, mapping or fd left', async (t) => {
  t.timeout(300_000);
  await withNetns(async (ns) => {
    const sock = sockPath('hostile');
    const { srv, tap } = server(ns, sock, { queuePairs: 2 });
    execFileSync('ip', ['-n', ns.name, 'addr', 'add', `${HOST_IP.join('.')}/24`, 'dev', tap]);
    const fds0 = openFds();
    const maps0 = memfdMappings();
    let refusals = 0;
    srv.on('refused', () => refusals++);
    for (const c of HOSTILE_CASES) {
      const before = refusals;
      const r = await playHostileCase(sock, c, () => nextEnd(srv));
      t.is(r.outcome, c.expect === 'nack' ? 'nack' : 'closed', c.name);
      if (c.expect === 'nack') t.true(refusals > before, `${c.name}: the refusal was reported`);
      // The back end says why it hung up (a refusal or the codec's reason), unless the front end did.
      if (c.expect === 'close' && !r.frontEndCloses) t.notRegex(r.reason, /peer closed/, `${c.name}: ${r.reason}`);
      t.false(srv.backend.running(0) || srv.backend.running(1), `${c.name}: no worker left`);
      t.is(memfdMappings(), maps0, `${c.name}: no mapping left`);
    }
    t.is(openFds(), fds0, 'no fd left after all hostile cases');
    const g = await MemfdGuest.start(sock);
    try {
      await linkUp(ns, tap);
      // Room for what else the namespace's kernel sends on a new link (IPv6 MLD, router solicitations).
      g.postRx(64);
      g.send(arpRequest(GUEST_MAC, GUEST_IP, HOST_IP));
      const seen: string[] = [];
      await g.until(
        () =>
          g.received().some((f) => {
            seen.push(f.subarray(0, 34).toString('hex'));
            return f.readUInt16BE(12) === 0x0806 && f.readUInt16BE(20) === 2;
          }),
        5000,
        'an ARP reply after the hostile front ends',
        () => diagnose(ns, tap, srv, seen),
      );
      t.pass('the next good front end exchanged frames');
    } finally {
      const ended = nextEnd(srv);
      g.close();
      await ended;
    }
    t.is(openFds(), fds0);
    t.is(memfdMappings(), maps0);
  });
});
