// Pure pieces of the SCSI layer: sense data, CDB decoding, the range lock,
// the persistent-reservation state machine, mode pages, INQUIRY pages and
// the supported-command table.

import { describe, expect, it } from 'vitest';
import {
  Asc, SenseError, SenseKey, StatusError, fixedSense, invalidFieldInCdb,
} from '../../head-agent/frontend/scsi/sense.js';
import {
  cdbLengthOf, decodeCompareAndWrite, decodeInquiry, decodeRw, decodeRw6, decodeVerify, decodeWriteSame,
} from '../../head-agent/frontend/scsi/cdb.js';
import { RangeLock } from '../../head-agent/frontend/scsi/range-lock.js';
import {
  PersistentReservations, PrOutAction, PrType, iscsiTransportId, parseProutParams, type ProutParams,
} from '../../head-agent/frontend/scsi/persistent-reservations.js';
import { defaultModeState, modeSelect, modeSense } from '../../head-agent/frontend/scsi/mode-pages.js';
import { standardInquiry, unitIdentity, vpdPage } from '../../head-agent/frontend/scsi/inquiry.js';
import { COMMANDS, findCommand, lookupCdb, reportSupportedOpcodes } from '../../head-agent/frontend/scsi/opcodes.js';
import { ScsiStatus } from '../../head-agent/frontend/scsi/types.js';

function cdb(...bytes: number[]): Buffer {
  return Buffer.from(bytes);
}

function senseOf(fn: () => unknown): { key: number; code: number } {
  try {
    fn();
  } catch (err) {
    if (err instanceof SenseError) return { key: err.sense.key, code: err.sense.code };
    throw err;
  }
  throw new Error('no sense error thrown');
}

describe('fixed-format sense', () => {
  it('lays out response code, key, ASC/ASCQ and length', () => {
    const s = fixedSense({ key: SenseKey.ILLEGAL_REQUEST, code: Asc.LBA_OUT_OF_RANGE });
    expect(s.length).toBe(18);
    expect(s[0]).toBe(0x70); // current error, VALID clear
    expect(s[2]).toBe(0x05);
    expect(s[7]).toBe(10);
    expect([s[12], s[13]]).toEqual([0x21, 0x00]);
    expect(s[15]).toBe(0); // no sense-key specific data
  });

  it('sets VALID and INFORMATION when given, and only when it fits 32 bits', () => {
    const s = fixedSense({ key: SenseKey.MISCOMPARE, code: Asc.MISCOMPARE_DURING_VERIFY, information: 0x1234 });
    expect(s[0]).toBe(0xf0);
    expect(s.readUInt32BE(3)).toBe(0x1234);
    const big = fixedSense({ key: SenseKey.MEDIUM_ERROR, code: Asc.UNRECOVERED_READ_ERROR, information: 2 ** 40 });
    expect(big[0]).toBe(0x70);
  });

  it('encodes the field pointer for INVALID FIELD IN CDB', () => {
    const s = fixedSense(invalidFieldInCdb(2, 5).sense);
    expect(s[15]).toBe(0x80 | 0x40 | 0x08 | 5); // SKSV, C/D, BPV, bit 5
    expect(s.readUInt16BE(16)).toBe(2);
  });
});

