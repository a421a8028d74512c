// Readers for capture files without a pcap library: classic libpcap (what
// `tcpdump -w` writes; gso-check reads the wire segments the kernel produced)
// and pcapng (what `vhost-tap run --pcap` writes). Only the container is
// parsed; frames are returned as-is.

/** One captured packet. */
export interface PcapPacket {
  /** Captured bytes (at most the snap length). */
  data: Uint8Array;
  /** Length of the packet on the wire; larger than data.length when the capture cut it. */
  origLen: number;
}

export interface PcapFile {
  /** LINKTYPE_* of every packet (1 = Ethernet). */
  linkType: number;
  packets: PcapPacket[];
}

export const LINKTYPE_ETHERNET = 1;

const GLOBAL_HDR = 24;
const RECORD_HDR = 16;

/**
 * Parses a pcap file. Both byte orders and both timestamp resolutions are
 * accepted (the magic number says which). A file that ends inside a record,
 * as one read while tcpdump is still writing can, yields the whole records
 * before it; anything else malformed throws.
 */
export function parsePcap(buf: Uint8Array): PcapFile {
  if (buf.length < GLOBAL_HDR) throw new Error(`pcap: file of ${buf.length} bytes is shorter than the 24-byte global header`);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const magicLe = dv.getUint32(0, true);
  let le: boolean;
  // 0xa1b2c3d4: microseconds, 0xa1b23c4d: nanoseconds; read in either order.
  if (magicLe === 0xa1b2c3d4 || magicLe === 0xa1b23c4d) le = true;
  else if (dv.getUint32(0, false) === 0xa1b2c3d4 || dv.getUint32(0, false) === 0xa1b23c4d) le = false;
  else throw new Error(`pcap: unknown magic 0x${magicLe.toString(16)} (pcapng is not supported; write with tcpdump -w)`);
  const linkType = dv.getUint32(20, le) & 0x0fffffff;
  const packets: PcapPacket[] = [];
  let off = GLOBAL_HDR;
  while (off + RECORD_HDR <= buf.length) {
    const incl = dv.getUint32(off + 8, le);
    const orig = dv.getUint32(off + 12, le);
    if (incl > 0x4000000) throw new Error(`pcap: record at byte ${off} claims ${incl} captured bytes`);
    const start = off + RECORD_HDR;
    if (start + incl > buf.length) break;
    packets.push({ data: buf.subarray(start, start + incl), origLen: orig });
    off = start + incl;
  }
  return { linkType, packets };
}

/** Writes a pcap file (microsecond magic, little-endian) for the given Ethernet frames; for tests and debugging. */
export function writePcap(frames: Uint8Array[], linkType = LINKTYPE_ETHERNET): Uint8Array {
  const total = GLOBAL_HDR + frames.reduce((n, f) => n + RECORD_HDR + f.length, 0);
  const out = new Uint8Array(total);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, 0xa1b2c3d4, true);
  dv.setUint16(4, 2, true);
  dv.setUint16(6, 4, true);
  dv.setUint32(16, 262144, true);
  dv.setUint32(20, linkType, true);
  let off = GLOBAL_HDR;
  for (const f of frames) {
    dv.setUint32(off + 8, f.length, true);
    dv.setUint32(off + 12, f.length, true);
    out.set(f, off + RECORD_HDR);
    off += RECORD_HDR + f.length;
  }
  return out;
}

/** One Enhanced Packet Block of a pcapng file. */
export interface PcapngPacket extends PcapPacket {
  interfaceId: number;
  /** The opt_comment options, decoded as UTF-8. */
  comments: string[];
  /** epb_flags (direction in the low two bits: 1 inbound, 2 outbound), or undefined. */
  flags: number | undefined;
}

/** Parses a little-endian pcapng file: its interfaces' link types and its Enhanced Packet Blocks. Malformed blocks throw. */
export function parsePcapng(buf: Uint8Array): { linkTypes: number[]; packets: PcapngPacket[] } {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  if (buf.length < 28 || dv.getUint32(0, true) !== 0x0a0d0d0a) throw new Error('pcapng: no Section Header Block at the start');
  if (dv.getUint32(8, true) !== 0x1a2b3c4d) throw new Error('pcapng: only little-endian sections are read here');
  const linkTypes: number[] = [];
  const packets: PcapngPacket[] = [];
  const dec = new TextDecoder();
  let off = 0;
  while (off + 12 <= buf.length) {
    const type = dv.getUint32(off, true);
    const len = dv.getUint32(off + 4, true);
    if (len < 12 || len % 4 !== 0 || off + len > buf.length || dv.getUint32(off + len - 4, true) !== len) {
      throw new Error(`pcapng: bad block length ${len} at byte ${off}`);
    }
    if (type === 1) linkTypes.push(dv.getUint16(off + 8, true));
    else if (type === 6) {
      const capLen = dv.getUint32(off + 20, true);
      const origLen = dv.getUint32(off + 24, true);
      const data = buf.subarray(off + 28, off + 28 + capLen);
      const comments: string[] = [];
      let flags: number | undefined;
      let o = off + 28 + ((capLen + 3) & ~3);
      while (o + 4 <= off + len - 4) {
        const code = dv.getUint16(o, true);
        const olen = dv.getUint16(o + 2, true);
        if (code === 0) break;
        if (code === 1) comments.push(dec.decode(buf.subarray(o + 4, o + 4 + olen)));
        if (code === 2 && olen === 4) flags = dv.getUint32(o + 4, true);
        o += 4 + ((olen + 3) & ~3);
      }
      packets.push({ data, origLen, interfaceId: dv.getUint32(off + 8, true), comments, flags });
    }
    off += len;
  }
  return { linkTypes, packets };
}
