import { nextCounter } from '../../shared/counters.js';
import { ConflictError, StaleGenerationError } from '../../shared/errors.js';
import { crashPoint } from '../../shared/fault-points.js';
import { moduleLogger } from '../../shared/logger.js';
import { formatSize } from '../../shared/units.js';
import type { PeerClients } from '../node-clients.js';
import type { Registry } from '../registry.js';
import type { ManagerStore } from '../store.js';
import type { ChunkMapRecord, VolumeRecord } from '../types.js';
import type { VolumeEntry, Volumes } from '../volumes.js';
import type { CopyJobs } from './copy.js';
import { markDirty } from './dirty.js';
import type { JobRecord } from './records.js';
import { casNodes, firstError, trustedNodes, type VolumeStateCas } from './node-cas.js';
import { growOnline, onlineHolder } from './online-resize.js';
import { allocateGrowth, appendSegments, checkResize, type ResizeContext } from './resize-chunks.js';
import { wipeDirty, wipeReplicas, type WipeContext } from './wipe.js';

// The steps every storage job takes with its volume held (docs/jobs.md; the
// runner, runner.ts, accepts, tracks and ends jobs): take the lease (a new
// epoch; an attached volume only for an online resize, under its holder's
// epoch), CAS generation == g + DIRTY on every node, the work (a wipe or a
// resize by the manager; a copy's host does its own work, copy.ts), then CAS
// g+1 + LEGAL + the job's record, and commit the records in one batch. Every
// step checks for an abort or a stopping manager first.

const log = moduleLogger('manager.jobs');

/** What the steps use of the runner. */
export interface JobStepsContext {
  store: ManagerStore;
  registry: Registry;
  volumes: Volumes;
  peers: PeerClients;
  copies: CopyJobs;
  resize: ResizeContext;
  wipe: WipeContext;
  /** Jobs whose DIRTY compare-and-set was sent (the runner's failure path reads it). */
  dirtied: Set<string>;
  mapChanged?: (volumeId: number) => void;
  now(): number;
  /** Throws when the job was aborted or the manager stops. */
  checkAbort(j: JobRecord): void;
  /** CAS on every trusted node of the map. */
  cas(map: ChunkMapRecord, req: VolumeStateCas, volumeId: number): Promise<void>;
  /** The job succeeded: its volume is free again. */
  succeeded(j: JobRecord): void;
}

