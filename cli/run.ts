// `vhost-tap run`: a simulated guest (guest-sim) behind a TAP until SIGINT or
// SIGTERM. Parses the flags, prints the ready line and the statistics, and
// tears down cleanly; the work is in GuestSim.

import { CTRL, type DeviceStats, featureNames, has, TUN } from '../backend';
import { DiscardEvent, GuestSim, OFFLOAD_NAMES, parseOffloads, pinWorkerNurseries, type TunnelOptions } from '../guest-sim/guest';
import { parseIPv4, parseIPv6 } from '../guest-sim/packets';
import { Netns, requireRoot } from '../host/netns';
import { cidr, int, intIn, parse, UsageError } from './args';
import { listenMetrics, metricsAddress, metricsUrl } from './metrics';

export const RUN_HELP = `Usage: vhost-tap run --tap NAME [options]

Runs a simulated virtio-net guest behind TAP NAME (created; in namespace NS with
--netns) until SIGINT or SIGTERM, then removes the TAP and prints statistics.
The guest answers ARP, ping, IPv6 neighbour discovery, ping -6 and UDP echo (port 7),
and serves TCP (IPv4 and IPv6):
  port 7    echo
  port 9    discard: when the peer closes, prints one line
            'discard: PEER bytes N sha256 HEX' (everything received)
  port 19   source: sends --source-bytes bytes (byte i = i mod 251), then closes

Options:
  --tap NAME          TAP device name (at most 15 bytes)             (required)
  --netns NS          existing network namespace to create the TAP in
  --queues N          queue pairs (default 1)
  --mac MAC           guest MAC address (default: random, locally administered)
  --ip ADDR/PREFIX    guest IPv4 address, e.g. 10.0.0.2/24
  --ip6 ADDR/PREFIX   guest IPv6 address, e.g. fd00::2/64
  --mtu N             MTU of the guest and the TAP (default 1500)
  --offloads LIST     offloads the guest negotiates: 'none', or a comma-separated
                      list of ${Object.keys(OFFLOAD_NAMES).join(', ')}
                      (csum/tso4/tso6/uso: guest → kernel; guest-*: kernel → guest).
                      Default: every one the device offers. tso4, tso6 and uso need
                      csum; guest-tso*/guest-uso* need guest-csum.
  --source-bytes N    bytes the TCP source (port 19) sends per connection (default 1073741824)
  --vxlan VNI,ADDR/PREFIX[,ADDR6/PREFIX]
                      also be a VXLAN endpoint (UDP 4789) over --ip: the same services,
                      ping and ARP/ND on these inner addresses (inner MTU = --mtu - 50).
                      With udp-tunnel / guest-udp-tunnel (taken by default when the
                      kernel has them) TCP crosses the TAP as tunnel super-frames
  --geneve VNI,ADDR/PREFIX[,ADDR6/PREFIX]
                      the same over GENEVE (UDP 6081)
  --rx-coalesce P,U   the guest asks the device for RX interrupt coalescing
                      (NOTF_COAL): one interrupt per P packets or U microseconds
                      after the first, whichever comes first (as Linux's
                      'ethtool -C eth0 rx-frames P rx-usecs U'); 0 in either: off
  --tx-coalesce P,U   the same for TX interrupts
  --packed            the guest asks for packed virtqueues (VIRTIO_F_RING_PACKED)
                      instead of split ones
  --in-order          the guest asks for VIRTIO_F_IN_ORDER (one used element per batch)
  --sqpoll            io_uring through a kernel thread that polls its submission ring:
                      no system call per batch under load, but that thread takes a
                      core per queue pair while busy (slower on a machine without a
                      spare core; see README)
  --pcap FILE         write every frame the device moves, both directions, super-frames
                      whole, to FILE as pcapng (Wireshark, tcpdump -r); each frame's
                      virtio_net_hdr is in its packet comment
  --metrics ADDR      serve the device and guest counters as Prometheus text at
                      http://ADDR/metrics while it runs: HOST:PORT (e.g. 127.0.0.1:9100),
                      [IPV6]:PORT, or unix:/PATH
  --json              print the final statistics as JSON
  -h, --help          this help`;

