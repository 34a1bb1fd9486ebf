import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { MiB } from '../../shared/constants.js';
import { call, storageNodeClient } from '../../shared/grpc.js';
import { destroyTestCluster, startTestCluster, chunksOnNodes } from '../harness/cluster.js';
import { run } from '../harness/tools.js';
import { vsky, vskyJson } from '../harness/vsky.js';

// Rule 6: metadata commits atomically; an interrupted create leaves only
// garbage, and GC reclaims it without touching committed volumes. The manager
// is killed with SIGKILL (a crash point, so it dies at an exact step: after
// the 5th of 18 chunk allocations, before the commit).


describe('manager killed -9 in the middle of a volume create', () => {
  let c: LocalCluster;
  beforeAll(async () => {
    c = await startTestCluster();
  });
  afterAll(() => destroyTestCluster(c));

  it('leaves no visible volume, and GC frees exactly the orphaned chunks', async () => {
    const m = c.managerAddress;
    // A committed volume that must survive everything below.
    const keep = await vsky(['volume', 'create', 'keep', '--size', '32M', '--thick'], m);
    expect(keep.exitCode).toBe(0);
    c.manager.env = { VSKY_CRASH_AT: 'manager.create.allocated:5' };
    await c.manager.restart();

    const doomed = await vsky(['volume', 'create', 'doomed', '--size', '96M', '--thick'], m);
    expect(doomed.exitCode).not.toBe(0);
    expect(await c.manager.waitExit()).toBeNull(); // killed by a signal, not a clean exit
    const orphans = (await chunksOnNodes(c)).filter((ch) => ch.volumeName === 'doomed');
    expect(orphans.length).toBeGreaterThanOrEqual(5);

    c.manager.env = {};
    await c.manager.start();
    await c.waitRegistered();
    const names = (await vskyJson<{ name: string }[]>(['volume', 'list'], m)).map((v) => v.name);
    expect(names).toEqual(['keep']);

    const client = c.client();
    try {
      await call(client, 'CollectGarbage', {});
    } finally {
      client.close();
    }
    const left = await chunksOnNodes(c);
    expect(left.filter((ch) => ch.volumeName === 'doomed')).toEqual([]);
    expect(left.filter((ch) => ch.volumeName === 'keep')).toHaveLength(2 * 3);
    const disks = await vskyJson<{ usedChunks: number }[]>(['disk', 'list'], m);
    expect(disks.reduce((a, d) => a + d.usedChunks, 0)).toBe(6);

    // The name is free again and the new volume reads as zeros (rule 7).
    const again = await vsky(['volume', 'create', 'doomed', '--size', '96M', '--thick'], m);
    expect(again.exitCode).toBe(0);
    const uri = String((await vsky(['volume', 'attach', 'doomed'], m)).stdout).split('\n')[0]!;
    const r = await run('qemu-io', ['-f', 'raw', '-c', `read -P 0 0 ${96 * MiB}`, uri]);
    expect(String(r.stdout)).not.toMatch(/verification failed/);
  });
});
