import { VskyError, errorMessage } from '../../shared/errors.js';
import { moduleLogger } from '../../shared/logger.js';
import { freeIdentitySlot, identitySlot, moveOf, replicaLocation, segmentReplicas, setIdentitySlot, setReplicaLocation, setReplicaState } from '../chunk-map.js';
import { mapLimit, type PeerClients } from '../node-clients.js';
import type { PlacementModel } from '../placement.js';
import type { SpareRequest } from '../placement/spares.js';
import type { Registry } from '../registry.js';
import type { ResyncContext } from './context.js';
import type { ChunkLocation, ResyncRecord, ToFreeRecord, VolumeRecord } from '../types.js';
import type { VolumeEntry } from '../volumes.js';

// Replacements for stale replicas. For every stale replica (a new failure,
// or the target of a resync that failed in turn) a spare chunk is taken from
// the pool (placement.ts placeSpares: another server and rack than the
// segment's other replicas, the disk with the least resync work ahead, then
// the most free space), claimed on its node with the replica's identity
// (same slot, current generation and epoch), and then one batch:
//  - the map points the slot at the spare, state resyncing;
//  - a resync record (queued) says what to copy, or the existing one is
//    re-targeted (regions done back to 0);
//  - the replaced chunk goes on the to-free list (its node may be dead: GC
//    retries), so nothing committed references it any more.
// Then the holder head gets the new map (its writes must reach the spare
// before the copy starts; manager/resync/resyncs.ts waits for that).
//
// Hot-spare mode (`vsky manager --spare-disk ID`, for benchmarks and
// RAID-1-style comparisons): spares are taken only from the listed disks,
// under the same rules (never a server holding another replica of the
// segment). With one spare disk and one resync per disk, the rebuild is one
// copy at a time onto that disk: what a RAID-1 hot spare does, and what the
// default (spares anywhere, many copies at once) is measured against.

const log = moduleLogger('manager.spares');

/** How long a replica that found no spare (or whose allocation failed) waits before the next try. */
const RETRY_MS = 10_000;

/** A replica (position r of a volume's map) some planner finds a new chunk for. */
export interface ReplicaItem {
  entry: VolumeEntry;
  segment: number;
  slot: number;
  r: number;
  /** Where the slot points now. */
  from: ChunkLocation;
}

interface Item extends ReplicaItem {
  record?: ResyncRecord;
}

export class SparePlanner {
  private readonly notBefore = new Map<string, number>();

  constructor(
    private readonly ctx: ResyncContext,
    private readonly model: PlacementModel,
    spareDisks?: readonly string[],
  ) {
    if (spareDisks !== undefined && spareDisks.length > 0) {
      this.onlyDisks = new Set(spareDisks);
      log.warn({ spareDisks }, 'hot-spare mode: failed replicas are rebuilt only onto the listed spare disks (--spare-disk)');
    }
  }

  /** Hot-spare mode: the only disks spares may be taken from (undefined: the whole pool). */
  readonly onlyDisks: ReadonlySet<string> | undefined;

  /** Something changed (a server came back, a disk was added): retry every replica now. */
  retryNow(): void {
    this.notBefore.clear();
  }

