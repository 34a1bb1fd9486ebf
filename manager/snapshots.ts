import { crashPoint, pausePoint } from '../shared/fault-points.js';
import { AlreadyExistsError, ConflictError, InvalidArgumentError, errorMessage } from '../shared/errors.js';
import { moduleLogger } from '../shared/logger.js';
import type { ManagerStore } from './store.js';
import type { PlacementModel } from './placement.js';
import type { Registry } from './registry.js';
import { mapLimit, type PeerClients } from './node-clients.js';
import { buildChunkMap, forEachReplica, type ChunkMapRecord, type VolumeRecord } from './types.js';
import { validateVolumeName, type LvolIdSource, type Volumes } from './volumes.js';

// Snapshots and clones (docs/snapshots.md): redirect-on-write per segment.
//
// A snapshot S of volume V takes V's chunks: one batch writes S (kind
// snapshot, origin V, V's map under S's id, epoch above V's) and V's new map
// (every segment unallocated, backing S). Then every chunk is given S's
// identity on its node (ReassignChunk, in parallel): V's writers can never
// address them again (they get NO_CHUNK), and a rebuild from storage sees
// them as S's. Until every node answered, S is marked `reassigning` (retried
// in the background and at start); clones of it wait for that.
//
// A clone C of S is a thin volume with `backing` S: the head reads the
// regions C has not written from S's chunks (head-agent/engine/backing.ts).

const log = moduleLogger('manager.snapshots');
const REASSIGN_PARALLELISM = 32;
const RETRY_MS = 2000;

export interface SnapshotHooks {
  /** Resyncs or drains queued or running on the volume (a snapshot waits until they finished). */
  resyncsOf(volumeId: number): number;
}

/** Pauses an attached volume's holder for a snapshot; returns how to go on (committed: with the new map). */
export type SnapshotQuiesce = (v: VolumeRecord) => Promise<(committed: boolean) => Promise<void>>;

export class Snapshots {
  lvolIds?: LvolIdSource;
  /** Keeps a volume's snapshot relations in its note on the storage nodes (manager/storage-notes.ts; rebuild from storage). */
  onLineage?: (volumeId: number) => Promise<void>;
  private retryTimer: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(
    private readonly store: ManagerStore,
    private readonly model: PlacementModel,
    private readonly registry: Registry,
    private readonly peers: PeerClients,
    private readonly volumes: Volumes,
    private readonly hooks: SnapshotHooks,
  ) {}

  /** Snapshots whose chunks may not all carry their identity yet (an earlier process stopped): finish them. */
  resume(): void {
    for (const v of this.volumes.list()) if (v.kind === 'snapshot' && v.reassigning) this.scheduleRetry();
  }

  close(): void {
    this.closed = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
  }

  /** `vsky snapshot create VOLUME NAME` (an attached volume: manager/snapshot-attached.ts pauses its head around the commit). */
  async create(volumeName: string, name: string, quiesce?: SnapshotQuiesce): Promise<VolumeRecord> {
    validateVolumeName(name);
    if (this.volumes.nameTaken(name)) {
      throw new AlreadyExistsError(`cannot create snapshot ${name}: a volume or snapshot named ${name} exists; choose another name; nothing changed`, { name });
    }
    return this.volumes.exclusive(volumeName, async ({ volume: v, map }) => {
      if (v.kind === 'snapshot') {
        throw new InvalidArgumentError(`${volumeName} is a snapshot (read-only): snapshot a volume, or clone ${volumeName} first (vsky volume clone ${volumeName} NEW)`, { volume: volumeName });
      }
      if (v.dirty) throw new ConflictError(`volume ${volumeName} is DIRTY (${v.dirty.kind} job ${v.dirty.jobId} ${v.dirty.state}): run a job that succeeds on it first; nothing changed`, { volume: volumeName });
      if (v.standbyHead) throw new ConflictError(`volume ${volumeName} is being migrated (standby head attached): finish or cancel the migration first`, { volume: volumeName });
      if (this.hooks.resyncsOf(v.id) > 0 || (map.moves?.length ?? 0) > 0 || (map.resyncing?.length ?? 0) > 0) {
        throw new ConflictError(`volume ${volumeName} has resyncs or drains in progress (vsky resync list): snapshot it once they finished; nothing changed`, { volume: volumeName });
      }
      if (v.attachedHead && quiesce === undefined) {
        throw new ConflictError(`volume ${volumeName} is attached: this manager cannot snapshot it attached; detach it first (vsky volume detach ${volumeName})`, { volume: volumeName });
      }
      if (this.volumes.nameTaken(name)) throw new AlreadyExistsError(`cannot create snapshot ${name}: a volume or snapshot named ${name} exists; nothing changed`, { name });
      const resume = v.attachedHead ? await quiesce!(v) : undefined;
      let snap: VolumeRecord;
      try {
        snap = await this.commit(v, map, name);
      } catch (err) {
        await resume?.(false);
        throw err;
      }
      await resume?.(true);
      return snap;
    });
  }