describe('CDB decoding', () => {
  it('knows CDB lengths by group code', () => {
    expect([0x00, 0x28, 0x5e, 0x88, 0xa8].map(cdbLengthOf)).toEqual([6, 10, 10, 16, 12]);
  });

  it('READ(6): 21-bit LBA, length 0 means 256', () => {
    expect(decodeRw6(cdb(0x08, 0xff, 0x12, 0x34, 0, 0))).toMatchObject({ lba: 0x1f1234, blocks: 256 });
    expect(decodeRw6(cdb(0x08, 0, 0, 1, 7, 0)).blocks).toBe(7);
  });

  it('READ(10/12/16): protect, DPO, FUA, LBA and length', () => {
    expect(decodeRw(cdb(0x28, 0x38, 0, 0, 1, 0, 0, 0, 9, 0))).toEqual({ lba: 256, blocks: 9, protect: 1, dpo: true, fua: true, bytchk: 0 });
    expect(decodeRw(cdb(0xa8, 0, 0, 0, 0, 5, 0, 1, 0, 0, 0, 0))).toMatchObject({ lba: 5, blocks: 65536 });
    const r16 = Buffer.alloc(16);
    r16[0] = 0x88;
    r16.writeUInt32BE(1, 2);
    r16.writeUInt32BE(2, 6);
    r16.writeUInt32BE(3, 10);
    expect(decodeRw(r16)).toMatchObject({ lba: 2 ** 32 + 2, blocks: 3 });
  });

  it('VERIFY: BYTCHK 10b/11b are refused', () => {
    expect(decodeVerify(cdb(0x2f, 0x02, 0, 0, 0, 0, 0, 0, 1, 0)).bytchk).toBe(1);
    expect(senseOf(() => decodeVerify(cdb(0x2f, 0x04, 0, 0, 0, 0, 0, 0, 1, 0))).code).toBe(Asc.INVALID_FIELD_IN_CDB);
  });

  it('WRITE SAME: UNMAP, ANCHOR, NDOB; obsolete PBDATA/LBDATA refused', () => {
    const ws16 = Buffer.alloc(16);
    ws16[0] = 0x93;
    ws16[1] = 0x09;
    ws16.writeUInt32BE(4, 10);
    expect(decodeWriteSame(ws16)).toMatchObject({ unmap: true, ndob: true, blocks: 4, anchor: false });
    expect(decodeWriteSame(cdb(0x41, 0x10, 0, 0, 0, 0, 0, 0, 1, 0)).anchor).toBe(true);
    expect(senseOf(() => decodeWriteSame(cdb(0x41, 0x02, 0, 0, 0, 0, 0, 0, 1, 0))).code).toBe(Asc.INVALID_FIELD_IN_CDB);
  });

  it('COMPARE AND WRITE: one-byte block count', () => {
    const c = Buffer.alloc(16);
    c[0] = 0x89;
    c[13] = 3;
    c.writeUInt32BE(77, 6);
    expect(decodeCompareAndWrite(c)).toMatchObject({ lba: 77, blocks: 3 });
  });

  it('INQUIRY: a page code without EVPD is invalid', () => {
    expect(decodeInquiry(cdb(0x12, 1, 0x83, 0, 255, 0))).toEqual({ evpd: true, page: 0x83, allocLength: 255 });
    expect(senseOf(() => decodeInquiry(cdb(0x12, 0, 1, 0, 255, 0))).code).toBe(Asc.INVALID_FIELD_IN_CDB);
  });
});

describe('range lock', () => {
  it('lets disjoint ranges through and serializes overlapping ones in arrival order', async () => {
    const lock = new RangeLock();
    const order: string[] = [];
    const a = await lock.acquire(0, 10);
    const disjoint = await lock.acquire(10, 5); // no wait
    expect(disjoint).toBeDefined();
    const b = lock.acquire(5, 10).then((r) => { order.push('b'); return r; });
    const c = lock.acquire(8, 1).then((r) => { order.push('c'); return r; });
    await Promise.resolve();
    expect(order).toEqual([]);
    disjoint!();
    a!();
    (await b)!();
    (await c)!();
    expect(order).toEqual(['b', 'c']);
    expect(lock.size).toBe(0);
  });

  it('a waiter aborted while queued leaves without blocking later disjoint requests', async () => {
    const lock = new RangeLock();
    const held = await lock.acquire(0, 4);
    const ac = new AbortController();
    const waiting = lock.acquire(2, 4, ac.signal);
    const later = lock.acquire(4, 4); // overlaps only the aborted waiter
    ac.abort();
    expect(await waiting).toBeUndefined();
    const r = await later;
    expect(r).toBeDefined();
    r!();
    held!();
    expect(lock.size).toBe(0);
  });

  it('zero-length ranges lock nothing; release is idempotent', async () => {
    const lock = new RangeLock();
    const r = await lock.acquire(0, 0);
    expect(lock.size).toBe(0);
    const s = await lock.acquire(0, 1);
    s!();
    s!();
    expect(lock.size).toBe(0);
    r!();
  });
});

const p = (key: bigint, saKey: bigint): ProutParams => ({ key, saKey, specIPt: false, allTgPt: false, aptpl: false });

function conflictOf(fn: () => unknown): number | undefined {
  try {
    fn();
  } catch (err) {
    if (err instanceof StatusError) return err.status;
    throw err;
  }
  return undefined;
}

