// Unit tests of the Linux test guest's builder and QEMU command line
// (host/linux-guest), without booting anything: module load order from
// modules.dep, the cpio archive the kernel unpacks, the transfer pattern.

import test from 'ava';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { CpioWriter, moduleLoadOrder } from '../host/linux-guest/initramfs';
import { pattern, PATTERN_BYTES, patternSha256 } from '../host/linux-guest/pattern';
import { qemuArgs } from '../host/linux-guest/qemu';
import { createHash } from 'node:crypto';

const DEP = `kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko.xz kernel/net/core/failover.ko.xz kernel/drivers/virtio/virtio.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz
kernel/drivers/net/net_failover.ko.xz: kernel/net/core/failover.ko.xz
kernel/net/core/failover.ko.xz:
kernel/drivers/virtio/virtio.ko.xz:
kernel/drivers/virtio/virtio_ring.ko.xz:
kernel/drivers/virtio/virtio_pci.ko.xz: kernel/drivers/virtio/virtio_pci_legacy_dev.ko.xz kernel/drivers/virtio/virtio_pci_modern_dev.ko.xz kernel/drivers/virtio/virtio.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz
kernel/drivers/virtio/virtio_pci_legacy_dev.ko.xz:
kernel/drivers/virtio/virtio_pci_modern_dev.ko.xz:
`;

const names = (order: string[]): string[] => order.map((m) => path.basename(m).replace(/\.ko.*$/, ''));

test('module load order puts every dependency before its user and each module once', (t) => {
  const order = names(moduleLoadOrder(DEP, '', ['virtio_pci', 'virtio_net']));
  t.is(new Set(order).size, order.length);
  t.deepEqual([...order].sort(), ['failover', 'net_failover', 'virtio', 'virtio_net', 'virtio_pci', 'virtio_pci_legacy_dev', 'virtio_pci_modern_dev', 'virtio_ring']);
  const before = (a: string, b: string): boolean => order.indexOf(a) < order.indexOf(b);
  for (const [dep, user] of [['virtio_ring', 'virtio_pci'], ['virtio_pci_modern_dev', 'virtio_pci'], ['failover', 'net_failover'], ['net_failover', 'virtio_net'], ['virtio', 'virtio_net']]) {
    t.true(before(dep, user), `${dep} before ${user} in ${order.join(' ')}`);
  }
});

test('module load order skips built-in modules and refuses unknown ones and cycles', (t) => {
  const order = names(moduleLoadOrder('kernel/a.ko: kernel/b.ko\nkernel/b.ko:\n', 'kernel/drivers/virtio/virtio_pci.ko\n', ['virtio_pci', 'a']));
  t.deepEqual(order, ['b', 'a']);
  t.throws(() => moduleLoadOrder('kernel/a.ko:\n', '', ['virtio_net']), { message: /virtio_net is neither/ });
  t.throws(() => moduleLoadOrder('kernel/a.ko: kernel/b.ko\nkernel/b.ko: kernel/a.ko\n', '', ['a']), { message: /cycle/ });
});

test('the cpio writer makes a newc archive that cpio lists and extracts byte for byte', (t) => {
  const w = new CpioWriter();
  w.dir('/bin');
  w.file('/bin/hello', Buffer.from('#!/bin/sh\necho hi\n'), 0o755);
  w.file('/deep/er/odd', Buffer.from([1, 2, 3]), 0o644);
  w.symlink('/bin/sh', 'busybox');
  w.device('/dev/console', 0o600, 5, 1);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vt-cpio-'));
  try {
    fs.writeFileSync(path.join(dir, 'a.cpio'), w.finish());
    const list = execFileSync('cpio', ['-it', '-F', path.join(dir, 'a.cpio')], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).split('\n').filter(Boolean);
    t.deepEqual(list.sort(), ['bin', 'bin/hello', 'bin/sh', 'deep', 'deep/er', 'deep/er/odd', 'dev', 'dev/console'].sort());
    const out = path.join(dir, 'x');
    fs.mkdirSync(out);
    execFileSync('cpio', ['-idm', '--no-absolute-filenames', '-F', path.join(dir, 'a.cpio')], { cwd: out, stdio: 'ignore' });
    t.is(fs.readFileSync(path.join(out, 'bin/hello'), 'utf8'), '#!/bin/sh\necho hi\n');
    t.is(fs.statSync(path.join(out, 'bin/hello')).mode & 0o777, 0o755);
    t.deepEqual([...fs.readFileSync(path.join(out, 'deep/er/odd'))], [1, 2, 3]);
    t.is(fs.readlinkSync(path.join(out, 'bin/sh')), 'busybox');
    const con = fs.statSync(path.join(out, 'dev/console'));
    t.true(con.isCharacterDevice());
    t.is(con.rdev, (5 << 8) | 1);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('the pattern is deterministic and its hash covers partial repeats', (t) => {
  t.is(pattern().length, PATTERN_BYTES);
  const n = 2 * PATTERN_BYTES + 12345;
  const h = createHash('sha256');
  h.update(pattern());
  h.update(pattern());
  h.update(pattern().subarray(0, 12345));
  t.is(patternSha256(n), h.digest('hex'));
  t.not(patternSha256(n), patternSha256(n - 1));
});

test('QEMU command line: shareable memfd RAM, INTx by default, vhost-user chardev and queues', (t) => {
  const image = { kernel: '/boot/vmlinuz-x', initrd: '/tmp/i', release: 'x', ethtool: true, modules: [] };
  const a = qemuArgs({ netdev: { kind: 'vhost-user', socket: '/tmp/s.sock', queues: 2 }, mac: '52:54:00:00:00:01', ip4: '10.0.0.2/24', memMiB: 256 }, image);
  const after = (flag: string): string[] => a.flatMap((v, i) => (v === flag ? [a[i + 1]] : []));
  t.deepEqual(after('-object'), ['memory-backend-memfd,id=mem,size=256M,share=on']);
  t.deepEqual(after('-m'), ['256M']);
  t.deepEqual(after('-chardev'), ['socket,id=c0,path=/tmp/s.sock']);
  t.deepEqual(after('-netdev'), ['vhost-user,id=n0,chardev=c0,queues=2']);
  t.deepEqual(after('-device'), ['virtio-net-pci,netdev=n0,mac=52:54:00:00:00:01,mq=on,vectors=0']);
  t.regex(after('-append')[0], /vt\.ip4=10\.0\.0\.2\/24/);
  const b = qemuArgs({ netdev: { kind: 'tap', ifname: 'vtx', vhost: true }, msix: true }, image);
  t.true(b.includes('tap,id=n0,ifname=vtx,script=no,downscript=no,vhost=on'));
  t.false(b.some((v) => v.includes('vectors=')));
});
