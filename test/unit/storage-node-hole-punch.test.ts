import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setRootLogger } from '../../shared/logger.js';
import type { Chunk } from '../../storage-node/chunk.js';
import { readChunk, writeChunk, zeroChunk } from '../../storage-node/chunk-io.js';
import { ChunkStore, type ChunkIdentity } from '../../storage-node/chunk-store.js';
import type { Disk } from '../../storage-node/disk.js';
import { testBit } from '../../shared/region-bitmap.js';

// Discards give space back: real disk files on this machine's file system,
// real fallocate(1). A sparse disk file's allocated blocks (st_blocks) are the
// premise and the measure.

setRootLogger(pino({ level: process.env.VSKY_LOG_LEVEL ?? 'silent' }));

const MiB = 1024 * 1024;
const CHUNK = 16 * MiB; // 4096 regions of 4 KiB
const REGION = CHUNK / 4096;
const SIZE = 64 * MiB;

let dir: string;
let n = 0;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vsky-punch-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const identity = (volumeId: number): ChunkIdentity =>
  ({ volumeId, volumeName: `v${volumeId}`, volumeSize: CHUNK, segment: 0, slot: 0, segmentCount: 1, replicas: 1, generation: 1, epoch: 1 });
const write = (c: Chunk, off: number, data: Buffer) =>
  new Promise<void>((res, rej) => writeChunk(c, off, data, false, (e) => (e ? rej(e) : res())));
const read = (c: Chunk, off: number, len: number) =>
  new Promise<Buffer>((res, rej) => {
    const buf = Buffer.alloc(len, 0xcc);
    readChunk(c, off, len, buf, 0, (e) => (e ? rej(e) : res(buf)));
  });
const allocated = async (path: string) => (await stat(path)).blocks * 512;

async function freshChunk(volumeId: number): Promise<{ store: ChunkStore; chunk: Chunk; path: string; disk: Disk }> {
  const store = new ChunkStore();
  const path = join(dir, `d${n++}.img`);
  const disk = await store.openDisk(path, { size: SIZE, chunkSize: CHUNK });
  await store.allocate(disk.id, 0, identity(volumeId));
  return { store, chunk: store.lookup(volumeId, 0, 0)!, path, disk };
}

describe('hole punching of discarded regions', () => {
  it('a discard of whole regions frees their blocks; partial edges are zeroed in place', async () => {
    const { store, chunk, path, disk } = await freshChunk(1);
    const data = randomBytes(8 * MiB);
    await write(chunk, 0, data);
    await chunk.sync();
    const before = await allocated(path);
    expect(before).toBeGreaterThanOrEqual(8 * MiB); // premise: the data really took space

    await zeroChunk(chunk, MiB + REGION / 2, 6 * MiB, false);
    const after = await allocated(path);
    expect(before - after).toBeGreaterThanOrEqual(6 * MiB - 2 * REGION);
    expect(disk.holes.punched).toBe(1); // one merged range: the whole regions in the middle
    const expected = Buffer.from(data);
    expected.fill(0, MiB + REGION / 2, 7 * MiB + REGION / 2);
    expect((await read(chunk, 0, data.length)).equals(expected)).toBe(true);
    await store.close();
  });

  it('a write racing the punch is never punched out', async () => {
    const { store, chunk, disk } = await freshChunk(2);
    await write(chunk, 0, randomBytes(4 * MiB));
    const fresh = randomBytes(REGION);
    for (const at of [0, MiB, 2 * MiB, 3 * MiB - REGION]) {
      const discard = zeroChunk(chunk, 0, 4 * MiB, false);
      const rewrite = write(chunk, at, fresh); // issued after the discard: must survive it
      const punched = disk.holes.punched;
      await Promise.all([discard, rewrite]);
      expect(disk.holes.punched).toBeGreaterThan(punched); // premise: a punch really ran around the write
      expect((await read(chunk, at, REGION)).equals(fresh)).toBe(true);
      expect(testBit(chunk.rec.bitmap, at / REGION)).toBe(true);
    }
    await store.close();
  });

  it('freeing a chunk punches its written span (rule 7: the next owner reads zeros)', async () => {
    const { store, chunk, path } = await freshChunk(3);
    await write(chunk, 0, randomBytes(8 * MiB));
    await chunk.sync();
    const before = await allocated(path);
    await store.free(chunk.disk.id, 0, 3);
    expect(before - (await allocated(path))).toBeGreaterThanOrEqual(8 * MiB);
    await store.allocate(chunk.disk.id, 0, identity(4));
    const next = store.lookup(4, 0, 0)!;
    // Raw bytes on disk, past the bitmap: a first write of one region must not expose anything either.
    await write(next, 0, Buffer.alloc(REGION, 7));
    const raw = Buffer.alloc(8 * MiB);
    await new Promise<void>((res, rej) => next.disk.read(raw, 0, raw.length, next.dataOffset, (e) => (e ? rej(e) : res())));
    expect(raw.subarray(REGION).equals(Buffer.alloc(8 * MiB - REGION))).toBe(true);
    await store.close();
  });
});
