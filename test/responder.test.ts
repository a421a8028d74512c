// Unit tests for guest-sim's Responder: every reply is checked byte by byte
// (addresses swapped, checksums valid against a naive reference, payload
// echoed), and every frame it must not answer is counted under the right kind.

import test from 'ava';
import * as P from '../guest-sim/packets';
import { Responder, type OutFn, type ResponderStats } from '../guest-sim/responder';

const OUR_MAC = P.parseMac('52:54:00:12:34:56');
const OUR_IP4 = P.parseIPv4('10.0.0.2');
const OUR_IP6 = P.parseIPv6('fd00::2');
const OUR_LL = P.parseIPv6('fe80::5054:ff:fe12:3456');
const PEER_MAC = P.parseMac('02:aa:bb:cc:dd:01');
const PEER_IP4 = P.parseIPv4('10.0.0.1');
const PEER_IP6 = P.parseIPv6('fd00::1');
const PEER_LL = P.parseIPv6('fe80::aa:bbff:fecc:dd01');

function refChecksum(bytes: ArrayLike<number>): number {
  let sum = 0;
  for (let i = 0; i < bytes.length; i += 2) {
    sum += (bytes[i] << 8) + (i + 1 < bytes.length ? bytes[i + 1] : 0);
    if (sum > 0xffff) sum = (sum & 0xffff) + 1;
  }
  return ~sum & 0xffff;
}

/** Checksum over a literal pseudo-header followed by the L4 bytes: 0 when valid. */
function refL4(v: 4 | 6, src: Uint8Array, dst: Uint8Array, proto: number, l4: Uint8Array): number {
  const n = l4.length;
  const pseudo = v === 4 ? [...src, ...dst, 0, proto, n >> 8, n & 0xff] : [...src, ...dst, 0, 0, n >> 8, n & 0xff, 0, 0, 0, proto];
  return refChecksum([...pseudo, ...l4]);
}

function pattern(n: number, seed = 0): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed * 7 + 1) & 0xff;
  return b;
}

function mkResponder(mtu = 1500, withIp6 = true): Responder {
  return new Responder({
    mac: OUR_MAC,
    ip4: { addr: OUR_IP4, prefix: 24 },
    ip6: withIp6 ? { addr: OUR_IP6, prefix: 64 } : undefined,
    mtu,
  });
}

/**
 * A TX path backed by a SharedArrayBuffer, like guest memory: fill() writes
 * into a reused region that starts full of junk, so any byte the responder
 * forgets to write shows up.
 */
function txRing(capacity = Infinity) {
  const mem = new Uint8Array(new SharedArrayBuffer(70000));
  const sent: Uint8Array[] = [];
  const out: OutFn = (len, fill) => {
    if (sent.length >= capacity) return false;
    mem.fill(0xa5);
    fill(mem.subarray(0, len));
    sent.push(Uint8Array.from(mem.subarray(0, len)));
    return true;
  };
  return { out, sent };
}

function only(stats: ResponderStats, want: Partial<ResponderStats>): Record<string, number> {
  const nonzero: Record<string, number> = {};
  for (const [k, v] of Object.entries(stats)) if (v !== 0 && k !== 'rx') nonzero[k] = v;
  return { ...nonzero, ...Object.fromEntries(Object.entries(want).filter(([k]) => !(k in nonzero))) };
}

// ------------------------------------------------------------ request builders

function arpRequest(tpa: Uint8Array, opts: { dst?: Uint8Array; tci?: number; pad?: boolean; op?: number } = {}): Uint8Array {
  const f = new Uint8Array(opts.pad ? 60 : P.ethHeaderLen(opts.tci) + 28);
  const l3 = P.encodeEthernet(f, 0, opts.dst ?? P.BROADCAST_MAC, PEER_MAC, P.ETHERTYPE.ARP, opts.tci);
  P.encodeArp(f, l3, opts.op ?? P.ARP_OP.REQUEST, PEER_MAC, PEER_IP4, new Uint8Array(6), tpa);
  return f;
}

