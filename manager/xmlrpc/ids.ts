import { moduleLogger } from '../../shared/logger.js';
import type { ManagerCore } from '../core.js';
import { keys, type StoreBatch } from '../store.js';
import type { DiskRecord, HeadRecord, ServerRecord, VolumeRecord } from '../types.js';

// VastSky's small integer ids for our UUID- and name-keyed records.
//
// Four id spaces, each with its own persisted counter starting at 1, as in
// VastSky: hsvr (heads), ssvr (storage servers), pdsk (disks) and lvol. The
// lvol space is shared, as VastSky's is, by volumes, the inner nodes of their
// showLogicalVolume tree and disk extents: a volume takes a block of
// segmentCount + 3 ids (itself, SNAPSHOT-ORIGIN, LINEAR, one MIRROR per
// segment); a disk takes a block of one id per chunk (its disk extents) when
// it gets its pdskid, and another block if it grows. So lvolids are not
// consecutive, as in VastSky.
//
// An id is kept in its record (`intId`, `dextIds`), written in the same batch
// as the advanced counter, and never changes or comes back. Records without one
// (made before this existed, or by gRPC since the last pass) get one at the
// next `sync()`: at manager start, every few seconds, and before every XML-RPC
// call. A volume made by Volumes.create gets its lvolid at once
// (`reserveVolume`), so that its chunks carry it on storage.
//
// Claims: a record without an id may carry the id its storage node, head or
// chunks reported keeping (manager/int-id-claims.ts, manager/rebuild/plan.ts):
// a manager rebuilt from storage gives ids back this way. A pass adopts a
// claim first, in registration (volumes: id) order, when no other record of
// that kind holds the id (and, for a disk's extent ids, no other disk's
// extents overlap them); else the record gets a fresh id and the event log
// says so (intid.conflict). Counters are raised above every adopted id.

const log = moduleLogger('manager.xmlrpc.ids');

export type IdSpace = 'hsvr' | 'ssvr' | 'pdsk' | 'lvol';
type Claimant = { intId?: number; claimedIntId?: number };
const SPACES: IdSpace[] = ['hsvr', 'ssvr', 'pdsk', 'lvol'];

/** VastSky's MAX_RESOURCEID: ids are XML-RPC i4 values. */
export const MAX_RESOURCE_ID = 0x7fffffff;

/** lvol ids a volume takes: itself, SNAPSHOT-ORIGIN, LINEAR, then one MIRROR per segment. */
export function lvolBlock(segmentCount: number): number {
  return segmentCount + 3;
}

export class IntIds {
  private readonly next: Record<IdSpace, number> = { hsvr: 1, ssvr: 1, pdsk: 1, lvol: 1 };
  private tail: Promise<void> = Promise.resolve();
  private exhaustedWarned = false;

  private constructor(private readonly core: ManagerCore) {}

  /** Reads the counters (never below the ids already given) and gives ids to every record without one. */
  static async open(core: ManagerCore): Promise<IntIds> {
    const ids = new IntIds(core);
    for (const space of SPACES) {
      const v = await core.store.db.get(keys.nextIntId(space));
      if (typeof v === 'number' && Number.isSafeInteger(v) && v > 0) ids.next[space] = v;
    }
    ids.raiseToRecords();
    await ids.sync();
    return ids;
  }

  /** The next id of each space (heartbeat replies hand them to the storage nodes). */
  counters(): Record<IdSpace, number> {
    return { ...this.next };
  }

  /**
   * Takes a new volume's lvol block now (Volumes.create, before its chunks are
   * allocated, so they carry it); `next` is the counter to persist with the
   * create's first batch. Undefined when the space is exhausted.
   */
  reserveVolume(segmentCount: number): { id: number; next: number } | undefined {
    const id = this.take('lvol', lvolBlock(segmentCount));
    return id === undefined ? undefined : { id, next: this.next.lvol };
  }

  /** Ids left in a space (ENOSPC when a create would need more). */
  left(space: IdSpace): number {
    return MAX_RESOURCE_ID - this.next[space] + 1;
  }

  /** Gives ids to every record without one; resolves once they are durable (calls are serialized). */
  sync(): Promise<void> {
    const run = this.tail.then(() => this.assignAll());
    this.tail = run.catch((err: unknown) => log.error({ err }, 'could not persist integer ids'));
    return run;
  }

  // --- lookups (removed servers and disks have no id any more, as in VastSky where they are deleted) ---

