import { moduleLogger } from '../../shared/logger.js';
import type { ManagerCore } from '../core.js';
import { keys } from '../store.js';
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
// call.

const log = moduleLogger('manager.xmlrpc.ids');

export type IdSpace = 'hsvr' | 'ssvr' | 'pdsk' | 'lvol';
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

  private raiseToRecords(): void {
    const { registry, volumes } = this.core;
    const raise = (space: IdSpace, last: number | undefined) => {
      if (last !== undefined && last >= this.next[space]) this.next[space] = last + 1;
    };
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
    for (const h of byTime(registry.listHeads(), (x) => x.registeredMs)) if (this.give(h, 'hsvr')) batch.putHead(h);
    for (const s of byTime(registry.listServers(), (x) => x.registeredMs)) if (this.give(s, 'ssvr')) batch.putServer(s);
    for (const d of byTime(registry.listDisks(), (x) => x.addedMs)) {
      const given = this.give(d, 'pdsk');
      if (this.extendDexts(d) || given) batch.putDisk(d);
    }
    // A volume being deleted (busy) is skipped: a put racing its delete batch would bring its record back.
    for (const v of volumes.list().sort((a, b) => a.id - b.id)) {
      if (!volumes.isBusy(v.id) && this.give(v, 'lvol', lvolBlock(v.segmentCount))) batch.putVolume(v);
    }
    for (const space of SPACES) if (this.next[space] !== before[space]) batch.putNextIntId(space, this.next[space]);
    if (batch.length > 0) await store.write(batch);
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
