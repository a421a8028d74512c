// IFF_NAPI and busyPollUs through the public device API on a real TAP in a
// throw-away namespace: with NAPI the frames the guest sends are fed to the
// stack through napi_gro_receive instead of netif_rx; nothing changes for the
// engine (tun's NAPI mode is on the write path only), and both directions
// must still carry every frame. Needs root.

import test from 'ava';

import { VirtioNetDevice } from '../backend';
import { markerOf, MINI_FEATURES, MiniGuest, rawSendScript, testFrame } from './helpers/mini-guest';
import { withNetns } from '../host/netns';

const GUEST_MAC = '52:54:00:12:34:56';
const IFF_NAPI = 0x10;

function frameBytes(hex: string): Uint8Array {
  return Uint8Array.from(Buffer.from(hex, 'hex'));
}

for (const [napi, busyPollUs] of [[false, 0], [true, 0], [true, 50]] as const) {
  test.serial(`napi ${napi}, busyPollUs ${busyPollUs}: every frame crosses both ways on a real TAP`, async (t) => {
    await withNetns(async (ns) => {
      const tap = ns.ifname();
      const mem = new SharedArrayBuffer(MiniGuest.memoryBytes(1));
      const device = new VirtioNetDevice({ memory: mem, tap, netns: ns.name, mac: GUEST_MAC, napi, busyPollUs });
      ns.defer(() => void device.close());
      const flags = parseInt(ns.exec('cat', [`/sys/class/net/${tap}/tun_flags`]).trim(), 16);
      t.is((flags & IFF_NAPI) !== 0, napi, `tun_flags 0x${flags.toString(16)}`);
      const g = new MiniGuest(device, mem);
      await g.init(MINI_FEATURES);

      // Guest -> host: the TAP's own rx counter counts what the kernel took.
      const rxBefore = ns.ipJson<Array<{ stats64: { rx: { packets: number } } }>>('-s', 'link', 'show', tap)[0].stats64.rx.packets;
      const N = 40;
      for (let i = 0; i < N; i++) {
        g.send(0, frameBytes(testFrame('ff:ff:ff:ff:ff:ff', i, -1, GUEST_MAC)));
        if (i % 16 === 15) await new Promise((r) => setTimeout(r, 10)); // let the 64-entry TX ring drain
      }
      let rxAfter = rxBefore;
      const end = Date.now() + 3000;
      while (Date.now() < end && rxAfter - rxBefore < N) {
        await new Promise((r) => setTimeout(r, 20));
        rxAfter = ns.ipJson<Array<{ stats64: { rx: { packets: number } } }>>('-s', 'link', 'show', tap)[0].stats64.rx.packets;
      }
      t.is(rxAfter - rxBefore, N, 'the kernel received every frame the guest sent');

      // Host -> guest.
      g.drain();
      const frames = Array.from({ length: 20 }, (_, i) => testFrame(GUEST_MAC, 1000 + i));
      ns.exec('python3', rawSendScript(tap, frames));
      // The kernel's own IPv6 chatter (MLD, ND) may arrive too: only marked frames count.
      const marked = (f: { frame: Uint8Array }[]) => f.map((x) => markerOf(x.frame)).filter((m) => m >= 0);
      const got = await g.collect(2000, (f) => marked(f).length >= 20);
      t.deepEqual(marked(got), frames.map((_, i) => 1000 + i));
      const s = device.stats();
      t.is(s.totals.drops, 0);
      t.true(['io_uring', 'readv/writev'].includes(s.io));
    });
  });
}

test('device options busyPollUs and napi are checked', (t) => {
  const memory = new SharedArrayBuffer(1 << 20);
  for (const busyPollUs of [-1, 1.5, 2_000_000, '5' as unknown as number]) {
    t.throws(() => new VirtioNetDevice({ memory, tap: 'vtx0', busyPollUs }), { name: 'InvalidArgumentError' });
  }
  t.throws(() => new VirtioNetDevice({ memory, tap: 'vtx0', napi: 1 as unknown as boolean }), { name: 'InvalidArgumentError' });
  t.throws(() => new VirtioNetDevice({ memory, tap: 'vtx0', io: 'uring' as never }), { name: 'InvalidArgumentError' });
});
