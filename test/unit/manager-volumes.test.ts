import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

process.env.VSKY_LOG_LEVEL ??= 'silent';
const { ManagerCore } = await import('../../manager/core.js');
const { FakePeers } = await import('../harness/manager-fake-peers.js');
const { volumeMapView } = await import('../../manager/views.js');
const { FOREIGN_OWNER } = await import('../../manager/placement/model-disk.js');
const errors = await import('../../shared/errors.js');
const { forEachReplica } = await import('../../manager/types.js');

type Core = Awaited<ReturnType<typeof ManagerCore.open>>;
type Peers = InstanceType<typeof FakePeers>;

const CHUNK = 1 << 20;
let dir: string;
let now = 1_000_000;
let core: Core | undefined;

beforeEach(() => { dir = mkdtempSync(join(tmpdir(), 'vsky-mgr-vol-')); now = 1_000_000; });
afterEach(async () => {
  await core?.close();
  core = undefined;
  rmSync(dir, { recursive: true, force: true });
});

async function setup(opts: { servers?: number; chunks?: number; racks?: number } = {}): Promise<{ core: Core; peers: Peers }> {
  const peers = new FakePeers();
  for (let i = 0; i < (opts.servers ?? 4); i++) {
    const labels = opts.racks ? { rack: `r${i % opts.racks}` } : undefined;
    peers.addNode(`srv${i}`, { labels }).addDisk(`d${i}`, opts.chunks ?? 20, CHUNK);
  }
  core = await ManagerCore.open({ dataDir: dir, chunkSize: CHUNK, heartbeatTimeoutMs: 5_000, now: () => now }, peers);
  for (const n of peers.nodes.values()) await core.registry.registerServer(n.nodeInfo());
  return { core, peers };
}

const create = (c: Core, name: string, size = 3 * CHUNK, replicas = 3) => c.volumes.create({ name, size, replicas, spreadLabel: '' });

