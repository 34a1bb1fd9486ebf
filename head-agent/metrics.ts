import type { Registry } from 'prom-client';
import { HistogramFamily, collectedCounter, collectedGauge, stateSamples, type HistogramSample, type Sample } from '../shared/metrics/families.js';
import type { LatencyHistogram } from '../shared/metrics/latency-histogram.js';
import type { LinearVolume } from './engine/linear-volume.js';
import type { VolumeStats } from './engine/volume-stats.js';

// The head agent's Prometheus metrics (docs/metrics.md): per attached volume,
// read from each volume's VolumeStats and lease state at scrape time. A
// volume detached and attached again starts its counters from zero
// (Prometheus' rate() and increase() take that as a counter reset).

export const LEASE_STATES = ['held', 'standby', 'fenced'] as const;

/** What the metrics need of the volume registry. */
export interface AttachedVolumes {
  list(): LinearVolume[];
}

type VolumeLabel = 'volume';

export function registerHeadMetrics(registry: Registry, volumes: AttachedVolumes): void {
  const each = (pick: (s: VolumeStats) => number) => (): Sample<VolumeLabel>[] =>
    volumes.list().map((v) => ({ labels: { volume: v.name }, value: pick(v.stats) }));
  const hist = (pick: (s: VolumeStats) => LatencyHistogram) => (): HistogramSample<VolumeLabel>[] =>
    volumes.list().map((v) => ({ labels: { volume: v.name }, histogram: pick(v.stats) }));
  const counter = (name: string, help: string, pick: (s: VolumeStats) => number): void => {
    collectedCounter(registry, { name, help, labelNames: ['volume'], read: each(pick) });
  };
  const latency = (name: string, help: string, pick: (s: VolumeStats) => LatencyHistogram): void => {
    new HistogramFamily(registry, { name, help, labelNames: ['volume'], read: hist(pick) });
  };

  counter('vsky_head_volume_read_ops_total', 'Read requests completed (NBD READ, SCSI READ).', (s) => s.readOps);
  counter('vsky_head_volume_read_bytes_total', 'Bytes read by completed read requests.', (s) => s.readBytes);
  latency('vsky_head_volume_read_latency_seconds', 'Read request latency, from arrival at the export to completion.', (s) => s.readLatency);
  counter('vsky_head_volume_write_ops_total', 'Write requests completed (NBD WRITE, SCSI WRITE), acknowledged by every writable replica.', (s) => s.writeOps);
  counter('vsky_head_volume_write_bytes_total', 'Bytes written by completed write requests.', (s) => s.writeBytes);
  latency('vsky_head_volume_write_latency_seconds', 'Write request latency, from arrival at the export to acknowledgement.', (s) => s.writeLatency);
  counter('vsky_head_volume_flush_ops_total', 'Flush requests completed (NBD FLUSH, SCSI SYNCHRONIZE CACHE).', (s) => s.flushOps);
  latency('vsky_head_volume_flush_latency_seconds', 'Flush request latency (fdatasync on every node holding a replica).', (s) => s.flushLatency);
  counter('vsky_head_volume_zero_ops_total', 'Write-zeroes requests completed (NBD WRITE_ZEROES, SCSI WRITE SAME of zeros).', (s) => s.zeroOps);
  counter('vsky_head_volume_zero_bytes_total', 'Bytes zeroed by completed write-zeroes requests.', (s) => s.zeroBytes);
  counter('vsky_head_volume_discard_ops_total', 'Discard requests completed (NBD TRIM, SCSI UNMAP, WRITE SAME with UNMAP).', (s) => s.discardOps);
  counter('vsky_head_volume_discard_bytes_total', 'Bytes discarded by completed discard requests.', (s) => s.discardBytes);
  counter('vsky_head_volume_errors_total', 'Requests answered with an error (bad requests, I/O errors, fenced requests).', (s) => s.errors);
  counter('vsky_head_volume_fenced_requests_total', 'Requests refused because this head no longer holds the volume\'s write lease (stale epoch).', (s) => s.fencedRequests);
  collectedCounter(registry, {
    name: 'vsky_head_volume_lease_handoffs_total',
    help: 'Write lease hand-offs of the volume at this head: direction="in" the lease came here (a standby was granted it), "out" it was released to another head.',
    labelNames: ['volume', 'direction'],
    read: () => volumes.list().flatMap((v) => [
      { labels: { volume: v.name, direction: 'in' }, value: v.stats.leaseAcquired },
      { labels: { volume: v.name, direction: 'out' }, value: v.stats.leaseReleased },
    ]),
  });
  collectedGauge(registry, {
    name: 'vsky_head_volume_lease_state',
    help: 'The volume\'s write lease at this head: 1 for its current state (held: I/O goes to storage; standby: attached for a migration; fenced: another head holds it, every request fails), 0 for the others.',
    labelNames: ['volume', 'state'],
    read: () => volumes.list().flatMap((v) => stateSamples<'volume' | 'state'>({ volume: v.name }, 'state', LEASE_STATES, v.lease)),
  });
  collectedGauge(registry, {
    name: 'vsky_head_volumes_attached', help: 'Volumes attached to this head.', read: () => [{ labels: {}, value: volumes.list().length }],
  });
}
