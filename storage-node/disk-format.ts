// The self-describing on-disk format of a storage-node disk, as pure codecs
// (no I/O). Everything a node or a manager needs to know about a disk is read
// back from the disk itself:
//
//   [0, 4 KiB)                superblock: disk UUID, format version, geometry
//   [4 KiB, tableEnd)         chunk table: per chunk two record slots (A, B)
//                             (fixed fields, written-region bitmap, dirty bitmap)
//   [dataOffset, ...)         chunk data, chunk i at dataOffset + i * chunkSize
//
// Crash safety of the chunk table: a record update writes the slot that does
// NOT hold the newest valid record, with a higher sequence number and a CRC.
// A kill (or power loss) mid-write tears at most that slot; on open the newest
// slot whose CRC checks wins, so a torn update falls back to the previous
// state. Numbers are big-endian, like the data protocol.
//
// Chunk record slot, format version 3 (all big-endian):
//   0   u32 magic 'VSKD'        4  u32 CRC-32 of bytes [8, slot end)
//   8   u64 sequence            16 disk UUID (16 bytes)
//   32  u32 chunk index         36 u8 state  37 u8 slot  38 u8 name length  39 u8 flags (bit 0: thin volume, bit 1: read-only, a snapshot's)
//   40  u32 volume id           44 u32 segment   48 u32 segment count   52 u32 replicas
//   56  u64 volume size
//   64  u64 volume generation   (0..2^53-1; above: the slot is corrupt)
//   72  u64 lease epoch         (0..2^53-1; above: the slot is corrupt)
//   80  u32 region bits         84 u32 stale slots   88 u64 map version (the manager's note on the segment)
//   96  volume name (UTF-8, 64 bytes)
//   160 u8 legality (0 LEGAL, 1 DIRTY, 2 DELETING, 3 CREATING)   161 u8 last job's kind   162 u8 last job's outcome   163 u8 job id length
//   164 u32 lvolid (the volume's VastSky-style integer id; 0: none)   168 last job's id (UTF-8, 48 bytes)   216 u64 reserved (0)
//   224 written-region bitmap (regionBits / 8 bytes), then the dirty bitmap (same size)
// then zero padding to a whole number of sectors.
//
// Format versions: 1 had only the written-region bitmap; 2 added the
// write-intent (dirty) bitmap right after it (docs/design.md rule 4); 3 widens the
// generation and the epoch from u32 to u64 (they never wrap: shared/counters.ts),
// which grows the fixed part of a record from 144 to 160 bytes (magic 'VSKD';
// a version-2 record has the magic 'VSKC', u32 generation at 64, u32 epoch at
// 68, region bits at 72, name at 80, bitmaps at 144). No version-1 disk was
// ever deployed, so version 1 is refused rather than converted. A version-2
// disk is upgraded in place when it is opened (storage-node/disk.ts): its
// record slots (1536 bytes for 4096 regions) have room for the wider record,
// so the geometry does not change; every record is rewritten as version 3 by
// an ordinary A/B update, made durable, and only then does the superblock say
// 3. Version 3 (still unreleased) also carries the storage-job fields (legality
// and the last job's record, manager/jobs/): its fixed part is 224 bytes, which
// still fits the 1536-byte slots of 4096 regions. A crash midway leaves a version-2 superblock over a mix of records, which
// decodeRecord reads either way (by their magic), and the next open finishes
// the job. The lvolid (docs/xmlrpc.md) took a u32 that version 3 had reserved
// as 0, so a version-3 record written before it reads as "no lvolid" and the
// format did not change. A version-2 disk whose slots are too small for version-3 records
// (never made by this code: its region bits were always 4096) is refused.
//
// Region bits (issue 13, docs/snapshots.md "Written regions of 4 KiB"): a disk
// formatted since then has chunkSize / 4096 region bits (4 KiB regions; at
// least 4096 bits, so chunks under 16 MiB keep smaller regions), e.g. 65536
// bits for 256 MiB chunks: 8 KiB per bitmap, a 16896-byte record slot, 33 KiB
// of chunk table per chunk. The layout is the same (the superblock's region
// bits and record size describe it), so the format version did not change; a
// disk formatted before keeps its 4096 bits (64 KiB regions with 256 MiB
// chunks) and is opened as before. A node's --region-size formats new disks
// with an older cluster's size: the manager keeps one size per cluster.

// The codecs, one file per concept in storage-node/disk-format/: layout.ts
// (geometry, versions), superblock.ts, chunk-record.ts, bytes.ts. This file
// is their public face.

export * from './disk-format/layout.js';
export * from './disk-format/superblock.js';
export * from './disk-format/chunk-record.js';
export { bytesToUuid, isBlank, uuidToBytes } from './disk-format/bytes.js';
