// Runs the vhost-user codec fuzz target (fuzz/targets/vhost_user.cc) for a
// bounded time, built with g++ and AddressSanitizer/UBSan in standalone mode
// (a seeded generator of mutated messages cut into reads of random size with
// fds attached at random points). A finding aborts it with its reason. For a
// longer, coverage-guided run: clang++ -fsanitize=fuzzer,address,undefined
// fuzz/targets/vhost_user.cc native/vhost_user.cc -o f && ./f -max_total_time=600

import test from 'ava';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const ROOT = path.join(__dirname, '..', '..');
/** Seconds of fuzzing per test run; VT_FUZZ_SECONDS runs longer. */
const SECONDS = Number(process.env.VT_FUZZ_SECONDS ?? 5);

test('the vhost-user reader and decoder survive mutated message streams under ASan/UBSan', (t) => {
  t.timeout(180_000);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vt-fuzz-'));
  try {
    const bin = path.join(dir, 'vhost_user_fuzz');
    const cc = spawnSync(
      'g++',
      ['-std=c++17', '-O1', '-g', '-DVT_FUZZ_STANDALONE', '-fsanitize=address,undefined', '-fno-sanitize-recover=all', '-Wall', '-Wextra', '-Werror',
        path.join(ROOT, 'fuzz/targets/vhost_user.cc'), path.join(ROOT, 'native/vhost_user.cc'), '-o', bin],
      { encoding: 'utf8', timeout: 150_000 },
    );
    t.is(cc.status, 0, `g++ failed: ${cc.stderr}`);
    const seed = String(Date.now() % 1_000_000);
    const run = spawnSync(bin, [String(SECONDS), seed], { encoding: 'utf8', timeout: (SECONDS + 60) * 1000, env: { ...process.env, ASAN_OPTIONS: 'detect_leaks=1' } });
    t.is(run.status, 0, `fuzzer failed (seed ${seed}; rerun: ${bin} ${SECONDS} ${seed}): ${run.stdout}${run.stderr}`);
    const m = run.stdout.match(/(\d+) messages accepted \((\d+) memory tables, (\d+) dirty-log marks\), (\d+) refused, (\d+) fatal/);
    t.truthy(m, run.stdout);
    // Every path was reached: accepted messages, refused ones, untrustworthy headers, and the
    // dirty log a SET_LOG_BASE sized marked for SET_VRING_ADDR's log address or a LOG_ALL u64.
    t.true(Number(m![1]) > 0 && Number(m![4]) > 0 && Number(m![5]) > 0, run.stdout);
    t.true(Number(m![3]) > 0, run.stdout);
    t.log(run.stdout.trim());
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
