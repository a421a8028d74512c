// The vhost-user Unix socket in TypeScript: listening for a front end,
// connecting to one, and a connection whose messages (decoded natively, fds
// attached) arrive as callbacks on this thread's event loop. Addon errors
// become typed errors here, once.

import * as fs from 'node:fs';

import { InvalidArgumentError, PermissionError, VhostTapError, VhostUserError } from '../errors';
import { addon, NativeVuCallbacks, NativeVuConnection } from '../native';

interface AddonErrorLike {
  message: string;
  code?: string;
}

/** Runs an addon call for the vhost-user socket and converts what it throws. */
export function vu<T>(what: string, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    if (e instanceof VhostTapError) throw e;
    const err = e as AddonErrorLike;
    const msg = `${what}: ${err?.message ?? String(e)}`;
    switch (err?.code) {
      case 'EVHOST_BADARG':
        throw new InvalidArgumentError(msg);
      case 'EPERM':
      case 'EACCES':
        throw new PermissionError(`${msg} (check the socket path's permissions)`);
      default:
        throw new VhostUserError(msg, err?.code);
    }
  }
}

/** A connection the protocol is spoken on; wraps the native one with typed errors. */
export class VhostUserConnection {
  private readonly c: NativeVuConnection;

  /**
   * Takes ownership of `fd` (a connected AF_UNIX stream socket). Sends never wait for the
   * peer; one that reads nothing for `sendStallMs` (default 5000) is dropped (`closed`).
   */
  constructor(fd: number, role: 'back-end' | 'front-end', callbacks: NativeVuCallbacks, opts: { sendStallMs?: number } = {}) {
    this.c = vu('vhost-user connection', () => new (addon().vhostUser.Connection)(fd, role, callbacks, opts));
  }

  get fd(): number {
    return this.c.fd;
  }

  get open(): boolean {
    return this.c.fd >= 0;
  }

  replyU64(request: number, value: bigint): void {
    vu('vhost-user reply', () => this.c.replyU64(request, value));
  }

  replyState(request: number, index: number, num: number): void {
    vu('vhost-user reply', () => this.c.replyState(request, index, num));
  }

  sendRaw(bytes: Uint8Array, fds?: number[]): void {
    vu('vhost-user send', () => this.c.sendRaw(bytes, fds));
  }

  /** Stops (or resumes) reading messages; what the peer sends waits in the socket. */
  pauseReading(paused: boolean): void {
    this.c.pauseReading(paused);
  }

  /** Bytes waiting for the peer to read. */
  get queuedBytes(): number {
    return this.c.queuedBytes;
  }

  close(): void {
    this.c.close();
  }
}

/**
 * A listening socket at `path`; `onConnection(fd)` gets each front end that connects (the
 * caller owns the fd). A socket file left by a back end that is gone (connecting to it is
 * refused) is removed first; a live one, or a file that is not a socket, is an error.
 * pause() stops taking connections (they wait in the backlog) until resume(). close() stops
 * listening and removes the socket file.
 */
export class VhostUserListener {
  private readonly fd: number;
  private readonly watcher: { close(): void; pause(): void; resume(): void };
  private closed = false;
  private paused = false;

  constructor(
    readonly path: string,
    onConnection: (fd: number) => void,
    onError: (e: Error) => void,
    access: SocketAccess = {},
  ) {
    const a = addon();
    this.fd = listenReplacingStale(path, access);
    try {
      this.watcher = vu(`listening on ${path}`, () =>
        new a.vhostUser.Listener(this.fd, (error) => {
          if (error) return onError(new VhostUserError(`listening on ${path}: ${error}`));
          while (!this.paused && !this.closed) {
            let fd: number;
            try {
              fd = vu(`accepting on ${path}`, () => a.vhostUser.accept(this.fd));
            } catch (e) {
              return onError(e as Error);
            }
            if (fd < 0) return;
            onConnection(fd);
          }
        }),
      );
    } catch (e) {
      a.close(this.fd);
      throw e;
    }
  }

  /** Stops taking connections; front ends that connect meanwhile wait in the backlog. */
  pause(): void {
    if (this.closed || this.paused) return;
    this.paused = true;
    this.watcher.pause();
  }

  /** Takes connections again (one waiting in the backlog comes in at once). */
  resume(): void {
    if (this.closed || !this.paused) return;
    this.paused = false;
    this.watcher.resume();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.watcher.close();
    addon().close(this.fd);
    try {
      fs.unlinkSync(this.path);
    } catch {
      // Already removed.
    }
  }
}

/** Who may connect: the socket file's mode and owner, set before it listens. */
export interface SocketAccess {
  /** Permission bits, e.g. 0o660 (default: 0o777 minus the umask). */
  mode?: number;
  /** Owner user id (changing it needs CAP_CHOWN). */
  uid?: number;
  /** Group id (root, or an owner in that group). */
  gid?: number;
}

/** Binds and listens at `path`; a stale socket file there (nobody accepts on it) is removed first. */
function listenReplacingStale(path: string, access: SocketAccess): number {
  const a = addon();
  const listen = (): number => a.vhostUser.listen(path, access);
  try {
    return vu(`listening on ${path}`, listen);
  } catch (e) {
    if (!(e instanceof VhostUserError) || e.errno !== 'EADDRINUSE') throw e;
  }
  let st: fs.Stats;
  try {
    st = fs.lstatSync(path);
  } catch {
    // Gone meanwhile: try once more below.
    return vu(`listening on ${path}`, listen);
  }
  if (!st.isSocket()) throw new InvalidArgumentError(`${path} exists and is not a socket; remove it or choose another --socket path`);
  try {
    a.close(a.vhostUser.connect(path));
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code === 'ECONNREFUSED') {
      // A socket file whose listener is gone (a back end that was killed): nobody will ever accept on it.
      fs.unlinkSync(path);
      return vu(`listening on ${path}`, listen);
    }
    // EAGAIN: a listener whose backlog is full is alive too.
    if (code !== 'EAGAIN') {
      vu(`checking the existing socket ${path}`, () => {
        throw e;
      });
    }
  }
  throw new VhostUserError(`${path}: another process is listening on this socket (stop it first or choose another path)`, 'EADDRINUSE');
}

/** Connects to a listening front end (or, for tests, a back end) at `path`; returns the fd. */
export function connectVhostUser(path: string): number {
  return vu(`connecting to ${path}`, () => addon().vhostUser.connect(path));
}
