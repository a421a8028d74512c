// Counters readable while a back end runs (issue 19): the Prometheus text
// exposition itself (well formed, every named drop counter, labels escaped),
// the --metrics address forms, and both long-running commands scraped twice
// while traffic flows — `vhost-tap vhost-user` with a test front end on a
// Unix-socket endpoint, `vhost-tap run` with ping on a TCP one — seeing the
// counters grow; a bad --metrics address is a usage error (exit 2).

import test from 'ava';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';

import { DROP_NAMES, parseMetricsAddress, prometheusText, serveMetrics } from '../backend';
import { DeviceStats, QueueStats } from '../backend/datapath';
import { addon } from '../backend/native';
import { REQ } from '../backend/vhost-user/protocol';
import { withNetns } from '../host/netns';
import { runCli, startCommand, startRun } from './helpers/cli';
import { arpRequest, expectOk, MemfdGuest, state, u64 } from './helpers/vhost-user-frontend';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** One scrape: GET /metrics over TCP ('HOST:PORT') or a Unix socket ('unix:/PATH'). */
function scrape(address: string): Promise<{ status: number; type: string; body: string }> {
  const where = address.startsWith('unix:') ? { socketPath: address.slice(5) } : { host: address.replace(/:\d+$/, ''), port: Number(/:(\d+)$/.exec(address)![1]) };
  return new Promise((resolve, reject) => {
    const req = http.get({ ...where, path: '/metrics', timeout: 10_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type']), body }));
    });
    req.on('timeout', () => req.destroy(new Error(`no answer from ${address} in 10 s`)));
    req.on('error', reject);
  });
}

/**
 * Parses the text format strictly enough to catch a malformed exposition: every sample line is
 * NAME{LABELS} VALUE, its family was announced by # HELP and # TYPE before it, no family twice.
 */
