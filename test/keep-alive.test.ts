// An open VirtioNetDevice keeps the Node process alive until close(), as a
// net.Server does, and unref() lets the process exit while it is open.

import test from 'ava';

import { withNetns } from '../host/netns';
import { describeChild, runScenario } from './helpers/child';

test('a program whose only handle is an open device runs until it closes the device', async (t) => {
  await withNetns(async (ns) => {
    const r = await runScenario('keep-alive', [ns.name, ns.ifname(), 'ref'], 30_000);
    t.is(r.code, 0, describeChild(r));
    t.deepEqual(r.stdout.trim().split('\n'), ['closed', 'exit after close'], describeChild(r));
  });
});

test('after unref() the open device no longer keeps the process alive', async (t) => {
  await withNetns(async (ns) => {
    const r = await runScenario('keep-alive', [ns.name, ns.ifname(), 'unref'], 30_000);
    t.is(r.code, 0, describeChild(r));
    t.deepEqual(r.stdout.trim().split('\n'), ['exit while open'], describeChild(r));
  });
});
