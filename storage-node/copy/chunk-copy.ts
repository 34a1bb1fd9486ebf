import { IoError, VskyError, errorMessage } from '../../shared/errors.js';
import { moduleLogger, type Logger } from '../../shared/logger.js';
import type { ReplicaLocation__Output } from '../../proto/generated/vsky/common/ReplicaLocation.js';
import type { ResyncProgress } from '../../proto/generated/vsky/manager/ResyncProgress.js';
import { ChunkTarget } from '../../shared/data-protocol/client/chunk-target.js';
import { NodeConnection } from '../../shared/data-protocol/client/node-connection.js';
import type { Chunk } from '../chunk.js';
import { writeChunk, zeroChunk } from '../chunk-io.js';
import type { ChunkStore } from '../chunk-store.js';
import { fetchSourceMaps, isAllZero, planRuns, type Run } from './copy-plan.js';
import { NoChunkError } from '../../shared/data-protocol/status.js';
import { ProgressReporter } from './progress-reporter.js';
import { TokenBucket } from '../../shared/token-bucket.js';
import { mergeDirty } from '../write-intent.js';

// One peer-to-peer resync (CopyChunk): copies the written regions of a
// detached volume's segment from in-sync replicas on other nodes into the
// chunk this node holds for (volume, segment, target slot).
//
// 1. Fence locally: raise the volume's epoch here to the task's epoch (a lease
//    epoch the manager granted to this copy), durably. From then on every
//    local write of the copy is admitted exactly like a data-protocol WRITE at
//    that epoch: a new holder's FENCE (higher epoch) makes the next one fail
//    with STALE_EPOCH, and waits for the ones already admitted, so no copy
//    write lands after it. The copy then stops and reports the error.
// 2. Plan (copy-plan.ts) from the sources' bitmaps; carry their dirty bits over.
// 3. Copy runs of regions, `window` at a time: read from a source (round robin
//    over the sources, the next one on error), write here through writeChunk
//    (first-write zero fill, written bits), throttled by a token bucket.
// 4. fdatasync the target, then report finished: the manager marks the replica
//    in sync on that report, so the copy must be durable first.
// Progress goes to the manager every 500 ms at most (progress-reporter.ts),
// each report after an fdatasync of the target: the manager resumes a lost
// copy at the reported regions_done, so every region below it must survive a
// power loss, not only a crash of this process.

export interface CopyTask {
  resyncId: string;
  volumeId: number;
  volumeName: string;
  segment: number;
  slot: number;
  epoch: number;
  generation: number;
  startRegion: number;
  throttleMibps: number;
  managerAddress: string;
  sources: ReplicaLocation__Output[];
}

export interface CopyOptions {
  /** Runs in flight at once. */
  window?: number;
  /** Largest single read/write (a run is at most this many bytes, and at least one region). */
  ioBytes?: number;
  reportIntervalMs?: number;
}

const DEFAULT_WINDOW = 4;
const DEFAULT_IO_BYTES = 1024 * 1024;

/** Thrown to stop a copy the manager cancelled. */
class CopyCancelled extends VskyError {
  constructor() {
    super('ECANCELED', 'resync cancelled by the manager');
  }
}

export class ChunkCopy {
  readonly task: CopyTask;
  private readonly store: ChunkStore;
  private readonly chunk: Chunk;
  private readonly window: number;
  private readonly ioBytes: number;
  private readonly log: Logger;
  private readonly abort = new AbortController();
  private readonly reporter: ProgressReporter;
  private readonly bucket: TokenBucket;
  private readonly sources: ChunkTarget[];
  private readonly connections: NodeConnection[] = [];
  private readonly regions: number;
  private runs: Run[] = [];
  private runDone: boolean[] = [];
  private lowestOpen = 0;
  /** regions_done as of the last successful sync of the target (what a failure report may claim). */
  private durableDone = 0;
  private nextSource = 0;
  bytesCopied = 0;
  /** Bytes read from sources (probe mode reads more than it copies). */
  bytesRead = 0;
  private cancelled = false;

