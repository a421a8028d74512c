// The TCP services `vhost-tap run` offers on guest-sim's TcpStack: echo (7),
// discard (9: counts and hashes what arrives, reports it when the peer
// closes) and source (19: sends N bytes of a fixed pattern, then closes).
// Payload is never copied on the way through, except by echo, whose job is
// to send back what it got: discard hashes straight from the RX buffers and
// source generates straight into the TX buffers, through reused views
// (views.ts).

import { createHash } from 'node:crypto';

import { TcpConn, TcpHandler, TcpStack } from './tcp';
import { viewsOf } from './views';

export const ECHO_PORT = 7;
export const DISCARD_PORT = 9;
export const SOURCE_PORT = 19;

/** What discard reports when a peer closes. */
export interface DiscardReport {
  peer: string;
  bytes: number;
  sha256: string;
}

export interface ServicesOptions {
  /** Bytes the source service sends per connection. */
  sourceBytes: number;
  report: (r: DiscardReport) => void;
}

/** Source pattern: byte i of the stream is i mod 251 (a prime, so it never lines up with powers of two). */
const PATTERN_PERIOD = 251;
// Long enough that any window of up to 64 KiB + 251 starts inside it: one copy per segment.
const PATTERN = new Uint8Array(PATTERN_PERIOD * Math.ceil((65536 + 2 * PATTERN_PERIOD) / PATTERN_PERIOD));
for (let i = 0; i < PATTERN.length; i++) PATTERN[i] = i % PATTERN_PERIOD;
const PATTERN_VIEWS = viewsOf(PATTERN);

/** Writes stream bytes [streamOff, streamOff+len) of the source pattern into dst. */
export function fillPattern(dst: Uint8Array, dstOff: number, streamOff: number, len: number): void {
  let s = streamOff % PATTERN_PERIOD;
  while (len > 0) {
    const n = Math.min(len, PATTERN.length - s);
    dst.set(PATTERN_VIEWS.view(s, n), dstOff);
    dstOff += n;
    len -= n;
    s = (s + n) % PATTERN_PERIOD;
  }
}

/** Echo keeps what it received until the peer acknowledges it back; the window never promises more than fits. */
const ECHO_BUF = 1 << 20;

function echo(): TcpHandler {
  const ring = new Uint8Array(ECHO_BUF);
  let written = 0;
  return {
    rcvSpace: (c) => ECHO_BUF - (written - c.ackedBytes),
    onEstablished: (c) => {
      c.source = (dst, dstOff, streamOff, len) => {
        let r = streamOff % ECHO_BUF;
        while (len > 0) {
          const n = Math.min(len, ECHO_BUF - r);
          dst.set(ring.subarray(r, r + n), dstOff);
          dstOff += n;
          len -= n;
          r = 0;
        }
      };
    },
    onData: (c, u8, off, len) => {
      let w = written % ECHO_BUF;
      let o = off;
      let left = len;
      while (left > 0) {
        const n = Math.min(left, ECHO_BUF - w);
        ring.set(viewsOf(u8).view(o, n), w);
        o += n;
        left -= n;
        w = 0;
      }
      written += len;
      c.send(len);
    },
    onPeerFin: (c) => c.close(),
  };
}

function discard(report: (r: DiscardReport) => void): TcpHandler {
  const hash = createHash('sha256');
  let bytes = 0;
  let done = false;
  const finish = (c: TcpConn): void => {
    if (done) return;
    done = true;
    report({ peer: c.toString(), bytes, sha256: hash.digest('hex') });
  };
  return {
    onData: (_c, u8, off, len) => {
      // Straight from the RX buffer in guest memory.
      hash.update(viewsOf(u8).view(off, len));
      bytes += len;
    },
    onPeerFin: (c) => {
      finish(c);
      c.close();
    },
  };
}

function source(n: number): TcpHandler {
  return {
    onEstablished: (c) => {
      c.source = fillPattern;
      c.send(n);
      c.close();
    },
  };
}

/** Listens on the echo, discard and source ports. */
export function installServices(tcp: TcpStack, opts: ServicesOptions): void {
  tcp.listen(ECHO_PORT, () => echo());
  tcp.listen(DISCARD_PORT, () => discard(opts.report));
  tcp.listen(SOURCE_PORT, () => source(opts.sourceBytes));
}
