// Typed errors of the public API, and the one place where errors thrown by
// the addon (plain Errors with an errno `code`) become typed errors.

/** Base class: every error vhost-tap throws or emits is one of these. `code` is stable. */
export class VhostTapError extends Error {
  constructor(
    message: string,
    readonly code: string,
  ) {
    super(message);
    this.name = new.target.name;
  }
}

/** Bad API input: an unknown option, a value out of range. The message says which and what is allowed. */
export class InvalidArgumentError extends VhostTapError {
  constructor(message: string) {
    super(message, 'ERR_VHOST_INVALID_ARG');
  }
}

/** An operation not allowed in the device's current state (e.g. setQueue after DRIVER_OK). */
export class DeviceStateError extends VhostTapError {
  constructor(message: string) {
    super(message, 'ERR_VHOST_STATE');
  }
}

/** The process lacks CAP_NET_ADMIN (creating a TAP, entering a namespace). */
export class PermissionError extends VhostTapError {
  constructor(message: string) {
    super(message, 'ERR_VHOST_PERMISSION');
  }
}

/** A network namespace that does not exist. */
export class NamespaceError extends VhostTapError {
  constructor(message: string) {
    super(message, 'ERR_VHOST_NETNS');
  }
}

/** The TAP device or kernel refused something (unsupported feature, busy name, too many queues). */
export class TapError extends VhostTapError {
  constructor(
    message: string,
    readonly errno?: string,
  ) {
    super(message, 'ERR_VHOST_TAP');
  }
}

/**
 * The guest broke a virtio rule on a queue: the queue stopped and the device set
 * DEVICE_NEEDS_RESET. Emitted as 'needs-reset', never thrown at the guest's whim.
 */
export class VirtioNetError extends VhostTapError {
  constructor(
    message: string,
    readonly queue: number,
    readonly rule: string,
  ) {
    super(message, 'ERR_VHOST_GUEST_RULE');
  }
}

/** The vhost-user socket failed (bind, connect, send), or a front end was refused. `errno` names a failed system call. */
export class VhostUserError extends VhostTapError {
  constructor(
    message: string,
    readonly errno?: string,
  ) {
    super(message, 'ERR_VHOST_USER');
  }
}

interface AddonErrorLike {
  message: string;
  code?: string;
  syscall?: string;
}

/**
 * Runs `fn` (a call into the addon) and converts what it throws. `what` names the
 * object being worked on for messages, e.g. "TAP 'vt0'".
 */
export function native<T>(what: string, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw convert(what, e);
  }
}

export function convert(what: string, e: unknown): Error {
  if (e instanceof VhostTapError) return e;
  const err = e as AddonErrorLike;
  if (!err || typeof err.message !== 'string') return new VhostTapError(`${what}: ${String(e)}`, 'ERR_VHOST_INTERNAL');
  switch (err.code) {
    case 'EPERM':
    case 'EACCES':
      return new PermissionError(`${err.message} (${what} needs CAP_NET_ADMIN: run as root or grant the capability)`);
    case 'EVHOST_BADARG':
      return new InvalidArgumentError(`${what}: ${err.message}`);
    case 'EVHOST_STATE':
      return new DeviceStateError(`${what}: ${err.message}`);
    case 'ENOENT':
      if (err.syscall === 'open' && /netns|namespace/i.test(err.message)) return new NamespaceError(err.message);
      return new TapError(`${what}: ${err.message}`, err.code);
    case 'EBADFD':
      // tun's answer on a queue fd whose device is gone.
      return new TapError(`${what}: ${err.message} (the TAP device no longer exists, deleted from outside? Close this device and create a new one)`, err.code);
    case undefined:
      // No errno: not something the kernel or the TAP said, but a JavaScript error raised
      // inside the addon (a RangeError from a typed array, a TypeError from a bad value).
      return new VhostTapError(`${what}: ${err.message}`, 'ERR_VHOST_INTERNAL');
    default:
      return new TapError(`${what}: ${err.message}`, err.code);
  }
}
