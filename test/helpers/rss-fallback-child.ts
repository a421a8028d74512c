// Run by test/rss.test.ts inside its namespace, as root without CAP_BPF and
// CAP_SYS_ADMIN (setpriv --bounding-set), where bpf() is refused: a device
// with RSS on a TAP of this namespace takes the guest's RSS_CONFIG, falls back
// to the kernel's steering, and still delivers frames with their hash. Prints
// one JSON line: the ack, stats().rss, the warnings, each frame's hash fields.
// argv: TAP name, then frames (hex) to send into the TAP.

import { execFileSync } from 'node:child_process';

import { bits, CTRL, HASH_REPORT, HDR_HASH, SUPPORTED_HASH_TYPES, VirtioNetDevice } from '../../backend';
import { MINI_FEATURES, MiniGuest, rawSendScript } from './mini-guest';
import { MS_RSS_KEY } from './toeplitz';

async function main(): Promise<void> {
  const [tap, ...frames] = process.argv.slice(2);
  const mem = new SharedArrayBuffer(MiniGuest.memoryBytes(2));
  const dev = new VirtioNetDevice({ memory: mem, tap, queuePairs: 2, mac: '52:54:00:12:34:56', hashReport: true, rss: true });
  const warnings: string[] = [];
  dev.on('warning', (e: Error) => warnings.push(e.message));
  try {
    const g = new MiniGuest(dev, mem);
    await g.init(MINI_FEATURES | bits('HASH_REPORT', 'RSS'));
    const ack = await g.ctrl!.setRss({ key: MS_RSS_KEY, hashTypes: SUPPORTED_HASH_TYPES, table: [0, 1, 1, 0], pairs: 2 });
    g.drain();
    execFileSync('python3', rawSendScript(tap, frames));
    const got = await g.collect(10_000, (fs) => fs.filter((f) => f.frame[12] === 0x08).length >= frames.length);
    const hashes = got
      .filter((f) => f.frame[12] === 0x08)
      .map((f) => {
        const d = new DataView(f.hdr.buffer, f.hdr.byteOffset, f.hdr.length);
        return { frame: Buffer.from(f.frame).toString('hex'), value: d.getUint32(HDR_HASH.OFF_HASH_VALUE, true), report: d.getUint16(HDR_HASH.OFF_HASH_REPORT, true) };
      });
    console.log(JSON.stringify({ ack, ok: CTRL.OK, rss: dev.stats().rss, warnings, hashes, none: HASH_REPORT.NONE }));
  } finally {
    await dev.close();
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