/**
 * The ready line's word on GSO over UDP tunnels (features 65..68): what the kernel's TAP can do
 * and what the driver took; `vhostUser`: the protocol's u64 features cannot carry them.
 */
export function udpTunnelNote(s: DeviceStats['udpTunnelGso'], vhostUser = false): string {
  if (!s.kernel) return 'udp tunnel gso unsupported by this kernel (no TUN_F_UDP_TUNNEL_GSO, Linux < 6.17)';
  if (vhostUser) return 'udp tunnel gso not offered (vhost-user features are 64 bits)';
  if (!s.guest && !s.host) return 'udp tunnel gso offered, not negotiated';
  return `udp tunnel gso ${[s.host ? 'tx' : '', s.guest ? 'rx' : ''].filter(Boolean).join('+')}`;
}

/** The negotiated offloads in --offloads spelling. */
export function offloadList(features: bigint): string {
  const on = Object.entries(OFFLOAD_NAMES).filter(([, b]) => (features & b) !== 0n).map(([n]) => n);
  return on.length ? on.join(',') : 'none';
}

/** `--rx-coalesce` / `--tx-coalesce` P,U: two unsigned 32-bit integers, as the control command carries them. */
function coalescing(flag: string, v: string): { maxPackets: number; maxUsecs: number } {
  const m = /^(\d{1,10}),(\d{1,10})$/.exec(v);
  const [p, u] = m ? [Number(m[1]), Number(m[2])] : [NaN, NaN];
  if (!(p <= 0xffffffff && u <= 0xffffffff)) {
    throw new UsageError(`--${flag}: expected PACKETS,USECS like 64,50 (each 0 to 4294967295), got '${v}'`);
  }
  return { maxPackets: p, maxUsecs: u };
}

/** Resolves with the signal's name, or with 'error' once `failed` resolves (whichever comes first). */
function waitForSignal(failed?: Promise<unknown>): Promise<string> {
  return new Promise((resolve) => {
    const on = (sig: string): void => {
      process.removeListener('SIGINT', on);
      process.removeListener('SIGTERM', on);
      resolve(sig);
    };
    process.on('SIGINT', on);
    process.on('SIGTERM', on);
    void failed?.then(() => on('error'));
  });
}

export function printStats(s: Awaited<ReturnType<GuestSim['stop']>>, json: boolean): void {
  if (json) {
    console.log(JSON.stringify(s));
    return;
  }
  const t = s.device.totals;
  console.log(`device: rx ${t.rxPackets} frames ${t.rxBytes} B, tx ${t.txPackets} frames ${t.txBytes} B, drops ${t.drops}, io ${s.device.io}`);
  const u = s.device.udpTunnelGsoFrames;
  if (u.rx.frames + u.tx.frames > 0) console.log(`  udp tunnel super-frames: rx ${u.rx.frames} frames ${u.rx.bytes} B, tx ${u.tx.frames} frames ${u.tx.bytes} B`);
  for (const q of s.device.queues) {
    const drops = Object.entries(q.drops).filter(([, v]) => v > 0).map(([k, v]) => `${k}=${v}`).join(' ');
    console.log(`  queue ${q.index} ${q.kind}: ${q.packets} frames ${q.bytes} B, ${q.interrupts} interrupts, ${q.kicks} kicks${drops ? `, drops ${drops}` : ''}${q.broken ? ', BROKEN' : ''}`);
  }
  s.pairs.forEach((p, i) => console.log(`  guest pair ${i}: rx ${p.rxFrames} frames, tx ${p.txFrames} frames, wakeups ${p.wakeups}`));
}

