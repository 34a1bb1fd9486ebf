// Persistent reservations and RESERVE(6)/RELEASE(6) through createBlockUnit,
// across two I_T nexuses: registration, reservation access rules, conflicts,
// preemption with its unit attentions, PERSISTENT RESERVE IN data, and what
// resets and nexus loss release.

import { describe, expect, it } from 'vitest';
import { createBlockUnit } from '../../head-agent/frontend/scsi/block-unit.js';
import { ScsiStatus, type LogicalUnit, type ScsiResult } from '../../head-agent/frontend/scsi/types.js';
import { MemoryDevice } from '../harness/memory-device.js';


const A = 'iqn.2026-11.test:a,i,0x230000000001';
const B = 'iqn.2026-11.test:b,i,0x230000000002';
const C = 'iqn.2026-11.test:c,i,0x230000000003';

function run(lu: LogicalUnit, nexus: string, cdb: number[], dataOut?: Buffer): Promise<ScsiResult> {
  return lu.execute({
    lun: 0, cdb: Buffer.from(cdb), nexus, dataOut, expectedLength: dataOut?.length ?? 65536, taskTag: 1,
    signal: new AbortController().signal,
  });
}

function senseOf(r: ScsiResult): [number, number, number] {
  expect(r.status).toBe(ScsiStatus.CHECK_CONDITION);
  return [r.sense![2]! & 0x0f, r.sense![12]!, r.sense![13]!];
}

async function unit(): Promise<LogicalUnit> {
  const lu = createBlockUnit(new MemoryDevice(1 << 20), { volumeId: 3, volumeName: 'pr' });
  for (const n of [A, B, C]) await run(lu, n, [0, 0, 0, 0, 0, 0]); // consume power-on unit attentions
  return lu;
}

const SA = { REGISTER: 0, RESERVE: 1, RELEASE: 2, CLEAR: 3, PREEMPT: 4, IGNORE: 6 } as const;
const TYPE = { WE: 1, EA: 3, WE_RO: 5, EA_RO: 6, WE_AR: 7, EA_AR: 8 } as const;

function prout(lu: LogicalUnit, nexus: string, sa: number, type: number, key: bigint, saKey = 0n, flags = 0): Promise<ScsiResult> {
  const list = Buffer.alloc(24);
  list.writeBigUInt64BE(key, 0);
  list.writeBigUInt64BE(saKey, 8);
  list[20] = flags;
  return run(lu, nexus, [0x5f, sa, type, 0, 0, 0, 0, 0, 24, 0], list);
}

async function prin(lu: LogicalUnit, nexus: string, sa: number, alloc = 4096): Promise<Buffer> {
  const r = await run(lu, nexus, [0x5e, sa, 0, 0, 0, 0, 0, alloc >> 8, alloc & 0xff, 0]);
  expect(r.status).toBe(ScsiStatus.GOOD);
  return r.dataIn!;
}

const READ1 = [0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0];
const WRITE1 = [0x2a, 0, 0, 0, 0, 1, 0, 0, 1, 0];
const read = (lu: LogicalUnit, n: string): Promise<number> => run(lu, n, READ1).then((r) => r.status);
const write = (lu: LogicalUnit, n: string): Promise<number> => run(lu, n, WRITE1, Buffer.alloc(512)).then((r) => r.status);
const { GOOD, RESERVATION_CONFLICT: CONFLICT } = ScsiStatus;

