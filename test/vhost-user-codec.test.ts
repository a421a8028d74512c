// The vhost-user codec and socket binding (native/vhost_user*.cc) over a real
// AF_UNIX stream socketpair: every payload kind decodes with its fds, messages
// arriving in pieces or with fds on later bytes still decode, malformed
// messages are refused with a reason and their fds closed (counted in
// /proc/self/fd), headers that cannot be trusted end the connection, and the
// TypeScript constants match the native ones.

import test from 'ava';
import * as fs from 'node:fs';

import { addon, NativeVuHeader, NativeVuMessage } from '../backend/native';
import { FLAG, HEADER_SIZE, MAX_FDS, MAX_MEM_REGIONS, REQ, VRING_NOFD } from '../backend/vhost-user/protocol';
import { VhostUserConnection } from '../backend/vhost-user/socket';
import { header, memTable, message, state, u64, vringAddr } from './helpers/vhost-user-frontend';

interface Received {
  messages: NativeVuMessage[];
  refused: { reason: string; header: NativeVuHeader }[];
  closed: string | undefined;
}

/** A back-end connection on one end of a socketpair; the other end is a raw front end. */
function pair(): { back: VhostUserConnection; front: VhostUserConnection; got: Received; next(): Promise<void>; cleanup(): void } {
  const [a, b] = addon().vhostUser.streamPair();
  const got: Received = { messages: [], refused: [], closed: undefined };
  let wake: (() => void) | undefined;
  const poke = (): void => {
    const w = wake;
    wake = undefined;
    w?.();
  };
  const back = new VhostUserConnection(a, 'back-end', {
    message: (m) => {
      got.messages.push(m);
      poke();
    },
    refused: (reason, h) => {
      got.refused.push({ reason, header: h });
      poke();
    },
    closed: (reason) => {
      got.closed = reason;
      poke();
    },
  });
  const front = new VhostUserConnection(b, 'front-end', { message: () => undefined, refused: () => undefined, closed: () => undefined });
  return {
    back,
    front,
    got,
    next: () =>
      new Promise<void>((resolve, reject) => {
        const t = setTimeout(() => reject(new Error('nothing arrived within 5 s')), 5000);
        wake = () => {
          clearTimeout(t);
          resolve();
        };
      }),
    cleanup: () => {
      for (const m of got.messages) for (const fd of m.fds) addon().close(fd);
      back.close();
      front.close();
    },
  };
}