function parse(text: string): { samples: { name: string; labels: Record<string, string>; value: number }[]; types: Map<string, string> } {
  const types = new Map<string, string>();
  const helped = new Set<string>();
  const samples: { name: string; labels: Record<string, string>; value: number }[] = [];
  if (!text.endsWith('\n')) throw new Error('the exposition must end with a newline');
  for (const line of text.slice(0, -1).split('\n')) {
    const help = /^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) \S/.exec(line);
    const type = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge)$/.exec(line);
    if (help) {
      if (helped.has(help[1])) throw new Error(`family ${help[1]} announced twice`);
      helped.add(help[1]);
      continue;
    }
    if (type) {
      if (!helped.has(type[1]) || types.has(type[1])) throw new Error(`TYPE of ${type[1]} out of place`);
      types.set(type[1], type[2]);
      continue;
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{((?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*",?)*)\})? (-?[0-9.e+]+|NaN)$/.exec(line);
    if (!m) throw new Error(`not a sample line: ${JSON.stringify(line)}`);
    if (!types.has(m[1])) throw new Error(`sample of ${m[1]} before its TYPE`);
    if (types.get(m[1]) === 'counter' && !m[1].endsWith('_total')) throw new Error(`counter ${m[1]} is not named *_total`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2].replace(/\\n/g, '\n').replace(/\\(.)/g, '$1');
    samples.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return { samples, types };
}

function value(samples: ReturnType<typeof parse>['samples'], name: string, labels: Record<string, string> = {}): number | undefined {
  return samples.find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))?.value;
}

function queue(index: number, kind: 'rx' | 'tx', n: number, drops: Record<string, number> = {}): QueueStats {
  return { index, kind, packets: n, bytes: 100 * n, interrupts: 2, kicks: 3, tapFull: 0, reordered: 0, withheld: 0, udpTunnelGsoPackets: 0, udpTunnelGsoBytes: 0, usedChains: n, drops, broken: false };
}

test('the exposition: HELP and TYPE per family, counters *_total with queue and pair labels, every named drop counter, label values escaped', (t) => {
  const device: DeviceStats = {
    queues: [queue(0, 'rx', 5, { rx_truncated: 1 }), queue(1, 'tx', 7, { tx_hdr_bad_gso_type: 2, a_new_counter: 4 }), queue(2, 'rx', 0), queue(3, 'tx', 0)],
    io: 'io"uring\\',
    filtered: 0,
    totals: { rxPackets: 5, rxBytes: 500, txPackets: 7, txBytes: 700, drops: 7 },
    udpTunnelGso: { kernel: true, guest: false, host: false },
    udpTunnelGsoFrames: { rx: { frames: 0, bytes: 0 }, tx: { frames: 0, bytes: 0 } },
    rss: { steering: 'off' as const, fallbacks: 0 },
  };
  const text = prometheusText({
    device,
    vhostUser: {
      sessions: 3,
      connected: true,
      refused: 1,
      session: {
        features: '0x100000000',
        featureNames: ['VERSION_1'],
        protocolFeatures: '0x9',
        protocolFeatureNames: ['MQ', 'REPLY_ACK'],
        pairs: [
          { pair: 0, running: true, layout: 'split', inOrder: false, eventIdx: true, size: 256 },
          { pair: 1, running: false, layout: 'split', inOrder: false, eventIdx: true, size: undefined },
        ],
      },
    },
  });
  const { samples, types } = parse(text);
  t.is(types.get('vhost_tap_queue_frames_total'), 'counter');
  t.is(value(samples, 'vhost_tap_queue_frames_total', { queue: 'rx0', pair: '0' }), 5);
  t.is(value(samples, 'vhost_tap_queue_frames_total', { queue: 'tx0', pair: '0' }), 7);
  t.is(value(samples, 'vhost_tap_queue_bytes_total', { queue: 'tx1', pair: '1' }), 0);
  t.is(value(samples, 'vhost_tap_queue_kicks_total', { queue: 'rx1' }), 3);
  t.is(value(samples, 'vhost_tap_queue_interrupts_total', { queue: 'tx0' }), 2);
  for (const [q, kind] of [['rx0', 'rx'], ['tx0', 'tx'], ['rx1', 'rx'], ['tx1', 'tx']] as const) {
    for (const reason of DROP_NAMES[kind]) t.not(value(samples, 'vhost_tap_queue_drops_total', { queue: q, reason }), undefined, `${q} ${reason}`);
  }
  t.is(value(samples, 'vhost_tap_queue_drops_total', { queue: 'rx0', reason: 'rx_truncated' }), 1);
  t.is(value(samples, 'vhost_tap_queue_drops_total', { queue: 'tx0', reason: 'tx_hdr_bad_gso_type' }), 2);
  t.is(value(samples, 'vhost_tap_queue_drops_total', { queue: 'tx0', reason: 'a_new_counter' }), 4, 'a counter the engine reports that the list lacks is shown');
  t.is(value(samples, 'vhost_tap_io_info', { io: 'io"uring\\' }), 1, 'a label value with a quote and a backslash round-trips');
  t.is(value(samples, 'vhost_tap_vhost_user_sessions_total'), 3);
  t.is(value(samples, 'vhost_tap_vhost_user_connected'), 1);
  t.is(value(samples, 'vhost_tap_feature_negotiated', { feature: 'VERSION_1' }), 1);
  t.is(value(samples, 'vhost_tap_vhost_user_protocol_feature_negotiated', { feature: 'REPLY_ACK' }), 1);
  t.is(value(samples, 'vhost_tap_queue_pair_running', { pair: '1' }), 0);
  t.is(value(samples, 'vhost_tap_queue_pair_ring_info', { pair: '0', layout: 'split', event_idx: 'true', size: '256' }), 1);
});

test('--metrics address forms: HOST:PORT, [IPV6]:PORT, unix:/PATH; anything else is refused with the forms', (t) => {
  t.deepEqual(parseMetricsAddress('127.0.0.1:9100'), { host: '127.0.0.1', port: 9100 });
  t.deepEqual(parseMetricsAddress('localhost:0'), { host: 'localhost', port: 0 });
  t.deepEqual(parseMetricsAddress('[::1]:9100'), { host: '::1', port: 9100 });
  t.deepEqual(parseMetricsAddress('unix:/run/vt.sock'), { path: '/run/vt.sock' });
  for (const bad of ['', '9100', '127.0.0.1', '127.0.0.1:65536', '::1:9100', '[xyz]:1', 'unix:rel.sock', 'http://1.2.3.4:9100']) {
    t.throws(() => parseMetricsAddress(bad), { message: /expected HOST:PORT|absolute path|not an IPv6/ }, bad);
  }
});

test.serial('serveMetrics on a Unix socket: a live one is refused, a stale socket file is replaced, a missing directory is named; close() removes the file', async (t) => {
  const file = `/tmp/vt-met-lib-${process.pid}.sock`;
  const snap = { device: { queues: [], io: 'none', filtered: 0, totals: { rxPackets: 0, rxBytes: 0, txPackets: 0, txBytes: 0, drops: 0 }, udpTunnelGso: { kernel: true, guest: false, host: false }, udpTunnelGsoFrames: { rx: { frames: 0, bytes: 0 }, tx: { frames: 0, bytes: 0 } }, rss: { steering: 'off' as const, fallbacks: 0 } } };
  // A socket file whose listener is gone: bound, closed without unlinking.
  const a = addon();
  a.close(a.vhostUser.listen(file));
  t.true(fs.existsSync(file));
  const ep = await serveMetrics(`unix:${file}`, () => snap);
  try {
    t.is(ep.address, `unix:${file}`);
    t.is((await scrape(ep.address)).status, 200, 'the stale file was replaced');
    await t.throwsAsync(serveMetrics(`unix:${file}`, () => snap), { message: /cannot listen there: the address is in use/ });
  } finally {
    await ep.close();
  }
  t.false(fs.existsSync(file), 'close() removed the socket file');
  await t.throwsAsync(serveMetrics('unix:/nonexistent-vt-dir/m.sock', () => snap), { message: /directory '\/nonexistent-vt-dir' does not exist/ });
});

test.serial('a bad --metrics address is a usage error (exit 2) before any TAP exists: a malformed one, and one another process listens on', async (t) => {
  await withNetns(async (ns) => {
    for (const [cmd, extra] of [['vhost-user', ['--socket', `/tmp/vt-met-bad-${process.pid}.sock`]], ['run', []]] as const) {
      const r = runCli([cmd, '--tap', ns.ifname(), '--netns', ns.name, ...extra, '--metrics', '127.0.0.1']);
      t.is(r.status, 2, r.stderr);
      t.regex(r.stderr, /^vhost-tap: --metrics: metrics address '127\.0\.0\.1': expected HOST:PORT \(e\.g\. 127\.0\.0\.1:9100\), \[IPV6\]:PORT or unix:\/PATH/);
    }
    const busy = net.createServer();
    await new Promise<void>((r) => busy.listen(0, '127.0.0.1', r));
    try {
      const port = (busy.address() as net.AddressInfo).port;
      const tap = ns.ifname();
      const r = runCli(['run', '--tap', tap, '--netns', ns.name, '--metrics', `127.0.0.1:${port}`]);
      t.is(r.status, 2, r.stderr);
      t.regex(r.stderr, /--metrics: metrics address '127\.0\.0\.1:\d+': cannot listen there: the address is in use/);
      t.notRegex(ns.run('ip', ['-o', 'link', 'show']).stdout, new RegExp(` ${tap}[:@]`), 'no TAP was made');
    } finally {
      busy.close();
    }
  });
});

test.serial('vhost-tap vhost-user --metrics unix:PATH: two scrapes while a front end sends frames see its counters grow and its session state; the log says when the pair stops and runs again', async (t) => {
  t.timeout(120_000);
  await withNetns(async (ns) => {
    const tap = ns.ifname();
    const sock = `/tmp/vt-met-${process.pid}.sock`;
    const msock = `/tmp/vt-met-${process.pid}.metrics`;
    const cli = await startCommand('vhost-user', ['--socket', sock, '--tap', tap, '--netns', ns.name, '--metrics', `unix:${msock}`, '--json']);
    ns.defer(() => {
      if (cli.child.exitCode === null) cli.child.kill('SIGKILL');
    });
    t.regex(cli.ready, new RegExp(`, metrics on unix:${msock} \\(GET /metrics\\)$`));
    const before = parse((await scrape(`unix:${msock}`)).body).samples;
    t.is(value(before, 'vhost_tap_vhost_user_connected'), 0);
    t.is(value(before, 'vhost_tap_vhost_user_sessions_total'), 0);
    t.is(value(before, 'vhost_tap_queue_frames_total', { queue: 'tx0' }), 0);
    const g = await MemfdGuest.start(sock);
    const extra: number[] = [];
    try {
      const frame = arpRequest(Buffer.from([0x52, 0x54, 0, 0x12, 0x34, 0x56]), [10, 203, 23, 2], [10, 203, 23, 1]);
      const sent = async (n: number): Promise<void> => {
        const want = g.usedIdx(1) + n;
        for (let i = 0; i < n; i++) g.send(frame);
        await g.until(() => g.usedIdx(1) === (want & 0xffff), 10_000, 'TX chains used');
      };
      await sent(20);
      const first = await scrape(`unix:${msock}`);
      t.is(first.status, 200);
      t.is(first.type, 'text/plain; version=0.0.4; charset=utf-8');
      const a = parse(first.body).samples;
      await sent(30);
      const b = parse((await scrape(`unix:${msock}`)).body).samples;
      const txA = value(a, 'vhost_tap_queue_frames_total', { queue: 'tx0', pair: '0' })!;
      const txB = value(b, 'vhost_tap_queue_frames_total', { queue: 'tx0', pair: '0' })!;
      t.true(txA >= 20, `first scrape: ${txA} frames`);
      t.is(txB - txA, 30, 'the second scrape counts the 30 frames sent between them');
      t.true(value(b, 'vhost_tap_queue_bytes_total', { queue: 'tx0' })! > value(a, 'vhost_tap_queue_bytes_total', { queue: 'tx0' })!);
      t.true(value(b, 'vhost_tap_queue_kicks_total', { queue: 'tx0' })! > value(a, 'vhost_tap_queue_kicks_total', { queue: 'tx0' })!);
      t.is(value(b, 'vhost_tap_queue_drops_total', { queue: 'tx0', reason: 'tap_write_eio' }), 0);
      t.is(value(b, 'vhost_tap_vhost_user_connected'), 1);
      t.is(value(b, 'vhost_tap_vhost_user_sessions_total'), 1);
      t.is(value(b, 'vhost_tap_feature_negotiated', { feature: 'VERSION_1' }), 1);
      t.is(value(b, 'vhost_tap_vhost_user_protocol_feature_negotiated', { feature: 'REPLY_ACK' }), 1);
      t.is(value(b, 'vhost_tap_queue_pair_running', { pair: '0' }), 1);
      t.is(value(b, 'vhost_tap_queue_pair_ring_info', { pair: '0', layout: 'split', size: '256' }), 1);
      t.not(value(b, 'vhost_tap_io_info', { io: 'none' }), 1, 'the I/O method of the running worker');
      // A restart: GET_VRING_BASE stops the pair, a new kick fd starts it again.
      const base = await g.fe.getVringBase(0);
      await expectOk(g.fe, REQ.SET_VRING_BASE, state(0, base.num));
      const kick = addon().eventfd();
      extra.push(kick);
      await expectOk(g.fe, REQ.SET_VRING_KICK, u64(0n), [kick]);
      const c = parse((await scrape(`unix:${msock}`)).body).samples;
      t.is(value(c, 'vhost_tap_queue_pair_running', { pair: '0' }), 1);
      t.is(value(c, 'vhost_tap_queue_frames_total', { queue: 'tx0' }), txB, 'a restarted pair keeps its counters');
    } finally {
      g.close();
      for (const fd of extra) addon().close(fd);
    }
    const out = await cli.stop('SIGTERM');
    t.is(out.code, 0, out.stderr);
    // The drop names the engine reported are exactly the list that names them before one runs.
    const final = JSON.parse(out.stdout.trim().split('\n').pop()!) as { device: { queues: { kind: 'rx' | 'tx'; drops: Record<string, number> }[] } };
    for (const q of final.device.queues) t.deepEqual(Object.keys(q.drops).sort(), [...DROP_NAMES[q.kind]].sort(), `${q.kind} drop names`);
    const pairLines = out.stderr.split('\n').filter((l) => /queue pair 0 (running|stopped)/.test(l));
    t.is(pairLines.length, 3, out.stderr);
    t.regex(pairLines[0], /running \(split, 256 entries; rings 0 and 1 from avail\/used 0\/0 and 0\/0\)/);
    t.regex(pairLines[1], /^vhost-user: queue pair 0 stopped \(ring 0 at avail \d+, ring 1 at avail 50; used \d+ and 50\)$/);
    // The restart resumes where the stop left the TX ring.
    t.regex(pairLines[2], /running \(split, 256 entries; rings 0 and 1 from avail\/used \d+\/\d+ and 50\/50\)/);
    t.notRegex(out.stderr, /waiting for the next front end \(the back end is shutting down\)/, 'shutting down is not waiting');
    await t.throwsAsync(scrape(`unix:${msock}`), undefined, 'the endpoint is gone after exit');
  });
});

test.serial('vhost-tap run --metrics 127.0.0.1:0: two scrapes while ping runs see the RX and TX counters and the guest pair counters grow', async (t) => {
  t.timeout(120_000);
  await withNetns(async (ns) => {
    const tap = ns.ifname();
    const cli = await startRun(['--tap', tap, '--netns', ns.name, '--ip', '10.98.77.2/24', '--metrics', '127.0.0.1:0']);
    ns.defer(() => {
      if (cli.child.exitCode === null) cli.child.kill('SIGKILL');
    });
    const addr = /, metrics on http:\/\/(127\.0\.0\.1:\d+)\/metrics/.exec(cli.ready)?.[1];
    t.truthy(addr, cli.ready);
    ns.ip('addr', 'add', '10.98.77.1/24', 'dev', tap);
    ns.exec('ping', ['-c', '3', '-i', '0.2', '-W', '2', '10.98.77.2']);
    const a = parse((await scrape(addr!)).body).samples;
    ns.exec('ping', ['-c', '5', '-i', '0.2', '-W', '2', '10.98.77.2']);
    await sleep(100);
    const b = parse((await scrape(addr!)).body).samples;
    for (const q of ['rx0', 'tx0']) {
      const [x, y] = [value(a, 'vhost_tap_queue_frames_total', { queue: q })!, value(b, 'vhost_tap_queue_frames_total', { queue: q })!];
      t.true(y >= x + 5, `${q}: ${x} then ${y} frames (5 pings between the scrapes)`);
    }
    const [gx, gy] = [value(a, 'vhost_tap_guest_frames_total', { pair: '0', direction: 'rx' })!, value(b, 'vhost_tap_guest_frames_total', { pair: '0', direction: 'rx' })!];
    t.true(gy >= gx + 5, `guest rx ${gx} then ${gy}`);
    t.is(value(b, 'vhost_tap_feature_negotiated', { feature: 'VERSION_1' }), 1);
    t.is(value(b, 'vhost_tap_vhost_user_sessions_total'), undefined, 'no vhost-user families in run');
    const out = await cli.stop('SIGINT');
    t.is(out.code, 0, out.stderr);
  });
});
