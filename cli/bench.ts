// `vhost-tap bench`: the throughput benchmark (bench/run.ts), run in this
// process. Its flag errors become the CLI's usage errors.

import { BenchUsageError, main } from '../bench/run';
import { parseArgsError, UsageError } from './args';

export async function cmdBench(argv: string[]): Promise<number> {
  try {
    return await main(argv);
  } catch (e) {
    if (e instanceof BenchUsageError) throw e.parseError ? parseArgsError('bench', e.parseError) : new UsageError(e.message);
    throw e;
  }
}
