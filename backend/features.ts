// Feature negotiation policy: what the device offers (after probing the
// TAP), which driver feature sets are valid, and how negotiated GUEST_*
// features become TUNSETOFFLOAD flags. Pure functions, no I/O except the probe.

import { bit, bits, CTRL, F, FeatureName, featureNames, has, TUN } from './virtio';

/** Always offered: the ring and device basics the data plane implements. */
export const BASE_FEATURES: bigint = bits(
  'VERSION_1',
  'MAC',
  'MTU',
  'STATUS',
  'MRG_RXBUF',
  'RING_EVENT_IDX',
  'RING_INDIRECT_DESC',
  // Both ring layouts and IN_ORDER: the engines, the control queue and vhost-user serve each.
  'RING_PACKED',
  'IN_ORDER',
  // Per-queue reset: VirtioNetDevice.resetQueue() / enableQueue() (not over vhost-user, which
  // has no message for it).
  'RING_RESET',
  'CTRL_VQ',
  'CTRL_RX',
  'CTRL_VLAN',
  'CTRL_RX_EXTRA',
  'CTRL_MAC_ADDR',
  'CTRL_GUEST_OFFLOADS',
  'GUEST_ANNOUNCE',
  'NOTF_COAL',
  'VQ_NOTF_COAL',
);

/** Offered only with more than one queue pair. */
export const MQ_FEATURES: bigint = bit('MQ');

/**
 * Offloads and the TUNSETOFFLOAD flags they need the running kernel to accept.
 * HOST_* (guest → kernel) need nothing from TUNSETOFFLOAD, but the kernel must
 * parse the header: the probe checks the matching TUN flag as evidence the tun
 * driver knows that GSO type (USO came with the same kernel as TUN_F_USO4/6).
 */
export const OFFLOADS: ReadonlyArray<{ feature: FeatureName; tun: number }> = [
  { feature: 'CSUM', tun: 0 },
  { feature: 'GUEST_CSUM', tun: TUN.F_CSUM },
  { feature: 'HOST_TSO4', tun: 0 },
  { feature: 'HOST_TSO6', tun: 0 },
  { feature: 'HOST_ECN', tun: 0 },
  { feature: 'HOST_UFO', tun: TUN.F_CSUM | TUN.F_UFO },
  { feature: 'HOST_USO', tun: TUN.F_CSUM | TUN.F_USO4 | TUN.F_USO6 },
  { feature: 'GUEST_TSO4', tun: TUN.F_CSUM | TUN.F_TSO4 },
  { feature: 'GUEST_TSO6', tun: TUN.F_CSUM | TUN.F_TSO6 },
  { feature: 'GUEST_ECN', tun: TUN.F_CSUM | TUN.F_TSO4 | TUN.F_TSO_ECN },
  { feature: 'GUEST_UFO', tun: TUN.F_CSUM | TUN.F_UFO },
  // tun takes TUN_F_USO4 and TUN_F_USO6 only as a pair (EINVAL for either alone).
  { feature: 'GUEST_USO4', tun: TUN.F_CSUM | TUN.F_USO4 | TUN.F_USO6 },
  { feature: 'GUEST_USO6', tun: TUN.F_CSUM | TUN.F_USO4 | TUN.F_USO6 },
  // GSO over UDP tunnels (Linux 6.17+). tun takes TUN_F_UDP_TUNNEL_GSO only beside a plain
  // GSO flag (TSO4/TSO6/USO), and refuses unknown flags: older kernels say EINVAL, and the
  // features are then simply not offered. The HOST_ pair needs nothing from TUNSETOFFLOAD
  // (tun parses a tunnel header whenever TUNSETVNETHDRSZ is 24 or more), but came in the
  // same release, so the same flags are the evidence.
  { feature: 'GUEST_UDP_TUNNEL_GSO', tun: TUN.F_CSUM | TUN.F_TSO4 | TUN.F_TSO6 | TUN.F_UDP_TUNNEL_GSO },
  { feature: 'GUEST_UDP_TUNNEL_GSO_CSUM', tun: TUN.F_CSUM | TUN.F_TSO4 | TUN.F_TSO6 | TUN.F_UDP_TUNNEL_GSO | TUN.F_UDP_TUNNEL_GSO_CSUM },
  { feature: 'HOST_UDP_TUNNEL_GSO', tun: TUN.F_CSUM | TUN.F_TSO4 | TUN.F_TSO6 | TUN.F_UDP_TUNNEL_GSO },
  { feature: 'HOST_UDP_TUNNEL_GSO_CSUM', tun: TUN.F_CSUM | TUN.F_TSO4 | TUN.F_TSO6 | TUN.F_UDP_TUNNEL_GSO | TUN.F_UDP_TUNNEL_GSO_CSUM },
];

/** The four GSO-over-UDP-tunnel features (bits 65..68). */
export const UDP_TUNNEL_FEATURES: bigint = bits('GUEST_UDP_TUNNEL_GSO', 'GUEST_UDP_TUNNEL_GSO_CSUM', 'HOST_UDP_TUNNEL_GSO', 'HOST_UDP_TUNNEL_GSO_CSUM');

