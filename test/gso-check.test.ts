// Tests for `vhost-tap gso-check`: the full suite against this kernel through
// the CLI (every case pass or unsupported, the offloads this kernel has pass
// both ways, nothing left behind), and the verifiers and pcap reader on
// hand-made input, including wrong segment lists the checker must reject.

import test from 'ava';
import { execFileSync } from 'node:child_process';

import { HDR } from '../backend/virtio';
import { CaseResult, CASES, runGsoCheck, TUNNEL_CASES } from '../host/gso-check';
import {
  buildTcpFrame,
  buildUdpFrame,
  Flow,
  NetHdr,
  parseFrame,
  pattern,
  SentTcp,
  SentUdp,
  TCP_FLAG,
  TcpFrameSpec,
  encapsulate,
  decapsulate,
  TunnelSpec,
  tunnelTxHeader,
  txHeader,
  verifyRxFrame,
  verifyTcpSegments,
  verifyTunnelRxFrame,
  verifyTunnelSegments,
  verifyUdpFragments,
  verifyUdpSegments,
} from '../host/gso-frames';
import { csumAdd, csumFinish, IPPROTO, parseIPv4, parseIPv6, put16 } from '../guest-sim/packets';
import { parsePcap, writePcap } from '../host/pcap';
import { runCli } from './helpers/cli';
import { requireRoot } from '../host/netns';

// ------------------------------------------------------------------ against the kernel

function myNamespaces(): string[] {
  return execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })
    .split('\n')
    .map((l) => l.split(' ')[0])
    .filter((n) => /^vtg[AB]/.test(n));
}

test.serial('vhost-tap gso-check --json: every case passes or is unsupported; this kernel supports CSUM, TSO4/6, TSO_ECN, USO4/6 both ways', (t) => {
  requireRoot();
  const before = myNamespaces();
  const started = Date.now();
  const r = runCli(['gso-check', '--json'], 90_000);
  const took = Date.now() - started;
  t.is(r.status, 0, `exit status; stdout: ${r.stdout}\nstderr: ${r.stderr}`);
  const out = JSON.parse(r.stdout) as { ok: boolean; kernel: string; results: CaseResult[] };
  t.true(out.ok);
  const table = out.results.map((x) => `${x.case} ${x.direction} ${x.result}: ${x.detail}`).join('\n');
  t.log(`kernel ${out.kernel}, ${took} ms\n${table}`);
  t.is(out.results.length, CASES.length * 2, 'one result per case and direction');
  for (const x of out.results) t.true(x.result === 'pass' || x.result === 'unsupported', `${x.case} ${x.direction}: ${x.result}: ${x.detail}`);
  const must = ['CSUM_TCP4', 'CSUM_UDP4', 'CSUM_TCP6', 'CSUM_UDP6', 'TSO4', 'TSO6', 'TSO_ECN', 'USO4', 'USO6'];
  for (const c of must) {
    for (const d of ['guest-to-kernel', 'kernel-to-guest']) {
      const x = out.results.find((y) => y.case === c && y.direction === d);
      t.is(x?.result, 'pass', `${c} ${d} must pass on this kernel: ${x?.detail}`);
    }
  }
  // Guest→kernel UFO is still fragmented by tun's path; the kernel never produces UFO for the guest.
  for (const c of ['UFO4', 'UFO6']) {
    t.is(out.results.find((y) => y.case === c && y.direction === 'guest-to-kernel')?.result, 'pass');
    const k2g = out.results.find((y) => y.case === c && y.direction === 'kernel-to-guest')!;
    t.is(k2g.result, 'unsupported');
    t.regex(k2g.detail, /4\.14/);
  }
  // GSO over UDP tunnels (Linux 6.17+): the kernel segments the guest's tunnelled super-frames,
  // and hands VXLAN super-frames over whole. GENEVE kernel→guest needs a geneve device to send
  // from; a kernel built without one says so (unsupported), never fails.
  const geneveDevice = execFileSync('sh', ['-c', 'ip netns add vtgq$$ && (ip -n vtgq$$ link add g type geneve id 1 remote 10.0.0.1 2>&1; echo rc=$?); ip netns del vtgq$$'], { encoding: 'utf8' });
  for (const c of TUNNEL_CASES) {
    for (const d of ['guest-to-kernel', 'kernel-to-guest']) {
      const x = out.results.find((y) => y.case === c && y.direction === d)!;
      if (c.startsWith('GENEVE') && d === 'kernel-to-guest' && /Unknown device type/.test(geneveDevice)) {
        t.is(x.result, 'unsupported', `${c} ${d}: ${x.detail}`);
        t.regex(x.detail, /cannot make a geneve device.*Unknown device type/);
      } else {
        t.is(x.result, 'pass', `${c} ${d} must pass on this kernel: ${x.detail}`);
      }
    }
  }
  // A progress line per result on stderr.
  t.is(r.stderr.split('\n').filter((l) => l.startsWith('gso-check: ')).length, CASES.length * 2);
  // Only the namespaces this run made ('vtgA'/'vtgB' + its pid in base 36): other programs may run gso-check too.
  t.deepEqual(myNamespaces().filter((n) => !before.includes(n) && n.slice(4).startsWith(r.pid.toString(36))), [], 'namespaces deleted');
});

