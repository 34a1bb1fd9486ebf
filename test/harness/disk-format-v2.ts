import { crc32 } from 'node:zlib';
import type { ChunkRecordData } from '../../storage-node/disk-format.js';

// Format version 2 chunk records, written here by hand from the version-2
// layout (the code of the release before 64-bit epochs), independently of
// storage-node/disk-format.ts: what a disk formatted by that release holds,
// for the tests of the in-place upgrade to version 3. The superblock layout
// did not change between the versions (only its version number).
//
//   0   u32 magic 'VSKC'        4  u32 CRC-32 of bytes [8, slot end)
//   8   u64 sequence            16 disk UUID (16 bytes)
//   32  u32 chunk index         36 u8 state  37 u8 slot  38 u8 name length
//   40  u32 volume id           44 u32 segment   48 u32 segment count   52 u32 replicas
//   56  u64 volume size         64 u32 generation   68 u32 epoch
//   72  u32 region bits         80 volume name (64 bytes)
//   144 written-region bitmap, then the dirty bitmap

export const V2_RECORD_MAGIC = 0x56534b43; // 'VSKC'
const V2_RECORD_FIXED = 144;

/** A version-2 record slot of `recordSize` bytes (generation and epoch must fit in u32). */
export function encodeV2Record(rec: ChunkRecordData, seq: number, chunkIndex: number, diskId: Buffer, recordSize: number): Buffer {
  const buf = Buffer.alloc(recordSize);
  const name = Buffer.from(rec.volumeName, 'utf8');
  buf.writeUInt32BE(V2_RECORD_MAGIC, 0);
  buf.writeUInt32BE(Math.floor(seq / 2 ** 32), 8);
  buf.writeUInt32BE(seq % 2 ** 32, 12);
  diskId.copy(buf, 16);
  buf.writeUInt32BE(chunkIndex, 32);
  buf[36] = rec.state;
  buf[37] = rec.slot;
  buf[38] = name.length;
  buf.writeUInt32BE(rec.volumeId, 40);
  buf.writeUInt32BE(rec.segment, 44);
  buf.writeUInt32BE(rec.segmentCount, 48);
  buf.writeUInt32BE(rec.replicas, 52);
  buf.writeUInt32BE(Math.floor(rec.volumeSize / 2 ** 32), 56);
  buf.writeUInt32BE(rec.volumeSize % 2 ** 32, 60);
  buf.writeUInt32BE(rec.generation, 64); // throws above 2^32-1, like the release that wrote them
  buf.writeUInt32BE(rec.epoch, 68);
  buf.writeUInt32BE(rec.bitmap.length * 8, 72);
  name.copy(buf, 80);
  buf.set(rec.bitmap, V2_RECORD_FIXED);
  buf.set(rec.dirty, V2_RECORD_FIXED + rec.bitmap.length);
  buf.writeUInt32BE(crc32(buf.subarray(8)), 4);
  return buf;
}
