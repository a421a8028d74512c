#!/usr/bin/env node
// The `vhost-tap` command: dispatches to run, demo, gso-check and bench, and
// turns what they throw into one line on stderr and the exit status.

import * as fs from 'node:fs';
import * as path from 'node:path';

import { UsageError } from './args';

const HELP = `vhost-tap — a virtio-net device backend on a Linux TAP, with a simulated guest

Usage: vhost-tap <command> [options]

Commands:
  run         run a simulated guest behind a TAP until SIGINT/SIGTERM
  demo        create a namespace, run a guest in it, ping and UDP-echo it, clean up
  gso-check   check checksum/segmentation offloads both ways against this kernel
  bench       measure throughput against a C syscall loop and a Node loop (bench/)
  vhost-user  serve a VMM's virtio-net (QEMU, cloud-hypervisor) over vhost-user on a TAP
  guest-image write a small Linux guest (kernel + initramfs) to boot under QEMU against vhost-user

Run 'vhost-tap <command> --help' for a command's options, 'vhost-tap --version' for the version.
Exit status: 0 done, 1 failed (or a check failed), 2 bad usage, 130 interrupted (demo).`;

/** The package's version, from the package.json two levels above dist/cli/. */
function version(): string {
  return (JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'package.json'), 'utf8')) as { version: string }).version;
}

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (cmd === undefined || cmd === '-h' || cmd === '--help' || cmd === 'help') {
    if (cmd !== undefined) {
      console.log(HELP);
      return 0;
    }
    console.error(HELP);
    return 2;
  }
  if (cmd === '--version' || cmd === '-V' || cmd === 'version') {
    console.log(version());
    return 0;
  }
  // Each command is loaded when it runs: `vhost-tap run` does not load the benchmark.
  switch (cmd) {
    case 'run':
      return (await import('./run')).cmdRun(rest);
    case 'demo':
      return (await import('./demo')).cmdDemo(rest);
    case 'gso-check':
      return (await import('./gso-check')).cmdGsoCheck(rest);
    case 'bench':
      return (await import('./bench')).cmdBench(rest);
    case 'vhost-user':
      return (await import('./vhost-user')).cmdVhostUser(rest);
    case 'guest-image':
      return (await import('./guest-image')).cmdGuestImage(rest);
    default:
      throw new UsageError(`unknown command '${cmd}' (see 'vhost-tap --help')`);
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    // One line, whatever failed: usage errors exit 2, everything else (no root, the kernel said no, ...) 1.
    const msg = e instanceof Error ? e.message : String(e);
    console.error(`vhost-tap: ${msg.split('\n')[0]}`);
    process.exitCode = e instanceof UsageError ? 2 : 1;
  },
);