describe('volume create', () => {
  it('refuses bad input with a clear error and changes nothing', async () => {
    const { core: c } = await setup();
    const cases: Array<[object, unknown, RegExp]> = [
      [{ name: '' }, errors.InvalidArgumentError, /invalid volume name/],
      [{ name: 'a b' }, errors.InvalidArgumentError, /invalid volume name/],
      [{ name: 'x'.repeat(65) }, errors.InvalidArgumentError, /1-64/],
      [{ size: 0 }, errors.InvalidArgumentError, /positive size/],
      [{ size: 1000 }, errors.InvalidArgumentError, /multiple of 512/],
      [{ replicas: 10 }, errors.InvalidArgumentError, /1 to 9/],
      [{ size: 100 * CHUNK }, errors.CapacityError, /add disks with vsky disk add/],
      [{ replicas: 5 }, errors.CapacityError, /5 replicas need 5 servers/],
    ];
    for (const [over, cls, msg] of cases) {
      const p = c.volumes.create({ name: 'ok', size: CHUNK, replicas: 3, spreadLabel: '', ...over });
      await expect(p).rejects.toBeInstanceOf(cls);
      await expect(p).rejects.toThrow(msg);
    }
    expect(c.model.totals().usedChunks).toBe(0);
    expect(c.volumes.list()).toEqual([]);
    expect(c.volumes.nextVolumeId).toBe(1);
    await create(c, 'ok');
    await expect(create(c, 'ok')).rejects.toBeInstanceOf(errors.AlreadyExistsError);
    await expect(c.volumes.delete('nope')).rejects.toThrow(/no volume "nope"/);
  });

  it('allocates every chunk on its node with the full identity', async () => {
    const { core: c, peers } = await setup();
    const v = await c.volumes.create({ name: 'vm1', size: 2 * CHUNK + 512, replicas: 0, spreadLabel: '' });
    expect(v).toMatchObject({ id: 1, segmentCount: 3, replicas: 3, generation: 1, epoch: 0, attachedHead: '' });
    const ids = [...peers.nodes.values()].flatMap((n) => [...n.disks.values()].flatMap((d) => [...d.chunks.values()]));
    expect(ids).toHaveLength(9);
    for (const id of ids) {
      expect(id).toMatchObject({ volumeId: 1, volumeName: 'vm1', volumeSize: 2 * CHUNK + 512, segmentCount: 3, replicas: 3, generation: 1, epoch: 0 });
    }
    expect(new Set(ids.map((i) => `${i.segment}/${i.slot}`)).size).toBe(9);
    const map = volumeMapView(v, c.volumes.entry('vm1').map, c.registry);
    expect(map.segments).toHaveLength(3);
    for (const seg of map.segments!) {
      expect(new Set(seg.replicas!.map((r) => r.serverId)).size).toBe(3);
      for (const r of seg.replicas!) {
        expect(r.state).toBe('in_sync');
        expect(r.dataAddress).toMatch(/:7710$/);
        expect(peers.ownedChunks().get(`${r.diskId}#${r.chunkIndex}`)).toBe(1);
      }
    }
  });

  it('rolls back when an allocation fails: frees what succeeded, the name stays free', async () => {
    const { core: c, peers } = await setup();
    peers.nodes.get('10.0.0.3:7711')!.failAllocate = () => true;
    await expect(c.volumes.create({ name: 'v', size: 4 * CHUNK, replicas: 4, spreadLabel: '' })).rejects.toThrow(/srv2.*nothing was created/);
    expect(peers.ownedChunks().size).toBe(0);
    expect(c.model.totals().usedChunks).toBe(0);
    expect(c.freer.size).toBe(0);
    peers.nodes.get('10.0.0.3:7711')!.failAllocate = undefined;
    expect((await create(c, 'v')).name).toBe('v');
  });

  it('keeps an unreachable node\'s chunks reserved until GC frees them', async () => {
    const { core: c, peers } = await setup();
    peers.nodes.get('10.0.0.1:7711')!.failAllocate = () => true;
    peers.nodes.get('10.0.0.2:7711')!.down = true;
    await expect(c.volumes.create({ name: 'v', size: 2 * CHUNK, replicas: 4, spreadLabel: '' })).rejects.toThrow();
    // srv1 may hold chunks (we cannot tell): they stay reserved and listed
    expect(c.freer.size).toBe(2);
    expect(c.model.totals().usedChunks).toBe(2);
    peers.nodes.get('10.0.0.2:7711')!.down = false;
    await c.gc.run('test');
    expect(c.model.totals().usedChunks).toBe(0);
  });

  it('concurrent creates never share a chunk', async () => {
    const { core: c, peers } = await setup({ servers: 5, chunks: 30 });
    peers.delayMs = 2;
    await Promise.all(Array.from({ length: 8 }, (_, i) => c.volumes.create({ name: `v${i}`, size: 5 * CHUNK, replicas: 3, spreadLabel: '' })));
    expect(peers.ownedChunks().size).toBe(8 * 15);
    expect(c.model.totals().usedChunks).toBe(8 * 15);
    expect(new Set(c.volumes.list().map((v) => v.id)).size).toBe(8);
  });

  it('spreads over racks by default when servers carry a rack label', async () => {
    const { core: c } = await setup({ servers: 6, racks: 3 });
    const v = await create(c, 'r');
    expect(v.spreadLabel).toBe('rack');
    const map = volumeMapView(v, c.volumes.entry('r').map, c.registry);
    for (const seg of map.segments!) {
      const racks = seg.replicas!.map((r) => c.registry.labelsOf(c.registry.server(r.serverId!)!).rack);
      expect(new Set(racks).size).toBe(3);
    }
  });
});

