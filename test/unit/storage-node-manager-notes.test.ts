import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { call, storageNodeClient, type StorageNodeClient } from '../../shared/grpc.js';
import { setRootLogger } from '../../shared/logger.js';
import type { ChunkIdentity } from '../../proto/generated/vsky/common/ChunkIdentity.js';
import { startStorageNode, type StorageNodeHandle, type StorageNodeOptions } from '../../storage-node/daemon.js';

// What a storage node keeps for the manager besides its chunk records
// (storage-node/manager-notes.ts): volume notes (access rules, versioned,
// epoch-checked), disk notes (an admin's word, bad chunks), and a delete's
// DELETING mark on the chunk records and a tombstone on every node, a create's
// CREATING mark cleared by the committed note, a server note; each durable
// across a node restart.

setRootLogger(pino({ level: process.env.VSKY_LOG_LEVEL ?? 'silent' }));

const MiB = 1024 * 1024;
const CHUNK = 8 * MiB;
let root: string;
let node: StorageNodeHandle;
let client: StorageNodeClient;
let disk = '';

function options(dataDir: string): StorageNodeOptions {
  return {
    dataDir, name: 'node-notes', host: '127.0.0.1', dataPort: 0, grpcPort: 0, disks: [{ path: join(root, 'a.img'), size: 64 * MiB }],
    chunkSize: CHUNK, labels: {}, heartbeatIntervalMs: 1000,
  };
}

function identity(volumeId: number, segment: number, epoch = 3): ChunkIdentity {
  return { volumeId, volumeName: `vol-${volumeId}`, volumeSize: 2 * CHUNK, segment, slot: 0, segmentCount: 2, replicas: 1, generation: 1, epoch };
}

async function start(): Promise<void> {
  client?.close();
  node = await startStorageNode(options(join(root, 'node')));
  client = storageNodeClient(node.controlAddress);
}

const listed = () => call(client, 'ListChunks', { diskId: '' });

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'vsky-notes-'));
  await start();
  disk = (await call(client, 'GetInfo', {})).disks[0]!.diskId;
  for (const [i, [v, s]] of [[1, 0], [1, 1], [2, 0]].entries()) await call(client, 'AllocateChunk', { diskId: disk, chunkIndex: i, identity: identity(v!, s!) });
});

afterAll(async () => {
  client?.close();
  await node?.close();
  await rm(root, { recursive: true, force: true });
});

