import { MAX_REPLICAS } from '../../shared/constants.js';
import { CapacityError, InvalidArgumentError } from '../../shared/errors.js';
import { formatSize } from '../../shared/units.js';
import { Heap } from '../heap.js';
import { allocIndex, isEligible, MAX_VOLUME_ID, placeBefore, type ModelDisk, type ModelView } from './model-disk.js';

// Placing every replica of a new volume: K replicas of a segment on K
// distinct servers and, while the labels allow, K distinct values of the
// spread label; each on the eligible disk with the most free chunks. A
// placement that cannot finish changes nothing.

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
  /** Servers to leave out this time (a thin allocation placing again after a node did not answer). */
  avoidServers?: ReadonlySet<string>;
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

/**
 * Places every replica of a new volume and reserves the chunks for
 * `volumeId`. Throws CapacityError (or InvalidArgumentError) and leaves the
 * model unchanged when it cannot place all of them.
 */
export function placeVolume(view: ModelView, req: PlacementRequest): PlacementResult {
  checkRequest(req);
  const { volumeId, segmentCount, replicas: k } = req;
  const label = req.spreadLabel ?? '';
  const candidates: ModelDisk[] = [];
  const serverFree = new Map<string, number>();
  for (const d of view.disks.values()) {
    const free = d.chunkCount - d.used;
    if (free > 0 && isEligible(view, d) && !req.avoidServers?.has(d.serverId)) {
      candidates.push(d);
      serverFree.set(d.serverId, (serverFree.get(d.serverId) ?? 0) + free);
    }
  }
  checkCapacity(req, serverFree);

  const labelOf = (d: ModelDisk): string => view.servers.get(d.serverId)?.labels[label] ?? '';
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
        if (!pick) throw capacityError(req, serverFree, `segment ${seg} found only ${slot} servers with free chunks`);
        if (!savedPick.has(pick)) savedPick.set(pick, pick.tie);
        const index = allocIndex(pick, volumeId);
        pick.tie = view.random();
        picks.push({ disk: pick, index });
        chunks.push({ segment: seg, slot, serverId: pick.serverId, diskId: pick.id, chunkIndex: index });
        usedServers.add(pick.serverId);
        usedValues.add(labelOf(pick));
      }
      for (const d of stash) if (d.used < d.chunkCount) heap.push(d);
    }
  } catch (err) {
    undoPicks(picks, savedPick);
    throw err;
  }
  return {
    chunks,
    spreadLabel: label,
    labelSpread: label === '' ? 'none' : labelValues < k ? 'fallback' : fallbackSegments > 0 ? 'partial' : 'enforced',
    labelValues,
    fallbackSegments,
    serversUsed: new Set(chunks.map((c) => c.serverId)).size,
    disksUsed: new Set(chunks.map((c) => c.diskId)).size,
  };
}

function checkRequest(req: PlacementRequest): void {
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
}

/** A placement that cannot finish changes nothing: its chunks are freed and the tie keys restored. */
function undoPicks(picks: Array<{ disk: ModelDisk; index: number }>, savedPick: Map<ModelDisk, number>): void {
  for (const { disk, index } of picks) {
    disk.owner[index] = 0;
    disk.used--;
    if (index < disk.cursor) disk.cursor = index;
  }
  for (const [disk, tie] of savedPick) disk.tie = tie;
}

function sum(serverFree: Map<string, number>): number {
  let free = 0;
  for (const f of serverFree.values()) free += f;
  return free;
}

// Necessary conditions, checked up front so a hopeless request fails fast:
// K servers with space, and enough chunks counting at most one per segment
// per server (a segment never puts two replicas on one server).
function checkCapacity(req: PlacementRequest, serverFree: Map<string, number>): void {
  if (serverFree.size < req.replicas) {
    throw capacityError(req, serverFree, `${req.replicas} replicas need ${req.replicas} servers with free chunks, only ${serverFree.size} have any`);
  }
  let usable = 0;
  for (const free of serverFree.values()) usable += Math.min(free, req.segmentCount);
  if (usable < req.segmentCount * req.replicas) {
    throw capacityError(req, serverFree, usable < sum(serverFree)
      ? `only ${usable} usable: a segment takes at most one chunk per server` : undefined);
  }
}

function capacityError(req: PlacementRequest, serverFree: Map<string, number>, why?: string): CapacityError {
  const free = sum(serverFree);
  const needed = req.segmentCount * req.replicas;
  const bytes = (n: number) => (req.chunkSize ? ` (${formatSize(n * req.chunkSize)})` : '');
  return new CapacityError(
    `not enough free space: the volume needs ${needed} chunks${bytes(needed)} on ${req.replicas} distinct servers; ` +
    `${free} chunks${bytes(free)} are free on ${serverFree.size} eligible servers${why ? ` (${why})` : ''}; add disks with vsky disk add`,
    { needed, free, servers: serverFree.size, replicas: req.replicas },
  );
}