describe('delete, attach, detach', () => {
  async function withHeads(n: number) {
    const env = await setup();
    for (let i = 0; i < n; i++) {
      env.peers.addHead(`10.1.0.${i + 1}:7720`);
      await env.core.registry.registerHead({ headId: `head-${i}`, name: `hv${i}`, controlAddress: `10.1.0.${i + 1}:7720`, nbdAddress: '' });
    }
    return env;
  }

  it('attach grants a new epoch, re-pushes to the same head under a newer one, refuses another head', async () => {
    const { core: c, peers } = await withHeads(2);
    await create(c, 'v');
    await expect(c.attachments.attach('v', '')).rejects.toThrow(/2 head agents are registered.*--head/);
    const a = await c.attachments.attach('v', 'hv0');
    expect(a).toMatchObject({ epoch: 1, attachedHead: 'head-0', nbdUri: 'nbd://10.1.0.1:7720/v' });
    const got = peers.heads.get('10.1.0.1:7720')!.attached.get('v')!;
    expect(got.epoch).toBe(1);
    expect(got.req.map!.segments).toHaveLength(3);
    // Attaching again to the holder (it may have restarted) re-pushes under a new epoch.
    expect((await c.attachments.attach('v', 'head-0')).epoch).toBe(2);
    expect(peers.heads.get('10.1.0.1:7720')!.attached.get('v')!.epoch).toBe(2);
    // Another head: refused while the holder's lease is renewed, saying how long until a take-over is allowed.
    await expect(c.attachments.attach('v', 'hv1')).rejects.toThrow(/volume v is held by head hv0, whose lease was renewed .* take-over is allowed in 8\.0 s/);
    expect(c.volumes.entry('v').volume).toMatchObject({ epoch: 2, attachedHead: 'head-0' });
    await expect(c.volumes.delete('v')).rejects.toThrow(/attached to head hv0; detach it first/);
    await c.attachments.detach('v', false);
    const b = await c.attachments.attach('v', 'hv1');
    expect(b.epoch).toBe(3);
    expect(peers.heads.get('10.1.0.2:7720')!.attached.get('v')!.epoch).toBe(3);
  });

  it('a failed head attach leaves the volume detached but the epoch spent', async () => {
    const { core: c, peers } = await withHeads(1);
    await create(c, 'v');
    peers.heads.get('10.1.0.1:7720')!.fail = true;
    await expect(c.attachments.attach('v', '')).rejects.toThrow(/injected/);
    const { volume } = c.volumes.entry('v');
    expect(volume).toMatchObject({ attachedHead: '', epoch: 1 });
    peers.heads.get('10.1.0.1:7720')!.fail = false;
    expect((await c.attachments.attach('v', '')).epoch).toBe(2);
  });

  it('detach from an unreachable head needs --force', async () => {
    const { core: c, peers } = await withHeads(1);
    await create(c, 'v');
    await c.attachments.attach('v', '');
    peers.heads.get('10.1.0.1:7720')!.down = true;
    await expect(c.attachments.detach('v', false)).rejects.toThrow(/cannot reach head hv0.*--force/);
    expect(c.volumes.entry('v').volume.attachedHead).toBe('head-0');
    await c.attachments.detach('v', true);
    expect(c.volumes.entry('v').volume.attachedHead).toBe('');
    await c.volumes.delete('v');
    expect(peers.ownedChunks().size).toBe(0);
    expect(c.model.totals().usedChunks).toBe(0);
  });

  it('attach needs a registered head', async () => {
    const { core: c } = await withHeads(0);
    await create(c, 'v');
    await expect(c.attachments.attach('v', '')).rejects.toBeInstanceOf(errors.NotFoundError);
    await expect(c.attachments.attach('v', '')).rejects.toThrow(/start vsky head-agent/);
  });
});

