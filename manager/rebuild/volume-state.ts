import type { DiskInfo__Output } from '../../proto/generated/vsky/storage/DiskInfo.js';
import type { VolumeNote__Output } from '../../proto/generated/vsky/storage/VolumeNote.js';
import type { JobKind, JobRecord, JobState } from '../jobs/records.js';
import { JOB_KINDS } from '../jobs/records.js';
import { accessFromStorage, lineageFromStorage, recordFromStorage, type StoredRecord } from '../storage-notes.js';
import { buildChunkMap, type ChunkMapRecord, type DiskRecord, type ServerRecord, type VolumeRecord } from '../types.js';

// What a rebuild from storage restores besides the maps (manager/rebuild/plan.ts
// builds those), from what the nodes keep for the manager:
//  - a volume's legality and last job (chunk records, manager/jobs/): DIRTY if
//    any of its chunks is DIRTY (a job's first CAS reached that node: the
//    volume may have changed), with the job record of the newest chunk
//    (generation, then epoch) that names one. A job found running is restored
//    running with the volume's epoch: the manager's reconnaissance decides it
//    at start as for any job a restart interrupted (recon-verdicts.ts);
//  - its access rules (volume notes, storage-node/manager-notes.ts): the
//    note with the highest version among the nodes holding its chunks;
//  - a disk's admin state (failed, draining) and bad chunks (disk notes);
//  - thin volumes with no chunk anywhere, from the records in their notes.

/** The job fields of one chunk record. */
export interface ChunkJob {
  generation: number;
  epoch: number;
  legality: string;
  jobId: string;
  jobKind: string;
  jobOutcome: string;
}

const OUTCOME_STATE: Record<string, JobState> = { running: 'running', succeeded: 'succeeded', failed: 'failed', fenced: 'fenced' };

/**
 * Sets volume.dirty from the chunks and returns the last job's record to
 * restore (undefined: no chunk names a storage job, or a fence: reconnaissance's
 * own record, not a job of the job list).
 */
export function restoreJob(volume: VolumeRecord, chunks: readonly ChunkJob[], nowMs: number): JobRecord | undefined {
  let last: ChunkJob | undefined;
  let dirty = false;
  for (const c of chunks) {
    if (c.legality === 'DIRTY') dirty = true;
    if (c.jobId && (!last || c.generation > last.generation || (c.generation === last.generation && c.epoch > last.epoch))) last = c;
  }
  const kind = last && (JOB_KINDS as readonly string[]).includes(last.jobKind) ? last.jobKind as JobKind : undefined;
  const state = last ? OUTCOME_STATE[last.jobOutcome] : undefined;
  if (dirty) {
    volume.dirty = { jobId: last?.jobId ?? '', kind: last?.jobKind ?? '', state: state ?? 'failed', sinceMs: nowMs };
  }
  if (!last || !kind || !state) return undefined;
  // A job ends at g+1 (succeeded); running, failed or fenced it left the volume at g.
  const expectedGeneration = state === 'succeeded' ? Math.max(0, last.generation - 1) : last.generation;
  const job: JobRecord = {
    id: last.jobId, kind, volume: volume.name, volumeId: volume.id, expectedGeneration, args: {}, state,
    error: state === 'failed' || state === 'fenced' ? 'restored by a rebuild from storage: the chunk records say it ended so (its details were in the lost database)' : '',
    epoch: state === 'running' ? volume.epoch : last.epoch, done: 0, total: 0, createdMs: nowMs, startedMs: nowMs, endedMs: state === 'running' ? 0 : nowMs,
  };
  return job;
}

/** The access rules of the newest volume note, per volume id (rebuild input: every node's notes). */
export function newestNotes(tables: { volumeNotes?: VolumeNote__Output[] }[]): Map<number, VolumeNote__Output> {
  const out = new Map<number, VolumeNote__Output>();
  for (const t of tables) {
    for (const n of t.volumeNotes ?? []) {
      const held = out.get(n.volumeId);
      if (!held || Number(n.version) > Number(held.version)) out.set(n.volumeId, n);
    }
  }
  return out;
}

