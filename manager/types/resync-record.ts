// One replica being rebuilt or drained (manager/resync/).
// (manager/types.ts says what leaves this folder.)

import type { ChunkLocation } from './chunk-map-record.js';

export type ResyncState = 'queued' | 'running';

/**
 * One replica being rebuilt (manager/resync/resyncs.ts). The map points the slot at
 * `target` (state resyncing) from the batch that creates this record until the
 * batch that deletes it and marks the replica in sync.
 */
export interface ResyncRecord {
  /** "r<n>", never reused (meta/next_resync_id). */
  id: string;
  /** rebuild (absent in older records): the slot's resyncing replica; drain: the slot's drain target (ChunkMapRecord.moves). */
  kind?: 'rebuild' | 'drain';
  volumeId: number;
  segment: number;
  slot: number;
  target: ChunkLocation;
  /** The replica this one replaces (put on the to-free list in the creating batch). */
  old: ChunkLocation;
  state: ResyncState;
  /** Regions below this index are copied into `target`. */
  regionsDone: number;
  regionsTotal: number;
  bytesCopied: number;
  createdMs: number;
  /**
   * Dispatches so far: the executor's task id is `${id}.${attempt}`; a report
   * naming an older attempt is answered cancel. A re-dispatch of the same
   * attempt (manager restart, progress timeout) keeps the id, so executors dedupe.
   */
  attempt: number;
  /** 'head:<head id>' or 'node:<server id>' while running; '' when queued. */
  executor: string;
  /** Source disk ids of the running attempt. */
  sources: string[];
  startedMs: number;
  /** Lease epoch the running attempt copies under. */
  epoch: number;
  lastError: string;
  /** Failed attempts on the current target (a new spare after a few). */
  failures: number;
}
