#!/usr/bin/env node
// Builds the C++ addon at install time (the package's "install" script and
// `npm run build:addon-if-stale`) on a machine with only Node, npm and g++.
// A current build/Release/vhost_tap.node: nothing. Else, with make and python3 on
// PATH, `node-gyp rebuild` as before. Else g++ is driven directly, with what
// binding.gyp says for the addon's target (sources, defines, include dirs, flags,
// conditions) so that the source list lives in one place. Plain JavaScript with no
// dependencies: it runs before TypeScript is compiled and before devDependencies exist.
//
//   node scripts/build-addon.js [--force] [--direct]
//     --force   rebuild even when the built addon is newer than its sources
//     --direct  use g++ even when node-gyp could work (how the fallback is tested)
'use strict';

const { spawn, spawnSync, execSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const ROOT = path.join(__dirname, '..');
const TARGET = 'vhost_tap';
const OUT = path.join(ROOT, 'build', 'Release', `${TARGET}.node`);

function fail(msg) {
  console.error(`build-addon: ${msg}`);
  process.exit(1);
}

/** The addon is current when it is newer than binding.gyp and every file in native/. */
function isCurrent() {
  if (!fs.existsSync(OUT)) return false;
  const built = fs.statSync(OUT).mtimeMs;
  const inputs = ['binding.gyp', ...fs.readdirSync(path.join(ROOT, 'native')).map((f) => path.join('native', f))];
  return inputs.every((f) => fs.statSync(path.join(ROOT, f)).mtimeMs <= built);
}

/** The first executable called `name` on PATH, or undefined. */
function which(name) {
  for (const dir of (process.env.PATH || '').split(':')) {
    if (!dir) continue;
    const p = path.join(dir, name);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      if (fs.statSync(p).isFile()) return p;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** node-gyp needs python (it runs gyp) and make (it writes Makefiles). */
function nodeGypCanWork() {
  const python = process.env.PYTHON || process.env.npm_config_python || which('python3') || which('python');
  return Boolean(python && which('make'));
}

function runNodeGyp() {
  let gyp;
  try {
    gyp = require.resolve('node-gyp/bin/node-gyp.js', { paths: [ROOT] });
  } catch {
    gyp = process.env.npm_config_node_gyp;
  }
  if (!gyp) fail('node-gyp was not found (it is a dependency: run npm install)');
  // The running node's own headers, when it has them, so that node-gyp does not download any
  // (a machine may not reach nodejs.org); an npm nodedir setting wins.
  const args = [gyp, 'rebuild'];
  const prefix = path.join(path.dirname(process.execPath), '..');
  if (!process.env.npm_config_nodedir && fs.existsSync(path.join(prefix, 'include', 'node', 'common.gypi'))) {
    args.push(`--nodedir=${path.resolve(prefix)}`);
  }
  console.log(`build-addon: make and python3 found: node-gyp rebuild${args.length > 2 ? ` (${args[2]})` : ''}`);
  const r = spawnSync(process.execPath, args, { cwd: ROOT, stdio: 'inherit' });
  process.exit(r.status === null ? 1 : r.status);
}

// ---- binding.gyp: a Python literal close to JSON ----

/** Parses binding.gyp: `#` comments (outside strings), single-quoted strings, trailing commas. */
function parseGyp(text) {
  let out = '';
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    if (c === '#') {
      while (i < text.length && text[i] !== '\n') i++;
    } else if (c === '"' || c === "'") {
      // A string in either quote style, re-emitted as a JSON string.
      let s = '';
      i++;
      while (i < text.length && text[i] !== c) {
        if (text[i] === '\\' && i + 1 < text.length) {
          s += text[i + 1];
          i += 2;
        } else {
          s += text[i++];
        }
      }
      if (i >= text.length) throw new Error('binding.gyp: unterminated string');
      i++;
      out += JSON.stringify(s);
    } else {
      out += c;
      i++;
    }
  }
  // Trailing commas before ] or }.
  out = out.replace(/,(\s*[\]}])/g, '$1');
  // Python's literals.
  out = out.replace(/\bTrue\b/g, 'true').replace(/\bFalse\b/g, 'false').replace(/\bNone\b/g, 'null');
  return JSON.parse(out);
}

/** gyp's command expansion `<!(cmd)` / `<!@(cmd)`, run by a shell in the package directory as gyp does. */
function expand(value) {
  if (typeof value !== 'string') return value;
  let out = '';
  let i = 0;
  for (;;) {
    const at = value.indexOf('<!', i);
    if (at < 0) return out + value.slice(i);
    const open = value.indexOf('(', at);
    if (open < 0 || !/^<!@?$/.test(value.slice(at, open))) return out + value.slice(i);
    // The command runs to the matching parenthesis (it may hold parentheses of its own).
    let depth = 0;
    let close = open;
    for (; close < value.length; close++) {
      if (value[close] === '(') depth++;
      else if (value[close] === ')' && --depth === 0) break;
    }
    if (depth !== 0) throw new Error(`binding.gyp: unbalanced parentheses in ${value}`);
    // `node` is this node, whatever PATH holds.
    const cmd = value.slice(open + 1, close).replace(/^node\b/, JSON.stringify(process.execPath));
    out += value.slice(i, at) + execSync(cmd, { cwd: ROOT, encoding: 'utf8', shell: '/bin/sh' }).trim();
    i = close + 1;
  }
}