function ping4(dataLen: number, opts: { dstIp?: Uint8Array; dstMac?: Uint8Array; id?: number; seq?: number } = {}): Uint8Array {
  const f = new Uint8Array(14 + 20 + 8 + dataLen);
  const l3 = P.encodeEthernet(f, 0, opts.dstMac ?? OUR_MAC, PEER_MAC, P.ETHERTYPE.IPV4);
  const l4 = P.encodeIPv4(f, l3, PEER_IP4, opts.dstIp ?? OUR_IP4, P.IPPROTO.ICMP, 8 + dataLen, 64, 77);
  P.encodeIcmpEchoHeader(f, l4, P.ICMP4.ECHO_REQUEST, opts.id ?? 0x1234, opts.seq ?? 1);
  f.set(pattern(dataLen, 1), l4 + 8);
  P.fillIcmp4Checksum(f, l4, 8 + dataLen);
  return f;
}

function udp(v: 4 | 6, payload: Uint8Array, opts: { dstPort?: number; dstIp?: Uint8Array; srcIp?: Uint8Array; tci?: number } = {}): Uint8Array {
  const spec = {
    srcMac: PEER_MAC,
    dstMac: OUR_MAC,
    srcIp: opts.srcIp ?? (v === 4 ? PEER_IP4 : PEER_IP6),
    dstIp: opts.dstIp ?? (v === 4 ? OUR_IP4 : OUR_IP6),
    srcPort: 40001,
    dstPort: opts.dstPort ?? 7,
    payload,
    tci: opts.tci,
  };
  const f = new Uint8Array(P.udpFrameLen(v, payload.length, opts.tci));
  P.encodeUdpFrame(f, spec);
  return f;
}

function ping6(dataLen: number, opts: { src?: Uint8Array; dst?: Uint8Array; dstMac?: Uint8Array } = {}): Uint8Array {
  const f = new Uint8Array(14 + 40 + 8 + dataLen);
  const l3 = P.encodeEthernet(f, 0, opts.dstMac ?? OUR_MAC, PEER_MAC, P.ETHERTYPE.IPV6);
  const l4 = P.encodeIPv6(f, l3, opts.src ?? PEER_IP6, opts.dst ?? OUR_IP6, P.IPPROTO.ICMPV6, 8 + dataLen, 64);
  P.encodeIcmpEchoHeader(f, l4, P.ICMP6.ECHO_REQUEST, 0x4242, 9);
  f.set(pattern(dataLen, 2), l4 + 8);
  P.fillIcmp6Checksum(f, l3, l4, 8 + dataLen);
  return f;
}

function ns(target: Uint8Array, opts: { src?: Uint8Array; dst?: Uint8Array; hopLimit?: number; slla?: boolean } = {}): Uint8Array {
  const slla = opts.slla ?? true;
  const icmpLen = slla ? 32 : 24;
  const dst = opts.dst ?? P.solicitedNodeMulticast(target);
  // encodeNs always writes the SLLA option; without one the frame simply ends before it.
  const room = new Uint8Array(14 + 40 + 32);
  const f = room.subarray(0, 14 + 40 + icmpLen);
  const l3 = P.encodeEthernet(f, 0, P.multicastMac6(dst), PEER_MAC, P.ETHERTYPE.IPV6);
  const l4 = P.encodeIPv6(f, l3, opts.src ?? PEER_IP6, dst, P.IPPROTO.ICMPV6, icmpLen, opts.hopLimit ?? 255);
  P.encodeNs(room, l4, target, PEER_MAC);
  P.fillIcmp6Checksum(f, l3, l4, icmpLen);
  return f;
}

// ------------------------------------------------------------ tests

