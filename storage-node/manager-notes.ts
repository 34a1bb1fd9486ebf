import { join } from 'node:path';
import { isCounter } from '../shared/counters.js';
import { InvalidArgumentError, StaleEpochError } from '../shared/errors.js';
import { NoChunkError } from '../shared/data-protocol/status.js';
import { moduleLogger } from '../shared/logger.js';
import type { DiskNote } from '../proto/generated/vsky/storage/DiskNote.js';
import type { VolumeNote } from '../proto/generated/vsky/storage/VolumeNote.js';
import type { ChunkStore } from './chunk-store.js';
import type { Chunk } from './chunk.js';
import { Legality } from './disk-format/chunk-record.js';
import { readOptional, writeAtomic } from './node-state.js';

// What the manager asks a storage node to keep for it beyond the chunk
// records, so that a manager whose database was lost gets it back from
// storage (docs/rebuild-from-storage.md):
//   - per volume the node holds a chunk of: the volume's iSCSI access rules
//     (opaque here: the manager encodes them, manager/storage-notes.ts), with a
//     version that only grows (an older note changes nothing) and an epoch
//     check like a segment note's (a manager that is behind is refused);
//   - per disk: an admin's decision (failed, draining) and the chunks
//     reported bad. Kept here, not on the disk: a failed disk may refuse writes.
//   - per server: an admin's decision on this server (failed), reported with
//     the node (NodeInfo.note);
//   - tombstones: the ids of volumes whose delete began (MarkVolumeDeleting,
//     sent to every node, holder or not), until the manager says every chunk
//     of them was freed (ForgetDeletedVolumes), so a rebuild finishes a delete
//     even when every holder of one of its chunks was down at the delete.
// They live in manager-notes.json in the data directory, replaced atomically
// and durably (fsync) before the reply. Notes of volumes with no chunk here
// are dropped at the next save, except those carrying a record: a thin volume
// never written has no chunk anywhere, and its note (the volume's record, kept
// on a few nodes) is what brings it back in a rebuild; it goes with the
// volume's delete (MarkVolumeDeleting). A file that does not read back is reported
// and ignored (the manager writes the notes again when they change).
//
// MarkVolumeDeleting (a delete's first step) is also on the chunk records
// themselves: legality DELETING, durable before the reply. A volume note with
// `committed` clears the CREATING mark of the volume's chunks (a create's
// last step), durable before the reply.

const FILE = 'manager-notes.json';
const log = moduleLogger('storage-node.notes');
const ADMIN_STATES = ['', 'failed', 'draining'];
const MAX_ACCESS_BYTES = 16 * 1024;
const MAX_REASON_BYTES = 1024;

const SERVER_ADMIN_STATES = ['', 'failed'];

interface SavedVolume { version: number; epoch: number; access: string; spreadLabel?: string; createdMs?: number; record?: string }
interface SavedDisk { adminState: string; reason: string; badChunks: number[] }
interface SavedServer { adminState: string; reason: string }
interface Saved { version: 1; volumes: Record<string, SavedVolume>; disks: Record<string, SavedDisk>; server?: SavedServer; deleted?: number[] }

export class ManagerNotes {
  private saving: Promise<void> = Promise.resolve();

  private constructor(private readonly dir: string, private readonly store: ChunkStore, private saved: Saved) {}

  static async load(dataDir: string, store: ChunkStore): Promise<ManagerNotes> {
    const path = join(dataDir, FILE);
    const empty: Saved = { version: 1, volumes: {}, disks: {} };
    const text = await readOptional(path);
    if (text === undefined) return new ManagerNotes(dataDir, store, empty);
    try {
      const p = JSON.parse(text) as Partial<Saved>;
      if (p.version !== 1 || typeof p.volumes !== 'object' || typeof p.disks !== 'object' || !p.volumes || !p.disks) throw new Error('unexpected content');
      const deleted = Array.isArray(p.deleted) ? p.deleted.filter((i) => Number.isInteger(i) && i > 0) : [];
      const server = p.server && typeof p.server.adminState === 'string' ? { adminState: p.server.adminState, reason: String(p.server.reason ?? '') } : undefined;
      return new ManagerNotes(dataDir, store, { version: 1, volumes: p.volumes, disks: p.disks, deleted, ...(server ? { server } : {}) });
    } catch (err) {
      log.error({ path, err: (err as Error).message }, 'the manager notes file does not read back: ignored (the manager writes them again when they change)');
      return new ManagerNotes(dataDir, store, empty);
    }
  }