  /** One batch: the snapshot with V's chunks, V with an all-unallocated map backed by it; then the nodes. */
  private async commit(v: VolumeRecord, map: ChunkMapRecord, name: string): Promise<VolumeRecord> {
    const started = Date.now();
    const id = this.volumes.takeVolumeId();
    const snap: VolumeRecord = {
      id, name, size: v.size, replicas: v.replicas, chunkSize: v.chunkSize, segmentCount: v.segmentCount,
      generation: v.generation, epoch: v.epoch + 1, attachedHead: '', nbdUri: '', spreadLabel: v.spreadLabel,
      createdMs: Date.now(), thin: true, kind: 'snapshot', origin: v.id, reassigning: true,
    };
    if (v.backing !== undefined) snap.backing = v.backing;
    const lvol = this.lvolIds?.reserveVolume(v.segmentCount);
    if (lvol) snap.intId = lvol.id;
    const snapMap: ChunkMapRecord = { ...structuredClone(map), volumeId: id, thin: true };
    const origin: VolumeRecord = { ...v, thin: true, backing: id };
    const originMap = buildChunkMap(v.id, v.replicas, v.segmentCount, []);
    originMap.thin = true;
    const batch = this.store.batch().putNextVolumeId(this.volumes.nextVolumeId).putVolume(snap).putChunkMap(snapMap)
      .putVolume(origin).putChunkMap(originMap)
      .event('snapshot.created', `volume:${v.name}`, `snapshot ${name} taken: its chunks are the snapshot's now; ${v.name} writes into new chunks, reading the rest from ${name}`,
        { volumeId: v.id, snapshot: name, snapshotId: id, epoch: snap.epoch });
    if (lvol) batch.putNextIntId('lvol', lvol.next);
    await this.store.write(batch);
    crashPoint('manager.snapshot.committed'); // chaos tests: killed before any chunk took the snapshot's identity
    pausePoint('manager.snapshot.committed'); // chaos tests: frozen there while a node is killed
    forEachReplica(map, (r) => {
      this.model.release(r.diskId, r.chunkIndex, v.id);
      this.model.claim(r.diskId, r.chunkIndex, id);
    });
    this.volumes.install(origin, originMap);
    this.volumes.install(snap, snapMap);
    const committedMs = Date.now() - started;
    const left = await this.reassign(snap, snapMap, v.id, v.epoch);
    await this.noteLineage(id, v.id);
    log.info({ volume: v.name, snapshot: name, snapshotId: id, committedMs, ms: Date.now() - started, chunksLeft: left }, 'snapshot created');
    return snap;
  }

