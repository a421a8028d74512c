// Integration: a Linux guest under QEMU 7.2 (TCG) whose own virtio_net driver
// gets its network from `vhost-tap vhost-user` (the CLI, a child process) over
// vhost-user, the TAP in a namespace the test creates. One CLI serves, in
// turn: a first guest (driver binds; checksum/TSO offloads and MQ negotiated;
// 100 pings v4 and v6 without loss; 100 MB of TCP each way with equal
// SHA-256; with 2 queue pairs and 2 vCPUs both RX and both TX queues carry
// traffic), which is then SIGKILLed in the middle of a transfer; every hostile
// front end of HOSTILE_CASES; a second guest on the same socket that
// networks normally and powers off cleanly. Between them the CLI stays alive
// and is back to the fds it had, with no guest memory mapped. SIGTERM: exit
// 0, statistics per queue, socket file and TAP gone. Boot times and Mbps are
// logged, not asserted.

import test from 'ava';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';

import { featureNames, has } from '../backend';
import { guestToHost, hostToGuest, ping } from '../host/linux-guest/host';
import { LinuxGuest } from '../host/linux-guest/qemu';
import { withNetns } from '../host/netns';
import { startCommand } from './helpers/cli';
import { checkGuestNetworks } from './helpers/guest-networks';
import { HOSTILE_CASES, playHostileCase } from './helpers/vhost-user-frontend';

const HOST4 = '10.203.24.1';
const GUEST4 = '10.203.24.2';
const HOST6 = 'fd00:cb:24::1';
const GUEST6 = 'fd00:cb:24::2';
const ADDRS = { host4: HOST4, guest4: GUEST4, guest6: GUEST6 };
/** 100 MB each way as issue 10 asks; VT_GUEST_TCP_BYTES overrides it for quick local runs. */
const BYTES = Number(process.env.VT_GUEST_TCP_BYTES ?? 100e6);
/** Per-CPU flows that put traffic on each TX queue (and, through the TAP's flow steering, each RX queue). */
const SPREAD_BYTES = 4e6;
/** TCG on 2 shared cores moves ~40–300 Mbps; 100 MB may take minutes when the machine is busy. */
const TRANSFER_TIMEOUT_MS = 600_000;
const BOOT_TIMEOUT_MS = 300_000;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const fdCount = (pid: number): number => fs.readdirSync(`/proc/${pid}/fd`).length;
/** Shared-memory mappings of guest RAM in a process (QEMU's memory-backend-memfd, the test memfds). */
const memfdMappings = (pid: number): string[] => fs.readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n').filter((l) => l.includes('/memfd:'));
const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

