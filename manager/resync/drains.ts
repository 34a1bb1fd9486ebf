import { VskyError, errorMessage } from '../../shared/errors.js';
import { moduleLogger } from '../../shared/logger.js';
import {
  clearMove, freeIdentitySlot, identitySlot, moveOf, positionOf, replicaLocation, replicaState, sameChunk, segmentReplicas,
  setIdentitySlot, setMove, setReplicaLocation, setReplicaState, type MoveTarget,
} from '../chunk-map.js';
import { mapLimit } from '../node-clients.js';
import type { PlacementModel } from '../placement.js';
import type { SparePick, SpareRequest } from '../placement/spares.js';
import { allocateReplicaChunk, type ReplicaItem } from './spares.js';
import type { ResyncContext } from './context.js';
import type { StoreBatch } from '../store.js';
import { forEachReplica, type DiskRecord, type ResyncRecord, type ToFreeRecord } from '../types.js';
import type { VolumeEntry } from '../volumes.js';

// Graceful removal: draining a disk (RemoveDisk without force) or a server
// (RemoveServer: all its disks) with full redundancy throughout.
//
// A draining disk takes no new chunks (registry.ts: not eligible). For each
// in-sync replica on it, a drain pass:
//  1. picks a target like a spare (manager/placement.ts placeSpares: a server
//     holding no other replica or drain target of the segment, preferably not
//     the drained disk's server, least resync work, most free space) and
//     claims it on its node under an identity slot no chunk of the segment
//     uses (chunk-map.ts freeIdentitySlot), so it may even sit on the same
//     node as the replica it replaces;
//  2. in one batch, records it as the replica's drain target in the map
//     (`moves`: written by the head like a resyncing replica, never read) and
//     queues a resync record for it. The replica itself stays in sync and
//     readable: the segment never has fewer good copies than it should.
// The resync machinery (manager/resync/resyncs.ts) schedules and runs the copy like
// a rebuild (at lower priority: the segment has all its good copies) and, in
// the batch that finishes it, points the slot at the target and frees the
// old chunk. Once nothing references a draining disk (no replica, no chunk
// waiting to be freed), it is removed; a draining server is removed with its
// last disk.
//
// Failures meanwhile: a drained replica that goes stale turns its copy into
// the slot's rebuild (the target has taken every write since the head had
// the map, and the copy goes on from where it was); a target that fails or
// whose disk goes away is dropped and another one is planned.

const log = moduleLogger('manager.drain');

/** Drain copies planned ahead of the scheduler at most (targets are claimed chunks). */
const MAX_PLANNED_MOVES = 256;
/** How long a replica that found no target waits before the next try. */
const RETRY_MS = 10_000;

interface Item extends ReplicaItem {
  /** The identity slot the target is claimed under. */
  idSlot: number;
  disk: DiskRecord;
}

export class DrainPlanner {
  private readonly notBefore = new Map<string, number>();
  /** Per draining disk: why part of it waits (shown by ListDisks). */
  private readonly notes = new Map<string, string>();

  constructor(
    private readonly ctx: ResyncContext,
    private readonly model: PlacementModel,
    /** Ends a drain copy that must not go on (resync-outcomes.ts). */
    private readonly dropMove: (rec: ResyncRecord, entry: VolumeEntry, why: string) => Promise<void>,
  ) {}

  /** Why a draining disk waits, or ''. */
  noteFor(diskId: string): string {
    return this.notes.get(diskId) ?? '';
  }

  retryNow(): void {
    this.notBefore.clear();
  }

  /** One drain pass: mend drain copies hit by failures, plan new ones, remove disks that are empty. */
  async plan(): Promise<void> {
    await this.mend();
    const draining = this.ctx.registry.listDisks().filter((d) => d.draining && d.state !== 'removed');
    if (draining.length === 0) {
      this.notes.clear();
      return;
    }
    await this.startMoves(draining);
    await this.removeDrained(draining);
  }

