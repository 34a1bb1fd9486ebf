import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { CorruptMetadataError } from '../../shared/errors.js';
import {
  ChunkState, DATA_ALIGN, FORMAT_VERSION, SUPERBLOCK_SIZE, computeLayout, decodeRecord, decodeSuperblock, emptyRecord,
  encodeRecord, encodeSuperblock, pickNewest, uuidToBytes, type ChunkRecordData, type Superblock,
} from '../../storage-node/disk-format.js';

const MiB = 1024 * 1024;
const BITS = 4096;

function superblock(): Superblock {
  const size = 64 * MiB;
  const chunkSize = 8 * MiB;
  const layout = computeLayout(size, chunkSize, BITS);
  return {
    diskId: randomUUID(), formatVersion: FORMAT_VERSION, chunkSize, chunkCount: layout.chunkCount, regionBits: BITS,
    recordSize: layout.recordSize, tableOffset: layout.tableOffset, dataOffset: layout.dataOffset, diskSize: size,
    createdMs: Date.now(),
  };
}

function owned(over: Partial<ChunkRecordData> = {}): ChunkRecordData {
  const bitmap = new Uint8Array(BITS / 8);
  bitmap[0] = 0b1010_0001;
  bitmap[511] = 0x80;
  const dirty = new Uint8Array(BITS / 8);
  dirty[0] = 0b0000_0001;
  dirty[300] = 0x42;
  dirty[511] = 0x01;
  return {
    ...emptyRecord(BITS), state: ChunkState.OWNED, volumeId: 0xfeed_beef, segment: 123_456, slot: 2, segmentCount: 200_000,
    replicas: 3, volumeSize: 2 ** 50 + 7, volumeName: 'vm-disk-ü-ß', generation: 41, epoch: 0xffff_fff0, bitmap, dirty, ...over,
  };
}

describe('disk layout', () => {
  it('fits the table before a 1 MiB-aligned data area and the chunks inside the disk', () => {
    for (const [size, chunk] of [[64 * MiB, 8 * MiB], [1024 * MiB, 256 * MiB], [9 * MiB, 8 * MiB], [1000 * MiB + 12345, 16 * MiB]]) {
      const l = computeLayout(size!, chunk!, BITS);
      expect(l.dataOffset % DATA_ALIGN).toBe(0);
      expect(l.dataOffset).toBeGreaterThanOrEqual(l.tableOffset + l.chunkCount * 2 * l.recordSize);
      expect(l.dataOffset + l.chunkCount * chunk!).toBeLessThanOrEqual(size!);
      // Not one chunk more would fit.
      const more = l.chunkCount + 1;
      expect(Math.ceil((l.tableOffset + more * 2 * l.recordSize) / DATA_ALIGN) * DATA_ALIGN + more * chunk!).toBeGreaterThan(size!);
    }
    // 144 fixed bytes + 512 written-bitmap bytes + 512 dirty-bitmap bytes, in whole sectors.
    expect(computeLayout(64 * MiB, 8 * MiB, BITS)).toMatchObject({ chunkCount: 7, recordSize: 1536, tableOffset: 4096, dataOffset: MiB });
  });
});

describe('superblock codec', () => {
  it('round-trips', () => {
    const sb = superblock();
    const buf = encodeSuperblock(sb);
    expect(buf.length).toBe(SUPERBLOCK_SIZE);
    expect(decodeSuperblock(buf)).toEqual(sb);
  });

  it('detects a flipped bit anywhere in the checksummed part', () => {
    const buf = encodeSuperblock(superblock());
    for (const at of [9, 20, 35, 41, 70, 90, 125]) {
      const copy = Buffer.from(buf);
      copy[at]! ^= 0x04;
      expect(() => decodeSuperblock(copy), `byte ${at}`).toThrow(CorruptMetadataError);
    }
  });

  it('refuses foreign data and unknown versions (including version 1, which had no dirty bitmap)', () => {
    const foreign = Buffer.alloc(SUPERBLOCK_SIZE, 0x5a);
    expect(FORMAT_VERSION).toBe(2);
    expect(() => decodeSuperblock(foreign)).toThrow(/not a VastSky disk/);
    for (const version of [1, 3]) {
      const other = encodeSuperblock({ ...superblock(), formatVersion: version });
      expect(() => decodeSuperblock(other)).toThrow(new RegExp(`version ${version}`));
    }
  });
});

