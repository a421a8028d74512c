// The simulated guest's tiny host stack: answers ARP, ICMPv4/ICMPv6 echo,
// IPv6 neighbour solicitations and UDP echo (port 7) so that host tools can
// talk to the guest, and builds frames for the guest to originate. Replies are
// written straight into a TX buffer the caller hands out (guest memory).
//
// UDP segmentation offload: a USO super-frame received (gso_type UDP_L4, the
// payload being many gso_size datagrams) is echoed as one USO super-frame
// with the same gso_size when HOST_USO was negotiated — the kernel cuts it
// into the same datagrams — and otherwise as one frame per datagram.
// sendUdp() with HOST_USO sends payloads larger than the MTU as USO.

import { HDR } from '../backend';
import type { TxHdr } from './tcp';
import {
  ARP_LEN,
  ARP_OP,
  ALL_NODES_6,
  BROADCAST_MAC,
  ETHERTYPE,
  ICMP4,
  ICMP6,
  ICMP_ECHO_HLEN,
  IPPROTO,
  IPV4_HLEN,
  IPV6_HLEN,
  NA_FLAG,
  ND_HLEN,
  UDP_HLEN,
  UNSPECIFIED_6,
  bytesEqual,
  checksumOk,
  csumFold,
  decodeArp,
  decodeEthernet,
  decodeIPv4,
  decodeIPv6,
  decodeIcmp,
  decodeNd,
  decodeUdp,
  encodeArp,
  encodeEthernet,
  encodeIPv4,
  encodeIPv6,
  encodeIcmpEchoHeader,
  encodeNa,
  encodeUdpFrame,
  encodeUdpHeader,
  ethHeaderLen,
  fillIcmp4Checksum,
  fillIcmp6Checksum,
  fillUdp4Checksum,
  fillUdp6Checksum,
  isFragment,
  isIPv6Multicast,
  get16,
  pseudoSum4,
  pseudoSum6,
  put16,
  l4ChecksumOk4,
  l4ChecksumOk6,
  linkLocalFromMac,
  multicastMac6,
  solicitedNodeMulticast,
  udpFrameLen,
  type ArpInfo,
  type EthInfo,
  type IcmpInfo,
  type Ipv4Info,
  type Ipv6Info,
  type NdInfo,
  type UdpInfo,
} from './packets';

export const UDP_ECHO_PORT = 7;

const ALL_NODES_MAC = multicastMac6(ALL_NODES_6);

export interface ResponderConfig {
  mac: Uint8Array;
  ip4?: { addr: Uint8Array; prefix: number };
  /** Enables IPv6 (the link-local address derived from `mac` comes with it). */
  ip6?: { addr: Uint8Array; prefix: number };
  /** Largest L3 packet sent or answered, as an interface MTU. */
  mtu: number;
  /** TX offloads negotiated: CSUM (partial checksums) and HOST_USO (UDP super-frames). */
  offloads?: { csum: boolean; uso: boolean };
}

/**
 * Hands out a TX buffer of `len` bytes: calls `fill(buf)` synchronously,
 * exactly once, with a buffer of at least `len` bytes, and returns true; or
 * returns false without calling `fill` when the TX ring is full. `hdr`: the
 * virtio_net_hdr offload fields for the frame (none when omitted).
 */
export type OutFn = (len: number, fill: (buf: Uint8Array) => void, hdr?: TxHdr) => boolean;

/**
 * 'verify': check L4 checksums. 'trust': skip them because the virtio header
 * said DATA_VALID (device checked) or NEEDS_CSUM (the field holds only a
 * partial sum). The IPv4 header checksum is always checked: neither flag
 * covers it and a device always delivers it complete.
 */
export type CsumMode = 'verify' | 'trust';

export interface ResponderStats {
  rx: number;
  arp_replies: number;
  icmp4_echo: number;
  icmp6_echo: number;
  nd_adverts: number;
  udp_echo: number;
  /** USO super-frames received on the echo port, and sent (echoes as USO, or sendUdp). */
  uso_rx: number;
  uso_tx: number;
  /** Destination MAC or IP is not ours (nor broadcast / a group we are in). */
  not_for_us: number;
  bad_checksum: number;
  /** Ours, but a protocol, port, fragment or extension header we do not handle. */
  unsupported: number;
  /** Truncated or inconsistent headers, or ND messages that fail RFC 4861 validity checks. */
  malformed: number;
  /** Ours and valid, but nothing to answer (ARP replies, echo replies, adverts...). */
  ignored: number;
  /** A reply was due but `out` had no TX buffer. */
  tx_ring_full: number;
  /** A reply would have exceeded the MTU and was not sent. */
  too_big: number;
}

