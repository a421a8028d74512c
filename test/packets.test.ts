// Unit tests for guest-sim/packets: checksums against known vectors and a
// deliberately naive reference, address text forms, and header codecs.

import test from 'ava';
import * as P from '../guest-sim/packets';

/** Textbook RFC 1071: 16-bit big-endian words, fold after every add, complement. */
function refChecksum(bytes: number[]): number {
  let sum = 0;
  for (let i = 0; i < bytes.length; i += 2) {
    sum += (bytes[i] << 8) + (i + 1 < bytes.length ? bytes[i + 1] : 0);
    if (sum > 0xffff) sum = (sum & 0xffff) + 1;
  }
  return ~sum & 0xffff;
}

function hex(s: string): Uint8Array {
  return Uint8Array.from(Buffer.from(s.replace(/\s+/g, ''), 'hex'));
}

function randomBytes(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

test('checksum: RFC 1071 §3 example and a real IPv4 header', (t) => {
  const rfc = Uint8Array.from([0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]);
  t.is(P.csumFold(P.csumAdd(0, rfc, 0, 8)), 0xddf2);
  t.is(P.checksum(rfc), 0x220d);
  // 192.168.0.1 -> 192.168.0.199, UDP, well known worked example: checksum b861.
  const ip = hex('4500 0073 0000 4000 4011 0000 c0a8 0001 c0a8 00c7');
  t.is(P.checksum(ip), 0xb861);
  ip[10] = 0xb8;
  ip[11] = 0x61;
  t.true(P.checksumOk(ip, 0, 20));
  ip[15] ^= 1;
  t.false(P.checksumOk(ip, 0, 20));
});

test('checksum matches the naive reference for many lengths, odd included', (t) => {
  for (let n = 0; n <= 1600; n += n < 64 ? 1 : 37) {
    const b = randomBytes(n, n + 7);
    t.is(P.checksum(b), refChecksum(Array.from(b)), `len ${n}`);
  }
  const ff = new Uint8Array(65535).fill(0xff);
  t.is(P.checksum(ff), refChecksum(Array.from(ff)));
});

test('checksum: fragments chain, odd-offset fragments via csumSwap', (t) => {
  const b = randomBytes(999, 42);
  const whole = P.checksum(b);
  t.is(P.csumFinish(P.csumAdd(P.csumAdd(0, b, 0, 400), b, 400, 599)), whole);
  const odd = P.csumSwap(P.csumAdd(0, b, 401, 598));
  t.is(P.csumFinish(P.csumAdd(0, b, 0, 401) + odd), whole);
  t.is(P.checksum(b, 10, 20), refChecksum(Array.from(b.subarray(10, 30))));
});

test('csumUpdate16 (RFC 1624) agrees with recomputation', (t) => {
  for (let i = 0; i < 500; i++) {
    const b = randomBytes(64, i + 1);
    const before = P.checksum(b);
    const w = 2 * (i % 32);
    const oldWord = P.get16(b, w);
    const newWord = (oldWord * 7919 + i) & 0xffff;
    P.put16(b, w, newWord);
    t.is(P.csumUpdate16(before, oldWord, newWord), P.checksum(b));
  }
});

test('MAC parse and format', (t) => {
  const m = P.parseMac('52:54:00:AB:cd:ef');
  t.deepEqual(Array.from(m), [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]);
  t.is(P.formatMac(m), '52:54:00:ab:cd:ef');
  t.deepEqual(P.parseMac('52-54-00-ab-cd-ef'), m);
  for (const bad of ['52:54:00:ab:cd', '52:54:00:ab:cd:ef:00', '5:54:00:ab:cd:ef', 'zz:54:00:ab:cd:ef', '']) {
    t.throws(() => P.parseMac(bad), { instanceOf: TypeError }, bad);
  }
  t.true(P.isBroadcastMac(P.BROADCAST_MAC));
  t.true(P.isMulticastMac(P.parseMac('33:33:00:00:00:01')));
  t.false(P.isMulticastMac(m));
});

test('IPv4 parse and format', (t) => {
  t.deepEqual(Array.from(P.parseIPv4('10.0.0.2')), [10, 0, 0, 2]);
  t.is(P.formatIPv4(P.parseIPv4('255.255.255.0')), '255.255.255.0');
  for (const bad of ['10.0.0', '10.0.0.256', '10.0.0.02', '10.0.0.-1', '1.2.3.4.5', 'a.b.c.d', '']) {
    t.throws(() => P.parseIPv4(bad), { instanceOf: TypeError }, bad);
  }
});

test('IPv6 parse: compression, full form, dotted tail, errors', (t) => {
  const words = (s: string) => {
    const b = P.parseIPv6(s);
    return Array.from({ length: 8 }, (_, i) => (b[2 * i] << 8) | b[2 * i + 1]);
  };
  t.deepEqual(words('::'), [0, 0, 0, 0, 0, 0, 0, 0]);
  t.deepEqual(words('::1'), [0, 0, 0, 0, 0, 0, 0, 1]);
  t.deepEqual(words('fd00::2'), [0xfd00, 0, 0, 0, 0, 0, 0, 2]);
  t.deepEqual(words('fe80::'), [0xfe80, 0, 0, 0, 0, 0, 0, 0]);
  t.deepEqual(words('2001:DB8:0:0:8:800:200C:417A'), [0x2001, 0xdb8, 0, 0, 8, 0x800, 0x200c, 0x417a]);
  t.deepEqual(words('1:2:3:4:5:6:7::'), [1, 2, 3, 4, 5, 6, 7, 0]);
  t.deepEqual(words('::2:3:4:5:6:7:8'), [0, 2, 3, 4, 5, 6, 7, 8]);
  t.deepEqual(words('::ffff:10.0.0.1'), [0, 0, 0, 0, 0, 0xffff, 0x0a00, 0x0001]);
  for (const bad of [':::', '1::2::3', '12345::', '1:2:3:4:5:6:7:8:9', '1:2:3:4:5:6:7:8::', '1:2:3:4:5:6:7', 'g::1', '::1.2.3', ':1::', '']) {
    t.throws(() => P.parseIPv6(bad), { instanceOf: TypeError }, bad);
  }
});

test('IPv6 format follows RFC 5952', (t) => {
  const f = (s: string) => P.formatIPv6(P.parseIPv6(s));
  t.is(f('2001:0db8:0000:0000:0000:0000:0000:0001'), '2001:db8::1');
  t.is(f('2001:db8:0:1:1:1:1:1'), '2001:db8:0:1:1:1:1:1', 'a single zero group is not compressed');
  t.is(f('2001:0:0:1:0:0:0:1'), '2001:0:0:1::1', 'the longest run wins');
  t.is(f('2001:db8:0:0:1:0:0:1'), '2001:db8::1:0:0:1', 'first of equal runs');
  t.is(f('::'), '::');
  t.is(f('::1'), '::1');
  t.is(f('fe80::'), 'fe80::');
  t.is(f('FD00::ABCD'), 'fd00::abcd');
  t.is(f('::ffff:192.0.2.1'), '::ffff:192.0.2.1');
  t.is(f('1:2:3:4:5:6:7:8'), '1:2:3:4:5:6:7:8');
});

test('solicited-node group, multicast MACs, EUI-64 link-local', (t) => {
  const a = P.parseIPv6('fd00::12:3456:789a');
  t.is(P.formatIPv6(P.solicitedNodeMulticast(a)), 'ff02::1:ff56:789a');
  t.is(P.formatMac(P.multicastMac6(P.solicitedNodeMulticast(a))), '33:33:ff:56:78:9a');
  t.is(P.formatMac(P.multicastMac6(P.ALL_NODES_6)), '33:33:00:00:00:01');
  t.is(P.formatMac(P.multicastMac4(P.parseIPv4('239.255.255.250'))), '01:00:5e:7f:ff:fa');
  t.is(P.formatMac(P.multicastMac4(P.parseIPv4('224.128.0.1'))), '01:00:5e:00:00:01', 'the 24th bit is dropped');
  t.is(P.formatIPv6(P.linkLocalFromMac(P.parseMac('52:54:00:12:34:56'))), 'fe80::5054:ff:fe12:3456');
  t.is(P.formatIPv6(P.linkLocalFromMac(P.parseMac('02:00:00:00:00:01'))), 'fe80::ff:fe00:1', 'U/L bit flips back to 0');
});

test('Ethernet: untagged, 802.1Q and QinQ, truncation', (t) => {
  const buf = new Uint8Array(64);
  const dst = P.parseMac('02:00:00:00:00:01');
  const src = P.parseMac('02:00:00:00:00:02');
  t.is(P.encodeEthernet(buf, 0, dst, src, P.ETHERTYPE.IPV4), 14);
  let e = P.decodeEthernet(buf)!;
  t.deepEqual({ ...e }, { etherType: 0x0800, vlan: -1, tci: -1, l3: 14 });
  t.is(P.encodeEthernet(buf, 0, dst, src, P.ETHERTYPE.IPV6, 0x2005), 18);
  e = P.decodeEthernet(buf)!;
  t.deepEqual({ ...e }, { etherType: 0x86dd, vlan: 5, tci: 0x2005, l3: 18 });
  t.deepEqual(buf.subarray(12, 18), hex('8100 2005 86dd'));
  // QinQ: outer 88a8 vid 100, inner 8100 vid 7, then ARP.
  buf.set(hex('88a8 0064 8100 0007 0806'), 12);
  e = P.decodeEthernet(buf)!;
  t.deepEqual({ ...e }, { etherType: 0x0806, vlan: 100, tci: 100, l3: 22 });
  t.is(P.decodeEthernet(buf, 13), null);
  t.is(P.decodeEthernet(buf, 16), null, 'tag cut short');
  t.is(P.ethHeaderLen(), 14);
  t.is(P.ethHeaderLen(0), 18);
});

test('ARP encode/decode', (t) => {
  const b = new Uint8Array(28);
  const sha = P.parseMac('02:00:00:00:00:02');
  const spa = P.parseIPv4('10.0.0.1');
  const tpa = P.parseIPv4('10.0.0.2');
  t.is(P.encodeArp(b, 0, P.ARP_OP.REQUEST, sha, spa, new Uint8Array(6), tpa), 28);
  t.deepEqual(b, hex('0001 0800 06 04 0001 020000000002 0a000001 000000000000 0a000002'));
  const a = P.decodeArp(b, 0, 28)!;
  t.is(a.op, 1);
  t.deepEqual(b.subarray(a.sha, a.sha + 6), sha);
  t.deepEqual(b.subarray(a.tpa, a.tpa + 4), tpa);
  t.is(P.decodeArp(b, 0, 27), null);
  b[1] = 6; // htype 6 (IEEE 802): not ours
  t.is(P.decodeArp(b, 0, 28), null);
});

test('IPv4 encode/decode: checksum, lengths, padding, fragments', (t) => {
  const b = new Uint8Array(80);
  const src = P.parseIPv4('10.0.0.2');
  const dst = P.parseIPv4('10.0.0.1');
  t.is(P.encodeIPv4(b, 0, src, dst, P.IPPROTO.UDP, 30, 64, 0x1234, true), 20);
  t.true(P.checksumOk(b, 0, 20));
  t.is(P.checksum(b, 0, 20), 0);
  const ip = P.decodeIPv4(b, 0, 60)!; // 10 bytes of trailing padding
  t.is(ip.totalLen, 50);
  t.is(ip.payloadLen, 30);
  t.is(ip.payload, 20);
  t.is(ip.proto, 17);
  t.is(ip.id, 0x1234);
  t.is(ip.frag, 0x4000);
  t.false(P.isFragment(ip.frag), 'DF alone is not a fragment');
  t.true(P.isFragment(0x2000));
  t.true(P.isFragment(0x0001));
  t.is(P.decodeIPv4(b, 0, 49), null, 'total length beyond the data');
  b[0] = 0x44;
  t.is(P.decodeIPv4(b, 0, 60), null, 'ihl 16 bytes');
  b[0] = 0x65;
  t.is(P.decodeIPv4(b, 0, 60), null, 'version 6');
  t.throws(() => P.encodeIPv4(b, 0, src, dst, 17, 65516));
});

test('IPv6 encode/decode', (t) => {
  const b = new Uint8Array(100);
  const src = P.parseIPv6('fd00::2');
  const dst = P.parseIPv6('fd00::1');
  t.is(P.encodeIPv6(b, 0, src, dst, P.IPPROTO.ICMPV6, 16, 255), 40);
  const ip = P.decodeIPv6(b, 0, 60)!;
  t.is(ip.payloadLen, 16);
  t.is(ip.nextHeader, 58);
  t.is(ip.hopLimit, 255);
  t.is(P.formatIPv6(b, ip.src), 'fd00::2');
  t.is(P.formatIPv6(b, ip.dst), 'fd00::1');
  t.is(P.decodeIPv6(b, 0, 55), null);
  b[0] = 0x45;
  t.is(P.decodeIPv6(b, 0, 60), null);
});

test('UDP frames over IPv4 and IPv6 carry checksums a reference accepts', (t) => {
  for (const v of [4, 6] as const) {
    for (const n of [0, 1, 2, 3, 100, 1472]) {
      const payload = randomBytes(n, n + v);
      const spec = {
        srcMac: P.parseMac('02:00:00:00:00:02'),
        dstMac: P.parseMac('02:00:00:00:00:01'),
        srcIp: v === 4 ? P.parseIPv4('10.0.0.2') : P.parseIPv6('fd00::2'),
        dstIp: v === 4 ? P.parseIPv4('10.0.0.1') : P.parseIPv6('fd00::1'),
        srcPort: 40000,
        dstPort: 7,
        payload,
      };
      const buf = new Uint8Array(2000);
      const len = P.encodeUdpFrame(buf, spec);
      t.is(len, P.udpFrameLen(v, n));
      const l3 = 14;
      const l4 = l3 + (v === 4 ? 20 : 40);
      // Reference: build the pseudo-header bytes literally and sum them with the datagram.
      const udp = Array.from(buf.subarray(l4, l4 + 8 + n));
      const pseudo =
        v === 4
          ? [...spec.srcIp, ...spec.dstIp, 0, 17, (8 + n) >> 8, (8 + n) & 0xff]
          : [...spec.srcIp, ...spec.dstIp, 0, 0, (8 + n) >> 8, (8 + n) & 0xff, 0, 0, 0, 17];
      // Pseudo-header is an even length, so concatenation is the same sum.
      t.is(refChecksum([...pseudo, ...udp]), 0, `v${v} n=${n}`);
      t.not(P.get16(buf, l4 + 6), 0);
      t.deepEqual(buf.subarray(l4 + 8, l4 + 8 + n), payload);
      if (v === 4) {
        const ip = P.decodeIPv4(buf, l3, len - l3)!;
        t.true(P.checksumOk(buf, l3, 20));
        t.true(P.l4ChecksumOk4(buf, ip));
        const u = P.decodeUdp(buf, ip.payload, ip.payloadLen)!;
        t.deepEqual([u.srcPort, u.dstPort, u.payloadLen], [40000, 7, n]);
      } else {
        const ip = P.decodeIPv6(buf, l3, len - l3)!;
        t.true(P.l4ChecksumOk6(buf, ip));
      }
    }
  }
});

test('UDP zero checksum: allowed over IPv4, rejected over IPv6', (t) => {
  const mk = (v: 4 | 6) => {
    const buf = new Uint8Array(200);
    const len = P.encodeUdpFrame(buf, {
      srcMac: P.BROADCAST_MAC,
      dstMac: P.BROADCAST_MAC,
      srcIp: v === 4 ? P.parseIPv4('10.0.0.2') : P.parseIPv6('fd00::2'),
      dstIp: v === 4 ? P.parseIPv4('10.0.0.1') : P.parseIPv6('fd00::1'),
      srcPort: 1,
      dstPort: 2,
      payload: Uint8Array.from([1, 2, 3]),
    });
    const l4 = v === 4 ? 34 : 54;
    P.put16(buf, l4 + 6, 0);
    return { buf, len };
  };
  const a = mk(4);
  t.true(P.l4ChecksumOk4(a.buf, P.decodeIPv4(a.buf, 14, a.len - 14)!));
  const b = mk(6);
  t.false(P.l4ChecksumOk6(b.buf, P.decodeIPv6(b.buf, 14, b.len - 14)!));
  t.throws(() => P.encodeUdpFrame(new Uint8Array(10), { ...{ srcMac: P.BROADCAST_MAC, dstMac: P.BROADCAST_MAC, srcPort: 1, dstPort: 2, payload: new Uint8Array(0) }, srcIp: new Uint8Array(4), dstIp: new Uint8Array(16) }), { instanceOf: TypeError });
  t.throws(() => P.encodeUdpFrame(new Uint8Array(10), { srcMac: P.BROADCAST_MAC, dstMac: P.BROADCAST_MAC, srcPort: 1, dstPort: 2, payload: new Uint8Array(0), srcIp: new Uint8Array(4), dstIp: new Uint8Array(4) }), { instanceOf: RangeError });
});

test('ICMP decode and neighbour discovery options', (t) => {
  const b = new Uint8Array(64);
  P.encodeIcmpEchoHeader(b, 0, P.ICMP4.ECHO_REQUEST, 0xbeef, 0x0102);
  b.set([9, 9, 9], 8);
  P.fillIcmp4Checksum(b, 0, 11);
  t.true(P.checksumOk(b, 0, 11));
  const ic = P.decodeIcmp(b, 0, 11)!;
  t.deepEqual([ic.type, ic.code, ic.id, ic.seq, ic.data, ic.dataLen], [8, 0, 0xbeef, 0x0102, 8, 3]);
  t.is(P.decodeIcmp(b, 0, 7), null);

  const target = P.parseIPv6('fd00::2');
  const mac = P.parseMac('02:00:00:00:00:02');
  t.is(P.encodeNs(b, 0, target, mac), 32);
  let nd = P.decodeNd(b, 0, 32)!;
  t.is(nd.target, 8);
  t.is(nd.lladdr, 26);
  t.deepEqual(b.subarray(26, 32), mac);
  t.is(P.decodeNd(b, 0, 24)!.lladdr, -1, 'no options');
  b[25] = 0;
  t.is(P.decodeNd(b, 0, 32), null, 'zero-length option');
  b[25] = 2;
  t.is(P.decodeNd(b, 0, 32), null, 'option runs past the end');
  t.is(P.encodeNa(b, 0, P.NA_FLAG.SOLICITED | P.NA_FLAG.OVERRIDE, target, mac), 32);
  nd = P.decodeNd(b, 0, 32)!;
  t.is(nd.flags, 0x60);
  t.is(nd.lladdr, 26);
  t.deepEqual(b.subarray(24, 26), Uint8Array.from([2, 1]), 'target link-layer address option, 1 unit of 8 bytes');
});
