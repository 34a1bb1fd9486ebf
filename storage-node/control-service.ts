import { resolve } from 'node:path';
import { REGION_BITS_PER_CHUNK } from '../shared/constants.js';
import { InvalidArgumentError } from '../shared/errors.js';
import { unary } from '../shared/grpc.js';
import { failPoint } from '../shared/fault-points.js';
import { moduleLogger } from '../shared/logger.js';
import type { StorageNodeHandlers } from '../proto/generated/vsky/storage/StorageNode.js';
import type { DiskInfo } from '../proto/generated/vsky/storage/DiskInfo.js';
import type { NodeInfo } from '../proto/generated/vsky/storage/NodeInfo.js';
import type { ChunkRecord } from '../proto/generated/vsky/storage/ChunkRecord.js';
import type { ChunkStore } from './chunk-store.js';
import type { Disk } from './disk.js';
import { LEGALITY_NAMES, Legality, type JobKindName, type JobOutcomeName } from './disk-format/chunk-record.js';
import { NoChunkError } from '../shared/data-protocol/status.js';
import type { NodeIntIds } from './int-ids.js';
import type { NodeState } from './node-state.js';
import { countSet, regionSizeProblem } from '../shared/region-bitmap.js';
import type { ResyncJobs } from './copy/resync-jobs.js';
import { markVolumeDeleting, type ManagerNotes } from './manager-notes.js';

// The storage node's gRPC control service (proto/storage_node.proto). Each
// handler validates its request and delegates to the ChunkStore; typed errors
// become gRPC statuses in shared/grpc.ts (unary()).

/** What the control service (and the manager link) know about this node. */
export interface NodeContext {
  readonly store: ChunkStore;
  readonly state: NodeState;
  /** The VastSky-style ids the manager gave (reported at registration). */
  readonly intIds: NodeIntIds;
  /** Peer-to-peer resync copies running on this node (CopyChunk). */
  readonly resyncs: ResyncJobs;
  /** What the manager keeps here for a rebuild from storage: volume notes (access rules), disk notes (admin state). */
  readonly notes: ManagerNotes;
  readonly name: string;
  readonly labels: Record<string, string>;
  /** Chunk size for formatting new disks when a request does not say. */
  readonly chunkSize: number;
  /** Region size for formatting new disks when a request does not say (0/undefined: chunk size / 4096, defaultRegionSize). */
  readonly regionSize?: number;
  dataAddress: string;
  controlAddress: string;
}

export function diskInfo(disk: Disk, ids?: NodeIntIds, notes?: ManagerNotes): DiskInfo {
  // Ids heard from the manager of the cluster the disk belongs to, else none.
  const own = ids && ids.clusterId && ids.clusterId === disk.sb.clusterId ? ids.disk(disk.id) : undefined;
  return {
    diskId: disk.id,
    path: disk.path,
    chunkSize: disk.sb.chunkSize,
    regionSize: disk.sb.chunkSize / disk.sb.regionBits,
    chunkCount: disk.sb.chunkCount,
    usedChunks: disk.usedChunks(),
    state: disk.reportedState,
    size: disk.sb.diskSize,
    clusterId: disk.sb.clusterId,
    pdskid: own?.pdskid ?? 0,
    dextIds: own?.dextIds ?? [],
    note: notes?.diskNote(disk.id),
    written: writtenByVolume(disk),
  };
}

/** Bytes in written regions of the disk's chunks, per volume (a popcount of 512-byte bitmaps per chunk, once per heartbeat). */
function writtenByVolume(disk: Disk): { volumeId: number; bytes: number }[] {
  const by = new Map<number, number>();
  for (const c of disk.chunks) {
    if (!c.owned) continue;
    const n = countSet(c.rec.bitmap);
    if (n > 0) by.set(c.rec.volumeId, (by.get(c.rec.volumeId) ?? 0) + Math.min(n * c.regionSize, c.size));
  }
  return [...by].map(([volumeId, bytes]) => ({ volumeId, bytes }));
}