function newStats(): ResponderStats {
  return {
    rx: 0,
    arp_replies: 0,
    icmp4_echo: 0,
    icmp6_echo: 0,
    nd_adverts: 0,
    udp_echo: 0,
    uso_rx: 0,
    uso_tx: 0,
    not_for_us: 0,
    bad_checksum: 0,
    unsupported: 0,
    malformed: 0,
    ignored: 0,
    tx_ring_full: 0,
    too_big: 0,
  };
}

function checkAddr(what: string, a: { addr: Uint8Array; prefix: number } | undefined, bytes: number): void {
  if (a === undefined) return;
  if (!(a.addr instanceof Uint8Array) || a.addr.length !== bytes) throw new TypeError(`Responder: ${what}.addr must be a ${bytes}-byte Uint8Array`);
  if (!Number.isInteger(a.prefix) || a.prefix < 0 || a.prefix > bytes * 8) throw new RangeError(`Responder: ${what}.prefix must be an integer in 0..${bytes * 8}`);
}

/**
 * Copies src[off, off + dst.length) into dst and returns dst: a reused stand-in for src.subarray(),
 * which would allocate a view per address per reply (under a ping flood, most of the garbage a
 * queue-pair Worker made, and what drove its scavenges).
 */
function take(dst: Uint8Array, src: Uint8Array, off: number): Uint8Array {
  for (let i = 0; i < dst.length; i++) dst[i] = src[off + i];
  return dst;
}

export class Responder {
  readonly mac: Uint8Array;
  readonly ip4: Uint8Array | null;
  readonly ip6: Uint8Array | null;
  readonly linkLocal: Uint8Array | null;
  readonly mtu: number;
  readonly uso: boolean;
  readonly csumOffload: boolean;
  readonly stats: ResponderStats = newStats();

  // IPv6 destinations we accept: unicast addresses, their solicited-node groups, all-nodes.
  private readonly accept6: Uint8Array[] = [];
  private ipId = 1;

  // Decoder scratch and the request being answered: reused so that handling a
  // frame allocates nothing, and the fill callbacks below are bound once.
  private readonly eth: EthInfo = { etherType: 0, vlan: -1, tci: -1, l3: 0 };
  private readonly arp: ArpInfo = { op: 0, sha: 0, spa: 0, tha: 0, tpa: 0 };
  private readonly v4: Ipv4Info = { ihl: 0, totalLen: 0, id: 0, frag: 0, ttl: 0, proto: 0, src: 0, dst: 0, payload: 0, payloadLen: 0 };
  private readonly v6: Ipv6Info = { payloadLen: 0, nextHeader: 0, hopLimit: 0, src: 0, dst: 0, payload: 0 };
  private readonly icmp: IcmpInfo = { type: 0, code: 0, checksum: 0, id: 0, seq: 0, data: 0, dataLen: 0 };
  private readonly nd: NdInfo = { target: 0, lladdr: -1, flags: 0 };
  private readonly udp: UdpInfo = { srcPort: 0, dstPort: 0, length: 0, checksum: 0, payload: 0, payloadLen: 0 };
  private req: Uint8Array = new Uint8Array(0);
  // The request's addresses the reply carries back, copied out of it (see take()).
  private readonly peerMac = new Uint8Array(6);
  private readonly peerIp4 = new Uint8Array(4);
  private readonly peerIp6 = new Uint8Array(16);
  private readonly arpSha = new Uint8Array(6);
  private readonly ndTarget = new Uint8Array(16);
  /** The part of the request's UDP payload the echo being built carries, and whether it goes as USO. */
  private chunkOff = 0;
  private chunkLen = 0;
  private chunkGso = false;
  private readonly usoHdr: TxHdr = { flags: HDR.F_NEEDS_CSUM, gsoType: HDR.GSO_UDP_L4, hdrLen: 0, gsoSize: 0, csumStart: 0, csumOffset: 6 };
  /** Source address for an IPv6 reply (ours: global or link-local). */
  private src6: Uint8Array = new Uint8Array(16);
  private naDstIp: Uint8Array = ALL_NODES_6;
  private naDstMac: Uint8Array = BROADCAST_MAC;
  private naFlags = 0;
  private readonly fillArp: (buf: Uint8Array) => void;
  private readonly fillEcho4: (buf: Uint8Array) => void;
  private readonly fillEcho6: (buf: Uint8Array) => void;
  private readonly fillNa: (buf: Uint8Array) => void;
  private readonly fillUdp4: (buf: Uint8Array) => void;
  private readonly fillUdp6: (buf: Uint8Array) => void;