describe('persistent reservations state machine', () => {
  it('registers, counts generations, and refuses a wrong key', () => {
    const pr = new PersistentReservations();
    pr.out('A', PrOutAction.REGISTER, 0, 0, p(0n, 0xaan));
    expect(pr.generation).toBe(1);
    expect(conflictOf(() => pr.out('A', PrOutAction.REGISTER, 0, 0, p(0x1n, 0xbbn)))).toBe(ScsiStatus.RESERVATION_CONFLICT);
    pr.out('A', PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY, 0, 0, p(0n, 0xbbn));
    expect(pr.readKeys().readBigUInt64BE(8)).toBe(0xbbn);
    expect(pr.generation).toBe(2);
    // RESERVE and RELEASE do not bump the generation.
    pr.out('A', PrOutAction.RESERVE, 0, PrType.WRITE_EXCLUSIVE, p(0xbbn, 0n));
    pr.out('A', PrOutAction.RELEASE, 0, PrType.WRITE_EXCLUSIVE, p(0xbbn, 0n));
    expect(pr.generation).toBe(2);
  });

  it('applies the SPC-4 access table per reservation type', () => {
    const cases: Array<[number, boolean[]]> = [
      // [type, [registered read, registered write, unregistered read, unregistered write]]
      [PrType.WRITE_EXCLUSIVE, [true, false, true, false]],
      [PrType.EXCLUSIVE_ACCESS, [false, false, false, false]],
      [PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY, [true, true, true, false]],
      [PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY, [true, true, false, false]],
      [PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS, [true, true, true, false]],
      [PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS, [true, true, false, false]],
    ];
    for (const [type, [rr, rw, ur, uw]] of cases) {
      const pr = new PersistentReservations();
      pr.out('A', PrOutAction.REGISTER, 0, 0, p(0n, 1n));
      pr.out('B', PrOutAction.REGISTER, 0, 0, p(0n, 2n));
      pr.out('A', PrOutAction.RESERVE, 0, type, p(1n, 0n));
      expect([pr.conflicts('A', 'read'), pr.conflicts('A', 'write')]).toEqual([false, false]);
      expect([!pr.conflicts('B', 'read'), !pr.conflicts('B', 'write'), !pr.conflicts('C', 'read'), !pr.conflicts('C', 'write')])
        .toEqual([rr, rw, ur, uw]);
    }
  });

  it('unregistering the holder releases the reservation (registrants-only types tell the others)', () => {
    const pr = new PersistentReservations();
    pr.out('A', PrOutAction.REGISTER, 0, 0, p(0n, 1n));
    pr.out('B', PrOutAction.REGISTER, 0, 0, p(0n, 2n));
    pr.out('A', PrOutAction.RESERVE, 0, PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY, p(1n, 0n));
    const uas = pr.out('A', PrOutAction.REGISTER, 0, 0, p(1n, 0n));
    expect(uas).toEqual([{ nexus: 'B', code: Asc.RESERVATIONS_RELEASED }]);
    expect(pr.readReservation().readUInt32BE(4)).toBe(0);
  });

  it('an all-registrants reservation lasts until the last registrant leaves; READ RESERVATION key is 0', () => {
    const pr = new PersistentReservations();
    pr.out('A', PrOutAction.REGISTER, 0, 0, p(0n, 1n));
    pr.out('B', PrOutAction.REGISTER, 0, 0, p(0n, 2n));
    pr.out('A', PrOutAction.RESERVE, 0, PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS, p(1n, 0n));
    pr.out('A', PrOutAction.REGISTER, 0, 0, p(1n, 0n));
    const rr = pr.readReservation();
    expect(rr.readUInt32BE(4)).toBe(16);
    expect(rr.readBigUInt64BE(8)).toBe(0n);
    expect(rr[21]).toBe(PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS);
    pr.out('B', PrOutAction.RELEASE, 0, PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS, p(2n, 0n));
    expect(pr.readReservation().readUInt32BE(4)).toBe(0);
  });

  it('RELEASE with the wrong type is INVALID RELEASE OF PERSISTENT RESERVATION', () => {
    const pr = new PersistentReservations();
    pr.out('A', PrOutAction.REGISTER, 0, 0, p(0n, 1n));
    pr.out('A', PrOutAction.RESERVE, 0, PrType.WRITE_EXCLUSIVE, p(1n, 0n));
    expect(senseOf(() => pr.out('A', PrOutAction.RELEASE, 0, PrType.EXCLUSIVE_ACCESS, p(1n, 0n))).code)
      .toBe(Asc.INVALID_RELEASE_OF_PERSISTENT_RESERVATION);
  });

  it('PREEMPT takes over the holder, removes its registration, bumps the generation once', () => {
    const pr = new PersistentReservations();
    pr.out('A', PrOutAction.REGISTER, 0, 0, p(0n, 1n));
    pr.out('B', PrOutAction.REGISTER, 0, 0, p(0n, 2n));
    pr.out('A', PrOutAction.RESERVE, 0, PrType.WRITE_EXCLUSIVE, p(1n, 0n));
    const gen = pr.generation;
    const uas = pr.out('B', PrOutAction.PREEMPT, 0, PrType.EXCLUSIVE_ACCESS, p(2n, 1n));
    expect(uas).toContainEqual({ nexus: 'A', code: Asc.REGISTRATIONS_PREEMPTED });
    expect(pr.generation).toBe(gen + 1);
    expect(pr.isRegistered('A')).toBe(false);
    expect(pr.conflicts('A', 'read')).toBe(true);
    expect(pr.conflicts('B', 'write')).toBe(false);
    // Preempting a key nobody holds conflicts.
    expect(conflictOf(() => pr.out('B', PrOutAction.PREEMPT, 0, PrType.EXCLUSIVE_ACCESS, p(2n, 9n)))).toBe(ScsiStatus.RESERVATION_CONFLICT);
  });

  it('CLEAR drops everything and tells the other registrants', () => {
    const pr = new PersistentReservations();
    pr.out('A', PrOutAction.REGISTER, 0, 0, p(0n, 1n));
    pr.out('B', PrOutAction.REGISTER, 0, 0, p(0n, 2n));
    pr.out('A', PrOutAction.RESERVE, 0, PrType.EXCLUSIVE_ACCESS, p(1n, 0n));
    expect(pr.out('A', PrOutAction.CLEAR, 0, 0, p(1n, 0n))).toEqual([{ nexus: 'B', code: Asc.RESERVATIONS_PREEMPTED }]);
    expect(pr.registered).toBe(0);
    expect(pr.conflicts('B', 'write')).toBe(false);
  });

  it('refuses unsupported options and bad parameter list lengths', () => {
    const pr = new PersistentReservations();
    expect(senseOf(() => pr.out('A', PrOutAction.REGISTER, 0, 0, { ...p(0n, 1n), aptpl: true })).code)
      .toBe(Asc.INVALID_FIELD_IN_PARAMETER_LIST);
    expect(senseOf(() => parseProutParams(Buffer.alloc(24), 23)).code).toBe(Asc.PARAMETER_LIST_LENGTH_ERROR);
    expect(senseOf(() => pr.out('A', 7, 0, 0, p(0n, 1n))).code).toBe(Asc.INVALID_FIELD_IN_CDB);
  });

  it('READ FULL STATUS carries an iSCSI TransportID with the ISID', () => {
    const pr = new PersistentReservations();
    pr.out('iqn.x:host,i,0x23d000000001', PrOutAction.REGISTER, 0, 0, p(0n, 5n));
    const fs = pr.readFullStatus(1);
    const tid = iscsiTransportId('iqn.x:host,i,0x23d000000001');
    expect(tid[0]).toBe(0x45);
    expect(tid.length % 4).toBe(0);
    expect(fs.readUInt32BE(4)).toBe(24 + tid.length);
    expect(fs.readBigUInt64BE(8)).toBe(5n);
    expect(fs.subarray(32).toString('latin1')).toContain('iqn.x:host,i,0x23d000000001');
  });
});

