// An independent Toeplitz hash for tests, written from its definition (virtio
// 1.2 §5.1.6.4.3, Microsoft's "RSS hashing functions"): for every bit of the
// input that is set, most significant first, XOR in the 32 bits of the key
// that start at that bit's position. Deliberately the slow, obvious form: it
// is the reference the device's hash is checked against, not a copy of it.

/** The key Microsoft's RSS verification suite (and the virtio spec's examples) use. */
export const MS_RSS_KEY = Uint8Array.from([
  0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0, 0xd0, 0xca, 0x2b, 0xcb,
  0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
]);

/** Bit `i` of the key, most significant bit of byte 0 first; bits past the key are 0. */
function keyBit(key: Uint8Array, i: number): number {
  const byte = i >> 3;
  return byte < key.length ? (key[byte] >> (7 - (i & 7))) & 1 : 0;
}

/** The 32 key bits starting at bit `i`, as an unsigned number. */
function keyWindow(key: Uint8Array, i: number): number {
  let w = 0;
  for (let b = 0; b < 32; b++) w = (w * 2 + keyBit(key, i + b)) >>> 0;
  return w;
}

/** Toeplitz hash of `input` under `key` (unsigned 32-bit). */
export function toeplitz(key: Uint8Array, input: Uint8Array): number {
  let h = 0;
  for (let i = 0; i < input.length * 8; i++) {
    if ((input[i >> 3] >> (7 - (i & 7))) & 1) h = (h ^ keyWindow(key, i)) >>> 0;
  }
  return h;
}

/** "a.b.c.d" → 4 bytes. */
export function ipv4(s: string): number[] {
  const p = s.split('.').map(Number);
  if (p.length !== 4 || p.some((x) => !Number.isInteger(x) || x < 0 || x > 255)) throw new Error(`bad IPv4 address ${s}`);
  return p;
}

/** An IPv6 address in text form (with at most one "::") → 16 bytes. */
export function ipv6(s: string): number[] {
  const [head, tail] = s.includes('::') ? s.split('::') : [s, undefined];
  const words = (x: string): number[] => (x === '' ? [] : x.split(':').map((w) => parseInt(w, 16)));
  const h = words(head);
  const t = tail === undefined ? [] : words(tail);
  const all = tail === undefined ? h : [...h, ...new Array<number>(8 - h.length - t.length).fill(0), ...t];
  if (all.length !== 8 || all.some((w) => !Number.isInteger(w) || w < 0 || w > 0xffff)) throw new Error(`bad IPv6 address ${s}`);
  return all.flatMap((w) => [w >> 8, w & 0xff]);
}

const port = (p: number): number[] => [p >> 8, p & 0xff];

/**
 * The hash input the spec defines: source address, destination address, then (for the
 * TCP/UDP types) source port and destination port, all in network order.
 */
export function hashInput(src: number[], dst: number[], ports?: { src: number; dst: number }): Uint8Array {
  return Uint8Array.from([...src, ...dst, ...(ports ? [...port(ports.src), ...port(ports.dst)] : [])]);
}