  constructor(store: ChunkStore, chunk: Chunk, task: CopyTask, opts: CopyOptions = {}) {
    this.store = store;
    this.chunk = chunk;
    this.task = task;
    this.window = opts.window ?? DEFAULT_WINDOW;
    this.ioBytes = Math.max(opts.ioBytes ?? DEFAULT_IO_BYTES, chunk.regionSize);
    this.regions = chunk.size / chunk.regionSize;
    this.durableDone = task.startRegion;
    this.log = moduleLogger('chunk-copy', { resync: task.resyncId, volume: task.volumeName || task.volumeId, segment: task.segment, slot: task.slot });
    this.reporter = new ProgressReporter(task.managerAddress, this.log, () => this.cancel(), opts.reportIntervalMs);
    this.bucket = new TokenBucket(task.throttleMibps * 1024 * 1024, this.ioBytes);
    const byAddress = new Map<string, NodeConnection>();
    this.sources = task.sources.map((src) => {
      let conn = byAddress.get(src.dataAddress);
      if (conn === undefined) {
        conn = new NodeConnection(src.dataAddress);
        byAddress.set(src.dataAddress, conn);
        this.connections.push(conn);
      }
      return new ChunkTarget(conn, task.volumeId, task.segment, src.slot);
    });
  }

  /** Stops the copy (manager cancel or node shutdown); run() then settles without a final report. */
  cancel(): void {
    if (this.cancelled) return;
    this.cancelled = true;
    this.abort.abort(new CopyCancelled());
  }

  /** Runs the copy to its end; never throws (the outcome goes to the manager and the log). */
  async run(): Promise<void> {
    const started = performance.now();
    try {
      await this.fence();
      await this.plan();
      this.report();
      await this.copyRuns();
      this.throwIfStopped();
      await this.chunk.sync();
      this.log.info({ bytes: this.bytesCopied, ms: Math.round(performance.now() - started) }, 'resync copy finished');
      await this.reporter.final(this.progress(true, ''));
    } catch (err) {
      if (this.cancelled) {
        this.log.info({ bytes: this.bytesCopied }, 'resync copy cancelled');
      } else {
        this.log.warn({ err: errorMessage(err), bytes: this.bytesCopied }, 'resync copy failed');
        // finished stays false: a manager must never take a failed copy for a finished one.
        await this.reporter.final({ ...this.progress(false, errorMessage(err)), regionsDone: this.durableDone });
      }
    } finally {
      this.reporter.close();
      await Promise.all(this.connections.map((c) => c.close()));
    }
  }

  private async fence(): Promise<void> {
    this.checkTarget();
    await this.store.fence(this.task.volumeId, this.task.epoch, this.task.generation);
  }

  private async plan(): Promise<void> {
    const { volumeId, segment, startRegion } = this.task;
    const maps = await fetchSourceMaps(volumeId, segment, this.chunk.regionSize, this.regions, this.task.sources, this.log);
    this.throwIfStopped();
    if (maps.written === undefined) this.log.warn('no source bitmap available: probing every region (slow)');
    this.runs = planRuns(this.regions, startRegion, Math.max(1, Math.floor(this.ioBytes / this.chunk.regionSize)),
      maps.written, this.chunk.rec.bitmap);
    this.runDone = this.runs.map(() => false);
    // Regions a source holder may have left diverged stay marked here too, so
    // the next holder reconciles them on this replica as well.
    if (mergeDirty(this.chunk, maps.dirty)) {
      this.checkTarget();
      await this.chunk.persist();
    }
    this.log.info({ runs: this.runs.length, startRegion, sourcesAnswered: maps.answered }, 'resync copy planned');
  }

