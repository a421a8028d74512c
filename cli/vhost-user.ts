// `vhost-tap vhost-user`: a vhost-user-net back end for a VMM (QEMU,
// cloud-hypervisor, ...) on a TAP, until SIGINT or SIGTERM. Parses the flags,
// prints the ready line, session events on stderr and the statistics at the
// end; the work is in VhostUserServer (backend/vhost-user/server.ts).

import * as fs from 'node:fs';
import * as path from 'node:path';

import { bits, TUN, VhostUserServer, VhostUserServerStats } from '../backend';
import { listenMetrics, metricsAddress, metricsUrl } from './metrics';
import { OFFLOAD_MASK, OFFLOAD_NAMES, parseOffloads } from '../guest-sim/guest';
import { Netns, requireRoot } from '../host/netns';
import { intIn, parse, UsageError } from './args';
import { offloadList, udpTunnelNote } from './run';

export const VHOST_USER_HELP = `Usage: vhost-tap vhost-user --socket PATH --tap NAME [options]

Serves a VMM's virtio-net device over vhost-user: the VMM keeps the guest and its
control queue, vhost-tap moves the frames between the guest's rings and TAP NAME
(created; in namespace NS with --netns) with one worker per queue pair. Listens
on PATH (QEMU: -chardev socket,path=PATH); with --client connects to a VMM that
listens there (QEMU: server=on), retrying until it does. One front end at a
time; when it goes away (closed, killed, crashed) its session ends, the TAP stays
and the next one is served. SIGINT/SIGTERM: exit, removing the socket file and
the TAP, and print statistics.

Options:
  --socket PATH       Unix socket path                                  (required)
  --tap NAME          TAP device name (at most 15 bytes)                (required)
  --netns NS          existing network namespace to create the TAP in
  --queues N          queue pairs (default 1); more than 1 offers multiqueue (MQ)
  --mtu N             MTU of the TAP (default 1500); give the guest's (QEMU: host_mtu=N)
  --offloads LIST     offloads offered: 'none', or a comma-separated list of
                      ${Object.keys(OFFLOAD_NAMES).filter((n) => !n.endsWith('udp-tunnel')).join(', ')}.
                      Default: every one this kernel's TAP takes.
  --client            connect to PATH instead of listening on it
  --socket-mode MODE  permission bits of the socket file, octal (e.g. 0660; default
                      0777 minus the umask): who may connect
  --socket-group G    group of the socket file (a name or a number)
  --socket-owner U    owner of the socket file (a name or a number)
  --busy-poll US      each worker polls this many microseconds before sleeping (default 0)
  --io auto|readv     io_uring batching where the kernel allows it (auto, default) or
                      one readv/writev per frame
  --metrics ADDR      serve the counters and session state as Prometheus text at
                      http://ADDR/metrics while it runs: HOST:PORT (e.g. 127.0.0.1:9100),
                      [IPV6]:PORT, or unix:/PATH
  --trace             print every vhost-user message received (stderr)
  --json              print the final statistics as JSON
  -h, --help          this help

QEMU, for --socket /tmp/vt.sock --queues 2 (guest RAM must be shareable; -numa
ties it to the memory backend; vectors=0 because QEMU 7.2 under TCG dies with
SIGSEGV when the guest starts a vhost-user NIC that has MSI-X vectors). The
guest: 'vhost-tap guest-image vt-guest' writes one there.
  qemu-system-x86_64 -M q35 -cpu max -smp 2 -m 512M -nographic \\
    -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem \\
    -chardev socket,id=c0,path=/tmp/vt.sock -netdev vhost-user,id=n0,chardev=c0,queues=2 \\
    -device virtio-net-pci,netdev=n0,mq=on,vectors=0 \\
    -kernel vt-guest/vmlinuz -initrd vt-guest/initrd.cpio.gz -append "console=ttyS0 quiet vt.ip4=10.9.0.2/24"
With --client, QEMU listens: add ,server=on,wait=off to its -chardev.
QEMU running as its own user (here in group kvm): --socket-mode 0660 --socket-group kvm

A front end must send SET_OWNER within 10 s of connecting (QEMU and DPDK send it
first), one that reads none of its replies for 5 s is dropped; either way the next
front end is served.`;

