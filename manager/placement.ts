import { seededRandom } from '../shared/seeded-random.js';
import { MAX_REPLICAS } from '../shared/constants.js';
import { CapacityError, CorruptMetadataError, InvalidArgumentError } from '../shared/errors.js';
import { formatSize } from '../shared/units.js';
import { Heap } from './heap.js';

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

interface ModelServer {
  id: string;
  labels: Readonly<Record<string, string>>;
  eligible: boolean;
}

interface ModelDisk {
  id: string;
  serverId: string;
  chunkCount: number;
  owner: Uint32Array;
  used: number;
  /** Every index below `cursor` is owned: allocation searches from here. */
  cursor: number;
  eligible: boolean;
  /** Random key redrawn at each pick: ties on free space go to the lowest. */
  tie: number;
  order: number;
  /** Chunk indexes reported bad (XML-RPC notifyBadBlocks): BAD_OWNER once no volume owns them. */
  bad: Set<number>;
}

/**
 * Owner of a chunk some node holds for a volume this manager does not know
 * (its AllocateChunk or FreeChunk said the chunk is taken): kept out of
 * placement until GC sees the node no longer holds it. Never a volume id.
 */
export const FOREIGN_OWNER = 0xffffffff;
/**
 * Owner of a chunk reported bad (a free one at once, an owned one when its
 * volume lets it go): never placed, never freed, counted as used. Never a
 * volume id.
 */
export const BAD_OWNER = 0xfffffffe;
export const MAX_VOLUME_ID = BAD_OWNER - 1;

export interface PlannedChunk {
  segment: number;
  slot: number;
  serverId: string;
  diskId: string;
  chunkIndex: number;
}

export interface PlacementRequest {
  volumeId: number;
  segmentCount: number;
  replicas: number;
  /** Server label whose values the replicas of a segment should differ in ('' = none). */
  spreadLabel?: string;
  /** Only used to word errors in bytes. */
  chunkSize?: number;
}

export interface PlacementResult {
  /** Segment-major: chunks[segment * replicas + slot]. */
  chunks: PlannedChunk[];
  spreadLabel: string;
  /**
   * none: no label asked; enforced: every segment on distinct values;
   * fallback: fewer values than replicas (each value used, then distinct servers);
   * partial: some segments ran out of values with free space.
   */
  labelSpread: 'none' | 'enforced' | 'fallback' | 'partial';
  labelValues: number;
  fallbackSegments: number;
  serversUsed: number;
  disksUsed: number;
}

/** One replacement replica to place (manager/resync/spares.ts). */
export interface SpareRequest {
  volumeId: number;
  /** Servers holding another replica of the segment (any state): never used. */
  excludeServers: ReadonlySet<string>;
  /** The replaced replica's server: used only when no other server fits. */
  avoidServer?: string;
  /** Server label whose values the segment's replicas should differ in ('' = none). */
  spreadLabel?: string;
}

