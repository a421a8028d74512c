// The benchmark's frames, built once per case and used byte-for-byte by every
// contender: records of a 12-byte virtio_net_hdr followed by an Ethernet
// frame. Plain frames are IPv4/UDP; super-frames are 64 KB IPv4/TCP GSO
// frames (NEEDS_CSUM + GSO_TCPV4), the shape a guest with HOST_TSO4 sends.

import { HDR } from '../backend';

export const HDR_LEN = HDR.SIZE_V1;
/** MSS of the super-frames: what a 1500-MTU TCP would segment them into. */
export const GSO_MSS = 1448;
/** 45 segments of payload: IP total length 65200, frame 65214 B. */
export const GSO_PAYLOAD = 45 * GSO_MSS;
export const GSO_FRAME_LEN = 14 + 20 + 20 + GSO_PAYLOAD;

/** Guest MAC (destination of RX frames; the device's TX filter passes it). */
export const GUEST_MAC = '02:76:74:62:00:01';
/** Source of RX frames. */
export const PEER_MAC = '02:76:74:62:00:02';
/**
 * Destination of TX frames: not the TAP's address, so the namespace's stack
 * drops them in ip_rcv as PACKET_OTHERHOST, the cheapest sink there is.
 */
export const SINK_MAC = '02:76:74:62:00:fe';

function mac(s: string): number[] {
  return s.split(':').map((x) => parseInt(x, 16));
}

function csum16(b: Uint8Array, off: number, len: number, init = 0): number {
  let sum = init;
  for (let i = 0; i < len; i += 2) sum += (b[off + i] << 8) | (i + 1 < len ? b[off + i + 1] : 0);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return sum;
}

export interface Records {
  /** nrec × reclen bytes. */
  data: Buffer;
  reclen: number;
  nrec: number;
  /** Frame bytes (header excluded) of one record. */
  frameLen: number;
  gso: boolean;
}

/**
 * `flows` records that differ only in the L4 source port, so a multiqueue TAP
 * spreads them over its queues by flow hash. `dir` picks the MAC addresses.
 */
export function buildRecords(frameLen: number, gso: boolean, flows: number, dir: 'tx' | 'rx'): Records {
  if (gso) frameLen = GSO_FRAME_LEN;
  if (frameLen < 60 || frameLen > 65535 + 14) throw new RangeError(`frame size ${frameLen} out of range (60..65549)`);
  const reclen = HDR_LEN + frameLen;
  const data = Buffer.alloc(reclen * flows);
  const [dst, src] = dir === 'tx' ? [SINK_MAC, GUEST_MAC] : [GUEST_MAC, PEER_MAC];
  for (let f = 0; f < flows; f++) {
    const r = data.subarray(f * reclen, (f + 1) * reclen);
    if (gso) {
      r[HDR.OFF_FLAGS] = HDR.F_NEEDS_CSUM;
      r[HDR.OFF_GSO_TYPE] = HDR.GSO_TCPV4;
      r.writeUInt16LE(54, HDR.OFF_HDR_LEN);
      r.writeUInt16LE(GSO_MSS, HDR.OFF_GSO_SIZE);
      r.writeUInt16LE(34, HDR.OFF_CSUM_START);
      r.writeUInt16LE(16, HDR.OFF_CSUM_OFFSET);
    }
    const e = HDR_LEN;
    r.set(mac(dst), e);
    r.set(mac(src), e + 6);
    r.writeUInt16BE(0x0800, e + 12);
    const ip = e + 14;
    const ipLen = frameLen - 14;
    r[ip] = 0x45;
    r.writeUInt16BE(ipLen, ip + 2);
    r.writeUInt16BE(f, ip + 4);
    r.writeUInt16BE(0x4000, ip + 6); // DF
    r[ip + 8] = 64;
    r[ip + 9] = gso ? 6 : 17;
    r.set([10, 205, 0, 1], ip + 12);
    r.set([10, 205, 0, 2], ip + 16);
    r.writeUInt16BE(~csum16(r, ip, 20) & 0xffff, ip + 10);
    const l4 = ip + 20;
    r.writeUInt16BE(40000 + f, l4);
    r.writeUInt16BE(5001, l4 + 2);
    if (gso) {
      r.writeUInt32BE(1 + f * 1000003, l4 + 4); // seq
      r.writeUInt32BE(1, l4 + 8); // ack
      r[l4 + 12] = 5 << 4;
      r[l4 + 13] = 0x18; // PSH|ACK
      r.writeUInt16BE(65535, l4 + 14);
      // NEEDS_CSUM: the checksum field holds the pseudo-header sum, the rest is the offload's job.
      const pseudo = csum16(r, ip + 12, 8, 6 + (ipLen - 20));
      r.writeUInt16BE(pseudo, l4 + 16);
      for (let i = l4 + 20; i < r.length; i++) r[i] = i & 0xff;
    } else {
      r.writeUInt16BE(ipLen - 20, l4 + 4);
      // UDP checksum 0: "none" in IPv4, nothing for anyone to verify.
      for (let i = l4 + 8; i < r.length; i++) r[i] = i & 0xff;
    }
  }
  return { data, reclen, nrec: flows, frameLen, gso };
}
