// A vhost-user-net back end serving a TAP: listens on a Unix socket (or
// connects to a VMM that listens), runs one session at a time over the TAP's
// data plane, and when the front end goes away — closed, killed, crashed —
// ends that session (workers stop, mappings go) and waits for the next one.
// What `vhost-tap vhost-user` runs.

import { EventEmitter } from 'node:events';

import { DeviceStats } from '../datapath';
import { InvalidArgumentError, VhostUserError } from '../errors';
import { Capabilities } from '../features';
import { MetricsSnapshot, VhostUserSessionState } from '../metrics';
import { addon } from '../native';
import { featureNames, has } from '../virtio';
import { TapBackend, TapBackendOptions } from './backend';
import { protocolFeatureNames } from './protocol';
import { Refusal, VhostUserSession } from './session';
import { connectVhostUser, SocketAccess, VhostUserListener } from './socket';

export interface VhostUserServerOptions extends TapBackendOptions {
  /** Unix socket path: listened on (default), or connected to with `client`. */
  socket: string;
  /** Connect to a front end that listens on `socket` (QEMU `server=on`), retrying until it does. */
  client?: boolean;
  /** Session events and refusals as lines of text. */
  log?: (line: string) => void;
  /** Every message received, as a line (debugging a front end's sequence). */
  trace?: (line: string) => void;
  /**
   * The socket file's permission bits (e.g. 0o660; default 0o777 minus the umask), set before
   * it listens. With socketGid/socketUid, lets a VMM running as its own user connect.
   */
  socketMode?: number;
  /** The socket file's owner (a user id; needs CAP_CHOWN). */
  socketUid?: number;
  /** The socket file's group (a group id). */
  socketGid?: number;
  /** A front end that sends no SET_OWNER this long after connecting is dropped (default 10000 ms). */
  handshakeTimeoutMs?: number;
  /** A front end that reads none of its replies this long is dropped (default 5000 ms). */
  replyTimeoutMs?: number;
}

export interface VhostUserServerStats {
  /** Sessions served so far (the current one included): front ends that sent a request. */
  sessions: number;
  /** Whether a front end is connected now. */
  connected: boolean;
  /** Requests refused over all sessions. */
  refused: number;
  /** Counters of every queue over all sessions. */
  device: DeviceStats;
  /** The connected front end's negotiated state; absent while none is connected. */
  session?: VhostUserSessionState;
}

/** The events a VhostUserServer emits and their arguments. */
export interface VhostUserServerEvents {
  /** A front end sent its first request; `n` counts sessions from 1 (a connection that sends nothing is none). */
  session: [n: number];
  /** The session ended (the front end closed or died, or a refusal or the handshake timeout closed it). */
  'session-end': [reason: string];
  /** A request was refused (a REPLY_ACK error or, with action 'close', the session ended). */
  refused: [refusal: Refusal];
  /** A ring stopped because the guest broke a virtio rule (the front end's error fd was signalled). */
  'ring-broken': [info: { ring: number; rule: string; detail: string }];
  /** Something failed that does not stop the server. */
  warning: [error: Error];
  /** The server cannot go on (listening failed, connecting is refused for good). */
  error: [error: Error];
}

/** How often `client` mode tries again while the front end is not listening yet. */
const CONNECT_RETRY_MS = 200;
/** connect() failures that mean "not there yet": no socket, a stale one, a full backlog. */
const RETRYABLE = new Set(['ENOENT', 'ECONNREFUSED', 'EAGAIN']);

/* eslint-disable @typescript-eslint/no-explicit-any */
export interface VhostUserServer {
  on<K extends keyof VhostUserServerEvents>(event: K, listener: (...args: VhostUserServerEvents[K]) => void): this;
  on(event: string | symbol, listener: (...args: any[]) => void): this;
  once<K extends keyof VhostUserServerEvents>(event: K, listener: (...args: VhostUserServerEvents[K]) => void): this;
  once(event: string | symbol, listener: (...args: any[]) => void): this;
  emit<K extends keyof VhostUserServerEvents>(event: K, ...args: VhostUserServerEvents[K]): boolean;
  emit(event: string | symbol, ...args: any[]): boolean;
}
/* eslint-enable @typescript-eslint/no-explicit-any */