test.serial('runGsoCheck with selected cases returns only those, in both directions', async (t) => {
  requireRoot();
  const seen: CaseResult[] = [];
  const res = await runGsoCheck({ cases: ['csum_udp4', 'TSO4'], onResult: (r) => seen.push(r) });
  t.true(res.ok, JSON.stringify(res.results));
  t.deepEqual(
    res.results.map((r) => `${r.case}/${r.direction}/${r.result}`),
    ['CSUM_UDP4/guest-to-kernel/pass', 'CSUM_UDP4/kernel-to-guest/pass', 'TSO4/guest-to-kernel/pass', 'TSO4/kernel-to-guest/pass'],
  );
  t.is(seen.length, 4);
  const mine = new RegExp(`^vtg[AB]${process.pid.toString(36)}[a-z0-9]{3,}$`);
  t.deepEqual(myNamespaces().filter((n) => mine.test(n)), [], 'namespaces deleted');
});

test('runGsoCheck refuses an unknown case before creating anything', async (t) => {
  await t.throwsAsync(runGsoCheck({ cases: ['TSO5'] }), { message: /unknown case 'TSO5'.*TSO4/ });
});

test('vhost-tap gso-check: --help, and a bad flag is a usage error', (t) => {
  const h = runCli(['gso-check', '--help']);
  t.is(h.status, 0);
  t.regex(h.stdout, /Usage: vhost-tap gso-check/);
  t.regex(runCli(['--help']).stdout, /gso-check/);
  const bad = runCli(['gso-check', '--jsn']);
  t.is(bad.status, 2);
  t.regex(bad.stderr, /--jsn/);
});

// ------------------------------------------------------------------ verifiers

const flow4: Flow = {
  v6: false,
  srcMac: new Uint8Array([2, 0, 0, 0, 0, 1]),
  dstMac: new Uint8Array([2, 0, 0, 0, 0, 2]),
  src: parseIPv4('10.1.0.2'),
  dst: parseIPv4('10.2.0.2'),
  sport: 1234,
  dport: 80,
};
const flow6: Flow = { ...flow4, v6: true, src: parseIPv6('fd01::2'), dst: parseIPv6('fd02::2') };

function superTcp(flags: number, v6 = false): SentTcp {
  const spec: TcpFrameSpec = { flow: v6 ? flow6 : flow4, seq: 0xfffff000, ack: 77, flags, window: 1000, ipId: 0xfffe, ttl: 64, df: true, payload: pattern(10_000) };
  return { spec, mss: 1448, hops: 1 };
}

