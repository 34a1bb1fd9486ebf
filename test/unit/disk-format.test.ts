import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { crc32 } from 'node:zlib';
import { CorruptMetadataError } from '../../shared/errors.js';
import {
  ChunkState, DATA_ALIGN, FORMAT_VERSION, Legality, MAX_JOB_ID_BYTES, RECORD_MAGIC, SUPERBLOCK_SIZE, computeLayout, decodeRecord, decodeSuperblock, emptyRecord,
  encodeRecord, encodeSuperblock, pickNewest, recordSizeFor, uuidToBytes, type ChunkRecordData, type Superblock,
} from '../../storage-node/disk-format.js';
import { encodeV2Record } from '../harness/disk-format-v2.js';

const MiB = 1024 * 1024;
const BITS = 4096;

function superblock(): Superblock {
  const size = 64 * MiB;
  const chunkSize = 8 * MiB;
  const layout = computeLayout(size, chunkSize, BITS);
  return {
    diskId: randomUUID(), formatVersion: FORMAT_VERSION, chunkSize, chunkCount: layout.chunkCount, regionBits: BITS,
    recordSize: layout.recordSize, tableOffset: layout.tableOffset, dataOffset: layout.dataOffset, diskSize: size,
    createdMs: Date.now(), clusterId: '',
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
    replicas: 3, volumeSize: 2 ** 50 + 7, volumeName: 'vm-disk-ü-ß', generation: 41, epoch: 0xffff_fff0, bitmap, dirty,
    legality: Legality.DIRTY, jobId: 'job-ü-0123456789abcdef0123456789abcdef01', jobKind: 'wipe', jobOutcome: 'running', ...over,
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
    // 224 fixed bytes + 512 written-bitmap bytes + 512 dirty-bitmap bytes, in whole sectors:
    // the same 1536 bytes as version 2 (144 fixed bytes), so a version-2 disk keeps its geometry.
    expect(computeLayout(64 * MiB, 8 * MiB, BITS)).toMatchObject({ chunkCount: 7, recordSize: 1536, tableOffset: 4096, dataOffset: MiB });
    expect(computeLayout(64 * MiB, 8 * MiB, BITS, 2)).toEqual(computeLayout(64 * MiB, 8 * MiB, BITS));
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
    expect(FORMAT_VERSION).toBe(3);
    expect(() => decodeSuperblock(foreign)).toThrow(/not a VastSky disk/);
    for (const version of [0, 1, 4]) {
      const other = encodeSuperblock({ ...superblock(), formatVersion: version });
      expect(() => decodeSuperblock(other)).toThrow(new RegExp(`version ${version}`));
    }
  });

  it('reads a version-2 superblock (to be upgraded in place), unless its record slots are too small for version 3', () => {
    const v2 = { ...superblock(), formatVersion: 2 };
    expect(decodeSuperblock(encodeSuperblock(v2))).toEqual(v2);
    // 1472 regions: 144 + 2 * 184 = 512 bytes fit one sector in version 2, version 3 needs 528 (two sectors).
    const bits = 1472;
    const chunkSize = 4096 * 23; // a multiple of 4096 and of 1472
    expect([recordSizeFor(bits, 2), recordSizeFor(bits)]).toEqual([512, 1024]);
    const layout = computeLayout(64 * MiB, chunkSize, bits, 2);
    const cramped: Superblock = {
      ...v2, regionBits: bits, chunkSize, chunkCount: layout.chunkCount, recordSize: layout.recordSize,
      tableOffset: layout.tableOffset, dataOffset: layout.dataOffset,
    };
    expect(() => decodeSuperblock(encodeSuperblock(cramped))).toThrow(/cannot be upgraded in place/);
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

  it('keeps the read-only mark (a snapshot\'s chunk) in byte 39 next to thin; an older record (bit clear) reads writable', () => {
    for (const [thin, readOnly, byte] of [[false, false, 0], [true, false, 1], [false, true, 2], [true, true, 3]] as const) {
      const rec = owned({ thin, readOnly });
      const buf = encodeRecord(rec, 9, 5, id, sb.recordSize);
      expect(buf[39]).toBe(byte);
      expect(decodeRecord(buf, 5, id, BITS)!.record).toEqual(rec);
    }
    // A record written before the mark existed: byte 39 says thin only.
    const old = encodeRecord(owned({ thin: true }), 9, 5, id, sb.recordSize);
    expect(old[39]).toBe(1);
    expect(decodeRecord(old, 5, id, BITS)!.record.readOnly).toBe(false);
    // A version 2 slot (no flags in use) reads writable.
    expect(emptyRecord(BITS).readOnly).toBe(false);
    // The mark survives the A/B pick and a later update of the other slot.
    const a = encodeRecord(owned({ readOnly: true, epoch: 5 }), 10, 5, id, sb.recordSize);
    const b = encodeRecord(owned({ readOnly: true, epoch: 6 }), 11, 5, id, sb.recordSize);
    const picked = pickNewest(a, b, 5, id, BITS);
    expect(picked.newestSlot).toBe(1);
    expect(picked.record.readOnly).toBe(true);
    expect(picked.record.epoch).toBe(6);
  });

  it('keeps legality and the last job record (id, kind, outcome); refuses what would not read back', () => {
    for (const over of [{ legality: Legality.LEGAL, jobId: '', jobKind: '', jobOutcome: '' }, { jobKind: 'resize', jobOutcome: 'fenced' }] as const) {
      const rec = owned(over);
      expect(decodeRecord(encodeRecord(rec, 3, 5, id, sb.recordSize), 5, id, BITS)!.record).toEqual(rec);
    }
    expect(() => encodeRecord(owned({ jobId: 'x'.repeat(MAX_JOB_ID_BYTES + 1) }), 1, 0, id, sb.recordSize)).toThrow(CorruptMetadataError);
    expect(() => encodeRecord(owned({ legality: 7 }), 1, 0, id, sb.recordSize)).toThrow(CorruptMetadataError);
    expect(() => encodeRecord(owned({ jobKind: 'bogus' as never }), 1, 0, id, sb.recordSize)).toThrow(CorruptMetadataError);
    const buf = encodeRecord(owned(), 1, 5, id, sb.recordSize);
    buf[162] = 99; // an unknown outcome (CRC made to match): corrupt, never guessed
    buf.writeUInt32BE(crc32(buf.subarray(8)), 4);
    expect(() => decodeRecord(buf, 5, id, BITS)).toThrow(/job field/);
  });

  it('keeps the volume\'s lvolid in the u32 at 164 that version 3 reserved; a record from before it (zeros there) reads as no lvolid', () => {
    for (const lvolid of [1, 0x7fff_ffff, 0xffff_ffff]) {
      const rec = owned({ lvolid });
      const buf = encodeRecord(rec, 3, 5, id, sb.recordSize);
      expect(buf.readUInt32BE(164)).toBe(lvolid);
      expect(decodeRecord(buf, 5, id, BITS)!.record).toEqual(rec);
    }
    // The bytes a version-3 writer without the lvolid produced: 164..167 zero, same magic and layout.
    const before = encodeRecord(owned({ lvolid: 0 }), 3, 5, id, sb.recordSize);
    expect(before.subarray(164, 168).equals(Buffer.alloc(4))).toBe(true);
    expect(decodeRecord(before, 5, id, BITS)).toMatchObject({ formatVersion: FORMAT_VERSION, record: { lvolid: 0 } });
    // A version-2 record has none.
    expect(decodeRecord(encodeV2Record(owned({ legality: Legality.LEGAL, jobId: '', jobKind: '', jobOutcome: '' }), 4, 5, id, sb.recordSize), 5, id, BITS)!.record.lvolid).toBe(0);
    for (const bad of [-1, 2 ** 32, 1.5]) expect(() => encodeRecord(owned({ lvolid: bad }), 1, 0, id, sb.recordSize)).toThrow(CorruptMetadataError);
  });

  it('refuses bitmaps of mismatched sizes', () => {
    expect(() => encodeRecord(owned({ dirty: new Uint8Array(BITS / 16) }), 1, 0, id, sb.recordSize)).toThrow(CorruptMetadataError);
  });

  it('treats a blank slot as never written and detects corruption', () => {
    expect(decodeRecord(Buffer.alloc(1536), 0, id, BITS)).toBeUndefined();
    const buf = encodeRecord(owned(), 1, 5, id, sb.recordSize);
    // Fixed part (job fields at 160..215 included), written bitmap (224..735), dirty bitmap (736..1247) and the padding are all checksummed.
    for (const at of [8, 40, 68, 76, 100, 161, 170, 200, 600, 700, 1100, 1247, 1535]) {
      const copy = Buffer.from(buf);
      copy[at]! ^= 0x01;
      expect(() => decodeRecord(copy, 5, id, BITS), `byte ${at}`).toThrow(CorruptMetadataError);
    }
    // A record is bound to its disk and its place in the table.
    expect(() => decodeRecord(buf, 6, id, BITS)).toThrow(/another disk or chunk/);
    expect(() => decodeRecord(buf, 5, uuidToBytes(randomUUID()), BITS)).toThrow(/another disk or chunk/);
  });

  it('keeps generation and epoch as u64: above 2^32 and up to 2^53-1, exactly', () => {
    const E = 2 ** 32;
    for (const [generation, epoch] of [[E, E + 1], [E + 7, E + 5], [2 ** 40 + 3, 2 ** 52 + 9], [Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER - 1]]) {
      const rec = owned({ generation, epoch });
      const buf = encodeRecord(rec, 9, 5, id, sb.recordSize);
      expect(buf.readUInt32BE(0)).toBe(RECORD_MAGIC);
      expect(buf.readBigUInt64BE(64)).toBe(BigInt(generation!));
      expect(buf.readBigUInt64BE(72)).toBe(BigInt(epoch!));
      const out = decodeRecord(buf, 5, id, BITS)!;
      expect(out).toMatchObject({ seq: 9, formatVersion: FORMAT_VERSION });
      expect(out.record).toEqual(rec);
    }
  });

  it('a stored generation or epoch above 2^53-1 makes the slot corrupt (never truncated); none is ever written', () => {
    for (const at of [64, 72]) {
      const buf = encodeRecord(owned(), 9, 5, id, sb.recordSize);
      buf.writeUInt32BE(0x20_0000, at); // high word: the value is 2^53 + low word
      buf.writeUInt32BE(crc32(buf.subarray(8)), 4); // a well-formed slot otherwise
      expect(() => decodeRecord(buf, 5, id, BITS)).toThrow(at === 64 ? /generation beyond 2\^53-1/ : /epoch beyond 2\^53-1/);
      // As one slot of two, it is skipped like a torn one: the other slot wins.
      const older = encodeRecord(owned({ epoch: 3 }), 8, 5, id, sb.recordSize);
      expect(pickNewest(older, buf, 5, id, BITS)).toMatchObject({ seq: 8, newestSlot: 0, invalidSlots: 1, record: { epoch: 3 } });
    }
    for (const bad of [2 ** 53, 2 ** 64, -1, 1.5, Number.NaN]) {
      expect(() => encodeRecord(owned({ epoch: bad }), 1, 0, id, sb.recordSize)).toThrow(CorruptMetadataError);
      expect(() => encodeRecord(owned({ generation: bad }), 1, 0, id, sb.recordSize)).toThrow(CorruptMetadataError);
    }
  });

  it('reads version-2 records (u32 generation and epoch), told apart by their magic', () => {
    const rec = owned({ generation: 41, epoch: 0xffff_fff0, legality: Legality.LEGAL, jobId: '', jobKind: '', jobOutcome: '' }); // v2 has no job fields
    const v2 = encodeV2Record(rec, 2 ** 33 + 1, 5, id, sb.recordSize);
    const out = decodeRecord(v2, 5, id, BITS)!;
    expect(out).toMatchObject({ seq: 2 ** 33 + 1, formatVersion: 2 });
    expect(out.record).toEqual(rec);
    // Bound to its disk and place, checksummed, like a version-3 record.
    expect(() => decodeRecord(v2, 6, id, BITS)).toThrow(/another disk or chunk/);
    const flipped = Buffer.from(v2);
    flipped[700]! ^= 0x10;
    expect(() => decodeRecord(flipped, 5, id, BITS)).toThrow(/checksum/);
    // Mixed slots (an upgrade under way): the higher sequence wins, whatever its layout.
    const v3 = encodeRecord(owned({ generation: 2 ** 32 + 1, epoch: 2 ** 32 + 2 }), 2 ** 33 + 2, 5, id, sb.recordSize);
    expect(pickNewest(v2, v3, 5, id, BITS)).toMatchObject({ newestSlot: 1, formatVersion: 3, record: { epoch: 2 ** 32 + 2 } });
    const v2newer = encodeV2Record(rec, 2 ** 33 + 3, 5, id, sb.recordSize);
    expect(pickNewest(v2newer, v3, 5, id, BITS)).toMatchObject({ newestSlot: 0, formatVersion: 2, record: { epoch: 0xffff_fff0 } });
    expect(pickNewest(Buffer.alloc(1536), Buffer.alloc(1536), 5, id, BITS).formatVersion).toBe(0);
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

describe('superblock cluster id', () => {
  it('round-trips, and a disk formatted without one reads as none', () => {
    const sb = superblock();
    expect(decodeSuperblock(encodeSuperblock(sb)).clusterId).toBe('');
    const id = randomUUID();
    const withId = decodeSuperblock(encodeSuperblock({ ...sb, clusterId: id }));
    expect(withId.clusterId).toBe(id);
    expect(withId).toEqual({ ...sb, clusterId: id });
  });
});
