// Receive-side scaling and hash reports (virtio 1.2 §5.1.6.5.7,
// §5.1.6.4.3): the device's limits as its config space states them, and the
// two control commands that configure hashing (MQ RSS_CONFIG, MQ HASH_CONFIG)
// decoded and checked in full before anything changes. Pure functions: the
// device applies what they return; a reason string means VIRTIO_NET_ERR.

/** VIRTIO_NET_RSS_HASH_TYPE_* bits (supported_hash_types, hash_types). */
export const HASH_TYPE = {
  IPv4: 1 << 0,
  TCPv4: 1 << 1,
  UDPv4: 1 << 2,
  IPv6: 1 << 3,
  TCPv6: 1 << 4,
  UDPv6: 1 << 5,
  IP_EX: 1 << 6,
  TCP_EX: 1 << 7,
  UDP_EX: 1 << 8,
} as const;

/** VIRTIO_NET_HASH_REPORT_* (hash_report in the RX header). */
export const HASH_REPORT = {
  NONE: 0,
  IPv4: 1,
  TCPv4: 2,
  UDPv4: 3,
  IPv6: 4,
  TCPv6: 5,
  UDPv6: 6,
  IPv6_EX: 7,
  TCPv6_EX: 8,
  UDPv6_EX: 9,
} as const;

/** Offsets of the hash fields in struct virtio_net_hdr_v1_hash. */
export const HDR_HASH = { OFF_HASH_VALUE: 12, OFF_HASH_REPORT: 16 } as const;

/**
 * rss_max_key_size: 40 bytes, the Toeplitz key Windows and Linux use, and what the longest
 * input (IPv6 addresses and ports, 36 bytes) needs: 36 × 8 + 32 bits.
 */
export const RSS_MAX_KEY_SIZE = 40;

/**
 * rss_max_indirection_table_length: 128 entries, what Windows' RSS asks for at most and
 * Linux's default table size; the table is copied per configuration, so it stays small.
 */
export const RSS_MAX_INDIRECTION_TABLE_LENGTH = 128;

/**
 * supported_hash_types: the IPv4/IPv6 TCP/UDP types. The _EX types (IPv6 addresses taken
 * from the home-address option and the type 2 routing header) are not offered: not done.
 */
export const SUPPORTED_HASH_TYPES =
  HASH_TYPE.IPv4 | HASH_TYPE.TCPv4 | HASH_TYPE.UDPv4 | HASH_TYPE.IPv6 | HASH_TYPE.TCPv6 | HASH_TYPE.UDPv6;

/** What the guest configured: which types it hashes, with which key, and (RSS) where flows go. */
export interface RssConfig {
  hashTypes: number;
  key: Uint8Array;
  /** RSS_CONFIG only: receive queue (pair) index per hash & (table.length - 1). */
  table?: Uint16Array;
  unclassifiedQueue?: number;
  /** RSS_CONFIG only: max_tx_vq, the queue pairs the driver uses from now on. */
  pairs?: number;
}

/** Neither command received since reset: no type enabled, every frame reports NONE. */
export const RSS_OFF: RssConfig = { hashTypes: 0, key: new Uint8Array(0) };

function checkKey(hashTypes: number, keyLen: number): string | null {
  if ((hashTypes & ~SUPPORTED_HASH_TYPES) >>> 0) return `hash_types 0x${hashTypes.toString(16)} has types the device does not support (0x${SUPPORTED_HASH_TYPES.toString(16)})`;
  if (keyLen > RSS_MAX_KEY_SIZE) return `hash_key_length ${keyLen} is over rss_max_key_size ${RSS_MAX_KEY_SIZE}`;
  if (keyLen === 0 && hashTypes !== 0) return 'hash_key_length 0 with hash types enabled';
  return null;
}

/**
 * struct virtio_net_rss_config: le32 hash_types, le16 indirection_table_mask,
 * le16 unclassified_queue, le16 indirection_table[mask + 1], le16 max_tx_vq,
 * u8 hash_key_length, u8 hash_key_data[hash_key_length]. `maxPairs` is how many pairs the
 * driver may use (max_virtqueue_pairs with MQ, else 1). Every queue named must be below
 * max_tx_vq: the pairs that run once the command is applied.
 */
