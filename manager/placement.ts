import { seededRandom } from '../shared/seeded-random.js';
import { CorruptMetadataError, InvalidArgumentError } from '../shared/errors.js';
import { BAD_OWNER, FOREIGN_OWNER, isEligible, type ModelDisk, type ModelServer, type ModelView } from './placement/model-disk.js';
import { placeSpares, type SparePick, type SpareRequest } from './placement/spares.js';
import { placeVolume, type PlacementRequest, type PlacementResult } from './placement/volume-placement.js';

// The chunk allocator: a pure in-memory model of servers, disks and which
// volume owns each chunk index, and the placement of a new volume on it.
// No I/O here, so the rules can be tested directly:
//  - the K replicas of a segment go to K distinct servers, and to K distinct
//    values of the spread label (e.g. rack) while the labels allow;
//  - each replica goes to the eligible disk with the most free chunks (as
//    VastSky did), so disks fill evenly; ties go to a random disk (a seeded
//    generator, so runs repeat). Not "least recently picked": that turns the
//    disks into a fixed rotation, every chunk of a disk then shares its
//    segment with the same two or three disks, and a lost disk can only be
//    rebuilt from those few (rule 8 wants its copies spread over many);
//  - a placement that cannot finish changes nothing.
// Owner 0 means free; volume ids start at 1.

// This class keeps the model and the chunk ownership; placing a volume is
// manager/placement/volume-placement.ts, placing spares
// manager/placement/spares.ts, the disk model manager/placement/model-disk.ts.

// Re-exported for manager/jobs/resize-chunks.ts, which imports it from here.
export type { PlannedChunk } from './placement/volume-placement.js';

export interface ModelTotals {
  disks: number;
  eligibleDisks: number;
  eligibleServers: number;
  chunks: number;
  usedChunks: number;
  eligibleFreeChunks: number;
}

export class PlacementModel {
  private readonly servers = new Map<string, ModelServer>();
  private readonly disks = new Map<string, ModelDisk>();
  private readonly random = seededRandom(0x9e3779b9);
  /** What placeVolume and placeSpares read and change. */
  private readonly view: ModelView = { servers: this.servers, disks: this.disks, random: this.random };
  private diskOrder = 0;

  setServer(id: string, labels: Readonly<Record<string, string>>, eligible: boolean): void {
    const s = this.servers.get(id);
    if (s) {
      s.labels = { ...labels };
      s.eligible = eligible;
    } else {
      this.servers.set(id, { id, labels: { ...labels }, eligible });
    }
  }

  /** Adds or updates a disk. Returns false when asked to shrink below chunks it holds (the count is kept). */
  setDisk(id: string, serverId: string, chunkCount: number, eligible: boolean): boolean {
    if (!Number.isInteger(chunkCount) || chunkCount < 0) throw new InvalidArgumentError(`disk ${id}: invalid chunk count ${chunkCount}`);
    const d = this.disks.get(id);
    if (!d) {
      this.disks.set(id, {
        id, serverId, chunkCount, owner: new Uint32Array(chunkCount), used: 0, cursor: 0, eligible, tie: this.random(), order: this.diskOrder++,
        bad: new Set(),
      });
      return true;
    }
    d.serverId = serverId;
    d.eligible = eligible;
    if (chunkCount === d.chunkCount) return true;
    if (chunkCount < d.chunkCount && d.owner.subarray(chunkCount).some((o) => o !== 0)) return false;
    const owner = new Uint32Array(chunkCount);
    owner.set(d.owner.subarray(0, Math.min(chunkCount, d.chunkCount)));
    d.owner = owner;
    d.chunkCount = chunkCount;
    d.cursor = Math.min(d.cursor, chunkCount);
    return true;
  }

  setDiskEligible(id: string, eligible: boolean): void {
    const d = this.disks.get(id);
    if (d) d.eligible = eligible;
  }

  hasDisk(id: string): boolean {
    return this.disks.has(id);
  }

  /** Records that `volumeId` owns a chunk (loading metadata). Throws when the chunk is unknown or owned. */
  claim(diskId: string, chunkIndex: number, volumeId: number): void {
    const d = this.disks.get(diskId);
    if (!d) throw new CorruptMetadataError(`volume ${volumeId} references unknown disk ${diskId}`, { diskId, volumeId });
    if (!(chunkIndex >= 0 && chunkIndex < d.chunkCount)) {
      throw new CorruptMetadataError(`volume ${volumeId} references chunk ${chunkIndex} outside disk ${diskId} (${d.chunkCount} chunks)`, { diskId, chunkIndex, volumeId });
    }
    const prev = d.owner[chunkIndex]!;
    if (prev === BAD_OWNER && d.bad.has(chunkIndex)) {
      d.owner[chunkIndex] = volumeId; // loading: a bad chunk a volume still owns (already counted as used)
      return;
    }
    if (prev !== 0) {
      throw new CorruptMetadataError(`chunk ${diskId}#${chunkIndex} is claimed by volumes ${prev} and ${volumeId}`, { diskId, chunkIndex, volumeId, prev });
    }
    d.owner[chunkIndex] = volumeId;
    d.used++;
  }