/** What a correct segmenter (plus one router) puts on the wire for a TSO super-frame. */
function segmentTcp(s: SentTcp): Uint8Array[] {
  const { spec, mss } = s;
  const out: Uint8Array[] = [];
  const n = Math.ceil(spec.payload.length / mss);
  for (let i = 0; i < n; i++) {
    let flags = spec.flags & ~(TCP_FLAG.PSH | TCP_FLAG.FIN | TCP_FLAG.CWR);
    if (i === n - 1) flags |= spec.flags & (TCP_FLAG.PSH | TCP_FLAG.FIN);
    if (i === 0) flags |= spec.flags & TCP_FLAG.CWR;
    out.push(
      buildTcpFrame(
        { ...spec, seq: (spec.seq + i * mss) >>> 0, flags, ipId: (spec.ipId + i) & 0xffff, ttl: spec.ttl - s.hops, payload: spec.payload.subarray(i * mss, (i + 1) * mss) },
        'full',
      ),
    );
  }
  return out;
}

/** Recomputes the IPv4 header checksum after a test edits the header. */
function fixIp4(f: Uint8Array): void {
  put16(f, 24, 0);
  put16(f, 24, csumFinish(csumAdd(0, f, 14, 20)));
}

test('verifyTcpSegments accepts a correct segmentation (v4 with seq and IP ID wrap, v6)', (t) => {
  for (const v6 of [false, true]) {
    const s = superTcp(TCP_FLAG.ACK | TCP_FLAG.PSH | TCP_FLAG.FIN | TCP_FLAG.CWR, v6);
    const segs = segmentTcp(s);
    t.is(segs.length, 7);
    t.deepEqual(verifyTcpSegments(s, segs), [], v6 ? 'v6' : 'v4');
  }
});

test('verifyTcpSegments rejects wrong segment lists', (t) => {
  const s = superTcp(TCP_FLAG.ACK | TCP_FLAG.PSH | TCP_FLAG.CWR);
  const cases: Array<[string, (segs: Uint8Array[]) => Uint8Array[], RegExp]> = [
    ['a segment missing', (g) => g.slice(0, -1), /6 segments on the wire, expected 7/],
    ['one too many', (g) => [...g, g[6]], /8 segments/],
    ['two swapped', (g) => [g[1], g[0], ...g.slice(2)], /seq/],
    [
      'IP ID not counting up',
      (g) => {
        put16(g[3], 18, 0xfffe);
        fixIp4(g[3]);
        return g;
      },
      /segment 3: IPv4 ID 65534, expected 1/,
    ],
    [
      'bad IP checksum',
      (g) => {
        g[2][24] ^= 1;
        return g;
      },
      /segment 2: bad IPv4 header checksum/,
    ],
    [
      'bad TCP checksum',
      (g) => {
        g[4][g[4].length - 1] ^= 0xff;
        return g;
      },
      /segment 4: bad TCP checksum/,
    ],
    [
      'PSH on every segment',
      (g) => g.map((f, i) => (i < 6 ? withFlags(f, f[47] | TCP_FLAG.PSH) : f)),
      /segment 0: TCP flags 0x98, expected 0x90/,
    ],
    ['CWR on every segment', (g) => g.map((f) => withFlags(f, f[47] | TCP_FLAG.CWR)), /segment 1: TCP flags 0x90, expected 0x10/],
    ['TTL not decremented', (g) => [...g.map((f) => withTtl(f, 64))], /TTL\/hop limit 64, expected 63/],
  ];
  for (const [what, mutate, re] of cases) {
    const problems = verifyTcpSegments(s, mutate(segmentTcp(s)));
    t.true(problems.length > 0, `${what} must be detected`);
    t.regex(problems.join('; '), re, what);
  }
  // Payload corrupted, checksum made consistent again: only reassembly can see it.
  const segs = segmentTcp(s);
  const bad = buildTcpFrame({ ...s.spec, seq: (s.spec.seq + 5 * 1448) >>> 0, flags: TCP_FLAG.ACK, ipId: (s.spec.ipId + 5) & 0xffff, ttl: 63, payload: pattern(1448, 1) }, 'full');
  segs[5] = bad;
  t.deepEqual(verifyTcpSegments(s, segs), ['reassembled payload differs from what the guest sent']);
});

