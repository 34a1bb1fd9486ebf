import { errorMessage } from '../../shared/errors.js';
import { testBit } from '../../shared/region-bitmap.js';
import { segmentReplicas, type SegmentReplica } from '../chunk-map.js';
import { mapLimit, type PeerClients } from '../node-clients.js';
import type { Registry } from '../registry.js';
import type { VolumeEntry, Volumes } from '../volumes.js';
import type { ChunkIo } from './data-path.js';

// The copy of a flatten job on a DETACHED volume (docs/snapshots.md,
// "Flatten"): the manager is the worker, as for a wipe. For one segment of
// volume V (the job holds V's lease at epoch E; attach is refused meanwhile):
//
//  - the regions to copy are those not written on EVERY in-sync replica of
//    V's segment (GetChunkRegions; the intersection, so a region a node
//    missed, e.g. a write cut by its crash, is written again on all) and
//    that the backing chain holds data in;
//  - a region is read as the head would read it: the first chain level whose
//    segment is allocated and (if that level has a backing itself) whose
//    replicas wrote the region; any in-sync replica of that level, the next
//    one if it fails; all zeros: nothing to copy (V's chunk reads zeros there);
//  - it is written whole (64 KiB: the node sets its written bit once the data
//    is durable-ordered) to every non-stale replica of V's segment under E,
//    then each replica is flushed. A STALE_EPOCH reply is terminal (the job was
//    fenced); any other failure fails the segment, and the job retries it
//    (regions already on every replica are skipped).

const REGIONS_IN_FLIGHT = 8;

export interface SegmentCopyContext {
  volumes: Volumes;
  registry: Registry;
  peers: PeerClients;
  io: ChunkIo;
  /** Gives the (thin) volume chunks for segment s (ThinSegments.allocateFor) under its current epoch. */
  allocate(volume: string, segment: number): Promise<void>;
}

/** One level of the backing chain, nearest first. */
interface Level { entry: VolumeEntry; hasBacking: boolean }

/** The volume's backing chain (snapshots it reads from), nearest first. */
export function chainOf(volumes: Volumes, e: VolumeEntry): Level[] {
  const out: Level[] = [];
  for (let id = e.volume.backing; id !== undefined;) {
    const l = volumes.byVolumeId(id);
    if (l === undefined) throw new Error(`volume ${e.volume.name}: backing volume ${id} is missing`);
    out.push({ entry: l, hasBacking: l.volume.backing !== undefined });
    id = l.volume.backing;
    if (out.length > 64) throw new Error(`volume ${e.volume.name}: backing chain too long (a loop?)`);
  }
  return out;
}

/** Whether no level of the chain has chunks for segment s (it reads zeros). */
export function chainEmptyAt(chain: readonly Level[], s: number): boolean {
  return chain.every((l) => segmentReplicas(l.entry.map, s).length === 0);
}

const usable = (r: SegmentReplica) => r.state === 'in_sync' && !r.move;

/**
 * Copies what segment s of the (detached) volume still reads from its chain.
 * Returns the bytes and regions copied.
 */
export async function copySegment(ctx: SegmentCopyContext, volumeName: string, s: number, epoch: number): Promise<{ bytes: number; regions: number }> {
  let e = ctx.volumes.entry(volumeName);
  const chain = chainOf(ctx.volumes, e);
  if (chainEmptyAt(chain, s)) return { bytes: 0, regions: 0 };
  const cs = e.volume.chunkSize;
  const rs = ctx.registry.regionSize();
  const segLen = Math.min(cs, e.volume.size - s * cs);
  const count = Math.ceil(segLen / rs);
  const own = await ownWritten(ctx, e, s, count);
  const levelBits = await Promise.all(chain.map((l) => (l.hasBacking ? writtenUnion(ctx, l.entry, s) : Promise.resolve(undefined))));
  const todo: number[] = [];
  for (let r = 0; r < count; r++) if (!own || !testBit(own, r)) todo.push(r);
  let bytes = 0;
  let regions = 0;
  let allocated = segmentReplicas(e.map, s).length > 0;
  const results = await mapLimit(todo, REGIONS_IN_FLIGHT, async (r) => {
    const n = Math.min(rs, segLen - r * rs);
    const buf = Buffer.alloc(n);
    if (!(await readChain(ctx, chain, levelBits, s, r * rs, r, buf))) return;
    if (!allocated) {
      await ctx.allocate(volumeName, s);
      allocated = true;
    }
    e = ctx.volumes.entry(volumeName);
    const targets = segmentReplicas(e.map, s).filter((x) => x.state !== 'stale');
    if (targets.length === 0) throw new Error(`volume ${volumeName} segment ${s} has no replica to write`);
    await Promise.all(targets.map((t) => ctx.io.write(dataAddressOf(ctx.registry, t), e.volume.id, s, t.idSlot, epoch, r * rs, buf)));
    bytes += n;
    regions++;
  });
  const failed = results.find((x) => x.status === 'rejected') as PromiseRejectedResult | undefined;
  if (failed) throw failed.reason;
  if (regions > 0) {
    e = ctx.volumes.entry(volumeName);
    const targets = segmentReplicas(e.map, s).filter((x) => x.state !== 'stale');
    await Promise.all(targets.map((t) => ctx.io.flush(dataAddressOf(ctx.registry, t), e.volume.id, s, t.idSlot, epoch)));
  }
  return { bytes, regions };
}