test('config is validated', (t) => {
  t.notThrows(() => mkResponder());
  t.throws(() => new Responder({ mac: new Uint8Array(5), mtu: 1500 }), { instanceOf: TypeError, message: /mac/ });
  t.throws(() => new Responder({ mac: P.parseMac('01:00:5e:00:00:01'), mtu: 1500 }), { message: /unicast/ });
  t.throws(() => new Responder({ mac: OUR_MAC, ip4: { addr: new Uint8Array(16), prefix: 24 }, mtu: 1500 }), { message: /ip4.addr/ });
  t.throws(() => new Responder({ mac: OUR_MAC, ip4: { addr: OUR_IP4, prefix: 33 }, mtu: 1500 }), { message: /ip4.prefix/ });
  t.throws(() => new Responder({ mac: OUR_MAC, ip6: { addr: OUR_IP6, prefix: 64 }, mtu: 1000 }), { message: /mtu must be an integer in 1280/ });
  t.throws(() => new Responder({ mac: OUR_MAC, mtu: 70000 }), { instanceOf: RangeError });
  const r = mkResponder();
  t.deepEqual(r.linkLocal, OUR_LL);
});

test('ARP request for our address gets an exact reply; padding and tags handled', (t) => {
  const r = mkResponder();
  const { out, sent } = txRing();
  r.handle(arpRequest(OUR_IP4, { pad: true }), out);
  t.is(sent.length, 1);
  const expect = '02aabbccdd01 525400123456 0806 0001 0800 06 04 0002 525400123456 0a000002 02aabbccdd01 0a000001';
  t.is(Buffer.from(sent[0]).toString('hex'), expect.replace(/ /g, ''));
  t.is(sent[0].length, 42, 'no Ethernet padding added');

  r.handle(arpRequest(OUR_IP4, { tci: 0x0005 }), out);
  t.is(sent.length, 2);
  t.deepEqual(sent[1].subarray(12, 18), Uint8Array.from([0x81, 0x00, 0x00, 0x05, 0x08, 0x06]), 'reply keeps the VLAN tag');
  t.is(sent[1].length, 46);

  r.handle(arpRequest(P.parseIPv4('10.0.0.3')), out);
  r.handle(arpRequest(OUR_IP4, { op: P.ARP_OP.REPLY, dst: OUR_MAC }), out);
  t.is(sent.length, 2);
  t.deepEqual(only(r.stats, {}), { arp_replies: 2, not_for_us: 1, ignored: 1 });
  t.is(r.stats.rx, 4);
});

test('ICMPv4 echo: reply for every size 0..1472, addresses swapped, checksums valid, payload echoed', (t) => {
  const r = mkResponder();
  const { out, sent } = txRing();
  let bad = 0;
  for (let n = 0; n <= 1472; n++) {
    const req = ping4(n, { id: 0xabcd, seq: n });
    r.handle(req, out);
    const rep = sent[sent.length - 1];
    const ok =
      sent.length === n + 1 &&
      rep.length === req.length &&
      P.bytesEqual(rep, 0, PEER_MAC, 0, 6) &&
      P.bytesEqual(rep, 6, OUR_MAC, 0, 6) &&
      P.get16(rep, 12) === 0x0800 &&
      refChecksum(rep.subarray(14, 34)) === 0 &&
      P.get16(rep, 16) === 28 + n &&
      rep[23] === 1 &&
      P.bytesEqual(rep, 26, OUR_IP4, 0, 4) &&
      P.bytesEqual(rep, 30, PEER_IP4, 0, 4) &&
      rep[34] === 0 &&
      rep[35] === 0 &&
      P.get16(rep, 38) === 0xabcd &&
      P.get16(rep, 40) === n &&
      refChecksum(rep.subarray(34)) === 0 &&
      P.bytesEqual(rep, 42, req, 42, n);
    if (!ok) bad++;
  }
  t.is(bad, 0);
  t.deepEqual(only(r.stats, {}), { icmp4_echo: 1473 });
});

