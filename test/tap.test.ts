// Native TAP and interface-control bindings against real devices. Each test
// makes its own 'vt…' network namespace (host/netns.ts), creates TAPs
// only inside it, and deletes it whatever happens. Needs root; CI runs as root,
// so without it these fail (with a message saying so) instead of skipping.

import test from 'ava';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';

import { addon } from '../backend/native';
import { netnsId, requireRoot, withNetns, type Netns } from '../host/netns';

const a = addon();
const C = a.constants;

const IFF_UP = 1;

interface IpLink {
  ifindex: number;
  ifname: string;
  flags: string[];
  mtu: number;
  address: string;
  operstate: string;
  linkinfo?: { info_kind: string; info_data?: Record<string, unknown> };
  stats64?: { rx: { packets: number; bytes: number }; tx: { packets: number; bytes: number } };
}

test.before(() => {
  requireRoot();
});

/** Opens a queue of TAP `name` in `ns`, closed when the namespace is torn down. */
function openQueue(ns: Netns, name: string): number {
  const { fd, name: actual } = a.tapOpen(name, ns.path, 0);
  ns.defer(() => a.close(fd));
  if (actual !== name) throw new Error(`kernel named the TAP '${actual}', asked for '${name}'`);
  return fd;
}

function link(ns: Netns, name: string, ...extra: string[]): IpLink {
  return ns.ipJson<IpLink[]>(...extra, 'link', 'show', 'dev', name)[0];
}

