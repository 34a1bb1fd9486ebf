// An online resize seen from SCSI (head-agent/scsi/block-unit.ts): when the
// device grows, READ CAPACITY(10/16) report the new size and every I_T nexus
// the unit knows gets CAPACITY DATA HAS CHANGED (UNIT ATTENTION, 2A/09) once,
// on its next command; INQUIRY does not consume it, REQUEST SENSE returns and
// clears it; a nexus never seen gets only the power-on condition.

import { describe, expect, it } from 'vitest';
import type { BlockDevice } from '../../head-agent/engine/block-device.js';
import { InvalidArgumentError } from '../../shared/errors.js';
import { createBlockUnit } from '../../head-agent/frontend/scsi/block-unit.js';
import { ScsiStatus, type LogicalUnit, type ScsiResult } from '../../head-agent/frontend/scsi/types.js';

const MiB = 1 << 20;

/** A device whose size the test changes, as LinearVolume.grow() does. */
class GrowingDevice implements BlockDevice {
  readonly name = 'grow';
  private data: Buffer;

  constructor(size: number) {
    this.data = Buffer.alloc(size);
  }

  get size(): number {
    return this.data.length;
  }

  grow(size: number): void {
    const next = Buffer.alloc(size);
    this.data.copy(next);
    this.data = next;
  }

  private check(off: number, len: number): void {
    if (off < 0 || off + len > this.size) throw new InvalidArgumentError('out of range');
  }

  async read(off: number, len: number): Promise<Buffer> {
    this.check(off, len);
    return Buffer.from(this.data.subarray(off, off + len));
  }

  async write(off: number, data: Buffer): Promise<void> {
    this.check(off, data.length);
    data.copy(this.data, off);
  }

  async flush(): Promise<void> {}

  async writeZeroes(off: number, len: number): Promise<void> {
    this.check(off, len);
    this.data.fill(0, off, off + len);
  }

  async discard(off: number, len: number): Promise<void> {
    await this.writeZeroes(off, len);
  }
}

const A = 'iqn.2026-11.test:a,i,0x230000000001';
const B = 'iqn.2026-11.test:b,i,0x230000000002';

function run(lu: LogicalUnit, cdb: number[], nexus = A, dataOut?: Buffer): Promise<ScsiResult> {
  return lu.execute({
    lun: 0, cdb: Buffer.from(cdb), nexus, dataOut, expectedLength: 1 << 20, taskTag: 1, signal: new AbortController().signal,
  });
}

function senseOf(r: ScsiResult): [number, number, number] {
  expect(r.status).toBe(ScsiStatus.CHECK_CONDITION);
  const s = r.sense!;
  return [s[2]! & 0x0f, s[12]!, s[13]!];
}

const TUR = [0, 0, 0, 0, 0, 0];
const INQUIRY = [0x12, 0, 0, 0, 96, 0];
const READ_CAPACITY_10 = [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0];
const READ_CAPACITY_16 = [0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0];
const REQUEST_SENSE = [0x03, 0, 0, 0, 252, 0];
const read10 = (lba: number, n: number): number[] => [0x28, 0, lba >>> 24, (lba >> 16) & 0xff, (lba >> 8) & 0xff, lba & 0xff, 0, n >> 8, n & 0xff, 0];
const write10 = (lba: number, n: number): number[] => [0x2a, 0, lba >>> 24, (lba >> 16) & 0xff, (lba >> 8) & 0xff, lba & 0xff, 0, n >> 8, n & 0xff, 0];
const CAPACITY_CHANGED: [number, number, number] = [0x06, 0x2a, 0x09];

/** READ CAPACITY(16): number of blocks (last LBA + 1). */
async function blocks16(lu: LogicalUnit, nexus = A): Promise<number> {
  const r = await run(lu, READ_CAPACITY_16, nexus);
  expect(r.status).toBe(ScsiStatus.GOOD);
  return Number(r.dataIn!.readBigUInt64BE(0)) + 1;
}

/** A unit over a 4 MiB device whose nexuses A and B consumed their power-on condition. */
async function unit(): Promise<{ lu: LogicalUnit; dev: GrowingDevice }> {
  const dev = new GrowingDevice(4 * MiB);
  const lu = createBlockUnit(dev, { volumeId: 3, volumeName: 'v3' });
  for (const n of [A, B]) expect(senseOf(await run(lu, TUR, n))).toEqual([0x06, 0x29, 0x00]);
  return { lu, dev };
}

