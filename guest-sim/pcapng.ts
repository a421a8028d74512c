// Capturing what the guest and the kernel exchange, as pcapng (the format of
// Wireshark and tcpdump -r): a section and one Ethernet interface written by
// the main thread, and in each queue-pair Worker a buffer of Enhanced Packet
// Blocks, one per frame the device moved, whole (super-frames too), with the
// frame's virtio_net_hdr in the packet comment and its direction in epb_flags.
// Blocks are little-endian; the Worker posts full buffers to the main thread.

import { HDR } from '../backend';
import type { NetHdr } from '../driver';

const SHB = 0x0a0d0d0a;
const IDB = 0x00000001;
const EPB = 0x00000006;
const BYTE_ORDER_MAGIC = 0x1a2b3c4d;
const LINKTYPE_ETHERNET = 1;
const OPT_ENDOFOPT = 0;
const OPT_COMMENT = 1;
const OPT_IF_NAME = 2;
const OPT_IF_TSRESOL = 9;
const OPT_EPB_FLAGS = 2;
/** epb_flags direction bits (pcapng 4.3.1): 01 inbound, 10 outbound, as the guest's interface sees it. */
const EPB_INBOUND = 1;
const EPB_OUTBOUND = 2;
/** Fixed part of an EPB: type, length, interface, timestamp (2), captured and original length, trailing length. */
const EPB_FIXED = 32;

function pad4(n: number): number {
  return (n + 3) & ~3;
}

function option(code: number, value: Uint8Array): Uint8Array {
  const b = new Uint8Array(4 + pad4(value.length));
  const dv = new DataView(b.buffer);
  dv.setUint16(0, code, true);
  dv.setUint16(2, value.length, true);
  b.set(value, 4);
  return b;
}

function block(type: number, body: Uint8Array): Uint8Array {
  const len = 12 + body.length;
  const b = new Uint8Array(len);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, type, true);
  dv.setUint32(4, len, true);
  b.set(body, 8);
  dv.setUint32(len - 4, len, true);
  return b;
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** The file's start: a Section Header Block and the Interface Description Block of the guest's interface (id 0). */
export function pcapngHeader(ifName: string): Uint8Array {
  const shb = new Uint8Array(16);
  const sdv = new DataView(shb.buffer);
  sdv.setUint32(0, BYTE_ORDER_MAGIC, true);
  sdv.setUint16(4, 1, true); // version 1.0
  sdv.setUint16(6, 0, true);
  sdv.setInt32(8, -1, true); // section length unknown
  sdv.setInt32(12, -1, true);
  const idb = new Uint8Array(8);
  const idv = new DataView(idb.buffer);
  idv.setUint16(0, LINKTYPE_ETHERNET, true);
  idv.setUint32(4, 0, true); // snaplen 0: no limit, super-frames are whole
  const opts = concat([option(OPT_IF_NAME, new TextEncoder().encode(ifName)), option(OPT_IF_TSRESOL, new Uint8Array([6])), option(OPT_ENDOFOPT, new Uint8Array(0))]);
  return concat([block(SHB, shb), block(IDB, concat([idb, opts]))]);
}

const GSO_NAMES: Record<number, string> = {
  [HDR.GSO_NONE]: 'NONE',
  [HDR.GSO_TCPV4]: 'TCPV4',
  [HDR.GSO_UDP]: 'UDP',
  [HDR.GSO_TCPV6]: 'TCPV6',
  [HDR.GSO_UDP_L4]: 'UDP_L4',
};