export function decodeRssConfig(data: Uint8Array, maxPairs: number): RssConfig | string {
  const d = new DataView(data.buffer, data.byteOffset, data.byteLength);
  if (data.length < 8) return `RSS_CONFIG of ${data.length} bytes is truncated`;
  const hashTypes = d.getUint32(0, true);
  const mask = d.getUint16(4, true);
  const unclassifiedQueue = d.getUint16(6, true);
  const len = mask + 1;
  if ((len & mask) !== 0) return `indirection table length ${len} is not a power of two`;
  if (len > RSS_MAX_INDIRECTION_TABLE_LENGTH) return `indirection table length ${len} is over ${RSS_MAX_INDIRECTION_TABLE_LENGTH}`;
  const tail = 8 + 2 * len;
  if (data.length < tail + 3) return `RSS_CONFIG of ${data.length} bytes is truncated (a table of ${len} needs at least ${tail + 3})`;
  const pairs = d.getUint16(tail, true);
  const keyLen = data[tail + 2];
  if (data.length !== tail + 3 + keyLen) return `RSS_CONFIG of ${data.length} bytes does not match its key length ${keyLen} (expected ${tail + 3 + keyLen})`;
  const bad = checkKey(hashTypes, keyLen);
  if (bad) return bad;
  if (pairs < 1 || pairs > maxPairs) return `max_tx_vq ${pairs} is not within 1..${maxPairs}`;
  if (unclassifiedQueue >= pairs) return `unclassified_queue ${unclassifiedQueue} is not below max_tx_vq ${pairs}`;
  const table = new Uint16Array(len);
  for (let i = 0; i < len; i++) {
    table[i] = d.getUint16(8 + 2 * i, true);
    if (table[i] >= pairs) return `indirection_table[${i}] = ${table[i]} is not below max_tx_vq ${pairs}`;
  }
  return { hashTypes, key: data.slice(tail + 3), table, unclassifiedQueue, pairs };
}

/**
 * struct virtio_net_hash_config: le32 hash_types, le16 reserved[4], u8 hash_key_length,
 * u8 hash_key_data[hash_key_length] (HASH_REPORT without RSS: hashing for the report only).
 */
export function decodeHashConfig(data: Uint8Array): RssConfig | string {
  if (data.length < 13) return `HASH_CONFIG of ${data.length} bytes is truncated`;
  const hashTypes = new DataView(data.buffer, data.byteOffset, 4).getUint32(0, true);
  const keyLen = data[12];
  if (data.length !== 13 + keyLen) return `HASH_CONFIG of ${data.length} bytes does not match its key length ${keyLen} (expected ${13 + keyLen})`;
  const bad = checkKey(hashTypes, keyLen);
  if (bad) return bad;
  return { hashTypes, key: data.slice(13) };
}

/** The driver side: struct virtio_net_rss_config's bytes (for vhost-tap/driver and tests). */
export function encodeRssConfig(c: { hashTypes: number; key: Uint8Array; table: ArrayLike<number>; unclassifiedQueue?: number; pairs: number }): Uint8Array {
  const len = c.table.length;
  const out = new Uint8Array(8 + 2 * len + 3 + c.key.length);
  const d = new DataView(out.buffer);
  d.setUint32(0, c.hashTypes >>> 0, true);
  d.setUint16(4, (len - 1) & 0xffff, true);
  d.setUint16(6, c.unclassifiedQueue ?? 0, true);
  for (let i = 0; i < len; i++) d.setUint16(8 + 2 * i, c.table[i], true);
  d.setUint16(8 + 2 * len, c.pairs, true);
  out[8 + 2 * len + 2] = c.key.length;
  out.set(c.key, 8 + 2 * len + 3);
  return out;
}

/** The driver side: struct virtio_net_hash_config's bytes. */
export function encodeHashConfig(c: { hashTypes: number; key: Uint8Array }): Uint8Array {
  const out = new Uint8Array(13 + c.key.length);
  new DataView(out.buffer).setUint32(0, c.hashTypes >>> 0, true);
  out[12] = c.key.length;
  out.set(c.key, 13);
  return out;
}
