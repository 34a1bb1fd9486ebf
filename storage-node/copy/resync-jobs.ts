import { isCounter } from '../../shared/counters.js';
import { InvalidArgumentError } from '../../shared/errors.js';
import { moduleLogger } from '../../shared/logger.js';
import type { ResyncTask__Output } from '../../proto/generated/vsky/common/ResyncTask.js';
import { ChunkCopy, type CopyOptions, type CopyTask } from './chunk-copy.js';
import type { Chunk } from '../chunk.js';
import type { ChunkStore } from '../chunk-store.js';
import { NoChunkError } from '../../shared/data-protocol/status.js';

// The resync copies running on this node (CopyChunk): validates a task,
// starts it in the background, and dedupes by resync id (the manager may
// resend a task it is not sure was received). A task with another id for a
// chunk that already has a copy running supersedes it: the old copy is
// cancelled and the new one starts once it has wound down, so two copies
// never write one chunk at once. Copies are not resumed by the node after a
// restart: the manager re-dispatches them with start_region.

export class ResyncJobs {
  private readonly store: ChunkStore;
  private readonly opts: CopyOptions;
  private readonly running = new Map<string, { copy: ChunkCopy; chunk: Chunk; done: Promise<void> }>();
  private readonly log = moduleLogger('resync-jobs');
  private closed = false;

  constructor(store: ChunkStore, opts: CopyOptions = {}) {
    this.store = store;
    this.opts = opts;
  }

  /** Copies running now (tests, status). */
  get size(): number {
    return this.running.size;
  }

  /**
   * Validates `task` and starts its copy; returns at once. A task whose id is
   * already running is a no-op. Throws (changing nothing) on a bad task, a
   * target chunk not on this node, or an epoch below the volume's.
   */
  start(task: ResyncTask__Output): void {
    if (this.closed) throw new InvalidArgumentError('CopyChunk: the node is shutting down');
    if (task.resyncId === '') throw new InvalidArgumentError('CopyChunk: resync_id is required');
    if (this.running.has(task.resyncId)) {
      this.log.debug({ resync: task.resyncId }, 'CopyChunk for a running resync: ignored');
      return;
    }
    const target = task.target;
    if (target === null) throw new InvalidArgumentError('CopyChunk: target is required', { resync: task.resyncId });
    const chunk = this.store.lookup(task.volumeId, task.segment, target.slot);
    if (chunk === undefined) {
      throw new NoChunkError(`CopyChunk: no chunk for volume ${task.volumeId} segment ${task.segment} slot ${target.slot} on this node`,
        { resync: task.resyncId });
    }
    if (target.diskId !== '' && (target.diskId !== chunk.disk.id || target.chunkIndex !== chunk.index)) {
      throw new NoChunkError(`CopyChunk: volume ${task.volumeId} segment ${task.segment} slot ${target.slot} is chunk ${chunk.index} of disk ${chunk.disk.id} here, not chunk ${target.chunkIndex} of disk ${target.diskId}`,
        { resync: task.resyncId });
    }
    if (!isCounter(task.epoch) || !isCounter(task.generation)) {
      // uint64 on the wire: a value above 2^53-1 arrives as an inexact number; refuse it, never round it.
      throw new InvalidArgumentError(`CopyChunk: epoch ${task.epoch} and generation ${task.generation} must be 0..2^53-1`, { resync: task.resyncId });
    }
    if (task.sources.length === 0) throw new InvalidArgumentError('CopyChunk: at least one source is required', { resync: task.resyncId });
    for (const src of task.sources) {
      if (src.dataAddress === '') throw new InvalidArgumentError(`CopyChunk: source slot ${src.slot} has no data address`, { resync: task.resyncId });
      if (src.slot === target.slot) throw new InvalidArgumentError(`CopyChunk: source slot ${src.slot} is the target slot`, { resync: task.resyncId });
    }
    if (task.chunkSize !== 0 && task.chunkSize !== chunk.size) {
      throw new InvalidArgumentError(`CopyChunk: chunk size ${task.chunkSize} differs from the target chunk's ${chunk.size}`, { resync: task.resyncId });
    }
    const regions = chunk.size / chunk.regionSize;
    if (task.startRegion > regions) {
      throw new InvalidArgumentError(`CopyChunk: start region ${task.startRegion} is beyond the chunk's ${regions} regions`, { resync: task.resyncId });
    }
    // Refused now rather than failing in the background: a newer holder owns the volume.
    this.store.admit(task.volumeId, task.epoch);

    const copyTask: CopyTask = {
      resyncId: task.resyncId, volumeId: task.volumeId, volumeName: task.volumeName, segment: task.segment, slot: target.slot,
      epoch: task.epoch, generation: task.generation, startRegion: task.startRegion, throttleMibps: task.throttleMibps,
      managerAddress: task.managerAddress, sources: task.sources,
    };
    const copy = new ChunkCopy(this.store, chunk, copyTask, this.opts);
    const previous = [...this.running.entries()].find(([, j]) => j.chunk === chunk);
    if (previous !== undefined) {
      this.log.warn({ resync: task.resyncId, superseded: previous[0] }, 'a new resync of the same chunk supersedes the running one');
      previous[1].copy.cancel();
    }
    const done = (previous?.[1].done ?? Promise.resolve()).then(() => copy.run()).finally(() => this.running.delete(task.resyncId));
    this.running.set(task.resyncId, { copy, chunk, done });
    this.log.info({ resync: task.resyncId, volumeId: task.volumeId, segment: task.segment, slot: target.slot, epoch: task.epoch,
      sources: task.sources.map((s) => s.dataAddress), startRegion: task.startRegion, throttleMibps: task.throttleMibps }, 'resync copy started');
  }

  /** Resolves when the copy `resyncId` has ended (at once if it is not running). */
  settled(resyncId: string): Promise<void> {
    return this.running.get(resyncId)?.done ?? Promise.resolve();
  }

  /** Stops every copy (node shutdown) and waits for them to wind down. */
  async close(): Promise<void> {
    this.closed = true;
    const jobs = [...this.running.values()];
    for (const j of jobs) j.copy.cancel();
    await Promise.all(jobs.map((j) => j.done));
  }
}