  /** KeepVolumeNote: durable before it resolves; an older version is a no-op. */
  async keepVolume(note: VolumeNote): Promise<void> {
    const volumeId = Number(note.volumeId ?? 0);
    const version = Number(note.version ?? -1);
    const epoch = Number(note.epoch ?? -1);
    const access = note.access ?? '';
    if (!isCounter(version) || !isCounter(epoch) || Buffer.byteLength(access, 'utf8') > MAX_ACCESS_BYTES) {
      throw new InvalidArgumentError(`volume note: invalid version ${version}, epoch ${epoch} or access rules (at most ${MAX_ACCESS_BYTES} bytes)`, { volumeId });
    }
    const spreadLabel = note.spreadLabel ?? '';
    const createdMs = Number(note.createdMs ?? 0);
    if (Buffer.byteLength(spreadLabel, 'utf8') > 64 || !isCounter(createdMs)) throw new InvalidArgumentError('volume note: spread label of at most 64 bytes, created time 0..2^53-1', { volumeId });
    const record = note.record ?? '';
    if (Buffer.byteLength(record, 'utf8') > MAX_ACCESS_BYTES) throw new InvalidArgumentError(`volume note: a record of at most ${MAX_ACCESS_BYTES} bytes`, { volumeId });
    const vol = this.store.volumes.get(volumeId);
    // A note with a record (a thin volume with no chunk anywhere) is kept without one here.
    if (!vol && !record) throw new NoChunkError(`no chunk of volume ${volumeId} on this node`, { volumeId });
    if (vol && epoch < vol.epoch) throw new StaleEpochError(`volume note at epoch ${epoch} is below volume ${volumeId}'s epoch ${vol.epoch}`, { volumeId, epoch });
    if (vol && note.committed) await commitCreate(vol.chunks.values());
    const held = this.saved.volumes[String(volumeId)];
    if (held && held.version >= version) return;
    this.saved.volumes[String(volumeId)] = {
      version, epoch, access, ...(spreadLabel ? { spreadLabel } : {}), ...(createdMs > 0 ? { createdMs } : {}), ...(record ? { record } : {}),
    };
    await this.save();
  }

  /** The volume is being deleted (MarkVolumeDeleting): its note goes, record and all (its tombstone stays). */
  async forgetVolume(volumeId: number): Promise<void> {
    if (this.saved.volumes[String(volumeId)] === undefined) return;
    delete this.saved.volumes[String(volumeId)];
    await this.save();
  }

  /** MarkVolumeDeleting's tombstone: durable before it resolves (again: a no-op). */
  async tombstone(volumeId: number): Promise<void> {
    const deleted = this.saved.deleted ??= [];
    if (deleted.includes(volumeId)) return;
    deleted.push(volumeId);
    await this.save();
  }

  /** ForgetDeletedVolumes: the manager freed every chunk of these volumes. */
  async forgetDeleted(volumeIds: number[]): Promise<void> {
    const drop = new Set(volumeIds);
    const before = this.saved.deleted ?? [];
    const after = before.filter((id) => !drop.has(id));
    if (after.length === before.length) return;
    this.saved.deleted = after;
    await this.save();
  }

  /** Tombstones held (ListChunks). */
  deletedVolumes(): number[] {
    return [...(this.saved.deleted ?? [])];
  }

  /** KeepServerNote: the admin's decision on this server, durable before it resolves. */
  async keepServer(note: { adminState?: string; reason?: string }): Promise<void> {
    const adminState = note.adminState ?? '';
    const reason = note.reason ?? '';
    if (!SERVER_ADMIN_STATES.includes(adminState) || Buffer.byteLength(reason, 'utf8') > MAX_REASON_BYTES) {
      throw new InvalidArgumentError(`server note: admin state must be one of "${SERVER_ADMIN_STATES.join('", "')}", a reason of at most ${MAX_REASON_BYTES} bytes`);
    }
    const held = this.saved.server;
    if ((held?.adminState ?? '') === adminState && (held?.reason ?? '') === (adminState ? reason : '')) return;
    if (adminState) this.saved.server = { adminState, reason };
    else delete this.saved.server;
    await this.save();
    log.info({ adminState }, 'server note kept');
  }

  /** The note on this server, as NodeInfo.note carries it (undefined: none). */
  serverNote(): { adminState: string; reason: string } | undefined {
    return this.saved.server ? { ...this.saved.server } : undefined;
  }