/** True when `name` exists in the root namespace (where tests must never create anything). */
function inRootNs(name: string): boolean {
  try {
    execFileSync('ip', ['link', 'show', 'dev', name], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

function kernelAtLeast(major: number, minor: number): boolean {
  const [ma, mi] = os.release().split('.').map((x) => parseInt(x, 10));
  return ma > major || (ma === major && mi >= minor);
}

function macBytes(mac: string): Buffer {
  return Buffer.from(mac.split(':').map((x) => parseInt(x, 16)));
}

/** An Ethernet ARP request "who has targetIp? tell senderIp", broadcast from srcMac. */
function arpRequest(srcMac: string, senderIp: number[], targetIp: number[]): Buffer {
  return Buffer.concat([
    Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
    macBytes(srcMac),
    Buffer.from([0x08, 0x06]), // ARP
    Buffer.from([0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01]), // Ethernet/IPv4, request
    macBytes(srcMac),
    Buffer.from(senderIp),
    Buffer.alloc(6),
    Buffer.from(targetIp),
  ]);
}

/** Reads frames from a non-blocking TAP fd until `match` accepts one or `ms` pass. */
async function readFrameUntil(fd: number, hdrLen: number, match: (frame: Buffer) => boolean, ms: number) {
  const buf = Buffer.alloc(65536);
  const seen: string[] = [];
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    let n: number;
    try {
      n = fs.readSync(fd, buf, 0, buf.length, null);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EAGAIN') {
        await sleep(5);
        continue;
      }
      throw e;
    }
    const frame = Buffer.from(buf.subarray(hdrLen, n));
    if (match(frame)) return { hdr: Buffer.from(buf.subarray(0, hdrLen)), frame };
    seen.push(frame.subarray(12, 14).toString('hex'));
  }
  throw new Error(`no matching frame within ${ms} ms (saw ethertypes: ${seen.join(',') || 'none'})`);
}

test('opens two queues of one multi-queue TAP inside the namespace only', async (t) => {
  await withNetns(async (ns) => {
    const name = ns.ifname();
    const fd0 = openQueue(ns, name);
    const fd1 = openQueue(ns, name);
    t.not(fd0, fd1);
    const l = link(ns, name, '-d');
    t.is(l.linkinfo?.info_kind, 'tun');
    t.is(l.linkinfo?.info_data?.type, 'tap');
    t.is(l.linkinfo?.info_data?.multi_queue, true);
    t.is(l.linkinfo?.info_data?.vnet_hdr, true);
    t.is(l.linkinfo?.info_data?.pi, false);
    t.is(l.linkinfo?.info_data?.numqueues, 2);
    t.false(inRootNs(name), 'the TAP must not appear in the root namespace');
    // Both fds are non-blocking and close-on-exec, as the contract says.
    for (const fd of [fd0, fd1]) {
      const flags = fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8').match(/flags:\s+(\d+)/)![1];
      const f = parseInt(flags, 8);
      t.truthy(f & fs.constants.O_NONBLOCK, 'O_NONBLOCK');
      t.truthy(f & 0o2000000, 'O_CLOEXEC');
    }
  });
});

test('features include TAP, NO_PI, VNET_HDR and MULTI_QUEUE', async (t) => {
  await withNetns(async (ns) => {
    const fd = openQueue(ns, ns.ifname());
    const f = a.tapGetFeatures(fd);
    for (const k of ['TUN_IFF_TAP', 'TUN_IFF_NO_PI', 'TUN_IFF_VNET_HDR', 'TUN_IFF_MULTI_QUEUE']) {
      t.truthy(f & C[k], `${k} missing from features 0x${f.toString(16)}`);
    }
  });
});

test('vnet header size: set and get 10, 12, 20; too small is EINVAL', async (t) => {
  await withNetns(async (ns) => {
    const fd = openQueue(ns, ns.ifname());
    t.is(a.tapGetVnetHdrSz(fd), 10, 'tun starts with the legacy 10-byte header');
    for (const size of [C.HDR_SIZE_LEGACY, C.HDR_SIZE_V1, C.HDR_SIZE_HASH]) {
      a.tapSetVnetHdrSz(fd, size);
      t.is(a.tapGetVnetHdrSz(fd), size);
    }
    const e = t.throws(() => a.tapSetVnetHdrSz(fd, 8), { code: 'EINVAL' });
    t.regex(e!.message, /at least 10/);
    t.throws(() => a.tapSetVnetHdrSz(fd, -1), { code: 'EVHOST_BADARG', message: /'size'/ });
    a.tapSetVnetLe(fd, true);
    a.tapSetVnetLe(fd, false);
    a.tapSetSndBuf(fd, 1 << 20);
    t.throws(() => a.tapSetSndBuf(fd, 0), { code: 'EVHOST_BADARG', message: /'bytes'/ });
  });
});

test('offload combinations this kernel accepts', async (t) => {
  await withNetns(async (ns) => {
    const fd = openQueue(ns, ns.ifname());
    const combos: Array<[string, number]> = [
      ['none', 0],
      ['CSUM', C.TUN_F_CSUM],
      ['CSUM|TSO4|TSO6', C.TUN_F_CSUM | C.TUN_F_TSO4 | C.TUN_F_TSO6],
      ['CSUM|TSO4|TSO6|TSO_ECN', C.TUN_F_CSUM | C.TUN_F_TSO4 | C.TUN_F_TSO6 | C.TUN_F_TSO_ECN],
      ['CSUM|UFO', C.TUN_F_CSUM | C.TUN_F_UFO],
      ['CSUM|USO4|USO6', C.TUN_F_CSUM | C.TUN_F_USO4 | C.TUN_F_USO6],
      ['CSUM|TSO4|TSO6|USO4|USO6', C.TUN_F_CSUM | C.TUN_F_TSO4 | C.TUN_F_TSO6 | C.TUN_F_USO4 | C.TUN_F_USO6],
    ];
    const accepted: Record<string, boolean> = {};
    for (const [label, flags] of combos) {
      try {
        a.tapSetOffload(fd, flags);
        accepted[label] = true;
      } catch (e) {
        t.is((e as { code: string }).code, 'EINVAL', `${label}: ${(e as Error).message}`);
        accepted[label] = false;
      }
    }
    t.log(`kernel ${os.release()} offloads accepted: ${JSON.stringify(accepted)}`);
    t.true(accepted['none']);
    t.true(accepted['CSUM']);
    t.true(accepted['CSUM|TSO4|TSO6']);
    t.true(accepted['CSUM|TSO4|TSO6|TSO_ECN']);
    // USO arrived in Linux 6.2; before that the kernel rejects the bits.
    if (kernelAtLeast(6, 2)) {
      t.true(accepted['CSUM|USO4|USO6']);
      t.true(accepted['CSUM|TSO4|TSO6|USO4|USO6']);
    }
    // Segmentation without checksum offload is meaningless; tun refuses it.
    t.throws(() => a.tapSetOffload(fd, C.TUN_F_TSO4), { code: 'EINVAL', message: /TUN_F_CSUM/ });
  });
});

test('detach and re-attach a queue', async (t) => {
  await withNetns(async (ns) => {
    const name = ns.ifname();
    const fd0 = openQueue(ns, name);
    openQueue(ns, name);
    const data = () => link(ns, name, '-d').linkinfo!.info_data!;
    t.is(data().numqueues, 2);
    a.tapSetQueue(fd0, false);
    t.is(data().numqueues, 1);
    t.is(data().numdisabled, 1);
    t.throws(() => a.tapSetQueue(fd0, false), { code: 'EINVAL', message: /already detached/ });
    a.tapSetQueue(fd0, true);
    t.is(data().numqueues, 2);
    t.is(data().numdisabled, 0);
  });
});

test('carrier off shows NO-CARRIER in the namespace; carrier on clears it', async (t) => {
  await withNetns(async (ns) => {
    const name = ns.ifname();
    const fd = openQueue(ns, name);
    a.netdevSetUp(ns.path, name, true);
    t.false(link(ns, name).flags.includes('NO-CARRIER'));
    a.tapSetCarrier(fd, false);
    t.true(link(ns, name).flags.includes('NO-CARRIER'));
    t.regex(ns.ip('link', 'show', 'dev', name), /NO-CARRIER/);
    a.tapSetCarrier(fd, true);
    t.false(link(ns, name).flags.includes('NO-CARRIER'));
  });
});

test('netdevInfo matches ip link; MTU, MAC and up/down can be set', async (t) => {
  await withNetns(async (ns) => {
    const name = ns.ifname();
    openQueue(ns, name);
    let l = link(ns, name);
    let info = a.netdevInfo(ns.path, name);
    t.is(info.ifindex, l.ifindex);
    t.is(info.mac, l.address);
    t.is(info.mtu, l.mtu);
    t.is(info.flags & IFF_UP, 0);

    a.netdevSetMtu(ns.path, name, 1400);
    a.netdevSetMac(ns.path, name, '02:12:34:56:78:9A');
    a.netdevSetUp(ns.path, name, true);
    l = link(ns, name);
    info = a.netdevInfo(ns.path, name);
    t.is(l.mtu, 1400);
    t.is(l.address, '02:12:34:56:78:9a');
    t.true(l.flags.includes('UP'));
    t.deepEqual({ mtu: info.mtu, mac: info.mac, up: info.flags & IFF_UP }, { mtu: 1400, mac: l.address, up: IFF_UP });

    a.netdevSetUp(ns.path, name, false);
    t.false(link(ns, name).flags.includes('UP'));
    t.is(a.netdevInfo(ns.path, name).flags & IFF_UP, 0);

    t.throws(() => a.netdevSetMtu(ns.path, name, 10), { code: 'EINVAL' });
    t.throws(() => a.netdevSetMac(ns.path, name, '01:00:5e:00:00:01'), { code: 'EADDRNOTAVAIL' });
    t.throws(() => a.netdevSetMac(ns.path, name, '02:00:00:00:00'), { code: 'EVHOST_BADARG', message: /'mac'/ });
    t.throws(() => a.netdevInfo(ns.path, 'vtnosuchdev'), { code: 'ENODEV', message: /no such interface/ });
    // The root namespace is only read here, never changed.
    t.is(a.netdevInfo(null, 'lo').mac, '00:00:00:00:00:00');
  });
});

test('TX filter: accepted, drops frames to addresses not listed, refuses malformed lists', async (t) => {
  await withNetns(async (ns) => {
    const name = ns.ifname();
    const fd = openQueue(ns, name);
    const hdrLen = 10;
    a.netdevSetUp(ns.path, name, true);
    ns.ip('addr', 'add', '10.99.0.1/24', 'dev', name);
    const peerMac = '02:00:00:00:00:02';
    const isArpReply = (f: Buffer) => f.readUInt16BE(12) === 0x0806 && f.readUInt16BE(20) === 2;
    const ask = () => {
      const req = Buffer.concat([Buffer.alloc(hdrLen), arpRequest(peerMac, [10, 99, 0, 2], [10, 99, 0, 1])]);
      fs.writeSync(fd, req);
    };

    // Only another unicast address (plus a multicast one) passes: the reply to peerMac is dropped.
    const other = Buffer.concat([macBytes('02:00:00:00:00:aa'), macBytes('33:33:00:00:00:01')]);
    a.tapSetTxFilter(fd, 0, other);
    ask();
    await t.throwsAsync(readFrameUntil(fd, hdrLen, isArpReply, 500), { message: /no matching frame/ });

    a.tapSetTxFilter(fd, 1 /* TUN_FLT_ALLMULTI */, macBytes(peerMac));
    ask();
    const { frame } = await readFrameUntil(fd, hdrLen, isArpReply, 3000);
    t.deepEqual(frame.subarray(0, 6), macBytes(peerMac));

    a.tapSetTxFilter(fd, 0, new Uint8Array(0)); // no addresses: filter off
    t.throws(() => a.tapSetTxFilter(fd, 0, new Uint8Array(7)), { code: 'EVHOST_BADARG', message: /'macs'/ });
    t.throws(() => a.tapSetTxFilter(fd, 0, [1, 2] as unknown as Uint8Array), { code: 'EVHOST_BADARG' });
  });
});

test('withNetns deletes its namespace when the callback throws', async (t) => {
  let path = '';
  await t.throwsAsync(
    withNetns((ns) => {
      path = ns.path;
      t.true(fs.existsSync(path));
      openQueue(ns, ns.ifname());
      throw new Error('boom');
    }),
    { message: 'boom' },
  );
  t.false(fs.existsSync(path));
});

test('a name longer than 15 bytes is EVHOST_BADARG and nothing is created', async (t) => {
  await withNetns(async (ns) => {
    const long = 'vt' + 'x'.repeat(14);
    const e = t.throws(() => a.tapOpen(long, ns.path, 0), { code: 'EVHOST_BADARG' });
    t.regex(e!.message, /'name'.*16 bytes.*15/);
    t.deepEqual(
      ns.ipJson<IpLink[]>('link', 'show').map((l) => l.ifname),
      ['lo'],
    );
    t.throws(() => a.tapOpen('vtq', ns.path, C.TUN_IFF_TUN), { code: 'EVHOST_BADARG', message: /extraFlags/ });
  });
});

test('namespace errors and successes leave the main thread in its own namespace', async (t) => {
  const before = a.currentNetns();
  t.regex(before, /^net:\[\d+\]$/);
  t.is(before, fs.readlinkSync('/proc/thread-self/ns/net'));

  const missing = '/run/netns/vt-no-such-namespace';
  const e = t.throws(() => a.tapOpen('vtmissing', missing, 0), { code: 'ENOENT' });
  t.true(e!.message.includes(missing), e!.message);
  t.is((e as unknown as { syscall: string }).syscall, 'open');
  t.is(a.currentNetns(), before);
  t.throws(() => a.netdevInfo(missing, 'lo'), { code: 'ENOENT' });
  t.is(a.currentNetns(), before);

  // A file that is not a network namespace: setns refuses it.
  t.throws(() => a.tapOpen('vtq', '/proc/self/ns/uts', 0), { code: 'EINVAL', message: /not a network namespace/ });
  t.is(a.currentNetns(), before);

  await withNetns(async (ns) => {
    t.not(netnsId(ns.path), before);
    // Fails after the namespace was entered (the kernel rejects the name).
    t.throws(() => a.tapOpen('vt/bad', ns.path, 0), { code: 'EINVAL' });
    t.is(a.currentNetns(), before);
    const name = ns.ifname();
    openQueue(ns, name);
    t.is(a.currentNetns(), before);
    a.netdevInfo(ns.path, name);
    t.throws(() => a.netdevSetMtu(ns.path, name, 1), { code: 'EINVAL' });
    t.is(a.currentNetns(), before);
  });
  t.is(a.currentNetns(), before);
});

test('a frame written to the fd reaches the namespace and the ARP reply comes back on the fd', async (t) => {
  await withNetns(async (ns) => {
    const name = ns.ifname();
    const fd = openQueue(ns, name);
    const hdrLen = C.HDR_SIZE_V1;
    a.tapSetVnetHdrSz(fd, hdrLen);
    a.netdevSetUp(ns.path, name, true);
    ns.ip('addr', 'add', '10.99.0.1/24', 'dev', name);
    const tapMac = a.netdevInfo(ns.path, name).mac;
    const peerMac = '02:00:00:00:00:02';

    const rx0 = link(ns, name, '-s').stats64!.rx.packets;
    const frame = Buffer.concat([Buffer.alloc(hdrLen), arpRequest(peerMac, [10, 99, 0, 2], [10, 99, 0, 1])]);
    t.is(fs.writeSync(fd, frame), frame.length);
    t.is(link(ns, name, '-s').stats64!.rx.packets, rx0 + 1, 'the interface counted the frame we wrote');

    // The namespace's stack answers "10.99.0.1 is at tapMac", unicast to the peer.
    const { hdr, frame: reply } = await readFrameUntil(
      fd,
      hdrLen,
      (f) => f.readUInt16BE(12) === 0x0806 && f.readUInt16BE(20) === 2,
      3000,
    );
    t.is(hdr.readUInt8(0), 0, 'no checksum/segmentation work on an ARP reply');
    t.deepEqual(reply.subarray(0, 6), macBytes(peerMac));
    t.deepEqual(reply.subarray(6, 12), macBytes(tapMac));
    t.deepEqual([...reply.subarray(28, 32)], [10, 99, 0, 1]);
    t.true(link(ns, name, '-s').stats64!.tx.packets >= 1);
  });
});

test('closing a closed fd reports EBADF; bad fds are refused', (t) => {
  t.throws(() => a.tapGetFeatures(-1), { code: 'EVHOST_BADARG', message: /'fd'/ });
  t.throws(() => a.tapGetFeatures(1.5), { code: 'EVHOST_BADARG', message: /'fd'/ });
  // Far above any fd this process holds, so certainly not open.
  t.throws(() => a.close(1_000_000), { code: 'EBADF' });
  const devnull = fs.openSync('/dev/null', 'r');
  try {
    t.throws(() => a.tapGetFeatures(devnull), { code: 'ENOTTY', message: /not a TAP queue/ });
  } finally {
    fs.closeSync(devnull);
  }
});