  server(ssvrid: number): ServerRecord | undefined {
    return this.core.registry.listServers().find((s) => s.intId === ssvrid && s.state !== 'removed');
  }

  /** A disk of a removed server is gone with it (VastSky's deleteStorageServer deletes its disks). */
  disk(pdskid: number): DiskRecord | undefined {
    return this.core.registry.listDisks().find((d) => d.intId === pdskid && this.diskLive(d));
  }

  diskLive(d: DiskRecord): boolean {
    return d.state !== 'removed' && this.core.registry.server(d.serverId)?.state !== 'removed';
  }

  head(hsvrid: number): HeadRecord | undefined {
    return this.core.registry.listHeads().find((h) => h.intId === hsvrid);
  }

  volume(lvolid: number): VolumeRecord | undefined {
    return this.core.volumes.list().find((v) => v.intId === lvolid);
  }

  /** The disk extent id of a chunk (0: none given yet). */
  dextId(disk: DiskRecord | undefined, chunkIndex: number): number {
    const blocks = disk?.dextIds ?? [];
    let first = 0;
    for (let i = 0; i + 1 < blocks.length; i += 2) {
      const count = blocks[i + 1]!;
      if (chunkIndex < first + count) return blocks[i]! + chunkIndex - first;
      first += count;
    }
    return 0;
  }

  /** The disk and chunk of a disk extent id, if it is one. */
  dext(dextid: number): { disk: DiskRecord; chunkIndex: number } | undefined {
    for (const disk of this.core.registry.listDisks()) {
      if (!this.diskLive(disk)) continue;
      const blocks = disk.dextIds ?? [];
      let first = 0;
      for (let i = 0; i + 1 < blocks.length; i += 2) {
        const base = blocks[i]!;
        const count = blocks[i + 1]!;
        if (dextid >= base && dextid < base + count) return { disk, chunkIndex: first + dextid - base };
        first += count;
      }
    }
    return undefined;
  }

  // --- assignment ---

  private raise(space: IdSpace, last: number | undefined): void {
    if (last !== undefined && last >= this.next[space]) this.next[space] = last + 1;
  }

  private raiseToRecords(): void {
    const { registry, volumes } = this.core;
    const raise = (space: IdSpace, last: number | undefined) => this.raise(space, last);
    for (const h of registry.listHeads()) raise('hsvr', h.intId);
    for (const s of registry.listServers()) raise('ssvr', s.intId);
    for (const d of registry.listDisks()) {
      raise('pdsk', d.intId);
      const b = d.dextIds ?? [];
      for (let i = 0; i + 1 < b.length; i += 2) raise('lvol', b[i]! + b[i + 1]! - 1);
    }
    for (const v of volumes.list()) if (v.intId !== undefined) raise('lvol', v.intId + lvolBlock(v.segmentCount) - 1);
  }

  private take(space: IdSpace, count = 1): number | undefined {
    const first = this.next[space];
    if (first + count - 1 > MAX_RESOURCE_ID) {
      if (!this.exhaustedWarned) log.warn({ space, next: first, count }, `VastSky ${space} ids are exhausted (max ${MAX_RESOURCE_ID}); records without one are not reachable over XML-RPC`);
      this.exhaustedWarned = true;
      return undefined;
    }
    this.next[space] = first + count;
    return first;
  }

  private async assignAll(): Promise<void> {
    const { registry, volumes, store } = this.core;
    const batch = store.batch();
    const before = { ...this.next };
    const byTime = <T>(list: T[], t: (x: T) => number) => [...list].sort((a, b) => t(a) - t(b));
    const heads = byTime(registry.listHeads(), (x) => x.registeredMs);
    const servers = byTime(registry.listServers(), (x) => x.registeredMs);
    const disks = byTime(registry.listDisks(), (x) => x.addedMs);
    // A volume being deleted (busy) is skipped: a put racing its delete batch would bring its record back.
    const vols = volumes.list().filter((v) => !volumes.isBusy(v.id)).sort((a, b) => a.id - b.id);
    this.adoptClaims('hsvr', heads, batch, (h) => batch.putHead(h), (h) => `head:${h.name}`);
    this.adoptClaims('ssvr', servers, batch, (s) => batch.putServer(s), (s) => `server:${s.name}`);
    this.adoptDiskClaims(disks, batch);
    this.adoptClaims('lvol', vols, batch, (v) => batch.putVolume(v), (v) => `volume:${v.name}`, (v) => lvolBlock(v.segmentCount));
    for (const h of heads) if (this.give(h, 'hsvr')) batch.putHead(h);
    for (const s of servers) if (this.give(s, 'ssvr')) batch.putServer(s);
    for (const d of disks) {
      const given = this.give(d, 'pdsk');
      if (this.extendDexts(d) || given) batch.putDisk(d);
    }
    for (const v of vols) if (this.give(v, 'lvol', lvolBlock(v.segmentCount))) batch.putVolume(v);
    for (const space of SPACES) if (this.next[space] !== before[space]) batch.putNextIntId(space, this.next[space]);
    if (batch.length > 0) await store.write(batch);
  }