export function nodeInfo(ctx: NodeContext): NodeInfo {
  return {
    serverId: ctx.state.serverId,
    name: ctx.name,
    dataAddress: ctx.dataAddress,
    controlAddress: ctx.controlAddress,
    labels: ctx.labels,
    disks: ctx.store.diskList().map((d) => diskInfo(d, ctx.intIds, ctx.notes)),
    ssvrid: ctx.intIds.ssvrid,
    intIdsClusterId: ctx.intIds.clusterId,
    nextIntIds: ctx.intIds.next,
    note: ctx.notes.serverNote(),
  };
}

/** Opens (creating/formatting when new) a disk, serves it and remembers it for restarts. */
export async function addDisk(ctx: NodeContext, path: string, size: number, chunkSize: number, regionSize = 0): Promise<Disk> {
  if (path === '') throw new InvalidArgumentError('AddDisk: a path is required');
  if (!Number.isSafeInteger(size) || size < 0) throw new InvalidArgumentError(`AddDisk: invalid size ${size}`);
  const cs = chunkSize || ctx.chunkSize;
  if (!Number.isSafeInteger(cs) || cs <= 0 || cs % 4096 !== 0 || cs % REGION_BITS_PER_CHUNK !== 0) {
    throw new InvalidArgumentError(`AddDisk: chunk size ${cs} must be a positive multiple of 4096 and of ${REGION_BITS_PER_CHUNK}`);
  }
  const abs = resolve(path);
  const rs = regionSize || ctx.regionSize || undefined;
  const problem = rs === undefined ? '' : regionSizeProblem(cs, rs);
  if (problem) throw new InvalidArgumentError(`AddDisk: ${problem}`);
  const disk = await ctx.store.openDisk(abs, { size: size || undefined, chunkSize: cs, regionSize: rs });
  await ctx.state.rememberDisk(abs);
  return disk;
}

