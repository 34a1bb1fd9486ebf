import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

// The manager's event log (manager/events.ts) against a real LevelDB and
// in-memory storage nodes and heads: durable across restarts with continuing
// sequence numbers, filters, retention, the events a failure, a stale mark and
// an attach leave (committed with the change itself), and recording that
// never throws into the caller.

process.env.VSKY_LOG_LEVEL ??= 'silent';
const { ManagerCore } = await import('../../manager/core.js');
const { EventLog } = await import('../../manager/events.js');
const { ManagerStore, EVENT_KEYS } = await import('../../manager/store.js');
const { FakePeers } = await import('../harness/manager-fake-peers.js');
const errors = await import('../../shared/errors.js');

type Core = Awaited<ReturnType<typeof ManagerCore.open>>;
type Peers = InstanceType<typeof FakePeers>;
type Store = Awaited<ReturnType<typeof ManagerStore.open>>;
type EventRecord = Awaited<ReturnType<Core['events']['list']>>[number];

const CHUNK = 1 << 20;
const HEAD = '10.9.0.1:7720';
const MGR = '10.9.0.100:7700';
let dir: string;
let now = 1_000_000;
let core: Core | undefined;
let store: Store | undefined;

beforeEach(() => { dir = mkdtempSync(join(tmpdir(), 'vsky-mgr-events-')); now = 1_000_000; });
afterEach(async () => {
  await core?.close();
  await store?.close().catch(() => undefined);
  core = undefined;
  store = undefined;
  rmSync(dir, { recursive: true, force: true });
});

function makePeers(servers = 4): Peers {
  const peers = new FakePeers();
  for (let i = 0; i < servers; i++) peers.addNode(`srv${i}`, { labels: { rack: `r${i}` } }).addDisk(`d${i}`, 20, CHUNK);
  peers.addHead(HEAD);
  return peers;
}

async function open(peers: Peers, opts: { start?: boolean; eventRetention?: number } = {}): Promise<Core> {
  core = await ManagerCore.open({ dataDir: dir, chunkSize: CHUNK, heartbeatTimeoutMs: 5_000, now: () => now, eventRetention: opts.eventRetention }, peers);
  if (opts.start) core.start(MGR);
  return core;
}

async function setup(opts: { start?: boolean; eventRetention?: number } = {}): Promise<{ c: Core; peers: Peers }> {
  const peers = makePeers();
  const c = await open(peers, opts);
  for (const n of peers.nodes.values()) await c.registry.registerServer(n.nodeInfo());
  await c.registry.registerHead({ headId: 'h1', name: 'head1', controlAddress: HEAD, nbdAddress: '' });
  return { c, peers };
}

const create = (c: Core, name: string, segments = 2) => c.volumes.create({ name, size: segments * CHUNK, replicas: 3, spreadLabel: '' });
/** Fire-and-forget events (attach, detach...) are durable once the store's queue drained. */
const drained = async (c: Core) => { await c.store.write(c.store.batch()); await c.events.idle(); };
const kinds = (events: EventRecord[]) => events.map((e) => e.kind);
const seqs = (events: EventRecord[]) => events.map((e) => e.seq);

async function storedEvents(s: Store): Promise<EventRecord[]> {
  return (await s.db.values({ gte: EVENT_KEYS.gte, lt: EVENT_KEYS.lt }).all()) as EventRecord[];
}

