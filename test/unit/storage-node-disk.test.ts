import { randomBytes } from 'node:crypto';
import { mkdtemp, open, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Status } from '../../shared/data-protocol/frame.js';
import { CorruptMetadataError, IoError, StaleEpochError } from '../../shared/errors.js';
import { setRootLogger } from '../../shared/logger.js';
import type { Chunk } from '../../storage-node/chunk.js';
import { readChunk, writeChunk, zeroChunk } from '../../storage-node/chunk-io.js';
import { ChunkStore, type ChunkIdentity } from '../../storage-node/chunk-store.js';
import { DISK_FAIL_THRESHOLD, Disk } from '../../storage-node/disk.js';
import { computeLayout } from '../../storage-node/disk-format.js';
import { DiskFailedError, statusForError } from '../../storage-node/errors.js';
import { countSet, testBit } from '../../storage-node/region-map.js';
import { clearDirty, markDirty } from '../../storage-node/write-intent.js';

setRootLogger(pino({ level: process.env.VSKY_LOG_LEVEL ?? 'silent' }));

const MiB = 1024 * 1024;
const CHUNK = 4 * MiB;
const REGION = CHUNK / 4096; // 1 KiB
const SIZE = 32 * MiB;
const layout = computeLayout(SIZE, CHUNK, 4096);

let dir: string;
let n = 0;
const nextPath = () => join(dir, `d${n++}.img`);

function identity(volumeId: number, segment = 0, epoch = 1): ChunkIdentity {
  return { volumeId, volumeName: `v${volumeId}`, volumeSize: CHUNK, segment, slot: 0, segmentCount: 1, replicas: 1, generation: 1, epoch };
}

const write = (c: Chunk, off: number, data: Buffer, fua = false) =>
  new Promise<void>((res, rej) => writeChunk(c, off, data, fua, (e) => (e ? rej(e) : res())));
const read = (c: Chunk, off: number, len: number) =>
  new Promise<Buffer>((res, rej) => {
    const buf = Buffer.alloc(len, 0xcc);
    readChunk(c, off, len, buf, 0, (e) => (e ? rej(e) : res(buf)));
  });

async function patch(path: string, position: number, bytes: Buffer): Promise<void> {
  const fh = await open(path, 'r+');
  await fh.write(bytes, 0, bytes.length, position);
  await fh.close();
}

/** File position of a chunk's record slot (0 = A, 1 = B). */
const slotAt = (chunk: number, slot: number) => layout.tableOffset + (chunk * 2 + slot) * layout.recordSize;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vsky-disk-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('disk open and format', () => {
  it('creates a sparse file, formats it once and reopens the same disk', async () => {
    const path = nextPath();
    const d1 = await Disk.open(path, { size: SIZE, chunkSize: CHUNK });
    expect(d1.sb).toMatchObject({ chunkSize: CHUNK, chunkCount: layout.chunkCount, dataOffset: layout.dataOffset });
    await d1.close();
    const d2 = await Disk.open(path, { chunkSize: 8 * MiB }); // chunk size only applies to new disks
    expect(d2.id).toBe(d1.id);
    expect(d2.sb.chunkSize).toBe(CHUNK);
    await d2.close();
  });

  it('refuses foreign data, a damaged superblock and a truncated disk', async () => {
    const foreign = nextPath();
    await writeFile(foreign, Buffer.alloc(SIZE, 0x61));
    await expect(Disk.open(foreign, { chunkSize: CHUNK })).rejects.toThrow(/not a VastSky disk/);
    const damaged = nextPath();
    await (await Disk.open(damaged, { size: SIZE, chunkSize: CHUNK })).close();
    await patch(damaged, 40, Buffer.from([0x99]));
    await expect(Disk.open(damaged, { chunkSize: CHUNK })).rejects.toBeInstanceOf(CorruptMetadataError);
    const cut = nextPath();
    await (await Disk.open(cut, { size: SIZE, chunkSize: CHUNK })).close();
    await truncate(cut, SIZE / 2);
    await expect(Disk.open(cut, { chunkSize: CHUNK })).rejects.toBeInstanceOf(CorruptMetadataError);
    await expect(Disk.open(nextPath(), { chunkSize: CHUNK })).rejects.toThrow(/does not exist/);
    await expect(Disk.open(nextPath(), { size: MiB, chunkSize: CHUNK })).rejects.toThrow(/too small/);
  });
});

