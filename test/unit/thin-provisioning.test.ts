import { describe, expect, it } from 'vitest';
import { TrimmedRanges } from '../../head-agent/engine/linear-volume.js';
import { PlacementModel } from '../../manager/placement.js';
import { assignSegment, segmentChunks, unassignSegment } from '../../manager/thin/segment-map.js';
import { placeSegment } from '../../manager/thin/segments.js';
import { DEFAULT_POOL_THRESHOLDS, checkThresholds, poolLevel, provisioning } from '../../manager/thin/pool.js';
import { setReplicaState } from '../../manager/chunk-map.js';
import { segmentReplicas } from '../../manager/chunk-map.js';
import { allocatedSegments, buildChunkMap, chunkMapProblem, forEachReplica, isUnallocated, type ChunkMapRecord, type VolumeRecord } from '../../manager/types.js';

// Thin provisioning's pure pieces (docs/thin-provisioning.md): the map's
// unallocated segments, one segment's placement (same rules as a thick
// create), pool levels and provisioning sums, and the head's discard coverage.

function thinMap(segments: number, replicas: number): ChunkMapRecord {
  const map = buildChunkMap(7, replicas, segments, []);
  map.thin = true;
  return map;
}

function volume(o: Partial<VolumeRecord> = {}): VolumeRecord {
  return {
    id: 7, name: 'v', size: 4 * 256, replicas: 2, chunkSize: 256, segmentCount: 4, generation: 1, epoch: 1,
    attachedHead: 'h', nbdUri: '', spreadLabel: 'rack', createdMs: 0, thin: true, ...o,
  };
}

function model(servers: number, chunksPerDisk: number): PlacementModel {
  const m = new PlacementModel();
  for (let s = 0; s < servers; s++) {
    m.setServer(`s${s}`, { rack: `r${s}` }, true);
    for (let d = 0; d < 2; d++) m.setDisk(`s${s}d${d}`, `s${s}`, chunksPerDisk, true);
  }
  return m;
}

describe('thin chunk maps', () => {
  it('a new thin map has every segment unallocated, is valid, and forEachReplica skips it', () => {
    const map = thinMap(4, 3);
    expect(chunkMapProblem(map)).toBeUndefined();
    for (let s = 0; s < 4; s++) expect(isUnallocated(map, s)).toBe(true);
    let n = 0;
    forEachReplica(map, () => n++);
    expect(n).toBe(0);
    expect(allocatedSegments(map)).toBe(0);
    expect(segmentReplicas(map, 2)).toEqual([]);
    // The same holes in a thick map are corruption.
    expect(chunkMapProblem({ ...map, thin: undefined })).toMatch(/no location/);
  });

  it('assign and unassign a segment: locations, states and identity slots come and go', () => {
    const map = thinMap(3, 2);
    assignSegment(map, 1, [{ slot: 0, diskId: 'a', chunkIndex: 4 }, { slot: 1, diskId: 'b', chunkIndex: 9 }]);
    expect(chunkMapProblem(map)).toBeUndefined();
    expect(allocatedSegments(map)).toBe(1);
    expect(segmentChunks(map, 1)).toEqual([{ slot: 0, idSlot: 0, diskId: 'a', chunkIndex: 4 }, { slot: 1, idSlot: 1, diskId: 'b', chunkIndex: 9 }]);
    const seen: string[] = [];
    forEachReplica(map, (r) => seen.push(`${r.segment}/${r.slot}:${r.diskId}#${r.chunkIndex}:${r.state}`));
    expect(seen).toEqual(['1/0:a#4:in_sync', '1/1:b#9:in_sync']);
    expect(() => assignSegment(map, 1, [{ slot: 0, diskId: 'c', chunkIndex: 1 }, { slot: 1, diskId: 'd', chunkIndex: 1 }])).toThrow(/allocated already/);
    setReplicaState(map, 3, 'stale');
    unassignSegment(map, 1);
    expect(isUnallocated(map, 1)).toBe(true);
    expect(map.stale).toBeUndefined();
    expect(chunkMapProblem(map)).toBeUndefined();
    expect(segmentChunks(map, 1)).toEqual([]);
  });

  it('a segment with a drain target is not unassigned', () => {
    const map = thinMap(2, 2);
    assignSegment(map, 0, [{ slot: 0, diskId: 'a', chunkIndex: 0 }, { slot: 1, diskId: 'b', chunkIndex: 0 }]);
    map.moves = [1, 0, 5, 2];
    expect(() => unassignSegment(map, 0)).toThrow(/drained/);
    expect(isUnallocated(map, 0)).toBe(false);
  });
});

