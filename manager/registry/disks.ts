import { ConflictError, InvalidArgumentError, NotFoundError } from '../../shared/errors.js';
import { moduleLogger } from '../../shared/logger.js';
import { formatSize } from '../../shared/units.js';
import { defaultRegionSize } from '../../shared/region-bitmap.js';
import type { DiskInfo__Output } from '../../proto/generated/vsky/storage/DiskInfo.js';
import { claimDiskIds } from '../int-id-claims.js';
import type { StoreBatch } from '../store.js';
import type { DiskRecord, DiskState, ServerRecord } from '../types.js';
import type { RegistryState } from './state.js';

// Disks: added by an admin (AddDisk) or reported by their node (at
// registration and in heartbeats), failed by an admin (FailDisk) or by their
// node, drained before removal. Each state change is logged, recorded as an
// event in the caller's batch and mirrored in the placement model; a disk
// that stops being active tells `hooks.disksLost` in that same batch.

const log = moduleLogger('manager.registry');

export function disksOf(st: RegistryState, serverId: string): DiskRecord[] {
  return [...st.disks.values()].filter((d) => d.serverId === serverId);
}

/** A disk's region size from its node's report (0 from an older node: the size before 4 KiB regions). */
function reportedRegionSize(info: DiskInfo__Output): number {
  return Number(info.regionSize) || defaultRegionSize(info.chunkSize);
}

/** A disk record's region size (records from before 4 KiB regions have none: chunkSize / 4096). */
export function diskRegionSize(d: DiskRecord): number {
  return d.regionSize ?? defaultRegionSize(d.chunkSize);
}

/**
 * The cluster's region size (bytes per written-region bit), one for all its
 * disks, so every replica of a chunk and every head agree on what a bit
 * covers (docs/snapshots.md "Written regions of 4 KiB"): that of the disks it
 * has, else chunk size / 4096 for a new one (the default of new disks; 4 KiB
 * regions are the nodes' opt-in, --region-size 4K). A disk of another size is refused or failed, as a disk
 * of another chunk size is.
 */
export function clusterRegionSize(st: RegistryState): number {
  let any: DiskRecord | undefined;
  for (const d of st.disks.values()) {
    if (d.chunkSize !== st.opts.chunkSize) continue;
    if (d.state !== 'removed') return diskRegionSize(d);
    any ??= d;
  }
  return any ? diskRegionSize(any) : defaultRegionSize(st.opts.chunkSize);
}

/**
 * Bytes in written regions of a volume's chunks, every copy, as the nodes
 * last reported them (heartbeats; not persisted: 0 until they report).
 */
export function writtenBytes(st: RegistryState, volumeId: number): number {
  let n = 0;
  for (const [diskId, byVolume] of st.written) {
    if (st.disks.get(diskId)?.state === 'removed') continue;
    n += byVolume.get(volumeId) ?? 0;
  }
  return n;
}

/** AddDisk: the node formats/opens the disk with the cluster chunk size; the manager records it. */
export async function addDisk(st: RegistryState, s: ServerRecord, path: string, size: number): Promise<DiskRecord> {
  const chunkSize = st.opts.chunkSize;
  if (!path) throw new InvalidArgumentError('no disk path given: name a file or block device on the server');
  if (!Number.isSafeInteger(size) || size < 0) throw new InvalidArgumentError(`invalid disk size ${size}`);
  if (size > 0 && size < chunkSize) {
    throw new InvalidArgumentError(`disk size ${formatSize(size)} is smaller than one chunk (${formatSize(chunkSize)}); give a larger size`);
  }
  if (s.state !== 'active') throw new ConflictError(`server ${s.name} is ${s.state}; bring it back (or vsky server add) before adding disks`);
  const regionSize = clusterRegionSize(st);
  const info = await st.peers.node.addDisk(s.controlAddress, { path, size, chunkSize, regionSize });
  if (info.clusterId && info.clusterId !== st.store.clusterId) {
    throw new ConflictError(`disk ${path} on ${s.name} belongs to cluster ${info.clusterId}, not this one (${st.store.clusterId}): not adopted; `
      + 'remove it from the node, or zero its first 4 KiB to reuse it (its data is lost)', { path });
  }
  if (!info.diskId) throw new InvalidArgumentError(`server ${s.name} returned no disk id for ${path}`);
  if (info.chunkSize !== chunkSize) {
    throw new ConflictError(`disk ${path} on ${s.name} is formatted with ${formatSize(info.chunkSize)} chunks but the cluster uses ${formatSize(chunkSize)}; use another disk or reformat it`);
  }
  if (reportedRegionSize(info) !== regionSize) {
    throw new ConflictError(`disk ${path} on ${s.name} is formatted with ${formatSize(reportedRegionSize(info))} written regions but the cluster uses `
      + `${formatSize(regionSize)}; use another disk, or reformat it (zero its first 4 KiB) so the node formats it with the cluster's size`);
  }
  const batch = st.store.batch();
  const existing = st.disks.get(info.diskId);
  if (existing?.state === 'removed' || existing?.adminFailed) {
    existing.adminFailed = false;
    setDiskState(st, existing, 'active', 're-added by an admin', batch);
  }
  if (existing?.draining) setDraining(st, existing, false, 'AddDisk: the drain is cancelled', batch);
  applyDiskReport(st, s, [info], batch, false);
  const d = st.disks.get(info.diskId)!;
  batch.putDisk(d);
  await st.store.write(batch);
  log.info({ diskId: d.id, serverId: s.id, path, chunkCount: d.chunkCount, state: d.state }, 'disk added');
  return d;
}

