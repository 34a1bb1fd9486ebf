// Data commands through createBlockUnit over an in-memory BlockDevice: READ /
// WRITE (6/10/12/16), VERIFY, WRITE AND VERIFY, COMPARE AND WRITE (and its
// atomicity against concurrent writers), WRITE SAME, UNMAP, GET LBA STATUS,
// SYNCHRONIZE CACHE, short Data-Out, and splitting of long ranges.

import { describe, expect, it } from 'vitest';
import { createBlockUnit } from '../../head-agent/frontend/scsi/block-unit.js';
import { ScsiStatus, type LogicalUnit, type ScsiResult } from '../../head-agent/frontend/scsi/types.js';
import { MemoryDevice } from '../harness/memory-device.js';

// --- test double and helpers ----------------------------------------------


const BS = 512;
const NEXUS = 'iqn.2026-11.test:host1,i,0x230000000001';

interface RunOpts { dataOut?: Buffer; expectedLength?: number; signal?: AbortSignal }

function run(lu: LogicalUnit, cdb: number[] | Buffer, o: RunOpts = {}): Promise<ScsiResult> {
  return lu.execute({
    lun: 0,
    cdb: Buffer.isBuffer(cdb) ? cdb : Buffer.from(cdb),
    nexus: NEXUS,
    dataOut: o.dataOut,
    expectedLength: o.expectedLength ?? o.dataOut?.length ?? 64 << 20,
    taskTag: 1,
    signal: o.signal ?? new AbortController().signal,
  });
}

function senseOf(r: ScsiResult): [number, number, number] {
  expect(r.status).toBe(ScsiStatus.CHECK_CONDITION);
  const s = r.sense!;
  return [s[2]! & 0x0f, s[12]!, s[13]!];
}

async function unit(size = 4 << 20, store = true): Promise<{ lu: LogicalUnit; dev: MemoryDevice; blocks: number }> {
  const dev = new MemoryDevice(size, { store, readInto: true });
  const lu = createBlockUnit(dev, { volumeId: 1, volumeName: 'v' });
  await run(lu, [0, 0, 0, 0, 0, 0]); // consume the power-on unit attention
  dev.calls.length = 0;
  return { lu, dev, blocks: size / BS };
}

/** A 10-, 12- or 16-byte block CDB: opcode, byte-1 flags, LBA, length. */
function rw(opcode: number, lba: number, blocks: number, flags = 0): Buffer {
  const len = opcode >= 0xa0 ? 12 : opcode >= 0x80 ? 16 : 10;
  const b = Buffer.alloc(len);
  b[0] = opcode;
  b[1] = flags;
  if (len === 16) {
    b.writeUInt32BE(Math.floor(lba / 2 ** 32), 2);
    b.writeUInt32BE(lba >>> 0, 6);
    b.writeUInt32BE(blocks, 10);
  } else if (len === 12) {
    b.writeUInt32BE(lba, 2);
    b.writeUInt32BE(blocks, 6);
  } else {
    b.writeUInt32BE(lba, 2);
    b.writeUInt16BE(blocks, 7);
  }
  return b;
}

function caw(lba: number, blocks: number): Buffer {
  const b = Buffer.alloc(16);
  b[0] = 0x89;
  b.writeUInt32BE(lba, 6);
  b[13] = blocks;
  return b;
}

function unmapList(extents: Array<[number, number]>): Buffer {
  const b = Buffer.alloc(8 + 16 * extents.length);
  b.writeUInt16BE(b.length - 2, 0);
  b.writeUInt16BE(16 * extents.length, 2);
  extents.forEach(([lba, n], i) => {
    b.writeUInt32BE(lba, 8 + 16 * i + 4);
    b.writeUInt32BE(n, 8 + 16 * i + 8);
  });
  return b;
}

const unmapCdb = (len: number, anchor = 0): number[] => [0x42, anchor, 0, 0, 0, 0, 0, len >> 8, len & 0xff, 0];
const fill = (blocks: number, v: number): Buffer => Buffer.alloc(blocks * BS, v);
const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

