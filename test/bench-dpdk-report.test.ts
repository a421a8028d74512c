// The DPDK bench case's arithmetic, without DPDK: the order of a round's
// trials (each back end's split and packed back to back, which goes first
// alternating), the per-round packed / split pairs, their median and range,
// and the target and table lines built from them.

import test from 'ava';

import {
  dpdkCaseUnavailable,
  DpdkBackend,
  DpdkLayout,
  DpdkRoundSamples,
  dpdkResultsOf,
  dpdkRoundOrder,
  DpdkSample,
  dpdkTable,
  dpdkTargets,
  dpdkTrialCount,
  geometricSpread,
} from '../bench/dpdk';

/** A sample of `fps` frames/s over one second, `cpuNs` back-end CPU per frame. */
const sample = (fps: number, cpuNs = 1000): DpdkSample => ({ frames: fps, bytes: fps * 64, wallNs: 1e9, backendCpuNs: fps * cpuNs });

test('a round runs each back end split and packed back to back; the first layout alternates, the first back end rotates', (t) => {
  const r0 = dpdkRoundOrder(0);
  const r1 = dpdkRoundOrder(1);
  t.deepEqual(r0, [
    ['vhost-tap', 'split'],
    ['vhost-tap', 'packed'],
    ['dpdk', 'split'],
    ['dpdk', 'packed'],
  ]);
  t.deepEqual(r1, [
    ['dpdk', 'packed'],
    ['dpdk', 'split'],
    ['vhost-tap', 'packed'],
    ['vhost-tap', 'split'],
  ]);
  // Over any two rounds, every combination runs once first-of-its-pair and once second.
  for (const b of ['vhost-tap', 'dpdk'] as DpdkBackend[]) {
    const pos = (order: [DpdkBackend, DpdkLayout][], l: DpdkLayout): number => order.findIndex(([x, y]) => x === b && y === l);
    t.true(pos(r0, 'split') < pos(r0, 'packed'));
    t.true(pos(r1, 'packed') < pos(r1, 'split'));
  }
});

test('the progress line counts every trial the case will run: two directions, each size, each round, each runnable back end and layout', (t) => {
  // On a machine without DPDK the case runs nothing; with it, both back ends run both layouts.
  const perRound = dpdkCaseUnavailable() ? 0 : 4;
  t.is(dpdkTrialCount(5, [64, 1514]), 2 * 2 * 5 * perRound);
  t.is(dpdkTrialCount(3, [1514]), 2 * 1 * 3 * perRound);
});