  /**
   * Drain targets whose replica went stale become that slot's rebuild; ones
   * whose disk went away, or whose drain was cancelled before the copy
   * started, are dropped; records left without a target (a head reported it
   * failed, manager/failures.ts) are deleted.
   */
  private async mend(): Promise<void> {
    const withDrains = new Set(this.ctx.book.all().filter((r) => r.kind === 'drain').map((r) => r.volumeId));
    for (const volumeId of withDrains) {
      const entry = this.ctx.volumes.byVolumeId(volumeId);
      if (!entry) continue;
      const { map } = entry;
      const convert: number[] = [];
      for (const rec of this.ctx.book.ofVolume(volumeId)) {
        const r = positionOf(map, rec.segment, rec.slot);
        const move = moveOf(map, r);
        if (!move) {
          if (rec.kind === 'drain' && !sameChunk(replicaLocation(map, r), rec.target)) await this.deleteRecord(rec, 'its target left the map');
          continue;
        }
        if (replicaState(map, r) === 'stale') convert.push(r);
        else if (!this.ctx.usable(move.diskId)) await this.dropMove(rec, entry, `target disk ${move.diskId} is not usable`);
        else if (rec.state === 'queued' && !this.ctx.registry.disk(replicaLocation(map, r).diskId)?.draining) await this.dropMove(rec, entry, 'the drain was cancelled');
      }
      if (convert.length > 0) await this.convert(entry, convert);
    }
  }

  /** The drained replicas went stale: each slot now points at its drain target, resyncing; the stale chunks are freed. */
  private async convert(entry: VolumeEntry, positions: number[]): Promise<void> {
    const { volume, map } = entry;
    const batch = this.ctx.store.batch();
    const toFree: ToFreeRecord[] = [];
    for (const r of positions) {
      const move = moveOf(map, r)!;
      const segment = Math.floor(r / map.replicas);
      const rec = this.ctx.book.forSlot(volume.id, segment, r % map.replicas);
      toFree.push({ ...replicaLocation(map, r), volumeId: volume.id, segment, idSlot: identitySlot(map, r),
        reason: `stale while drained; its drain target ${move.diskId}#${move.chunkIndex} rebuilds the slot`, sinceMs: this.ctx.registry.now() });
      setReplicaLocation(map, r, move);
      setIdentitySlot(map, r, move.idSlot);
      clearMove(map, r);
      setReplicaState(map, r, 'resyncing');
      if (rec) {
        rec.kind = 'rebuild';
        batch.putResync(rec);
      }
      batch.event('drain.converted', `volume:${volume.name}`, `seg ${segment} slot ${r % map.replicas} went stale while drained: its drain copy now rebuilds it`,
        { segment, slot: r % map.replicas, resync: rec?.id ?? '', disk: move.diskId, chunk: move.chunkIndex });
      log.warn({ volume: volume.name, segment, slot: r % map.replicas, target: move, resync: rec?.id },
        `${volume.name} seg ${segment} slot ${r % map.replicas} went stale while drained: its drain copy ${rec?.id ?? ''} now rebuilds it`);
    }
    this.ctx.freer.stage(batch, toFree);
    await this.ctx.store.write(batch.putChunkMap(map));
    this.ctx.freer.track(toFree);
    this.ctx.pusher.changed(volume.id);
  }