test('UDP echo over IPv4 and IPv6 for every payload size 1..1472 (1452 on v6)', (t) => {
  for (const v of [4, 6] as const) {
    const r = mkResponder();
    const { out, sent } = txRing();
    const max = v === 4 ? 1472 : 1452;
    const l4 = 14 + (v === 4 ? 20 : 40);
    const ourIp = v === 4 ? OUR_IP4 : OUR_IP6;
    const peerIp = v === 4 ? PEER_IP4 : PEER_IP6;
    const alen = v === 4 ? 4 : 16;
    const srcOff = v === 4 ? 26 : 22;
    let bad = 0;
    for (let n = 1; n <= max; n++) {
      const payload = pattern(n, n);
      r.handle(udp(v, payload), out);
      const rep = sent[sent.length - 1];
      const ok =
        sent.length === n &&
        rep.length === l4 + 8 + n &&
        P.bytesEqual(rep, 0, PEER_MAC, 0, 6) &&
        P.bytesEqual(rep, 6, OUR_MAC, 0, 6) &&
        P.bytesEqual(rep, srcOff, ourIp, 0, alen) &&
        P.bytesEqual(rep, srcOff + alen, peerIp, 0, alen) &&
        (v === 6 || refChecksum(rep.subarray(14, 34)) === 0) &&
        P.get16(rep, l4) === 7 &&
        P.get16(rep, l4 + 2) === 40001 &&
        P.get16(rep, l4 + 4) === 8 + n &&
        P.get16(rep, l4 + 6) !== 0 &&
        refL4(v, ourIp, peerIp, 17, rep.subarray(l4)) === 0 &&
        P.bytesEqual(rep, l4 + 8, payload, 0, n);
      if (!ok) bad++;
    }
    t.is(bad, 0, `v${v}`);
    t.deepEqual(only(r.stats, {}), { udp_echo: max });
  }
});

test('UDP: zero checksum accepted on IPv4 only; other ports unsupported; replies over the MTU not sent', (t) => {
  const r = mkResponder();
  const { out, sent } = txRing();
  const f4 = udp(4, pattern(10));
  P.put16(f4, 34 + 6, 0);
  r.handle(f4, out);
  t.is(sent.length, 1);
  t.is(refL4(4, OUR_IP4, PEER_IP4, 17, sent[0].subarray(34)), 0, 'our reply always carries a checksum');
  const f6 = udp(6, pattern(10));
  P.put16(f6, 54 + 6, 0);
  r.handle(f6, out);
  r.handle(udp(4, pattern(10), { dstPort: 9 }), out);
  r.handle(udp(4, pattern(1473)), out); // 1501-byte IP packet in, same size out
  t.is(sent.length, 1);
  t.deepEqual(only(r.stats, {}), { udp_echo: 1, bad_checksum: 1, unsupported: 1, too_big: 1 });
});

test('bad checksums are counted and not answered, unless the virtio header said trust', (t) => {
  const r = mkResponder();
  const { out, sent } = txRing();
  const badIp = ping4(8);
  badIp[14 + 10] ^= 0xff;
  r.handle(badIp, out);
  r.handle(badIp, out, 'trust'); // the IPv4 header checksum is never covered by the virtio flags
  const badIcmp = ping4(8);
  badIcmp[34 + 2] ^= 0x01;
  r.handle(badIcmp, out);
  const badUdp = udp(4, pattern(20));
  badUdp[34 + 8] ^= 0x40;
  r.handle(badUdp, out);
  const badUdp6 = udp(6, pattern(20));
  badUdp6[54 + 8] ^= 0x40;
  r.handle(badUdp6, out);
  const badPing6 = ping6(16);
  badPing6[54 + 3] ^= 0x10;
  r.handle(badPing6, out);
  t.is(sent.length, 0);
  t.deepEqual(only(r.stats, {}), { bad_checksum: 6 });

  // NEEDS_CSUM-style frames: the L4 field holds a partial sum; the reply must still be complete.
  const partial = udp(4, pattern(33));
  P.put16(partial, 34 + 6, 0x1234);
  r.handle(partial, out, 'trust');
  const partial6 = ping6(5);
  P.put16(partial6, 54 + 2, 0xffff);
  r.handle(partial6, out, 'trust');
  t.is(sent.length, 2);
  t.is(refL4(4, OUR_IP4, PEER_IP4, 17, sent[0].subarray(34)), 0);
  t.is(refL4(6, OUR_IP6, PEER_IP6, 58, sent[1].subarray(54)), 0);
  t.is(r.stats.udp_echo, 1);
  t.is(r.stats.icmp6_echo, 1);
});