describe('persistent reservations across nexuses', () => {
  it('registration and READ KEYS with generation; truncated READ KEYS keeps its header', async () => {
    const lu = await unit();
    expect((await prout(lu, A, SA.REGISTER, 0, 0n, 0x1111n)).status).toBe(GOOD);
    expect((await prout(lu, B, SA.IGNORE, 0, 0n, 0x2222n)).status).toBe(GOOD);
    const keys = await prin(lu, C, 0);
    expect([keys.readUInt32BE(0), keys.readUInt32BE(4)]).toEqual([2, 16]);
    expect([keys.readBigUInt64BE(8), keys.readBigUInt64BE(16)]).toEqual([0x1111n, 0x2222n]);
    const short = await prin(lu, C, 0, 12);
    expect(short.length).toBe(12);
    expect(short.readUInt32BE(4)).toBe(16); // ADDITIONAL LENGTH still tells the full size
    // Registering again with a wrong key conflicts.
    expect((await prout(lu, A, SA.REGISTER, 0, 0x9999n, 0x3333n)).status).toBe(CONFLICT);
  });

  it('WRITE EXCLUSIVE: others read but cannot write; the holder does both', async () => {
    const lu = await unit();
    await prout(lu, A, SA.REGISTER, 0, 0n, 1n);
    await prout(lu, B, SA.REGISTER, 0, 0n, 2n);
    expect((await prout(lu, A, SA.RESERVE, TYPE.WE, 1n)).status).toBe(GOOD);
    expect([await read(lu, A), await write(lu, A)]).toEqual([GOOD, GOOD]);
    expect([await read(lu, B), await write(lu, B)]).toEqual([GOOD, CONFLICT]);
    expect([await read(lu, C), await write(lu, C)]).toEqual([GOOD, CONFLICT]);
    // Another nexus cannot reserve; the holder re-reserving the same type is fine.
    expect((await prout(lu, B, SA.RESERVE, TYPE.WE, 2n)).status).toBe(CONFLICT);
    expect((await prout(lu, A, SA.RESERVE, TYPE.WE, 1n)).status).toBe(GOOD);
    expect((await prout(lu, A, SA.RESERVE, TYPE.EA, 1n)).status).toBe(CONFLICT);
    const rr = await prin(lu, C, 1);
    expect([rr.readUInt32BE(4), rr.readBigUInt64BE(8), rr[21]]).toEqual([16, 1n, TYPE.WE]);
  });

  it('EXCLUSIVE ACCESS keeps everyone else out but still allows INQUIRY, TUR, capacity and PR IN', async () => {
    const lu = await unit();
    await prout(lu, A, SA.REGISTER, 0, 0n, 1n);
    await prout(lu, A, SA.RESERVE, TYPE.EA, 1n);
    expect([await read(lu, B), await write(lu, B)]).toEqual([CONFLICT, CONFLICT]);
    expect((await run(lu, B, [0x1a, 0, 0x3f, 0, 255, 0])).status).toBe(CONFLICT); // MODE SENSE
    for (const cdb of [[0, 0, 0, 0, 0, 0], [0x12, 0, 0, 0, 96, 0], [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]]) {
      expect((await run(lu, B, cdb)).status).toBe(GOOD);
    }
    await prin(lu, B, 0);
  });

  it('registrants-only: registered nexuses get access, unregistered ones do not', async () => {
    const lu = await unit();
    await prout(lu, A, SA.REGISTER, 0, 0n, 1n);
    await prout(lu, B, SA.REGISTER, 0, 0n, 2n);
    await prout(lu, A, SA.RESERVE, TYPE.EA_RO, 1n);
    expect([await read(lu, B), await write(lu, B), await read(lu, C), await write(lu, C)]).toEqual([GOOD, GOOD, CONFLICT, CONFLICT]);
    // The holder unregistering releases the reservation and tells B.
    expect((await prout(lu, A, SA.REGISTER, 0, 1n, 0n)).status).toBe(GOOD);
    expect(senseOf(await run(lu, B, [0, 0, 0, 0, 0, 0]))).toEqual([0x06, 0x2a, 0x04]);
    expect((await prin(lu, B, 1)).readUInt32BE(4)).toBe(0);
    expect(await write(lu, C)).toBe(GOOD);
  });

  it('PREEMPT removes the other registration, bumps the generation once, and tells the preempted nexus', async () => {
    const lu = await unit();
    await prout(lu, A, SA.REGISTER, 0, 0n, 0xaan);
    await prout(lu, B, SA.REGISTER, 0, 0n, 0xbbn);
    await prout(lu, A, SA.RESERVE, TYPE.WE, 0xaan);
    const gen = (await prin(lu, C, 0)).readUInt32BE(0);
    expect((await prout(lu, B, SA.PREEMPT, TYPE.EA, 0xbbn, 0xaan)).status).toBe(GOOD);
    const keys = await prin(lu, C, 0);
    expect([keys.readUInt32BE(0), keys.readUInt32BE(4), keys.readBigUInt64BE(8)]).toEqual([gen + 1, 8, 0xbbn]);
    expect(senseOf(await run(lu, A, [0, 0, 0, 0, 0, 0]))).toEqual([0x06, 0x2a, 0x05]);
    expect(await read(lu, A)).toBe(CONFLICT);
    expect(await write(lu, B)).toBe(GOOD);
    const rr = await prin(lu, C, 1);
    expect([rr.readBigUInt64BE(8), rr[21]]).toEqual([0xbbn, TYPE.EA]);
  });

  it('CLEAR from a registrant drops all; from an unregistered nexus it conflicts', async () => {
    const lu = await unit();
    await prout(lu, A, SA.REGISTER, 0, 0n, 1n);
    await prout(lu, B, SA.REGISTER, 0, 0n, 2n);
    await prout(lu, A, SA.RESERVE, TYPE.EA, 1n);
    expect((await prout(lu, C, SA.CLEAR, 0, 0n)).status).toBe(CONFLICT);
    const gen = (await prin(lu, C, 0)).readUInt32BE(0);
    expect((await prout(lu, B, SA.CLEAR, 0, 2n)).status).toBe(GOOD);
    const keys = await prin(lu, C, 0);
    expect([keys.readUInt32BE(0), keys.readUInt32BE(4)]).toEqual([gen + 1, 0]);
    expect(senseOf(await run(lu, A, [0, 0, 0, 0, 0, 0]))).toEqual([0x06, 0x2a, 0x03]);
    expect(await write(lu, C)).toBe(GOOD);
  });

  it('REPORT CAPABILITIES and READ FULL STATUS; bad parameter lists', async () => {
    const lu = await unit();
    const caps = await prin(lu, A, 2);
    expect([caps.readUInt16BE(0), caps[3]! & 0x80, caps[4], caps[5]]).toEqual([8, 0x80, 0xea, 0x01]);
    await prout(lu, A, SA.REGISTER, 0, 0n, 7n);
    await prout(lu, A, SA.RESERVE, TYPE.WE_RO, 7n);
    const fs = await prin(lu, B, 3);
    expect(fs.readBigUInt64BE(8)).toBe(7n);
    expect([fs[8 + 12], fs[8 + 13]]).toEqual([0x01, TYPE.WE_RO]); // R_HOLDER, scope/type
    expect(fs.subarray(8 + 24).toString('latin1')).toContain('iqn.2026-11.test:a,i,0x230000000001');
    expect(senseOf(await run(lu, A, [0x5f, 0, 0, 0, 0, 0, 0, 0, 20, 0], Buffer.alloc(20)))).toEqual([0x05, 0x1a, 0x00]);
    expect(senseOf(await prout(lu, B, SA.REGISTER, 0, 0n, 9n, 0x01))).toEqual([0x05, 0x26, 0x00]); // APTPL
    expect(senseOf(await prout(lu, A, SA.RESERVE, 2, 7n))).toEqual([0x05, 0x24, 0x00]); // type 2 is not valid
  });

  it('registrations and the reservation survive LUN reset and nexus loss', async () => {
    const lu = await unit();
    await prout(lu, A, SA.REGISTER, 0, 0n, 1n);
    await prout(lu, A, SA.RESERVE, TYPE.EA, 1n);
    lu.reset('lun');
    lu.nexusLost(A);
    await run(lu, B, [0, 0, 0, 0, 0, 0]); // reset unit attention
    expect(await read(lu, B)).toBe(CONFLICT);
    expect((await prin(lu, B, 0)).readUInt32BE(4)).toBe(8);
  });
});

