// Argument parsing shared by the `vhost-tap` commands: strict flags, whole
// numbers, and the UsageError every command throws for bad input (exit 2).

import { parseArgs, ParseArgsConfig } from 'node:util';

/** Bad command-line input: the message is one line that names the flag; exit status 2. */
export class UsageError extends Error {
  override name = 'UsageError';
}

export type Values = Record<string, string | boolean | undefined>;

/** Parses `argv` for command `cmd` with strict flags (plus -h/--help); a bad flag is a UsageError. */
export function parse(cmd: string, argv: string[], options: ParseArgsConfig['options']): Values {
  try {
    const { values } = parseArgs({ args: argv, options: { ...options, help: { type: 'boolean', short: 'h' } }, strict: true, allowPositionals: false });
    return values as Values;
  } catch (e) {
    throw new UsageError(`${(e as Error).message.split('\n')[0]} (see 'vhost-tap ${cmd} --help')`);
  }
}

/** A whole-number flag, or `def` when absent. */
export function int(name: string, v: Values[string], def: number): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (typeof v !== 'string' || !/^\d+$/.test(v) || !Number.isSafeInteger(n)) throw new UsageError(`--${name} must be a whole number, got '${String(v)}'`);
  return n;
}
