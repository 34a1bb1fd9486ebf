import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

// Graceful removal (manager/resync/drains.ts): RemoveDisk/RemoveServer without force
// copy every replica away before removing, and no segment ever has fewer
// in-sync replicas than it should. Against in-memory nodes and heads and a
// real LevelDB; every step checks redundancy in memory and in LevelDB.

process.env.VSKY_LOG_LEVEL ??= 'silent';
const { ManagerCore } = await import('../../manager/core.js');
const { FakePeers } = await import('../harness/manager-fake-peers.js');
const { volumeMapView } = await import('../../manager/views.js');
const { keys } = await import('../../manager/store.js');
const { forEachReplica } = await import('../../manager/types.js');

type Core = Awaited<ReturnType<typeof ManagerCore.open>>;
type Peers = InstanceType<typeof FakePeers>;
type Task = Peers['heads'] extends Map<string, infer H> ? H extends { resyncs: Array<infer T> } ? T : never : never;
type MapRecord = Parameters<typeof forEachReplica>[0];

const CHUNK = 1 << 20;
const HEAD = '10.9.0.1:7720';
const MGR = '10.9.0.100:7700';
let dir: string;
let core: Core | undefined;

beforeEach(() => { dir = mkdtempSync(join(tmpdir(), 'vsky-mgr-drain-')); });
afterEach(async () => {
  await core?.close();
  core = undefined;
  rmSync(dir, { recursive: true, force: true });
});

/** `servers` servers (srvN, rack rN) with `disks` disks each (dN_M). */
function makePeers(servers: number, disks: number, chunks = 24): Peers {
  const peers = new FakePeers();
  for (let i = 0; i < servers; i++) {
    const n = peers.addNode(`srv${i}`, { labels: { rack: `r${i}` } });
    for (let j = 0; j < disks; j++) n.addDisk(`d${i}_${j}`, chunks, CHUNK);
  }
  peers.addHead(HEAD);
  return peers;
}

async function open(peers: Peers): Promise<Core> {
  core = await ManagerCore.open({ dataDir: dir, chunkSize: CHUNK, heartbeatTimeoutMs: 60_000 }, peers);
  core.start(MGR);
  for (const n of peers.nodes.values()) await core.registry.registerServer(n.nodeInfo());
  await core.registry.registerHead({ headId: 'h1', name: 'head1', controlAddress: HEAD, nbdAddress: '' });
  return core;
}

const view = (c: Core, name: string) => {
  const { volume, map } = c.volumes.entry(name);
  return volumeMapView(volume, map, c.registry);
};

/** Every segment of every volume has `replicas` in-sync copies, in memory and in LevelDB, on distinct servers. */
async function expectFullRedundancy(c: Core): Promise<void> {
  for (const v of c.volumes.list()) {
    for (const seg of view(c, v.name).segments!) {
      const good = seg.replicas!.filter((r) => r.state === 'in_sync');
      expect(good, `${v.name} seg ${seg.index}`).toHaveLength(v.replicas);
      expect(new Set(good.map((r) => r.serverId)).size).toBe(good.length);
      expect(new Set(seg.replicas!.map((r) => r.slot)).size).toBe(seg.replicas!.length);
    }
    const stored = (await c.store.db.get(keys.chunks(v.id))) as MapRecord;
    let inSync = 0;
    forEachReplica(stored, (x) => { if (!x.move && x.state === 'in_sync') inSync++; });
    expect(inSync).toBe(v.segmentCount * v.replicas);
  }
}

const onDisk = (c: Core, diskId: string) => c.volumes.list().flatMap((v) => view(c, v.name).segments!.flatMap((s) => s.replicas!.filter((r) => r.diskId === diskId)));