describe('manager notes on a storage node', () => {
  it('keeps a volume note: newer versions win, an older one changes nothing, a stale epoch or an unknown volume is refused', async () => {
    await call(client, 'KeepVolumeNote', { volumeId: 1, version: 2, epoch: 3, access: 'rules v2' });
    await call(client, 'KeepVolumeNote', { volumeId: 1, version: 1, epoch: 3, access: 'rules v1' });
    await expect(call(client, 'KeepVolumeNote', { volumeId: 1, version: 5, epoch: 2, access: 'behind' })).rejects.toThrow(/epoch 2 is below/);
    await expect(call(client, 'KeepVolumeNote', { volumeId: 9, version: 1, epoch: 3, access: 'x' })).rejects.toThrow(/no chunk of volume 9/);
    expect((await listed()).volumeNotes).toEqual([{ volumeId: 1, version: 2, epoch: 3, access: 'rules v2', spreadLabel: '', createdMs: 0, committed: false, record: '' }]);
  });

  it('keeps a disk note, reported with the disk; garbage is refused', async () => {
    await call(client, 'KeepDiskNote', { diskId: disk, adminState: 'draining', reason: 'removed by an admin', badChunks: [7, 3, 7] });
    await expect(call(client, 'KeepDiskNote', { diskId: disk, adminState: 'exploded', reason: '', badChunks: [] })).rejects.toThrow(/admin state/);
    await expect(call(client, 'KeepDiskNote', { diskId: 'nope', adminState: 'failed', reason: '', badChunks: [] })).rejects.toThrow();
    const d = (await call(client, 'GetInfo', {})).disks[0]!;
    expect(d.note).toEqual({ diskId: disk, adminState: 'draining', reason: 'removed by an admin', badChunks: [3, 7] });
  });

  it('marks a volume\'s chunks DELETING (not another volume\'s); a stale epoch is refused', async () => {
    await expect(call(client, 'MarkVolumeDeleting', { volumeId: 2, epoch: 1 })).rejects.toThrow(/below/);
    expect((await call(client, 'MarkVolumeDeleting', { volumeId: 2, epoch: 3 })).chunks).toBe(1);
    expect((await call(client, 'MarkVolumeDeleting', { volumeId: 42, epoch: 3 })).chunks).toBe(0);
    const byVolume = (await listed()).chunks.map((c) => [c.identity!.volumeId, c.identity!.legality]);
    expect(byVolume.sort()).toEqual([[1, 'LEGAL'], [1, 'LEGAL'], [2, 'DELETING']]);
  });

  it('keeps the record of a volume with no chunk here (a never-written thin volume), across a restart, until its delete', async () => {
    const record = JSON.stringify({ v: 1, name: 'empty', size: CHUNK, replicas: 2, chunkSize: CHUNK });
    await call(client, 'KeepVolumeNote', { volumeId: 77, version: 1, epoch: 0, access: '', record });
    await call(client, 'KeepVolumeNote', { volumeId: 1, version: 4, epoch: 3, access: 'rules v2' }); // a save: the record note stays
    await node.close();
    await start();
    expect((await listed()).volumeNotes.find((n) => n.volumeId === 77)).toMatchObject({ version: 1, record });
    expect((await call(client, 'MarkVolumeDeleting', { volumeId: 77, epoch: 0 })).chunks).toBe(0);
    expect((await listed()).volumeNotes.map((n) => n.volumeId)).toEqual([1]);
  });

  it('keeps all of it across a node restart; a freed volume\'s note goes', async () => {
    await call(client, 'FreeChunk', { diskId: disk, chunkIndex: 2, volumeId: 2 });
    await call(client, 'KeepVolumeNote', { volumeId: 1, version: 5, epoch: 3, access: 'rules v3' });
    await node.close();
    await start();
    const after = await listed();
    expect(after.volumeNotes).toEqual([{ volumeId: 1, version: 5, epoch: 3, access: 'rules v3', spreadLabel: '', createdMs: 0, committed: false, record: '' }]);
    expect((await call(client, 'GetInfo', {})).disks[0]!.note).toMatchObject({ adminState: 'draining', badChunks: [3, 7] });
    expect(after.chunks.every((c) => c.identity!.legality === 'LEGAL')).toBe(true);
    await call(client, 'AllocateChunk', { diskId: disk, chunkIndex: 2, identity: identity(3, 0) });
    await call(client, 'MarkVolumeDeleting', { volumeId: 3, epoch: 3 });
    await node.close();
    await start();
    expect((await listed()).chunks.find((c) => c.identity!.volumeId === 3)!.identity!.legality).toBe('DELETING');
  });

  it('keeps a tombstone of every volume whose delete began, holder or not, until the manager drops it', async () => {
    // Premise: this node holds no chunk of volume 77; the mark still leaves a tombstone.
    expect((await listed()).chunks.some((c) => c.identity!.volumeId === 77)).toBe(false);
    expect((await call(client, 'MarkVolumeDeleting', { volumeId: 77, epoch: 0 })).chunks).toBe(0);
    expect((await listed()).deletedVolumes).toEqual(expect.arrayContaining([2, 3, 42, 77]));
    await node.close();
    await start();
    expect((await listed()).deletedVolumes).toEqual(expect.arrayContaining([2, 3, 42, 77]));
    await call(client, 'ForgetDeletedVolumes', { volumeIds: [42, 77] });
    const left = (await listed()).deletedVolumes;
    expect(left).toEqual(expect.arrayContaining([2, 3]));
    expect(left).not.toContain(77);
    await expect(call(client, 'MarkVolumeDeleting', { volumeId: 0, epoch: 0 })).rejects.toThrow(/invalid volume id/);
  });

  it('allocates a create\'s chunks CREATING, and a committed note clears the mark of that volume only, durably', async () => {
    const creating = (v: number, s: number) => ({ ...identity(v, s, 0), legality: 'CREATING' });
    await call(client, 'AllocateChunk', { diskId: disk, chunkIndex: 4, identity: creating(5, 0) });
    await call(client, 'AllocateChunk', { diskId: disk, chunkIndex: 5, identity: creating(5, 1) });
    await call(client, 'AllocateChunk', { diskId: disk, chunkIndex: 6, identity: creating(6, 0) });
    await expect(call(client, 'AllocateChunk', { diskId: disk, chunkIndex: 7, identity: { ...identity(8, 0), legality: 'DIRTY' } })).rejects.toThrow(/LEGAL or CREATING/);
    const marks = async () => new Map((await listed()).chunks.filter((c) => c.identity!.volumeId >= 5).map((c) => [`${c.identity!.volumeId}/${c.identity!.segment}`, c.identity!.legality]));
    // Premise: the mark is on storage and survives a restart.
    await node.close();
    await start();
    expect(await marks()).toEqual(new Map([['5/0', 'CREATING'], ['5/1', 'CREATING'], ['6/0', 'CREATING']]));
    // A note without `committed` (access rules) leaves it; the committed one clears volume 5's, with its spread label and creation time.
    await call(client, 'KeepVolumeNote', { volumeId: 5, version: 0, epoch: 0, access: '' });
    expect((await marks()).get('5/0')).toBe('CREATING');
    await call(client, 'KeepVolumeNote', { volumeId: 5, version: 1, epoch: 0, access: '', spreadLabel: 'rack', createdMs: 1234, committed: true });
    await node.close();
    await start();
    expect(await marks()).toEqual(new Map([['5/0', 'LEGAL'], ['5/1', 'LEGAL'], ['6/0', 'CREATING']]));
    expect((await listed()).volumeNotes.find((n) => n.volumeId === 5)).toMatchObject({ spreadLabel: 'rack', createdMs: 1234 });
    await expect(call(client, 'KeepVolumeNote', { volumeId: 5, version: 2, epoch: 0, access: '', spreadLabel: 'x'.repeat(65) })).rejects.toThrow(/spread label/);
  });

  it('keeps the admin\'s word on the server, reported with the node', async () => {
    expect((await call(client, 'GetInfo', {})).note).toBeNull();
    await call(client, 'KeepServerNote', { adminState: 'failed', reason: 'failed by an admin: PSU' });
    await expect(call(client, 'KeepServerNote', { adminState: 'draining', reason: '' })).rejects.toThrow(/admin state/);
    await node.close();
    await start();
    expect((await call(client, 'GetInfo', {})).note).toEqual({ adminState: 'failed', reason: 'failed by an admin: PSU' });
    await call(client, 'KeepServerNote', { adminState: '', reason: '' });
    expect((await call(client, 'GetInfo', {})).note).toBeNull();
  });
});