export const OFFLOAD_FEATURES: bigint = OFFLOADS.reduce((m, o) => m | bit(o.feature), 0n);

export interface Capabilities {
  /** Offload features the running kernel's TAP accepts. */
  offloads: string[];
  /** Offloads not offered, with the reason. */
  missing: { feature: string; reason: string }[];
}

/**
 * Tries each offload's TUNSETOFFLOAD flags on a TAP fd and returns the features that
 * work. `setOffload` throws when the kernel refuses a flag set.
 */
export function probeOffloads(setOffload: (flags: number) => void): { offered: bigint; caps: Capabilities } {
  let offered = 0n;
  const caps: Capabilities = { offloads: [], missing: [] };
  for (const o of OFFLOADS) {
    try {
      setOffload(o.tun);
      offered |= bit(o.feature);
      caps.offloads.push(o.feature);
    } catch (e) {
      caps.missing.push({
        feature: o.feature,
        reason: `kernel refused TUNSETOFFLOAD 0x${o.tun.toString(16)}: ${(e as Error).message}`,
      });
    }
  }
  setOffload(0);
  // An offload whose prerequisites the kernel lacks cannot be negotiated: say so instead of
  // offering it (the tunnel offloads need every plain GSO offload of their direction).
  for (const d of DEPENDENCIES) {
    if (!has(offered, d.feature) || !d.needs) continue;
    const lacking = d.needs.filter((n) => !has(offered, n));
    if (!lacking.length) continue;
    offered &= ~bit(d.feature);
    caps.offloads = caps.offloads.filter((o) => o !== d.feature);
    caps.missing.push({ feature: d.feature, reason: `needs ${lacking.join(' and ')}, which this kernel's TAP lacks` });
  }
  return { offered, caps };
}

/** Feature → features it needs (virtio 1.x §5.1.3.1). Each entry: all of `needs`, or one of `needsAny`. */
const DEPENDENCIES: ReadonlyArray<{ feature: FeatureName; needs?: FeatureName[]; needsAny?: FeatureName[] }> = [
  { feature: 'GUEST_TSO4', needs: ['GUEST_CSUM'] },
  { feature: 'GUEST_TSO6', needs: ['GUEST_CSUM'] },
  { feature: 'GUEST_UFO', needs: ['GUEST_CSUM'] },
  { feature: 'GUEST_USO4', needs: ['GUEST_CSUM'] },
  { feature: 'GUEST_USO6', needs: ['GUEST_CSUM'] },
  { feature: 'GUEST_ECN', needsAny: ['GUEST_TSO4', 'GUEST_TSO6'] },
  { feature: 'HOST_TSO4', needs: ['CSUM'] },
  { feature: 'HOST_TSO6', needs: ['CSUM'] },
  { feature: 'HOST_UFO', needs: ['CSUM'] },
  { feature: 'HOST_USO', needs: ['CSUM'] },
  { feature: 'HOST_ECN', needsAny: ['HOST_TSO4', 'HOST_TSO6'] },
  // virtio 1.4 §5.1.3.1: a tunnel offload needs every plain GSO offload of its direction.
  { feature: 'GUEST_UDP_TUNNEL_GSO', needs: ['GUEST_TSO4', 'GUEST_TSO6', 'GUEST_USO4', 'GUEST_USO6'] },
  { feature: 'GUEST_UDP_TUNNEL_GSO_CSUM', needs: ['GUEST_UDP_TUNNEL_GSO'] },
  { feature: 'HOST_UDP_TUNNEL_GSO', needs: ['HOST_TSO4', 'HOST_TSO6', 'HOST_USO'] },
  { feature: 'HOST_UDP_TUNNEL_GSO_CSUM', needs: ['HOST_UDP_TUNNEL_GSO'] },
  { feature: 'CTRL_RX', needs: ['CTRL_VQ'] },
  { feature: 'CTRL_VLAN', needs: ['CTRL_VQ'] },
  { feature: 'CTRL_RX_EXTRA', needs: ['CTRL_RX'] },
  { feature: 'GUEST_ANNOUNCE', needs: ['CTRL_VQ'] },
  { feature: 'MQ', needs: ['CTRL_VQ'] },
  { feature: 'CTRL_MAC_ADDR', needs: ['CTRL_VQ'] },
  { feature: 'CTRL_GUEST_OFFLOADS', needs: ['CTRL_VQ'] },
  { feature: 'NOTF_COAL', needs: ['CTRL_VQ'] },
  { feature: 'VQ_NOTF_COAL', needs: ['CTRL_VQ'] },
  { feature: 'RSS', needs: ['CTRL_VQ'] },
  { feature: 'HASH_REPORT', needs: ['CTRL_VQ'] },
];

/**
 * Why a driver feature set cannot be accepted at FEATURES_OK, or null when it can.
 * The device refuses bits it did not offer and sets that break a dependency.
 */
