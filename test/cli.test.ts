// The `vhost-tap` command's habits: --version; exit status 2 for usage errors
// and 1 for runtime failures; messages in the CLI's own flag names; one line
// saying what is needed when run without root; `run --pcap`, whose file
// tcpdump opens and whose comments carry each frame's virtio_net_hdr; and
// `run --rx-coalesce`, whose guest asks the device for interrupt coalescing.

import test from 'ava';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { parsePcapng } from '../host/pcap';
import { Netns, requireRoot, withNetns } from '../host/netns';
import { CLI, runCli, startRun } from './helpers/cli';

const VERSION = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'package.json'), 'utf8')).version as string;

test('--version prints the package version', (t) => {
  for (const arg of ['--version', '-V']) {
    const r = runCli([arg]);
    t.is(r.status, 0, r.stderr);
    t.is(r.stdout.trim(), VERSION);
  }
});

test('usage errors: exit 2, one line, in the CLI flag names', (t) => {
  const cases: [string[], RegExp][] = [
    [[], /Usage: vhost-tap <command>/],
    [['run', '--tap', 'vtx', '--queues', '999'], /^vhost-tap: --queues must be from 1 to 256 \(the TAP's queue limit\), got 999$/],
    [['run', '--tap', 'vtx', '--ip', '10.0.0.2'], /^vhost-tap: --ip needs ADDR\/PREFIX, e\.g\. 10\.0\.0\.2\/24; got '10\.0\.0\.2'$/],
    [['run', '--tap', 'vtx', '--ip6', 'fd00::2'], /^vhost-tap: --ip6 needs ADDR\/PREFIX, e\.g\. fd00::2\/64/],
    [['run', '--tap', 'vtx', '--ip', '10.0.0.300/24'], /--ip: '10\.0\.0\.300' is not an IPv4 address/],
    [['run', '--tap', 'vtx', '--ip6', 'fd00::2/129'], /--ip6: prefix length 129 is over 128/],
    [['run', '--tap', 'vtx', '--mtu', '10'], /--mtu must be from 68 to 65535, got 10/],
    [['run', '--tap', 'vtx', '--offloads', 'tso4'], /--offloads: offload 'tso4' needs 'csum'/],
    [['run', '--tap', 'vtx', '--offloads', 'csum,tso4,udp-tunnel'], /--offloads: offload 'udp-tunnel' needs 'tso6'/],
    [['run', '--tap', 'vtx', '--vxlan', '42,10.9.0.2/24'], /^vhost-tap: --vxlan needs --ip: the tunnel runs over the guest's IPv4 address$/],
    [['run', '--tap', 'vtx', '--ip', '10.0.0.2/24', '--vxlan', '16777216,10.9.0.2/24'], /--vxlan: VNI '16777216' must be an integer from 0 to 16777215/],
    [['run', '--tap', 'vtx', '--ip', '10.0.0.2/24', '--geneve', '7'], /--geneve: give the inner address, e\.g\. --geneve 42,10\.10\.0\.2\/24/],
    [['run', '--tap', 'vtx', '--ip', '10.0.0.2/24', '--vxlan', '7,10.9.0.2/24', '--geneve', '7,10.9.0.2/24'], /--vxlan and --geneve: one tunnel at a time/],
    [['run', '--tap', 'vtx', '--rx-coalesce', '64'], /^vhost-tap: --rx-coalesce: expected PACKETS,USECS like 64,50 \(each 0 to 4294967295\), got '64'$/],
    [['run', '--tap', 'vtx', '--tx-coalesce', '1,4294967296'], /--tx-coalesce: expected PACKETS,USECS/],
    [['demo', '--queues', '0'], /--queues must be from 1 to 256/],
    [['demo', '--extra'], /^vhost-tap: unknown option '--extra' \(see 'vhost-tap demo --help'\)$/],
    [['vhost-user', '--socket', '/tmp/vtx.sock', '--tap', 'vtx', '--busy-poll', '-5'], /^vhost-tap: --busy-poll needs a value; a value that starts with '-' is written --busy-poll=VALUE/],
    [['run', '--tap'], /^vhost-tap: --tap needs a value \(see 'vhost-tap run --help'\)$/],
    [['gso-check', '--json=1'], /^vhost-tap: --json takes no value/],
    [['vhost-user', '--socket', '/nonexistent-vt-dir/vt.sock', '--tap', 'vtx'], /^vhost-tap: --socket: directory '\/nonexistent-vt-dir' does not exist; create it first$/],
    [['gso-check', '--case', 'TSO5'], /--case: unknown case 'TSO5'/],
    [['bench', '--sizes', '10'], /--sizes: 10 is outside 60\.\.1514/],
    [['bench', '--frob'], /^vhost-tap: unknown option '--frob' \(see 'vhost-tap bench --help'\)$/],
    [['bench', '--cases', 'guest', '--guest-backends', 'firecracker'], /--guest-backends: unknown 'firecracker'/],
    [['vhost-user', '--tap', 'vtx'], /^vhost-tap: --socket PATH is required/],
    [['vhost-user', '--socket', '/tmp/vtx.sock'], /^vhost-tap: --tap NAME is required/],
    [['vhost-user', '--socket', '/tmp/vtx.sock', '--tap', 'vtx', '--queues', '0'], /--queues must be from 1 to 256/],
    [['vhost-user', '--socket', '/tmp/vtx.sock', '--tap', 'vtx', '--offloads', 'guest-tso4'], /--offloads: offload 'guest-tso4' needs 'guest-csum'/],
    [['vhost-user', '--socket', '/tmp/vtx.sock', '--tap', 'vtx', '--offloads', 'csum,tso4,tso6,uso,udp-tunnel'], /--offloads: udp-tunnel and guest-udp-tunnel cannot be offered over vhost-user/],
    [['vhost-user', '--socket', '/tmp/vtx.sock', '--tap', 'vtx', '--io', 'epoll'], /--io must be 'auto' or 'readv'/],
    [['vhost-user', '--socket', '/tmp/vtx.sock', '--tap', 'vtx', '--mtu', '65536'], /--mtu must be from 68 to 65535, got 65536/],
    [['vhost-user', '--socket', `/tmp/${'x'.repeat(120)}.sock`, '--tap', 'vtx'], /--socket: .* longer than the 107 bytes/],
    [['vhost-user', '--socket', '/tmp/vtx.sock', '--tap', 'vtx', '--netns', 'vt-no-such-ns'], /--netns: network namespace 'vt-no-such-ns' does not exist/],
    [['vhost-user', '--socket', '/tmp/vtx.sock', '--tap', 'vtx', '--socket-mode', '0999'], /--socket-mode must be octal permission bits such as 0660, got '0999'/],
    [['vhost-user', '--socket', '/tmp/vtx.sock', '--tap', 'vtx', '--socket-group', 'vt-no-such-group'], /--socket-group: no group 'vt-no-such-group' in \/etc\/group/],
    [['vhost-user', '--socket', '/tmp/vtx.sock', '--tap', 'vtx', '--client', '--socket-mode', '0600'], /apply to a socket vhost-tap listens on, not to --client/],
  ];
  for (const [args, re] of cases) {
    const r = runCli(args);
    t.is(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
    if (args.length === 0) {
      t.regex(r.stderr, re);
      continue;
    }
    t.regex(r.stderr.trim(), re);
    t.is(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
    t.notRegex(r.stderr, /queuePairs|ip4|sourceBytes/, 'no library option names');
  }
});

/**
 * Runs the CLI with no capabilities: as user 65534 when it can read the built CLI (as the
 * unprivileged user someone would be), else as uid 0 with every capability dropped.
 */
function runUnprivileged(args: string[]): { status: number | null; stderr: string; stdout: string } {
  const asNobody = ['--reuid=65534', '--regid=65534', '--clear-groups'];
  const canRead = spawnSync('setpriv', [...asNobody, process.execPath, '-e', `require('fs').accessSync(${JSON.stringify(CLI)}, require('fs').constants.R_OK)`]).status === 0;
  const how = canRead ? asNobody : ['--inh-caps=-all', '--bounding-set=-all'];
  const r = spawnSync('setpriv', [...how, process.execPath, CLI, ...args], { encoding: 'utf8', cwd: os.tmpdir(), timeout: 60_000 });
  return { status: r.status, stderr: r.stderr, stdout: r.stdout };
}

test('without root every command says in one line what it needs, and exits 1', (t) => {
  requireRoot('this test runs the CLI as an unprivileged user with setpriv');
  const cases: [string[], RegExp][] = [
    // A TAP that root did not make for this user: TUNSETIFF says no, and the line says both ways out.
    [['run', '--tap', 'vtx'], /^vhost-tap: creating TAP 'vtx': needs CAP_NET_ADMIN; run as root, or have root make a TAP of yours once: ip tuntap add NAME mode tap user USER multi_queue vnet_hdr/],
    [['demo'], /^vhost-tap: demo creates a network namespace and a TAP, which needs CAP_NET_ADMIN and CAP_SYS_ADMIN: run it as root/],
    [['gso-check'], /^vhost-tap: gso-check creates network namespaces, a TAP and a veth, which needs CAP_NET_ADMIN and CAP_SYS_ADMIN: run it as root/],
    [['bench', '--cases', 'tx'], /^vhost-tap: bench creates a network namespace and TAPs, which needs CAP_NET_ADMIN and CAP_SYS_ADMIN: run it as root/],
    [['vhost-user', '--socket', '/tmp/vtx.sock', '--tap', 'vtx'], /^vhost-tap: creating TAP 'vtx': needs CAP_NET_ADMIN; run as root, or have root make a TAP of yours once/],
  ];
  for (const [args, re] of cases) {
    const r = runUnprivileged(args);
    t.is(r.status, 1, `${args.join(' ')}: ${r.stderr}`);
    t.regex(r.stderr.trim(), re);
    t.is(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
  }
  // Help and usage errors need no privileges.
  t.is(runUnprivileged(['run', '--help']).status, 0);
  t.is(runUnprivileged(['vhost-user', '--help']).status, 0);
  t.is(runUnprivileged(['demo', '--queues', 'x']).status, 2);
});

test('a runtime failure exits 1 with one line: run --pcap into a directory that does not exist', (t) => {
  requireRoot();
  const r = runCli(['run', '--tap', 'vtnever0', '--pcap', '/nonexistent-vt-dir/x.pcapng']);
  t.is(r.status, 1, r.stderr);
  t.regex(r.stderr, /^vhost-tap: ENOENT.*nonexistent-vt-dir/);
  t.is(r.stderr.trim().split('\n').length, 1);
});

/**
 * `run` in `ns` with the guest at 10.98.NET.2 and `args`: pings it three times, sends 1 MiB to
 * its discard port (with GUEST_TSO4 the kernel hands the guest TCP super-frames), waits for
 * the discard line and stops it with SIGINT.
 */
async function pingAndDiscard(ns: Netns, net: number, args: string[]): Promise<{ ready: string; code: number | null; stdout: string }> {
  const tap = ns.ifname();
  const cli = await startRun(['--tap', tap, '--netns', ns.name, '--ip', `10.98.${net}.2/24`, ...args, '--json']);
  ns.defer(() => {
    if (cli.child.exitCode === null) cli.child.kill('SIGKILL');
  });
  ns.ip('addr', 'add', `10.98.${net}.1/24`, 'dev', tap);
  ns.exec('ping', ['-c', '3', '-i', '0.2', '-W', '2', `10.98.${net}.2`]);
  ns.exec(process.execPath, ['-e', `const s = require('net').connect(9, '10.98.${net}.2', () => s.end(Buffer.alloc(1 << 20, 7))); s.on('close', () => process.exit(0)); s.on('error', (e) => { console.error(e.message); process.exit(1); });`]);
  await cli.printed(/discard: \S+ bytes 1048576 /);
  const { code, stdout } = await cli.stop('SIGINT');
  return { ready: cli.ready, code, stdout };
}

test('run --rx-coalesce: the device takes the guest\'s coalescing, and the guest still answers ping and TCP', async (t) => {
  await withNetns(async (ns) => {
    const { ready, code, stdout } = await pingAndDiscard(ns, 1, ['--rx-coalesce', '32,200', '--tx-coalesce', '16,100']);
    t.regex(ready, /, rx coalescing 32 packets \/ 200 us, tx coalescing 16 packets \/ 100 us$/);
    // guest-sim takes no UDP tunnel offload; this kernel (6.18) has it, an older one says so.
    t.regex(ready, /, udp tunnel gso (offered, not negotiated|unsupported by this kernel \(no TUN_F_UDP_TUNNEL_GSO, Linux < 6\.17\)),/);
    t.is(code, 0, stdout);
  });
});

test('run --pcap: tcpdump reads a ping and a TCP transfer; every frame both ways, super-frames whole, virtio_net_hdr in the comments', async (t) => {
  await withNetns(async (ns) => {
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'vt-pcap-')), 'run.pcapng');
    t.teardown(() => fs.rmSync(path.dirname(file), { recursive: true, force: true }));
    const { ready, code, stdout } = await pingAndDiscard(ns, 0, ['--pcap', file]);
    t.regex(ready, /capturing to /);
    t.is(code, 0, stdout);
    const stats = JSON.parse(stdout.split('\n').filter((l) => l.startsWith('{')).pop()!) as { pairs: { rxFrames: number; txFrames: number }[] };

    // tcpdump opens it and shows the ping and the TCP transfer with their headers.
    const dump = execFileSync('tcpdump', ['-r', file, '-nn', '-v'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    t.regex(dump, /10\.98\.0\.1 > 10\.98\.0\.2: ICMP echo request/);
    t.regex(dump, /10\.98\.0\.2 > 10\.98\.0\.1: ICMP echo reply/);
    t.regex(dump, /10\.98\.0\.1\.\d+ > 10\.98\.0\.2\.9: Flags \[S\]/);
    t.regex(dump, /10\.98\.0\.2\.9 > 10\.98\.0\.1\.\d+: Flags \[S\.\]/);
    t.regex(dump, /10\.98\.0\.1\.\d+ > 10\.98\.0\.2\.9: Flags \[F?P?\.\], (cksum \S+ \([^)]*\), )?seq \d+:\d+/);

    // Every frame the guest moved, each with its header in the comment and its direction in epb_flags.
    const cap = parsePcapng(fs.readFileSync(file));
    t.deepEqual(cap.linkTypes, [1]);
    const rx = cap.packets.filter((p) => p.flags === 1);
    const tx = cap.packets.filter((p) => p.flags === 2);
    t.is(rx.length + tx.length, cap.packets.length, 'every frame has a direction');
    t.is(rx.length, stats.pairs.reduce((n, p) => n + p.rxFrames, 0), 'every received frame captured');
    t.is(tx.length, stats.pairs.reduce((n, p) => n + p.txFrames, 0), 'every sent frame captured');
    for (const p of cap.packets) {
      t.is(p.data.length, p.origLen, 'whole frames');
      t.regex(p.comments[0] ?? '', p.flags === 1 ? /^rx kernel->guest virtio_net_hdr flags=0x[0-9a-f]+\S* gso_type=\S+ hdr_len=\d+ gso_size=\d+ csum_start=\d+ csum_offset=\d+ num_buffers=\d+$/ : /^tx guest->kernel virtio_net_hdr flags=/);
    }
    const supers = rx.filter((p) => p.data.length > 1514);
    t.true(supers.length > 0, 'TCP super-frames from the kernel, whole');
    for (const p of supers) t.regex(p.comments[0], /flags=0x1\(NEEDS_CSUM\) gso_type=TCPV4 hdr_len=\d+ gso_size=14\d\d /);
  });
});

test('guest-image DIR writes the test guest\'s kernel and initramfs and prints a QEMU line with vectors=0', (t) => {
  const dir = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'vt-gi-')), 'guest');
  t.teardown(() => fs.rmSync(path.dirname(dir), { recursive: true, force: true }));
  const r = runCli(['guest-image', dir]);
  t.is(r.status, 0, r.stderr);
  t.true(fs.statSync(path.join(dir, 'vmlinuz')).size > 1 << 20);
  t.true(fs.statSync(path.join(dir, 'initrd.cpio.gz')).size > 1 << 20);
  t.regex(r.stdout, /-device virtio-net-pci,netdev=n0,mq=on,vectors=0/);
  t.regex(r.stdout, new RegExp(`-kernel \\S*vmlinuz -initrd \\S*initrd\\.cpio\\.gz`));
  const bad = runCli(['guest-image', '/nonexistent-vt-dir/guest']);
  t.is(bad.status, 2, bad.stderr);
  t.is(bad.stderr.trim(), "vhost-tap: directory '/nonexistent-vt-dir' does not exist; create it first");
});
