// Child-process scenario for test/faults.test.ts: close() while the device's
// workers and the guest's vCPU Workers are blocked. On broken code a vCPU
// Worker blocked in waitCall() on a call eventfd never wakes once the device
// closes its fds (poll holds the file), so this process would never end; the
// parent bounds it. Prints one JSON line.
// Usage: node faults.js close-blocked NETNS TAP HOST4 GUEST4 GUEST_MAC

import * as path from 'node:path';
import { Worker } from 'node:worker_threads';

import { rxq, txq, VirtioNetDevice } from '../../backend';
import type { Netns } from '../../host/netns';
import { deviceAccounting, startFlood, TrafficGuest } from '../helpers/traffic-guest';
import { scenarioMain } from '../helpers/child';

const uncaught: string[] = [];
process.on('uncaughtException', (e) => uncaught.push(String((e as Error)?.stack ?? e)));

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Enough of a Netns for startFlood: the parent test owns and deletes the namespace. */
function nsOf(name: string): Netns {
  return { name, defer: () => undefined } as unknown as Netns;
}

async function closeBlocked(nsName: string, tap: string, host4: string, guest4: string, mac: string): Promise<void> {
  const ns = nsOf(nsName);
  const { execFileSync } = await import('node:child_process');
  const ip = (...a: string[]): void => void execFileSync('ip', ['-n', nsName, ...a]);
  const pairs = 2;
  const mem = new SharedArrayBuffer(TrafficGuest.memoryBytes(pairs));
  const dev = new VirtioNetDevice({ memory: mem, tap, netns: nsName, queuePairs: pairs, mac });
  const g = new TrafficGuest(dev, mem);
  await g.init();
  ip('addr', 'add', `${host4}/24`, 'dev', tap);
  ip('neigh', 'replace', guest4, 'lladdr', mac, 'dev', tap, 'nud', 'permanent');
  const flood = startFlood(ns, guest4, 30, 20_000);
  // Traffic both ways for a while.
  const end = Date.now() + 800;
  while (Date.now() < end) {
    g.pump(16);
    await sleep(1);
  }
  const rxBefore = g.counts.rx;
  // The guest stops serving its rings: the RX rings run out of buffers and TX goes quiet, so the
  // device's workers go to sleep; each vCPU Worker blocks on its pair's call eventfds for good.
  const backend = path.join(__dirname, '..', '..', 'backend', 'index.js');
  const code = `
const { parentPort, workerData } = require('node:worker_threads');
const { waitCall } = require(${JSON.stringify(backend)});
for (;;) { if (waitCall(workerData.fds, 50) === 0) break; }  // until the interrupts of the traffic stopped
parentPort.postMessage('blocking');
let woke;
try { woke = waitCall(workerData.fds, -1) !== 0; } catch (e) { woke = 'error ' + e.code; }
parentPort.postMessage({ woke });`;
  const results: Promise<unknown>[] = [];
  const blocking: Promise<unknown>[] = [];
  for (let p = 0; p < pairs; p++) {
    const fds = [dev.notifier(rxq(p)).callFd, dev.notifier(txq(p)).callFd];
    const w = new Worker(code, { eval: true, workerData: { fds } });
    blocking.push(new Promise((r) => w.once('message', r)));
    results.push(
      new Promise((resolve) => {
        w.on('message', (m: unknown) => {
          if (typeof m === 'object' && m && 'woke' in m) resolve((m as { woke: unknown }).woke);
        });
        w.once('error', (e) => resolve(`worker error ${e.message}`));
      }),
    );
  }
  await Promise.all(blocking);
  // They are in poll() now (give the threads a moment to get there).
  await sleep(300);
  await dev.close();
  const woke = await Promise.all(results);
  flood.stop();
  await flood.done.catch(() => undefined);
  const acc = deviceAccounting(dev.stats());
  // The next device on the same TAP name works.
  const mem2 = new SharedArrayBuffer(TrafficGuest.memoryBytes(pairs));
  const dev2 = new VirtioNetDevice({ memory: mem2, tap, netns: nsName, queuePairs: pairs, mac });
  const g2 = new TrafficGuest(dev2, mem2);
  await g2.init();
  ip('addr', 'add', `${host4}/24`, 'dev', tap);
  ip('neigh', 'replace', guest4, 'lladdr', mac, 'dev', tap, 'nud', 'permanent');
  const flood2 = startFlood(ns, guest4, 10, 2000);
  const end2 = Date.now() + 15_000;
  while (Date.now() < end2 && (g2.sessionRx === 0 || g2.sessionTxDone === 0)) {
    g2.pump(4);
    await sleep(2);
  }
  flood2.stop();
  await flood2.done.catch(() => undefined);
  await dev2.close();
  process.stdout.write(
    `${JSON.stringify({
      closed: true,
      woke,
      rxBefore,
      txUsedMatches: acc.txUsedChains === acc.txPackets + acc.txDrops,
      accounting: acc,
      nextSessionRx: g2.sessionRx,
      nextSessionTx: g2.sessionTxDone,
      uncaught,
    })}\n`,
  );
}

async function main(): Promise<void> {
  const [scenario, ...a] = process.argv.slice(2);
  if (scenario === 'close-blocked') return closeBlocked(a[0], a[1], a[2], a[3], a[4]);
  throw new Error(`unknown scenario '${scenario}'`);
}

scenarioMain(main);