describe('servers, disks, GC', () => {
  it('marks a silent server failed, skips it in placement, revives it on heartbeat', async () => {
    const { core: c } = await setup();
    now += 4_000;
    for (const id of ['srv1', 'srv2', 'srv3']) expect(await c.registry.heartbeat(id, [])).toBe(true);
    now += 2_000;
    await c.registry.checkTimeouts();
    expect(c.registry.server('srv0')).toMatchObject({ state: 'failed', stateReason: expect.stringMatching(/no heartbeat for 6000 ms/) });
    expect(c.registry.server('srv1')!.state).toBe('active');
    const v = await create(c, 'v');
    expect(c.volumes.entry('v').map.disks).not.toContain('d0');
    await expect(c.volumes.create({ name: 'w', size: CHUNK, replicas: 4, spreadLabel: '' })).rejects.toBeInstanceOf(errors.CapacityError);
    expect(await c.registry.heartbeat('srv0', [])).toBe(true);
    expect(c.registry.server('srv0')!.state).toBe('active');
    expect(await c.registry.heartbeat('nobody', [])).toBe(false);
    expect(v.id).toBe(1);
  });

  it('drains a disk that holds chunks instead of removing it (manager-drain.test.ts); --force removes at once and marks replicas stale', async () => {
    const { core: c } = await setup();
    await create(c, 'alpha', 2 * CHUNK, 4);
    expect(await c.decommission.removeDisk('d2', false)).toMatchObject({ state: 'active', draining: true });
    expect(await c.decommission.removeServer('srv2', false)).toMatchObject({ state: 'active', draining: true });
    expect(c.registry.disk('d2')!.state).toBe('active');
    await c.decommission.removeDisk('d2', true);
    expect(c.registry.disk('d2')!.state).toBe('removed');
    const { volume, map } = c.volumes.entry('alpha');
    const view = volumeMapView(volume, map, c.registry);
    for (const seg of view.segments!) for (const r of seg.replicas!) expect(r.state).toBe(r.diskId === 'd2' ? 'stale' : 'in_sync');
    await expect(c.decommission.removeDisk('nope', false)).rejects.toBeInstanceOf(errors.NotFoundError);
  });

  it('AddServer merges labels; AddDisk records the disk with the cluster chunk size', async () => {
    const { core: c, peers } = await setup({ servers: 0 });
    const n = peers.addNode('new', { labels: { rack: 'a', zone: 'z1' } });
    const s = await c.registry.addServer(n.info.controlAddress, { rack: 'b' });
    expect(c.registry.labelsOf(s)).toEqual({ rack: 'b', zone: 'z1' });
    const d = await c.registry.addDisk('new', '/data/disk0', 10 * CHUNK);
    expect(d).toMatchObject({ serverId: 'new', chunkSize: CHUNK, chunkCount: 10, state: 'active' });
    expect(c.model.diskUsage(d.id)).toEqual({ chunkCount: 10, used: 0 });
    await expect(c.registry.addServer('10.9.9.9:1', {})).rejects.toThrow(/cannot reach the storage node at 10.9.9.9:1/);
    await c.decommission.removeServer('new', false);
    await expect(c.registry.registerServer(n.nodeInfo())).rejects.toThrow(/vsky server add/);
  });

  it('GC frees unreferenced chunks, but never referenced ones, in-progress creates or unknown volume ids', async () => {
    const { core: c, peers } = await setup();
    await create(c, 'keep');
    const n0 = peers.nodes.get('10.0.0.1:7711')!;
    // an orphan of a volume id this database issued (2, deleted) and one it never issued (99)
    await c.volumes.create({ name: 'gone', size: CHUNK, replicas: 1, spreadLabel: '' });
    const gone = c.volumes.entry('gone').map;
    await c.volumes.delete('gone');
    const freeIdx = 19;
    n0.disk('d0').chunks.set(freeIdx, { volumeId: 2 } as never);
    n0.disk('d0').chunks.set(18, { volumeId: 99 } as never);
    expect(gone.disks).toHaveLength(1);

    // a create in flight while GC runs: its chunks are on the nodes, not yet committed
    let open!: () => void;
    const gate = new Promise<void>((r) => { open = r; });
    for (const n of peers.nodes.values()) n.allocateGate = gate;
    const inflight = c.volumes.create({ name: 'slow', size: 2 * CHUNK, replicas: 3, spreadLabel: '' });
    while (peers.ownedChunks().size < 3 * 3 + 2 + 6) await new Promise((r) => setTimeout(r, 1));
    const report = await c.gc.run('test');
    open();
    await inflight;
    expect(report.chunksFreed).toBe(1);
    expect(n0.disk('d0').chunks.has(freeIdx)).toBe(false);
    expect(n0.disk('d0').chunks.get(18)!.volumeId).toBe(99);
    const owned = peers.ownedChunks();
    for (const name of ['keep', 'slow']) {
      const { volume, map } = c.volumes.entry(name);
      for (const seg of volumeMapView(volume, map, c.registry).segments!) {
        for (const r of seg.replicas!) expect(owned.get(`${r.diskId}#${r.chunkIndex}`)).toBe(volume.id);
      }
    }
  });
});