export class VhostUserServer extends EventEmitter {
  readonly backend: TapBackend;
  readonly socket: string;
  readonly client: boolean;
  private listener: VhostUserListener | undefined;
  private current: VhostUserSession | undefined;
  /** `current` has sent a request (it is a session, not a probe). */
  private currentActive = false;
  private retry: NodeJS.Timeout | undefined;
  private sessions = 0;
  private refused = 0;
  private closed = false;
  /** Client mode: connecting is being retried (logged once per wait). */
  private waiting = false;
  private readonly log: (line: string) => void;
  private readonly trace: ((line: string) => void) | undefined;
  private readonly handshakeTimeoutMs: number | undefined;
  private readonly replyTimeoutMs: number | undefined;

  /**
   * Creates the TAP and starts listening (or connecting). Throws a typed error when the TAP
   * or the socket cannot be set up; nothing is left behind then.
   */
  constructor(opts: VhostUserServerOptions) {
    super();
    if (opts === null || typeof opts !== 'object') throw new InvalidArgumentError('VhostUserServer needs an options object { socket, tap, ... }');
    const { socket, client, log, trace, socketMode, socketUid, socketGid, handshakeTimeoutMs, replyTimeoutMs, ...backendOpts } = opts;
    const access: SocketAccess = {};
    if (socketMode !== undefined) {
      if (!Number.isInteger(socketMode) || socketMode < 0 || socketMode > 0o777) throw new InvalidArgumentError(`socketMode must be permission bits from 0 to 0o777, got ${socketMode}`);
      access.mode = socketMode;
    }
    for (const [k, v] of [['socketUid', socketUid], ['socketGid', socketGid]] as const) {
      if (v !== undefined && (!Number.isInteger(v) || v < 0 || v >= 0xffffffff)) throw new InvalidArgumentError(`${k} must be a numeric id, got ${v}`);
    }
    if (socketUid !== undefined) access.uid = socketUid;
    if (socketGid !== undefined) access.gid = socketGid;
    for (const [k, v] of [['handshakeTimeoutMs', handshakeTimeoutMs], ['replyTimeoutMs', replyTimeoutMs]] as const) {
      if (v !== undefined && (!Number.isInteger(v) || v < 1 || v > 3_600_000)) throw new InvalidArgumentError(`${k} must be an integer from 1 to 3600000 (ms), got ${v}`);
    }
    if (client && (socketMode !== undefined || socketUid !== undefined || socketGid !== undefined)) {
      throw new InvalidArgumentError('socketMode, socketUid and socketGid apply to a socket this back end listens on, not to client mode');
    }
    this.handshakeTimeoutMs = handshakeTimeoutMs;
    this.replyTimeoutMs = replyTimeoutMs;
    if (typeof socket !== 'string' || socket.length === 0) throw new InvalidArgumentError("option 'socket' must be a socket path");
    // sun_path holds 107 bytes and a NUL.
    if (Buffer.byteLength(socket) > 107) throw new InvalidArgumentError(`socket path '${socket}' is longer than the 107 bytes a Unix socket address holds`);
    if (client !== undefined && typeof client !== 'boolean') throw new InvalidArgumentError("option 'client' must be a boolean");
    this.socket = socket;
    this.client = client ?? false;
    this.log = log ?? (() => undefined);
    this.trace = trace;
    this.backend = new TapBackend(backendOpts);
    try {
      if (this.client) this.connect(true);
      else this.listener = new VhostUserListener(socket, (fd) => this.serve(fd), (e) => this.fail(e), access);
    } catch (e) {
      this.backend.close();
      throw e;
    }
  }

  /** Whether a front end is connected now (one that sent a request: a probe is not one). */
  get connected(): boolean {
    return this.current !== undefined && this.currentActive;
  }

  /** What the TAP offloads, and why anything is missing. */
  capabilities(): Capabilities {
    return this.backend.capabilities();
  }

  /** Counters over all sessions and the connected front end's negotiated state: what `--metrics` shows. */
  stats(): VhostUserServerStats {
    const session = this.session();
    return { sessions: this.sessions, connected: this.connected, refused: this.refused, device: this.backend.stats(), ...(session ? { session } : {}) };
  }

