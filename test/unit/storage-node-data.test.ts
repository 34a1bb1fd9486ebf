import { randomBytes } from 'node:crypto';
import { mkdtemp, open, rename, rm, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Flag, Opcode, Status } from '../../shared/data-protocol/frame.js';
import { call, storageNodeClient, type StorageNodeClient } from '../../shared/grpc.js';
import { setRootLogger } from '../../shared/logger.js';
import { ConflictError, InvalidArgumentError, NotFoundError } from '../../shared/errors.js';
import type { ChunkIdentity } from '../../proto/generated/vsky/common/ChunkIdentity.js';
import type { ChunkList__Output } from '../../proto/generated/vsky/storage/ChunkList.js';
import type { DiskInfo__Output } from '../../proto/generated/vsky/storage/DiskInfo.js';
import type { NodeInfo__Output } from '../../proto/generated/vsky/storage/NodeInfo.js';
import { startStorageNode, type StorageNodeHandle, type StorageNodeOptions } from '../../storage-node/daemon.js';
import { computeLayout } from '../../storage-node/disk-format.js';
import { RawDataClient, expectStatus } from '../harness/raw-data-client.js';

setRootLogger(pino({ level: process.env.VSKY_LOG_LEVEL ?? 'silent' }));

const MiB = 1024 * 1024;
const CHUNK = 8 * MiB;
const REGION = CHUNK / 4096; // 2 KiB
const DISK_SIZE = 64 * MiB;
const DATA_OFFSET = computeLayout(DISK_SIZE, CHUNK, 4096).dataOffset;

// ---- fixtures (requests go over a raw data-protocol client: test/harness/raw-data-client.ts) ----

let root: string;
let node: StorageNodeHandle;
let grpcClient: StorageNodeClient;
let conn: RawDataClient;
let diskA: string;
let diskB: string;

function options(dataDir: string, disks: StorageNodeOptions['disks']): StorageNodeOptions {
  return {
    dataDir, name: 'node-test', host: '127.0.0.1', dataPort: 0, grpcPort: 0, disks, chunkSize: CHUNK,
    labels: { rack: 'r1' }, heartbeatIntervalMs: 1000,
  };
}

const rpc = {
  info: () => call<object, NodeInfo__Output>(grpcClient, grpcClient.GetInfo, {}),
  allocate: (diskId: string, chunkIndex: number, identity: ChunkIdentity) =>
    call(grpcClient, grpcClient.AllocateChunk, { diskId, chunkIndex, identity }),
  free: (diskId: string, chunkIndex: number, volumeId: number) => call(grpcClient, grpcClient.FreeChunk, { diskId, chunkIndex, volumeId }),
  list: (diskId = '') => call<object, ChunkList__Output>(grpcClient, grpcClient.ListChunks, { diskId }),
  addDisk: (path: string, size = 0) => call<object, DiskInfo__Output>(grpcClient, grpcClient.AddDisk, { path, size, chunkSize: 0 }),
  removeDisk: (diskId: string, force = false) => call(grpcClient, grpcClient.RemoveDisk, { diskId, force }),
};

function identity(volumeId: number, segment: number, slot = 0, epoch = 1): ChunkIdentity {
  return { volumeId, volumeName: `vol-${volumeId}`, volumeSize: 4 * CHUNK, segment, slot, segmentCount: 4, replicas: 3, generation: 1, epoch };
}

async function connectNode(h: StorageNodeHandle): Promise<void> {
  grpcClient?.close();
  conn?.close();
  node = h;
  grpcClient = storageNodeClient(h.controlAddress);
  conn = await RawDataClient.connect(h.dataAddress);
}

/** Disk ids in the order the disks were given. */
async function diskIds(): Promise<[string, string]> {
  const info = await rpc.info();
  const byPath = new Map(info.disks.map((d) => [d.path, d.diskId]));
  return [byPath.get(diskA)!, byPath.get(diskB)!];
}

/** Raw bytes of a chunk on the disk file, bypassing the node. */
async function rawChunkBytes(path: string, chunkIndex: number, offset: number, length: number): Promise<Buffer> {
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.alloc(length);
    await fh.read(buf, 0, length, DATA_OFFSET + chunkIndex * CHUNK + offset);
    return buf;
  } finally {
    await fh.close();
  }
}