  /** The notes of the volumes this node holds a chunk of (ListChunks). */
  volumeNotes(): VolumeNote[] {
    const out: VolumeNote[] = [];
    for (const [id, v] of Object.entries(this.saved.volumes)) {
      if (this.store.volumes.has(Number(id)) || v.record) {
        out.push({ volumeId: Number(id), version: v.version, epoch: v.epoch, access: v.access, spreadLabel: v.spreadLabel ?? '', createdMs: v.createdMs ?? 0, ...(v.record ? { record: v.record } : {}) });
      }
    }
    return out;
  }

  /** KeepDiskNote: the admin's decision on a disk of this node, durable before it resolves. */
  async keepDisk(note: DiskNote): Promise<void> {
    const diskId = note.diskId ?? '';
    const adminState = note.adminState ?? '';
    const reason = note.reason ?? '';
    const badChunks = [...new Set(note.badChunks ?? [])].sort((a, b) => a - b);
    this.store.disk(diskId); // NotFoundError for a disk this node does not serve
    if (!ADMIN_STATES.includes(adminState) || Buffer.byteLength(reason, 'utf8') > MAX_REASON_BYTES
        || !badChunks.every((i) => Number.isInteger(i) && i >= 0 && i <= 0xffff_ffff)) {
      throw new InvalidArgumentError(`disk note: admin state must be one of "${ADMIN_STATES.join('", "')}", a reason of at most ${MAX_REASON_BYTES} bytes, chunk indexes u32`, { diskId });
    }
    const next: SavedDisk = { adminState, reason, badChunks };
    if (JSON.stringify(this.saved.disks[diskId]) === JSON.stringify(next)) return;
    if (!adminState && badChunks.length === 0) delete this.saved.disks[diskId];
    else this.saved.disks[diskId] = next;
    await this.save();
    log.info({ diskId, adminState, badChunks: badChunks.length }, 'disk note kept');
  }

  /** The note on a disk, as DiskInfo.note carries it (undefined: none). */
  diskNote(diskId: string): DiskNote | undefined {
    const d = this.saved.disks[diskId];
    return d ? { diskId, adminState: d.adminState, reason: d.reason, badChunks: [...d.badChunks] } : undefined;
  }

  private save(): Promise<void> {
    // Notes of volumes with no chunk here any more go (volume ids are never reused).
    for (const [id, v] of Object.entries(this.saved.volumes)) if (!this.store.volumes.has(Number(id)) && !v.record) delete this.saved.volumes[id];
    const text = `${JSON.stringify(this.saved)}\n`;
    this.saving = this.saving.catch(() => {}).then(() => writeAtomic(this.dir, FILE, text));
    return this.saving;
  }
}

/** Clears the CREATING mark of these chunks (a committed create), durably. */
async function commitCreate(chunks: Iterable<Chunk>): Promise<void> {
  const marked = [...chunks].filter((c) => c.rec.legality === Legality.CREATING);
  if (marked.length === 0) return;
  for (const c of marked) c.rec.legality = Legality.LEGAL;
  await Promise.all(marked.map((c) => c.persist()));
  const byDisk = new Map<string, Chunk>();
  for (const c of marked) byDisk.set(c.disk.id, c);
  await Promise.all([...byDisk.values()].map((c) => c.sync()));
}

/**
 * MarkVolumeDeleting: a tombstone of the volume (every node), and every chunk
 * of the volume here gets legality DELETING, durably, before the reply
 * (epoch-checked; again: a no-op). Returns the chunks marked.
 */
export async function markVolumeDeleting(store: ChunkStore, notes: ManagerNotes, volumeId: number, epoch: number): Promise<number> {
  if (!isCounter(epoch) || !(Number.isInteger(volumeId) && volumeId > 0)) throw new InvalidArgumentError(`MarkVolumeDeleting: invalid volume id ${volumeId} or epoch ${epoch}`, { volumeId });
  const vol = store.volumes.get(volumeId);
  if (vol && epoch < vol.epoch) throw new StaleEpochError(`MarkVolumeDeleting at epoch ${epoch} is below volume ${volumeId}'s epoch ${vol.epoch}`, { volumeId, epoch });
  await notes.tombstone(volumeId); // holder or not: a rebuild finishes the delete even if every holder of a chunk was down
  if (!vol) return 0; // nothing of it here: nothing to mark
  const chunks: Chunk[] = [...vol.chunks.values()].filter((c) => c.rec.legality !== Legality.DELETING);
  for (const c of chunks) c.rec.legality = Legality.DELETING;
  await Promise.all(chunks.map((c) => c.persist()));
  const byDisk = new Map<string, Chunk>();
  for (const c of chunks) byDisk.set(c.disk.id, c);
  await Promise.all([...byDisk.values()].map((c) => c.sync()));
  return vol.chunks.size;
}
