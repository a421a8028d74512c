// Builds the initramfs of the test guest from what the machine has installed,
// without network access: busybox-static, the guest kernel's virtio_net and
// virtio_pci modules with their dependencies (from /lib/modules, decompressed),
// ethtool with the libraries it links, the init script and the data pattern.
// The archive (newc cpio, gzip) is cached under build/linux-guest/ by kernel
// version and by a hash of everything that goes into it.

import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { gunzipSync, gzipSync } from 'node:zlib';

import { initScript, MODULE_DIR, PATTERN_PATH } from './init';
import { pattern } from './pattern';

/** The guest kernel and its initramfs, ready for `qemu -kernel K -initrd I`. */
export interface GuestImage {
  kernel: string;
  initrd: string;
  /** Kernel release, e.g. '6.1.0-57-amd64' (its modules come from /lib/modules/<release>). */
  release: string;
  /** Whether ethtool is inside (it is when the host has it). */
  ethtool: boolean;
  /** Modules the init loads, in load order. */
  modules: string[];
}

/** Modules whose drivers the guest needs: the PCI transport and the network driver; their dependencies come from modules.dep. */
const ROOT_MODULES = ['virtio_pci', 'virtio_net'];

const BUSYBOX = '/bin/busybox';

/** Default cache: build/linux-guest/ of the package (dist/host/linux-guest/ → ../../../build). */
export const DEFAULT_CACHE_DIR = path.join(__dirname, '..', '..', '..', 'build', 'linux-guest');

/** Why the guest cannot be built here, as an Error that says what to install. */
export class GuestImageError extends Error {}

/**
 * The newest /boot/vmlinuz-* whose modules are installed (VT_GUEST_KERNEL=/path/to/vmlinuz-RELEASE
 * picks one). The host's own kernel does not matter: the guest runs the packaged one.
 */
export function findKernel(): { kernel: string; release: string } {
  const forced = process.env.VT_GUEST_KERNEL;
  const candidates = forced
    ? [forced]
    : fs
        .readdirSync('/boot')
        .filter((f) => f.startsWith('vmlinuz-'))
        .map((f) => path.join('/boot', f))
        .sort(compareReleases)
        .reverse();
  for (const kernel of candidates) {
    const release = path.basename(kernel).replace(/^vmlinuz-/, '');
    if (fs.existsSync(kernel) && fs.existsSync(path.join('/lib/modules', release, 'modules.dep'))) return { kernel, release };
  }
  throw new GuestImageError(
    forced
      ? `VT_GUEST_KERNEL=${forced}: no such kernel, or no /lib/modules/<release>/modules.dep for it`
      : 'no guest kernel: need /boot/vmlinuz-RELEASE with /lib/modules/RELEASE (apt-get install linux-image-amd64)',
  );
}

