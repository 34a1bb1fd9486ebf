import { nextCounter } from '../shared/counters.js';
import { TransportError, errorMessage } from '../shared/errors.js';
import { moduleLogger } from '../shared/logger.js';
import { SecretBox } from '../shared/security/secret-box.js';
import type { DiskNote } from '../proto/generated/vsky/storage/DiskNote.js';
import type { PeerClients } from './node-clients.js';
import type { Registry } from './registry.js';
import { keys } from './store.js';
import { allocatedSegments, type ChunkMapRecord, type DiskRecord, type IscsiAccessRecord, type ServerRecord, type VolumeRecord } from './types.js';
import type { VolumeEntry, Volumes } from './volumes.js';

// What the manager keeps on the storage nodes besides the chunk records, so
// that a manager rebuilt from storage (docs/rebuild-from-storage.md) gets it
// back (storage-node/manager-notes.ts keeps it):
//  - a volume's iSCSI access rules, on every node holding a chunk of it
//    (KeepVolumeNote, epoch-checked, versioned by VolumeRecord.noteVersion):
//    written when they change (awaited: setAccess answers once at least one
//    node holds them), and again on every node that gets a chunk of the
//    volume when its map changes (a spare, a drain target), so they follow
//    the volume wherever its chunks go;
//  - a disk's admin state (failed, draining) and its bad chunks (KeepDiskNote),
//    on the disk's node: written when they change, and again when the node
//    registers reporting something else;
//  - a volume's spread label and creation time, in the same note, written
//    first by the create's last step (confirmCreate: a note with `committed`,
//    which clears the CREATING mark of the volume's chunks on each node);
//  - a server's admin state (failed: KeepServerNote), on the server's node;
//  - a delete's mark (MarkVolumeDeleting): before the manager forgets a
//    volume, its chunks say DELETING and every node (holder or not) keeps a
//    tombstone of its id, so a rebuild finishes the delete even when every
//    holder of one of its chunks was down; GC drops the tombstones once
//    every chunk of the volume was freed (manager/gc.ts).
//  - a thin volume with no chunk anywhere (never written): its record, in its
//    volume note on a few nodes (RECORD_COPIES active servers, none needs a
//    chunk of it), written at create; nothing else on storage names such a
//    volume. Its delete reaches every active node (the record goes).
// Access rules travel as accessToStorage/accessFromStorage encode them: the
// one place to wrap (e.g. encrypt the CHAP secrets).

const log = moduleLogger('manager.storage-notes');
/** Nodes that keep the record of a thin volume with no chunk. */
export const RECORD_COPIES = 3;

/** The record of a volume with no chunk, as the nodes keep it (VolumeNote.record). */
export interface StoredRecord { name: string; size: number; replicas: number; chunkSize: number; spreadLabel: string; createdMs: number; intId?: number }

/** Whether the volume has no chunk anywhere: a thin volume with no allocated segment. */
export function hasNoChunk(entry: VolumeEntry): boolean {
  return entry.volume.thin === true && entry.map.thin === true && allocatedSegments(entry.map) === 0;
}

export function recordToStorage(v: VolumeRecord): string {
  const r: StoredRecord & { v: number } = { v: 1, name: v.name, size: v.size, replicas: v.replicas, chunkSize: v.chunkSize, spreadLabel: v.spreadLabel, createdMs: v.createdMs };
  if (v.intId) r.intId = v.intId;
  return JSON.stringify(r);
}

/** The record a node kept (undefined: none or unreadable). */
export function recordFromStorage(text: string | undefined): StoredRecord | undefined {
  if (!text) return undefined;
  try {
    const p = JSON.parse(text) as Partial<StoredRecord> & { v?: number };
    const int = (x: unknown): x is number => typeof x === 'number' && Number.isSafeInteger(x) && x > 0;
    if (p.v !== 1 || typeof p.name !== 'string' || !p.name || !int(p.size) || !int(p.replicas) || !int(p.chunkSize)) return undefined;
    const out: StoredRecord = { name: p.name, size: p.size, replicas: p.replicas, chunkSize: p.chunkSize, spreadLabel: typeof p.spreadLabel === 'string' ? p.spreadLabel : '', createdMs: int(p.createdMs) ? p.createdMs : 0 };
    if (int(p.intId)) out.intId = p.intId;
    return out;
  } catch {
    return undefined;
  }
}

/**
 * The access rules as the storage nodes keep them ('' none). With the
 * manager's secret box (--secret-key-file) the CHAP secrets leave sealed, for
 * the context the manager's store seals them with (the volume record's key):
 * a rebuild from storage writes them into the new database as they are, and
 * that database opens them with the same key file; a node never holds them
 * in clear.
 */