/** Completes every copy handed to the head or to nodes, checking redundancy before each, until none is left. */
async function completeAll(c: Core, peers: Peers, check = true): Promise<number> {
  const doneIds = new Set<string>();
  let n = 0;
  for (let round = 0; round < 50; round++) {
    await c.settle();
    if (check) await expectFullRedundancy(c);
    const tasks: Task[] = [...peers.heads.get(HEAD)!.resyncs, ...peers.copies()].filter((t) => !doneIds.has(t.resyncId!));
    if (tasks.length === 0 && c.resyncs.book.size === 0) return n;
    for (const t of tasks) {
      doneIds.add(t.resyncId!);
      const reply = await c.resyncs.progress({ resyncId: t.resyncId!, regionsDone: 4096, regionsTotal: 4096, bytesCopied: CHUNK, finished: true, error: '' });
      if (!reply.cancel) n++;
    }
    if (tasks.length === 0) c.resyncs.tick();
  }
  throw new Error(`copies never ended: ${c.resyncs.book.size} left`);
}

describe('vsky disk remove: drain, then remove', () => {
  it('copies each replica to the sibling disk on the same server (identity slots), keeps full redundancy, then removes the disk', async () => {
    // 3 servers, 3 replicas: every other server holds a replica of each segment,
    // so the only targets are the drained disk's sibling on the same server.
    const peers = makePeers(3, 2);
    const c = await open(peers);
    for (let i = 0; i < 3; i++) await c.volumes.create({ name: `vm${i}`, size: 4 * CHUNK, replicas: 3, spreadLabel: '' });
    await c.attachments.attach('vm0', 'h1');
    const victim = 'd0_0';
    const before = onDisk(c, victim);
    expect(before.length).toBeGreaterThan(0);
    const generations = new Map(c.volumes.list().map((v) => [v.name, v.generation]));

    const row = await c.decommission.removeDisk(victim, false);
    expect(row).toMatchObject({ state: 'active', draining: true });
    await c.settle();
    await expectFullRedundancy(c);
    // Each replica on the disk has a drain target on d0_1 (same node: another slot number) while it stays in sync.
    for (const v of c.volumes.list()) {
      for (const seg of view(c, v.name).segments!) {
        const old = seg.replicas!.find((r) => r.diskId === victim);
        if (!old) continue;
        expect(old.state).toBe('in_sync');
        const target = seg.replicas!.find((r) => r.state === 'resyncing');
        expect(target).toMatchObject({ diskId: 'd0_1', serverId: 'srv0' });
        expect(target!.slot).not.toBe(old.slot);
      }
    }
    // The attached volume's copies go to its head, with the target named by its identity slot.
    const headTasks = peers.heads.get(HEAD)!.resyncs;
    expect(headTasks.length).toBeGreaterThan(0);
    for (const t of headTasks) {
      const seg = view(c, 'vm0').segments![t.segment!]!;
      expect(seg.replicas!.find((r) => r.slot === t.target!.slot)).toMatchObject({ diskId: t.target!.diskId, state: 'resyncing' });
    }
    // The head was told about the targets before the copies (its last map has them).
    const held = peers.heads.get(HEAD)!.attached.get('vm0')!.req.map!;
    expect(held.segments!.some((s) => s.replicas!.length === 4)).toBe(true);
    // New volumes avoid the draining disk.
    await c.volumes.create({ name: 'fresh', size: 4 * CHUNK, replicas: 3, spreadLabel: '' });
    expect(view(c, 'fresh').segments!.flatMap((s) => s.replicas!).some((r) => r.diskId === victim)).toBe(false);

    expect(await completeAll(c, peers)).toBe(before.length);
    await c.settle();
    await expectFullRedundancy(c);
    expect(onDisk(c, victim)).toHaveLength(0);
    expect(c.registry.disk(victim)).toMatchObject({ state: 'removed', stateReason: expect.stringMatching(/drained/) });
    expect(c.registry.disk(victim)!.draining).toBeUndefined();
    // Old chunks freed on the node, which was also told to let the disk go.
    expect([...peers.ownedChunks().keys()].some((k) => k.startsWith(`${victim}#`))).toBe(false);
    expect([...peers.nodes.values()][0]!.disks.has(victim)).toBe(false);
    for (const v of c.volumes.list()) if (v.name !== 'fresh') expect(v.generation).toBeGreaterThan(generations.get(v.name)!);
    // Moved replicas keep their new identity across a manager restart, and the nodes agree.
    await c.close();
    const c2 = await open(peers);
    await expectFullRedundancy(c2);
    for (const v of c2.volumes.list()) {
      for (const seg of view(c2, v.name).segments!) {
        for (const r of seg.replicas!) {
          const node = [...peers.nodes.values()].find((n) => n.disks.has(r.diskId!))!;
          expect(node.disk(r.diskId!).chunks.get(r.chunkIndex!)).toMatchObject({ volumeId: v.id, segment: seg.index, slot: r.slot });
        }
      }
    }
  });

  it('waits, saying why, when no disk can take the replicas; --force still removes at once', async () => {
    const peers = makePeers(3, 1);
    const c = await open(peers);
    await c.volumes.create({ name: 'vm1', size: 2 * CHUNK, replicas: 3, spreadLabel: '' });
    await c.decommission.removeDisk('d1_0', false);
    await c.settle();
    expect(c.registry.disk('d1_0')).toMatchObject({ state: 'active', draining: true });
    expect(c.resyncs.drains.noteFor('d1_0')).toMatch(/add a server or disk.*--force/);
    await expectFullRedundancy(c);
    await c.decommission.removeDisk('d1_0', true);
    await c.settle();
    expect(c.registry.disk('d1_0')!.state).toBe('removed');
    expect(view(c, 'vm1').segments!.every((s) => s.replicas!.some((r) => r.diskId === 'd1_0' && r.state === 'stale'))).toBe(true);
  });

  it('an empty disk is removed at once; AddDisk cancels a drain that has not copied yet', async () => {
    const peers = makePeers(5, 1);
    const c = await open(peers);
    await c.volumes.create({ name: 'vm1', size: CHUNK, replicas: 3, spreadLabel: '' });
    const disks = ['d0_0', 'd1_0', 'd2_0', 'd3_0', 'd4_0'];
    const empty = disks.find((d) => onDisk(c, d).length === 0)!;
    expect(await c.decommission.removeDisk(empty, false)).toMatchObject({ state: 'removed' });
    const used = disks.find((d) => onDisk(c, d).length > 0)!;
    const node = [...peers.nodes.values()].find((n) => n.disks.has(used))!;
    await c.decommission.removeDisk(used, false);
    await c.settle();
    expect(c.resyncs.book.all().every((r) => r.kind === 'drain')).toBe(true);
    expect(c.resyncs.book.size).toBeGreaterThan(0);
    // Cancel: the disk takes chunks again; copies that were not running yet are dropped, their targets freed.
    for (const r of c.resyncs.book.all()) r.state = 'queued';
    await c.registry.addDisk(node.info.name, node.disk(used).info.path, 0);
    await c.settle();
    expect(c.registry.disk(used)!.draining).toBeUndefined();
    expect(c.resyncs.book.size).toBe(0);
    expect(view(c, 'vm1').segments!.every((s) => s.replicas!.length === 3)).toBe(true);
    await expectFullRedundancy(c);
    expect(c.freer.size).toBe(0);
  });
});

