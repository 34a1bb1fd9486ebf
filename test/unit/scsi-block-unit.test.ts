// createBlockUnit over an in-memory BlockDevice, driven with hand-built CDBs:
// unit attentions, INQUIRY and VPD pages, capacity, REPORT LUNS, mode
// parameters, REQUEST SENSE, REPORT SUPPORTED OPERATION CODES, error mapping
// from the device, and aborts.

import { describe, expect, it } from 'vitest';
import { InvalidArgumentError, IoError, StaleEpochError } from '../../shared/errors.js';
import { createBlockUnit } from '../../head-agent/frontend/scsi/block-unit.js';
import { ScsiStatus, type LogicalUnit, type ScsiResult } from '../../head-agent/frontend/scsi/types.js';
import { MemoryDevice } from '../harness/memory-device.js';

// --- test double and helpers ----------------------------------------------


const NEXUS = 'iqn.2026-11.test:host1,i,0x230000000001';

interface RunOpts { nexus?: string; dataOut?: Buffer; expectedLength?: number; signal?: AbortSignal; lun?: number }

function run(lu: LogicalUnit, cdb: number[] | Buffer, o: RunOpts = {}): Promise<ScsiResult> {
  return lu.execute({
    lun: o.lun ?? 0,
    cdb: Buffer.isBuffer(cdb) ? cdb : Buffer.from(cdb),
    nexus: o.nexus ?? NEXUS,
    dataOut: o.dataOut,
    expectedLength: o.expectedLength ?? 1 << 20,
    taskTag: 1,
    signal: o.signal ?? new AbortController().signal,
  });
}

function senseOf(r: ScsiResult): [number, number, number] {
  expect(r.status).toBe(ScsiStatus.CHECK_CONDITION);
  const s = r.sense!;
  return [s[2]! & 0x0f, s[12]!, s[13]!];
}

/** A unit whose first nexus has already consumed its power-on unit attention. */
async function unit(size = 4 << 20): Promise<{ lu: LogicalUnit; dev: MemoryDevice }> {
  const dev = new MemoryDevice(size);
  const lu = createBlockUnit(dev, { volumeId: 7, volumeName: 'vol7' });
  await run(lu, [0, 0, 0, 0, 0, 0]);
  return { lu, dev };
}

const TUR = [0x00, 0, 0, 0, 0, 0];
const inquiryCdb = (evpd: number, page: number, alloc: number): number[] => [0x12, evpd, page, alloc >> 8, alloc & 0xff, 0];
const read10 = (lba: number, n: number): number[] => [0x28, 0, lba >>> 24, (lba >> 16) & 0xff, (lba >> 8) & 0xff, lba & 0xff, 0, n >> 8, n & 0xff, 0];
const write10 = (lba: number, n: number): number[] => [0x2a, 0, lba >>> 24, (lba >> 16) & 0xff, (lba >> 8) & 0xff, lba & 0xff, 0, n >> 8, n & 0xff, 0];

// --- tests -------------------------------------------------------------------

describe('unit attention', () => {
  it('a new nexus gets POWER ON/RESET once; INQUIRY and REPORT LUNS do not consume it', async () => {
    const lu = createBlockUnit(new MemoryDevice(1 << 20), { volumeId: 1, volumeName: 'v' });
    expect((await run(lu, inquiryCdb(0, 0, 96))).status).toBe(ScsiStatus.GOOD);
    expect((await run(lu, [0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0])).status).toBe(ScsiStatus.GOOD);
    expect(senseOf(await run(lu, TUR))).toEqual([0x06, 0x29, 0x00]);
    expect((await run(lu, TUR)).status).toBe(ScsiStatus.GOOD);
    // Another nexus has its own.
    expect(senseOf(await run(lu, TUR, { nexus: 'other' }))).toEqual([0x06, 0x29, 0x00]);
  });

  it('REQUEST SENSE returns the pending unit attention and clears it, then NO SENSE', async () => {
    const lu = createBlockUnit(new MemoryDevice(1 << 20), { volumeId: 1, volumeName: 'v' });
    const r = await run(lu, [0x03, 0, 0, 0, 252, 0]);
    expect(r.status).toBe(ScsiStatus.GOOD);
    expect([r.dataIn![2]! & 0x0f, r.dataIn![12], r.dataIn![13]]).toEqual([0x06, 0x29, 0x00]);
    expect((await run(lu, TUR)).status).toBe(ScsiStatus.GOOD);
    const none = await run(lu, [0x03, 0, 0, 0, 8, 0]);
    expect(none.dataIn!.length).toBe(8); // truncated to the allocation length
    expect([none.dataIn![0], none.dataIn![2]]).toEqual([0x70, 0x00]);
    expect(senseOf(await run(lu, [0x03, 1, 0, 0, 252, 0]))).toEqual([0x05, 0x24, 0x00]); // DESC=1 unsupported
  });

  it('LUN reset gives every known nexus a reset condition; a lost nexus starts afresh', async () => {
    const { lu } = await unit();
    await run(lu, TUR, { nexus: 'B' });
    lu.reset('lun');
    expect(senseOf(await run(lu, read10(0, 1)))).toEqual([0x06, 0x29, 0x00]);
    expect(senseOf(await run(lu, TUR, { nexus: 'B' }))).toEqual([0x06, 0x29, 0x00]);
    expect((await run(lu, read10(0, 1))).status).toBe(ScsiStatus.GOOD);
    lu.nexusLost(NEXUS);
    expect(senseOf(await run(lu, TUR))).toEqual([0x06, 0x29, 0x00]);
  });
});

