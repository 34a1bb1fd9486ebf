import { CorruptMetadataError } from '../../shared/errors.js';

// Byte helpers of the disk format: big-endian u64 fields kept below 2^53,
// UUIDs as 16 raw bytes, alignment, blank (all-zero) areas.

const TWO_32 = 0x1_0000_0000;

/** True when `buf` is all zeros (a never-formatted disk, or a never-written record slot). */
export function isBlank(buf: Uint8Array): boolean {
  for (let i = 0; i < buf.length; i++) if (buf[i] !== 0) return false;
  return true;
}

export function uuidToBytes(uuid: string): Buffer {
  const hex = uuid.replace(/-/g, '');
  if (!/^[0-9a-fA-F]{32}$/.test(hex)) throw new CorruptMetadataError(`invalid UUID "${uuid}"`);
  return Buffer.from(hex, 'hex');
}

export function bytesToUuid(bytes: Uint8Array): string {
  const h = Buffer.from(bytes).toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
}

export function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

export function writeU64(buf: Buffer, at: number, v: number): void {
  buf.writeUInt32BE(Math.floor(v / TWO_32), at);
  buf.writeUInt32BE(v % TWO_32, at + 4);
}

export function readU64(buf: Buffer, at: number): number {
  const v = buf.readUInt32BE(at) * TWO_32 + buf.readUInt32BE(at + 4);
  if (!Number.isSafeInteger(v)) throw new CorruptMetadataError('u64 field beyond 2^53', { at });
  return v;
}

