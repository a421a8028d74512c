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
    throw parseArgsError(cmd, e);
  }
}

/**
 * node:util parseArgs's error, said the way the CLI says everything else: one line, lower case,
 * in terms of the flag (its own text asks "Did you forget ...?" over three lines).
 */
export function parseArgsError(cmd: string, e: unknown): UsageError {
  const err = e as { code?: string; message?: string };
  const msg = String(err.message ?? e);
  const flag = /'(-[^' ]+)/.exec(msg)?.[1] ?? '';
  const arg = /'([^']*)'/.exec(msg)?.[1] ?? '';
  let what: string;
  if (err.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') what = `unknown option '${arg}'`;
  else if (err.code === 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL') what = `unexpected argument '${arg}'`;
  else if (/ambiguous/.test(msg)) what = `${flag} needs a value; a value that starts with '-' is written ${flag}=VALUE`;
  else if (/argument missing/.test(msg)) what = `${flag} needs a value`;
  else if (/does not take an argument/.test(msg)) what = `${flag} takes no value`;
  else what = msg.split('\n')[0];
  return new UsageError(`${what} (see 'vhost-tap ${cmd} --help')`);
}

/** A whole-number flag in [min, max], or `def` when absent. */
export function intIn(name: string, v: Values[string], def: number, min: number, max: number, why = ''): number {
  const n = int(name, v, def);
  if (n < min || n > max) throw new UsageError(`--${name} must be from ${min} to ${max}${why}, got ${n}`);
  return n;
}

/** An ADDR/PREFIX flag (--ip, --ip6): the address must parse and the prefix must be there and in range. */
export function cidr(name: string, v: Values[string], family: 4 | 6, parse: (a: string) => unknown): string | undefined {
  if (v === undefined) return undefined;
  const eg = family === 4 ? '10.0.0.2/24' : 'fd00::2/64';
  const m = typeof v === 'string' ? /^([^/]+)\/(\d{1,3})$/.exec(v) : null;
  if (!m) throw new UsageError(`--${name} needs ADDR/PREFIX, e.g. ${eg}; got '${String(v)}'`);
  try {
    parse(m[1]);
  } catch {
    throw new UsageError(`--${name}: '${m[1]}' is not an IPv${family} address (e.g. ${eg})`);
  }
  const max = family === 4 ? 32 : 128;
  if (Number(m[2]) > max) throw new UsageError(`--${name}: prefix length ${m[2]} is over ${max}`);
  return v as string;
}

/** A whole-number flag, or `def` when absent. */
export function int(name: string, v: Values[string], def: number): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (typeof v !== 'string' || !/^\d+$/.test(v) || !Number.isSafeInteger(n)) throw new UsageError(`--${name} must be a whole number, got '${String(v)}'`);
  return n;
}
