// Child for test/keep-alive.test.ts: an interrupt-driven program whose only
// handle is a VirtioNetDevice. Args: NETNS TAP MODE. It schedules close() on an
// unreferenced timer, so only the device can keep the process alive until then;
// MODE 'unref' calls dev.unref() first. Prints how the process ended.

import { VirtioNetDevice } from '../../backend/index';

const [netns, tap, mode] = process.argv.slice(2);
const dev = new VirtioNetDevice({ memory: new SharedArrayBuffer(1 << 20), tap, netns });
dev.on('interrupt', () => {});
if (mode === 'unref') dev.unref();
let closed = false;
process.on('exit', () => console.log(closed ? 'exit after close' : 'exit while open'));
setTimeout(() => {
  void dev.close().then(() => {
    closed = true;
    console.log('closed');
  });
}, 300).unref();
