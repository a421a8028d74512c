// Runs a scenario from test/scenarios/ in a child Node process with a time
// bound, for tests whose failure on broken code is a hang, a spinning thread,
// heap exhaustion or a process exit: the child is killed (by its pid) when the
// bound passes, so a hang becomes a clean test failure and never a stuck suite.
// scenarioMain() is the scenario's side: exit 0 when it returns, 2 with the
// stack on stderr when it throws.

import { spawn } from 'node:child_process';
import * as path from 'node:path';

export interface ChildResult {
  /** Exit code, null when killed. */
  code: number | null;
  signal: NodeJS.Signals | null;
  /** The bound passed and the child was killed. */
  timedOut: boolean;
  stdout: string;
  stderr: string;
  /** The last line of stdout parsed as JSON, when it is JSON. */
  result: Record<string, unknown> | undefined;
}

export const SCENARIOS = path.join(__dirname, '..', 'scenarios');

/**
 * Runs `node [nodeArgs] test/scenarios/<file>.js ...args`. Resolves (never rejects) when the
 * child exits or, after `timeoutMs`, when it was killed with SIGKILL.
 */
export function runScenario(file: string, args: string[], timeoutMs: number, nodeArgs: string[] = []): Promise<ChildResult> {
  const child = spawn(process.execPath, [...nodeArgs, path.join(SCENARIOS, `${file}.js`), ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    child.kill('SIGKILL');
  }, timeoutMs);
  return new Promise((resolve) => {
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      const last = stdout.trim().split('\n').pop() ?? '';
      let result: Record<string, unknown> | undefined;
      try {
        result = JSON.parse(last) as Record<string, unknown>;
      } catch {
        result = undefined;
      }
      resolve({ code, signal, timedOut, stdout, stderr, result });
    });
  });
}

/** One line for an assertion message: how the child ended and the tail of what it printed. */
export function describeChild(r: ChildResult): string {
  const how = r.timedOut ? 'killed after the time bound (hung)' : r.signal ? `killed by ${r.signal}` : `exit ${r.code}`;
  const tail = (s: string): string => s.trim().split('\n').slice(-12).join('\n');
  return `${how}\n--- stdout:\n${tail(r.stdout)}\n--- stderr:\n${tail(r.stderr)}`;
}

/** A scenario file's entry point: exit 0 when `main` resolves, 2 (stack on stderr) when it rejects. */
export function scenarioMain(main: () => Promise<void>): void {
  main().then(
    () => process.exit(0),
    (e) => {
      process.stderr.write(`${(e as Error).stack ?? e}\n`);
      process.exit(2);
    },
  );
}
