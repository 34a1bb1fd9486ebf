import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { MiB } from '../../shared/constants.js';
import { call } from '../../shared/grpc.js';
import { destroyTestCluster, startTestCluster } from '../harness/cluster.js';
import { expectReplicasEqual } from '../harness/replicas.js';
import { VerifyingWriter } from '../harness/verifier.js';
import { vsky } from '../harness/vsky.js';

// Graceful removal with real processes (manager/resync/drains.ts): `vsky server
// remove` and `vsky disk remove` copy every replica elsewhere before the
// removal, and a sampler reading the manager's map every 100 ms checks that
// no segment ever has fewer in-sync replicas than it should. A verifying
// writer (a model of every acknowledged write) runs through NBD during the
// disk drain; afterwards every replica holds the same bytes.

const SIZE = 32 * MiB;
const BLOCKS = SIZE / 4096;

/** Samples the volume's map until stopped; returns the fewest in-sync replicas any segment had, and the most replicas seen on one. */
function sampleRedundancy(c: LocalCluster, name: string): { stop: () => Promise<{ minInSync: number; maxReplicas: number; samples: number }> } {
  let running = true;
  let minInSync = Infinity;
  let maxReplicas = 0;
  let samples = 0;
  const loop = (async () => {
    const m = c.client();
    try {
      while (running) {
        const map = (await call(m, 'ShowVolume', { name })).map!;
        for (const seg of map.segments) {
          minInSync = Math.min(minInSync, seg.replicas.filter((r) => r.state === 'in_sync').length);
          maxReplicas = Math.max(maxReplicas, seg.replicas.length);
        }
        samples++;
        await new Promise((r) => setTimeout(r, 100));
      }
    } finally {
      m.close();
    }
  })();
  return { stop: async () => { running = false; await loop; return { minInSync, maxReplicas, samples }; } };
}

async function disks(c: LocalCluster): Promise<Array<{ diskId: string; serverName: string; state: string; usedChunks: number }>> {
  const r = await vsky(['disk', 'list', '--json'], c.managerAddress);
  expect(r.exitCode, String(r.stderr)).toBe(0);
  return JSON.parse(String(r.stdout));
}

describe('graceful removal: drain with full redundancy throughout', () => {
  let c: LocalCluster;
  beforeAll(async () => {
    c = await startTestCluster({ servers: 4, managerArgs: ['--resync-mibps', '64'] });
  });
  afterAll(() => destroyTestCluster(c));

  it('vsky server remove: a detached volume is copied node to node, then the server is removed; the data reads back', async () => {
    const uri = await c.ensureVolume('srvdrain', SIZE, 3);
    const w = new VerifyingWriter({ uri, blocks: BLOCKS, queueDepth: 8 });
    w.start();
    await new Promise((r) => setTimeout(r, 1500));
    await w.stop();
    expect(await vsky(['volume', 'detach', 'srvdrain'], c.managerAddress)).toMatchObject({ exitCode: 0 });
    const m = c.client();
    const map = (await call(m, 'ShowVolume', { name: 'srvdrain' }).finally(() => m.close())).map!;
    const victim = map.segments[0]!.replicas[0]!.serverId;
    const sampler = sampleRedundancy(c, 'srvdrain');
    const started = Date.now();
    const r = await vsky(['server', 'remove', victim, '--json', '--interval', '200'], c.managerAddress);
    const took = Date.now() - started;
    const seen = await sampler.stop();
    expect(r.exitCode, String(r.stderr)).toBe(0);
    expect(JSON.parse(String(r.stdout))).toMatchObject({ serverId: victim, state: 'removed', draining: false });
    console.log(`server drain: ${took} ms; ${seen.samples} samples, fewest in-sync replicas ${seen.minInSync}, most replicas ${seen.maxReplicas}`);
    expect(seen.minInSync).toBe(3);
    expect(seen.maxReplicas).toBe(4); // the drain target rode along with the three in-sync replicas
    const after = (await call(c.client(), 'ShowVolume', { name: 'srvdrain' })).map!;
    expect(after.segments.flatMap((s) => s.replicas).some((x) => x.serverId === victim)).toBe(false);
    await expectReplicasEqual(c, 'srvdrain');
    // Attach again and check every block against the model.
    const again = await vsky(['volume', 'attach', 'srvdrain', '--json'], c.managerAddress);
    expect(again.exitCode, String(again.stderr)).toBe(0);
    w.switchTo(JSON.parse(String(again.stdout)).nbdUri);
    expect(await w.verifyAll()).toEqual([]);
    w.close();
  }, 120_000);

  it('vsky disk remove under a verifying writer: each replica is copied to the sibling disk on its own server, no write is lost', async () => {
    // Three servers are left: every server holds a replica of each segment,
    // so a disk can only be drained onto another disk of its own server
    // (the new chunk is known there by another slot number).
    const uri = await c.ensureVolume('diskdrain', SIZE, 3);
    const w = new VerifyingWriter({ uri, blocks: BLOCKS, queueDepth: 8 });
    w.start();
    await new Promise((r) => setTimeout(r, 1000));
    const m = c.client();
    const map = (await call(m, 'ShowVolume', { name: 'diskdrain' }).finally(() => m.close())).map!;
    const victim = map.segments[0]!.replicas[0]!;
    const sampler = sampleRedundancy(c, 'diskdrain');
    w.resetStall();
    const acked = w.stats.writesAcked;
    const started = Date.now();
    const r = await vsky(['disk', 'remove', victim.diskId, '--json', '--interval', '200'], c.managerAddress);
    const took = Date.now() - started;
    const seen = await sampler.stop();
    await new Promise((res) => setTimeout(res, 500));
    await w.stop();
    expect(r.exitCode, String(r.stderr)).toBe(0);
    expect(JSON.parse(String(r.stdout))).toMatchObject({ diskId: victim.diskId, state: 'removed' });
    console.log(`disk drain: ${took} ms; write stall ${w.stats.maxStallMs} ms; ${w.stats.writesAcked - acked} writes acknowledged meanwhile, ` +
      `${w.stats.writeErrors} failed; ${seen.samples} samples, fewest in-sync replicas ${seen.minInSync}`);
    expect(seen.minInSync).toBe(3);
    expect(w.stats.writesAcked).toBeGreaterThan(acked);
    expect(w.stats.writeErrors).toBe(0);
    expect(w.stats.violations).toEqual([]);
    expect(await w.verifyAll()).toEqual([]);
    w.close();
    const after = (await call(c.client(), 'ShowVolume', { name: 'diskdrain' })).map!;
    const moved = after.segments.flatMap((s) => s.replicas).filter((x) => x.serverId === victim.serverId);
    expect(moved.every((x) => x.diskId !== victim.diskId && x.state === 'in_sync')).toBe(true);
    expect(moved.some((x) => x.slot >= 3)).toBe(true); // known to its node by a new slot number
    await expectReplicasEqual(c, 'diskdrain');
    const row = (await disks(c)).find((d) => d.diskId === victim.diskId)!;
    expect(row).toMatchObject({ state: 'removed' });
  }, 120_000);
});
