// The vhost-user session (backend/vhost-user/session.ts) over a real socket
// with the test front end, its data plane replaced by a recording fake (the
// engines on guest memory regions arrive with the lead's core work): the
// negotiation QEMU does, the message sequence QEMU 7.2 sends bringing two
// queue pairs up and down (/work/shared/VHOST-USER.md), ring-address
// translation, GET_VRING_BASE stopping a ring, fds replaced while running,
// wrong-state refusals, every hostile case (REPLY_ACK error or close, then a
// good front end works), and no fd left open when a session ends.

import test, { ExecutionContext } from 'ava';
import * as fs from 'node:fs';

import { bits } from '../backend';
import { addon } from '../backend/native';
import { F_LOG_ALL, F_PROTOCOL_FEATURES, PROTOCOL_F, REQ, VRING_NOFD } from '../backend/vhost-user/protocol';
import { MemoryRegion, OFFERED_PROTOCOL_FEATURES, Refusal, RingLayout, RingStart, VhostUserBackend, VhostUserSession } from '../backend/vhost-user/session';
import { expectOk, FrontEnd, HOSTILE_CASES, LOG_PROTOCOL, logBase, memTable, ringAt, state, testMemory, u64, vringAddr } from './helpers/vhost-user-frontend';

const DEVICE_FEATURES = bits('VERSION_1', 'MRG_RXBUF', 'RING_EVENT_IDX', 'RING_INDIRECT_DESC', 'CSUM', 'GUEST_CSUM', 'HOST_TSO4', 'GUEST_TSO4', 'MQ', 'GUEST_ANNOUNCE');
const BIT30 = 1n << BigInt(F_PROTOCOL_FEATURES);

/**
 * Records what the session asks of the data plane; checks fds against fstat like the real mapping
 * will. Guest memory and the dirty log are the real native ones (their checks are under test).
 */
class FakeBackend implements VhostUserBackend {
  readonly features = DEVICE_FEATURES;
  calls: string[] = [];
  guestMemory = new (addon().GuestMemory)();
  logging = false;
  memory: MemoryRegion[] | undefined;
  programmed: bigint | undefined;
  pairs = new Map<number, { rx: RingStart; tx: RingStart; onBroken: (ring: number, rule: string, detail: string) => void }>();
  /** What stopPair reports: the position the "worker" reached. */
  advance = 5;
  /** Frames the device sent itself (SEND_RARP's announce). */
  frames: Buffer[] = [];

  constructor(readonly queuePairs = 2) {}

  sendFrame(f: Buffer): void {
    this.frames.push(Buffer.from(f));
  }

  setMemory(regions: MemoryRegion[], fds: number[]): void {
    regions.forEach((r, i) => {
      const size = fs.fstatSync(fds[i]).size;
      if (r.mmapOffset + r.size > size) throw new Error(`region ${i}: offset ${r.mmapOffset} + size ${r.size} is beyond the fd's ${size} bytes`);
    });
    this.guestMemory.replaceFds(regions.map((r, i) => ({ ...r, fd: fds[i] })));
    this.memory = regions;
    this.calls.push(`setMemory(${regions.length})`);
  }

  clearMemory(): void {
    this.guestMemory.clearDirtyLog();
    this.guestMemory.clear();
    this.memory = undefined;
    this.calls.push('clearMemory');
  }

  setDirtyLog(fd: number, size: number, offset: number): void {
    this.guestMemory.setDirtyLog(fd, size, offset);
    this.calls.push(`setDirtyLog(${size}, ${offset})`);
  }

  dirtyLog(on: boolean): void {
    this.guestMemory.dirtyLog(on);
    this.logging = on;
    this.calls.push(`dirtyLog(${on})`);
  }

  checkRings(ls: RingLayout[]): { rule: string; detail: string } | null {
    for (const l of ls) if (l.desc % 16 || l.avail % 2 || l.used % 4) return { rule: 'ring-misaligned', detail: JSON.stringify(l) };
    // Overlap between any two parts of these rings (16 KiB apart in these tests when well placed).
    const parts = ls.flatMap((l) => [[l.desc, 16 * l.size], [l.avail, 6 + 2 * l.size], [l.used, 6 + 8 * l.size]]);
    for (let i = 0; i < parts.length; i++)
      for (let j = i + 1; j < parts.length; j++)
        if (parts[i][0] < parts[j][0] + parts[j][1] && parts[j][0] < parts[i][0] + parts[i][1]) return { rule: 'ring-overlap', detail: `${parts[i][0]} and ${parts[j][0]}` };
    return null;
  }

  readUsedIdx(): number {
    return 0;
  }

