// CDB decoding (SBC-3, SPC-4): each decoder turns the bytes of one command
// into a typed request or throws a SenseError (INVALID FIELD IN CDB with the
// field pointer). Pure: range checks against the capacity happen in the
// handlers, which know it. LBAs are JS numbers: exact up to 2^53, and any
// larger value still compares beyond every real capacity.

import { invalidFieldInCdb } from './sense.js';

export const Op = {
  TEST_UNIT_READY: 0x00,
  REQUEST_SENSE: 0x03,
  READ_6: 0x08,
  WRITE_6: 0x0a,
  INQUIRY: 0x12,
  MODE_SELECT_6: 0x15,
  RESERVE_6: 0x16,
  RELEASE_6: 0x17,
  MODE_SENSE_6: 0x1a,
  START_STOP_UNIT: 0x1b,
  READ_CAPACITY_10: 0x25,
  READ_10: 0x28,
  WRITE_10: 0x2a,
  WRITE_AND_VERIFY_10: 0x2e,
  VERIFY_10: 0x2f,
  SYNCHRONIZE_CACHE_10: 0x35,
  WRITE_SAME_10: 0x41,
  UNMAP: 0x42,
  MODE_SELECT_10: 0x55,
  RESERVE_10: 0x56,
  RELEASE_10: 0x57,
  MODE_SENSE_10: 0x5a,
  PERSISTENT_RESERVE_IN: 0x5e,
  PERSISTENT_RESERVE_OUT: 0x5f,
  READ_16: 0x88,
  COMPARE_AND_WRITE: 0x89,
  WRITE_16: 0x8a,
  WRITE_AND_VERIFY_16: 0x8e,
  VERIFY_16: 0x8f,
  SYNCHRONIZE_CACHE_16: 0x91,
  WRITE_SAME_16: 0x93,
  SERVICE_ACTION_IN_16: 0x9e,
  REPORT_LUNS: 0xa0,
  MAINTENANCE_IN: 0xa3,
  READ_12: 0xa8,
  WRITE_12: 0xaa,
  WRITE_AND_VERIFY_12: 0xae,
  VERIFY_12: 0xaf,
} as const;

/** SERVICE ACTION IN(16) service actions. */
export const SaIn16 = { READ_CAPACITY_16: 0x10, GET_LBA_STATUS: 0x12 } as const;
/** MAINTENANCE IN service actions. */
export const SaMaintIn = { REPORT_SUPPORTED_OPCODES: 0x0c } as const;

/** CDB length from the opcode's group code (SPC-4 4.2.5.1); 0 for vendor/reserved groups. */
export function cdbLengthOf(opcode: number): number {
  switch (opcode >> 5) {
    case 0: return 6;
    case 1: case 2: return 10;
    case 4: return 16;
    case 5: return 12;
    default: return 0;
  }
}

export function u64(b: Buffer, off: number): number {
  return b.readUInt32BE(off) * 0x1_0000_0000 + b.readUInt32BE(off + 4);
}

/** The CONTROL byte's NACA bit: we do not support ACA (SAM-5 5.9), so NACA=1 is rejected. */
export function checkControlByte(cdb: Buffer, length: number): void {
  if ((cdb[length - 1]! & 0x04) !== 0) throw invalidFieldInCdb(length - 1, 2);
}

// --- READ / WRITE / VERIFY family -----------------------------------------

export interface BlockRequest {
  lba: number;
  blocks: number;
  /** RDPROTECT / WRPROTECT / VRPROTECT (we report no protection support). */
  protect: number;
  dpo: boolean;
  fua: boolean;
  /** VERIFY / WRITE AND VERIFY: 0 = medium check only, 1 = compare with Data-Out. */
  bytchk: number;
}

/**
 * A BlockRequest from the LBA and length fields of a 10-, 12- or 16-byte
 * block command (6-byte forms are decoded apart). Built in one literal of one
 * shape: an object spread here cost ~4% of the head's CPU per 4 KiB command.
 */
