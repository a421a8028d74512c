// The public API of vhost-tap: the device, its errors, the virtio constants,
// and the two notification helpers that work inside worker_threads Workers.

import { InvalidArgumentError, native } from './errors';
import { addon } from './native';

export { VirtioNetDevice } from './device';
export type { VirtioNetDeviceOptions, DeviceStats, QueueStats } from './device';
export type { Capabilities } from './features';
export {
  VhostTapError,
  InvalidArgumentError,
  DeviceStateError,
  PermissionError,
  NamespaceError,
  TapError,
  VirtioNetError,
} from './errors';
export * from './virtio';

/** Largest fd and timeout the kernel's int arguments take. */
const INT32_MAX = 0x7fffffff;

function checkFd(fd: unknown): number {
  if (!Number.isInteger(fd) || (fd as number) < 0 || (fd as number) > INT32_MAX) throw new InvalidArgumentError(`expected an eventfd number, got ${String(fd)}`);
  return fd as number;
}

/** Guest → device doorbell: writes the kick eventfd. Usable from any thread. */
export function kick(fd: number): void {
  const f = checkFd(fd);
  native(`eventfd ${f}`, () => addon().kick(f));
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
    const list = fds.map(checkFd);
    return native('waitCall', () => addon().waitCall(list, timeoutMs));
  }
  const one = checkFd(fds);
  return native('waitCall', () => addon().waitCall([one], timeoutMs)) !== 0;
}
