// guest-sim as one end of a UDP tunnel (VXLAN, RFC 7348; GENEVE, RFC 8926)
// over its own IPv4 address: takes the tunnel's frames apart for an inner TCP
// stack and responder (which keep their own MAC and addresses, as a VM's
// overlay interface does), and wraps what they send in the outer Ethernet,
// IPv4, UDP and tunnel headers. A TCP super-frame of the inner stack leaves as
// one tunnel super-frame (gso_type with the UDP tunnel bit, outer and inner
// offsets in the 24-byte header) when HOST_UDP_TUNNEL_GSO was negotiated;
// without it the inner stack is told to send MTU-sized segments, as a guest
// without the offload does. Received tunnel super-frames (GUEST_UDP_TUNNEL_GSO)
// reach the inner TCP whole, like plain GSO super-frames do.

import { HDR } from '../backend';
import type { NetHdr } from '../driver';
import { ETHERTYPE, IPPROTO, IPV4_HLEN, UDP_HLEN, csumAdd, csumFold } from './packets';
import type { TcpLink, TxHdr } from './tcp';

export type TunnelKind = 'vxlan' | 'geneve';

/** IANA ports: VXLAN 4789 (RFC 7348 §5), GENEVE 6081 (RFC 8926 §3.3). */
export const TUNNEL_UDP_PORT: Readonly<Record<TunnelKind, number>> = { vxlan: 4789, geneve: 6081 };

/** VXLAN's header and GENEVE's without options are both 8 bytes. */
const TUNNEL_HLEN = 8;
/** GENEVE's protocol type for an Ethernet payload (Transparent Ethernet Bridging). */
const ETHERTYPE_TEB = 0x6558;
/** VXLAN flags byte: I, the VNI is valid (RFC 7348 §5). */
const VXLAN_FLAG_I = 0x08;

/** Outer Ethernet + IPv4 + UDP + tunnel header in front of every inner frame we send. */
export const TUNNEL_ENCAP_LEN = 14 + IPV4_HLEN + UDP_HLEN + TUNNEL_HLEN;
/** Offset of the outer UDP header (virtio's outer_th_offset). */
const OUTER_TH = 14 + IPV4_HLEN;

/**
 * Outer UDP source ports are drawn from the dynamic range by inner flow, as Linux's
 * udp_flow_src_port does, so that RSS and ECMP on the underlay can spread the flows.
 */
const SPORT_BASE = 49152;
const SPORT_SPAN = 16384;

export interface TunnelConfig {
  kind: TunnelKind;
  /** 24-bit virtual network identifier; frames with another VNI are not ours. */
  vni: number;
  /** Our outer (underlay) IPv4 address: the guest's own. */
  local4: Uint8Array;
}

/** What the endpoint counted: frames taken apart and sent, and how many of each way were super-frames. */
export interface TunnelStats {
  tnl_rx_frames: number;
  /** Received frames whose gso_type had a UDP tunnel bit (the kernel's tunnel super-frames). */
  tnl_rx_gso_frames: number;
  tnl_rx_gso_bytes: number;
  tnl_tx_frames: number;
  /** Sent with a UDP tunnel gso_type (HOST_UDP_TUNNEL_GSO). */
  tnl_tx_gso_frames: number;
  tnl_tx_gso_bytes: number;
  /** Frames to our tunnel port we did not take: another VNI, GENEVE options or version, a short header. */
  tnl_rx_not_ours: number;
  /** Frames the inner stack could not send because the peer's underlay address is not known yet. */
  tnl_tx_no_peer: number;
}

/** The outer link's side: where the encapsulated frame goes (the queue pair's TX). */
export interface OuterLink {
  readonly u8: Uint8Array;
  readonly maxFrame: number;
  reserve(len: number): number;
  commit(len: number, hdr: NetHdr): void;
}

