// guest-sim's tunnel endpoint (guest-sim/tunnel.ts) without a kernel, for VXLAN and for
// GENEVE (which this machine's kernel cannot make): frames built by gso-check's independent
// encapsulate() are taken apart at the right offset and teach the endpoint its peer; what the
// endpoint sends decapsulates with gso-check's decapsulate(), carries the inner frame
// untouched, a valid outer IPv4 header, and for an inner super-frame the same virtio header
// gso-check's tunnelTxHeader() derives (outer family bit, outer_th/inner_nh offsets,
// csum_start and hdr_len shifted past the outer headers); foreign VNIs are counted, not taken.

import test from 'ava';

import { HDR } from '../backend';
import type { NetHdr } from '../driver';
import { buildTcpFrame, decapsulate, encapsulate, parseFrame, pattern, tunnelTxHeader, txHeader, TUNNEL_PORT } from '../host/gso-frames';
import { csumAdd, csumFold, IPPROTO, parseIPv4, parseMac } from '../guest-sim/packets';
import { TUNNEL_ENCAP_LEN, TunnelEndpoint, TunnelKind } from '../guest-sim/tunnel';

const GUEST_MAC = parseMac('52:54:00:00:00:02');
const HOST_MAC = parseMac('52:54:00:00:00:01');
const GUEST4 = parseIPv4('10.1.0.2');
const HOST4 = parseIPv4('10.1.0.1');
const INNER_G = parseIPv4('10.2.0.2');
const INNER_H = parseIPv4('10.2.0.1');
const MSS = 1398;

function innerTcp(payloadLen: number, csum: 'full' | 'partial'): Uint8Array {
  return buildTcpFrame(
    {
      flow: { v6: false, srcMac: parseMac('02:00:00:00:00:02'), dstMac: parseMac('02:00:00:00:00:01'), src: INNER_G, dst: INNER_H, sport: 9, dport: 40000 },
      seq: 1000,
      ack: 2000,
      flags: 0x10,
      window: 512,
      payload: pattern(payloadLen),
      ipId: 7,
      ttl: 64,
      df: true,
    },
    csum,
  );
}

/** A fake queue pair TX: one buffer, what was committed kept. */
function outerLink(): { link: ConstructorParameters<typeof TunnelEndpoint>[2]; sent: { frame: Uint8Array; hdr: NetHdr }[] } {
  const u8 = new Uint8Array(70000);
  const sent: { frame: Uint8Array; hdr: NetHdr }[] = [];
  let at = -1;
  return {
    sent,
    link: {
      u8,
      maxFrame: 65536,
      reserve: (len: number) => (len <= 65536 ? (at = 100) : -1),
      commit: (len: number, hdr: NetHdr) => sent.push({ frame: u8.slice(at, at + len), hdr: { ...hdr } }),
    },
  };
}