  private async startMoves(draining: DiskRecord[]): Promise<void> {
    const items = this.collect(draining);
    if (items.length === 0) return;
    const load = new Map<string, number>();
    for (const rec of this.ctx.book.all()) load.set(rec.target.diskId, (load.get(rec.target.diskId) ?? 0) + 1);
    const picks = this.model.placeSpares(items.map((it) => this.request(it)), load);
    const planned: Array<{ it: Item; to: SparePick }> = [];
    const stuck = new Map<string, number>();
    items.forEach((it, i) => {
      const to = picks[i];
      if (to) planned.push({ it, to });
      else {
        this.notBefore.set(`${it.entry.volume.id}/${it.r}`, this.ctx.registry.now() + RETRY_MS);
        stuck.set(it.disk.id, (stuck.get(it.disk.id) ?? 0) + 1);
      }
    });
    for (const d of draining) this.noteStuck(d, stuck.get(d.id) ?? 0);
    const results = await mapLimit(planned, 16, ({ it, to }) => allocateReplicaChunk(this.ctx.peers, this.ctx.registry, it.entry.volume, it.segment, it.idSlot, to));
    const batch = this.ctx.store.batch();
    const toFree: ToFreeRecord[] = [];
    const made: Array<{ it: Item; rec: ResyncRecord; to: SparePick }> = [];
    results.forEach((res, i) => {
      const { it, to } = planned[i]!;
      if (res.status === 'rejected') {
        this.notBefore.set(`${it.entry.volume.id}/${it.r}`, this.ctx.registry.now() + RETRY_MS);
        if (res.reason instanceof VskyError && res.reason.code === 'ECONFLICT') this.model.markForeign(to.diskId, to.chunkIndex, it.entry.volume.id);
        else this.model.release(to.diskId, to.chunkIndex, it.entry.volume.id);
        log.warn({ diskId: to.diskId, chunkIndex: to.chunkIndex, err: errorMessage(res.reason) }, 'drain target could not be allocated; retried later');
        return;
      }
      const target: MoveTarget = { diskId: to.diskId, chunkIndex: to.chunkIndex, idSlot: it.idSlot };
      if (!this.stillWanted(it)) {
        toFree.push({ ...target, volumeId: it.entry.volume.id, segment: it.segment, reason: 'drain target not used', sinceMs: this.ctx.registry.now() });
        return;
      }
      setMove(it.entry.map, it.r, target);
      made.push({ it, to, rec: this.record(it, target, batch) });
      batch.event('drain.target_placed', `volume:${it.entry.volume.name}`, `drain of disk ${it.disk.id}: seg ${it.segment} slot ${it.slot} will be copied to disk ${to.diskId}`,
        { segment: it.segment, slot: it.slot, resync: made.at(-1)!.rec.id, from: `${it.from.diskId}#${it.from.chunkIndex}`, disk: to.diskId, chunk: to.chunkIndex, server: this.ctx.registry.server(to.serverId)?.name ?? to.serverId });
    });
    for (const id of new Set(made.map((m) => m.it.entry))) batch.putChunkMap(id.map);
    this.ctx.freer.stage(batch, toFree);
    await this.ctx.store.write(batch);
    this.ctx.freer.track(toFree);
    for (const { it, rec, to } of made) {
      this.ctx.book.add(rec);
      log.info({ resync: rec.id, volume: it.entry.volume.name, segment: it.segment, slot: it.slot, from: it.from, to: { diskId: to.diskId, chunkIndex: to.chunkIndex, idSlot: it.idSlot }, fit: to.fit },
        `drain of disk ${it.disk.id}: ${it.entry.volume.name} seg ${it.segment} slot ${it.slot} will be copied to disk ${to.diskId} on ${this.ctx.registry.server(to.serverId)?.name ?? to.serverId}`);
    }
    for (const entry of new Set(made.map((m) => m.it.entry))) this.ctx.pusher.changed(entry.volume.id);
    if (toFree.length > 0) this.ctx.track(this.ctx.freer.free(toFree));
  }

  /** In-sync replicas on draining disks with no copy planned yet, up to the cap. */
  private collect(draining: DiskRecord[]): Item[] {
    const byId = new Map(draining.map((d) => [d.id, d]));
    let room = MAX_PLANNED_MOVES - this.ctx.book.all().filter((r) => r.kind === 'drain').length;
    const items: Item[] = [];
    if (room <= 0) return items;
    const taken = this.takenIdSlots();
    const now = this.ctx.registry.now();
    for (const entry of this.ctx.volumes.entries()) {
      const { volume, map } = entry;
      if (!map.disks.some((d) => byId.has(d)) || this.ctx.volumes.isBusy(volume.id)) continue;
      forEachReplica(map, (x) => {
        const disk = byId.get(x.diskId);
        if (!disk || x.move || x.state !== 'in_sync' || room <= 0) return;
        if (moveOf(map, x.r) || this.ctx.book.forSlot(volume.id, x.segment, x.slot)) return;
        if ((this.notBefore.get(`${volume.id}/${x.r}`) ?? 0) > now) return;
        const idSlot = freeIdentitySlot(map, x.segment, [...(taken.get(`${volume.id}/${x.segment}`) ?? [])]);
        if (idSlot === undefined) return;
        items.push({ entry, segment: x.segment, slot: x.slot, r: x.r, from: { diskId: x.diskId, chunkIndex: x.chunkIndex }, idSlot, disk });
        room--;
      });
    }
    return items;
  }

  /** Identity slots of replaced chunks not yet freed, per volume/segment: a new chunk there must not take them. */
  private takenIdSlots(): Map<string, Set<number>> {
    const out = new Map<string, Set<number>>();
    for (const t of this.ctx.freer.list()) {
      if (t.segment === undefined || t.idSlot === undefined) continue;
      const key = `${t.volumeId}/${t.segment}`;
      let set = out.get(key);
      if (!set) out.set(key, (set = new Set()));
      set.add(t.idSlot);
    }
    return out;
  }

  private request(it: Item): SpareRequest {
    const exclude = new Set<string>();
    for (const x of segmentReplicas(it.entry.map, it.segment)) {
      if (x.r === it.r && !x.move) continue;
      const s = this.ctx.registry.serverOfDisk(x.diskId);
      if (s) exclude.add(s.id);
    }
    return { volumeId: it.entry.volume.id, excludeServers: exclude, spreadLabel: it.entry.volume.spreadLabel, avoidServer: it.disk.serverId };
  }

