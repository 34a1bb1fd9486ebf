import { VskyError, errorMessage } from '../shared/errors.js';
import { moduleLogger } from '../shared/logger.js';
import type { EventLog } from './events.js';
import { mapLimit, type PeerClients } from './node-clients.js';
import type { PlacementModel } from './placement.js';
import { BAD_OWNER, FOREIGN_OWNER } from './placement/model-disk.js';
import type { Registry } from './registry.js';
import type { ManagerStore, StoreBatch } from './store.js';
import type { ToFreeRecord } from './types.js';

// Garbage: chunks that nodes hold but no committed volume references.
//
// ChunkFreer keeps the durable to-free list (chunks of deleted volumes and of
// rolled-back creates) and frees them on their nodes; a chunk stays owned in
// the placement model until its node confirms, so it is never handed to a new
// volume while the old data may still be there.
//
// GarbageCollector also asks every active node for its chunks and frees those
// the model says are free (rule 6: never a chunk committed metadata
// references, nor one of a create in progress in this process, nor one whose
// volume id this manager never issued - that would be a different database).

const log = moduleLogger('manager.gc');

/**
 * How to treat a failed FreeChunk: 'retry' (node unreachable or busy),
 * 'done' (the node answered about the chunk: no such disk, bad index; a
 * free chunk is not an error). A conflict is either transient (the chunk is
 * being changed) or means the chunk holds another volume (it is not ours to
 * free): retried a few passes, then dropped.
 */
function classify(err: unknown): 'retry' | 'conflict' | 'done' {
  if (!(err instanceof VskyError)) return 'retry';
  if (err.code === 'ECONFLICT') return 'conflict';
  return ['ETRANSPORT', 'ETIMEDOUT', 'EIO', 'EINTERNAL'].includes(err.code) ? 'retry' : 'done';
}

/** Passes a chunk may keep answering "conflict" before it leaves the to-free list. */
const MAX_CONFLICTS = 5;

const keyOf = (diskId: string, index: number) => `${diskId}/${index}`;

/** The distinct values, comma-separated, the first few only ("a, b, c (+4 more)"). */
function summarize(values: string[], max = 4): string {
  const distinct = [...new Set(values)];
  return distinct.slice(0, max).join(', ') + (distinct.length > max ? ` (+${distinct.length - max} more)` : '');
}

export class ChunkFreer {
  /**
   * Entries not to free yet (manager/core.ts: a replaced replica of a volume
   * whose head has not confirmed a map without it; that head may still use it).
   */
  hold?: (r: ToFreeRecord) => boolean;
  private readonly entries = new Map<string, ToFreeRecord>();
  private readonly inFlight = new Set<string>();
  private readonly conflicts = new Map<string, number>();

  constructor(
    private readonly store: ManagerStore,
    private readonly model: PlacementModel,
    private readonly registry: Registry,
    private readonly peers: PeerClients,
    private readonly parallelism = 16,
  ) {}

  /** Loads the persisted list; the chunks stay owned in the model until freed. */
  load(records: ToFreeRecord[]): void {
    for (const r of records) {
      try {
        this.model.claim(r.diskId, r.chunkIndex, r.volumeId);
      } catch (err) {
        log.warn({ diskId: r.diskId, chunkIndex: r.chunkIndex, err: errorMessage(err) }, 'to-free entry on an unknown or taken chunk; still asking its node');
      }
      this.entries.set(keyOf(r.diskId, r.chunkIndex), r);
    }
  }

  get size(): number {
    return this.entries.size;
  }

  list(): ToFreeRecord[] {
    return [...this.entries.values()];
  }

  /** Adds the records to a batch; call `track` once the batch is written. */
  stage(batch: StoreBatch, records: ToFreeRecord[]): void {
    for (const r of records) batch.putToFree(r);
  }

  track(records: ToFreeRecord[]): void {
    for (const r of records) this.entries.set(keyOf(r.diskId, r.chunkIndex), r);
  }

