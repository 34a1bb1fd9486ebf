import { InvalidArgumentError, VskyError, errorMessage } from '../../shared/errors.js';
import { formatSize } from '../../shared/units.js';
import type { ChunkFreer } from '../gc.js';
import { mapLimit, type PeerClients } from '../node-clients.js';
import type { PlacementModel, PlannedChunk } from '../placement.js';
import type { Registry } from '../registry.js';
import type { ManagerStore } from '../store.js';
import { buildChunkMap, type ChunkMapRecord, type ToFreeRecord, type VolumeRecord } from '../types.js';
import type { JobRecord } from './records.js';

// The chunks a resize adds (docs/jobs.md), for the offline and the online
// resize alike: the new segments are placed like a create's
// (manager/placement.ts; the model owns the chunks from then on, so garbage
// collection leaves them alone), allocated on their nodes with the volume's
// new shape, generation g and the given epoch, and appended to a chunk map.
// A failure frees every chunk placed (durable to-free list, then the nodes).

export interface ResizeContext {
  store: ManagerStore;
  model: PlacementModel;
  registry: Registry;
  peers: PeerClients;
  freer: ChunkFreer;
  now: () => number;
}

/** New chunks, segment numbers counted from the volume's first segment. */
export type GrowthChunk = PlannedChunk;

/**
 * Places and allocates the chunks of the segments `volume` needs to reach
 * `size`, under `epoch` (the job's, or the holder's for an online resize).
 * On any refusal the chunks are freed and a clear error is thrown.
 */
export async function allocateGrowth(ctx: ResizeContext, j: JobRecord, volume: VolumeRecord, size: number, epoch: number): Promise<GrowthChunk[]> {
  const segmentCount = Math.ceil(size / volume.chunkSize);
  const extra = segmentCount - volume.segmentCount;
  if (extra <= 0) return [];
  if (volume.thin) return []; // thin: the new segments get their chunks at their first write (manager/thin/)
  const plan = ctx.model.place({ volumeId: volume.id, segmentCount: extra, replicas: volume.replicas, spreadLabel: volume.spreadLabel, chunkSize: volume.chunkSize });
  const placed = plan.chunks.map((c) => ({ ...c, segment: c.segment + volume.segmentCount }));
  j.total = placed.length;
  j.done = 0;
  const results = await mapLimit(placed, 16, async (c) => {
    const server = ctx.registry.server(c.serverId)!;
    await ctx.peers.node.allocateChunk(server.controlAddress, {
      diskId: c.diskId, chunkIndex: c.chunkIndex,
      identity: {
        volumeId: volume.id, volumeName: volume.name, volumeSize: size, segment: c.segment, slot: c.slot,
        segmentCount, replicas: volume.replicas, generation: j.expectedGeneration, epoch, lvolid: volume.intId ?? 0, thin: volume.thin === true,
      },
    });
    j.done++;
  });
  const failed = results.findIndex((r) => r.status === 'rejected');
  if (failed >= 0) {
    const reason = (results[failed] as PromiseRejectedResult).reason;
    await freeGrowth(ctx, j, volume.id, placed);
    throw new VskyError(reason instanceof VskyError ? reason.code : 'EINTERNAL',
      `resize of ${volume.name}: allocating a new chunk failed: ${errorMessage(reason)}; the new chunks are freed, the size is unchanged`, { jobId: j.id });
  }
  return placed;
}

/** Frees chunks a resize placed: durable on the to-free list first, then asked of their nodes (retried by the freer). */
export async function freeGrowth(ctx: ResizeContext, j: JobRecord, volumeId: number, placed: readonly GrowthChunk[], batch = ctx.store.batch()): Promise<void> {
  const records: ToFreeRecord[] = placed.map((c) => ({ diskId: c.diskId, chunkIndex: c.chunkIndex, volumeId, reason: `resize job ${j.id} failed`, sinceMs: ctx.now() }));
  ctx.freer.stage(batch, records);
  await ctx.store.write(batch);
  ctx.freer.track(records);
  void ctx.freer.free(records).catch(() => undefined);
}

/** Appends the new segments to `map` in place (the table of disks grows as needed). */
export function appendSegments(map: ChunkMapRecord, oldCount: number, newCount: number, placed: readonly GrowthChunk[]): void {
  const grown = buildChunkMap(map.volumeId, map.replicas, newCount - oldCount, placed.map((c) => ({ ...c, segment: c.segment - oldCount })));
  for (let i = 0; i < grown.locs.length; i += 2) {
    if (grown.locs[i]! < 0) { map.locs.push(-1, -1); continue; } // unallocated (thin)
    const d = grown.disks[grown.locs[i]!]!;
    let ref = map.disks.indexOf(d);
    if (ref < 0) { ref = map.disks.length; map.disks.push(d); }
    map.locs.push(ref, grown.locs[i + 1]!);
  }
  map.segmentCount = newCount;
}

/**
 * Undoes appendSegments in place: the map ends at `oldCount` segments again;
 * replica states recorded meanwhile for the removed positions go too, and
 * disks no replica uses any more leave the table's tail.
 */
export function truncateSegments(map: ChunkMapRecord, oldCount: number): void {
  const positions = oldCount * map.replicas;
  map.locs.length = positions * 2;
  map.segmentCount = oldCount;
  if (map.stale) map.stale = map.stale.filter((r) => r < positions);
  if (map.resyncing) map.resyncing = map.resyncing.filter((r) => r < positions);
  if (map.stale?.length === 0) delete map.stale;
  if (map.resyncing?.length === 0) delete map.resyncing;
  const used = new Set<number>();
  for (let i = 0; i < map.locs.length; i += 2) used.add(map.locs[i]!);
  for (let i = 0; i < (map.moves?.length ?? 0); i += 4) used.add(map.moves![i + 1]!); // [r, diskRef, chunkIndex, idSlot]
  while (map.disks.length > 0 && !used.has(map.disks.length - 1)) map.disks.pop();
}

/** A resize request's size against the volume's: grow only, a multiple of 512. */
export function checkResize(v: VolumeRecord, args: Record<string, string>): void {
  const size = Number(args.size);
  if (!Number.isSafeInteger(size) || size <= 0 || size % 512 !== 0) {
    throw new InvalidArgumentError(`resize: invalid size "${args.size ?? ''}": give a positive number of bytes, a multiple of 512`);
  }
  if (size < v.size) throw new InvalidArgumentError(`resize of ${v.name}: ${formatSize(size)} is smaller than its ${formatSize(v.size)}: volumes only grow; nothing changed`);
  if (size === v.size) throw new InvalidArgumentError(`resize of ${v.name}: it is already ${formatSize(size)}; nothing changed`);
}
