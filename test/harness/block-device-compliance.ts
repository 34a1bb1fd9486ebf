import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { BlockDevice } from '../../head-agent/engine/block-device.js';
import { InvalidArgumentError } from '../../shared/errors.js';
import { fill, rng } from './seeded-bytes.js';

// The BlockDevice contract (head-agent/engine/block-device.ts) as one shared
// suite, in the manner of abstract-level's test suite: any implementation
// registers it with a factory and must pass all of it. Each test opens a fresh
// device, keeps a byte model of what it wrote, and ends by reading the whole
// device back against the model, so "changes nothing elsewhere" is always
// checked. Devices up to 64 MiB (every test reads the whole device), with
// 128 KiB or more on each side of the boundary.
//
//   blockDeviceCompliance('MemoryDevice', async () => ({ device, close }), { boundary });

export interface OpenedDevice {
  device: BlockDevice;
  close(): Promise<void>;
}

export interface ComplianceHints {
  /**
   * Where the device splits requests internally (a LinearVolume's chunk size):
   * writes, reads, zeroes and discards are made to straddle multiples of it.
   * Without it the suite straddles the middle of the device.
   */
  boundary?: number;
}

const MAX_SIZE = 64 * 1024 * 1024;
/** Room the tests need on each side of the boundary. */
const MARGIN = 128 * 1024;

