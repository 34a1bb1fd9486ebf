import { scrubChunk } from './chunk-io.js';
import { isCounter } from '../shared/counters.js';
import { ConflictError, InvalidArgumentError, IoError, NotFoundError, StaleEpochError } from '../shared/errors.js';
import { moduleLogger } from '../shared/logger.js';
import type { Chunk } from './chunk.js';
import { emptyRecord } from './disk-format.js';
import { identityRecord, sameIdentity, validateIdentity, type ChunkIdentity } from './chunk-identity.js';
import { applySegmentNote, applyVolumeState, distinctDisks, validateVolumeState, type VolumeStateTarget } from './volume-state.js';
import { Disk, type OpenDiskOptions } from './disk.js';
import { NoChunkError } from '../shared/data-protocol/status.js';

// All disks of a node, and the index the data path uses to find a chunk:
// volumeId -> (segment * 256 + slot) -> Chunk, numeric keys only (no string
// building per I/O). Each volume also carries the highest lease epoch this
// node has seen for it (docs/design.md rule 3), kept on every chunk record of the
// volume so it survives restarts and disk moves. Identities: chunk-identity.ts;
// segment notes and SetVolumeState: volume-state.ts.

export type { ChunkIdentity } from './chunk-identity.js';

export class VolumeEntry {
  readonly id: number;
  /** Highest epoch seen (memory); requests below it are refused. */
  epoch = 0;
  /** Highest epoch known to be on disk; a request at a higher one waits for its persistence. */
  durableEpoch = 0;
  raising: Promise<void> | undefined;
  raisingTo = 0;
  readonly chunks = new Map<number, Chunk>();

  constructor(id: number) {
    this.id = id;
  }
}

export function chunkKey(segment: number, slot: number): number {
  return segment * 256 + slot;
}

export interface ChunkStoreOptions {
  /** Data I/O bandwidth cap of every disk served, MiB/s (0 or undefined: none); see Disk.setThrottle. */
  diskThrottleMibps?: number;
}

export class ChunkStore {
  private readonly log = moduleLogger('chunk-store');
  private readonly disks = new Map<string, Disk>();
  private readonly stateListeners = new Set<(disk: Disk) => void>();
  readonly volumes = new Map<number, VolumeEntry>();
  private readonly diskThrottleMibps: number;
  /**
   * False from the start of a node that has a manager until the manager's
   * current epochs were applied (refreshEpochs): a node that was down may have
   * missed fences, so it takes no mutation before (a higher epoch in a request
   * may raise the minimum, but does not prove the node is current).
   */
  private epochsCurrent = true;

  constructor(opts: ChunkStoreOptions = {}) {
    this.diskThrottleMibps = opts.diskThrottleMibps ?? 0;
  }

  /** Calls `fn` whenever a served disk's reported state changes (failed, fault injection); returns an unsubscribe. */
  onDiskStateChange(fn: (disk: Disk) => void): () => void {
    this.stateListeners.add(fn);
    return () => this.stateListeners.delete(fn);
  }

  /** Opens (creating/formatting if new) and serves a disk; re-adding the same path is a no-op. */
  async openDisk(path: string, opts: OpenDiskOptions): Promise<Disk> {
    for (const d of this.disks.values()) if (d.path === path) return d;
    const disk = await Disk.open(path, { throttleMibps: this.diskThrottleMibps, ...opts });
    if (this.clusterId && !disk.sb.clusterId) await disk.joinCluster(this.clusterId); // added after registration
    const twin = this.disks.get(disk.id);
    if (twin) {
      await disk.close();
      throw new ConflictError(`disk ${path} is disk ${disk.id}, already served from ${twin.path}`, { path, diskId: disk.id });
    }
    this.disks.set(disk.id, disk);
    disk.onStateChange = (d) => {
      for (const fn of this.stateListeners) fn(d);
    };
    for (const chunk of disk.chunks) if (chunk.owned) this.index(chunk);
    this.log.info({ disk: disk.id, path, chunks: disk.sb.chunkCount, used: disk.usedChunks(), throttleMibps: disk.throttleMibps || undefined }, 'serving disk');
    return disk;
  }

