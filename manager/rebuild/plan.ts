import { commonLvolid, reportedCounters, type Counters } from './int-ids.js';
import type { JobRecord } from '../jobs/records.js';
import { newestNotes, restoreAccess, restoreJob, volumesFromRecords } from './volume-state.js';
import type { ChunkMapRecord, DiskRecord, ServerRecord, ToFreeRecord, VolumeRecord } from '../types.js';

// The manager's metadata rebuilt from the storage nodes' chunk tables (issue 9,
// docs/design.md rules 2 and 6). Pure: no I/O, no clock but `nowMs` (and the time it
// takes, for the report). manager/rebuild/apply.ts writes the plan. The steps:
// rule 1 read-nodes.ts, rule 2 identity.ts, rule 3 in-sync.ts, rules 4 and 5
// positions.ts, rule 7's access rules and jobs volume-state.ts; the rest here.
//
// What a chunk record says (proto/common.proto ChunkIdentity): its volume's
// identity (id, name, size, K, segment count), its segment, its IDENTITY slot
// (a name the node addresses it by, not a position: after drains a segment's
// slots read e.g. 0, 3, 2), the generation and epoch its node last saw, and
// the manager's last note on its segment (stale_slots: bit i = the chunk
// with identity slot i is not in sync; map_version orders notes, per volume).
//
// Rules, in the order they are applied:
//
//  1. Servers and disks: one ServerRecord per node (node labels, state
//     active) and one DiskRecord per disk, state active, except: a disk its
//     node reports failed is failed (its chunks are placed, as stale
//     replicas); a disk of another cluster (cluster_id set and not
//     input.clusterId) or with a chunk size other than input.chunkSize is
//     failed (adminFailed for another cluster's, so no node report revives
//     it) and its chunks are set aside (rule 8); a disk its node keeps an
//     admin's note on (KeepDiskNote) comes back failed by an admin (its
//     chunks are stale replicas) or draining (the drain resumes), with its
//     bad chunks (volume-state.ts). Repeated server or disk ids,
//     chunks on a disk their node does not report, chunk indices beyond the
//     disk or listed twice, chunks without a volume id: conflicts, skipped.
//
//  2. Chunks are grouped by volume id. The volume's identity (name, size, K,
//     segment count) is the one most of its chunks carry; chunks that carry
//     another are conflicts (set aside). A tie between two identities, an
//     identity that does not add up (segment count != ceil(size / chunk
//     size), K outside 1..MAX_REPLICAS) or a segment/slot out of range:
//     conflicts too. Volume ids only grow and a name is taken only once its
//     volume was deleted, so of two volumes with one name the lower id was
//     deleted: its delete was interrupted and is finished (all its chunks to
//     free, listed in report.rolledBack as an interrupted delete). Likewise a
//     volume any of whose chunks is marked DELETING, or whose id any node
//     keeps a tombstone of (the manager marks every chunk, and leaves a
//     tombstone on every node, before it records a delete: MarkVolumeDeleting).
//
//  3. Per segment, which chunks are in sync:
//      - the segment's note is the one with the highest map_version among
//        its chunks (ties: highest epoch; still tied: the union of their
//        bits, the safe side): a chunk whose identity slot has its bit set is
//        stale, whatever its own (older) note says. A chunk on a failed disk
//        is stale.
//      - only for a segment without any note (map_version 0 on every chunk:
//        chunks older than notes): a chunk whose generation is below the highest
//        generation among the segment's chunks not stale by the note is stale
//        (it missed a finished resync or job). Choice: chunks the note calls
//        stale do not count for that highest generation: a storage node that
//        runs a resync copy fences its own node with the current generation
//        (storage-node/copy/chunk-copy.ts), so a resync TARGET (noted stale) can
//        carry a higher generation than the good copies; counting it would
//        leave the segment with no good copy and the volume could be thrown
//        away. So the generation rule never takes a segment's last good
//        copy: the newest one the note calls good stays in sync.
//        With a note, the note alone decides: every replica that missed an
//        acknowledged write is noted before the write is acknowledged
//        (segment-notes.ts), while generations move without a note (a
//        resync copy fences its node's chunks of the volume with the current
//        generation, a job's final CAS may miss a node): with the generation
//        rule an in-sync copy of a detached volume with a drain running could
//        lose to a drain target on the fenced node and be freed (rule 4).
//      - epochs are never used alone for staleness (a node that was down
//        missed a fence but may be in sync); they order copies (rule 4).
//
//  4. Per segment, which chunks are kept: of two chunks with one identity
//     slot (a replaced replica whose free had not happened) the better one
//     stays, the other is freed; "better" = in sync, then newer generation,
//     newer epoch, newer own note, more written regions, then lower identity
//     slot, disk id, chunk index (deterministic). If more than K chunks
//     remain, the K best stay and the rest (a drain that had not finished:
//     its target; the drain restarts if the admin removes the disk again)
//     are freed. Drain targets in progress carry a stale bit in the notes
//     (manager/segment-notes.ts), so they lose to the replicas.
//
//  5. Positions: a segment has K positions (slot 0..K-1). A kept chunk with
//     identity slot < K takes the position of that number; the others
//     (identity slot >= K: drain results) fill the free positions in
//     ascending order, recorded in map.ids as [r, idSlot]. A position left
//     empty (fewer than K chunks, the segment still has a good copy) is a
//     stale replica on the placeholder disk LOST_DISK_ID (failed, on the
//     failed placeholder server LOST_SERVER_ID), at a chunk index of its own
//     (unique over the placeholder disk, which is as large as needed), under
//     the position's own identity slot unless a chunk of the segment uses it
//     (then the lowest unused one, in map.ids). The resync machinery treats
//     it like a replica on a failed disk: manager/resync/spares.ts collects every
//     stale replica whatever its disk's state, excludes the servers of the
//     segment's other replicas (the placeholder server holds none), places
//     a spare under the replica's identity slot and puts the placeholder
//     chunk on the to-free list. The placeholder server has an address that
//     refuses connections at once (a head fences every replica's node at
//     attach, and rejects a map with a replica without a HOST:PORT address).
//     Wiring notes: a to-free entry on the placeholder disk never frees (its
//     server is never active): the manager may drop such entries; remove the
//     placeholder server (`vsky server remove lost --force`) once no replica
//     points at it.
//
//  6. A volume every chunk of which still carries the CREATING mark (a
//     create's allocation, cleared by the committed note after the commit:
//     manager/volumes.ts) and was never attached or noted (epoch and
//     map_version 0) is an interrupted create, however complete: rolled back.
//     One chunk without the mark or a used one proves the commit: built, with
//     `unconfirmed` (the manager clears the other marks). Else a volume is
//     committed when every segment has a good copy. Otherwise:
//      - if its chunks show it never held data (every epoch 0: never
//        attached, never copied to; every map_version 0: never noted) and no
//        segment has a good copy or fewer than half of its segments have a
//        chunk at all, it is an interrupted create (or a delete that freed
//        most of it): rolled back, every chunk to free (reason
//        'interrupted create'), listed in report.rolledBack;
//      - otherwise a segment lost every good copy (or its chunks are on
//        nodes that did not register): the volume is NOT built (a
//        ChunkMapRecord cannot point a segment nowhere, and a map with a
//        segment without a good copy is refused by heads), it is reported in
//        conflicts and its chunks are set aside (rule 8) for an admin.
//     Choice: rolling back when no segment is complete or fewer than half
//     have a chunk is narrowed to volumes that never held data: a volume
//     that was attached or noted is never freed for chunks that are
//     missing, since they may be on a node that is down.
//     (Chunks from before the CREATING mark: a create that had allocated every
//     chunk comes back as a volume.)
//
//  7. The volume record: identity from rule 2, chunkSize = input.chunkSize,
//     generation, epoch and mapVersion = the maximum over its chunks (the
//     next lease grant and the next segment note go above everything a node
//     has seen), attachedHead/nbdUri '' (heads re-register and claim their
//     leases), spreadLabel 'rack' when a server has a rack label (as
//     manager/volumes.ts defaults), createdMs = nowMs; access rules from the
//     newest volume note the nodes keep; DIRTY and the last job's record
//     from the chunks' job fields (volume-state.ts). Maps have no
//     resyncing replicas and no drains: those restart from the stale marks.
//
//  8. plan.setAside: chunks neither placed nor freed (conflicts, volumes left
//     for an admin, disks of another cluster or chunk size). Nothing in the
//     plan references them, and the manager's GC frees any chunk nothing
//     references whose volume id is below nextVolumeId
//     (manager/gc.ts freeOrphans): the manager must keep these out of GC
//     and placement (e.g. PlacementModel.claim then markForeign) or they are
//     freed at its first GC pass.
//
// nextVolumeId is above every volume id seen in this cluster's chunks
// (committed, rolled back or set aside). Cost: one pass over the chunks, then
// one pass per volume over its own chunks, never over its segment count
// (10,000 volumes, 136,000 chunks on 1,000 disks plan in 0.5-2.2 s on
// 2 shared cores, by load: test/bench/manager-rebuild.ts).
//
// Limits (what storage cannot tell):
//  - Only the notes tell a drain's old chunk from its new one once the drain
//    finished (same generation and epoch until the next fence): if the old
//    one was not freed yet and no note marks its identity slot, rule 4 falls
//    back to the copies' own notes (the manager stops noting the old chunk's
//    node once it left the map), then written regions, then the lower
//    identity slot. segment-notes.ts could keep a replaced chunk's slot bit
//    set until the chunk is freed to close this.
//  - stale_slots has 32 bits: identity slots above 31 are never noted stale.
//  - A create committed but confirmed on no node (the create warned) and
//    never attached is rolled back: an empty volume (docs/rebuild-from-storage.md).

