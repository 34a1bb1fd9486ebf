import { open } from 'node:fs/promises';
import type { Chunk } from '../../storage-node/chunk.js';
import { readChunk, writeChunk } from '../../storage-node/chunk-io.js';

// What the storage node's in-process tests share: a chunk's write and read as
// promises, and a raw patch of the disk file (torn or corrupt records).

export const write = (c: Chunk, off: number, data: Buffer, fua = false): Promise<void> =>
  new Promise<void>((res, rej) => writeChunk(c, off, data, fua, (e) => (e ? rej(e) : res())));

/** Reads into a buffer pre-filled with 0xcc, so bytes the read did not set show. */
export const read = (c: Chunk, off: number, len: number): Promise<Buffer> =>
  new Promise<Buffer>((res, rej) => {
    const buf = Buffer.alloc(len, 0xcc);
    readChunk(c, off, len, buf, 0, (e) => (e ? rej(e) : res(buf)));
  });

/** Writes `bytes` at `position` of the file, behind the node's back. */
export async function patch(path: string, position: number, bytes: Buffer): Promise<void> {
  const fh = await open(path, 'r+');
  await fh.write(bytes, 0, bytes.length, position);
  await fh.close();
}
