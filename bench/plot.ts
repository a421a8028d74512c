// Hand-written SVG chart of a bench report: frames/s by frame size (one
// queue pair) and Gbps by size including the 64 KB super-frames and the TCP
// cases, grouped bars per contender. The Gbps panel is log-scaled: 64 B
// frames (~0.2 Gbps) and super-frames (~100 Gbps) differ by three orders of
// magnitude, and on a linear axis the small sizes are invisible. No
// dependencies; the output is committed as bench/results.svg.

import { CONTENDER_NAMES } from './contenders';
import type { BenchReport } from './run';

const KEYS = ['vhost', 'vhost-readv', 'vhost-sqpoll', 'vhost-coal', 'vhost-rss', 'c', 'c-uring', 'node'];
const COLORS: Record<string, string> = { vhost: '#1f77b4', 'vhost-readv': '#9ecae1', 'vhost-sqpoll': '#6baed6', 'vhost-coal': '#08519c', 'vhost-rss': '#17becf', c: '#7f7f7f', 'c-uring': '#2ca02c', node: '#ff7f0e' };
/** The table's names, so chart and table call each contender the same. */
const NAMES: Record<string, string> = CONTENDER_NAMES;

interface Group {
  label: string;
  values: Partial<Record<string, number>>;
}

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

function niceMax(v: number): number {
  if (v <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function panel(x0: number, y0: number, w: number, h: number, title: string, unit: string, groups: Group[], log: boolean): string {
  const keys = KEYS.filter((k) => groups.some((g) => g.values[k] !== undefined));
  const all = groups.flatMap((g) => keys.map((k) => g.values[k] ?? 0)).filter((v) => v > 0);
  const max = log ? 10 ** Math.ceil(Math.log10(Math.max(1e-9, ...all))) : niceMax(Math.max(0, ...all));
  const min = log ? 10 ** Math.floor(Math.log10(Math.min(max / 10, ...all))) : 0;
  const decades = log ? Math.round(Math.log10(max / min)) : 5;
  // Fraction of the axis height for a value.
  const frac = (v: number): number => (log ? Math.max(0, Math.log10(v / min) / decades) : v / max);
  const left = 56;
  const bottom = 40;
  const pw = w - left - 10;
  const ph = h - bottom - 30;
  const out: string[] = [];
  out.push(`<text x="${x0 + w / 2}" y="${y0 + 18}" text-anchor="middle" font-size="14" font-weight="bold">${esc(title)}</text>`);
  const ticks = log ? decades : 5;
  for (let i = 0; i <= ticks; i++) {
    const v = log ? min * 10 ** i : (max * i) / 5;
    const y = y0 + 30 + ph - (ph * i) / ticks;
    out.push(`<line x1="${x0 + left}" x2="${x0 + left + pw}" y1="${y}" y2="${y}" stroke="#ddd"/>`);
    out.push(`<text x="${x0 + left - 6}" y="${y + 4}" text-anchor="end" font-size="11">${+v.toPrecision(3)}</text>`);
  }
  out.push(`<text transform="translate(${x0 + 14},${y0 + 30 + ph / 2}) rotate(-90)" text-anchor="middle" font-size="12">${esc(unit)}</text>`);
  const gw = pw / Math.max(1, groups.length);
  const bw = (gw * 0.8) / keys.length;
  groups.forEach((g, gi) => {
    const gx = x0 + left + gi * gw + gw * 0.1;
    keys.forEach((k, ki) => {
      const v = g.values[k];
      if (v === undefined) return;
      const bh = ph * frac(v);
      const y = y0 + 30 + ph - bh;
      out.push(`<rect x="${(gx + ki * bw).toFixed(1)}" y="${y.toFixed(1)}" width="${(bw - 2).toFixed(1)}" height="${bh.toFixed(1)}" fill="${COLORS[k]}"><title>${esc(`${NAMES[k]} ${g.label}: ${v.toPrecision(3)} ${unit}`)}</title></rect>`);
    });
    out.push(`<text x="${(gx + gw * 0.4).toFixed(1)}" y="${y0 + 30 + ph + 16}" text-anchor="middle" font-size="11">${esc(g.label)}</text>`);
  });
  out.push(`<line x1="${x0 + left}" x2="${x0 + left + pw}" y1="${y0 + 30 + ph}" y2="${y0 + 30 + ph}" stroke="#333"/>`);
  return out.join('\n');
}

export function renderSvg(report: BenchReport): string {
  const one = report.results.filter((r) => r.queues === 1);
  const pick = (f: (k: string) => number | undefined): Group['values'] => Object.fromEntries(KEYS.map((k) => [k, f(k)]).filter(([, v]) => v !== undefined));
  const frameGroups: Group[] = one.filter((r) => !r.gso).map((r) => ({
    label: `${r.dir.toUpperCase()} ${r.size}`,
    values: pick((k) => {
      const m = r.contenders[k as 'vhost']?.median;
      return m ? m.framesPerSec / 1e6 : undefined;
    }),
  }));
  const gbpsGroups: Group[] = [
    ...one.map((r) => ({ label: `${r.dir.toUpperCase()} ${r.gso ? '64K' : r.size}`, values: pick((k) => r.contenders[k as 'vhost']?.median.gbps) })),
    ...(report.tcp ?? []).map((r) => ({ label: r.tunnelGso === undefined ? `TCP ${r.dir}` : r.case, values: pick((k) => r.contenders[k as 'vhost']?.median.gbps) })),
  ];
  const W = 1100;
  const H = 320;
  const parts: string[] = [];
  parts.push(panel(0, 30, W * 0.42, H, 'frames per second (1 queue pair)', 'Mframes/s', frameGroups, false));
  parts.push(panel(W * 0.42, 30, W * 0.58, H, 'throughput (1 queue pair; log scale)', 'Gbit/s (frame bytes; TCP: payload)', gbpsGroups, true));
  // Four entries per row: seven 260-px entries in one row would run past the chart's width.
  const PER_ROW = 4;
  // Only contenders that ran: a legend entry without bars reads as a result of zero.
  const ran = KEYS.filter((k) => [...frameGroups, ...gbpsGroups].some((g) => g.values[k] !== undefined));
  const rows = Math.max(1, Math.ceil(ran.length / PER_ROW));
  const legend = ran.map((k, i) => {
    const x = 20 + (i % PER_ROW) * 260;
    const y = H + 40 + Math.floor(i / PER_ROW) * 20;
    return `<rect x="${x}" y="${y}" width="12" height="12" fill="${COLORS[k]}"/><text x="${x + 18}" y="${y + 11}" font-size="12">${esc(NAMES[k])}</text>`;
  }).join('\n');
  const m = report.machine;
  const sys = typeof m.getppidNs === 'number' ? `; getppid() ${m.getppidNs.toFixed(0)} ns (syscalls ${m.syscalls})` : '';
  // Two lines: in one, a long CPU model name pushed both ends past the chart's edges.
  const sub = [`${m.model}, ${m.cpus} CPUs, Linux ${m.kernel}, Node ${m.node}${sys}`, `medians of ${report.options.rounds} rounds; TCP: vhost-tap only (no baseline has a guest TCP stack)`];
  return `<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H + 50 + 20 * rows}" viewBox="0 0 ${W} ${H + 50 + 20 * rows}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
<text x="${W / 2}" y="14" text-anchor="middle" font-size="11" fill="#555">${esc(sub[0])}</text>
<text x="${W / 2}" y="28" text-anchor="middle" font-size="11" fill="#555">${esc(sub[1])}</text>
${parts.join('\n')}
${legend}
</svg>
`;
}