describe('INQUIRY', () => {
  it('standard data truncates to every allocation length', async () => {
    const { lu } = await unit();
    const full = (await run(lu, inquiryCdb(0, 0, 255))).dataIn!;
    expect(full.length).toBe(96);
    for (const n of [0, 1, 5, 36, 95]) {
      const r = await run(lu, inquiryCdb(0, 0, n));
      expect(r.status).toBe(ScsiStatus.GOOD);
      expect(r.dataIn!.equals(full.subarray(0, n))).toBe(true);
    }
  });

  it('lists and serves every supported VPD page; rejects others and a page code without EVPD', async () => {
    const { lu } = await unit();
    const sup = (await run(lu, inquiryCdb(1, 0, 255))).dataIn!;
    const pages = [...sup.subarray(4, 4 + sup.readUInt16BE(2))];
    expect(pages).toEqual([0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2]);
    for (const pg of pages) {
      const r = await run(lu, inquiryCdb(1, pg, 255));
      expect(r.dataIn![1]).toBe(pg);
      expect(r.dataIn!.length).toBe(4 + r.dataIn!.readUInt16BE(2));
    }
    expect(senseOf(await run(lu, inquiryCdb(1, 0x89, 255)))).toEqual([0x05, 0x24, 0x00]);
    expect(senseOf(await run(lu, inquiryCdb(0, 0x80, 255)))).toEqual([0x05, 0x24, 0x00]);
  });

  it('device identification: NAA 6 and T10 vendor id, stable for the same volume id', async () => {
    const ids = async (volumeId: number): Promise<Buffer> => {
      const lu = createBlockUnit(new MemoryDevice(1 << 20), { volumeId, volumeName: 'same' });
      return (await run(lu, inquiryCdb(1, 0x83, 255))).dataIn!;
    };
    const a = await ids(11);
    expect((await ids(11)).equals(a)).toBe(true);
    expect((await ids(12)).equals(a)).toBe(false);
    // First designator: binary, LU, NAA, 16 bytes, NAA=6.
    expect([a[4]! & 0x0f, a[5]! & 0x3f, a[7], a[8]! >> 4]).toEqual([0x01, 0x03, 16, 6]);
    const t10 = 4 + 4 + 16;
    expect([a[t10]! & 0x0f, a[t10 + 1]! & 0x0f]).toEqual([0x02, 0x01]);
    expect(a.subarray(t10 + 4, t10 + 12).toString()).toBe('VASTSKY ');
    // Relative target port designator (association target port, type 4).
    const rtp = t10 + 4 + a[t10 + 3]!;
    expect([a[rtp + 1]! & 0x3f, a.readUInt16BE(rtp + 6)]).toEqual([0x14, 1]);
  });

  it('block limits, characteristics and provisioning pages carry the advertised limits', async () => {
    const { lu } = await unit();
    const bl = (await run(lu, inquiryCdb(1, 0xb0, 255))).dataIn!;
    expect(bl.readUInt16BE(2)).toBe(0x3c);
    expect(bl[4]! & 1).toBe(1); // WSNZ
    expect(bl[5]).toBe(255); // MAXIMUM COMPARE AND WRITE LENGTH
    expect(bl.readUInt32BE(8)).toBe(65536); // 32 MiB of 512-byte blocks
    expect(bl.readUInt32BE(20)).toBeGreaterThan(0); // MAXIMUM UNMAP LBA COUNT
    expect(bl.readUInt32BE(24)).toBeGreaterThan(0); // MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT
    expect(bl.readUInt32BE(28)).toBe(8); // OPTIMAL UNMAP GRANULARITY: one 4 KiB physical block
    const bdc = (await run(lu, inquiryCdb(1, 0xb1, 255))).dataIn!;
    expect(bdc.readUInt16BE(4)).toBe(1); // non-rotating
    const lbp = (await run(lu, inquiryCdb(1, 0xb2, 255))).dataIn!;
    expect(lbp[5]! & 0xe4).toBe(0xe4); // LBPU, LBPWS, LBPWS10, LBPRZ
    expect(lbp[6]! & 0x07).toBe(2); // thin
  });
});

