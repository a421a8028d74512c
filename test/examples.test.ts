// The README's example is examples/arp.ts, byte for byte, and it runs: a
// device and a driver in one program get the kernel's ARP reply. So the
// documentation cannot rot. (test/package.test.ts runs it again against the
// installed tarball.)

import test from 'ava';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { requireRoot } from '../host/netns';

const ROOT = path.join(__dirname, '..', '..');

test('the README shows examples/arp.ts verbatim', (t) => {
  const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
  const src = fs.readFileSync(path.join(ROOT, 'examples', 'arp.ts'), 'utf8');
  const blocks = [...readme.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]);
  t.true(blocks.includes(src), 'a ```ts block of README.md is the file, unchanged');
});

test('examples/arp.ts: the guest gets the ARP reply for 10.99.0.1 and the namespace is gone afterwards', (t) => {
  requireRoot('the example creates a network namespace and a TAP');
  const r = spawnSync(process.execPath, [path.join(ROOT, 'dist', 'examples', 'arp.js')], { encoding: 'utf8', timeout: 60_000 });
  t.is(r.status, 0, `${r.stdout}\n${r.stderr}`);
  t.regex(r.stdout, /^10\.99\.0\.1 is at ([0-9a-f]{2}:){5}[0-9a-f]{2}\n$/);
  t.is(r.stderr, '');
  t.false(fs.existsSync(`/run/netns/vtex${r.pid}`), 'its namespace is deleted');
});

test('every other TypeScript block of the README type-checks against the sources', (t) => {
  const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
  const src = fs.readFileSync(path.join(ROOT, 'examples', 'arp.ts'), 'utf8');
  // Blocks at the start of a line (not the short ones indented inside a list item).
  const blocks = [...readme.matchAll(/^```ts\n([\s\S]*?)^```/gm)].map((m) => m[1]).filter((b) => b !== src);
  t.true(blocks.length >= 2, 'the device API and the driver blocks');
  const dir = fs.mkdtempSync(path.join(ROOT, '.readme-check-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const files = blocks.map((b, i) => {
    // Imports stay at the top; the rest runs inside an async function (the blocks use await).
    const lines = b.split('\n');
    const imports = lines.filter((l) => l.startsWith('import '));
    const body = lines.filter((l) => !l.startsWith('import '));
    const f = path.join(dir, `block${i}.ts`);
    fs.writeFileSync(f, `${imports.join('\n')}\nexport async function block(): Promise<void> {\n${body.join('\n')}\n}\n`);
    return f;
  });
  fs.writeFileSync(path.join(dir, 'tsconfig.json'), JSON.stringify({ extends: '../tsconfig.json', compilerOptions: { noEmit: true }, include: [], files }));
  const r = spawnSync(process.execPath, [path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', path.join(dir, 'tsconfig.json')], { encoding: 'utf8', timeout: 120_000 });
  t.is(r.status, 0, r.stdout + r.stderr);
});
