import type { Registry } from 'prom-client';
import { HistogramFamily, collectedCounter, collectedGauge, stateSamples, type Sample } from '../shared/metrics/families.js';
import type { LatencyHistogram } from '../shared/metrics/latency-histogram.js';
import type { Disk } from './disk.js';
import type { DiskStats } from './disk-stats.js';

// The storage node's Prometheus metrics (docs/metrics.md): per disk, read
// from each Disk's DiskStats, chunk table and state at scrape time. Labels:
// disk (its id, as `vsky disk list` shows it) and server (the node's name).

export const DISK_STATES = ['active', 'failed'] as const;

/** What the metrics need of the chunk store. */
export interface NodeDisks {
  diskList(): Disk[];
}

type DiskLabel = 'disk' | 'server';

export function registerNodeMetrics(registry: Registry, store: NodeDisks, server: string): void {
  const labels = (d: Disk) => ({ disk: d.id, server });
  const each = (pick: (s: DiskStats) => number) => (): Sample<DiskLabel>[] =>
    store.diskList().map((d) => ({ labels: labels(d), value: pick(d.stats) }));
  const counter = (name: string, help: string, pick: (s: DiskStats) => number): void => {
    collectedCounter(registry, { name, help, labelNames: ['disk', 'server'], read: each(pick) });
  };
  const latency = (name: string, help: string, pick: (s: DiskStats) => LatencyHistogram): void => {
    new HistogramFamily(registry, {
      name, help, labelNames: ['disk', 'server'], read: () => store.diskList().map((d) => ({ labels: labels(d), histogram: pick(d.stats) })),
    });
  };

  counter('vsky_node_disk_read_ops_total', 'Data-protocol reads served from the disk.', (s) => s.readOps);
  counter('vsky_node_disk_read_bytes_total', 'Bytes read by data-protocol reads.', (s) => s.readBytes);
  latency('vsky_node_disk_read_latency_seconds', 'Data-protocol read latency on this node (dispatch to reply).', (s) => s.readLatency);
  counter('vsky_node_disk_write_ops_total', 'Data-protocol writes to the disk.', (s) => s.writeOps);
  counter('vsky_node_disk_write_bytes_total', 'Bytes written by data-protocol writes.', (s) => s.writeBytes);
  latency('vsky_node_disk_write_latency_seconds', 'Data-protocol write latency on this node (dispatch to reply; FUA writes include their fdatasync).', (s) => s.writeLatency);
  counter('vsky_node_disk_flush_ops_total', 'FLUSH requests that synced the disk.', (s) => s.flushOps);
  latency('vsky_node_disk_fdatasync_latency_seconds', 'Latency of each fdatasync of the disk (group commit: one may serve many flushes).', (s) => s.syncLatency);
  counter('vsky_node_disk_errors_total', 'Data-protocol requests on the disk\'s chunks answered with an error (fenced requests included).', (s) => s.errors);
  counter('vsky_node_disk_fenced_requests_total', 'Mutations refused because their lease epoch is stale.', (s) => s.fencedRequests);
  counter('vsky_node_disk_record_writes_total', 'Chunk record writes (written and dirty bitmaps, epochs, identity), coalesced per chunk.', (s) => s.recordWrites);
  counter('vsky_node_disk_record_write_bytes_total', 'Bytes written by chunk record writes.', (s) => s.recordWriteBytes);
  counter('vsky_node_disk_resync_copy_bytes_total', 'Bytes copied into the disk\'s chunks by resyncs.', (s) => s.resyncCopyBytes);
  collectedCounter(registry, {
    name: 'vsky_node_disk_os_errors_total', help: 'I/O errors the OS returned on the disk since it was opened (enough of them fail the disk).',
    labelNames: ['disk', 'server'], read: () => store.diskList().map((d) => ({ labels: labels(d), value: d.ioErrors })),
  });
  collectedCounter(registry, {
    name: 'vsky_node_disk_punched_bytes_total', help: 'Bytes of discarded regions and freed chunks punched out of the disk (given back to its file system or device).',
    labelNames: ['disk', 'server'], read: () => store.diskList().map((d) => ({ labels: labels(d), value: d.holes.punchedBytes })),
  });
  collectedGauge(registry, {
    name: 'vsky_node_disk_chunks',
    help: 'Chunks of the disk by state: used (owned by a volume) or free.',
    labelNames: ['disk', 'server', 'state'],
    read: () => store.diskList().flatMap((d) => {
      const used = d.usedChunks();
      return [{ labels: { ...labels(d), state: 'used' }, value: used }, { labels: { ...labels(d), state: 'free' }, value: d.chunks.length - used }];
    }),
  });
  collectedGauge(registry, {
    name: 'vsky_node_disk_chunk_size_bytes', help: 'Chunk size of the disk.', labelNames: ['disk', 'server'],
    read: () => store.diskList().map((d) => ({ labels: labels(d), value: d.sb.chunkSize })),
  });
  collectedGauge(registry, {
    name: 'vsky_node_disk_state',
    help: 'The disk\'s state as this node reports it: 1 for the current one (failed: too many I/O errors, or fault injection), 0 for the other.',
    labelNames: ['disk', 'server', 'state'],
    read: () => store.diskList().flatMap((d) => stateSamples<DiskLabel | 'state'>(labels(d), 'state', DISK_STATES, d.reportedState)),
  });
}
