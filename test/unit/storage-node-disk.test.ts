import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtemp, open, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Status } from '../../shared/data-protocol/frame.js';
import { CorruptMetadataError, InvalidArgumentError, IoError, StaleEpochError } from '../../shared/errors.js';
import { setRootLogger } from '../../shared/logger.js';
import type { Chunk } from '../../storage-node/chunk.js';
import { zeroChunk } from '../../storage-node/chunk-io.js';
import { ChunkStore, type ChunkIdentity } from '../../storage-node/chunk-store.js';
import { DISK_FAIL_THRESHOLD, Disk } from '../../storage-node/disk.js';
import {
  ChunkState, FORMAT_VERSION, RECORD_MAGIC, RECORD_MAGIC_V2, computeLayout, decodeSuperblock, emptyRecord, encodeRecord, encodeSuperblock,
  uuidToBytes, type ChunkRecordData, type Superblock,
} from '../../storage-node/disk-format.js';
import { DiskFailedError, statusForError } from '../../shared/data-protocol/status.js';
import { countSet, testBit } from '../../shared/region-bitmap.js';
import { clearDirty, markDirty } from '../../storage-node/write-intent.js';
import { encodeV2Record } from '../harness/disk-format-v2.js';
import { patch, read, write } from '../harness/chunk-file.js';

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


/** File position of a chunk's record slot (0 = A, 1 = B). */
const slotAt = (chunk: number, slot: number) => layout.tableOffset + (chunk * 2 + slot) * layout.recordSize;

async function readAt(path: string, position: number, length: number): Promise<Buffer> {
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.alloc(length);
    await fh.read(buf, 0, length, position);
    return buf;
  } finally {
    await fh.close();
  }
}

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

describe('64-bit epochs and generations on disk', () => {
  const E = 2 ** 32;

  it('records them above 2^32 exactly: fenced at 2^32+5, epochs 2^32+4 and 5 are stale, also after a reopen', async () => {
    const store = new ChunkStore();
    const disk = await store.openDisk(nextPath(), { size: SIZE, chunkSize: CHUNK });
    await store.allocate(disk.id, 0, { ...identity(31, 0, E + 1), generation: E + 2 });
    await store.allocate(disk.id, 1, identity(31, 1, 3)); // takes the volume's epoch here, 2^32+1
    expect(store.lookup(31, 1, 0)!.rec.epoch).toBe(E + 1);
    expect(() => store.admit(31, 1)).toThrow(StaleEpochError); // 2^32+1 cut to 32 bits would be 1
    await store.fence(31, E + 5, E + 9);
    for (const stale of [E + 4, 5, 1]) expect(() => store.admit(31, stale), `epoch ${stale}`).toThrow(StaleEpochError);
    await expect(store.fence(31, 5, 0)).rejects.toBeInstanceOf(StaleEpochError);
    const newest = store.lookup(31, 0, 0)!.newestSlot;
    await store.close();

    // In the file: u64 generation at 64, u64 epoch at 72 of the newest record slot.
    const slot = await readAt(disk.path, slotAt(0, newest), layout.recordSize);
    expect(slot.readUInt32BE(0)).toBe(RECORD_MAGIC);
    expect([slot.readBigUInt64BE(64), slot.readBigUInt64BE(72)]).toEqual([BigInt(E + 9), BigInt(E + 5)]);

    const again = new ChunkStore();
    await again.openDisk(disk.path, { chunkSize: CHUNK });
    expect(again.volumes.get(31)!.epoch).toBe(E + 5);
    expect(again.listChunks().map((c) => [c.rec.epoch, c.rec.generation])).toEqual([[E + 5, E + 9], [E + 5, E + 9]]);
    for (const stale of [E + 4, 5]) expect(() => again.admit(31, stale)).toThrow(StaleEpochError);
    // Up to 2^53-1, durably.
    await again.ensureEpoch(again.admit(31, E + 5), Number.MAX_SAFE_INTEGER);
    await again.close();
    const third = new ChunkStore();
    await third.openDisk(disk.path, { chunkSize: CHUNK });
    expect(third.volumes.get(31)!.epoch).toBe(Number.MAX_SAFE_INTEGER);
    expect(() => third.admit(31, Number.MAX_SAFE_INTEGER - 1)).toThrow(StaleEpochError);
    // The manager's epochs at registration (uint64): one above 2^53-1 changes nothing and is refused.
    await expect(third.refreshEpochs([{ volumeId: 31, epoch: 2 ** 64 }])).rejects.toBeInstanceOf(InvalidArgumentError);
    expect(third.volumes.get(31)!.epoch).toBe(Number.MAX_SAFE_INTEGER);
    // Nothing above 2^53-1 is ever accepted for a record.
    await expect(third.allocate(disk.id, 2, identity(32, 0, 2 ** 53))).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(third.allocate(disk.id, 2, { ...identity(32, 0), generation: -1 })).rejects.toBeInstanceOf(InvalidArgumentError);
    await third.close();
  });
});

