// The public API of vhost-tap: the device, its errors, the virtio constants,
// the notification helpers that work inside worker_threads Workers, and a
// plain TAP (TapQueues) for tools that do their own I/O.

import { convert, InvalidArgumentError } from './errors';
import { addon } from './native';

export { VirtioNetDevice } from './device';
export type { VirtioNetDeviceOptions, VirtioNetDeviceEvents, QueueSetup, DeviceStats, QueueStats } from './device';
export type { GuestMemory, MemoryRegion, WasmMemoryLike } from './memory';
export type { RxFilterState } from './rxfilter';
export type { Capabilities } from './features';
export { HASH_TYPE, HASH_REPORT, HDR_HASH, RSS_MAX_KEY_SIZE, RSS_MAX_INDIRECTION_TABLE_LENGTH, SUPPORTED_HASH_TYPES, encodeRssConfig, encodeHashConfig } from './rss';
export type { RssConfig } from './rss';
export { TapQueues } from './tap';
export { VhostUserServer } from './vhost-user/server';
export type { VhostUserServerOptions, VhostUserServerStats, VhostUserServerEvents } from './vhost-user/server';
export type { Refusal } from './vhost-user/session';
export { prometheusText, serveMetrics, parseMetricsAddress, DROP_NAMES } from './metrics';
export type { MetricsSnapshot, MetricsEndpoint, MetricsAddress, VhostUserSessionState } from './metrics';
export type { TapQueuesOptions } from './tap';
export {
  VhostTapError,
  InvalidArgumentError,
  DeviceStateError,
  PermissionError,
  NamespaceError,
  TapError,
  VirtioNetError,
  VhostUserError,
} from './errors';
export * from './virtio';

/** Largest fd and timeout the kernel's int arguments take. */
const INT32_MAX = 0x7fffffff;

function checkFd(fd: unknown): number {
  if (!Number.isInteger(fd) || (fd as number) < 0 || (fd as number) > INT32_MAX) throw new InvalidArgumentError(`expected an eventfd number, got ${String(fd)}`);
  return fd as number;
}

/**
 * A new eventfd (non-blocking, close-on-exec) for kick()/waitCall(), for embedders that wire
 * their own notifications (a device's own are in dev.notifier()). Close it with fs.closeSync.
 */
export function eventfd(): number {
  return addon().eventfd();
}

/** Guest → device doorbell: writes the kick eventfd. Usable from any thread. */
export function kick(fd: number): void {
  const f = checkFd(fd);
  // A hot path (every doorbell): no closure or message unless it fails.
  try {
    addon().kick(f);
  } catch (e) {
    throw convert(`eventfd ${f}`, e);
  }
}

/**
 * Blocks the calling thread (meant for a Worker, like a halted vCPU) until a call
 * eventfd fires or `timeoutMs` passes (-1: forever). With one fd returns true when it
 * fired; with an array returns a bit mask of those that fired (0 on timeout).
 */
export function waitCall(fd: number, timeoutMs: number): boolean;
export function waitCall(fds: number[], timeoutMs: number): number;
export function waitCall(fds: number | number[], timeoutMs: number): boolean | number {
  if (!Number.isInteger(timeoutMs) || timeoutMs < -1 || timeoutMs > INT32_MAX) {
    throw new InvalidArgumentError(`timeoutMs must be an integer from -1 to ${INT32_MAX}, got ${timeoutMs}`);
  }
  if (Array.isArray(fds)) {
    if (fds.length === 0 || fds.length > 31) throw new InvalidArgumentError('waitCall takes 1 to 31 eventfds');
    // Checked in place: a guest's vCPU loop calls this per sleep, and a copy per call is garbage per call.
    for (let i = 0; i < fds.length; i++) checkFd(fds[i]);
    try {
      return addon().waitCall(fds, timeoutMs);
    } catch (e) {
      throw convert('waitCall', e);
    }
  }
  const one = checkFd(fds);
  try {
    return addon().waitCall([one], timeoutMs) !== 0;
  } catch (e) {
    throw convert('waitCall', e);
  }
}
