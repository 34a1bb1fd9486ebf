import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { call, storageNodeClient, type StorageNodeClient } from '../../shared/grpc.js';
import { setRootLogger } from '../../shared/logger.js';
import { StaleEpochError, StaleGenerationError, InvalidArgumentError } from '../../shared/errors.js';
import type { ChunkIdentity } from '../../proto/generated/vsky/common/ChunkIdentity.js';
import type { ChunkList__Output } from '../../proto/generated/vsky/storage/ChunkList.js';
import type { NodeInfo__Output } from '../../proto/generated/vsky/storage/NodeInfo.js';
import type { SetVolumeStateRequest } from '../../proto/generated/vsky/storage/SetVolumeStateRequest.js';
import { startStorageNode, type StorageNodeHandle, type StorageNodeOptions } from '../../storage-node/daemon.js';

// SetVolumeState (storage jobs): the epoch-checked generation compare-and-set
// over every chunk of a volume on one node, durable before the reply.

setRootLogger(pino({ level: process.env.VSKY_LOG_LEVEL ?? 'silent' }));

const MiB = 1024 * 1024;
const CHUNK = 8 * MiB;
let root: string;
let node: StorageNodeHandle;
let client: StorageNodeClient;

function options(dataDir: string, disks: StorageNodeOptions['disks']): StorageNodeOptions {
  return { dataDir, name: 'node-jobs', host: '127.0.0.1', dataPort: 0, grpcPort: 0, disks, chunkSize: CHUNK, labels: {}, heartbeatIntervalMs: 1000 };
}

function identity(volumeId: number, segment: number, generation = 1, epoch = 1): ChunkIdentity {
  return { volumeId, volumeName: `vol-${volumeId}`, volumeSize: 2 * CHUNK, segment, slot: 0, segmentCount: 2, replicas: 1, generation, epoch };
}

const set = (req: Partial<SetVolumeStateRequest>) => call(client, 'SetVolumeState', {
  volumeId: 1, epoch: 1, expectedGeneration: 1, generation: 1, legality: 'LEGAL', jobId: '', jobKind: '', jobOutcome: '', ...req,
});
const list = async () => (await call<object, ChunkList__Output>(client, client.ListChunks, { diskId: '' })).chunks
  .filter((c) => c.identity!.volumeId === 1).map((c) => c.identity!);

async function connect(h: StorageNodeHandle): Promise<void> {
  client?.close();
  node = h;
  client = storageNodeClient(h.controlAddress);
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'vsky-vs-'));
  await connect(await startStorageNode(options(join(root, 'node'), [{ path: join(root, 'a.img'), size: 64 * MiB }])));
  const info = await call<object, NodeInfo__Output>(client, client.GetInfo, {});
  const disk = info.disks[0]!.diskId;
  await call(client, client.AllocateChunk, { diskId: disk, chunkIndex: 0, identity: identity(1, 0, 1, 3) });
  await call(client, client.AllocateChunk, { diskId: disk, chunkIndex: 1, identity: identity(1, 1, 1, 3) });
});

afterAll(async () => {
  client?.close();
  await node?.close();
  await rm(root, { recursive: true, force: true });
});