  constructor(cfg: ResponderConfig) {
    if (cfg === null || typeof cfg !== 'object') throw new TypeError('Responder: cfg must be an object');
    if (!(cfg.mac instanceof Uint8Array) || cfg.mac.length !== 6) throw new TypeError('Responder: mac must be a 6-byte Uint8Array');
    if (cfg.mac[0] & 1) throw new RangeError('Responder: mac must be a unicast address (group bit clear)');
    checkAddr('ip4', cfg.ip4, 4);
    checkAddr('ip6', cfg.ip6, 16);
    const minMtu = cfg.ip6 ? 1280 : 68; // RFC 8200 §5, RFC 791
    if (!Number.isInteger(cfg.mtu) || cfg.mtu < minMtu || cfg.mtu > 65535) {
      throw new RangeError(`Responder: mtu must be an integer in ${minMtu}..65535, got ${cfg.mtu}`);
    }
    this.mac = Uint8Array.from(cfg.mac);
    this.mtu = cfg.mtu;
    this.uso = !!cfg.offloads?.uso;
    this.csumOffload = !!cfg.offloads?.csum;
    if (this.uso && !this.csumOffload) throw new Error('Responder: HOST_USO needs CSUM (virtio 1.x §5.1.3.1)');
    this.ip4 = cfg.ip4 ? Uint8Array.from(cfg.ip4.addr) : null;
    this.ip6 = cfg.ip6 ? Uint8Array.from(cfg.ip6.addr) : null;
    this.linkLocal = cfg.ip6 ? linkLocalFromMac(this.mac) : null;
    if (this.ip6 && this.linkLocal) {
      this.accept6.push(this.ip6, this.linkLocal, solicitedNodeMulticast(this.ip6), solicitedNodeMulticast(this.linkLocal), ALL_NODES_6);
    }

    this.fillArp = (buf) => {
      const f = this.req;
      const l3 = encodeEthernet(buf, 0, take(this.peerMac, f, 6), this.mac, ETHERTYPE.ARP, this.eth.tci);
      encodeArp(buf, l3, ARP_OP.REPLY, this.mac, this.ip4!, take(this.arpSha, f, this.arp.sha), take(this.peerIp4, f, this.arp.spa));
    };
    this.fillEcho4 = (buf) => {
      const f = this.req;
      const ic = this.icmp;
      const l3 = encodeEthernet(buf, 0, take(this.peerMac, f, 6), this.mac, ETHERTYPE.IPV4, this.eth.tci);
      const len = ICMP_ECHO_HLEN + ic.dataLen;
      const l4 = encodeIPv4(buf, l3, this.ip4!, take(this.peerIp4, f, this.v4.src), IPPROTO.ICMP, len, 64, this.nextIpId());
      encodeIcmpEchoHeader(buf, l4, ICMP4.ECHO_REPLY, ic.id, ic.seq);
      buf.set(f.subarray(ic.data, ic.data + ic.dataLen), l4 + ICMP_ECHO_HLEN);
      fillIcmp4Checksum(buf, l4, len);
    };
    this.fillEcho6 = (buf) => {
      const f = this.req;
      const ic = this.icmp;
      const l3 = encodeEthernet(buf, 0, take(this.peerMac, f, 6), this.mac, ETHERTYPE.IPV6, this.eth.tci);
      const len = ICMP_ECHO_HLEN + ic.dataLen;
      const l4 = encodeIPv6(buf, l3, this.src6, take(this.peerIp6, f, this.v6.src), IPPROTO.ICMPV6, len, 64);
      encodeIcmpEchoHeader(buf, l4, ICMP6.ECHO_REPLY, ic.id, ic.seq);
      buf.set(f.subarray(ic.data, ic.data + ic.dataLen), l4 + ICMP_ECHO_HLEN);
      fillIcmp6Checksum(buf, l3, l4, len);
    };
    this.fillNa = (buf) => {
      const f = this.req;
      const l3 = encodeEthernet(buf, 0, this.naDstMac, this.mac, ETHERTYPE.IPV6, this.eth.tci);
      const len = ND_HLEN + 8;
      // Hop limit 255 is what receivers check to know the NA was not routed (RFC 4861 §7.1.2).
      const l4 = encodeIPv6(buf, l3, this.src6, this.naDstIp, IPPROTO.ICMPV6, len, 255);
      encodeNa(buf, l4, this.naFlags, take(this.ndTarget, f, this.nd.target), this.mac);
      fillIcmp6Checksum(buf, l3, l4, len);
    };
    this.fillUdp4 = (buf) => {
      const f = this.req;
      const u = this.udp;
      const l3 = encodeEthernet(buf, 0, take(this.peerMac, f, 6), this.mac, ETHERTYPE.IPV4, this.eth.tci);
      const n = this.chunkLen;
      const l4 = encodeIPv4(buf, l3, this.ip4!, take(this.peerIp4, f, this.v4.src), IPPROTO.UDP, UDP_HLEN + n, 64, this.nextIpId());
      encodeUdpHeader(buf, l4, u.dstPort, u.srcPort, n);
      buf.set(f.subarray(this.chunkOff, this.chunkOff + n), l4 + UDP_HLEN);
      if (this.chunkGso) partialUdp4(buf, l3, l4);
      else fillUdp4Checksum(buf, l3, l4);
    };
    this.fillUdp6 = (buf) => {
      const f = this.req;
      const u = this.udp;
      const l3 = encodeEthernet(buf, 0, take(this.peerMac, f, 6), this.mac, ETHERTYPE.IPV6, this.eth.tci);
      const n = this.chunkLen;
      const l4 = encodeIPv6(buf, l3, this.src6, take(this.peerIp6, f, this.v6.src), IPPROTO.UDP, UDP_HLEN + n, 64);
      encodeUdpHeader(buf, l4, u.dstPort, u.srcPort, n);
      buf.set(f.subarray(this.chunkOff, this.chunkOff + n), l4 + UDP_HLEN);
      if (this.chunkGso) partialUdp6(buf, l3, l4);
      else fillUdp6Checksum(buf, l3, l4);
    };
  }

