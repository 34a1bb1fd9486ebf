import fs from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { CorruptMetadataError, InvalidArgumentError } from '../../shared/errors.js';
import { encodeSuperblock, type Superblock } from '../disk-format/superblock.js';

// Whole-buffer reads and writes at an offset of an fd, and the size of a file
// or block device: the I/O a disk does while opening, formatting or upgrading
// (storage-node/disk.ts; its data path uses the fs callbacks directly).

/** Size of a regular file, or of a block device (from sysfs: fstat reports 0 for devices). */
export async function deviceSize(fd: number): Promise<number> {
  const st = await p<fs.Stats>((cb) => fs.fstat(fd, cb));
  if (st.isFile()) return st.size;
  if (!st.isBlockDevice()) throw new InvalidArgumentError('a disk must be a regular file or a block device');
  const major = Math.floor(st.rdev / 256) & 0xfff;
  const minor = (st.rdev & 0xff) | (Math.floor(st.rdev / 4096) & 0xfff00);
  const sectors = Number((await readFile(`/sys/dev/block/${major}:${minor}/size`, 'utf8')).trim());
  return sectors * 512;
}

/** Creates a sparse file of `size` bytes (its directory too); fails if the file exists. */
export async function createSparse(path: string, size: number): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  const fd = await p<number>((cb) => fs.open(path, 'wx', 0o600, cb));
  try {
    await p<void>((cb) => fs.ftruncate(fd, size, cb));
  } finally {
    await p<void>((cb) => fs.close(fd, cb));
  }
}

/** Writes a superblock and makes it durable. */
export async function writeSuperblockDurably(fd: number, sb: Superblock): Promise<void> {
  await writeFully(fd, encodeSuperblock(sb), 0);
  await p<void>((cb) => fs.fdatasync(fd, cb));
}

export async function readFully(fd: number, buf: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const n = await p<number>((cb) => fs.read(fd, buf, done, buf.length - done, position + done, cb));
    if (n === 0) throw new CorruptMetadataError('disk is shorter than its metadata says', { position });
    done += n;
  }
}

export async function writeFully(fd: number, buf: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < buf.length) done += await p<number>((cb) => fs.write(fd, buf, done, buf.length - done, position + done, cb));
}

/** Promisifies one fs callback call. */
export function p<T>(fn: (cb: (err: NodeJS.ErrnoException | null, v?: T) => void) => void): Promise<T> {
  return new Promise((resolve, reject) => fn((err, v) => (err ? reject(err) : resolve(v as T))));
}
