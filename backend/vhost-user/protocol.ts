// vhost-user protocol constants (QEMU docs/interop/vhost-user.rst) the
// session needs in TypeScript: request numbers, header flags, protocol
// feature bits. native/vhost_user.h defines the same numbers for the codec;
// test/vhost-user-codec.test.ts compares the two.

/** Front-end request numbers by the spec's names (without VHOST_USER_). */
export const REQ = {
  GET_FEATURES: 1,
  SET_FEATURES: 2,
  SET_OWNER: 3,
  RESET_OWNER: 4,
  SET_MEM_TABLE: 5,
  SET_LOG_BASE: 6,
  SET_LOG_FD: 7,
  SET_VRING_NUM: 8,
  SET_VRING_ADDR: 9,
  SET_VRING_BASE: 10,
  GET_VRING_BASE: 11,
  SET_VRING_KICK: 12,
  SET_VRING_CALL: 13,
  SET_VRING_ERR: 14,
  GET_PROTOCOL_FEATURES: 15,
  SET_PROTOCOL_FEATURES: 16,
  GET_QUEUE_NUM: 17,
  SET_VRING_ENABLE: 18,
  SEND_RARP: 19,
  NET_SET_MTU: 20,
  SET_BACKEND_REQ_FD: 21,
  IOTLB_MSG: 22,
  SET_VRING_ENDIAN: 23,
  GET_CONFIG: 24,
  SET_CONFIG: 25,
  CREATE_CRYPTO_SESSION: 26,
  CLOSE_CRYPTO_SESSION: 27,
  POSTCOPY_ADVISE: 28,
  POSTCOPY_LISTEN: 29,
  POSTCOPY_END: 30,
  GET_INFLIGHT_FD: 31,
  SET_INFLIGHT_FD: 32,
  GPU_SET_SOCKET: 33,
  RESET_DEVICE: 34,
  VRING_KICK: 35,
  GET_MAX_MEM_SLOTS: 36,
  ADD_MEM_REG: 37,
  REM_MEM_REG: 38,
  SET_STATUS: 39,
  GET_STATUS: 40,
} as const;

export type RequestName = keyof typeof REQ;

/** Header flags: version in bits 0-1, reply (2), need_reply (3). */
export const FLAG = {
  VERSION: 1,
  VERSION_MASK: 0x3,
  REPLY: 1 << 2,
  NEED_REPLY: 1 << 3,
} as const;

/** Protocol feature bits (GET/SET_PROTOCOL_FEATURES). */
export const PROTOCOL_F = {
  MQ: 0,
  LOG_SHMFD: 1,
  RARP: 2,
  REPLY_ACK: 3,
  NET_MTU: 4,
  BACKEND_REQ: 5,
  CROSS_ENDIAN: 6,
  CRYPTO_SESSION: 7,
  PAGEFAULT: 8,
  CONFIG: 9,
  BACKEND_SEND_FD: 10,
  HOST_NOTIFIER: 11,
  INFLIGHT_SHMFD: 12,
  RESET_DEVICE: 13,
  INBAND_NOTIFICATIONS: 14,
  CONFIGURE_MEM_SLOTS: 15,
  STATUS: 16,
} as const;

/** Virtio feature bit 30: the back end speaks GET/SET_PROTOCOL_FEATURES (not a device feature). */
export const F_PROTOCOL_FEATURES = 30;
/** Virtio feature bit 26: dirty-page logging for live migration (VHOST_F_LOG_ALL). */
export const F_LOG_ALL = 26;

/** SET_VRING_KICK/CALL/ERR u64: vring index in bits 0-7, bit 8 = no fd (poll instead). */
export const VRING_INDEX_MASK = 0xff;
export const VRING_NOFD = 0x100;
/** SET_VRING_ADDR flags bit 0 (VHOST_VRING_F_LOG): log used-ring writes at log_guest_addr. */
export const VRING_F_LOG = 0x1;

/** The header's size and the codec's limits (native/vhost_user.h). */
export const HEADER_SIZE = 12;
export const MAX_FDS = 8;
export const MAX_MEM_REGIONS = 8;

/**
 * Requests whose answer is their own reply: REPLY_ACK adds nothing to them, and refusing one
 * ends the connection. (SET_LOG_BASE has a reply too, with LOG_SHMFD: see the session.)
 */
export const HAS_REPLY: ReadonlySet<number> = new Set([
  REQ.GET_FEATURES,
  REQ.GET_PROTOCOL_FEATURES,
  REQ.GET_VRING_BASE,
  REQ.GET_QUEUE_NUM,
  REQ.IOTLB_MSG,
  REQ.GET_CONFIG,
  REQ.CREATE_CRYPTO_SESSION,
  REQ.POSTCOPY_ADVISE,
  REQ.POSTCOPY_END,
  REQ.GET_INFLIGHT_FD,
  REQ.GET_MAX_MEM_SLOTS,
  REQ.GET_STATUS,
]);

const NAMES: Map<number, string> = new Map(Object.entries(REQ).map(([k, v]) => [v, k]));

/** 'SET_MEM_TABLE' for 5, 'request 99' for an unknown number. */
export function requestName(request: number): string {
  return NAMES.get(request) ?? `request ${request}`;
}

/** Names of the protocol feature bits set in `mask`. */
export function protocolFeatureNames(mask: bigint): string[] {
  const out: string[] = [];
  for (let b = 0n; mask >> b; b++) {
    if (!((mask >> b) & 1n)) continue;
    const name = Object.entries(PROTOCOL_F).find(([, v]) => BigInt(v) === b)?.[0];
    out.push(name ?? `bit ${b}`);
  }
  return out;
}

/** A protocol feature mask. */
export function protocolBits(...names: (keyof typeof PROTOCOL_F)[]): bigint {
  return names.reduce((m, n) => m | (1n << BigInt(PROTOCOL_F[n])), 0n);
}