// --- tests -------------------------------------------------------------------

describe('READ and WRITE', () => {
  it('round-trips data through every CDB size', async () => {
    const { lu } = await unit();
    const sizes: Array<[number, number]> = [[0x2a, 0x28], [0xaa, 0xa8], [0x8a, 0x88]];
    for (const [w, r] of sizes) {
      const data = Buffer.alloc(3 * BS);
      data.fill(w, 0, BS).fill(w + 1, BS, 2 * BS).fill(w + 2, 2 * BS);
      expect((await run(lu, rw(w, 100, 3), { dataOut: data })).status).toBe(ScsiStatus.GOOD);
      expect((await run(lu, rw(r, 100, 3))).dataIn!.equals(data)).toBe(true);
    }
  });

  it('READ(6)/WRITE(6): transfer length 0 means 256 blocks', async () => {
    const { lu, dev } = await unit();
    const data = fill(256, 9);
    expect((await run(lu, [0x0a, 0, 0, 4, 0, 0], { dataOut: data })).status).toBe(ScsiStatus.GOOD);
    expect(dev.data.subarray(4 * BS, 260 * BS).equals(data)).toBe(true);
    expect((await run(lu, [0x08, 0, 0, 4, 0, 0])).dataIn!.length).toBe(256 * BS);
    expect((await run(lu, [0x08, 0, 0, 4, 2, 0])).dataIn!.length).toBe(2 * BS);
  });

  it('honours FUA, ignores DPO', async () => {
    const { lu, dev } = await unit();
    await run(lu, rw(0x2a, 0, 1, 0x08), { dataOut: fill(1, 1) });
    expect(dev.calls.at(-1)).toBe('write-fua 0 512');
    await run(lu, rw(0x2a, 0, 1, 0x10), { dataOut: fill(1, 1) });
    expect(dev.calls.at(-1)).toBe('write 0 512');
  });

  it('LBA OUT OF RANGE past the end, also for zero-length transfers', async () => {
    const { lu, blocks } = await unit();
    expect(senseOf(await run(lu, rw(0x28, blocks - 1, 2)))).toEqual([0x05, 0x21, 0x00]);
    expect(senseOf(await run(lu, rw(0x88, 2 ** 40, 1)))).toEqual([0x05, 0x21, 0x00]);
    expect(senseOf(await run(lu, rw(0x2a, blocks, 1), { dataOut: fill(1, 0) }))).toEqual([0x05, 0x21, 0x00]);
    expect((await run(lu, rw(0x28, 0, 0))).status).toBe(ScsiStatus.GOOD);
    expect(senseOf(await run(lu, rw(0x28, blocks + 1, 0)))).toEqual([0x05, 0x21, 0x00]);
    expect((await run(lu, rw(0x28, blocks - 1, 1))).status).toBe(ScsiStatus.GOOD);
  });

  it('RDPROTECT/WRPROTECT without protection information and oversize transfers are INVALID FIELD IN CDB', async () => {
    const { lu } = await unit(64 << 20);
    for (const p of [1, 3, 7]) expect(senseOf(await run(lu, rw(0x28, 0, 1, p << 5)))).toEqual([0x05, 0x24, 0x00]);
    expect(senseOf(await run(lu, rw(0x2a, 0, 1, 0x20), { dataOut: fill(1, 0) }))).toEqual([0x05, 0x24, 0x00]);
    const r = await run(lu, rw(0xa8, 0, 65537));
    expect(senseOf(r)).toEqual([0x05, 0x24, 0x00]);
    expect(r.sense!.readUInt16BE(16)).toBe(6); // field pointer: TRANSFER LENGTH
  });

  it('Data-Out shorter than the transfer length writes only the whole blocks received', async () => {
    const { lu, dev } = await unit();
    dev.data.fill(0x61, 0, 2 * BS);
    const r = await run(lu, rw(0x2a, 0, 2), { dataOut: fill(1, 0x62), expectedLength: BS });
    expect(r).toMatchObject({ status: ScsiStatus.GOOD, dataOutLength: 2 * BS });
    expect(dev.data[0]).toBe(0x62);
    expect(dev.data[BS]).toBe(0x61);
    // 200 bytes: no whole block, nothing written, still GOOD (the residual tells the initiator).
    const none = await run(lu, rw(0x2a, 0, 1), { dataOut: Buffer.alloc(200, 0x63), expectedLength: 200 });
    expect(none.status).toBe(ScsiStatus.GOOD);
    expect(dev.data[0]).toBe(0x62);
    // More Data-Out than the CDB asks for: only the CDB's blocks are written.
    await run(lu, rw(0x2a, 0, 1), { dataOut: fill(2, 0x64) });
    expect([dev.data[0], dev.data[BS]]).toEqual([0x64, 0x61]);
  });

  it('a READ that the initiator takes only part of reads only those blocks but keeps the full length', async () => {
    const { lu, dev } = await unit();
    dev.data.fill(5, 0, 4 * BS);
    const r = await run(lu, rw(0x28, 0, 4), { expectedLength: BS + 1 });
    expect(r.dataIn!.length).toBe(4 * BS);
    expect(r.dataIn!.subarray(0, 2 * BS).every((x) => x === 5)).toBe(true);
    expect(dev.calls).toEqual(['readInto 0 1024']);
  });

  it('splits a range larger than one device call into 32 MiB pieces', async () => {
    const { lu, dev } = await unit(96 << 20, false);
    const blocks = (40 << 20) / BS;
    const ws = rw(0x93, 0, blocks);
    expect((await run(lu, ws, { dataOut: Buffer.alloc(BS) })).status).toBe(ScsiStatus.GOOD);
    expect(dev.calls).toEqual([`zero 0 ${32 << 20}`, `zero ${32 << 20} ${8 << 20}`]);
    dev.calls.length = 0;
    expect((await run(lu, rw(0x8f, 0, blocks))).status).toBe(ScsiStatus.GOOD); // VERIFY, BYTCHK=0
    expect(dev.calls.length).toBe(10); // 4 MiB read-back pieces
  });
});