/** FailDisk: the disk is gone; it stays failed until vsky disk add. */
export async function failDisk(st: RegistryState, diskId: string, reason: string): Promise<DiskRecord> {
  if (!diskId) throw new InvalidArgumentError('no disk id given: see vsky disk list');
  const d = st.disks.get(diskId);
  if (!d) throw new NotFoundError(`no disk "${diskId}": see vsky disk list`, { diskId });
  if (d.state === 'removed') throw new ConflictError(`disk ${d.id} was removed from the cluster; nothing to fail`);
  const batch = st.store.batch();
  d.adminFailed = true;
  batch.putDisk(d);
  setDiskState(st, d, 'failed', `failed by an admin: ${reason || 'no reason given'}`, batch);
  await st.store.write(batch);
  st.hooks?.diskChanged?.(d); // also when it had failed by itself before: its node keeps the admin's word
  return d;
}

/** Starts or stops draining a disk (manager/resync/drains.ts): a draining disk takes no new chunks. */
export function setDraining(st: RegistryState, d: DiskRecord, draining: boolean, reason: string, batch: StoreBatch): void {
  if (Boolean(d.draining) === draining) return;
  if (draining) d.draining = true;
  else delete d.draining;
  const s = st.servers.get(d.serverId);
  if (!draining && s?.draining) {
    delete s.draining; // a disk of it stays: the server is no longer being removed
    batch.putServer(s);
  }
  batch.putDisk(d);
  batch.event(draining ? 'drain.started' : 'drain.cancelled', `disk:${d.id}`, reason, { server: s?.name ?? d.serverId, path: d.path });
  syncDisk(st, d);
  log.info({ diskId: d.id, serverId: d.serverId, path: d.path, draining, reason }, `disk ${d.id} ${draining ? 'draining' : 'no longer draining'}: ${reason}`);
  st.hooks?.changed(`disk ${d.id} ${draining ? 'draining' : 'no longer draining'}`);
}

export function setDiskState(st: RegistryState, d: DiskRecord, state: DiskState, reason: string, batch: StoreBatch): void {
  if (d.state === state) return;
  const line = { diskId: d.id, serverId: d.serverId, path: d.path, from: d.state, to: state, reason };
  if (state === 'active') log.info(line, `disk ${d.id} ${state}: ${reason}`);
  else log.warn(line, `disk ${d.id} ${state}: ${reason}`);
  d.state = state;
  d.stateReason = reason;
  batch.putDisk(d);
  batch.event(state === 'active' ? 'disk.up' : `disk.${state}`, `disk:${d.id}`, reason, { server: st.servers.get(d.serverId)?.name ?? d.serverId, path: d.path, from: line.from });
  syncDisk(st, d);
  if (state !== 'active') st.hooks?.disksLost(new Set([d.id]), `disk ${d.id} (${d.path}) ${state}: ${reason}`, batch);
  st.hooks?.changed(`disk ${d.id} ${state}`);
}