/** Evaluates a gyp condition (a Python expression over string literals and OS): ==, !=, and, or, not, parentheses. */
function evalCondition(expr) {
  const vars = { OS: 'linux' };
  const tokens = [];
  const re = /\s*(?:'([^']*)'|"([^"]*)"|(==|!=|\(|\))|([A-Za-z_][A-Za-z_0-9]*))/y;
  let m;
  const src = expand(expr).trimEnd();
  while (re.lastIndex < src.length && (m = re.exec(src))) {
    if (m[1] !== undefined || m[2] !== undefined) tokens.push({ str: m[1] !== undefined ? m[1] : m[2] });
    else if (m[3]) tokens.push({ op: m[3] });
    else if (['and', 'or', 'not'].includes(m[4])) tokens.push({ op: m[4] });
    else if (m[4] in vars) tokens.push({ str: vars[m[4]] });
    else throw new Error(`binding.gyp: condition uses '${m[4]}', which this builder does not know`);
  }
  if (src.slice(re.lastIndex).trim()) throw new Error(`binding.gyp: cannot evaluate condition ${expr}`);
  let pos = 0;
  const peek = () => tokens[pos];
  const orExpr = () => {
    let v = andExpr();
    while (peek() && peek().op === 'or') { pos++; const r = andExpr(); v = v || r; }
    return v;
  };
  const andExpr = () => {
    let v = notExpr();
    while (peek() && peek().op === 'and') { pos++; const r = notExpr(); v = v && r; }
    return v;
  };
  const notExpr = () => {
    if (peek() && peek().op === 'not') { pos++; return !notExpr(); }
    return cmp();
  };
  const cmp = () => {
    const a = atom();
    if (peek() && (peek().op === '==' || peek().op === '!=')) {
      const op = tokens[pos++].op;
      const b = atom();
      return op === '==' ? a === b : a !== b;
    }
    return Boolean(a);
  };
  const atom = () => {
    const t = tokens[pos++];
    if (!t) throw new Error(`binding.gyp: condition ${expr} ends early`);
    if (t.op === '(') { const v = orExpr(); if ((tokens[pos++] || {}).op !== ')') throw new Error(`binding.gyp: ${expr}: missing )`); return v; }
    if (t.str !== undefined) return t.str;
    throw new Error(`binding.gyp: unexpected '${t.op}' in condition ${expr}`);
  };
  const v = orExpr();
  if (pos !== tokens.length) throw new Error(`binding.gyp: cannot evaluate condition ${expr}`);
  return v;
}

/** Merges a condition's dict into the target the way gyp does for lists: appended ('+' suffix: prepended, '=' replaces). */
function merge(into, from) {
  for (const [key, value] of Object.entries(from)) {
    if (key === 'conditions') continue;
    const base = key.replace(/[+=]$/, '');
    if (Array.isArray(value)) {
      if (key.endsWith('=')) into[base] = [...value];
      else if (key.endsWith('+')) into[base] = [...value, ...(into[base] || [])];
      else into[base] = [...(into[base] || []), ...value];
    } else {
      into[base] = value;
    }
  }
  for (const cond of from.conditions || []) {
    const [expr, yes, no] = cond;
    const branch = evalCondition(expr) ? yes : no;
    if (branch) merge(into, branch);
  }
}

/** The addon's target from binding.gyp, its conditions applied and `!` exclusions removed. */
function readTarget() {
  const gyp = parseGyp(fs.readFileSync(path.join(ROOT, 'binding.gyp'), 'utf8'));
  const raw = (gyp.targets || []).find((t) => t.target_name === TARGET);
  if (!raw) throw new Error(`binding.gyp has no target '${TARGET}'`);
  const t = {};
  merge(t, raw);
  for (const key of Object.keys(t)) {
    if (!key.endsWith('!')) continue;
    const base = key.slice(0, -1);
    if (Array.isArray(t[base])) t[base] = t[base].filter((v) => !t[key].includes(v));
  }
  for (const key of Object.keys(t)) if (Array.isArray(t[key])) t[key] = t[key].map(expand);
  return t;
}

// ---- the direct g++ build ----