function withFlags(f: Uint8Array, flags: number): Uint8Array {
  // Rebuild rather than patch, so the checksum stays right and only the flags are wrong.
  const p = parseFrame(f)!;
  const c = Uint8Array.from(f);
  const old = (c[p.l4 + 12] << 8) | c[p.l4 + 13];
  c[p.l4 + 13] = flags;
  const nw = (c[p.l4 + 12] << 8) | c[p.l4 + 13];
  const ck = (c[p.l4 + 16] << 8) | c[p.l4 + 17];
  // RFC 1624 incremental update.
  let sum = (~ck & 0xffff) + (~old & 0xffff) + nw;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  put16(c, p.l4 + 16, ~sum & 0xffff);
  return c;
}

function withTtl(f: Uint8Array, ttl: number): Uint8Array {
  const c = Uint8Array.from(f);
  c[22] = ttl;
  fixIp4(c);
  return c;
}

function segmentUdp(s: SentUdp): Uint8Array[] {
  const out: Uint8Array[] = [];
  const n = Math.ceil(s.spec.payload.length / s.mss);
  for (let i = 0; i < n; i++) {
    out.push(buildUdpFrame({ ...s.spec, ipId: (s.spec.ipId + i) & 0xffff, ttl: s.spec.ttl - s.hops, payload: s.spec.payload.subarray(i * s.mss, (i + 1) * s.mss) }, 'full'));
  }
  return out;
}

test('verifyUdpSegments: correct USO output passes; a wrong size, length, checksum or ID is caught', (t) => {
  const s: SentUdp = { spec: { flow: flow4, ipId: 100, ttl: 64, payload: pattern(5000) }, mss: 1400, hops: 1 };
  t.deepEqual(verifyUdpSegments(s, segmentUdp(s)), []);
  const s6: SentUdp = { ...s, spec: { ...s.spec, flow: flow6 } };
  t.deepEqual(verifyUdpSegments(s6, segmentUdp(s6)), []);
  // Cut at 1000 instead of 1400: same bytes, wrong segmentation.
  const wrong = segmentUdp({ ...s, mss: 1000 });
  t.regex(verifyUdpSegments(s, wrong).join('; '), /5 datagrams on the wire, expected 4/);
  const g = segmentUdp(s);
  g[1][14 + 20 + 6] ^= 0x55;
  t.regex(verifyUdpSegments(s, g).join('; '), /datagram 1: bad UDP checksum/);
  const h = segmentUdp(s);
  put16(h[2], 18, 100);
  fixIp4(h[2]);
  t.regex(verifyUdpSegments(s, h).join('; '), /datagram 2: IPv4 ID 100, expected 102/);
});

/** IPv4 fragments of a whole UDP datagram, `m` bytes of IP payload each. */
function fragment4(datagram: Uint8Array, m: number, ttl: number): Uint8Array[] {
  const body = datagram.subarray(34);
  const out: Uint8Array[] = [];
  for (let off = 0; off < body.length; off += m) {
    const part = body.subarray(off, off + m);
    const f = new Uint8Array(34 + part.length);
    f.set(datagram.subarray(0, 34));
    f.set(part, 34);
    put16(f, 16, 20 + part.length);
    put16(f, 20, (off / 8) | (off + m < body.length ? 0x2000 : 0));
    f[22] = ttl;
    fixIp4(f);
    out.push(f);
  }
  return out;
}

