// A lock over LBA ranges, one per logical unit. Every command that changes
// blocks holds it over the blocks it changes, so COMPARE AND WRITE (which
// reads, compares, then writes under it) is atomic against every other
// writer. Requests whose ranges overlap are granted in arrival order (FIFO
// over each overlapping set: a later request never overtakes an earlier one
// it overlaps, so nothing starves); disjoint ranges never wait on each other.

import type { CommandSignal } from './types.js';

export type Release = () => void;

interface Entry {
  start: number;
  end: number; // exclusive
  /** Resolves when this entry releases (or gives up waiting); made only once a later request overlaps it. */
  done: Promise<void> | undefined;
  resolveDone: (() => void) | undefined;
  released: boolean;
}

function doneOf(e: Entry): Promise<void> {
  e.done ??= new Promise<void>((resolve) => { e.resolveDone = resolve; });
  return e.done;
}

export class RangeLock {
  // Held and waiting entries in arrival order. In-flight writes are bounded
  // by the transport's queue depth, so a linear scan is cheap.
  private entries: Entry[] = [];

  /** Entries currently held or waiting (for tests and diagnostics). */
  get size(): number {
    return this.entries.length;
  }

  /**
   * Locks [start, start + count) at once when nothing held or waiting
   * overlaps it (the common case: no promise per command); undefined
   * otherwise, and nothing is queued (then use acquire()).
   */
  tryAcquire(start: number, count: number): Release | undefined {
    if (count <= 0) return noop;
    const end = start + count;
    for (const e of this.entries) if (e.start < end && start < e.end) return undefined;
    return this.releaser(this.enter(start, end));
  }

  /**
   * Locks [start, start + count). Resolves with the release function once
   * every earlier overlapping request has released, or with undefined if
   * `signal` aborts first (the request then leaves the queue; requests that
   * arrived after it still wait for everything they overlap that is older).
   * A zero-length range locks nothing.
   */
  acquire(start: number, count: number, signal?: CommandSignal): Promise<Release | undefined> {
    if (signal?.aborted === true) return Promise.resolve(undefined);
    if (count <= 0) return Promise.resolve(noop);
    const end = start + count;
    const waits: Promise<void>[] = [];
    for (const e of this.entries) {
      if (e.start < end && start < e.end) waits.push(doneOf(e));
    }
    const entry = this.enter(start, end);
    const release = this.releaser(entry);
    if (waits.length === 0) return Promise.resolve(release);
    const granted = Promise.all(waits).then(() => release);
    if (signal === undefined) return granted;
    return new Promise<Release | undefined>((resolve) => {
      const onAbort = (): void => {
        release();
        resolve(undefined);
      };
      signal.addEventListener('abort', onAbort, { once: true });
      void granted.then((r) => {
        signal.removeEventListener('abort', onAbort);
        // Aborted while waiting: release() already ran and undefined was sent.
        if (!entry.released) resolve(r);
      });
    });
  }

  /** Queues an entry for [start, end). */
  private enter(start: number, end: number): Entry {
    const entry: Entry = { start, end, done: undefined, resolveDone: undefined, released: false };
    this.entries.push(entry);
    return entry;
  }

  private releaser(entry: Entry): Release {
    return () => {
      if (entry.released) return;
      entry.released = true;
      const i = this.entries.indexOf(entry);
      if (i >= 0) this.entries.splice(i, 1);
      entry.resolveDone?.();
    };
  }
}

const noop: Release = () => {};
