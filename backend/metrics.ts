// Counters for monitoring tools while a back end runs: a snapshot of the
// device's per-queue counters (and a vhost-user session's negotiated state, or
// a simulated guest's) as Prometheus text exposition format 0.0.4, and a small
// node:http endpoint that answers GET /metrics on an address the operator names.
// Collecting reads the workers' counters the way stats() does (relaxed atomic
// loads, no lock a worker waits on), so a scrape never stalls the data path.

import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';

import { DeviceStats, QueueStats } from './datapath';
import { InvalidArgumentError } from './errors';

/** A connected vhost-user front end's negotiated state. */
export interface VhostUserSessionState {
  /** Negotiated virtio feature bits (SET_FEATURES), hex. */
  features: string;
  featureNames: string[];
  /** Negotiated vhost-user protocol feature bits (SET_PROTOCOL_FEATURES), hex. */
  protocolFeatures: string;
  protocolFeatureNames: string[];
  /** Per queue pair: whether its worker runs and the ring format its rings were set up with. */
  pairs: { pair: number; running: boolean; layout: 'split' | 'packed'; inOrder: boolean; eventIdx: boolean; size: number | undefined }[];
}

/** What a scrape shows: the device's counters and what the command running it adds. */
export interface MetricsSnapshot {
  device: DeviceStats;
  /** `vhost-user`: sessions served, refusals, and the connected front end (if one is). */
  vhostUser?: { sessions: number; connected: boolean; refused: number; session?: VhostUserSessionState };
  /** `run`: the simulated guest's negotiated features and what each pair's driver moved. */
  guest?: {
    featureNames: string[];
    pairs: { rxFrames: number; rxBytes: number; txFrames: number; txBytes: number; txRingFull: number; wakeups: number }[];
  };
}

/**
 * Every named drop counter of native/engine_stats.h, so a series exists (at 0) before the
 * first worker ran; a counter the engine reports that is not listed here is shown too.
 */
export const DROP_NAMES: Readonly<Record<'rx' | 'tx', readonly string[]>> = {
  rx: ['rx_truncated', 'rx_runt', 'tap_read_error', 'rx_filtered', 'rx_pair_detached'],
  tx: [
    'tap_write_einval',
    'tap_write_eio',
    'tap_write_efault',
    'tap_write_error',
    'tx_too_many_segments',
    'tx_hdr_csum_past_frame',
    'tx_hdr_len_past_frame',
    'tx_hdr_bad_gso_type',
    'tx_hdr_gso_size_zero',
    'tx_hdr_uso_without_csum',
    'tx_tap_full_reordered',
    'tx_hdr_tunnel_short_header',
    'tx_hdr_tunnel_not_negotiated',
    'tx_hdr_tunnel_bad_type',
    'tx_hdr_tunnel_offset_order',
    'tx_hdr_tunnel_offset_past_frame',
  ],
};