  /** Gives every chunk of the snapshot its identity on its node; returns the chunks not done (retried later). */
  private async reassign(snap: VolumeRecord, map: ChunkMapRecord, fromId: number, fromEpoch: number): Promise<number> {
    const refs: { diskId: string; chunkIndex: number; segment: number; idSlot: number }[] = [];
    forEachReplica(map, (r) => refs.push(r));
    const api = this.peers.node.reassignChunk;
    if (api === undefined) throw new InvalidArgumentError('storage nodes cannot reassign chunks (peer API missing)');
    const results = await mapLimit(refs, REASSIGN_PARALLELISM, (r) => {
      const server = this.registry.serverOfDisk(r.diskId);
      if (!server) return Promise.reject(new Error(`disk ${r.diskId} has no server`));
      return api(server.controlAddress, {
        diskId: r.diskId, chunkIndex: r.chunkIndex, fromVolumeId: fromId, fromEpoch,
        identity: {
          volumeId: snap.id, volumeName: snap.name, volumeSize: snap.size, segment: r.segment, slot: r.idSlot,
          segmentCount: snap.segmentCount, replicas: snap.replicas, generation: snap.generation, epoch: snap.epoch,
          lvolid: snap.intId ?? 0, thin: true, readOnly: true, // storage refuses every write to it from now on
        },
      });
    });
    const failed = results.filter((r) => r.status === 'rejected') as PromiseRejectedResult[];
    if (failed.length === 0) {
      const e = this.volumes.byVolumeId(snap.id);
      if (e && e.volume.reassigning) {
        const done: VolumeRecord = { ...e.volume };
        delete done.reassigning;
        await this.store.write(this.store.batch().putVolume(done));
        this.volumes.install(done, e.map);
      }
      return 0;
    }
    log.warn({ snapshot: snap.name, failed: failed.length, err: errorMessage(failed[0]!.reason) }, 'some chunks could not take the snapshot\'s identity yet; retrying');
    this.scheduleRetry();
    return failed.length;
  }

  private scheduleRetry(): void {
    if (this.retryTimer || this.closed) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      for (const v of this.volumes.list()) {
        if (v.kind !== 'snapshot' || !v.reassigning || v.origin === undefined) continue;
        const e = this.volumes.byVolumeId(v.id)!;
        void this.reassign(v, e.map, v.origin, v.epoch - 1).catch((err: unknown) => {
          log.warn({ snapshot: v.name, err: errorMessage(err) }, 'reassign retry failed');
          this.scheduleRetry();
        });
      }
    }, RETRY_MS);
    this.retryTimer.unref();
  }

  /**
   * A snapshot still marked `reassigning` (a node missed its identity): asks
   * the nodes of its current map now rather than waiting for the next retry
   * (the node may be back, or a resync may have replaced its replicas).
   * Returns whether every chunk has the snapshot's identity.
   */
  private async finishReassign(snapshotName: string): Promise<boolean> {
    const e = this.volumes.entry(snapshotName);
    if (!e.volume.reassigning) return true;
    if (e.volume.origin === undefined) return false;
    return (await this.reassign(e.volume, e.map, e.volume.origin, e.volume.epoch - 1)) === 0;
  }

  /** `vsky volume clone SNAPSHOT NAME`: a thin volume backed by the snapshot. */
  async clone(snapshotName: string, name: string): Promise<VolumeRecord> {
    validateVolumeName(name);
    const s = this.volumes.entry(snapshotName).volume;
    if (s.kind !== 'snapshot') {
      throw new InvalidArgumentError(`${snapshotName} is not a snapshot: clones are made of snapshots; take one first (vsky snapshot create ${snapshotName} SNAP), then clone SNAP; nothing changed`,
        { volume: snapshotName });
    }
    if (s.reassigning && !(await this.finishReassign(snapshotName))) {
      throw new ConflictError(`snapshot ${snapshotName} is still being set up on its storage nodes (a node did not answer); retry shortly`, { snapshot: snapshotName });
    }
    if (this.volumes.nameTaken(name)) {
      throw new AlreadyExistsError(`cannot clone ${snapshotName} as ${name}: a volume or snapshot named ${name} exists; choose another name; nothing changed`, { name });
    }
    const c = await this.volumes.create({ name, size: s.size, replicas: s.replicas, spreadLabel: s.spreadLabel, thin: true, backing: s.id });
    await this.noteLineage(c.id);
    return c;
  }

  /** Best effort: a node that misses it gets it with the volume's next map change. */
  private async noteLineage(...ids: number[]): Promise<void> {
    for (const id of ids) {
      await this.onLineage?.(id).catch((err: unknown) => log.warn({ volumeId: id, err: errorMessage(err) }, 'snapshot relations not kept on the storage nodes yet'));
    }
  }
}