  /** Frees a chunk if `volumeId` owns it; returns whether it did. */
  release(diskId: string, chunkIndex: number, volumeId: number): boolean {
    const d = this.disks.get(diskId);
    if (!d || !(chunkIndex >= 0 && chunkIndex < d.chunkCount) || d.owner[chunkIndex] !== volumeId) return false;
    if (d.bad.has(chunkIndex)) {
      d.owner[chunkIndex] = BAD_OWNER; // stays used: never handed out again
      return true;
    }
    d.owner[chunkIndex] = 0;
    d.used--;
    if (chunkIndex < d.cursor) d.cursor = chunkIndex;
    return true;
  }

  /**
   * Marks chunks bad: a free one is never handed out from now on, an owned
   * one once its volume lets it go (release). Idempotent; indexes beyond the
   * disk are ignored. Returns how many were free (now BAD_OWNER).
   */
  markBad(diskId: string, chunkIndexes: Iterable<number>): number {
    const d = this.disks.get(diskId);
    if (!d) return 0;
    let freed = 0;
    for (const i of chunkIndexes) {
      if (!(Number.isInteger(i) && i >= 0 && i < d.chunkCount)) continue;
      d.bad.add(i);
      if (d.owner[i] !== 0) continue;
      d.owner[i] = BAD_OWNER;
      d.used++;
      freed++;
    }
    return freed;
  }

  /** Chunk indexes of the disk that are bad and owned by no volume. */
  badChunks(diskId: string): number[] {
    const d = this.disks.get(diskId);
    const out: number[] = [];
    if (d) d.owner.forEach((o, i) => { if (o === BAD_OWNER) out.push(i); });
    return out;
  }

  /** Moves a chunk from `volumeId` to FOREIGN_OWNER (the node holds it for someone else). */
  markForeign(diskId: string, chunkIndex: number, volumeId: number): void {
    const d = this.disks.get(diskId);
    if (d && chunkIndex >= 0 && chunkIndex < d.chunkCount && d.owner[chunkIndex] === volumeId) d.owner[chunkIndex] = FOREIGN_OWNER;
  }

  /** Indices of the disk marked FOREIGN_OWNER. */
  foreignChunks(diskId: string): number[] {
    const d = this.disks.get(diskId);
    const out: number[] = [];
    if (d) d.owner.forEach((o, i) => { if (o === FOREIGN_OWNER) out.push(i); });
    return out;
  }

  /** The owning volume id, 0 when free, undefined for an unknown disk or index. */
  ownerOf(diskId: string, chunkIndex: number): number | undefined {
    const d = this.disks.get(diskId);
    if (!d || !(chunkIndex >= 0 && chunkIndex < d.chunkCount)) return undefined;
    return d.owner[chunkIndex];
  }

  diskUsage(diskId: string): { chunkCount: number; used: number } | undefined {
    const d = this.disks.get(diskId);
    return d ? { chunkCount: d.chunkCount, used: d.used } : undefined;
  }

  /** Volume id -> chunks it owns on this disk. */
  ownersOnDisk(diskId: string): Map<number, number> {
    const out = new Map<number, number>();
    const d = this.disks.get(diskId);
    if (!d || d.used === 0) return out;
    for (const o of d.owner) if (o !== 0 && o !== BAD_OWNER) out.set(o, (out.get(o) ?? 0) + 1);
    return out;
  }

  totals(): ModelTotals {
    const t: ModelTotals = { disks: 0, eligibleDisks: 0, eligibleServers: 0, chunks: 0, usedChunks: 0, eligibleFreeChunks: 0 };
    const servers = new Set<string>();
    for (const d of this.disks.values()) {
      t.disks++;
      t.chunks += d.chunkCount;
      t.usedChunks += d.used;
      if (this.isEligible(d)) {
        t.eligibleDisks++;
        t.eligibleFreeChunks += d.chunkCount - d.used;
        servers.add(d.serverId);
      }
    }
    t.eligibleServers = servers.size;
    return t;
  }

  /**
   * Places every replica of a new volume and reserves the chunks for
   * `volumeId`. Throws CapacityError (or InvalidArgumentError) and leaves the
   * model unchanged when it cannot place all of them.
   */
  place(req: PlacementRequest): PlacementResult {
    return placeVolume(this.view, req);
  }

  /** Chooses and reserves one spare chunk per request (manager/placement/spares.ts says how). */
  placeSpares(reqs: readonly SpareRequest[], resyncLoad: Map<string, number> = new Map(),
    onlyDisks?: ReadonlySet<string>): Array<SparePick | undefined> {
    return placeSpares(this.view, reqs, resyncLoad, onlyDisks);
  }

  private isEligible(d: ModelDisk): boolean {
    return isEligible(this.view, d);
  }
}