test.serial('vhost-tap vhost-user serves Linux guests under QEMU: offloads and MQ, pings, 100 MB each way, both queue pairs used; survives a killed QEMU and every hostile front end; a second QEMU networks', async (t) => {
  t.timeout(1_800_000);
  await withNetns(async (ns) => {
    const tap = ns.ifname();
    const sock = `/tmp/vt-vuq-${process.pid}.sock`;
    const cli = await startCommand('vhost-user', ['--socket', sock, '--tap', tap, '--netns', ns.name, '--queues', '2', '--json']);
    const pid = cli.child.pid!;
    ns.defer(() => {
      if (alive(pid)) process.kill(pid, 'SIGKILL');
    });
    t.regex(cli.ready, new RegExp(`^ready: listening on ${sock}, tap ${tap} in netns ${ns.name}, 2 queue pair\\(s\\), offloads csum,tso4,tso6`));
    const ip = (...a: string[]): void => void execFileSync('ip', ['-n', ns.name, ...a]);
    ip('addr', 'add', `${HOST4}/24`, 'dev', tap);
    ip('-6', 'addr', 'add', `${HOST6}/64`, 'dev', tap, 'nodad');
    const fds0 = fdCount(pid);
    const sessionEnds = (): number => (cli.errors().match(/session ended/g) ?? []).length;
    const nextEnd = async (): Promise<string> => {
      const n = sessionEnds();
      for (let i = 0; i < 600 && sessionEnds() === n; i++) await sleep(50);
      const lines = cli.errors().split('\n').filter((l) => /session ended/.test(l));
      if (lines.length === n) throw new Error(`the CLI reported no session end within 30 s:\n${cli.errors()}`);
      return lines[lines.length - 1];
    };

    // --- the first guest --------------------------------------------------------------------
    const g1 = await LinuxGuest.boot({ netdev: { kind: 'vhost-user', socket: sock, queues: 2 }, cpus: 2, ip4: `${GUEST4}/24`, ip6: `${GUEST6}/64`, bootTimeoutMs: BOOT_TIMEOUT_MS });
    ns.defer(() => g1.killNow());
    t.log(`guest ${g1.image.release} booted to a working eth0 in ${(g1.bootMs / 1000).toFixed(1)} s`);
    const f = await g1.features();
    for (const name of ['VERSION_1', 'CSUM', 'GUEST_CSUM', 'HOST_TSO4', 'HOST_TSO6', 'GUEST_TSO4', 'GUEST_TSO6', 'MRG_RXBUF', 'MQ'] as const) {
      t.true(has(f, name), `the guest driver negotiated ${name}: ${featureNames(f).join(',')}`);
    }
    const { h2g, g2h } = await checkGuestNetworks(t, g1, ns.name, ADDRS, { bytes: BYTES, timeoutMs: TRANSFER_TIMEOUT_MS, port: 5001 });
    t.log(`host → guest ${h2g.mbps.toFixed(0)} Mbps, guest → host ${g2h.mbps.toFixed(0)} Mbps (${BYTES / 1e6} MB each; TCG, shared cores: noisy)`);
    // A sender pinned to each guest CPU: the driver's XPS maps CPU i to TX queue i, and the TAP's
    // flow steering sends the host's side of a flow to the queue the guest sent it on.
    for (const cpu of [0, 1]) {
      const s = await guestToHost(g1, ns.name, HOST6, 5003 + cpu, SPREAD_BYTES, TRANSFER_TIMEOUT_MS, { cpu });
      t.is(s.hostSha256, s.guestSha256, `flow from guest CPU ${cpu}`);
    }
    const q = await g1.ethtoolStats();
    for (const k of ['rx_queue_0_packets', 'rx_queue_1_packets', 'tx_queue_0_packets', 'tx_queue_1_packets']) t.true(q[k] > 0, `${k} = ${q[k]}: ${JSON.stringify(q)}`);
    t.log(`guest per-queue packets: rx ${q.rx_queue_0_packets}/${q.rx_queue_1_packets}, tx ${q.tx_queue_0_packets}/${q.tx_queue_1_packets}`);
    t.is(memfdMappings(pid).length > 0, true, "the CLI maps the guest's memory while it runs");
    t.notRegex(cli.errors(), /refused/, 'QEMU and the guest driver got nothing refused');

    // --- SIGKILL in the middle of a transfer -------------------------------------------------
    const abort = new AbortController();
    // 1 GB: more than TCG moves in the seconds before the kill (~40–500 Mbps here).
    const transfer = hostToGuest(g1, ns.name, GUEST4, 5005, 1e9, TRANSFER_TIMEOUT_MS, { signal: abort.signal }).then(
      () => 'finished',
      () => 'interrupted',
    );
    await sleep(2000);
    const ended1 = nextEnd();
    await g1.kill('SIGKILL');
    abort.abort();
    t.regex(await ended1, /peer closed|reset/, 'the session ends when QEMU dies');
    t.is(await transfer, 'interrupted', 'QEMU died in the middle of the transfer');
    t.true(alive(pid), 'the back end survives a killed QEMU');
    t.deepEqual(memfdMappings(pid), [], 'and unmapped the dead guest');
    t.is(fdCount(pid), fds0, 'and closed every fd of that session');

    // --- hostile front ends ------------------------------------------------------------------
    for (const c of HOSTILE_CASES) {
      const r = await playHostileCase(sock, c, nextEnd);
      t.is(r.outcome, c.expect === 'nack' ? 'nack' : 'closed', c.name);
      if (c.expect === 'close' && !r.frontEndCloses) t.notRegex(r.reason, /peer closed/, `${c.name}: ${r.reason}`);
    }
    t.true(alive(pid), 'the back end survives every hostile front end');
    t.deepEqual(memfdMappings(pid), [], 'nothing they sent stays mapped');
    t.is(fdCount(pid), fds0, 'no fd they sent stays open');

    // --- a second guest on the same socket ------------------------------------------------
    const refusedBefore = (cli.errors().match(/refused/g) ?? []).length;
    // Once (1 in about 17 CI runs) this boot timed out with the console empty: QEMU waiting
    // for an answer in the vhost-user handshake (ours to fix) or the guest kernel stuck before
    // its init (TCG's). The back end's log tells which.
    const g2 = await LinuxGuest.boot({ netdev: { kind: 'vhost-user', socket: sock, queues: 2 }, cpus: 2, ip4: `${GUEST4}/24`, ip6: `${GUEST6}/64`, bootTimeoutMs: BOOT_TIMEOUT_MS }).catch((e: Error) => {
      t.log(`the second guest did not boot; the back end's last lines:\n${cli.errors().split('\n').slice(-30).join('\n')}`);
      throw e;
    });
    ns.defer(() => g2.killNow());
    t.log(`second guest booted in ${(g2.bootMs / 1000).toFixed(1)} s`);
    // The host still remembers the first guest (same addresses, and QEMU gives both the same
    // MAC) as unreachable: let neighbour resolution settle before counting replies.
    ip('neigh', 'flush', 'dev', tap);
    await checkGuestNetworks(t, g2, ns.name, ADDRS, { bytes: 10e6, timeoutMs: TRANSFER_TIMEOUT_MS, port: 5011, label: 'second guest', waitReachable: true });
    const ended2 = nextEnd();
    void g2.run('poweroff -f').catch(() => undefined);
    t.is((await g2.exited).code, 0, 'QEMU powers off cleanly');
    t.regex(await ended2, /peer closed/);
    t.is((cli.errors().match(/refused/g) ?? []).length, refusedBefore, `nothing refused in the second session:\n${cli.errors()}`);

    // --- SIGTERM ---------------------------------------------------------------------------
    const out = await cli.stop('SIGTERM');
    t.is(out.code, 0, out.stderr);
    const stats = JSON.parse(out.stdout.trim().split('\n').pop()!) as {
      sessions: number;
      refused: number;
      device: { queues: { index: number; kind: string; packets: number; bytes: number }[] };
    };
    t.is(stats.sessions, 2 + HOSTILE_CASES.length);
    t.true(stats.refused >= HOSTILE_CASES.filter((c) => c.expect === 'nack').length);
    for (const qs of stats.device.queues) t.true(qs.packets > 0, `back-end queue ${qs.index} (${qs.kind}) carried frames: ${JSON.stringify(stats.device.queues)}`);
    t.false(fs.existsSync(sock), 'the socket file is removed');
    t.notRegex(ns.run('ip', ['-o', 'link', 'show']).stdout, new RegExp(` ${tap}[:@]`), 'the TAP is removed');
  });
});

