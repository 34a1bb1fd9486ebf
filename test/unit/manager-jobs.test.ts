import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { StorageNodeApi } from '../../manager/node-clients.js';
import type { JobDataPath } from '../../manager/jobs/data-path.js';

process.env.VSKY_LOG_LEVEL ??= 'silent';
const { ManagerCore } = await import('../../manager/core.js');
const { FakePeers } = await import('../harness/manager-fake-peers.js');
const errors = await import('../../shared/errors.js');
const { judge } = await import('../../manager/jobs/recon.js');

// Storage jobs (manager/jobs/) against fake storage nodes that keep the
// SetVolumeState contract (the real one: test/unit/storage-node-volume-state.test.ts)
// and a fake data path. Each test tries to break one promise.

type Core = Awaited<ReturnType<typeof ManagerCore.open>>;
type Peers = InstanceType<typeof FakePeers>;
const CHUNK = 1 << 20;
let dir: string;
let core: Core | undefined;

beforeEach(() => { dir = mkdtempSync(join(tmpdir(), 'vsky-mgr-jobs-')); });
afterEach(async () => {
  await core?.close();
  core = undefined;
  rmSync(dir, { recursive: true, force: true });
});

/** SetVolumeState on the fake nodes: the node's CAS over every chunk of the volume it holds. */
function installCas(peers: Peers): { calls: number; epochs: Map<string, number> } {
  const log = { calls: 0, epochs: new Map<string, number>() };
  (peers.node as StorageNodeApi).setVolumeState = async (a, req) => {
    const n = peers.nodes.get(a);
    if (!n || n.down) throw new errors.TransportError(`cannot reach ${a}`);
    log.calls++;
    const key = `${a}/${req.volumeId}`;
    if (Number(req.epoch) < (log.epochs.get(key) ?? 0)) throw new errors.StaleEpochError(`epoch ${req.epoch} is stale`);
    const chunks = [...n.disks.values()].flatMap((d) => [...d.chunks.values()]).filter((c) => c.volumeId === req.volumeId);
    const applied = chunks.every((c) => c.generation === Number(req.generation) && (c.legality || 'LEGAL') === req.legality && c.jobId === req.jobId && c.jobOutcome === req.jobOutcome);
    if (!applied && chunks.some((c) => c.generation !== Number(req.expectedGeneration))) throw new errors.StaleGenerationError('generation mismatch');
    log.epochs.set(key, Number(req.epoch));
    for (const c of chunks) Object.assign(c, { generation: Number(req.generation), legality: req.legality, jobId: req.jobId, jobKind: req.jobKind, jobOutcome: req.jobOutcome, epoch: Number(req.epoch) });
    for (const c of chunks) if (req.volumeSize) Object.assign(c, { volumeSize: Number(req.volumeSize), segmentCount: req.segmentCount });
    return chunks.length;
  };
  return log;
}

interface FakeData { entered: number; zeroed: Array<{ segment: number; slot: number; epoch: number; offset: number; length: number }>; gate?: Promise<void>; fail?: Error }

function fakeData(): { data: FakeData; path: () => JobDataPath } {
  const data: FakeData = { entered: 0, zeroed: [] };
  return {
    data,
    path: () => ({
      zero: async (_a, _v, segment, slot, epoch, offset, length) => {
        data.entered++;
        if (data.gate) await data.gate;
        if (data.fail) throw data.fail;
        data.zeroed.push({ segment, slot, epoch, offset, length });
      },
      flush: async () => undefined,
      close: async () => undefined,
    }),
  };
}

async function setup(peers = new FakePeers(), reuse = false): Promise<{ core: Core; peers: Peers; cas: ReturnType<typeof installCas>; data: FakeData }> {
  if (!reuse) for (let i = 0; i < 4; i++) peers.addNode(`srv${i}`).addDisk(`d${i}`, 20, CHUNK);
  const cas = installCas(peers);
  core = await ManagerCore.open({ dataDir: dir, chunkSize: CHUNK, heartbeatTimeoutMs: 5_000 }, peers);
  if (!reuse) for (const n of peers.nodes.values()) await core.registry.registerServer(n.nodeInfo());
  const f = fakeData();
  core.jobs.dataPath = f.path;
  return { core, peers, cas, data: f.data };
}