describe('SetVolumeState', () => {
  it('new chunks are LEGAL with no job record; ListChunks shows the fields', async () => {
    for (const id of await list()) expect(id).toMatchObject({ generation: 1, legality: 'LEGAL', jobId: '', jobKind: '', jobOutcome: '', epoch: 3 });
  });

  it('a wrong expected generation is refused with ESTALE_GENERATION and changes nothing', async () => {
    const before = await list();
    await expect(set({ epoch: 4, expectedGeneration: 7, generation: 8, legality: 'DIRTY', jobId: 'j1', jobKind: 'wipe', jobOutcome: 'running' }))
      .rejects.toBeInstanceOf(StaleGenerationError);
    expect(await list()).toEqual(before); // not even the epoch moved
  });

  it('raise_lagging: chunks below the expected generation (map-only bumps they missed) count as at it; above it is still refused', async () => {
    const before = await list();
    // The manager's map moved to generation 5 (resyncs) while these chunks stayed at 1: a plain CAS is refused...
    await expect(set({ epoch: 3, expectedGeneration: 5, generation: 5, legality: 'DIRTY', jobId: 'j0', jobKind: 'wipe', jobOutcome: 'running' }))
      .rejects.toBeInstanceOf(StaleGenerationError);
    expect(await list()).toEqual(before);
    // ...and the same CAS with raise_lagging is accepted: every chunk is now DIRTY at 5.
    await set({ epoch: 3, expectedGeneration: 5, generation: 5, legality: 'DIRTY', jobId: 'j0', jobKind: 'wipe', jobOutcome: 'running', raiseLagging: true });
    for (const id of await list()) expect(id).toMatchObject({ generation: 5, legality: 'DIRTY', jobId: 'j0' });
    // A chunk above the expected generation is a job the caller does not know: refused even with raise_lagging.
    await expect(set({ epoch: 3, expectedGeneration: 4, generation: 4, legality: 'DIRTY', jobId: 'j0b', jobKind: 'wipe', jobOutcome: 'running', raiseLagging: true }))
      .rejects.toBeInstanceOf(StaleGenerationError);
    // Back to where the next tests expect the volume (LEGAL at 1, no job record).
    await set({ epoch: 3, expectedGeneration: 5, generation: 1, legality: 'LEGAL', jobId: '', jobKind: '', jobOutcome: '' });
    expect(await list()).toEqual(before);
  });

  it('an epoch below the volume\'s minimum is refused with ESTALE_EPOCH and changes nothing', async () => {
    const before = await list();
    await expect(set({ epoch: 2, expectedGeneration: 1, generation: 1, legality: 'DIRTY', jobId: 'j1', jobKind: 'wipe', jobOutcome: 'running' }))
      .rejects.toBeInstanceOf(StaleEpochError);
    expect(await list()).toEqual(before);
  });

  it('sets every chunk at once, raises the epoch, survives a restart; a retry is a no-op, another CAS from the old generation is refused', async () => {
    const dirty = { epoch: 5, expectedGeneration: 1, generation: 1, legality: 'DIRTY', jobId: 'job-0001', jobKind: 'wipe', jobOutcome: 'running' };
    expect((await set(dirty)).chunks).toBe(2);
    for (const id of await list()) expect(id).toMatchObject({ generation: 1, legality: 'DIRTY', jobId: 'job-0001', jobKind: 'wipe', jobOutcome: 'running', epoch: 5 });
    const done = { epoch: 5, expectedGeneration: 1, generation: 2, legality: 'LEGAL', jobId: 'job-0001', jobKind: 'wipe', jobOutcome: 'succeeded' };
    expect((await set(done)).chunks).toBe(2);
    expect((await set(done)).chunks).toBe(2); // the reply was lost: the retry succeeds, nothing changes
    // Durable: a restarted node reads it back from its disk.
    const dataDir = join(root, 'node');
    await node.close();
    await connect(await startStorageNode(options(dataDir, [{ path: join(root, 'a.img'), size: 64 * MiB }])));
    for (const id of await list()) expect(id).toMatchObject({ generation: 2, legality: 'LEGAL', jobId: 'job-0001', jobKind: 'wipe', jobOutcome: 'succeeded', epoch: 5 });
    await expect(set({ ...dirty, jobId: 'job-0002' })).rejects.toBeInstanceOf(StaleGenerationError);
  });

  it('a resize\'s CAS sets the new size and segment count on every chunk\'s identity', async () => {
    const grow = { epoch: 5, expectedGeneration: 2, generation: 3, legality: 'LEGAL', jobId: 'grow', jobKind: 'resize', jobOutcome: 'succeeded', volumeSize: 9 * CHUNK, segmentCount: 9 };
    expect((await set(grow)).chunks).toBe(2);
    expect((await set(grow)).chunks).toBe(2); // retry: applied, accepted
    for (const id of await list()) expect(id).toMatchObject({ generation: 3, volumeSize: 9 * CHUNK, segmentCount: 9, jobKind: 'resize' });
  });

  it('refuses a bad legality, kind or a job id longer than a record keeps', async () => {
    await expect(set({ epoch: 5, expectedGeneration: 3, generation: 3, legality: 'MAYBE' })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(set({ epoch: 5, expectedGeneration: 3, generation: 3, jobKind: 'shred' })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(set({ epoch: 5, expectedGeneration: 3, generation: 3, jobId: 'x'.repeat(49) })).rejects.toBeInstanceOf(InvalidArgumentError);
  });
});
