import { InvalidArgumentError } from '../../shared/errors.js';
import { moduleLogger } from '../../shared/logger.js';
import type { EventLog } from '../events.js';
import { allocatedSegments, type ChunkMapRecord, type VolumeRecord } from '../types.js';

// How full the pool is, and what volumes promised (docs/thin-provisioning.md).
// Thin volumes promise more than the pool may hold: `vsky status` shows
// provisioned vs allocated and the overcommit ratio, and crossing a threshold
// (default 80% and 95% of the usable chunks in use) records a pool.threshold
// event, up and down, once per change of level.

const log = moduleLogger('manager.pool');

export type PoolLevel = 'ok' | 'warning' | 'critical';

export interface PoolThresholds {
  warn: number;
  critical: number;
}

export const DEFAULT_POOL_THRESHOLDS: PoolThresholds = { warn: 0.8, critical: 0.95 };

export function checkThresholds(t: PoolThresholds): PoolThresholds {
  if (!(t.warn > 0 && t.warn <= 1 && t.critical > 0 && t.critical <= 1 && t.warn <= t.critical)) {
    throw new InvalidArgumentError(`invalid pool thresholds (warn ${t.warn}, critical ${t.critical}): give fractions 0 < warn <= critical <= 1, e.g. 0.8 and 0.95`);
  }
  return t;
}

export function poolLevel(usedFraction: number, t: PoolThresholds): PoolLevel {
  if (usedFraction >= t.critical) return 'critical';
  if (usedFraction >= t.warn) return 'warning';
  return 'ok';
}

export interface Provisioning {
  /** Raw bytes (every replica) the volumes promise. */
  provisionedBytes: number;
  /** Raw bytes (every replica) of allocated segments. */
  allocatedBytes: number;
}

export function provisioning(entries: Iterable<{ volume: VolumeRecord; map: ChunkMapRecord }>): Provisioning {
  let provisionedBytes = 0;
  let allocatedBytes = 0;
  for (const { volume, map } of entries) {
    provisionedBytes += volume.segmentCount * volume.replicas * volume.chunkSize;
    allocatedBytes += allocatedSegments(map) * volume.replicas * volume.chunkSize;
  }
  return { provisionedBytes, allocatedBytes };
}

/** Remembers the pool's level and records an event when it changes. */
export class PoolWatch {
  private level: PoolLevel = 'ok';

  constructor(readonly thresholds: PoolThresholds, private readonly events: EventLog) {}

  /** `used` and `capacity` in chunks (or bytes): records pool.threshold if the level changed. */
  check(used: number, capacity: number): PoolLevel {
    const fraction = capacity > 0 ? used / capacity : 0;
    const level = poolLevel(fraction, this.thresholds);
    if (level !== this.level) {
      const was = this.level;
      this.level = level;
      const pct = (fraction * 100).toFixed(1);
      const reason = level === 'ok' ? `pool back under ${Math.round(this.thresholds.warn * 100)}% (${pct}% in use)`
        : `pool ${pct}% in use: above the ${level} threshold (${Math.round((level === 'critical' ? this.thresholds.critical : this.thresholds.warn) * 100)}%); `
          + 'thin volumes fail first writes with ENOSPC when it is full: free space (discard, delete) or add disks';
      (level === 'ok' ? log.info : log.warn).call(log, { level, was, usedFraction: fraction }, reason);
      void this.events.record('pool.threshold', 'cluster', reason, { level, was, usedPercent: Number(pct) }).catch(() => undefined);
    }
    return level;
  }
}
