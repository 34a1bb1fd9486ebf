import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../shared/errors.js';
import { defaultRegionSize, fineRegionSize, mapRegionSize, regionSizeProblem, testBit } from '../../shared/region-bitmap.js';
import type { Chunk } from '../../storage-node/chunk.js';
import { readChunk, writeChunk } from '../../storage-node/chunk-io.js';
import { ChunkState, decodeRecord, emptyRecord, encodeRecord } from '../../storage-node/disk-format/chunk-record.js';
import { recordSizeFor } from '../../storage-node/disk-format/layout.js';
import { Disk } from '../../storage-node/disk.js';

// Written regions of 4 KiB (docs/snapshots.md, issue 13): what a new disk is
// formatted with, the legacy size kept for older disks, and the codec at the
// larger bitmap.

const MiB = 1024 * 1024;

describe('region sizes', () => {
  it('new disks get 4 KiB regions; the legacy size is chunk size / 4096', () => {
    expect(defaultRegionSize(256 * MiB)).toBe(64 * 1024);
    expect(fineRegionSize(256 * MiB)).toBe(4096);
    expect(fineRegionSize(64 * MiB)).toBe(4096);
    expect(fineRegionSize(4 * MiB)).toBe(1024); // small chunks keep at least 4096 regions
    expect(mapRegionSize({ chunkSize: 256 * MiB, regionSize: 4096 })).toBe(4096);
    expect(mapRegionSize({ chunkSize: 256 * MiB, regionSize: 0 })).toBe(64 * 1024); // an older manager
  });

  it('rejects sizes that do not divide a chunk into a multiple of 8 regions, or are above the legacy size', () => {
    expect(regionSizeProblem(256 * MiB, 4096)).toBe('');
    expect(regionSizeProblem(256 * MiB, 65536)).toBe('');
    expect(regionSizeProblem(256 * MiB, 3000)).toMatch(/power of two/);
    expect(regionSizeProblem(256 * MiB, 128 * 1024)).toMatch(/above/);
    expect(regionSizeProblem(16 * 1024, 4096)).toMatch(/multiple of 8/);
  });

  it('a record with 65536 region bits round-trips, bits and dirty bits at the far end included', () => {
    const bits = 65536;
    const diskId = Buffer.from(randomUUID().replace(/-/g, ''), 'hex');
    const rec = emptyRecord(bits);
    Object.assign(rec, { state: ChunkState.OWNED, volumeId: 7, volumeName: 'clone', segmentCount: 2, replicas: 2, volumeSize: 512 * MiB, generation: 3, epoch: 9 });
    rec.bitmap[0] = 0b101;
    rec.bitmap[bits / 8 - 1] = 0x80;
    rec.dirty[100] = 0xff;
    const size = recordSizeFor(bits);
    expect(size).toBeGreaterThanOrEqual(224 + 2 * 8192);
    const decoded = decodeRecord(encodeRecord(rec, 5, 3, diskId, size), 3, diskId, bits)!;
    expect(decoded.seq).toBe(5);
    expect(decoded.record).toEqual(rec);
    // Read with the legacy geometry, the slot is refused (not misread).
    expect(() => decodeRecord(encodeRecord(rec, 5, 3, diskId, size), 3, diskId, 4096)).toThrow(/region bitmap size/);
  });
});

describe('a disk with 4 KiB regions', () => {
  let dir: string;
  beforeAll(async () => { dir = await mkdtemp(join(tmpdir(), 'vsky-region-')); });
  afterAll(async () => { await rm(dir, { recursive: true, force: true }); });

  const write = (c: Chunk, off: number, data: Buffer) =>
    new Promise<void>((res, rej) => writeChunk(c, off, data, false, (e) => (e ? rej(e) : res())));
  const read = (c: Chunk, off: number, len: number) => new Promise<Buffer>((res, rej) => {
    const buf = Buffer.alloc(len, 0xcc);
    readChunk(c, off, len, buf, 0, (e) => (e ? rej(e) : res(buf)));
  });

  it('with 4 KiB regions (--region-size 4K): chunkSize / 4096 bits; a 4 KiB first write sets one bit, durably, and zero-fills nothing around it', async () => {
    const path = join(dir, 'fine.img');
    const d = await Disk.open(path, { size: 600 * MiB, chunkSize: 256 * MiB, regionSize: 4096 });
    expect(d.sb.regionBits).toBe(65536);
    const c = d.chunks[0]!;
    expect(c.regionSize).toBe(4096);
    c.rec.state = ChunkState.OWNED;
    await write(c, 8192, Buffer.alloc(4096, 0x5a));
    expect([testBit(c.rec.bitmap, 1), testBit(c.rec.bitmap, 2), testBit(c.rec.bitmap, 3)]).toEqual([false, true, false]);
    await d.close();
    const again = await Disk.open(path, { chunkSize: 256 * MiB });
    const c2 = again.chunks[0]!;
    expect(again.sb.regionBits).toBe(65536);
    expect([testBit(c2.rec.bitmap, 1), testBit(c2.rec.bitmap, 2), testBit(c2.rec.bitmap, 3)]).toEqual([false, true, false]);
    const back = await read(c2, 4096, 3 * 4096);
    expect(back.subarray(0, 4096).every((b) => b === 0)).toBe(true);
    expect(back.subarray(4096, 8192).every((b) => b === 0x5a)).toBe(true);
    expect(back.subarray(8192).every((b) => b === 0)).toBe(true);
    await again.close();
  });

  it('is formatted with chunk size / 4096 regions by default (64 KiB with 256 MiB chunks), which it keeps', async () => {
    const path = join(dir, 'legacy.img');
    const d = await Disk.open(path, { size: 600 * MiB, chunkSize: 256 * MiB });
    expect(d.sb.regionBits).toBe(4096);
    await d.close();
    const again = await Disk.open(path, { chunkSize: 256 * MiB, regionSize: 4096 }); // a region size applies to new disks only
    expect(again.chunks[0]!.regionSize).toBe(64 * 1024);
    await again.close();
    await expect(Disk.open(join(dir, 'bad.img'), { size: 600 * MiB, chunkSize: 256 * MiB, regionSize: 3000 })).rejects.toBeInstanceOf(InvalidArgumentError);
  });
});