describe('crash safety of chunk records', () => {
  it('a torn newest record slot falls back to the previous state; two torn slots read as free', async () => {
    const path = nextPath();
    let store = new ChunkStore();
    const disk = await store.openDisk(path, { size: SIZE, chunkSize: CHUNK });
    await store.allocate(disk.id, 2, identity(10, 0, 1)); // seq 1 -> slot A
    await store.fence(10, 5, 0); // seq 2 -> slot B
    expect(disk.chunks[2]!.newestSlot).toBe(1);
    await store.close();

    // kill -9 mid-update: the newer slot (B) holds a half-written record.
    await patch(path, slotAt(2, 1) + 300, randomBytes(200));
    store = new ChunkStore();
    let reopened = await store.openDisk(path, { chunkSize: CHUNK });
    expect(reopened.chunks[2]!.rec).toMatchObject({ volumeId: 10, epoch: 1 });
    expect(store.lookup(10, 0, 0)).toBe(reopened.chunks[2]);
    // The next update rewrites the torn slot, not the good one.
    await store.fence(10, 6, 0);
    expect(reopened.chunks[2]!.newestSlot).toBe(1);
    await store.close();
    store = new ChunkStore();
    reopened = await store.openDisk(path, { chunkSize: CHUNK });
    expect(reopened.chunks[2]!.rec.epoch).toBe(6);
    await store.close();

    // Both slots destroyed (not a single crash's trace): the chunk is not served.
    await patch(path, slotAt(2, 0) + 8, randomBytes(16));
    await patch(path, slotAt(2, 1) + 8, randomBytes(16));
    store = new ChunkStore();
    reopened = await store.openDisk(path, { chunkSize: CHUNK });
    expect(reopened.chunks[2]!.owned).toBe(false);
    expect(store.lookup(10, 0, 0)).toBeUndefined();
    await store.close();
  });

  it('coalesces the record writes of many concurrent first writes, and keeps every bit', async () => {
    const store = new ChunkStore();
    const disk = await store.openDisk(nextPath(), { size: SIZE, chunkSize: CHUNK });
    await store.allocate(disk.id, 0, identity(20));
    const chunk = store.lookup(20, 0, 0)!;
    const seqBefore = chunk.seq;
    const blocks = Array.from({ length: 200 }, (_, i) => ({ off: i * 3 * REGION + 7, data: randomBytes(100) }));
    await Promise.all(blocks.map((b) => write(chunk, b.off, b.data)));
    expect(chunk.seq - seqBefore).toBeLessThan(20);
    for (const b of blocks) expect((await read(chunk, b.off, 100)).equals(b.data)).toBe(true);
    await store.close();
    const again = new ChunkStore();
    await again.openDisk(disk.path, { chunkSize: CHUNK });
    const c2 = again.lookup(20, 0, 0)!;
    for (const b of blocks) expect((await read(c2, b.off, 100)).equals(b.data)).toBe(true);
    expect((await read(c2, REGION, REGION)).equals(Buffer.alloc(REGION))).toBe(true);
    await again.close();
  });

  it('epochs raised by writes and FENCE survive a reopen; lower fences are refused', async () => {
    const store = new ChunkStore();
    const disk = await store.openDisk(nextPath(), { size: SIZE, chunkSize: CHUNK });
    await store.allocate(disk.id, 0, identity(30, 0, 2));
    await store.allocate(disk.id, 1, identity(30, 1, 2));
    const vol = store.volumes.get(30)!;
    await store.ensureEpoch(vol, 9);
    await expect(store.fence(30, 8, 0)).rejects.toBeInstanceOf(StaleEpochError);
    await store.close();
    const again = new ChunkStore();
    await again.openDisk(disk.path, { chunkSize: CHUNK });
    expect(again.volumes.get(30)!.epoch).toBe(9);
    expect(again.listChunks().map((c) => c.rec.epoch)).toEqual([9, 9]);
    await again.close();
  });
});

