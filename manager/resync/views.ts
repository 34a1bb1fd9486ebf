import { MiB, REGION_BITS_PER_CHUNK } from '../../shared/constants.js';
import type { ResyncInfo } from '../../proto/generated/vsky/manager/ResyncInfo.js';
import type { ResyncList } from '../../proto/generated/vsky/manager/ResyncList.js';
import { isDegraded, segmentReplicas } from '../chunk-map.js';
import type { Registry } from '../registry.js';
import type { Resyncs } from './resyncs.js';
import type { VolumeHealth } from '../views.js';
import type { Volumes } from '../volumes.js';

// Resync records -> ListResyncs and the health fields of VolumeInfo.
//
// Cluster totals: bytes_total counts each resync's written bytes when a
// source told us (GetChunkRegions), else its whole chunk; bytes_copied what
// executors reported.

export function resyncListView(resyncs: Resyncs, volumes: Volumes, registry: Registry): ResyncList {
  const now = registry.now();
  let bytesTotal = 0;
  let bytesCopied = 0;
  const rows: ResyncInfo[] = [];
  const records = resyncs.book.all().sort((a, b) => (a.state !== b.state ? (a.state === 'running' ? -1 : 1) : Number(a.id.slice(1)) - Number(b.id.slice(1))));
  for (const r of records) {
    const entry = volumes.byVolumeId(r.volumeId);
    if (!entry) continue;
    const rt = resyncs.runtimeOf(r.id);
    const [kind, id] = r.executor.split(':') as [string, string | undefined];
    const executor = !id ? '' : kind === 'head' ? `head:${registry.head(id)?.name ?? id}` : `node:${registry.server(id)?.name ?? id}`;
    const secs = (now - r.startedMs) / 1000;
    const rate = r.state === 'running' && secs > 0 && rt ? rt.attemptBytes / MiB / secs : 0;
    bytesTotal += Math.max(rt?.bytesExpected ?? entry.volume.chunkSize, r.bytesCopied);
    bytesCopied += r.bytesCopied;
    rows.push({
      resyncId: r.id, volume: entry.volume.name, segment: r.segment, slot: r.slot, state: r.state, executor,
      sourceDisks: r.sources.join(','), targetDisk: r.target.diskId, regionsDone: r.regionsDone, regionsTotal: r.regionsTotal,
      bytesCopied: r.bytesCopied, rateMibps: Math.round(rate * 10) / 10, startedMs: r.startedMs,
      goodCopies: segmentReplicas(entry.map, r.segment).filter((x) => x.state === 'in_sync').length, kind: r.kind ?? 'rebuild',
    });
  }
  return { resyncs: rows, bytesTotal, bytesCopied };
}

/** degraded: a segment has fewer in-sync replicas than it should; progress: mean fraction of regions done over its resyncs. */
export function volumeHealth(resyncs: Resyncs, volumes: Volumes, volumeId: number): VolumeHealth {
  const entry = volumes.byVolumeId(volumeId);
  const records = resyncs.book.ofVolume(volumeId);
  let done = 0;
  for (const r of records) done += r.regionsDone / (r.regionsTotal || REGION_BITS_PER_CHUNK);
  return {
    degraded: entry ? isDegraded(entry.map) : false,
    resyncs: records.length,
    progress: records.length > 0 ? Math.min(1, done / records.length) : 0,
  };
}
