// Per-queue reset (VIRTIO_F_RING_RESET) through VirtioNetDevice and the
// vhost-tap/driver helper, in both ring layouts: one RX and one TX queue are
// reset under traffic (with a new size) while the other queue keeps carrying
// frames, and every frame is accounted for by a counter on one side or the
// other; misuse gets typed errors. Needs root (a namespace and a TAP).
import test from 'ava';
import { spawn } from 'node:child_process';

import { bits, DeviceStateError, InvalidArgumentError, STATUS, VirtioNetDevice } from '../backend';
import { GuestAllocator, negotiate, NetQueuePair, resetQueue, setUpQueuePair } from '../driver';
import { GuestSim } from '../guest-sim/guest';
import { Netns, withNetns } from '../host/netns';
import { ping, udpEcho } from './helpers/udp';

const MiB = 1024 * 1024;

/** The kernel's counters of the TAP inside the namespace. */
function tapCounters(ns: Netns, tap: string): { rx: number; tx: number; txDropped: number } {
  const read = (name: string) => Number(ns.exec('cat', [`/sys/class/net/${tap}/statistics/${name}`]).trim());
  return { rx: read('rx_packets'), tx: read('tx_packets'), txDropped: read('tx_dropped') };
}

function sum(o: Record<string, number>): number {
  return Object.values(o).reduce((a, b) => a + b, 0);
}

