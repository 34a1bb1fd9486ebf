import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { Level } from 'level';
import { CorruptMetadataError } from '../shared/errors.js';
import { moduleLogger } from '../shared/logger.js';
import {
  chunkMapProblem, type ChunkMapRecord, type DiskRecord, type HeadRecord, type PendingCreateRecord,
  type ResyncRecord, type ServerRecord, type ToFreeRecord, type VolumeRecord,
} from './types.js';

// Cluster metadata in LevelDB. Key layout (JSON values):
//
//   meta/format              1 (refuse to open anything else)
//   meta/next_volume_id      next u32 volume id to hand out
//   server/<server id>       ServerRecord
//   disk/<disk id>           DiskRecord
//   head/<head id>           HeadRecord
//   volume/<id, 10 digits>   VolumeRecord (small; rewritten on attach/detach)
//   chunks/<id, 10 digits>   ChunkMapRecord (the volume's chunk ownership; written with it)
//   pending/<id, 10 digits>  PendingCreateRecord (a create between its two batches)
//   tofree/<disk id>/<index> ToFreeRecord (a chunk to free on its node)
//   meta/next_resync_id      next resync number ("r<n>" ids are never reused)
//   resync/<resync id>       ResyncRecord (a replica being rebuilt; see manager/resyncs.ts)
//
// Every change is one atomic batch, and batches are written one after
// another in the order they were issued: the async LevelDB binding could
// otherwise apply two batches touching one key in either order.

const FORMAT = 1;
const log = moduleLogger('manager.store');

export interface StoreSnapshot {
  nextVolumeId: number;
  servers: ServerRecord[];
  disks: DiskRecord[];
  heads: HeadRecord[];
  volumes: Array<{ volume: VolumeRecord; map: ChunkMapRecord }>;
  pending: PendingCreateRecord[];
  toFree: ToFreeRecord[];
  nextResyncId: number;
  resyncs: ResyncRecord[];
}

type Op = { type: 'put'; key: string; value: unknown } | { type: 'del'; key: string };

const pad = (id: number) => String(id).padStart(10, '0');
export const keys = {
  format: 'meta/format',
  nextVolumeId: 'meta/next_volume_id',
  nextResyncId: 'meta/next_resync_id',
  server: (id: string) => `server/${id}`,
  disk: (id: string) => `disk/${id}`,
  head: (id: string) => `head/${id}`,
  volume: (id: number) => `volume/${pad(id)}`,
  chunks: (id: number) => `chunks/${pad(id)}`,
  pending: (id: number) => `pending/${pad(id)}`,
  toFree: (diskId: string, index: number) => `tofree/${diskId}/${pad(index)}`,
  resync: (id: string) => `resync/${id}`,
};

/** A typed list of changes that `ManagerStore.write` applies atomically. */
export class StoreBatch {
  readonly ops: Op[] = [];

  get length(): number {
    return this.ops.length;
  }

  putServer(r: ServerRecord): this { return this.put(keys.server(r.id), r); }
  putDisk(r: DiskRecord): this { return this.put(keys.disk(r.id), r); }
  putHead(r: HeadRecord): this { return this.put(keys.head(r.id), r); }
  putVolume(r: VolumeRecord): this { return this.put(keys.volume(r.id), r); }
  putChunkMap(r: ChunkMapRecord): this { return this.put(keys.chunks(r.volumeId), r); }
  /** Removes a volume and its chunk map. */
  delVolume(id: number): this { return this.del(keys.volume(id)).del(keys.chunks(id)); }
  putPending(r: PendingCreateRecord): this { return this.put(keys.pending(r.volume.id), r); }
  delPending(id: number): this { return this.del(keys.pending(id)); }
  putToFree(r: ToFreeRecord): this { return this.put(keys.toFree(r.diskId, r.chunkIndex), r); }
  delToFree(diskId: string, index: number): this { return this.del(keys.toFree(diskId, index)); }
  putNextVolumeId(n: number): this { return this.put(keys.nextVolumeId, n); }
  putResync(r: ResyncRecord): this { return this.put(keys.resync(r.id), r); }
  delResync(id: string): this { return this.del(keys.resync(id)); }
  putNextResyncId(n: number): this { return this.put(keys.nextResyncId, n); }

