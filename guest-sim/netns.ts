// Throw-away network namespaces for the CLI's demo and checks: create one
// with a 'vt' name, run `ip` and commands inside it, and delete it on exit,
// on a signal, or on failure. Never touches the root namespace's interfaces.

import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';

export class Netns {
  private deleted = false;
  private readonly onExit = (): void => this.delete();

  private constructor(readonly name: string) {
    process.once('exit', this.onExit);
  }

  /** Creates `vt<tag><pid>` (or the given name) with loopback up. */
  static create(tag: string, name = `vt${tag}${process.pid.toString(36)}`): Netns {
    if (!/^vt[A-Za-z0-9]+$/.test(name) || name.length > 15) throw new Error(`internal: bad namespace name ${name}`);
    run('ip', ['netns', 'add', name]);
    const ns = new Netns(name);
    try {
      ns.ip('link', 'set', 'lo', 'up');
    } catch (e) {
      ns.delete();
      throw e;
    }
    return ns;
  }

  static exists(name: string): boolean {
    return fs.existsSync(`/run/netns/${name}`);
  }

  ip(...args: string[]): string {
    return run('ip', ['-n', this.name, ...args]);
  }

  /** Runs a command in the namespace; returns its exit status and output (never throws on a non-zero exit). */
  exec(cmd: string, args: string[], timeoutMs = 60_000): { status: number; stdout: string; stderr: string } {
    const r = spawnSync('ip', ['netns', 'exec', this.name, cmd, ...args], { encoding: 'utf8', timeout: timeoutMs });
    return { status: r.status ?? -1, stdout: r.stdout ?? '', stderr: (r.stderr ?? '') + (r.error ? String(r.error) : '') };
  }

  delete(): void {
    if (this.deleted) return;
    this.deleted = true;
    process.removeListener('exit', this.onExit);
    if (fs.existsSync(`/run/netns/${this.name}`)) {
      try {
        run('ip', ['netns', 'del', this.name]);
      } catch {
        // Already gone (another cleanup path won the race).
      }
    }
  }
}

function run(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** Whether a program is on PATH. */
export function haveProgram(name: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' }).status === 0;
}