/** --vxlan / --geneve VNI,ADDR/PREFIX[,ADDR6/PREFIX]: guest-sim's tunnel endpoint. */
function tunnelOption(vxlan: string | undefined, geneve: string | undefined, ip4: string | undefined): TunnelOptions | undefined {
  if (vxlan !== undefined && geneve !== undefined) throw new UsageError('--vxlan and --geneve: one tunnel at a time');
  const v = vxlan ?? geneve;
  if (v === undefined) return undefined;
  const kind = vxlan !== undefined ? 'vxlan' : 'geneve';
  if (ip4 === undefined) throw new UsageError(`--${kind} needs --ip: the tunnel runs over the guest's IPv4 address`);
  const [vniText, ...addrs] = v.split(',');
  const vni = Number(vniText);
  if (!/^\d+$/.test(vniText) || vni > 0xffffff) throw new UsageError(`--${kind}: VNI '${vniText}' must be an integer from 0 to 16777215`);
  const t: TunnelOptions = { kind, vni };
  for (const a of addrs) {
    if (a.includes(':')) t.ip6 = cidr(kind, a, 6, parseIPv6);
    else t.ip4 = cidr(kind, a, 4, parseIPv4);
  }
  if (!t.ip4 && !t.ip6) throw new UsageError(`--${kind}: give the inner address, e.g. --${kind} 42,10.10.0.2/24`);
  return t;
}