describe('thin chunks and faults', () => {
  it('zeroing whole regions clears them durably and partial ones get zeros written', async () => {
    const store = new ChunkStore();
    const disk = await store.openDisk(nextPath(), { size: SIZE, chunkSize: CHUNK });
    await store.allocate(disk.id, 0, identity(40));
    const chunk = store.lookup(40, 0, 0)!;
    const data = randomBytes(6 * REGION);
    await write(chunk, 0, data);
    await zeroChunk(chunk, REGION / 2, 4 * REGION, false);
    const expected = Buffer.from(data);
    expected.fill(0, REGION / 2, REGION / 2 + 4 * REGION);
    expect((await read(chunk, 0, data.length)).equals(expected)).toBe(true);
    await store.close();
    const again = new ChunkStore();
    await again.openDisk(disk.path, { chunkSize: CHUNK });
    const c2 = again.lookup(40, 0, 0)!;
    expect((await read(c2, 0, data.length)).equals(expected)).toBe(true);
    // Regions 1..3 were cleared (bits), regions 0 and 4 zero-filled in part.
    expect([0, 1, 2, 3, 4, 5].map((r) => (c2.rec.bitmap[0]! >> r) & 1)).toEqual([1, 0, 0, 0, 1, 1]);
    await again.close();
  });

  it('a faulty disk fails I/O with IO_ERROR and is reported failed', async () => {
    const store = new ChunkStore();
    const disk = await store.openDisk(nextPath(), { size: SIZE, chunkSize: CHUNK });
    await store.allocate(disk.id, 0, identity(50));
    const chunk = store.lookup(50, 0, 0)!;
    await write(chunk, 0, Buffer.from('before'));
    disk.setFaulty(true);
    const err = await read(chunk, 0, 6).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(IoError);
    expect(statusForError(err)).toBe(Status.IO_ERROR);
    await expect(write(chunk, 0, Buffer.from('after!'))).rejects.toBeInstanceOf(IoError);
    await expect(store.flush(50)).rejects.toBeInstanceOf(IoError);
    disk.setFaulty(false);
    expect((await read(chunk, 0, 6)).toString()).toBe('before');
    await store.close();
  });
});

describe('write-intent (dirty) bitmap', () => {
  it('coalesces the record writes of concurrent marks; every mark is durable once acknowledged', async () => {
    const store = new ChunkStore();
    const disk = await store.openDisk(nextPath(), { size: SIZE, chunkSize: CHUNK });
    await store.allocate(disk.id, 1, identity(60));
    const chunk = store.lookup(60, 0, 0)!;
    const seqBefore = chunk.seq;
    const marks = Array.from({ length: 200 }, (_, i) => ({ off: i * 11 * REGION + 3, len: 1 + (i % 3) * REGION }));
    await Promise.all(marks.map((m) => markDirty(chunk, m.off, m.len)));
    expect(chunk.seq - seqBefore).toBeLessThan(20);
    // Marking an already durable region again writes nothing.
    const seqAfter = chunk.seq;
    await markDirty(chunk, 3, 1);
    expect(chunk.seq).toBe(seqAfter);
    await store.close();
    const again = new ChunkStore();
    await again.openDisk(disk.path, { chunkSize: CHUNK });
    const c2 = again.lookup(60, 0, 0)!;
    for (const m of marks) {
      for (let r = Math.floor(m.off / REGION); r * REGION < m.off + m.len; r++) expect(testBit(c2.rec.dirty, r), `region ${r}`).toBe(true);
    }
    expect(testBit(c2.rec.dirty, 1)).toBe(false);
    expect(countSet(c2.rec.bitmap)).toBe(0);
    // Clearing: memory at once, the record follows.
    await clearDirty(c2, 0, CHUNK);
    expect(countSet(c2.rec.dirty)).toBe(0);
    await again.close();
  });

  it('a mark whose record write failed is not acknowledged by a later mark of the same region without a record write', async () => {
    const store = new ChunkStore();
    const disk = await store.openDisk(nextPath(), { size: SIZE, chunkSize: CHUNK });
    await store.allocate(disk.id, 0, identity(61));
    const chunk = store.lookup(61, 0, 0)!;
    disk.setFaulty(true);
    await expect(markDirty(chunk, 5 * REGION, 1)).rejects.toBeInstanceOf(IoError);
    disk.setFaulty(false);
    // The bit is set in memory already; this mark must still put it on disk.
    const seq = chunk.seq;
    await markDirty(chunk, 5 * REGION, 1);
    expect(chunk.seq).toBeGreaterThan(seq);
    await store.close();
    const again = new ChunkStore();
    await again.openDisk(disk.path, { chunkSize: CHUNK });
    expect(testBit(again.lookup(61, 0, 0)!.rec.dirty, 5)).toBe(true);
    await again.close();
  });
});

