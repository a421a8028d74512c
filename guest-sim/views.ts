// Reused Uint8Array views of one buffer (guest memory's RX or TX area, the
// source pattern, echo's ring). The TCP services hand node:crypto and set() a
// view per piece of every segment, and the same (offset, length) pairs recur:
// every full mergeable RX buffer, every MSS-sized window of the pattern. A view
// made per piece was most of what a queue-pair Worker allocated under TCP
// (issue 24): with it, scavenges came often enough that connection state lived
// through two of them and was promoted, and the old generation grew between
// mark-compacts. Here each view is made once per offset.

/** Offsets remembered at most; past it the cache starts over (bounds a pathological mix of offsets). */
const MAX_VIEWS = 8192;

export class ViewCache {
  // One view per offset, the last length asked for at it: pieces starting at one offset
  // almost always have one length (a buffer's size, an MSS).
  private readonly views = new Map<number, Uint8Array>();

  constructor(readonly buf: Uint8Array) {}

  /** buf.subarray(off, off + len), made once. */
  view(off: number, len: number): Uint8Array {
    const v = this.views.get(off);
    if (v !== undefined && v.length === len) return v;
    const made = this.buf.subarray(off, off + len);
    if (this.views.size >= MAX_VIEWS) this.views.clear();
    this.views.set(off, made);
    return made;
  }
}

const caches = new WeakMap<Uint8Array, ViewCache>();

/** The ViewCache of `buf` (one per buffer, made on first use). */
export function viewsOf(buf: Uint8Array): ViewCache {
  let c = caches.get(buf);
  if (c === undefined) {
    c = new ViewCache(buf);
    caches.set(buf, c);
  }
  return c;
}
