// Feature negotiation policy (backend/features.ts): which driver feature sets
// the device accepts at FEATURES_OK, how negotiated GUEST_* features become
// TUNSETOFFLOAD flags, the largest RX frame, and the offload probe.

import test from 'ava';

import {
  BASE_FEATURES,
  MQ_FEATURES,
  OFFLOAD_FEATURES,
  OFFLOADS,
  offloadsFromWord,
  offloadsToWord,
  probeOffloads,
  UDP_TUNNEL_FEATURES,
  rxFrameMax,
  tunOffloads,
  validateDriverFeatures,
} from '../backend/features';
import { bit, bits, F, type FeatureName, TUN } from '../backend/virtio';
import { udpTunnelNote } from '../cli/run';

/** Every named bit: a device offering everything, so only the dependency rules can refuse. */
const ALL: bigint = Object.values(F).reduce((m, b) => m | (1n << BigInt(b)), 0n);

/**
 * The dependency rules of VIRTIO-NET.md (virtio 1.x §5.1.3.1), plus CTRL_RX_EXTRA → CTRL_RX
 * and CTRL_GUEST_OFFLOADS → CTRL_VQ from the same section of the spec.
 * `all`: every listed feature is needed; `any`: one of them is.
 */
const RULES: ReadonlyArray<{ feature: FeatureName; all?: FeatureName[]; any?: FeatureName[] }> = [
  { feature: 'GUEST_TSO4', all: ['GUEST_CSUM'] },
  { feature: 'GUEST_TSO6', all: ['GUEST_CSUM'] },
  { feature: 'GUEST_UFO', all: ['GUEST_CSUM'] },
  { feature: 'GUEST_USO4', all: ['GUEST_CSUM'] },
  { feature: 'GUEST_USO6', all: ['GUEST_CSUM'] },
  { feature: 'GUEST_ECN', any: ['GUEST_TSO4', 'GUEST_TSO6'] },
  { feature: 'HOST_TSO4', all: ['CSUM'] },
  { feature: 'HOST_TSO6', all: ['CSUM'] },
  { feature: 'HOST_UFO', all: ['CSUM'] },
  { feature: 'HOST_USO', all: ['CSUM'] },
  { feature: 'HOST_ECN', any: ['HOST_TSO4', 'HOST_TSO6'] },
  { feature: 'CTRL_RX', all: ['CTRL_VQ'] },
  { feature: 'CTRL_VLAN', all: ['CTRL_VQ'] },
  { feature: 'GUEST_ANNOUNCE', all: ['CTRL_VQ'] },
  { feature: 'MQ', all: ['CTRL_VQ'] },
  { feature: 'CTRL_MAC_ADDR', all: ['CTRL_VQ'] },
  { feature: 'RSS', all: ['CTRL_VQ'] },
  { feature: 'CTRL_RX_EXTRA', all: ['CTRL_RX'] },
  { feature: 'CTRL_GUEST_OFFLOADS', all: ['CTRL_VQ'] },
];

/** What a feature transitively needs to be valid on its own (choosing the first alternative of `any`). */
function closure(f: FeatureName): bigint {
  let m = bit(f);
  const r = RULES.find((x) => x.feature === f);
  for (const d of r?.all ?? []) m |= closure(d);
  if (r?.any) m |= closure(r.any[0]);
  return m;
}

for (const r of RULES) {
  const needs = r.all ?? r.any!;
  test(`${r.feature} without ${needs.join(r.all ? ' and ' : ' or ')} is refused, naming both`, (t) => {
    // Everything else the feature needs transitively is present: only this rule can fire.
    let driver = closure(r.feature);
    for (const n of needs) driver &= ~bit(n);
    // Keep transitive needs of the removed ones out of the way: they are harmless on their own.
    const msg = validateDriverFeatures(driver, ALL);
    t.truthy(msg, `validateDriverFeatures accepted ${r.feature} without ${needs.join('/')}`);
    t.regex(msg!, new RegExp(`\\b${r.feature}\\b`), `message does not name ${r.feature}: ${msg}`);
    for (const n of needs) t.regex(msg!, new RegExp(`\\b${n}\\b`), `message does not name ${n}: ${msg}`);
  });

  test(`${r.feature} with what it needs is accepted`, (t) => {
    t.is(validateDriverFeatures(closure(r.feature), ALL), null);
    if (r.any) {
      for (const alt of r.any) t.is(validateDriverFeatures(bit(r.feature) | closure(alt), ALL), null, `${r.feature} with ${alt}`);
    }
  });
}