test.serial('QEMU listens (server=on) and vhost-tap vhost-user --client connects; a restarted vhost-tap reconnects and the guest networks again', async (t) => {
  t.timeout(900_000);
  await withNetns(async (ns) => {
    const tap = ns.ifname();
    const sock = `/tmp/vt-vuqc-${process.pid}.sock`;
    const args = ['--socket', sock, '--tap', tap, '--netns', ns.name, '--client'];
    const start = async (): Promise<Awaited<ReturnType<typeof startCommand>>> => {
      const c = await startCommand('vhost-user', args);
      ns.defer(() => {
        if (alive(c.child.pid!)) process.kill(c.child.pid!, 'SIGKILL');
      });
      execFileSync('ip', ['-n', ns.name, 'addr', 'add', `${HOST4}/24`, 'dev', tap]);
      return c;
    };
    const first = await start();
    t.regex(first.ready, new RegExp(`^ready: connecting to ${sock}, tap ${tap}`));
    const g = await LinuxGuest.boot({ netdev: { kind: 'vhost-user', socket: sock, server: true }, cpus: 2, ip4: `${GUEST4}/24`, bootTimeoutMs: BOOT_TIMEOUT_MS });
    ns.defer(() => g.killNow());
    try {
      t.is((await ping(ns.name, GUEST4, 20, 0.05)).received, 20, 'the first vhost-tap serves the guest');
      const out = await first.stop('SIGTERM');
      t.is(out.code, 0, out.stderr);
      const second = await start();
      // QEMU takes the new connection and starts the rings again; the guest's driver never noticed.
      let got = 0;
      for (let i = 0; i < 30 && got === 0; i++) got = (await ping(ns.name, GUEST4, 1, 0.2)).received;
      t.is(got, 1, `the restarted vhost-tap serves the guest again:\n${second.errors()}`);
      t.is((await ping(ns.name, GUEST4, 20, 0.05)).received, 20);
      const a = await hostToGuest(g, ns.name, GUEST4, 5021, 10e6, TRANSFER_TIMEOUT_MS);
      t.is(a.guestSha256, a.hostSha256, 'TCP after the reconnection');
      t.is((await second.stop('SIGTERM')).code, 0);
    } finally {
      await g.kill();
    }
  });
});