test('verifyUdpFragments: correct UFO fragments pass; a lost, misplaced or corrupted fragment is caught', (t) => {
  const s: SentUdp = { spec: { flow: flow4, ipId: 9, ttl: 64, payload: pattern(5000) }, mss: 1400, hops: 1 };
  const whole = buildUdpFrame(s.spec, 'full');
  const frags = fragment4(whole, 1400, 63);
  t.is(frags.length, 4);
  t.deepEqual(verifyUdpFragments(s, frags), []);
  t.regex(verifyUdpFragments(s, frags.slice(0, 3)).join('; '), /3 fragments/);
  t.regex(verifyUdpFragments(s, [frags[0], frags[2], frags[1], frags[3]]).join('; '), /fragment 1: offset 2800, expected 1400/);
  const noMf = frags.map((f) => Uint8Array.from(f));
  put16(noMf[1], 20, 1400 / 8);
  fixIp4(noMf[1]);
  t.regex(verifyUdpFragments(s, noMf).join('; '), /fragment 1: MF clear on a middle fragment/);
  const corrupt = frags.map((f) => Uint8Array.from(f));
  corrupt[2][100] ^= 1;
  t.regex(verifyUdpFragments(s, corrupt).join('; '), /bad UDP checksum over the reassembled datagram/);
});

// ------------------------------------------------------------------ kernel → guest header checks

test('verifyRxFrame: a correct TSO super-frame header passes; wrong fields are caught', (t) => {
  const spec: TcpFrameSpec = { flow: flow4, seq: 1, ack: 2, flags: TCP_FLAG.ACK, window: 100, ipId: 1, ttl: 64, df: true, payload: pattern(1460 * 5) };
  const f = buildTcpFrame(spec, 'partial');
  const h: NetHdr = txHeader(f, IPPROTO.TCP, 'tso', 1460);
  const expect = { proto: IPPROTO.TCP, gsoType: HDR.GSO_TCPV4, gsoSize: 1460, exactHdrLen: true };
  t.deepEqual(verifyRxFrame(h, f, expect), []);
  t.regex(verifyRxFrame({ ...h, gsoSize: 1448 }, f, expect).join(), /gso_size 1448, expected 1460/);
  t.regex(verifyRxFrame({ ...h, gsoType: HDR.GSO_TCPV6 }, f, expect).join(), /gso_type 0x4, expected 0x1/);
  t.regex(verifyRxFrame({ ...h, csumOffset: 6 }, f, expect).join(), /csum_offset 6, expected 16/);
  t.regex(verifyRxFrame({ ...h, csumStart: 14 }, f, expect).join(), /csum_start 14/);
  t.regex(verifyRxFrame({ ...h, hdrLen: 40 }, f, expect).join(), /hdr_len 40, expected 54/);
  t.regex(verifyRxFrame({ ...h, flags: 0 }, f, expect).join(), /without NEEDS_CSUM/);
  // A full checksum where the partial one belongs does not complete to a valid one.
  t.regex(verifyRxFrame(h, buildTcpFrame(spec, 'full'), expect).join(), /partial checksum does not complete/);
  // Not a super-frame at all.
  const small = buildTcpFrame({ ...spec, payload: pattern(1000) }, 'partial');
  t.regex(verifyRxFrame(txHeader(small, IPPROTO.TCP, 'tso', 1460), small, expect).join(), /not a super-frame/);
});

test('verifyRxFrame: USO over IPv6 and plain checksum frames', (t) => {
  const f = buildUdpFrame({ flow: flow6, ipId: 0, ttl: 64, payload: pattern(9000) }, 'partial');
  const h = txHeader(f, IPPROTO.UDP, 'uso', 1400);
  t.deepEqual(verifyRxFrame(h, f, { proto: IPPROTO.UDP, gsoType: HDR.GSO_UDP_L4, gsoSize: 1400 }), []);
  const full = buildUdpFrame({ flow: flow4, ipId: 0, ttl: 64, payload: pattern(100) }, 'full');
  const none: NetHdr = { flags: 0, gsoType: 0, hdrLen: 0, gsoSize: 0, csumStart: 0, csumOffset: 0, numBuffers: 1 };
  t.deepEqual(verifyRxFrame(none, full, { proto: IPPROTO.UDP, gsoType: HDR.GSO_NONE }), []);
  const broken = Uint8Array.from(full);
  broken[broken.length - 1] ^= 1;
  t.regex(verifyRxFrame(none, broken, { proto: IPPROTO.UDP, gsoType: HDR.GSO_NONE }).join(), /bad L4 checksum/);
  t.regex(verifyRxFrame(none, full, { proto: IPPROTO.TCP, gsoType: HDR.GSO_NONE }).join(), /not an unfragmented TCP/);
});

