// Receive filter state (backend/rxfilter.ts) as the control queue sets it:
// RX modes (virtio 1.x §5.1.6.5.1), MAC tables (§5.1.6.5.2), VLAN filter
// (§5.1.6.5.3), what it lets through (accepts) and its projection onto the
// TAP's TUNSETTXFILTER (tapFilter).

import test from 'ava';

import { MAC_TABLE_MAX, RxFilter } from '../backend/rxfilter';
import { CTRL } from '../backend/virtio';

const PRIMARY = mac('52:54:00:12:34:56');
const OTHER_UNI = mac('52:54:00:aa:bb:cc');
const UNI1 = mac('02:00:00:00:00:01');
const UNI2 = mac('02:00:00:00:00:02');
const MC1 = mac('01:00:5e:00:00:01');
const MC2 = mac('33:33:00:00:00:01');
const MC_OTHER = mac('01:00:5e:7f:00:09');
const BCAST = mac('ff:ff:ff:ff:ff:ff');
const TUN_FLT_ALLMULTI = 1;

function mac(s: string): Uint8Array {
  return Uint8Array.from(s.split(':').map((x) => parseInt(x, 16)));
}

function hex(b: Uint8Array): string[] {
  const out: string[] = [];
  for (let i = 0; i < b.length; i += 6) out.push([...b.subarray(i, i + 6)].map((x) => x.toString(16).padStart(2, '0')).join(':'));
  return out;
}

/** MAC TABLE_SET data: u32 LE count + entries, for the unicast then the multicast table. */
function tables(uni: Uint8Array[], multi: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(8 + 6 * (uni.length + multi.length));
  const dv = new DataView(out.buffer);
  let off = 0;
  for (const t of [uni, multi]) {
    dv.setUint32(off, t.length, true);
    off += 4;
    for (const m of t) {
      out.set(m, off);
      off += 6;
    }
  }
  return out;
}

function fresh(vlanFiltering = false): RxFilter {
  const f = new RxFilter();
  f.reset(PRIMARY, vlanFiltering);
  return f;
}

/** A filter out of promiscuous mode with nothing else set. */
function strict(): RxFilter {
  const f = fresh();
  t_ok(f.setMode(CTRL.RX_PROMISC, false));
  return f;
}

function t_ok(v: boolean): void {
  if (!v) throw new Error('setup command refused');
}

test('after reset the filter is promiscuous and lets everything through', (t) => {
  const f = fresh();
  const s = f.snapshot();
  t.like(s, { promisc: true, allmulti: false, alluni: false, nomulti: false, nouni: false, nobcast: false, vlans: null });
  t.deepEqual(hex(s.unicast), hex(PRIMARY));
  t.is(s.multicast.length, 0);
  for (const d of [PRIMARY, OTHER_UNI, MC1, BCAST]) t.true(f.accepts(d, -1), hex(d)[0]);
  t.true(f.accepts(OTHER_UNI, 100));
});

test('reset clears every mode and table set before', (t) => {
  const f = strict();
  t_ok(f.setMode(CTRL.RX_NOBCAST, true));
  t_ok(f.setMode(CTRL.RX_ALLMULTI, true));
  t_ok(f.setTables(tables([UNI1], [MC1])));
  f.setVlan(5, true);
  f.reset(OTHER_UNI);
  const s = f.snapshot();
  t.like(s, { promisc: true, allmulti: false, nobcast: false, vlans: null });
  t.deepEqual(hex(s.unicast), hex(OTHER_UNI));
  t.is(s.multicast.length, 0);
});

test('without promiscuous mode: own MAC and broadcast pass, other unicast and unlisted multicast do not', (t) => {
  const f = strict();
  t.true(f.accepts(PRIMARY, -1));
  t.true(f.accepts(BCAST, -1));
  t.false(f.accepts(OTHER_UNI, -1));
  t.false(f.accepts(MC1, -1));
});