export class TunnelEndpoint {
  readonly stats: TunnelStats = {
    tnl_rx_frames: 0,
    tnl_rx_gso_frames: 0,
    tnl_rx_gso_bytes: 0,
    tnl_tx_frames: 0,
    tnl_tx_gso_frames: 0,
    tnl_tx_gso_bytes: 0,
    tnl_rx_not_ours: 0,
    tnl_tx_no_peer: 0,
  };
  /** The inner stack's link: frames written here leave encapsulated. */
  readonly link: TcpLink;
  private readonly kind: TunnelKind;
  private readonly vni: number;
  private readonly port: number;
  private readonly local4: Uint8Array;
  private readonly outer: OuterLink;
  private readonly tunnelGso: boolean;
  // The underlay peer, learnt from the frames it sends (a VTEP answers the VTEP that spoke).
  private readonly peerMac = new Uint8Array(6);
  private readonly peerIp4 = new Uint8Array(4);
  private ourMac: Uint8Array;
  private havePeer = false;
  private outerOff = -1;
  private ipId = 1;
  private readonly hdr: NetHdr = { flags: 0, gsoType: 0, hdrLen: 0, gsoSize: 0, csumStart: 0, csumOffset: 0, outerTh: 0, innerNh: 0 };

  /**
   * `mac`: our outer MAC. `tunnelGso`: HOST_UDP_TUNNEL_GSO was negotiated, so inner TCP
   * super-frames may leave as tunnel super-frames (the caller gives the inner stack TSO only then).
   */
  constructor(cfg: TunnelConfig, mac: Uint8Array, outer: OuterLink, tunnelGso: boolean) {
    if (!Number.isInteger(cfg.vni) || cfg.vni < 0 || cfg.vni > 0xffffff) throw new RangeError(`tunnel vni must be an integer in 0..16777215, got ${cfg.vni}`);
    this.kind = cfg.kind;
    this.vni = cfg.vni;
    this.port = TUNNEL_UDP_PORT[cfg.kind];
    this.local4 = Uint8Array.from(cfg.local4);
    this.ourMac = Uint8Array.from(mac);
    this.outer = outer;
    this.tunnelGso = tunnelGso;
    const self = this;
    this.link = {
      u8: outer.u8,
      // The outer IPv4 total length is 16 bits too: the inner frame gives up what the outer headers take.
      maxFrame: Math.min(outer.maxFrame, 0xffff + 14) - TUNNEL_ENCAP_LEN,
      reserve(len: number): number {
        if (!self.havePeer) {
          self.stats.tnl_tx_no_peer++;
          return -1;
        }
        const o = outer.reserve(len + TUNNEL_ENCAP_LEN);
        self.outerOff = o;
        return o < 0 ? -1 : o + TUNNEL_ENCAP_LEN;
      },
      commit(len: number, h: TxHdr): void {
        self.send(len, h);
      },
    };
  }