test('IPv6 NS for our global address gets a solicited, override NA with TLLA', (t) => {
  const r = mkResponder();
  const { out, sent } = txRing();
  const req = ns(OUR_IP6);
  t.deepEqual(req.subarray(0, 6), Uint8Array.from([0x33, 0x33, 0xff, 0x00, 0x00, 0x02]));
  r.handle(req, out);
  t.is(sent.length, 1);
  const na = sent[0];
  t.is(na.length, 14 + 40 + 32);
  t.deepEqual(na.subarray(0, 6), PEER_MAC);
  t.deepEqual(na.subarray(6, 12), OUR_MAC);
  t.is(P.get16(na, 12), 0x86dd);
  t.is(na[14] >> 4, 6);
  t.is(P.get16(na, 18), 32);
  t.is(na[20], 58);
  t.is(na[21], 255, 'hop limit 255');
  t.deepEqual(na.subarray(22, 38), OUR_IP6);
  t.deepEqual(na.subarray(38, 54), PEER_IP6);
  t.is(na[54], 136);
  t.is(na[55], 0);
  t.is(na[58], 0x60, 'solicited + override, not router');
  t.deepEqual(na.subarray(59, 62), new Uint8Array(3));
  t.deepEqual(na.subarray(62, 78), OUR_IP6);
  t.deepEqual(Array.from(na.subarray(78, 80)), [2, 1]);
  t.deepEqual(na.subarray(80, 86), OUR_MAC);
  t.is(refL4(6, OUR_IP6, PEER_IP6, 58, na.subarray(54)), 0);
  t.deepEqual(only(r.stats, {}), { nd_adverts: 1 });
});

test('NS for our link-local, DAD probes, and invalid or foreign NS', (t) => {
  const r = mkResponder();
  const { out, sent } = txRing();
  r.handle(ns(OUR_LL, { src: PEER_LL }), out);
  t.is(sent.length, 1);
  t.deepEqual(sent[0].subarray(22, 38), OUR_LL, 'NA comes from the target address');
  t.deepEqual(sent[0].subarray(38, 54), PEER_LL);
  t.deepEqual(sent[0].subarray(62, 78), OUR_LL);
  t.is(refL4(6, OUR_LL, PEER_LL, 58, sent[0].subarray(54)), 0);

  // NS sent unicast to our address (neighbour unreachability detection) and without SLLA.
  r.handle(ns(OUR_IP6, { dst: OUR_IP6, slla: false }), out);
  t.is(sent.length, 2);
  t.deepEqual(sent[1].subarray(0, 6), PEER_MAC, 'falls back to the Ethernet source');

  // DAD: unspecified source, no SLLA; we defend to all-nodes without the solicited flag.
  r.handle(ns(OUR_IP6, { src: P.UNSPECIFIED_6, slla: false }), out);
  t.is(sent.length, 3);
  const dad = sent[2];
  t.deepEqual(Array.from(dad.subarray(0, 6)), [0x33, 0x33, 0, 0, 0, 1]);
  t.deepEqual(dad.subarray(38, 54), P.ALL_NODES_6);
  t.is(dad[58], 0x20);
  t.is(refL4(6, OUR_IP6, P.ALL_NODES_6, 58, dad.subarray(54)), 0);

  r.handle(ns(OUR_IP6, { hopLimit: 64 }), out); // routed: invalid
  r.handle(ns(OUR_IP6, { src: P.UNSPECIFIED_6, slla: true }), out); // DAD with SLLA: invalid
  r.handle(ns(P.parseIPv6('fd00::99'), { dst: P.solicitedNodeMulticast(OUR_IP6) }), out); // someone else's target
  r.handle(ns(P.parseIPv6('fd00::99')), out); // a group we are not in
  t.is(sent.length, 3);
  t.deepEqual(only(r.stats, {}), { nd_adverts: 3, malformed: 2, not_for_us: 2 });
});

