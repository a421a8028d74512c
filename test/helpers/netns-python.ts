// A python3 script run inside a test's network namespace that prints 'ready'
// once it is set up (a capture socket bound, say) and then its results: the
// caller waits for 'ready' before it sends anything, then for the script's
// end to read what it printed after that line.

import { spawn } from 'node:child_process';

import type { Netns } from '../../host/netns';

/** Resolves once the script printed 'ready'; `done()` then resolves with the lines it printed after it. */
export async function readyPython(ns: Netns, py: string, what: string): Promise<{ done(): Promise<string[]> }> {
  const child = spawn('ip', ['netns', 'exec', ns.name, 'python3', '-c', py], { stdio: ['ignore', 'pipe', 'inherit'] });
  ns.defer(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill();
  });
  let out = '';
  const exited = new Promise<void>((resolve, reject) => {
    child.on('error', reject);
    child.on('exit', () => resolve());
  });
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.startsWith('ready\n')) resolve();
    });
    child.on('exit', () => reject(new Error(`${what} ended before it was ready: ${out}`)));
  });
  return {
    async done() {
      await exited;
      return out.split('\n').slice(1).filter((l) => l !== '');
    },
  };
}
