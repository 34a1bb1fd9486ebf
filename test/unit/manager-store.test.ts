import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

// Quiet the manager's loggers: they bind their level when first imported.
process.env.VSKY_LOG_LEVEL ??= 'silent';
const { ManagerCore } = await import('../../manager/core.js');
const { ManagerStore } = await import('../../manager/store.js');
const { FakePeers } = await import('../harness/manager-fake-peers.js');
const { buildChunkMap } = await import('../../manager/types.js');
const { CorruptMetadataError } = await import('../../shared/errors.js');

type Core = Awaited<ReturnType<typeof ManagerCore.open>>;
type Peers = InstanceType<typeof FakePeers>;

const CHUNK = 1 << 20;
let dir: string;

beforeEach(() => { dir = mkdtempSync(join(tmpdir(), 'vsky-mgr-store-')); });
afterEach(() => { rmSync(dir, { recursive: true, force: true }); });

function peersWith(servers = 3, chunks = 20): Peers {
  const peers = new FakePeers();
  for (let i = 0; i < servers; i++) peers.addNode(`srv${i}`).addDisk(`d${i}`, chunks, CHUNK);
  return peers;
}

async function open(peers: Peers): Promise<Core> {
  return ManagerCore.open({ dataDir: dir, chunkSize: CHUNK, heartbeatTimeoutMs: 60_000 }, peers);
}

async function openRegistered(peers: Peers): Promise<Core> {
  const core = await open(peers);
  for (const n of peers.nodes.values()) await core.registry.registerServer(n.nodeInfo());
  return core;
}

async function keysIn(prefix: string): Promise<string[]> {
  const store = await ManagerStore.open(dir);
  try {
    return (await store.db.keys({ gte: prefix, lt: `${prefix}\xff` }).all());
  } finally {
    await store.close();
  }
}

