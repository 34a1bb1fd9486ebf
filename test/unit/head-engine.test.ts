import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NodePool } from '../../head-agent/engine/node-pool.js';
import { Attachments, type VolumeMap } from '../../head-agent/attachments.js';
import type { LinearVolume } from '../../head-agent/engine/linear-volume.js';
import { Mirror, type ReplicaFailure, type ReplicaFailureHandler } from '../../head-agent/engine/mirror.js';
import { Replica } from '../../head-agent/engine/replica.js';
import { InvalidArgumentError, IoError, StaleEpochError } from '../../shared/errors.js';
import { MiB } from '../../shared/constants.js';
import { fill, rng } from '../harness/seeded-bytes.js';
import { allocateVolume, startNodeTrio, type NodeTrio } from '../harness/storage-node-trio.js';

// The I/O engine against three REAL storage nodes started in-process
// (standalone, small sparse disk files): a 3-replica, 3-segment volume, an
// in-memory model of its content, and every replica read back directly.

const CHUNK = 4 * MiB;
const SIZE = 3 * CHUNK - 64 * 1024; // 3 segments, the last one partial
const VOLUME_ID = 41;
/** Small pieces so that requests are also split at the payload limit. */
const MAX_PIECE = 256 * 1024;

let trio: NodeTrio;
let map: VolumeMap;
const pools: NodePool[] = [];
const model = Buffer.alloc(SIZE);
let regA: Attachments;
let volA: LinearVolume;

function newRegistry(): Attachments {
  const pool = new NodePool({ dataTimeoutMs: 3000, backoffInitialMs: 50 });
  pools.push(pool);
  return new Attachments({ pool, maxPiece: MAX_PIECE });
}

beforeAll(async () => {
  trio = await startNodeTrio('vsky-head-engine-', CHUNK);
  // Rotated so each node holds different slots of different segments.
  map = await allocateVolume(trio, { volumeId: VOLUME_ID, name: 'vol-a', size: SIZE, chunkSize: CHUNK, rotate: true });
  regA = newRegistry();
  volA = await regA.attach(map, 1);
});

afterAll(async () => {
  await Promise.all(pools.map((p) => p.close()));
  await trio.close();
});

/** Reads `len` bytes at volume offset `off` from one specific replica slot of each segment. */
async function readReplicaDirect(vol: LinearVolume, slot: number, off: number, len: number): Promise<Buffer> {
  const out = Buffer.alloc(len);
  for (let pos = 0; pos < len;) {
    const at = off + pos;
    const seg = Math.floor(at / CHUNK);
    const so = at - seg * CHUNK;
    const n = Math.min(len - pos, CHUNK - so, MAX_PIECE);
    const replica = vol.segment(seg).replicas.find((r) => r.slot === slot)!;
    await replica.read(so, out.subarray(pos, pos + n));
    pos += n;
  }
  return out;
}