/** Registers the BlockDevice compliance tests for the devices `open` makes (a fresh, zeroed one per test). */
export function blockDeviceCompliance(label: string, open: () => Promise<OpenedDevice>, hints: ComplianceHints = {}): void {
  describe(`BlockDevice compliance: ${label}`, () => {
    let opened: OpenedDevice | undefined;
    let dev: BlockDevice;
    let model: Buffer;
    /** The straddled boundary (B) and the device size. */
    let B: number;
    let size: number;

    beforeEach(async () => {
      opened = await open();
      dev = opened.device;
      size = dev.size;
      expect(Number.isSafeInteger(size) && size > 0 && size <= MAX_SIZE, `size ${size}: the suite needs 1 B..64 MiB`).toBe(true);
      B = hints.boundary ?? Math.floor(size / 2 / 4096) * 4096;
      expect(B >= MARGIN && B + MARGIN <= size, `boundary ${B} must leave 128 KiB on each side within ${size} bytes`).toBe(true);
      model = Buffer.alloc(size);
    });

    afterEach(async () => {
      await opened?.close();
      opened = undefined;
    });

    /** Writes through the device and into the model. */
    async function write(offset: number, data: Buffer, fua = false): Promise<void> {
      await dev.write(offset, data, fua);
      data.copy(model, offset);
    }

    /** Reads [offset, offset+length) and compares it with the model, naming the first differing byte. */
    async function expectRange(offset: number, length: number, what: string): Promise<void> {
      const got = await dev.read(offset, length);
      expect(Buffer.isBuffer(got), `${what}: read resolves with a Buffer`).toBe(true);
      expect(got.length, `${what}: read length`).toBe(length);
      const at = firstDifference(got, model.subarray(offset, offset + length));
      const detail = at < 0 ? 'equal' : `first difference at device offset ${offset + at}: got ${got[at]}, want ${model[offset + at]}`;
      expect(at, `${what}: ${detail}`).toBe(-1);
    }

    const expectWholeDevice = (what = 'whole device'): Promise<void> => expectRange(0, size, what);

    it('has a name and a size that I/O does not change', async () => {
      expect(typeof dev.name).toBe('string');
      expect(dev.name.length).toBeGreaterThan(0);
      await write(0, fill(4096, 1));
      expect(dev.size).toBe(size);
    });

    it('a fresh device reads zeros, also across the boundary', async () => {
      await expectWholeDevice('fresh device');
      await expectRange(B - 1, 2, 'the two bytes around the boundary');
      await expectRange(size - 1, 1, 'the last byte');
    });

    it('reads back writes at aligned offsets', async () => {
      await write(0, fill(4096, 2));
      await write(8192, fill(65536, 3));
      await write(B, fill(4096, 4));
      await write(size - 4096, fill(4096, 5));
      await expectRange(8192, 65536, 'aligned 64 KiB');
      await expectWholeDevice();
    });

    it('reads back writes at unaligned offsets and lengths', async () => {
      const ops: [number, number][] = [[1, 1], [4097, 5000], [12345, 54321], [B - 3, 7], [B + 511, 513], [size - 3, 3]];
      for (const [i, [off, len]] of ops.entries()) await write(off, fill(len, 10 + i));
      for (const [off, len] of ops) await expectRange(off, len, `unaligned ${off}+${len}`);
      await expectRange(3, 20_000, 'an unaligned read over several writes');
      await expectWholeDevice();
    });

    it('reads back writes that cross the boundary, read in other splits', async () => {
      await write(B - 1000, fill(5000, 20));
      await write(B - 65536 - 17, fill(65536 + 33, 21)); // ends just past B, overlapping the first
      if (2 * B + 100 <= size) await write(B - 100, fill(B + 200, 22)); // crosses two boundaries
      await expectRange(B - 1, 2, 'two bytes around the boundary');
      await expectRange(B - 4096, 8192, 'aligned read across the boundary');
      await expectRange(B - 70_000, 140_001, 'unaligned read across the boundary');
      await expectWholeDevice();
    });

    it('reads back a write of the whole device, and later writes win over earlier ones', async () => {
      await write(0, fill(size, 30));
      await expectWholeDevice('after writing the whole device');
      await write(B - 10, fill(20, 31));
      await write(B - 5, fill(10, 32));
      await expectRange(B - 10, 20, 'the later overlapping write');
      await expectWholeDevice();
    });

    it('a FUA write reads back', async () => {
      await write(B - 512, fill(1024, 40), true);
      await write(7, fill(9, 41), true);
      await expectWholeDevice();
    });

    it('flush resolves on a fresh device, after writes, and twice at once; the data stays', async () => {
      await dev.flush();
      await write(4096, fill(8192, 50));
      await write(B - 4096, fill(8192, 51));
      await dev.flush();
      await Promise.all([dev.flush(), dev.flush()]);
      await expectWholeDevice();
    });

    it('writeZeroes reads back as zeros without touching the neighbours', async () => {
      await write(B - 65536, fill(131072, 60));
      await dev.writeZeroes(B - 5000, 10_001, false);
      model.fill(0, B - 5000, B + 5001);
      await dev.writeZeroes(B - 65536 + 1, 1, true);
      model.fill(0, B - 65536 + 1, B - 65536 + 2);
      await dev.writeZeroes(size - 8192, 8192, false); // never written: stays zero
      await expectRange(B - 5001, 10_003, 'the zeroed range and a byte each side');
      await expectWholeDevice();
    });

    it('discard reads back as zeros without touching the neighbours', async () => {
      await write(B - 65536, fill(131072, 70));
      await dev.discard(B - 4096, 8192);
      model.fill(0, B - 4096, B + 4096);
      await dev.discard(B + 12_345, 777);
      model.fill(0, B + 12_345, B + 13_122);
      await dev.discard(0, 4096); // never written: stays zero
      await expectRange(B - 4097, 8194, 'the discarded range and a byte each side');
      await expectWholeDevice();
    });

    it('zero-length requests resolve and change nothing, also at the end', async () => {
      await write(size - 4096, fill(4096, 80));
      expect((await dev.read(0, 0)).length).toBe(0);
      expect((await dev.read(size, 0)).length).toBe(0);
      await dev.write(size, Buffer.alloc(0), false);
      await dev.writeZeroes(size - 100, 0, false);
      await dev.discard(size, 0);
      await expectWholeDevice();
    });

    it('readInto, when offered, fills the caller\'s buffer across the boundary and returns it', async (ctx) => {
      const readInto = dev.readInto?.bind(dev);
      if (readInto === undefined) return ctx.skip('this device offers no readInto');
      await write(B - 100_000, fill(200_000, 90));
      const backing = Buffer.alloc(300_000, 0xcc);
      const view = backing.subarray(100, 180_101);
      // Compared by identity and index, never handed to expect() whole (a diff of big buffers takes minutes).
      const returned = await readInto(B - 90_000, view);
      expect(returned === view, 'readInto resolves with dest itself').toBe(true);
      expect(firstDifference(view, model.subarray(B - 90_000, B + 90_001)), 'first byte of dest that differs').toBe(-1);
      expect(backing[99]).toBe(0xcc);
      expect(backing[180_101]).toBe(0xcc);
      // Nothing touches dest once the promise settled.
      const snapshot = Buffer.from(view);
      await write(B - 90_000, fill(180_001, 91));
      await new Promise((r) => setTimeout(r, 20));
      expect(view.equals(snapshot)).toBe(true);
      // Out of range: rejected, dest untouched.
      const dest = Buffer.alloc(16, 0xab);
      await expect(readInto(size - 8, dest)).rejects.toBeInstanceOf(InvalidArgumentError);
      expect(dest.equals(Buffer.alloc(16, 0xab))).toBe(true);
      expect((await readInto(size, Buffer.alloc(0))).length).toBe(0);
      await expectWholeDevice();
    });

    it('out-of-range and malformed requests reject with InvalidArgumentError and change nothing', async () => {
      await write(0, fill(4096, 100));
      await write(size - 4096, fill(4096, 101));
      const refused: [string, () => Promise<unknown>][] = [
        ['read past the end', () => dev.read(size - 10, 11)],
        ['read at the end', () => dev.read(size, 1)],
        ['read of the whole device plus one', () => dev.read(0, size + 1)],
        ['read at a negative offset', () => dev.read(-1, 1)],
        ['read of a negative length', () => dev.read(0, -1)],
        ['read at a fractional offset', () => dev.read(0.5, 10)],
        ['read of a fractional length', () => dev.read(0, 1.5)],
        ['read at offset NaN', () => dev.read(Number.NaN, 1)],
        ['write past the end', () => dev.write(size - 10, Buffer.alloc(11, 0xee), false)],
        ['FUA write past the end', () => dev.write(size - 1, Buffer.alloc(2, 0xee), true)],
        ['write at a negative offset', () => dev.write(-1, Buffer.alloc(10, 0xee), false)],
        ['writeZeroes past the end', () => dev.writeZeroes(size - 10, 11, false)],
        ['writeZeroes at a negative offset', () => dev.writeZeroes(-1, 10, true)],
        ['writeZeroes of a negative length', () => dev.writeZeroes(10, -1, false)],
        ['writeZeroes of an infinite length', () => dev.writeZeroes(0, Number.POSITIVE_INFINITY, false)],
        ['discard past the end', () => dev.discard(size - 10, 11)],
        ['discard at a negative offset', () => dev.discard(-4096, 8192)],
        ['discard beyond the end', () => dev.discard(size + 4096, 4096)],
      ];
      for (const [what, request] of refused) {
        const err = await request().then(() => undefined, (e: unknown) => e);
        expect(err, `${what}: must reject`).toBeDefined();
        expect(err, `${what}: rejected with ${String(err)}`).toBeInstanceOf(InvalidArgumentError);
      }
      await expectWholeDevice('after the refused requests');
    });

    it('concurrent writes to disjoint ranges, some across the boundary, all land', async () => {
      const rand = rng(7);
      const ranges: [number, number][] = [[B - 3000, 6000], [B - 70_000, 60_000], [B + 3000, 65_536]];
      for (let off = 4096; ranges.length < 32;) {
        const len = 1 + Math.floor(rand() * 20_000);
        if (off + len > B - 70_000) break;
        ranges.push([off, len]);
        off += len + Math.floor(rand() * 3000);
      }
      const datas = ranges.map(([, len], i) => fill(len, 200 + i));
      await Promise.all(ranges.map(([off], i) => dev.write(off, datas[i]!, i % 3 === 0)));
      ranges.forEach(([off], i) => datas[i]!.copy(model, off));
      await expectWholeDevice();
    });

    it('concurrent writes, zeroes, discards and reads on disjoint ranges all do their part', async () => {
      await write(0, fill(size, 300));
      const quarter = Math.floor(B / 4);
      const ops = [
        write(0, fill(quarter, 301)),
        dev.writeZeroes(quarter, quarter, false).then(() => model.fill(0, quarter, 2 * quarter)),
        dev.discard(2 * quarter, quarter).then(() => model.fill(0, 2 * quarter, 3 * quarter)),
        write(B - 4096, fill(8192, 302), true),
        dev.writeZeroes(B + 8192, 4096, true).then(() => model.fill(0, B + 8192, B + 12_288)),
      ];
      const untouched = Buffer.from(model.subarray(size - 4096));
      const read = dev.read(size - 4096, 4096);
      await Promise.all(ops);
      expect((await read).equals(untouched)).toBe(true);
      await expectWholeDevice();
    });

    it('does not keep a write\'s buffer after the promise settled, nor share a read\'s', async () => {
      const data = fill(8192, 400);
      await dev.write(B - 4096, data, false);
      data.copy(model, B - 4096);
      data.fill(0xee); // the caller recycles its buffer
      const batch = [0, 1, 2, 3].map((i) => fill(4096, 401 + i));
      await Promise.all(batch.map((d, i) => dev.write(i * 8192, d, i === 0)));
      batch.forEach((d, i) => { d.copy(model, i * 8192); d.fill(0x11); });
      await new Promise((r) => setTimeout(r, 20));
      await expectWholeDevice('after the callers overwrote their write buffers');
      // A read's buffer belongs to the caller: scribbling on it changes nothing.
      const got = await dev.read(B - 4096, 8192);
      got.fill(0x77);
      await expectRange(B - 4096, 8192, 'after the caller scribbled on a read buffer');
    });
  });
}

function firstDifference(a: Buffer, b: Buffer): number {
  if (a.equals(b)) return -1;
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return n;
}