describe('node reports', () => {
  it('fails a disk its node reports failed or formatted with another chunk size, and revives it', async () => {
    const { core: c, peers } = await setup({ servers: 3 });
    const n0 = peers.nodes.get('10.0.0.1:7711')!;
    const info = n0.disk('d0').info;
    await c.registry.heartbeat('srv0', [{ ...info, state: 'failed' }]);
    expect(c.registry.disk('d0')).toMatchObject({ state: 'failed', stateReason: 'its node reports it failed' });
    await expect(create(c, 'v')).rejects.toBeInstanceOf(errors.CapacityError);
    await c.registry.heartbeat('srv0', [{ ...info, state: 'active' }]);
    expect(c.registry.disk('d0')!.state).toBe('active');
    n0.addDisk('odd', 10, 2 * CHUNK);
    await c.registry.registerServer(n0.nodeInfo());
    expect(c.registry.disk('odd')).toMatchObject({ state: 'failed', stateReason: expect.stringMatching(/chunk size/) });
    expect((await create(c, 'v')).name).toBe('v');
    expect(c.volumes.entry('v').map.disks).not.toContain('odd');
  });

  it('keeps retrying a chunk its node says holds another volume, then drops it', async () => {
    const { core: c, peers } = await setup({ servers: 3 });
    await c.volumes.create({ name: 'v', size: CHUNK, replicas: 1, spreadLabel: '' });
    const { map } = c.volumes.entry('v');
    const diskId = map.disks[0]!;
    const node = [...peers.nodes.values()].find((n) => n.disks.has(diskId))!;
    node.disk(diskId).chunks.get(map.locs[1]!)!.volumeId = 77; // the node disagrees
    await c.volumes.delete('v');
    expect(c.freer.size).toBe(1);
    for (let i = 0; i < 3; i++) await c.gc.run('test');
    expect(c.freer.size).toBe(1);
    await c.gc.run('test');
    expect(c.freer.size).toBe(0);
    expect(node.disk(diskId).chunks.size).toBe(1); // never freed: not ours
    // and not handed out again until the node no longer holds it
    expect(c.model.ownerOf(diskId, map.locs[1]!)).toBe(FOREIGN_OWNER);
    node.disk(diskId).chunks.clear();
    await c.gc.run('test');
    expect(c.model.ownerOf(diskId, map.locs[1]!)).toBe(0);
  });

  it('a chunk a node says is taken fails the create once, then is avoided', async () => {
    const { core: c, peers } = await setup({ servers: 3 });
    const n0 = peers.nodes.get('10.0.0.1:7711')!;
    n0.disk('d0').chunks.set(0, { volumeId: 500 } as never); // unknown to this manager
    await expect(create(c, 'v', CHUNK)).rejects.toBeInstanceOf(errors.ConflictError);
    expect(c.model.ownerOf('d0', 0)).toBe(FOREIGN_OWNER);
    expect(peers.ownedChunks().size).toBe(1);
    await create(c, 'v', CHUNK);
    const { volume, map } = c.volumes.entry('v');
    const onD0 = volumeMapView(volume, map, c.registry).segments![0]!.replicas!.find((r) => r.diskId === 'd0')!;
    expect(onD0.chunkIndex).toBe(1);
    expect(n0.disk('d0').chunks.get(0)!.volumeId).toBe(500);
  });
});

describe('thin segment allocation when a node fails it', () => {
  const serversOf = (c: Core, name: string) => {
    const out: string[] = [];
    forEachReplica(c.volumes.entry(name).map, (r) => out.push(c.registry.serverOfDisk(r.diskId)!.id));
    return out;
  };

  it('a node that refuses or does not answer costs one placement: the segment goes to the others, never ENOSPC while they have room', async () => {
    const { core: c, peers } = await setup({ servers: 3 });
    await c.volumes.create({ name: 't', size: 6 * CHUNK, replicas: 2, spreadLabel: '', thin: true });
    const refusing = peers.nodes.get('10.0.0.2:7711')!;
    let refused = 0;
    refusing.failAllocate = () => { refused++; return true; };
    await c.thin.allocateFor('t', [0, 1, 2, 3, 4, 5]);
    expect(refused).toBeGreaterThan(0); // premise: the node was chosen, and refused
    const servers = serversOf(c, 't');
    expect(servers).toHaveLength(12);
    expect(servers).not.toContain('srv1');
    // What the refused placements reserved goes back to the pool.
    await expect.poll(() => c.model.totals().usedChunks).toBe(12);
  });

  it('with too few other servers the failure is the node\'s (EIO, retried by the head), not ENOSPC', async () => {
    const { core: c, peers } = await setup({ servers: 2 });
    await c.volumes.create({ name: 't', size: 2 * CHUNK, replicas: 2, spreadLabel: '', thin: true });
    peers.nodes.get('10.0.0.2:7711')!.failAllocate = () => true;
    const p = c.thin.allocateFor('t', [0]);
    await expect(p).rejects.toMatchObject({ code: 'EIO' });
    await expect(p).rejects.toThrow(/allocating a chunk on server srv1 failed: injected allocation failure/);
    expect(serversOf(c, 't')).toEqual([]);
  });
});