describe('head I/O engine over real storage nodes', () => {
  it('fenced every replica node at attach: a lower epoch is refused', async () => {
    const r = volA.segment(0).replicas[0]!;
    await expect(r.write(0, 0, Buffer.alloc(512), false)).rejects.toBeInstanceOf(StaleEpochError);
    expect(volA.epoch).toBe(1);
    expect(regA.lookup('vol-a')).toBe(volA);
  });

  it('random writes and reads across segment boundaries match a model', async () => {
    const rand = rng(7);
    // Boundary-crossing writes first, then random ones (some bigger than a piece).
    const ops: { off: number; len: number }[] = [
      { off: CHUNK - 1000, len: 5000 },
      { off: 2 * CHUNK - 300 * 1024, len: 700 * 1024 },
      { off: 0, len: 4096 },
      { off: SIZE - 8192, len: 8192 },
    ];
    for (let i = 0; i < 60; i++) {
      const len = 1 + Math.floor(rand() * (rand() < 0.2 ? 600 * 1024 : 64 * 1024));
      ops.push({ off: Math.floor(rand() * (SIZE - len)), len });
    }
    for (let i = 0; i < ops.length; i += 8) {
      // Eight at a time (FUA on some); overlapping ones land in no defined order,
      // so each is then rewritten serially, which defines the model.
      const batch = ops.slice(i, i + 8).map((o, k) => ({ ...o, data: fill(o.len, i + k + 1) }));
      await Promise.all(batch.map((o) => volA.write(o.off, o.data, (o.off & 1) === 0)));
      for (const o of batch) await volA.write(o.off, o.data, false);
      for (const o of batch) o.data.copy(model, o.off);
    }
    await volA.flush();
    for (let i = 0; i < 40; i++) {
      const len = 1 + Math.floor(rand() * 900 * 1024);
      const off = Math.floor(rand() * (SIZE - len));
      const got = await volA.read(off, len);
      expect(got.length).toBe(len);
      expect(got.equals(model.subarray(off, off + len))).toBe(true);
    }
    const whole = await volA.read(0, SIZE);
    expect(whole.equals(model)).toBe(true);
    // readInto: a caller-owned slice, filled across a boundary, nothing outside it touched.
    const backing = Buffer.alloc(300_000, 0xcc);
    const view = backing.subarray(100, 200_100);
    expect(await volA.readInto(CHUNK - 100_000, view)).toBe(view);
    expect(view.equals(model.subarray(CHUNK - 100_000, CHUNK + 100_000))).toBe(true);
    expect(backing[99]).toBe(0xcc);
    expect(backing[200_100]).toBe(0xcc);
  });

  it('write-zeroes and discard across a boundary read back as zeros', async () => {
    const off = CHUNK - 70_000;
    await volA.write(off, fill(200_000, 99), false);
    await volA.writeZeroes(off + 10_000, 100_000, true);
    await volA.discard(CHUNK + 50_000, 4096);
    fill(200_000, 99).copy(model, off);
    model.fill(0, off + 10_000, off + 110_000);
    model.fill(0, CHUNK + 50_000, CHUNK + 54_096);
    const got = await volA.read(off, 200_000);
    expect(got.equals(model.subarray(off, off + 200_000))).toBe(true);
  });

  it('every replica holds the same bytes', async () => {
    for (let slot = 0; slot < 3; slot++) {
      const direct = await readReplicaDirect(volA, slot, 0, SIZE);
      expect(direct.equals(model), `replica slot ${slot} differs from the model`).toBe(true);
    }
  });

  it('rejects out-of-range requests with InvalidArgumentError and changes nothing', async () => {
    await expect(volA.read(SIZE - 10, 11)).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(volA.write(SIZE - 10, Buffer.alloc(11, 0xee), false)).rejects.toThrow(/out of range/);
    await expect(volA.writeZeroes(-1, 10, false)).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(volA.read(0.5, 10)).rejects.toBeInstanceOf(InvalidArgumentError);
    expect((await volA.read(SIZE - 10, 10)).equals(model.subarray(SIZE - 10))).toBe(true);
    expect((await volA.read(0, 0)).length).toBe(0);
  });

  it('balances reads over the replicas (round-robin at QD1, least-loaded at QD16)', async () => {
    const before = new Map(volA.replicas().map((r) => [r, r.reads]));
    const countByNode = (): Map<string, number> => {
      const m = new Map<string, number>();
      for (const r of volA.replicas()) m.set(r.address, (m.get(r.address) ?? 0) + r.reads - before.get(r)!);
      return m;
    };
    for (let i = 0; i < 90; i++) await volA.read((i * 4096) % CHUNK, 4096);
    const qd1 = countByNode();
    expect([...qd1.values()].reduce((a, b) => a + b, 0)).toBe(90);
    for (const n of qd1.values()) expect(n).toBe(30);
    for (const r of volA.replicas()) before.set(r, r.reads);
    await Promise.all(Array.from({ length: 300 }, (_, i) => volA.read(CHUNK + ((i * 8192) % CHUNK), 8192)));
    const qd = countByNode();
    for (const n of qd.values()) expect(n).toBeGreaterThan(50);
  });

  it('retries a read that fails on one replica (node error) on another', async () => {
    const seg = volA.segment(0);
    const good = seg.replicas.filter((r) => r.slot !== 0);
    const src = seg.replicas.find((r) => r.slot === 0)!;
    // Same node, but an address the node holds no chunk for: every read there gets NO_CHUNK.
    const bad = new Replica(src.conn, { volumeId: VOLUME_ID, volumeName: 'vol-a', segment: 99, slot: 0, state: 'in_sync', serverId: '', diskId: '' });
    const mirror = new Mirror('vol-a', 0, [bad, ...good]);
    for (let i = 0; i < 12; i++) {
      const got = await mirror.read(i * 4096, Buffer.alloc(4096));
      expect(got.equals(model.subarray(i * 4096, (i + 1) * 4096))).toBe(true);
    }
    expect(bad.reads).toBe(0);
    // Only bad replicas: the read fails with IoError naming each.
    const alone = new Mirror('vol-a', 0, [bad]);
    await expect(alone.read(0, Buffer.alloc(16))).rejects.toThrow(/failed on every in-sync replica.*NO_CHUNK/);
  });

  it('a write failing on one replica is decided by the ReplicaFailureHandler seam', async () => {
    const seg = volA.segment(0);
    const src = seg.replicas.find((r) => r.slot === 0)!;
    const bad = new Replica(src.conn, { volumeId: VOLUME_ID, volumeName: 'vol-a', segment: 99, slot: 0, state: 'in_sync', serverId: '', diskId: '' });
    const good = seg.replicas.filter((r) => r.slot !== 0);
    const seen: { failures: readonly ReplicaFailure[]; succeeded: number }[] = [];
    const degrade: ReplicaFailureHandler = {
      async mutationFailed(_m, failures, succeeded) {
        seen.push({ failures, succeeded });
      },
    };
    const data = fill(4096, 555);
    const degraded = new Mirror('vol-a', 0, [bad, ...good], degrade);
    degraded.lease = volA;
    await degraded.write(8192, data, false);
    expect(seen).toHaveLength(1);
    expect(seen[0]!.succeeded).toBe(2);
    expect(seen[0]!.failures.map((f) => f.replica)).toEqual([bad]);
    expect((await readReplicaDirect(volA, 1, 8192, 4096)).equals(data)).toBe(true);
    // Slot 0 missed that write (a later issue marks it stale first): repair it through the volume.
    await volA.write(8192, data, false);
    data.copy(model, 8192);
    // The default handler fails the write, naming the replica.
    const strict = new Mirror('vol-a', 0, [bad, ...good]);
    strict.lease = volA;
    await expect(strict.write(8192, data, false))
      .rejects.toThrow(/failed on 1 replica\(s\): replica 0 of segment 99/);
  });

  it('keeps one pooled connection per node across volumes', () => {
    const pool = pools[0]!;
    expect(pool.size).toBe(3);
    expect(pool.connections().every((c) => c.connectCount === 1)).toBe(true);
  });

  it('a second head attaching with a higher epoch fences the first off', async () => {
    const regB = newRegistry();
    const volB = await regB.attach(map, 2);
    const off = CHUNK - 512;
    const before = await volB.read(off, 1024);
    await expect(volA.write(off, Buffer.alloc(1024, 0x5a), false)).rejects.toBeInstanceOf(StaleEpochError);
    await expect(volA.writeZeroes(off, 1024, false)).rejects.toBeInstanceOf(StaleEpochError);
    // Nothing changed on any replica.
    expect((await volB.read(off, 1024)).equals(before)).toBe(true);
    for (let slot = 0; slot < 3; slot++) {
      expect((await readReplicaDirect(volB, slot, off, 1024)).equals(model.subarray(off, off + 1024))).toBe(true);
    }
    // The old holder can no longer re-attach with its epoch; the new one writes.
    await expect(newRegistry().attach(map, 1)).rejects.toBeInstanceOf(StaleEpochError);
    const data = fill(1024, 1234);
    await volB.write(off, data, true);
    data.copy(model, off);
    expect((await volB.read(off, 1024)).equals(data)).toBe(true);
    // Idempotent re-attach at the same epoch returns the same device.
    expect(await regB.attach(map, 2)).toBe(volB);
    await regA.detach('vol-a', true);
    expect(regA.lookup('vol-a')).toBeUndefined();
    await expect(volA.read(0, 1)).rejects.toThrow(/detached/);
    regA = regB;
    volA = volB;
  });

  it('a stopped node: reads still succeed from the others, writes fail naming the replica', async () => {
    const dead = trio.nodes[1]!;
    await dead.close();
    for (let i = 0; i < 12; i++) {
      const off = (i * 997_001) % (SIZE - 100_000);
      expect((await volA.read(off, 100_000)).equals(model.subarray(off, off + 100_000))).toBe(true);
    }
    expect((await volA.read(0, SIZE)).equals(model)).toBe(true);
    const err = await volA.write(CHUNK + 4096, Buffer.alloc(4096, 1), false).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(IoError);
    expect((err as Error).message).toContain(dead.dataAddress);
    expect((err as Error).message).toMatch(/replica \d of segment 1/);
    await expect(volA.flush()).rejects.toThrow(dead.dataAddress);
  });

  it('attach fails clearly when a replica node cannot be fenced', async () => {
    const reg = newRegistry();
    await expect(reg.attach(map, 3)).rejects.toThrow(/could not be fenced/);
    expect(reg.lookup('vol-a')).toBeUndefined();
    expect(reg.list()).toHaveLength(0);
  });

  it('rejects a malformed map before touching any node', async () => {
    const reg = newRegistry();
    await expect(reg.attach({ ...map, segments: map.segments.slice(1) }, 5)).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(reg.attach({ ...map, chunkSize: 0 }, 5)).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(reg.attach(map, 0)).rejects.toThrow(/epoch/);
    const badSeg = { ...map.segments[0]!, replicas: map.segments[0]!.replicas.map((r) => ({ ...r, state: 'stale' })) };
    await expect(reg.attach({ ...map, segments: [badSeg, ...map.segments.slice(1)] }, 5)).rejects.toThrow(/no in-sync replica/);
    expect(pools.at(-1)!.size).toBe(0);
  });
});