  /** Zeroes every counter. */
  resetStats(): void {
    Object.assign(this.stats, newStats());
  }

  /**
   * Handles one received Ethernet frame (no virtio header) and answers it
   * through `out` if it calls for an answer. `frame` is only read during the call.
   */
  handle(frame: Uint8Array, out: OutFn, csum: CsumMode = 'verify', usoSize = 0): void {
    const s = this.stats;
    s.rx++;
    const eth = decodeEthernet(frame, frame.length, this.eth);
    if (eth === null) {
      s.malformed++;
      return;
    }
    const toUs = bytesEqual(frame, 0, this.mac, 0, 6);
    // Group addresses we take: broadcast (ARP), IPv4 multicast and IPv6
    // multicast; the IP layer then decides whether the group is ours.
    const group = !toUs && ((frame[0] === 0xff && frame[1] === 0xff && frame[2] === 0xff && frame[3] === 0xff && frame[4] === 0xff && frame[5] === 0xff) ||
      (frame[0] === 0x33 && frame[1] === 0x33) ||
      (frame[0] === 0x01 && frame[1] === 0x00 && frame[2] === 0x5e && (frame[3] & 0x80) === 0));
    if (!toUs && !group) {
      s.not_for_us++;
      return;
    }
    this.req = frame;
    const l3 = eth.l3;
    const l3len = frame.length - l3;
    switch (eth.etherType) {
      case ETHERTYPE.ARP:
        return this.onArp(frame, l3, l3len, out);
      case ETHERTYPE.IPV4:
        return this.onIPv4(frame, l3, l3len, out, csum, usoSize);
      case ETHERTYPE.IPV6:
        return this.onIPv6(frame, l3, l3len, out, csum, usoSize);
      default:
        s.unsupported++;
    }
  }