test('ALLMULTI lets every multicast through, not other unicast', (t) => {
  const f = strict();
  t_ok(f.setMode(CTRL.RX_ALLMULTI, true));
  t.true(f.accepts(MC1, -1));
  t.true(f.accepts(MC_OTHER, -1));
  t.false(f.accepts(OTHER_UNI, -1));
  t_ok(f.setMode(CTRL.RX_ALLMULTI, false));
  t.false(f.accepts(MC1, -1));
});

test('ALLUNI lets every unicast through, not unlisted multicast', (t) => {
  const f = strict();
  t_ok(f.setMode(CTRL.RX_ALLUNI, true));
  t.true(f.accepts(OTHER_UNI, -1));
  t.false(f.accepts(MC1, -1));
});

test('NOMULTI drops multicast even when listed or ALLMULTI; broadcast is not multicast here', (t) => {
  const f = strict();
  t_ok(f.setTables(tables([], [MC1])));
  t_ok(f.setMode(CTRL.RX_ALLMULTI, true));
  t_ok(f.setMode(CTRL.RX_NOMULTI, true));
  t.false(f.accepts(MC1, -1));
  t.false(f.accepts(MC_OTHER, -1));
  t.true(f.accepts(BCAST, -1));
  t.true(f.accepts(PRIMARY, -1));
});

test('NOUNI drops unicast, including our own address and ALLUNI', (t) => {
  const f = strict();
  t_ok(f.setTables(tables([UNI1], [])));
  t_ok(f.setMode(CTRL.RX_ALLUNI, true));
  t_ok(f.setMode(CTRL.RX_NOUNI, true));
  t.false(f.accepts(PRIMARY, -1));
  t.false(f.accepts(UNI1, -1));
  t.false(f.accepts(OTHER_UNI, -1));
  t.true(f.accepts(BCAST, -1));
});

test('NOBCAST drops broadcast only', (t) => {
  const f = strict();
  t_ok(f.setMode(CTRL.RX_NOBCAST, true));
  t.false(f.accepts(BCAST, -1));
  t.true(f.accepts(PRIMARY, -1));
});

test('unknown RX commands are refused and change nothing', (t) => {
  const f = fresh();
  const before = f.snapshot();
  t.false(f.setMode(6, true));
  t.false(f.setMode(255, false));
  t.deepEqual(f.snapshot(), before);
});

test('MAC TABLE_SET: listed unicast and multicast addresses pass', (t) => {
  const f = strict();
  t.true(f.setTables(tables([UNI1, UNI2], [MC1, MC2])));
  for (const d of [PRIMARY, UNI1, UNI2, MC1, MC2]) t.true(f.accepts(d, -1), hex(d)[0]);
  t.false(f.accepts(OTHER_UNI, -1));
  t.false(f.accepts(MC_OTHER, -1));
  const s = f.snapshot();
  t.deepEqual(hex(s.unicast), hex(PRIMARY).concat(hex(UNI1), hex(UNI2)), 'primary first, then the unicast table');
  t.deepEqual(hex(s.multicast), hex(MC1).concat(hex(MC2)));
  t.like(f.describe(), { unicast: 2, multicast: 2 });
});

test('MAC TABLE_SET replaces the previous tables; empty tables are valid', (t) => {
  const f = strict();
  t.true(f.setTables(tables([UNI1], [MC1])));
  t.true(f.setTables(tables([UNI2], [])));
  t.false(f.accepts(UNI1, -1));
  t.true(f.accepts(UNI2, -1));
  t.false(f.accepts(MC1, -1));
  t.true(f.setTables(tables([], [])));
  t.false(f.accepts(UNI2, -1));
  t.true(f.accepts(PRIMARY, -1));
});

test('the table data is copied: later changes to the command buffer do not leak in', (t) => {
  const f = strict();
  const data = tables([UNI1], []);
  t.true(f.setTables(data));
  data.fill(0xee);
  t.true(f.accepts(UNI1, -1));
});