export function accessToStorage(a: IscsiAccessRecord | undefined, volumeId = 0, box?: SecretBox): string {
  if (!a) return '';
  const out = { v: 1, ...a };
  if (box) {
    for (const f of ['chapSecret', 'mutualSecret'] as const) {
      const v = out[f];
      if (v && !SecretBox.isSealed(v)) out[f] = box.seal(v, `${keys.volume(volumeId)}:${f}`);
    }
  }
  return JSON.stringify(out);
}

/** Snapshot/clone relations kept in the volume note (docs/snapshots.md): a rebuild from storage restores them. */
export interface Lineage {
  kind?: 'snapshot';
  origin?: number;
  backing?: number;
}

/** The note text: the access rules, and the volume's snapshot relations when it has any. */
export function noteToStorage(v: VolumeRecord, box?: SecretBox): string {
  const access = accessToStorage(v.access, v.id, box);
  if (v.kind === undefined && v.origin === undefined && v.backing === undefined) return access;
  const lineage: Lineage = { kind: v.kind, origin: v.origin, backing: v.backing };
  return JSON.stringify({ ...(access ? JSON.parse(access) as object : { v: 1 }), lineage });
}

/** The snapshot relations a storage node kept (undefined: none or unreadable). */
export function lineageFromStorage(text: string): Lineage | undefined {
  if (!text) return undefined;
  try {
    const p = JSON.parse(text) as { lineage?: Lineage };
    const l = p.lineage;
    if (!l || typeof l !== 'object') return undefined;
    const id = (x: unknown) => (Number.isInteger(x) && (x as number) > 0 ? x as number : undefined);
    return { kind: l.kind === 'snapshot' ? 'snapshot' : undefined, origin: id(l.origin), backing: id(l.backing) };
  } catch {
    return undefined;
  }
}

/** The access rules a storage node kept (undefined: none or unreadable). */
export function accessFromStorage(text: string): IscsiAccessRecord | undefined {
  if (!text) return undefined;
  try {
    const p = JSON.parse(text) as Partial<IscsiAccessRecord> & { v?: number };
    const str = (x: unknown) => (typeof x === 'string' ? x : '');
    if (p.v !== 1 || !Array.isArray(p.initiators) || !p.initiators.every((i) => typeof i === 'string')) return undefined;
    return { initiators: p.initiators, chapUser: str(p.chapUser), chapSecret: str(p.chapSecret), mutualUser: str(p.mutualUser), mutualSecret: str(p.mutualSecret) };
  } catch {
    return undefined;
  }
}

/** The admin's decision on a server as its node keeps it. */
export function serverNoteOf(s: ServerRecord): { adminState: string; reason: string } {
  return s.adminFailed && s.state !== 'removed' ? { adminState: 'failed', reason: s.stateReason } : { adminState: '', reason: '' };
}

/** The admin's decision on a disk as its node keeps it. */
export function diskNoteOf(d: DiskRecord): Required<Omit<DiskNote, 'diskId'>> {
  const adminState = d.state === 'removed' ? '' : d.adminFailed ? 'failed' : d.draining ? 'draining' : '';
  return { adminState, reason: adminState ? d.stateReason : '', badChunks: [...(d.badChunks ?? [])].sort((a, b) => a - b) };
}

const noteKey = (n: { adminState?: string; reason?: string; badChunks?: number[] } | null | undefined) =>
  n ? `${n.adminState ?? ''}\u0000${n.reason ?? ''}\u0000${(n.badChunks ?? []).join(',')}` : '\u0000\u0000';

/** Control addresses of the nodes holding a chunk of the volume (replicas and drain targets). */
function holders(map: ChunkMapRecord, registry: Registry): Set<string> {
  const refs = new Set<number>();
  for (let i = 0; i < map.locs.length; i += 2) refs.add(map.locs[i]!);
  const q = map.moves ?? [];
  for (let i = 0; i < q.length; i += 4) refs.add(q[i + 1]!);
  const out = new Set<string>();
  for (const ref of refs) {
    const server = registry.serverOfDisk(map.disks[ref]!);
    if (server && server.state !== 'removed' && server.controlAddress) out.add(server.controlAddress);
  }
  return out;
}

export class StorageNotes {
  /** Volume id -> node addresses holding its note at the volume's current noteVersion. */
  private readonly sent = new Map<number, { version: number; at: Set<string> }>();
  /** Disk id -> the note its node holds, as last reported or written. */
  private readonly disks = new Map<string, string>();
  /** Server id -> the server note its node holds, as last reported or written. */
  private readonly servers = new Map<string, string>();

  constructor(private readonly volumes: Volumes, private readonly registry: Registry, private readonly peers: PeerClients, private readonly box?: SecretBox) {}