/** The job's structure, the volume held (volumes.exclusive): lease, CAS g + DIRTY, work, CAS g+1 + LEGAL. */
export async function runJobSteps(x: JobStepsContext, j: JobRecord, e: VolumeEntry): Promise<void> {
  const { volume } = e;
  const online = j.kind === 'resize' && Boolean(volume.attachedHead);
  if (!online && (volume.attachedHead || volume.standbyHead)) {
    const head = x.registry.head(volume.attachedHead || volume.standbyHead || '')?.name ?? volume.attachedHead;
    throw new ConflictError(`volume ${volume.name} is attached to head ${head}: ${j.kind} jobs run on detached volumes for now; detach it first (vsky volume detach ${volume.name})`);
  }
  const claimWait = x.registry.claimWaitMs(volume);
  if (claimWait > 0) {
    throw new ConflictError(`volume ${volume.name} was rebuilt from storage and a head may still hold it: a job may take its lease in ${(claimWait / 1000).toFixed(1)} s; nothing was touched`);
  }
  const g = j.expectedGeneration;
  if (volume.generation !== g) {
    throw new StaleGenerationError(`generation mismatch: volume ${volume.name} is at generation ${volume.generation}, the job expected ${g}; nothing was touched`, { expected: g, actual: volume.generation });
  }
  if (j.kind === 'resize') checkResize(volume, j.args);
  if (j.kind === 'copy') x.copies.checkDetached(x.volumes.entry(j.args.source ?? '').volume, 'source');
  x.checkAbort(j);
  if (online) {
    // The holder keeps the lease: the job works under its epoch (online-resize.ts).
    j.epoch = onlineHolder(x.resize, volume).epoch;
    j.online = true;
  } else {
    // The lease: a new epoch, durable before any node hears of it.
    volume.epoch = nextCounter(volume.epoch, `volume ${volume.name}'s lease epoch`);
    j.epoch = volume.epoch;
  }
  j.state = 'running';
  j.startedMs = x.now();
  await x.store.write(x.store.batch().putVolume(volume).putJob(j));
  const stamp = { jobId: j.id, jobKind: j.kind };
  // CAS generation == g and mark DIRTY, on every node, under the job's epoch.
  x.dirtied.add(j.id);
  // Nodes that missed map-only generation bumps (resyncs, stale marks) are raised to g.
  const dirtyCas: VolumeStateCas = { epoch: j.epoch, expectedGeneration: g, generation: g, legality: 'DIRTY', ...stamp, jobOutcome: 'running', raiseLagging: true };
  // A wipe goes on without the nodes that do not answer (their replicas are marked stale, wipe.ts).
  const nodes = j.kind === 'wipe' ? await wipeDirty(x.wipe, j, e, dirtyCas) : trustedNodes(x.registry, e.map);
  if (j.kind !== 'wipe') await x.cas(e.map, dirtyCas, volume.id);
  crashPoint('manager.job.dirty');
  x.checkAbort(j);
  if (j.kind === 'copy') return; // its host copies and writes the final CAS (copy.ts)
  let next: { volume: VolumeRecord; map?: ChunkMapRecord } = { volume: { ...volume, generation: g + 1 } };
  if (j.kind === 'wipe') await wipeReplicas(x.wipe, j, e, nodes);
  else if (online) next = await growOnlineJob(x, j, e);
  else next = await resizeDetached(x, j, e);
  crashPoint('manager.job.worked');
  if (!online) x.checkAbort(j); // online: the holder has the new size; too late to abort
  // Done: g+1, LEGAL, the job's record, in one CAS per node, conditional on the epoch.
  // A resize's CAS also gives every chunk's identity the new size and segment count (a rebuild from storage reads them).
  const shape = j.kind === 'resize' ? { volumeSize: next.volume.size, segmentCount: next.volume.segmentCount } : {};
  const done: VolumeStateCas = { epoch: j.epoch, expectedGeneration: g, generation: g + 1, legality: 'LEGAL', ...stamp, jobOutcome: 'succeeded', ...shape };
  if (j.kind === 'wipe') firstError(await casNodes(x.peers, [...nodes.keys()], volume.id, done));
  else await x.cas(next.map ?? e.map, done, volume.id);
  crashPoint('manager.job.committed');
  next.volume.generation = g + 1;
  markDirty(next.volume, j, false);
  j.done = j.total;
  const batch = x.store.batch().putVolume(next.volume);
  if (next.map) batch.putChunkMap(next.map);
  const grew = j.kind === 'resize' ? `, size ${formatSize(next.volume.size)}${online ? ' (online)' : ''}` : '';
  batch.event('job.succeeded', `volume:${volume.name}`, `${j.kind} job ${j.id} succeeded: generation ${g} -> ${g + 1}${grew}`, { job: j.id, kind: j.kind, generation: g + 1, epoch: j.epoch, online });
  j.state = 'succeeded';
  j.endedMs = x.now();
  batch.putJob(j);
  await x.store.write(batch);
  Object.assign(volume, next.volume);
  markDirty(volume, j, false); // Object.assign keeps a property next.volume no longer has
  if (next.map) Object.assign(e.map, next.map);
  x.succeeded(j);
  log.info({ job: j.id, kind: j.kind, volume: volume.name, generation: g + 1, ms: j.endedMs - j.startedMs }, 'job succeeded');
}

/** Grow, detached: new segments placed like a create's and allocated under the job's epoch; returns the new records (committed by the caller). */
async function resizeDetached(x: JobStepsContext, j: JobRecord, e: VolumeEntry): Promise<{ volume: VolumeRecord; map: ChunkMapRecord }> {
  const { volume, map } = e;
  const size = Number(j.args.size);
  const segmentCount = Math.ceil(size / volume.chunkSize);
  const placed = await allocateGrowth(x.resize, j, volume, size, j.epoch);
  const next = structuredClone(map);
  if (segmentCount > volume.segmentCount) appendSegments(next, volume.segmentCount, segmentCount, placed);
  next.segmentCount = segmentCount;
  return { volume: { ...volume, size, segmentCount }, map: next };
}

/** Grow, attached: the holder gets the map before the final CAS (online-resize.ts); the records are changed in place. */
async function growOnlineJob(x: JobStepsContext, j: JobRecord, e: VolumeEntry): Promise<{ volume: VolumeRecord; map: ChunkMapRecord }> {
  await growOnline({ ...x.resize, checkAbort: (job) => x.checkAbort(job), mapChanged: x.mapChanged }, j, e);
  return { volume: e.volume, map: e.map };
}