export interface SparePick {
  serverId: string;
  diskId: string;
  chunkIndex: number;
  /** How far the rules held: 'spread' (new server and label value), 'server' (label reused), 'avoided' (the replaced replica's server). */
  fit: 'spread' | 'server' | 'avoided';
}

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
    const { volumeId, segmentCount, replicas: k } = req;
    if (!Number.isInteger(k) || k < 1 || k > MAX_REPLICAS) {
      throw new InvalidArgumentError(`replicas must be 1..${MAX_REPLICAS}, got ${k}`, { replicas: k });
    }
    if (!Number.isInteger(segmentCount) || segmentCount < 1) {
      throw new InvalidArgumentError(`segment count must be a positive integer, got ${segmentCount}`);
    }
    if (!Number.isInteger(volumeId) || volumeId < 1 || volumeId > MAX_VOLUME_ID) {
      throw new InvalidArgumentError(`volume id must be a u32 above 0, got ${volumeId}`);
    }
    const label = req.spreadLabel ?? '';
    const candidates: ModelDisk[] = [];
    const serverFree = new Map<string, number>();
    for (const d of this.disks.values()) {
      const free = d.chunkCount - d.used;
      if (free > 0 && this.isEligible(d)) {
        candidates.push(d);
        serverFree.set(d.serverId, (serverFree.get(d.serverId) ?? 0) + free);
      }
    }
    this.checkCapacity(req, serverFree);

    const labelOf = (d: ModelDisk): string => this.servers.get(d.serverId)?.labels[label] ?? '';
    const labelValues = label ? new Set(candidates.map(labelOf)).size : 0;
    // With fewer label values than replicas every segment still uses each
    // value once before doubling up (spread as far as the labels go).
    const enforce = label !== '';

    const heap = new Heap(candidates, placeBefore);
    const picks: Array<{ disk: ModelDisk; index: number }> = [];
    const savedPick = new Map<ModelDisk, number>();
    const chunks: PlannedChunk[] = [];
    let fallbackSegments = 0;
    try {
      for (let seg = 0; seg < segmentCount; seg++) {
        let spread = enforce;
        const usedServers = new Set<string>();
        const usedValues = new Set<string>();
        let stash: ModelDisk[] = [];
        for (let slot = 0; slot < k; slot++) {
          let pick: ModelDisk | undefined;
          if (spread && usedValues.size >= labelValues) {
            spread = false;
            fallbackSegments++;
          }
          while (heap.size > 0) {
            const d = heap.pop();
            stash.push(d);
            if (usedServers.has(d.serverId) || (spread && usedValues.has(labelOf(d)))) continue;
            pick = d;
            break;
          }
          if (!pick && spread) {
            // The label values with free space ran out for this segment:
            // keep the picks so far (distinct servers) and relax to servers only.
            spread = false;
            fallbackSegments++;
            for (const d of stash) if (d.used < d.chunkCount) heap.push(d);
            stash = [];
            slot--;
            continue;
          }
          if (!pick) throw this.capacityError(req, serverFree, `segment ${seg} found only ${slot} servers with free chunks`);
          if (!savedPick.has(pick)) savedPick.set(pick, pick.tie);
          const index = allocIndex(pick, volumeId);
          pick.tie = this.random();
          picks.push({ disk: pick, index });
          chunks.push({ segment: seg, slot, serverId: pick.serverId, diskId: pick.id, chunkIndex: index });
          usedServers.add(pick.serverId);
          usedValues.add(labelOf(pick));
        }
        for (const d of stash) if (d.used < d.chunkCount) heap.push(d);
      }
    } catch (err) {
      for (const { disk, index } of picks) {
        disk.owner[index] = 0;
        disk.used--;
        if (index < disk.cursor) disk.cursor = index;
      }
      for (const [disk, tie] of savedPick) disk.tie = tie;
      throw err;
    }
    const servers = new Set(chunks.map((c) => c.serverId));
    const disks = new Set(chunks.map((c) => c.diskId));
    return {
      chunks,
      spreadLabel: label,
      labelSpread: label === '' ? 'none' : labelValues < k ? 'fallback' : fallbackSegments > 0 ? 'partial' : 'enforced',
      labelValues,
      fallbackSegments,
      serversUsed: servers.size,
      disksUsed: disks.size,
    };
  }

  /**
   * Chooses and reserves one spare chunk per request, in order: an eligible
   * disk on a server outside `excludeServers`, on a spread-label value the
   * segment's other replicas do not use when the labels allow, and off the
   * replaced replica's server unless nothing else fits. Among those, the disk
   * with the least resync work ahead (`resyncLoad`: the caller's count of
   * resyncs that will read from or write to it; each pick here adds one),
   * then the most free chunks. Rebuild time is set by the busiest disk, so a
   * disk with much free space (a new one) must not receive every spare of a
   * failure; free space still decides among equally loaded disks. One heap
   * serves the whole batch (a server failure asks for thousands). Undefined
   * where no disk fits; the other requests are still served. `onlyDisks`
   * (hot-spare mode) limits the candidates to those disks, same rules.
   */
  placeSpares(reqs: readonly SpareRequest[], resyncLoad: Map<string, number> = new Map(),
    onlyDisks?: ReadonlySet<string>): Array<SparePick | undefined> {
    const loadOf = (d: ModelDisk) => resyncLoad.get(d.id) ?? 0;
    const heap = new Heap(
      [...this.disks.values()].filter((d) => d.used < d.chunkCount && this.isEligible(d) && (onlyDisks === undefined || onlyDisks.has(d.id))),
      (a, b) => (loadOf(a) !== loadOf(b) ? loadOf(a) < loadOf(b) : placeBefore(a, b)),
    );
    const labelOf = (serverId: string, label: string): string => this.servers.get(serverId)?.labels[label] ?? '';
    return reqs.map((req) => {
      const label = req.spreadLabel ?? '';
      const usedValues = new Set<string>();
      if (label) for (const s of req.excludeServers) usedValues.add(labelOf(s, label));
      let best: ModelDisk | undefined;
      let fit: SparePick['fit'] = 'spread';
      let sameLabel: ModelDisk | undefined;
      let avoided: ModelDisk | undefined;
      const stash: ModelDisk[] = [];
      // Popped in preference order, so the first disk meeting each relaxed rule is the best one for it.
      while (heap.size > 0) {
        const d = heap.pop();
        stash.push(d);
        if (req.excludeServers.has(d.serverId)) continue;
        if (d.serverId === req.avoidServer) {
          avoided ??= d;
          continue;
        }
        if (label && usedValues.has(labelOf(d.serverId, label))) {
          sameLabel ??= d;
          continue;
        }
        best = d;
        break;
      }
      if (!best && sameLabel) [best, fit] = [sameLabel, 'server'];
      if (!best && avoided) [best, fit] = [avoided, 'avoided'];
      let pick: SparePick | undefined;
      if (best) {
        const index = allocIndex(best, req.volumeId);
        best.tie = this.random();
        resyncLoad.set(best.id, loadOf(best) + 1);
        pick = { serverId: best.serverId, diskId: best.id, chunkIndex: index, fit };
      }
      for (const d of stash) if (d.used < d.chunkCount) heap.push(d);
      return pick;
    });
  }

  private sum(serverFree: Map<string, number>): number {
    let free = 0;
    for (const f of serverFree.values()) free += f;
    return free;
  }

  private isEligible(d: ModelDisk): boolean {
    return d.eligible && (this.servers.get(d.serverId)?.eligible ?? false);
  }

  // Necessary conditions, checked up front so a hopeless request fails fast:
  // K servers with space, and enough chunks counting at most one per segment
  // per server (a segment never puts two replicas on one server).
  private checkCapacity(req: PlacementRequest, serverFree: Map<string, number>): void {
    if (serverFree.size < req.replicas) {
      throw this.capacityError(req, serverFree, `${req.replicas} replicas need ${req.replicas} servers with free chunks, only ${serverFree.size} have any`);
    }
    let usable = 0;
    for (const free of serverFree.values()) usable += Math.min(free, req.segmentCount);
    if (usable < req.segmentCount * req.replicas) {
      throw this.capacityError(req, serverFree, usable < this.sum(serverFree)
        ? `only ${usable} usable: a segment takes at most one chunk per server` : undefined);
    }
  }

  private capacityError(req: PlacementRequest, serverFree: Map<string, number>, why?: string): CapacityError {
    const free = this.sum(serverFree);
    const needed = req.segmentCount * req.replicas;
    const bytes = (n: number) => (req.chunkSize ? ` (${formatSize(n * req.chunkSize)})` : '');
    return new CapacityError(
      `not enough free space: the volume needs ${needed} chunks${bytes(needed)} on ${req.replicas} distinct servers; ` +
      `${free} chunks${bytes(free)} are free on ${serverFree.size} eligible servers${why ? ` (${why})` : ''}; add disks with vsky disk add`,
      { needed, free, servers: serverFree.size, replicas: req.replicas },
    );
  }
}

/** Heap order: most free chunks first, then the random tie key, then oldest disk. */
function placeBefore(a: ModelDisk, b: ModelDisk): boolean {
  const fa = a.chunkCount - a.used;
  const fb = b.chunkCount - b.used;
  if (fa !== fb) return fa > fb;
  if (a.tie !== b.tie) return a.tie < b.tie;
  return a.order < b.order;
}


/** Lowest free index from the disk's cursor (every index below it is owned). */
function allocIndex(d: ModelDisk, volumeId: number): number {
  for (let i = d.cursor; i < d.chunkCount; i++) {
    if (d.owner[i] === 0) {
      d.owner[i] = volumeId;
      d.used++;
      d.cursor = i + 1;
      return i;
    }
  }
  // The heap only holds disks with free chunks, so this means a broken invariant.
  throw new Error(`disk ${d.id} reported ${d.chunkCount - d.used} free chunks but has none`);
}
