import { crashPoint } from '../shared/fault-points.js';
import { CapacityError, ConflictError, InvalidArgumentError, NotFoundError, errorMessage } from '../shared/errors.js';
import { moduleLogger } from '../shared/logger.js';
import type { ChunkFreer } from './gc.js';
import type { PeerClients } from './node-clients.js';
import type { PlacementModel } from './placement.js';
import { MAX_VOLUME_ID } from './placement/model-disk.js';
import type { Registry } from './registry.js';
import type { ManagerStore, StoreBatch, StoreSnapshot } from './store.js';
import { forEachReplica, type ChunkMapRecord, type VolumeRecord } from './types.js';
import { toFreeRecords, VolumeCreator, type CreateVolumeInput, type VolumesOptions } from './volume-create.js';

export { MAX_THIN_SEGMENTS, validateVolumeName, type CreateVolumeInput, type VolumesOptions } from './volume-create.js';

// The volume table: every committed volume and its chunk map, by id and name;
// which volumes an operation holds (attach, detach, delete); delete. Create
// and the rollback of interrupted creates: manager/volume-create.ts.
// Attach/detach: attachments.ts.

const log = moduleLogger('manager.volumes');

export interface VolumeEntry {
  volume: VolumeRecord;
  map: ChunkMapRecord;
}

/** Lets the resync book drop a deleted volume's records in the delete batch. */
export interface VolumeHooks {
  deleting(volumeId: number, batch: StoreBatch): void;
  deleted(volumeId: number): void;
  /** Before the delete is recorded: storage marks the volume's chunks DELETING and every node keeps a tombstone (manager/storage-notes.ts). */
  markDeleting?(entry: VolumeEntry): Promise<number>;
  /** After the commit: the nodes clear the chunks' CREATING mark (manager/storage-notes.ts confirmCreate); resolves to how many nodes did. */
  confirmCreate?(entry: VolumeEntry): Promise<number>;
  /** A thin volume was created with no chunk: its record goes to a few nodes (manager/storage-notes.ts). */
  createdEmpty?(entry: VolumeEntry): Promise<void>;
}

/** Gives a new volume its VastSky lvolid before its chunks are allocated (manager/xmlrpc/ids.ts). */
export interface LvolIdSource {
  reserveVolume(segmentCount: number): { id: number; next: number } | undefined;
}

export class Volumes {
  hooks?: VolumeHooks;
  /** Set by the daemon: new volumes get their lvolid at once, and their chunks carry it. */
  lvolIds?: LvolIdSource;
  private readonly byId = new Map<number, VolumeEntry>();
  private readonly byName = new Map<string, number>();
  /** Volumes with an attach, detach or delete in progress. */
  private readonly busy = new Set<number>();
  private readonly creator: VolumeCreator;
  private nextId = 1;

  constructor(
    private readonly store: ManagerStore,
    private readonly model: PlacementModel,
    private readonly registry: Registry,
    peers: PeerClients,
    private readonly freer: ChunkFreer,
    opts: VolumesOptions,
  ) {
    this.creator = new VolumeCreator(this, store, model, registry, peers, freer, opts);
  }
  /** Fills memory and claims every referenced chunk in the model (after the registry loaded). */
  load(snap: StoreSnapshot): void {
    let maxId = 0;
    for (const { volume, map } of snap.volumes) {
      forEachReplica(map, (r) => this.model.claim(r.diskId, r.chunkIndex, volume.id));
      this.byId.set(volume.id, { volume, map });
      this.byName.set(volume.name, volume.id);
      maxId = Math.max(maxId, volume.id);
    }
    for (const p of snap.pending) {
      forEachReplica(p.map, (r) => {
        try {
          this.model.claim(r.diskId, r.chunkIndex, p.volume.id);
        } catch (err) {
          log.warn({ volumeId: p.volume.id, diskId: r.diskId, err: errorMessage(err) }, 'pending create references a taken chunk');
        }
      });
      maxId = Math.max(maxId, p.volume.id);
    }
    for (const t of snap.toFree) maxId = Math.max(maxId, t.volumeId);
    this.creator.stalePending = snap.pending;
    this.nextId = Math.max(snap.nextVolumeId, maxId + 1);
  }

  get nextVolumeId(): number {
    return this.nextId;
  }

  isCreating(volumeId: number): boolean {
    return this.creator.isCreating(volumeId);
  }

  list(): VolumeRecord[] {
    return [...this.byId.values()].map((e) => e.volume);
  }

  /**
   * The lease epoch of every volume with a chunk on this server (the node
   * raises its minimum epochs to these at registration: it may have missed
   * fences while it was down).
   */
  epochsOnServer(serverId: string, serverOfDisk: (diskId: string) => string | undefined): { volumeId: number; epoch: number }[] {
    const out: { volumeId: number; epoch: number }[] = [];
    for (const { volume, map } of this.byId.values()) {
      if (map.disks.some((d) => serverOfDisk(d) === serverId)) out.push({ volumeId: volume.id, epoch: volume.epoch });
    }
    return out;
  }

  /** The committed volume named `name`, or undefined. */
  find(name: string): VolumeEntry | undefined {
    const id = this.byName.get(name);
    return id === undefined ? undefined : this.byId.get(id);
  }

  entry(name: string): VolumeEntry {
    if (!name) throw new InvalidArgumentError('no volume name given: see vsky volume list');
    const id = this.byName.get(name);
    if (id === undefined) throw new NotFoundError(`no volume "${name}": see vsky volume list`, { name });
    return this.byId.get(id)!;
  }