  private onArp(f: Uint8Array, l3: number, len: number, out: OutFn): void {
    const s = this.stats;
    if (this.ip4 === null) {
      s.not_for_us++;
      return;
    }
    const a = decodeArp(f, l3, len, this.arp);
    if (a === null) {
      s.malformed++;
      return;
    }
    if (!bytesEqual(f, a.tpa, this.ip4, 0, 4)) {
      s.not_for_us++;
      return;
    }
    if (a.op !== ARP_OP.REQUEST) {
      s.ignored++;
      return;
    }
    this.send(ethHeaderLen(this.eth.tci) + ARP_LEN, ARP_LEN, this.fillArp, out, 'arp_replies');
  }

  private onIPv4(f: Uint8Array, l3: number, len: number, out: OutFn, csum: CsumMode, usoSize: number): void {
    const s = this.stats;
    if (this.ip4 === null) {
      s.not_for_us++;
      return;
    }
    const ip = decodeIPv4(f, l3, len, this.v4);
    if (ip === null) {
      s.malformed++;
      return;
    }
    if (!checksumOk(f, l3, ip.ihl)) {
      s.bad_checksum++;
      return;
    }
    if (!bytesEqual(f, ip.dst, this.ip4, 0, 4)) {
      s.not_for_us++;
      return;
    }
    if (isFragment(ip.frag)) {
      s.unsupported++;
      return;
    }
    if (ip.proto === IPPROTO.ICMP) {
      const ic = decodeIcmp(f, ip.payload, ip.payloadLen, this.icmp);
      if (ic === null) {
        s.malformed++;
        return;
      }
      if (csum === 'verify' && !l4ChecksumOk4(f, ip)) {
        s.bad_checksum++;
        return;
      }
      if (ic.type !== ICMP4.ECHO_REQUEST || ic.code !== 0) {
        s.ignored++;
        return;
      }
      this.send(ethHeaderLen(this.eth.tci) + IPV4_HLEN + ip.payloadLen, IPV4_HLEN + ip.payloadLen, this.fillEcho4, out, 'icmp4_echo');
    } else if (ip.proto === IPPROTO.UDP) {
      const u = decodeUdp(f, ip.payload, ip.payloadLen, this.udp);
      if (u === null) {
        s.malformed++;
        return;
      }
      if (csum === 'verify' && !l4ChecksumOk4(f, ip)) {
        s.bad_checksum++;
        return;
      }
      if (u.dstPort !== UDP_ECHO_PORT) {
        s.unsupported++;
        return;
      }
      this.echoUdp(IPV4_HLEN, u, usoSize, this.fillUdp4, out);
    } else {
      s.unsupported++;
    }
  }

  private onIPv6(f: Uint8Array, l3: number, len: number, out: OutFn, csum: CsumMode, usoSize: number): void {
    const s = this.stats;
    if (this.ip6 === null || this.linkLocal === null) {
      s.not_for_us++;
      return;
    }
    const ip = decodeIPv6(f, l3, len, this.v6);
    if (ip === null) {
      s.malformed++;
      return;
    }
    let mine = false;
    for (let i = 0; i < this.accept6.length && !mine; i++) mine = bytesEqual(f, ip.dst, this.accept6[i], 0, 16);
    if (!mine) {
      s.not_for_us++;
      return;
    }
    if (ip.nextHeader !== IPPROTO.ICMPV6 && ip.nextHeader !== IPPROTO.UDP) {
      s.unsupported++; // extension headers included: we do not walk them
      return;
    }
    // Answer from the address the peer used; for a group destination, from
    // link-local to link-local peers and from the global address otherwise.
    if (bytesEqual(f, ip.dst, this.ip6, 0, 16)) this.src6 = this.ip6;
    else if (bytesEqual(f, ip.dst, this.linkLocal, 0, 16)) this.src6 = this.linkLocal;
    else this.src6 = f[ip.src] === 0xfe && (f[ip.src + 1] & 0xc0) === 0x80 ? this.linkLocal : this.ip6;

    if (ip.nextHeader === IPPROTO.UDP) {
      const u = decodeUdp(f, ip.payload, ip.payloadLen, this.udp);
      if (u === null) {
        s.malformed++;
        return;
      }
      if (csum === 'verify' && !l4ChecksumOk6(f, ip)) {
        s.bad_checksum++;
        return;
      }
      if (u.dstPort !== UDP_ECHO_PORT || isIPv6Multicast(f, ip.dst)) {
        s.unsupported++;
        return;
      }
      this.echoUdp(IPV6_HLEN, u, usoSize, this.fillUdp6, out);
      return;
    }

    const ic = decodeIcmp(f, ip.payload, ip.payloadLen, this.icmp);
    if (ic === null) {
      s.malformed++;
      return;
    }
    if (csum === 'verify' && !l4ChecksumOk6(f, ip)) {
      s.bad_checksum++;
      return;
    }
    if (ic.type === ICMP6.ECHO_REQUEST && ic.code === 0) {
      const l3out = IPV6_HLEN + ip.payloadLen;
      this.send(ethHeaderLen(this.eth.tci) + l3out, l3out, this.fillEcho6, out, 'icmp6_echo');
    } else if (ic.type === ICMP6.NEIGHBOR_SOLICIT) {
      this.onNs(f, ip, out);
    } else {
      s.ignored++;
    }
  }

