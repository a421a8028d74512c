// One TAP, one back end: a second VirtioNetDevice, `run` or `vhost-user` on a
// TAP (name and namespace) that a live back end serves is refused with an
// error that says so, instead of both saying ready and silently splitting the
// host's traffic between their queues; the claim goes with the first one.

import test from 'ava';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { TapError, VirtioNetDevice } from '../backend/index';
import { withNetns } from '../host/netns';
import { CLI, startRun } from './helpers/cli';

test('a second device on a TAP in use is refused; once the first closes, the TAP can be used again', async (t) => {
  await withNetns(async (ns) => {
    const tap = ns.ifname();
    const memory = new SharedArrayBuffer(1 << 20);
    const first = new VirtioNetDevice({ memory, tap, netns: ns.name, queuePairs: 2 });
    ns.defer(() => void first.close());
    const e = t.throws(() => new VirtioNetDevice({ memory, tap, netns: ns.name, queuePairs: 2 }), { instanceOf: TapError });
    t.regex(e!.message, new RegExp(`^TAP '${tap}': already in use by another vhost-tap back end \\(pid ${process.pid}\\) in network namespace '/run/netns/${ns.name}'`));
    // The refused one left nothing attached: the TAP still has the first one's two queues only.
    t.is(first.stats().queues.length, 4);
    await first.close();
    // The TAP went with the first device's last queue; the name is free again.
    const again = new VirtioNetDevice({ memory, tap, netns: ns.name });
    t.is(again.stats().queues.length, 2, 'the new device holds its one queue pair');
    await again.close();
  });
});

test('run and vhost-user refuse a TAP that a running `run` serves, with one line and exit 1', async (t) => {
  await withNetns(async (ns) => {
    const tap = ns.ifname();
    const cli = await startRun(['--tap', tap, '--netns', ns.name, '--queues', '2']);
    ns.defer(() => {
      if (cli.child.exitCode === null) cli.child.kill('SIGKILL');
    });
    const sock = path.join(os.tmpdir(), `${ns.name}.sock`);
    for (const args of [
      ['run', '--tap', tap, '--netns', ns.name, '--queues', '2'],
      ['vhost-user', '--socket', sock, '--tap', tap, '--netns', ns.name],
    ]) {
      const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 30_000 });
      t.is(r.status, 1, `${args[0]}: ${r.stdout} ${r.stderr}`);
      t.notRegex(r.stdout, /ready:/);
      t.regex(r.stderr.trim(), new RegExp(`^vhost-tap: TAP '${tap}': already in use by another vhost-tap back end \\(pid ${cli.child.pid}\\)`));
      t.is(r.stderr.trim().split('\n').length, 1, r.stderr);
    }
    t.false(fs.existsSync(sock), 'the refused vhost-user left no socket file behind');
    const { code } = await cli.stop('SIGINT');
    t.is(code, 0);
  });
});