  byVolumeId(id: number): VolumeEntry | undefined {
    return this.byId.get(id);
  }

  /** Every committed volume with its map. */
  entries(): IterableIterator<VolumeEntry> {
    return this.byId.values();
  }

  /** An attach, detach or delete of the volume is in progress. */
  isBusy(id: number): boolean {
    return this.busy.has(id);
  }

  /** Resolves once no operation holds the volume (or after `timeoutMs`: the caller's exclusive() then says it is busy). */
  async waitNotBusy(id: number, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.busy.has(id) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  }

  /** Runs fn with the volume marked busy; a second operation meanwhile gets a ConflictError. */
  async exclusive<T>(name: string, fn: (e: VolumeEntry) => Promise<T>): Promise<T> {
    const e = this.entry(name);
    if (this.busy.has(e.volume.id)) {
      throw new ConflictError(`volume ${name} has another operation in progress (attach, detach or delete); retry when it finishes`);
    }
    this.busy.add(e.volume.id);
    try {
      return await fn(e);
    } finally {
      this.busy.delete(e.volume.id);
    }
  }

  /** Creates a volume (thick: every chunk placed and allocated now; thin: none). */
  create(input: CreateVolumeInput): Promise<VolumeRecord> {
    return this.creator.create(input);
  }

  /** Turns pending creates of an earlier process into to-free entries (one batch). */
  rollbackStalePending(): Promise<number> {
    return this.creator.rollbackStalePending();
  }
  /** Volumes whose unwritten regions read from volume `id` (its clones; a snapshot's origin). */
  dependents(id: number): VolumeRecord[] {
    return [...this.byId.values()].map((e) => e.volume).filter((v) => v.backing === id);
  }

  /** Creates and snapshots (manager/snapshots.ts): takes the next volume id (persist it with putNextVolumeId(nextVolumeId)). */
  takeVolumeId(): number {
    const id = this.nextId;
    if (id > MAX_VOLUME_ID) throw new CapacityError('volume ids are exhausted (u32)');
    this.nextId++;
    return id;
  }

  /** Snapshots: a committed volume (new, or its record and map replaced) enters memory. */
  install(volume: VolumeRecord, map: ChunkMapRecord): void {
    this.byId.set(volume.id, { volume, map });
    this.byName.set(volume.name, volume.id);
  }

  /** A name is taken (a volume, a snapshot, or a create in progress). */
  nameTaken(name: string): boolean {
    return this.byName.has(name) || this.creator.isCreatingName(name);
  }

  async delete(name: string): Promise<void> {
    await this.exclusive(name, async ({ volume, map }) => {
      const deps = this.dependents(volume.id);
      if (deps.length > 0) {
        const names = deps.map((d) => d.name).sort();
        throw new ConflictError(`${volume.kind === 'snapshot' ? 'snapshot' : 'volume'} ${name} cannot be deleted: ${names.join(', ')} read${names.length === 1 ? 's' : ''} `
          + `unwritten regions from it; flatten ${names.length === 1 ? 'it' : 'them'} first (vsky volume flatten ${names[0]}) or delete ${names.length === 1 ? 'it' : 'them'}; nothing changed`,
        { name, dependents: names.join(',') });
      }
      if (volume.attachedHead) {
        const head = this.registry.head(volume.attachedHead);
        throw new ConflictError(`volume ${name} is attached to head ${head?.name ?? volume.attachedHead}; detach it first (vsky volume detach ${name})`);
      }
      // Storage first: a manager rebuilt from storage after this point finishes the delete instead of bringing the volume back.
      const marked = await this.hooks?.markDeleting?.({ volume, map });
      crashPoint('manager.delete.marked');
      const records = toFreeRecords(volume.id, map, 'volume deleted');
      const batch = this.store.batch().delVolume(volume.id);
      batch.event('volume.deleted', `volume:${name}`, 'deleted', { volumeId: volume.id, chunks: records.length, epoch: volume.epoch, generation: volume.generation });
      this.freer.stage(batch, records);
      this.hooks?.deleting(volume.id, batch);
      await this.store.write(batch);
      this.byId.delete(volume.id);
      this.byName.delete(name);
      this.hooks?.deleted(volume.id);
      this.freer.track(records);
      crashPoint('manager.delete.recorded');
      const res = await this.freer.free(records);
      log.info({ volumeId: volume.id, volume: name, nodesMarked: marked, chunksFreed: res.freed, chunksLeft: res.left },
        res.left > 0 ? `volume deleted; ${res.left} chunks could not be freed now and are left for GC` : 'volume deleted');
    });
  }

  /** Persists a changed volume record (attach state, epoch). */
  async saveVolume(volume: VolumeRecord): Promise<void> {
    await this.store.write(this.store.batch().putVolume(volume));
  }

  /** Names of volumes with replicas on any of the disks, and chunks there owned by no volume (garbage in flight). */
  usersOfDisks(diskIds: Iterable<string>): { volumes: string[]; otherChunks: number; chunks: number } {
    const names = new Set<string>();
    let otherChunks = 0;
    let chunks = 0;
    for (const diskId of diskIds) {
      for (const [id, count] of this.model.ownersOnDisk(diskId)) {
        chunks += count;
        const e = this.byId.get(id);
        if (e) names.add(e.volume.name);
        else otherChunks += count;
      }
    }
    return { volumes: [...names].sort(), otherChunks, chunks };
  }
}
