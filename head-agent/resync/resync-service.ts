import { MiB } from '../../shared/constants.js';
import {
  ConflictError, InvalidArgumentError, IoError, NotFoundError, errorMessage,
} from '../../shared/errors.js';
import { call, managerClient, type ManagerClient } from '../../shared/grpc.js';
import { moduleLogger, type Logger } from '../../shared/logger.js';
import type { ResyncTask__Output } from '../../proto/generated/vsky/common/ResyncTask.js';
import { allRegions, defaultRegionSize, orInto, setRuns } from '../../shared/region-bitmap.js';
import type { NodeControlClients } from '../engine/node-control-clients.js';
import type { LinearVolume } from '../engine/linear-volume.js';
import type { Mirror } from '../engine/mirror.js';
import type { RegionLocks } from '../engine/region-locks.js';
import type { Replica } from '../engine/replica.js';

// Resync of a segment of an attached volume (StartResync): copies the regions
// ever written on the in-sync sources to the resyncing target while
// foreground I/O goes on. The target already takes every foreground write
// (the map made it "resyncing"); the copier fills in what it missed:
//  1. install the segment's region locks, then wait for mutations begun
//     before (they hold no lock, and some may have skipped the target);
//  2. union the sources' written bitmaps (GetChunkRegions): regions never
//     written are not copied (docs/design.md rule 8);
//  3. for each run of written regions from start_region: lock it exclusively
//     (foreground writes there wait; the copy waits for those in flight), read
//     it from a source (round-robin over the sources), write it to the target
//     under the volume's epoch, unlock. A few runs are in flight; a token
//     bucket holds the rate to throttle_mibps;
//  4. report progress to the manager at most every 500 ms (after a flush of
//     the target, so "regions below N are copied" is durable), then finished,
//     or the error. A reply asking to cancel stops it, as does a detach.
// One run per resync_id: a second StartResync for a running id is a no-op.

export interface ResyncVolumes {
  lookup(name: string): LinearVolume | undefined;
}

export interface ResyncServiceOptions {
  volumes: ResyncVolumes;
  clients: NodeControlClients;
  /** The manager to report to when a task names none (the manager link's client). */
  defaultManager?: () => ManagerClient | undefined;
  progressIntervalMs?: number;
  /** Copy runs in flight. */
  inflight?: number;
  /** Largest run copied at once. */
  copyBytes?: number;
}

export interface ResyncStatus {
  regionsDone: number;
  regionsTotal: number;
  bytesCopied: number;
}

class ResyncStopped extends Error {}

/** Holds the copy to `rate` bytes/s (0: unthrottled). */
class TokenBucket {
  private tokens: number;
  private last = Date.now();

  constructor(private readonly rate: number) {
    this.tokens = rate / 10;
  }

