import { crashPoint } from '../shared/fault-points.js';
import { DEFAULT_REPLICAS, MAX_REPLICAS } from '../shared/constants.js';
import {
  AlreadyExistsError, CapacityError, InvalidArgumentError, VskyError, errorMessage,
} from '../shared/errors.js';
import { moduleLogger } from '../shared/logger.js';
import { formatSize } from '../shared/units.js';
import type { ChunkFreer } from './gc.js';
import { mapLimit, type PeerClients } from './node-clients.js';
import type { PlacementModel } from './placement.js';
import { MAX_VOLUME_ID } from './placement/model-disk.js';
import type { Registry } from './registry.js';
import type { ManagerStore } from './store.js';
import {
  buildChunkMap, forEachReplica, type ChunkMapRecord, type PendingCreateRecord, type ToFreeRecord, type VolumeRecord,
} from './types.js';
import type { LvolIdSource, VolumeEntry, VolumeHooks } from './volumes.js';

// Volume lifecycle: create and delete (attach/detach live in attachments.ts).
//
// Create is an atomic commitment in three steps:
//  1. one batch writes a pending record with the planned chunks (already
//     reserved in the placement model, so concurrent creates never collide)
//     and the advanced volume id counter;
//  2. every planned chunk is allocated on its node, in parallel (bounded);
//  3. one batch writes the volume record and its chunk map and deletes the
//     pending record;
//  4. every node holding a chunk is told the create is committed (KeepVolumeNote
//     with `committed`, which also keeps the volume's spread label and creation
//     time there), clearing the CREATING mark step 2 allocated the chunks with;
//     the volume record says `unconfirmed` until every node took it (retried by
//     GC passes, manager/storage-notes.ts).
// The CREATING mark makes an interrupted create recognisable on storage alone
// (a rebuild from storage, docs/rebuild-from-storage.md): a volume all of whose
// chunks still say CREATING, never attached nor noted, was never answered as
// created (the answer comes after step 4 reached at least one node; the
// crash windows are listed there), so it is rolled back; one chunk without
// the mark proves step 3 happened.
// If step 2 or 3 fails, one batch replaces the pending record by to-free
// entries for every planned chunk and the nodes are asked to free them. A
// manager killed between 1 and 3 leaves the pending record, which the next
// start turns into to-free entries the same way: no volume ever appears half made.

const log = moduleLogger('manager.volumes');

/** Segments a thin volume may have (its map and the head's mirrors grow with them, allocated or not). */
export const MAX_THIN_SEGMENTS = 262_144;
const NAME_RE = /^[A-Za-z0-9._-]{1,64}$/;
const LABEL_RE = /^[A-Za-z0-9._/-]{1,64}$/;

export function validateVolumeName(name: string): void {
  if (!NAME_RE.test(name) || name === '.' || name === '..') {
    throw new InvalidArgumentError(`invalid volume name "${name}": use 1-64 characters from A-Z a-z 0-9 . _ -`, { name });
  }
}

export interface CreateVolumeInput {
  name: string;
  size: number;
  replicas: number;
  spreadLabel: string;
  /** Segments get their chunks at first write (docs/thin-provisioning.md); default thick here (internal callers, XML-RPC). */
  thin?: boolean;
  /** A clone: the snapshot (volume id) it reads its unwritten regions from (thin only; manager/snapshots.ts). */
  backing?: number;
}

export interface VolumesOptions {
  chunkSize: number;
  /** AllocateChunk calls in flight per create. */
  allocateParallelism?: number;
}

/** What a create needs of the volume table (manager/volumes.ts). */
export interface CreateHost {
  readonly hooks?: VolumeHooks;
  readonly lvolIds?: LvolIdSource;
  /** The id the next volume gets. */
  readonly nextVolumeId: number;
  takeVolumeId(): number;
  /** A committed volume, a snapshot, or a create in progress has the name. */
  nameTaken(name: string): boolean;
  byVolumeId(id: number): VolumeEntry | undefined;
  install(volume: VolumeRecord, map: ChunkMapRecord): void;
}

/** Creates volumes (thick and thin) and rolls back the ones that did not finish. */
export class VolumeCreator {
  /** Creates in progress in this process, by volume id. */
  private readonly creating = new Map<number, PendingCreateRecord>();
  private readonly creatingNames = new Set<string>();
  /** Pending creates found at start: an earlier process died during them. */
  stalePending: PendingCreateRecord[] = [];

  constructor(
    private readonly host: CreateHost,
    private readonly store: ManagerStore,
    private readonly model: PlacementModel,
    private readonly registry: Registry,
    private readonly peers: PeerClients,
    private readonly freer: ChunkFreer,
    private readonly opts: VolumesOptions,
  ) {}