  private async copyRuns(): Promise<void> {
    let next = 0;
    const worker = async (): Promise<void> => {
      const buf = Buffer.allocUnsafe(this.ioBytes);
      while (next < this.runs.length && !this.abort.signal.aborted) {
        const index = next++;
        await this.copyRun(this.runs[index]!, index, buf);
        this.runDone[index] = true;
        while (this.lowestOpen < this.runs.length && this.runDone[this.lowestOpen]) this.lowestOpen++;
        this.report();
      }
    };
    const workers = Array.from({ length: Math.min(this.window, this.runs.length) }, worker);
    // The first failure stops the others; wait for all of them before reporting
    // (no I/O of this copy may still be running once its outcome is told).
    const results = await Promise.allSettled(workers.map((w) => w.catch((err: unknown) => {
      if (!this.abort.signal.aborted) this.abort.abort(err);
      throw err;
    })));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed !== undefined) throw this.abort.signal.reason ?? failed.reason;
  }

  private async copyRun(run: Run, index: number, buf: Buffer): Promise<void> {
    const offset = run.first * this.chunk.regionSize;
    const length = run.count * this.chunk.regionSize;
    if (run.kind === 'zero') return this.local((chunk) => zeroChunk(chunk, offset, length, false));
    await this.bucket.take(length, this.abort.signal);
    const data = buf.subarray(0, length);
    await this.readFromSources(index, offset, data);
    this.bytesRead += length;
    this.throwIfStopped();
    // Probe mode: all zeros is what an unwritten region reads as; clearing
    // (not writing) keeps the target thin.
    if (run.kind === 'probe' && isAllZero(data)) return this.local((chunk) => zeroChunk(chunk, offset, length, false));
    await this.local((chunk) => new Promise<void>((resolve, reject) => {
      writeChunk(chunk, offset, data, false, (err) => (err ? reject(err) : resolve()));
    }));
    this.bytesCopied += length;
    this.chunk.disk.stats.resyncCopyBytes += length;
  }

  /** Reads from the sources in turn, starting at this run's round-robin pick; the last error if all fail. */
  private async readFromSources(index: number, offset: number, dest: Buffer): Promise<void> {
    const n = this.sources.length;
    const first = this.nextSource++ % n;
    let lastErr: unknown;
    for (let i = 0; i < n; i++) {
      const src = this.sources[(first + i) % n]!;
      try {
        await src.read(offset, dest);
        return;
      } catch (err) {
        lastErr = err;
        this.log.debug({ source: src.address, run: index, err: errorMessage(err) }, 'source read failed: trying the next source');
      }
      this.throwIfStopped();
    }
    throw new IoError(`resync: every source failed to read offset ${offset} (last: ${errorMessage(lastErr)})`, { offset, sources: n }, { cause: lastErr });
  }

  /**
   * One local mutation of the target, admitted like a data-protocol request at
   * the copy's epoch: refused (STALE_EPOCH) once a newer holder fenced the
   * volume, and counted as in flight so a FENCE waits for it.
   */
  private async local(fn: (chunk: Chunk) => Promise<void>): Promise<void> {
    const vol = this.checkTarget();
    const chunk = this.chunk;
    chunk.beginIo(true);
    try {
      await this.store.ensureEpoch(vol, this.task.epoch);
      await fn(chunk);
    } finally {
      chunk.endIo(true);
    }
  }

  /** The target is still this chunk and the copy's epoch is still current; throws otherwise. */
  private checkTarget() {
    const { volumeId, segment, slot, epoch } = this.task;
    if (this.store.lookup(volumeId, segment, slot) !== this.chunk) {
      throw new NoChunkError(`the target chunk of volume ${volumeId} segment ${segment} slot ${slot} is gone from this node`);
    }
    return this.store.admit(volumeId, epoch);
  }

  private throwIfStopped(): void {
    if (this.abort.signal.aborted) throw this.abort.signal.reason;
  }

  private report(): void {
    this.reporter.maybeReport(async () => {
      const p = this.progress(false, '');
      // Only what the sync covers may be claimed: runs completed before it started.
      if (p.regionsDone > this.durableDone) {
        await this.chunk.sync();
        this.durableDone = p.regionsDone;
      }
      return p;
    });
  }

  private progress(finished: boolean, error: string): ResyncProgress & { regionsDone: number } {
    const done = finished ? this.regions : (this.runs[this.lowestOpen]?.first ?? this.regions);
    return {
      resyncId: this.task.resyncId, regionsDone: done, regionsTotal: this.regions, bytesCopied: this.bytesCopied, finished, error,
    };
  }
}
