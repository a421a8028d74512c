// Serving the control virtqueue (queue 2N) on the JS thread. Native code
// (native/ctrl_queue.cc) walks the ring with the same rules as the data
// queues and hands up decoded commands; this file only paces the work and
// passes each command to the device, which decides the ack. The pace is set
// by time, not by a count of commands: commands differ in cost by orders of
// magnitude, and a guest chooses which ones it queues.

import { performance } from 'node:perf_hooks';

import type { CtrlAnswer, NativeControlQueue, NativeCtrlCommand } from './native';
import { CTRL } from './virtio';

/**
 * Commands decoded per pop(). Linux's driver sends one command at a time and waits for it, so
 * a real guest never has more than a few queued; a hostile one can queue the whole ring. The
 * native walker also stops at its descriptor budget (about a millisecond of walking).
 */
export const CTRL_COMMANDS_PER_POP = 64;

/**
 * JS-thread time the control queue takes before it answers what it handled and lets the
 * event loop run (timers, I/O, other devices). A command's own JS-thread work is small: what
 * is expensive (TAP ioctls, which take the RTNL lock; attaching and detaching TAP queues;
 * starting and joining workers) runs off the JS thread, and the queue waits for it without
 * holding the thread. So a turn costs this plus one command, whatever the guest queued.
 */
export const CTRL_TURN_BUDGET_MS = 2;

/**
 * Decides one decoded command: CTRL.OK or CTRL.ERR, with the result of a command that returns
 * one; or a promise of that for a command whose work runs off the JS thread. The ack goes out
 * only once it has settled, and the next command is not handled before.
 */
export type CtrlHandler = (cmd: NativeCtrlCommand) => CtrlAnswer | Promise<CtrlAnswer>;

export interface CtrlEvents {
  /** The driver asked to be interrupted for answered commands. */
  interrupt(): void;
  /** The guest broke a ring rule; the queue is dead until reset. */
  broken(rule: string, detail: string): void;
}

export class ControlQueueServer {
  /** A serve() loop is running (handling, or waiting for a command's work). */
  private serving = false;
  /** A kick came while serving: look at the ring again before stopping. */
  private kicked = false;
  private closed = false;
  private dead = false;

  constructor(
    private readonly q: NativeControlQueue,
    private readonly handler: CtrlHandler,
    private readonly events: CtrlEvents,
  ) {}

  /** The guest kicked: serve what is queued, in the background. */
  kick(): void {
    if (this.closed || this.dead) return;
    if (this.serving) {
      this.kicked = true;
      return;
    }
    this.serving = true;
    void this.serve().finally(() => {
      this.serving = false;
    });
  }

  /** Stops serving: no more commands are read or answered; work in progress is left to the device. */
  close(): void {
    this.closed = true;
  }

  private get stopped(): boolean {
    return this.closed || this.dead;
  }

  private async serve(): Promise<void> {
    do {
      this.kicked = false;
      await this.drain();
    } while (this.kicked && !this.stopped);
  }

  /** Handles commands, in order, until the ring is empty (kicks re-enabled) or the queue stops. */
  private async drain(): Promise<void> {
    let turn = performance.now();
    for (;;) {
      const { commands, more, broken } = this.q.pop(CTRL_COMMANDS_PER_POP);
      let answers: CtrlAnswer[] = [];
      for (const c of commands) {
        let a = c.malformed ? CTRL.ERR : this.handler(c);
        if (a instanceof Promise) {
          // The command's work runs elsewhere: what is answered so far goes out first, and
          // the event loop runs while we wait.
          this.publish(answers);
          answers = [];
          a = await a.catch(() => CTRL.ERR);
          turn = performance.now();
        }
        // A handler (or a listener of an event it emitted) may have closed the device:
        // then nothing more is written to the guest.
        if (this.closed) return;
        answers.push(a);
        if (performance.now() - turn >= CTRL_TURN_BUDGET_MS) {
          this.publish(answers);
          answers = [];
          await nextTurn();
          if (this.closed) return;
          turn = performance.now();
        }
      }
      this.publish(answers);
      if (broken) {
        this.dead = true;
        this.events.broken(broken.rule, broken.detail);
        return;
      }
      if (!more) return;
      await nextTurn();
      if (this.closed) return;
      turn = performance.now();
    }
  }

  /** Answers the next commands of the last pop(), in order; interrupts if the driver wants it. */
  private publish(answers: CtrlAnswer[]): void {
    if (answers.length === 0) return;
    if (this.q.answer(answers)) this.events.interrupt();
  }
}

/** Resolves on the next turn of the event loop, after pending I/O and timers. */
function nextTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