describe('the event log', () => {
  it('survives a manager restart; sequence numbers continue', async () => {
    const { c, peers } = await setup();
    await create(c, 'vm1');
    await c.attachments.attach('vm1', 'h1');
    await drained(c);
    const before = await c.events.list({ afterSeq: 0 });
    expect(kinds(before)).toEqual([
      'server.added', 'disk.added', 'server.added', 'disk.added', 'server.added', 'disk.added', 'server.added', 'disk.added',
      'head.up', 'volume.created', 'volume.attached',
    ]);
    expect(seqs(before)).toEqual(before.map((_, i) => i + 1));
    expect(c.events.latestSeq).toBe(before.length);
    expect(before.find((e) => e.kind === 'volume.created')).toMatchObject({
      target: 'volume:vm1', timeMs: now, reason: 'created', details: { volumeId: 1, size: 2 * CHUNK, replicas: 3, segments: 2, generation: 1 },
    });
    await c.close();
    core = undefined;

    const c2 = await open(peers);
    expect(c2.events.latestSeq).toBe(before.length);
    expect(await c2.events.list({ afterSeq: 0 })).toEqual(before);
    await c2.attachments.detach('vm1', false);
    await c2.volumes.delete('vm1');
    await drained(c2);
    const after = await c2.events.list({ afterSeq: before.length });
    expect(kinds(after)).toEqual(['volume.detached', 'volume.deleted', 'gc.freed']);
    expect(seqs(after)).toEqual([before.length + 1, before.length + 2, before.length + 3]);
    expect(after[0]).toMatchObject({ target: 'volume:vm1', details: { head: 'head1', epoch: 1, force: false } });
    expect(after[2]).toMatchObject({ target: 'cluster', details: { chunks: 6, dropped: 0 } });
    // The snapshot the rest of the manager loads never sees event keys.
    expect((await c2.store.load()).volumes).toHaveLength(0);
  });

  it('filters by target and kind, pages forward with afterSeq, returns the newest without it', async () => {
    const { c } = await setup();
    await create(c, 'a');
    await create(c, 'b');
    await c.attachments.attach('a', 'h1');
    await c.attachments.attach('b', 'h1');
    await c.attachments.detach('a', false);
    await drained(c);
    const all = await c.events.list({ afterSeq: 0 });
    const latest = c.events.latestSeq;
    expect(all.at(-1)!.seq).toBe(latest);

    expect(kinds(await c.events.list({ target: 'volume:a' }))).toEqual(['volume.created', 'volume.attached', 'volume.detached']);
    expect(kinds(await c.events.list({ target: 'volume:*', kind: 'volume.attached' }))).toEqual(['volume.attached', 'volume.attached']);
    expect((await c.events.list({ kind: 'volume' })).every((e) => e.kind.startsWith('volume.'))).toBe(true);
    expect(await c.events.list({ kind: 'volume.*' })).toEqual(await c.events.list({ kind: 'volume' }));
    expect((await c.events.list({ kind: 'server.added' })).map((e) => e.target)).toEqual(['server:srv0', 'server:srv1', 'server:srv2', 'server:srv3']);
    expect(await c.events.list({ target: 'volume:nope' })).toEqual([]);
    await expect(c.events.list({ kind: 'volume.exploded' })).rejects.toBeInstanceOf(errors.InvalidArgumentError);
    await expect(c.events.list({ kind: 'volume.exploded' })).rejects.toThrow(/unknown event kind.*volume.attached/);

    // Newest last; without afterSeq, the newest `limit`; with it, the next `limit`.
    expect(seqs(await c.events.list({ limit: 3 }))).toEqual([latest - 2, latest - 1, latest]);
    expect(seqs(await c.events.list({ afterSeq: 0, limit: 3 }))).toEqual([1, 2, 3]);
    expect(seqs(await c.events.list({ afterSeq: 3, limit: 2 }))).toEqual([4, 5]);
    expect(await c.events.list({ afterSeq: latest })).toEqual([]);
    expect(seqs(await c.events.list({ afterSeq: 5, target: 'volume:b', limit: 1 }))).toEqual([all.find((e) => e.target === 'volume:b')!.seq]);
  });

  it('keeps at most the retention, trimming the oldest in the background; reads older events from disk', async () => {
    store = await ManagerStore.open(dir);
    let log = await EventLog.open(store, { retention: 50, ringSize: 8, now: () => now });
    for (let i = 1; i <= 200; i++) await log.record('gc.freed', 'cluster', `pass ${i}`, { i });
    await log.idle();
    await store.write(store.batch());
    const kept = await storedEvents(store);
    expect(kept.length).toBeGreaterThanOrEqual(50);
    expect(kept.length).toBeLessThanOrEqual(50 + 5); // the trim runs in steps of a tenth of the retention
    expect(kept.at(-1)!.seq).toBe(200);
    expect(seqs(kept)).toEqual(kept.map((_, i) => 200 - kept.length + 1 + i));
    // Beyond the 8 in memory: from disk, forward and backward.
    const oldest = kept[0]!.seq;
    expect(seqs(await log.list({ afterSeq: 0, limit: 3 }))).toEqual([oldest, oldest + 1, oldest + 2]);
    expect(seqs(await log.list({ limit: 20 }))).toEqual(Array.from({ length: 20 }, (_, i) => 181 + i));
    expect((await log.list({ afterSeq: 0, limit: 1000 })).map((e) => e.details.i)).toEqual(seqs(kept));
    expect(await log.list({ limit: 1000 })).toEqual(kept);
    await store.close();

    // Reopened: the sequence goes on from the newest kept.
    store = await ManagerStore.open(dir);
    log = await EventLog.open(store, { retention: 50, ringSize: 8, now: () => now });
    expect(log.latestSeq).toBe(200);
    expect((await log.record('gc.freed', 'cluster', 'after restart'))?.seq).toBe(201);
    expect(seqs(await log.list({ limit: 2 }))).toEqual([200, 201]);
  });

  it('the metadata snapshot skips the event log, however long it is', async () => {
    const { c } = await setup();
    await create(c, 'vm1');
    const batch = c.store.batch();
    for (let i = 0; i < 9000; i++) batch.event('gc.freed', 'cluster', `pass ${i}`);
    await c.store.write(batch);
    await c.registry.registerHead({ headId: 'h2', name: 'head2', controlAddress: '10.9.0.2:7720', nbdAddress: '' });
    const snap = await c.store.load();
    expect(snap.servers).toHaveLength(4);
    expect(snap.heads.map((h) => h.name).sort()).toEqual(['head1', 'head2']);
    expect(snap.volumes.map((v) => v.volume.name)).toEqual(['vm1']);
    expect(c.events.latestSeq).toBeGreaterThan(9000);
  });

  it('a server failure, a reported stale replica and an attach leave their events, with epochs, committed with the change', async () => {
    const { c, peers } = await setup({ start: true });
    const v = await create(c, 'vm1', 2);
    await c.attachments.attach('vm1', 'h1');
    await drained(c);
    const attached = (await c.events.list({ kind: 'volume.attached' }))[0]!;
    expect(attached).toMatchObject({ target: 'volume:vm1', reason: 'write lease granted to head head1', details: { head: 'head1', epoch: 1, previousHead: '', reconcile: false } });

    // A head reports a replica failing a write.
    const mark = c.events.latestSeq;
    await c.failures.reportReplicaFailure({ headId: 'h1', volume: 'vm1', segment: 1, slot: 2, epoch: 1, reason: 'write timed out' });
    const [stale] = await c.events.list({ afterSeq: mark, kind: 'replica.stale' });
    expect(stale).toMatchObject({
      target: 'volume:vm1', reason: 'reported by head head1: write timed out',
      details: { segment: 1, slot: 2, was: 'in_sync', head: 'head1', epoch: 1 },
    });
    // The stale mark and its event went to LevelDB in one batch.
    await c.settle();
    await drained(c);
    expect(kinds(await c.events.list({ afterSeq: stale!.seq }))).toEqual(expect.arrayContaining(['spare.placed', 'resync.started', 'gc.freed']));

    // A server fails: one batch holds its new state, the stale marks and both events.
    const batches: string[][] = [];
    const db = c.store.db as unknown as { batch: (ops: Array<{ key: string }>) => Promise<void> };
    const orig = db.batch.bind(c.store.db);
    db.batch = (ops) => { batches.push(ops.map((o) => o.key)); return orig(ops); };
    const victim = c.volumes.entry('vm1').map.disks.find((d) => d !== 'd3') ?? 'd0';
    const server = c.registry.serverOfDisk(victim)!;
    const mark2 = c.events.latestSeq;
    await c.failures.failServer(server.name, 'power supply died');
    const failed = await c.events.list({ afterSeq: mark2 });
    expect(failed[0]).toMatchObject({ kind: 'server.failed', target: `server:${server.name}`, reason: 'failed by an admin: power supply died', details: { serverId: server.id, from: 'active' } });
    expect(failed[1]).toMatchObject({ kind: 'replica.stale', target: 'volume:vm1', reason: `server ${server.name} failed: failed by an admin: power supply died` });
    expect(failed[1]!.details.replicas).toBeGreaterThan(0);
    expect(failed[1]!.seq).toBe(failed[0]!.seq + 1);
    const batch = batches.find((b) => b.includes(`server/${server.id}`))!;
    expect(batch).toEqual(expect.arrayContaining([`chunks/${String(v.id).padStart(10, '0')}`]));
    expect(batch.filter((k) => k.startsWith('event/'))).toHaveLength(2);
    db.batch = orig;

    // Spares, resyncs: the replaced replicas are rebuilt by the head; each finish is an event with the new generation.
    await c.settle();
    const head = peers.heads.get(HEAD)!;
    for (const t of head.resyncs) {
      await c.resyncs.progress({ resyncId: t.resyncId!, regionsDone: 1, regionsTotal: 1, bytesCopied: CHUNK, finished: true, error: '' });
    }
    await c.settle();
    await drained(c);
    const finished = await c.events.list({ afterSeq: mark2, kind: 'resync.finished' });
    expect(finished.length).toBeGreaterThan(0);
    expect(finished.at(-1)).toMatchObject({ target: 'volume:vm1', details: { kind: 'rebuild', generation: c.volumes.entry('vm1').volume.generation, bytes: CHUNK } });

    // A head that goes silent fails.
    now += 6_000;
    for (const s of c.registry.listServers()) await c.registry.heartbeat(s.id, []);
    await c.registry.checkTimeouts();
    expect((await c.events.list({ kind: 'head' })).map((e) => `${e.kind} ${e.target}`)).toEqual(['head.up head:head1', 'head.failed head:head1']);
  });

  it('a hand-off and a take-over are recorded with the epochs', async () => {
    const { c, peers } = await setup();
    peers.addHead('10.9.0.2:7720');
    await c.registry.registerHead({ headId: 'h2', name: 'head2', controlAddress: '10.9.0.2:7720', nbdAddress: '' });
    await create(c, 'vm1');
    await c.attachments.attach('vm1', 'h1');
    await c.attachments.attach('vm1', 'h2', { migrate: true });
    await c.leases.handoff('vm1', 'head2');
    await c.leases.detachHead('vm1', 'head1', false); // the migration's source leaves
    await c.attachments.attach('vm1', 'h1', { force: true }); // and takes the volume back by force
    await drained(c);
    const ev = (await c.events.list({ target: 'volume:vm1' })).map((e) => ({ kind: e.kind, ...e.details }));
    expect(ev).toEqual([
      expect.objectContaining({ kind: 'volume.created' }),
      expect.objectContaining({ kind: 'volume.attached', head: 'head1', epoch: 1 }),
      expect.objectContaining({ kind: 'volume.standby_attached', head: 'head2', holder: 'head1', epoch: 1 }),
      expect.objectContaining({ kind: 'volume.attached', head: 'head2', epoch: 2, previousHead: 'head1', standby: 'head1' }),
      expect.objectContaining({ kind: 'lease.handoff', from: 'head1', to: 'head2', epoch: 2, clean: true }),
      expect.objectContaining({ kind: 'volume.standby_detached', head: 'head1', force: false }),
      expect.objectContaining({ kind: 'volume.attached', head: 'head1', epoch: 3, previousHead: 'head2', reconcile: true }),
      expect.objectContaining({ kind: 'lease.takeover', from: 'head2', to: 'head1', epoch: 3, forced: true }),
    ]);
  });
});

