// A user who is not root, on a persistent multiqueue vnet-hdr TAP that root
// made for them once (ip tuntap add NAME mode tap user U multi_queue vnet_hdr):
// `run` (the library's VirtioNetDevice under guest-sim) answers ping and TCP
// with the offloads the kernel allows the TAP's owner, and `vhost-user` gets
// ready on it. The CLI runs as uid/gid 65534 with no groups and no
// capabilities (setpriv), inside a namespace the test creates, where root
// made the TAP, put the host's address on it and brought it up.

import test from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { withNetns, type Netns } from '../host/netns';
import { CLI } from './helpers/cli';

const NOBODY = 65534;
const AS_NOBODY = [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', '--inh-caps=-all'];

/**
 * Node and the CLI as uid 65534 can run them: this node and the tree itself when that user can
 * (a checkout made with umask 022, node in /usr), else copies in a directory everyone can
 * read: of node (e.g. one under /root/.nvm), and of what the CLI needs (dist/, the addon,
 * node-gyp-build).
 */
let forNobody: { node: string; cli: string } | undefined;
function cliForNobody(): { node: string; cli: string } {
  if (forNobody) return forNobody;
  let copy: string | undefined;
  const tmp = (): string => {
    if (copy) return copy;
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vt-nobody-'));
    process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
    return (copy = dir);
  };
  let node = process.execPath;
  if (spawnSync('setpriv', [...AS_NOBODY, node, '-e', '0'], { cwd: '/' }).status !== 0) {
    node = path.join(tmp(), 'node');
    fs.copyFileSync(process.execPath, node);
    fs.chmodSync(node, 0o755);
  }
  let cli = CLI;
  const loads = spawnSync('setpriv', [...AS_NOBODY, node, '-e', `require(${JSON.stringify(path.join(path.dirname(CLI), '..', 'backend', 'native.js'))}).addon()`], { cwd: '/' });
  if (loads.status !== 0) {
    const root = path.join(__dirname, '..', '..');
    for (const rel of ['package.json', 'dist', 'build/Release/vhost_tap.node', 'node_modules/node-gyp-build']) {
      fs.cpSync(path.join(root, rel), path.join(tmp(), rel), { recursive: true });
    }
    cli = path.join(tmp(), 'dist', 'cli', 'main.js');
  }
  if (copy) {
    fs.chmodSync(copy, 0o755);
    spawnSync('chmod', ['-R', 'a+rX', copy]);
  }
  return (forNobody = { node, cli });
}

/** Root's part: the TAP for uid 65534, the host's address on it, link up. */
function tapForNobody(ns: Netns, net: number): string {
  const tap = ns.ifname();
  ns.ip('tuntap', 'add', tap, 'mode', 'tap', 'user', String(NOBODY), 'multi_queue', 'vnet_hdr');
  ns.ip('addr', 'add', `10.97.${net}.1/24`, 'dev', tap);
  ns.ip('link', 'set', tap, 'up');
  return tap;
}

/** Starts `vhost-tap ARGS` as uid 65534 inside `ns`; resolves with its ready line and a stop(). */
function startAsNobody(ns: Netns, { node, cli }: { node: string; cli: string }, args: string[]): Promise<{ ready: string; stop(): Promise<{ code: number | null; out: string }> }> {
  const child = spawn('ip', ['netns', 'exec', ns.name, 'setpriv', ...AS_NOBODY, node, cli, ...args], { stdio: ['ignore', 'pipe', 'pipe'], cwd: '/' });
  ns.defer(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`not ready in 30 s: ${out}`)), 30_000);
    void exited.then((code) => reject(new Error(`exited with ${code} before it was ready: ${out}`)));
    child.stdout.on('data', () => {
      const ready = out.split('\n').find((l) => l.startsWith('ready:'));
      if (!ready) return;
      clearTimeout(timer);
      resolve({
        ready,
        stop: async () => {
          // ip netns exec and setpriv exec the node process: the child's pid is the CLI's.
          child.kill('SIGINT');
          return { code: await exited, out };
        },
      });
    });
  });
}

test('as uid 65534: run on a TAP made for that user answers ping and TCP, with every offload the kernel offers the TAP', async (t) => {
  const cli = cliForNobody();
  await withNetns(async (ns) => {
    const tap = tapForNobody(ns, 0);
    const run = await startAsNobody(ns, cli, ['run', '--tap', tap, '--queues', '2', '--ip', '10.97.0.2/24']);
    t.regex(run.ready, new RegExp(`^ready: tap ${tap}, .*2 queue pair\\(s\\), offloads csum,tso4,tso6,.*guest-csum,guest-tso4,guest-tso6`));
    // The guest's queue-pair Workers may still be starting on a loaded machine: wait until it
    // answers at all (at most 20 s), then it must answer every ping.
    for (let i = 0; i < 20 && ns.run('ping', ['-c', '1', '-W', '1', '10.97.0.2']).status !== 0; i++);
    const ping = ns.run('ping', ['-c', '3', '-i', '0.2', '-W', '2', '10.97.0.2']);
    t.regex(ping.stdout, / 0% packet loss/, ping.stdout + ping.stderr);
    // 1 MiB to the guest's discard port: with GUEST_TSO4 the kernel hands it TCP super-frames.
    const tcp = ns.run(process.execPath, ['-e', `const s = require('net').connect(9, '10.97.0.2', () => s.end(Buffer.alloc(1 << 20, 7))); s.on('close', () => process.exit(0)); s.on('error', (e) => { console.error(e.message); process.exit(1); });`]);
    t.is(tcp.status, 0, tcp.stderr);
    const { code, out } = await run.stop();
    t.is(code, 0, out);
    t.regex(out, /discard: \S+ bytes 1048576 /);
    // The TAP is root's: it outlives the unprivileged back end.
    t.true(ns.ip('link', 'show', tap).includes(tap));
  });
});

test('as uid 65534: vhost-user gets ready on a TAP made for that user; one it was not given is refused with what to ask root for', async (t) => {
  const cli = cliForNobody();
  await withNetns(async (ns) => {
    const tap = tapForNobody(ns, 1);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vt-nobody-sock-'));
    fs.chmodSync(dir, 0o777);
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
    const sock = path.join(dir, 'vu.sock');
    const vu = await startAsNobody(ns, cli, ['vhost-user', '--socket', sock, '--tap', tap, '--queues', '2']);
    t.regex(vu.ready, new RegExp(`^ready: listening on ${sock}, tap ${tap}, 2 queue pair\\(s\\), offloads csum,`));
    t.is(fs.statSync(sock).uid, NOBODY);
    const { code, out } = await vu.stop();
    t.is(code, 0, out);
    // A TAP root did not make for this user: TUNSETIFF needs CAP_NET_ADMIN, and the message says how to get one.
    const other = ns.run('setpriv', [...AS_NOBODY, cli.node, cli.cli, 'run', '--tap', `${tap}x`.slice(-15)]);
    t.is(other.status, 1, other.stderr);
    t.regex(other.stderr, /needs CAP_NET_ADMIN; run as root, or have root make a TAP of yours once: ip tuntap add NAME mode tap user USER multi_queue vnet_hdr/);
  });
});