function compareReleases(a: string, b: string): number {
  const num = (s: string): number[] => (s.match(/\d+/g) ?? []).map(Number);
  const x = num(a);
  const y = num(b);
  for (let i = 0; i < Math.max(x.length, y.length); i++) if ((x[i] ?? -1) !== (y[i] ?? -1)) return (x[i] ?? -1) - (y[i] ?? -1);
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * Load order for `roots` (dependencies first) from modules.dep; modules built into the
 * kernel (modules.builtin) are left out. Returns paths relative to /lib/modules/<release>.
 */
export function moduleLoadOrder(modulesDep: string, builtin: string, roots: string[]): string[] {
  const deps = new Map<string, string[]>();
  const byName = new Map<string, string>();
  for (const line of modulesDep.split('\n')) {
    const i = line.indexOf(':');
    if (i < 0) continue;
    const mod = line.slice(0, i).trim();
    deps.set(mod, line.slice(i + 1).trim().split(/\s+/).filter(Boolean));
    byName.set(moduleName(mod), mod);
  }
  const builtinNames = new Set(builtin.split('\n').filter(Boolean).map(moduleName));
  const order: string[] = [];
  const seen = new Set<string>();
  const visit = (mod: string, chain: string[]): void => {
    if (seen.has(mod)) return;
    if (chain.includes(mod)) throw new GuestImageError(`modules.dep has a dependency cycle: ${[...chain, mod].join(' -> ')}`);
    for (const d of deps.get(mod) ?? []) visit(d, [...chain, mod]);
    seen.add(mod);
    order.push(mod);
  };
  for (const r of roots) {
    const mod = byName.get(r);
    if (mod) visit(mod, []);
    else if (!builtinNames.has(r)) throw new GuestImageError(`module ${r} is neither in modules.dep nor built in`);
  }
  return order;
}

/** 'kernel/drivers/net/virtio_net.ko.xz' → 'virtio_net' (modprobe treats - and _ alike). */
function moduleName(p: string): string {
  return path.basename(p).replace(/\.ko(\.(xz|zst|gz))?$/, '').replace(/-/g, '_');
}

function readModule(file: string): Buffer {
  if (file.endsWith('.ko')) return fs.readFileSync(file);
  if (file.endsWith('.ko.gz')) return gunzipSync(fs.readFileSync(file));
  const [cmd, args] = file.endsWith('.ko.xz')
    ? // busybox-static (which the guest needs anyway) has xzcat; no xz-utils required.
      [BUSYBOX, ['xzcat', file]]
    : file.endsWith('.ko.zst')
      ? ['zstd', ['-dc', file]]
      : ['', []];
  if (!cmd) throw new GuestImageError(`${file}: unknown module compression`);
  try {
    return execFileSync(cmd, args as string[], { maxBuffer: 64 << 20, stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    throw new GuestImageError(`cannot decompress ${file} with ${cmd}: ${(e as Error).message}`);
  }
}

/** ethtool and the shared objects `ldd` lists for it (the files behind the symlinks), or null without ethtool. */
function ethtoolFiles(): { path: string; source: string; data: Buffer }[] | null {
  let bin: string;
  try {
    bin = execFileSync('sh', ['-c', 'command -v ethtool'], { encoding: 'utf8' }).trim();
  } catch {
    return null;
  }
  if (!bin) return null;
  const out = execFileSync('ldd', [bin], { encoding: 'utf8' });
  const files = [{ path: '/bin/ethtool', source: bin, data: fs.readFileSync(bin) }];
  for (const line of out.split('\n')) {
    // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
    const m = line.match(/(?:=>\s*)?(\/\S+)\s+\(0x/);
    if (m) files.push({ path: m[1], source: m[1], data: fs.readFileSync(m[1]) });
  }
  return files;
}

/**
 * The guest's kernel and initramfs; builds the initramfs unless the cache has it.
 * Safe to call from several processes at once (write to a temporary file, then rename).
 */
export function buildGuestImage(cacheDir = DEFAULT_CACHE_DIR): GuestImage {
  if (!fs.existsSync(BUSYBOX)) throw new GuestImageError(`${BUSYBOX} is missing (apt-get install busybox-static)`);
  const { kernel, release } = findKernel();
  const modRoot = path.join('/lib/modules', release);
  const builtinFile = path.join(modRoot, 'modules.builtin');
  const order = moduleLoadOrder(
    fs.readFileSync(path.join(modRoot, 'modules.dep'), 'utf8'),
    fs.existsSync(builtinFile) ? fs.readFileSync(builtinFile, 'utf8') : '',
    ROOT_MODULES,
  );
  const modules = order.map((m) => moduleName(m));
  const ethtool = ethtoolFiles();
  const script = initScript(modules);

  // Everything that decides the archive's bytes goes into the key.
  const h = createHash('sha256');
  h.update(script);
  for (const f of [BUSYBOX, ...order.map((m) => path.join(modRoot, m)), ...(ethtool ?? []).map((e) => e.source)]) {
    const st = fs.statSync(f);
    h.update(`${f}:${st.size}:${st.mtimeMs}\n`);
  }
  h.update(pattern());
  const initrd = path.join(cacheDir, `${release}-${h.digest('hex').slice(0, 12)}.cpio.gz`);
  if (fs.existsSync(initrd)) return { kernel, initrd, release, ethtool: ethtool !== null, modules };

  const cpio = new CpioWriter();
  for (const d of ['/bin', '/dev', '/proc', '/sys', '/tmp', '/lib', MODULE_DIR]) cpio.dir(d);
  cpio.device('/dev/console', 0o600, 5, 1);
  cpio.file('/bin/busybox', fs.readFileSync(BUSYBOX), 0o755);
  cpio.symlink('/bin/sh', 'busybox');
  cpio.file('/init', Buffer.from(script), 0o755);
  order.forEach((m) => cpio.file(`${MODULE_DIR}/${moduleName(m)}.ko`, readModule(path.join(modRoot, m)), 0o644));
  for (const e of ethtool ?? []) cpio.file(e.path, e.data, 0o755);
  cpio.file(PATTERN_PATH, pattern(), 0o644);
  fs.mkdirSync(cacheDir, { recursive: true });
  const tmp = `${initrd}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, gzipSync(cpio.finish()));
  fs.renameSync(tmp, initrd);
  return { kernel, initrd, release, ethtool: ethtool !== null, modules };
}

/** A newc ("070701") cpio archive, the format the kernel unpacks as initramfs. */
export class CpioWriter {
  private readonly parts: Buffer[] = [];
  private ino = 1;
  private readonly dirs = new Set<string>(['']);

  dir(p: string, mode = 0o755): void {
    const rel = this.rel(p);
    if (this.dirs.has(rel)) return;
    this.parentDirs(rel);
    this.dirs.add(rel);
    this.entry(rel, 0o040000 | mode, Buffer.alloc(0));
  }

  file(p: string, data: Buffer, mode: number): void {
    const rel = this.rel(p);
    this.parentDirs(rel);
    this.entry(rel, 0o100000 | mode, data);
  }

  symlink(p: string, target: string): void {
    const rel = this.rel(p);
    this.parentDirs(rel);
    this.entry(rel, 0o120000 | 0o777, Buffer.from(target));
  }

  device(p: string, mode: number, major: number, minor: number): void {
    const rel = this.rel(p);
    this.parentDirs(rel);
    this.entry(rel, 0o020000 | mode, Buffer.alloc(0), major, minor);
  }

  finish(): Buffer {
    this.entry('TRAILER!!!', 0, Buffer.alloc(0));
    return Buffer.concat(this.parts);
  }

  private rel(p: string): string {
    return p.replace(/^\/+/, '');
  }

  private parentDirs(rel: string): void {
    const parent = path.posix.dirname(rel);
    if (parent !== '.' && !this.dirs.has(parent)) this.dir(parent);
  }

  private entry(name: string, mode: number, data: Buffer, rdevMajor = 0, rdevMinor = 0): void {
    const nameBytes = Buffer.from(`${name}\0`);
    const fields = [this.ino++, mode, 0, 0, mode & 0o040000 ? 2 : 1, 0, data.length, 0, 0, rdevMajor, rdevMinor, nameBytes.length, 0];
    const header = Buffer.from(`070701${fields.map((v) => v.toString(16).padStart(8, '0')).join('')}`, 'latin1');
    this.parts.push(header, nameBytes, pad4(header.length + nameBytes.length), data, pad4(data.length));
  }
}

function pad4(n: number): Buffer {
  return Buffer.alloc((4 - (n % 4)) % 4);
}