export { LOST_DISK_ID, LOST_SERVER_ID, type NodeTable, type SetAsideChunk } from './found.js';
import { LOST_ADDRESS, LOST_DISK_ID, LOST_SERVER_ID, plural, type Found, type NodeTable, type SetAsideChunk } from './found.js';
import { volumeCandidates, type Candidate } from './identity.js';
import { markInSync } from './in-sync.js';
import { placeSegments } from './positions.js';
import { readNodes } from './read-nodes.js';

export interface RebuildInput { clusterId: string; chunkSize: number; nodes: NodeTable[]; nowMs: number }

export interface RebuildPlan {
  servers: ServerRecord[];
  disks: DiskRecord[];
  volumes: { volume: VolumeRecord; map: ChunkMapRecord }[];
  toFree: ToFreeRecord[];
  /** The last storage job of each volume whose chunks name one (manager/rebuild/volume-state.ts). */
  jobs: JobRecord[];
  nextVolumeId: number;
  /** VastSky id counters to start from (manager/rebuild/int-ids.ts; 0: from the adopted ids alone). */
  nextIntIds: Counters;
  /** Not placed, not freed: keep them out of GC and placement (rule 8). */
  setAside: SetAsideChunk[];
  report: {
    volumes: number;
    /** Chunk records read from the nodes. */
    chunks: number;
    /** Stale replicas in the built maps (placeholders included). */
    staleReplicas: number;
    rolledBack: { volumeId: number; name: string; reason: string }[];
    conflicts: string[];
    ms: number;
  };
}

