// The host end of a guest TCP transfer, run as its own process inside the
// test's network namespace (`ip netns exec NS node tcp-peer.js ...`):
//   send HOST PORT BYTES  connect (retrying while the guest's listener comes up),
//                         send BYTES of the repeated pattern, half-close, wait
//                         for the guest to close;
//   recv PORT             listen, print 'listening', take one connection and
//                         read it to its end.
// Prints one JSON line: { bytes, sha256, ms } (ms: connection up to its end).

import { createHash } from 'node:crypto';
import * as net from 'node:net';

import { pattern } from './pattern';

/** How long `send` retries a refused connection: the guest's nc may still be starting. */
const CONNECT_RETRY_MS = 20_000;
const CONNECT_RETRY_STEP_MS = 100;

function done(bytes: number, sha256: string, t0: bigint): void {
  process.stdout.write(`${JSON.stringify({ bytes, sha256, ms: Number(process.hrtime.bigint() - t0) / 1e6 })}\n`);
  process.exit(0);
}

function fail(msg: string): never {
  process.stderr.write(`${msg}\n`);
  process.exit(1);
}

function send(host: string, port: number, total: number): void {
  const p = pattern();
  const deadline = Date.now() + CONNECT_RETRY_MS;
  const attempt = (): void => {
    // allowHalfOpen: the guest's nc half-closes its side as soon as it starts (stdin is /dev/null).
    const s = net.connect({ host, port, allowHalfOpen: true });
    let up = false;
    s.once('connect', () => {
      up = true;
      const t0 = process.hrtime.bigint();
      const h = createHash('sha256');
      let sent = 0;
      const pump = (): void => {
        while (sent < total) {
          const off = sent % p.length;
          const chunk = p.subarray(off, Math.min(p.length, off + total - sent));
          h.update(chunk);
          sent += chunk.length;
          if (!s.write(chunk)) return void s.once('drain', pump);
        }
        s.end();
      };
      s.resume();
      s.once('close', () => done(sent, h.digest('hex'), t0));
      pump();
    });
    s.on('error', (e: NodeJS.ErrnoException) => {
      if (!up && e.code === 'ECONNREFUSED' && Date.now() < deadline) return void setTimeout(attempt, CONNECT_RETRY_STEP_MS);
      fail(`send to ${host}:${port}: ${e.message}`);
    });
  };
  attempt();
}

function recv(port: number): void {
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    server.close();
    const t0 = process.hrtime.bigint();
    const h = createHash('sha256');
    let bytes = 0;
    s.on('data', (d: Buffer) => {
      h.update(d);
      bytes += d.length;
    });
    s.on('end', () => {
      s.end();
      done(bytes, h.digest('hex'), t0);
    });
    s.on('error', (e) => fail(`recv on ${port}: ${e.message}`));
  });
  server.on('error', (e) => fail(`listen on ${port}: ${e.message}`));
  server.listen({ port, host: '::' }, () => process.stdout.write('listening\n'));
}

const [mode, ...args] = process.argv.slice(2);
if (mode === 'send' && args.length === 3) send(args[0], Number(args[1]), Number(args[2]));
else if (mode === 'recv' && args.length === 1) recv(Number(args[0]));
else fail('usage: tcp-peer send HOST PORT BYTES | recv PORT');
