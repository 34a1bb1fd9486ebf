import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { StorageNodeApi } from '../../manager/node-clients.js';

process.env.VSKY_LOG_LEVEL ??= 'silent';
const { ManagerCore } = await import('../../manager/core.js');
const { FakePeers } = await import('../harness/manager-fake-peers.js');
const errors = await import('../../shared/errors.js');

// The manager's side of an online resize (manager/jobs/online-resize.ts,
// docs/jobs.md) against fake nodes and heads that keep the contracts: the
// lease and epoch never move, the holder and the standby get the grown map,
// every CAS is under the holder's epoch; a head that refuses (and lists the
// old size) rolls back, one that does not answer rolls forward; a manager
// restart finishes a resize whose size was committed and never fences it.

type Core = Awaited<ReturnType<typeof ManagerCore.open>>;
type Peers = InstanceType<typeof FakePeers>;
const CHUNK = 1 << 20;
const HOLDER = '10.9.0.1:7720';
const STANDBY = '10.9.0.2:7720';
let dir: string;
let core: Core | undefined;

beforeEach(() => { dir = mkdtempSync(join(tmpdir(), 'vsky-mgr-online-resize-')); });
afterEach(async () => {
  await core?.close();
  core = undefined;
  rmSync(dir, { recursive: true, force: true });
});

/** SetVolumeState on the fake nodes (as test/unit/manager-jobs.test.ts), recording every epoch used. */
function installCas(peers: Peers): { epochs: number[] } {
  const log = { epochs: [] as number[] };
  (peers.node as StorageNodeApi).setVolumeState = async (a, req) => {
    const n = peers.nodes.get(a);
    if (!n || n.down) throw new errors.TransportError(`cannot reach ${a}`);
    log.epochs.push(Number(req.epoch));
    const chunks = [...n.disks.values()].flatMap((d) => [...d.chunks.values()]).filter((c) => c.volumeId === req.volumeId);
    const applied = chunks.every((c) => c.generation === Number(req.generation) && (c.legality || 'LEGAL') === req.legality && c.jobId === req.jobId && c.jobOutcome === req.jobOutcome);
    if (!applied && chunks.some((c) => c.generation !== Number(req.expectedGeneration))) throw new errors.StaleGenerationError('generation mismatch');
    for (const c of chunks) Object.assign(c, { generation: Number(req.generation), legality: req.legality, jobId: req.jobId, jobKind: req.jobKind, jobOutcome: req.jobOutcome });
    for (const c of chunks) if (req.volumeSize) Object.assign(c, { volumeSize: Number(req.volumeSize), segmentCount: req.segmentCount });
    return chunks.length;
  };
  return log;
}

async function setup(peers = new FakePeers(), reuse = false): Promise<{ c: Core; peers: Peers; cas: { epochs: number[] } }> {
  if (!reuse) {
    for (let i = 0; i < 4; i++) peers.addNode(`srv${i}`).addDisk(`d${i}`, 20, CHUNK);
    peers.addHead(HOLDER);
    peers.addHead(STANDBY);
  }
  const cas = installCas(peers);
  core = await ManagerCore.open({ dataDir: dir, chunkSize: CHUNK, heartbeatTimeoutMs: 60_000 }, peers);
  if (!reuse) {
    for (const n of peers.nodes.values()) await core.registry.registerServer(n.nodeInfo());
    await core.registry.registerHead({ headId: 'h0', name: 'hv0', controlAddress: HOLDER, nbdAddress: '' });
    await core.registry.registerHead({ headId: 'h1', name: 'hv1', controlAddress: STANDBY, nbdAddress: '' });
  }
  return { c: core, peers, cas };
}

const chunksOf = (peers: Peers, volumeId: number) =>
  [...peers.nodes.values()].flatMap((n) => [...n.disks.values()].flatMap((d) => [...d.chunks.values()])).filter((c) => c.volumeId === volumeId);

const resize = async (c: Core, name: string, size: number, jobId: string) => {
  await c.jobs.submit({ jobId, kind: 'resize', volume: name, expectedGeneration: 0, args: { size: String(size) } });
  await c.jobs.idle();
  return c.jobs.get(jobId);
};

/** A 2-segment volume attached to hv0, hv1 its standby. */
async function attached(c: Core): Promise<{ id: number; epoch: number; map: unknown }> {
  const v = await c.volumes.create({ name: 'v', size: 2 * CHUNK, replicas: 3, spreadLabel: '' });
  await c.attachments.attach('v', 'hv0');
  await c.attachments.attach('v', 'hv1', { migrate: true });
  const e = c.volumes.entry('v');
  return { id: v.id, epoch: e.volume.epoch, map: structuredClone(e.map) };
}