describe('placing one segment', () => {
  it('K chunks on K distinct servers and racks, on the emptiest disks, reserved for the volume', () => {
    const m = model(3, 4);
    m.claim('s0d0', 0, 99);
    m.claim('s0d1', 0, 99);
    const chunks = placeSegment(m, volume({ replicas: 2 }), 3);
    expect(chunks).toHaveLength(2);
    expect(chunks.every((c) => c.segment === 3)).toBe(true);
    expect(new Set(chunks.map((c) => c.serverId)).size).toBe(2);
    expect(chunks.map((c) => c.serverId)).not.toContain('s0'); // the fuller server is avoided
    for (const c of chunks) expect(m.ownerOf(c.diskId, c.chunkIndex)).toBe(7);
  });

  it('segments placed one by one fill the disks evenly', () => {
    const m = model(3, 10);
    for (let s = 0; s < 30; s++) placeSegment(m, volume({ replicas: 2, segmentCount: 30 }), s);
    const used = ['s0d0', 's0d1', 's1d0', 's1d1', 's2d0', 's2d1'].map((d) => m.diskUsage(d)!.used);
    expect(Math.max(...used) - Math.min(...used)).toBeLessThanOrEqual(1);
  });

  it('servers to avoid (a node that did not answer) are left out; without them too few is a CapacityError that changes nothing', () => {
    const m = model(3, 4);
    for (let i = 0; i < 20; i++) {
      const chunks = placeSegment(m, volume({ replicas: 2 }), 0, new Set(['s1']));
      expect(chunks.map((c) => c.serverId).sort()).toEqual(['s0', 's2']);
      for (const c of chunks) m.release(c.diskId, c.chunkIndex, 7);
    }
    const before = m.totals();
    expect(() => placeSegment(m, volume({ replicas: 2 }), 0, new Set(['s0', 's1']))).toThrow(expect.objectContaining({ code: 'ENOSPC' }));
    expect(m.totals()).toEqual(before);
  });

  it('a full pool is a CapacityError (ENOSPC) and changes nothing', () => {
    const m = model(2, 1);
    placeSegment(m, volume({ replicas: 2 }), 0);
    placeSegment(m, volume({ replicas: 2 }), 1);
    const before = m.totals();
    expect(() => placeSegment(m, volume({ replicas: 2 }), 2)).toThrow(expect.objectContaining({ code: 'ENOSPC' }));
    expect(m.totals()).toEqual(before);
  });
});

describe('pool levels and provisioning', () => {
  it('levels follow the thresholds; bad thresholds are refused', () => {
    const t = DEFAULT_POOL_THRESHOLDS;
    expect(poolLevel(0.5, t)).toBe('ok');
    expect(poolLevel(0.8, t)).toBe('warning');
    expect(poolLevel(0.97, t)).toBe('critical');
    expect(() => checkThresholds({ warn: 0.9, critical: 0.8 })).toThrow(/invalid pool thresholds/);
    expect(() => checkThresholds({ warn: 0, critical: 0.8 })).toThrow();
  });

  it('provisioned counts every replica of every segment; allocated only allocated segments', () => {
    const map = thinMap(4, 2);
    assignSegment(map, 2, [{ slot: 0, diskId: 'a', chunkIndex: 0 }, { slot: 1, diskId: 'b', chunkIndex: 0 }]);
    const thick = buildChunkMap(8, 3, 2, [0, 1].flatMap((segment) => [0, 1, 2].map((slot) => ({ segment, slot, diskId: 'x', chunkIndex: segment * 3 + slot }))));
    const p = provisioning([
      { volume: volume(), map },
      { volume: volume({ id: 8, replicas: 3, segmentCount: 2, thin: false }), map: thick },
    ]);
    expect(p.provisionedBytes).toBe(4 * 2 * 256 + 2 * 3 * 256);
    expect(p.allocatedBytes).toBe(1 * 2 * 256 + 2 * 3 * 256);
  });
});

describe('discard coverage of a segment (head)', () => {
  it('pieces in any order cover the segment only when every byte was discarded', () => {
    const t = new TrimmedRanges();
    t.add(64, 128);
    expect(t.covers(256)).toBe(false);
    t.add(192, 256);
    t.add(0, 64);
    expect(t.covers(256)).toBe(false);
    t.add(100, 200);
    expect(t.covers(256)).toBe(true);
  });
});
