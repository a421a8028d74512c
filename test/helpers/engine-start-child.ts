// A child for native-engine's "out of threads" test: builds an engine, says
// "ready", and on a line from stdin starts it and prints what start() did as
// one JSON line. Started as root under RLIMIT_NPROC 1 (which binds every user
// but root), it becomes uid 65534 before it says ready.

import * as readline from 'node:readline';

import { addon } from '../../backend/native';
import { GuestMem, makeQueue } from './rings';

const A = addon();
const mem = new GuestMem(1 << 20, 0x10000);
const rx = makeQueue('split', mem, 16, 0);
const tx = makeQueue('split', mem, 16, 0x8000);
const [tapFd] = A.seqpacketPair();
const engine = new A.Engine({
  memory: mem.native, tapFd, hdrLen: 12, mergeable: true, eventIdx: false, indirect: true, rxFrameMax: 1526,
  packed: false, inOrder: false, io: 'readv',
  rx: { index: 0, ...rx.layout, kickFd: A.eventfd(), callFd: A.eventfd() },
  tx: { index: 1, ...tx.layout, kickFd: A.eventfd(), callFd: A.eventfd() },
  onBroken: () => undefined,
});
const lines = readline.createInterface({ input: process.stdin });
lines.once('line', () => {
  let result: { started: boolean; code?: string; errno?: number; syscall?: string; message?: string };
  try {
    engine.start();
    result = { started: true };
    engine.stop();
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    result = { started: false, code: err.code, errno: err.errno, syscall: err.syscall, message: err.message };
  }
  process.stdout.write(`${JSON.stringify(result)}\n`);
  lines.close();
  engine.close();
});
// From here on this process is over its thread limit: uid 65534 with more
// threads than RLIMIT_NPROC allows.
process.setgid!(65534);
process.setuid!(65534);
process.stdout.write('ready\n');
