// The tests' own Toeplitz hash (test/helpers/toeplitz.ts) against the
// verification vectors Microsoft publishes with its RSS documentation
// ("Verifying the RSS Hash Calculation"), which the virtio spec's RSS section
// points to: key 6d5a56da..., IPv4 and IPv6, with and without TCP ports.

import test from 'ava';

import { hashInput, ipv4, ipv6, MS_RSS_KEY, toeplitz } from './helpers/toeplitz';

const V4: Array<{ dst: string; dport: number; src: string; sport: number; ip: number; tcp: number }> = [
  { dst: '161.142.100.80', dport: 1766, src: '66.9.149.187', sport: 2794, ip: 0x323e8fc2, tcp: 0x51ccc178 },
  { dst: '65.69.140.83', dport: 4739, src: '199.92.111.2', sport: 14230, ip: 0xd718262a, tcp: 0xc626b0ea },
  { dst: '12.22.207.184', dport: 38024, src: '24.19.198.95', sport: 12898, ip: 0xd2d0a5de, tcp: 0x5c2b394a },
  { dst: '209.142.163.6', dport: 2217, src: '38.27.205.30', sport: 48228, ip: 0x82989176, tcp: 0xafc7327f },
  { dst: '202.188.127.2', dport: 1303, src: '153.39.163.191', sport: 44251, ip: 0x5d1809c5, tcp: 0x10e828a2 },
];

const V6: Array<{ dst: string; dport: number; src: string; sport: number; ip: number; tcp: number }> = [
  { dst: '3ffe:2501:200:3::1', dport: 1766, src: '3ffe:2501:200:1fff::7', sport: 2794, ip: 0x2cc18cd5, tcp: 0x40207d3d },
  { dst: 'ff02::1', dport: 4739, src: '3ffe:501:8::260:97ff:fe40:efab', sport: 14230, ip: 0x0f0c461c, tcp: 0xdde51bbf },
  { dst: 'fe80::200:f8ff:fe21:67cf', dport: 38024, src: '3ffe:1900:4545:3:200:f8ff:fe21:67cf', sport: 44251, ip: 0x4b61e985, tcp: 0x02d1feef },
];

const hex = (n: number): string => '0x' + n.toString(16).padStart(8, '0');

for (const v of V4) {
  test(`IPv4 ${v.src}:${v.sport} -> ${v.dst}:${v.dport}`, (t) => {
    t.is(hex(toeplitz(MS_RSS_KEY, hashInput(ipv4(v.src), ipv4(v.dst)))), hex(v.ip), 'addresses only');
    t.is(hex(toeplitz(MS_RSS_KEY, hashInput(ipv4(v.src), ipv4(v.dst), { src: v.sport, dst: v.dport }))), hex(v.tcp), 'with ports');
  });
}

for (const v of V6) {
  test(`IPv6 [${v.src}]:${v.sport} -> [${v.dst}]:${v.dport}`, (t) => {
    t.is(hex(toeplitz(MS_RSS_KEY, hashInput(ipv6(v.src), ipv6(v.dst)))), hex(v.ip), 'addresses only');
    t.is(hex(toeplitz(MS_RSS_KEY, hashInput(ipv6(v.src), ipv6(v.dst), { src: v.sport, dst: v.dport }))), hex(v.tcp), 'with ports');
  });
}

test('a key shorter than the input window reads as zero-padded; an all-zero key hashes everything to 0', (t) => {
  const input = hashInput(ipv4('1.2.3.4'), ipv4('5.6.7.8'), { src: 1, dst: 2 });
  t.is(toeplitz(new Uint8Array(40), input), 0);
  const short = MS_RSS_KEY.slice(0, 12);
  const padded = new Uint8Array(40);
  padded.set(short);
  t.is(toeplitz(short, input), toeplitz(padded, input));
  t.not(toeplitz(short, input), toeplitz(MS_RSS_KEY, input), 'a 12-byte input reads key bits up to 127: past a 12-byte key');
});