const read = (volumeId: number, segment: number, offset: number, length: number, slot = 0) =>
  conn.send({ opcode: Opcode.READ, volumeId, segment, slot, offset, length });
const write = (volumeId: number, segment: number, offset: number, data: Buffer, epoch = 1, flags = 0, slot = 0) =>
  conn.send({ opcode: Opcode.WRITE, volumeId, segment, slot, offset, epoch, flags }, data);

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'vsky-sn-'));
  diskA = join(root, 'disks', 'a.img');
  diskB = join(root, 'disks', 'b.img');
  await connectNode(await startStorageNode(options(join(root, 'node1'), [{ path: diskA, size: DISK_SIZE }, { path: diskB, size: DISK_SIZE }])));
  const [a, b] = await diskIds();
  await rpc.allocate(a, 0, identity(1, 0));
  await rpc.allocate(b, 0, identity(1, 1));
  await rpc.allocate(a, 1, identity(2, 0, 1));
});

afterAll(async () => {
  conn?.close();
  grpcClient?.close();
  await node?.close();
  await rm(root, { recursive: true, force: true });
});

describe('storage node data path', () => {
  it('reports itself and its disks', async () => {
    const info = await rpc.info();
    expect(info.serverId).toBe(node.serverId);
    expect(info.labels).toEqual({ rack: 'r1' });
    expect(info.disks.map((d) => [d.path, d.chunkCount, d.chunkSize, d.state])).toEqual([
      [diskA, 7, CHUNK, 'active'], [diskB, 7, CHUNK, 'active'],
    ]);
    expect(info.disks[0]!.usedChunks).toBe(2);
  });

  it('writes and reads back, and answers PING', async () => {
    const data = randomBytes(64 * 1024);
    expectStatus(await write(1, 0, 4096, data), Status.OK);
    const r = await read(1, 0, 4096, data.length);
    expectStatus(r, Status.OK);
    expect(r.payload.equals(data)).toBe(true);
    // Unaligned, spanning regions and a partial read of what was written.
    const r2 = await read(1, 0, 4096 + 1000, 5000);
    expect(r2.payload.equals(data.subarray(1000, 6000))).toBe(true);
    expectStatus(await conn.send({ opcode: Opcode.PING }), Status.OK);
  });

  it('pipelines 100 writes then 100 reads on one connection, replies matched by id', async () => {
    const blocks = Array.from({ length: 100 }, (_, i) => ({ offset: 1 * MiB + i * 4000 + (i % 7) * 13, data: randomBytes(1000 + (i % 5) * 700) }));
    // Many of these first-write into the same fresh region concurrently.
    const writes = await Promise.all(blocks.map((b) => write(1, 1, b.offset, b.data)));
    for (const w of writes) expectStatus(w, Status.OK);
    const reads = await Promise.all(blocks.map((b) => read(1, 1, b.offset, b.data.length)));
    reads.forEach((r, i) => expect(r.payload.equals(blocks[i]!.data), `block ${i}`).toBe(true));
    // Gaps between blocks (inside written regions) read as zeros.
    const last = blocks[blocks.length - 1]!;
    const whole = (await read(1, 1, 1 * MiB, last.offset + last.data.length - 1 * MiB)).payload;
    const expected = Buffer.alloc(whole.length);
    for (const b of blocks) b.data.copy(expected, b.offset - 1 * MiB);
    expect(whole.equals(expected)).toBe(true);
  });

  it('keeps serving a client that stops reading for a while (back-pressure), then catches up', async () => {
    const data = randomBytes(64 * 1024);
    expectStatus(await write(1, 0, 2 * MiB, data), Status.OK);
    const slow = await RawDataClient.connect(node.dataAddress);
    slow.socket.pause();
    const replies = Array.from({ length: 400 }, () => slow.send({ opcode: Opcode.READ, volumeId: 1, segment: 0, offset: 2 * MiB, length: data.length }));
    await new Promise((r) => setTimeout(r, 300));
    // Meanwhile other connections are served.
    expect((await read(1, 0, 2 * MiB, 16)).payload.equals(data.subarray(0, 16))).toBe(true);
    slow.socket.resume();
    for (const r of await Promise.all(replies)) expect(r.payload.equals(data)).toBe(true);
    slow.close();
  });

  it('reads unwritten regions as zeros, and a read spanning written and unwritten ones correctly', async () => {
    const r = await read(1, 0, 5 * MiB, 64 * 1024);
    expect(r.payload.equals(Buffer.alloc(64 * 1024))).toBe(true);
    const data = randomBytes(REGION);
    expectStatus(await write(1, 0, 5 * MiB + 2 * REGION, data), Status.OK);
    const mixed = (await read(1, 0, 5 * MiB, 5 * REGION)).payload;
    const expected = Buffer.alloc(5 * REGION);
    data.copy(expected, 2 * REGION);
    expect(mixed.equals(expected)).toBe(true);
  });

  it('a partial first write into a region leaves the rest of the region zero, on disk too', async () => {
    const [a] = await diskIds();
    // Put old bytes on the disk where chunk 2 lives, as a former owner would have.
    await rpc.allocate(a, 2, identity(3, 0));
    const old = Buffer.alloc(4 * REGION, 0xee);
    expectStatus(await write(3, 0, 0, old), Status.OK);
    await rpc.free(a, 2, 3);
    expectStatus(await read(3, 0, 0, 16), Status.NO_CHUNK);
    // The next owner (another volume) must never see them (docs/design.md rule 7).
    await rpc.allocate(a, 2, identity(4, 0));
    expect((await read(4, 0, 0, 4 * REGION)).payload.equals(Buffer.alloc(4 * REGION))).toBe(true);
    const small = Buffer.from('fresh bytes');
    expectStatus(await write(4, 0, REGION + 500, small), Status.OK);
    const expected = Buffer.alloc(4 * REGION);
    small.copy(expected, REGION + 500);
    expect((await read(4, 0, 0, 4 * REGION)).payload.equals(expected)).toBe(true);
    // On disk: the written region holds zeros around the data, and the free
    // scrubbed the old owner's bytes, so even the untouched regions are zeros.
    const raw = await rawChunkBytes(diskA, 2, 0, 4 * REGION);
    expect(raw.equals(expected)).toBe(true);
    const listed = (await rpc.list(a)).chunks.find((c) => c.chunkIndex === 2)!;
    expect(listed.identity!.volumeId).toBe(4);
    expect(listed.writtenRegions).toBe(1);
  });

  it('freeing a chunk while writes are in flight never leaks them to the next owner', async () => {
    const [, b] = await diskIds();
    await rpc.allocate(b, 4, identity(5, 0));
    const writes = Array.from({ length: 60 }, (_, i) => write(5, 0, i * 5 * REGION + 100, Buffer.alloc(3000, 0xab)));
    const freed = rpc.free(b, 4, 5);
    const statuses = (await Promise.all(writes)).map((r) => r.status);
    await freed;
    expect(statuses.every((st) => st === Status.OK || st === Status.NO_CHUNK)).toBe(true);
    await rpc.allocate(b, 4, identity(6, 0));
    const all = (await read(6, 0, 0, 60 * 5 * REGION)).payload;
    expect(all.equals(Buffer.alloc(all.length))).toBe(true);
    await rpc.free(b, 4, 6);
  });

  it('WRITE_ZEROES and DISCARD zero whole and partial regions without touching the neighbours', async () => {
    const data = randomBytes(8 * REGION);
    const base = 6 * MiB;
    expectStatus(await write(1, 0, base, data), Status.OK);
    // Zero from the middle of region 1 to the middle of region 4 (regions 2 and 3 whole).
    const from = REGION + 100;
    const to = 4 * REGION + 100;
    expectStatus(await conn.send({ opcode: Opcode.WRITE_ZEROES, volumeId: 1, segment: 0, epoch: 1, offset: base + from, length: to - from }), Status.OK);
    const expected = Buffer.from(data);
    expected.fill(0, from, to);
    expect((await read(1, 0, base, data.length)).payload.equals(expected)).toBe(true);
    expectStatus(await conn.send({ opcode: Opcode.DISCARD, volumeId: 1, segment: 0, epoch: 1, offset: base + 6 * REGION, length: 2 * REGION, flags: Flag.FUA }), Status.OK);
    expected.fill(0, 6 * REGION, 8 * REGION);
    expect((await read(1, 0, base, data.length)).payload.equals(expected)).toBe(true);
    // A later small write into a discarded region must not resurrect its old bytes.
    expectStatus(await write(1, 0, base + 2 * REGION + 10, Buffer.from('x')), Status.OK);
    expected[2 * REGION + 10] = 'x'.charCodeAt(0);
    expect((await read(1, 0, base, data.length)).payload.equals(expected)).toBe(true);
  });

  it('FUA writes and FLUSH succeed; FLUSH of an unknown volume is NO_CHUNK', async () => {
    const data = randomBytes(8192);
    expectStatus(await write(1, 0, 7 * MiB, data, 1, Flag.FUA), Status.OK);
    expect((await read(1, 0, 7 * MiB, 8192)).payload.equals(data)).toBe(true);
    expectStatus(await conn.send({ opcode: Opcode.FLUSH, volumeId: 1 }), Status.OK);
    expectStatus(await conn.send({ opcode: Opcode.FLUSH, volumeId: 999 }), Status.NO_CHUNK);
  });

  it('zero-length requests are no-ops', async () => {
    expectStatus(await read(1, 0, CHUNK, 0), Status.OK);
    expectStatus(await write(1, 0, 100, Buffer.alloc(0)), Status.OK);
  });

  it('refuses out-of-range, unknown chunks, bad opcodes and oversized reads, changing nothing', async () => {
    const before = (await read(1, 0, CHUNK - 4096, 4096)).payload;
    expectStatus(await read(1, 0, CHUNK - 10, 20), Status.OUT_OF_RANGE);
    const w = await write(1, 0, CHUNK - 10, Buffer.alloc(20, 0x77));
    expectStatus(w, Status.OUT_OF_RANGE);
    expect(w.payload.toString()).toMatch(/outside the chunk/);
    expectStatus(await read(1, 0, 2 ** 40, 1), Status.OUT_OF_RANGE);
    expect((await read(1, 0, CHUNK - 4096, 4096)).payload.equals(before)).toBe(true);
    expectStatus(await read(77, 0, 0, 10), Status.NO_CHUNK);
    expectStatus(await read(1, 0, 0, 10, 2), Status.NO_CHUNK); // wrong slot
    expectStatus(await write(1, 3, 0, Buffer.alloc(10)), Status.NO_CHUNK);
    expectStatus(await conn.send({ opcode: 99 }), Status.BAD_REQUEST);
    expectStatus(await conn.send({ opcode: Opcode.PING, flags: 0x80 }), Status.BAD_REQUEST);
    expectStatus(await read(1, 0, 0, 64 * MiB), Status.TOO_LARGE);
    expectStatus(await conn.send({ opcode: Opcode.PING }), Status.OK);
  });

  it('closes only the connection that sends garbage', async () => {
    const bad = await RawDataClient.connect(node.dataAddress);
    const other = await RawDataClient.connect(node.dataAddress);
    bad.socket.write(Buffer.alloc(100, 0x42));
    await bad.closed;
    expectStatus(await other.send({ opcode: Opcode.PING }), Status.OK);
    expect((await other.send({ opcode: Opcode.READ, volumeId: 1, segment: 0, offset: 4096, length: 16 })).status).toBe(Status.OK);
    other.close();
    expectStatus(await conn.send({ opcode: Opcode.PING }), Status.OK);
  });

  it('fences: lower epochs are refused and change nothing; higher ones raise the epoch durably', async () => {
    const original = (await read(1, 0, 4096, 4096)).payload;
    expectStatus(await conn.send({ opcode: Opcode.FENCE, volumeId: 1, epoch: 5, generation: 3 }), Status.OK);
    const stale = await write(1, 0, 4096, Buffer.alloc(4096, 0x11), 4);
    expectStatus(stale, Status.STALE_EPOCH);
    expectStatus(await conn.send({ opcode: Opcode.WRITE_ZEROES, volumeId: 1, segment: 0, epoch: 4, offset: 4096, length: 4096 }), Status.STALE_EPOCH);
    expect((await read(1, 0, 4096, 4096)).payload.equals(original)).toBe(true);
    expectStatus(await conn.send({ opcode: Opcode.FENCE, volumeId: 1, epoch: 3 }), Status.STALE_EPOCH);
    expectStatus(await conn.send({ opcode: Opcode.FENCE, volumeId: 555, epoch: 3 }), Status.NO_CHUNK);
    // A write at a higher epoch (no FENCE) is accepted and raises it on every chunk of the volume.
    const fresh = randomBytes(4096);
    expectStatus(await write(1, 1, 0, fresh, 7), Status.OK);
    expectStatus(await write(1, 0, 4096, Buffer.alloc(4096, 0x22), 6), Status.STALE_EPOCH);
    expect((await read(1, 0, 4096, 4096)).payload.equals(original)).toBe(true);
    const chunks = (await rpc.list()).chunks.filter((c) => c.identity!.volumeId === 1);
    expect(chunks).toHaveLength(2);
    for (const c of chunks) expect([c.identity!.epoch, c.identity!.generation]).toEqual([7, 3]);
    // Other volumes are not affected.
    expectStatus(await write(2, 0, 0, Buffer.from('v2'), 1, 0, 1), Status.OK);
  });

  it('epochs and generations are 64-bit: above 2^32 never taken for a small one, above 2^53-1 a bad request', async () => {
    const [a] = await diskIds();
    const E = 2 ** 32;
    await rpc.allocate(a, 6, identity(8, 0, 0, 2));
    const before = randomBytes(4096);
    expectStatus(await write(8, 0, 0, before, 2), Status.OK);
    // Fenced at 2^32+1, whose low 32 bits are 1: epochs 1, 2 and 2^32 are all below it.
    expectStatus(await conn.send({ opcode: Opcode.FENCE, volumeId: 8, epoch: E + 1, generation: E + 7 }), Status.OK);
    for (const stale of [1, 2, E - 1, E]) {
      expectStatus(await write(8, 0, 0, Buffer.alloc(4096, 0x33), stale), Status.STALE_EPOCH);
      expectStatus(await conn.send({ opcode: Opcode.WRITE_ZEROES, volumeId: 8, epoch: stale, offset: 0, length: 4096 }), Status.STALE_EPOCH);
      expectStatus(await conn.send({ opcode: Opcode.MARK_DIRTY, volumeId: 8, epoch: stale, offset: 0, length: 4096 }), Status.STALE_EPOCH);
      expectStatus(await conn.send({ opcode: Opcode.FENCE, volumeId: 8, epoch: stale }), Status.STALE_EPOCH);
    }
    expect((await read(8, 0, 0, 4096)).payload.equals(before)).toBe(true);
    // The holder's epoch is accepted, a higher one raises it (fenced at 2^32+5, 2^32+4 and 5 are stale).
    const after = randomBytes(4096);
    expectStatus(await write(8, 0, 0, after, E + 1), Status.OK);
    expectStatus(await write(8, 0, 4096, after, E + 5), Status.OK);
    expectStatus(await write(8, 0, 0, before, E + 4), Status.STALE_EPOCH);
    expectStatus(await write(8, 0, 0, before, 5), Status.STALE_EPOCH);
    // gRPC (uint64) reports both exactly.
    const listed = async () => (await rpc.list()).chunks.filter((c) => c.identity!.volumeId === 8).map((c) => [c.identity!.epoch, c.identity!.generation]);
    expect(await listed()).toEqual([[E + 5, E + 7]]);

    // Above 2^53-1 on the wire: BAD_REQUEST for that request only; nothing changes and the connection goes on.
    const tooBig = await conn.sendPatched({ opcode: Opcode.WRITE, volumeId: 8, offset: 0 }, 32, 0x20_0000, 0, Buffer.alloc(4096, 0x44));
    expectStatus(tooBig, Status.BAD_REQUEST);
    expect(tooBig.payload.toString()).toMatch(/epoch beyond 2\^53-1/);
    expectStatus(await conn.sendPatched({ opcode: Opcode.FENCE, volumeId: 8 }, 32, 0xffff_ffff, 0xffff_ffff), Status.BAD_REQUEST);
    expectStatus(await conn.sendPatched({ opcode: Opcode.FENCE, volumeId: 8, epoch: E + 6 }, 40, 0x20_0000, 7), Status.BAD_REQUEST);
    expect((await read(8, 0, 0, 4096)).payload.equals(after)).toBe(true);
    expect(await listed()).toEqual([[E + 5, E + 7]]);

    // Up to 2^53-1 exactly.
    const MAX = Number.MAX_SAFE_INTEGER;
    expectStatus(await conn.send({ opcode: Opcode.FENCE, volumeId: 8, epoch: MAX, generation: MAX }), Status.OK);
    expectStatus(await write(8, 0, 0, before, MAX - 1), Status.STALE_EPOCH);
    expectStatus(await write(8, 0, 0, before, MAX), Status.OK);
    expect(await listed()).toEqual([[MAX, MAX]]);
    // A uint64 above 2^53-1 over gRPC arrives inexact: refused, not rounded.
    await expect(rpc.allocate(a, 5, { ...identity(9, 0), epoch: '18446744073709551615' })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(rpc.allocate(a, 5, { ...identity(9, 0), generation: String(2n ** 53n) })).rejects.toBeInstanceOf(InvalidArgumentError);
  });

  it('control plane refuses conflicting or invalid chunk operations', async () => {
    const [a, b] = await diskIds();
    await expect(rpc.allocate(a, 0, identity(9, 0))).rejects.toBeInstanceOf(ConflictError);
    await expect(rpc.allocate(b, 3, identity(1, 0))).rejects.toBeInstanceOf(ConflictError); // replica already here
    await expect(rpc.allocate(a, 7, identity(9, 0))).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(rpc.allocate('00000000-0000-0000-0000-000000000000', 0, identity(9, 0))).rejects.toBeInstanceOf(NotFoundError);
    await expect(rpc.allocate(a, 3, { ...identity(9, 0), volumeName: 'n'.repeat(65) })).rejects.toBeInstanceOf(InvalidArgumentError);
    await rpc.allocate(a, 1, identity(2, 0, 1)); // same identity again: idempotent
    await expect(rpc.free(a, 1, 3)).rejects.toBeInstanceOf(ConflictError);
    await rpc.free(a, 5, 3); // already free: OK
    await expect(rpc.removeDisk(b)).rejects.toBeInstanceOf(ConflictError);
  });

  it('a restarted node recovers data, epochs and ownership from its disks', async () => {
    const before = (await read(1, 1, 0, 4096)).payload;
    const listBefore = (await rpc.list()).chunks;
    const id = node.serverId;
    conn.close();
    await node.close();
    await connectNode(await startStorageNode(options(join(root, 'node1'), [])));
    expect(node.serverId).toBe(id);
    expect((await rpc.list()).chunks).toEqual(listBefore);
    expect((await read(1, 1, 0, 4096)).payload.equals(before)).toBe(true);
    expectStatus(await write(1, 1, 0, Buffer.alloc(16), 6), Status.STALE_EPOCH);
    expect((await read(1, 1, 0, 4096)).payload.equals(before)).toBe(true);
    expect((await read(4, 0, REGION + 500, 11)).payload.toString()).toBe('fresh bytes');
    // The u64 epoch came back exactly from the chunk record.
    expectStatus(await write(8, 0, 0, Buffer.alloc(16), Number.MAX_SAFE_INTEGER - 1), Status.STALE_EPOCH);
  });

  it('a disk moved to another node is recovered via AddDisk', async () => {
    const [, b] = await diskIds();
    const before = (await read(1, 1, 0, 4096)).payload;
    conn.close();
    await node.close();
    const moved = join(root, 'moved', 'b.img');
    await mkdir(join(root, 'moved'));
    await rename(diskB, moved);
    await connectNode(await startStorageNode(options(join(root, 'node2'), [])));
    expect((await rpc.info()).disks).toEqual([]);
    expectStatus(await read(1, 1, 0, 16), Status.NO_CHUNK);
    const info = await rpc.addDisk(moved);
    expect(info.diskId).toBe(b);
    expect(info.usedChunks).toBe(1);
    const chunks = (await rpc.list()).chunks;
    expect(chunks.map((c) => [c.diskId, c.chunkIndex, c.identity!.volumeId, c.identity!.segment, c.identity!.epoch])).toEqual([[b, 0, 1, 1, 7]]);
    expect((await read(1, 1, 0, 4096)).payload.equals(before)).toBe(true);
    expectStatus(await write(1, 1, 0, Buffer.alloc(16), 6), Status.STALE_EPOCH);
    // Remembered: it reopens on restart of this node.
    conn.close();
    await node.close();
    await connectNode(await startStorageNode(options(join(root, 'node2'), [])));
    expect((await rpc.info()).disks.map((d) => d.diskId)).toEqual([b]);
    expect((await read(1, 1, 0, 4096)).payload.equals(before)).toBe(true);
    // Removal is refused while it holds chunks, then forced.
    await expect(rpc.removeDisk(b)).rejects.toBeInstanceOf(ConflictError);
    await rpc.removeDisk(b, true);
    expect((await rpc.info()).disks).toEqual([]);
    expectStatus(await read(1, 1, 0, 16), Status.NO_CHUNK);
  });
});