describe('capacity change (online resize)', () => {
  it('every known nexus gets 2A/09 once on its next command, then READ CAPACITY(10/16) report the new size', async () => {
    const { lu, dev } = await unit();
    expect(await blocks16(lu)).toBe(8192);
    dev.grow(12 * MiB);
    // INQUIRY does not consume it (SAM-5 5.14).
    expect((await run(lu, INQUIRY)).status).toBe(ScsiStatus.GOOD);
    expect(senseOf(await run(lu, READ_CAPACITY_10))).toEqual(CAPACITY_CHANGED);
    const rc10 = await run(lu, READ_CAPACITY_10);
    expect(rc10.status).toBe(ScsiStatus.GOOD);
    expect(rc10.dataIn!.readUInt32BE(0)).toBe(12 * MiB / 512 - 1);
    expect(rc10.dataIn!.readUInt32BE(4)).toBe(512);
    expect(await blocks16(lu)).toBe(12 * MiB / 512);
    // B gets its own, on whatever command comes next, once.
    expect(senseOf(await run(lu, read10(0, 1), B))).toEqual(CAPACITY_CHANGED);
    expect((await run(lu, read10(0, 1), B)).status).toBe(ScsiStatus.GOOD);
    expect(await blocks16(lu, B)).toBe(12 * MiB / 512);
  });

  it('the new blocks take I/O after the attention; past the new end is still LBA OUT OF RANGE', async () => {
    const { lu, dev } = await unit();
    const oldEnd = 4 * MiB / 512;
    expect(senseOf(await run(lu, read10(oldEnd, 1)))).toEqual([0x05, 0x21, 0x00]);
    dev.grow(8 * MiB);
    expect(senseOf(await run(lu, write10(oldEnd, 1), A, Buffer.alloc(512, 0xab)))).toEqual(CAPACITY_CHANGED);
    expect((await run(lu, write10(oldEnd, 1), A, Buffer.alloc(512, 0xab))).status).toBe(ScsiStatus.GOOD);
    const back = await run(lu, read10(oldEnd, 1));
    expect(back.dataIn!.equals(Buffer.alloc(512, 0xab))).toBe(true);
    expect(senseOf(await run(lu, read10(8 * MiB / 512, 1)))).toEqual([0x05, 0x21, 0x00]);
  });

  it('REQUEST SENSE returns the condition and clears it; two growths before the next command report once', async () => {
    const { lu, dev } = await unit();
    dev.grow(6 * MiB);
    expect(senseOf(await run(lu, TUR, B))).toEqual(CAPACITY_CHANGED); // B noticed it first: A still gets its own
    dev.grow(10 * MiB);
    const rs = await run(lu, REQUEST_SENSE);
    expect(rs.status).toBe(ScsiStatus.GOOD);
    expect([rs.dataIn![2]! & 0x0f, rs.dataIn![12], rs.dataIn![13]]).toEqual(CAPACITY_CHANGED);
    expect((await run(lu, TUR)).status).toBe(ScsiStatus.GOOD); // one pending condition, not two
    expect(await blocks16(lu)).toBe(10 * MiB / 512);
    // B saw the first growth; the second is a new change for it.
    expect(senseOf(await run(lu, TUR, B))).toEqual(CAPACITY_CHANGED);
    expect((await run(lu, TUR, B)).status).toBe(ScsiStatus.GOOD);
  });

  it('a nexus that first appears after the growth gets the power-on condition only', async () => {
    const { lu, dev } = await unit();
    dev.grow(8 * MiB);
    expect((await run(lu, TUR)).status).toBe(ScsiStatus.CHECK_CONDITION); // A: 2A/09 (makes the unit notice)
    const C = 'iqn.2026-11.test:c,i,0x230000000003';
    expect(senseOf(await run(lu, TUR, C))).toEqual([0x06, 0x29, 0x00]);
    expect((await run(lu, TUR, C)).status).toBe(ScsiStatus.GOOD);
    expect(await blocks16(lu, C)).toBe(8 * MiB / 512);
  });

  it('no change, no attention: commands go on normally', async () => {
    const { lu } = await unit();
    for (let i = 0; i < 3; i++) expect((await run(lu, TUR)).status).toBe(ScsiStatus.GOOD);
    expect(await blocks16(lu)).toBe(8192);
  });
});