describe('mode pages', () => {
  const req = { ten: false, dbd: false, llbaa: false, pc: 0, page: 0x3f, subpage: 0, allocLength: 255 };

  it('MODE SENSE(6) all pages: header, block descriptor, caching (WCE) and control pages', () => {
    const b = modeSense(req, defaultModeState(), 1000, 512);
    expect(b[0]).toBe(b.length - 1);
    expect(b[2]).toBe(0x10); // DPOFUA, not write protected
    expect(b[3]).toBe(8);
    expect(b.readUInt32BE(4)).toBe(1000);
    expect(b.readUIntBE(9, 3)).toBe(512);
    expect([b[12], b[13], b[14]! & 0x04]).toEqual([0x08, 18, 0x04]);
    expect([b[32], b[33]]).toEqual([0x0a, 10]);
  });

  it('refuses saved values, unknown pages and subpages', () => {
    expect(senseOf(() => modeSense({ ...req, pc: 3 }, defaultModeState(), 1, 512)).code).toBe(Asc.SAVING_PARAMETERS_NOT_SUPPORTED);
    expect(senseOf(() => modeSense({ ...req, page: 0x1c }, defaultModeState(), 1, 512)).code).toBe(Asc.INVALID_FIELD_IN_CDB);
    expect(senseOf(() => modeSense({ ...req, subpage: 1 }, defaultModeState(), 1, 512)).code).toBe(Asc.INVALID_FIELD_IN_CDB);
  });

  it('MODE SELECT changes only changeable bits, all or nothing', () => {
    const state = defaultModeState();
    const sense = modeSense({ ...req, dbd: true, page: 0x0a }, state, 1, 512);
    const list = Buffer.from(sense);
    list[0] = 0;
    list[4 + 4] |= 0x08; // SWP
    expect(modeSelect(false, list, state, 512)).toBe(true);
    expect(state.swp).toBe(true);
    const bad = Buffer.from(list);
    bad[4 + 2] |= 0x04; // D_SENSE is not changeable
    bad[4 + 4] &= ~0x08;
    expect(senseOf(() => modeSelect(false, bad, state, 512)).code).toBe(Asc.INVALID_FIELD_IN_PARAMETER_LIST);
    expect(state.swp).toBe(true);
  });
});