/** Every chunk of the volume on the fake nodes. */
function chunksOf(peers: Peers, volumeId: number) {
  return [...peers.nodes.values()].flatMap((n) => [...n.disks.values()].flatMap((d) => [...d.chunks.values()])).filter((c) => c.volumeId === volumeId);
}

const wipe = (c: Core, name: string, jobId: string, expectedGeneration = 0) => c.jobs.submit({ jobId, kind: 'wipe', volume: name, expectedGeneration, args: {} });

describe('storage jobs: wipe', () => {
  it('succeeds: every replica zeroed under the job\'s new epoch, then g+1, LEGAL and the job record in one CAS per node', async () => {
    const { core: c, peers, data } = await setup();
    const v = await c.volumes.create({ name: 'v', size: 2 * CHUNK + 4096, replicas: 3, spreadLabel: '' });
    const epochBefore = v.epoch;
    const job = await wipe(c, 'v', 'job-1');
    expect(job.expectedGeneration).toBe(1);
    await c.jobs.idle();
    expect(c.jobs.get('job-1')).toMatchObject({ state: 'succeeded', error: '' });
    expect(c.jobs.get('job-1').epoch).toBeGreaterThan(epochBefore);
    expect(c.volumes.entry('v').volume.generation).toBe(2);
    // Every replica of every segment, the whole length (the last segment is short), at the job's epoch.
    expect(data.zeroed).toHaveLength(9);
    expect(data.zeroed.every((z) => z.epoch === c.jobs.get('job-1').epoch)).toBe(true);
    expect(data.zeroed.filter((z) => z.segment === 2).map((z) => z.length)).toEqual([4096, 4096, 4096]);
    for (const ch of chunksOf(peers, v.id)) expect(ch).toMatchObject({ generation: 2, legality: 'LEGAL', jobId: 'job-1', jobKind: 'wipe', jobOutcome: 'succeeded' });
  });

  it('a wrong expected generation fails before touching anything (no CAS, no data)', async () => {
    const { core: c, peers, cas, data } = await setup();
    const v = await c.volumes.create({ name: 'v', size: CHUNK, replicas: 3, spreadLabel: '' });
    await wipe(c, 'v', 'job-g', 7);
    await c.jobs.idle();
    expect(c.jobs.get('job-g').state).toBe('failed');
    expect(c.jobs.get('job-g').error).toMatch(/generation mismatch.*at generation 1, the job expected 7; nothing was touched/);
    expect(cas.calls).toBe(0);
    expect(data.zeroed).toHaveLength(0);
    for (const ch of chunksOf(peers, v.id)) expect(ch.generation).toBe(1);
    expect(c.volumes.entry('v').volume.generation).toBe(1);
  });

  it('submit is idempotent on the job id; the same id for another request is refused', async () => {
    const { core: c, data } = await setup();
    await c.volumes.create({ name: 'v', size: CHUNK, replicas: 3, spreadLabel: '' });
    await c.volumes.create({ name: 'w', size: CHUNK, replicas: 3, spreadLabel: '' });
    const a = await wipe(c, 'v', 'job-i');
    const b = await wipe(c, 'v', 'job-i');
    expect(b).toBe(a);
    await c.jobs.idle();
    expect((await wipe(c, 'v', 'job-i')).state).toBe('succeeded'); // after the end too: same job, not a second wipe
    expect(data.zeroed).toHaveLength(3);
    await expect(wipe(c, 'w', 'job-i')).rejects.toBeInstanceOf(errors.AlreadyExistsError);
    expect(c.volumes.entry('v').volume.generation).toBe(2);
  });

  it('abort stops the worker: the volume stays DIRTY at g; attach is refused while the job runs; aborting an ended job is a clear error', async () => {
    const { core: c, peers, data } = await setup();
    peers.addHead('10.9.0.1:7720');
    await c.registry.registerHead({ headId: 'h0', name: 'hv0', controlAddress: '10.9.0.1:7720', nbdAddress: '' });
    const v = await c.volumes.create({ name: 'v', size: 2 * CHUNK, replicas: 3, spreadLabel: '' });
    let open!: () => void;
    data.gate = new Promise((r) => { open = r; });
    await wipe(c, 'v', 'job-a');
    for (let i = 0; i < 100 && data.entered === 0; i++) await new Promise((r) => setTimeout(r, 5)); // the worker is in its data work
    expect(c.jobs.get('job-a').state).toBe('running');
    await expect(c.attachments.attach('v', 'hv0')).rejects.toThrow(/job \(job-a, running\) running: it cannot be attached/);
    expect((await c.jobs.abort('job-a')).state).toBe('aborting');
    open();
    await c.jobs.idle();
    expect(c.jobs.get('job-a').state).toBe('aborted');
    for (const ch of chunksOf(peers, v.id)) expect(ch).toMatchObject({ generation: 1, legality: 'DIRTY', jobId: 'job-a', jobOutcome: 'running' });
    expect(c.volumes.entry('v').volume.generation).toBe(1);
    await expect(c.jobs.abort('job-a')).rejects.toThrow(/already ended \(aborted.*nothing to abort/);
    await expect(c.jobs.abort('nope')).rejects.toBeInstanceOf(errors.NotFoundError);
  });

  it('an attached volume is refused with a clear error, nothing touched', async () => {
    const { core: c, peers, cas } = await setup();
    peers.addHead('10.9.0.1:7720');
    await c.registry.registerHead({ headId: 'h0', name: 'hv0', controlAddress: '10.9.0.1:7720', nbdAddress: '' });
    await c.volumes.create({ name: 'v', size: CHUNK, replicas: 3, spreadLabel: '' });
    await c.attachments.attach('v', 'hv0');
    await wipe(c, 'v', 'job-x');
    await c.jobs.idle();
    expect(c.jobs.get('job-x')).toMatchObject({ state: 'failed' });
    expect(c.jobs.get('job-x').error).toMatch(/attached to head hv0: wipe jobs run on detached volumes for now; detach it first/);
    expect(cas.calls).toBe(0);
  });
});

describe('storage jobs: interruption, reconnaissance, fence', () => {
  it('a failure between data and record leaves DIRTY at g; recon says interrupted; the fence (g+2, new epoch) is idempotent', async () => {
    const { core: c, peers } = await setup();
    const v = await c.volumes.create({ name: 'v', size: CHUNK, replicas: 3, spreadLabel: '' });
    // The final CAS cannot reach one node: the job fails after its data work.
    const node = [...peers.nodes.values()].find((n) => chunksOf(peers, v.id).length > 0 && [...n.disks.values()].some((d) => [...d.chunks.values()].some((x) => x.volumeId === v.id)))!;
    const real = (peers.node as StorageNodeApi).setVolumeState!;
    (peers.node as StorageNodeApi).setVolumeState = async (a, req) => {
      if (req.jobOutcome === 'succeeded' && a === node.info.controlAddress) throw new errors.TransportError('cut off');
      return real(a, req);
    };
    await wipe(c, 'v', 'job-c');
    await c.jobs.idle();
    expect(c.jobs.get('job-c').state).toBe('failed');
    const mine = (n: typeof node) => [...n.disks.values()].flatMap((d) => [...d.chunks.values()]).filter((x) => x.volumeId === v.id);
    expect(mine(node)[0]).toMatchObject({ generation: 1, legality: 'DIRTY', jobId: 'job-c' });
    (peers.node as StorageNodeApi).setVolumeState = real;
    // The others committed (g+1): the work was done, the last CAS cut off: roll forward.
    let report = await c.jobs.recon.investigate('v', c.jobs.get('job-c'));
    expect(report.verdict).toBe('roll_forward');
    // With every node DIRTY at g, it is interrupted: fence it.
    for (const ch of chunksOf(peers, v.id)) Object.assign(ch, { generation: 1, legality: 'DIRTY', jobOutcome: 'running' });
    report = await c.jobs.recon.investigate('v', c.jobs.get('job-c'));
    expect(report.verdict).toBe('interrupted');
    expect(report.nodes.filter((n) => n.chunks > 0).every((n) => n.generation === 1 && n.legality === 'DIRTY' && n.jobId === 'job-c')).toBe(true);
    const epochBefore = c.volumes.entry('v').volume.epoch;
    await c.jobs.fence(c.jobs.get('job-c'), report);
    expect(c.jobs.get('job-c').state).toBe('fenced');
    expect(c.volumes.entry('v').volume.epoch).toBeGreaterThan(epochBefore);
    for (const ch of chunksOf(peers, v.id)) expect(ch).toMatchObject({ generation: 3, legality: 'DIRTY', jobId: 'job-c', jobKind: 'wipe', jobOutcome: 'fenced' });
    // Idempotent: recon now says fenced; fencing again changes nothing but the epoch.
    report = await c.jobs.recon.investigate('v', c.jobs.get('job-c'));
    expect(report.verdict).toBe('fenced');
    await c.jobs.fence(c.jobs.get('job-c'), { ...report, verdict: 'interrupted' });
    for (const ch of chunksOf(peers, v.id)) expect(ch).toMatchObject({ generation: 3, jobOutcome: 'fenced' });
    expect(c.volumes.entry('v').volume.generation).toBe(3);
  });

  it('a wipe whose last CAS reached only some nodes is rolled forward (the data work was all done)', async () => {
    const { core: c, peers } = await setup();
    const v = await c.volumes.create({ name: 'v', size: CHUNK, replicas: 3, spreadLabel: '' });
    const real = (peers.node as StorageNodeApi).setVolumeState!;
    let cut = '';
    (peers.node as StorageNodeApi).setVolumeState = async (a, req) => {
      if (req.jobOutcome === 'succeeded' && (cut === '' || cut === a)) { cut = a; throw new errors.TransportError('cut off'); }
      return real(a, req);
    };
    await wipe(c, 'v', 'job-f');
    await c.jobs.idle();
    (peers.node as StorageNodeApi).setVolumeState = real;
    const report = await c.jobs.recon.investigate('v', c.jobs.get('job-f'));
    expect(report.verdict).toBe('roll_forward');
    await c.jobs.settle(c.jobs.get('job-f'), report);
    expect(c.jobs.get('job-f').state).toBe('succeeded');
    for (const ch of chunksOf(peers, v.id)) expect(ch).toMatchObject({ generation: 2, legality: 'LEGAL', jobOutcome: 'succeeded' });
    expect(c.volumes.entry('v').volume.generation).toBe(2);
  });

  it('a job running when the manager stopped is decided at the next start: fenced (DIRTY stays DIRTY)', async () => {
    const s = await setup();
    const v = await s.core.volumes.create({ name: 'v', size: CHUNK, replicas: 3, spreadLabel: '' });
    let open!: () => void;
    s.data.gate = new Promise((r) => { open = r; });
    await wipe(s.core, 'v', 'job-r');
    for (let i = 0; i < 100 && s.data.entered === 0; i++) await new Promise((r) => setTimeout(r, 5)); // the worker is in its data work
    const closing = s.core.close();
    open();
    await closing;
    core = undefined;
    for (const ch of chunksOf(s.peers, v.id)) expect(ch).toMatchObject({ generation: 1, legality: 'DIRTY' });
    const again = await setup(s.peers, true);
    await again.core.jobs.idle();
    expect(again.core.jobs.get('job-r').state).toBe('fenced');
    for (const ch of chunksOf(s.peers, v.id)) expect(ch).toMatchObject({ generation: 3, legality: 'DIRTY', jobOutcome: 'fenced' });
  });

  it('recon of a job that never started (g, LEGAL, no record): fence it', async () => {
    const { core: c } = await setup();
    await c.volumes.create({ name: 'v', size: CHUNK, replicas: 3, spreadLabel: '' });
    const report = await c.jobs.recon.investigate('v', { id: 'ghost', expectedGeneration: 1 });
    expect(report.verdict).toBe('not_started');
  });
});

describe('storage jobs: resize', () => {
  it('grows: new segments placed and allocated, size, map and generation in one batch', async () => {
    const { core: c, peers } = await setup();
    const v = await c.volumes.create({ name: 'v', size: 2 * CHUNK, replicas: 3, spreadLabel: '' });
    await c.jobs.submit({ jobId: 'rs', kind: 'resize', volume: 'v', expectedGeneration: 0, args: { size: String(5 * CHUNK) } });
    await c.jobs.idle();
    expect(c.jobs.get('rs').state).toBe('succeeded');
    const e = c.volumes.entry('v');
    expect(e.volume).toMatchObject({ size: 5 * CHUNK, segmentCount: 5, generation: 2 });
    expect(e.map.segmentCount).toBe(5);
    expect(e.map.locs.every((x) => x >= 0)).toBe(true);
    const chunks = chunksOf(peers, v.id);
    expect(chunks).toHaveLength(15);
    expect(chunks.every((ch) => ch.generation === 2 && ch.jobOutcome === 'succeeded')).toBe(true);
    // Old and new chunks alike carry the new shape (a rebuild from storage reads it).
    expect(chunks.every((ch) => ch.volumeSize === 5 * CHUNK && ch.segmentCount === 5)).toBe(true);
  });

  it('a smaller size and unknown ids are clear errors that change nothing', async () => {
    const { core: c, cas } = await setup();
    await c.volumes.create({ name: 'v', size: 2 * CHUNK, replicas: 3, spreadLabel: '' });
    await expect(c.jobs.submit({ jobId: 'small', kind: 'resize', volume: 'v', expectedGeneration: 0, args: { size: String(CHUNK) } }))
      .rejects.toThrow(/smaller than its .*volumes only grow; nothing changed/);
    await expect(c.jobs.submit({ jobId: 'k', kind: 'shrink', volume: 'v', expectedGeneration: 0, args: {} })).rejects.toThrow(/unknown job kind/);
    await expect(c.jobs.submit({ jobId: 'k', kind: 'wipe', volume: 'nope', expectedGeneration: 0, args: {} })).rejects.toBeInstanceOf(errors.NotFoundError);
    await expect(c.jobs.submit({ jobId: 'bad id!', kind: 'wipe', volume: 'v', expectedGeneration: 0, args: {} })).rejects.toThrow(/invalid job id/);
    await expect(c.jobs.submit({ jobId: 'x'.repeat(49), kind: 'wipe', volume: 'v', expectedGeneration: 0, args: {} })).rejects.toThrow(/1-48 characters/);
    await expect(c.jobs.submit({ jobId: 'sz', kind: 'resize', volume: 'v', expectedGeneration: 0, args: { size: 'lots' } })).rejects.toThrow(/invalid size/);
    expect(() => c.jobs.get('small')).toThrow(errors.NotFoundError);
    expect(c.jobs.list()).toHaveLength(0);
    expect(cas.calls).toBe(0);
    expect(c.volumes.entry('v').volume).toMatchObject({ size: 2 * CHUNK, generation: 1 });
  });
});

describe('reconnaissance verdicts (judge, pure)', () => {
  const node = (o: Partial<Parameters<typeof judge>[2][number]>) => ({
    server: 's', controlAddress: 'a', chunks: 2, generation: 4, legality: 'LEGAL', jobId: '', jobKind: '', jobOutcome: '', epoch: 9, mixed: false, error: '', ...o,
  });
  it('tells every outcome of job J from g=4 apart, and refuses to guess', () => {
    const ok = node({ generation: 5, jobId: 'J', jobKind: 'wipe', jobOutcome: 'succeeded' });
    const dirty = node({ legality: 'DIRTY', jobId: 'J', jobKind: 'wipe', jobOutcome: 'running' });
    expect(judge('J', 4, [ok, ok]).verdict).toBe('succeeded');
    expect(judge('J', 4, [ok, dirty]).verdict).toBe('roll_forward');
    expect(judge('J', 4, [dirty, dirty]).verdict).toBe('interrupted');
    expect(judge('J', 4, [node({}), dirty]).verdict).toBe('interrupted');
    expect(judge('J', 4, [node({}), node({ chunks: 0, generation: 0 })]).verdict).toBe('not_started');
    expect(judge('J', 4, [node({ generation: 6, jobId: 'J', jobKind: 'fence', jobOutcome: 'fenced', legality: 'DIRTY' })]).verdict).toBe('fenced');
    // Another job's success, a node that cannot be read, mixed chunks, a later generation: never guessed.
    expect(judge('J', 4, [node({ generation: 5, jobId: 'K', jobOutcome: 'succeeded' })]).verdict).toBe('other');
    expect(judge('J', 4, [ok, node({ error: 'unreachable' })])).toMatchObject({ verdict: 'other', explanation: expect.stringMatching(/unreachable/) });
    expect(judge('J', 4, [node({ mixed: true })]).verdict).toBe('other');
    expect(judge('J', 4, [node({ generation: 9 })]).verdict).toBe('other');
  });
});
