// A machine without the programs the demo talks to (issue 22): `npm start`'s
// prestart step (.ci/test-peers --demo) stops with one line naming the package
// when iproute2 is missing and lets the demo run without ping; the demo itself,
// run directly with no `ip` on PATH, says which package to install instead of
// "spawnSync ip ENOENT". Nothing is uninstalled: a PATH without the programs and
// a dpkg-query that reports them missing stand in for the fresh machine.

import test from 'ava';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { CLI } from './helpers/cli';

const ROOT = path.join(__dirname, '..', '..');
const PEERS = path.join(ROOT, '.ci', 'test-peers');

/** A directory with a dpkg-query that says `missing` are not installed and asks the real one about the rest. */
function fakeDpkg(missing: string[]): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vt-fresh-'));
  const real = spawnSync('sh', ['-c', 'command -v dpkg-query'], { encoding: 'utf8' }).stdout.trim();
  fs.writeFileSync(
    path.join(dir, 'dpkg-query'),
    `#!/bin/sh\nfor a; do last=$a; done\ncase " ${missing.join(' ')} " in *" $last "*) exit 1;; esac\nexec ${real || 'false'} "$@"\n`,
    { mode: 0o755 },
  );
  return dir;
}

test('npm start without iproute2: the prestart step stops with one line naming the package; without ping only, the demo goes on', (t) => {
  const noIp = fakeDpkg(['iproute2', 'iputils-ping']);
  const noPing = fakeDpkg(['iputils-ping']);
  try {
    const env = { ...process.env, VHOST_TAP_NO_APT: '1' };
    const a = spawnSync('bash', [PEERS, '--demo'], { encoding: 'utf8', env: { ...env, PATH: `${noIp}:${process.env.PATH}` } });
    t.is(a.status, 1, a.stderr);
    t.is(a.stderr.trim(), "npm start: the demo needs the 'ip' command: install it first (as root): apt-get install --no-install-recommends iproute2 iputils-ping");
    const b = spawnSync('bash', [PEERS, '--demo'], { encoding: 'utf8', env: { ...env, PATH: `${noPing}:${process.env.PATH}` } });
    t.is(b.status, 0, b.stderr);
    // Without dpkg (not Debian) the program is looked for instead.
    const empty = path.join(noIp, 'empty');
    fs.mkdirSync(empty);
    const c = spawnSync('/bin/bash', [PEERS, '--demo'], { encoding: 'utf8', env: { PATH: empty } });
    t.is(c.status, 1, c.stderr);
    t.is(c.stderr.trim(), "npm start: the demo needs the 'ip' command: install iproute2");
    const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
    t.regex(pkg.scripts.prestart, /^bash \.ci\/test-peers --demo && /, 'npm start runs the check first');
  } finally {
    fs.rmSync(noIp, { recursive: true, force: true });
    fs.rmSync(noPing, { recursive: true, force: true });
  }
});

test('the demo run directly without `ip` on PATH: exit 1, one line naming iproute2', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vt-fresh-'));
  try {
    // Only a shell: what the demo finds on a machine without iproute2.
    fs.symlinkSync(spawnSync('sh', ['-c', 'command -v sh'], { encoding: 'utf8' }).stdout.trim(), path.join(dir, 'sh'));
    const r = spawnSync(process.execPath, [CLI, 'demo'], { encoding: 'utf8', env: { ...process.env, PATH: dir }, timeout: 60_000 });
    t.is(r.status, 1, r.stderr);
    t.is(r.stderr.trim(), "vhost-tap: the 'ip' command is not installed (Debian/Ubuntu: apt-get install iproute2)");
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