describe('capacity and LUNs', () => {
  it('READ CAPACITY(10) and (16) report geometry and provisioning', async () => {
    const { lu } = await unit(4 << 20);
    const rc10 = (await run(lu, [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0])).dataIn!;
    expect([rc10.readUInt32BE(0), rc10.readUInt32BE(4)]).toEqual([8191, 512]);
    expect(senseOf(await run(lu, [0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0]))).toEqual([0x05, 0x24, 0x00]);
    const cdb16 = [0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0];
    const rc16 = (await run(lu, cdb16)).dataIn!;
    expect(rc16.length).toBe(32);
    expect(rc16.readBigUInt64BE(0)).toBe(8191n);
    expect(rc16.readUInt32BE(8)).toBe(512);
    expect(rc16[13]! & 0x0f).toBe(3); // 8 logical blocks per physical block
    expect(rc16[14]! & 0xc0).toBe(0xc0); // LBPME, LBPRZ
    const short = await run(lu, [0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 0, 0]);
    expect(short.dataIn!.equals(rc16.subarray(0, 15))).toBe(true);
  });

  it('a 4096-byte logical block unit has one logical block per physical block', async () => {
    const lu = createBlockUnit(new MemoryDevice(1 << 20), { volumeId: 1, volumeName: 'v', blockSize: 4096 });
    await run(lu, TUR);
    const rc16 = (await run(lu, [0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0])).dataIn!;
    expect([Number(rc16.readBigUInt64BE(0)), rc16.readUInt32BE(8), rc16[13]! & 0x0f]).toEqual([255, 4096, 0]);
  });

  it('REPORT LUNS lists this LUN; well-known selection lists none; bad select or short allocation fail', async () => {
    const { lu } = await unit();
    const r = (await run(lu, [0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0], { lun: 3 })).dataIn!;
    expect(r.readUInt32BE(0)).toBe(8);
    expect([...r.subarray(8, 16)]).toEqual([0, 3, 0, 0, 0, 0, 0, 0]);
    expect((await run(lu, [0xa0, 0, 1, 0, 0, 0, 0, 0, 0, 64, 0, 0])).dataIn!.readUInt32BE(0)).toBe(0);
    expect(senseOf(await run(lu, [0xa0, 0, 7, 0, 0, 0, 0, 0, 0, 64, 0, 0]))).toEqual([0x05, 0x24, 0x00]);
    expect(senseOf(await run(lu, [0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 0, 0]))).toEqual([0x05, 0x24, 0x00]);
  });
});