test('common driver feature sets are accepted', (t) => {
  t.is(validateDriverFeatures(0n, ALL), null);
  t.is(validateDriverFeatures(bit('VERSION_1'), BASE_FEATURES), null);
  // What Linux's virtio_net accepts of everything this device can offer.
  t.is(validateDriverFeatures(BASE_FEATURES | OFFLOAD_FEATURES | MQ_FEATURES, BASE_FEATURES | OFFLOAD_FEATURES | MQ_FEATURES), null);
  t.is(validateDriverFeatures(BASE_FEATURES, BASE_FEATURES), null);
  t.is(
    validateDriverFeatures(
      bits('VERSION_1', 'CSUM', 'HOST_TSO4', 'HOST_TSO6', 'HOST_ECN', 'GUEST_CSUM', 'GUEST_TSO6', 'GUEST_ECN', 'MRG_RXBUF'),
      ALL,
    ),
    null,
  );
});

test('the device offers a consistent set: BASE, MQ and offloads together pass its own rules', (t) => {
  t.is(validateDriverFeatures(BASE_FEATURES | MQ_FEATURES | OFFLOAD_FEATURES, ALL), null);
});

test('bits the device did not offer are refused, by name', (t) => {
  const offered = BASE_FEATURES;
  const msg = validateDriverFeatures(bits('VERSION_1', 'NOTIFICATION_DATA'), offered);
  t.truthy(msg);
  t.regex(msg!, /NOTIFICATION_DATA/);
  t.regex(msg!, /not offer/);
  const msg2 = validateDriverFeatures(bits('VERSION_1', 'MQ', 'CTRL_VQ'), offered);
  t.regex(msg2 ?? '', /\bMQ\b/);
  // An offered set minus one bit is fine; the same set plus one unoffered bit is not.
  t.is(validateDriverFeatures(offered & ~bit('MAC'), offered), null);
  t.truthy(validateDriverFeatures(offered | bit('GUEST_TSO4') | bit('GUEST_CSUM'), offered));
});

test('bits with no name (reserved) are refused when not offered, and the message says which bit', (t) => {
  const msg = validateDriverFeatures(bit('VERSION_1') | (1n << 45n), ALL);
  t.truthy(msg, 'reserved bit 45 accepted');
  t.regex(msg ?? '', /45/, `message does not say which bit: ${msg}`);
});

// --- tunOffloads ------------------------------------------------------------------------

test('tunOffloads maps GUEST_* features to TUNSETOFFLOAD flags', (t) => {
  t.is(tunOffloads(0n), 0);
  t.is(tunOffloads(bit('GUEST_CSUM')), TUN.F_CSUM);
  const map: Array<[FeatureName, number]> = [
    ['GUEST_TSO4', TUN.F_TSO4],
    ['GUEST_TSO6', TUN.F_TSO6],
    ['GUEST_UFO', TUN.F_UFO],
  ];
  for (const [f, flag] of map) t.is(tunOffloads(bits('GUEST_CSUM', f)), TUN.F_CSUM | flag, f);
  // tun takes the two USO flags only together: one alone maps to neither.
  t.is(tunOffloads(bits('GUEST_CSUM', 'GUEST_USO4')), TUN.F_CSUM);
  t.is(tunOffloads(bits('GUEST_CSUM', 'GUEST_USO6')), TUN.F_CSUM);
  t.is(tunOffloads(bits('GUEST_CSUM', 'GUEST_USO4', 'GUEST_USO6')), TUN.F_CSUM | TUN.F_USO4 | TUN.F_USO6);
  t.is(tunOffloads(bits('GUEST_CSUM', 'GUEST_TSO4', 'GUEST_ECN')), TUN.F_CSUM | TUN.F_TSO4 | TUN.F_TSO_ECN);
  t.is(
    tunOffloads(bits('GUEST_CSUM', 'GUEST_TSO4', 'GUEST_TSO6', 'GUEST_ECN', 'GUEST_UFO', 'GUEST_USO4', 'GUEST_USO6')),
    0x7f,
  );
});

