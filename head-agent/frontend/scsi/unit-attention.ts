// Unit attention conditions (SAM-5 5.14), per I_T nexus. A nexus seen for
// the first time (or again after it was lost) starts with POWER ON, RESET,
// OR BUS DEVICE RESET OCCURRED, as after power-on: initiators expect it
// (libiscsi's login and Linux both send TEST UNIT READY until it clears).
// Each condition is reported once, by the first command other than INQUIRY,
// REPORT LUNS and REQUEST SENSE, or returned (and cleared) by REQUEST SENSE.

import { Asc } from './sense.js';

/** A nexus that never reads its conditions cannot grow its queue without bound. */
const MAX_PENDING = 8;

export class UnitAttentions {
  /** nexus -> pending conditions (ASC << 8 | ASCQ), oldest first. */
  private readonly pending = new Map<string, number[]>();

  /** Registers a nexus on its first command; a new nexus starts with the power-on condition. */
  touch(nexus: string): void {
    if (!this.pending.has(nexus)) this.pending.set(nexus, [Asc.POWER_ON_RESET]);
  }

  /** Removes and returns the oldest pending condition of `nexus`. */
  take(nexus: string): number | undefined {
    return this.pending.get(nexus)?.shift();
  }

  peek(nexus: string): number | undefined {
    return this.pending.get(nexus)?.[0];
  }

  /** Establishes a condition for one known nexus (unknown ones get power-on when they appear). */
  establish(nexus: string, code: number): void {
    const q = this.pending.get(nexus);
    if (q === undefined || q.includes(code)) return;
    // A reset condition supersedes everything queued before it (SAM-5 5.14).
    if (code === Asc.POWER_ON_RESET) q.length = 0;
    if (q.length >= MAX_PENDING) q.shift();
    q.push(code);
  }

  /** Establishes a condition for every known nexus except `except`. */
  establishAll(code: number, except?: string): void {
    for (const nexus of this.pending.keys()) if (nexus !== except) this.establish(nexus, code);
  }

  forget(nexus: string): void {
    this.pending.delete(nexus);
  }

  /** Known nexuses (for tests and diagnostics). */
  get size(): number {
    return this.pending.size;
  }
}