  disk(diskId: string): Disk {
    const disk = this.disks.get(diskId);
    if (!disk) throw new NotFoundError(`no disk ${diskId} on this node`, { diskId });
    return disk;
  }

  diskList(): Disk[] {
    return [...this.disks.values()];
  }

  /** The chunk serving (volume, segment, slot), or undefined. */
  lookup(volumeId: number, segment: number, slot: number): Chunk | undefined {
    return this.volumes.get(volumeId)?.chunks.get(chunkKey(segment, slot));
  }

  /**
   * Epoch check of a mutating request (docs/design.md rule 3): an epoch lower than the
   * highest seen for the volume is refused, changing nothing. Returns the
   * volume entry for ensureEpoch().
   */
  admit(volumeId: number, epoch: number): VolumeEntry {
    if (!this.epochsCurrent) {
      throw new IoError('this storage node restarted and has not refreshed its volumes\' lease epochs from the manager yet; it takes writes once it has', { volumeId, epoch });
    }
    const vol = this.volumes.get(volumeId);
    if (!vol) throw new NoChunkError(`no chunk of volume ${volumeId} on this node`, { volumeId });
    if (epoch < vol.epoch) throw new StaleEpochError(`epoch ${epoch} is below volume ${volumeId}'s epoch ${vol.epoch}`, { volumeId, epoch });
    return vol;
  }

  /**
   * Makes `epoch` (not lower than the volume's) durable on the volume's chunk
   * records. Returns undefined when it already is (the hot path), else a
   * promise the request must wait for before it is acknowledged.
   */
  ensureEpoch(vol: VolumeEntry, epoch: number): Promise<void> | undefined {
    if (epoch <= vol.durableEpoch) return undefined;
    if (epoch > vol.epoch) {
      vol.epoch = epoch;
      for (const c of vol.chunks.values()) if (c.rec.epoch < epoch) c.rec.epoch = epoch;
    }
    if (vol.raising !== undefined && vol.raisingTo >= epoch) return vol.raising;
    const target = vol.epoch;
    const raising: Promise<void> = Promise.all([...vol.chunks.values()].map((c) => c.persist())).then(() => {
      if (target > vol.durableEpoch) vol.durableEpoch = target;
    }).finally(() => {
      if (vol.raising === raising) vol.raising = undefined;
    });
    vol.raising = raising;
    vol.raisingTo = target;
    return raising;
  }

  /** The cluster's id once the manager told us (joinCluster); new disks are stamped with it. */
  clusterId = '';

  /**
   * Stamps every disk with the cluster's id (the manager's, at registration);
   * a disk already stamped with another id is refused (ConflictError).
   */
  async joinCluster(clusterId: string): Promise<void> {
    if (!clusterId) return;
    this.clusterId = clusterId;
    for (const d of this.disks.values()) await d.joinCluster(clusterId);
  }

  /** Mutations wait for refreshEpochs (a node with a manager calls this before it serves). */
  awaitEpochRefresh(): void {
    this.epochsCurrent = false;
  }

  /**
   * Raises each volume's minimum epoch to the manager's current one (durably),
   * then admits mutations again. Returns how many volumes were behind.
   */
  async refreshEpochs(epochs: readonly { volumeId: number; epoch: number }[]): Promise<number> {
    // uint64 over gRPC: a value above 2^53-1 arrives inexact. Refuse the lot before raising
    // anything (an epoch in memory that can never be written would refuse every write).
    const bad = epochs.find((e) => !isCounter(e.epoch));
    if (bad !== undefined) {
      throw new InvalidArgumentError(`manager sent lease epoch ${bad.epoch} for volume ${bad.volumeId}: epochs are 0..2^53-1`, { volumeId: bad.volumeId });
    }
    const raising: Promise<void>[] = [];
    for (const { volumeId, epoch } of epochs) {
      const vol = this.volumes.get(volumeId);
      if (vol === undefined || epoch <= vol.epoch) continue;
      this.log.info({ volumeId, from: vol.epoch, to: epoch }, 'lease epoch raised to the manager\'s (fences missed while this node was down)');
      const p = this.ensureEpoch(vol, epoch);
      if (p !== undefined) raising.push(p);
    }
    await Promise.all(raising);
    this.epochsCurrent = true;
    return raising.length;
  }