describe('failures during a drain', () => {
  it('a drained replica that goes stale: its drain copy becomes the rebuild and goes on', async () => {
    const peers = makePeers(4, 1);
    const c = await open(peers);
    await c.volumes.create({ name: 'vm1', size: 2 * CHUNK, replicas: 3, spreadLabel: '' });
    await c.attachments.attach('vm1', 'h1');
    const victim = onDisk(c, 'd0_0').length > 0 ? 'd0_0' : 'd1_0';
    await c.decommission.removeDisk(victim, false);
    await c.settle();
    const [task] = peers.heads.get(HEAD)!.resyncs;
    const seg = view(c, 'vm1').segments![task!.segment!]!;
    const old = seg.replicas!.find((r) => r.diskId === victim)!;
    await c.resyncs.progress({ resyncId: task!.resyncId!, regionsDone: 2048, regionsTotal: 4096, bytesCopied: CHUNK / 2, finished: false, error: '' });
    // The head fails a write on the drained replica: stale, durably.
    await c.failures.reportReplicaFailure({ headId: 'h1', volume: 'vm1', segment: task!.segment!, slot: old.slot!, epoch: 1, reason: 'EIO' });
    await c.settle();
    const after = view(c, 'vm1').segments![task!.segment!]!;
    expect(after.replicas).toHaveLength(3);
    expect(after.replicas!.find((r) => r.diskId === task!.target!.diskId)).toMatchObject({ state: 'resyncing', slot: task!.target!.slot });
    // The copy goes on from where it was (its source may have been the drained replica: re-dispatched with others).
    expect(c.resyncs.book.all().find((r) => r.segment === task!.segment)).toMatchObject({ kind: 'rebuild', regionsDone: 2048 });
    const next = peers.heads.get(HEAD)!.resyncs.at(-1)!;
    expect(next).toMatchObject({ segment: task!.segment, startRegion: 2048, target: { diskId: task!.target!.diskId, slot: task!.target!.slot } });
    expect(next.sources!.every((s) => s.diskId !== victim)).toBe(true);
    await completeAll(c, peers, false);
    await expectFullRedundancy(c);
    expect(c.registry.disk(victim)!.state).toBe('removed');
  });

  it('a drain target that fails a write is out of the map before the reply; another one is planned', async () => {
    const peers = makePeers(5, 1);
    const c = await open(peers);
    await c.volumes.create({ name: 'vm1', size: CHUNK, replicas: 3, spreadLabel: '' });
    await c.attachments.attach('vm1', 'h1');
    const victim = view(c, 'vm1').segments![0]!.replicas![0]!.diskId!;
    const head = peers.heads.get(HEAD)!;
    await c.decommission.removeDisk(victim, false);
    await c.settle();
    const [task] = head.resyncs;
    const target = task!.target!;
    const reply = await c.failures.reportReplicaFailure({ headId: 'h1', volume: 'vm1', segment: 0, slot: target.slot!, epoch: 1, reason: 'timeout' });
    expect(reply.segments![0]!.replicas!.some((r) => r.diskId === target.diskId)).toBe(false);
    const stored = (await c.store.db.get(keys.chunks(c.volumes.entry('vm1').volume.id))) as MapRecord;
    expect(stored.moves).toBeUndefined();
    expect(c.freer.list().some((t) => t.diskId === target.diskId && t.chunkIndex === target.chunkIndex)).toBe(true);
    // The old copy is refused; a new target (another disk) is planned and the drain completes.
    expect(await c.resyncs.progress({ resyncId: task!.resyncId!, regionsDone: 4096, regionsTotal: 4096, bytesCopied: CHUNK, finished: true, error: '' })).toEqual({ cancel: true });
    c.resyncs.drains.retryNow();
    c.resyncs.tick();
    await completeAll(c, peers);
    expect(c.registry.disk(victim)!.state).toBe('removed');
    await expectFullRedundancy(c);
  });
});