  setFeatures(f: bigint): void {
    this.programmed = f;
    this.calls.push(`setFeatures(0x${f.toString(16)})`);
  }

  startPair(p: number, rx: RingStart, tx: RingStart, onBroken: (ring: number, rule: string, detail: string) => void): void {
    if (this.pairs.has(p)) throw new Error(`pair ${p} started twice`);
    this.pairs.set(p, { rx, tx, onBroken });
    this.calls.push(`start(${p})`);
  }

  stopPair(p: number): { rx: number; tx: number } {
    const s = this.pairs.get(p);
    if (!s) throw new Error(`pair ${p} stopped while not running`);
    this.pairs.delete(p);
    this.calls.push(`stop(${p})`);
    return { rx: (s.rx.lastAvailIdx + this.advance) & 0xffff, tx: (s.tx.lastAvailIdx + this.advance) & 0xffff };
  }
}

interface Harness {
  fe: FrontEnd;
  session: VhostUserSession;
  backend: FakeBackend;
  refusals: Refusal[];
  ended: Promise<string>;
  logs: string[];
  eventfd(): number;
  cleanup(): void;
}

/** A session on one end of a socketpair and a test front end on the other. */
function harness(queuePairs = 2): Harness {
  const [a, b] = addon().vhostUser.streamPair();
  const backend = new FakeBackend(queuePairs);
  const logs: string[] = [];
  const session = new VhostUserSession(a, backend, { log: (l) => logs.push(l) });
  const refusals: Refusal[] = [];
  session.on('refused', (r: Refusal) => refusals.push(r));
  const ended = new Promise<string>((r) => session.once('end', r));
  const fe = new FrontEnd(b);
  const mine: number[] = [];
  return {
    fe,
    session,
    backend,
    refusals,
    ended,
    logs,
    eventfd: () => {
      const fd = addon().eventfd();
      mine.push(fd);
      return fd;
    },
    cleanup: () => {
      session.close('test over');
      fe.close();
      for (const fd of mine) addon().close(fd);
    },
  };
}

const openFds = (): number => fs.readdirSync('/proc/self/fd').length;

const MEM = 1 << 20;
const UVA = 0x7f0000000000n;

/** What QEMU 7.2 sends for one queue pair once the guest driver is up (VHOST-USER.md step 4). */
async function startPair(h: Harness, mem: ReturnType<typeof testMemory>, p: number, kick: number[], call: number[]): Promise<void> {
  for (const ring of [2 * p, 2 * p + 1]) {
    await expectOk(h.fe, REQ.SET_VRING_NUM, state(ring, 256));
    await expectOk(h.fe, REQ.SET_VRING_BASE, state(ring, 0));
    await expectOk(h.fe, REQ.SET_VRING_ADDR, vringAddr(ring, ringAt(UVA, BigInt(ring) * 16384n)));
    await expectOk(h.fe, REQ.SET_VRING_KICK, u64(BigInt(ring)), [kick[ring]]);
    await expectOk(h.fe, REQ.SET_VRING_CALL, u64(BigInt(ring)), [call[ring]]);
  }
}

test.serial('negotiation: features with F_PROTOCOL_FEATURES and LOG_ALL, MQ, LOG_SHMFD, REPLY_ACK, RARP, RESET_DEVICE and STATUS only, the virtqueue count; SET_FEATURES programs the TAP', async (t) => {
  const h = harness(2);
  try {
    const hs = await h.fe.handshake((1n << 64n) - 1n);
    t.is(hs.features, DEVICE_FEATURES | BIT30 | (1n << BigInt(F_LOG_ALL)));
    t.is(hs.protocol, OFFERED_PROTOCOL_FEATURES);
    t.is(
      OFFERED_PROTOCOL_FEATURES,
      ['MQ', 'LOG_SHMFD', 'REPLY_ACK', 'RARP', 'RESET_DEVICE', 'STATUS'].reduce((m, n) => m | (1n << BigInt(PROTOCOL_F[n as keyof typeof PROTOCOL_F])), 0n),
    );
    t.is(hs.queues, 4n, 'GET_QUEUE_NUM counts virtqueues: 2 pairs');
    const want = bits('VERSION_1', 'MRG_RXBUF', 'CSUM', 'GUEST_CSUM', 'GUEST_TSO4', 'MQ') | BIT30;
    t.is(await h.fe.ack(REQ.SET_FEATURES, u64(want)), 'ok');
    t.is(h.backend.programmed, want & ~BIT30, 'the data plane gets the device features without bit 30');
    const snap = h.session.snapshot();
    t.true(snap.owner);
    t.is(snap.features, want);
    t.is(snap.protocolFeatures, OFFERED_PROTOCOL_FEATURES);
    t.deepEqual(h.refusals, []);
  } finally {
    h.cleanup();
  }
});

