// Reader for classic libpcap capture files (what `tcpdump -w` writes), so
// gso-check can look at the wire segments the kernel produced without a
// pcap library. Only the container is parsed; frames are returned as-is.

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
