import { afterEach, describe, expect, it } from 'vitest';
import { applyBackingReplicas, type BackingChainMap } from '../../head-agent/attachments/backing-update.js';
import { newReplica, type ReplicaLocation } from '../../head-agent/attachments/segments.js';
import { Backing } from '../../head-agent/engine/backing.js';
import { Mirror } from '../../head-agent/engine/mirror.js';
import { NodePool } from '../../head-agent/engine/node-pool.js';

// A pushed map's backing chain swaps the replica sets of the head's backing
// mirrors in place (docs/snapshots.md, "Failures"): kept replicas stay the
// same objects, new ones join, gone ones leave; a different chain, or garbage,
// changes nothing. (Connections are created, never used: no node needed.)

const SNAP = { volumeId: 7, name: 'snap' };
const loc = (slot: number, host: string, diskId: string, state = 'in_sync'): ReplicaLocation =>
  ({ slot, dataAddress: `${host}:7000`, serverId: host, diskId, chunkIndex: 0, controlAddress: `${host}:7001`, state }) as ReplicaLocation;

describe('backing chain replica updates (head)', () => {
  let pool: NodePool;
  afterEach(async () => {
    await pool.close();
  });

  function backing(): Backing {
    pool = new NodePool();
    const mirrors = [0, 1].map((s) => new Mirror(SNAP.name, s, [loc(0, '127.0.0.1', `a${s}`), loc(1, '127.0.0.2', `b${s}`)].map((l) => newReplica(pool, SNAP, s, l))));
    const unallocated = new Mirror(SNAP.name, 2, []);
    return new Backing(1 << 20, [{ ...SNAP, mirrors: [...mirrors, unallocated], written: undefined }], [], 1 << 20);
  }
  const chain = (segments: { index: number; replicas: ReplicaLocation[] }[], volumeId = SNAP.volumeId): BackingChainMap =>
    [{ volumeId, name: SNAP.name, size: 3 << 20, segments, backed: false }] as unknown as BackingChainMap;

  it('keeps replicas at the same place, adds the new one, drops the gone one, takes states', () => {
    const b = backing();
    const m0 = b.levels[0]!.mirrors[0]!;
    const kept = m0.replicas[1]!;
    const out = applyBackingReplicas(b, chain([
      { index: 0, replicas: [loc(0, '127.0.0.3', 'c0', 'resyncing'), loc(1, '127.0.0.2', 'b0')] },
      { index: 1, replicas: [loc(0, '127.0.0.1', 'a1'), loc(1, '127.0.0.2', 'b1')] },
      { index: 2, replicas: [loc(0, '127.0.0.1', 'x')] }, // allocation never changes in place
    ]), pool);
    expect(out.skipped).toBeUndefined();
    expect(out.changed).toHaveLength(1);
    expect(out.changed[0]).toMatch(/^snap segment 0: a0#0@127.0.0.1:7000:in_sync b0#0.* -> c0#0@127.0.0.3:7000:resyncing b0#0@127.0.0.2:7000:in_sync$/);
    expect(m0.replicas.map((r) => r.diskId)).toEqual(['c0', 'b0']);
    expect(m0.replicas[1]).toBe(kept);
    expect(m0.replicas[0]!.readable).toBe(false); // resyncing: not read yet
    expect(b.levels[0]!.mirrors[2]!.replicas).toHaveLength(0);
    // The resync finished: the same new replica becomes readable.
    const fresh = m0.replicas[0]!;
    applyBackingReplicas(b, chain([{ index: 0, replicas: [loc(0, '127.0.0.3', 'c0'), loc(1, '127.0.0.2', 'b0')] }]), pool);
    expect(m0.replicas[0]).toBe(fresh);
    expect(fresh.readable).toBe(true);
  });

  it('a different chain or a bad address changes nothing', () => {
    const b = backing();
    const m0 = b.levels[0]!.mirrors[0]!;
    const before = [...m0.replicas];
    const other = applyBackingReplicas(b, chain([{ index: 0, replicas: [loc(0, '127.0.0.3', 'c0')] }], 8), pool);
    expect(other.skipped).toMatch(/not the one attached/);
    expect(() => applyBackingReplicas(b, chain([
      { index: 0, replicas: [loc(0, '127.0.0.3', 'c0')] },
      { index: 1, replicas: [{ ...loc(0, '127.0.0.1', 'a1'), dataAddress: 'nonsense' } as ReplicaLocation] },
    ]), pool)).toThrow(/invalid backing map for snap: segment 1/);
    expect(m0.replicas).toEqual(before);
    expect(applyBackingReplicas(undefined, chain([]), pool)).toEqual({ changed: [] });
  });
});