  /**
   * Asks the nodes to free the given tracked chunks (default: all). Chunks on
   * servers that are not active, or whose node cannot be reached, stay listed.
   */
  async free(records?: ToFreeRecord[]): Promise<{ freed: number; left: number }> {
    const targets: Array<{ r: ToFreeRecord; address: string }> = [];
    let skipped = 0;
    for (const r of records ?? this.list()) {
      const key = keyOf(r.diskId, r.chunkIndex);
      if (!this.entries.has(key) || this.inFlight.has(key)) continue;
      if (this.hold?.(r)) {
        skipped++;
        continue;
      }
      const server = this.registry.serverOfDisk(r.diskId);
      if (!server || server.state !== 'active') {
        skipped++;
        continue;
      }
      this.inFlight.add(key);
      targets.push({ r, address: server.controlAddress });
    }
    const results = await mapLimit(targets, this.parallelism, ({ r, address }) =>
      this.peers.node.freeChunk(address, { diskId: r.diskId, chunkIndex: r.chunkIndex, volumeId: r.volumeId }));
    const done: ToFreeRecord[] = [];
    const foreign = new Set<string>();
    let left = skipped;
    results.forEach((res, i) => {
      const { r } = targets[i]!;
      const key = keyOf(r.diskId, r.chunkIndex);
      const reason: unknown = res.status === 'rejected' ? res.reason : undefined;
      const kind = res.status === 'fulfilled' ? 'ok' : classify(reason);
      const conflicts = kind === 'conflict' ? (this.conflicts.get(key) ?? 0) + 1 : 0;
      if (kind === 'ok') {
        done.push(r);
      } else if (kind === 'done' || conflicts >= MAX_CONFLICTS) {
        log.warn({ diskId: r.diskId, chunkIndex: r.chunkIndex, volumeId: r.volumeId, err: errorMessage(reason) }, 'node refused to free the chunk; dropping it from the to-free list');
        done.push(r);
        if (kind === 'conflict') foreign.add(key);
      } else {
        if (kind === 'conflict') this.conflicts.set(key, conflicts);
        left++;
        log.debug({ diskId: r.diskId, chunkIndex: r.chunkIndex, err: errorMessage(reason) }, 'free failed; kept for the next GC');
      }
    });
    try {
      if (done.length > 0) {
        const batch = this.store.batch();
        for (const r of done) batch.delToFree(r.diskId, r.chunkIndex);
        const ok = results.filter((r) => r.status === 'fulfilled').length;
        batch.event('gc.freed', 'cluster', `${ok} chunk(s) freed on their nodes${done.length > ok ? `, ${done.length - ok} dropped from the to-free list (refused by their node)` : ''}: ${summarize(done.map((r) => r.reason))}`,
          { chunks: ok, dropped: done.length - ok, disks: summarize(done.map((r) => r.diskId)), volumeIds: summarize(done.map((r) => String(r.volumeId))) });
        await this.store.write(batch);
        for (const r of done) {
          this.entries.delete(keyOf(r.diskId, r.chunkIndex));
          this.conflicts.delete(keyOf(r.diskId, r.chunkIndex));
          if (foreign.has(keyOf(r.diskId, r.chunkIndex))) this.model.markForeign(r.diskId, r.chunkIndex, r.volumeId);
          else this.model.release(r.diskId, r.chunkIndex, r.volumeId);
        }
      }
    } finally {
      for (const { r } of targets) this.inFlight.delete(keyOf(r.diskId, r.chunkIndex));
    }
    return { freed: done.length, left };
  }
}

export interface GcHooks {
  /** True while this process is creating the volume (its chunks are not garbage). */
  isCreating(volumeId: number): boolean;
  /** Ids at or above this were never issued by this database. */
  nextVolumeId(): number;
  /** Turns pending creates left by an earlier process into to-free entries; returns how many. */
  rollbackStalePending(): Promise<number>;
}

/** What the storage nodes keep for a rebuild from storage that GC tends (manager/storage-notes.ts). */
export interface GcStorageNotes {
  /** True while the manager knows the volume (its tombstone stays). */
  volumeExists(volumeId: number): boolean;
  /** Drops these tombstones on the node. */
  forgetDeleted(address: string, volumeIds: number[]): Promise<void>;
  /** Sends the committed note of creates not confirmed on every node yet; returns how many are left. */
  retryUnconfirmed(): Promise<number>;
}

export interface GcReportData {
  chunksFreed: number;
  pendingRolledBack: number;
}

export class GarbageCollector {
  private chain: Promise<unknown> = Promise.resolve();
  /** Where chunks freed by a pass are recorded (manager/core.ts wires it). */
  events?: EventLog;
  /** Tombstones and unconfirmed creates (manager/core.ts wires it). */
  notes?: GcStorageNotes;

  constructor(
    private readonly freer: ChunkFreer,
    private readonly model: PlacementModel,
    private readonly registry: Registry,
    private readonly peers: PeerClients,
    private readonly hooks: GcHooks,
  ) {}

  /** One full pass; passes run one at a time. */
  run(reason: string): Promise<GcReportData> {
    const next = this.chain.then(() => this.pass(reason));
    this.chain = next.catch(() => undefined);
    return next;
  }

  private async pass(reason: string): Promise<GcReportData> {
    const started = Date.now();
    const pendingRolledBack = await this.hooks.rollbackStalePending();
    const listed = await this.freer.free();
    const orphans = await this.freeOrphans();
    if (this.notes) {
      const unconfirmed = await this.notes.retryUnconfirmed().catch((err: unknown) => {
        log.warn({ err: errorMessage(err) }, 'GC could not confirm creates on storage');
        return -1;
      });
      if (unconfirmed > 0) log.warn({ volumes: unconfirmed }, 'creates not confirmed on every node holding a chunk yet (a node down): retried at the next pass');
    }
    const report = { chunksFreed: listed.freed + orphans.freed, pendingRolledBack };
    if (orphans.freed > 0) {
      void this.events?.record('gc.freed', 'cluster', `GC (${reason}) freed ${orphans.freed} chunk(s) no volume references (left by interrupted creates or deletes)`,
        { chunks: orphans.freed, orphans: true });
    }
    log.info({
      reason, ...report, toFreeFreed: listed.freed, orphansFreed: orphans.freed, toFreeLeft: listed.left,
      unreachable: orphans.unreachable, ms: Date.now() - started,
    }, `GC freed ${report.chunksFreed} chunks`);
    return report;
  }