test('tunOffloads: no flags without GUEST_CSUM (every TUN segmentation flag needs TUN_F_CSUM)', (t) => {
  t.is(tunOffloads(bits('GUEST_TSO4', 'GUEST_TSO6', 'GUEST_UFO')), 0);
});

test('tunOffloads ignores HOST_* and non-offload bits (they describe the TX direction)', (t) => {
  t.is(tunOffloads(bits('CSUM', 'HOST_TSO4', 'HOST_TSO6', 'HOST_ECN', 'HOST_UFO', 'HOST_USO', 'VERSION_1', 'MRG_RXBUF')), 0);
  t.is(tunOffloads(bits('GUEST_CSUM', 'HOST_TSO4', 'CSUM')), TUN.F_CSUM);
});

// --- rxFrameMax ------------------------------------------------------------------------

test('rxFrameMax: 65562 with GSO and a 12-byte header', (t) => {
  for (const f of ['GUEST_TSO4', 'GUEST_TSO6', 'GUEST_UFO', 'GUEST_USO4', 'GUEST_USO6'] as FeatureName[]) {
    t.is(rxFrameMax(bits('GUEST_CSUM', f), 12, 1500), 65562, f);
  }
  t.is(rxFrameMax(bits('GUEST_CSUM', 'GUEST_TSO4'), 10, 1500), 65560);
});

test('rxFrameMax: MTU + Ethernet header + virtio header without GSO', (t) => {
  t.is(rxFrameMax(0n, 12, 1500), 1526);
  t.is(rxFrameMax(bit('GUEST_CSUM'), 12, 1500), 1526, 'checksum offload alone does not mean super-frames');
  t.is(rxFrameMax(bits('CSUM', 'HOST_TSO4'), 12, 1500), 1526, 'TX offloads do not change RX sizes');
  t.is(rxFrameMax(0n, 10, 9000), 9024);
});

// --- probeOffloads ---------------------------------------------------------------------

test('probeOffloads offers everything a kernel accepts', (t) => {
  const calls: number[] = [];
  const { offered, caps } = probeOffloads((flags) => {
    calls.push(flags);
  });
  t.is(offered, OFFLOAD_FEATURES);
  t.deepEqual(caps.missing, []);
  t.deepEqual([...caps.offloads].sort(), OFFLOADS.map((o) => o.feature as string).sort());
  t.is(calls[calls.length - 1], 0, 'the probe leaves the TAP with no offloads');
});

test('probeOffloads drops what the kernel refuses and says why', (t) => {
  // A kernel without USO (before 6.2): TUNSETOFFLOAD with TUN_F_USO4/6 fails with EINVAL.
  const refuse = TUN.F_USO4 | TUN.F_USO6;
  const calls: number[] = [];
  const { offered, caps } = probeOffloads((flags) => {
    calls.push(flags);
    if (flags & refuse) throw Object.assign(new Error('Invalid argument'), { code: 'EINVAL' });
  });
  const uso = bits('HOST_USO', 'GUEST_USO4', 'GUEST_USO6');
  // The UDP tunnel offloads need USO (virtio 1.4 §5.1.3.1): they go too.
  t.is(offered, OFFLOAD_FEATURES & ~uso & ~UDP_TUNNEL_FEATURES);
  t.deepEqual(caps.missing.filter((m) => !/TUNNEL/.test(m.feature)).map((m) => m.feature).sort(), ['GUEST_USO4', 'GUEST_USO6', 'HOST_USO']);
  for (const m of caps.missing.filter((m) => !/TUNNEL/.test(m.feature))) {
    t.regex(m.reason, /Invalid argument/);
    t.regex(m.reason, /0x[0-9a-f]+/);
  }
  t.false(caps.offloads.some((o) => o.includes('USO')));
  t.true(caps.offloads.includes('GUEST_TSO4'));
  t.is(calls[calls.length - 1], 0);
});