  /** The manager's note on a segment (NoteSegment), kept durably with each of its chunks here (volume-state.ts). */
  async noteSegment(volumeId: number, segment: number, staleSlots: number, mapVersion: number, epoch: number): Promise<number> {
    if (!isCounter(mapVersion) || !isCounter(epoch) || !Number.isInteger(staleSlots) || staleSlots < 0 || staleSlots > 0xffff_ffff) {
      throw new InvalidArgumentError(`segment note: invalid stale slots ${staleSlots}, map version ${mapVersion} or epoch ${epoch}`, { volumeId, segment });
    }
    const vol = this.volumes.get(volumeId);
    if (!vol) throw new NoChunkError(`no chunk of volume ${volumeId} on this node`, { volumeId });
    return applySegmentNote(vol, segment, staleSlots, mapVersion, epoch);
  }

  /** FENCE: raise the volume's epoch (and generation) on every chunk here, durably. */
  async fence(volumeId: number, epoch: number, generation: number): Promise<void> {
    const vol = this.volumes.get(volumeId);
    if (!vol) throw new NoChunkError(`no chunk of volume ${volumeId} on this node`, { volumeId });
    if (epoch < vol.epoch) throw new StaleEpochError(`fence epoch ${epoch} is below volume ${volumeId}'s epoch ${vol.epoch}`, { volumeId, epoch });
    vol.epoch = epoch;
    const chunks = [...vol.chunks.values()];
    for (const c of chunks) {
      if (c.rec.epoch < epoch) c.rec.epoch = epoch;
      if (generation > c.rec.generation) c.rec.generation = generation;
    }
    // Writes admitted under an older epoch must land before the fence is acknowledged.
    await Promise.all(chunks.map((c) => c.drained(true)));
    await Promise.all(chunks.map((c) => c.persist()));
    await Promise.all(distinctDisks(chunks).map((c) => c.sync()));
    if (epoch > vol.durableEpoch) vol.durableEpoch = epoch;
  }

  /**
   * SetVolumeState (storage jobs, manager/jobs/): an epoch-checked
   * compare-and-set over every chunk of the volume on this node, durable
   * before it resolves (volume-state.ts). Returns the chunks set.
   */
  async setVolumeState(volumeId: number, epoch: number, expectedGeneration: number, target: VolumeStateTarget, raiseLagging = false): Promise<number> {
    validateVolumeState(volumeId, epoch, expectedGeneration, target);
    if (!this.epochsCurrent) {
      throw new IoError('this storage node restarted and has not refreshed its volumes\' lease epochs from the manager yet', { volumeId, epoch });
    }
    const vol = this.volumes.get(volumeId);
    if (!vol) throw new NoChunkError(`no chunk of volume ${volumeId} on this node`, { volumeId });
    return applyVolumeState(vol, epoch, expectedGeneration, target, raiseLagging);
  }

  /** FLUSH: fdatasync every disk holding a chunk of the volume (data and records). */
  async flush(volumeId: number): Promise<void> {
    const vol = this.volumes.get(volumeId);
    if (!vol) throw new NoChunkError(`no chunk of volume ${volumeId} on this node`, { volumeId });
    await Promise.all(distinctDisks([...vol.chunks.values()]).map((c) => {
      c.disk.stats.flushOps += 1;
      return c.sync();
    }));
  }

