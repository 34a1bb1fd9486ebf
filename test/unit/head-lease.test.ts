import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LinearVolume } from '../../head-agent/engine/linear-volume.js';
import { NodePool } from '../../head-agent/engine/node-pool.js';
import { Attachments, type VolumeMap } from '../../head-agent/attachments.js';
import { MiB } from '../../shared/constants.js';
import { IoError, StaleEpochError } from '../../shared/errors.js';
import { fill } from '../harness/seeded-bytes.js';
import { allocateVolume, startNodeTrio, type NodeTrio } from '../harness/storage-node-trio.js';

// The head's side of the write lease (head-agent/engine/linear-volume.ts): a standby
// does no storage I/O until it holds the lease; a release drains and flushes
// before it answers; a STALE_EPOCH reply or a revocation fences the volume for
// good. Three real storage nodes in-process; the manager's part of a hand-off
// (release the holder, then grant the standby a new epoch) is played by the
// test through the same registry calls the control service makes
// (manager/leases.ts has its own tests, test/integration/leases.test.ts the
// whole thing with real processes).

const CHUNK = 4 * MiB;
const SIZE = 2 * CHUNK;
let trio: NodeTrio;
let map: VolumeMap;
const pools: NodePool[] = [];

function registry(requester?: (v: LinearVolume) => Promise<void>): Attachments {
  const pool = new NodePool({ dataTimeoutMs: 3000, backoffInitialMs: 50 });
  pools.push(pool);
  return new Attachments({ pool, leaseRequester: requester });
}

beforeAll(async () => {
  trio = await startNodeTrio('vsky-head-lease-', CHUNK);
  map = await allocateVolume(trio, { volumeId: 77, name: 'vl', size: SIZE, chunkSize: CHUNK });
});
afterAll(async () => {
  await Promise.all(pools.map((p) => p.close()));
  await trio.close();
});

describe('head write lease', () => {
  let epoch = 0;
  const regs: { a?: Attachments; b?: Attachments } = {};
  /** The manager's move, in-process: release the holder, grant the asker a new epoch (fencing every node). */
  const move = (to: 'a' | 'b') => async (): Promise<void> => {
    const from = to === 'a' ? regs.b! : regs.a!;
    await from.release('vl', epoch);
    epoch++;
    await regs[to]!.attach(map, epoch);
  };

  it('a standby does no storage I/O before it holds the lease; a refused request fails the I/O', async () => {
    epoch = 1;
    regs.a = registry(move('a'));
    const a = await regs.a.attach(map, epoch);
    await a.write(0, fill(8192, 1), true);
    const refusing = registry(async () => { throw new IoError('manager unreachable (test)'); });
    const s = await refusing.attach(map, epoch, { standby: true });
    expect(s.lease).toBe('standby');
    await expect(s.write(0, fill(8192, 2), true)).rejects.toThrow(/manager unreachable/);
    await expect(s.read(0, 8192)).rejects.toThrow(/manager unreachable/);
    await s.flush(); // nothing to flush on a standby
    expect((await a.read(0, 8192)).equals(fill(8192, 1))).toBe(true);
    expect(s.lease).toBe('standby');
    await refusing.detach('vl', true);
  });

  it('hand-off: the holder finishes and flushes its writes before the standby gets epoch+1; the lease moves back on the next I/O', async () => {
    regs.b = registry(move('b'));
    const a = regs.a!.lookup('vl')!;
    const b = await regs.b.attach(map, epoch, { standby: true });
    // Writes in flight on the holder when the standby asks.
    const inflight = Array.from({ length: 16 }, (_, i) => a.write(i * 65536, fill(65536, 100 + i), false));
    const bWrite = b.write(CHUNK, fill(4096, 7), false);
    const results = await Promise.allSettled(inflight);
    expect(results.every((r) => r.status === 'fulfilled')).toBe(true);
    await bWrite;
    expect(a.lease).toBe('standby');
    expect(b.lease).toBe('held');
    expect(b.epoch).toBe(2);
    for (let i = 0; i < 16; i++) expect((await b.read(i * 65536, 65536)).equals(fill(65536, 100 + i))).toBe(true);
    // The old holder's next write pulls the lease back (epoch 3), and it reads the newest data.
    await a.write(CHUNK + 4096, fill(4096, 8), true);
    expect([a.lease, b.lease, a.epoch]).toEqual(['held', 'standby', 3]);
    expect((await a.read(CHUNK, 4096)).equals(fill(4096, 7))).toBe(true);
  });

  it('a STALE_EPOCH reply fences the volume for good: no later request reaches storage until it is attached again', async () => {
    const a = regs.a!.lookup('vl')!;
    const other = registry();
    const c = await other.attach(map, 10); // another head took over with a higher epoch (fenced every node)
    await c.write(0, fill(4096, 9), true);
    const err = await a.write(0, fill(4096, 66), false).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StaleEpochError); // premise: refused by the nodes' epoch check
    expect(a.lease).toBe('fenced');
    await expect(a.read(0, 4096)).rejects.toThrow(/fenced on this head/);
    await expect(a.write(8192, fill(4096, 67), true)).rejects.toThrow(/fenced on this head/);
    await expect(a.flush()).rejects.toBeInstanceOf(StaleEpochError);
    expect((await c.read(0, 4096)).equals(fill(4096, 9))).toBe(true);
    expect((await c.read(8192, 4096)).equals(fill(65536, 100).subarray(8192, 12288))).toBe(true);
    // Attached again (a new grant) it serves again.
    await regs.a!.attach(map, 11);
    expect(a.lease).toBe('held');
    await a.write(0, fill(4096, 12), true);
    await other.detach('vl', true);
  });

  it('a revocation from the manager fences only a volume held under an older epoch', () => {
    const a = regs.a!.lookup('vl')!;
    regs.a!.revoke([{ volume: 'vl', epoch: 11 }, { volume: 'unknown', epoch: 99 }]);
    expect(a.lease).toBe('held');
    expect(regs.a!.heldLeases()).toEqual([{ volume: 'vl', epoch: 11 }]);
    regs.a!.revoke([{ volume: 'vl', epoch: 12 }]);
    expect(a.lease).toBe('fenced');
    expect(regs.a!.heldLeases()).toEqual([]);
  });
});