test.serial('QEMU 7.2\'s sequence brings both queue pairs up with translated ring addresses, then GET_VRING_BASE stops them', async (t) => {
  const before = openFds();
  const h = harness(2);
  const mem = testMemory(MEM, 0n, UVA);
  try {
    const kick = [0, 1, 2, 3].map(() => h.eventfd());
    const call = [0, 1, 2, 3].map(() => h.eventfd());
    // Probe: pair 0 and pair 1 handshakes on the same socket, CALL/ERR for every ring.
    await h.fe.handshake();
    await h.fe.getU64(REQ.GET_FEATURES);
    for (const ring of [0, 1]) {
      await expectOk(h.fe, REQ.SET_VRING_CALL, u64(BigInt(ring)), [h.eventfd()]);
      await expectOk(h.fe, REQ.SET_VRING_ERR, u64(BigInt(ring)), [h.eventfd()]);
    }
    await h.fe.getU64(REQ.GET_FEATURES);
    await h.fe.getU64(REQ.GET_PROTOCOL_FEATURES);
    await expectOk(h.fe, REQ.SET_PROTOCOL_FEATURES, u64(h.fe.protocolFeatures));
    for (const ring of [2, 3]) {
      await expectOk(h.fe, REQ.SET_VRING_CALL, u64(BigInt(ring)), [h.eventfd()]);
      await expectOk(h.fe, REQ.SET_VRING_ERR, u64(BigInt(ring)), [h.eventfd()]);
    }
    for (const [ring, on] of [[0, 1], [1, 1], [2, 0], [3, 0]]) await expectOk(h.fe, REQ.SET_VRING_ENABLE, state(ring, on));
    // DRIVER_OK.
    const features = bits('VERSION_1', 'MRG_RXBUF', 'CSUM', 'GUEST_CSUM', 'MQ') | BIT30;
    await expectOk(h.fe, REQ.SET_FEATURES, u64(features));
    await expectOk(h.fe, REQ.SET_MEM_TABLE, memTable([mem.region]), [mem.fd]);
    await startPair(h, mem, 0, kick, call);
    t.deepEqual([...h.backend.pairs.keys()], [0], 'pair 0 runs; pair 1 is not set up yet');
    await expectOk(h.fe, REQ.SET_FEATURES, u64(features));
    await startPair(h, mem, 1, kick, call);
    t.deepEqual([...h.backend.pairs.keys()], [0], 'pair 1 is set up but its rings are disabled');
    // The guest turns on its second pair through the control queue (QEMU's); the back end sees ENABLE.
    await expectOk(h.fe, REQ.SET_VRING_ENABLE, state(2, 1));
    t.deepEqual([...h.backend.pairs.keys()], [0]);
    await expectOk(h.fe, REQ.SET_VRING_ENABLE, state(3, 1));
    t.deepEqual([...h.backend.pairs.keys()].sort(), [0, 1]);

    const p0 = h.backend.pairs.get(0)!;
    t.deepEqual({ index: p0.rx.index, size: p0.rx.size, desc: p0.rx.desc, avail: p0.rx.avail, used: p0.rx.used }, { index: 0, size: 256, desc: 0, avail: 4096, used: 8192 });
    t.deepEqual({ index: p0.tx.index, desc: p0.tx.desc }, { index: 1, desc: 16384 }, 'front-end virtual addresses became guest physical ones');
    const p1 = h.backend.pairs.get(1)!;
    t.is(p1.rx.desc, 2 * 16384);
    // The kick fd the worker waits on is the front end's eventfd.
    addon().kick(kick[3]);
    t.is(addon().waitCall([p1.tx.kickFd], 1000), 1);
    addon().kick(p0.rx.callFd);
    t.is(addon().waitCall([call[0]], 1000), 1, 'the worker\'s call fd reaches the front end');

    // Shutdown: GET_VRING_BASE for every ring.
    const bases = [];
    for (const ring of [0, 1, 2, 3]) bases.push(await h.fe.getVringBase(ring));
    // Pair 0 ran twice (SET_VRING_CALL after SET_VRING_KICK restarts it with the new call fd), pair 1 once.
    t.deepEqual(bases, [10, 10, 5, 5].map((num, index) => ({ index, num })), 'each ring answers where its worker stopped');
    t.is(h.backend.pairs.size, 0);
    const snap = h.session.snapshot();
    t.true(snap.rings.every((r) => !r.started && !r.hasKick), 'stopped rings dropped their kick fds and wait for new ones');
    t.deepEqual(h.refusals, []);
    t.deepEqual(h.backend.calls.filter((c) => c.startsWith('start') || c.startsWith('stop')), ['start(0)', 'stop(0)', 'start(0)', 'start(1)', 'stop(0)', 'stop(1)']);

    // The guest driver comes back (reboot): the same five per ring, resuming where they stopped.
    h.backend.advance = 0;
    for (const ring of [0, 1]) {
      await expectOk(h.fe, REQ.SET_VRING_BASE, state(ring, 10));
      await expectOk(h.fe, REQ.SET_VRING_KICK, u64(BigInt(ring)), [kick[ring]]);
    }
    t.is(h.backend.pairs.get(0)!.rx.lastAvailIdx, 10);

    h.fe.close();
    t.regex(await h.ended, /peer closed/);
    t.is(h.backend.pairs.size, 0, 'the end of the session stopped the workers');
    t.is(h.backend.memory, undefined, 'and dropped the mappings');
  } finally {
    h.cleanup();
    mem.close();
  }
  t.is(openFds(), before, 'every fd the session received was closed');
});

