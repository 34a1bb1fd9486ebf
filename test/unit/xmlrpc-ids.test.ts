import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

process.env.VSKY_LOG_LEVEL ??= 'silent';
const { ManagerCore } = await import('../../manager/core.js');
const { FakePeers } = await import('../support/manager-fake-peers.js');
const { IntIds, lvolBlock } = await import('../../manager/xmlrpc/ids.js');

// VastSky-style integer ids (manager/xmlrpc/ids.ts): given once, kept in the
// records, never reused, the lvol space shared by volumes and disk extents.

type Core = Awaited<ReturnType<typeof ManagerCore.open>>;

const CHUNK = 1 << 20;
let dir: string;
let core: Core | undefined;

beforeEach(() => { dir = mkdtempSync(join(tmpdir(), 'vsky-xmlrpc-ids-')); });
afterEach(async () => {
  await core?.close();
  core = undefined;
  rmSync(dir, { recursive: true, force: true });
});

async function open(peers: InstanceType<typeof FakePeers>): Promise<Core> {
  core = await ManagerCore.open({ dataDir: dir, chunkSize: CHUNK, heartbeatTimeoutMs: 5_000 }, peers);
  return core;
}

function lvolRanges(c: Core): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (const d of c.registry.listDisks()) for (let i = 0; i < (d.dextIds ?? []).length; i += 2) out.push([d.dextIds![i]!, d.dextIds![i + 1]!]);
  for (const v of c.volumes.list()) out.push([v.intId!, lvolBlock(v.segmentCount)]);
  return out.sort((a, b) => a[0] - b[0]);
}

describe('integer ids', () => {
  it('gives every record an id once, keeps them across restarts, and never overlaps lvol blocks', async () => {
    const peers = new FakePeers();
    for (let i = 0; i < 3; i++) peers.addNode(`srv${i}`).addDisk(`d${i}`, 10, CHUNK);
    let c = await open(peers);
    for (const n of peers.nodes.values()) await c.registry.registerServer(n.nodeInfo());
    const v1 = await c.volumes.create({ name: 'v1', size: 4 * CHUNK, replicas: 3, spreadLabel: '' });
    let ids = await IntIds.open(c);
    expect(c.registry.listServers().map((s) => s.intId).sort()).toEqual([1, 2, 3]);
    expect(c.registry.listDisks().map((d) => d.intId).sort()).toEqual([1, 2, 3]);
    expect(v1.intId).toBeGreaterThan(0);
    // One extent id per chunk, and no two blocks overlap.
    const ranges = lvolRanges(c);
    for (let i = 1; i < ranges.length; i++) expect(ranges[i]![0]).toBeGreaterThanOrEqual(ranges[i - 1]![0] + ranges[i - 1]![1]);
    const disk = c.registry.listDisks()[0]!;
    expect(ids.dext(ids.dextId(disk, 7))).toEqual({ disk, chunkIndex: 7 });
    expect(ids.volume(v1.intId!)?.name).toBe('v1');
    const before = { servers: c.registry.listServers().map((s) => [s.id, s.intId]), disks: c.registry.listDisks().map((d) => [d.id, d.intId, d.dextIds]), v1: v1.intId };

    await c.close();
    core = undefined;
    c = await open(peers);
    ids = await IntIds.open(c);
    expect(c.registry.listServers().map((s) => [s.id, s.intId])).toEqual(before.servers);
    expect(c.registry.listDisks().map((d) => [d.id, d.intId, d.dextIds])).toEqual(before.disks);
    expect(c.volumes.find('v1')?.volume.intId).toBe(before.v1);

    // New records get new ids past every id given, counters included.
    await c.volumes.delete('v1');
    const v2 = await c.volumes.create({ name: 'v2', size: 2 * CHUNK, replicas: 2, spreadLabel: '' });
    await ids.sync();
    expect(v2.intId).toBeGreaterThan(before.v1! + lvolBlock(4) - 1);
    expect(ids.volume(before.v1!)).toBeUndefined();
  });
});
