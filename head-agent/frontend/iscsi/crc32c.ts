// CRC32C (Castagnoli, reflected polynomial 0x82F63B78): the iSCSI header and
// data digest (RFC 7143 11.1 and 13.1, test vectors in RFC 3720 appendix
// B.4). Table-driven, slicing by 8: eight table lookups per 8 input bytes.
// Continuation works like zlib's crc32: crc32c(b, crc32c(a)) === crc32c(a+b).

const POLY = 0x82f63b78;

/** T[k * 256 + b]: the CRC of byte b followed by k zero bytes. */
const T = buildTables();

function buildTables(): Int32Array {
  const t = new Int32Array(8 * 256);
  for (let b = 0; b < 256; b++) {
    let c = b;
    for (let i = 0; i < 8; i++) c = c & 1 ? (c >>> 1) ^ POLY : c >>> 1;
    t[b] = c;
  }
  for (let b = 0; b < 256; b++) {
    let c = t[b]!;
    for (let k = 1; k < 8; k++) {
      c = t[c & 0xff]! ^ (c >>> 8);
      t[k * 256 + b] = c;
    }
  }
  return t;
}

/**
 * CRC32C of data[start, end), continuing from `crc` (the CRC of the bytes
 * before them; 0 for none). Returns an unsigned 32-bit value.
 */
export function crc32c(data: Uint8Array, crc = 0, start = 0, end = data.length): number {
  let c = ~crc;
  let i = start;
  // Align the 8-byte loop to nothing in particular: reads are byte-wise,
  // which keeps this correct for any Buffer view offset.
  const stop8 = end - ((end - i) & 7);
  while (i < stop8) {
    const lo = c ^ (data[i]! | (data[i + 1]! << 8) | (data[i + 2]! << 16) | (data[i + 3]! << 24));
    c = T[7 * 256 + (lo & 0xff)]! ^ T[6 * 256 + ((lo >>> 8) & 0xff)]! ^
      T[5 * 256 + ((lo >>> 16) & 0xff)]! ^ T[4 * 256 + (lo >>> 24)]! ^
      T[3 * 256 + data[i + 4]!]! ^ T[2 * 256 + data[i + 5]!]! ^
      T[256 + data[i + 6]!]! ^ T[data[i + 7]!]!;
    i += 8;
  }
  while (i < end) c = T[(c ^ data[i++]!) & 0xff]! ^ (c >>> 8);
  return ~c >>> 0;
}

/** Writes a digest as iSCSI sends it: least significant byte first. */
export function writeDigest(buf: Buffer, offset: number, crc: number): void {
  buf.writeUInt32LE(crc >>> 0, offset);
}

export function readDigest(buf: Buffer, offset: number): number {
  return buf.readUInt32LE(offset);
}
