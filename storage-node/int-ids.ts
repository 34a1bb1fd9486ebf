import { join } from 'node:path';
import { moduleLogger } from '../shared/logger.js';
import type { IntIdCounters } from '../proto/generated/vsky/common/IntIdCounters.js';
import type { HeartbeatReply__Output } from '../proto/generated/vsky/manager/HeartbeatReply.js';
import { rename, writeFile } from 'node:fs/promises';
import { readOptional } from './node-state.js';

// The VastSky-style integer ids (docs/xmlrpc.md) the manager gave this node:
// its ssvrid, each disk's pdskid and disk-extent id blocks, and the manager's
// id counters as last heard. They arrive with heartbeat replies and are kept
// in the data directory (int-ids.json, replaced atomically, only when they
// change), and go back to the manager with every registration, so a manager
// rebuilt from storage (docs/rebuild-from-storage.md) gives the same ids
// back and continues its counters above them. They belong to one cluster:
// ids heard from another cluster's manager replace them.
//
// The file is advisory (the manager's database is the authority while it
// exists), so it is kept cheaply: replaced by rename without fsync (a data
// write must never queue behind it on a slow disk), counters alone saved at
// most every COUNTERS_EVERY_MS, and a file that does not read back is
// reported and ignored (the manager gives the ids again).

const FILE = 'int-ids.json';
const COUNTERS_EVERY_MS = 10_000;
const log = moduleLogger('storage-node.int-ids');

export interface DiskIntIds { pdskid: number; dextIds: number[] }

interface Saved {
  version: 1;
  clusterId: string;
  ssvrid: number;
  disks: Record<string, DiskIntIds>;
  next: IntIdCounters;
}

const u32 = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 0xffff_ffff;
const ZERO: Required<IntIdCounters> = { hsvr: 0, ssvr: 0, pdsk: 0, lvol: 0 };

export class NodeIntIds {
  private savedMs = 0;
  private saving = false;

  private constructor(private readonly dir: string, private saved: Saved) {}

  static async load(dataDir: string): Promise<NodeIntIds> {
    const path = join(dataDir, FILE);
    const text = await readOptional(path);
    const empty: Saved = { version: 1, clusterId: '', ssvrid: 0, disks: {}, next: { ...ZERO } };
    if (text === undefined) return new NodeIntIds(dataDir, empty);
    try {
      const p = JSON.parse(text) as Partial<Saved>;
      const disksOk = typeof p.disks === 'object' && p.disks !== null
        && Object.values(p.disks).every((d) => u32(d?.pdskid) && Array.isArray(d.dextIds) && d.dextIds.every(u32));
      const next = p.next ?? {};
      if (p.version !== 1 || typeof p.clusterId !== 'string' || !u32(p.ssvrid) || !disksOk
        || !Object.values(next).every(u32)) throw new Error('unexpected content');
      return new NodeIntIds(dataDir, { ...empty, ...p, next: { ...ZERO, ...next } } as Saved);
    } catch (err) {
      log.error({ path, err: (err as Error).message }, 'the id file does not read back: ignored (the manager gives the ids again)');
      return new NodeIntIds(dataDir, empty);
    }
  }

  get clusterId(): string { return this.saved.clusterId; }
  get ssvrid(): number { return this.saved.ssvrid; }
  get next(): IntIdCounters { return { ...this.saved.next }; }

  disk(diskId: string): DiskIntIds {
    const d = this.saved.disks[diskId];
    return d ? { pdskid: d.pdskid, dextIds: [...d.dextIds] } : { pdskid: 0, dextIds: [] };
  }

  /** Takes the ids a heartbeat reply carries; saves them when they changed (counters alone: at most every 10 s). */
  async update(reply: HeartbeatReply__Output): Promise<void> {
    if (this.saving) return; // the next heartbeat brings them again
    if (!reply.clusterId) return;
    const next: Saved = {
      version: 1, clusterId: reply.clusterId, ssvrid: reply.intId,
      disks: reply.clusterId === this.saved.clusterId ? { ...this.saved.disks } : {},
      next: { ...ZERO, ...(reply.nextIntIds ?? {}) },
    };
    for (const d of reply.diskIntIds) if (d.pdskid > 0) next.disks[d.diskId] = { pdskid: d.pdskid, dextIds: [...d.dextIds] };
    if (next.ssvrid === 0 && reply.clusterId === this.saved.clusterId) next.ssvrid = this.saved.ssvrid;
    if (JSON.stringify(next) === JSON.stringify(this.saved)) return;
    const idsChanged = JSON.stringify({ ...next, next: undefined }) !== JSON.stringify({ ...this.saved, next: undefined });
    if (!idsChanged && Date.now() - this.savedMs < COUNTERS_EVERY_MS) return;
    this.saving = true;
    try {
      const tmp = join(this.dir, `.${FILE}.tmp`);
      await writeFile(tmp, `${JSON.stringify(next, null, 2)}\n`);
      await rename(tmp, join(this.dir, FILE));
    } finally {
      this.saving = false;
    }
    this.savedMs = Date.now();
    if (next.ssvrid !== this.saved.ssvrid || Object.keys(next.disks).length !== Object.keys(this.saved.disks).length) {
      log.info({ ssvrid: next.ssvrid, disks: Object.fromEntries(Object.entries(next.disks).map(([k, v]) => [k, v.pdskid])) }, 'VastSky ids from the manager kept');
    }
    this.saved = next;
  }
}