describe('recording never throws into the caller', () => {
  it('record() resolves (undefined) when the write fails or the store is closed; odd details are dropped', async () => {
    const { c } = await setup();
    const db = c.store.db as unknown as { batch: (ops: unknown[]) => Promise<void> };
    const orig = db.batch.bind(c.store.db);
    db.batch = () => Promise.reject(new Error('disk full'));
    await expect(c.events.record('gc.freed', 'cluster', 'x')).resolves.toBeUndefined();
    db.batch = orig;
    const weird = { n: Number.NaN, big: 10n, obj: { a: 1 }, ok: 'yes' } as unknown as Record<string, string>;
    const r = await c.events.record('gc.freed', 'cluster', 'odd details', weird);
    expect(r).toMatchObject({ kind: 'gc.freed', details: { ok: 'yes' } });
    expect(Object.keys(r!.details)).toEqual(['ok']);
    // recordIn into something that is not a batch: logged, not thrown.
    expect(() => c.events.recordIn(null as never, 'gc.freed', 'cluster', 'x')).not.toThrow();
    // A failed event write does not fail the state change around it, and vice versa the sequence stays gap-free for readers.
    const seqsBefore = seqs(await c.events.list({ afterSeq: 0 }));
    expect(seqsBefore).toEqual([...seqsBefore].sort((a, b) => a - b));
    await c.close();
    core = undefined;
    await expect(c.events.record('gc.freed', 'cluster', 'after close')).resolves.toBeUndefined();
  });

  it('events are numbered in commit order: a follower never skips one', async () => {
    const { c } = await setup();
    const seen: number[] = [];
    let after = c.events.latestSeq;
    const follow = async () => {
      for (const e of await c.events.list({ afterSeq: after })) { seen.push(e.seq); after = e.seq; }
    };
    // Interleave batch events and fire-and-forget ones while a follower polls.
    const work: Promise<unknown>[] = [];
    for (let i = 0; i < 50; i++) {
      work.push(c.store.write(c.store.batch().event('gc.freed', 'cluster', `batch ${i}`)));
      work.push(c.events.record('gc.freed', 'cluster', `own ${i}`));
      if (i % 7 === 0) await follow();
    }
    await Promise.all(work);
    await follow();
    const all = seqs(await c.events.list({ afterSeq: 0, limit: 10_000 }));
    expect(seen).toEqual(all.filter((s) => s > all.length - 100));
    expect(new Set(seen).size).toBe(100);
  });
});
