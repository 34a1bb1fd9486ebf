import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

// Stale marks kept on storage too (manager/segment-notes.ts): a head's report
// of a failed replica is answered only once an in-sync replica's node holds
// the note durably, so a manager rebuilt from storage never reads the stale
// copy as good. Fake nodes and heads, real LevelDB.

process.env.VSKY_LOG_LEVEL ??= 'silent';
const { ManagerCore } = await import('../../manager/core.js');
const { FakePeers } = await import('../harness/manager-fake-peers.js');
const { segmentReplicas } = await import('../../manager/chunk-map.js');
const errors = await import('../../shared/errors.js');

type Core = Awaited<ReturnType<typeof ManagerCore.open>>;
type Peers = InstanceType<typeof FakePeers>;

const CHUNK = 1 << 20;
const HEAD = '10.9.0.1:7720';
let dir: string;
let core: Core | undefined;

beforeEach(() => { dir = mkdtempSync(join(tmpdir(), 'vsky-mgr-notes-')); });
afterEach(async () => {
  await core?.close();
  core = undefined;
  rmSync(dir, { recursive: true, force: true });
});

async function setup(): Promise<{ c: Core; peers: Peers }> {
  const peers = new FakePeers();
  for (let i = 0; i < 4; i++) peers.addNode(`srv${i}`).addDisk(`d${i}`, 20, CHUNK);
  peers.addHead(HEAD);
  core = await ManagerCore.open({ dataDir: dir, chunkSize: CHUNK, heartbeatTimeoutMs: 5_000 }, peers);
  for (const n of peers.nodes.values()) await core.registry.registerServer(n.nodeInfo());
  await core.registry.registerHead({ headId: 'h1', name: 'head1', controlAddress: HEAD, nbdAddress: '' });
  await core.volumes.create({ name: 'v', size: 2 * CHUNK, replicas: 3, spreadLabel: '' });
  await core.attachments.attach('v', 'h1');
  return { c: core, peers };
}

/** The fake node holding a replica's disk. */
const nodeOf = (c: Core, peers: Peers, diskId: string) => peers.nodes.get(c.registry.serverOfDisk(diskId)!.controlAddress)!;

describe('segment notes on storage', () => {
  it('a reported stale replica is noted on the survivors before the reply, with a growing version', async () => {
    const { c, peers } = await setup();
    const entry = c.volumes.entry('v');
    const [bad, ...good] = segmentReplicas(entry.map, 1);
    await c.failures.reportReplicaFailure({ headId: 'h1', volume: 'v', segment: 1, slot: bad!.idSlot, epoch: 1, reason: 'EIO' });
    for (const g of good) {
      expect(nodeOf(c, peers, g.diskId).notes).toContainEqual({ volumeId: entry.volume.id, segment: 1, staleSlots: 1 << bad!.idSlot, mapVersion: 1, epoch: 1 });
    }
    expect(c.volumes.entry('v').volume.mapVersion).toBe(1);
    // The same report again: already noted, nothing sent.
    const sent = [...peers.nodes.values()].reduce((n, x) => n + x.notes.length, 0);
    await c.failures.reportReplicaFailure({ headId: 'h1', volume: 'v', segment: 1, slot: bad!.idSlot, epoch: 1, reason: 'EIO' });
    expect([...peers.nodes.values()].reduce((n, x) => n + x.notes.length, 0)).toBe(sent);
  });

  it('when no in-sync node can record the note, the report fails (the head fails the write) and the next report notes it', async () => {
    const { c, peers } = await setup();
    const entry = c.volumes.entry('v');
    const [bad, ...good] = segmentReplicas(entry.map, 0);
    for (const g of good) nodeOf(c, peers, g.diskId).failNote = true;
    const report = { headId: 'h1', volume: 'v', segment: 0, slot: bad!.idSlot, epoch: 1, reason: 'EIO' };
    await expect(c.failures.reportReplicaFailure(report)).rejects.toBeInstanceOf(errors.IoError);
    await expect(c.failures.reportReplicaFailure(report)).rejects.toThrow(/recorded the stale mark/);
    expect(segmentReplicas(c.volumes.entry('v').map, 0).find((x) => x.idSlot === bad!.idSlot)!.state).toBe('stale'); // still marked in the database
    for (const g of good) nodeOf(c, peers, g.diskId).failNote = false;
    await c.failures.reportReplicaFailure(report);
    for (const g of good) expect(nodeOf(c, peers, g.diskId).notes.at(-1)).toMatchObject({ segment: 0, staleSlots: 1 << bad!.idSlot });
  });

  it('a disk lost without a head waiting is noted in the background; the version survives a manager restart', async () => {
    const { c, peers } = await setup();
    const entry = c.volumes.entry('v');
    const lost = segmentReplicas(entry.map, 0)[0]!.diskId;
    await c.failures.failDisk(lost, 'test');
    await c.settle();
    await new Promise((r) => setTimeout(r, 50));
    const noted = [...peers.nodes.values()].flatMap((n) => n.notes);
    expect(noted.length).toBeGreaterThan(0);
    expect(noted.every((n) => n.staleSlots !== 0)).toBe(true);
    const version = c.volumes.entry('v').volume.mapVersion!;
    expect(version).toBeGreaterThan(0);
    await c.close();
    core = await ManagerCore.open({ dataDir: dir, chunkSize: CHUNK, heartbeatTimeoutMs: 5_000 }, peers);
    expect(core.volumes.entry('v').volume.mapVersion).toBe(version);
  });
});