  /** The volume's access rules changed: a new version, on every node holding a chunk of it. Resolves once at least one took it (else logs). */
  async accessChanged(entry: VolumeEntry): Promise<void> {
    const { volume } = entry;
    volume.noteVersion = nextCounter(volume.noteVersion ?? 0, `volume ${volume.name}'s note version`);
    await this.volumes.saveVolume(volume);
    const ok = await this.push(entry, hasNoChunk(entry) ? this.recordTargets() : holders(entry.map, this.registry));
    if (ok === 0) log.warn({ volume: volume.name }, 'no storage node took the access rules yet: a rebuild from storage would lose them until the next change');
  }

  /**
   * The create's last step (manager/volumes.ts): every node holding a chunk
   * gets the volume's note with `committed` (clearing the chunks' CREATING
   * mark there). Clears volume.unconfirmed once every one took it. Returns how
   * many nodes took it.
   */
  async confirmCreate(entry: VolumeEntry): Promise<number> {
    if (!this.peers.node.keepVolumeNote) {
      delete entry.volume.unconfirmed; // peers that keep no notes (tests): nothing to confirm
      return 0;
    }
    const want = holders(entry.map, this.registry);
    const ok = await this.push(entry, want, true);
    if (ok === want.size && entry.volume.unconfirmed) {
      delete entry.volume.unconfirmed;
      try {
        await this.volumes.saveVolume(entry.volume);
      } catch (err) {
        entry.volume.unconfirmed = true;
        log.warn({ volume: entry.volume.name, err: errorMessage(err) }, 'could not record that the create is confirmed on storage; retried by GC');
      }
    }
    return ok;
  }

  /** Volumes whose create is not confirmed on every node yet: confirmed again (GC passes). Returns how many are left. */
  async retryUnconfirmed(): Promise<number> {
    let left = 0;
    for (const entry of this.volumes.entries()) {
      if (!entry.volume.unconfirmed) continue;
      await this.confirmCreate(entry);
      if (entry.volume.unconfirmed) left++;
    }
    return left;
  }

  /**
   * A thin volume was created (no chunk anywhere): its record goes to
   * RECORD_COPIES active servers (the first by id: a rebuild reads every node
   * anyway). Resolves once done; logs when none took it (a rebuild from
   * storage would not find the volume; it holds no data).
   */
  async createdEmpty(entry: VolumeEntry): Promise<void> {
    const { volume } = entry;
    const targets = this.recordTargets();
    if (targets.size === 0) return;
    volume.noteVersion = nextCounter(volume.noteVersion ?? 0, `volume ${volume.name}'s note version`);
    await this.volumes.saveVolume(volume);
    const ok = await this.push(entry, targets);
    if (ok === 0) log.warn({ volume: volume.name }, 'no storage node kept the record of the new thin volume: a rebuild from storage would not find it until it is written');
  }

  /** Where the record of a volume with no chunk goes: RECORD_COPIES active servers. */
  private recordTargets(): Set<string> {
    return new Set(this.registry.listServers().filter((x) => x.state === 'active' && x.controlAddress).map((x) => x.controlAddress).sort().slice(0, RECORD_COPIES));
  }

  /** The volume's map changed: nodes that got a chunk of it get its note (background). */
  changed(volumeId: number): void {
    const entry = this.volumes.byVolumeId(volumeId);
    if (!entry) return;
    const version = entry.volume.noteVersion ?? 0;
    const sent = this.sent.get(volumeId);
    const want = holders(entry.map, this.registry);
    const current = sent?.version === version ? sent.at : new Set<string>();
    const missing = new Set([...want].filter((a) => !current.has(a)));
    if (missing.size > 0) void this.push(entry, missing);
  }

  forget(volumeId: number): void {
    this.sent.delete(volumeId);
  }

  /**
   * A delete's first step: every node holding a chunk marks them DELETING, and
   * every node (holder or not) keeps a tombstone of the volume id, durably.
   * Refused (TransportError, nothing changed on the manager) when no node took
   * it: a delete nobody on storage knows of could be undone by a rebuild.
   * Returns how many nodes took it.
   */
  async markDeleting(entry: VolumeEntry): Promise<number> {
    const mark = this.peers.node.markVolumeDeleting;
    if (!mark) return 0;
    const held = holders(entry.map, this.registry);
    const all = new Set(held);
    for (const s of this.registry.listServers()) if (s.state === 'active' && s.controlAddress) all.add(s.controlAddress);
    const targets = [...all];
    const results = await Promise.allSettled(targets.map((a) => mark.call(this.peers.node, a, { volumeId: entry.volume.id, epoch: entry.volume.epoch })));
    const failed = results.map((r, i) => (r.status === 'rejected' ? `${targets[i]}: ${errorMessage(r.reason)}` : '')).filter(Boolean);
    const ok = targets.length - failed.length;
    if (targets.length > 0 && ok === 0) {
      throw new TransportError(`cannot delete volume ${entry.volume.name}: no storage node recorded the delete (${failed.join('; ')}); `
        + 'a rebuild from storage could bring it back: retry once the storage nodes are up', { volume: entry.volume.name });
    }
    if (failed.length > 0) log.warn({ volume: entry.volume.name, failed }, 'some nodes did not take the delete\'s mark; the others keep a tombstone, so a rebuild from storage still finishes the delete');
    return ok;
  }