describe('chunk record codec', () => {
  const sb = superblock();
  const id = uuidToBytes(sb.diskId);

  it('round-trips every field, the utf8 name, the written and the dirty bitmaps', () => {
    const rec = owned();
    const buf = encodeRecord(rec, 2 ** 40 + 3, 5, id, sb.recordSize);
    expect(buf.length).toBe(1536);
    const out = decodeRecord(buf, 5, id, BITS)!;
    expect(out.seq).toBe(2 ** 40 + 3);
    expect(out.record).toEqual(rec);
    // The two bitmaps are distinct bytes on disk, not one aliasing the other.
    expect(Buffer.from(out.record.dirty).equals(Buffer.from(out.record.bitmap))).toBe(false);
    expect(out.record.dirty[300]).toBe(0x42);
    expect(out.record.bitmap[300]).toBe(0);
  });

  it('refuses bitmaps of mismatched sizes', () => {
    expect(() => encodeRecord(owned({ dirty: new Uint8Array(BITS / 16) }), 1, 0, id, sb.recordSize)).toThrow(CorruptMetadataError);
  });

  it('treats a blank slot as never written and detects corruption', () => {
    expect(decodeRecord(Buffer.alloc(1536), 0, id, BITS)).toBeUndefined();
    const buf = encodeRecord(owned(), 1, 5, id, sb.recordSize);
    // Fixed part, written bitmap (144..655), dirty bitmap (656..1167) and the padding are all checksummed.
    for (const at of [8, 40, 100, 200, 600, 700, 1100, 1167, 1535]) {
      const copy = Buffer.from(buf);
      copy[at]! ^= 0x01;
      expect(() => decodeRecord(copy, 5, id, BITS), `byte ${at}`).toThrow(CorruptMetadataError);
    }
    // A record is bound to its disk and its place in the table.
    expect(() => decodeRecord(buf, 6, id, BITS)).toThrow(/another disk or chunk/);
    expect(() => decodeRecord(buf, 5, uuidToBytes(randomUUID()), BITS)).toThrow(/another disk or chunk/);
  });

  it('refuses names longer than 64 bytes', () => {
    expect(() => encodeRecord(owned({ volumeName: 'é'.repeat(33) }), 1, 0, id, sb.recordSize)).toThrow(CorruptMetadataError);
  });
});

describe('A/B record slots', () => {
  const sb = superblock();
  const id = uuidToBytes(sb.diskId);
  const older = owned({ epoch: 4, generation: 1 });
  const newer = owned({ epoch: 5, generation: 2 });

  it('takes the slot with the higher sequence, wherever it is', () => {
    const a = encodeRecord(older, 7, 3, id, sb.recordSize);
    const b = encodeRecord(newer, 8, 3, id, sb.recordSize);
    expect(pickNewest(a, b, 3, id, BITS)).toMatchObject({ seq: 8, newestSlot: 1, invalidSlots: 0, record: { epoch: 5 } });
    const a2 = encodeRecord(newer, 9, 3, id, sb.recordSize);
    expect(pickNewest(a2, b, 3, id, BITS)).toMatchObject({ seq: 9, newestSlot: 0, record: { epoch: 5 } });
  });

  it('falls back to the older slot when the newest one is torn or garbage', () => {
    const a = encodeRecord(older, 7, 3, id, sb.recordSize);
    const b = encodeRecord(newer, 8, 3, id, sb.recordSize);
    // Torn: the first sector of the new record landed over an older record in the same slot.
    const stale = encodeRecord(owned({ epoch: 1, bitmap: new Uint8Array(BITS / 8).fill(0xff) }), 6, 3, id, sb.recordSize);
    const torn = Buffer.concat([b.subarray(0, 512), stale.subarray(512)]);
    expect(torn.equals(b)).toBe(false);
    expect(pickNewest(a, torn, 3, id, BITS)).toMatchObject({ seq: 7, newestSlot: 0, invalidSlots: 1, record: { epoch: 4, generation: 1 } });
    // Torn in the last sector only (the dirty bitmap's tail): also detected.
    const dirtier = encodeRecord(owned({ epoch: 5, dirty: new Uint8Array(BITS / 8).fill(0xff) }), 8, 3, id, sb.recordSize);
    const tornTail = Buffer.concat([dirtier.subarray(0, 1024), b.subarray(1024)]);
    expect(tornTail.equals(dirtier)).toBe(false);
    expect(pickNewest(a, tornTail, 3, id, BITS)).toMatchObject({ seq: 7, newestSlot: 0, invalidSlots: 1 });
    const garbage = Buffer.alloc(1536, 0xa5);
    const picked = pickNewest(garbage, b, 3, id, BITS);
    expect(picked).toMatchObject({ seq: 8, newestSlot: 1, invalidSlots: 1 });
    expect(picked.record).toEqual(newer);
  });

  it('reads a never-written or unrecoverable chunk as free, and a free record without written or dirty regions', () => {
    const blank = Buffer.alloc(1536);
    expect(pickNewest(blank, blank, 0, id, BITS)).toMatchObject({ seq: 0, newestSlot: -1, record: { state: ChunkState.FREE } });
    const torn = Buffer.alloc(1536, 0x33);
    expect(pickNewest(torn, blank, 0, id, BITS)).toMatchObject({ seq: 0, newestSlot: -1, invalidSlots: 1 });
    const freed = encodeRecord({ ...owned(), state: ChunkState.FREE }, 3, 0, id, sb.recordSize);
    const p = pickNewest(freed, blank, 0, id, BITS);
    expect(p.record.state).toBe(ChunkState.FREE);
    expect(p.record.bitmap.every((b) => b === 0)).toBe(true);
    expect(p.record.dirty.every((b) => b === 0)).toBe(true);
  });
});
