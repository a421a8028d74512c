// Integration: QEMU 7.2's vhost-user front end against the session
// (backend/vhost-user/session.ts) with guest memory really mapped from QEMU's
// fds (native GuestMemory.replaceFds, checkRings, read) and no workers yet
// (the data-plane wiring is phase 2 of issue 10). Proves the protocol side
// with the real front end: QEMU accepts the features and protocol features
// offered, the Linux guest driver negotiates checksum and TSO offloads and MQ,
// both queue pairs start with their rings translated into the mapped memory,
// nothing is refused, GET_VRING_BASE at power-off stops them, and the
// session ends and unmaps when QEMU goes away.

import test from 'ava';

import { bits, featureNames, has } from '../backend';
import { addon, NativeGuestMemory } from '../backend/native';
import { PROTOCOL_F } from '../backend/vhost-user/protocol';
import { MemoryRegion, Refusal, RingLayout, RingStart, VhostUserBackend, VhostUserSession } from '../backend/vhost-user/session';
import { VhostUserListener } from '../backend/vhost-user/socket';
import { LinuxGuest } from '../host/linux-guest/qemu';
import { requireRoot } from '../host/netns';

const OFFERED = bits('VERSION_1', 'MRG_RXBUF', 'RING_EVENT_IDX', 'RING_INDIRECT_DESC', 'CSUM', 'GUEST_CSUM', 'HOST_TSO4', 'HOST_TSO6', 'GUEST_TSO4', 'GUEST_TSO6', 'MQ', 'GUEST_ANNOUNCE');

/** Maps QEMU's memory for real; records pair starts and stops instead of running workers. */
class MappingOnly implements VhostUserBackend {
  readonly queuePairs = 2;
  readonly features = OFFERED;
  mem: NativeGuestMemory | undefined;
  mapped: { guestAddr: number; size: number; userAddr: number }[] = [];
  programmed: bigint | undefined;
  starts: { pair: number; rx: RingStart; tx: RingStart }[] = [];
  stops: number[] = [];
  private pos = new Map<number, { rx: number; tx: number }>();

  setMemory(regions: MemoryRegion[], fds: number[]): void {
    const m = new (addon().GuestMemory)();
    m.replaceFds(regions.map((r, i) => ({ ...r, fd: fds[i] })));
    this.mem = m;
    this.mapped = m.regions();
  }

  clearMemory(): void {
    this.mem = undefined;
  }

  checkRings(ls: RingLayout[]): { rule: string; detail: string } | null {
    return this.mem!.checkRings(ls);
  }

  readUsedIdx(l: RingLayout): number {
    return this.mem!.read(l.used + 2, 2).readUInt16LE(0);
  }

  setFeatures(f: bigint): void {
    this.programmed = f;
  }

  startPair(pair: number, rx: RingStart, tx: RingStart): void {
    // Each ring's parts must read through the mapping (read throws where nothing is mapped;
    // the session would then refuse the request that started the pair, and the test fails).
    for (const r of [rx, tx]) for (const [a, n] of [[r.desc, 16 * r.size], [r.avail, 6 + 2 * r.size], [r.used, 6 + 8 * r.size]]) this.mem!.read(a, n);
    this.starts.push({ pair, rx, tx });
    this.pos.set(pair, { rx: rx.lastAvailIdx, tx: tx.lastAvailIdx });
  }

  stopPair(pair: number): { rx: number; tx: number } {
    this.stops.push(pair);
    return this.pos.get(pair)!;
  }
}

test.serial('QEMU 7.2 and a Linux guest negotiate with the vhost-user session: offloads, MQ, two pairs started in mapped memory, stopped at power-off', async (t) => {
  t.timeout(600_000);
  requireRoot();
  const sock = `/tmp/vt-vus-${process.pid}.sock`;
  const backend = new MappingOnly();
  const sessions: VhostUserSession[] = [];
  const refusals: Refusal[] = [];
  const logs: string[] = [];
  const ended: Promise<string>[] = [];
  const listener = new VhostUserListener(sock, (fd) => {
    const s = new VhostUserSession(fd, backend, { log: (l) => logs.push(l) });
    s.on('refused', (r: Refusal) => refusals.push(r));
    ended.push(new Promise((r) => s.once('end', r)));
    sessions.push(s);
  }, (e) => t.fail(e.message));
  let guest: LinuxGuest | undefined;
  try {
    guest = await LinuxGuest.boot({ netdev: { kind: 'vhost-user', socket: sock, queues: 2 }, cpus: 2 });
    t.log(`guest up in ${(guest.bootMs / 1000).toFixed(1)} s`);
    const f = await guest.features();
    t.true(has(f, 'CSUM') && has(f, 'GUEST_CSUM') && has(f, 'HOST_TSO4') && has(f, 'GUEST_TSO4') && has(f, 'MQ'), featureNames(f).join(','));
    t.is(sessions.length, 1, 'QEMU keeps one connection for both queue pairs');
    const snap = sessions[0].snapshot();
    t.is(snap.protocolFeatures, (1n << BigInt(PROTOCOL_F.MQ)) | (1n << BigInt(PROTOCOL_F.REPLY_ACK)));
    t.is(backend.programmed, snap.features & ~(1n << 30n));
    t.is(backend.programmed! & ~OFFERED, 0n);
    t.true(backend.mapped.length >= 1 && backend.mapped.reduce((n, r) => n + r.size, 0) === 512 << 20, JSON.stringify(backend.mapped));
    t.deepEqual([...new Set(backend.starts.map((s) => s.pair))].sort(), [0, 1], 'both queue pairs started');
    for (const s of backend.starts) {
      for (const r of [s.rx, s.tx]) {
        t.true(backend.mapped.some((m) => r.desc >= m.guestAddr && r.used + 6 + 8 * r.size <= m.guestAddr + m.size), `ring ${r.index} inside guest memory`);
        t.is(r.size, 256);
      }
    }
    void guest.run('poweroff -f').catch(() => undefined);
    t.is((await guest.exited).code, 0);
    const reason = await ended[0];
    t.regex(reason, /peer closed/);
    t.deepEqual([...new Set(backend.stops)].sort(), [0, 1], 'GET_VRING_BASE stopped both pairs');
    t.is(backend.mem, undefined, 'the session dropped the mappings');
    t.deepEqual(refusals, [], logs.join('\n'));
  } finally {
    await guest?.kill();
    for (const s of sessions) s.close();
    listener.close();
  }
});