describe('format version 2 disks (u32 epochs) are upgraded in place on open', () => {
  const v2layout = computeLayout(SIZE, CHUNK, 4096, 2);

  function record(over: Partial<ChunkRecordData>): ChunkRecordData {
    return {
      ...emptyRecord(4096), state: ChunkState.OWNED, volumeName: 'old-vm', volumeSize: 2 * CHUNK, segmentCount: 2, replicas: 1, ...over,
    };
  }

  /** A disk file as the release before version 3 left it: v2 superblock, the given slots, data. */
  async function writeV2Disk(
    path: string, slots: { chunk: number; slot: number; seq: number; rec: ChunkRecordData; v3?: boolean; garbage?: boolean }[],
    data: { chunk: number; offset: number; bytes: Buffer }[] = [],
  ): Promise<void> {
    expect(v2layout).toEqual(layout); // same geometry in both versions (4096 regions)
    const sb: Superblock = {
      diskId: randomUUID(), formatVersion: 2, chunkSize: CHUNK, chunkCount: v2layout.chunkCount, regionBits: 4096,
      recordSize: v2layout.recordSize, tableOffset: v2layout.tableOffset, dataOffset: v2layout.dataOffset, diskSize: SIZE, createdMs: 1, clusterId: '',
    };
    await writeFile(path, Buffer.alloc(0));
    await truncate(path, SIZE);
    await patch(path, 0, encodeSuperblock(sb));
    const id = uuidToBytes(sb.diskId);
    for (const s of slots) {
      const bytes = s.garbage ? randomBytes(v2layout.recordSize)
        : (s.v3 ? encodeRecord : encodeV2Record)(s.rec, s.seq, s.chunk, id, v2layout.recordSize);
      await patch(path, slotAt(s.chunk, s.slot), bytes);
    }
    for (const d of data) await patch(path, v2layout.dataOffset + d.chunk * CHUNK + d.offset, d.bytes);
  }

  const magicAt = async (path: string, chunk: number, slot: number) => (await readAt(path, slotAt(chunk, slot), 4)).readUInt32BE(0);
  const versionOnDisk = async (path: string) => decodeSuperblock(await readAt(path, 0, 4096)).formatVersion;

  it('rewrites every record as version 3 by A/B updates, then the superblock; data, epochs, bitmaps kept', async () => {
    const path = nextPath();
    const written = new Uint8Array(512);
    written[0] = 0b1; // region 0 of chunk 0 holds data
    const dirty = new Uint8Array(512);
    dirty[0] = 0b1000; // region 3 of chunk 1 is dirty
    const chunk0 = record({ volumeId: 40, segment: 0, generation: 7, epoch: 0xffff_fff0, bitmap: written });
    const chunk1 = record({ volumeId: 40, segment: 1, generation: 7, epoch: 0xffff_fff0, dirty });
    const freed = { ...emptyRecord(4096) };
    const hello = Buffer.from('written by a version-2 node');
    await writeV2Disk(path, [
      { chunk: 0, slot: 0, seq: 5, rec: chunk0 },
      { chunk: 1, slot: 0, seq: 3, rec: chunk1 },
      { chunk: 1, slot: 1, seq: 2, rec: record({ volumeId: 40, segment: 1, generation: 6, epoch: 1 }) },
      { chunk: 2, slot: 1, seq: 4, rec: freed },
    ], [{ chunk: 0, offset: 0, bytes: hello }]);
    expect(await versionOnDisk(path)).toBe(2);

    const store = new ChunkStore();
    const disk = await store.openDisk(path, { chunkSize: CHUNK });
    expect(disk.sb.formatVersion).toBe(FORMAT_VERSION);
    expect(await versionOnDisk(path)).toBe(FORMAT_VERSION);
    // Each record went to the slot NOT holding the newest one (seq + 1); the previous record is still there.
    expect(disk.chunks.slice(0, 4).map((c) => [c.newestSlot, c.seq])).toEqual([[1, 6], [1, 4], [0, 5], [-1, 0]]);
    expect([await magicAt(path, 0, 1), await magicAt(path, 0, 0)]).toEqual([RECORD_MAGIC, RECORD_MAGIC_V2]);
    expect([await magicAt(path, 1, 1), await magicAt(path, 1, 0)]).toEqual([RECORD_MAGIC, RECORD_MAGIC_V2]);
    expect([await magicAt(path, 2, 0), await magicAt(path, 2, 1)]).toEqual([RECORD_MAGIC, RECORD_MAGIC_V2]);
    expect((await readAt(path, slotAt(3, 0), 2 * layout.recordSize)).every((b) => b === 0)).toBe(true); // never used: untouched
    expect(disk.chunks[0]!.rec).toEqual(chunk0);
    expect(disk.chunks[1]!.rec).toEqual(chunk1);
    expect(disk.chunks[2]!.owned).toBe(false);
    expect(store.volumes.get(40)!.epoch).toBe(0xffff_fff0);
    expect((await read(store.lookup(40, 0, 0)!, 0, hello.length)).equals(hello)).toBe(true);
    expect(testBit(store.lookup(40, 1, 0)!.rec.dirty, 3)).toBe(true);

    // From now on epochs pass 2^32.
    await store.fence(40, 2 ** 32 + 1, 2 ** 32);
    await store.close();
    const again = new ChunkStore();
    const reopened = await again.openDisk(path, { chunkSize: CHUNK });
    expect(reopened.chunks.slice(0, 2).map((c) => c.seq)).toEqual([7, 5]); // nothing rewritten on a version-3 open
    expect(again.listChunks().map((c) => [c.rec.epoch, c.rec.generation])).toEqual([[2 ** 32 + 1, 2 ** 32], [2 ** 32 + 1, 2 ** 32]]);
    expect(() => again.admit(40, 1)).toThrow(StaleEpochError);
    expect(() => again.admit(40, 0xffff_fff0)).toThrow(StaleEpochError);
    expect((await read(again.lookup(40, 0, 0)!, 0, hello.length)).equals(hello)).toBe(true);
    await again.close();
  });

  it('finishes an upgrade a crash interrupted (some records already version 3, one torn)', async () => {
    const path = nextPath();
    const rec0 = record({ volumeId: 41, segment: 0, generation: 2, epoch: 9 });
    const rec1 = record({ volumeId: 41, segment: 1, generation: 2, epoch: 9 });
    await writeV2Disk(path, [
      { chunk: 0, slot: 0, seq: 5, rec: rec0 },
      { chunk: 0, slot: 1, seq: 6, rec: rec0, v3: true }, // rewritten before the crash
      { chunk: 1, slot: 0, seq: 3, rec: rec1 },
      { chunk: 1, slot: 1, seq: 4, rec: rec1, garbage: true }, // torn by the crash
    ]);
    const store = new ChunkStore();
    const disk = await store.openDisk(path, { chunkSize: CHUNK });
    expect(await versionOnDisk(path)).toBe(FORMAT_VERSION);
    expect(disk.chunks.slice(0, 2).map((c) => [c.newestSlot, c.seq])).toEqual([[1, 6], [1, 4]]);
    expect([await magicAt(path, 0, 1), await magicAt(path, 1, 1)]).toEqual([RECORD_MAGIC, RECORD_MAGIC]);
    expect(store.listChunks().map((c) => c.rec)).toEqual([rec0, rec1]);
    await store.close();
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

describe('a restarted node refreshes its lease epochs before it takes writes', () => {
  it('takes no mutation until the manager\'s epochs are applied; then a missed fence is in force, durably', async () => {
    const path = nextPath();
    let store = new ChunkStore();
    const disk = await store.openDisk(path, { size: SIZE, chunkSize: CHUNK });
    await store.allocate(disk.id, 0, identity(31, 0, 4));
    await store.close();
    // Restart with a manager: the volume went to epoch 9 elsewhere while this node was down.
    store = new ChunkStore();
    await store.openDisk(path, { chunkSize: CHUNK });
    store.awaitEpochRefresh();
    expect(() => store.admit(31, 9)).toThrow(IoError);
    expect(() => store.admit(31, 9)).toThrow(/has not refreshed its volumes' lease epochs/);
    expect(store.volumes.get(31)!.epoch).toBe(4); // premise: the node still has the old epoch
    expect(await store.refreshEpochs([{ volumeId: 31, epoch: 9 }, { volumeId: 999, epoch: 3 }])).toBe(1);
    expect(() => store.admit(31, 8)).toThrow(StaleEpochError); // the holder of epoch 4..8 is fenced here too
    expect(store.admit(31, 9).epoch).toBe(9);
    await store.close();
    store = new ChunkStore();
    await store.openDisk(path, { chunkSize: CHUNK });
    expect(() => store.admit(31, 8)).toThrow(StaleEpochError); // durable
    await store.close();
  });
});

describe('cluster identity on every disk', () => {
  it('a disk joins one cluster, durably; another cluster\'s id is refused and changes nothing', async () => {
    const path = nextPath();
    let store = new ChunkStore();
    const disk = await store.openDisk(path, { size: SIZE, chunkSize: CHUNK });
    expect(disk.sb.clusterId).toBe('');
    const cluster = randomUUID();
    await store.joinCluster(cluster);
    await store.joinCluster(cluster); // same id again: no-op
    await store.close();
    store = new ChunkStore();
    const reopened = await store.openDisk(path, { chunkSize: CHUNK });
    expect(reopened.sb.clusterId).toBe(cluster);
    await expect(store.joinCluster(randomUUID())).rejects.toThrow(/belongs to cluster .* not /);
    await store.close();
    store = new ChunkStore();
    expect((await store.openDisk(path, { chunkSize: CHUNK })).sb.clusterId).toBe(cluster);
    // A disk added after the node registered is stamped at once.
    const added = await store.openDisk(nextPath(), { size: SIZE, chunkSize: CHUNK });
    expect(added.sb.clusterId).toBe('');
    store.clusterId = cluster;
    const later = await store.openDisk(nextPath(), { size: SIZE, chunkSize: CHUNK });
    expect(later.sb.clusterId).toBe(cluster);
    await store.close();
  });
});

describe('segment notes (the manager\'s word on stale replicas, for a rebuild from storage)', () => {
  it('are kept durably with every chunk of the segment; an older note or a lower epoch changes nothing', async () => {
    const path = nextPath();
    let store = new ChunkStore();
    const disk = await store.openDisk(path, { size: SIZE, chunkSize: CHUNK });
    await store.allocate(disk.id, 0, identity(41, 0, 5));
    await store.allocate(disk.id, 1, identity(41, 1, 5));
    expect(await store.noteSegment(41, 0, 0b100, 7, 5)).toBe(1);
    expect(await store.noteSegment(41, 0, 0b001, 6, 5)).toBe(0); // older
    await expect(store.noteSegment(41, 0, 0b010, 8, 4)).rejects.toBeInstanceOf(StaleEpochError);
    await store.close();
    store = new ChunkStore();
    await store.openDisk(path, { chunkSize: CHUNK });
    const recs = store.listChunks().map((c) => [c.rec.segment, c.rec.staleSlots, c.rec.mapVersion]).sort();
    expect(recs).toEqual([[0, 0b100, 7], [1, 0, 0]]);
    await store.close();
  });
});