/** Node's headers: next to the running node, else where node-gyp keeps them (nodedir, its cache). */
function nodeHeaders() {
  const candidates = [path.join(path.dirname(process.execPath), '..', 'include', 'node')];
  const nodedir = process.env.npm_config_nodedir;
  if (nodedir) candidates.push(path.join(nodedir, 'include', 'node'));
  const version = process.version.slice(1);
  const cache = process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache');
  candidates.push(path.join(cache, 'node-gyp', version, 'include', 'node'));
  candidates.push(path.join(os.homedir(), '.node-gyp', version, 'include', 'node'));
  const dir = candidates.find((d) => fs.existsSync(path.join(d, 'node_api.h')));
  if (!dir) {
    fail(
      `Node's headers (node_api.h) were not found in ${candidates.join(', ')}: ` +
        "install a Node that ships them (nodejs.org's tarball and NodeSource's nodejs have <prefix>/include/node; Debian's own nodejs needs libnode-dev), " +
        'or set npm_config_nodedir to a Node headers tree, or install make and python3 so that node-gyp downloads them.',
    );
  }
  return path.resolve(dir);
}

function run(cmd, args) {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { cwd: ROOT, stdio: ['ignore', 'inherit', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', (err) => resolve({ status: 127, stderr: String(err.message) }));
    child.on('close', (status) => resolve({ status, stderr }));
  });
}

async function buildDirect() {
  // CXX may carry a wrapper or flags ("ccache g++"): its first word is the program.
  const [cxx, ...cxxArgs] = (process.env.CXX || 'g++').trim().split(/\s+/);
  if (!process.env.CXX && !which('g++')) fail('no C++ compiler: install g++ (Debian: apt-get install g++), or set CXX');
  const t = readTarget();
  const headers = nodeHeaders();
  const includes = [headers, ...(t.include_dirs || []).map((d) => path.resolve(ROOT, d))];
  // What node-gyp adds for every Node addon on Linux (its common.gypi), then binding.gyp's own.
  const defines = [
    `NODE_GYP_MODULE_NAME=${TARGET}`,
    'BUILDING_NODE_EXTENSION',
    '_LARGEFILE_SOURCE',
    '_FILE_OFFSET_BITS=64',
    ...(t.defines || []),
  ];
  const excluded = [...(t['cflags!'] || []), ...(t['cflags_cc!'] || [])];
  const cflags = ['-fPIC', '-pthread', '-fno-rtti', '-fno-omit-frame-pointer', ...(t.cflags || []), ...(t.cflags_cc || [])].filter(
    (f) => !excluded.includes(f),
  );
  const ldflags = ['-shared', '-pthread', '-rdynamic', ...(t.ldflags || [])];
  const objDir = path.join(ROOT, 'build', 'Release', 'obj.direct', TARGET);
  fs.mkdirSync(objDir, { recursive: true });

  const sources = t.sources || [];
  const jobs = Math.max(1, Number(process.env.JOBS) || os.cpus().length);
  console.log(`build-addon: no make/python3 for node-gyp: compiling ${sources.length} sources with ${cxx} (${jobs} at a time)`);
  const objects = sources.map((s) => path.join(objDir, s.replace(/\.[^.]+$/, '.o').replace(/[\\/]/g, '_')));
  let next = 0;
  let done = 0;
  let failed;
  const worker = async () => {
    while (next < sources.length && !failed) {
      const i = next++;
      const args = [
        ...cxxArgs,
        ...cflags,
        ...defines.map((d) => `-D${d}`),
        ...includes.map((d) => `-I${d}`),
        '-c',
        path.join(ROOT, sources[i]),
        '-o',
        objects[i],
      ];
      const r = await run(cxx, args);
      if (r.stderr) process.stderr.write(r.stderr);
      if (r.status !== 0) {
        failed = failed || `${cxx} failed on ${sources[i]} (exit ${r.status})`;
        return;
      }
      done++;
      console.log(`  CXX ${sources[i]} (${done}/${sources.length})`);
    }
  };
  await Promise.all(Array.from({ length: Math.min(jobs, sources.length) }, worker));
  if (failed) fail(failed);

  // Linked under a temporary name, then renamed: an interrupted build never leaves a "current" addon.
  const tmp = `${OUT}.tmp-${process.pid}`;
  const r = await run(cxx, [...cxxArgs, '-o', tmp, ...objects, ...ldflags, `-Wl,-soname=${TARGET}.node`, ...(t.libraries || [])]);
  if (r.stderr) process.stderr.write(r.stderr);
  if (r.status !== 0) {
    fs.rmSync(tmp, { force: true });
    fail(`linking ${path.relative(ROOT, OUT)} failed (exit ${r.status})`);
  }
  fs.renameSync(tmp, OUT);
  console.log(`  LINK ${path.relative(ROOT, OUT)}`);
}

async function main() {
  const args = process.argv.slice(2);
  const force = args.includes('--force');
  const direct = args.includes('--direct');
  if (!force && isCurrent()) return;
  if (!direct && nodeGypCanWork()) runNodeGyp();
  try {
    await buildDirect();
  } catch (err) {
    fail(err.message);
  }
}

if (require.main === module) main();

module.exports = { parseGyp, evalCondition, readTarget };