describe('VERIFY and WRITE AND VERIFY', () => {
  it('VERIFY BYTCHK=0 reads the medium; BYTCHK=1 compares and reports the first differing byte', async () => {
    const { lu, dev } = await unit();
    dev.data.fill(7, 0, 8 * BS);
    expect((await run(lu, rw(0x2f, 0, 8))).status).toBe(ScsiStatus.GOOD);
    expect(dev.calls).toEqual(['readInto 0 4096']);
    expect((await run(lu, rw(0x2f, 0, 8, 0x02), { dataOut: fill(8, 7) })).status).toBe(ScsiStatus.GOOD);
    const bad = fill(8, 7);
    bad[3 * BS + 17] = 8;
    const r = await run(lu, rw(0xaf, 0, 8, 0x02), { dataOut: bad });
    expect(senseOf(r)).toEqual([0x0e, 0x1d, 0x00]);
    expect(r.sense![0]! & 0x80).toBe(0x80);
    expect(r.sense!.readUInt32BE(3)).toBe(3 * BS + 17);
    expect(senseOf(await run(lu, rw(0x8f, 8190 - 7, 16)))).toEqual([0x05, 0x21, 0x00]);
  });

  it('WRITE AND VERIFY writes durably then reads back', async () => {
    const { lu, dev } = await unit();
    expect((await run(lu, rw(0x2e, 4, 2, 0x02), { dataOut: fill(2, 3) })).status).toBe(ScsiStatus.GOOD);
    expect(dev.calls).toEqual([`write-fua ${4 * BS} ${2 * BS}`, `readInto ${4 * BS} ${2 * BS}`]);
    expect(dev.data[4 * BS]).toBe(3);
  });
});

