// The package as users get it: `npm pack` from a clean copy of the sources
// (what a clone has: no dist/, no build/), then `npm install ./vhost-tap-x.y.z.tgz`
// into a fresh project with only the registry cache at hand, which builds the
// addon; then the README's example runs there against the installed package,
// type-checks against its typings, and a repeated install does not rebuild.

import test from 'ava';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { requireRoot } from '../host/netns';

const ROOT = path.join(__dirname, '..', '..');

interface Ran {
  code: number | null;
  /** stdout and stderr together, for messages. */
  out: string;
  stdout: string;
}

/** Runs a command without blocking the event loop (so ava's timers keep running); never throws. */
function run(cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = process.env): Promise<Ran> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let stdout = '';
    child.stdout.on('data', (d) => {
      out += d;
      stdout += d;
    });
    child.stderr.on('data', (d) => (out += d));
    child.on('error', (e) => resolve({ code: -1, out: out + String(e), stdout }));
    child.on('close', (code) => resolve({ code, out, stdout }));
  });
}

/** Files a clone has: tracked ones plus new ones not ignored (so an uncommitted file is packed as it would be once committed). */
async function sourceFiles(): Promise<string[]> {
  const r = await run('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], ROOT);
  // No git (a machine with only Node, npm and g++; code -1 is spawn's ENOENT) or no checkout (an
  // unpacked source archive): the tree less what .gitignore names, which is what git would list.
  if (r.code === -1 || (r.code !== 0 && !fs.existsSync(path.join(ROOT, '.git')))) return treeFiles();
  if (r.code !== 0) throw new Error(`git ls-files failed (the package test needs a git checkout or a tree without .git): ${r.out}`);
  return r.out.split('\0').filter((f) => f !== '' && fs.existsSync(path.join(ROOT, f)));
}

/** The files under ROOT that the top-level .gitignore does not name (its patterns are names or name globs; a trailing / means a directory). */
function treeFiles(): string[] {
  const glob = (p: string): RegExp => new RegExp(`^${p.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '[^/]*').replace(/\?/g, '[^/]')}$`);
  const rules = fs
    .readFileSync(path.join(ROOT, '.gitignore'), 'utf8')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'))
    .map((l) => ({ dir: l.endsWith('/'), parts: l.replace(/\/$/, '').replace(/^\//, '').split('/').map(glob) }));
  const ignored = (rel: string, dir: boolean): boolean =>
    rules.some((r) => {
      if (r.dir && !dir) return false;
      const segs = rel.split('/');
      // One segment: any name at any depth; more: the path from the top.
      if (r.parts.length === 1) return r.parts[0].test(segs[segs.length - 1]);
      return segs.length === r.parts.length && r.parts.every((re, i) => re.test(segs[i]));
    });
  const out: string[] = [];
  const walk = (rel: string): void => {
    for (const e of fs.readdirSync(path.join(ROOT, rel), { withFileTypes: true })) {
      const f = rel === '' ? e.name : `${rel}/${e.name}`;
      if (e.name === '.git' || ignored(f, e.isDirectory())) continue;
      if (e.isDirectory()) walk(f);
      else if (e.isFile()) out.push(f);
    }
  };
  walk('');
  return out;
}

test.serial('npm pack from a clean copy, npm install of the tarball into a fresh project, the example runs there', async (t) => {
  requireRoot('the package test runs the example, which creates a network namespace and a TAP');
  // Compiling the addon on a loaded 2-core machine can take minutes.
  t.timeout(15 * 60_000);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vt-pkg-'));
  t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));

  // 1. A clean copy of the sources; node_modules is linked so prepack's tsc is there (as after `npm ci`).
  const src = path.join(tmp, 'src');
  for (const f of await sourceFiles()) {
    fs.mkdirSync(path.dirname(path.join(src, f)), { recursive: true });
    fs.copyFileSync(path.join(ROOT, f), path.join(src, f));
  }
  t.false(fs.existsSync(path.join(src, 'dist')), 'the copy has no dist/');
  fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(src, 'node_modules'));
  const pack = await run('npm', ['pack', '--json', '--pack-destination', tmp], src);
  t.is(pack.code, 0, pack.out);
  const info = JSON.parse(pack.stdout)[0] as { filename: string; files: { path: string }[] };
  const files = info.files.map((f) => f.path);
  const tgz = path.join(tmp, info.filename);
  t.true(fs.existsSync(tgz));

  // 2. What the tarball holds: compiled JS and typings, addon sources and build files, README, LICENSE.
  for (const f of [
    'package.json',
    'README.md',
    'LICENSE',
    'binding.gyp',
    'native/engine.cc',
    'native/virtqueue.h',
    'dist/backend/index.js',
    'dist/backend/index.d.ts',
    'dist/driver/index.js',
    'dist/driver/index.d.ts',
    'dist/cli/main.js',
    'dist/guest-sim/worker.js',
    'dist/bench/run.js',
    'bench/baseline.c',
    'scripts/build-addon.js',
  ]) {
    t.true(files.includes(f), `tarball has ${f}`);
  }
  // ...and nothing else: no tests, CI, bench results, TypeScript sources, source maps or build output.
  const unwanted = files.filter(
    (f) =>
      /^(test|dist\/test|\.ci|examples|dist\/examples|build|node_modules)\//.test(f) ||
      /^bench\/(results|out)/.test(f) ||
      /^dist\/bench\/micro\//.test(f) ||
      (f.endsWith('.ts') && !f.endsWith('.d.ts')) ||
      f.endsWith('.map') ||
      f.endsWith('.node'),
  );
  t.deepEqual(unwanted, [], 'nothing but the package');

  // 3. A fresh project installs it with Node, npm and g++ only: dependencies come from the npm cache.
  const app = path.join(tmp, 'app');
  fs.mkdirSync(app);
  fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true }));
  const inst = await run('npm', ['install', tgz, '--prefer-offline', '--no-audit', '--no-fund'], app);
  t.is(inst.code, 0, inst.out);
  const pkgDir = path.join(app, 'node_modules', 'vhost-tap');
  const addonFile = path.join(pkgDir, 'build', 'Release', 'vhost_tap.node');
  t.true(fs.existsSync(addonFile), 'the install built the addon');
  for (const dev of ['typescript', 'ava', '@types/node', 'benchmark']) t.false(fs.existsSync(path.join(app, 'node_modules', dev)), `${dev} (a devDependency) not installed`);

  // 4. The README's example, compiled here, runs in the app against the installed package.
  fs.copyFileSync(path.join(ROOT, 'dist', 'examples', 'arp.js'), path.join(app, 'arp.js'));
  const ex = await run(process.execPath, ['arp.js'], app);
  t.is(ex.code, 0, ex.out);
  t.regex(ex.out, /^10\.99\.0\.1 is at ([0-9a-f]{2}:){5}[0-9a-f]{2}$/m);
  const resolved = await run(process.execPath, ['-e', "console.log(require.resolve('vhost-tap'), require.resolve('vhost-tap/driver'))"], app);
  t.is(resolved.stdout.trim(), `${path.join(pkgDir, 'dist', 'backend', 'index.js')} ${path.join(pkgDir, 'dist', 'driver', 'index.js')}`, 'the app resolves the installed package');

  // 5. The example type-checks against the installed typings, with node16 (exports) and node10 (typesVersions) resolution.
  fs.copyFileSync(path.join(ROOT, 'examples', 'arp.ts'), path.join(app, 'arp.ts'));
  const tsc = path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
  for (const [mod, res] of [['node16', 'node16'], ['commonjs', 'node10']]) {
    const tc = await run(
      process.execPath,
      [tsc, '--noEmit', '--strict', '--target', 'ES2022', '--module', mod, '--moduleResolution', res, '--types', 'node', '--typeRoots', path.join(ROOT, 'node_modules', '@types'), 'arp.ts'],
      app,
    );
    t.is(tc.code, 0, `tsc --moduleResolution ${res}: ${tc.out}`);
  }

  // 6. The command is installed, and a repeated install (its install script runs again) does not rebuild the addon.
  const ver = await run(path.join(app, 'node_modules', '.bin', 'vhost-tap'), ['--version'], app);
  t.is(ver.code, 0, ver.out);
  t.is(ver.out.trim(), JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')).version);
  const before = fs.statSync(addonFile).mtimeMs;
  const again = await run('npm', ['rebuild', 'vhost-tap', '--foreground-scripts'], app);
  t.is(again.code, 0, again.out);
  t.is(fs.statSync(addonFile).mtimeMs, before, `the addon was not rebuilt: ${again.out}`);
  t.notRegex(again.out, /gyp info|g\+\+|CXX\(target\)/, 'no compiler ran');
});
