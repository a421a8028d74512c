// A vhost-user front end for tests: speaks the protocol well (the requests
// QEMU sends, with their payloads and fds) and, on purpose, badly — every
// malformed case a back end must refuse is listed in HOSTILE_CASES with what
// it breaks. Messages are built here byte by byte, so nothing of the back
// end's own codec is trusted to make them.

import { VhostUserConnection } from '../../backend/vhost-user/socket';
import { connectVhostUser } from '../../backend/vhost-user/socket';
import { FLAG, PROTOCOL_F, REQ, VRING_NOFD } from '../../backend/vhost-user/protocol';
import { addon } from '../../backend/native';

export interface Region {
  guestAddr: bigint;
  size: bigint;
  userAddr: bigint;
  mmapOffset: bigint;
}

export interface Reply {
  request: number;
  flags: number;
  payload: Buffer;
}

// --- encoders (host byte order = little-endian on the machines this runs on) -------------

export function header(request: number, flags: number, size: number): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt32LE(request >>> 0, 0);
  b.writeUInt32LE(flags >>> 0, 4);
  b.writeUInt32LE(size >>> 0, 8);
  return b;
}

export function message(request: number, payload: Buffer = Buffer.alloc(0), flags: number = FLAG.VERSION): Buffer {
  return Buffer.concat([header(request, flags, payload.length), payload]);
}

export function u64(v: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt.asUintN(64, v));
  return b;
}

export function state(index: number, num: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt32LE(index >>> 0, 0);
  b.writeUInt32LE(num >>> 0, 4);
  return b;
}

export function vringAddr(index: number, a: { desc: bigint; used: bigint; avail: bigint; flags?: number; log?: bigint }): Buffer {
  const b = Buffer.alloc(40);
  b.writeUInt32LE(index >>> 0, 0);
  b.writeUInt32LE((a.flags ?? 0) >>> 0, 4);
  b.writeBigUInt64LE(a.desc, 8);
  b.writeBigUInt64LE(a.used, 16);
  b.writeBigUInt64LE(a.avail, 24);
  b.writeBigUInt64LE(a.log ?? 0n, 32);
  return b;
}

