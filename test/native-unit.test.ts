// The C++ unit tests of the plain ring code (test/native/ring_test.cc), built
// here with g++ and AddressSanitizer/UBSan against the same native/*.cc files
// the addon links, without Node; each C++ case is one ava test.
import test from 'ava';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

const ROOT = path.join(__dirname, '..', '..');
const OUT = path.join(ROOT, 'build', 'ring_test');
const SOURCES = ['test/native/ring_test.cc', 'native/memory.cc', 'native/virtqueue.cc', 'native/packed_queue.cc', 'native/ctrl_queue.cc', 'native/rx_stash.cc'];

fs.mkdirSync(path.dirname(OUT), { recursive: true });
execFileSync(
  'g++',
  ['-std=c++17', '-O1', '-g', '-Wall', '-Wextra', '-Werror', '-Wno-unused-parameter', '-fsanitize=address,undefined', '-fno-sanitize-recover=all', ...SOURCES, '-o', OUT],
  { cwd: ROOT, stdio: ['ignore', 'inherit', 'inherit'] },
);
const cases = execFileSync(OUT, ['--list'], { encoding: 'utf8' }).split('\n').filter((s) => s !== '');

test('the C++ ring tests exist', (t) => {
  t.true(cases.length >= 10, `found ${cases.length} cases`);
});

for (const name of cases) {
  test(`C++ ${name}`, (t) => {
    const r = spawnSync(OUT, [name], { encoding: 'utf8', env: { ...process.env, ASAN_OPTIONS: 'detect_leaks=1' } });
    t.is(r.status, 0, `${r.stderr}${r.stdout}`);
  });
}
