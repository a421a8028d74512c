// A device and a driver in one program: the guest asks "who has 10.99.0.1?"
// and reads the kernel's ARP reply. Runs in a network namespace it creates
// and deletes (needs root). Run: node dist/examples/arp.js

import { execFileSync } from 'node:child_process';

import { bits, STATUS, VirtioNetDevice, VirtioNetError } from 'vhost-tap';
import { GuestAllocator, negotiate, NetQueuePair, setUpQueuePair } from 'vhost-tap/driver';

const ns = `vtex${process.pid}`;
const ip = (...args: string[]): string => execFileSync('ip', args, { encoding: 'utf8' });

async function main(): Promise<number> {
  ip('netns', 'add', ns);
  let dev: VirtioNetDevice | undefined;
  try {
    // Guest memory: one SharedArrayBuffer at guest address 0 (or regions, [{ guestAddr, memory }, ...]).
    const memory = new SharedArrayBuffer(4 << 20);
    dev = new VirtioNetDevice({ memory, tap: 'vtex0', netns: ns });
    dev.on('needs-reset', (e: VirtioNetError) => console.error(`queue ${e.queue} broke rule ${e.rule}`));

    // Driver: negotiate, lay out queue pair 0 (rings + buffers), DRIVER_OK, post RX buffers.
    negotiate(dev, bits('VERSION_1', 'MAC', 'MRG_RXBUF', 'RING_EVENT_IDX'));
    const pair = new NetQueuePair(setUpQueuePair(dev, 0, new GuestAllocator(memory), { queueSize: 64 }));
    dev.status |= STATUS.DRIVER_OK; // the device's worker starts, the TAP gets carrier
    pair.start();
    ip('-n', ns, 'addr', 'add', '10.99.0.1/24', 'dev', 'vtex0');

    // The ARP request (Ethernet + ARP, 42 bytes); the guest's MAC is in config space.
    const mac = new Uint8Array(dev.config.buffer, 0, 6);
    const req = new Uint8Array(42);
    req.fill(0xff, 0, 6); // to broadcast
    req.set(mac, 6);
    req.set([0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1], 12); // ARP, Ethernet/IPv4, request
    req.set(mac, 22);
    req.set([10, 99, 0, 2], 28); // sender 10.99.0.2
    req.set([10, 99, 0, 1], 38); // target 10.99.0.1
    pair.send(req); // a virtio_net_hdr asking for no offload goes in front
    pair.flush(); // publish avail.idx, kick the device

    let reply = '';
    for (const end = Date.now() + 5000; !reply && Date.now() < end; pair.wait(100)) {
      for (let f = pair.receive(); f; f = pair.receive()) {
        const b = pair.frameBytes(f);
        if (b[12] === 0x08 && b[13] === 0x06 && b[21] === 2 && b.subarray(28, 32).join('.') === '10.99.0.1') {
          reply = Array.from(b.subarray(22, 28), (x) => x.toString(16).padStart(2, '0')).join(':');
        }
      }
    }
    console.log(reply ? `10.99.0.1 is at ${reply}` : 'no ARP reply within 5 s');
    return reply ? 0 : 1;
  } finally {
    await dev?.close();
    ip('netns', 'del', ns);
  }
}

main().then(
  (code) => (process.exitCode = code),
  (e: Error) => {
    console.error(e.message);
    process.exitCode = 1;
  },
);