  isCreating(volumeId: number): boolean {
    return this.creating.has(volumeId);
  }

  /** A create of that name is in progress. */
  isCreatingName(name: string): boolean {
    return this.creatingNames.has(name);
  }

  async create(input: CreateVolumeInput): Promise<VolumeRecord> {
    const { name, size } = input;
    validateVolumeName(name);
    if (!Number.isSafeInteger(size) || size <= 0) throw new InvalidArgumentError(`invalid volume size ${size}: give a positive size, e.g. 10G`);
    if (size % 512 !== 0) throw new InvalidArgumentError(`volume size ${size} is not a multiple of 512 bytes (the block size heads export); round it up`);
    const replicas = input.replicas || DEFAULT_REPLICAS;
    if (!Number.isInteger(replicas) || replicas < 1 || replicas > MAX_REPLICAS) {
      throw new InvalidArgumentError(`invalid replica count ${replicas}: use 1 to ${MAX_REPLICAS} (default ${DEFAULT_REPLICAS})`);
    }
    if (input.spreadLabel && !LABEL_RE.test(input.spreadLabel)) throw new InvalidArgumentError(`invalid spread label "${input.spreadLabel}"`);
    if (this.host.nameTaken(name)) {
      throw new AlreadyExistsError(`volume ${name} already exists: choose another name or delete it first`, { name });
    }
    const id = this.host.nextVolumeId;
    if (id > MAX_VOLUME_ID) throw new CapacityError('volume ids are exhausted (u32)');
    const chunkSize = this.opts.chunkSize;
    const segmentCount = Math.ceil(size / chunkSize);
    const spreadLabel = input.spreadLabel || this.defaultSpreadLabel();
    if (input.thin) return this.createThin({ id, name, size, replicas, chunkSize, segmentCount, spreadLabel, backing: input.backing });
    const plan = this.model.place({ volumeId: id, segmentCount, replicas, spreadLabel, chunkSize });
    this.host.takeVolumeId();
    const vlog = log.child({ volumeId: id, volume: name });
    vlog.info({
      size, segmentCount, replicas, spreadLabel: plan.spreadLabel || undefined, labelSpread: plan.labelSpread,
      labelValues: plan.labelValues, fallbackSegments: plan.fallbackSegments, servers: plan.serversUsed, disks: plan.disksUsed,
    }, 'placement planned');
    if (plan.labelSpread === 'fallback' || plan.labelSpread === 'partial') {
      vlog.warn({ spreadLabel, labelValues: plan.labelValues, fallbackSegments: plan.fallbackSegments },
        `not enough distinct "${spreadLabel}" values with free space for ${replicas} replicas: those segments are spread over distinct servers only`);
    }

    const volume: VolumeRecord = {
      id, name, size, replicas, chunkSize, segmentCount, generation: 1, epoch: 0,
      attachedHead: '', nbdUri: '', spreadLabel: plan.spreadLabel, createdMs: Date.now(),
    };
    // Taken after placement succeeded (a failed create burns no id); kept even if the create fails (ids never come back).
    const lvol = this.host.lvolIds?.reserveVolume(segmentCount);
    if (lvol) volume.intId = lvol.id;
    const map = buildChunkMap(id, replicas, segmentCount, plan.chunks);
    const pending: PendingCreateRecord = { volume, map, startedMs: Date.now() };
    this.creating.set(id, pending);
    this.creatingNames.add(name);
    try {
      // Step 1: the intent is durable before any node is touched.
      try {
        const batch = this.store.batch().putPending(pending).putNextVolumeId(this.host.nextVolumeId);
        if (lvol) batch.putNextIntId('lvol', lvol.next);
        await this.store.write(batch);
      } catch (err) {
        for (const c of plan.chunks) this.model.release(c.diskId, c.chunkIndex, id);
        throw err;
      }
      // Step 2: allocate on the nodes.
      const results = await mapLimit(plan.chunks, this.opts.allocateParallelism ?? 16, (c) => {
        const server = this.registry.server(c.serverId)!;
        return this.peers.node.allocateChunk(server.controlAddress, {
          diskId: c.diskId, chunkIndex: c.chunkIndex,
          identity: {
            volumeId: id, volumeName: name, volumeSize: size, segment: c.segment, slot: c.slot,
            segmentCount, replicas, generation: volume.generation, epoch: volume.epoch, lvolid: volume.intId ?? 0,
            legality: 'CREATING',
          },
        }).then((r) => { crashPoint('manager.create.allocated'); return r; });
      });
      const failed = results.findIndex((r) => r.status === 'rejected');
      if (failed >= 0) {
        const c = plan.chunks[failed]!;
        const reason = (results[failed] as PromiseRejectedResult).reason;
        const server = this.registry.server(c.serverId)!;
        const count = results.filter((r) => r.status === 'rejected').length;
        vlog.warn({ failedChunks: count, serverId: c.serverId, err: errorMessage(reason) }, 'chunk allocation failed; rolling the create back');
        // A chunk the node says is taken holds something we do not know of:
        // not ours to free, and kept out of placement until GC sees it gone.
        const taken = new Set<number>();
        results.forEach((r, i) => {
          if (r.status === 'rejected' && r.reason instanceof VskyError && r.reason.code === 'ECONFLICT') taken.add(i);
        });
        await this.abortCreate(pending, 'create failed', taken);
        throw rewrap(reason, `cannot create volume ${name}: allocating segment ${c.segment} replica ${c.slot} on server ${server.name} (${server.controlAddress}) failed: ${errorMessage(reason)}; nothing was created`);
      }
      // Step 3: commit.
      crashPoint('manager.create.committing');
      if (this.host.hooks?.confirmCreate) volume.unconfirmed = true;
      try {
        await this.store.write(this.store.batch().putVolume(volume).putChunkMap(map).delPending(id).event('volume.created', `volume:${name}`, 'created',
          { volumeId: id, size, replicas, segments: segmentCount, spreadLabel: plan.spreadLabel, generation: volume.generation }));
      } catch (err) {
        vlog.error({ err: errorMessage(err) }, 'commit batch failed; rolling the create back');
        delete volume.unconfirmed;
        await this.abortCreate(pending, 'commit failed');
        throw err;
      }
      // Step 4: the CREATING marks cleared (before anyone hears of the volume).
      crashPoint('manager.create.committed');
      const confirmed = await this.host.hooks?.confirmCreate?.({ volume, map });
      if (volume.unconfirmed && confirmed === 0) {
        vlog.warn('no node holding a chunk took the committed note yet: retried by GC; a rebuild from storage before then would roll the create back');
      }
      this.host.install(volume, map);
      vlog.info({ size: formatSize(size), segmentCount, replicas }, 'volume created');
      return volume;
    } finally {
      this.creating.delete(id);
      this.creatingNames.delete(name);
    }
  }

