// Runs the built `vhost-tap` CLI as a child process for integration tests:
// start `run`, wait for its ready line, stop it with a signal and collect
// what it printed. Every child is ended by pid when the test finishes.

import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import * as path from 'node:path';

export const CLI = path.join(__dirname, '..', '..', 'cli', 'main.js');

export interface RunningCli {
  child: ChildProcess;
  ready: string;
  output(): string;
  /** What it printed on stderr so far. */
  errors(): string;
  /** Resolves once its stdout matches `re`; rejects with what it printed after `ms`. */
  printed(re: RegExp, ms?: number): Promise<void>;
  /** Sends SIGINT and resolves with the exit code and everything printed. */
  stop(signal?: NodeJS.Signals): Promise<{ code: number | null; stdout: string; stderr: string }>;
}

/** Starts `vhost-tap run ...args` and waits for its 'ready:' line (or its exit). */
export function startRun(args: string[], timeoutMs = 30_000): Promise<RunningCli> {
  return startCommand('run', args, timeoutMs);
}

/** Starts `vhost-tap CMD ...args` (with `env` added to this process's) and waits for its 'ready:' line (or its exit). */
export function startCommand(cmd: string, args: string[], timeoutMs = 30_000, env?: Record<string, string>): Promise<RunningCli> {
  const child = spawn(process.execPath, [CLI, cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'], ...(env ? { env: { ...process.env, ...env } } : {}) });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d) => (stdout += d));
  child.stderr!.on('data', (d) => (stderr += d));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`vhost-tap ${cmd} did not get ready in ${timeoutMs} ms; stdout: ${stdout} stderr: ${stderr}`));
    }, timeoutMs);
    const onData = (): void => {
      const line = stdout.split('\n').find((l) => l.startsWith('ready:'));
      if (!line) return;
      clearTimeout(timer);
      child.stdout!.off('data', onData);
      resolve({
        child,
        ready: line,
        output: () => stdout,
        errors: () => stderr,
        printed: (re: RegExp, ms = 10_000) =>
          new Promise<void>((ok, fail) => {
            const end = Date.now() + ms;
            const poll = (): void => {
              if (re.test(stdout)) ok();
              else if (Date.now() > end) fail(new Error(`vhost-tap ${cmd} did not print ${re} in ${ms} ms: ${stdout}`));
              else setTimeout(poll, 50);
            };
            poll();
          }),
        stop: async (signal: NodeJS.Signals = 'SIGINT') => {
          if (child.exitCode === null) child.kill(signal);
          const code = await exited;
          return { code, stdout, stderr };
        },
      });
    };
    child.stdout!.on('data', onData);
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`vhost-tap ${cmd} exited with ${code} before it was ready; stdout: ${stdout} stderr: ${stderr}`));
    });
  });
}

/** Runs the CLI to completion. `pid` is the CLI's (it names the namespaces it makes after it). */
export function runCli(args: string[], timeoutMs = 120_000): { status: number | null; stdout: string; stderr: string; pid: number } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: timeoutMs });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr, pid: r.pid };
}