  private put(key: string, value: unknown): this {
    // Copy now: the caller's record may change before the batch is written.
    this.ops.push({ type: 'put', key, value: structuredClone(value) });
    return this;
  }

  private del(key: string): this {
    this.ops.push({ type: 'del', key });
    return this;
  }
}

export class ManagerStore {
  private tail: Promise<void> = Promise.resolve();

  private constructor(readonly db: Level<string, unknown>, readonly path: string) {}

  /** Opens (creating if needed) the database in `dataDir/db`. */
  static async open(dataDir: string): Promise<ManagerStore> {
    const path = join(dataDir, 'db');
    await mkdir(dataDir, { recursive: true });
    const db = new Level<string, unknown>(path, { valueEncoding: 'json' });
    await db.open();
    const store = new ManagerStore(db, path);
    const format = await db.get(keys.format);
    if (format === undefined) {
      await db.put(keys.format, FORMAT);
    } else if (format !== FORMAT) {
      await db.close();
      throw new CorruptMetadataError(`manager database ${path} has format ${String(format)}, this manager reads format ${FORMAT}`, { path });
    }
    return store;
  }

  batch(): StoreBatch {
    return new StoreBatch();
  }

  /** Applies the batch atomically, after every batch issued before it. */
  write(batch: StoreBatch): Promise<void> {
    const ops = batch.ops;
    const run = this.tail.then(() => (ops.length > 0 ? this.db.batch(ops) : undefined));
    this.tail = run.catch(() => undefined);
    return run;
  }

  /** Reads the whole database (metadata is small; the manager keeps it in memory). */
  async load(): Promise<StoreSnapshot> {
    await this.tail;
    const snap: StoreSnapshot = {
      nextVolumeId: 1, servers: [], disks: [], heads: [], volumes: [], pending: [], toFree: [], nextResyncId: 1, resyncs: [],
    };
    const volumes = new Map<number, VolumeRecord>();
    const maps = new Map<number, ChunkMapRecord>();
    const it = this.db.iterator();
    try {
      for (;;) {
        const entries = await it.nextv(4096);
        if (entries.length === 0) break;
        for (const [key, value] of entries) {
          const kind = key.slice(0, key.indexOf('/'));
          switch (kind) {
            case 'meta':
              if (key === keys.nextVolumeId) snap.nextVolumeId = value as number;
              else if (key === keys.nextResyncId) snap.nextResyncId = value as number;
              break;
            case 'server': snap.servers.push(value as ServerRecord); break;
            case 'disk': snap.disks.push(value as DiskRecord); break;
            case 'head': snap.heads.push(value as HeadRecord); break;
            case 'volume': volumes.set((value as VolumeRecord).id, value as VolumeRecord); break;
            case 'chunks': maps.set((value as ChunkMapRecord).volumeId, value as ChunkMapRecord); break;
            case 'pending': snap.pending.push(value as PendingCreateRecord); break;
            case 'tofree': snap.toFree.push(value as ToFreeRecord); break;
            case 'resync': snap.resyncs.push(value as ResyncRecord); break;
            default:
              log.warn({ key }, 'ignoring unknown key in the manager database');
          }
        }
      }
    } finally {
      await it.close();
    }
    for (const [id, volume] of volumes) {
      const map = maps.get(id);
      if (!map) throw new CorruptMetadataError(`volume ${volume.name} (id ${id}) has no chunk map in ${this.path}`, { id });
      const problem = chunkMapProblem(map);
      if (problem || map.replicas !== volume.replicas || map.segmentCount !== volume.segmentCount) {
        throw new CorruptMetadataError(`volume ${volume.name} (id ${id}) has a broken chunk map: ${problem ?? 'shape differs from the volume'}`, { id });
      }
      snap.volumes.push({ volume, map });
      maps.delete(id);
    }
    for (const id of maps.keys()) log.warn({ volumeId: id }, 'chunk map without a volume record; ignored');
    return snap;
  }

  async close(): Promise<void> {
    await this.tail;
    await this.db.close();
  }
}
