import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

// Failures and resync in the manager (manager/failures.ts, spares.ts,
// resyncs.ts) against in-memory storage nodes and heads and a real LevelDB.

process.env.VSKY_LOG_LEVEL ??= 'silent';
const { ManagerCore } = await import('../../manager/core.js');
const { FakePeers } = await import('../harness/manager-fake-peers.js');
const { volumeMapView } = await import('../../manager/views.js');
const { keys } = await import('../../manager/store.js');
const { resyncListView, volumeHealth } = await import('../../manager/resync/index.js');
const errors = await import('../../shared/errors.js');

type Core = Awaited<ReturnType<typeof ManagerCore.open>>;
type Peers = InstanceType<typeof FakePeers>;
type Task = Peers['heads'] extends Map<string, infer H> ? H extends { resyncs: Array<infer T> } ? T : never : never;

const CHUNK = 1 << 20;
const HEAD = '10.9.0.1:7720';
const MGR = '10.9.0.100:7700';
let dir: string;
let now = 1_000_000;
let core: Core | undefined;

beforeEach(() => { dir = mkdtempSync(join(tmpdir(), 'vsky-mgr-fail-')); now = 1_000_000; });
afterEach(async () => {
  await core?.close();
  core = undefined;
  rmSync(dir, { recursive: true, force: true });
});

function makePeers(servers: number, racks: number, chunks = 20): Peers {
  const peers = new FakePeers();
  for (let i = 0; i < servers; i++) peers.addNode(`srv${i}`, { labels: { rack: `r${i % racks}` } }).addDisk(`d${i}`, chunks, CHUNK);
  peers.addHead(HEAD);
  return peers;
}

async function open(peers: Peers, start = true): Promise<Core> {
  core = await ManagerCore.open({ dataDir: dir, chunkSize: CHUNK, heartbeatTimeoutMs: 5_000, now: () => now }, peers);
  if (start) core.start(MGR);
  return core;
}

async function setup(opts: { servers?: number; racks?: number; start?: boolean } = {}): Promise<{ c: Core; peers: Peers }> {
  const peers = makePeers(opts.servers ?? 6, opts.racks ?? 3);
  const c = await open(peers, opts.start ?? true);
  for (const n of peers.nodes.values()) await c.registry.registerServer(n.nodeInfo());
  await c.registry.registerHead({ headId: 'h1', name: 'head1', controlAddress: HEAD, nbdAddress: '' });
  return { c, peers };
}

const create = (c: Core, name: string, segments = 6) => c.volumes.create({ name, size: segments * CHUNK, replicas: 3, spreadLabel: '' });
const map = (c: Core, name: string) => {
  const { volume, map: m } = c.volumes.entry(name);
  return volumeMapView(volume, m, c.registry);
};
const replicasOn = (c: Core, name: string, diskId: string) =>
  map(c, name).segments!.flatMap((s) => s.replicas!.filter((r) => r.diskId === diskId).map((r) => ({ segment: s.index!, slot: r.slot!, chunkIndex: r.chunkIndex! })));
const at = (c: Core, name: string, segment: number, slot: number) => map(c, name).segments![segment]!.replicas![slot]!;
const rackOf = (c: Core, diskId: string) => c.registry.labelsOf(c.registry.serverOfDisk(diskId)!).rack;

/** Everyone but `silent` heartbeats; the clock moves past the timeout; the manager checks. */
async function silence(c: Core, silent: string[], ms = 6_000): Promise<void> {
  now += ms;
  for (const s of c.registry.listServers()) if (!silent.includes(s.id)) await c.registry.heartbeat(s.id, []);
  for (const h of c.registry.listHeads()) if (!silent.includes(h.id)) await c.registry.headHeartbeat(h.id);
  await c.registry.checkTimeouts();
  await c.settle();
}

const done = (c: Core, t: Task, bytes = CHUNK) =>
  c.resyncs.progress({ resyncId: t.resyncId!, regionsDone: 4096, regionsTotal: 4096, bytesCopied: bytes, finished: true, error: '' });