/** A user or group name (or a number) as an id, from /etc/passwd or /etc/group. */
function idOf(flag: string, v: string, file: '/etc/passwd' | '/etc/group'): number {
  if (/^\d+$/.test(v)) {
    const n = Number(v);
    if (n >= 0xffffffff) throw new UsageError(`--${flag}: ${v} is not an id`);
    return n;
  }
  let text = '';
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    // No such file: only numbers work then.
  }
  for (const line of text.split('\n')) {
    const f = line.split(':');
    if (f[0] === v && /^\d+$/.test(f[2] ?? '')) return Number(f[2]);
  }
  throw new UsageError(`--${flag}: no ${file === '/etc/group' ? 'group' : 'user'} '${v}' in ${file} (give a name from it or a number)`);
}

/** Offload bits --offloads can name or leave out. */
const ALL_OFFLOADS = bits('CSUM', 'GUEST_CSUM', 'HOST_TSO4', 'HOST_TSO6', 'HOST_ECN', 'HOST_UFO', 'HOST_USO', 'GUEST_TSO4', 'GUEST_TSO6', 'GUEST_ECN', 'GUEST_UFO', 'GUEST_USO4', 'GUEST_USO6');

function printStats(s: VhostUserServerStats, json: boolean): void {
  if (json) {
    console.log(JSON.stringify(s));
    return;
  }
  const t = s.device.totals;
  console.log(`sessions ${s.sessions}, requests refused ${s.refused}`);
  console.log(`device: rx ${t.rxPackets} frames ${t.rxBytes} B, tx ${t.txPackets} frames ${t.txBytes} B, drops ${t.drops}, io ${s.device.io}`);
  for (const q of s.device.queues) {
    const drops = Object.entries(q.drops).filter(([, v]) => v > 0).map(([k, v]) => `${k}=${v}`).join(' ');
    console.log(`  queue ${q.index} ${q.kind}: ${q.packets} frames ${q.bytes} B, ${q.interrupts} interrupts, ${q.kicks} kicks${drops ? `, drops ${drops}` : ''}${q.broken ? ', BROKEN' : ''}`);
  }
}