  /**
   * A thin volume: no chunk is placed now (a segment gets its K chunks at its
   * first write, manager/thin/), so one batch writes the volume and its
   * all-unallocated map. Refused when fewer than K servers could ever hold a
   * segment.
   */
  private async createThin(p: { id: number; name: string; size: number; replicas: number; chunkSize: number; segmentCount: number; spreadLabel: string; backing?: number }): Promise<VolumeRecord> {
    const { id, name, size, replicas, chunkSize, segmentCount, spreadLabel } = p;
    if (segmentCount > MAX_THIN_SEGMENTS) {
      throw new InvalidArgumentError(`cannot create thin volume ${name}: ${segmentCount} segments of ${formatSize(chunkSize)}; a volume has at most ${MAX_THIN_SEGMENTS} `
        + `(${formatSize(MAX_THIN_SEGMENTS * chunkSize)} with this chunk size): give a smaller size`, { segmentCount });
    }
    const totals = this.model.totals();
    if (totals.eligibleServers < replicas) {
      throw new CapacityError(`cannot create thin volume ${name}: ${replicas} replicas need ${replicas} servers with active disks, `
        + `only ${totals.eligibleServers} have any; add servers (vsky server add) or use fewer replicas`, { replicas, servers: totals.eligibleServers });
    }
    this.host.takeVolumeId();
    const volume: VolumeRecord = {
      id, name, size, replicas, chunkSize, segmentCount, generation: 1, epoch: 0,
      attachedHead: '', nbdUri: '', spreadLabel, createdMs: Date.now(), thin: true,
    };
    if (p.backing !== undefined) volume.backing = p.backing;
    const lvol = this.host.lvolIds?.reserveVolume(segmentCount);
    if (lvol) volume.intId = lvol.id;
    const map = buildChunkMap(id, replicas, segmentCount, []);
    map.thin = true;
    const backingName = p.backing !== undefined ? this.host.byVolumeId(p.backing)?.volume.name ?? String(p.backing) : undefined;
    const batch = this.store.batch().putNextVolumeId(this.host.nextVolumeId).putVolume(volume).putChunkMap(map)
      .event(backingName ? 'volume.cloned' : 'volume.created', `volume:${name}`, backingName
        ? `cloned from snapshot ${backingName} (thin: its unwritten regions read from the snapshot)`
        : 'created (thin: segments get their chunks at first write)',
      { volumeId: id, size, replicas, segments: segmentCount, spreadLabel, generation: volume.generation, thin: true, ...(backingName ? { backing: backingName } : {}) });
    if (lvol) batch.putNextIntId('lvol', lvol.next);
    this.creatingNames.add(name);
    try {
      await this.store.write(batch);
    } finally {
      this.creatingNames.delete(name);
    }
    this.host.install(volume, map);
    log.info({ volumeId: id, volume: name, size: formatSize(size), segmentCount, replicas }, 'thin volume created');
    // Nothing on storage names it yet: its record goes into volume notes on a few nodes (for a rebuild from storage).
    await this.host.hooks?.createdEmpty?.({ volume, map }).catch((err: unknown) => {
      log.warn({ volume: name, err: errorMessage(err) }, 'the record of the new thin volume did not reach storage: a rebuild from storage would not find it until it is written');
    });
    return volume;
  }