export async function cmdRun(argv: string[]): Promise<number> {
  const o = parse('run', argv, {
    tap: { type: 'string' },
    netns: { type: 'string' },
    queues: { type: 'string' },
    mac: { type: 'string' },
    ip: { type: 'string' },
    ip6: { type: 'string' },
    mtu: { type: 'string' },
    offloads: { type: 'string' },
    'source-bytes': { type: 'string' },
    vxlan: { type: 'string' },
    geneve: { type: 'string' },
    pcap: { type: 'string' },
    sqpoll: { type: 'boolean' },
    packed: { type: 'boolean' },
    'in-order': { type: 'boolean' },
    'rx-coalesce': { type: 'string' },
    'tx-coalesce': { type: 'string' },
    json: { type: 'boolean' },
    metrics: { type: 'string' },
  });
  if (o.help) {
    console.log(RUN_HELP);
    return 0;
  }
  if (typeof o.tap !== 'string') throw new UsageError("--tap NAME is required (see 'vhost-tap run --help')");
  if (Buffer.byteLength(o.tap) > TUN.MAX_NAME || !/^[A-Za-z0-9_.-]+$/.test(o.tap)) {
    throw new UsageError(`--tap: '${o.tap}' must be 1 to ${TUN.MAX_NAME} bytes of letters, digits, '_', '.' and '-'`);
  }
  const queues = intIn('queues', o.queues, 1, 1, TUN.MAX_QUEUES, " (the TAP's queue limit)");
  const mtu = intIn('mtu', o.mtu, 1500, 68, 65535);
  const ip4 = cidr('ip', o.ip, 4, parseIPv4);
  const ip6 = cidr('ip6', o.ip6, 6, parseIPv6);
  if (o.mac !== undefined && !/^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/.test(String(o.mac))) {
    throw new UsageError(`--mac: '${String(o.mac)}' is not a MAC address like 52:54:00:12:34:56`);
  }
  let features: bigint | undefined;
  if (o.offloads !== undefined) {
    try {
      features = parseOffloads(String(o.offloads));
    } catch (e) {
      throw new UsageError(`--offloads: ${(e as Error).message}`);
    }
  }
  const sourceBytes = int('source-bytes', o['source-bytes'], 1 << 30);
  const tunnel = tunnelOption(o.vxlan as string | undefined, o.geneve as string | undefined, ip4);
  const coalesce = (['rx', 'tx'] as const).flatMap((q) => {
    const v = o[`${q}-coalesce`];
    return v === undefined ? [] : [{ q, ...coalescing(`${q}-coalesce`, String(v)) }];
  });
  if (o.netns !== undefined && (!/^[A-Za-z0-9_.-]+$/.test(String(o.netns)) || !Netns.exists(String(o.netns)))) {
    throw new UsageError(`--netns: network namespace '${String(o.netns)}' does not exist (create it with: ip netns add ${String(o.netns)})`);
  }
  // Without --netns no capability is needed up front: a user's own persistent TAP (ip tuntap
  // add NAME ... user U) opens without one, and opening any other says what it needs.
  const metricsAt = metricsAddress(o.metrics);
  if (o.netns) requireRoot('run creates a TAP in another network namespace', ['CAP_NET_ADMIN', 'CAP_SYS_ADMIN']);
  // Listening first: a bad address fails before a TAP exists. Until the guest runs a scrape gets a 500.
  let running: GuestSim | undefined;
  const metrics = metricsAt === undefined ? undefined : await listenMetrics(metricsAt, () => {
    if (!running) throw new Error('the guest is starting');
    const st = running.stats();
    return { device: st.device, guest: { featureNames: featureNames(running.features), pairs: st.pairs } };
  });
  let guest: GuestSim;
  try {
    // A long-running guest's memory should be flat: see pinWorkerNurseries.
    pinWorkerNurseries();
    guest = await GuestSim.start({
      tap: o.tap,
      netns: o.netns as string | undefined,
      queuePairs: queues,
      mac: o.mac as string | undefined,
      ip4,
      ip6,
      mtu,
      features,
      sourceBytes,
      tunnel,
      pcap: o.pcap as string | undefined,
      sqpoll: o.sqpoll === true,
      packed: o.packed === true,
      inOrder: o['in-order'] === true,
    });
  } catch (e) {
    await metrics?.close();
    throw e;
  }
  running = guest;
  guest.on('needs-reset', (e: Error) => console.error(`vhost-tap: ${e.message}`));
  try {
    for (const c of coalesce) {
      const d = new DataView(new ArrayBuffer(8));
      d.setUint32(0, c.maxPackets, true);
      d.setUint32(4, c.maxUsecs, true);
      const ack = await guest.control(CTRL.CLASS_NOTF_COAL, c.q === 'rx' ? CTRL.NOTF_COAL_RX_SET : CTRL.NOTF_COAL_TX_SET, new Uint8Array(d.buffer));
      if (ack !== CTRL.OK) throw new Error(`the device refused ${c.q.toUpperCase()} interrupt coalescing (NOTF_COAL not negotiated?)`);
    }
  } catch (e) {
    await metrics?.close();
    await guest.stop();
    throw e;
  }
  // A queue-pair Worker that dies is reported as 'error'. Without a listener EventEmitter throws
  // it as an uncaught exception (a stack trace, no statistics); stop cleanly and exit 1 instead.
  let workerError: Error | undefined;
  const failed = new Promise<void>((resolve) =>
    guest.on('error', (e: Error) => {
      workerError ??= e;
      resolve();
    }),
  );
  guest.on('discard', (d: DiscardEvent) => console.log(`discard: ${d.peer} bytes ${d.bytes} sha256 ${d.sha256}`));
  const where = o.netns ? ` in netns ${o.netns}` : '';
  const coalesced = coalesce.map((c) => `, ${c.q} coalescing ${c.maxPackets} packets / ${c.maxUsecs} us`).join('');
  const scrape = metrics ? `, metrics on ${metricsUrl(metrics.address)}` : '';
  console.log(`ready: tap ${guest.device.tapName}${where}${o.pcap ? `, capturing to ${o.pcap}` : ''}, guest mac ${guest.mac}${o.ip ? `, ip ${o.ip}` : ''}${o.ip6 ? `, ip6 ${o.ip6}` : ''}, ${guest.device.activeQueuePairs} queue pair(s), offloads ${offloadList(guest.features)}, ${has(guest.features, 'RING_PACKED') ? 'packed' : 'split'} rings${has(guest.features, 'IN_ORDER') ? ', in-order' : ''}, ${udpTunnelNote(guest.device.stats().udpTunnelGso)}${tunnel ? `, ${tunnel.kind} vni ${tunnel.vni} inner ${[tunnel.ip4, tunnel.ip6].filter(Boolean).join(' ')}` : ''}${coalesced}${scrape}`);
  const sig = await waitForSignal(failed);
  await metrics?.close();
  const s = await guest.stop();
  if (workerError) console.error(`vhost-tap: a guest queue-pair worker failed: ${workerError.message}`);
  else if (!o.json) console.log(`stopped on ${sig}`);
  printStats(s, !!o.json);
  return workerError ? 1 : 0;
}