  /** GC: drops these tombstones on the node (every chunk of those volumes was freed). */
  async forgetDeleted(address: string, volumeIds: number[]): Promise<void> {
    const forget = this.peers.node.forgetDeletedVolumes;
    if (forget && volumeIds.length > 0) await forget.call(this.peers.node, address, { volumeIds });
  }

  /** The server's admin state changed (vsky server fail / add): its node keeps it (background; again at registration if it differs). */
  serverChanged(s: ServerRecord): void {
    const keep = this.peers.node.keepServerNote;
    if (!keep || s.id === 'lost' || s.state === 'removed' || !s.controlAddress) return;
    const note = serverNoteOf(s);
    const key = `${note.adminState}\u0000${note.reason}`;
    if (this.servers.get(s.id) === key) return;
    this.servers.set(s.id, key);
    keep.call(this.peers.node, s.controlAddress, note).then(() => {
      log.info({ serverId: s.id, adminState: note.adminState }, 'server note kept by its node');
    }, (err: unknown) => {
      if (this.servers.get(s.id) === key) this.servers.delete(s.id);
      log.warn({ serverId: s.id, err: errorMessage(err) }, 'the server\'s node did not keep its admin state; retried when it registers');
    });
  }

  /** What a registering node reports about its server note (Registry). */
  serverReported(serverId: string, note: { adminState?: string; reason?: string } | null | undefined): void {
    this.servers.set(serverId, `${note?.adminState ?? ''}\u0000${note?.adminState ? note.reason ?? '' : ''}`);
  }

  /** What a registering node reports about its disk's note (Registry.applyDiskReport). */
  diskReported(diskId: string, note: DiskNote | null | undefined): void {
    this.disks.set(diskId, noteKey(note));
  }

  /** The disk record changed (Registry.syncDisk): its node gets the note if it differs from what it holds (background). */
  diskChanged(d: DiskRecord): void {
    if (d.id === 'lost') return;
    const note = diskNoteOf(d);
    const key = noteKey(note);
    const held = this.disks.get(d.id);
    if (held === key || (held === undefined && key === noteKey(null))) return;
    const keep = this.peers.node.keepDiskNote;
    const server = this.registry.server(d.serverId);
    if (!keep || !server || server.state !== 'active' || d.state === 'removed') return;
    this.disks.set(d.id, key);
    keep.call(this.peers.node, server.controlAddress, { diskId: d.id, ...note }).then(() => {
      log.info({ diskId: d.id, adminState: note.adminState, badChunks: note.badChunks.length }, 'disk note kept by its node');
    }, (err: unknown) => {
      if (this.disks.get(d.id) === key) this.disks.delete(d.id); // retried at the next change or registration
      log.warn({ diskId: d.id, err: errorMessage(err) }, 'the disk\'s node did not keep its admin state; retried when it registers');
    });
  }

  private async push(entry: VolumeEntry, addresses: Set<string>, committed = false): Promise<number> {
    const keep = this.peers.node.keepVolumeNote;
    if (!keep) return 0;
    const v: VolumeRecord = entry.volume;
    const version = v.noteVersion ?? 0;
    const req = {
      volumeId: v.id, version, epoch: v.epoch, access: noteToStorage(v, this.box),
      spreadLabel: v.spreadLabel, createdMs: v.createdMs, committed,
      record: hasNoChunk(entry) ? recordToStorage(v) : '',
    };
    const targets = [...addresses];
    const results = await Promise.allSettled(targets.map((a) => keep.call(this.peers.node, a, req)));
    let sent = this.sent.get(v.id);
    if (!sent || sent.version !== version) this.sent.set(v.id, (sent = { version, at: new Set() }));
    let ok = 0;
    results.forEach((r, i) => {
      if (r.status === 'fulfilled') {
        ok++;
        sent!.at.add(targets[i]!);
      } else {
        log.warn({ volume: v.name, node: targets[i], err: errorMessage(r.reason) }, 'a node did not keep the volume note; retried with the next map change');
      }
    });
    return ok;
  }
}