  /** Claims a free chunk for a volume; durable before it resolves. Same identity again is a no-op. */
  async allocate(diskId: string, chunkIndex: number, id: ChunkIdentity): Promise<void> {
    validateIdentity(id);
    const chunk = this.chunkAt(diskId, chunkIndex);
    if (chunk.busy) throw new ConflictError(`chunk ${chunkIndex} of disk ${diskId} is being changed; retry`, { diskId, chunkIndex });
    if (chunk.owned) {
      if (sameIdentity(chunk, id) && this.lookup(id.volumeId, id.segment, id.slot) === chunk) return;
      throw new ConflictError(`chunk ${chunkIndex} of disk ${diskId} already belongs to volume ${chunk.rec.volumeId}`, { diskId, chunkIndex });
    }
    const other = this.lookup(id.volumeId, id.segment, id.slot);
    if (other) {
      throw new ConflictError(`this node already holds volume ${id.volumeId} segment ${id.segment} slot ${id.slot} (disk ${other.disk.id} chunk ${other.index})`, { diskId, chunkIndex });
    }
    const rec = identityRecord(id, chunk.rec.bitmap.length * 8, this.volumes.get(id.volumeId)?.epoch ?? 0);
    const previous = chunk.rec;
    chunk.busy = true;
    chunk.rec = rec;
    try {
      await chunk.persist();
      await chunk.sync();
    } catch (err) {
      chunk.rec = previous;
      throw err;
    } finally {
      chunk.busy = false;
    }
    this.index(chunk);
  }

  /**
   * ReassignChunk (snapshots, docs/snapshots.md): the chunk of `fromVolumeId`
   * at (diskId, chunkIndex) takes identity `id` (another volume), durably,
   * once the requests in flight on it drained; the old volume's writers get
   * NO_CHUNK from the start. A retry of an applied reassignment is a no-op.
   */
  async reassign(diskId: string, chunkIndex: number, fromVolumeId: number, fromEpoch: number, id: ChunkIdentity): Promise<void> {
    validateIdentity(id);
    const chunk = this.chunkAt(diskId, chunkIndex);
    if (chunk.owned && chunk.rec.volumeId === id.volumeId && chunk.rec.segment === id.segment && chunk.rec.slot === id.slot) return;
    if (!chunk.owned || chunk.rec.volumeId !== fromVolumeId) {
      throw new ConflictError(`chunk ${chunkIndex} of disk ${diskId} does not belong to volume ${fromVolumeId}`, { diskId, chunkIndex });
    }
    const from = this.volumes.get(fromVolumeId);
    if (from !== undefined && fromEpoch < from.epoch) {
      throw new StaleEpochError(`reassignment at epoch ${fromEpoch} is below volume ${fromVolumeId}'s epoch ${from.epoch}`, { volumeId: fromVolumeId, epoch: fromEpoch });
    }
    const other = this.lookup(id.volumeId, id.segment, id.slot);
    if (other) throw new ConflictError(`this node already holds volume ${id.volumeId} segment ${id.segment} slot ${id.slot}`, { diskId, chunkIndex });
    if (chunk.busy) throw new ConflictError(`chunk ${chunkIndex} of disk ${diskId} is being changed; retry`, { diskId, chunkIndex });
    chunk.busy = true;
    const previous = { ...chunk.rec };
    try {
      this.unindex(chunk);
      await chunk.drained();
      const vol = this.volumes.get(id.volumeId);
      Object.assign(chunk.rec, {
        volumeId: id.volumeId, segment: id.segment, slot: id.slot, segmentCount: id.segmentCount, replicas: id.replicas,
        volumeSize: id.volumeSize, volumeName: id.volumeName, generation: id.generation,
        epoch: Math.max(id.epoch, vol?.epoch ?? 0), lvolid: id.lvolid ?? 0, thin: id.thin === true, readOnly: id.readOnly === true, mapVersion: 0, staleSlots: 0,
      });
      await chunk.persist();
      await chunk.sync();
    } catch (err) {
      Object.assign(chunk.rec, previous);
      throw err;
    } finally {
      chunk.busy = false;
      this.index(chunk);
    }
  }