test('probeOffloads with a kernel that refuses ECN and UFO', (t) => {
  const refuse = TUN.F_TSO_ECN | TUN.F_UFO;
  const { offered, caps } = probeOffloads((flags) => {
    if (flags & refuse) throw new Error('no');
  });
  t.is(offered & bits('GUEST_ECN', 'GUEST_UFO', 'HOST_UFO'), 0n);
  t.is(offered & bits('GUEST_TSO4', 'GUEST_TSO6', 'GUEST_CSUM', 'CSUM', 'HOST_TSO4', 'HOST_ECN'), bits('GUEST_TSO4', 'GUEST_TSO6', 'GUEST_CSUM', 'CSUM', 'HOST_TSO4', 'HOST_ECN'));
  t.deepEqual(caps.missing.map((m) => m.feature).sort(), ['GUEST_ECN', 'GUEST_UFO', 'HOST_UFO']);
  // Whatever the probe offers must be negotiable as a whole.
  t.is(validateDriverFeatures(offered, offered), null);
});

test('probeOffloads with a kernel refusing every flag offers only what needs no TUN flag', (t) => {
  const { offered, caps } = probeOffloads((flags) => {
    if (flags !== 0) throw new Error('EINVAL');
  });
  t.is(offered & bits('GUEST_CSUM', 'GUEST_TSO4', 'GUEST_TSO6', 'GUEST_ECN', 'GUEST_UFO', 'GUEST_USO4', 'GUEST_USO6'), 0n);
  t.is(caps.offloads.length + caps.missing.length, OFFLOADS.length);
  t.is(validateDriverFeatures(offered, offered), null);
});

// --- GSO over UDP tunnels (virtio 1.4, features 65..68) ------------------------------------

test('a kernel without UDP tunnel GSO (TUN_F_UDP_TUNNEL_GSO refused, before 6.17): the four features are not offered, each with the reason', (t) => {
  const { offered, caps } = probeOffloads((flags) => {
    if (flags & (TUN.F_UDP_TUNNEL_GSO | TUN.F_UDP_TUNNEL_GSO_CSUM)) throw new Error('Invalid argument');
  });
  t.is(offered & UDP_TUNNEL_FEATURES, 0n);
  t.is(offered, OFFLOAD_FEATURES & ~UDP_TUNNEL_FEATURES);
  t.deepEqual(caps.missing.map((m) => m.feature).sort(), ['GUEST_UDP_TUNNEL_GSO', 'GUEST_UDP_TUNNEL_GSO_CSUM', 'HOST_UDP_TUNNEL_GSO', 'HOST_UDP_TUNNEL_GSO_CSUM']);
  for (const m of caps.missing) t.regex(m.reason, /TUNSETOFFLOAD 0x1?8[0-9a-f].*Invalid argument/);
  t.is(validateDriverFeatures(offered, offered), null);
});

test('a kernel with tunnel GSO but without USO: the tunnel features are not offered (they need USO), and the reason says so', (t) => {
  const { offered, caps } = probeOffloads((flags) => {
    if (flags & (TUN.F_USO4 | TUN.F_USO6)) throw new Error('Invalid argument');
  });
  t.is(offered & UDP_TUNNEL_FEATURES, 0n);
  const why = caps.missing.find((m) => m.feature === 'GUEST_UDP_TUNNEL_GSO')?.reason ?? '';
  t.regex(why, /needs GUEST_USO4 and GUEST_USO6/);
  t.false(caps.offloads.includes('HOST_UDP_TUNNEL_GSO'));
  t.is(validateDriverFeatures(offered, offered), null);
});

test('tunnel feature dependencies (virtio 1.4 §5.1.3.1): every plain GSO offload of the direction, and _CSUM needs the base', (t) => {
  const guestGso = bits('GUEST_CSUM', 'GUEST_TSO4', 'GUEST_TSO6', 'GUEST_USO4', 'GUEST_USO6');
  const hostGso = bits('CSUM', 'HOST_TSO4', 'HOST_TSO6', 'HOST_USO');
  t.is(validateDriverFeatures(guestGso | bits('GUEST_UDP_TUNNEL_GSO', 'GUEST_UDP_TUNNEL_GSO_CSUM'), ALL), null);
  t.is(validateDriverFeatures(hostGso | bits('HOST_UDP_TUNNEL_GSO', 'HOST_UDP_TUNNEL_GSO_CSUM'), ALL), null);
  t.regex(validateDriverFeatures((guestGso & ~bit('GUEST_USO6')) | bit('GUEST_UDP_TUNNEL_GSO'), ALL) ?? '', /GUEST_UDP_TUNNEL_GSO requires GUEST_USO6/);
  t.regex(validateDriverFeatures(hostGso | bit('HOST_UDP_TUNNEL_GSO_CSUM'), ALL) ?? '', /HOST_UDP_TUNNEL_GSO_CSUM requires HOST_UDP_TUNNEL_GSO/);
  t.regex(validateDriverFeatures(guestGso | bit('GUEST_UDP_TUNNEL_GSO_CSUM'), ALL) ?? '', /GUEST_UDP_TUNNEL_GSO_CSUM requires GUEST_UDP_TUNNEL_GSO/);
  t.regex(validateDriverFeatures((hostGso & ~bit('HOST_USO')) | bit('HOST_UDP_TUNNEL_GSO'), ALL) ?? '', /HOST_UDP_TUNNEL_GSO requires HOST_USO/);
});

