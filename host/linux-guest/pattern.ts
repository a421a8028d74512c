// The data both ends of a guest TCP transfer agree on without sending it
// twice: 1 MiB of pseudo-random bytes (SHA-256 in counter mode over a fixed
// seed), repeated. The guest has it as a file in its initramfs; the host
// makes the same bytes here. 1 MiB is not a multiple of any TCP segment size,
// so a lost, repeated or reordered segment changes the stream's SHA-256.

import { createHash, Hash } from 'node:crypto';

export const PATTERN_BYTES = 1 << 20;
const SEED = 'vhost-tap linux-guest pattern v1';

let cached: Buffer | undefined;

export function pattern(): Buffer {
  if (cached) return cached;
  const out = Buffer.alloc(PATTERN_BYTES);
  for (let i = 0, off = 0; off < PATTERN_BYTES; i++, off += 32) {
    createHash('sha256').update(`${SEED}:${i}`).digest().copy(out, off);
  }
  cached = out;
  return out;
}

/** Feeds the first `n` bytes of the repeated pattern to `h`. */
export function hashPattern(h: Hash, n: number): Hash {
  const p = pattern();
  for (let left = n; left > 0; left -= Math.min(left, p.length)) h.update(left >= p.length ? p : p.subarray(0, left));
  return h;
}

/** SHA-256 (hex) of the first `n` bytes of the repeated pattern. */
export function patternSha256(n: number): string {
  return hashPattern(createHash('sha256'), n).digest('hex');
}