describe('replica failure reported by a head', () => {
  it('after a restart, servers and heads get their timeout from when the manager serves, plus a reconnect backoff', async () => {
    const { c, peers } = await setup();
    await c.close();
    const c2 = await open(peers, false);
    now += 4_000; // a slow start: the database loaded 4 s before the API is served
    c2.registry.serving();
    now += 5_000 + 1_500; // past the timeout counted from the load, within it counted from serving + backoff
    await c2.registry.checkTimeouts();
    expect(c2.registry.listServers().every((s) => s.state === 'active')).toBe(true);
    expect(c2.registry.listHeads().every((h) => h.state === 'active')).toBe(true);
    now += 1_000; // now past serving + backoff + timeout: silence is failure again
    await c2.registry.checkTimeouts();
    expect(c2.registry.listServers().every((s) => s.state === 'failed')).toBe(true);
  });

  it('is refused for a stale epoch or a head that does not hold the volume, changing nothing', async () => {
    const { c } = await setup({ start: false });
    const v = await create(c, 'vm1', 2);
    await c.attachments.attach('vm1', 'h1');
    await c.registry.registerHead({ headId: 'h2', name: 'head2', controlAddress: '10.9.0.2:7720', nbdAddress: '' });
    const base = { volume: 'vm1', segment: 0, slot: 1, reason: 'EIO' };
    await expect(c.failures.reportReplicaFailure({ ...base, headId: 'h1', epoch: 0 })).rejects.toBeInstanceOf(errors.StaleEpochError);
    await expect(c.failures.reportReplicaFailure({ ...base, headId: 'h1', epoch: 2 })).rejects.toBeInstanceOf(errors.StaleEpochError);
    await expect(c.failures.reportReplicaFailure({ ...base, headId: 'h2', epoch: 1 })).rejects.toBeInstanceOf(errors.StaleEpochError);
    await expect(c.failures.reportReplicaFailure({ ...base, headId: 'h1', epoch: 1, segment: 2 })).rejects.toBeInstanceOf(errors.InvalidArgumentError);
    await expect(c.failures.reportReplicaFailure({ ...base, headId: 'h1', epoch: 1, slot: 3 })).rejects.toBeInstanceOf(errors.InvalidArgumentError);
    await expect(c.failures.reportReplicaFailure({ ...base, headId: 'h1', epoch: 1, volume: 'nope' })).rejects.toBeInstanceOf(errors.NotFoundError);
    expect(c.volumes.entry('vm1').map.stale).toBeUndefined();
    expect(((await c.store.db.get(keys.chunks(v.id))) as { stale?: number[] }).stale).toBeUndefined();
    // Detached: nobody holds it.
    await c.attachments.detach('vm1', false);
    await expect(c.failures.reportReplicaFailure({ ...base, headId: 'h1', epoch: 1 })).rejects.toBeInstanceOf(errors.StaleEpochError);
  });

  it('takes a report from a head at the newest epoch of a volume rebuilt from storage and not claimed yet as its claim', async () => {
    const { c } = await setup({ start: false });
    await create(c, 'vm1', 2);
    await c.attachments.attach('vm1', 'h1');
    await c.attachments.detach('vm1', false);
    const e = c.volumes.entry('vm1');
    const base = { volume: 'vm1', segment: 0, slot: 1, reason: 'EIO' };
    // Not rebuilt (no claim pending): refused, as above.
    await expect(c.failures.reportReplicaFailure({ ...base, headId: 'h1', epoch: e.volume.epoch })).rejects.toBeInstanceOf(errors.StaleEpochError);
    e.volume.claimPending = true;
    // Rebuilt: an older epoch is still refused and records nothing.
    await expect(c.failures.reportReplicaFailure({ ...base, headId: 'h1', epoch: e.volume.epoch - 1 })).rejects.toBeInstanceOf(errors.StaleEpochError);
    expect(e.volume).toMatchObject({ attachedHead: '', claimPending: true });
    // At the newest epoch: the head is the holder, and the stale mark is made.
    const map = await c.failures.reportReplicaFailure({ ...base, headId: 'h1', epoch: e.volume.epoch });
    expect(e.volume.attachedHead).toBe('h1');
    expect(e.volume.claimPending).toBeUndefined();
    expect(map.segments![0]!.replicas![1]!.state).toBe('stale');
  });

  it('marks the replica stale durably before replying, idempotently, and never the last in-sync copy', async () => {
    const { c, peers } = await setup({ start: false });
    const v = await create(c, 'vm1', 2);
    await c.attachments.attach('vm1', 'h1');
    const report = { headId: 'h1', volume: 'vm1', segment: 1, slot: 2, epoch: 1, reason: 'write timed out' };
    // Hold LevelDB writes back: no reply may come before the batch is written.
    let release!: () => void;
    const gate = new Promise<void>((r) => { release = r; });
    const write = c.store.write.bind(c.store);
    c.store.write = (b) => gate.then(() => write(b));
    let replied = false;
    const pending = c.failures.reportReplicaFailure(report).then((m) => { replied = true; return m; });
    await new Promise((r) => setTimeout(r, 30));
    expect(replied).toBe(false);
    release();
    c.store.write = write;
    const reply = await pending;
    // Read from LevelDB itself (not memory), right after the reply.
    const stored = (await c.store.db.get(keys.chunks(v.id))) as { stale?: number[] };
    expect(stored.stale).toEqual([1 * 3 + 2]);
    expect(reply.segments![1]!.replicas![2]!.state).toBe('stale');
    expect(reply.segments![1]!.replicas!.filter((r) => r.state === 'in_sync')).toHaveLength(2);
    expect(reply.segments![0]!.replicas!.every((r) => r.state === 'in_sync')).toBe(true);
    // Again: same answer, no error.
    expect((await c.failures.reportReplicaFailure(report)).segments![1]!.replicas![2]!.state).toBe('stale');
    await c.failures.reportReplicaFailure({ ...report, slot: 0 });
    await expect(c.failures.reportReplicaFailure({ ...report, slot: 1 })).rejects.toBeInstanceOf(errors.ConflictError);
    expect(at(c, 'vm1', 1, 1).state).toBe('in_sync');
    // And it survives a restart.
    await c.close();
    const c2 = await open(peers, false);
    expect(map(c2, 'vm1').segments![1]!.replicas!.map((r) => r.state)).toEqual(['stale', 'in_sync', 'stale']);
  });

  it('gets the replica replaced and rebuilt by the head', async () => {
    const { c, peers } = await setup();
    await create(c, 'vm1', 2);
    await c.attachments.attach('vm1', 'h1');
    const old = at(c, 'vm1', 0, 1);
    await c.failures.reportReplicaFailure({ headId: 'h1', volume: 'vm1', segment: 0, slot: 1, epoch: 1, reason: 'EIO' });
    await c.settle();
    const now1 = at(c, 'vm1', 0, 1);
    expect(now1.state).toBe('resyncing');
    expect(now1.serverId).not.toBe(old.serverId); // another server than the failing replica
    const [task] = peers.heads.get(HEAD)!.resyncs;
    expect(task).toMatchObject({ segment: 0, epoch: 1, target: { diskId: now1.diskId, chunkIndex: now1.chunkIndex, slot: 1 } });
    // The replaced chunk was freed on its (live) node.
    const oldNode = [...peers.nodes.values()].find((n) => n.disks.has(old.diskId!))!;
    expect(oldNode.disk(old.diskId!).chunks.has(old.chunkIndex!)).toBe(false);
    expect(c.freer.size).toBe(0);
  });
});