/** A memory table; `count` overrides the region count field (to lie about it). */
export function memTable(regions: Region[], count = regions.length): Buffer {
  const b = Buffer.alloc(8 + 32 * regions.length);
  b.writeUInt32LE(count >>> 0, 0);
  regions.forEach((r, i) => {
    const o = 8 + 32 * i;
    b.writeBigUInt64LE(r.guestAddr, o);
    b.writeBigUInt64LE(r.size, o + 8);
    b.writeBigUInt64LE(r.userAddr, o + 16);
    b.writeBigUInt64LE(r.mmapOffset, o + 24);
  });
  return b;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** One front-end connection. Replies queue up; `closed` resolves when the back end hangs up. */
export class FrontEnd {
  readonly conn: VhostUserConnection;
  readonly closed: Promise<string>;
  private replies: Reply[] = [];
  private waiters: ((r: Reply) => void)[] = [];
  private closedReason: string | undefined;
  /** Protocol features agreed, for deciding whether need_reply may be set. */
  protocolFeatures = 0n;

  constructor(fd: number) {
    let onClosed!: (reason: string) => void;
    this.closed = new Promise((r) => (onClosed = r));
    this.conn = new VhostUserConnection(fd, 'front-end', {
      message: (m) => this.onReply({ request: m.request, flags: m.flags, payload: m.payload }),
      refused: (reason) => {
        throw new Error(`test front end: the back end sent a malformed reply: ${reason}`);
      },
      closed: (reason) => {
        this.closedReason = reason;
        onClosed(reason);
      },
    });
  }

  static connect(path: string): FrontEnd {
    return new FrontEnd(connectVhostUser(path));
  }

  get isClosed(): boolean {
    return this.closedReason !== undefined;
  }

  /** Sends bytes as they are, with fds attached to the first byte. */
  raw(bytes: Buffer, fds: number[] = []): void {
    this.conn.sendRaw(bytes, fds);
  }

  send(request: number, payload?: Buffer, opts: { fds?: number[]; needReply?: boolean } = {}): void {
    this.raw(message(request, payload, FLAG.VERSION | (opts.needReply ? FLAG.NEED_REPLY : 0)), opts.fds ?? []);
  }

  /** The next reply (or rejects when the back end closes first / nothing comes in time). */
  nextReply(timeoutMs = 5000): Promise<Reply> {
    const r = this.replies.shift();
    if (r) return Promise.resolve(r);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== got);
        reject(new Error(`no reply within ${timeoutMs} ms${this.closedReason ? ` (closed: ${this.closedReason})` : ''}`));
      }, timeoutMs);
      const got = (rep: Reply): void => {
        clearTimeout(timer);
        resolve(rep);
      };
      this.waiters.push(got);
      void this.closed.then((reason) => {
        if (!this.waiters.includes(got)) return;
        this.waiters = this.waiters.filter((w) => w !== got);
        clearTimeout(timer);
        reject(new Error(`the back end closed the connection: ${reason}`));
      });
    });
  }

  /** Whether a reply is waiting or arrives within `ms`; for "no reply was sent" checks. */
  async replyWithin(ms: number): Promise<boolean> {
    if (this.replies.length) return true;
    await sleep(ms);
    return this.replies.length > 0;
  }

  /**
   * What the back end did with the last message: 'ok' (REPLY_ACK 0), 'nack' (non-zero), or
   * 'closed'. Only for messages sent with need_reply.
   */
  async outcome(timeoutMs = 5000): Promise<'ok' | 'nack' | 'closed'> {
    try {
      const r = await this.nextReply(timeoutMs);
      return r.payload.readBigUInt64LE(0) === 0n ? 'ok' : 'nack';
    } catch (e) {
      if (this.isClosed) return 'closed';
      throw e;
    }
  }

  async getU64(request: number): Promise<bigint> {
    this.send(request);
    const r = await this.nextReply();
    if (r.request !== request || r.payload.length !== 8) throw new Error(`bad reply to ${request}: request ${r.request}, ${r.payload.length} bytes`);
    return r.payload.readBigUInt64LE(0);
  }

  /** QEMU's opening: features, protocol features (those offered ∩ `want`), queue count, owner. */
  async handshake(want: bigint = (1n << BigInt(PROTOCOL_F.MQ)) | (1n << BigInt(PROTOCOL_F.REPLY_ACK))): Promise<{ features: bigint; protocol: bigint; queues: bigint }> {
    const features = await this.getU64(REQ.GET_FEATURES);
    const offered = await this.getU64(REQ.GET_PROTOCOL_FEATURES);
    this.protocolFeatures = offered & want;
    this.send(REQ.SET_PROTOCOL_FEATURES, u64(this.protocolFeatures));
    const queues = await this.getU64(REQ.GET_QUEUE_NUM);
    this.send(REQ.SET_OWNER);
    return { features, protocol: this.protocolFeatures, queues };
  }

  /** Sends with need_reply when REPLY_ACK is agreed and returns the outcome; otherwise sends and returns 'sent'. */
  async ack(request: number, payload?: Buffer, fds?: number[]): Promise<'ok' | 'nack' | 'closed' | 'sent'> {
    const replyAck = ((this.protocolFeatures >> BigInt(PROTOCOL_F.REPLY_ACK)) & 1n) === 1n;
    this.send(request, payload, { fds, needReply: replyAck });
    return replyAck ? this.outcome() : 'sent';
  }

  async getVringBase(index: number): Promise<{ index: number; num: number }> {
    this.send(REQ.GET_VRING_BASE, state(index, 0));
    const r = await this.nextReply();
    return { index: r.payload.readUInt32LE(0), num: r.payload.readUInt32LE(4) };
  }

  close(): void {
    this.conn.close();
  }

  private onReply(r: Reply): void {
    const w = this.waiters.shift();
    if (w) w(r);
    else this.replies.push(r);
  }
}

/** Guest memory a test front end shares: a memfd, its fd, and the region it is announced as. */
export interface TestMemory {
  fd: number;
  region: Region;
  close(): void;
}