describe('INQUIRY data', () => {
  it('standard data: disk, SPC-4, HiSup, CmdQue, vendor and SBC-3 descriptor', () => {
    const b = standardInquiry();
    expect(b[0]).toBe(0);
    expect(b[2]).toBe(0x06);
    expect(b[3]).toBe(0x12);
    expect(b[4]).toBe(b.length - 5);
    expect(b[7]! & 0x02).toBe(0x02);
    expect(b.subarray(8, 16).toString()).toBe('VASTSKY ');
    expect(b.subarray(16, 32).toString().trim()).toBe('VSKY-VOLUME');
    const descs = [0, 1, 2, 3].map((i) => b.readUInt16BE(58 + 2 * i));
    expect(descs).toContain(0x04c0);
    expect(descs).toContain(0x0460);
  });

  it('the NAA designator is stable per volume and differs between volumes', () => {
    const a = unitIdentity(42, 'vol-a', 1);
    expect(unitIdentity(42, 'vol-a', 1).naa.equals(a.naa)).toBe(true);
    expect(unitIdentity(43, 'vol-a', 1).naa.equals(a.naa)).toBe(false);
    expect(unitIdentity(42, 'vol-b', 1).naa.equals(a.naa)).toBe(false);
    expect(a.naa[0]! >> 4).toBe(6);
  });

  it('an unknown VPD page is INVALID FIELD IN CDB', () => {
    expect(senseOf(() => vpdPage(0x99, unitIdentity(1, 'v', 1), { blockSize: 512, lbppbe: 3 })).code).toBe(Asc.INVALID_FIELD_IN_CDB);
  });
});

describe('supported-command table', () => {
  it('every entry is found by its own CDB, usage data starts with the opcode and matches the CDB length', () => {
    for (const c of COMMANDS) {
      expect(c.usage[0]).toBe(c.opcode);
      expect(c.usage.length).toBe(cdbLengthOf(c.opcode));
      const probe = Buffer.alloc(16);
      probe[0] = c.opcode;
      if ('sa' in c) probe[1] = c.sa;
      expect(lookupCdb(probe)?.name).toBe(c.name);
    }
    expect(findCommand(0x9e, 0x11)).toBeUndefined();
  });

  it('REPORT SUPPORTED OPERATION CODES lists the table, with timeouts on request', () => {
    const all = reportSupportedOpcodes({ rctd: false, options: 0, opcode: 0, sa: 0, allocLength: 65535 });
    expect(all.readUInt32BE(0)).toBe(8 * COMMANDS.length);
    const withTimeouts = reportSupportedOpcodes({ rctd: true, options: 0, opcode: 0, sa: 0, allocLength: 65535 });
    expect(withTimeouts.readUInt32BE(0)).toBe(20 * COMMANDS.length);
    expect(withTimeouts[4 + 5]! & 0x02).toBe(0x02);
    const one = reportSupportedOpcodes({ rctd: false, options: 1, opcode: 0x28, sa: 0, allocLength: 65535 });
    expect(one[1]! & 0x07).toBe(0x03);
    expect(one.readUInt16BE(2)).toBe(10);
    expect(one[4]).toBe(0x28);
    expect(reportSupportedOpcodes({ rctd: false, options: 1, opcode: 0xee, sa: 0, allocLength: 99 })[1]).toBe(0x01);
    expect(senseOf(() => reportSupportedOpcodes({ rctd: false, options: 1, opcode: 0x9e, sa: 0x10, allocLength: 9 })).code)
      .toBe(Asc.INVALID_FIELD_IN_CDB);
    expect(senseOf(() => reportSupportedOpcodes({ rctd: false, options: 2, opcode: 0x28, sa: 0, allocLength: 9 })).code)
      .toBe(Asc.INVALID_FIELD_IN_CDB);
  });
});
