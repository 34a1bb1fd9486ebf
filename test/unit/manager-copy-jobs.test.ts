import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { StorageNodeApi } from '../../manager/node-clients.js';
import type { RunJobRequest } from '../../proto/generated/vsky/head/RunJobRequest.js';

process.env.VSKY_LOG_LEVEL ??= 'silent';
const { ManagerCore } = await import('../../manager/core.js');
const { FakePeers } = await import('../harness/manager-fake-peers.js');
const errors = await import('../../shared/errors.js');

// Copy jobs at the manager (manager/jobs/copy.ts) with fake storage nodes that
// keep the SetVolumeState contract and a fake host head: the job's lease is
// renewed by reports and heartbeats and expires after the TTL (then it is
// fenced from storage); the host's success is believed only once the nodes
// say so; abort travels in the report reply; a host that does not take the
// job gets it fenced at once; bad requests change nothing.

type Core = Awaited<ReturnType<typeof ManagerCore.open>>;
type Peers = InstanceType<typeof FakePeers>;
const CHUNK = 1 << 20;
const TTL = 1000; // long enough that a loaded machine's timer delays stay far inside it
let dir: string;
let core: Core | undefined;

beforeEach(() => { dir = mkdtempSync(join(tmpdir(), 'vsky-mgr-copy-')); });
afterEach(async () => {
  await core?.close();
  core = undefined;
  rmSync(dir, { recursive: true, force: true });
});

function installCas(peers: Peers): void {
  const epochs = new Map<string, number>();
  (peers.node as StorageNodeApi).setVolumeState = async (a, req) => {
    const n = peers.nodes.get(a)!;
    const key = `${a}/${req.volumeId}`;
    if (Number(req.epoch) < (epochs.get(key) ?? 0)) throw new errors.StaleEpochError(`epoch ${req.epoch} is stale`);
    const chunks = [...n.disks.values()].flatMap((d) => [...d.chunks.values()]).filter((c) => c.volumeId === req.volumeId);
    const applied = chunks.every((c) => c.generation === Number(req.generation) && (c.legality || 'LEGAL') === req.legality && c.jobId === req.jobId && c.jobOutcome === req.jobOutcome);
    if (!applied && chunks.some((c) => c.generation !== Number(req.expectedGeneration))) throw new errors.StaleGenerationError('generation mismatch');
    epochs.set(key, Number(req.epoch));
    for (const c of chunks) Object.assign(c, { generation: Number(req.generation), legality: req.legality, jobId: req.jobId, jobKind: req.jobKind, jobOutcome: req.jobOutcome, epoch: Number(req.epoch) });
    return chunks.length;
  };
}

async function setup(): Promise<{ core: Core; peers: Peers; dispatched: RunJobRequest[] }> {
  const peers = new FakePeers();
  for (let i = 0; i < 3; i++) peers.addNode(`srv${i}`).addDisk(`d${i}`, 20, CHUNK);
  installCas(peers);
  const dispatched: RunJobRequest[] = [];
  peers.head.runJob = async (_a, req) => { dispatched.push(req); };
  core = await ManagerCore.open({ dataDir: dir, chunkSize: CHUNK, heartbeatTimeoutMs: 5_000, leaseTtlMs: TTL }, peers);
  for (const n of peers.nodes.values()) await core.registry.registerServer(n.nodeInfo());
  await core.registry.registerHead({ headId: 'h0', name: 'hv0', controlAddress: '10.9.0.1:7720', nbdAddress: '' });
  await core.volumes.create({ name: 'src', size: 2 * CHUNK, replicas: 2, spreadLabel: '' });
  return { core, peers, dispatched };
}

