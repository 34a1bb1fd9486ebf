import { describe, expect, it } from 'vitest';
import { CapacityError, InvalidArgumentError } from '../../shared/errors.js';
import { PlacementModel } from '../../manager/placement.js';
import type { PlacementResult } from '../../manager/placement/volume-placement.js';

interface Cluster {
  racks?: number;          // servers get rack labels r0..r{racks-1} round robin
  servers: number;
  disksPerServer: number;
  chunks: number;          // per disk
}

function model(c: Cluster): PlacementModel {
  const m = new PlacementModel();
  for (let s = 0; s < c.servers; s++) {
    const labels: Record<string, string> = c.racks ? { rack: `r${s % c.racks}` } : {};
    m.setServer(`s${s}`, labels, true);
    for (let d = 0; d < c.disksPerServer; d++) m.setDisk(`s${s}d${d}`, `s${s}`, c.chunks, true);
  }
  return m;
}

const rackOf = (serverId: string, racks: number) => `r${Number(serverId.slice(1)) % racks}`;

function bySegment(res: PlacementResult, k: number) {
  const segs: PlacementResult['chunks'][] = [];
  for (let i = 0; i < res.chunks.length; i += k) segs.push(res.chunks.slice(i, i + k));
  return segs;
}

function usage(m: PlacementModel, c: Cluster): number[] {
  const out: number[] = [];
  for (let s = 0; s < c.servers; s++) for (let d = 0; d < c.disksPerServer; d++) out.push(m.diskUsage(`s${s}d${d}`)!.used);
  return out;
}

