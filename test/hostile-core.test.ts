// Regression tests for the defects of issue 12 that the ring-code rewrite of
// issue 9 fixes (1, 2, 3, 6): overlapping ring parts that make the worker spin
// (reset and close then never return), guest memory of 2 GiB and more with
// the control queue, a control queue that holds the event loop, and a Proxy
// posing as guest memory. Each runs in a child process (test/scenarios/core.ts)
// with a time bound: on broken code the child hangs, spins or dies, and the
// bound turns that into a clean failure.
//
// Each failed before the core rewrite (issue 9) was merged: the spin and the
// held event loop as a child killed at the bound, the control queue on 2..4
// GiB as a RangeError (at 4 GiB one that escaped to the event loop), the Proxy
// as a copy of guest memory the device used after the GC freed it (SIGSEGV).

import test from 'ava';

import { describeChild, runScenario } from './helpers/child';
import { requireRoot, withNetns } from '../host/netns';

/** Bound on a scenario: generous for a loaded 2-core machine; only a hang reaches it. */
const BOUND_MS = 60_000;

test.before(() => {
  requireRoot();
});

test.serial('1: ring parts that overlap (used.flags is avail.idx) cannot make the worker spin: reset and close return', (t) =>
  withNetns(async (ns) => {
    const r = await runScenario('core', ['overlap-spin', ns.name, ns.ifname()], BOUND_MS);
    t.false(r.timedOut, `dev.status = 0 or close() did not return (the worker spins in pop / re-enable / look again): ${describeChild(r)}`);
    t.is(r.code, 0, describeChild(r));
    t.is(r.result?.closed, true, describeChild(r));
    t.deepEqual(r.result?.uncaught, [], describeChild(r));
  }));

test.serial('1: a used ring over the descriptor table is refused before the device follows a descriptor', (t) =>
  withNetns(async (ns) => {
    const r = await runScenario('core', ['used-over-desc', ns.name, ns.ifname()], BOUND_MS);
    t.is(r.code, 0, describeChild(r));
    const res = r.result ?? {};
    const refusedTyped = /^(InvalidArgumentError|DeviceStateError|VirtioNetError):ERR_VHOST/.test(String(res.refused));
    const needsReset = res.needsReset !== '' && res.needsReset !== undefined;
    t.true(refusedTyped || needsReset, `overlapping ring parts were accepted and used: ${JSON.stringify(res)}`);
    t.is(res.txPackets, 0, `the device took frames from a ring it overwrites itself: ${JSON.stringify(res)}`);
    t.deepEqual(res.uncaught, []);
  }));

for (const gib of [2, 3, 4]) {
  test.serial(`2: ${gib} GiB of guest memory: DRIVER_OK with CTRL_VQ works and commands above 2^31 are answered`, (t) =>
    withNetns(async (ns) => {
      const r = await runScenario('core', ['big-memory-ctrl', ns.name, ns.ifname(), String(gib)], BOUND_MS);
      t.is(r.code, 0, describeChild(r));
      t.is(r.result?.driverOk, 'ok', describeChild(r));
      t.deepEqual(r.result?.acks, [0, 0, 0], describeChild(r));
      t.deepEqual(r.result?.uncaught, [], 'an exception escaped to the event loop (the process would have exited)');
    }));
}

test.serial('3: one kick on a 32768-entry control queue whose chains visit every descriptor does not hold the event loop', (t) =>
  withNetns(async (ns) => {
    const r = await runScenario('core', ['ctrl-stall', ns.name, ns.ifname()], BOUND_MS);
    t.false(r.timedOut, `the JS thread was held (no turn of the event loop within ${BOUND_MS} ms): ${describeChild(r)}`);
    t.is(r.code, 0, describeChild(r));
    const res = r.result ?? {};
    if (res.refused) {
      t.regex(String(res.refused), /^(InvalidArgumentError|DeviceStateError):ERR_VHOST/, 'a refusal is typed');
    } else {
      t.true(res.immediate, 'a setImmediate queued after the kick ran');
      // Timers kept firing while commands were being served, or the work ended (answered or broken) first.
      t.true((res.ticks as number) >= 20 || res.rule !== '' || res.answered === 32768, `the event loop turned while the queue was served: ${JSON.stringify(res)}`);
    }
    t.deepEqual(res.uncaught, []);
  }));

for (const kind of ['empty', 'forwarding']) {
  test.serial(`6: a Proxy (${kind} handler) around a SharedArrayBuffer is refused as memory, or the device uses the real memory`, (t) =>
    withNetns(async (ns) => {
      const r = await runScenario('core', ['proxy-memory', ns.name, ns.ifname(), kind], BOUND_MS, ['--expose-gc']);
      t.is(r.code, 0, describeChild(r));
      const res = r.result ?? {};
      if (res.sent === true) {
        t.pass('the device served the memory the Proxy stands for');
      } else {
        t.regex(String(res.refused), /^InvalidArgumentError:ERR_VHOST_INVALID_ARG/, `not refused, and the device did not see the guest's rings: ${JSON.stringify(res)}`);
      }
    }));
}