/** A memfd of `size` bytes announced at guest address `guestAddr` and front-end address `userAddr`. */
export function testMemory(size: number, guestAddr = 0n, userAddr = 0x7f0000000000n): TestMemory {
  const fd = addon().vhostUser.memfd(size);
  return {
    fd,
    region: { guestAddr, size: BigInt(size), userAddr, mmapOffset: 0n },
    close: () => addon().close(fd),
  };
}

/** Ring addresses (front-end virtual) of a 256-entry split ring at `userBase` + `offset`. */
export function ringAt(userBase: bigint, offset: bigint): { desc: bigint; avail: bigint; used: bigint } {
  // 256 entries: desc 4096 bytes, avail 518, used 2054 (4-aligned).
  return { desc: userBase + offset, avail: userBase + offset + 4096n, used: userBase + offset + 8192n };
}

/**
 * A hostile case: what to send after the handshake (`reply` says whether REPLY_ACK is agreed),
 * what rule it breaks, and what a back end must do: refuse with a REPLY_ACK error (when the
 * front end asked for one and REPLY_ACK is agreed) or close the connection.
 */
export interface HostileCase {
  name: string;
  /** Protocol features to agree in the handshake (default MQ | REPLY_ACK). */
  protocol?: bigint;
  /** Sends the hostile message(s); `mem` is 1 MiB of test memory, `fds` makes throw-away eventfds. */
  send(fe: FrontEnd, env: { mem: TestMemory; eventfd: () => number }): void | Promise<void>;
  /** 'nack': a REPLY_ACK error and the connection stays; 'close': the back end hangs up. */
  expect: 'nack' | 'close';
}

const NR = FLAG.VERSION | FLAG.NEED_REPLY;