describe('COMPARE AND WRITE', () => {
  it('writes the second half when the first matches; on a miscompare writes nothing and reports the offset', async () => {
    const { lu, dev } = await unit();
    dev.data.fill(0x41, 0, 2 * BS);
    const ok = Buffer.concat([fill(2, 0x41), fill(2, 0x42)]);
    expect((await run(lu, caw(0, 2), { dataOut: ok })).status).toBe(ScsiStatus.GOOD);
    expect(dev.data.subarray(0, 2 * BS).every((x) => x === 0x42)).toBe(true);
    const bad = Buffer.concat([fill(2, 0x42), fill(2, 0x43)]);
    bad[2 * BS - 27] = 0x43;
    const r = await run(lu, caw(0, 2), { dataOut: bad });
    expect(senseOf(r)).toEqual([0x0e, 0x1d, 0x00]);
    expect(r.sense!.readUInt32BE(3)).toBe(2 * BS - 27);
    expect(dev.data.subarray(0, 2 * BS).every((x) => x === 0x42)).toBe(true);
  });

  it('refuses a Data-Out that is not exactly twice the blocks, and ranges past the end', async () => {
    const { lu, blocks } = await unit();
    expect(senseOf(await run(lu, caw(0, 1), { dataOut: fill(4, 0) }))).toEqual([0x05, 0x24, 0x00]);
    expect(senseOf(await run(lu, caw(0, 3), { dataOut: fill(4, 0) }))).toEqual([0x05, 0x24, 0x00]);
    expect(senseOf(await run(lu, caw(blocks - 1, 2), { dataOut: fill(4, 0) }))).toEqual([0x05, 0x21, 0x00]);
  });

  it('is atomic: concurrent compare-and-increment loops never lose an update', async () => {
    const { lu, dev } = await unit(1 << 20);
    let seed = 12345;
    const rand = (): number => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) % 4);
    dev.gate = async () => { for (let i = rand(); i > 0; i--) await tick(); };
    const block = (v: number): Buffer => { const b = Buffer.alloc(BS); b.writeUInt32BE(v, 0); return b; };
    const clients = 6;
    const each = 12;
    let tries = 0;
    await Promise.all(Array.from({ length: clients }, async () => {
      for (let done = 0; done < each;) {
        tries++;
        const cur = (await run(lu, rw(0x28, 3, 1))).dataIn!.readUInt32BE(0);
        const r = await run(lu, caw(3, 1), { dataOut: Buffer.concat([block(cur), block(cur + 1)]) });
        if (r.status === ScsiStatus.GOOD) done++;
        else expect(senseOf(r)).toEqual([0x0e, 0x1d, 0x00]);
      }
    }));
    expect(dev.data.readUInt32BE(3 * BS)).toBe(clients * each);
    expect(tries).toBeGreaterThan(clients * each); // there were real races
  });

  it('a WRITE to the same blocks waits until the COMPARE AND WRITE has written', async () => {
    const { lu, dev } = await unit(1 << 20);
    let open!: () => void;
    const held = new Promise<void>((resolve) => { open = resolve; });
    dev.gate = (what) => (what === 'readInto' ? held : Promise.resolve());
    const c = run(lu, caw(0, 1), { dataOut: Buffer.concat([fill(1, 0), fill(1, 1)]) });
    await tick();
    const w = run(lu, rw(0x2a, 0, 2), { dataOut: fill(2, 2) });
    const elsewhere = run(lu, rw(0x2a, 1, 1), { dataOut: fill(1, 3) }); // overlaps the WRITE, not the CAW
    await tick();
    expect(dev.calls.filter((x) => x.startsWith('write'))).toEqual([]);
    open();
    expect((await c).status).toBe(ScsiStatus.GOOD);
    expect((await w).status).toBe(ScsiStatus.GOOD);
    expect((await elsewhere).status).toBe(ScsiStatus.GOOD);
    expect(dev.calls.filter((x) => x.startsWith('write'))).toEqual(['write 0 512', 'write 0 1024', 'write 512 512']);
    expect([dev.data[0], dev.data[BS]]).toEqual([2, 3]);
  });
});