test.serial('live migration, as QEMU 7.2 starts and ends it: SET_LOG_BASE (answered), LOG_ALL and the LOG flag while the rings run, no restart; GET_VRING_BASE stops at the position', async (t) => {
  const before = openFds();
  const h = harness(1);
  const mem = testMemory(MEM, 0n, UVA);
  const log = testMemory(4096);
  try {
    await h.fe.handshake(LOG_PROTOCOL);
    t.is(h.fe.protocolFeatures, LOG_PROTOCOL, 'LOG_SHMFD is offered');
    const features = bits('VERSION_1', 'MRG_RXBUF', 'CSUM', 'GUEST_CSUM') | BIT30;
    await expectOk(h.fe, REQ.SET_FEATURES, u64(features));
    await expectOk(h.fe, REQ.SET_MEM_TABLE, memTable([mem.region]), [mem.fd]);
    for (const ring of [0, 1]) await expectOk(h.fe, REQ.SET_VRING_ENABLE, state(ring, 1));
    await startPair(h, mem, 0, [h.eventfd(), h.eventfd()], [h.eventfd(), h.eventfd()]);
    t.deepEqual([...h.backend.pairs.keys()], [0]);
    const calls = h.backend.calls.length;

    // Migration starts: the log (QEMU sends no need_reply but waits for SET_LOG_BASE's own reply).
    h.fe.send(REQ.SET_LOG_BASE, logBase(32n, 0n), { fds: [log.fd] });
    const r = await h.fe.nextReply();
    t.is(r.request, REQ.SET_LOG_BASE);
    t.is(r.payload.readBigUInt64LE(0), 0n, 'u64 0: the log is mapped');
    t.false(h.session.snapshot().logging, 'not marking before LOG_ALL');
    // SET_LOG_FD (an eventfd to signal log updates with): taken and closed, never signalled.
    t.is(await h.fe.ack(REQ.SET_LOG_FD, undefined, [h.eventfd()]), 'ok');
    t.is(await h.fe.ack(REQ.SET_LOG_FD), 'nack', 'SET_LOG_FD without its fd');
    t.regex(h.refusals.pop()!.reason, /SET_LOG_FD.*0 file descriptors/);
    const logAll = 1n << BigInt(F_LOG_ALL);
    await expectOk(h.fe, REQ.SET_FEATURES, u64(features | logAll));
    t.true(h.session.snapshot().logging);
    t.true(h.backend.logging, 'the data plane marks the log');
    // QEMU turns on used-ring logging per ring with the same addresses; the used ring's guest address.
    for (const ring of [0, 1]) {
      const a = ringAt(UVA, BigInt(ring) * 16384n);
      await expectOk(h.fe, REQ.SET_VRING_ADDR, vringAddr(ring, { ...a, flags: 1, log: BigInt(ring) * 16384n + 8192n }));
    }
    // A started ring may not move.
    t.is(await h.fe.ack(REQ.SET_VRING_ADDR, vringAddr(0, { ...ringAt(UVA, 65536n), flags: 1, log: 65536n + 8192n })), 'nack');
    t.regex(h.refusals.pop()!.reason, /while it is started moves the ring/);
    t.deepEqual(h.backend.calls.slice(calls).filter((c) => /start|stop/.test(c)), [], 'the pair ran on through all of it');
    // A features change beyond LOG_ALL while running is still refused.
    t.is(await h.fe.ack(REQ.SET_FEATURES, u64(features | logAll | bits('GUEST_TSO4'))), 'nack');
    h.refusals.pop();

    // The source stops: GET_VRING_BASE answers where the worker stopped.
    // (The fake worker ran 5 before SET_VRING_CALL restarted it during setup, then 7.)
    h.backend.advance = 7;
    t.deepEqual(await h.fe.getVringBase(0), { index: 0, num: 12 });
    t.deepEqual(await h.fe.getVringBase(1), { index: 1, num: 12 });
    // A migration that failed: logging goes off again, the mapping stays until the session ends.
    await expectOk(h.fe, REQ.SET_FEATURES, u64(features));
    t.false(h.session.snapshot().logging);
    t.false(h.backend.logging);
    t.deepEqual(h.refusals, []);
    t.true(h.session.isOpen);
  } finally {
    h.cleanup();
    mem.close();
    log.close();
  }
  t.is(openFds(), before, 'every fd the session received was closed');
});