  private onNs(f: Uint8Array, ip: Ipv6Info, out: OutFn): void {
    const s = this.stats;
    const nd = decodeNd(f, ip.payload, ip.payloadLen, this.nd);
    // RFC 4861 §7.1.1 validity: not routed, code 0, sane options, unicast target.
    if (nd === null || ip.hopLimit !== 255 || this.icmp.code !== 0 || isIPv6Multicast(f, nd.target)) {
      s.malformed++;
      return;
    }
    const dad = bytesEqual(f, ip.src, UNSPECIFIED_6, 0, 16);
    if (dad && (nd.lladdr >= 0 || f[ip.dst] !== 0xff || f[ip.dst + 1] !== 0x02 || f[ip.dst + 11] !== 0x01 || f[ip.dst + 12] !== 0xff)) {
      s.malformed++;
      return;
    }
    let target: Uint8Array;
    if (bytesEqual(f, nd.target, this.ip6!, 0, 16)) target = this.ip6!;
    else if (bytesEqual(f, nd.target, this.linkLocal!, 0, 16)) target = this.linkLocal!;
    else {
      s.not_for_us++;
      return;
    }
    this.src6 = target;
    if (dad) {
      // Someone is probing for our address: defend it to all nodes, unsolicited (RFC 4861 §7.2.4).
      this.naDstIp = ALL_NODES_6;
      this.naDstMac = ALL_NODES_MAC;
      this.naFlags = NA_FLAG.OVERRIDE;
    } else {
      this.naDstIp = f.subarray(ip.src, ip.src + 16);
      this.naDstMac = nd.lladdr >= 0 ? f.subarray(nd.lladdr, nd.lladdr + 6) : f.subarray(6, 12);
      this.naFlags = NA_FLAG.SOLICITED | NA_FLAG.OVERRIDE;
    }
    const l3out = IPV6_HLEN + ND_HLEN + 8;
    this.send(ethHeaderLen(this.eth.tci) + l3out, l3out, this.fillNa, out, 'nd_adverts');
  }

  /** UDP echo of the request in this.udp: whole, per USO datagram, or as one USO super-frame. */
  private echoUdp(ipHlen: number, u: UdpInfo, usoSize: number, fill: (buf: Uint8Array) => void, out: OutFn): void {
    const eth = ethHeaderLen(this.eth.tci);
    if (usoSize > 0 && u.payloadLen > usoSize) {
      this.stats.uso_rx++;
      if (this.uso) {
        this.chunkOff = u.payload;
        this.chunkLen = u.payloadLen;
        this.chunkGso = true;
        const h = this.usoHdr;
        h.hdrLen = eth + ipHlen + UDP_HLEN;
        h.csumStart = eth + ipHlen;
        h.gsoSize = usoSize;
        // The limit is the 16-bit IP length, not the MTU: the kernel cuts it into datagrams of gso_size.
        const l3 = ipHlen + UDP_HLEN + u.payloadLen;
        if (out(eth + l3, fill, h)) {
          this.stats.udp_echo++;
          this.stats.uso_tx++;
        } else this.stats.tx_ring_full++;
        return;
      }
      for (let o = 0; o < u.payloadLen; o += usoSize) {
        this.chunkOff = u.payload + o;
        this.chunkLen = Math.min(usoSize, u.payloadLen - o);
        this.chunkGso = false;
        const l3 = ipHlen + UDP_HLEN + this.chunkLen;
        this.send(eth + l3, l3, fill, out, 'udp_echo');
      }
      return;
    }
    this.chunkOff = u.payload;
    this.chunkLen = u.payloadLen;
    this.chunkGso = false;
    const l3 = ipHlen + UDP_HLEN + u.payloadLen;
    this.send(eth + l3, l3, fill, out, 'udp_echo');
  }

