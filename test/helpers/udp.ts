// UDP echo clients run inside a test's namespace (a child Node process via
// `ip netns exec`), so the host side of every exchange is a real kernel
// socket in the namespace, never the root namespace.

import { Netns } from '../../host/netns';

export interface EchoResult {
  sent: number;
  echoed: number;
  /** Replies whose payload differed from what was sent. */
  corrupt: number;
  /** Source ports used, one per flow. */
  ports: number[];
}

/**
 * Sends one datagram of each size in `sizes` to `host`:7 from each of `flows` sockets
 * (different source ports → different RSS/flow hashes) and checks every echo byte for byte.
 */
export function udpEcho(ns: Netns, host: string, sizes: number[], flows = 1, timeoutMs = 2000): EchoResult {
  const script = `
const dgram = require('node:dgram');
const sizes = ${JSON.stringify(sizes)};
const fam = ${JSON.stringify(host.includes(':') ? 'udp6' : 'udp4')};
let sent = 0, echoed = 0, corrupt = 0; const ports = [];
async function flow(f) {
  const s = dgram.createSocket(fam);
  await new Promise((r) => s.bind(0, r));
  ports.push(s.address().port);
  for (const size of sizes) {
    const b = Buffer.alloc(size);
    for (let i = 0; i < size; i++) b[i] = (i * 7 + size + f) & 255;
    sent++;
    const got = await new Promise((resolve) => {
      const t = setTimeout(() => { s.removeAllListeners('message'); resolve(null); }, ${timeoutMs});
      s.once('message', (m) => { clearTimeout(t); resolve(m); });
      s.send(b, 7, ${JSON.stringify(host)});
    });
    if (got) { echoed++; if (!got.equals(b)) corrupt++; }
  }
  s.close();
}
Promise.all(Array.from({ length: ${flows} }, (_, f) => flow(f))).then(() => console.log(JSON.stringify({ sent, echoed, corrupt, ports })));`;
  const out = ns.exec(process.execPath, ['-e', script], { timeout: 600_000, maxBuffer: 1 << 20 });
  return JSON.parse(out.trim().split('\n').pop()!) as EchoResult;
}

/** `ping` from the namespace; returns the packet loss percentage parsed from its summary. */
export function ping(ns: Netns, args: string[]): { loss: number; output: string } {
  let output: string;
  try {
    output = ns.exec('ping', args, { timeout: 120_000 });
  } catch (e) {
    output = String((e as { stdout?: string }).stdout ?? '') + String((e as Error).message);
  }
  const m = /([\d.]+)% packet loss/.exec(output);
  return { loss: m ? Number(m[1]) : 100, output };
}