describe('mode parameters', () => {
  const sense6 = (page: number, pc = 0, dbd = 0): number[] => [0x1a, dbd ? 0x08 : 0, (pc << 6) | page, 0, 255, 0];

  it('MODE SENSE(6)/(10) report WCE and DPOFUA; saved values are unsupported', async () => {
    const { lu } = await unit();
    const ms6 = (await run(lu, sense6(0x08, 0, 1))).dataIn!;
    expect([ms6[0], ms6[2], ms6[3], ms6[4], ms6[6]! & 0x04]).toEqual([ms6.length - 1, 0x10, 0, 0x08, 0x04]);
    const ms10 = (await run(lu, [0x5a, 0x10, 0x3f, 0, 0, 0, 0, 0x01, 0, 0])).dataIn!;
    expect(ms10.readUInt16BE(0)).toBe(ms10.length - 2);
    expect(ms10[4]! & 1).toBe(1); // LONGLBA block descriptor
    expect(ms10.readUInt16BE(6)).toBe(16);
    expect(senseOf(await run(lu, sense6(0x08, 3)))).toEqual([0x05, 0x39, 0x00]);
    expect(senseOf(await run(lu, sense6(0x05)))).toEqual([0x05, 0x24, 0x00]);
  });

  it('MODE SELECT clearing WCE makes every write FUA; SWP makes writes fail with DATA PROTECT', async () => {
    const { lu, dev } = await unit();
    const caching = (await run(lu, sense6(0x08, 0, 1))).dataIn!;
    const list = Buffer.from(caching);
    list[0] = 0;
    list[4 + 2] &= ~0x04;
    const sel = await run(lu, [0x15, 0x10, 0, 0, list.length, 0], { dataOut: list });
    expect(sel.status).toBe(ScsiStatus.GOOD);
    await run(lu, write10(0, 1), { dataOut: Buffer.alloc(512, 1) });
    expect(dev.calls.at(-1)).toBe('write-fua 0 512');
    // Another nexus is told the parameters changed.
    await run(lu, TUR, { nexus: 'B' });
    const control = (await run(lu, sense6(0x0a, 0, 1))).dataIn!;
    const swp = Buffer.from(control);
    swp[0] = 0;
    swp[4 + 4] |= 0x08;
    expect((await run(lu, [0x15, 0x10, 0, 0, swp.length, 0], { dataOut: swp })).status).toBe(ScsiStatus.GOOD);
    expect(senseOf(await run(lu, TUR, { nexus: 'B' }))).toEqual([0x06, 0x2a, 0x01]);
    expect((await run(lu, sense6(0x3f))).dataIn![2]! & 0x80).toBe(0x80); // WP
    expect(senseOf(await run(lu, write10(0, 1), { dataOut: Buffer.alloc(512) }))).toEqual([0x07, 0x27, 0x00]);
    expect((await run(lu, read10(0, 1))).status).toBe(ScsiStatus.GOOD);
    // Mode parameters survive a LUN reset (an initiator that chose write-through must stay write-through).
    lu.reset('lun');
    await run(lu, TUR);
    expect(senseOf(await run(lu, write10(0, 1), { dataOut: Buffer.alloc(512) }))).toEqual([0x07, 0x27, 0x00]);
    swp[4 + 4] &= ~0x08;
    expect((await run(lu, [0x15, 0x10, 0, 0, swp.length, 0], { dataOut: swp })).status).toBe(ScsiStatus.GOOD);
    expect((await run(lu, write10(0, 1), { dataOut: Buffer.alloc(512) })).status).toBe(ScsiStatus.GOOD);
    expect(dev.calls.at(-1)).toBe('write-fua 0 512');
  });

  it('MODE SELECT refuses SP, non-changeable bits and short lists', async () => {
    const { lu } = await unit();
    const control = (await run(lu, sense6(0x0a, 0, 1))).dataIn!;
    const list = Buffer.from(control);
    list[0] = 0;
    expect(senseOf(await run(lu, [0x15, 0x11, 0, 0, list.length, 0], { dataOut: list }))).toEqual([0x05, 0x24, 0x00]);
    list[4 + 2] |= 0x04; // D_SENSE
    expect(senseOf(await run(lu, [0x15, 0x10, 0, 0, list.length, 0], { dataOut: list }))).toEqual([0x05, 0x26, 0x00]);
    expect(senseOf(await run(lu, [0x15, 0x10, 0, 0, 20, 0], { dataOut: list.subarray(0, 10) }))).toEqual([0x05, 0x1a, 0x00]);
  });
});