/** The packet comment: direction and every virtio_net_hdr field, e.g. "tx guest->kernel virtio_net_hdr flags=0x1(NEEDS_CSUM) gso_type=TCPV4 ...". */
export function hdrComment(tx: boolean, h: Readonly<NetHdr>, numBuffers: number | undefined): string {
  const f: string[] = [];
  if (h.flags & HDR.F_NEEDS_CSUM) f.push('NEEDS_CSUM');
  if (h.flags & HDR.F_DATA_VALID) f.push('DATA_VALID');
  if (h.flags & HDR.F_RSC_INFO) f.push('RSC_INFO');
  const gso = `${GSO_NAMES[h.gsoType & ~HDR.GSO_ECN] ?? `0x${(h.gsoType & ~HDR.GSO_ECN).toString(16)}`}${h.gsoType & HDR.GSO_ECN ? '|ECN' : ''}`;
  return (
    `${tx ? 'tx guest->kernel' : 'rx kernel->guest'} virtio_net_hdr flags=0x${h.flags.toString(16)}${f.length ? `(${f.join('|')})` : ''}` +
    ` gso_type=${gso} hdr_len=${h.hdrLen} gso_size=${h.gsoSize} csum_start=${h.csumStart} csum_offset=${h.csumOffset}` +
    (numBuffers === undefined ? '' : ` num_buffers=${numBuffers}`)
  );
}

/**
 * A Worker's capture buffer: Enhanced Packet Blocks appended back to back; `post` gets a full
 * (or flushed) buffer, which it owns from then on.
 */
export class PcapngBuffer {
  private buf: Uint8Array;
  private dv: DataView;
  private n = 0;
  private readonly enc = new TextEncoder();

  constructor(
    private readonly post: (chunk: Uint8Array) => void,
    private readonly size = 1 << 20,
  ) {
    this.buf = new Uint8Array(size);
    this.dv = new DataView(this.buf.buffer);
  }

  /**
   * One frame: `parts` pieces (u8[off[i], off[i] + len[i])) making `total` bytes, the header it
   * travelled with, and its direction (tx: the guest sent it).
   */
  frame(tx: boolean, h: Readonly<NetHdr>, numBuffers: number | undefined, u8: Uint8Array, off: ArrayLike<number>, len: ArrayLike<number>, parts: number, total: number): void {
    const comment = this.enc.encode(hdrComment(tx, h, numBuffers));
    const blockLen = EPB_FIXED + pad4(total) + 4 + pad4(comment.length) + 8 + 4;
    if (blockLen > this.size - this.n) {
      this.flush();
      if (blockLen > this.size) this.grow(blockLen);
    }
    const dv = this.dv;
    const b = this.buf;
    const o = this.n;
    const us = Math.round((performance.timeOrigin + performance.now()) * 1000);
    dv.setUint32(o, EPB, true);
    dv.setUint32(o + 4, blockLen, true);
    dv.setUint32(o + 8, 0, true); // interface 0
    dv.setUint32(o + 12, Math.floor(us / 0x100000000), true);
    dv.setUint32(o + 16, us >>> 0, true);
    dv.setUint32(o + 20, total, true);
    dv.setUint32(o + 24, total, true);
    let p = o + 28;
    for (let i = 0; i < parts; i++) {
      b.set(u8.subarray(off[i], off[i] + len[i]), p);
      p += len[i];
    }
    b.fill(0, p, o + 28 + pad4(total));
    p = o + 28 + pad4(total);
    dv.setUint16(p, OPT_COMMENT, true);
    dv.setUint16(p + 2, comment.length, true);
    b.set(comment, p + 4);
    b.fill(0, p + 4 + comment.length, p + 4 + pad4(comment.length));
    p += 4 + pad4(comment.length);
    dv.setUint16(p, OPT_EPB_FLAGS, true);
    dv.setUint16(p + 2, 4, true);
    dv.setUint32(p + 4, tx ? EPB_OUTBOUND : EPB_INBOUND, true);
    p += 8;
    dv.setUint32(p, OPT_ENDOFOPT, true);
    p += 4;
    dv.setUint32(p, blockLen, true);
    this.n = o + blockLen;
  }

  /** Hands what is buffered to `post` (nothing when empty) and starts a new buffer. */
  flush(): void {
    if (this.n === 0) return;
    this.post(this.buf.subarray(0, this.n));
    this.buf = new Uint8Array(this.size);
    this.dv = new DataView(this.buf.buffer);
    this.n = 0;
  }

  private grow(min: number): void {
    this.buf = new Uint8Array(min);
    this.dv = new DataView(this.buf.buffer);
  }
}