// ------------------------------------------------------------------ UDP tunnels

const tunnel4: TunnelSpec = {
  kind: 'vxlan',
  outer: { ...flow4, src: parseIPv4('10.9.0.2'), dst: parseIPv4('10.9.0.1'), sport: 40001, dport: 4789 },
  vni: 42,
  ipId: 0xfffe,
  ttl: 64,
  df: false,
};

/** What a correct segmenter (plus one router) puts on the wire for a tunnelled TSO super-frame. */
function segmentTunnel(tn: TunnelSpec, inner: SentTcp, outerCsum: boolean): Uint8Array[] {
  return segmentTcp({ ...inner, hops: 0 }).map((seg, i) => encapsulate(seg, { ...tn, ipId: (tn.ipId + i) & 0xffff, ttl: tn.ttl - 1 }, outerCsum ? 'full' : 'none'));
}

test('verifyTunnelSegments: a correct tunnel segmentation passes (VXLAN/IPv4, GENEVE/IPv6, outer checksum on and off); wrong ones are caught', (t) => {
  const inner = superTcp(TCP_FLAG.ACK | TCP_FLAG.PSH);
  for (const [tn, csum] of [
    [tunnel4, false],
    [tunnel4, true],
    [{ ...tunnel4, kind: 'geneve', outer: { ...flow6, sport: 40002, dport: 6081 } }, true],
  ] as [TunnelSpec, boolean][]) {
    const segs = segmentTunnel(tn, inner, csum);
    const sent = { tunnel: tn, inner: { ...inner, hops: 0 }, outerCsum: csum, hops: 1 };
    t.deepEqual(verifyTunnelSegments(sent, segs), [], `${tn.kind} csum ${csum}`);
  }
  const segs = segmentTunnel(tunnel4, inner, true);
  const sent = { tunnel: tunnel4, inner: { ...inner, hops: 0 }, outerCsum: true, hops: 1 };
  t.regex(verifyTunnelSegments(sent, segs.slice(0, -1)).join(), /inner 6 segments on the wire, expected 7/);
  t.regex(verifyTunnelSegments({ ...sent, outerCsum: false }, segs).join(), /outer UDP checksum 0x[0-9a-f]+, expected 0/);
  const badCsum = segs.map((f) => Uint8Array.from(f));
  badCsum[2][badCsum[2].length - 1] ^= 0x40;
  t.regex(verifyTunnelSegments(sent, badCsum).join(), /bad outer UDP checksum/);
  const sameId = segmentTcp({ ...inner, hops: 0 }).map((seg) => encapsulate(seg, { ...tunnel4, ttl: 63 }, 'full'));
  t.regex(verifyTunnelSegments(sent, sameId).join(), /outer segment 1: outer IPv4 ID 65534, expected 65535/);
  const otherPort = segmentTcp({ ...inner, hops: 0 }).map((seg, i) => encapsulate(seg, { ...tunnel4, ipId: (0xfffe + i) & 0xffff, ttl: 63, outer: { ...tunnel4.outer, sport: 40009 } }, 'full'));
  t.regex(verifyTunnelSegments(sent, otherPort).join(), /outer UDP ports 40009→4789, expected 40001→4789/);
});