  /** stats() as a metrics snapshot: prometheusText(server.metrics()) is what `--metrics` serves. */
  metrics(): MetricsSnapshot {
    const { device, ...vhostUser } = this.stats();
    return { device, vhostUser };
  }

  /** The connected front end's negotiated features and ring formats (undefined while none is connected). */
  session(): VhostUserSessionState | undefined {
    const s = this.currentActive ? this.current?.snapshot() : undefined;
    if (!s) return undefined;
    const packed = has(s.features, 'RING_PACKED');
    return {
      features: `0x${s.features.toString(16)}`,
      featureNames: featureNames(s.features),
      protocolFeatures: `0x${s.protocolFeatures.toString(16)}`,
      protocolFeatureNames: protocolFeatureNames(s.protocolFeatures),
      pairs: s.running.map((running, pair) => ({
        pair,
        running,
        layout: packed ? 'packed' : 'split',
        inOrder: has(s.features, 'IN_ORDER'),
        eventIdx: has(s.features, 'RING_EVENT_IDX'),
        size: s.rings[2 * pair]?.num,
      })),
    };
  }

  /** Ends the session (if any), stops listening (the socket file goes), closes the TAP (it goes too). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.retry) clearTimeout(this.retry);
    this.retry = undefined;
    this.current?.close('the back end is shutting down');
    this.listener?.close();
    this.backend.close();
  }

  // --- internals -----------------------------------------------------------------------

  private serve(fd: number): void {
    if (this.closed) {
      // Nobody to serve it any more.
      addon().close(fd);
      return;
    }
    // One front end at a time: the next waits in the backlog until this session ends.
    this.listener?.pause();
    // A connection is a session once it sends its first request. Until then it logs nothing:
    // another back end probing whether this socket is live (connect, close) is no session.
    let active = false;
    const held: string[] = [];
    const log = (line: string): void => {
      if (active) this.log(line);
      else held.push(line);
    };
    let s: VhostUserSession;
    try {
      s = new VhostUserSession(fd, this.backend, {
        log,
        trace: this.trace,
        handshakeTimeoutMs: this.handshakeTimeoutMs,
        sendStallMs: this.replyTimeoutMs,
      });
    } catch (e) {
      this.emit('warning', e as Error);
      this.next();
      return;
    }
    this.current = s;
    this.currentActive = false;
    s.once('active', () => {
      active = true;
      this.currentActive = true;
      const n = ++this.sessions;
      this.log(`vhost-user: session ${n}: front end connected`);
      for (const line of held.splice(0)) this.log(line);
      this.emit('session', n);
    });
    s.on('refused', (r: Refusal) => {
      this.refused++;
      this.emit('refused', r);
    });
    s.on('ring-broken', (info: { ring: number; rule: string; detail: string }) => this.emit('ring-broken', info));
    s.on('warning', (e: Error) => this.emit('warning', e));
    s.once('end', (reason: string) => {
      this.current = undefined;
      this.currentActive = false;
      // A silent connection this side dropped (the handshake timeout) held the front end's
      // place: that is said, and ends like a session; one that simply went away was a probe.
      if (active || (!s.endedByConnection && !this.closed)) {
        if (!active) this.log(`vhost-user: a connection that sent no request was dropped: ${reason}`);
        this.emit('session-end', reason);
      }
      this.next();
    });
  }

  /** Waits for the next front end. */
  private next(): void {
    if (this.closed) return;
    if (this.client) this.connect(false);
    else this.listener?.resume();
  }

  private connect(first: boolean): void {
    if (this.closed) return;
    let fd: number;
    try {
      fd = connectVhostUser(this.socket);
    } catch (e) {
      const code = e instanceof VhostUserError ? e.errno : undefined;
      if (code === undefined || !RETRYABLE.has(code)) {
        if (first) throw e;
        return this.fail(e as Error);
      }
      if (!this.waiting) this.log(`vhost-user: waiting for a front end to listen on ${this.socket}`);
      this.waiting = true;
      this.retry = setTimeout(() => {
        this.retry = undefined;
        this.connect(false);
      }, CONNECT_RETRY_MS);
      return;
    }
    this.waiting = false;
    this.serve(fd);
  }

  private fail(e: Error): void {
    if (this.closed) return;
    if (this.listenerCount('error') > 0) this.emit('error', e);
    else this.emit('warning', e);
  }
}