describe('placement', () => {
  it('puts the replicas of every segment on distinct servers, each chunk once', () => {
    const m = model({ servers: 5, disksPerServer: 4, chunks: 50 });
    const res = m.place({ volumeId: 1, segmentCount: 60, replicas: 3 });
    expect(res.chunks).toHaveLength(180);
    for (const seg of bySegment(res, 3)) expect(new Set(seg.map((c) => c.serverId)).size).toBe(3);
    const locs = new Set(res.chunks.map((c) => `${c.diskId}#${c.chunkIndex}`));
    expect(locs.size).toBe(180);
    for (const c of res.chunks) {
      expect(c.diskId.startsWith(`${c.serverId}d`)).toBe(true);
      expect(m.ownerOf(c.diskId, c.chunkIndex)).toBe(1);
    }
    // segment/slot numbering is segment-major
    res.chunks.forEach((c, i) => { expect(c.segment).toBe(Math.floor(i / 3)); expect(c.slot).toBe(i % 3); });
  });

  it('spreads over distinct rack values when the labels allow', () => {
    const c = { racks: 3, servers: 9, disksPerServer: 2, chunks: 40 };
    const m = model(c);
    const res = m.place({ volumeId: 7, segmentCount: 50, replicas: 3, spreadLabel: 'rack' });
    expect(res.labelSpread).toBe('enforced');
    expect(res.fallbackSegments).toBe(0);
    for (const seg of bySegment(res, 3)) expect(new Set(seg.map((x) => rackOf(x.serverId, 3))).size).toBe(3);
  });

  it('falls back to distinct servers (and says so) when there are too few label values', () => {
    const c = { racks: 2, servers: 6, disksPerServer: 1, chunks: 40 };
    const m = model(c);
    const res = m.place({ volumeId: 2, segmentCount: 20, replicas: 3, spreadLabel: 'rack' });
    expect(res.labelSpread).toBe('fallback');
    expect(res.labelValues).toBe(2);
    expect(res.fallbackSegments).toBe(20);
    for (const seg of bySegment(res, 3)) {
      expect(new Set(seg.map((x) => x.serverId)).size).toBe(3);
      // still uses both racks in every segment: never all three in one rack
      expect(new Set(seg.map((x) => rackOf(x.serverId, 2))).size).toBe(2);
    }
  });

  it('falls back per segment when one rack runs out of space', () => {
    const m = new PlacementModel();
    // rack a: 2 small servers; rack b, c: big servers
    m.setServer('a1', { rack: 'a' }, true); m.setDisk('a1d', 'a1', 2, true);
    m.setServer('b1', { rack: 'b' }, true); m.setDisk('b1d', 'b1', 100, true);
    m.setServer('b2', { rack: 'b' }, true); m.setDisk('b2d', 'b2', 100, true);
    m.setServer('c1', { rack: 'c' }, true); m.setDisk('c1d', 'c1', 100, true);
    const res = m.place({ volumeId: 3, segmentCount: 10, replicas: 3, spreadLabel: 'rack' });
    expect(res.labelSpread).toBe('partial');
    expect(res.fallbackSegments).toBe(8);
    for (const seg of bySegment(res, 3)) expect(new Set(seg.map((x) => x.serverId)).size).toBe(3);
  });

  it('fills disks evenly (within 5% of capacity) as volumes come and go', () => {
    const c = { servers: 12, disksPerServer: 3, chunks: 100 };
    const m = model(c);
    let id = 1;
    const live: Array<{ id: number; chunks: PlacementResult['chunks'] }> = [];
    // a mix of sizes and replica counts up to ~80% full, deleting some on the way
    for (let i = 0; i < 200; i++) {
      const k = 1 + (i % 4);
      const segs = 1 + ((i * 7) % 13);
      const res = m.place({ volumeId: id, segmentCount: segs, replicas: k });
      live.push({ id: id++, chunks: res.chunks });
      if (i % 5 === 4) {
        const victim = live.splice((i * 3) % live.length, 1)[0]!;
        for (const ch of victim.chunks) expect(m.release(ch.diskId, ch.chunkIndex, victim.id)).toBe(true);
      }
      if (m.totals().usedChunks > 0.8 * 36 * 100) break;
    }
    const used = usage(m, c);
    const mean = used.reduce((a, b) => a + b, 0) / used.length;
    expect(mean).toBeGreaterThan(50);
    for (const u of used) expect(Math.abs(u - mean) / c.chunks).toBeLessThanOrEqual(0.05);
  });

  it('evens out unequal disks by free space', () => {
    const m = new PlacementModel();
    for (let s = 0; s < 4; s++) { m.setServer(`s${s}`, {}, true); m.setDisk(`d${s}`, `s${s}`, s === 0 ? 200 : 100, true); }
    m.place({ volumeId: 1, segmentCount: 150, replicas: 1 });
    // the big disk takes chunks until its free space matches the others, then all share
    const free = [0, 1, 2, 3].map((s) => { const u = m.diskUsage(`d${s}`)!; return u.chunkCount - u.used; });
    expect(Math.max(...free) - Math.min(...free)).toBeLessThanOrEqual(1);
  });

  it('a capacity error leaves the model unchanged', () => {
    const c = { servers: 4, disksPerServer: 2, chunks: 10 };
    const m = model(c);
    m.place({ volumeId: 1, segmentCount: 5, replicas: 3 });
    const before = usage(m, c);
    const owners = before.map((_, i) => i);
    const snapshot = JSON.stringify([before, m.totals()]);
    // 80 chunks total, 15 used: 22 segments x 3 = 66 > 65 free
    expect(() => m.place({ volumeId: 2, segmentCount: 22, replicas: 3 })).toThrow(CapacityError);
    expect(JSON.stringify([usage(m, c), m.totals()])).toBe(snapshot);
    expect(owners.length).toBe(8);
    // 21 segments fit exactly after the failure: nothing leaked
    const ok = m.place({ volumeId: 3, segmentCount: 21, replicas: 3 });
    expect(ok.chunks).toHaveLength(63);
  });

  it('fails late without leaking when a segment cannot find K servers', () => {
    // Passes the up-front check (10 + 5 + 5 usable chunks for 10 x 2), but the
    // most-free-disk rule spends B and C together first, so the last segments
    // find only server A.
    const m = new PlacementModel();
    m.setServer('A', {}, true);
    for (let d = 0; d < 10; d++) m.setDisk(`A${d}`, 'A', 1, true);
    m.setServer('B', {}, true); m.setDisk('B', 'B', 5, true);
    m.setServer('C', {}, true); m.setDisk('C', 'C', 5, true);
    let err: unknown;
    try { m.place({ volumeId: 1, segmentCount: 10, replicas: 2 }); } catch (e) { err = e; }
    expect(err).toBeInstanceOf(CapacityError);
    expect((err as Error).message).toMatch(/segment \d+ found only 1 servers.*add disks with vsky disk add/);
    expect(m.totals().usedChunks).toBe(0);
    expect(m.place({ volumeId: 2, segmentCount: 6, replicas: 2 }).chunks).toHaveLength(12);
  });

  it('says how much is free in bytes when it refuses', () => {
    const m = model({ servers: 3, disksPerServer: 1, chunks: 4 });
    expect(() => m.place({ volumeId: 1, segmentCount: 5, replicas: 3, chunkSize: 1 << 30 }))
      .toThrow(/12 chunks \(12\.0 GiB\) are free on 3 eligible servers.*vsky disk add/);
  });

  it('accepts K = 1..9 and refuses 0, 10 and too few servers', () => {
    const m = model({ servers: 9, disksPerServer: 1, chunks: 100 });
    for (let k = 1; k <= 9; k++) {
      const res = m.place({ volumeId: k, segmentCount: 2, replicas: k });
      expect(res.chunks).toHaveLength(2 * k);
      for (const seg of bySegment(res, k)) expect(new Set(seg.map((x) => x.serverId)).size).toBe(k);
    }
    expect(() => m.place({ volumeId: 20, segmentCount: 1, replicas: 0 })).toThrow(InvalidArgumentError);
    expect(() => m.place({ volumeId: 20, segmentCount: 1, replicas: 10 })).toThrow(InvalidArgumentError);
    const small = model({ servers: 2, disksPerServer: 3, chunks: 100 });
    expect(() => small.place({ volumeId: 1, segmentCount: 1, replicas: 3 })).toThrow(/3 replicas need 3 servers/);
  });

  it('only uses active disks on active servers', () => {
    const m = model({ servers: 4, disksPerServer: 2, chunks: 10 });
    m.setServer('s0', {}, false);
    m.setDiskEligible('s1d0', false);
    const res = m.place({ volumeId: 1, segmentCount: 9, replicas: 3 });
    for (const c of res.chunks) {
      expect(c.serverId).not.toBe('s0');
      expect(c.diskId).not.toBe('s1d0');
    }
  });

  it('release only frees a chunk for its owner, and the index is reused', () => {
    const m = model({ servers: 1, disksPerServer: 1, chunks: 4 });
    const a = m.place({ volumeId: 1, segmentCount: 2, replicas: 1 });
    expect(m.release(a.chunks[0]!.diskId, a.chunks[0]!.chunkIndex, 99)).toBe(false);
    expect(m.release(a.chunks[0]!.diskId, a.chunks[0]!.chunkIndex, 1)).toBe(true);
    const b = m.place({ volumeId: 2, segmentCount: 1, replicas: 1 });
    expect(b.chunks[0]!.chunkIndex).toBe(a.chunks[0]!.chunkIndex);
  });
});
