// Micro-benchmarks (benchmark.js) of the guest-side hot paths the throughput
// bench depends on: one split-ring round trip (add, publish, device moves the
// entry to used, popUsed), the notification check, and virtio_net_hdr
// encoding/decoding. `npm run bench:micro`; no root, no TAP.

import { HDR, RING } from '../../backend';
import { DriverQueue, needEvent } from '../../driver';

// benchmark.js ships no types; this is the part used here.
interface Suite {
  add(name: string, fn: () => void): Suite;
  on(ev: 'cycle' | 'complete', fn: (e: { target: { toString(): string } }) => void): Suite;
  run(opts?: { async: boolean }): Suite;
}
// eslint-disable-next-line @typescript-eslint/no-require-imports
const Benchmark = require('benchmark') as { Suite: new (name?: string) => Suite };

const SIZE = 256;
const mem = new SharedArrayBuffer(1 << 20);
const l = DriverQueue.layout(0, SIZE, 4096);
const addrs = { size: SIZE, desc: l.desc, avail: l.avail, used: l.used };
const q = new DriverQueue(mem, addrs, { eventIdx: true });
const u16 = new Uint16Array(mem);
const u32 = new Uint32Array(mem);
const bufBase = 256 * 1024;

/** The device's half of one round trip, as cheaply as JS allows: consume avail, publish used. */
let devLastAvail = 0;
let devUsed = 0;
function deviceStep(): void {
  const availIdx = Atomics.load(u16, addrs.avail / 2 + 1);
  while (devLastAvail !== availIdx) {
    const head = u16[addrs.avail / 2 + 2 + (devLastAvail & (SIZE - 1))];
    const o = addrs.used / 4 + 1 + (devUsed & (SIZE - 1)) * 2;
    u32[o] = head;
    u32[o + 1] = 0;
    devUsed = (devUsed + 1) & 0xffff;
    devLastAvail = (devLastAvail + 1) & 0xffff;
  }
  Atomics.store(u16, addrs.used / 2 + 1, devUsed);
}

const slotOfHead = new Int32Array(SIZE);
for (let i = 0; i < SIZE; i++) slotOfHead[q.addBuf(bufBase + i * 128, 76, false)] = i;
q.publish();
q.disableInterrupts();

const hdr = new Uint8Array(mem, 512 * 1024, 12);
const dv = new DataView(mem, 512 * 1024, 12);
let sink = 0;

new Benchmark.Suite('ring')
  .add('ring: 32 × (popUsed + addBuf) + publish (TX re-post batch)', () => {
    deviceStep();
    for (let i = 0; i < 32; i++) {
      const u = q.popUsed();
      if (!u) break;
      const slot = slotOfHead[u.id];
      slotOfHead[q.addBuf(bufBase + slot * 128, 76, false)] = slot;
    }
    sink += q.publish() ? 1 : 0;
  })
  .add('ring: needEvent (EVENT_IDX kick decision)', () => {
    sink += needEvent(sink & 0xffff, (sink + 7) & 0xffff, (sink + 3) & 0xffff) ? 1 : 0;
  })
  .add('hdr: encode GSO TCPv4 header (DataView)', () => {
    dv.setUint8(HDR.OFF_FLAGS, HDR.F_NEEDS_CSUM);
    dv.setUint8(HDR.OFF_GSO_TYPE, HDR.GSO_TCPV4);
    dv.setUint16(HDR.OFF_HDR_LEN, 54, true);
    dv.setUint16(HDR.OFF_GSO_SIZE, 1448, true);
    dv.setUint16(HDR.OFF_CSUM_START, 34, true);
    dv.setUint16(HDR.OFF_CSUM_OFFSET, 16, true);
    dv.setUint16(HDR.OFF_NUM_BUFFERS, 0, true);
  })
  .add('hdr: encode GSO TCPv4 header (byte stores)', () => {
    hdr[0] = HDR.F_NEEDS_CSUM;
    hdr[1] = HDR.GSO_TCPV4;
    hdr[2] = 54;
    hdr[3] = 0;
    hdr[4] = 1448 & 0xff;
    hdr[5] = 1448 >> 8;
    hdr[6] = 34;
    hdr[7] = 0;
    hdr[8] = 16;
    hdr[9] = 0;
    hdr[10] = 0;
    hdr[11] = 0;
  })
  .add('hdr: decode num_buffers + gso_type', () => {
    sink += (hdr[10] | (hdr[11] << 8)) + hdr[1];
  })
  .on('cycle', (e) => console.log(String(e.target)))
  .on('complete', () => {
    if (sink === -1) console.log(sink); // keeps the work observable to the optimiser
    void RING;
  })
  .run({ async: false });
