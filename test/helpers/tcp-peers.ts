// TCP peers for the integration tests that move bulk data between a namespace's kernel and
// guest-sim's TCP services (discard on 9, chargen-like source on 19): a command runner inside
// the namespace and the two Node scripts each side runs.

import { spawn } from 'node:child_process';

import { Netns } from '../../host/netns';

/** Runs `cmd args` inside `ns`; killed after timeoutMs or when the namespace goes. */
export function nsRun(ns: Netns, cmd: string, args: string[], timeoutMs: number): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn('ip', ['netns', 'exec', ns.name, cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    ns.defer(() => {
      if (child.exitCode === null) child.kill('SIGKILL');
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** Host → guest:9: sends `bytes` of pseudo-random data, prints its SHA-256 and the elapsed time. */
export const SENDER = `
const net = require('node:net'), crypto = require('node:crypto');
const [host, total] = [process.argv[1], Number(process.argv[2])];
const chunk = crypto.randomBytes(1 << 20);
const h = crypto.createHash('sha256');
const t0 = process.hrtime.bigint();
const s = net.connect({ host, port: 9 }, () => {
  let sent = 0, k = 0;
  const pump = () => {
    while (sent < total) {
      // Vary the chunk so a stuck or repeated window would change the hash.
      chunk[0] = k & 255; chunk[1] = (k >> 8) & 255; k++;
      const n = Math.min(chunk.length, total - sent);
      const b = Buffer.from(chunk.subarray(0, n));
      h.update(b); sent += n;
      if (!s.write(b)) return s.once('drain', pump);
    }
    s.end();
  };
  pump();
});
s.on('close', () => console.log(JSON.stringify({ sha256: h.digest('hex'), ms: Number(process.hrtime.bigint() - t0) / 1e6 })));
s.on('error', (e) => { console.error(e.message); process.exit(1); });`;

/** Guest:19 → host: reads to EOF, checks byte i = i mod 251, prints count, mismatches and time. */
export const RECEIVER = `
const net = require('node:net');
const host = process.argv[1];
const P = 251, pat = Buffer.alloc(P * 1100); for (let i = 0; i < pat.length; i++) pat[i] = i % P;
let n = 0, bad = -1;
const t0 = process.hrtime.bigint();
const s = net.connect({ host, port: 19 });
s.on('data', (d) => {
  for (let o = 0; o < d.length && bad < 0; ) {
    const k = Math.min(d.length - o, pat.length - P);
    const st = (n + o) % P;
    if (!d.subarray(o, o + k).equals(pat.subarray(st, st + k))) {
      for (let j = 0; j < k; j++) if (d[o + j] !== (n + o + j) % P) { bad = n + o + j; break; }
    }
    o += k;
  }
  n += d.length;
});
s.on('end', () => console.log(JSON.stringify({ bytes: n, bad, ms: Number(process.hrtime.bigint() - t0) / 1e6 })));
s.on('error', (e) => { console.error(e.message); process.exit(1); });`;