for (const kind of ['vxlan', 'geneve'] as const satisfies readonly TunnelKind[]) {
  test(`${kind}: received frames are taken apart at the inner Ethernet header; sent ones decapsulate to the same inner frame with the tunnel GSO header`, (t) => {
    const { link, sent } = outerLink();
    const ep = new TunnelEndpoint({ kind, vni: 4242, local4: GUEST4 }, GUEST_MAC, link, true);
    // Before the peer spoke, the inner stack cannot send: counted, no frame.
    t.is(ep.link.reserve(100), -1);
    t.is(ep.stats.tnl_tx_no_peer, 1);

    const outerFlow = { v6: false, srcMac: HOST_MAC, dstMac: GUEST_MAC, src: HOST4, dst: GUEST4, sport: 51000, dport: TUNNEL_PORT[kind] };
    const rx = encapsulate(innerTcp(100, 'full'), { kind, outer: outerFlow, vni: 4242, ipId: 1, ttl: 64 }, 'full');
    const d = decapsulate(rx)!;
    t.is(ep.decapsulate(rx, 0, rx.length, rx.length, HDR.GSO_NONE), d.innerNh - 14);
    const other = encapsulate(innerTcp(100, 'full'), { kind, outer: outerFlow, vni: 4243, ipId: 1, ttl: 64 }, 'full');
    t.is(ep.decapsulate(other, 0, other.length, other.length, HDR.GSO_NONE), -1, 'another VNI');
    t.is(ep.stats.tnl_rx_not_ours, 1);
    const wrongPort = encapsulate(innerTcp(100, 'full'), { kind, outer: { ...outerFlow, dport: 4790 }, vni: 4242, ipId: 1, ttl: 64 }, 'full');
    t.is(ep.decapsulate(wrongPort, 0, wrongPort.length, wrongPort.length, HDR.GSO_NONE), -1, 'another port');
    t.is(ep.stats.tnl_rx_frames, 1);

    // An inner TSO super-frame, as the inner TcpStack writes it: partial checksum, GSO header.
    const inner = innerTcp(40 * MSS, 'partial');
    const ih = txHeader(inner, IPPROTO.TCP, 'tso', MSS);
    const o = ep.link.reserve(inner.length);
    t.is(o, 100 + TUNNEL_ENCAP_LEN);
    link.u8.set(inner, o);
    ep.link.commit(inner.length, { flags: ih.flags, gsoType: ih.gsoType, hdrLen: ih.hdrLen, gsoSize: ih.gsoSize, csumStart: ih.csumStart, csumOffset: ih.csumOffset });
    t.is(sent.length, 1);
    const { frame, hdr } = sent[0];
    const out = decapsulate(frame);
    t.truthy(out, 'a VXLAN/GENEVE frame');
    t.is(out!.kind, kind);
    t.is(out!.vni, 4242);
    t.deepEqual(out!.inner, inner, 'the inner frame is carried untouched');
    const p = parseFrame(frame)!;
    t.deepEqual([...frame.subarray(0, 6)], [...HOST_MAC], 'to the peer VTEP learnt from its frame');
    t.deepEqual([...frame.subarray(p.l3 + 16, p.l3 + 20)], [...HOST4]);
    t.is(csumFold(csumAdd(0, frame, p.l3, 20)), 0xffff, 'outer IPv4 header checksum');
    const sport = (frame[p.l4] << 8) | frame[p.l4 + 1];
    t.true(sport >= 49152, `outer source port ${sport} from the dynamic range`);
    const want = tunnelTxHeader(frame, MSS, false);
    t.deepEqual(
      { flags: hdr.flags, gsoType: hdr.gsoType, hdrLen: hdr.hdrLen, gsoSize: hdr.gsoSize, csumStart: hdr.csumStart, csumOffset: hdr.csumOffset, outerTh: hdr.outerTh, innerNh: hdr.innerNh },
      { flags: want.flags, gsoType: want.gsoType, hdrLen: want.hdrLen, gsoSize: want.gsoSize, csumStart: want.csumStart, csumOffset: want.csumOffset, outerTh: want.outerTh, innerNh: want.innerNh },
    );
    t.is(hdr.gsoType, HDR.GSO_TCPV4 | HDR.GSO_UDP_TUNNEL_IPV4);
    t.is(ep.stats.tnl_tx_gso_frames, 1);
    t.is(ep.stats.tnl_tx_gso_bytes, frame.length);
  });
}

test('without HOST_UDP_TUNNEL_GSO an inner GSO frame is refused (the inner stack must segment), a plain one gets no tunnel fields', (t) => {
  const { link, sent } = outerLink();
  const ep = new TunnelEndpoint({ kind: 'vxlan', vni: 1, local4: GUEST4 }, GUEST_MAC, link, false);
  const rx = encapsulate(innerTcp(10, 'full'), { kind: 'vxlan', outer: { v6: false, srcMac: HOST_MAC, dstMac: GUEST_MAC, src: HOST4, dst: GUEST4, sport: 50000, dport: 4789 }, vni: 1, ipId: 1, ttl: 64 }, 'full');
  t.true(ep.decapsulate(rx, 0, rx.length, rx.length, HDR.GSO_NONE) > 0);
  const inner = innerTcp(MSS, 'partial');
  const ih = txHeader(inner, IPPROTO.TCP, 'none', MSS);
  const o = ep.link.reserve(inner.length);
  link.u8.set(inner, o);
  ep.link.commit(inner.length, { flags: ih.flags, gsoType: ih.gsoType, hdrLen: ih.hdrLen, gsoSize: ih.gsoSize, csumStart: ih.csumStart, csumOffset: ih.csumOffset });
  t.is(sent[0].hdr.gsoType, HDR.GSO_NONE);
  t.is(sent[0].hdr.csumStart, ih.csumStart + TUNNEL_ENCAP_LEN, 'the inner checksum stays the device\'s to finish, past the outer headers');
  t.deepEqual([sent[0].hdr.outerTh, sent[0].hdr.innerNh], [0, 0]);
  const big = innerTcp(4 * MSS, 'partial');
  const bh = txHeader(big, IPPROTO.TCP, 'tso', MSS);
  link.u8.set(big, ep.link.reserve(big.length));
  t.throws(() => ep.link.commit(big.length, { flags: bh.flags, gsoType: bh.gsoType, hdrLen: bh.hdrLen, gsoSize: bh.gsoSize, csumStart: bh.csumStart, csumOffset: bh.csumOffset }), { message: /without HOST_UDP_TUNNEL_GSO/ });
});

test('the endpoint refuses a VNI outside 24 bits', (t) => {
  const { link } = outerLink();
  t.throws(() => new TunnelEndpoint({ kind: 'vxlan', vni: 1 << 24, local4: GUEST4 }, GUEST_MAC, link, true), { instanceOf: RangeError });
});