export async function cmdVhostUser(argv: string[]): Promise<number> {
  const o = parse('vhost-user', argv, {
    socket: { type: 'string' },
    tap: { type: 'string' },
    netns: { type: 'string' },
    queues: { type: 'string' },
    mtu: { type: 'string' },
    offloads: { type: 'string' },
    client: { type: 'boolean' },
    'socket-mode': { type: 'string' },
    'socket-group': { type: 'string' },
    'socket-owner': { type: 'string' },
    'busy-poll': { type: 'string' },
    io: { type: 'string' },
    trace: { type: 'boolean' },
    json: { type: 'boolean' },
    metrics: { type: 'string' },
  });
  if (o.help) {
    console.log(VHOST_USER_HELP);
    return 0;
  }
  if (typeof o.socket !== 'string' || o.socket === '') throw new UsageError("--socket PATH is required (see 'vhost-tap vhost-user --help')");
  if (Buffer.byteLength(o.socket) > 107) throw new UsageError(`--socket: '${o.socket}' is longer than the 107 bytes a Unix socket path may have`);
  const sockDir = path.dirname(path.resolve(o.socket));
  if (!o.client && !fs.existsSync(sockDir)) throw new UsageError(`--socket: directory '${sockDir}' does not exist; create it first`);
  if (typeof o.tap !== 'string') throw new UsageError("--tap NAME is required (see 'vhost-tap vhost-user --help')");
  if (Buffer.byteLength(o.tap) > TUN.MAX_NAME || !/^[A-Za-z0-9_.-]+$/.test(o.tap)) {
    throw new UsageError(`--tap: '${o.tap}' must be 1 to ${TUN.MAX_NAME} bytes of letters, digits, '_', '.' and '-'`);
  }
  const queues = intIn('queues', o.queues, 1, 1, TUN.MAX_QUEUES, " (the TAP's queue limit)");
  let socketMode: number | undefined;
  if (o['socket-mode'] !== undefined) {
    const m = String(o['socket-mode']);
    if (!/^0?[0-7]{3}$/.test(m)) throw new UsageError(`--socket-mode must be octal permission bits such as 0660, got '${m}'`);
    socketMode = parseInt(m, 8);
  }
  const socketGid = o['socket-group'] === undefined ? undefined : idOf('socket-group', String(o['socket-group']), '/etc/group');
  const socketUid = o['socket-owner'] === undefined ? undefined : idOf('socket-owner', String(o['socket-owner']), '/etc/passwd');
  if (o.client && (socketMode !== undefined || socketGid !== undefined || socketUid !== undefined)) {
    throw new UsageError('--socket-mode, --socket-group and --socket-owner apply to a socket vhost-tap listens on, not to --client');
  }
  const mtu = o.mtu === undefined ? undefined : intIn('mtu', o.mtu, 1500, 68, 65535);
  const busyPollUs = intIn('busy-poll', o['busy-poll'], 0, 0, 1_000_000, ' microseconds');
  if (o.io !== undefined && o.io !== 'auto' && o.io !== 'readv') throw new UsageError(`--io must be 'auto' or 'readv', got '${String(o.io)}'`);
  let features: bigint | undefined;
  if (o.offloads !== undefined) {
    try {
      const asked = parseOffloads(String(o.offloads)) & OFFLOAD_MASK;
      // Features 65..67: vhost-user's GET/SET_FEATURES carry 64 bits.
      if ((asked & (OFFLOAD_NAMES['udp-tunnel'] | OFFLOAD_NAMES['guest-udp-tunnel'])) !== 0n) throw new RangeError("udp-tunnel and guest-udp-tunnel cannot be offered over vhost-user (its features are 64 bits)");
      features = ~ALL_OFFLOADS | asked;
    } catch (e) {
      throw new UsageError(`--offloads: ${(e as Error).message}`);
    }
    // A 64-bit mask: the complement above has every high bit set.
    features &= (1n << 64n) - 1n;
  }
  if (o.netns !== undefined && (!/^[A-Za-z0-9_.-]+$/.test(String(o.netns)) || !Netns.exists(String(o.netns)))) {
    throw new UsageError(`--netns: network namespace '${String(o.netns)}' does not exist (create it with: ip netns add ${String(o.netns)})`);
  }
  const metricsAt = metricsAddress(o.metrics);
  // Without --netns no capability is needed up front: a user's own persistent TAP (ip tuntap
  // add NAME ... user U) opens without one, and opening any other says what it needs.
  if (o.netns) requireRoot('vhost-user creates a TAP in another network namespace', ['CAP_NET_ADMIN', 'CAP_SYS_ADMIN']);
  const log = (line: string): void => console.error(line);
  // Listening first: a bad address fails before a TAP exists. Until the server is up a scrape gets a 500.
  let server: VhostUserServer | undefined;
  const metrics = metricsAt === undefined ? undefined : await listenMetrics(metricsAt, () => {
    if (!server) throw new Error('the back end is starting');
    return server.metrics();
  });
  try {
    server = new VhostUserServer({
      socket: o.socket,
      client: !!o.client,
      socketMode,
      socketGid,
      socketUid,
      tap: o.tap,
      netns: o.netns as string | undefined,
      queuePairs: queues,
      mtu,
      features,
      busyPollUs,
      io: (o.io as 'auto' | 'readv' | undefined) ?? 'auto',
      log,
      trace: o.trace ? log : undefined,
    });
  } catch (e) {
    await metrics?.close();
    throw e;
  }
  let failure: Error | undefined;
  const failed = new Promise<void>((resolve) =>
    server.on('error', (e: Error) => {
      failure ??= e;
      resolve();
    }),
  );
  server.on('warning', (e: Error) => log(`vhost-tap: warning: ${e.message}`));
  let stopping = false;
  server.on('session-end', (reason: string) => {
    if (!stopping) log(`vhost-user: waiting for the next front end (${reason})`);
  });
  const where = o.netns ? ` in netns ${o.netns}` : '';
  const how = o.client ? `connecting to ${o.socket}` : `listening on ${o.socket}`;
  // The handlers go in before the ready line: whoever waits for it may signal at once.
  const sig = new Promise<string>((resolve) => {
    const on = (s: string): void => {
      process.removeListener('SIGINT', on);
      process.removeListener('SIGTERM', on);
      resolve(s);
    };
    process.on('SIGINT', on);
    process.on('SIGTERM', on);
    void failed.then(() => on('error'));
  });
  const scrape = metrics ? `, metrics on ${metricsUrl(metrics.address)}` : '';
  console.log(`ready: ${how}, tap ${server.backend.tapName}${where}, ${queues} queue pair(s), offloads ${offloadList(server.backend.features)}, ${udpTunnelNote(server.backend.stats().udpTunnelGso, true)}${scrape}`);
  await sig;
  stopping = true;
  await metrics?.close();
  await server.close();
  // After close: the last session's counters are in (its workers stopped).
  const final = server.stats();
  if (failure) console.error(`vhost-tap: ${failure.message}`);
  else if (!o.json) console.log(`stopped on ${await sig}`);
  printStats(final, !!o.json);
  return failure ? 1 : 0;
}