/** Sets the volume's access rules and note version from its newest note (none: unchanged). */
export function restoreAccess(volume: VolumeRecord, note: VolumeNote__Output | undefined): void {
  if (!note) return;
  volume.noteVersion = Number(note.version);
  // Notes written since the create's committed note carry these (older ones: 0 and '').
  const createdMs = Number(note.createdMs ?? 0);
  if (createdMs > 0) {
    volume.createdMs = createdMs;
    volume.spreadLabel = note.spreadLabel ?? '';
  }
  const access = accessFromStorage(note.access);
  if (access) volume.access = access;
  // Snapshots and clones (docs/snapshots.md): kind, origin and backing by volume id (ids come back from the chunks).
  const lineage = lineageFromStorage(note.access);
  if (lineage?.kind) volume.kind = lineage.kind;
  if (lineage?.origin) volume.origin = lineage.origin;
  if (lineage?.backing) volume.backing = lineage.backing;
}

/**
 * A server an admin failed (vsky server fail; its node keeps the note) comes
 * back failed and stays so until vsky server add, as after a restart. Its
 * replicas' staleness is the segment notes' (the fail marked them stale).
 */
export function restoreServerAdmin(rec: ServerRecord, note: { adminState?: string; reason?: string } | null | undefined): void {
  if (note?.adminState !== 'failed') return;
  rec.adminFailed = true;
  rec.state = 'failed';
  const reason = (note.reason ?? '').replace(/ \(kept by its node; rebuild from storage\)$/, '');
  rec.stateReason = `${reason || 'failed by an admin'} (kept by its node; rebuild from storage)`;
}

/** Applies the admin state its node keeps to a disk record the rebuild made (an active, usable disk). */
export function restoreDiskAdmin(rec: DiskRecord, info: DiskInfo__Output): void {
  const note = info.note;
  if (!note) return;
  const bad = (note.badChunks ?? []).filter((i) => Number.isInteger(i) && i >= 0 && i < rec.chunkCount);
  if (bad.length > 0) rec.badChunks = [...new Set(bad)].sort((a, b) => a - b);
  if (note.adminState === 'failed') {
    rec.adminFailed = true;
    rec.state = 'failed';
    rec.stateReason = `${note.reason || 'failed by an admin'} (kept by its node; rebuild from storage)`;
  } else if (note.adminState === 'draining' && rec.state === 'active') {
    rec.draining = true;
    rec.stateReason = `${note.reason || 'removed by an admin'} (drain resumed after a rebuild from storage)`;
  }
}

/**
 * Thin volumes with no chunk anywhere (never written), from the records their
 * volume notes carry (manager/storage-notes.ts): built with every segment
 * unallocated. Skipped: ids some chunk names (the chunks decide), records of
 * another chunk size, and names a built volume (or a newer record) already has.
 */
export function volumesFromRecords(
  notes: Map<number, VolumeNote__Output>, chunkIds: ReadonlySet<number>, built: readonly { volume: VolumeRecord }[], chunkSize: number, nowMs: number, conflicts: string[],
): { volume: VolumeRecord; map: ChunkMapRecord }[] {
  const byName = new Map<string, { id: number; record: StoredRecord; note: VolumeNote__Output }>();
  for (const [id, note] of notes) {
    if (chunkIds.has(id)) continue;
    const record = recordFromStorage(note.record);
    if (!record) continue;
    if (record.chunkSize !== chunkSize) {
      conflicts.push(`volume ${id} (${record.name}): its record says chunks of ${record.chunkSize} bytes, the cluster's are ${chunkSize}; not built`);
      continue;
    }
    const held = byName.get(record.name);
    if (!held || id > held.id) byName.set(record.name, { id, record, note });
  }
  const taken = new Set(built.map((b) => b.volume.name));
  const out: { volume: VolumeRecord; map: ChunkMapRecord }[] = [];
  for (const [name, { id, record, note }] of [...byName.entries()].sort((a, b) => a[1].id - b[1].id)) {
    if (taken.has(name)) {
      conflicts.push(`volume ${id} (${name}): a thin volume with no chunk, but the name belongs to a volume built from its chunks; not built`);
      continue;
    }
    const segmentCount = Math.ceil(record.size / chunkSize);
    const volume: VolumeRecord = {
      id, name, size: record.size, replicas: record.replicas, chunkSize, segmentCount, generation: 1, epoch: Number(note.epoch),
      attachedHead: '', nbdUri: '', spreadLabel: record.spreadLabel, createdMs: record.createdMs || nowMs, thin: true,
    };
    if (record.intId) volume.claimedIntId = record.intId;
    restoreAccess(volume, note);
    const map = buildChunkMap(id, record.replicas, segmentCount, []);
    map.thin = true;
    out.push({ volume, map });
  }
  return out;
}
