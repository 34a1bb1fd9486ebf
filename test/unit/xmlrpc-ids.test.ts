import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

process.env.VSKY_LOG_LEVEL ??= 'silent';
const { ManagerCore } = await import('../../manager/core.js');
const { FakePeers } = await import('../harness/manager-fake-peers.js');
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

  it('adopts the ids nodes and heads report keeping; of two claims of one id the first keeps it, the other gets a fresh one (event); counters continue above', async () => {
    const peers = new FakePeers();
    const a = peers.addNode('srvA');
    const b = peers.addNode('srvB');
    const c = await open(peers);
    const cluster = c.store.clusterId;
    Object.assign(a.info, { ssvrid: 5, intIdsClusterId: cluster });
    Object.assign(a.addDisk('dA', 10, CHUNK), { clusterId: cluster, pdskid: 9, dextIds: [100, 10] });
    Object.assign(b.info, { ssvrid: 5, intIdsClusterId: cluster }); // the same ssvrid: a conflict
    Object.assign(b.addDisk('dB', 10, CHUNK), { clusterId: cluster, pdskid: 12, dextIds: [105, 10] }); // extents overlap dA's
    const other = peers.addNode('srvC'); // ids of another cluster: not claimed
    Object.assign(other.info, { ssvrid: 40, intIdsClusterId: '00000000-0000-4000-8000-000000000000' });
    other.addDisk('dC', 10, CHUNK);
    await c.registry.registerServer(a.nodeInfo());
    await c.registry.registerServer(b.nodeInfo());
    await c.registry.registerServer(other.nodeInfo());
    const head = (id: string, hsvrid: number) => c.registry.registerHead({
      headId: id, name: id, controlAddress: '10.0.1.1:7720', nbdAddress: '10.0.1.1:10809', hsvrid, hsvridClusterId: cluster,
    });
    await head('h1', 3);
    await head('h2', 3);
    const ids = await IntIds.open(c);
    const server = (id: string) => c.registry.server(id)!;
    const disk = (id: string) => c.registry.disk(id)!;
    expect(server('srvA').intId).toBe(5);
    expect(server('srvB').intId).toBe(6); // fresh, above the adopted 5
    expect(server('srvC').intId).toBe(7);
    expect([disk('dA').intId, disk('dA').dextIds]).toEqual([9, [100, 10]]);
    expect(disk('dB').intId).toBe(12);
    expect(disk('dB').dextIds![0]).toBeGreaterThanOrEqual(110); // fresh: its claimed extents overlapped dA's
    expect(disk('dC').intId).toBe(13);
    expect(c.registry.head('h1')!.intId).toBe(3);
    expect(c.registry.head('h2')!.intId).toBe(4);
    for (const r of [server('srvB'), disk('dB'), c.registry.head('h2')!]) expect(r.claimedIntId).toBeUndefined();
    const conflicts = (await c.events.list({})).filter((e) => e.kind === 'intid.conflict');
    expect(conflicts.map((e) => e.target).sort()).toEqual(['disk:dB', 'head:h2', 'server:srvB']);
    // A new volume's lvolid comes after every extent block adopted or given.
    const v = await c.volumes.create({ name: 'v', size: 2 * CHUNK, replicas: 2, spreadLabel: '' });
    await ids.sync();
    const top = Math.max(...c.registry.listDisks().map((d) => d.dextIds![0]! + d.dextIds![1]! - 1));
    expect(v.intId).toBeGreaterThan(top);
    // Kept across a restart, claims and all.
    await c.close();
    core = undefined;
    const c2 = await open(peers);
    await IntIds.open(c2);
    expect(c2.registry.server('srvB')!.intId).toBe(6);
    expect(c2.registry.head('h1')!.intId).toBe(3);
  });
});
