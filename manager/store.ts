import { randomUUID } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { Level } from 'level';
import { CorruptMetadataError } from '../shared/errors.js';
import { moduleLogger } from '../shared/logger.js';
import type { SecretBox } from '../shared/security/secret-box.js';
import { openVolume, sealVolume } from './sealed-secrets.js';
import {
  chunkMapProblem, type ChunkMapRecord, type DiskRecord, type EventDetails, type EventKind, type EventRecord, type HeadRecord,
  type PendingCreateRecord, type ResyncRecord, type ServerRecord, type ToFreeRecord, type VolumeRecord,
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
//   resync/<resync id>       ResyncRecord (a replica being rebuilt; see manager/resync/resyncs.ts)
//   meta/next_int/<space>    next VastSky-style integer id of a space (hsvr, ssvr, pdsk, lvol; manager/xmlrpc/ids.ts)
//   event/<seq, 20 digits>   EventRecord (the append-only event log, manager/events.ts; not
//                            part of the snapshot: the event log reads it itself)
//
// Secrets (iSCSI CHAP secrets of volume records) are sealed on the way in
// and opened on the way out when the store has a SecretBox
// (--secret-key-file; manager/sealed-secrets.ts); clear ones found at load
// are re-sealed.
//
// Every change is one atomic batch, and batches are written one after
// another in the order they were issued: the async LevelDB binding could
// otherwise apply two batches touching one key in either order.

const FORMAT = 1;
const log = moduleLogger('manager.store');

/** A chunk left for an admin by a rebuild from storage (its volume could not be rebuilt safely). */
export interface SetAsideRecord { diskId: string; chunkIndex: number; volumeId: number; reason: string }

export interface StoreSnapshot {
  nextVolumeId: number;
  servers: ServerRecord[];
  disks: DiskRecord[];
  heads: HeadRecord[];
  volumes: Array<{ volume: VolumeRecord; map: ChunkMapRecord }>;
  pending: PendingCreateRecord[];
  toFree: ToFreeRecord[];
  /** Chunks a rebuild from storage left for an admin (kept out of GC and placement). */
  setAside: SetAsideRecord[];
  nextResyncId: number;
  resyncs: ResyncRecord[];
}

type Op = { type: 'put'; key: string; value: unknown } | { type: 'del'; key: string };

/** An event riding in a batch, numbered when the batch is issued (manager/events.ts). */
export interface BatchEvent {
  kind: EventKind; target: string; reason: string; details: EventDetails; timeMs?: number;
  /** The record it became (set by the event sink when the batch is issued). */
  stamped?: EventRecord;
}

/** Numbers the events of a batch as it is issued, and hears when they are durable (manager/events.ts). */
export interface EventSink {
  stamp(batch: StoreBatch, events: BatchEvent[]): EventRecord[];
  committed(records: EventRecord[]): void;
}

/** Event keys sort by sequence number and lie in [EVENT_KEYS.gte, EVENT_KEYS.lt). */
export const EVENT_KEYS = { gte: 'event/', lt: 'event0' } as const;

const pad = (id: number) => String(id).padStart(10, '0');
export const keys = {
  format: 'meta/format',
  nextVolumeId: 'meta/next_volume_id',
  nextResyncId: 'meta/next_resync_id',
  clusterId: 'meta/cluster_id',
  server: (id: string) => `server/${id}`,
  disk: (id: string) => `disk/${id}`,
  head: (id: string) => `head/${id}`,
  volume: (id: number) => `volume/${pad(id)}`,
  chunks: (id: number) => `chunks/${pad(id)}`,
  pending: (id: number) => `pending/${pad(id)}`,
  toFree: (diskId: string, index: number) => `tofree/${diskId}/${pad(index)}`,
  aside: (diskId: string, index: number) => `aside/${diskId}/${pad(index)}`,
  resync: (id: string) => `resync/${id}`,
  nextIntId: (space: string) => `meta/next_int/${space}`,
  event: (seq: number) => `event/${String(seq).padStart(20, '0')}`,
};

/** A typed list of changes that `ManagerStore.write` applies atomically. */
export class StoreBatch {
  readonly ops: Op[] = [];
  /** Event log entries that commit with this batch (numbered by `ManagerStore.write`). */
  readonly events: BatchEvent[] = [];

  get length(): number {
    return this.ops.length + this.events.length;
  }

  /** Records an event in the event log atomically with this batch's changes. */
  event(kind: EventKind, target: string, reason: string, details: EventDetails = {}): this {
    this.events.push({ kind, target, reason, details: { ...details } });
    return this;
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
  /** A chunk a rebuild from storage left for an admin: never freed nor placed (manager/rebuild/apply.ts). */
  putSetAside(r: SetAsideRecord): this { return this.put(keys.aside(r.diskId, r.chunkIndex), r); }
  putNextVolumeId(n: number): this { return this.put(keys.nextVolumeId, n); }
  putResync(r: ResyncRecord): this { return this.put(keys.resync(r.id), r); }
  delResync(id: string): this { return this.del(keys.resync(id)); }
  putNextResyncId(n: number): this { return this.put(keys.nextResyncId, n); }
  putNextIntId(space: string, n: number): this { return this.put(keys.nextIntId(space), n); }
  delHead(id: string): this { return this.del(keys.head(id)); }
  putEvent(r: EventRecord): this { return this.put(keys.event(r.seq), r); }
  /** A storage job's record, job/<id> (manager/jobs/records.ts). */
  putJob(r: { id: string }): this { return this.put(`job/${r.id}`, r); }
  delJob(id: string): this { return this.del(`job/${id}`); }

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
  /** Numbers the events batches carry (manager/events.ts); without one they are dropped. */
  eventSink?: EventSink;

  /** This cluster's id (a UUID made with the database): every disk of the cluster carries it. */
  clusterId = '';

  private constructor(readonly db: Level<string, unknown>, readonly path: string, private readonly secrets: SecretBox | undefined) {}

  /** Opens (creating if needed) the database in `dataDir/db`; `secrets` seals the secrets it stores. */
  static async open(dataDir: string, secrets?: SecretBox): Promise<ManagerStore> {
    const path = join(dataDir, 'db');
    await mkdir(dataDir, { recursive: true });
    const db = new Level<string, unknown>(path, { valueEncoding: 'json' });
    await db.open();
    const store = new ManagerStore(db, path, secrets);
    const format = await db.get(keys.format);
    if (format === undefined) {
      await db.put(keys.format, FORMAT);
    } else if (format !== FORMAT) {
      await db.close();
      throw new CorruptMetadataError(`manager database ${path} has format ${String(format)}, this manager reads format ${FORMAT}`, { path });
    }
    const clusterId = await db.get(keys.clusterId);
    if (typeof clusterId === 'string') {
      store.clusterId = clusterId;
    } else {
      store.clusterId = randomUUID();
      await db.put(keys.clusterId, store.clusterId);
    }
    return store;
  }

  /** A rebuild from storage takes the cluster id its disks carry (manager/rebuild/apply.ts). */
  async adoptClusterId(id: string): Promise<void> {
    await this.db.put(keys.clusterId, id);
    this.clusterId = id;
  }

  batch(): StoreBatch {
    return new StoreBatch();
  }

  /** Applies the batch atomically, after every batch issued before it. */
  write(batch: StoreBatch): Promise<void> {
    // Events are numbered here, in the order batches are issued (= the order
    // they commit), so a reader following the log never skips one.
    const events = batch.events.length > 0 ? batch.events.splice(0) : [];
    const stamped = events.length > 0 && this.eventSink ? this.eventSink.stamp(batch, events) : [];
    const ops = batch.ops;
    if (this.secrets !== undefined) {
      for (const op of ops) if (op.type === 'put' && op.key.startsWith('volume/')) sealVolume(op.key, op.value as VolumeRecord, this.secrets);
    }
    const run = this.tail.then(() => (ops.length > 0 ? this.db.batch(ops) : undefined)).then(() => {
      if (stamped.length > 0) this.eventSink?.committed(stamped);
    });
    this.tail = run.catch(() => undefined);
    return run;
  }

  /** Deletes the event log entries below `seq`, after every batch issued before (retention). */
  trimEvents(seq: number): Promise<void> {
    const run = this.tail.then(() => this.db.clear({ gte: EVENT_KEYS.gte, lt: keys.event(seq) }));
    this.tail = run.catch(() => undefined);
    return run;
  }

  /** Reads the whole database (metadata is small; the manager keeps it in memory). */
  async load(): Promise<StoreSnapshot> {
    await this.tail;
    const snap: StoreSnapshot = {
      nextVolumeId: 1, servers: [], disks: [], heads: [], volumes: [], pending: [], toFree: [], setAside: [], nextResyncId: 1, resyncs: [],
    };
    const volumes = new Map<number, VolumeRecord>();
    const clearSecrets: string[] = [];
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
            case 'volume':
              if (openVolume(key, value as VolumeRecord, this.secrets)) clearSecrets.push(key);
              volumes.set((value as VolumeRecord).id, value as VolumeRecord);
              break;
            case 'chunks': maps.set((value as ChunkMapRecord).volumeId, value as ChunkMapRecord); break;
            case 'pending': snap.pending.push(value as PendingCreateRecord); break;
            case 'tofree': snap.toFree.push(value as ToFreeRecord); break;
            case 'aside': snap.setAside.push(value as SetAsideRecord); break;
            case 'resync': snap.resyncs.push(value as ResyncRecord); break;
            case 'event': break; // the event log (large) is read by manager/events.ts: skipped below
            case 'job': break; // storage jobs are read by manager/jobs/records.ts
            default:
              log.warn({ key }, 'ignoring unknown key in the manager database');
          }
        }
        if (entries[entries.length - 1]![0].startsWith(EVENT_KEYS.gte)) it.seek(EVENT_KEYS.lt);
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
    if (clearSecrets.length > 0) await this.resealClearSecrets(clearSecrets, volumes);
    return snap;
  }

  /** Volume records with secrets in clear (from before --secret-key-file): written again sealed, and the old values compacted away. */
  private async resealClearSecrets(keys: string[], volumes: Map<number, VolumeRecord>): Promise<void> {
    if (this.secrets === undefined) {
      log.warn({ volumes: keys.length }, 'iSCSI CHAP secrets are stored in clear in the manager database: give the manager a --secret-key-file to seal them');
      return;
    }
    const batch = this.batch();
    for (const key of keys) batch.putVolume(volumes.get(Number(key.slice('volume/'.length)))!);
    await this.write(batch);
    // Rewrites the files that held the clear values (classic-level: the LevelDB binding on Node).
    const compactable = this.db as unknown as { compactRange?: (start: string, end: string) => Promise<void> };
    await compactable.compactRange?.('\u0000', '\uffff');
    log.info({ volumes: keys.length }, 'iSCSI CHAP secrets found in clear were sealed with the secret key');
  }

  async close(): Promise<void> {
    await this.tail;
    await this.db.close();
  }
}