test.serial('SET_LOG_BASE without LOG_SHMFD and without need_reply: logged and ignored, the session goes on', async (t) => {
  const h = harness(1);
  const mem = testMemory(MEM, 0n, UVA);
  try {
    await h.fe.handshake();
    h.fe.send(REQ.SET_LOG_BASE, logBase(32n, 0n), { fds: [mem.fd] });
    t.is(await h.fe.getU64(REQ.GET_QUEUE_NUM), 2n, 'no reply to SET_LOG_BASE; the next request is answered');
    t.is(h.refusals.length, 1);
    t.is(h.refusals[0].action, 'ignore');
    t.regex(h.refusals[0].reason, /LOG_SHMFD/);
    t.true(h.logs.some((l) => /refused SET_LOG_BASE/.test(l)));
    t.true(h.session.isOpen);
  } finally {
    h.cleanup();
    mem.close();
  }
});

test.serial('a new call fd or memory table while a pair runs restarts it at its position with the new values', async (t) => {
  const h = harness(1);
  const mem = testMemory(MEM, 0n, UVA);
  const mem2 = testMemory(MEM);
  try {
    await h.fe.handshake();
    await expectOk(h.fe, REQ.SET_FEATURES, u64(bits('VERSION_1') | BIT30));
    await expectOk(h.fe, REQ.SET_MEM_TABLE, memTable([mem.region]), [mem.fd]);
    const kick = [h.eventfd(), h.eventfd()];
    const call = [h.eventfd(), h.eventfd()];
    for (const r of [0, 1]) await expectOk(h.fe, REQ.SET_VRING_ENABLE, state(r, 1));
    await startPair(h, mem, 0, kick, call);
    t.true(h.backend.pairs.has(0));
    const newCall = h.eventfd();
    const was = h.backend.pairs.get(0)!.tx.lastAvailIdx;
    await expectOk(h.fe, REQ.SET_VRING_CALL, u64(1n), [newCall]);
    const after = h.backend.pairs.get(0)!;
    t.is(after.tx.lastAvailIdx, was + h.backend.advance, 'resumed where it stopped');
    addon().kick(after.tx.callFd);
    t.is(addon().waitCall([newCall], 1000), 1, 'the restarted worker signals the new call fd');
    // The same front-end addresses now map to guest address 1 GiB.
    await expectOk(h.fe, REQ.SET_MEM_TABLE, memTable([{ ...mem2.region, guestAddr: 1n << 30n, userAddr: UVA }]), [mem2.fd]);
    t.is(h.backend.pairs.get(0)!.rx.desc, 1 << 30);
    t.is(h.backend.pairs.get(0)!.tx.desc, (1 << 30) + 16384);
    // A table that would leave a started ring outside is refused, and the old one stays.
    t.is(await h.fe.ack(REQ.SET_MEM_TABLE, memTable([{ ...mem2.region, userAddr: UVA + (1n << 32n) }]), [mem2.fd]), 'nack');
    t.regex(h.refusals.at(-1)!.reason, /ring 0 would lie outside the new memory table/);
    t.is(h.backend.memory![0].guestAddr, 1 << 30);
    t.deepEqual(h.backend.calls.filter((c) => /start|stop|setMemory/.test(c)), ['setMemory(1)', 'start(0)', 'stop(0)', 'start(0)', 'stop(0)', 'start(0)', 'setMemory(1)', 'stop(0)', 'start(0)']);
  } finally {
    h.cleanup();
    mem.close();
    mem2.close();
  }
});

