import type { JobInfo__Output as JobInfo } from '../../proto/generated/vsky/manager/JobInfo.js';
import type { EventLog } from '../events.js';
import type { Registry } from '../registry.js';
import type { ResyncRecord } from '../types.js';
import type { Volumes } from '../volumes.js';
import type { Resyncs } from './resyncs.js';

// Resyncs and drain copies in the storage-job views (docs/jobs.md "Resyncs
// and drains in the job views"): `vsky job list/show/watch` and gRPC
// ListJobs/GetJob show each queued or running one as a read-only job, kind
// `resync` (a rebuild) or `drain`, id `resync:rN` / `drain:rN`, with its
// bytes, rate (from its start to its last report) and executor. They are
// not full storage jobs: a resync keeps the volume's lease holder (it is
// dispatched to the head holding it, or to a node under an epoch of its
// own), runs per segment, is re-planned by the scheduler after failures and
// is cancelled by a new map, none of which fits a job's lease-and-CAS
// structure; they cannot be aborted or submitted as jobs. Once one ends its
// record is gone; GetJob then answers from the event log (resync.finished:
// `succeeded`, with the generation move it made in args).

const KIND_PREFIX = { rebuild: 'resync', drain: 'drain' } as const;

function viewId(r: ResyncRecord): string {
  return `${KIND_PREFIX[r.kind ?? 'rebuild']}:${r.id}`;
}

/** Whether `id` names a resync or drain view. */
export function isResyncJobId(id: string): boolean {
  return /^(resync|drain):r\d+$/.test(id);
}

/** Queued and running resyncs and drains as job views (`volume` '': every volume). */
export function resyncJobViews(resyncs: Resyncs, volumes: Volumes, registry: Registry, volume = ''): JobInfo[] {
  const out: JobInfo[] = [];
  for (const r of resyncs.book.all()) {
    const entry = volumes.byVolumeId(r.volumeId);
    if (!entry || (volume && entry.volume.name !== volume)) continue;
    const rt = resyncs.runtimeOf(r.id);
    const [who, id] = r.executor.split(':') as [string, string | undefined];
    const host = !id ? '' : who === 'head' ? `head:${registry.head(id)?.name ?? id}` : `node:${registry.server(id)?.name ?? id}`;
    out.push({
      jobId: viewId(r), kind: KIND_PREFIX[r.kind ?? 'rebuild'], volume: entry.volume.name, volumeId: r.volumeId, expectedGeneration: entry.volume.generation,
      args: { segment: String(r.segment), slot: String(r.slot), target: `${r.target.diskId}#${r.target.chunkIndex}`, sources: r.sources.join(','), attempt: String(r.attempt) },
      state: r.state === 'running' ? 'running' : 'pending', error: r.lastError, epoch: r.epoch,
      done: r.bytesCopied, total: Math.max(rt?.bytesExpected ?? entry.volume.chunkSize, r.bytesCopied),
      createdMs: r.createdMs, startedMs: r.startedMs, endedMs: 0, host, updatedMs: r.state === 'running' ? rt?.lastProgressMs ?? 0 : 0,
      waiting: r.state === 'queued' ? 'queued: a disk at its per-disk limit, no usable source, or the volume busy (vsky resync list)' : '',
      copied: 0,
    });
  }
  return out.sort((a, b) => a.createdMs - b.createdMs || a.jobId.localeCompare(b.jobId));
}

/** One resync or drain view: queued or running from the book, ended from the event log; undefined if neither knows it. */
export async function resyncJobView(resyncs: Resyncs, volumes: Volumes, registry: Registry, events: EventLog | undefined, id: string): Promise<JobInfo | undefined> {
  const live = resyncJobViews(resyncs, volumes, registry).find((j) => j.jobId === id);
  if (live || !events) return live;
  const rid = id.slice(id.indexOf(':') + 1);
  const ended = (await events.list({ kind: 'resync', limit: 10_000 })).reverse().find((e) => e.details.resync === rid && e.kind === 'resync.finished');
  if (!ended) return undefined;
  const d = ended.details;
  const generation = Number(d.generation ?? 0);
  const volumeName = ended.target.replace(/^volume:/, '');
  return {
    jobId: id, kind: d.kind === 'drain' ? 'drain' : 'resync', volume: volumeName, volumeId: volumes.find(volumeName)?.volume.id ?? 0,
    expectedGeneration: generation - 1, args: { segment: String(d.segment ?? ''), slot: String(d.slot ?? ''), target: String(d.target ?? ''), generation: `${generation - 1} -> ${generation}` },
    state: 'succeeded', error: '', epoch: 0, done: Number(d.bytes ?? 0), total: Number(d.bytes ?? 0),
    createdMs: 0, startedMs: ended.timeMs - Number(d.ms ?? 0), endedMs: ended.timeMs, host: String(d.executor ?? ''), updatedMs: ended.timeMs, waiting: '', copied: 0,
  };
}