  /** Releases a chunk: it reads as zeros to its next owner. Freeing a free chunk is a no-op. */
  async free(diskId: string, chunkIndex: number, volumeId: number): Promise<void> {
    const chunk = this.chunkAt(diskId, chunkIndex);
    if (!chunk.owned) return;
    if (chunk.rec.volumeId !== volumeId) {
      throw new ConflictError(`chunk ${chunkIndex} of disk ${diskId} belongs to volume ${chunk.rec.volumeId}, not ${volumeId}`, { diskId, chunkIndex });
    }
    if (chunk.busy) throw new ConflictError(`chunk ${chunkIndex} of disk ${diskId} is being changed; retry`, { diskId, chunkIndex });
    chunk.busy = true;
    try {
      this.unindex(chunk); // new requests get NO_CHUNK from here on
      await chunk.drained(); // no late write may land after the next owner arrives
      await scrubChunk(chunk);
      chunk.rec = emptyRecord(chunk.rec.bitmap.length * 8);
      await chunk.persist();
      await chunk.sync();
    } finally {
      chunk.busy = false;
    }
  }

  /** Stops serving a disk; refused while it holds chunks unless `force`. */
  async removeDisk(diskId: string, force: boolean): Promise<Disk> {
    const disk = this.disk(diskId);
    const used = disk.usedChunks();
    if (used > 0 && !force) {
      throw new ConflictError(`disk ${diskId} holds ${used} chunks; move them first or force`, { diskId, used });
    }
    this.disks.delete(diskId);
    await this.retire(disk);
    this.log.info({ disk: diskId, path: disk.path, force }, 'disk removed');
    return disk;
  }

  /** Every owned chunk (of one disk, or all). */
  listChunks(diskId?: string): Chunk[] {
    const disks = diskId ? [this.disk(diskId)] : this.diskList();
    return disks.flatMap((d) => d.chunks.filter((c) => c.owned));
  }

  async close(): Promise<void> {
    const disks = this.diskList();
    this.disks.clear();
    await Promise.all(disks.map((d) => this.retire(d)));
  }

  private async retire(disk: Disk): Promise<void> {
    for (const c of disk.chunks) if (c.owned) this.unindex(c);
    await Promise.all(disk.chunks.map((c) => c.drained()));
    await disk.close();
  }

  private chunkAt(diskId: string, chunkIndex: number): Chunk {
    const disk = this.disk(diskId);
    const chunk = disk.chunks[chunkIndex];
    if (!Number.isInteger(chunkIndex) || chunk === undefined) {
      throw new InvalidArgumentError(`chunk index ${chunkIndex} is out of range: disk ${diskId} has ${disk.chunks.length} chunks`, { diskId, chunkIndex });
    }
    return chunk;
  }

  private index(chunk: Chunk): void {
    const { volumeId, segment, slot, epoch } = chunk.rec;
    let vol = this.volumes.get(volumeId);
    if (!vol) this.volumes.set(volumeId, (vol = new VolumeEntry(volumeId)));
    const key = chunkKey(segment, slot);
    const other = vol.chunks.get(key);
    if (other && other !== chunk) {
      // Two disks claim the same replica (e.g. an old copy moved in): serve the newer generation.
      this.log.warn({ volumeId, segment, slot, disk: chunk.disk.id, other: other.disk.id }, 'duplicate chunk identity on this node');
      if (other.rec.generation >= chunk.rec.generation) return;
    }
    vol.chunks.set(key, chunk);
    if (epoch > vol.epoch) vol.epoch = epoch;
    if (epoch > vol.durableEpoch) vol.durableEpoch = epoch;
  }

  private unindex(chunk: Chunk): void {
    const vol = this.volumes.get(chunk.rec.volumeId);
    const key = chunkKey(chunk.rec.segment, chunk.rec.slot);
    if (!vol || vol.chunks.get(key) !== chunk) return;
    vol.chunks.delete(key);
    if (vol.chunks.size === 0) this.volumes.delete(vol.id);
  }
}