test('tunOffloads: GUEST_UDP_TUNNEL_GSO(_CSUM) become TUN_F_UDP_TUNNEL_GSO(_CSUM) (0x80, 0x100), only beside a plain GSO flag', (t) => {
  const guestGso = bits('GUEST_CSUM', 'GUEST_TSO4', 'GUEST_TSO6', 'GUEST_USO4', 'GUEST_USO6');
  t.is(tunOffloads(guestGso | bit('GUEST_UDP_TUNNEL_GSO')), 0x01 | 0x02 | 0x04 | 0x20 | 0x40 | 0x80);
  t.is(tunOffloads(guestGso | bits('GUEST_UDP_TUNNEL_GSO', 'GUEST_UDP_TUNNEL_GSO_CSUM')), 0x1e7);
  // CSUM alone: tun refuses the tunnel flags (EINVAL), so they are left out.
  t.is(tunOffloads(bits('GUEST_CSUM', 'GUEST_UDP_TUNNEL_GSO', 'GUEST_UDP_TUNNEL_GSO_CSUM')), TUN.F_CSUM);
  t.is(tunOffloads(guestGso | bit('GUEST_UDP_TUNNEL_GSO_CSUM')) & 0x100, 0, '_CSUM alone is nothing');
  t.is(tunOffloads(bits('HOST_UDP_TUNNEL_GSO', 'HOST_UDP_TUNNEL_GSO_CSUM')), 0, 'HOST_ bits describe TX');
});

test('GUEST_OFFLOADS_SET word: bits 46 and 47 stand for features 65 and 66 (virtio 1.4 §5.1.6.5.6.1), the rest map to themselves', (t) => {
  t.is(offloadsFromWord(1n << 46n), bit('GUEST_UDP_TUNNEL_GSO'));
  t.is(offloadsFromWord(1n << 47n), bit('GUEST_UDP_TUNNEL_GSO_CSUM'));
  const plain = bits('GUEST_CSUM', 'GUEST_TSO4', 'GUEST_USO6');
  t.is(offloadsFromWord(plain | (3n << 46n)), plain | bits('GUEST_UDP_TUNNEL_GSO', 'GUEST_UDP_TUNNEL_GSO_CSUM'));
  t.is(offloadsToWord(plain | bits('GUEST_UDP_TUNNEL_GSO', 'GUEST_UDP_TUNNEL_GSO_CSUM')), plain | (3n << 46n));
  for (const f of [0n, plain, plain | bit('GUEST_UDP_TUNNEL_GSO')]) t.is(offloadsFromWord(offloadsToWord(f)), f);
  t.true(offloadsToWord(ALL) < 1n << 64n, 'the word is a u64');
});

test('the ready line says what holds for UDP tunnel GSO: unsupported by the kernel, offered, or which directions were taken', (t) => {
  t.regex(udpTunnelNote({ kernel: false, guest: false, host: false, why: 'x' }), /unsupported by this kernel/);
  t.is(udpTunnelNote({ kernel: true, guest: false, host: false }), 'udp tunnel gso offered, not negotiated');
  t.is(udpTunnelNote({ kernel: true, guest: true, host: true }), 'udp tunnel gso tx+rx');
  t.is(udpTunnelNote({ kernel: true, guest: true, host: false }), 'udp tunnel gso rx');
  t.regex(udpTunnelNote({ kernel: true, guest: false, host: false }, true), /not offered \(vhost-user features are 64 bits\)/);
});