test('malformed MAC TABLE_SET is refused and leaves the tables as they were', (t) => {
  const f = strict();
  t.true(f.setTables(tables([UNI1], [MC1])));
  const before = f.snapshot();
  const good = tables([UNI2], [MC2]);
  const bad: Array<[string, Uint8Array]> = [
    ['empty', new Uint8Array(0)],
    ['only part of the first count', new Uint8Array(3)],
    ['no multicast table', good.subarray(0, 4 + 6)],
    ['multicast count cut short', good.subarray(0, 4 + 6 + 2)],
    ['last entry cut short', good.subarray(0, good.length - 1)],
    ['trailing byte', Uint8Array.from([...good, 0])],
  ];
  // Unicast count larger than the data.
  const overCount = good.slice();
  new DataView(overCount.buffer).setUint32(0, 2, true);
  bad.push(['unicast count past the data', overCount]);
  // A count so large that 6 × n overflows 32 bits.
  const huge = good.slice();
  new DataView(huge.buffer).setUint32(0, 0xffffffff, true);
  bad.push(['count 0xffffffff', huge]);
  // More entries than the device accepts.
  const tooMany = tables(Array.from({ length: MAC_TABLE_MAX + 1 }, () => UNI1), []);
  bad.push([`${MAC_TABLE_MAX + 1} entries`, tooMany]);
  for (const [what, data] of bad) {
    t.false(f.setTables(data), what);
    t.deepEqual(f.snapshot(), before, `${what} changed the filter`);
  }
  t.true(f.setTables(tables(Array.from({ length: MAC_TABLE_MAX }, () => UNI1), [])), `${MAC_TABLE_MAX} entries are allowed`);
});

test('a table read from the middle of a larger buffer (byteOffset) parses correctly', (t) => {
  const f = strict();
  const data = tables([UNI1], [MC1]);
  const big = new Uint8Array(data.length + 7);
  big.set(data, 5);
  t.true(f.setTables(big.subarray(5, 5 + data.length)));
  t.true(f.accepts(UNI1, -1));
  t.true(f.accepts(MC1, -1));
});

test('setPrimary changes which unicast address is ours', (t) => {
  const f = strict();
  f.setPrimary(OTHER_UNI);
  t.true(f.accepts(OTHER_UNI, -1));
  t.false(f.accepts(PRIMARY, -1));
});

test('VLAN filter: off unless negotiated; with it only added VLAN ids pass', (t) => {
  const off = strict();
  t.true(off.accepts(PRIMARY, 7), 'no VLAN filtering without CTRL_VLAN');
  t.is(off.snapshot().vlans, null);

  const f = fresh(true);
  t_ok(f.setMode(CTRL.RX_PROMISC, false));
  t.false(f.accepts(PRIMARY, 7), 'CTRL_VLAN negotiated: the table starts empty');
  t.true(f.accepts(PRIMARY, -1), 'untagged frames are not VLAN filtered');
  f.setVlan(7, true);
  f.setVlan(4095, true);
  f.setVlan(0, true);
  t.true(f.accepts(PRIMARY, 7));
  t.true(f.accepts(PRIMARY, 4095));
  t.true(f.accepts(PRIMARY, 0));
  t.false(f.accepts(PRIMARY, 8));
  t.false(f.accepts(PRIMARY, 6));
  t.false(f.accepts(OTHER_UNI, 7), 'the MAC filter still applies to tagged frames');
  t.is(f.describe().vlans, 3);
  f.setVlan(7, false);
  t.false(f.accepts(PRIMARY, 7));
  t.true(f.accepts(PRIMARY, 4095));
  f.setVlan(7, false);
  t.is(f.describe().vlans, 2, 'deleting an absent VLAN is harmless');
  const v = f.snapshot().vlans!;
  t.is(v.length, 512);
  t.is(v[4095 >> 3], 0x80);
});

test('the first VLAN ADD turns filtering on when it was off', (t) => {
  const f = strict();
  f.setVlan(10, true);
  t.true(f.accepts(PRIMARY, 10));
  t.false(f.accepts(PRIMARY, 11));
});

// --- tapFilter (TUNSETTXFILTER) ------------------------------------------------------------

test('tapFilter: count 0 (filter off) in promiscuous mode and with ALLUNI', (t) => {
  const f = fresh();
  t_ok(f.setTables(tables([UNI1], [MC1])));
  t.deepEqual(f.tapFilter(), { flags: 0, macs: new Uint8Array(0) });
  t_ok(f.setMode(CTRL.RX_PROMISC, false));
  t_ok(f.setMode(CTRL.RX_ALLUNI, true));
  t.is(f.tapFilter().macs.length, 0);
});

