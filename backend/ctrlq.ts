// Serving the control virtqueue (queue 2N) on the JS thread. Native code
// (native/ctrl_queue.cc) walks the ring with the same rules as the data
// queues and hands up decoded commands; this file only paces the work — a
// bounded number of commands per turn of the event loop, the rest on the next
// turn — and passes each command to the device, which decides the ack.

import type { CtrlAnswer, NativeControlQueue, NativeCtrlCommand } from './native';
import { CTRL } from './virtio';

/**
 * Commands handled per turn of the event loop. Linux's driver sends one command at a time
 * and waits for it, so a real guest never has more than a few queued; a hostile one can queue
 * the whole ring, and this (with the native walker's descriptor budget per call) keeps the
 * JS thread's share bounded: other callbacks and timers run between turns.
 */
export const CTRL_COMMANDS_PER_TURN = 64;

/** Decides one decoded command; returns CTRL.OK or CTRL.ERR, with the result of a command that returns one. */
export type CtrlHandler = (cmd: NativeCtrlCommand) => CtrlAnswer;

export interface CtrlEvents {
  /** The driver asked to be interrupted for answered commands. */
  interrupt(): void;
  /** The guest broke a ring rule; the queue is dead until reset. */
  broken(rule: string, detail: string): void;
}

export class ControlQueueServer {
  private scheduled: NodeJS.Immediate | undefined;
  private closed = false;
  private dead = false;

  constructor(
    private readonly q: NativeControlQueue,
    private readonly handler: CtrlHandler,
    private readonly events: CtrlEvents,
  ) {}

  /** The guest kicked (or a previous turn left commands): serve one turn's worth. */
  kick(): void {
    if (this.closed || this.dead || this.scheduled) return;
    const { commands, more, broken } = this.q.pop(CTRL_COMMANDS_PER_TURN);
    const answers: CtrlAnswer[] = [];
    for (const c of commands) {
      answers.push(c.malformed ? CTRL.ERR : this.handler(c));
      // A handler (or a listener of an event it emitted) may have closed the device:
      // then nothing more is written to the guest.
      if (this.closed) return;
    }
    if (this.q.answer(answers)) this.events.interrupt();
    if (broken) {
      this.dead = true;
      this.events.broken(broken.rule, broken.detail);
      return;
    }
    if (more) {
      this.scheduled = setImmediate(() => {
        this.scheduled = undefined;
        this.kick();
      });
    }
  }

  /** Stops serving: no more commands are read or answered. */
  close(): void {
    this.closed = true;
    if (this.scheduled) clearImmediate(this.scheduled);
    this.scheduled = undefined;
  }
}