/** Folds a node's disk list into the records; with `complete`, known disks it omits are failed. */
export function applyDiskReport(st: RegistryState, s: ServerRecord, reported: DiskInfo__Output[], batch: StoreBatch, complete: boolean): void {
  const seen = new Set<string>();
  for (const info of reported) {
    if (!info.diskId) {
      log.warn({ serverId: s.id, path: info.path }, 'node reported a disk without an id; ignored');
      continue;
    }
    seen.add(info.diskId);
    st.hooks?.diskReported?.(info.diskId, info.note);
    st.written.set(info.diskId, new Map((info.written ?? []).map((w) => [w.volumeId, Number(w.bytes)])));
    const d = st.disks.get(info.diskId) ?? recordNewDisk(st, s, info, batch);
    if (d.state === 'removed') continue; // only AddDisk brings a removed disk back
    applyOneDisk(st, s, d, info, batch);
  }
  if (!complete) return;
  for (const d of st.disks.values()) {
    if (d.serverId === s.id && !seen.has(d.id) && d.state === 'active') {
      setDiskState(st, d, 'failed', 'not reported by its node at registration', batch);
    }
  }
}

function recordNewDisk(st: RegistryState, s: ServerRecord, info: DiskInfo__Output, batch: StoreBatch): DiskRecord {
  const d: DiskRecord = {
    id: info.diskId, serverId: s.id, path: info.path, chunkSize: info.chunkSize, regionSize: reportedRegionSize(info), chunkCount: info.chunkCount,
    state: 'active', stateReason: 'added', addedMs: st.now(),
  };
  st.disks.set(d.id, d);
  batch.putDisk(d);
  log.info({ diskId: d.id, serverId: s.id, path: d.path, chunkCount: d.chunkCount }, 'disk recorded');
  batch.event('disk.added', `disk:${d.id}`, `reported by server ${s.name}`, { server: s.name, path: d.path, chunks: d.chunkCount, chunkSize: d.chunkSize });
  st.hooks?.changed('disk added');
  return d;
}

/** One reported disk folded into its record: where it is, its size, whether its node says it failed. */
function applyOneDisk(st: RegistryState, s: ServerRecord, d: DiskRecord, info: DiskInfo__Output, batch: StoreBatch): void {
  const before = JSON.stringify(d);
  if (d.serverId !== s.id) log.warn({ diskId: d.id, from: d.serverId, to: s.id }, 'disk moved to another server');
  Object.assign(d, { serverId: s.id, path: info.path, chunkSize: info.chunkSize, regionSize: reportedRegionSize(info) });
  const clusterRs = clusterRegionSize(st);
  const sizeProblem = info.chunkSize !== st.opts.chunkSize
    ? `chunk size ${info.chunkSize} differs from the cluster's ${st.opts.chunkSize}`
    : d.regionSize !== clusterRs ? `region size ${d.regionSize} differs from the cluster's ${clusterRs}` : '';
  claimDiskIds(d, info, st.store.clusterId);
  if (info.chunkCount !== d.chunkCount) {
    if (st.model.setDisk(d.id, s.id, info.chunkCount, false)) d.chunkCount = info.chunkCount;
    else log.warn({ diskId: d.id, reported: info.chunkCount, kept: d.chunkCount }, 'node reports fewer chunks than the disk holds; keeping the old count');
  }
  if (sizeProblem) setDiskState(st, d, 'failed', sizeProblem, batch);
  else if (info.state === 'failed') setDiskState(st, d, 'failed', 'its node reports it failed', batch);
  else if (d.state === 'failed' && !d.adminFailed) setDiskState(st, d, 'active', 'its node reports it active', batch);
  if (JSON.stringify(d) !== before) batch.putDisk(d);
  syncDisk(st, d);
}

/** Keeps the placement model in step with the disk's state (a draining disk takes no new chunks). */
export function syncDisk(st: RegistryState, d: DiskRecord): void {
  const eligible = d.state === 'active' && !d.draining && d.chunkSize === st.opts.chunkSize && diskRegionSize(d) === clusterRegionSize(st);
  if (!st.model.setDisk(d.id, d.serverId, d.chunkCount, eligible)) {
    log.warn({ diskId: d.id, chunkCount: d.chunkCount }, 'disk record shrank below chunks in use');
  }
  if (d.badChunks) st.model.markBad(d.id, d.badChunks);
  st.hooks?.diskChanged?.(d);
}