describe('the holder head hears first', () => {
  it('no copy to the spare and no free of the replaced chunk before the head confirmed the new map', async () => {
    const { c, peers } = await setup();
    await create(c, 'vm1', 2);
    await c.attachments.attach('vm1', 'h1');
    const head = peers.heads.get(HEAD)!;
    head.failUpdateMap = true;
    const old = at(c, 'vm1', 0, 1);
    const oldDisk = [...peers.nodes.values()].find((n) => n.disks.has(old.diskId!))!.disk(old.diskId!);
    await c.failures.reportReplicaFailure({ headId: 'h1', volume: 'vm1', segment: 0, slot: 1, epoch: 1, reason: 'EIO' });
    await c.settle();
    expect(at(c, 'vm1', 0, 1).state).toBe('resyncing');
    expect(head.resyncs).toHaveLength(0);
    expect(oldDisk.chunks.has(old.chunkIndex!)).toBe(true);
    await c.gc.run('test'); // GC holds it too
    expect(oldDisk.chunks.has(old.chunkIndex!)).toBe(true);
    expect(c.freer.list()).toContainEqual(expect.objectContaining({ diskId: old.diskId, chunkIndex: old.chunkIndex }));
    head.failUpdateMap = false;
    c.resyncs.tick();
    await c.settle();
    expect(head.updates.at(-1)!.map!.segments![0]!.replicas![1]!.state).toBe('resyncing');
    expect(head.resyncs).toHaveLength(1);
    expect(oldDisk.chunks.has(old.chunkIndex!)).toBe(false);
    expect(c.freer.size).toBe(0);
  });
});