test('tapFilter: unicast first (primary, table), then broadcast, then multicast', (t) => {
  const f = strict();
  t_ok(f.setTables(tables([UNI1, UNI2], [MC1, MC2])));
  const { flags, macs } = f.tapFilter();
  t.is(flags, 0);
  t.deepEqual(hex(macs), [PRIMARY, UNI1, UNI2, BCAST, MC1, MC2].flatMap(hex));
});

test('tapFilter: unicast stays ahead of multicast even with many addresses', (t) => {
  // tun matches the first 8 exactly and turns the filter off for a unicast address past them.
  const f = strict();
  const uni = Array.from({ length: 6 }, (_, i) => mac(`02:00:00:00:01:0${i}`));
  const multi = Array.from({ length: 10 }, (_, i) => mac(`01:00:5e:00:02:0${i}`));
  t_ok(f.setTables(tables(uni, multi)));
  const got = hex(f.tapFilter().macs);
  const lastUni = Math.max(...got.map((m, i) => (parseInt(m.slice(0, 2), 16) & 1 ? -1 : i)));
  const firstMulti = got.findIndex((m) => m !== 'ff:ff:ff:ff:ff:ff' && parseInt(m.slice(0, 2), 16) & 1);
  t.true(lastUni < firstMulti);
  t.is(got.length, 1 + 6 + 1 + 10);
});

test('tapFilter: NOBCAST leaves broadcast out', (t) => {
  const f = strict();
  t_ok(f.setMode(CTRL.RX_NOBCAST, true));
  t.deepEqual(hex(f.tapFilter().macs), hex(PRIMARY));
});

test('tapFilter: ALLMULTI sets TUN_FLT_ALLMULTI, unless NOMULTI', (t) => {
  const f = strict();
  t_ok(f.setMode(CTRL.RX_ALLMULTI, true));
  t.is(f.tapFilter().flags, TUN_FLT_ALLMULTI);
  t_ok(f.setMode(CTRL.RX_NOMULTI, true));
  t.is(f.tapFilter().flags, 0);
});

test('tapFilter: NOMULTI leaves the multicast table out, NOUNI the unicast addresses', (t) => {
  const f = strict();
  t_ok(f.setTables(tables([UNI1], [MC1])));
  t_ok(f.setMode(CTRL.RX_NOMULTI, true));
  t.deepEqual(hex(f.tapFilter().macs), [PRIMARY, UNI1, BCAST].flatMap(hex));
  t_ok(f.setMode(CTRL.RX_NOMULTI, false));
  t_ok(f.setMode(CTRL.RX_NOUNI, true));
  t.deepEqual(hex(f.tapFilter().macs), [BCAST, MC1].flatMap(hex));
});

test('tapFilter: when nothing is wanted the filter matches no frame (not count 0, which would pass all)', (t) => {
  const f = strict();
  t_ok(f.setMode(CTRL.RX_NOUNI, true));
  t_ok(f.setMode(CTRL.RX_NOBCAST, true));
  const { flags, macs } = f.tapFilter();
  t.is(flags, 0);
  t.is(macs.length, 6);
  t.deepEqual(hex(macs), ['00:00:00:00:00:00']);
});

test('tapFilter is a superset of accepts(): every accepted destination is listed or covered', (t) => {
  const f = strict();
  t_ok(f.setTables(tables([UNI1], [MC1])));
  t_ok(f.setMode(CTRL.RX_ALLMULTI, true));
  const { flags, macs } = f.tapFilter();
  const listed = new Set(hex(macs));
  for (const d of [PRIMARY, UNI1, UNI2, OTHER_UNI, MC1, MC2, MC_OTHER, BCAST]) {
    if (!f.accepts(d, -1)) continue;
    const covered = listed.has(hex(d)[0]) || (d[0] & 1 && flags & TUN_FLT_ALLMULTI);
    t.truthy(covered, `${hex(d)[0]} accepted by the guest filter but dropped by the TAP filter`);
  }
});