describe('RESERVE(6) / RELEASE(6)', () => {
  it('excludes other nexuses except for INQUIRY, TUR, REQUEST SENSE and RELEASE', async () => {
    const lu = await unit();
    expect((await run(lu, A, [0x16, 0, 0, 0, 0, 0])).status).toBe(GOOD);
    expect((await run(lu, A, [0x16, 0, 0, 0, 0, 0])).status).toBe(GOOD);
    expect((await run(lu, B, [0x16, 0, 0, 0, 0, 0])).status).toBe(CONFLICT);
    expect((await run(lu, B, [0x17, 0, 0, 0, 0, 0])).status).toBe(GOOD); // a no-op for a non-holder
    expect((await run(lu, B, [0x1a, 0, 0x3f, 0, 255, 0])).status).toBe(CONFLICT);
    expect(await read(lu, B)).toBe(CONFLICT);
    for (const cdb of [[0, 0, 0, 0, 0, 0], [0x12, 0, 0, 0, 96, 0], [0x03, 0, 0, 0, 18, 0]]) {
      expect((await run(lu, B, cdb)).status).toBe(GOOD);
    }
    expect((await run(lu, A, [0x17, 0, 0, 0, 0, 0])).status).toBe(GOOD);
    expect(await write(lu, B)).toBe(GOOD);
  });

  it('is released by nexus loss and by reset', async () => {
    const lu = await unit();
    await run(lu, A, [0x16, 0, 0, 0, 0, 0]);
    lu.nexusLost(A);
    expect((await run(lu, B, [0x16, 0, 0, 0, 0, 0])).status).toBe(GOOD);
    lu.reset('target');
    await run(lu, C, [0, 0, 0, 0, 0, 0]);
    expect((await run(lu, C, [0x16, 0, 0, 0, 0, 0])).status).toBe(GOOD);
  });

  it('conflicts with persistent registrations, and blocks PERSISTENT RESERVE OUT from others', async () => {
    const lu = await unit();
    await prout(lu, B, SA.REGISTER, 0, 0n, 5n);
    expect((await run(lu, A, [0x16, 0, 0, 0, 0, 0])).status).toBe(CONFLICT);
    await prout(lu, B, SA.REGISTER, 0, 5n, 0n);
    expect((await run(lu, A, [0x16, 0, 0, 0, 0, 0])).status).toBe(GOOD);
    expect((await prout(lu, B, SA.REGISTER, 0, 0n, 6n)).status).toBe(CONFLICT);
  });
});
