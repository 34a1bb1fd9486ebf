// The seam between a volume's I/O engine and the protocols that export it
// (NBD now, iSCSI later). Offsets and lengths are in bytes. Every method
// rejects with a VskyError (InvalidArgumentError for out-of-range requests,
// IoError when no replica can serve, StaleEpochError when fenced off).

import type { VolumeStats } from './volume-stats.js';

export interface BlockDevice {
  readonly name: string;
  /** Size in bytes. */
  readonly size: number;
  /** I/O counters the exports update as requests complete (head-agent/metrics.ts reads them); absent: not counted. */
  readonly stats?: VolumeStats;
  /** Optional: the export refuses every write (a snapshot, docs/snapshots.md): NBD_FLAG_READ_ONLY and EPERM; SCSI write protect. */
  readonly readOnly?: boolean;
  /** Reads `length` bytes at `offset` into a new buffer. */
  read(offset: number, length: number): Promise<Buffer>;
  /**
   * Optional: reads dest.length bytes at `offset` into a caller-owned buffer
   * and resolves with it; nothing touches `dest` once the promise settles.
   * Lets an export recycle its reply buffers: a fresh buffer per read lives
   * across ticks and drives V8 into constant mark-compacts (measured: 4x the
   * head's CPU for 64 KiB reads).
   */
  readInto?(offset: number, dest: Buffer): Promise<Buffer>;
  /**
   * Writes `data` at `offset`; with `fua` the data is durable when this
   * resolves. `data` is not copied: keep it unchanged until the promise
   * settles; after that it is never touched again (it may be recycled).
   */
  write(offset: number, data: Buffer, fua: boolean): Promise<void>;
  /** Makes every write acknowledged so far durable on every replica. */
  flush(): Promise<void>;
  /** Writes zeros over the range. */
  writeZeroes(offset: number, length: number, fua: boolean): Promise<void>;
  /** Hints that the range is unused; it reads as zeros afterwards. */
  discard(offset: number, length: number): Promise<void>;
  /**
   * Optional (thin volumes): whether the bytes at `offset` have storage, and
   * how many bytes from there share that answer. Unallocated bytes read zeros.
   */
  extentAt?(offset: number): { allocated: boolean; length: number };
  /**
   * Optional: what [offset, offset + length) holds, as consecutive extents
   * from `offset` (EXTENT_HOLE: no storage behind it; EXTENT_ZERO: reads as
   * zeros; neither: data). Covers at least one byte and at most `length`;
   * the caller asks again from where it ends. Never claims HOLE or ZERO for
   * bytes that may read non-zero (data is always a safe answer).
   */
  allocationStatus?(offset: number, length: number): Promise<AllocationExtent[]>;
}

/** Flags of an AllocationExtent (the same values as NBD base:allocation's NBD_STATE_HOLE / NBD_STATE_ZERO). */
export const EXTENT_HOLE = 1;
export const EXTENT_ZERO = 2;

export interface AllocationExtent {
  length: number;
  /** EXTENT_HOLE | EXTENT_ZERO bits; 0 is data. */
  flags: number;
}

/** Finds the device exported under an export name (NBD) or LUN (iSCSI). */
export interface ExportRegistry {
  lookup(name: string): BlockDevice | undefined;
  list(): BlockDevice[];
}