function blockRequest(cdb: Buffer, protect: number, dpo: boolean, fua: boolean, bytchk: number): BlockRequest {
  const len = cdbLengthOf(cdb[0]!);
  let lba: number;
  let blocks: number;
  if (len === 10) {
    lba = cdb.readUInt32BE(2);
    blocks = cdb.readUInt16BE(7);
  } else if (len === 12) {
    lba = cdb.readUInt32BE(2);
    blocks = cdb.readUInt32BE(6);
  } else {
    lba = u64(cdb, 2);
    blocks = cdb.readUInt32BE(10);
  }
  return { lba, blocks, protect, dpo, fua, bytchk };
}

/** READ(6) / WRITE(6): 21-bit LBA, TRANSFER LENGTH 0 means 256 blocks (SBC-3 5.8, 5.32). */
export function decodeRw6(cdb: Buffer): BlockRequest {
  const lba = ((cdb[1]! & 0x1f) << 16) | cdb.readUInt16BE(2);
  const blocks = cdb[4] === 0 ? 256 : cdb[4]!;
  return { lba, blocks, protect: 0, dpo: false, fua: false, bytchk: 0 };
}

/** READ/WRITE(10/12/16): byte 1 = xPROTECT(7-5) DPO(4) FUA(3). */
export function decodeRw(cdb: Buffer): BlockRequest {
  const b1 = cdb[1]!;
  return blockRequest(cdb, b1 >> 5, (b1 & 0x10) !== 0, (b1 & 0x08) !== 0, 0);
}

/**
 * VERIFY / WRITE AND VERIFY (10/12/16): byte 1 = VRPROTECT/WRPROTECT(7-5)
 * DPO(4) BYTCHK(2-1). BYTCHK 00b and 01b are supported; 11b (one block
 * compared against every block) only for VERIFY per SBC-3r35, and 10b is
 * reserved: both are rejected. WRITE AND VERIFY always writes then verifies;
 * having just written the blocks, its verify is a medium check.
 */
export function decodeVerify(cdb: Buffer): BlockRequest {
  const b1 = cdb[1]!;
  const bytchk = (b1 >> 1) & 0x03;
  if (bytchk > 1) throw invalidFieldInCdb(1, 2);
  return blockRequest(cdb, b1 >> 5, (b1 & 0x10) !== 0, false, bytchk);
}

// --- WRITE SAME, UNMAP, COMPARE AND WRITE, SYNCHRONIZE CACHE --------------

export interface WriteSameRequest {
  lba: number;
  blocks: number;
  protect: number;
  anchor: boolean;
  unmap: boolean;
  /** NDOB (WRITE SAME(16) only): no Data-Out, the block is zeros. */
  ndob: boolean;
}

/** WRITE SAME(10) / (16) (SBC-3 5.42, 5.43). */
export function decodeWriteSame(cdb: Buffer): WriteSameRequest {
  const b1 = cdb[1]!;
  const is16 = cdb[0] === Op.WRITE_SAME_16;
  // Bits 2-1 were PBDATA/LBDATA (SBC-2: put the LBA into each block); obsolete
  // in SBC-3 and not implemented, so a CDB asking for them is refused.
  if ((b1 & 0x06) !== 0) throw invalidFieldInCdb(1, (b1 & 0x04) !== 0 ? 2 : 1);
  const { lba, blocks } = blockRequest(cdb, 0, false, false, 0);
  return { lba, blocks, protect: b1 >> 5, anchor: (b1 & 0x10) !== 0, unmap: (b1 & 0x08) !== 0, ndob: is16 && (b1 & 0x01) !== 0 };
}

/** UNMAP (SBC-3 5.28): ANCHOR bit and the PARAMETER LIST LENGTH. */
export function decodeUnmap(cdb: Buffer): { anchor: boolean; paramLength: number } {
  return { anchor: (cdb[1]! & 0x01) !== 0, paramLength: cdb.readUInt16BE(7) };
}

/** COMPARE AND WRITE (SBC-3 5.2): NUMBER OF LOGICAL BLOCKS is one byte; Data-Out is 2x that. */
export function decodeCompareAndWrite(cdb: Buffer): BlockRequest {
  const b1 = cdb[1]!;
  return { lba: u64(cdb, 2), blocks: cdb[13]!, protect: b1 >> 5, dpo: (b1 & 0x10) !== 0, fua: (b1 & 0x08) !== 0, bytchk: 0 };
}