describe('server and disk failures', () => {
  it('a server silent past the timeout: its replicas go stale, spares on other servers and racks, the head is told first, then resyncs', async () => {
    const { c, peers } = await setup();
    const v = await create(c, 'vm1');
    await c.attachments.attach('vm1', 'h1');
    const lost = replicasOn(c, 'vm1', 'd0');
    expect(lost.length).toBeGreaterThan(0);
    const head = peers.heads.get(HEAD)!;
    // Record what the head had been told when each resync reached it.
    const start = peers.head.startResync;
    const seenAtStart: string[] = [];
    peers.head.startResync = async (a, t) => {
      const held = head.attached.get('vm1')!.req.map!;
      seenAtStart.push(held.segments![t.segment!]!.replicas![t.target!.slot!]!.state!);
      return start(a, t);
    };
    await silence(c, ['srv0']);
    expect(c.registry.server('srv0')).toMatchObject({ state: 'failed', stateReason: expect.stringMatching(/no heartbeat for 6000 ms/) });
    // Stale first (durable), then replaced.
    expect(head.updates[0]!.map!.segments!.flatMap((s) => s.replicas!).filter((r) => r.diskId === 'd0').every((r) => r.state === 'stale')).toBe(true);
    for (const { segment, slot } of lost) {
      const r = at(c, 'vm1', segment, slot);
      expect(r.state).toBe('resyncing');
      const others = map(c, 'vm1').segments![segment]!.replicas!.filter((x) => x.slot !== slot);
      expect(others.map((x) => x.serverId)).not.toContain(r.serverId);
      expect(others.map((x) => rackOf(c, x.diskId!))).not.toContain(rackOf(c, r.diskId!));
      expect(r.serverId).not.toBe('srv0');
      // Claimed on its node with the replaced replica's identity.
      const node = [...peers.nodes.values()].find((n) => n.disks.has(r.diskId!))!;
      expect(node.disk(r.diskId!).chunks.get(r.chunkIndex!)).toMatchObject({ volumeId: v.id, segment, slot, generation: 1, epoch: 1 });
    }
    // Only srv3 shares srv0's rack and holds no replica of those segments: every spare is on d3,
    // and d3 takes part in one resync at a time.
    expect(head.resyncs).toHaveLength(1);
    expect(seenAtStart).toEqual(['resyncing']);
    expect(head.resyncs[0]).toMatchObject({ epoch: 1, managerAddress: MGR, startRegion: 0, throttleMibps: 0, volumeName: 'vm1', chunkSize: CHUNK });
    expect(head.resyncs[0]!.sources!.length).toBeGreaterThanOrEqual(1);
    for (const s of head.resyncs[0]!.sources!) expect(s.state).toBe('in_sync');
    expect(head.resyncs[0]!.target!.controlAddress).toMatch(/:7711$/);
    // The replaced chunks are garbage now.
    for (const { chunkIndex } of lost) expect(c.freer.list()).toContainEqual(expect.objectContaining({ diskId: 'd0', chunkIndex }));
    expect(volumeHealth(c.resyncs, c.volumes, v.id)).toMatchObject({ degraded: true, resyncs: lost.length });
  });

  it('a finished resync: in sync, generation + 1, record gone, head told; a returning server is not trusted and its old chunks are freed', async () => {
    const { c, peers } = await setup();
    const v = await create(c, 'vm1');
    await c.attachments.attach('vm1', 'h1');
    const lost = replicasOn(c, 'vm1', 'd0');
    await silence(c, ['srv0']);
    const head = peers.heads.get(HEAD)!;
    for (let i = 0; i < lost.length; i++) {
      const task = head.resyncs[i]!;
      const id = task.resyncId!.split('.')[0]!;
      expect(await c.store.db.get(keys.resync(id))).toMatchObject({ state: 'running' });
      const gen = c.volumes.entry('vm1').volume.generation;
      expect(await done(c, task)).toEqual({ cancel: false });
      expect(c.volumes.entry('vm1').volume.generation).toBe(gen + 1);
      expect(at(c, 'vm1', task.segment!, task.target!.slot!).state).toBe('in_sync');
      expect(await c.store.db.get(keys.resync(id))).toBeUndefined();
      expect(((await c.store.db.get(keys.volume(v.id))) as { generation: number }).generation).toBe(gen + 1);
      await c.settle();
      const last = head.updates.at(-1)!.map!;
      expect(last.generation).toBe(gen + 1);
      expect(last.segments![task.segment!]!.replicas![task.target!.slot!]!.state).toBe('in_sync');
    }
    expect(head.resyncs).toHaveLength(lost.length);
    expect(volumeHealth(c.resyncs, c.volumes, v.id)).toEqual({ degraded: false, resyncs: 0, progress: 0 });
    expect(replicasOn(c, 'vm1', 'd0')).toEqual([]);
    // srv0 comes back: nothing of it is in the map; GC frees its old chunks.
    const d0 = peers.nodes.get('10.0.0.1:7711')!.disk('d0');
    expect(d0.chunks.size).toBe(lost.length);
    await c.registry.heartbeat('srv0', []);
    expect(c.registry.server('srv0')!.state).toBe('active');
    await c.gc.run('test');
    expect(d0.chunks.size).toBe(0);
    expect(c.freer.size).toBe(0);
  });

  it('progress for an unknown or superseded resync is told to cancel; bad progress is refused', async () => {
    const { c, peers } = await setup();
    await create(c, 'vm1', 2);
    await c.attachments.attach('vm1', 'h1');
    await c.failures.reportReplicaFailure({ headId: 'h1', volume: 'vm1', segment: 0, slot: 0, epoch: 1, reason: 'EIO' });
    await c.settle();
    const [task] = peers.heads.get(HEAD)!.resyncs;
    const p = { regionsDone: 1, regionsTotal: 4096, bytesCopied: 0, finished: false, error: '' };
    expect(await c.resyncs.progress({ ...p, resyncId: 'r999.1' })).toEqual({ cancel: true });
    expect(await c.resyncs.progress({ ...p, resyncId: 'bogus' })).toEqual({ cancel: true });
    const [id, attempt] = task!.resyncId!.split('.');
    expect(await c.resyncs.progress({ ...p, resyncId: `${id}.${Number(attempt) - 1}` })).toEqual({ cancel: true });
    await expect(c.resyncs.progress({ ...p, resyncId: '' })).rejects.toBeInstanceOf(errors.InvalidArgumentError);
    await expect(c.resyncs.progress({ ...p, resyncId: task!.resyncId!, regionsDone: 5000 })).rejects.toBeInstanceOf(errors.InvalidArgumentError);
    expect(c.resyncs.book.get(id!)!.regionsDone).toBe(0);
    expect(await c.resyncs.progress({ ...p, resyncId: task!.resyncId!, regionsDone: 2048 })).toEqual({ cancel: false });
    expect(volumeHealth(c.resyncs, c.volumes, 1).progress).toBeCloseTo(0.5);
    // The volume goes away: its executor is told to stop, its records with it.
    await c.attachments.detach('vm1', false);
    await c.volumes.delete('vm1');
    expect(await c.resyncs.progress({ ...p, resyncId: task!.resyncId! })).toEqual({ cancel: true });
    expect(c.resyncs.book.size).toBe(0);
    expect(await c.store.db.get(keys.resync(id!))).toBeUndefined();
  });
});