test('ICMPv6 echo: global, link-local and all-nodes destinations', (t) => {
  const r = mkResponder();
  const { out, sent } = txRing();
  for (const n of [0, 1, 7, 100, 1452]) {
    const req = ping6(n);
    r.handle(req, out);
    const rep = sent[sent.length - 1];
    t.is(rep.length, req.length);
    t.deepEqual(rep.subarray(0, 6), PEER_MAC);
    t.deepEqual(rep.subarray(22, 38), OUR_IP6);
    t.deepEqual(rep.subarray(38, 54), PEER_IP6);
    t.is(rep[54], 129);
    t.is(P.get16(rep, 58), 0x4242);
    t.is(P.get16(rep, 60), 9);
    t.deepEqual(rep.subarray(62), req.subarray(62));
    t.is(refL4(6, OUR_IP6, PEER_IP6, 58, rep.subarray(54)), 0);
  }
  r.handle(ping6(4, { src: PEER_LL, dst: OUR_LL }), out);
  t.deepEqual(sent[sent.length - 1].subarray(22, 38), OUR_LL);
  r.handle(ping6(4, { src: PEER_LL, dst: P.ALL_NODES_6, dstMac: P.parseMac('33:33:00:00:00:01') }), out);
  t.deepEqual(sent[sent.length - 1].subarray(22, 38), OUR_LL, 'link-local peer on a group: answered from link-local');
  t.is(refL4(6, OUR_LL, PEER_LL, 58, sent[sent.length - 1].subarray(54)), 0);
  t.deepEqual(only(r.stats, {}), { icmp6_echo: 7 });
});

test('frames not for us are ignored and counted', (t) => {
  const r = mkResponder();
  const { out, sent } = txRing();
  r.handle(ping4(8, { dstMac: P.parseMac('52:54:00:99:99:99') }), out); // other unicast MAC
  r.handle(ping4(8, { dstMac: P.parseMac('01:80:c2:00:00:0e') }), out); // LLDP group, not IP multicast
  r.handle(ping4(8, { dstIp: P.parseIPv4('10.0.0.3') }), out); // our MAC, other IP
  r.handle(udp(6, pattern(4), { dstIp: P.parseIPv6('fd00::3') }), out);
  r.handle(ping4(8, { dstMac: P.parseMac('01:00:5e:00:00:01'), dstIp: P.parseIPv4('224.0.0.1') }), out); // a group we are not in
  t.is(sent.length, 0);
  t.deepEqual(only(r.stats, {}), { not_for_us: 5 });

  const v4only = mkResponder(1500, false);
  v4only.handle(ping6(8), out);
  v4only.handle(ns(OUR_IP6), out);
  t.is(sent.length, 0);
  t.is(v4only.stats.not_for_us, 2);
});

test('unsupported and malformed frames are counted, never answered', (t) => {
  const r = mkResponder();
  const { out, sent } = txRing();
  const lldp = new Uint8Array(60);
  P.encodeEthernet(lldp, 0, OUR_MAC, PEER_MAC, 0x88cc);
  r.handle(lldp, out);
  const frag = ping4(8);
  frag[14 + 6] = 0x20; // more fragments
  P.put16(frag, 14 + 10, 0);
  P.put16(frag, 14 + 10, P.checksum(frag, 14, 20));
  r.handle(frag, out);
  const tcp = ping4(8);
  tcp[14 + 9] = 6;
  P.put16(tcp, 14 + 10, 0);
  P.put16(tcp, 14 + 10, P.checksum(tcp, 14, 20));
  r.handle(tcp, out);
  const ext = ping6(8);
  ext[14 + 6] = 0; // hop-by-hop options header: not walked
  r.handle(ext, out);
  t.deepEqual(only(r.stats, {}), { unsupported: 4 });

  r.handle(new Uint8Array(10), out);
  r.handle(ping4(8).subarray(0, 30), out);
  const short = ping4(8);
  P.put16(short, 14 + 2, 200); // total length past the frame
  P.put16(short, 14 + 10, 0);
  P.put16(short, 14 + 10, P.checksum(short, 14, 20));
  r.handle(short, out);
  r.handle(arpRequest(OUR_IP4).subarray(0, 30), out);
  t.is(sent.length, 0);
  t.is(r.stats.malformed, 4);
  t.is(r.stats.rx, 8);
  r.resetStats();
  t.is(r.stats.rx, 0);
});