  /** Plans replacements for every stale replica; returns how many were committed. */
  async plan(): Promise<number> {
    const items = this.collect();
    if (items.length === 0) return 0;
    const reqs: SpareRequest[] = items.map((it) => this.request(it));
    const picks = this.model.placeSpares(reqs, this.resyncLoad(items), this.onlyDisks);
    const planned: Array<{ it: Item; to: ChunkLocation & { serverId: string; fit: string }; idSlot: number }> = [];
    items.forEach((it, i) => {
      const pick = picks[i];
      const name = `${it.entry.volume.name} seg ${it.segment} slot ${it.slot}`;
      if (!pick) {
        this.backoff(it);
        const where = this.onlyDisks ? `none of the spare disks (${[...this.onlyDisks].join(', ')}) is active with a free chunk on a server without a replica of the segment`
          : 'no active disk with a free chunk on a server without a replica of the segment';
        log.warn({ volumeId: it.entry.volume.id, segment: it.segment, slot: it.slot, excluded: [...reqs[i]!.excludeServers] },
          `no spare for ${name}: ${where}; retried when servers or disks change`);
        return;
      }
      const idSlot = this.spareIdSlot(it, pick);
      if (idSlot === undefined) return;
      planned.push({ it, to: pick, idSlot });
    });
    const results = await mapLimit(planned, 16, ({ it, to, idSlot }) => allocateReplicaChunk(this.ctx.peers, this.ctx.registry, it.entry.volume, it.segment, idSlot, to));
    const batch = this.ctx.store.batch();
    const toFree: ToFreeRecord[] = [];
    const committed: Array<{ it: Item; to: ChunkLocation & { serverId: string; fit: string }; record: ResyncRecord }> = [];
    const now = this.ctx.registry.now();
    results.forEach((res, i) => {
      const { it, to, idSlot: spareSlot } = planned[i]!;
      const name = `${it.entry.volume.name} seg ${it.segment} slot ${it.slot}`;
      if (res.status === 'rejected') {
        this.backoff(it);
        if (res.reason instanceof VskyError && res.reason.code === 'ECONFLICT') this.model.markForeign(to.diskId, to.chunkIndex, it.entry.volume.id);
        else this.model.release(to.diskId, to.chunkIndex, it.entry.volume.id);
        log.warn({ diskId: to.diskId, chunkIndex: to.chunkIndex, err: errorMessage(res.reason) }, `spare for ${name} could not be allocated; retried later`);
        return;
      }
      const idSlot = identitySlot(it.entry.map, it.r); // the replaced chunk's
      const spare: ToFreeRecord = { diskId: to.diskId, chunkIndex: to.chunkIndex, volumeId: it.entry.volume.id, segment: it.segment, idSlot: spareSlot, reason: 'spare not used', sinceMs: now };
      if (!this.stillWanted(it, to)) {
        // The slot changed while the node allocated (volume deleted, failure
        // during planning): the spare is garbage, freed like any other.
        toFree.push(spare);
        log.info({ diskId: to.diskId, chunkIndex: to.chunkIndex }, `spare for ${name} no longer wanted; freeing it`);
        return;
      }
      const { map } = it.entry;
      setReplicaLocation(map, it.r, to);
      if (spareSlot !== idSlot) setIdentitySlot(map, it.r, spareSlot);
      setReplicaState(map, it.r, 'resyncing');
      let record = it.record;
      if (record) {
        // The target of a resync failed: the copy starts over on the new spare.
        toFree.push({ ...it.from, volumeId: it.entry.volume.id, segment: it.segment, idSlot, reason: `resync ${record.id} target replaced`, sinceMs: now });
        Object.assign(record, {
          target: { diskId: to.diskId, chunkIndex: to.chunkIndex }, state: 'queued', regionsDone: 0, regionsTotal: 0,
          executor: '', sources: [], failures: 0,
        });
      } else {
        record = {
          id: this.ctx.book.allocateId(batch), volumeId: it.entry.volume.id, segment: it.segment, slot: it.slot,
          target: { diskId: to.diskId, chunkIndex: to.chunkIndex }, old: it.from, state: 'queued', regionsDone: 0, regionsTotal: 0,
          bytesCopied: 0, createdMs: now, attempt: 0, executor: '', sources: [], startedMs: 0, epoch: 0, lastError: '', failures: 0,
        };
        toFree.push({ ...it.from, volumeId: it.entry.volume.id, segment: it.segment, idSlot, reason: `replaced by resync ${record.id}`, sinceMs: now });
      }
      batch.putResync(record).putChunkMap(map);
      batch.event('spare.placed', `volume:${it.entry.volume.name}`, `replaces stale ${it.from.diskId}#${it.from.chunkIndex}${it.record ? ` (resync ${record.id}'s previous target failed)` : ''}`,
        { segment: it.segment, slot: it.slot, resync: record.id, disk: to.diskId, chunk: to.chunkIndex, server: this.ctx.registry.server(to.serverId)?.name ?? to.serverId, retarget: !!it.record });
      committed.push({ it, to, record });
    });
    this.ctx.freer.stage(batch, toFree);
    await this.ctx.store.write(batch);
    this.ctx.freer.track(toFree);
    for (const { it, to, record } of committed) {
      if (!it.record) this.ctx.book.add(record);
      const server = this.ctx.registry.server(to.serverId);
      const label = it.entry.volume.spreadLabel;
      const where = `disk ${to.diskId} on server ${server?.name ?? to.serverId}${label ? ` (${label} ${server ? this.ctx.registry.labelsOf(server)[label] ?? '-' : '-'})` : ''}`;
      log.info({ volumeId: it.entry.volume.id, segment: it.segment, slot: it.slot, resync: record.id, fit: to.fit, chunkIndex: to.chunkIndex, replaced: it.from },
        `spare for ${it.entry.volume.name} seg ${it.segment} slot ${it.slot}: ${where}${it.record ? ' (new target: the previous one failed)' : ''}`);
    }
    for (const id of new Set(committed.map((c) => c.it.entry.volume.id))) this.ctx.pusher.changed(id);
    if (toFree.length > 0) {
      this.ctx.track(this.ctx.freer.free(toFree).catch((err: unknown) => log.warn({ err: errorMessage(err) }, 'freeing replaced chunks failed; GC retries')));
    }
    return committed.length;
  }

  /** Stale replicas not waiting out a retry delay. */
  private collect(): Item[] {
    const items: Item[] = [];
    const now = this.ctx.registry.now();
    for (const entry of this.ctx.volumes.entries()) {
      const { volume, map } = entry;
      if (!map.stale || map.stale.length === 0) continue;
      for (const r of map.stale) {
        const segment = Math.floor(r / map.replicas);
        const slot = r % map.replicas;
        if ((this.notBefore.get(`${volume.id}/${r}`) ?? 0) > now) continue;
        if (moveOf(map, r)) continue; // a drain was copying it: manager/resync/drains.ts turns that copy into the rebuild
        items.push({ entry, segment, slot, r, from: replicaLocation(map, r), record: this.ctx.book.forSlot(volume.id, segment, slot) });
      }
    }
    return items;
  }

  private request(it: Item): SpareRequest {
    const exclude = new Set<string>();
    for (const x of segmentReplicas(it.entry.map, it.segment)) {
      if (x.slot === it.slot) continue;
      const s = this.ctx.registry.serverOfDisk(x.diskId);
      if (s) exclude.add(s.id);
    }
    return {
      volumeId: it.entry.volume.id, excludeServers: exclude, spreadLabel: it.entry.volume.spreadLabel,
      avoidServer: this.ctx.registry.serverOfDisk(it.from.diskId)?.id,
    };
  }

  /** Resync work ahead per disk: targets of queued/running resyncs, and reads shared among each segment's good copies. */
  private resyncLoad(items: Item[]): Map<string, number> {
    const load = new Map<string, number>();
    const add = (disk: string, n: number) => load.set(disk, (load.get(disk) ?? 0) + n);
    const reads = (entry: VolumeEntry | undefined, segment: number) => {
      if (!entry) return;
      const good = segmentReplicas(entry.map, segment).filter((x) => x.state === 'in_sync');
      for (const x of good) add(x.diskId, 1 / good.length);
    };
    const replanned = new Set(items.map((it) => it.record));
    for (const rec of this.ctx.book.all()) {
      if (replanned.has(rec)) continue;
      add(rec.target.diskId, 1);
      reads(this.ctx.volumes.byVolumeId(rec.volumeId), rec.segment);
    }
    for (const it of items) reads(it.entry, it.segment);
    return load;
  }

  /**
   * The identity slot a spare is claimed under: the replica's own, unless the
   * spare's server still holds the replaced chunk (a disk failed on a server
   * whose sibling disk takes the spare: the node addresses chunks by volume,
   * segment and identity slot, and refuses a second one): then a slot no
   * chunk of the segment uses, as a drain does. Undefined: none left.
   */
  private spareIdSlot(it: Item, to: { serverId: string }): number | undefined {
    const own = identitySlot(it.entry.map, it.r);
    const pending = this.ctx.freer.list()
      .filter((t) => t.volumeId === it.entry.volume.id && t.segment === it.segment && t.idSlot !== undefined && this.ctx.registry.serverOfDisk(t.diskId)?.id === to.serverId)
      .map((t) => t.idSlot!);
    const sameNode = this.ctx.registry.serverOfDisk(it.from.diskId)?.id === to.serverId;
    if (!sameNode && !pending.includes(own)) return own;
    return freeIdentitySlot(it.entry.map, it.segment, this.ctx.freer.list()
      .filter((t) => t.volumeId === it.entry.volume.id && t.segment === it.segment && t.idSlot !== undefined).map((t) => t.idSlot!));
  }

  private stillWanted(it: Item, to: ChunkLocation): boolean {
    if (this.ctx.volumes.byVolumeId(it.entry.volume.id) !== it.entry) return false;
    const now = replicaLocation(it.entry.map, it.r);
    if (now.diskId !== it.from.diskId || now.chunkIndex !== it.from.chunkIndex) return false;
    if (!it.entry.map.stale?.includes(it.r)) return false;
    if (it.record && this.ctx.book.forSlot(it.entry.volume.id, it.segment, it.slot) !== it.record) return false;
    const d = this.ctx.registry.disk(to.diskId);
    return d?.state === 'active' && !d.draining && this.ctx.registry.serverOfDisk(to.diskId)?.state === 'active';
  }

  private backoff(it: Item): void {
    this.notBefore.set(`${it.entry.volume.id}/${it.r}`, this.ctx.registry.now() + RETRY_MS);
  }
}

/** Claims a chunk on its node for a replica of (volume, segment) under identity slot `idSlot` (current generation and epoch). */
export async function allocateReplicaChunk(peers: PeerClients, registry: Registry, v: VolumeRecord, segment: number, idSlot: number,
  to: ChunkLocation & { serverId: string }): Promise<void> {
  const server = registry.server(to.serverId)!;
  await peers.node.allocateChunk(server.controlAddress, {
    diskId: to.diskId, chunkIndex: to.chunkIndex,
    identity: {
      volumeId: v.id, volumeName: v.name, volumeSize: v.size, segment, slot: idSlot,
      segmentCount: v.segmentCount, replicas: v.replicas, generation: v.generation, epoch: v.epoch, lvolid: v.intId ?? 0, thin: v.thin === true,
      readOnly: v.kind === 'snapshot', // a snapshot's new replica: only its resync copy (peer to peer) writes it
    },
  });
}