  private send(
    frameLen: number,
    l3Len: number,
    fill: (buf: Uint8Array) => void,
    out: OutFn,
    kind: 'arp_replies' | 'icmp4_echo' | 'icmp6_echo' | 'nd_adverts' | 'udp_echo',
  ): void {
    if (l3Len > this.mtu) {
      this.stats.too_big++;
      return;
    }
    if (out(frameLen, fill)) this.stats[kind]++;
    else this.stats.tx_ring_full++;
  }

  private nextIpId(): number {
    const id = this.ipId;
    this.ipId = (this.ipId + 1) & 0xffff;
    return id;
  }

  // ------------------------------------------------------------ originating traffic

  /**
   * Writes a complete Ethernet/IP/UDP frame from us to `dst` into `buf` (IPv4
   * or IPv6 by the length of `dst.ip`) and returns its length. Throws when the
   * packet would exceed the MTU or the family is not configured.
   */
  buildUdp(buf: Uint8Array, dst: { mac: Uint8Array; ip: Uint8Array; port: number }, srcPort: number, payload: Uint8Array, tci = -1): number {
    const v = this.family(dst.ip, 'buildUdp');
    this.checkMtu(v, UDP_HLEN + payload.length, 'buildUdp');
    const src = v === 4 ? this.ip4! : this.sourceFor6(dst.ip);
    return encodeUdpFrame(buf, {
      srcMac: this.mac,
      dstMac: dst.mac,
      srcIp: src,
      dstIp: dst.ip,
      srcPort,
      dstPort: dst.port,
      payload,
      tci: tci >= 0 ? tci : undefined,
      ipId: v === 4 ? this.nextIpId() : 0,
    });
  }

  /** Frame length buildUdp() will produce. */
  udpFrameLen(dstIp: Uint8Array, payloadLen: number, tci = -1): number {
    return udpFrameLen(dstIp.length === 4 ? 4 : 6, payloadLen, tci);
  }

  /**
   * buildUdp() into a TX buffer from `out`; false (and tx_ring_full counted)
   * when none is free. With HOST_USO negotiated, a payload too big for the
   * MTU goes as one USO super-frame that the device side cuts into datagrams
   * of `gsoSize` bytes (default: the most one MTU-sized packet carries).
   */
  sendUdp(out: OutFn, dst: { mac: Uint8Array; ip: Uint8Array; port: number }, srcPort: number, payload: Uint8Array, tci = -1, gsoSize?: number): boolean {
    const len = this.udpFrameLen(dst.ip, payload.length, tci);
    const v = this.family(dst.ip, 'sendUdp');
    const ipH = v === 4 ? IPV4_HLEN : IPV6_HLEN;
    const seg = gsoSize ?? this.mtu - ipH - UDP_HLEN;
    if (this.uso && (ipH + UDP_HLEN + payload.length > this.mtu || (gsoSize !== undefined && payload.length > gsoSize))) {
      if (!Number.isInteger(seg) || seg < 1 || ipH + UDP_HLEN + seg > this.mtu) throw new RangeError(`sendUdp: gso_size ${seg} does not fit the MTU of ${this.mtu}`);
      if (UDP_HLEN + payload.length > 0xffff - (v === 4 ? IPV4_HLEN : 0)) throw new RangeError(`sendUdp: ${payload.length}-byte USO payload exceeds the 16-bit IP length`);
      const eth = ethHeaderLen(tci);
      const h: TxHdr = { flags: HDR.F_NEEDS_CSUM, gsoType: HDR.GSO_UDP_L4, hdrLen: eth + ipH + UDP_HLEN, gsoSize: seg, csumStart: eth + ipH, csumOffset: 6 };
      const ok = out(
        len,
        (buf) => {
          const l3 = encodeEthernet(buf, 0, dst.mac, this.mac, v === 4 ? ETHERTYPE.IPV4 : ETHERTYPE.IPV6, tci);
          const udpLen = UDP_HLEN + payload.length;
          const l4 =
            v === 4
              ? encodeIPv4(buf, l3, this.ip4!, dst.ip, IPPROTO.UDP, udpLen, 64, this.nextIpId())
              : encodeIPv6(buf, l3, this.sourceFor6(dst.ip), dst.ip, IPPROTO.UDP, udpLen, 64);
          encodeUdpHeader(buf, l4, srcPort, dst.port, payload.length);
          buf.set(payload, l4 + UDP_HLEN);
          if (v === 4) partialUdp4(buf, l3, l4);
          else partialUdp6(buf, l3, l4);
        },
        h,
      );
      if (ok) this.stats.uso_tx++;
      else this.stats.tx_ring_full++;
      return ok;
    }
    this.checkMtu(dst.ip.length === 4 ? 4 : 6, UDP_HLEN + payload.length, 'sendUdp');
    const ok = out(len, (buf) => {
      this.buildUdp(buf, dst, srcPort, payload, tci);
    });
    if (!ok) this.stats.tx_ring_full++;
    return ok;
  }