/** A label value as the text format writes it: backslash, double quote and newline escaped. */
function esc(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

/** Collects one metric family at a time: its HELP and TYPE lines, then its samples. */
class Exposition {
  private readonly lines: string[] = [];

  family(name: string, type: 'counter' | 'gauge', help: string, samples: [labels: Record<string, string | number>, value: number][]): void {
    if (samples.length === 0) return;
    this.lines.push(`# HELP ${name} ${help.replace(/\\/g, '\\\\').replace(/\n/g, '\\n')}`, `# TYPE ${name} ${type}`);
    for (const [labels, value] of samples) {
      const l = Object.entries(labels).map(([k, v]) => `${k}="${esc(String(v))}"`);
      this.lines.push(`${name}${l.length ? `{${l.join(',')}}` : ''} ${Number.isFinite(value) ? String(value) : 'NaN'}`);
    }
  }

  text(): string {
    return this.lines.join('\n') + '\n';
  }
}

/** A queue's labels: queue="rx0"/"tx0" (the pair's RX or TX virtqueue) and pair="0". */
function queueLabels(q: QueueStats): Record<string, string> {
  return { queue: `${q.kind}${q.index >> 1}`, pair: String(q.index >> 1) };
}

/** The snapshot in Prometheus text exposition format 0.0.4 (Content-Type text/plain; version=0.0.4). */
export function prometheusText(s: MetricsSnapshot): string {
  const x = new Exposition();
  const qs = s.device.queues.filter((q) => q.kind === 'rx' || q.kind === 'tx');
  const perQueue = (name: string, help: string, pick: (q: QueueStats) => number, only?: 'rx' | 'tx'): void =>
    x.family(`vhost_tap_queue_${name}`, 'counter', help, qs.filter((q) => !only || q.kind === only).map((q) => [queueLabels(q), pick(q)]));
  perQueue('frames_total', 'Frames the device moved: queue rxN = TAP to guest, txN = guest to TAP.', (q) => q.packets);
  perQueue('bytes_total', 'Frame bytes the device moved (virtio_net_hdr excluded).', (q) => q.bytes);
  perQueue('used_chains_total', 'Descriptor chains returned to the guest in the used ring.', (q) => q.usedChains);
  perQueue('interrupts_total', 'Notifications the device sent the guest (call eventfd writes).', (q) => q.interrupts);
  perQueue('kicks_total', 'Notifications from the guest the device took (kick eventfd reads).', (q) => q.kicks);
  perQueue('tap_full_total', 'TX writes the TAP refused for lack of room (sent again later, in order).', (q) => q.tapFull, 'tx');
  perQueue('reordered_total', 'TX frames that overtook an earlier one because the TAP sndbuf shrank mid-batch.', (q) => q.reordered, 'tx');
  perQueue('udp_tunnel_gso_frames_total', 'VXLAN/GENEVE super-frames moved (a UDP tunnel gso_type; part of frames_total).', (q) => q.udpTunnelGsoPackets);
  perQueue('udp_tunnel_gso_bytes_total', 'Bytes of those UDP tunnel super-frames (virtio_net_hdr excluded).', (q) => q.udpTunnelGsoBytes);
  perQueue('withheld_total', 'Chains kept back because the I/O mechanism failed unconfirmed (normally 0).', (q) => q.withheld);
  const drops: [Record<string, string>, number][] = [];
  for (const q of qs) {
    const names = [...DROP_NAMES[q.kind as 'rx' | 'tx']];
    for (const k of Object.keys(q.drops)) if (!names.includes(k)) names.push(k);
    for (const reason of names) drops.push([{ ...queueLabels(q), reason }, q.drops[reason] ?? 0]);
  }
  x.family('vhost_tap_queue_drops_total', 'counter', 'Frames the device gave up on, by queue and named reason.', drops);
  x.family('vhost_tap_queue_broken', 'gauge', '1 when the queue stopped because the guest broke a virtio rule.', qs.map((q) => [queueLabels(q), q.broken ? 1 : 0]));
  x.family('vhost_tap_io_info', 'gauge', "The workers' I/O method (io_uring, readv; none before a worker ran).", [[{ io: s.device.io }, 1]]);

  const vu = s.vhostUser;
  if (vu) {
    x.family('vhost_tap_vhost_user_sessions_total', 'counter', 'vhost-user sessions served (front ends that sent a request), the current one included.', [[{}, vu.sessions]]);
    x.family('vhost_tap_vhost_user_requests_refused_total', 'counter', 'vhost-user requests refused over all sessions.', [[{}, vu.refused]]);
    x.family('vhost_tap_vhost_user_connected', 'gauge', '1 while a front end is connected.', [[{}, vu.connected ? 1 : 0]]);
    const ss = vu.session;
    if (ss) {
      x.family('vhost_tap_feature_negotiated', 'gauge', 'Virtio feature bits the front end negotiated (1 each).', ss.featureNames.map((f) => [{ feature: f }, 1]));
      x.family('vhost_tap_vhost_user_protocol_feature_negotiated', 'gauge', 'vhost-user protocol feature bits negotiated (1 each).', ss.protocolFeatureNames.map((f) => [{ feature: f }, 1]));
      x.family('vhost_tap_queue_pair_running', 'gauge', '1 while the queue pair worker runs.', ss.pairs.map((p) => [{ pair: String(p.pair) }, p.running ? 1 : 0]));
      x.family(
        'vhost_tap_queue_pair_ring_info',
        'gauge',
        'The ring format of a queue pair: layout, IN_ORDER, EVENT_IDX, entries.',
        ss.pairs.map((p) => [{ pair: String(p.pair), layout: p.layout, in_order: String(p.inOrder), event_idx: String(p.eventIdx), size: p.size === undefined ? '' : String(p.size) }, 1]),
      );
    }
  }
  const g = s.guest;
  if (g) {
    x.family('vhost_tap_feature_negotiated', 'gauge', 'Virtio feature bits the guest negotiated (1 each).', g.featureNames.map((f) => [{ feature: f }, 1]));
    const perPair = (name: string, help: string, samples: [Record<string, string>, number][]): void => x.family(`vhost_tap_guest_${name}`, 'counter', help, samples);
    perPair('frames_total', "Frames the simulated guest's driver received (direction rx) and sent (tx).", g.pairs.flatMap((p, i) => [[{ pair: String(i), direction: 'rx' }, p.rxFrames], [{ pair: String(i), direction: 'tx' }, p.txFrames]]));
    perPair('bytes_total', "Bytes the simulated guest's driver received and sent.", g.pairs.flatMap((p, i) => [[{ pair: String(i), direction: 'rx' }, p.rxBytes], [{ pair: String(i), direction: 'tx' }, p.txBytes]]));
    perPair('tx_ring_full_total', "Times the guest's TX ring was full when it had a frame to send.", g.pairs.map((p, i) => [{ pair: String(i) }, p.txRingFull]));
    perPair('wakeups_total', "Times the guest's vCPU woke for an interrupt.", g.pairs.map((p, i) => [{ pair: String(i) }, p.wakeups]));
  }
  return x.text();
}

/** Where a metrics endpoint listens: a TCP host and port, or a Unix socket path. */
export type MetricsAddress = { host: string; port: number } | { path: string };

/** Parses 'HOST:PORT', '[IPV6]:PORT' or 'unix:/PATH'; a bad one is an InvalidArgumentError that shows the forms. */
export function parseMetricsAddress(s: string): MetricsAddress {
  const forms = "expected HOST:PORT (e.g. 127.0.0.1:9100), [IPV6]:PORT or unix:/PATH";
  if (typeof s !== 'string' || s === '') throw new InvalidArgumentError(`metrics address: ${forms}`);
  if (s.startsWith('unix:')) {
    const p = s.slice('unix:'.length);
    if (!p.startsWith('/')) throw new InvalidArgumentError(`metrics address '${s}': a Unix socket needs an absolute path (${forms})`);
    // sun_path holds 107 bytes and a NUL.
    if (Buffer.byteLength(p) > 107) throw new InvalidArgumentError(`metrics address '${s}': the path is longer than the 107 bytes a Unix socket address holds`);
    return { path: p };
  }
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(s);
  const port = m ? Number(m[3]) : NaN;
  // Port 0: the kernel picks a free one (the endpoint's `address` says which).
  if (!m || !(port >= 0 && port <= 65535)) throw new InvalidArgumentError(`metrics address '${s}': ${forms}, port 0 to 65535`);
  const host = m[1] ?? m[2];
  if (m[1] !== undefined && net.isIPv6(host) === false) throw new InvalidArgumentError(`metrics address '${s}': '${host}' is not an IPv6 address`);
  return { host, port };
}

/** A running metrics endpoint. */
export interface MetricsEndpoint {
  /** Where it listens, as parseMetricsAddress reads it ('127.0.0.1:9100', 'unix:/run/vt.sock'). */
  readonly address: string;
  /** Stops listening and drops open connections (a Unix socket file is removed). */
  close(): Promise<void>;
}

/** Idle keep-alive connections and slow requests are not held longer than this (a scrape takes milliseconds). */
const REQUEST_TIMEOUT_MS = 10_000;

/**
 * Serves `collect()` as Prometheus text at GET /metrics (and /) on `address` (parseMetricsAddress
 * forms). A Unix socket file left by a process that is gone is replaced; a live one is an error.
 * Rejects with an InvalidArgumentError naming the address when it cannot listen there.
 */
export async function serveMetrics(address: string, collect: () => MetricsSnapshot): Promise<MetricsEndpoint> {
  const where = parseMetricsAddress(address);
  // Binding in a missing directory says EACCES; say what is wrong instead.
  if ('path' in where && !fs.existsSync(path.dirname(where.path))) {
    throw new InvalidArgumentError(`metrics address '${address}': cannot listen there: directory '${path.dirname(where.path)}' does not exist; create it first`);
  }
  const server = http.createServer((req, res) => {
    const url = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { Allow: 'GET, HEAD', 'Content-Type': 'text/plain' }).end('only GET\n');
      return;
    }
    if (url !== '/metrics' && url !== '/') {
      res.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found: the counters are at /metrics\n');
      return;
    }
    let body: string;
    try {
      body = prometheusText(collect());
    } catch (e) {
      res.writeHead(500, { 'Content-Type': 'text/plain' }).end(`collecting the counters failed: ${(e as Error).message}\n`);
      return;
    }
    res.writeHead(200, { 'Content-Type': 'text/plain; version=0.0.4; charset=utf-8', 'Content-Length': Buffer.byteLength(body) });
    res.end(req.method === 'HEAD' ? undefined : body);
  });
  server.requestTimeout = REQUEST_TIMEOUT_MS;
  server.headersTimeout = REQUEST_TIMEOUT_MS;
  server.keepAliveTimeout = REQUEST_TIMEOUT_MS;
  const listen = (): Promise<void> =>
    new Promise((resolve, reject) => {
      const onError = (e: Error): void => reject(e);
      server.once('error', onError);
      const done = (): void => {
        server.removeListener('error', onError);
        resolve();
      };
      if ('path' in where) server.listen(where.path, done);
      else server.listen(where.port, where.host, done);
    });
  try {
    try {
      await listen();
    } catch (e) {
      if (!('path' in where) || (e as NodeJS.ErrnoException).code !== 'EADDRINUSE' || !(await staleSocket(where.path))) throw e;
      fs.unlinkSync(where.path);
      await listen();
    }
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    const why =
      err.code === 'EADDRINUSE'
        ? 'the address is in use (another process listens there)'
        : err.code === 'EACCES'
          ? 'permission denied'
          : err.code === 'EADDRNOTAVAIL'
            ? 'no local interface has that address'
            : err.code === 'ENOTFOUND'
              ? 'no such host'
              : err.message;
    throw new InvalidArgumentError(`metrics address '${address}': cannot listen there: ${why}`);
  }
  // A server bound with port 0 would report its real port here.
  const a = server.address();
  const shown = 'path' in where ? `unix:${where.path}` : typeof a === 'object' && a ? (a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`) : address;
  let closed = false;
  return {
    address: shown,
    close: () => {
      if (closed) return Promise.resolve();
      closed = true;
      return new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    },
  };
}

/** Whether the socket file at `file` is one nobody listens on any more (connecting is refused). */
function staleSocket(file: string): Promise<boolean> {
  try {
    if (!fs.lstatSync(file).isSocket()) return Promise.resolve(false);
  } catch {
    return Promise.resolve(false);
  }
  return new Promise((resolve) => {
    const c = net.connect(file);
    c.once('connect', () => {
      c.destroy();
      resolve(false);
    });
    c.once('error', (e: NodeJS.ErrnoException) => resolve(e.code === 'ECONNREFUSED'));
  });
}