  /** Waits until `n` bytes may go; `check` runs every 100 ms of waiting (it throws to stop). */
  async take(n: number, check: () => void): Promise<void> {
    if (this.rate <= 0) return;
    const now = Date.now();
    this.tokens = Math.min(this.rate / 10, this.tokens + ((now - this.last) / 1000) * this.rate);
    this.last = now;
    this.tokens -= n;
    const until = now + (this.tokens < 0 ? (-this.tokens / this.rate) * 1000 : 0);
    for (let left = until - Date.now(); left > 0; left = until - Date.now()) {
      await sleep(Math.min(left, 100));
      check();
    }
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

class ResyncRun {
  readonly status: ResyncStatus = { regionsDone: 0, regionsTotal: 0, bytesCopied: 0 };
  readonly done: Promise<void>;
  private cancelled = false;
  private rr = 0;
  private lastReport = Date.now();
  private reporting = false;
  private readonly bucket: TokenBucket;

  constructor(
    readonly task: ResyncTask__Output, private readonly volume: LinearVolume, private readonly mirror: Mirror,
    readonly target: Replica, private readonly sources: readonly Replica[], private readonly svc: ResyncService,
    private readonly log: Logger,
  ) {
    this.status.regionsDone = task.startRegion;
    this.bucket = new TokenBucket(task.throttleMibps * MiB);
    this.done = this.run();
  }

  cancel(): void {
    this.cancelled = true;
  }

  private async run(): Promise<void> {
    let locks: RegionLocks | undefined;
    // Foreground writes take the slower locked path while the table is installed: drop it before reporting.
    const unlock = (): void => {
      if (locks !== undefined) this.mirror.endResync(locks);
      locks = undefined;
    };
    try {
      const first = await this.writtenRegions();
      locks = this.mirror.beginResync(first.regionSize, first.regionCount);
      await this.volume.tracker.barrier();
      // Again, now that every write that may have skipped the target is done.
      const { written, regionSize, regionCount } = await this.writtenRegions();
      this.status.regionsTotal = regionCount;
      await this.copyAll(written, regionSize, regionCount, locks);
      unlock();
      this.checkStop();
      await this.target.flush(this.volume.epoch);
      this.target.mustResync = false; // the manager's next map may make it readable
      this.status.regionsDone = regionCount;
      this.log.info({ ...this.status }, 'resync finished');
      await this.report(true, '', 5);
    } catch (err) {
      unlock();
      if (this.cancelled) {
        this.log.info('resync cancelled by the manager');
        return;
      }
      this.log.warn({ err: errorMessage(err), ...this.status }, 'resync failed');
      await this.report(false, errorMessage(err), 3);
    }
  }

  /** Union of the sources' written bitmaps; every region when no source can say. */
  private async writtenRegions(): Promise<{ written: Uint8Array; regionSize: number; regionCount: number }> {
    const chunkSize = this.volume.chunkSize;
    const locs = this.sources.map((r) => this.task.sources.find((l) => l.slot === r.slot)?.controlAddress || r.controlAddress);
    if (locs.some((a) => a === '')) {
      this.log.warn('a source has no control address: copying every region');
      const regionSize = this.volume.regions?.regionSize ?? defaultRegionSize(chunkSize);
      const regionCount = Math.ceil(chunkSize / regionSize);
      return { written: allRegions(regionCount), regionSize, regionCount };
    }
    const results = await Promise.allSettled(this.sources.map((r, i) => this.svc.clients.regions(locs[i]!, r, chunkSize)));
    const ok = results.flatMap((res) => (res.status === 'fulfilled' ? [res.value] : []));
    if (ok.length === 0) {
      throw new IoError(`cannot read the written-region bitmap of any source: ${errorMessage((results[0] as PromiseRejectedResult).reason)}`);
    }
    const { regionSize, regionCount } = ok[0]!;
    const written = new Uint8Array(ok[0]!.written.length);
    for (const m of ok) {
      if (m.regionSize !== regionSize) throw new IoError('the sources disagree on the region size');
      orInto(written, m.written);
    }
    return { written, regionSize, regionCount };
  }

  private async copyAll(written: Uint8Array, regionSize: number, regionCount: number, locks: RegionLocks): Promise<void> {
    const maxRegions = Math.max(1, Math.floor(this.svc.copyBytes / regionSize));
    const units = setRuns(written, Math.min(this.task.startRegion, regionCount), regionCount, maxRegions);
    const inflight = new Set<number>();
    let next = 0;
    let failure: unknown;
    const watermark = (): number => {
      let low = next < units.length ? units[next]![0] : regionCount;
      for (const f of inflight) low = Math.min(low, f);
      return low;
    };
    const worker = async (): Promise<void> => {
      const buf = Buffer.allocUnsafe(maxRegions * regionSize);
      while (next < units.length && failure === undefined) {
        const [first, last] = units[next++]!;
        inflight.add(first);
        try {
          await this.copyRun(first, last, regionSize, locks, buf);
        } catch (err) {
          failure ??= err;
          return;
        } finally {
          inflight.delete(first);
        }
        this.status.regionsDone = watermark();
        this.maybeReport();
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, this.svc.inflight) }, worker));
    if (failure !== undefined) throw failure;
  }

