// Keeps a queue-pair Worker's old generation near what it keeps alive: a full
// collection whenever it has grown by OLD_GENERATION_SLACK_BYTES since its low
// point, instead of waiting for V8's own limit (issue 24).

import { getHeapSpaceStatistics, setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

/**
 * How far a Worker's old generation may grow past its low point (what survived the last full
 * collection) before the Worker collects it. Under steady traffic a Worker promotes 0.1-1 MiB a
 * minute (connections alive across two scavenges), and V8 waits for several MiB of it before it
 * marks (4-5 MiB per Worker in the soaks here): each Worker's heap was a sawtooth with a period of 10-15 minutes, and two Workers near their
 * tops at once put `vhost-tap run` 9% above where it had been minutes before (issue 24). 1 MiB
 * makes it a mark-compact of the Worker's few MiB of live heap (15-60 ms) every few minutes.
 */
export const OLD_GENERATION_SLACK_BYTES = 1 << 20;

/** How often a Worker looks at its old generation (reading the heap statistics allocates a little). */
export const OLD_GENERATION_CHECK_MS = 1000;

/** The young generation's spaces; every other space is the old generation. */
const YOUNG_SPACES = new Set(['new_space', 'new_large_object_space']);

function oldGenerationUsed(): number {
  let used = 0;
  for (const s of getHeapSpaceStatistics()) if (!YOUNG_SPACES.has(s.space_name)) used += s.space_used_size;
  return used;
}

/** Tries at getting gc() (another Worker may switch the flag off between our switching it on and our context). */
const COLLECTOR_ATTEMPTS = 20;

/**
 * V8's gc() for this isolate. Node offers it only with --expose-gc, which V8 reads when it makes
 * a context: the flag is set for as long as it takes to make one (and left as it was found, on
 * when this isolate already had gc()). The flag is process-wide: Workers starting together race
 * on it, so each tries again; undefined if it never got it (the Worker then runs without).
 */
function collector(): (() => void) | undefined {
  const own = (globalThis as { gc?: () => void }).gc;
  if (typeof own === 'function') return own;
  for (let i = 0; i < COLLECTOR_ATTEMPTS; i++) {
    setFlagsFromString('--expose-gc');
    try {
      const gc = runInNewContext('typeof gc === "function" ? gc : undefined') as (() => void) | undefined;
      if (gc) return gc;
    } finally {
      setFlagsFromString('--no-expose-gc');
    }
  }
  return undefined;
}

export class OldGenerationKeeper {
  private readonly gc = collector();
  private low = oldGenerationUsed();
  private nextCheck = 0;
  /** Full collections this keeper ran. */
  collections = 0;

  /** Collects when the old generation grew by more than the slack; call it often, it looks once per OLD_GENERATION_CHECK_MS. */
  check(now: number): void {
    if (this.gc === undefined || now < this.nextCheck) return;
    this.nextCheck = now + OLD_GENERATION_CHECK_MS;
    const used = oldGenerationUsed();
    if (used < this.low) this.low = used;
    else if (used - this.low > OLD_GENERATION_SLACK_BYTES) {
      this.gc();
      this.collections++;
      this.low = oldGenerationUsed();
    }
  }
}