export function planRebuild(input: RebuildInput): RebuildPlan {
  const started = performance.now();
  const { clusterId, chunkSize, nowMs } = input;
  if (!Number.isSafeInteger(chunkSize) || chunkSize <= 0) throw new RangeError(`invalid chunk size ${chunkSize}`);
  const toFree: ToFreeRecord[] = [];
  const jobs: JobRecord[] = [];
  const notes = newestNotes(input.nodes);
  const setAside: SetAsideChunk[] = [];
  const conflicts: string[] = [];
  const rolledBack: RebuildPlan['report']['rolledBack'] = [];
  const volumes: RebuildPlan['volumes'] = [];

  // Rule 1: servers, disks, and every chunk in its volume's group (read-nodes.ts).
  const { servers, disks, groups, chunksRead, maxVolumeId } = readNodes(input, setAside, conflicts);

  // Rule 2: each volume's identity (identity.ts).
  const candidates = volumeCandidates(groups, chunkSize, setAside, conflicts);
  const aside = (chunks: Iterable<Found>, reason: string) => {
    for (const f of chunks) setAside.push({ diskId: f.diskId, chunkIndex: f.chunkIndex, volumeId: f.volumeId, reason });
  };

  // Rule 2, names: of two volumes with one name, the older was deleted.
  const newest = new Map<string, number>();
  for (const c of candidates) newest.set(c.name, Math.max(newest.get(c.name) ?? 0, c.id));
  const freeAll = (c: Candidate, reason: string) => {
    for (const f of c.chunks) toFree.push({ diskId: f.diskId, chunkIndex: f.chunkIndex, volumeId: f.volumeId, reason, sinceMs: nowMs });
  };

  const spreadLabel = servers.some((s) => s.nodeLabels.rack !== undefined) ? 'rack' : '';
  const lost = { next: 0 };
  let staleReplicas = 0;

  const tombstones = new Set<number>();
  for (const n of input.nodes) for (const id of n.deletedVolumes ?? []) tombstones.add(id);

  for (const c of candidates) {
    const { id, name, size, replicas: k, segmentCount } = c;
    if (c.all.some((f) => f.legality === 'DELETING') || tombstones.has(id)) {
      freeAll(c, 'interrupted delete');
      const why = tombstones.has(id) ? 'a node keeps its tombstone' : 'its chunks are marked DELETING';
      rolledBack.push({ volumeId: id, name, reason: `interrupted delete: ${why} (the delete began before the database was lost); its ${plural(c.chunks.length, 'chunk')} are freed` });
      continue;
    }
    // Rule 6, the CREATING mark: every chunk still says so and none was ever attached or noted.
    const creating = c.all.filter((f) => f.legality === 'CREATING').length;
    if (creating === c.all.length && c.all.every((f) => f.epoch === 0 && f.mapVersion === 0)) {
      freeAll(c, 'interrupted create');
      rolledBack.push({ volumeId: id, name, reason: `interrupted create: every chunk still carries the CREATING mark (never committed, never attached); its ${plural(c.chunks.length, 'chunk')} are freed` });
      continue;
    }
    const later = newest.get(name)!;
    if (later !== id) {
      freeAll(c, 'interrupted delete');
      rolledBack.push({ volumeId: id, name, reason: `interrupted delete: the name ${name} belongs to volume ${later}, created after this one was deleted; its ${plural(c.chunks.length, 'chunk')} are freed` });
      continue;
    }

    // Rule 3: in sync or stale, per segment (in-sync.ts). Segments are listed from the
    // chunks (ascending), never from segmentCount: a bogus count costs nothing.
    const sorted = c.chunks.slice().sort((a, b) => a.segment - b.segment);
    const bySegment: Found[][] = [];
    let generation = 0;
    let epoch = 0;
    let mapVersion = 0;
    for (const f of sorted) {
      const last = bySegment[bySegment.length - 1];
      if (last && last[0]!.segment === f.segment) last.push(f);
      else bySegment.push([f]);
      if (f.generation > generation) generation = f.generation;
      if (f.epoch > epoch) epoch = f.epoch;
      if (f.mapVersion > mapVersion) mapVersion = f.mapVersion;
    }
    const covered = bySegment.length;
    const noGoodCopy = markInSync(bySegment);
    const complete = covered - noGoodCopy.size;
    // Thin (docs/thin-provisioning.md): a segment no node has a chunk of was never written (or was freed).
    const thin = c.chunks.some((f) => f.thin);

    // Rule 6: committed, rolled back, or left for an admin.
    if (complete < (thin ? covered : segmentCount)) {
      const neverUsed = c.chunks.every((f) => f.epoch === 0 && f.mapVersion === 0);
      const state = `${covered} of ${segmentCount} segments have a chunk, ${complete} a good copy`;
      if (neverUsed && (complete === 0 || covered * 2 < segmentCount)) {
        freeAll(c, 'interrupted create');
        rolledBack.push({ volumeId: id, name, reason: `interrupted create: ${state}, and no chunk was ever attached or noted; its ${plural(c.chunks.length, 'chunk')} are freed` });
      } else {
        // The first few segments without a good copy (missing or all stale), found in O(chunks).
        const bad: number[] = [];
        for (let s = 0, i = 0; s < segmentCount && bad.length <= 8; s++) {
          while (i < covered && bySegment[i]![0]!.segment < s) i++;
          if ((!thin && (i >= covered || bySegment[i]![0]!.segment !== s)) || noGoodCopy.has(s)) bad.push(s);
        }
        const n = segmentCount - complete;
        const why = `volume ${id} (${name}): ${plural(n, 'segment')} without a good copy (${bad.slice(0, 8).join(', ')}${n > 8 ? ', ...' : ''}; ${state})`;
        conflicts.push(`${why}: not built, its ${plural(c.chunks.length, 'chunk')} set aside for an admin (a node that did not register may hold the missing copies)`);
        aside(c.chunks, why);
      }
      continue;
    }

    // Rules 4 and 5: the chunks kept, and their positions (positions.ts).
    const placed = placeSegments({ id, k, segmentCount, bySegment, all: c.all, nowMs, thin }, toFree, lost);
    const { map } = placed;
    staleReplicas += placed.stale;
    const volume: VolumeRecord = {
      id, name, size, replicas: k, chunkSize, segmentCount, generation, epoch,
      attachedHead: '', nbdUri: '', spreadLabel, createdMs: nowMs,
    };
    if (thin) volume.thin = true;
    if (mapVersion > 0) volume.mapVersion = mapVersion;
    const lvolid = commonLvolid(c.chunks);
    if (lvolid > 0) volume.claimedIntId = lvolid;
    restoreAccess(volume, notes.get(id));
    // No note said so, but its chunks are read-only (docs/snapshots.md): a snapshot (its origin unknown).
    if (volume.kind === undefined && c.chunks.some((f) => f.readOnly)) volume.kind = 'snapshot';
    if (creating > 0) volume.unconfirmed = true; // committed (a chunk lost the mark, or it was used): the manager clears the rest
    const job = restoreJob(volume, c.chunks, nowMs);
    if (job) jobs.push(job);
    volumes.push({ volume, map });
  }

  // Thin volumes never written: no chunk names them, their notes carry their records.
  const fromRecords = volumesFromRecords(notes, new Set(groups.keys()), volumes, chunkSize, nowMs, conflicts);
  volumes.push(...fromRecords);
  const maxRecordId = fromRecords.reduce((m, v) => Math.max(m, v.volume.id), 0);

  if (lost.next > 0) {
    const reason = 'placeholder for replicas no storage node reported when the database was rebuilt from storage: '
      + 'they are rebuilt elsewhere; remove it once nothing points at it';
    servers.push({
      id: LOST_SERVER_ID, name: LOST_SERVER_ID, dataAddress: LOST_ADDRESS, controlAddress: LOST_ADDRESS,
      nodeLabels: {}, adminLabels: {}, state: 'failed', stateReason: reason, adminFailed: true, registeredMs: nowMs, lastHeartbeatMs: nowMs,
    });
    disks.push({
      id: LOST_DISK_ID, serverId: LOST_SERVER_ID, path: '', chunkSize, chunkCount: lost.next,
      state: 'failed', stateReason: reason, addedMs: nowMs, adminFailed: true,
    });
  }

  return {
    servers, disks, volumes, toFree, jobs, nextVolumeId: Math.max(maxVolumeId, maxRecordId) + 1, nextIntIds: reportedCounters(input.nodes, clusterId), setAside,
    report: {
      volumes: volumes.length, chunks: chunksRead, staleReplicas, rolledBack, conflicts,
      ms: Math.round((performance.now() - started) * 1000) / 1000,
    },
  };
}