  private async copyRun(first: number, last: number, regionSize: number, locks: RegionLocks, buf: Buffer): Promise<void> {
    const off = first * regionSize;
    const len = Math.min((last + 1) * regionSize, this.volume.chunkSize) - off;
    await this.bucket.take(len, () => this.checkStop());
    this.checkStop();
    await locks.acquireExclusive(first, last);
    try {
      this.checkStop();
      const data = buf.subarray(0, len);
      await this.readSource(off, data);
      await this.target.write(this.volume.epoch, off, data, false);
    } finally {
      locks.releaseExclusive(first, last);
    }
    this.status.bytesCopied += len;
  }

  private async readSource(off: number, dest: Buffer): Promise<void> {
    const n = this.sources.length;
    const start = this.rr++ % n;
    let lastErr: unknown;
    for (let k = 0; k < n; k++) {
      const src = this.sources[(start + k) % n]!;
      if (!src.readable) continue;
      try {
        await src.read(off, dest);
        return;
      } catch (err) {
        lastErr = err;
      }
    }
    throw new IoError(`no source replica could be read at ${off} (+${dest.length}): ${errorMessage(lastErr ?? 'none readable')}`, {}, { cause: lastErr });
  }

  private checkStop(): void {
    if (this.cancelled) throw new ResyncStopped('cancelled');
    if (this.volume.isDetached) throw new ResyncStopped(`volume ${this.volume.name} was detached`);
    if (this.volume.mirrors()[this.mirror.index] !== this.mirror) throw new ResyncStopped(`volume ${this.volume.name} was re-attached with a newer epoch`);
    const t = this.target;
    if (!this.mirror.replicas.includes(t) || t.state !== 'resyncing' || t.suspect) {
      throw new ResyncStopped(`${t.describe()} is no longer resyncing in this head's map`);
    }
  }

  /** Progress at most every interval, after flushing the target (best effort, never blocks the copy). */
  private maybeReport(): void {
    const now = Date.now();
    if (this.reporting || now - this.lastReport < this.svc.progressIntervalMs) return;
    this.reporting = true;
    this.lastReport = now;
    const done = this.status.regionsDone;
    void this.target.flush(this.volume.epoch)
      .then(() => this.report(false, '', 1, done))
      .catch((err: unknown) => this.log.debug({ err: errorMessage(err) }, 'resync progress not reported'))
      .finally(() => { this.reporting = false; });
  }

  private async report(finished: boolean, error: string, attempts: number, regionsDone = this.status.regionsDone): Promise<void> {
    const client = this.svc.manager(this.task.managerAddress);
    if (client === undefined) return;
    const req = {
      resyncId: this.task.resyncId, regionsDone, regionsTotal: this.status.regionsTotal,
      bytesCopied: this.status.bytesCopied, finished, error,
    };
    let delay = 200;
    for (let i = 1; ; i++) {
      try {
        const reply = await call(client, 'ReportResyncProgress', req, 3000);
        if (reply.cancel) this.cancelled = true;
        return;
      } catch (err) {
        if (i >= attempts) {
          this.log.warn({ err: errorMessage(err), finished, error }, 'cannot report resync progress to the manager');
          return;
        }
        await sleep(delay);
        delay *= 2;
      }
    }
  }
}

/** The resyncs this head runs, by resync id. */
export class ResyncService {
  readonly clients: NodeControlClients;
  readonly progressIntervalMs: number;
  readonly inflight: number;
  readonly copyBytes: number;
  private readonly opts: ResyncServiceOptions;
  private readonly running = new Map<string, ResyncRun>();
  private readonly managers = new Map<string, ManagerClient>();
  private readonly log: Logger;

  constructor(opts: ResyncServiceOptions) {
    this.opts = opts;
    this.clients = opts.clients;
    this.progressIntervalMs = opts.progressIntervalMs ?? 500;
    this.inflight = opts.inflight ?? 4;
    this.copyBytes = opts.copyBytes ?? MiB;
    this.log = moduleLogger('head-resync');
  }