  /** Adopts the claimed ids no other record of the list holds (in list order); the others get fresh ids later in the pass. */
  private adoptClaims<T extends Claimant>(space: IdSpace, list: T[], batch: StoreBatch, put: (r: T) => void,
    target: (r: T) => string, size: (r: T) => number = () => 1): void {
    const held = new Set(list.flatMap((r) => (r.intId === undefined ? [] : [r.intId])));
    for (const r of list) {
      const id = r.claimedIntId;
      if (id === undefined) continue;
      delete r.claimedIntId;
      if (r.intId === undefined) {
        const last = id + size(r) - 1;
        if (Number.isInteger(id) && id >= 1 && last <= MAX_RESOURCE_ID && !held.has(id)) {
          r.intId = id;
          held.add(id);
          this.raise(space, last);
          log.info({ space, id, target: target(r) }, `VastSky ${space}id ${id} given back to ${target(r)} (it reported keeping it)`);
        } else {
          this.conflict(batch, space, id, target(r));
        }
      }
      put(r);
    }
  }

  /** Disks: the pdskid, then the extent ids if no other disk's extents overlap them. */
  private adoptDiskClaims(disks: DiskRecord[], batch: StoreBatch): void {
    const claims = new Map(disks.map((d) => [d, d.claimedDextIds] as const));
    const hadPdsk = new Set(disks.filter((d) => d.intId !== undefined));
    this.adoptClaims('pdsk', disks, batch, (d) => batch.putDisk(d), (d) => `disk:${d.id}`);
    const ranges: Array<[number, number]> = [];
    for (const d of disks) for (const [base, count] of pairs(d.dextIds)) ranges.push([base, base + count - 1]);
    for (const d of disks) {
      const claimed = claims.get(d);
      if (claimed === undefined) continue;
      delete d.claimedDextIds;
      batch.putDisk(d);
      // Only a disk that got its claimed pdskid back (this pass) and has no extent ids yet takes its claimed ones.
      if (hadPdsk.has(d) || d.intId === undefined || (d.dextIds ?? []).length > 0) continue;
      const mine = pairs(claimed).map(([b, c]) => [b, b + c - 1] as [number, number]);
      const clash = mine.some(([a, z]) => z > MAX_RESOURCE_ID || ranges.some(([b, y]) => a <= y && b <= z));
      if (clash) {
        this.conflict(batch, 'lvol', claimed[0]!, `disk:${d.id}`, 'disk-extent ids');
        continue;
      }
      d.dextIds = [...claimed];
      ranges.push(...mine);
      for (const [, z] of mine) this.raise('lvol', z);
    }
  }

  private conflict(batch: StoreBatch, space: IdSpace, id: number, target: string, what = `${space}id`): void {
    const reason = `the ${what} ${id} it reported keeping is held by another (or invalid): it gets a fresh one`;
    log.warn({ space, id, target }, `${target}: ${reason}`);
    batch.event('intid.conflict', target, reason, { space, claimed: id });
  }

  private give(r: { intId?: number }, space: IdSpace, count = 1): boolean {
    if (r.intId !== undefined) return false;
    const id = this.take(space, count);
    if (id === undefined) return false;
    r.intId = id;
    return true;
  }

  /** Gives the disk's chunks without an extent id a new block; true if it did. */
  private extendDexts(d: DiskRecord): boolean {
    if (d.intId === undefined) return false;
    const blocks = d.dextIds ?? [];
    let have = 0;
    for (let i = 1; i < blocks.length; i += 2) have += blocks[i]!;
    const missing = d.chunkCount - have;
    if (missing <= 0) return false;
    const base = this.take('lvol', missing);
    if (base === undefined) return false;
    d.dextIds = [...blocks, base, missing];
    return true;
  }
}

/** [first id, count] pairs of an extent id list. */
function pairs(ids: number[] | undefined): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (let i = 0; ids && i + 1 < ids.length; i += 2) out.push([ids[i]!, ids[i + 1]!]);
  return out;
}