  /**
   * If u8[off, off+len) (the first piece of a received frame) is one of our tunnel's frames,
   * returns the offset of its inner Ethernet frame (the outer headers all lie in the first
   * piece); otherwise -1. `gsoType`: the frame's virtio gso_type, to count tunnel super-frames.
   */
  decapsulate(u8: Uint8Array, off: number, len: number, totalLen: number, gsoType: number): number {
    if (len < TUNNEL_ENCAP_LEN + 14) return -1;
    if (((u8[off + 12] << 8) | u8[off + 13]) !== ETHERTYPE.IPV4) return -1;
    const l3 = off + 14;
    if (u8[l3] !== 0x45 || u8[l3 + 9] !== IPPROTO.UDP) return -1; // outer IP options: not from a Linux VTEP
    if ((((u8[l3 + 6] << 8) | u8[l3 + 7]) & 0x3fff) !== 0) return -1; // fragments: not reassembled here
    for (let i = 0; i < 4; i++) if (u8[l3 + 16 + i] !== this.local4[i]) return -1;
    const l4 = l3 + IPV4_HLEN;
    if (((u8[l4 + 2] << 8) | u8[l4 + 3]) !== this.port) return -1;
    const th = l4 + UDP_HLEN;
    let inner: number;
    if (this.kind === 'vxlan') {
      if ((u8[th] & VXLAN_FLAG_I) === 0) return this.notOurs();
      inner = th + TUNNEL_HLEN;
    } else {
      // Version 0 only; options (their length in 4-byte words) are skipped, none is critical to us.
      if (u8[th] >>> 6 !== 0 || ((u8[th + 2] << 8) | u8[th + 3]) !== ETHERTYPE_TEB) return this.notOurs();
      inner = th + TUNNEL_HLEN + (u8[th] & 0x3f) * 4;
    }
    if (((u8[th + 4] << 16) | (u8[th + 5] << 8) | u8[th + 6]) !== this.vni) return this.notOurs();
    if (inner + 14 > off + len) return this.notOurs();
    // The peer VTEP: its outer MAC and address, for what the inner stack sends back.
    for (let i = 0; i < 6; i++) this.peerMac[i] = u8[off + 6 + i];
    for (let i = 0; i < 4; i++) this.peerIp4[i] = u8[l3 + 12 + i];
    this.havePeer = true;
    this.stats.tnl_rx_frames++;
    if ((gsoType & (HDR.GSO_UDP_TUNNEL_IPV4 | HDR.GSO_UDP_TUNNEL_IPV6)) !== 0) {
      this.stats.tnl_rx_gso_frames++;
      this.stats.tnl_rx_gso_bytes += totalLen;
    }
    return inner;
  }

  private notOurs(): number {
    this.stats.tnl_rx_not_ours++;
    return -1;
  }

  /** An OutFn-style sender for the inner responder (ARP, ND, ICMP): reserve, fill, send encapsulated. */
  readonly out = (len: number, fill: (buf: Uint8Array) => void, hdr?: TxHdr): boolean => {
    const o = this.link.reserve(len);
    if (o < 0) return false;
    fill(this.outer.u8.subarray(o, o + len));
    this.send(len, hdr ?? NONE);
    return true;
  };