test('verifyTunnelRxFrame: a correct tunnel super-frame header passes; wrong offsets, gso_type and checksums are caught', (t) => {
  const spec: TcpFrameSpec = { flow: flow6, seq: 1, ack: 2, flags: TCP_FLAG.ACK, window: 100, ipId: 1, ttl: 64, df: true, payload: pattern(1300 * 4) };
  for (const csum of [false, true]) {
    const f = encapsulate(buildTcpFrame(spec, 'partial'), tunnel4, csum ? 'partial' : 'none');
    const h = tunnelTxHeader(f, 1300, csum);
    // 6-in-4: the inner type TCPV6, the tunnel bit of the outer family (IPv4), as Linux writes it.
    t.is(h.gsoType, HDR.GSO_TCPV6 | HDR.GSO_UDP_TUNNEL_IPV4);
    t.is(h.outerTh, 34);
    t.is(h.innerNh, 34 + 8 + 8 + 14);
    t.is(h.csumStart, 34 + 8 + 8 + 14 + 40);
    t.is(decapsulate(f)?.vni, 42);
    const e = { innerV6: true, gsoSize: 1300, outerCsum: csum };
    t.deepEqual(verifyTunnelRxFrame(h, f, e), [], `outer csum ${csum}`);
    t.regex(verifyTunnelRxFrame({ ...h, outerTh: 42 }, f, e).join(), /outer_th_offset 42/);
    t.regex(verifyTunnelRxFrame({ ...h, innerNh: 50 }, f, e).join(), /inner_nh_offset 50/);
    t.regex(verifyTunnelRxFrame({ ...h, gsoType: HDR.GSO_TCPV6 | HDR.GSO_UDP_TUNNEL_IPV6 }, f, e).join(), /gso_type 0x44, expected 0x24/);
    t.regex(verifyTunnelRxFrame({ ...h, csumStart: h.csumStart + 2 }, f, e).join(), /inner: csum_start/);
  }
  // The outer checksum asked for, but the header does not say UDP_TUNNEL_CSUM; and a full outer
  // checksum where the pseudo-header sum belongs.
  const f = encapsulate(buildTcpFrame(spec, 'partial'), tunnel4, 'full');
  const h = tunnelTxHeader(f, 1300, true);
  t.regex(verifyTunnelRxFrame(h, f, { innerV6: true, gsoSize: 1300, outerCsum: true }).join(), /partial outer UDP checksum does not complete/);
  t.regex(verifyTunnelRxFrame({ ...h, flags: HDR.F_NEEDS_CSUM }, f, { innerV6: true, gsoSize: 1300, outerCsum: true }).join(), /UDP_TUNNEL_CSUM is not set/);
});

// ------------------------------------------------------------------ pcap

test('parsePcap reads what writePcap wrote, both byte orders, and stops at a torn record', (t) => {
  const frames = [pattern(60), pattern(1514, 7), pattern(14)];
  const file = writePcap(frames);
  const p = parsePcap(file);
  t.is(p.linkType, 1);
  t.deepEqual(p.packets.map((x) => Array.from(x.data)), frames.map((f) => Array.from(f)));
  t.deepEqual(p.packets.map((x) => x.origLen), [60, 1514, 14]);
  // Big-endian file: swap every header field.
  const be = Uint8Array.from(file);
  const dv = new DataView(be.buffer);
  const sw32 = (o: number): void => dv.setUint32(o, dv.getUint32(o, true), false);
  const sw16 = (o: number): void => dv.setUint16(o, dv.getUint16(o, true), false);
  sw32(0);
  sw16(4);
  sw16(6);
  sw32(16);
  sw32(20);
  for (let o = 24, i = 0; i < frames.length; i++) {
    const len = dv.getUint32(o + 8, true);
    for (const k of [0, 4, 8, 12]) sw32(o + k);
    o += 16 + len;
  }
  t.is(parsePcap(be).packets.length, 3);
  t.is(parsePcap(be).packets[1].data.length, 1514);
  t.is(parsePcap(file.subarray(0, file.length - 5)).packets.length, 2, 'a record still being written is left out');
  t.throws(() => parsePcap(new Uint8Array(24)), { message: /unknown magic/ });
  t.throws(() => parsePcap(new Uint8Array(10)), { message: /shorter/ });
});
