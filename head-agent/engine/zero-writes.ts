import { MiB } from '../../shared/constants.js';

// Discard and write-zeroes on a volume that must not deallocate (a clone with
// a backing, shared/deallocation.ts): zeros are written as data, through the
// volume's ordinary write path, so the regions become written (they read
// zeros, not the backing's bytes). From one shared zero buffer, never written
// to, in pieces one after another: no allocation per request.

const ZEROS = Buffer.alloc(MiB);

export interface ZeroWritable {
  write(offset: number, data: Buffer, fua: boolean): Promise<void>;
}

export async function writeZeroData(volume: ZeroWritable, offset: number, length: number, fua: boolean): Promise<void> {
  for (let done = 0; done < length;) {
    const n = Math.min(ZEROS.length, length - done);
    await volume.write(offset + done, ZEROS.subarray(0, n), fua);
    done += n;
  }
}