export function createControlService(ctx: NodeContext): StorageNodeHandlers {
  const log = moduleLogger('control');
  return {
    GetInfo: unary(async () => nodeInfo(ctx)),

    AddDisk: unary(async (req) => {
      const disk = await addDisk(ctx, req.path, req.size, req.chunkSize, Number(req.regionSize));
      log.info({ disk: disk.id, path: disk.path }, 'AddDisk');
      return diskInfo(disk, ctx.intIds, ctx.notes);
    }),

    RemoveDisk: unary(async (req) => {
      const disk = await ctx.store.removeDisk(req.diskId, req.force);
      await ctx.state.forgetDisk(disk.path);
      return {};
    }),

    AllocateChunk: unary(async (req) => {
      const id = req.identity;
      if (!id) throw new InvalidArgumentError('AllocateChunk: identity is required');
      failPoint('storage-node.allocate', id.volumeName);
      await ctx.store.allocate(req.diskId, req.chunkIndex, id);
      log.info({ disk: req.diskId, chunk: req.chunkIndex, volumeId: id.volumeId, segment: id.segment, slot: id.slot }, 'chunk allocated');
      return {};
    }),

    FreeChunk: unary(async (req) => {
      await ctx.store.free(req.diskId, req.chunkIndex, req.volumeId);
      log.info({ disk: req.diskId, chunk: req.chunkIndex, volumeId: req.volumeId }, 'chunk freed');
      return {};
    }),

    ListChunks: unary(async (req) => {
      const chunks: ChunkRecord[] = ctx.store.listChunks(req.diskId || undefined).map((c) => ({
        diskId: c.disk.id,
        chunkIndex: c.index,
        identity: {
          volumeId: c.rec.volumeId, volumeName: c.rec.volumeName, volumeSize: c.rec.volumeSize,
          segment: c.rec.segment, slot: c.rec.slot, segmentCount: c.rec.segmentCount, replicas: c.rec.replicas,
          generation: c.rec.generation, epoch: c.rec.epoch, staleSlots: c.rec.staleSlots, mapVersion: c.rec.mapVersion,
          legality: legalityName(c.rec.legality), jobId: c.rec.jobId, jobKind: c.rec.jobKind, jobOutcome: c.rec.jobOutcome,
          lvolid: c.rec.lvolid, thin: c.rec.thin, readOnly: c.rec.readOnly,
        },
        writtenRegions: countSet(c.rec.bitmap),
      }));
      return { chunks, volumeNotes: ctx.notes.volumeNotes(), deletedVolumes: ctx.notes.deletedVolumes() };
    }),

    KeepVolumeNote: unary(async (req) => {
      await ctx.notes.keepVolume(req);
      log.debug({ volumeId: req.volumeId, version: req.version }, 'volume note kept');
      return {};
    }),

    MarkVolumeDeleting: unary(async (req) => {
      const chunks = await markVolumeDeleting(ctx.store, ctx.notes, req.volumeId, req.epoch);
      await ctx.notes.forgetVolume(req.volumeId);
      log.info({ volumeId: req.volumeId, epoch: req.epoch, chunks }, 'volume marked DELETING');
      return { chunks };
    }),

    ForgetDeletedVolumes: unary(async (req) => {
      await ctx.notes.forgetDeleted(req.volumeIds);
      log.debug({ volumes: req.volumeIds.length }, 'tombstones dropped');
      return {};
    }),

    KeepServerNote: unary(async (req) => {
      await ctx.notes.keepServer(req);
      return {};
    }),

    KeepDiskNote: unary(async (req) => {
      await ctx.notes.keepDisk(req);
      return {};
    }),

    NoteSegment: unary(async (req) => {
      const n = await ctx.store.noteSegment(req.volumeId, req.segment, req.staleSlots, req.mapVersion, req.epoch);
      log.debug({ volumeId: req.volumeId, segment: req.segment, staleSlots: req.staleSlots, mapVersion: req.mapVersion, chunks: n }, 'segment note recorded');
      return {};
    }),

    SetVolumeState: unary(async (req) => {
      if (req.legality !== 'LEGAL' && req.legality !== 'DIRTY') throw new InvalidArgumentError(`SetVolumeState: legality must be LEGAL or DIRTY, not "${req.legality}"`);
      const chunks = await ctx.store.setVolumeState(req.volumeId, req.epoch, req.expectedGeneration, {
        generation: req.generation, legality: req.legality === 'DIRTY' ? Legality.DIRTY : Legality.LEGAL,
        jobId: req.jobId, jobKind: req.jobKind as JobKindName, jobOutcome: req.jobOutcome as JobOutcomeName,
        volumeSize: req.volumeSize, segmentCount: req.segmentCount,
      }, req.raiseLagging);
      log.info({ volumeId: req.volumeId, epoch: req.epoch, from: req.expectedGeneration, to: req.generation, legality: req.legality, job: req.jobId, kind: req.jobKind, outcome: req.jobOutcome, chunks }, 'volume state set');
      return { chunks };
    }),

    ReassignChunk: unary(async (req) => {
      if (!req.identity) throw new InvalidArgumentError('ReassignChunk needs the new identity');
      await ctx.store.reassign(req.diskId, req.chunkIndex, req.fromVolumeId, req.fromEpoch, req.identity);
      log.info({ diskId: req.diskId, chunkIndex: req.chunkIndex, from: req.fromVolumeId, to: req.identity.volumeId, segment: req.identity.segment }, 'chunk reassigned (snapshot)');
      return {};
    }),

    GetChunkRegions: unary(async (req) => {
      const chunk = ctx.store.lookup(req.volumeId, req.segment, req.slot);
      if (!chunk) {
        throw new NoChunkError(`no chunk for volume ${req.volumeId} segment ${req.segment} slot ${req.slot} on this node`,
          { volumeId: req.volumeId, segment: req.segment, slot: req.slot });
      }
      // Copies, not views: the data path keeps changing the maps while the reply is serialised.
      return { regionSize: chunk.regionSize, written: Buffer.from(chunk.rec.bitmap), dirty: Buffer.from(chunk.rec.dirty) };
    }),

    CopyChunk: unary(async (req) => {
      ctx.resyncs.start(req);
      return {};
    }),

    SetDiskFault: unary(async (req) => {
      const disk = ctx.store.disk(req.diskId);
      // Loud on purpose (disk.ts logs too): fault injection left on looks exactly like a dead disk.
      log.warn({ disk: disk.id, path: disk.path, faulty: req.faulty }, req.faulty
        ? 'SetDiskFault: FAULT INJECTION ON, every I/O on this disk now fails'
        : 'SetDiskFault: fault injection off');
      disk.setFaulty(req.faulty);
      return {};
    }),
  };
}

function legalityName(l: number): string {
  return LEGALITY_NAMES[l] ?? 'LEGAL';
}
