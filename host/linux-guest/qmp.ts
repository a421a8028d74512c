// A minimal QMP client for the test QEMUs (`-qmp unix:PATH,server=on,wait=off`):
// connect (retrying while QEMU creates the socket), leave capabilities
// negotiation mode, run commands one at a time and collect asynchronous events.
// QMP speaks one JSON object per line; replies carry the id we sent.

import * as net from 'node:net';

export class QmpError extends Error {}

/** How long connect() retries while QEMU has not created its socket yet. */
const CONNECT_RETRY_MS = 30_000;
const CONNECT_STEP_MS = 50;
const DEFAULT_COMMAND_TIMEOUT_MS = 30_000;

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
  command: string;
}

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

export class Qmp {
  /** Every event QEMU sent so far, in order. */
  readonly events: QmpEvent[] = [];
  private buf = '';
  private nextId = 1;
  private readonly pending = new Map<string, Pending>();
  private closedWhy: string | undefined;

  private constructor(private readonly sock: net.Socket) {
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => this.onData(d));
    sock.on('error', (e) => this.fail(`QMP socket error: ${e.message}`));
    sock.on('close', () => this.fail('QMP socket closed (QEMU exited?)'));
  }

  /** Connects to QEMU's QMP socket at `path` and enters command mode. */
  static async connect(path: string, timeoutMs = CONNECT_RETRY_MS): Promise<Qmp> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        const sock = await new Promise<net.Socket>((resolve, reject) => {
          const s = net.connect(path);
          s.once('connect', () => resolve(s));
          s.once('error', reject);
        });
        const q = new Qmp(sock);
        await q.greeting();
        await q.execute('qmp_capabilities');
        return q;
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if ((code === 'ENOENT' || code === 'ECONNREFUSED') && Date.now() < deadline) {
          await new Promise((r) => setTimeout(r, CONNECT_STEP_MS));
          continue;
        }
        throw new QmpError(`cannot connect to QMP at ${path}: ${(e as Error).message}`);
      }
    }
  }

  /** Runs `command`; resolves with its "return" value, rejects with its "error". */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, timeoutMs = DEFAULT_COMMAND_TIMEOUT_MS): Promise<T> {
    if (this.closedWhy) return Promise.reject(new QmpError(`${command}: ${this.closedWhy}`));
    const id = String(this.nextId++);
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new QmpError(`QMP ${command}: no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, timer, command });
      this.sock.write(`${JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}), id })}\n`);
    });
  }

  close(): void {
    this.sock.destroy();
  }

  private greetingWaiter: ((ok: boolean) => void) | undefined;

  private greeting(): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new QmpError('no QMP greeting')), DEFAULT_COMMAND_TIMEOUT_MS);
      this.greetingWaiter = (ok) => {
        clearTimeout(timer);
        if (ok) resolve();
        else reject(new QmpError(this.closedWhy ?? 'QMP closed before its greeting'));
      };
    });
  }

  private onData(d: string): void {
    this.buf += d;
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (!line) continue;
      let msg: Record<string, unknown>;
      try {
        msg = JSON.parse(line) as Record<string, unknown>;
      } catch {
        continue;
      }
      if ('QMP' in msg) {
        this.greetingWaiter?.(true);
        this.greetingWaiter = undefined;
      } else if ('event' in msg) {
        this.events.push(msg as unknown as QmpEvent);
      } else if (typeof msg.id === 'string') {
        const p = this.pending.get(msg.id);
        if (!p) continue;
        this.pending.delete(msg.id);
        clearTimeout(p.timer);
        if ('error' in msg) {
          const err = msg.error as { class?: string; desc?: string };
          p.reject(new QmpError(`QMP ${p.command}: ${err.class ?? 'error'}: ${err.desc ?? JSON.stringify(err)}`));
        } else p.resolve(msg.return);
      }
    }
  }

  private fail(why: string): void {
    if (this.closedWhy) return;
    this.closedWhy = why;
    this.greetingWaiter?.(false);
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new QmpError(`QMP ${p.command}: ${why}`));
    }
    this.pending.clear();
  }
}