  /** Starts the copy in the background; throws when the task cannot run here. A running id: no-op. */
  start(task: ResyncTask__Output): void {
    if (!task.resyncId) throw new InvalidArgumentError('StartResync: a resync id is required');
    if (this.running.has(task.resyncId)) return;
    const volume = this.opts.volumes.lookup(task.volumeName);
    if (volume === undefined || volume.isDetached) {
      throw new NotFoundError(`StartResync: volume ${task.volumeName} is not attached to this head`, { volume: task.volumeName });
    }
    if (task.volumeId !== 0 && task.volumeId !== volume.volumeId) {
      throw new ConflictError(`StartResync: volume ${task.volumeName} attached here has id ${volume.volumeId}, not ${task.volumeId}`, { volume: task.volumeName });
    }
    if (task.chunkSize !== 0 && task.chunkSize !== volume.chunkSize) {
      throw new ConflictError(`StartResync: chunk size ${task.chunkSize} differs from the attached volume's ${volume.chunkSize}`, { volume: task.volumeName });
    }
    const mirror = volume.segment(task.segment);
    const t = task.target;
    if (t === null || t === undefined) throw new InvalidArgumentError('StartResync: the task names no target replica');
    const target = mirror.replicas.find((r) => r.slot === t.slot && (t.dataAddress === '' || r.address === t.dataAddress));
    if (target === undefined || target.state !== 'resyncing' || target.suspect) {
      throw new ConflictError(`StartResync: replica ${t.slot} of segment ${task.segment} of volume ${task.volumeName} is not resyncing in this head's map (apply UpdateMap first)`, {
        volume: task.volumeName, segment: task.segment, slot: t.slot,
      });
    }
    for (const other of this.running.values()) {
      if (other.target === target) {
        throw new ConflictError(`StartResync: resync ${other.task.resyncId} of ${target.describe()} is already running`, { volume: task.volumeName });
      }
    }
    const named = task.sources.length > 0 ? task.sources : mirror.replicas.filter((r) => r.readable);
    const sources = named.flatMap((l) => mirror.replicas.filter((r) => r.slot === l.slot && r.readable && r !== target));
    if (sources.length === 0) {
      throw new ConflictError(`StartResync: no source of segment ${task.segment} of volume ${task.volumeName} is in sync here`, { volume: task.volumeName });
    }
    const log = this.log.child({ resync: task.resyncId, volume: task.volumeName, segment: task.segment, slot: t.slot });
    log.info({ sources: sources.map((s) => s.slot), startRegion: task.startRegion, throttleMibps: task.throttleMibps }, 'resync started');
    const run = new ResyncRun(task, volume, mirror, target, sources, this, log);
    this.running.set(task.resyncId, run);
    void run.done.finally(() => {
      if (this.running.get(task.resyncId) === run) this.running.delete(task.resyncId);
    });
  }

  /** A running resync's progress (tests, stats). */
  status(resyncId: string): ResyncStatus | undefined {
    return this.running.get(resyncId)?.status;
  }

  /** Settles when the resync ends (immediately if it is not running). */
  finished(resyncId: string): Promise<void> {
    return this.running.get(resyncId)?.done ?? Promise.resolve();
  }

  manager(address: string): ManagerClient | undefined {
    if (address === '') return this.opts.defaultManager?.();
    let c = this.managers.get(address);
    if (c === undefined) {
      c = managerClient(address);
      this.managers.set(address, c);
    }
    return c;
  }

  /** Stops every resync (they report nothing more) and closes the manager clients. */
  async close(): Promise<void> {
    const runs = [...this.running.values()];
    for (const r of runs) r.cancel();
    await Promise.allSettled(runs.map((r) => r.done));
    for (const c of this.managers.values()) c.close();
    this.managers.clear();
  }
}