function openFds(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

const ino = (fd: number): number => fs.fstatSync(fd).ino;

/** O_CLOEXEC as /proc/self/fdinfo shows it (the flags field is octal). */
function closeOnExec(fd: number): boolean {
  const m = fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8').match(/^flags:\s+([0-7]+)$/m);
  return m !== null && (parseInt(m[1], 8) & 0o2000000) !== 0;
}

test.serial('every payload kind decodes, with the fds that came with it', async (t) => {
  const p = pair();
  const mem = addon().vhostUser.memfd(1 << 20);
  const ev = addon().eventfd();
  try {
    p.front.sendRaw(message(REQ.GET_FEATURES));
    p.front.sendRaw(message(REQ.SET_FEATURES, u64(0x1_4000_8003n), FLAG.VERSION | FLAG.NEED_REPLY));
    p.front.sendRaw(message(REQ.SET_VRING_NUM, state(3, 256)));
    p.front.sendRaw(message(REQ.SET_VRING_ADDR, vringAddr(1, { desc: 0x7f0000001000n, used: 0x7f0000003000n, avail: 0x7f0000002000n, log: 0xffffffffffffffffn })));
    p.front.sendRaw(
      message(REQ.SET_MEM_TABLE, memTable([
        { guestAddr: 0n, size: 1n << 19n, userAddr: 0x7f0000000000n, mmapOffset: 0n },
        { guestAddr: 1n << 32n, size: 1n << 19n, userAddr: 0x7f1000000000n, mmapOffset: 1n << 19n },
      ])),
      [mem, mem],
    );
    p.front.sendRaw(message(REQ.SET_VRING_KICK, u64(5n)), [ev]);
    p.front.sendRaw(message(REQ.SET_VRING_CALL, u64(BigInt(VRING_NOFD) | 2n)));
    while (p.got.messages.length < 7) await p.next();
    const [gf, sf, num, addr, mt, kick, call] = p.got.messages;
    t.like(gf, { request: REQ.GET_FEATURES, name: 'GET_FEATURES', kind: 'none', needReply: false, size: 0 });
    t.like(sf, { request: REQ.SET_FEATURES, kind: 'u64', u64: 0x1_4000_8003n, needReply: true, flags: FLAG.VERSION | FLAG.NEED_REPLY });
    t.like(num, { kind: 'state', index: 3, num: 256 });
    t.like(addr, { kind: 'addr', index: 1, addrFlags: 0, desc: 0x7f0000001000n, used: 0x7f0000003000n, avail: 0x7f0000002000n, log: 0xffffffffffffffffn });
    t.is(mt.kind, 'memTable');
    if (mt.kind === 'memTable') {
      t.deepEqual(mt.regions, [
        { guestAddr: 0n, size: 1n << 19n, userAddr: 0x7f0000000000n, mmapOffset: 0n },
        { guestAddr: 1n << 32n, size: 1n << 19n, userAddr: 0x7f1000000000n, mmapOffset: 1n << 19n },
      ]);
    }
    t.is(mt.fds.length, 2);
    // New descriptors of the same open files: the memfd twice, close-on-exec.
    for (const fd of mt.fds) {
      t.not(fd, mem);
      t.is(ino(fd), ino(mem));
      t.true(closeOnExec(fd), `fd ${fd} has O_CLOEXEC (MSG_CMSG_CLOEXEC)`);
    }
    t.like(kick, { kind: 'u64', u64: 5n });
    t.is(kick.fds.length, 1);
    addon().kick(ev);
    t.is(addon().waitCall([kick.fds[0]], 1000), 1, 'the received kick fd is the eventfd that was sent');
    t.like(call, { kind: 'u64', u64: BigInt(VRING_NOFD) | 2n });
    t.deepEqual(call.fds, []);
    t.deepEqual(p.got.refused, []);
    t.is(p.got.closed, undefined);
  } finally {
    p.cleanup();
    addon().close(mem);
    addon().close(ev);
  }
});

test.serial('a message that arrives a byte at a time, or with its fds on a later byte, still decodes', async (t) => {
  const p = pair();
  const ev = addon().eventfd();
  try {
    const bytes = message(REQ.SET_VRING_ADDR, vringAddr(0, { desc: 0x1000n, used: 0x3000n, avail: 0x2000n }));
    for (let i = 0; i < bytes.length; i++) {
      p.front.sendRaw(bytes.subarray(i, i + 1));
      await new Promise((r) => setImmediate(r));
    }
    const kick = message(REQ.SET_VRING_KICK, u64(1n));
    p.front.sendRaw(kick.subarray(0, 14));
    p.front.sendRaw(kick.subarray(14), [ev]);
    while (p.got.messages.length < 2) await p.next();
    t.like(p.got.messages[0], { kind: 'addr', desc: 0x1000n, used: 0x3000n, avail: 0x2000n });
    t.like(p.got.messages[1], { kind: 'u64', u64: 1n });
    t.is(p.got.messages[1].fds.length, 1);
    t.deepEqual(p.got.refused, []);
  } finally {
    p.cleanup();
    addon().close(ev);
  }
});

test.serial('malformed messages are refused with a reason, their fds closed, and the stream goes on', async (t) => {
  const p = pair();
  const ev = addon().eventfd();
  const mem = addon().vhostUser.memfd(4096);
  const before = openFds();
  const cases: [string, Buffer, number[], RegExp][] = [
    ['short SET_FEATURES', message(REQ.SET_FEATURES, Buffer.alloc(4)), [], /SET_FEATURES: payload is 4 bytes, must be 8/],
    ['GET_FEATURES with a payload', message(REQ.GET_FEATURES, Buffer.alloc(8)), [], /GET_FEATURES: payload is 8 bytes, must be 0/],
    ['unknown request', message(77, Buffer.alloc(3)), [ev], /unknown request 77/],
    ['request 0', message(0), [], /unknown request 0/],
    ['kick without fd', message(REQ.SET_VRING_KICK, u64(0n)), [], /SET_VRING_KICK: 0 file descriptors, must be 1/],
    ['call with the no-fd bit and an fd', message(REQ.SET_VRING_CALL, u64(0x100n)), [ev], /SET_VRING_CALL: 1 file descriptors, must be 0/],
    ['err with high bits', message(REQ.SET_VRING_ERR, u64(0x200n)), [ev], /bits other than the index/],
    ['two fds on a kick', message(REQ.SET_VRING_KICK, u64(0n)), [ev, ev], /2 file descriptors, must be 1/],
    ['fd on SET_OWNER', message(REQ.SET_OWNER), [mem], /SET_OWNER: 1 file descriptors, must be 0/],
    ['mem table: 0 regions', message(REQ.SET_MEM_TABLE, memTable([])), [], /0 regions, must be 1 to 8/],
    ['mem table: count 2, 1 region', message(REQ.SET_MEM_TABLE, memTable([{ guestAddr: 0n, size: 4096n, userAddr: 0n, mmapOffset: 0n }], 2)), [mem], /2 regions take 72/],
    ['mem table: 9 regions', message(REQ.SET_MEM_TABLE, memTable(Array.from({ length: 9 }, () => ({ guestAddr: 0n, size: 4096n, userAddr: 0n, mmapOffset: 0n })))), [mem], /9 regions, must be 1 to 8/],
    ['mem table: fewer fds than regions', message(REQ.SET_MEM_TABLE, memTable([{ guestAddr: 0n, size: 4096n, userAddr: 0n, mmapOffset: 0n }, { guestAddr: 8192n, size: 4096n, userAddr: 8192n, mmapOffset: 0n }])), [mem], /1 file descriptors, must be 2/],
    ['mem table: 4 bytes', message(REQ.SET_MEM_TABLE, Buffer.alloc(4)), [], /shorter than the region count/],
    ['12 fds (control data truncated)', message(REQ.SET_VRING_CALL, u64(0n)), Array.from({ length: 12 }, () => ev), /control data truncated|more than 8 file descriptors/],
  ];
  try {
    for (const [, bytes, fds] of cases) p.front.sendRaw(bytes, fds);
    // A good message after all of them: the stream stayed in step.
    p.front.sendRaw(message(REQ.GET_QUEUE_NUM));
    while (p.got.messages.length < 1) await p.next();
    t.is(p.got.refused.length, cases.length);
    cases.forEach(([name, , , re], i) => t.regex(p.got.refused[i].reason, re, name));
    t.is(p.got.refused[0].header.request, REQ.SET_FEATURES);
    t.like(p.got.messages[0], { request: REQ.GET_QUEUE_NUM });
    t.is(p.got.closed, undefined);
    t.is(openFds(), before, 'every fd received with a refused message was closed');
  } finally {
    p.cleanup();
    addon().close(ev);
    addon().close(mem);
  }
});

test.serial('a header that cannot be trusted ends the connection, closing fds that came with it', async (t) => {
  const ev = addon().eventfd();
  try {
    const cases: [Buffer, RegExp][] = [
      [message(REQ.SET_OWNER, Buffer.alloc(0), 2), /protocol version 2/],
      [message(REQ.SET_OWNER, Buffer.alloc(0), 0), /protocol version 0/],
      [message(REQ.SET_OWNER, Buffer.alloc(0), FLAG.VERSION | FLAG.REPLY), /reply flag is set on a request/],
      [message(REQ.SET_OWNER, Buffer.alloc(0), FLAG.VERSION | 0x40), /unknown header flag bits 0x40/],
      [header(REQ.SET_MEM_TABLE, FLAG.VERSION, 4097), /payload size 4097 exceeds 4096/],
      [header(REQ.SET_MEM_TABLE, FLAG.VERSION, 0xffffffff), /payload size 4294967295/],
    ];
    for (const [bytes, re] of cases) {
      const before = openFds();
      const p = pair();
      p.front.sendRaw(bytes, [ev]);
      while (p.got.closed === undefined) await p.next();
      t.regex(p.got.closed, re);
      t.deepEqual(p.got.messages, []);
      t.is(p.back.fd, -1);
      p.cleanup();
      t.is(openFds(), before);
    }
  } finally {
    addon().close(ev);
  }
});

test.serial('the front end closing in the middle of a message ends the connection and closes what it sent', async (t) => {
  const ev = addon().eventfd();
  try {
    for (const cut of [5, 19]) {
      const before = openFds();
      const p = pair();
      p.front.sendRaw(message(REQ.SET_VRING_CALL, u64(0n)).subarray(0, cut), [ev]);
      p.front.close();
      while (p.got.closed === undefined) await p.next();
      t.regex(p.got.closed, /closed the connection in the middle of a message/);
      p.cleanup();
      t.is(openFds(), before);
    }
    const p = pair();
    p.front.close();
    while (p.got.closed === undefined) await p.next();
    t.is(p.got.closed, 'the peer closed the connection');
    p.cleanup();
  } finally {
    addon().close(ev);
  }
});

test('replies carry the version and reply flags and the payload', async (t) => {
  const [a, b] = addon().vhostUser.streamPair();
  const got: NativeVuMessage[] = [];
  let done!: () => void;
  const all = new Promise<void>((r) => (done = r));
  const back = new VhostUserConnection(a, 'back-end', { message: () => undefined, refused: () => undefined, closed: () => undefined });
  const front = new VhostUserConnection(b, 'front-end', {
    message: (m) => {
      got.push(m);
      if (got.length === 2) done();
    },
    refused: (reason) => t.fail(reason),
    closed: () => undefined,
  });
  try {
    back.replyU64(REQ.GET_FEATURES, 0x1234_5678_9abc_def0n);
    back.replyState(REQ.GET_VRING_BASE, 3, 0xffff);
    await all;
    t.like(got[0], { request: REQ.GET_FEATURES, flags: FLAG.VERSION | FLAG.REPLY, size: 8 });
    t.is(got[0].payload.readBigUInt64LE(0), 0x1234_5678_9abc_def0n);
    t.like(got[1], { request: REQ.GET_VRING_BASE, size: 8 });
    t.deepEqual([got[1].payload.readUInt32LE(0), got[1].payload.readUInt32LE(4)], [3, 0xffff]);
  } finally {
    back.close();
    front.close();
  }
});

test('TypeScript protocol constants equal the codec\'s', (t) => {
  const c = addon().vhostUser.constants;
  t.is(c.HEADER_SIZE, HEADER_SIZE);
  t.is(c.MAX_FDS, MAX_FDS);
  t.is(c.MAX_MEM_REGIONS, MAX_MEM_REGIONS);
  t.is(c.VERSION, FLAG.VERSION);
  t.is(c.FLAG_REPLY, FLAG.REPLY);
  t.is(c.FLAG_NEED_REPLY, FLAG.NEED_REPLY);
  t.is(c.VRING_NOFD, VRING_NOFD);
  t.deepEqual(c.REQUESTS, { ...REQ });
});

test('listen, connect and accept on a socket path; bad paths are typed errors', async (t) => {
  const { VhostUserListener, connectVhostUser } = await import('../backend/vhost-user/socket');
  const path = `/tmp/vt-vu-${process.pid}-${Date.now()}.sock`;
  const accepted: number[] = [];
  let gotOne!: () => void;
  const one = new Promise<void>((r) => (gotOne = r));
  const l = new VhostUserListener(path, (fd) => {
    accepted.push(fd);
    gotOne();
  }, (e) => t.fail(e.message));
  try {
    t.true(fs.statSync(path).isSocket());
    const fd = connectVhostUser(path);
    await one;
    t.is(accepted.length, 1);
    t.throws(() => new VhostUserListener(path, () => undefined, () => undefined), { code: 'ERR_VHOST_USER', message: /another process is listening/ });
    addon().close(fd);
  } finally {
    for (const fd of accepted) addon().close(fd);
    l.close();
  }
  t.false(fs.existsSync(path), 'close() removes the socket file');
  t.throws(() => connectVhostUser(path), { code: 'ERR_VHOST_USER', message: /connecting to/ });
  t.throws(() => connectVhostUser('x'.repeat(200)), { code: 'ERR_VHOST_INVALID_ARG' });
});