describe('manager store', () => {
  it('rolls back a pending create on reopen and frees its chunks', async () => {
    const peers = peersWith();
    await (await openRegistered(peers)).close();

    // A manager died after step 1 and part of step 2 of a create (volume id 5).
    const planned = [0, 1].flatMap((segment) => [0, 1, 2].map((slot) => ({ segment, slot, diskId: `d${slot}`, chunkIndex: segment })));
    const map = buildChunkMap(5, 3, 2, planned);
    const volume = {
      id: 5, name: 'half', size: 2 * CHUNK, replicas: 3, chunkSize: CHUNK, segmentCount: 2, generation: 1, epoch: 0,
      attachedHead: '', nbdUri: '', spreadLabel: '', createdMs: 1,
    };
    const store = await ManagerStore.open(dir);
    await store.write(store.batch().putPending({ volume, map, startedMs: 1 }).putNextVolumeId(6));
    await store.close();
    for (const p of planned.slice(0, 3)) {
      await peers.node.allocateChunk(`10.0.0.${p.slot + 1}:7711`, { diskId: p.diskId, chunkIndex: p.chunkIndex, identity: { volumeId: 5, volumeName: 'half' } });
    }
    expect(peers.ownedChunks().size).toBe(3);

    const core = await open(peers);
    expect(core.volumes.list()).toEqual([]);
    expect(() => core.volumes.entry('half')).toThrow(/no volume "half"/);
    // still reserved until the nodes confirm
    expect(core.model.ownerOf('d0', 0)).toBe(5);
    const report = await core.gc.run('test');
    expect(report.pendingRolledBack).toBe(1);
    expect(report.chunksFreed).toBe(6);
    expect(peers.ownedChunks().size).toBe(0);
    expect(core.model.ownerOf('d0', 0)).toBe(0);
    expect(core.freer.size).toBe(0);
    // the id was consumed by the dead create and is not handed out again
    const v = await core.volumes.create({ name: 'next', size: CHUNK, replicas: 3, spreadLabel: '' });
    expect(v.id).toBe(6);
    await core.close();
    expect(await keysIn('pending/')).toEqual([]);
    expect(await keysIn('tofree/')).toEqual([]);
  });

  it('keeps chunks to free across restarts while their node is down', async () => {
    const peers = peersWith();
    const core = await openRegistered(peers);
    await core.volumes.create({ name: 'v', size: 3 * CHUNK, replicas: 3, spreadLabel: '' });
    peers.nodes.get('10.0.0.1:7711')!.down = true;
    await core.volumes.delete('v');
    expect(core.freer.size).toBe(3);
    await core.close();
    expect(await keysIn('tofree/')).toHaveLength(3);

    peers.nodes.get('10.0.0.1:7711')!.down = false;
    const again = await open(peers);
    expect(again.model.ownerOf('d0', 0)).toBe(1); // not reusable before its node freed it
    await again.gc.run('test');
    expect(again.freer.size).toBe(0);
    expect(peers.ownedChunks().size).toBe(0);
    await again.close();
    expect(await keysIn('tofree/')).toEqual([]);
  });

  it('persists the volume id counter: ids are never reused', async () => {
    const peers = peersWith();
    let core = await openRegistered(peers);
    const a = await core.volumes.create({ name: 'a', size: CHUNK, replicas: 2, spreadLabel: '' });
    const b = await core.volumes.create({ name: 'b', size: CHUNK, replicas: 2, spreadLabel: '' });
    await core.volumes.delete('b');
    // a failed create consumes its id too
    peers.nodes.get('10.0.0.2:7711')!.failAllocate = () => true;
    await expect(core.volumes.create({ name: 'c', size: CHUNK, replicas: 3, spreadLabel: '' })).rejects.toThrow(/nothing was created/);
    peers.nodes.get('10.0.0.2:7711')!.failAllocate = undefined;
    await core.close();
    expect([a.id, b.id]).toEqual([1, 2]);

    core = await open(peers);
    expect(core.volumes.list().map((v) => v.name)).toEqual(['a']);
    const d = await core.volumes.create({ name: 'd', size: CHUNK, replicas: 2, spreadLabel: '' });
    expect(d.id).toBe(4);
    await core.close();
  });

  it('writes a volume and its chunk ownership in one batch', async () => {
    const peers = peersWith();
    const core = await openRegistered(peers);
    const writes: Array<{ kind: string; keys: string[] }> = [];
    const db = core.store.db as unknown as Record<string, (...a: unknown[]) => Promise<unknown>>;
    for (const kind of ['put', 'del', 'batch']) {
      const orig = db[kind]!.bind(core.store.db);
      db[kind] = (...args: unknown[]) => {
        const ops = kind === 'batch' ? (args[0] as Array<{ key: string }>) : [{ key: args[0] as string }];
        writes.push({ kind, keys: ops.map((o) => o.key) });
        return orig(...args);
      };
    }
    await core.volumes.create({ name: 'v', size: 4 * CHUNK, replicas: 3, spreadLabel: '' });
    const commit = writes.filter((w) => w.keys.includes('volume/0000000001'));
    expect(commit).toHaveLength(1);
    expect(commit[0]!.kind).toBe('batch');
    // The volume.created event (manager/events.ts) commits in the same batch.
    expect(commit[0]!.keys.filter((k) => !k.startsWith('event/')).sort()).toEqual(['chunks/0000000001', 'pending/0000000001', 'volume/0000000001']);
    expect(commit[0]!.keys.filter((k) => k.startsWith('event/'))).toHaveLength(1);
    expect(writes.filter((w) => w.keys.includes('chunks/0000000001'))).toHaveLength(1);
    await core.close();

    const again = await open(peers);
    const { volume, map } = again.volumes.entry('v');
    expect(volume.segmentCount).toBe(4);
    expect(map.locs).toHaveLength(4 * 3 * 2);
    // ownership is claimed from the map on load: 12 chunks, all owned by volume 1
    expect(again.model.totals().usedChunks).toBe(12);
    for (const [, owner] of peers.ownedChunks()) expect(owner).toBe(1);
    await again.close();
  });

  it('a create whose commit batch fails leaves no volume, and a dead rollback is finished at the next start', async () => {
    const peers = peersWith();
    const core = await openRegistered(peers);
    const db = core.store.db as unknown as { batch: (ops: Array<{ key: string }>) => Promise<void> };
    const orig = db.batch.bind(core.store.db);
    let failRollback = true;
    db.batch = (ops) => {
      if (ops.some((o) => o.key.startsWith('volume/'))) return Promise.reject(new Error('disk full'));
      if (failRollback && ops.some((o) => o.key.startsWith('tofree/'))) return Promise.reject(new Error('disk gone'));
      return orig(ops);
    };
    await expect(core.volumes.create({ name: 'v', size: 2 * CHUNK, replicas: 3, spreadLabel: '' })).rejects.toThrow(/disk full/);
    expect(core.volumes.list()).toEqual([]);
    // the manager "died": its rollback never reached the database
    failRollback = false;
    expect(peers.ownedChunks().size).toBe(6);
    await core.close();
    expect(await keysIn('pending/')).toHaveLength(1);
    expect(await keysIn('volume/')).toEqual([]);

    const again = await open(peers);
    expect(again.volumes.list()).toEqual([]);
    await again.gc.run('test');
    expect(peers.ownedChunks().size).toBe(0);
    expect(again.model.totals().usedChunks).toBe(0);
    await again.close();
    expect(await keysIn('pending/')).toEqual([]);
    expect(await keysIn('chunks/')).toEqual([]);
  });

  it('refuses a database with a volume but no chunk map', async () => {
    const store = await ManagerStore.open(dir);
    await store.write(store.batch().putVolume({
      id: 1, name: 'x', size: CHUNK, replicas: 1, chunkSize: CHUNK, segmentCount: 1, generation: 1, epoch: 0,
      attachedHead: '', nbdUri: '', spreadLabel: '', createdMs: 1,
    }));
    await store.close();
    await expect(open(peersWith())).rejects.toBeInstanceOf(CorruptMetadataError);
  });
});