describe('vsky server remove: drain every disk of it', () => {
  it('detached volumes are copied by the nodes; the server is removed with its last disk; progress survives a manager restart', async () => {
    const peers = makePeers(5, 2);
    let c = await open(peers);
    for (let i = 0; i < 4; i++) await c.volumes.create({ name: `vm${i}`, size: 3 * CHUNK, replicas: 3, spreadLabel: '' });
    const held = onDisk(c, 'd2_0').length + onDisk(c, 'd2_1').length;
    expect(held).toBeGreaterThan(0);
    const s = await c.decommission.removeServer('srv2', false);
    expect(s).toMatchObject({ state: 'active', draining: true });
    await c.settle();
    await expectFullRedundancy(c);
    expect(c.resyncs.book.size).toBe(held);
    expect(peers.copies().length).toBeGreaterThan(0);
    expect(peers.copies().every((t) => !t.target!.diskId!.startsWith('d2_'))).toBe(true);
    // Restart: drain targets, identity slots and records are all in LevelDB.
    await c.close();
    c = await open(peers);
    await c.settle();
    await expectFullRedundancy(c);
    expect(c.resyncs.book.size).toBe(held);
    await completeAll(c, peers);
    expect(c.registry.server('srv2')).toMatchObject({ state: 'removed' });
    expect(c.registry.disksOf('srv2').every((d) => d.state === 'removed')).toBe(true);
    expect(onDisk(c, 'd2_0').length + onDisk(c, 'd2_1').length).toBe(0);
  });
});