  async rollbackStalePending(): Promise<number> {
    const stale = this.stalePending;
    if (stale.length === 0) return 0;
    this.stalePending = [];
    const batch = this.store.batch();
    const records: ToFreeRecord[] = [];
    for (const p of stale) {
      batch.delPending(p.volume.id);
      batch.event('volume.create_failed', `volume:${p.volume.name}`, 'interrupted create rolled back (the manager stopped during it); its chunks are freed', { volumeId: p.volume.id, chunks: p.map.segmentCount * p.map.replicas });
      records.push(...toFreeRecords(p.volume.id, p.map, 'interrupted create rolled back'));
      log.warn({ volumeId: p.volume.id, volume: p.volume.name, chunks: p.map.segmentCount * p.map.replicas },
        'rolling back an interrupted create (manager restart or failed rollback)');
    }
    this.freer.stage(batch, records);
    try {
      await this.store.write(batch);
    } catch (err) {
      this.stalePending = stale;
      throw err;
    }
    this.freer.track(records);
    return stale.length;
  }

  private async abortCreate(pending: PendingCreateRecord, reason: string, taken = new Set<number>()): Promise<void> {
    const id = pending.volume.id;
    // Every planned chunk is freed, allocated or not: a node whose reply was
    // lost may hold it, and the volume-id guard makes a free of a chunk the
    // node never gave us harmless. Chunks the node said are taken are not ours.
    const all = toFreeRecords(id, pending.map, reason);
    const records = all.filter((_, i) => !taken.has(i));
    for (const i of taken) {
      const r = all[i]!;
      this.model.markForeign(r.diskId, r.chunkIndex, id);
      log.warn({ diskId: r.diskId, chunkIndex: r.chunkIndex }, 'node holds this chunk for a volume the manager does not know; kept out of placement until GC sees it free');
    }
    const batch = this.store.batch().delPending(id).event('volume.create_failed', `volume:${pending.volume.name}`, `${reason}; nothing was created, its chunks are freed`, { volumeId: id, chunks: records.length });
    this.freer.stage(batch, records);
    try {
      await this.store.write(batch);
    } catch (err) {
      // The pending record is still in the database: the next GC pass (or start) retries the rollback.
      log.error({ volumeId: id, err: errorMessage(err) }, 'could not record the rollback; GC will retry it');
      this.stalePending.push(pending);
      return;
    }
    this.freer.track(records);
    const res = await this.freer.free(records);
    log.info({ volumeId: id, volume: pending.volume.name, chunksFreed: res.freed, chunksLeft: res.left }, 'create rolled back');
  }

  // Replicas go to distinct racks by default when servers carry a "rack" label.
  private defaultSpreadLabel(): string {
    return this.registry.listServers().some((s) => s.state === 'active' && this.registry.labelsOf(s).rack !== undefined) ? 'rack' : '';
  }
}

export function toFreeRecords(volumeId: number, map: ChunkMapRecord, reason: string): ToFreeRecord[] {
  const out: ToFreeRecord[] = [];
  const now = Date.now();
  forEachReplica(map, (r) => out.push({ diskId: r.diskId, chunkIndex: r.chunkIndex, volumeId, reason, sinceMs: now }));
  return out;
}

/** Same error class and code, clearer message. */
function rewrap(err: unknown, message: string): VskyError {
  if (!(err instanceof VskyError)) return new VskyError('EINTERNAL', message, {}, { cause: err });
  if (err.constructor === VskyError) return new VskyError(err.code, message, err.context, { cause: err });
  // Every subclass in shared/errors.ts takes (message, context[, options]).
  const Cls = err.constructor as new (m: string, c: Record<string, unknown>, o?: { cause?: unknown }) => VskyError;
  return new Cls(message, err.context, { cause: err });
}