/** Every malformed input of issue 10's point 3, and a few more. */
export const HOSTILE_CASES: HostileCase[] = [
  {
    name: 'SET_FEATURES with a 4-byte payload',
    send: (fe) => fe.raw(message(REQ.SET_FEATURES, Buffer.alloc(4), NR)),
    expect: 'nack',
  },
  {
    name: 'GET_FEATURES with a payload',
    send: (fe) => fe.raw(message(REQ.GET_FEATURES, u64(0n))),
    expect: 'close',
  },
  {
    name: 'SET_VRING_ADDR of 39 bytes',
    send: (fe) => fe.raw(message(REQ.SET_VRING_ADDR, Buffer.alloc(39), NR)),
    expect: 'nack',
  },
  {
    name: 'unknown request 99',
    send: (fe) => fe.raw(message(99, Buffer.alloc(16), NR)),
    expect: 'nack',
  },
  {
    name: 'unknown request 0xffffffff without need_reply',
    send: (fe) => fe.raw(message(0xffffffff, Buffer.alloc(0))),
    expect: 'close',
  },
  {
    name: 'protocol version 2',
    send: (fe) => fe.raw(message(REQ.SET_OWNER, Buffer.alloc(0), 2)),
    expect: 'close',
  },
  {
    name: 'reply flag on a request',
    send: (fe) => fe.raw(message(REQ.SET_VRING_NUM, state(0, 256), FLAG.VERSION | FLAG.REPLY | FLAG.NEED_REPLY)),
    expect: 'close',
  },
  {
    name: 'unknown header flag bits',
    send: (fe) => fe.raw(message(REQ.SET_VRING_NUM, state(0, 256), NR | 0x100)),
    expect: 'close',
  },
  {
    name: 'payload size 1 GiB in the header',
    send: (fe) => fe.raw(header(REQ.SET_MEM_TABLE, NR, 1 << 30)),
    expect: 'close',
  },
  {
    name: 'SET_VRING_KICK without its fd',
    send: (fe) => fe.raw(message(REQ.SET_VRING_KICK, u64(0n), NR)),
    expect: 'nack',
  },
  {
    name: 'SET_VRING_CALL with two fds',
    send: (fe, { eventfd }) => fe.raw(message(REQ.SET_VRING_CALL, u64(0n), NR), [eventfd(), eventfd()]),
    expect: 'nack',
  },
  {
    name: 'SET_VRING_CALL with the no-fd bit and an fd',
    send: (fe, { eventfd }) => fe.raw(message(REQ.SET_VRING_CALL, u64(BigInt(VRING_NOFD)), NR), [eventfd()]),
    expect: 'nack',
  },
  {
    name: 'SET_VRING_ERR u64 with bits above the no-fd bit',
    send: (fe, { eventfd }) => fe.raw(message(REQ.SET_VRING_ERR, u64(0x10000n), NR), [eventfd()]),
    expect: 'nack',
  },
  {
    name: 'SET_OWNER with an fd',
    send: (fe, { eventfd }) => fe.raw(message(REQ.SET_OWNER, Buffer.alloc(0), NR), [eventfd()]),
    expect: 'nack',
  },
  {
    name: 'more fds than any message may carry (12)',
    send: (fe, { eventfd }) => fe.raw(message(REQ.SET_VRING_CALL, u64(0n), NR), Array.from({ length: 12 }, eventfd)),
    expect: 'nack',
  },
  {
    name: 'SET_MEM_TABLE with more fds than regions',
    send: (fe, { mem, eventfd }) => fe.raw(message(REQ.SET_MEM_TABLE, memTable([mem.region]), NR), [mem.fd, eventfd()]),
    expect: 'nack',
  },
  {
    name: 'SET_MEM_TABLE whose region count says 3 with 1 region sent',
    send: (fe, { mem }) => fe.raw(message(REQ.SET_MEM_TABLE, memTable([mem.region], 3), NR), [mem.fd]),
    expect: 'nack',
  },
  {
    name: 'SET_MEM_TABLE with 9 regions',
    send: (fe, { mem }) => fe.raw(message(REQ.SET_MEM_TABLE, memTable(Array.from({ length: 9 }, (_, i) => ({ ...mem.region, guestAddr: BigInt(i) << 32n })), 9), NR), [mem.fd]),
    expect: 'nack',
  },
  {
    name: 'SET_MEM_TABLE with 0 regions',
    send: (fe) => fe.raw(message(REQ.SET_MEM_TABLE, memTable([]), NR)),
    expect: 'nack',
  },
  {
    name: 'SET_MEM_TABLE with overlapping guest ranges',
    send: (fe, { mem }) =>
      fe.raw(
        message(REQ.SET_MEM_TABLE, memTable([mem.region, { ...mem.region, guestAddr: mem.region.guestAddr + 4096n, userAddr: mem.region.userAddr + (1n << 32n) }]), NR),
        [mem.fd, mem.fd],
      ),
    expect: 'nack',
  },
  {
    name: 'SET_MEM_TABLE with overlapping front-end address ranges',
    send: (fe, { mem }) =>
      fe.raw(message(REQ.SET_MEM_TABLE, memTable([mem.region, { ...mem.region, guestAddr: 1n << 32n, userAddr: mem.region.userAddr + 4096n }]), NR), [mem.fd, mem.fd]),
    expect: 'nack',
  },
  {
    name: 'SET_MEM_TABLE whose offset + size lies beyond the fd',
    send: (fe, { mem }) => fe.raw(message(REQ.SET_MEM_TABLE, memTable([{ ...mem.region, mmapOffset: 4096n }]), NR), [mem.fd]),
    expect: 'nack',
  },
  {
    name: 'SET_MEM_TABLE whose size is larger than the fd',
    send: (fe, { mem }) => fe.raw(message(REQ.SET_MEM_TABLE, memTable([{ ...mem.region, size: mem.region.size * 4n }]), NR), [mem.fd]),
    expect: 'nack',
  },
  {
    name: 'SET_MEM_TABLE with a region that wraps the address space',
    send: (fe, { mem }) => fe.raw(message(REQ.SET_MEM_TABLE, memTable([{ ...mem.region, guestAddr: 0xfffffffffffff000n }]), NR), [mem.fd]),
    expect: 'nack',
  },
  {
    name: 'SET_MEM_TABLE with a size-0 region',
    send: (fe, { mem }) => fe.raw(message(REQ.SET_MEM_TABLE, memTable([{ ...mem.region, size: 0n }]), NR), [mem.fd]),
    expect: 'nack',
  },
  {
    name: 'a ring outside every region',
    send: async (fe, { mem }) => {
      await expectOk(fe, REQ.SET_MEM_TABLE, memTable([mem.region]), [mem.fd]);
      await expectOk(fe, REQ.SET_VRING_NUM, state(0, 256));
      fe.send(REQ.SET_VRING_ADDR, vringAddr(0, ringAt(mem.region.userAddr, 1n << 30n)), { needReply: true });
    },
    expect: 'nack',
  },
  {
    name: 'a ring straddling the end of its region',
    send: async (fe, { mem }) => {
      await expectOk(fe, REQ.SET_MEM_TABLE, memTable([mem.region]), [mem.fd]);
      await expectOk(fe, REQ.SET_VRING_NUM, state(0, 256));
      fe.send(REQ.SET_VRING_ADDR, vringAddr(0, ringAt(mem.region.userAddr, mem.region.size - 4096n)), { needReply: true });
    },
    expect: 'nack',
  },
  {
    name: 'a ring address given as a guest physical address (not a front-end virtual one)',
    send: async (fe, { mem }) => {
      await expectOk(fe, REQ.SET_MEM_TABLE, memTable([mem.region]), [mem.fd]);
      await expectOk(fe, REQ.SET_VRING_NUM, state(0, 256));
      fe.send(REQ.SET_VRING_ADDR, vringAddr(0, ringAt(mem.region.guestAddr, 0n)), { needReply: true });
    },
    expect: 'nack',
  },
  {
    name: 'SET_VRING_ADDR with the log flag (logging not offered)',
    send: (fe, { mem }) => fe.send(REQ.SET_VRING_ADDR, vringAddr(0, { ...ringAt(mem.region.userAddr, 0n), flags: 1 }), { needReply: true }),
    expect: 'nack',
  },
  {
    name: 'SET_VRING_NUM for a ring index out of range',
    send: (fe) => fe.send(REQ.SET_VRING_NUM, state(200, 256), { needReply: true }),
    expect: 'nack',
  },
  {
    name: 'SET_VRING_KICK for a ring index out of range',
    send: (fe, { eventfd }) => fe.send(REQ.SET_VRING_KICK, u64(0xffn), { needReply: true, fds: [eventfd()] }),
    expect: 'nack',
  },
  {
    name: 'GET_VRING_BASE for a ring index out of range',
    send: (fe) => fe.send(REQ.GET_VRING_BASE, state(4096, 0)),
    expect: 'close',
  },
  {
    name: 'SET_VRING_NUM of 1000 (not a power of two)',
    send: (fe) => fe.send(REQ.SET_VRING_NUM, state(0, 1000), { needReply: true }),
    expect: 'nack',
  },
  {
    name: 'SET_VRING_NUM of 65536',
    send: (fe) => fe.send(REQ.SET_VRING_NUM, state(0, 65536), { needReply: true }),
    expect: 'nack',
  },
  {
    name: 'SET_VRING_BASE beyond 16 bits',
    send: (fe) => fe.send(REQ.SET_VRING_BASE, state(0, 0x10000), { needReply: true }),
    expect: 'nack',
  },
  {
    name: 'SET_VRING_ENABLE with 2',
    send: (fe) => fe.send(REQ.SET_VRING_ENABLE, state(0, 2), { needReply: true }),
    expect: 'nack',
  },
  {
    name: 'SET_VRING_KICK before SET_MEM_TABLE',
    send: (fe, { eventfd }) => fe.send(REQ.SET_VRING_KICK, u64(0n), { needReply: true, fds: [eventfd()] }),
    expect: 'nack',
  },
  {
    name: 'SET_VRING_NUM while the ring is started',
    send: async (fe, { mem, eventfd }) => {
      await expectOk(fe, REQ.SET_MEM_TABLE, memTable([mem.region]), [mem.fd]);
      await expectOk(fe, REQ.SET_VRING_NUM, state(0, 256));
      await expectOk(fe, REQ.SET_VRING_ADDR, vringAddr(0, ringAt(mem.region.userAddr, 0n)));
      await expectOk(fe, REQ.SET_VRING_KICK, u64(0n), [eventfd()]);
      fe.send(REQ.SET_VRING_NUM, state(0, 128), { needReply: true });
    },
    expect: 'nack',
  },
  {
    name: 'a ring placed over another started ring',
    send: async (fe, { mem, eventfd }) => {
      await expectOk(fe, REQ.SET_MEM_TABLE, memTable([mem.region]), [mem.fd]);
      await expectOk(fe, REQ.SET_VRING_NUM, state(0, 256));
      await expectOk(fe, REQ.SET_VRING_ADDR, vringAddr(0, ringAt(mem.region.userAddr, 0n)));
      await expectOk(fe, REQ.SET_VRING_KICK, u64(0n), [eventfd()]);
      await expectOk(fe, REQ.SET_VRING_NUM, state(1, 256));
      fe.send(REQ.SET_VRING_ADDR, vringAddr(1, ringAt(mem.region.userAddr, 4096n)), { needReply: true });
    },
    expect: 'nack',
  },
  {
    name: 'SET_FEATURES with a bit not offered (LOG_ALL)',
    send: (fe) => fe.send(REQ.SET_FEATURES, u64(1n << 26n), { needReply: true }),
    expect: 'nack',
  },
  {
    name: 'SET_FEATURES with GUEST_TSO4 but not GUEST_CSUM',
    send: (fe) => fe.send(REQ.SET_FEATURES, u64((1n << 7n) | (1n << 32n)), { needReply: true }),
    expect: 'nack',
  },
  {
    name: 'SET_PROTOCOL_FEATURES with a bit not offered (LOG_SHMFD)',
    send: (fe) => fe.send(REQ.SET_PROTOCOL_FEATURES, u64((1n << 3n) | (1n << 1n)), { needReply: true }),
    expect: 'nack',
  },
  {
    name: 'SET_OWNER twice',
    send: (fe) => fe.send(REQ.SET_OWNER, undefined, { needReply: true }),
    expect: 'nack',
  },
  {
    name: 'need_reply without REPLY_ACK agreed',
    protocol: 1n << BigInt(PROTOCOL_F.MQ),
    send: (fe) => fe.raw(message(REQ.SET_VRING_NUM, state(0, 256), NR)),
    expect: 'close',
  },
  {
    name: 'a malformed message without need_reply',
    send: (fe) => fe.raw(message(REQ.SET_VRING_NUM, Buffer.alloc(3))),
    expect: 'close',
  },
  {
    name: 'a request the back end does not implement (SET_LOG_BASE with an fd)',
    send: (fe, { mem }) => fe.raw(message(REQ.SET_LOG_BASE, Buffer.alloc(16), NR), [mem.fd]),
    expect: 'nack',
  },
  {
    name: 'GET_STATUS (STATUS not offered; its reply cannot be faked)',
    send: (fe) => fe.send(REQ.GET_STATUS),
    expect: 'close',
  },
  {
    name: 'a truncated message, then the front end closes',
    send: (fe) => {
      fe.raw(message(REQ.SET_VRING_ADDR, vringAddr(0, { desc: 0n, used: 0n, avail: 0n })).subarray(0, 30));
      fe.close();
    },
    expect: 'close',
  },
  {
    name: 'half a header, then the front end closes',
    send: (fe) => {
      fe.raw(header(REQ.SET_OWNER, FLAG.VERSION, 0).subarray(0, 5));
      fe.close();
    },
    expect: 'close',
  },
  {
    name: 'abrupt close in the middle of the handshake',
    send: (fe) => fe.close(),
    expect: 'close',
  },
];

/** Sends with need_reply and throws unless the back end acknowledged with 0. */
export async function expectOk(fe: FrontEnd, request: number, payload?: Buffer, fds?: number[]): Promise<void> {
  fe.send(request, payload, { needReply: true, fds });
  const o = await fe.outcome();
  if (o !== 'ok') throw new Error(`request ${request} was not acknowledged: ${o}`);
}