  private record(it: Item, target: MoveTarget, batch: StoreBatch): ResyncRecord {
    const rec: ResyncRecord = {
      id: this.ctx.book.allocateId(batch), kind: 'drain', volumeId: it.entry.volume.id, segment: it.segment, slot: it.slot,
      target: { diskId: target.diskId, chunkIndex: target.chunkIndex }, old: it.from, state: 'queued', regionsDone: 0, regionsTotal: 0,
      bytesCopied: 0, createdMs: this.ctx.registry.now(), attempt: 0, executor: '', sources: [], startedMs: 0, epoch: 0, lastError: '', failures: 0,
    };
    batch.putResync(rec);
    return rec;
  }

  private stillWanted(it: Item): boolean {
    const { map } = it.entry;
    if (this.ctx.volumes.byVolumeId(it.entry.volume.id) !== it.entry) return false;
    if (!sameChunk(replicaLocation(map, it.r), it.from) || replicaState(map, it.r) !== 'in_sync') return false;
    return !moveOf(map, it.r) && !this.ctx.book.forSlot(it.entry.volume.id, it.segment, it.slot) && Boolean(this.ctx.registry.disk(it.from.diskId)?.draining);
  }

  private noteStuck(d: DiskRecord, stuck: number): void {
    if (stuck === 0) {
      this.notes.delete(d.id);
      return;
    }
    const note = `${stuck} replica(s) have no target: every active disk with a free chunk is on a server holding another replica of their segment; ` +
      'add a server or disk (vsky server add, vsky disk add), or remove with --force (those replicas are then rebuilt, with less redundancy meanwhile)';
    if (this.notes.get(d.id) !== note) log.warn({ diskId: d.id, stuck }, `drain of disk ${d.id} waits: ${note}`);
    this.notes.set(d.id, note);
  }

  /** Draining disks that nothing references any more are removed; a draining server goes with its last disk. */
  private async removeDrained(draining: DiskRecord[]): Promise<void> {
    const referenced = new Set<string>();
    const ids = new Set(draining.map((d) => d.id));
    for (const { map } of this.ctx.volumes.entries()) {
      if (!map.disks.some((d) => ids.has(d))) continue;
      forEachReplica(map, (x) => { if (ids.has(x.diskId)) referenced.add(x.diskId); });
    }
    for (const rec of this.ctx.book.all()) if (ids.has(rec.target.diskId)) referenced.add(rec.target.diskId);
    const waiting = new Set(this.ctx.freer.list().map((t) => t.diskId));
    const done = draining.filter((d) => !referenced.has(d.id) && (d.state !== 'active' || !waiting.has(d.id)));
    if (done.length === 0) return;
    const batch = this.ctx.store.batch();
    const servers = new Set<string>();
    for (const d of done) {
      delete d.draining;
      batch.event('drain.finished', `disk:${d.id}`, 'every replica was copied elsewhere; the disk is removed', { server: this.ctx.registry.server(d.serverId)?.name ?? d.serverId, path: d.path });
      this.ctx.registry.setDiskState(d, 'removed', 'drained: every replica was copied elsewhere first', batch);
      this.notes.delete(d.id);
      servers.add(d.serverId);
    }
    for (const id of servers) {
      const s = this.ctx.registry.server(id);
      if (s?.draining && this.ctx.registry.disksOf(id).every((d) => d.state === 'removed')) {
        delete s.draining;
        batch.event('drain.finished', `server:${s.name}`, 'its last disk is drained; the server is removed', { serverId: s.id });
        this.ctx.registry.setServerState(s, 'removed', 'drained: every replica was copied elsewhere first', batch);
      }
    }
    await this.ctx.store.write(batch);
    for (const d of done) {
      log.info({ diskId: d.id, serverId: d.serverId }, `disk ${d.id} drained and removed`);
      const server = this.ctx.registry.server(d.serverId);
      if (server?.state !== 'active') continue;
      this.ctx.track(this.ctx.peers.node.removeDisk(server.controlAddress, { diskId: d.id, force: false }).catch((err: unknown) => {
        log.warn({ diskId: d.id, err: errorMessage(err) }, 'the node did not release the drained disk');
      }));
    }
  }

  private async deleteRecord(rec: ResyncRecord, why: string): Promise<void> {
    await this.ctx.store.write(this.ctx.store.batch().delResync(rec.id));
    this.ctx.book.remove(rec);
    this.ctx.forget(rec);
    log.info({ resync: rec.id, volumeId: rec.volumeId, segment: rec.segment, slot: rec.slot }, `drain copy ${rec.id} ended: ${why}`);
  }

}