describe('resync execution', () => {
  it('a detached volume is copied by the target node under an epoch of its own, and a restart resumes from regions done', async () => {
    const { c, peers } = await setup();
    const v = await create(c, 'vm1', 1);
    const victim = at(c, 'vm1', 0, 0).diskId!;
    await c.failures.failDisk(victim, 'smart says so');
    await c.settle();
    const copies = peers.copies();
    expect(copies).toHaveLength(1);
    const task = copies[0]!;
    const target = at(c, 'vm1', 0, 0);
    expect(task).toMatchObject({ epoch: 1, generation: 1, startRegion: 0, target: { diskId: target.diskId } });
    // The node running it is the target's.
    const node = [...peers.nodes.values()].find((n) => n.copies.length > 0)!;
    expect(node.info.serverId).toBe(target.serverId);
    // The epoch was persisted before dispatch; an attach later gets a higher one.
    expect(((await c.store.db.get(keys.volume(v.id))) as { epoch: number; resyncEpoch: number })).toMatchObject({ epoch: 1, resyncEpoch: 1 });
    now += 1500;
    expect(await c.resyncs.progress({ resyncId: task.resyncId!, regionsDone: 100, regionsTotal: 4096, bytesCopied: 100 * 256, finished: false, error: '' })).toEqual({ cancel: false });
    await c.close();

    const c2 = await open(peers);
    await c2.settle();
    const again = peers.copies().slice(1);
    expect(again).toHaveLength(1);
    expect(again[0]).toMatchObject({ resyncId: task.resyncId, startRegion: 100, epoch: 1, target: { diskId: target.diskId, chunkIndex: target.chunkIndex } });
    expect(c2.volumes.entry('vm1').volume.epoch).toBe(1);
    // An attach fences the node's copy; the head takes over under a new task id, from where it was.
    await c2.attachments.attach('vm1', 'h1');
    await c2.settle();
    const headTask = peers.heads.get(HEAD)!.resyncs.at(-1)!;
    expect(headTask).toMatchObject({ epoch: 2, startRegion: 100 });
    expect(headTask.resyncId).not.toBe(task.resyncId);
    expect(await c2.resyncs.progress({ resyncId: task.resyncId!, regionsDone: 200, regionsTotal: 4096, bytesCopied: 0, finished: true, error: '' })).toEqual({ cancel: true });
    expect(at(c2, 'vm1', 0, 0).state).toBe('resyncing');
  });

  it('a second failure, of the target during its resync, gets a new spare and a new copy from the start', async () => {
    const { c, peers } = await setup();
    await create(c, 'vm1', 1);
    const first = at(c, 'vm1', 0, 2);
    await c.failures.failDisk(first.diskId!, 'bad sectors');
    await c.settle();
    const t1 = peers.copies()[0]!;
    const target1 = t1.target!;
    now += 1500;
    await c.resyncs.progress({ resyncId: t1.resyncId!, regionsDone: 50, regionsTotal: 4096, bytesCopied: 1, finished: false, error: '' });
    await c.failures.failServer(target1.serverId!, 'power supply');
    await c.settle();
    const target2 = at(c, 'vm1', 0, 2);
    expect(target2.state).toBe('resyncing');
    expect(target2.serverId).not.toBe(target1.serverId);
    expect(target2.serverId).not.toBe(first.serverId);
    const t2 = peers.copies().at(-1)!;
    expect(t2).toMatchObject({ startRegion: 0, target: { diskId: target2.diskId, chunkIndex: target2.chunkIndex } });
    expect(t2.resyncId).not.toBe(t1.resyncId);
    expect(t2.resyncId!.split('.')[0]).toBe(t1.resyncId!.split('.')[0]);
    expect(c.freer.list()).toContainEqual(expect.objectContaining({ diskId: target1.diskId, chunkIndex: target1.chunkIndex }));
    expect(await c.resyncs.progress({ resyncId: t1.resyncId!, regionsDone: 4096, regionsTotal: 4096, bytesCopied: 1, finished: true, error: '' })).toEqual({ cancel: true });
    expect(await done(c, t2)).toEqual({ cancel: false });
    expect(at(c, 'vm1', 0, 2).state).toBe('in_sync');
  });

  it('a copy error is retried with a new choice; a target that keeps failing is replaced', async () => {
    const { c, peers } = await setup();
    await create(c, 'vm1', 1);
    await c.failures.failDisk(at(c, 'vm1', 0, 1).diskId!, 'gone');
    await c.settle();
    const fail = async () => {
      const t = peers.copies().at(-1)!;
      expect(await c.resyncs.progress({ resyncId: t.resyncId!, regionsDone: 0, regionsTotal: 0, bytesCopied: 0, finished: false, error: 'source read failed' })).toEqual({ cancel: false });
      await c.settle();
      now += 40_000; // past the back-off
      for (const s of c.registry.listServers()) if (s.state === 'active') await c.registry.heartbeat(s.id, []);
      c.resyncs.tick();
      await c.settle();
      return t;
    };
    const t1 = await fail();
    const t2 = peers.copies().at(-1)!;
    expect(t2.resyncId).not.toBe(t1.resyncId);
    expect(t2.target!.diskId).toBe(t1.target!.diskId);
    await fail();
    const t3 = await fail();
    const t4 = peers.copies().at(-1)!;
    expect(t4.target!.diskId).not.toBe(t3.target!.diskId);
    expect(at(c, 'vm1', 0, 1)).toMatchObject({ state: 'resyncing', diskId: t4.target!.diskId });
  });

  it('a stalled resync is sent again under the same id, then re-planned', async () => {
    const { c, peers } = await setup();
    await create(c, 'vm1', 1);
    await c.failures.failDisk(at(c, 'vm1', 0, 0).diskId!, 'gone');
    await c.settle();
    const t1 = peers.copies()[0]!;
    const stall = async () => {
      now += 16_000;
      for (const s of c.registry.listServers()) if (s.state === 'active') await c.registry.heartbeat(s.id, []);
      c.resyncs.tick();
      await c.settle();
    };
    await stall();
    await stall();
    expect(peers.copies().map((t) => t.resyncId)).toEqual([t1.resyncId, t1.resyncId, t1.resyncId]);
    await stall();
    expect(peers.copies()).toHaveLength(4);
    expect(peers.copies()[3]!.resyncId).not.toBe(t1.resyncId);
  });

  it('when the head holding the volume dies, its resync moves to the target node, fencing the head', async () => {
    const { c, peers } = await setup();
    await create(c, 'vm1', 2);
    await c.attachments.attach('vm1', 'h1');
    await c.failures.reportReplicaFailure({ headId: 'h1', volume: 'vm1', segment: 1, slot: 0, epoch: 1, reason: 'EIO' });
    await c.settle();
    const headTask = peers.heads.get(HEAD)!.resyncs[0]!;
    expect(peers.copies()).toHaveLength(0);
    await silence(c, ['h1']);
    expect(c.registry.head('h1')!.state).toBe('failed');
    // Failed, but its lease (TTL 8 s) still runs: a node copy would fence a holder that may
    // only be cut off from us, so the resync stays with the head (leases: expiry allows a take-over).
    expect(c.registry.leaseLeftMs('h1')).toBeGreaterThan(0);
    expect(peers.copies()).toHaveLength(0);
    expect(c.volumes.entry('vm1').volume.epoch).toBe(1);
    await silence(c, ['h1'], 3_000);
    expect(c.registry.leaseLeftMs('h1')).toBeLessThanOrEqual(0);
    c.resyncs.tick();
    await c.settle();
    const [nodeTask] = peers.copies();
    expect(nodeTask).toMatchObject({ epoch: 2, segment: 1, target: headTask.target });
    expect(c.volumes.entry('vm1').volume).toMatchObject({ epoch: 2, resyncEpoch: 2, attachedHead: 'h1' });
    await expect(c.failures.reportReplicaFailure({ headId: 'h1', volume: 'vm1', segment: 0, slot: 0, epoch: 1, reason: 'late' }))
      .rejects.toBeInstanceOf(errors.StaleEpochError);
    expect(await c.resyncs.progress({ resyncId: headTask.resyncId!, regionsDone: 1, regionsTotal: 4096, bytesCopied: 0, finished: false, error: '' })).toEqual({ cancel: true });
    // No map is pushed to a head that lost its lease.
    const updates = peers.heads.get(HEAD)!.updates.length;
    expect(await done(c, nodeTask!)).toEqual({ cancel: false });
    await c.settle();
    expect(peers.heads.get(HEAD)!.updates).toHaveLength(updates);
  });

  it('lists resyncs with executor, disks, progress and good copies', async () => {
    const { c, peers } = await setup();
    await create(c, 'vm1', 3);
    const victim = at(c, 'vm1', 0, 0).diskId!;
    // Segment 0 has 9 regions of 256 bytes written (as every good copy says); the others nothing known.
    for (const n of peers.nodes.values()) for (const slot of [1, 2]) n.regions.set(`1/0/${slot}`, { regionSize: 256, written: Buffer.from([0xff, 0x01]), dirty: Buffer.alloc(0) });
    await c.failures.failDisk(victim, 'gone');
    await c.settle();
    const list = resyncListView(c.resyncs, c.volumes, c.registry);
    const lost = replicasOn(c, 'vm1', victim).length;
    expect(list.resyncs!.length).toBeGreaterThanOrEqual(1);
    const running = list.resyncs!.filter((r) => r.state === 'running');
    expect(running.length).toBeGreaterThanOrEqual(1);
    for (const r of running) {
      expect(r).toMatchObject({ volume: 'vm1', executor: expect.stringMatching(/^node:srv\d$/), goodCopies: 2 });
      expect(r.sourceDisks).toMatch(/^d\d(,d\d)?$/);
      expect(r.targetDisk).not.toBe(victim);
    }
    expect(lost).toBe(0); // every replica of the failed disk was moved away
    const others = list.resyncs!.filter((r) => r.segment !== 0).length;
    expect(list.bytesTotal).toBe(9 * 256 + others * CHUNK);
    // No two running resyncs share a disk.
    const disks = running.flatMap((r) => [r.targetDisk, ...r.sourceDisks!.split(',')]);
    expect(new Set(disks).size).toBe(disks.length);
  });
});