export function validateDriverFeatures(driver: bigint, offered: bigint): string | null {
  const extra = driver & ~offered;
  if (extra) return `driver accepted features the device did not offer: ${featureNames(extra).join(', ')}`;
  for (const d of DEPENDENCIES) {
    if (!has(driver, d.feature)) continue;
    if (d.needs) {
      const lacking = d.needs.filter((n) => !has(driver, n));
      if (lacking.length) return `${d.feature} requires ${lacking.join(' and ')}`;
    }
    if (d.needsAny && !d.needsAny.some((n) => has(driver, n))) {
      return `${d.feature} requires one of ${d.needsAny.join(', ')}`;
    }
  }
  return null;
}

/** GUEST_* offload bits (what CTRL_GUEST_OFFLOADS may change at run time). */
export const GUEST_OFFLOAD_FEATURES: bigint = bits(
  'GUEST_CSUM',
  'GUEST_TSO4',
  'GUEST_TSO6',
  'GUEST_ECN',
  'GUEST_UFO',
  'GUEST_USO4',
  'GUEST_USO6',
  'GUEST_UDP_TUNNEL_GSO',
  'GUEST_UDP_TUNNEL_GSO_CSUM',
);

/** Features above 63 that GUEST_OFFLOADS_SET's le64 carries at another bit (virtio 1.4 §5.1.6.5.6.1). */
const OFFLOAD_WORD_MAP: ReadonlyArray<{ feature: FeatureName; word: number }> = [
  { feature: 'GUEST_UDP_TUNNEL_GSO', word: CTRL.OFFLOAD_GUEST_UDP_TUNNEL_GSO },
  { feature: 'GUEST_UDP_TUNNEL_GSO_CSUM', word: CTRL.OFFLOAD_GUEST_UDP_TUNNEL_GSO_CSUM },
];

/**
 * GUEST_OFFLOADS_SET's le64 → feature bits: bits below 64 are the features of the same
 * number, except 46 and 47, which stand for the tunnel features 65 and 66.
 */
export function offloadsFromWord(word: bigint): bigint {
  let f = word & ((1n << 64n) - 1n);
  for (const m of OFFLOAD_WORD_MAP) {
    const w = 1n << BigInt(m.word);
    if (f & w) f = (f & ~w) | bit(m.feature);
  }
  return f;
}

/** The inverse of offloadsFromWord: the le64 a driver sends in GUEST_OFFLOADS_SET for a set of GUEST_* features. */
export function offloadsToWord(features: bigint): bigint {
  let w = features & ((1n << 64n) - 1n);
  for (const m of OFFLOAD_WORD_MAP) if (has(features, m.feature)) w |= 1n << BigInt(m.word);
  return w;
}

/** TUNSETOFFLOAD flags for the GUEST_* features the driver can receive. */
export function tunOffloads(features: bigint): number {
  if (!has(features, 'GUEST_CSUM')) return 0;
  let f = TUN.F_CSUM;
  if (has(features, 'GUEST_TSO4')) f |= TUN.F_TSO4;
  if (has(features, 'GUEST_TSO6')) f |= TUN.F_TSO6;
  if (has(features, 'GUEST_ECN')) f |= TUN.F_TSO_ECN;
  if (has(features, 'GUEST_UFO')) f |= TUN.F_UFO;
  // tun refuses one USO flag without the other; a driver taking only one gets
  // neither, and the kernel segments UDP GSO in software before the TAP.
  if (has(features, 'GUEST_USO4') && has(features, 'GUEST_USO6')) f |= TUN.F_USO4 | TUN.F_USO6;
  // tun takes the tunnel flags only beside a plain GSO flag (EINVAL otherwise).
  if (has(features, 'GUEST_UDP_TUNNEL_GSO') && f & (TUN.F_TSO4 | TUN.F_TSO6 | TUN.F_USO4)) {
    f |= TUN.F_UDP_TUNNEL_GSO;
    if (has(features, 'GUEST_UDP_TUNNEL_GSO_CSUM')) f |= TUN.F_UDP_TUNNEL_GSO_CSUM;
  }
  return f;
}

/** True when the driver can receive super-frames (any GUEST_* segmentation offload). */
export function guestReceivesGso(features: bigint): boolean {
  return (features & bits('GUEST_TSO4', 'GUEST_TSO6', 'GUEST_UFO', 'GUEST_USO4', 'GUEST_USO6')) !== 0n;
}

/**
 * Largest RX frame including the virtio_net_hdr: the spec's buffer sizes for drivers
 * without MRG_RXBUF (§5.1.6.3.1): 65562 with GSO, else the MTU plus Ethernet header
 * (1526 for a 1500 MTU and a 12-byte header). A VLAN-tagged full-MTU frame does not
 * fit that; the engine counts it as truncated rather than refusing spec-sized buffers.
 */
export function rxFrameMax(features: bigint, hdrLen: number, mtu: number): number {
  if (guestReceivesGso(features)) return hdrLen + 65550;
  return hdrLen + 14 + mtu;
}

export { F };