test.serial('SEND_RARP (RARP negotiated) announces the guest MAC: one RARP frame from it to broadcast; refused without RARP, for a multicast MAC, or by a back end that cannot send frames', async (t) => {
  const mac = Buffer.from([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
  const payload = Buffer.alloc(8);
  mac.copy(payload);
  const h = harness(1);
  try {
    const hs = await h.fe.handshake((1n << BigInt(PROTOCOL_F.REPLY_ACK)) | (1n << BigInt(PROTOCOL_F.RARP)));
    t.is(hs.protocol & (1n << BigInt(PROTOCOL_F.RARP)), 1n << BigInt(PROTOCOL_F.RARP));
    // As QEMU sends it after a migration: no need_reply. GET_FEATURES as a barrier.
    h.fe.send(REQ.SEND_RARP, payload);
    await h.fe.getU64(REQ.GET_FEATURES);
    t.deepEqual(h.refusals, []);
    t.is(h.backend.frames.length, 1);
    const f = h.backend.frames[0];
    t.is(f.length, 60, 'padded to the Ethernet minimum');
    t.deepEqual(f.subarray(0, 6), Buffer.alloc(6, 0xff), 'to broadcast');
    t.deepEqual(f.subarray(6, 12), mac, 'from the guest MAC');
    t.is(f.readUInt16BE(12), 0x8035, 'EtherType RARP');
    t.is(f.readUInt16BE(20), 3, 'opcode: request reverse');
    t.deepEqual(f.subarray(22, 28), mac, 'sender hardware address');
    t.deepEqual(f.subarray(32, 38), mac, 'target hardware address');
    t.true(h.logs.some((l) => /announced 52:54:00:12:34:56/.test(l)), h.logs.join('\n'));
    const mc = Buffer.alloc(8);
    mc[0] = 0x01;
    t.is(await h.fe.ack(REQ.SEND_RARP, mc), 'nack');
    t.regex(h.refusals.at(-1)!.reason, /multicast/);
    t.is(h.backend.frames.length, 1);
    t.true(h.session.isOpen);
  } finally {
    h.cleanup();
  }
  const h2 = harness(1);
  try {
    await h2.fe.handshake(1n << BigInt(PROTOCOL_F.REPLY_ACK));
    t.is(await h2.fe.ack(REQ.SEND_RARP, payload), 'nack');
    t.regex(h2.refusals.at(-1)!.reason, /RARP was not negotiated/);
    t.is(h2.backend.frames.length, 0);
  } finally {
    h2.cleanup();
  }
  // A data plane without sendFrame: RARP is not offered at all.
  const [a, b] = addon().vhostUser.streamPair();
  const bare = new FakeBackend(1) as Partial<FakeBackend>;
  bare.sendFrame = undefined;
  const s = new VhostUserSession(a, bare as VhostUserBackend);
  const fe = new FrontEnd(b);
  try {
    t.is((await fe.getU64(REQ.GET_PROTOCOL_FEATURES)) & (1n << BigInt(PROTOCOL_F.RARP)), 0n);
  } finally {
    s.close('test over');
    fe.close();
  }
});

test.serial('STATUS: SET_STATUS keeps the status byte, GET_STATUS answers it; RESET_DEVICE stops the rings and forgets their setup and the features, the owner and memory stay; both refused unless negotiated', async (t) => {
  const h = harness(1);
  const mem = testMemory(MEM, 0n, UVA);
  try {
    await h.fe.handshake((1n << BigInt(PROTOCOL_F.REPLY_ACK)) | (1n << BigInt(PROTOCOL_F.STATUS)) | (1n << BigInt(PROTOCOL_F.RESET_DEVICE)));
    t.is(await h.fe.getU64(REQ.GET_STATUS), 0n);
    await expectOk(h.fe, REQ.SET_FEATURES, u64(bits('VERSION_1', 'CSUM') | BIT30));
    await expectOk(h.fe, REQ.SET_MEM_TABLE, memTable([mem.region]), [mem.fd]);
    for (const r of [0, 1]) await expectOk(h.fe, REQ.SET_VRING_ENABLE, state(r, 1));
    await startPair(h, mem, 0, [h.eventfd(), h.eventfd()], [h.eventfd(), h.eventfd()]);
    t.true(h.backend.pairs.has(0));
    await expectOk(h.fe, REQ.SET_STATUS, u64(0x0fn));
    t.is(await h.fe.getU64(REQ.GET_STATUS), 0x0fn);
    t.is(await h.fe.ack(REQ.SET_STATUS, u64(0x100n)), 'nack', 'not a byte');
    t.is(await h.fe.getU64(REQ.GET_STATUS), 0x0fn);
    await expectOk(h.fe, REQ.RESET_DEVICE);
    t.false(h.backend.pairs.has(0), 'the pair stopped');
    const snap = h.session.snapshot();
    t.true(snap.owner);
    t.truthy(snap.regions, 'the memory table stays');
    t.is(snap.features, 0n);
    t.true(snap.rings.every((r) => !r.started && !r.enabled && r.num === undefined && !r.hasKick && !r.hasCall), JSON.stringify(snap.rings));
    t.is(await h.fe.getU64(REQ.GET_STATUS), 0n);
    // Set up again after the reset, as a front end would.
    await expectOk(h.fe, REQ.SET_FEATURES, u64(bits('VERSION_1', 'CSUM') | BIT30));
    for (const r of [0, 1]) await expectOk(h.fe, REQ.SET_VRING_ENABLE, state(r, 1));
    await startPair(h, mem, 0, [h.eventfd(), h.eventfd()], [h.eventfd(), h.eventfd()]);
    t.true(h.backend.pairs.has(0), 'the pair runs again');
    t.true(h.session.isOpen);
  } finally {
    h.cleanup();
    mem.close();
  }
  const h2 = harness(1);
  try {
    await h2.fe.handshake(1n << BigInt(PROTOCOL_F.REPLY_ACK));
    t.is(await h2.fe.ack(REQ.SET_STATUS, u64(1n)), 'nack');
    t.regex(h2.refusals.at(-1)!.reason, /STATUS was not negotiated/);
    t.is(await h2.fe.ack(REQ.RESET_DEVICE), 'nack');
    t.regex(h2.refusals.at(-1)!.reason, /RESET_DEVICE was not negotiated/);
  } finally {
    h2.cleanup();
  }
});

test.serial('wrong-state requests are refused: before SET_OWNER, ring changes while started, features changes while running', async (t) => {
  const h = harness(1);
  const mem = testMemory(MEM, 0n, UVA);
  try {
    await h.fe.getU64(REQ.GET_FEATURES);
    await h.fe.getU64(REQ.GET_PROTOCOL_FEATURES);
    h.fe.protocolFeatures = OFFERED_PROTOCOL_FEATURES;
    h.fe.send(REQ.SET_PROTOCOL_FEATURES, u64(OFFERED_PROTOCOL_FEATURES));
    t.is(await h.fe.ack(REQ.SET_MEM_TABLE, memTable([mem.region]), [mem.fd]), 'nack');
    t.regex(h.refusals.at(-1)!.reason, /has not sent SET_OWNER/);
    t.is(await h.fe.ack(REQ.SET_OWNER), 'ok');
    t.is(await h.fe.ack(REQ.SET_OWNER), 'nack');
    t.regex(h.refusals.at(-1)!.reason, /SET_OWNER twice/);
    await expectOk(h.fe, REQ.SET_FEATURES, u64(bits('VERSION_1', 'CSUM') | BIT30));
    await expectOk(h.fe, REQ.SET_MEM_TABLE, memTable([mem.region]), [mem.fd]);
    for (const r of [0, 1]) await expectOk(h.fe, REQ.SET_VRING_ENABLE, state(r, 1));
    await startPair(h, mem, 0, [h.eventfd(), h.eventfd()], [h.eventfd(), h.eventfd()]);
    for (const [req, payload, re] of [
      [REQ.SET_VRING_NUM, state(0, 128), /SET_VRING_NUM for ring 0 while it is started/],
      [REQ.SET_VRING_BASE, state(1, 0), /SET_VRING_BASE for ring 1 while it is started/],
      [REQ.SET_VRING_ADDR, vringAddr(0, ringAt(UVA, 65536n)), /SET_VRING_ADDR for ring 0 while it is started/],
      [REQ.SET_FEATURES, u64(bits('VERSION_1') | BIT30), /differ .* while rings run/],
      [REQ.SET_PROTOCOL_FEATURES, u64(1n << BigInt(PROTOCOL_F.REPLY_ACK)), /protocol features change while rings run/],
    ] as const) {
      t.is(await h.fe.ack(req, payload), 'nack');
      t.regex(h.refusals.at(-1)!.reason, re);
    }
    t.is(await h.fe.ack(REQ.SET_FEATURES, u64(bits('VERSION_1', 'CSUM') | BIT30)), 'ok', 'the same features again (QEMU sends them per pair) are fine');
    t.true(h.backend.pairs.has(0), 'refusals left the running pair alone');
    t.true(h.session.isOpen);
  } finally {
    h.cleanup();
    mem.close();
  }
});

test.serial('without F_PROTOCOL_FEATURES rings are enabled from the start; no call fd gets a private eventfd', async (t) => {
  const h = harness(1);
  const mem = testMemory(MEM, 0n, UVA);
  try {
    await h.fe.getU64(REQ.GET_FEATURES);
    h.fe.send(REQ.SET_OWNER);
    h.fe.send(REQ.SET_FEATURES, u64(bits('VERSION_1')));
    h.fe.send(REQ.SET_MEM_TABLE, memTable([mem.region]), { fds: [mem.fd] });
    for (const ring of [0, 1]) {
      h.fe.send(REQ.SET_VRING_NUM, state(ring, 256));
      h.fe.send(REQ.SET_VRING_ADDR, vringAddr(ring, ringAt(UVA, BigInt(ring) * 16384n)));
      h.fe.send(REQ.SET_VRING_CALL, u64(BigInt(ring) | BigInt(VRING_NOFD)));
      h.fe.send(REQ.SET_VRING_KICK, u64(BigInt(ring)), { fds: [h.eventfd()] });
    }
    // GET_FEATURES as a barrier: everything before it was handled when its reply comes.
    await h.fe.getU64(REQ.GET_FEATURES);
    t.deepEqual(h.refusals, []);
    const p = h.backend.pairs.get(0);
    t.truthy(p, 'the pair runs without any SET_VRING_ENABLE');
    t.true(p!.rx.callFd >= 0 && p!.tx.callFd >= 0);
    t.is(h.backend.programmed, bits('VERSION_1'));
  } finally {
    h.cleanup();
    mem.close();
  }
});

test.serial('a ring the guest breaks signals the front end\'s error fd', async (t) => {
  const h = harness(1);
  const mem = testMemory(MEM, 0n, UVA);
  try {
    await h.fe.handshake();
    await expectOk(h.fe, REQ.SET_MEM_TABLE, memTable([mem.region]), [mem.fd]);
    const err = h.eventfd();
    await expectOk(h.fe, REQ.SET_VRING_ERR, u64(1n), [err]);
    for (const r of [0, 1]) await expectOk(h.fe, REQ.SET_VRING_ENABLE, state(r, 1));
    await startPair(h, mem, 0, [h.eventfd(), h.eventfd()], [h.eventfd(), h.eventfd()]);
    const broken = new Promise((r) => h.session.once('ring-broken', r));
    h.backend.pairs.get(0)!.onBroken(1, 'desc-out-of-bounds', 'descriptor 3 at 0xdead0000');
    t.deepEqual(await broken, { ring: 1, rule: 'desc-out-of-bounds', detail: 'descriptor 3 at 0xdead0000' });
    t.is(addon().waitCall([err], 1000), 1);
    t.true(h.logs.some((l) => /ring 1 stopped: the guest broke rule 'desc-out-of-bounds'/.test(l)));
  } finally {
    h.cleanup();
    mem.close();
  }
});

async function hostile(t: ExecutionContext, c: (typeof HOSTILE_CASES)[number]): Promise<void> {
  const before = openFds();
  const h = harness(2);
  const mem = testMemory(MEM, 0n, UVA);
  try {
    await h.fe.handshake(c.protocol);
    await c.send(h.fe, { mem, eventfd: () => h.eventfd() });
    if (c.expect === 'nack') {
      t.is(await h.fe.outcome(), 'nack', 'a REPLY_ACK error');
      t.is(h.refusals.length, 1, JSON.stringify(h.refusals));
      t.is(h.refusals[0].action, 'nack');
      t.true(h.session.isOpen);
      // The connection is still good.
      t.is(await h.fe.getU64(REQ.GET_QUEUE_NUM), 4n);
    } else {
      const reason = await h.ended;
      t.false(h.session.isOpen);
      if (!/abrupt|closes$/.test(c.name)) {
        t.true(h.refusals.length === 1 || /closed|header|version|flag|payload size/.test(reason), `refusals ${JSON.stringify(h.refusals)}, end: ${reason}`);
      }
      // The back end's hang-up reaches the front end (unless the front end hung up first).
      if (h.fe.conn.open) t.regex(await h.fe.closed, /closed|reset/);
    }
    t.log(h.refusals.map((r) => `${r.request}: ${r.reason} → ${r.action}`).join('\n') || (await Promise.race([h.ended, Promise.resolve('(still open)')])));
    t.false(h.logs.some((l) => /internal error/.test(l)), h.logs.join('\n'));
  } finally {
    h.cleanup();
    mem.close();
  }
  await new Promise((r) => setImmediate(r));
  t.is(openFds(), before, 'no fd left open');
}

for (const c of HOSTILE_CASES) {
  test.serial(`hostile front end: ${c.name} → ${c.expect === 'nack' ? 'REPLY_ACK error' : 'connection closed'}`, (t) => hostile(t, c));
}

test.serial('after a hostile front end, the next good one is served', async (t) => {
  const bad = harness(1);
  bad.fe.raw(Buffer.from('this is not vhost-user at all, just bytes'));
  t.regex(await bad.ended, /version|flag/);
  bad.cleanup();
  const good = harness(1);
  try {
    const hs = await good.fe.handshake();
    t.is(hs.queues, 2n);
    t.deepEqual(good.refusals, []);
  } finally {
    good.cleanup();
  }
});
