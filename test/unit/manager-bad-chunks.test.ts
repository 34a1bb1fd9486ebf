import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

process.env.VSKY_LOG_LEVEL ??= 'silent';
const { ManagerCore } = await import('../../manager/core.js');
const { FakePeers } = await import('../harness/manager-fake-peers.js');
const { IntIds } = await import('../../manager/xmlrpc/ids.js');
const { notifyMethods } = await import('../../manager/xmlrpc/methods-notify.js');
const { serverMethods } = await import('../../manager/xmlrpc/methods-servers.js');
const { BAD_OWNER } = await import('../../manager/placement/model-disk.js');

// notifyBadBlocks on free chunks (issue 10): a chunk under a reported bad
// block is never handed out again, also after a manager restart; one a
// volume owns becomes bad when the volume lets it go.

type Core = Awaited<ReturnType<typeof ManagerCore.open>>;

const CHUNK = 256 * 1024 * 1024; // 4 chunks per GB, as VastSky's bad-block numbers are GB offsets
let dir: string;
let core: Core | undefined;

beforeEach(() => { dir = mkdtempSync(join(tmpdir(), 'vsky-bad-chunks-')); });
afterEach(async () => {
  await core?.close();
  core = undefined;
  rmSync(dir, { recursive: true, force: true });
});

async function open(peers: InstanceType<typeof FakePeers>): Promise<{ c: Core; ids: Awaited<ReturnType<typeof IntIds.open>> }> {
  core = await ManagerCore.open({ dataDir: dir, chunkSize: CHUNK, heartbeatTimeoutMs: 60_000 }, peers);
  for (const n of peers.nodes.values()) await core.registry.registerServer(n.nodeInfo());
  return { c: core, ids: await IntIds.open(core) };
}

describe('bad chunks (XML-RPC notifyBadBlocks)', () => {
  it('takes free chunks under bad blocks out of placement for good, and an owned one once its volume lets it go', async () => {
    const peers = new FakePeers();
    for (let i = 0; i < 2; i++) peers.addNode(`srv${i}`).addDisk(`d${i}`, 8, CHUNK); // 2 GB each
    let { c, ids } = await open(peers);
    const v = await c.volumes.create({ name: 'v', size: CHUNK, replicas: 2, spreadLabel: '' });
    const owned = c.volumes.find('v')!.map.locs[1]!; // its chunk index on the first disk of its map
    const disk0 = c.volumes.find('v')!.map.disks[0]!;
    const d = c.registry.disk(disk0)!;
    expect(c.model.ownerOf(disk0, owned)).toBe(v.id);
    // Bad block 0 (GB 0: chunks 0..3) covers the owned chunk and three free ones.
    const notify = (blocks: number[]) => notifyMethods.notifyBadBlocks!({ core: c, ids }, { ver: 5, pdskid: d.intId!, blocks });
    expect(await notify([0])).toBe(0);
    expect(c.registry.disk(disk0)!.badChunks).toEqual([0, 1, 2, 3]);
    const free = [0, 1, 2, 3].filter((i) => i !== owned);
    for (const i of free) expect(c.model.ownerOf(disk0, i)).toBe(BAD_OWNER);
    expect(c.model.ownerOf(disk0, owned)).toBe(v.id); // still the volume's
    expect(c.model.diskUsage(disk0)).toEqual({ chunkCount: 8, used: 4 });
    expect(c.model.ownersOnDisk(disk0)).toEqual(new Map([[v.id, 1]]));
    const events = (await c.events.list({})).filter((e) => e.kind === 'disk.bad_blocks');
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({ target: `disk:${disk0}`, details: { chunks: 4 } });
    expect(await notify([0])).toBe(0); // again: nothing new
    expect((await c.events.list({})).filter((e) => e.kind === 'disk.bad_blocks')).toHaveLength(1);

    // Placement fills every other chunk and never a bad one.
    for (let i = 0; ; i++) {
      try {
        await c.volumes.create({ name: `fill${i}`, size: CHUNK, replicas: 2, spreadLabel: '' });
      } catch {
        break;
      }
    }
    for (const i of free) expect(c.model.ownerOf(disk0, i)).toBe(BAD_OWNER);
    expect(c.model.diskUsage(disk0)!.used).toBe(8);

    // Persisted: a restarted manager still keeps them out; the owned one turns bad when its volume is deleted.
    await c.close();
    core = undefined;
    ({ c, ids } = await open(peers));
    for (const i of free) expect(c.model.ownerOf(disk0, i)).toBe(BAD_OWNER);
    expect(c.model.ownerOf(disk0, owned)).toBe(v.id);
    await c.volumes.delete('v');
    await c.gc.run('test');
    expect(c.model.ownerOf(disk0, owned)).toBe(BAD_OWNER);
    // VastSky's view: the disk went from HIGH (1) to LOW (2); the other stays HIGH.
    const listed = await serverMethods.listPhysicalDisks!({ core: c, ids }, { ver: 5 }) as Array<{ disk_id: string; priority: number }>;
    expect(listed.map((x) => [x.disk_id, x.priority]).sort()).toEqual([[disk0, 2], [disk0 === 'd0' ? 'd1' : 'd0', 1]].sort());
  });
});