  /**
   * Writes an ICMP (v4) or ICMPv6 echo request to `dst` carrying `payloadLen`
   * bytes of a counting pattern; returns the frame length.
   */
  buildPing(buf: Uint8Array, dst: { mac: Uint8Array; ip: Uint8Array }, id: number, seq: number, payloadLen: number, tci = -1): number {
    const v = this.family(dst.ip, 'buildPing');
    const icmpLen = ICMP_ECHO_HLEN + payloadLen;
    this.checkMtu(v, icmpLen, 'buildPing');
    const total = ethHeaderLen(tci) + (v === 4 ? IPV4_HLEN : IPV6_HLEN) + icmpLen;
    if (buf.length < total) throw new RangeError(`buildPing: buffer of ${buf.length} bytes is smaller than the ${total}-byte frame`);
    const l3 = encodeEthernet(buf, 0, dst.mac, this.mac, v === 4 ? ETHERTYPE.IPV4 : ETHERTYPE.IPV6, tci);
    const l4 =
      v === 4
        ? encodeIPv4(buf, l3, this.ip4!, dst.ip, IPPROTO.ICMP, icmpLen, 64, this.nextIpId())
        : encodeIPv6(buf, l3, this.sourceFor6(dst.ip), dst.ip, IPPROTO.ICMPV6, icmpLen, 64);
    const data = encodeIcmpEchoHeader(buf, l4, v === 4 ? ICMP4.ECHO_REQUEST : ICMP6.ECHO_REQUEST, id, seq);
    for (let i = 0; i < payloadLen; i++) buf[data + i] = i & 0xff;
    if (v === 4) fillIcmp4Checksum(buf, l4, icmpLen);
    else fillIcmp6Checksum(buf, l3, l4, icmpLen);
    return total;
  }

  private family(ip: Uint8Array, who: string): 4 | 6 {
    if (ip.length === 4) {
      if (this.ip4 === null) throw new Error(`${who}: no IPv4 address configured`);
      return 4;
    }
    if (ip.length === 16) {
      if (this.ip6 === null) throw new Error(`${who}: no IPv6 address configured`);
      return 6;
    }
    throw new TypeError(`${who}: destination IP must be 4 or 16 bytes, got ${ip.length}`);
  }

  private checkMtu(v: 4 | 6, l4Len: number, who: string): void {
    const l3 = (v === 4 ? IPV4_HLEN : IPV6_HLEN) + l4Len;
    if (l3 > this.mtu) throw new RangeError(`${who}: ${l3}-byte IP packet exceeds the MTU of ${this.mtu}`);
  }

  private sourceFor6(dst: Uint8Array): Uint8Array {
    return dst[0] === 0xfe && (dst[1] & 0xc0) === 0x80 ? this.linkLocal! : this.ip6!;
  }
}

/**
 * The UDP checksum field of a partial-checksum (NEEDS_CSUM) datagram: the
 * folded pseudo-header sum, not complemented, over the whole (super-)datagram
 * length — the kernel's USO adjusts it per datagram, like Linux's own sends.
 */
function partialUdp4(b: Uint8Array, ip4: number, l4: number): void {
  const len = get16(b, l4 + 4);
  put16(b, l4 + 6, csumFold(pseudoSum4(b, ip4 + 12, b, ip4 + 16, IPPROTO.UDP, len)));
}

function partialUdp6(b: Uint8Array, ip6: number, l4: number): void {
  const len = get16(b, l4 + 4);
  put16(b, l4 + 6, csumFold(pseudoSum6(b, ip6 + 8, b, ip6 + 24, IPPROTO.UDP, len)));
}