test('packed / split: one ratio per round from that round\'s pair, their median and range, beside the ratio of the medians', (t) => {
  // Split's rounds swing (as on a shared machine), each packed round tracks its own split round.
  const samples: DpdkRoundSamples = {
    split: { 'vhost-tap': [sample(800e3), sample(1200e3), sample(1000e3), sample(900e3), sample(1100e3)], dpdk: [sample(700e3, 1400), sample(700e3, 1400)] },
    packed: { 'vhost-tap': [sample(840e3), sample(1140e3), sample(1050e3), sample(990e3), sample(1100e3)], dpdk: [sample(770e3, 1300), sample(630e3, 1300)] },
  };
  const [split, packed] = dpdkResultsOf('tx', 1514, 5, samples);
  t.is(split.layout, 'split');
  t.is(packed.layout, 'packed');
  t.is(split.packedVsSplit, undefined, 'the ratio lives on the packed result');
  const v = packed.packedVsSplit!['vhost-tap']!;
  t.deepEqual(
    v.rounds.map((x) => Number(x.toFixed(3))),
    [1.05, 0.95, 1.05, 1.1, 1],
  );
  t.is(Number(v.median.toFixed(3)), 1.05);
  t.is(Number(v.min.toFixed(3)), 0.95);
  t.is(Number(v.max.toFixed(3)), 1.1);
  // Medians 1000k split and 1050k packed: 1.05 here too, but from different rounds.
  t.is(Number(v.ofMedians.toFixed(3)), 1.05);
  // exp(mean of the logs) and exp(mean ± t(0.975, 4 df) · sd / √5) over the logs, worked out by hand.
  t.is(Number(v.geomean.toFixed(4)), 1.0287);
  t.deepEqual(
    v.interval95!.map((x) => Number(x.toFixed(3))),
    [0.96, 1.103],
  );
  const d = packed.packedVsSplit!.dpdk!;
  t.deepEqual(
    d.rounds.map((x) => Number(x.toFixed(3))),
    [1.1, 0.9],
  );
  t.is(Number(split.vsDpdk!.frames.toFixed(3)), Number((1000 / 700).toFixed(3)));

  const target = dpdkTargets([split, packed], 5, 3).find((x) => x.name.includes('packed vs split'))!;
  t.is(target.measured, v.median);
  t.true(target.met);
  t.regex(target.note!, /rounds 0\.95–1\.10×, ratio of medians 1\.05×, geometric mean 1\.03×, 95% 0\.96–1\.10; DPDK's back end on the same driver: 1\.00×/);
  const lines = dpdkTable([split, packed]).join('\n');
  t.regex(lines, /medians of 5 round\(s\)/);
  t.regex(lines, /guest → TAP\s+1514 B\s+vhost-tap vhost-user 1\.05× \[0\.95–1\.10\] \(medians 1\.05×; geometric mean 1\.03×, 95% 0\.96–1\.10\)/);
});

test('packed / split: a round whose split trial moved nothing gives no ratio; a median below 1 is not met', (t) => {
  const samples: DpdkRoundSamples = {
    split: { 'vhost-tap': [sample(0), sample(1000e3), sample(1000e3)] },
    packed: { 'vhost-tap': [sample(900e3), sample(950e3), sample(900e3)] },
  };
  const results = dpdkResultsOf('rx', 64, 3, samples);
  const v = results[1].packedVsSplit!['vhost-tap']!;
  t.is(v.rounds.length, 2);
  t.true(v.rounds.every(Number.isFinite));
  t.is(Number(v.median.toFixed(3)), 0.925);
  const target = dpdkTargets(results, 3, 3).find((x) => x.name.includes('packed vs split'))!;
  t.false(target.met);
  t.is(dpdkTargets(results, 2, 3).find((x) => x.name.includes('packed vs split'))!.met, null, 'no verdict from 2 rounds');
  t.true(target.name.startsWith('DPDK virtio-user TAP → guest 64 B'));
});

test('packed / split: the geometric mean has an interval from two rounds on, widening with fewer rounds; equal ratios give none wider than themselves', (t) => {
  t.deepEqual(geometricSpread([0.93]), { geomean: 0.93 }, 'one round: no interval');
  t.deepEqual(geometricSpread([1.01, 0, 0.99]), { geomean: 0 }, 'a round with no packed frames: no logarithm, no interval (not NaN)');
  // Two rounds, 0.9 and 0.95: t(0.975, 1 df) = 12.706, so the interval spans parity many times over.
  const two = geometricSpread([0.9, 0.95]);
  t.is(Number(two.geomean.toFixed(4)), 0.9247);
  t.deepEqual(
    two.interval95!.map((x) => Number(x.toFixed(3))),
    [0.656, 1.304],
  );
  const same = geometricSpread([1.02, 1.02, 1.02]);
  t.is(Number(same.interval95![0].toFixed(6)), 1.02);
  t.is(Number(same.interval95![1].toFixed(6)), 1.02);
  // 40 rounds (past the t table): the same spread of ratios gives a narrower interval than 5 rounds.
  const five = [1.05, 0.95, 1.05, 1.1, 1];
  const forty = Array.from({ length: 8 }, () => five).flat();
  const w = (x: [number, number]): number => x[1] - x[0];
  t.true(w(geometricSpread(forty).interval95!) < w(geometricSpread(five).interval95!) / 2);
  t.true(geometricSpread(forty).interval95![0] > 1, 'forty rounds of these ratios tell packed ahead');
});

test('packed / split: without a packed run (a back end that does not offer it) nothing is claimed', (t) => {
  const samples: DpdkRoundSamples = { split: { dpdk: [sample(700e3)] }, packed: { dpdk: [sample(700e3)] } };
  const results = dpdkResultsOf('tx', 64, 1, samples);
  const target = dpdkTargets(results, 1, 1).find((x) => x.name.includes('packed vs split'))!;
  t.is(target.measured, null);
  t.is(target.met, null);
});
