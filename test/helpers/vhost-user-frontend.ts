// A vhost-user front end for tests: speaks the protocol well (the requests
// QEMU sends, with their payloads and fds) and, on purpose, badly — every
// malformed case a back end must refuse is listed in HOSTILE_CASES with what
// it breaks. Messages are built here byte by byte, so nothing of the back
// end's own codec is trusted to make them. MemfdGuest is a good front end
// that also drives the rings, through pwrite/pread on its memfd.

import * as fs from 'node:fs';

import { addon } from '../../backend/native';
import { FLAG, PROTOCOL_F, REQ, VRING_NOFD } from '../../backend/vhost-user/protocol';
import { connectVhostUser, VhostUserConnection } from '../../backend/vhost-user/socket';

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

/**
 * A memfd of `size` bytes announced at guest address `guestAddr` and front-end address
 * `userAddr`; `sealed` seals it against shrinking and growing, as QEMU's memory-backend-memfd does.
 */
export function testMemory(size: number, guestAddr = 0n, userAddr = 0x7f0000000000n, sealed = false): TestMemory {
  const fd = addon().vhostUser.memfd(size, sealed);
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

/** SET_LOG_BASE's payload: u64 mmap_size, u64 mmap_offset. */
export function logBase(size: bigint, offset: bigint): Buffer {
  return Buffer.concat([u64(size), u64(offset)]);
}

/** Protocol features a migrating QEMU agrees: MQ, LOG_SHMFD, REPLY_ACK. */
export const LOG_PROTOCOL = (1n << BigInt(PROTOCOL_F.MQ)) | (1n << BigInt(PROTOCOL_F.LOG_SHMFD)) | (1n << BigInt(PROTOCOL_F.REPLY_ACK));

function LOG_SHMFD_CASES(): HostileCase[] {
  // 1 MiB of guest memory needs 256 pages: a 32-byte log.
  const withTable = async (fe: FrontEnd, mem: TestMemory): Promise<void> => {
    await expectOk(fe, REQ.SET_MEM_TABLE, memTable([mem.region]), [mem.fd]);
  };
  return [
    {
      name: 'SET_LOG_BASE without its fd',
      protocol: LOG_PROTOCOL,
      send: (fe) => fe.send(REQ.SET_LOG_BASE, logBase(32n, 0n)),
      expect: 'nack',
    },
    {
      name: 'SET_LOG_BASE with a log too small for the memory table',
      protocol: LOG_PROTOCOL,
      send: async (fe, { mem }) => {
        await withTable(fe, mem);
        const log = testMemory(4096);
        try {
          fe.send(REQ.SET_LOG_BASE, logBase(31n, 0n), { fds: [log.fd] });
        } finally {
          log.close();
        }
      },
      expect: 'nack',
    },
    {
      name: 'SET_LOG_BASE with mmap_offset + mmap_size beyond its fd',
      protocol: LOG_PROTOCOL,
      send: async (fe, { mem }) => {
        await withTable(fe, mem);
        const log = testMemory(4096);
        try {
          fe.send(REQ.SET_LOG_BASE, logBase(64n, 4064n), { fds: [log.fd] });
        } finally {
          log.close();
        }
      },
      expect: 'nack',
    },
    {
      name: 'SET_LOG_BASE with mmap_size 0',
      protocol: LOG_PROTOCOL,
      send: (fe, { mem }) => fe.send(REQ.SET_LOG_BASE, logBase(0n, 0n), { fds: [mem.fd] }),
      expect: 'nack',
    },
    {
      name: 'SET_LOG_BASE with an offset that wraps',
      protocol: LOG_PROTOCOL,
      send: (fe, { mem }) => fe.send(REQ.SET_LOG_BASE, logBase(32n, (1n << 64n) - 16n), { fds: [mem.fd] }),
      expect: 'nack',
    },
    {
      name: 'SET_LOG_BASE with an eventfd for the log',
      protocol: LOG_PROTOCOL,
      send: (fe, { eventfd }) => fe.send(REQ.SET_LOG_BASE, logBase(32n, 0n), { fds: [eventfd()] }),
      expect: 'nack',
    },
  ];
}

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
    name: 'SET_VRING_ADDR with an undefined flag (bit 1)',
    send: (fe, { mem }) => fe.send(REQ.SET_VRING_ADDR, vringAddr(0, { ...ringAt(mem.region.userAddr, 0n), flags: 2 }), { needReply: true }),
    expect: 'nack',
  },
  {
    name: 'SET_VRING_ADDR with the log flag and a log_guest_addr that is not the used ring',
    send: async (fe, { mem }) => {
      await expectOk(fe, REQ.SET_MEM_TABLE, memTable([mem.region]), [mem.fd]);
      await expectOk(fe, REQ.SET_VRING_NUM, state(0, 256));
      // The used ring is at guest address 8192 (ringAt); 4096 is the avail ring.
      fe.send(REQ.SET_VRING_ADDR, vringAddr(0, { ...ringAt(mem.region.userAddr, 0n), flags: 1, log: 4096n }), { needReply: true });
    },
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
    name: 'SET_FEATURES with a bit not offered (ACCESS_PLATFORM)',
    send: (fe) => fe.send(REQ.SET_FEATURES, u64(1n << 33n), { needReply: true }),
    expect: 'nack',
  },
  {
    name: 'SET_FEATURES with GUEST_TSO4 but not GUEST_CSUM',
    send: (fe) => fe.send(REQ.SET_FEATURES, u64((1n << 7n) | (1n << 32n)), { needReply: true }),
    expect: 'nack',
  },
  {
    name: 'SET_PROTOCOL_FEATURES with a bit not offered (PAGEFAULT)',
    send: (fe) => fe.send(REQ.SET_PROTOCOL_FEATURES, u64((1n << 3n) | (1n << 8n)), { needReply: true }),
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
    name: 'SET_LOG_BASE without LOG_SHMFD agreed',
    send: (fe, { mem }) => fe.raw(message(REQ.SET_LOG_BASE, logBase(1n << 12n, 0n), NR), [mem.fd]),
    expect: 'nack',
  },
  // With LOG_SHMFD, SET_LOG_BASE has its own reply (u64 0: mapped); a refusal is that reply
  // with a non-zero value, whether or not need_reply is set, and the session goes on.
  ...LOG_SHMFD_CASES(),
  {
    name: 'GET_MAX_MEM_SLOTS (CONFIGURE_MEM_SLOTS not offered; its reply cannot be faked)',
    send: (fe) => fe.send(REQ.GET_MAX_MEM_SLOTS),
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

// --- a good front end that moves frames --------------------------------------------------

/** virtio_net_hdr of VERSION_1 (12 bytes: num_buffers included). */
const HDR_LEN = 12;
const RING = 256;
const DESC_F_WRITE = 2;
/** Front-end address the memfd is announced at (any address works: only translation uses it). */
const GUEST_UVA = 0x7f0000000000n;
/** Guest-physical layout inside the memfd: ring 0 (RX) at 0, ring 1 (TX) at 16 KiB, buffers above. */
const RING_OFFSET = [0, 16384];
const TX_BUFS = 0x10000;
const RX_BUFS = 0x80000;
const BUF = 2048;

/**
 * A good front end over memfd memory: brings queue pair 0 up the way QEMU does (VERSION_1,
 * REPLY_ACK, SET_VRING_ENABLE) and then drives the rings itself, writing descriptors and
 * frames with pwrite and reading used entries with pread on the memfd whose pages the back
 * end has mapped. Proves the data path of a back end without a VMM.
 */
export class MemfdGuest {
  private txNext = 0;
  private rxNext = 0;
  private rxSeen = 0;

  private constructor(
    readonly fe: FrontEnd,
    readonly mem: TestMemory,
    private readonly kick: number[],
    private readonly call: number[],
  ) {}

  /**
   * Connects to `sock` and brings pair 0 up; throws if the back end refuses anything. `call`
   * and `err` give the rings' call fds (default: fresh eventfds) and error fds (default none);
   * the guest owns them from then on.
   */
  static async start(sock: string, features: bigint = 1n << 32n, opts: { sealed?: boolean; call?: number[]; err?: number[] } = {}): Promise<MemfdGuest> {
    const fe = FrontEnd.connect(sock);
    const mem = testMemory(1 << 20, 0n, GUEST_UVA, opts.sealed);
    const a = addon();
    const kick = [a.eventfd(), a.eventfd()];
    const call = opts.call ?? [a.eventfd(), a.eventfd()];
    const g = new MemfdGuest(fe, mem, kick, [...call, ...(opts.err ?? [])]);
    try {
      await fe.handshake();
      await expectOk(fe, REQ.SET_FEATURES, u64(features | (1n << 30n)));
      await expectOk(fe, REQ.SET_MEM_TABLE, memTable([mem.region]), [mem.fd]);
      for (const ring of [0, 1]) {
        await expectOk(fe, REQ.SET_VRING_NUM, state(ring, RING));
        await expectOk(fe, REQ.SET_VRING_BASE, state(ring, 0));
        await expectOk(fe, REQ.SET_VRING_ADDR, vringAddr(ring, ringAt(GUEST_UVA, BigInt(RING_OFFSET[ring]))));
        await expectOk(fe, REQ.SET_VRING_KICK, u64(BigInt(ring)), [kick[ring]]);
        await expectOk(fe, REQ.SET_VRING_CALL, u64(BigInt(ring)), [call[ring]]);
        if (opts.err) await expectOk(fe, REQ.SET_VRING_ERR, u64(BigInt(ring)), [opts.err[ring]]);
      }
      for (const ring of [0, 1]) await expectOk(fe, REQ.SET_VRING_ENABLE, state(ring, 1));
    } catch (e) {
      g.close();
      throw e;
    }
    return g;
  }

  private write(gpa: number, b: Buffer): void {
    fs.writeSync(this.mem.fd, b, 0, b.length, gpa);
  }

  private read(gpa: number, len: number): Buffer {
    const b = Buffer.alloc(len);
    fs.readSync(this.mem.fd, b, 0, len, gpa);
    return b;
  }

  private desc(ring: number, i: number, addr: number, len: number, flags: number): void {
    const d = Buffer.alloc(16);
    d.writeBigUInt64LE(BigInt(addr), 0);
    d.writeUInt32LE(len, 8);
    d.writeUInt16LE(flags, 12);
    this.write(RING_OFFSET[ring] + 16 * i, d);
  }

  /** Publishes descriptor `head` as avail entry number `n` (0-based count of entries so far). */
  private publish(ring: number, n: number, head: number): void {
    const avail = RING_OFFSET[ring] + 4096;
    const e = Buffer.alloc(2);
    e.writeUInt16LE(head);
    this.write(avail + 4 + 2 * (n % RING), e);
    const idx = Buffer.alloc(2);
    idx.writeUInt16LE((n + 1) & 0xffff);
    this.write(avail + 2, idx);
  }

  usedIdx(ring: number): number {
    return this.read(RING_OFFSET[ring] + 8192 + 2, 2).readUInt16LE(0);
  }

  /** Sends one Ethernet frame (a zero virtio_net_hdr in front) on TX and kicks. */
  send(frame: Buffer): void {
    const i = this.txNext++ % RING;
    const addr = TX_BUFS + i * BUF;
    this.write(addr, Buffer.concat([Buffer.alloc(HDR_LEN), frame]));
    this.desc(1, i, addr, HDR_LEN + frame.length, 0);
    this.publish(1, this.txNext - 1, i);
    addon().kick(this.kick[1]);
  }

  /** Posts a TX chain whose buffer lies outside guest memory (a rule a guest may break) and kicks. */
  sendOutOfBounds(): void {
    const i = this.txNext++ % RING;
    this.desc(1, i, 1 << 30, 64, 0);
    this.publish(1, this.txNext - 1, i);
    addon().kick(this.kick[1]);
  }

  /** Kicks ring `ring` (0 RX, 1 TX) without posting anything. */
  kickRing(ring: number): void {
    addon().kick(this.kick[ring]);
  }

  /** Posts `n` RX buffers of 2 KiB and kicks. */
  postRx(n: number): void {
    for (let k = 0; k < n; k++) {
      const i = this.rxNext++ % RING;
      this.desc(0, i, RX_BUFS + i * BUF, BUF, DESC_F_WRITE);
      this.publish(0, this.rxNext - 1, i);
    }
    addon().kick(this.kick[0]);
  }

  /** Frames received since the last call (virtio_net_hdr stripped), from the used ring. */
  received(): Buffer[] {
    const used = RING_OFFSET[0] + 8192;
    const idx = this.usedIdx(0);
    const out: Buffer[] = [];
    for (; (this.rxSeen & 0xffff) !== idx; this.rxSeen++) {
      const e = this.read(used + 4 + 8 * (this.rxSeen % RING), 8);
      const id = e.readUInt32LE(0);
      const len = e.readUInt32LE(4);
      out.push(this.read(RX_BUFS + id * BUF + HDR_LEN, Math.max(0, len - HDR_LEN)));
    }
    return out;
  }

  /** Waits (polling) until `cond` holds, up to `timeoutMs`; `state` describes what was seen, for the error. */
  async until(cond: () => boolean, timeoutMs = 5000, what = 'the back end', state?: () => string): Promise<void> {
    const end = Date.now() + timeoutMs;
    while (!cond()) {
      if (Date.now() > end) {
        const seen = `TX used ${this.usedIdx(1)}/${this.txNext}, RX used ${this.usedIdx(0)}/${this.rxNext}`;
        throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (${seen}${state ? `; ${state()}` : ''})`);
      }
      await sleep(20);
    }
  }

  close(): void {
    this.fe.close();
    for (const fd of [...this.kick, ...this.call]) addon().close(fd);
    this.mem.close();
  }
}

/** An ARP request (60 bytes) from `srcMac`/`srcIp` asking who has `targetIp`. */
export function arpRequest(srcMac: Buffer, srcIp: number[], targetIp: number[]): Buffer {
  const f = Buffer.alloc(60);
  f.fill(0xff, 0, 6);
  srcMac.copy(f, 6);
  f.writeUInt16BE(0x0806, 12);
  f.writeUInt16BE(1, 14);
  f.writeUInt16BE(0x0800, 16);
  f[18] = 6;
  f[19] = 4;
  f.writeUInt16BE(1, 20);
  srcMac.copy(f, 22);
  Buffer.from(srcIp).copy(f, 28);
  Buffer.from(targetIp).copy(f, 38);
  return f;
}

/**
 * Plays one hostile case against the back end listening at `sock`: handshake, the case's
 * messages, what the back end did ('nack', 'closed', or 'still open' when it did neither in
 * time), and why its session ended (`ended` resolves with the back end's reason once the
 * connection is gone; the front end hangs up after the case). Releases the case's memfd and
 * eventfds.
 */
export async function playHostileCase(
  sock: string,
  c: HostileCase,
  ended: () => Promise<string>,
): Promise<{ outcome: 'nack' | 'ok' | 'closed' | 'still open'; reason: string; frontEndCloses: boolean }> {
  const fe = FrontEnd.connect(sock);
  const mem = testMemory(1 << 20);
  const mine: number[] = [];
  const eventfd = (): number => {
    const fd = addon().eventfd();
    mine.push(fd);
    return fd;
  };
  const frontEndCloses = c.name.includes('then the front end closes') || c.name.startsWith('abrupt close');
  const end = ended();
  let outcome: 'nack' | 'ok' | 'closed' | 'still open';
  try {
    await fe.handshake(c.protocol);
    await c.send(fe, { mem, eventfd });
    // The back end hangs up, or (when the front end hung up itself) ends the session.
    const hungUp = frontEndCloses ? end : fe.closed;
    outcome = c.expect === 'nack' ? await fe.outcome() : await Promise.race([hungUp.then(() => 'closed' as const), sleep(5000).then(() => 'still open' as const)]);
  } finally {
    fe.close();
  }
  const reason = await end;
  mem.close();
  for (const fd of mine) addon().close(fd);
  return { outcome, reason, frontEndCloses };
}