function dataAddressOf(registry: Registry, r: SegmentReplica): string {
  const server = registry.serverOfDisk(r.diskId);
  if (!server) throw new Error(`disk ${r.diskId} has no server`);
  return server.dataAddress;
}

/** Regions written on every in-sync replica of the volume's segment s (undefined: none, or unallocated). */
async function ownWritten(ctx: SegmentCopyContext, e: VolumeEntry, s: number, count: number): Promise<Uint8Array | undefined> {
  const replicas = segmentReplicas(e.map, s).filter(usable);
  if (replicas.length === 0) return undefined;
  const maps = await Promise.all(replicas.map((r) => regionsOf(ctx, e, s, r)));
  const out = new Uint8Array(Math.ceil(count / 8));
  for (let i = 0; i < out.length; i++) out[i] = maps.reduce((acc, m) => acc & (m[i] ?? 0), 0xff);
  return out;
}

/** A chain level's written regions in segment s: the union over its in-sync replicas (one must answer). */
async function writtenUnion(ctx: SegmentCopyContext, e: VolumeEntry, s: number): Promise<Uint8Array | undefined> {
  const replicas = segmentReplicas(e.map, s).filter(usable);
  if (replicas.length === 0) return undefined;
  const got = await Promise.allSettled(replicas.map((r) => regionsOf(ctx, e, s, r)));
  const ok = got.filter((g) => g.status === 'fulfilled').map((g) => (g as PromiseFulfilledResult<Uint8Array>).value);
  if (ok.length === 0) throw new Error(`snapshot ${e.volume.name} segment ${s}: no replica answered GetChunkRegions (${errorMessage((got[0] as PromiseRejectedResult).reason)})`);
  const out = new Uint8Array(Math.max(...ok.map((m) => m.length)));
  for (const m of ok) for (let i = 0; i < m.length; i++) out[i]! |= m[i]!;
  return out;
}

async function regionsOf(ctx: SegmentCopyContext, e: VolumeEntry, s: number, r: SegmentReplica): Promise<Uint8Array> {
  const server = ctx.registry.serverOfDisk(r.diskId);
  if (!server) throw new Error(`disk ${r.diskId} has no server`);
  const got = await ctx.peers.node.getChunkRegions(server.controlAddress, { volumeId: e.volume.id, segment: s, slot: r.idSlot });
  // A bit of another size would be read as the wrong bytes: refuse rather than guess.
  if (Number(got.regionSize) !== ctx.registry.regionSize()) {
    throw new Error(`volume ${e.volume.name} segment ${s}: disk ${r.diskId} has ${String(got.regionSize)}-byte regions, the cluster ${ctx.registry.regionSize()}`);
  }
  return got.written;
}

/** Reads region r ([so, so + dest.length)) of segment s as the chain holds it; false: all zeros (nothing to copy). */
async function readChain(ctx: SegmentCopyContext, chain: readonly Level[], bits: readonly (Uint8Array | undefined)[], s: number, so: number, r: number, dest: Buffer): Promise<boolean> {
  for (let i = 0; i < chain.length; i++) {
    const l = chain[i]!;
    const replicas = segmentReplicas(l.entry.map, s).filter(usable);
    if (replicas.length === 0) continue;
    if (l.hasBacking && !testBit(bits[i] ?? new Uint8Array(0), r)) continue;
    let last: unknown;
    for (const rep of replicas) {
      try {
        await ctx.io.read(dataAddressOf(ctx.registry, rep), l.entry.volume.id, s, rep.idSlot, so, dest);
        return !dest.every((b) => b === 0);
      } catch (err) {
        last = err;
      }
    }
    throw new Error(`snapshot ${l.entry.volume.name} segment ${s}: no replica could be read (${errorMessage(last)})`);
  }
  return false;
}