test('a full TX ring counts tx_ring_full instead of a reply', (t) => {
  const r = mkResponder();
  const { out, sent } = txRing(1);
  r.handle(ping4(8), out);
  r.handle(ping4(8), out);
  r.handle(arpRequest(OUR_IP4), out);
  t.is(sent.length, 1);
  t.deepEqual(only(r.stats, {}), { icmp4_echo: 1, tx_ring_full: 2 });
});

test('a smaller MTU caps replies', (t) => {
  const r = mkResponder(576, false);
  const { out, sent } = txRing();
  r.handle(ping4(548), out); // 576-byte IP packet
  r.handle(ping4(549), out);
  t.is(sent.length, 1);
  t.deepEqual(only(r.stats, {}), { icmp4_echo: 1, too_big: 1 });
});

test('buildUdp / sendUdp / buildPing originate frames another responder answers', (t) => {
  const guest = mkResponder();
  const peer = new Responder({ mac: PEER_MAC, ip4: { addr: PEER_IP4, prefix: 24 }, ip6: { addr: PEER_IP6, prefix: 64 }, mtu: 1500 });
  const buf = new Uint8Array(2000);
  const toPeer4 = { mac: PEER_MAC, ip: PEER_IP4, port: 7 };
  const toPeer6 = { mac: PEER_MAC, ip: PEER_IP6, port: 7 };
  const { out, sent } = txRing();

  const len = guest.buildUdp(buf, toPeer4, 5555, pattern(100));
  t.is(len, guest.udpFrameLen(PEER_IP4, 100));
  peer.handle(buf.subarray(0, len), out);
  t.is(peer.stats.udp_echo, 1);
  guest.handle(sent[0], out); // the echo reaches a port we do not serve
  t.is(guest.stats.unsupported, 1);

  t.true(guest.sendUdp(out, toPeer6, 5555, pattern(1452)));
  peer.handle(sent[1], out);
  t.is(peer.stats.udp_echo, 2);
  t.is(refL4(6, PEER_IP6, OUR_IP6, 17, sent[2].subarray(54)), 0);

  const p4 = guest.buildPing(buf, { mac: PEER_MAC, ip: PEER_IP4 }, 1, 2, 56);
  peer.handle(buf.subarray(0, p4), out);
  const p6 = guest.buildPing(buf, { mac: PEER_MAC, ip: PEER_LL }, 1, 2, 56);
  t.deepEqual(buf.subarray(22, 38), OUR_LL, 'link-local destination: link-local source');
  peer.handle(buf.subarray(0, p6), out);
  t.is(peer.stats.icmp4_echo, 1);
  t.is(peer.stats.icmp6_echo, 1);
  guest.handle(sent[3], out);
  guest.handle(sent[4], out);
  t.is(guest.stats.ignored, 2, 'echo replies need no answer');

  const tagged = guest.buildUdp(buf, toPeer4, 1, pattern(3), 0x0064);
  t.is(P.get16(buf, 12), 0x8100);
  peer.handle(buf.subarray(0, tagged), out);
  t.is(P.get16(sent[sent.length - 1], 14), 0x0064, 'echo keeps the tag');

  t.throws(() => guest.buildUdp(buf, toPeer4, 1, pattern(1473)), { instanceOf: RangeError, message: /exceeds the MTU/ });
  t.throws(() => guest.buildPing(buf, { mac: PEER_MAC, ip: PEER_IP6 }, 1, 1, 1453), { message: /exceeds the MTU/ });
  t.throws(() => mkResponder(1500, false).buildUdp(buf, toPeer6, 1, pattern(1)), { message: /no IPv6 address/ });
  t.throws(() => guest.buildUdp(buf, { mac: PEER_MAC, ip: new Uint8Array(5), port: 1 }, 1, pattern(1)), { instanceOf: TypeError });

  const full = txRing(0);
  t.false(guest.sendUdp(full.out, toPeer4, 1, pattern(1)));
  t.is(guest.stats.tx_ring_full, 1);
});