/** SYNCHRONIZE CACHE (10)/(16): the range and IMMED (we always flush everything before answering). */
export function decodeSyncCache(cdb: Buffer): { lba: number; blocks: number } {
  return blockRequest(cdb, 0, false, false, 0);
}

// --- SPC commands -----------------------------------------------------------

export function decodeInquiry(cdb: Buffer): { evpd: boolean; page: number; allocLength: number } {
  const evpd = (cdb[1]! & 0x01) !== 0;
  if ((cdb[1]! & 0xfe) !== 0) throw invalidFieldInCdb(1, 1); // CMDDT (obsolete) and reserved bits
  if (!evpd && cdb[2] !== 0) throw invalidFieldInCdb(2);
  return { evpd, page: cdb[2]!, allocLength: cdb.readUInt16BE(3) };
}

export interface ModeSenseRequest {
  ten: boolean;
  dbd: boolean;
  llbaa: boolean;
  /** PAGE CONTROL: 0 current, 1 changeable, 2 default, 3 saved. */
  pc: number;
  page: number;
  subpage: number;
  allocLength: number;
}

export function decodeModeSense(cdb: Buffer): ModeSenseRequest {
  const ten = cdb[0] === Op.MODE_SENSE_10;
  return {
    ten,
    dbd: (cdb[1]! & 0x08) !== 0,
    llbaa: ten && (cdb[1]! & 0x10) !== 0,
    pc: cdb[2]! >> 6,
    page: cdb[2]! & 0x3f,
    subpage: cdb[3]!,
    allocLength: ten ? cdb.readUInt16BE(7) : cdb[4]!,
  };
}

export function decodeModeSelect(cdb: Buffer): { ten: boolean; pf: boolean; sp: boolean; paramLength: number } {
  const ten = cdb[0] === Op.MODE_SELECT_10;
  return { ten, pf: (cdb[1]! & 0x10) !== 0, sp: (cdb[1]! & 0x01) !== 0, paramLength: ten ? cdb.readUInt16BE(7) : cdb[4]! };
}

export function decodeReportLuns(cdb: Buffer): { select: number; allocLength: number } {
  return { select: cdb[2]!, allocLength: cdb.readUInt32BE(6) };
}

export function decodeRequestSense(cdb: Buffer): { desc: boolean; allocLength: number } {
  return { desc: (cdb[1]! & 0x01) !== 0, allocLength: cdb[4]! };
}

export function decodeReadCapacity16(cdb: Buffer): { allocLength: number } {
  return { allocLength: cdb.readUInt32BE(10) };
}

export function decodeGetLbaStatus(cdb: Buffer): { lba: number; allocLength: number } {
  return { lba: u64(cdb, 2), allocLength: cdb.readUInt32BE(10) };
}

export interface RsocRequest {
  rctd: boolean;
  /** REPORTING OPTIONS: 0 all, 1 one opcode, 2 opcode + service action, 3 either. */
  options: number;
  opcode: number;
  sa: number;
  allocLength: number;
}

export function decodeReportSupportedOpcodes(cdb: Buffer): RsocRequest {
  return {
    rctd: (cdb[2]! & 0x80) !== 0,
    options: cdb[2]! & 0x07,
    opcode: cdb[3]!,
    sa: cdb.readUInt16BE(4),
    allocLength: cdb.readUInt32BE(6),
  };
}

export function decodePersistentReserveIn(cdb: Buffer): { sa: number; allocLength: number } {
  return { sa: cdb[1]! & 0x1f, allocLength: cdb.readUInt16BE(7) };
}

export function decodePersistentReserveOut(cdb: Buffer): { sa: number; scope: number; type: number; paramLength: number } {
  return { sa: cdb[1]! & 0x1f, scope: cdb[2]! >> 4, type: cdb[2]! & 0x0f, paramLength: cdb.readUInt32BE(5) };
}

export function decodeStartStopUnit(cdb: Buffer): { immed: boolean; powerCondition: number; loej: boolean; start: boolean } {
  return { immed: (cdb[1]! & 0x01) !== 0, powerCondition: cdb[4]! >> 4, loej: (cdb[4]! & 0x02) !== 0, start: (cdb[4]! & 0x01) !== 0 };
}