describe('admin failures', () => {
  it('FailServer and FailDisk stick until an admin adds them back', async () => {
    const { c, peers } = await setup();
    await c.failures.failServer('srv1', 'maintenance');
    expect(c.registry.server('srv1')).toMatchObject({ state: 'failed', stateReason: 'failed by an admin: maintenance' });
    await c.registry.heartbeat('srv1', []);
    await c.registry.registerServer(peers.nodes.get('10.0.0.2:7711')!.nodeInfo());
    expect(c.registry.server('srv1')!.state).toBe('failed');
    await c.registry.addServer('10.0.0.2:7711', {});
    expect(c.registry.server('srv1')!.state).toBe('active');

    const info = peers.nodes.get('10.0.0.3:7711')!.disk('d2').info;
    await c.failures.failDisk('d2', 'smart');
    await c.registry.heartbeat('srv2', [{ ...info, state: 'active' }]);
    expect(c.registry.disk('d2')!.state).toBe('failed');
    await expect(c.failures.failDisk('nope', '')).rejects.toBeInstanceOf(errors.NotFoundError);
    await expect(c.failures.failServer('nope', '')).rejects.toBeInstanceOf(errors.NotFoundError);
    await c.registry.addDisk('srv2', '/dev/d2', 0).catch(() => undefined); // the fake names disks by path
    await c.settle();
  });

  it('with no other server free, a replica waits stale; a returning server gets a fresh chunk, not trust', async () => {
    const { c, peers } = await setup({ servers: 3, racks: 3 });
    await create(c, 'vm1', 2);
    const lost = replicasOn(c, 'vm1', 'd0');
    await silence(c, ['srv0']);
    for (const { segment, slot } of lost) expect(at(c, 'vm1', segment, slot).state).toBe('stale');
    expect(peers.copies()).toHaveLength(0);
    await c.registry.heartbeat('srv0', []);
    await c.settle();
    for (const { segment, slot, chunkIndex } of lost) {
      const r = at(c, 'vm1', segment, slot);
      expect(r).toMatchObject({ state: 'resyncing', diskId: 'd0' });
      expect(r.chunkIndex).not.toBe(chunkIndex);
    }
    expect(peers.copies().length).toBeGreaterThanOrEqual(1);
  });
});