for (const layout of ['split', 'packed'] as const) {
  test(`${layout}: an RX and a TX queue reset under traffic with new sizes, the other queue running on; every frame counted`, async (t) => {
    await withNetns(async (ns) => {
      const memory = new SharedArrayBuffer(8 * MiB);
      const tap = ns.ifname();
      const dev = new VirtioNetDevice({ memory, tap, netns: ns.name });
      ns.defer(() => void dev.close());
      const want = bits('VERSION_1', 'MAC', 'MRG_RXBUF', 'RING_EVENT_IDX', 'RING_RESET', ...(layout === 'packed' ? (['RING_PACKED'] as const) : []));
      t.is(negotiate(dev, want), want, 'the device offers RING_RESET (and the layout)');
      const alloc = new GuestAllocator(memory);
      const pair = new NetQueuePair(setUpQueuePair(dev, 0, alloc, { queueSize: 64 }));
      dev.status |= STATUS.DRIVER_OK;
      pair.start();
      const mac = [...new Uint8Array(dev.config.buffer, 0, 6)].map((b) => b.toString(16).padStart(2, '0')).join(':');
      ns.ip('addr', 'add', '10.98.0.1/24', 'dev', tap);
      ns.ip('neigh', 'add', '10.98.0.2', 'lladdr', mac, 'dev', tap);
      const tapMac = new Uint8Array(ns.ip('-j', 'link', 'show', tap).match(/"address":"([0-9a-f:]+)"/)![1].split(':').map((x) => parseInt(x, 16)));

      // RX traffic: echo requests from the namespace to the guest's address, paced, in the
      // background while the guest sends and both resets happen (stopped once both are done).
      const ping = spawn('ip', ['netns', 'exec', ns.name, 'ping', '-q', '-c', '20000', '-i', '0.002', '-W', '1', '10.98.0.2'], { stdio: 'ignore' });
      const pingDone = new Promise<void>((resolve) => ping.on('exit', () => resolve()));
      ns.defer(() => {
        if (ping.exitCode === null) ping.kill();
      });

      // TX traffic: frames of an experimental EtherType to the TAP (the kernel counts and drops them).
      const frame = new Uint8Array(128);
      frame.set(tapMac, 0);
      frame.set(new Uint8Array(dev.config.buffer, 0, 6), 6);
      frame.set([0x88, 0xb5], 12);
      let rxGuest = 0;
      const phase = { rxBefore: 0, rxAfterRxReset: 0, txBefore: 0, txAfterTxReset: 0 };
      let lostTx = 0;
      let rxDiscarded = 0;
      const step = (): void => {
        for (let i = 0; i < 8 && pair.send(frame); i++);
        pair.flush();
        for (let f = pair.receive(); f; f = pair.receive()) rxGuest++;
        pair.wait(1, true);
      };
      const until = async (cond: () => boolean, ms: number): Promise<void> => {
        for (const end = Date.now() + ms; !cond() && Date.now() < end; ) {
          step();
          await new Promise((r) => setImmediate(r));
        }
      };
      await until(() => rxGuest >= 50 && pair.stats.txFrames >= 200, 10_000);
      phase.rxBefore = rxGuest;
      // RX reset to a smaller ring while TX keeps sending.
      const txAtRxReset = dev.stats().totals.txPackets;
      rxDiscarded += resetQueue(dev, 0, pair, 'rx', alloc, 32);
      t.false(dev.queueReset(0));
      await until(() => rxGuest >= phase.rxBefore + 50, 10_000);
      phase.rxAfterRxReset = rxGuest - phase.rxBefore;
      t.true(dev.stats().totals.txPackets > txAtRxReset, 'TX carried frames across the RX reset');
      // TX reset to a larger ring while RX keeps receiving.
      phase.txBefore = dev.stats().totals.txPackets;
      const rxAtTxReset = rxGuest;
      lostTx += resetQueue(dev, 0, pair, 'tx', alloc, 128);
      await until(() => dev.stats().totals.txPackets >= phase.txBefore + 200 && rxGuest >= rxAtTxReset + 50, 10_000);
      phase.txAfterTxReset = dev.stats().totals.txPackets - phase.txBefore;
      t.true(rxGuest >= rxAtTxReset + 50, 'RX carried frames across the TX reset');
      ping.kill();
      await pingDone;
      // Let the rings drain: every TX slot back, nothing left in the TAP queue.
      await until(() => {
        pair.reclaim();
        return pair.txFreeSlots === 64;
      }, 10_000);
      let last = -1;
      for (let i = 0; i < 50 && last !== rxGuest; i++) {
        last = rxGuest;
        for (let k = 0; k < 20; k++) {
          for (let f = pair.receive(); f; f = pair.receive()) rxGuest++;
          pair.wait(5);
        }
      }

      const s = dev.stats();
      const [rx, tx] = s.queues;
      const k = tapCounters(ns, tap);
      t.is(pair.stats.queueResets, 2);
      t.true(phase.rxAfterRxReset >= 50 && phase.txAfterTxReset >= 200, JSON.stringify(phase));
      t.false(rx.broken || tx.broken, 'no rule broken');
      // TX: every frame the driver queued was sent, dropped by name, or taken back at the reset.
      t.is(pair.stats.txFrames, tx.packets + sum(tx.drops) + pair.stats.txReclaimedAtReset, JSON.stringify({ driver: pair.stats, tx }));
      t.is(lostTx, pair.stats.txReclaimedAtReset);
      t.is(tx.withheld, 0);
      t.is(k.rx, tx.packets, 'the kernel received what the device sent');
      // RX: every frame the kernel handed the TAP reached the guest or a named drop.
      t.is(k.txDropped, 0, 'the TAP queue never overflowed');
      t.is(k.tx, rx.packets + sum(rx.drops), JSON.stringify({ kernel: k, rx }));
      t.is(rxDiscarded, pair.stats.rxDiscardedAtReset);
      t.is(rxGuest + rxDiscarded, rx.packets, 'every frame the device delivered was received or discarded by name');
      t.true(rxGuest >= 150, `echo requests received: ${rxGuest}`);
    });
  });
}