  private async freeOrphans(): Promise<{ freed: number; unreachable: string[] }> {
    const servers = this.registry.listServers().filter((s) => s.state === 'active');
    const unreachable: string[] = [];
    let freed = 0;
    /** Tombstones per node address, and the volume ids that still have a chunk somewhere. */
    const tombstones = new Map<string, number[]>();
    const held = new Set<number>();
    await mapLimit(servers, 4, async (s) => {
      let chunks;
      try {
        const list = await this.peers.node.listChunks(s.controlAddress, { diskId: '' });
        chunks = list.chunks;
        if (list.deletedVolumes?.length) tombstones.set(s.controlAddress, list.deletedVolumes);
        for (const c of chunks) held.add(c.identity?.volumeId ?? 0);
      } catch (err) {
        unreachable.push(s.name);
        log.warn({ serverId: s.id, err: errorMessage(err) }, 'GC could not list the chunks of a server');
        return;
      }
      this.releaseForeign(s.id, new Set(chunks.map((c) => keyOf(c.diskId, c.chunkIndex))));
      const orphans = chunks.filter((c) => this.isOrphan(s.id, c.diskId, c.chunkIndex, c.identity?.volumeId ?? 0));
      const results = await mapLimit(orphans, 8, (c) =>
        this.peers.node.freeChunk(s.controlAddress, { diskId: c.diskId, chunkIndex: c.chunkIndex, volumeId: c.identity!.volumeId }));
      results.forEach((res, i) => {
        const c = orphans[i]!;
        const line = { serverId: s.id, diskId: c.diskId, chunkIndex: c.chunkIndex, volumeId: c.identity!.volumeId, volumeName: c.identity!.volumeName };
        if (res.status === 'fulfilled') {
          freed++;
          log.info(line, 'GC freed an unreferenced chunk');
        } else {
          log.warn({ ...line, err: errorMessage(res.reason) }, 'GC could not free an unreferenced chunk');
        }
      });
    });
    // Tombstones go only once every active node answered, none holds a chunk of the volume and none is left to free
    // (a chunk on a node that is not active is on the to-free list until its node frees it). Nodes not listed keep theirs.
    if (this.notes && tombstones.size > 0 && unreachable.length === 0) {
      const pending = new Set(this.freer.list().map((r) => r.volumeId));
      await mapLimit([...tombstones], 4, async ([address, ids]) => {
        const gone = ids.filter((id) => !held.has(id) && !pending.has(id) && !this.notes!.volumeExists(id) && !this.hooks.isCreating(id));
        if (gone.length === 0) return;
        try {
          await this.notes!.forgetDeleted(address, gone);
          log.info({ node: address, volumes: gone.length }, 'tombstones of fully freed volumes dropped');
        } catch (err) {
          log.warn({ node: address, err: errorMessage(err) }, 'could not drop tombstones; retried at the next pass');
        }
      });
    }
    return { freed, unreachable };
  }

  /** Chunks kept out of placement as foreign that the server no longer holds go back to the pool. */
  private releaseForeign(serverId: string, held: Set<string>): void {
    for (const d of this.registry.disksOf(serverId)) {
      for (const i of this.model.foreignChunks(d.id)) {
        if (held.has(keyOf(d.id, i))) continue;
        this.model.release(d.id, i, FOREIGN_OWNER);
        log.info({ serverId, diskId: d.id, chunkIndex: i }, 'a chunk held by an unknown volume is free again');
      }
    }
  }

  // Called after the listing, so it sees every create or delete that finished
  // meanwhile. A chunk is garbage only if the model says the chunk is free.
  private isOrphan(serverId: string, diskId: string, chunkIndex: number, volumeId: number): boolean {
    const owner = this.model.ownerOf(diskId, chunkIndex);
    if (owner === undefined) return false; // a disk (or index) this manager does not manage
    if (owner !== 0) {
      if (owner !== volumeId && owner !== FOREIGN_OWNER && owner !== BAD_OWNER) log.warn({ serverId, diskId, chunkIndex, owner, nodeSays: volumeId }, 'chunk owner differs between manager and node; leaving it');
      return false;
    }
    if (volumeId === 0 || this.hooks.isCreating(volumeId)) return false;
    if (volumeId >= this.hooks.nextVolumeId()) {
      log.warn({ serverId, diskId, chunkIndex, volumeId }, 'chunk names a volume id this database never issued; leaving it (was the manager database replaced?)');
      return false;
    }
    return true;
  }
}