describe('real disk errors', () => {
  it(`marks a disk failed after ${DISK_FAIL_THRESHOLD} OS errors, refuses its I/O, and other disks keep serving`, async () => {
    const store = new ChunkStore();
    const bad = await store.openDisk(nextPath(), { size: SIZE, chunkSize: CHUNK });
    const good = await store.openDisk(nextPath(), { size: SIZE, chunkSize: CHUNK });
    const changes: string[] = [];
    store.onDiskStateChange((d) => changes.push(`${d.id}:${d.reportedState}`));
    await store.allocate(bad.id, 3, identity(70));
    await store.allocate(good.id, 3, identity(71));
    const chunk = store.lookup(70, 0, 0)!;
    const other = store.lookup(71, 0, 0)!;
    await write(chunk, 0, Buffer.from('head'), true);
    await write(chunk, 2 * MiB, Buffer.from('tail'), true);
    await write(other, 2 * MiB, Buffer.from('fine'), true);
    // The device loses its end (a real short read from the OS, not the fault switch).
    await truncate(bad.path, chunk.dataOffset + MiB);
    for (let i = 1; i < DISK_FAIL_THRESHOLD; i++) {
      const err = await read(chunk, 2 * MiB, 4).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(IoError);
      expect(statusForError(err)).toBe(Status.IO_ERROR);
      expect(bad.reportedState).toBe('active'); // one bad sector is not a dead disk
    }
    expect((await read(chunk, 0, 4)).toString()).toBe('head');
    await expect(read(chunk, 2 * MiB, 4)).rejects.toBeInstanceOf(IoError);
    expect(bad.reportedState).toBe('failed');
    expect(bad.failure).toMatch(/unexpected end of disk/);
    expect(changes).toEqual([`${bad.id}:failed`]);
    // From now on every I/O on it is refused, even where the device still answers.
    const refused = await read(chunk, 0, 4).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(DiskFailedError);
    expect(statusForError(refused)).toBe(Status.DISK_FAILED);
    await expect(write(chunk, 0, Buffer.from('x'))).rejects.toBeInstanceOf(DiskFailedError);
    expect(good.reportedState).toBe('active');
    expect((await read(other, 2 * MiB, 4)).toString()).toBe('fine');
    await write(other, 0, Buffer.from('still'));
    await store.close();
  });
});

describe('freeing a chunk scrubs it on disk (rule 7, power loss)', () => {
  it('leaves zeros in the file where the previous owner wrote, before the chunk is free', async () => {
    const path = nextPath();
    const store = new ChunkStore();
    const disk = await store.openDisk(path, { size: SIZE, chunkSize: CHUNK });
    await store.allocate(disk.id, 2, identity(7));
    const chunk = store.lookup(7, 0, 0)!;
    const secret = randomBytes(3 * MiB + 123);
    await write(chunk, 5000, secret, true);
    const fh = await open(path, 'r');
    const raw = Buffer.alloc(CHUNK);
    await fh.read(raw, 0, CHUNK, chunk.dataOffset);
    expect(raw.subarray(5000, 5000 + secret.length).equals(secret)).toBe(true); // really on disk
    await store.free(disk.id, 2, 7);
    await fh.read(raw, 0, CHUNK, chunk.dataOffset);
    await fh.close();
    // Whatever a next owner's record claims after a crash, only zeros can show through.
    expect(raw.equals(Buffer.alloc(CHUNK))).toBe(true);
    await store.allocate(disk.id, 2, identity(8));
    expect((await read(store.lookup(8, 0, 0)!, 0, CHUNK)).equals(Buffer.alloc(CHUNK))).toBe(true);
    await store.close();
  });
});