describe('online resize (manager, fake peers)', () => {
  it('keeps the lease and epoch; the holder, then the standby, get the grown map; every CAS is under the holder\'s epoch', async () => {
    const { c, peers, cas } = await setup();
    const { id, epoch } = await attached(c);
    const job = await resize(c, 'v', 4 * CHUNK, 'grow');
    expect(job).toMatchObject({ state: 'succeeded', epoch, online: true, expectedGeneration: 1 });
    const { volume, map } = c.volumes.entry('v');
    expect(volume).toMatchObject({ size: 4 * CHUNK, segmentCount: 4, generation: 2, epoch, attachedHead: 'h0', standbyHead: 'h1' });
    expect(map.segmentCount).toBe(4);
    expect(cas.epochs.length).toBeGreaterThan(0);
    expect(new Set(cas.epochs)).toEqual(new Set([epoch]));
    for (const addr of [HOLDER, STANDBY]) {
      const last = peers.heads.get(addr)!.updates.at(-1)!;
      expect(last.epoch).toBe(epoch);
      expect(last.map).toMatchObject({ size: 4 * CHUNK });
      expect(last.map!.segments).toHaveLength(4);
    }
    // The holder first: it is the one that may write the new chunks.
    expect(peers.heads.get(HOLDER)!.attached.get('v')!.epoch).toBe(epoch);
    const chunks = chunksOf(peers, id);
    expect(chunks).toHaveLength(12);
    for (const ch of chunks) expect(ch).toMatchObject({ generation: 2, legality: 'LEGAL', jobId: 'grow', jobOutcome: 'succeeded', volumeSize: 4 * CHUNK, segmentCount: 4 });
    // The new chunks were allocated under the holder's epoch.
    for (const ch of chunks.filter((x) => x.segment >= 2)) expect(Number(ch.epoch)).toBe(epoch);
  });

  it('a holder that refuses and still lists the old size: size and map reverted, the new chunks freed, the job failed', async () => {
    const { c, peers } = await setup();
    const { id, epoch, map } = await attached(c);
    peers.heads.get(HOLDER)!.failUpdateMap = true;
    const job = await resize(c, 'v', 4 * CHUNK, 'grow-refused');
    expect(job.state).toBe('failed');
    expect(job.error).toMatch(/head hv0 refused the grown map \(injected UpdateMap failure\); the new chunks are freed, the size stays 2\.0 MiB/);
    const e = c.volumes.entry('v');
    expect(e.volume).toMatchObject({ size: 2 * CHUNK, segmentCount: 2, generation: 1, epoch });
    expect(e.map).toEqual(map);
    for (let i = 0; i < 100 && chunksOf(peers, id).length !== 6; i++) await new Promise((r) => setTimeout(r, 20));
    expect(chunksOf(peers, id)).toHaveLength(6);
    // The standby was never told (it comes after the holder).
    expect(peers.heads.get(STANDBY)!.updates.filter((u) => Number(u.map!.size) > 2 * CHUNK)).toHaveLength(0);
    // Reloaded from LevelDB: the old shape.
    await c.close();
    core = undefined;
    const { c: again } = await setup(peers, true);
    expect(again.volumes.entry('v').volume).toMatchObject({ size: 2 * CHUNK, segmentCount: 2 });
    expect(again.volumes.entry('v').map).toEqual(map);
  });

  it('a holder that does not answer may have applied the map: nothing is undone, the job finishes', async () => {
    const { c, peers } = await setup();
    const { id } = await attached(c);
    const holder = peers.heads.get(HOLDER)!;
    // Reachable for the checks, gone when the map is sent.
    const real = peers.head.updateMap;
    (peers.head as { updateMap: typeof real }).updateMap = async (a, req) => {
      if (a === HOLDER) throw new errors.TransportError('cannot reach head (injected)');
      return real(a, req);
    };
    const job = await resize(c, 'v', 3 * CHUNK, 'grow-lost');
    (peers.head as { updateMap: typeof real }).updateMap = real;
    expect(job).toMatchObject({ state: 'succeeded' });
    expect(c.volumes.entry('v').volume).toMatchObject({ size: 3 * CHUNK, segmentCount: 3, generation: 2 });
    expect(chunksOf(peers, id)).toHaveLength(9);
    // The map pusher re-sends the grown map to the holder.
    for (let i = 0; i < 100 && !holder.updates.some((u) => Number(u.map!.size) === 3 * CHUNK); i++) {
      c.pusher.pushStale();
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(holder.updates.some((u) => Number(u.map!.size) === 3 * CHUNK)).toBe(true);
  });

  it('a node refusing an allocation: the placed chunks are freed, nothing else changed, no CAS beyond DIRTY', async () => {
    const { c, peers, cas } = await setup();
    const { id, map } = await attached(c);
    const n = [...peers.nodes.values()][1]!;
    n.failAllocate = () => true;
    const job = await resize(c, 'v', 4 * CHUNK, 'grow-alloc');
    n.failAllocate = undefined;
    expect(job.state).toBe('failed');
    expect(job.error).toMatch(/allocating a new chunk failed: injected allocation failure; the new chunks are freed, the size is unchanged/);
    expect(c.volumes.entry('v').map).toEqual(map);
    expect(c.volumes.entry('v').volume.size).toBe(2 * CHUNK);
    for (let i = 0; i < 100 && chunksOf(peers, id).length !== 6; i++) await new Promise((r) => setTimeout(r, 20));
    expect(chunksOf(peers, id)).toHaveLength(6);
    expect(cas.epochs.length).toBeGreaterThan(0); // the DIRTY mark only: no head was told anything
    expect(peers.heads.get(HOLDER)!.updates.filter((u) => Number(u.map!.size) > 2 * CHUNK)).toHaveLength(0);
  });

  it('a manager restart with the new size committed finishes the job (g+1) without fencing the holder', async () => {
    const { c, peers } = await setup();
    const { id, epoch } = await attached(c);
    expect((await resize(c, 'v', 4 * CHUNK, 'grow-crash')).state).toBe('succeeded');
    // Rewind to the moment after the grown commit (step 3): job running, volume at g with the new shape, nodes DIRTY at g.
    const j = c.jobs.get('grow-crash');
    const v = c.volumes.entry('v').volume;
    const running: typeof j = { ...j, state: 'running', endedMs: 0 };
    await c.store.write(c.store.batch().putJob(running).putVolume({ ...v, generation: 1 }));
    for (const ch of chunksOf(peers, id)) Object.assign(ch, { generation: 1, legality: 'DIRTY', jobOutcome: 'running' });
    await c.close();
    core = undefined;
    const { c: again } = await setup(peers, true);
    await again.jobs.idle();
    expect(again.jobs.get('grow-crash')).toMatchObject({ state: 'succeeded' });
    expect(again.volumes.entry('v').volume).toMatchObject({ size: 4 * CHUNK, generation: 2, epoch, attachedHead: 'h0' });
    for (const ch of chunksOf(peers, id)) expect(ch).toMatchObject({ generation: 2, legality: 'LEGAL', jobOutcome: 'succeeded' });
  });

  it('a manager restart before the new size was committed: the job failed, never fenced; the size is unchanged', async () => {
    const { c, peers } = await setup();
    const { id, epoch } = await attached(c);
    expect((await resize(c, 'v', 4 * CHUNK, 'grow-early')).state).toBe('succeeded');
    // Rewind to before step 3: running job, the old shape committed.
    const j = c.jobs.get('grow-early');
    const e = c.volumes.entry('v');
    const oldMap = { ...structuredClone(e.map), segmentCount: 2, locs: e.map.locs.slice(0, 2 * 3 * 2) };
    const running: typeof j = { ...j, state: 'running', endedMs: 0 };
    await c.store.write(c.store.batch().putJob(running).putVolume({ ...e.volume, size: 2 * CHUNK, segmentCount: 2, generation: 1 }).putChunkMap(oldMap));
    for (const ch of chunksOf(peers, id)) Object.assign(ch, { generation: 1, legality: 'DIRTY', jobOutcome: 'running' });
    await c.close();
    core = undefined;
    const { c: again } = await setup(peers, true);
    await again.jobs.idle();
    const after = again.jobs.get('grow-early');
    expect(after.state).toBe('failed');
    expect(after.error).toMatch(/before its new size was committed: the size is unchanged \(2\.0 MiB\).*stays DIRTY at generation 1/);
    expect(again.volumes.entry('v').volume).toMatchObject({ size: 2 * CHUNK, generation: 1, epoch, attachedHead: 'h0' });
  });
});
