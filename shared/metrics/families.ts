import { Counter, Gauge, type Metric, type Registry } from 'prom-client';
import type { LatencyHistogram } from './latency-histogram.js';

// Metric families whose values live in the daemons' own objects (plain
// numeric fields, updated with += on the data path) and are read only when
// Prometheus scrapes: prom-client collectors (`collect()` callbacks) for
// counters and gauges, and a small prom-client-compatible metric for
// histograms kept as LatencyHistogram. Nothing here runs per I/O.

export type Labels<L extends string> = Partial<Record<L, string | number>>;

export interface Sample<L extends string> {
  labels: Labels<L>;
  value: number;
}

interface FamilySpec<L extends string> {
  name: string;
  help: string;
  labelNames?: readonly L[];
  /** The current values, read at scrape time. */
  read: () => Iterable<Sample<L>>;
}

/** A counter read from the daemon's counters at scrape time (a reset shows as the counter starting again). */
export function collectedCounter<L extends string>(registry: Registry, spec: FamilySpec<L>): Counter<L> {
  const { read } = spec;
  return new Counter<L>({
    name: spec.name, help: spec.help, labelNames: spec.labelNames ?? [], registers: [registry],
    collect(this: Counter<L>) {
      this.reset();
      for (const s of read()) this.inc(s.labels, s.value);
    },
  });
}

/** A gauge read at scrape time. */
export function collectedGauge<L extends string>(registry: Registry, spec: FamilySpec<L>): Gauge<L> {
  const { read } = spec;
  return new Gauge<L>({
    name: spec.name, help: spec.help, labelNames: spec.labelNames ?? [], registers: [registry],
    collect(this: Gauge<L>) {
      this.reset();
      for (const s of read()) this.set(s.labels, s.value);
    },
  });
}

/** One state-set row per thing: `value` 1 for its current state, 0 for the others. */
export function stateSamples<L extends string>(labels: Labels<L>, stateLabel: L, states: readonly string[], current: string): Sample<L>[] {
  return states.map((s) => ({ labels: { ...labels, [stateLabel]: s }, value: s === current ? 1 : 0 }));
}

/** Counts of things by state, every state present (0 when none). */
export function countByState<L extends string>(stateLabel: L, states: readonly string[], current: Iterable<string>, extra: Labels<L> = {}): Sample<L>[] {
  const n = new Map<string, number>(states.map((s) => [s, 0]));
  for (const s of current) n.set(s, (n.get(s) ?? 0) + 1);
  return [...n].map(([s, value]) => ({ labels: { ...extra, [stateLabel]: s }, value }));
}

export interface HistogramSample<L extends string> {
  labels: Labels<L>;
  histogram: LatencyHistogram;
}

interface HistogramSpec<L extends string> {
  name: string;
  help: string;
  labelNames?: readonly L[];
  read: () => Iterable<HistogramSample<L>>;
}

interface HistogramValue {
  metricName: string;
  labels: Record<string, string | number | undefined>;
  value: number;
}

/**
 * A histogram family over LatencyHistograms: registered in a prom-client
 * Registry like its own metrics (the registry calls get() at scrape time and
 * formats the buckets, _sum and _count the Prometheus way).
 */
export class HistogramFamily<L extends string> {
  readonly name: string;
  readonly help: string;
  readonly type = 'histogram' as const;
  readonly aggregator = 'sum' as const;
  readonly labelNames: readonly L[];
  private readonly read: () => Iterable<HistogramSample<L>>;

  constructor(registry: Registry, spec: HistogramSpec<L>) {
    this.name = spec.name;
    this.help = spec.help;
    this.labelNames = spec.labelNames ?? [];
    this.read = spec.read;
    registry.registerMetric(this as unknown as Metric);
  }

  get(): Promise<{ name: string; help: string; type: 'histogram'; aggregator: 'sum'; values: HistogramValue[] }> {
    const values: HistogramValue[] = [];
    for (const { labels, histogram: h } of this.read()) {
      let cumulative = 0;
      for (let i = 0; i < h.bounds.length; i++) {
        cumulative += h.counts[i]!;
        values.push({ metricName: `${this.name}_bucket`, labels: { ...labels, le: h.bounds[i]! }, value: cumulative });
      }
      values.push({ metricName: `${this.name}_bucket`, labels: { ...labels, le: '+Inf' }, value: h.count });
      values.push({ metricName: `${this.name}_sum`, labels: { ...labels }, value: h.sum });
      values.push({ metricName: `${this.name}_count`, labels: { ...labels }, value: h.count });
    }
    return Promise.resolve({ name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values });
  }

  /** prom-client calls reset() on registry.resetMetrics(): the values are the daemon's, nothing to reset here. */
  reset(): void {}
}
