// `vhost-tap gso-check`: runs the kernel offload conformance suite
// (host/gso-check.ts) and prints its table or JSON.

import * as os from 'node:os';
import { parseArgs } from 'node:util';

import { CASES, formatTable, Outcome, runGsoCheck } from '../host/gso-check';
import { requireRoot } from '../host/netns';
import { parseArgsError, UsageError } from './args';

export const GSO_CHECK_HELP = `Usage: vhost-tap gso-check [--json] [--case NAME ...]

Checks every checksum and segmentation offload of the running kernel's TAP in
both directions, in two network namespaces it creates and always deletes:
guest→kernel, a super-frame from the guest must leave the kernel as correct
wire segments (count, sizes, sequence numbers, IPv4 IDs, flags, checksums,
payload), captured with tcpdump behind a veth with offloads off; kernel→guest,
a kernel TCP/UDP GSO send must reach the guest as one super-frame with the
right virtio_net_hdr. The VXLAN_/GENEVE_ cases (<inner>IN<outer>, _CSUM: outer
UDP checksum on) do the same for TCP inside a UDP tunnel with the 24-byte
header (Linux 6.17+). Cases the kernel cannot do are 'unsupported', with why.
Needs root, ip, ethtool, tcpdump and python3. Exit status 1 if any case fails.

Cases: ${CASES.join(', ')}

Options:
  --json         print the results as JSON
  --case NAME    run only this case (repeatable)
  -h, --help     this help`;

/** The `vhost-tap gso-check` command; returns the exit status (0 every case passed or is unsupported, 1 one failed). */
export async function cmdGsoCheck(argv: string[]): Promise<number> {
  let values: { json?: boolean; case?: string[]; help?: boolean };
  try {
    ({ values } = parseArgs({
      args: argv,
      options: { json: { type: 'boolean' }, case: { type: 'string', multiple: true }, help: { type: 'boolean', short: 'h' } },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    throw parseArgsError('gso-check', e);
  }
  if (values.help) {
    console.log(GSO_CHECK_HELP);
    return 0;
  }
  for (const c of values.case ?? []) {
    if (!(CASES as readonly string[]).includes(c.toUpperCase())) throw new UsageError(`--case: unknown case '${c}'; cases: ${CASES.join(', ')}`);
  }
  requireRoot('gso-check creates network namespaces, a TAP and a veth');
  const res = await runGsoCheck({
    json: values.json,
    cases: values.case,
    onResult: (r) => process.stderr.write(`gso-check: ${r.case} ${r.direction}: ${r.result}\n`),
  });
  if (values.json) console.log(JSON.stringify({ ok: res.ok, kernel: os.release(), results: res.results }, null, 2));
  else {
    console.log(formatTable(res.results));
    const n = (o: Outcome): number => res.results.filter((r) => r.result === o).length;
    console.log(`\n${n('pass')} pass, ${n('fail')} fail, ${n('unsupported')} unsupported (kernel ${os.release()})`);
  }
  return res.ok ? 0 : 1;
}
