import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

const { ManagerCore } = await import('../../manager/core.js');
const { FakePeers } = await import('../harness/manager-fake-peers.js');

// One written-region size per cluster (docs/snapshots.md "Written regions of
// 4 KiB"): the manager takes that of its disks (4 KiB for new ones; an older
// node's 0 means chunk size / 4096) and fails a disk of another size, which
// then takes no chunks.

type Core = Awaited<ReturnType<typeof ManagerCore.open>>;
const CHUNK = 256 * 1024 * 1024;
let dir: string;
let core: Core | undefined;

beforeEach(() => { dir = mkdtempSync(join(tmpdir(), 'vsky-region-size-')); });
afterEach(async () => {
  await core?.close();
  core = undefined;
  rmSync(dir, { recursive: true, force: true });
});

async function open(peers: InstanceType<typeof FakePeers>): Promise<Core> {
  core = await ManagerCore.open({ dataDir: dir, chunkSize: CHUNK, heartbeatTimeoutMs: 60_000 }, peers);
  for (const n of peers.nodes.values()) await core.registry.registerServer(n.nodeInfo());
  return core;
}

describe('the cluster region size', () => {
  it('a new cluster has 4 KiB regions; a disk formatted with 64 KiB ones is failed and takes no chunks', async () => {
    const peers = new FakePeers();
    peers.addNode('srv0').addDisk('d0', 8, CHUNK);
    peers.addNode('srv1').addDisk('d1', 8, CHUNK);
    peers.addNode('srv2').addDisk('d2', 8, CHUNK).regionSize = 64 * 1024;
    const c = await open(peers);
    expect(c.registry.regionSize()).toBe(4096);
    expect(c.registry.disk('d0')!.state).toBe('active');
    expect(c.registry.disk('d2')).toMatchObject({ state: 'failed', regionSize: 65536 });
    expect(c.registry.disk('d2')!.stateReason).toMatch(/region size 65536 differs from the cluster's 4096/);
    await c.volumes.create({ name: 'v', size: 4 * CHUNK, replicas: 2, spreadLabel: '' });
    expect(c.volumes.find('v')!.map.disks).not.toContain('d2');
  });

  it('a cluster of disks from before 4 KiB regions (older nodes report 0) keeps chunk size / 4096 and fails a 4 KiB disk', async () => {
    const peers = new FakePeers();
    peers.addNode('srv0').addDisk('d0', 8, CHUNK).regionSize = 0;
    peers.addNode('srv1').addDisk('d1', 8, CHUNK).regionSize = 0;
    peers.addNode('srv2').addDisk('d2', 8, CHUNK);
    const c = await open(peers);
    expect(c.registry.regionSize()).toBe(65536);
    expect(c.registry.disk('d0')).toMatchObject({ state: 'active', regionSize: 65536 });
    expect(c.registry.disk('d2')!.state).toBe('failed');
  });
});