const chunksOf = (peers: Peers, volumeId: number) => [...peers.nodes.values()].flatMap((n) => [...n.disks.values()].flatMap((d) => [...d.chunks.values()])).filter((c) => c.volumeId === volumeId);
const until = async (f: () => boolean, ms = 3000) => {
  const end = Date.now() + ms;
  while (!f() && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
  expect(f()).toBe(true);
};
const copy = async (c: Core, jobId: string, args: Record<string, string> = {}, dst = 'dst') => {
  await c.registry.headHeartbeat('h0'); // the host is up (its last heartbeat within the TTL)
  return c.jobs.submit({ jobId, kind: 'copy', volume: dst, expectedGeneration: 0, args: { source: 'src', create: 'true', ...(args.create === 'false' ? {} : { thick: 'true' }), ...args } });
};
const report = (c: Core, jobId: string, state: string, done = 0, total = 0, headId = 'h0') => c.jobs.copies.report({ jobId, headId, state, done, total, error: state === 'failed' ? 'disk on fire' : '' });

describe('copy jobs at the manager', () => {
  it('creates DST like SRC, marks it DIRTY under the job\'s epoch, hands it to the host; success is recorded once the nodes say so', async () => {
    const { core: c, peers, dispatched } = await setup();
    await copy(c, 'c1');
    await until(() => dispatched.length === 1);
    const j = c.jobs.get('c1');
    const dst = c.volumes.entry('dst').volume;
    expect(dst).toMatchObject({ size: 2 * CHUNK, replicas: 2 });
    expect(j).toMatchObject({ state: 'running', host: 'h0', expectedGeneration: 1 });
    expect(dispatched[0]).toMatchObject({ jobId: 'c1', kind: 'copy', epoch: j.epoch, expectedGeneration: 1 });
    for (const ch of chunksOf(peers, dst.id)) expect(ch).toMatchObject({ generation: 1, legality: 'DIRTY', jobId: 'c1', jobOutcome: 'running', epoch: j.epoch });
    expect(c.jobs.blocking('src')).toMatch(/copy job \(c1, running\)/);
    expect(await report(c, 'c1', 'running', 10, 100)).toEqual({ stop: false, reason: '' });
    expect(c.jobs.get('c1')).toMatchObject({ done: 10, total: 100 });
    // The host writes its final CAS on every node (as head-agent/jobs/job-host.ts does), then reports; the manager checks the nodes.
    for (const n of peers.nodes.values()) {
      await peers.node.setVolumeState!(n.info.controlAddress, { volumeId: dst.id, epoch: j.epoch, expectedGeneration: 1, generation: 2, legality: 'LEGAL', jobId: 'c1', jobKind: 'copy', jobOutcome: 'succeeded' });
    }
    await report(c, 'c1', 'succeeded', 100, 100);
    expect(c.jobs.get('c1').state).toBe('succeeded');
    expect(c.volumes.entry('dst').volume.generation).toBe(2);
    expect(c.jobs.blocking('src')).toBe('');
    expect(await report(c, 'c1', 'running', 100, 100)).toMatchObject({ stop: true });
  });

  it('a silent host: after the lease TTL the job is fenced from storage (g+2, DIRTY); heartbeats naming it keep it alive before that', async () => {
    const { core: c, peers, dispatched } = await setup();
    await copy(c, 'c2');
    await until(() => dispatched.length === 1);
    // Heartbeats naming the job renew its lease past the TTL.
    const renewFrom = Date.now();
    while (Date.now() - renewFrom < 2 * TTL) {
      c.jobs.copies.heartbeat('h0', ['c2']);
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(c.jobs.get('c2').state).toBe('running');
    const silentFrom = Date.now();
    await until(() => c.jobs.get('c2').state === 'fenced', 3 * TTL + 3000);
    expect(Date.now() - silentFrom).toBeGreaterThanOrEqual(TTL - 120);
    expect(c.jobs.get('c2').error).toMatch(/silent for \d+ ms \(lease TTL 1000 ms\).*interrupted.*fenced under epoch/);
    const dst = c.volumes.entry('dst').volume;
    expect(dst.generation).toBe(3);
    for (const ch of chunksOf(peers, dst.id)) expect(ch).toMatchObject({ generation: 3, legality: 'DIRTY', jobId: 'c2', jobKind: 'copy', jobOutcome: 'fenced' });
    // The late host: told to stop; its late CAS under the old epoch is refused by the nodes.
    expect(await report(c, 'c2', 'running', 5, 10)).toMatchObject({ stop: true, reason: expect.stringMatching(/already ended \(fenced\)/) });
    const n = [...peers.nodes.values()][0]!;
    await expect(peers.node.setVolumeState!(n.info.controlAddress, { volumeId: dst.id, epoch: c.jobs.get('c2').epoch, expectedGeneration: 1, generation: 2, legality: 'LEGAL', jobId: 'c2', jobKind: 'copy', jobOutcome: 'succeeded' }))
      .rejects.toBeInstanceOf(errors.StaleEpochError);
  });

  it('abort travels in the report reply; the host\'s "aborted" leaves DST DIRTY at g; a report from another head is told to stop', async () => {
    const { core: c, peers, dispatched } = await setup();
    await copy(c, 'c3');
    await until(() => dispatched.length === 1);
    expect(await report(c, 'c3', 'running', 1, 10, 'h-other')).toMatchObject({ stop: true, reason: expect.stringMatching(/not this head's/) });
    await c.jobs.abort('c3');
    expect(await report(c, 'c3', 'running', 2, 10)).toMatchObject({ stop: true, reason: expect.stringMatching(/aborted/) });
    await report(c, 'c3', 'aborted', 2, 10);
    expect(c.jobs.get('c3')).toMatchObject({ state: 'aborted', error: expect.stringMatching(/stays DIRTY at generation 1/) });
    for (const ch of chunksOf(peers, c.volumes.entry('dst').volume.id)) expect(ch).toMatchObject({ generation: 1, legality: 'DIRTY' });
    // A retry with a new id (no --create: DST exists now) from the same generation.
    await copy(c, 'c3-retry', { create: 'false' });
    await until(() => dispatched.length === 2);
    expect(c.jobs.get('c3-retry')).toMatchObject({ state: 'running', expectedGeneration: 1 });
  });

  it('a manager restart: the running copy goes on (its host gets a full TTL to report again); SRC stays busy; silent, it is fenced', async () => {
    const { core: c, peers, dispatched } = await setup();
    await copy(c, 'c5');
    await until(() => dispatched.length === 1);
    await c.close();
    core = await ManagerCore.open({ dataDir: dir, chunkSize: CHUNK, heartbeatTimeoutMs: 5_000, leaseTtlMs: TTL }, peers);
    const c2 = core;
    expect(c2.jobs.get('c5')).toMatchObject({ state: 'running', host: 'h0' });
    expect(c2.jobs.blocking('src')).toMatch(/copy job \(c5/);
    expect(await report(c2, 'c5', 'running', 3, 10)).toEqual({ stop: false, reason: '' });
    await until(() => c2.jobs.get('c5').state === 'fenced', 3 * TTL + 3000);
    await until(() => c2.jobs.blocking('src') === ''); // once the end is persisted
    for (const ch of chunksOf(peers, c2.volumes.entry('dst').volume.id)) expect(ch).toMatchObject({ generation: 3, legality: 'DIRTY', jobOutcome: 'fenced' });
  });

  it('a host that does not take the job: the job is fenced at once, without waiting for the TTL', async () => {
    const { core: c, peers } = await setup();
    peers.head.runJob = async () => { throw new errors.TransportError('cannot reach head'); };
    await copy(c, 'c4');
    await until(() => c.jobs.get('c4').state === 'fenced', 1000);
    expect(c.jobs.get('c4').error).toMatch(/did not take the job \(cannot reach head\)/);
  });

  it('bad requests are clear errors that change nothing', async () => {
    const { core: c, dispatched } = await setup();
    await c.volumes.create({ name: 'small', size: CHUNK, replicas: 2, spreadLabel: '' });
    await c.volumes.create({ name: 'big', size: 4 * CHUNK, replicas: 2, spreadLabel: '' });
    await expect(copy(c, 'b1', { create: 'false' }, 'small')).rejects.toThrow(/smaller than source src.*nothing changed/);
    await expect(copy(c, 'b2', { create: 'false' }, 'big')).rejects.toThrow(/larger than source src/);
    await expect(copy(c, 'b3', {}, 'src')).rejects.toThrow(/same volume/);
    await expect(copy(c, 'b4', { source: 'nope' })).rejects.toBeInstanceOf(errors.NotFoundError);
    await expect(copy(c, 'b5', { host: 'nohead' })).rejects.toThrow(/no head "nohead"/);
    await expect(copy(c, 'b6', { throttle_mibps: 'fast' })).rejects.toThrow(/throttle_mibps/);
    await expect(copy(c, 'b7', { colour: 'red' })).rejects.toThrow(/unknown argument "colour"/);
    c.volumes.entry('src').volume.attachedHead = 'h0';
    await expect(copy(c, 'b8')).rejects.toThrow(/source src is attached to head hv0.*detach src first.*snapshot/);
    c.volumes.entry('src').volume.attachedHead = '';
    expect(c.volumes.find('dst')).toBeUndefined();
    expect(c.jobs.list()).toHaveLength(0);
    expect(dispatched).toHaveLength(0);
  });
});
