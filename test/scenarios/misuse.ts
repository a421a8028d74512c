// Child-process scenarios for test/hostile.test.ts: API misuse whose failure
// on broken code is a write to the wrong fd, a loop until the heap is gone,
// or an uncaught exception that ends the process. Each prints one JSON line.
// Usage: node misuse.js SCENARIO [NETNS TAP [ARGS]]

import * as fs from 'node:fs';

import { CTRL, featureNames, rxq, txq, VirtioNetDevice, type VirtioNetError } from '../../backend';
import { addon } from '../../backend/native';
import { DriverQueue } from '../../driver';
import { MINI_FEATURES, MiniGuest } from '../helpers/mini-guest';
import { scenarioMain } from '../helpers/child';

function out(o: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(o)}\n`);
}

function codeOf(fn: () => unknown): string {
  try {
    fn();
    return 'no error';
  } catch (e) {
    return String((e as { code?: string }).code ?? (e as Error).name);
  }
}

/** fd 0 becomes an eventfd; then calls that must be refused before anything is written. */
function kickNan(): void {
  const a = addon();
  fs.closeSync(0);
  const efd = a.eventfd();
  const calls: Record<string, string> = {};
  const bad: [string, unknown][] = [['NaN', NaN], ['0.5', 0.5], ['-0.5', -0.5], ['0.99', 0.99], ['Infinity', Infinity], ['-Infinity', -Infinity], ['"0"', '0']];
  for (const [name, v] of bad) calls[`kick(${name})`] = codeOf(() => a.kick(v as number));
  calls['waitCall([NaN], 0)'] = codeOf(() => a.waitCall([NaN], 0));
  calls['waitCall([0.5], 0)'] = codeOf(() => a.waitCall([0.5], 0));
  calls['waitCall([efd], NaN)'] = codeOf(() => a.waitCall([efd], NaN));
  calls['waitCall([efd], 0.5)'] = codeOf(() => a.waitCall([efd], 0.5));
  calls['FdWatcher(NaN)'] = codeOf(() => new a.FdWatcher(NaN, () => undefined).close());
  // Nothing above may have written fd 0: its counter must still be 0.
  const fired = a.waitCall([efd], 0);
  out({ efd, fd0Written: fired !== 0, calls });
}

function featureNamesNegative(): void {
  let threw = 'no error';
  try {
    featureNames(-1n);
  } catch (e) {
    threw = `${(e as Error).name}:${String((e as { code?: string }).code)}`;
  }
  out({ threw });
}

/**
 * A listener of `event` calls close() (or resets: `action` 'reset') while the device is
 * inside the control command or the report that emitted it. The process must live on.
 */
async function closeInListener(ns: string, tap: string, event: string, action: string): Promise<void> {
  const pairs = event === 'queue-pairs' ? 2 : 1;
  const mem = new SharedArrayBuffer(MiniGuest.memoryBytes(pairs));
  const dev = new VirtioNetDevice({ memory: mem, tap, netns: ns, queuePairs: pairs });
  const errors: string[] = [];
  process.on('uncaughtException', (e) => {
    errors.push(String(e && (e as Error).stack ? (e as Error).stack : e));
  });
  const g = new MiniGuest(dev, mem);
  await g.init(MINI_FEATURES);
  let fired = 0;
  dev.on(event, () => {
    fired++;
    if (action === 'close') void dev.close();
    else dev.status = 0;
  });
  let ack: number | string = 'none';
  if (event === 'rx-filter') ack = await g.ctrl!.command(CTRL.CLASS_RX, CTRL.RX_PROMISC, Uint8Array.of(1)).catch((e: Error) => e.message);
  else if (event === 'queue-pairs') ack = await g.ctrl!.command(CTRL.CLASS_MQ, CTRL.MQ_VQ_PAIRS_SET, Uint8Array.of(2, 0)).catch((e: Error) => e.message);
  else if (event === 'needs-reset') {
    // The TX ring of pair 0 comes right after the RX ring (MiniGuest's layout): jump its avail.idx.
    const rx = DriverQueue.layout(0, 64);
    const tx = DriverQueue.layout(rx.end, 64);
    new DataView(mem).setUint16(tx.avail + 2, 1000, true);
    dev.kick(txq(0));
    await new Promise<void>((resolve) => {
      const t = setTimeout(resolve, 10_000);
      dev.once('needs-reset', (e: VirtioNetError) => {
        ack = e.rule;
        clearTimeout(t);
        setImmediate(resolve);
      });
    });
  }
  // A few turns of the event loop for whatever the listener's action left behind to run.
  await new Promise((r) => setTimeout(r, 100));
  let after = 'closed';
  try {
    // The device still answers (closed: a typed DeviceStateError; reset: a status read).
    if (action === 'reset') after = `status ${dev.status}`;
    else dev.kick(rxq(0));
  } catch (e) {
    after = String((e as { code?: string }).code);
  }
  await dev.close();
  out({ fired, ack, after, errors });
}

async function main(): Promise<void> {
  const [scenario, ...args] = process.argv.slice(2);
  switch (scenario) {
    case 'kick-nan':
      return kickNan();
    case 'feature-names-negative':
      return featureNamesNegative();
    case 'close-in-listener':
      return closeInListener(args[0], args[1], args[2], args[3]);
    default:
      throw new Error(`unknown scenario '${scenario}'`);
  }
}

scenarioMain(main);