describe('WRITE SAME', () => {
  const ws10 = (lba: number, n: number, flags = 0): Buffer => rw(0x41, lba, n, flags);

  it('replicates a non-zero block; zero blocks become write-zeroes, or discard with UNMAP', async () => {
    const { lu, dev } = await unit();
    const block = Buffer.alloc(BS);
    block.write('pattern');
    expect((await run(lu, ws10(10, 3), { dataOut: block })).status).toBe(ScsiStatus.GOOD);
    for (let i = 10; i < 13; i++) expect(dev.data.subarray(i * BS, (i + 1) * BS).equals(block)).toBe(true);
    dev.calls.length = 0;
    await run(lu, ws10(10, 3), { dataOut: Buffer.alloc(BS) });
    await run(lu, ws10(10, 3, 0x08), { dataOut: Buffer.alloc(BS) });
    expect(dev.calls).toEqual([`zero ${10 * BS} ${3 * BS}`, `discard ${10 * BS} ${3 * BS}`]);
    expect((await run(lu, rw(0x28, 10, 3))).dataIn!.every((x) => x === 0)).toBe(true);
    // UNMAP with a non-zero block must write the data.
    await run(lu, ws10(10, 1, 0x08), { dataOut: block });
    expect(dev.data.subarray(10 * BS, 11 * BS).equals(block)).toBe(true);
  });

  it('writes a large pattern in bounded pieces', async () => {
    const { lu, dev } = await unit(8 << 20);
    const block = Buffer.alloc(BS, 0xee);
    expect((await run(lu, rw(0x93, 0, 5000), { dataOut: block })).status).toBe(ScsiStatus.GOOD);
    expect(dev.calls.length).toBe(Math.ceil(5000 / 2048));
    expect(dev.data.subarray(0, 5000 * BS).every((x) => x === 0xee)).toBe(true);
  });

  it('NDOB writes zeros with no Data-Out', async () => {
    const { lu, dev } = await unit();
    dev.data.fill(1, 0, BS);
    expect((await run(lu, rw(0x93, 0, 1, 0x09))).status).toBe(ScsiStatus.GOOD);
    expect(dev.calls).toEqual(['discard 0 512']);
  });

  it('refuses 0 blocks (WSNZ), ANCHOR, a wrong-sized block, and ranges past the end', async () => {
    const { lu, blocks } = await unit();
    expect(senseOf(await run(lu, ws10(0, 0), { dataOut: Buffer.alloc(BS) }))).toEqual([0x05, 0x24, 0x00]);
    expect(senseOf(await run(lu, ws10(blocks + 1, 0), { dataOut: Buffer.alloc(BS) }))).toEqual([0x05, 0x21, 0x00]);
    expect(senseOf(await run(lu, ws10(0, 1, 0x10), { dataOut: Buffer.alloc(BS) }))).toEqual([0x05, 0x24, 0x00]);
    expect(senseOf(await run(lu, ws10(0, 1, 0x18), { dataOut: Buffer.alloc(BS) }))).toEqual([0x05, 0x24, 0x00]);
    expect(senseOf(await run(lu, ws10(0, 1, 0x08), { dataOut: Buffer.alloc(BS / 2) }))).toEqual([0x05, 0x24, 0x00]);
    expect(senseOf(await run(lu, ws10(0, 1, 0x08), { dataOut: Buffer.alloc(2 * BS) }))).toEqual([0x05, 0x24, 0x00]);
    expect(senseOf(await run(lu, ws10(blocks - 1, 2), { dataOut: Buffer.alloc(BS) }))).toEqual([0x05, 0x21, 0x00]);
  });

  it('stops issuing pieces once aborted', async () => {
    const { lu, dev } = await unit(8 << 20);
    const ac = new AbortController();
    dev.gate = async () => { ac.abort(); };
    const r = await run(lu, rw(0x93, 0, 8192), { dataOut: Buffer.alloc(BS, 1), signal: ac.signal });
    expect(r.status).toBe(ScsiStatus.TASK_ABORTED);
    expect(dev.calls.length).toBe(1);
  });
});