  /** Writes the outer headers in front of the inner frame just reserved and commits both as one frame. */
  private send(innerLen: number, ih: TxHdr): void {
    const u8 = this.outer.u8;
    const o = this.outerOff;
    const total = innerLen + TUNNEL_ENCAP_LEN;
    const inner = o + TUNNEL_ENCAP_LEN;
    u8.set(this.peerMac, o);
    u8.set(this.ourMac, o + 6);
    u8[o + 12] = ETHERTYPE.IPV4 >>> 8;
    u8[o + 13] = ETHERTYPE.IPV4 & 0xff;
    const l3 = o + 14;
    const ipLen = total - 14;
    u8[l3] = 0x45;
    u8[l3 + 1] = 0;
    u8[l3 + 2] = ipLen >>> 8;
    u8[l3 + 3] = ipLen & 0xff;
    const gso = (ih.gsoType & ~HDR.GSO_ECN) !== HDR.GSO_NONE;
    // The kernel gives each outer segment of a super-frame the next ID (with DF set, as Linux's VTEPs send).
    u8[l3 + 4] = this.ipId >>> 8;
    u8[l3 + 5] = this.ipId & 0xff;
    this.ipId = (this.ipId + (gso ? Math.ceil((innerLen - ih.hdrLen) / ih.gsoSize) : 1)) & 0xffff;
    u8[l3 + 6] = 0x40;
    u8[l3 + 7] = 0;
    u8[l3 + 8] = 64;
    u8[l3 + 9] = IPPROTO.UDP;
    u8[l3 + 10] = 0;
    u8[l3 + 11] = 0;
    u8.set(this.local4, l3 + 12);
    u8.set(this.peerIp4, l3 + 16);
    const ck = ~csumFold(csumAdd(0, u8, l3, IPV4_HLEN)) & 0xffff;
    u8[l3 + 10] = ck >>> 8;
    u8[l3 + 11] = ck & 0xff;
    const l4 = o + OUTER_TH;
    const udpLen = ipLen - IPV4_HLEN;
    const sport = SPORT_BASE + (this.flowHash(u8, inner, innerLen) % SPORT_SPAN);
    u8[l4] = sport >>> 8;
    u8[l4 + 1] = sport & 0xff;
    u8[l4 + 2] = this.port >>> 8;
    u8[l4 + 3] = this.port & 0xff;
    u8[l4 + 4] = udpLen >>> 8;
    u8[l4 + 5] = udpLen & 0xff;
    // Outer UDP checksum 0: allowed over IPv4 (RFC 768, RFC 7348 §5), and what keeps
    // HOST_UDP_TUNNEL_GSO_CSUM out of the picture; the inner TCP checksum covers the data.
    u8[l4 + 6] = 0;
    u8[l4 + 7] = 0;
    const th = l4 + UDP_HLEN;
    u8.fill(0, th, th + TUNNEL_HLEN);
    if (this.kind === 'vxlan') u8[th] = VXLAN_FLAG_I;
    else {
      u8[th + 2] = ETHERTYPE_TEB >>> 8;
      u8[th + 3] = ETHERTYPE_TEB & 0xff;
    }
    u8[th + 4] = (this.vni >>> 16) & 0xff;
    u8[th + 5] = (this.vni >>> 8) & 0xff;
    u8[th + 6] = this.vni & 0xff;

    const h = this.hdr;
    h.flags = ih.flags;
    h.gsoType = ih.gsoType;
    h.gsoSize = ih.gsoSize;
    h.hdrLen = ih.hdrLen > 0 ? ih.hdrLen + TUNNEL_ENCAP_LEN : 0;
    h.csumStart = ih.flags & HDR.F_NEEDS_CSUM ? ih.csumStart + TUNNEL_ENCAP_LEN : ih.csumStart;
    h.csumOffset = ih.csumOffset;
    h.outerTh = 0;
    h.innerNh = 0;
    if (gso) {
      if (!this.tunnelGso) throw new Error('internal: an inner GSO frame without HOST_UDP_TUNNEL_GSO (the inner stack must segment)');
      // virtio 1.4 §5.1.6.2: the tunnel bit names the outer family (as Linux reads it), the offsets locate the headers.
      h.gsoType |= HDR.GSO_UDP_TUNNEL_IPV4;
      h.outerTh = OUTER_TH;
      h.innerNh = TUNNEL_ENCAP_LEN + 14;
      this.stats.tnl_tx_gso_frames++;
      this.stats.tnl_tx_gso_bytes += total;
    }
    this.stats.tnl_tx_frames++;
    this.outer.commit(total, h);
  }

  /** A cheap hash of the inner addresses and ports (IPv4 or IPv6 TCP/UDP), stable per flow. */
  private flowHash(u8: Uint8Array, inner: number, len: number): number {
    let h = 0x9e3779b1;
    const et = (u8[inner + 12] << 8) | u8[inner + 13];
    const l3 = inner + 14;
    let from = l3;
    let to = l3;
    if (et === ETHERTYPE.IPV4 && len >= 14 + IPV4_HLEN + 4) {
      from = l3 + 12;
      to = l3 + IPV4_HLEN + 4; // addresses, then the ports (a TCP/UDP header after a 20-byte IP header)
    } else if (et === ETHERTYPE.IPV6 && len >= 14 + 40 + 4) {
      from = l3 + 8;
      to = l3 + 40 + 4;
    }
    for (let i = from; i < to; i++) h = Math.imul(h ^ u8[i], 0x01000193) >>> 0;
    return h >>> 0;
  }
}

const NONE: TxHdr = { flags: 0, gsoType: HDR.GSO_NONE, hdrLen: 0, gsoSize: 0, csumStart: 0, csumOffset: 0 };
