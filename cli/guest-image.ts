// `vhost-tap guest-image DIR`: puts the project's small Linux guest (the one
// the tests boot under QEMU: host/linux-guest) into DIR as vmlinuz and
// initrd.cpio.gz, for a VMM user who wants a guest to try vhost-user with, and
// prints a QEMU command line that boots it against `vhost-tap vhost-user`.

import * as fs from 'node:fs';
import * as path from 'node:path';

import { buildGuestImage, GuestImageError } from '../host/linux-guest/initramfs';
import { parse, UsageError } from './args';

export const GUEST_IMAGE_HELP = `Usage: vhost-tap guest-image [DIR]

Writes the test guest into DIR (default ./vt-guest): vmlinuz (this machine's
packaged Debian kernel, /boot/vmlinuz-*) and initrd.cpio.gz (busybox, the
virtio_pci and virtio_net modules, ethtool), built from installed packages
without network access (needs linux-image-amd64 and busybox-static). Then
prints a QEMU command line that boots it on a vhost-user socket.

The guest's init brings eth0 up with the addresses on its kernel command line
(vt.ip4=A/N, vt.ip6=A/N, vt.mtu=M), prints "VT-READY <mac>" on the serial
console and then runs one shell command per console line, written with an id
in front: "1 ping -c 3 10.9.0.1" answers "VT-BEGIN 1", the output, "VT-END 1 0".

Options:
  -h, --help     this help`;

/** The `vhost-tap guest-image` command; returns the exit status. */
export function cmdGuestImage(argv: string[]): number {
  const positionals = argv.filter((a) => !a.startsWith('-'));
  const o = parse('guest-image', argv.filter((a) => a.startsWith('-')), {});
  if (o.help) {
    console.log(GUEST_IMAGE_HELP);
    return 0;
  }
  if (positionals.length > 1) throw new UsageError(`guest-image takes one directory, got ${positionals.length} (see 'vhost-tap guest-image --help')`);
  const dir = path.resolve(positionals[0] ?? 'vt-guest');
  const parent = path.dirname(dir);
  if (!fs.existsSync(parent)) throw new UsageError(`directory '${parent}' does not exist; create it first`);
  let image;
  try {
    image = buildGuestImage();
  } catch (e) {
    if (e instanceof GuestImageError) throw new Error(`${e.message}`);
    throw e;
  }
  fs.mkdirSync(dir, { recursive: true });
  const kernel = path.join(dir, 'vmlinuz');
  const initrd = path.join(dir, 'initrd.cpio.gz');
  fs.copyFileSync(image.kernel, kernel);
  fs.copyFileSync(image.initrd, initrd);
  const rel = (p: string): string => path.relative(process.cwd(), p) || '.';
  console.log(`guest image: ${rel(kernel)} (Linux ${image.release}), ${rel(initrd)} (${image.modules.join(', ')}${image.ethtool ? ', ethtool' : ''})`);
  console.log(`boot it on the socket of 'vhost-tap vhost-user --socket /tmp/vt.sock --tap vt0 --queues 2':`);
  console.log(`qemu-system-x86_64 -M q35 -cpu max -smp 2 -m 512M -nographic \\
  -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem \\
  -chardev socket,id=c0,path=/tmp/vt.sock -netdev vhost-user,id=n0,chardev=c0,queues=2 \\
  -device virtio-net-pci,netdev=n0,mq=on,vectors=0 \\
  -kernel ${rel(kernel)} -initrd ${rel(initrd)} -append "console=ttyS0 quiet vt.ip4=10.9.0.2/24"`);
  return 0;
}
