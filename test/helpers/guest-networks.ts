// The check every real-guest test makes of a Linux guest's network: the host
// pings each of its addresses 100 times without loss, then TCP moves `bytes`
// each way with the same SHA-256 on both ends.

import type { ExecutionContext } from 'ava';

import { guestToHost, hostToGuest, ping, waitReachable, type TransferResult } from '../../host/linux-guest/host';
import type { LinuxGuest } from '../../host/linux-guest/qemu';

export interface GuestAddresses {
  host4: string;
  guest4: string;
  guest6: string;
}

export async function checkGuestNetworks(
  t: ExecutionContext,
  guest: LinuxGuest,
  ns: string,
  a: GuestAddresses,
  o: { bytes: number; timeoutMs: number; port: number; label?: string; waitReachable?: boolean },
): Promise<{ h2g: TransferResult; g2h: TransferResult }> {
  const who = o.label ? `${o.label}, ` : '';
  for (const addr of [a.guest4, a.guest6]) {
    if (o.waitReachable) t.true(await waitReachable(ns, addr), `${who}the guest answers ${addr}`);
    const p = await ping(ns, addr, 100, 0.02);
    t.is(p.transmitted, 100, p.output);
    t.is(p.received, 100, `${who}ping ${addr}: ${p.output}`);
  }
  const h2g = await hostToGuest(guest, ns, a.guest4, o.port, o.bytes, o.timeoutMs);
  t.is(h2g.bytes, o.bytes);
  t.is(h2g.guestSha256, h2g.hostSha256, `${who}host → guest: the guest received exactly what the host sent`);
  const g2h = await guestToHost(guest, ns, a.host4, o.port + 1, o.bytes, o.timeoutMs);
  t.is(g2h.bytes, o.bytes);
  t.is(g2h.hostSha256, g2h.guestSha256, `${who}guest → host: the host received exactly the pattern the guest sent`);
  return { h2g, g2h };
}