test('queue reset misuse gets typed errors and changes nothing', async (t) => {
  await withNetns(async (ns) => {
    const memory = new SharedArrayBuffer(4 * MiB);
    const dev = new VirtioNetDevice({ memory, tap: ns.ifname(), netns: ns.name });
    ns.defer(() => void dev.close());
    negotiate(dev, bits('VERSION_1', 'MAC', 'RING_RESET', 'CTRL_VQ'));
    const alloc = new GuestAllocator(memory);
    const opts = setUpQueuePair(dev, 0, alloc, { queueSize: 64 });
    const ctrl = alloc.ring(16);
    dev.setQueue(2, ctrl);
    t.throws(() => dev.resetQueue(0), { instanceOf: DeviceStateError, message: /before DRIVER_OK/ });
    dev.status |= STATUS.DRIVER_OK;
    const pair = new NetQueuePair(opts);
    pair.start();
    t.throws(() => dev.resetQueue(3), { instanceOf: InvalidArgumentError, message: /virtqueue index/ });
    t.throws(() => dev.resetQueue(-1), { instanceOf: InvalidArgumentError });
    t.throws(() => dev.resetQueue(2), { instanceOf: InvalidArgumentError, message: /control queue/ });
    t.throws(() => dev.enableQueue(0), { instanceOf: DeviceStateError, message: /was not reset/ });
    t.throws(() => dev.setQueue(1, alloc.ring(64)), { instanceOf: DeviceStateError, message: /after DRIVER_OK/ });
    dev.resetQueue(0);
    t.true(dev.queueReset(0));
    t.throws(() => dev.enableQueue(0), { instanceOf: DeviceStateError, message: /before setQueue/ });
    // A new ring over the running TX ring is refused; the queue stays reset.
    t.throws(() => dev.setQueue(0, { size: 64, desc: opts.tx.desc, avail: opts.tx.avail, used: opts.tx.used }), { instanceOf: InvalidArgumentError, message: /overlap/ });
    t.throws(() => dev.setQueue(0, { ...alloc.ring(64), size: 48 }), { instanceOf: InvalidArgumentError, message: /power of two/ });
    t.true(dev.queueReset(0));
    const ring = alloc.ring(16);
    dev.setQueue(0, ring);
    pair.resetRing('rx', { ...ring, ...dev.notifier(0) });
    dev.enableQueue(0);
    t.false(dev.queueReset(0));
    t.false(dev.stats().queues[0].broken);
    // Without RING_RESET negotiated the device refuses.
    negotiate(dev, bits('VERSION_1', 'MAC'));
    setUpQueuePair(dev, 0, new GuestAllocator(memory, 2 * MiB), { queueSize: 64 });
    dev.status |= STATUS.DRIVER_OK;
    t.throws(() => dev.resetQueue(0), { instanceOf: DeviceStateError, message: /RING_RESET/ });
  });
});

for (const packed of [false, true]) {
  test(`guest-sim (${packed ? 'packed' : 'split'}): resetQueue of its RX then TX queue with new sizes; pings and UDP echo before and after`, async (t) => {
    await withNetns(async (ns) => {
      const tap = ns.ifname();
      const guest = await GuestSim.start({ tap, netns: ns.name, ip4: '10.99.0.2/24', packed });
      ns.defer(() => void guest.stop());
      t.not(guest.features & bits('RING_RESET'), 0n);
      ns.ip('addr', 'add', '10.99.0.1/24', 'dev', tap);
      t.is(ping(ns, ['-4', '-c', '10', '-i', '0.01', '-W', '2', '10.99.0.2']).loss, 0);
      t.is(await guest.resetQueue(0, 'rx', 128), 0, 'nothing was waiting in the RX ring');
      t.is(ping(ns, ['-4', '-c', '10', '-i', '0.01', '-W', '2', '10.99.0.2']).loss, 0);
      await guest.resetQueue(0, 'tx', 64);
      t.is(ping(ns, ['-4', '-c', '10', '-i', '0.01', '-W', '2', '10.99.0.2']).loss, 0);
      const u = udpEcho(ns, '10.99.0.2', [1, 100, 1472]);
      t.deepEqual([u.echoed, u.corrupt], [3, 0]);
      const s = await guest.stop();
      t.false(s.device.queues.some((q) => q.broken));
    });
  });
}