describe('command table and dispatch', () => {
  it('REPORT SUPPORTED OPERATION CODES lists every dispatched command and nothing else', async () => {
    const { lu } = await unit();
    const all = (await run(lu, [0xa3, 0x0c, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0])).dataIn!;
    const n = all.readUInt32BE(0) / 8;
    expect(n).toBeGreaterThan(40);
    for (let i = 0; i < n; i++) {
      const d = all.subarray(4 + 8 * i, 12 + 8 * i);
      const opcode = d[0]!;
      const sa = d.readUInt16BE(2);
      const cdb = Buffer.alloc(d.readUInt16BE(6));
      cdb[0] = opcode;
      if ((d[5]! & 1) !== 0) cdb[1] = sa;
      const r = await run(lu, cdb, { dataOut: Buffer.alloc(0) });
      // Whatever the zeroed CDB means to it, the command is dispatched, never "invalid opcode".
      if (r.status === ScsiStatus.CHECK_CONDITION) expect([r.sense![12], r.sense![13]]).not.toEqual([0x20, 0x00]);
      // One-command form agrees.
      const one = (await run(lu, [0xa3, 0x0c, (d[5]! & 1) !== 0 ? 2 : 1, opcode, sa >> 8, sa & 0xff, 0, 0, 0, 64, 0, 0])).dataIn!;
      expect([one[1]! & 7, one[4]]).toEqual([3, opcode]);
    }
  });

  it('unknown opcodes are INVALID COMMAND OPERATION CODE; unknown service actions INVALID FIELD IN CDB', async () => {
    const { lu } = await unit();
    expect(senseOf(await run(lu, [0xc0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]))).toEqual([0x05, 0x20, 0x00]);
    expect(senseOf(await run(lu, [0x9e, 0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0]))).toEqual([0x05, 0x24, 0x00]);
    expect(senseOf(await run(lu, [0x5e, 0x05, 0, 0, 0, 0, 0, 0, 64, 0]))).toEqual([0x05, 0x24, 0x00]);
  });

  it('NACA in the CONTROL byte is refused; START STOP UNIT is accepted', async () => {
    const { lu } = await unit();
    expect(senseOf(await run(lu, [0x00, 0, 0, 0, 0, 0x04]))).toEqual([0x05, 0x24, 0x00]);
    expect((await run(lu, [0x1b, 0, 0, 0, 0x01, 0])).status).toBe(ScsiStatus.GOOD);
    expect(senseOf(await run(lu, [0x1b, 0, 0, 0, 0x40, 0]))).toEqual([0x05, 0x24, 0x00]);
  });
});

describe('device errors and aborts', () => {
  it('maps IoError, StaleEpochError and InvalidArgumentError to sense', async () => {
    const { lu, dev } = await unit();
    dev.fail = new IoError('no replica');
    expect(senseOf(await run(lu, read10(8, 1)))).toEqual([0x03, 0x11, 0x00]);
    const w = await run(lu, write10(8, 1), { dataOut: Buffer.alloc(512) });
    expect(senseOf(w)).toEqual([0x03, 0x0c, 0x00]);
    expect(w.sense![0]! & 0x80).toBe(0x80); // VALID: INFORMATION holds the LBA
    expect(w.sense!.readUInt32BE(3)).toBe(8);
    expect(senseOf(await run(lu, [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]))).toEqual([0x03, 0x0c, 0x00]);
    dev.fail = new StaleEpochError('fenced');
    expect(senseOf(await run(lu, write10(0, 1), { dataOut: Buffer.alloc(512) }))).toEqual([0x02, 0x04, 0x03]);
    dev.fail = new InvalidArgumentError('beyond the end');
    expect(senseOf(await run(lu, read10(0, 1)))).toEqual([0x05, 0x21, 0x00]);
    dev.fail = new Error('bug');
    expect(senseOf(await run(lu, read10(0, 1)))).toEqual([0x04, 0x44, 0x00]);
  });

  it('a command aborted before it starts issues no I/O', async () => {
    const { lu, dev } = await unit();
    const ac = new AbortController();
    ac.abort();
    const before = dev.calls.length;
    expect((await run(lu, write10(0, 1), { dataOut: Buffer.alloc(512), signal: ac.signal })).status).toBe(ScsiStatus.TASK_ABORTED);
    expect(dev.calls.length).toBe(before);
  });

  it('a command aborted during I/O resolves TASK ABORTED after its device call settles', async () => {
    const { lu, dev } = await unit();
    let open!: () => void;
    const held = new Promise<void>((resolve) => { open = resolve; });
    dev.gate = () => held;
    const ac = new AbortController();
    const pending = run(lu, read10(0, 8), { signal: ac.signal });
    await new Promise((r) => setImmediate(r));
    expect(dev.calls.at(-1)).toBe('read 0 4096');
    ac.abort();
    let settled = false;
    void pending.then(() => { settled = true; });
    await new Promise((r) => setImmediate(r));
    expect(settled).toBe(false); // still waiting for the device
    open();
    expect((await pending).status).toBe(ScsiStatus.TASK_ABORTED);
  });
});
