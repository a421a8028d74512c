// A machine without the programs the demo talks to (issue 22): `npm start`'s
// prestart step (.ci/test-peers --demo) stops with one line naming the package
// when iproute2 is missing and lets the demo run without ping; the demo itself,
// run directly with no `ip` on PATH, says which package to install instead of
// "spawnSync ip ENOENT"; without make and python3 (node-gyp) the install script
// builds the addon with g++ alone. Nothing is uninstalled: a PATH without the programs and
// a dpkg-query that reports them missing stand in for the fresh machine.

import test from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { CLI } from './helpers/cli';

/** A directory of links to `programs` (found on this machine's PATH): the whole PATH of a machine that has only those. */
function onlyPrograms(programs: string[]): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vt-fresh-bin-'));
  for (const p of programs) {
    const found = spawnSync('sh', ['-c', `command -v ${p}`], { encoding: 'utf8' }).stdout.trim();
    if (!found) throw new Error(`the test needs ${p} on this machine`);
    fs.symlinkSync(fs.realpathSync(found), path.join(dir, p));
  }
  return dir;
}

/** What `npm install` gets from a clone for the addon: binding.gyp, native/, the builder, node_modules (linked). */
function addonTree(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vt-fresh-tree-'));
  fs.copyFileSync(path.join(ROOT, 'binding.gyp'), path.join(dir, 'binding.gyp'));
  fs.cpSync(path.join(ROOT, 'native'), path.join(dir, 'native'), { recursive: true });
  fs.mkdirSync(path.join(dir, 'scripts'));
  fs.copyFileSync(BUILDER, path.join(dir, 'scripts', 'build-addon.js'));
  fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(dir, 'node_modules'));
  return dir;
}

function runBuilder(cwd: string, PATH: string): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [path.join(cwd, 'scripts', 'build-addon.js')], { cwd, env: { ...process.env, PATH } });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    child.on('close', (code) => resolve({ code, out }));
  });
}

const ROOT = path.join(__dirname, '..', '..');
const PEERS = path.join(ROOT, '.ci', 'test-peers');
const BUILDER = path.join(ROOT, 'scripts', 'build-addon.js');

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

test('the install script on a machine with Node, npm and g++ but no make or python3: it compiles the addon with g++ from binding.gyp, and it loads', async (t) => {
  // Compiling every source at -O2 takes ~40 s on 2 idle cores; the full suite's load can triple that.
  t.timeout(400_000);
  const bin = onlyPrograms(['node', 'g++', 'as', 'ld', 'sh']);
  const tree = addonTree();
  try {
    t.falsy(spawnSync('/bin/sh', ['-c', 'command -v make || command -v python3 || command -v python'], { env: { PATH: bin } }).stdout.toString().trim(), 'make and python hidden');
    const built = path.join(tree, 'build', 'Release', 'vhost_tap.node');
    const r = await runBuilder(tree, bin);
    t.is(r.code, 0, r.out);
    t.regex(r.out, /no make\/python3 for node-gyp: compiling 23 sources with g\+\+/);
    t.notRegex(r.out, /gyp info/, 'node-gyp did not run');
    t.regex(r.out, /CXX native\/vhost_user_binding\.cc \(\d+\/23\)/);
    t.true(fs.existsSync(built), r.out);
    // The addon loads in a fresh process (as node-gyp-build finds it) and works: an eventfd made and closed.
    const load = spawnSync(
      process.execPath,
      ['-e', "const a = require('node-gyp-build')(process.argv[1]); const fd = a.eventfd(); a.close(fd); console.log(typeof a.Engine, typeof a.vhostUser, fd >= 0)", tree],
      { encoding: 'utf8', env: { ...process.env, NODE_PATH: path.join(ROOT, 'node_modules') } },
    );
    t.is(load.status, 0, load.stderr);
    t.is(load.stdout.trim(), 'function object true');
    // A second run (a repeated npm install) finds it current and compiles nothing.
    const before = fs.statSync(built).mtimeMs;
    const again = await runBuilder(tree, bin);
    t.is(again.code, 0, again.out);
    t.is(again.out, '');
    t.is(fs.statSync(built).mtimeMs, before);
  } finally {
    fs.rmSync(bin, { recursive: true, force: true });
    fs.rmSync(tree, { recursive: true, force: true });
  }
});

test('the install script with neither make/python3 nor g++: exit 1, one line saying to install g++', async (t) => {
  const bin = onlyPrograms(['node', 'sh']);
  const tree = addonTree();
  try {
    const env: NodeJS.ProcessEnv = { ...process.env, PATH: bin };
    delete env.CXX;
    const r = spawnSync(process.execPath, [path.join(tree, 'scripts', 'build-addon.js')], { cwd: tree, env, encoding: 'utf8' });
    t.is(r.status, 1, r.stdout + r.stderr);
    t.is(r.stderr.trim(), 'build-addon: no C++ compiler: install g++ (Debian: apt-get install g++), or set CXX');
    t.false(fs.existsSync(path.join(tree, 'build', 'Release', 'vhost_tap.node')));
  } finally {
    fs.rmSync(bin, { recursive: true, force: true });
    fs.rmSync(tree, { recursive: true, force: true });
  }
});

test("binding.gyp read as gyp does: comments, single quotes, trailing commas, conditions on the environment", (t) => {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const b = require(BUILDER) as { parseGyp(s: string): unknown; evalCondition(s: string): boolean; readTarget(): Record<string, string[]> };
  t.deepEqual(b.parseGyp(`{ # a comment\n 'a': ['x#y', "z",], 'b': "it's", }`), { a: ['x#y', 'z'], b: "it's" });
  t.true(b.evalCondition("OS=='linux' and not ('a'=='b')"));
  t.false(b.evalCondition("'' == '1' or OS!='linux'"));
  t.throws(() => b.evalCondition("target_arch=='x64'"), { message: /target_arch/ });
  const target = b.readTarget();
  t.true(target.sources.includes('native/engine.cc'));
  t.deepEqual(target.cflags_cc.filter((f) => /^-O|^-std/.test(f)), ['-std=c++17', '-O2']);
  t.true(target.defines.includes('NDEBUG'), 'no sanitizer: the else branch');
  t.true(fs.existsSync(path.join(ROOT, target.include_dirs[0], 'napi.h')), 'node-addon-api from its <!(node -p ...)');
});