describe('UNMAP and GET LBA STATUS', () => {
  it('discards every described extent; unmapped blocks read back as zeros', async () => {
    const { lu, dev } = await unit();
    dev.data.fill(0xff, 0, 64 * BS);
    const list = unmapList([[0, 8], [16, 0], [40, 3]]);
    expect((await run(lu, unmapCdb(list.length), { dataOut: list })).status).toBe(ScsiStatus.GOOD);
    expect(dev.calls).toEqual([`discard 0 ${8 * BS}`, `discard ${40 * BS} ${3 * BS}`]);
    const back = (await run(lu, rw(0x28, 0, 64))).dataIn!;
    expect(back.subarray(0, 8 * BS).every((x) => x === 0)).toBe(true);
    expect(back.subarray(8 * BS, 40 * BS).every((x) => x === 0xff)).toBe(true);
    expect(back.subarray(40 * BS, 43 * BS).every((x) => x === 0)).toBe(true);
  });

  it('validates the parameter list before unmapping anything', async () => {
    const { lu, dev, blocks } = await unit();
    expect((await run(lu, unmapCdb(0))).status).toBe(ScsiStatus.GOOD);
    expect(senseOf(await run(lu, unmapCdb(6), { dataOut: Buffer.alloc(6) }))).toEqual([0x05, 0x1a, 0x00]);
    const beyond = unmapList([[0, 1], [blocks - 1, 2]]);
    expect(senseOf(await run(lu, unmapCdb(beyond.length), { dataOut: beyond }))).toEqual([0x05, 0x21, 0x00]);
    const many = unmapList(Array.from({ length: 257 }, (_, i): [number, number] => [i, 1]));
    expect(senseOf(await run(lu, unmapCdb(many.length), { dataOut: many }))).toEqual([0x05, 0x26, 0x00]);
    expect(senseOf(await run(lu, unmapCdb(24, 1), { dataOut: unmapList([[0, 1]]) }))).toEqual([0x05, 0x24, 0x00]);
    expect(dev.calls).toEqual([]);
  });

  it('GET LBA STATUS reports one mapped descriptor from the requested LBA; past the end fails', async () => {
    const { lu, blocks } = await unit();
    const gls = (lba: number, alloc = 24): Buffer => {
      const b = rw(0x9e, lba, alloc);
      b[1] = 0x12;
      return b;
    };
    const r = (await run(lu, gls(100))).dataIn!;
    expect(r.readUInt32BE(0)).toBe(20);
    expect(Number(r.readBigUInt64BE(8))).toBe(100);
    expect(r.readUInt32BE(16)).toBe(blocks - 100);
    expect(r[20]! & 0x0f).toBe(0);
    expect((await run(lu, gls(0, 8))).dataIn!.length).toBe(8);
    expect(senseOf(await run(lu, gls(blocks)))).toEqual([0x05, 0x21, 0x00]);
  });
});

describe('SYNCHRONIZE CACHE', () => {
  it('flushes the device; checks the range', async () => {
    const { lu, dev, blocks } = await unit();
    expect((await run(lu, [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0])).status).toBe(ScsiStatus.GOOD);
    expect((await run(lu, rw(0x91, 0, 1))).status).toBe(ScsiStatus.GOOD);
    expect(dev.calls).toEqual(['flush 0 0', 'flush 0 0']);
    expect(senseOf(await run(lu, rw(0x91, blocks, 1)))).toEqual([0x05, 0x21, 0x00]);
  });
});
