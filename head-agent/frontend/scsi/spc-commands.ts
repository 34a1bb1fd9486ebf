// Primary (SPC-4) and capacity commands: TEST UNIT READY, REQUEST SENSE,
// INQUIRY, REPORT LUNS, READ CAPACITY (10)/(16), MODE SENSE / MODE SELECT,
// START STOP UNIT and REPORT SUPPORTED OPERATION CODES. Data-In is returned
// whole; truncate() cuts it to the allocation length (SPC-4 4.2.5.6).

import type { ScsiCommand, ScsiResult } from './types.js';
import { ScsiStatus } from './types.js';
import {
  decodeInquiry, decodeModeSelect, decodeModeSense, decodeReadCapacity16, decodeReportLuns, decodeReportSupportedOpcodes,
  decodeRequestSense, decodeStartStopUnit,
} from './cdb.js';
import { standardInquiry, vpdPage } from './inquiry.js';
import { modeSelect, modeSense } from './mode-pages.js';
import { reportSupportedOpcodes } from './opcodes.js';
import { GOOD, truncate } from './results.js';
import { Asc, SenseKey, fixedSense, invalidFieldInCdb, parameterListLengthError } from './sense.js';
import type { UnitContext } from './unit-context.js';

export function testUnitReady(): ScsiResult {
  return GOOD;
}

/** REQUEST SENSE (SPC-4 6.39): the pending unit attention (now cleared) or NO SENSE; fixed format only. */
export function requestSense(ctx: UnitContext, cmd: ScsiCommand): ScsiResult {
  const req = decodeRequestSense(cmd.cdb);
  if (req.desc) throw invalidFieldInCdb(1, 0);
  const ua = ctx.ua.take(cmd.nexus);
  const data = ua !== undefined
    ? fixedSense({ key: SenseKey.UNIT_ATTENTION, code: ua })
    : fixedSense({ key: SenseKey.NO_SENSE, code: Asc.NO_ADDITIONAL_SENSE });
  return truncate(data, req.allocLength);
}

export function inquiry(ctx: UnitContext, cmd: ScsiCommand): ScsiResult {
  const req = decodeInquiry(cmd.cdb);
  const data = req.evpd
    ? vpdPage(req.page, ctx.identity, { blockSize: ctx.blockSize, lbppbe: ctx.lbppbe })
    : standardInquiry();
  return truncate(data, req.allocLength);
}

/** One 8-byte LUN in single-level format: peripheral addressing below 256, flat space above (SAM-5 4.7). */
function encodeLun(lun: number): Buffer {
  const b = Buffer.alloc(8);
  if (lun < 256) b[1] = lun;
  else b.writeUInt16BE(0x4000 | (lun & 0x3fff), 0);
  return b;
}

/**
 * REPORT LUNS (SPC-4 6.33), the one implementation: the LUN inventory of the
 * target, `luns` (the iSCSI transport answers it for any LUN, even one that
 * does not exist, with every LUN of the target; a unit on its own lists
 * itself). SELECT REPORT 00h/02h list them; 01h (well-known LUNs) and
 * 10h-12h (administrative LUNs) list nothing, as we have none.
 */
export function reportLuns(cdb: Buffer, luns: Iterable<number>): ScsiResult {
  if (cdb.length < 12) throw invalidFieldInCdb(6);
  const req = decodeReportLuns(cdb);
  if (req.allocLength < 16) throw invalidFieldInCdb(6);
  let list: number[];
  switch (req.select) {
    case 0x00:
    case 0x02:
      list = [...luns].sort((a, b) => a - b);
      break;
    case 0x01:
    case 0x10:
    case 0x11:
    case 0x12:
      list = [];
      break;
    default:
      throw invalidFieldInCdb(2);
  }
  const head = Buffer.alloc(8);
  head.writeUInt32BE(8 * list.length, 0);
  return truncate(Buffer.concat([head, ...list.map(encodeLun)]), req.allocLength);
}

/** READ CAPACITY(10) (SBC-3 5.15): the last LBA (FFFFFFFFh when it does not fit) and the block length. */
export function readCapacity10(ctx: UnitContext, cmd: ScsiCommand): ScsiResult {
  const cdb = cmd.cdb;
  const pmi = (cdb[8]! & 0x01) !== 0;
  // The LOGICAL BLOCK ADDRESS field must be zero unless PMI is set (SBC-3 5.15.1).
  if (!pmi && cdb.readUInt32BE(2) !== 0) throw invalidFieldInCdb(2);
  const b = Buffer.alloc(8);
  b.writeUInt32BE(Math.min(ctx.numBlocks - 1, 0xffffffff), 0);
  b.writeUInt32BE(ctx.blockSize, 4);
  return { status: ScsiStatus.GOOD, dataIn: b };
}

/** READ CAPACITY(16) (SBC-3 5.16): adds LBPPBE, LBPME and LBPRZ. */
export function readCapacity16(ctx: UnitContext, cmd: ScsiCommand): ScsiResult {
  const req = decodeReadCapacity16(cmd.cdb);
  const b = Buffer.alloc(32);
  b.writeBigUInt64BE(BigInt(ctx.numBlocks - 1), 0);
  b.writeUInt32BE(ctx.blockSize, 8);
  b[12] = 0x00; // no protection information
  b[13] = ctx.lbppbe & 0x0f; // LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT
  b[14] = 0x80 | 0x40; // LBPME (thin provisioned), LBPRZ (unmapped blocks read zero); LOWEST ALIGNED LBA 0
  return truncate(b, req.allocLength);
}

export function modeSenseCmd(ctx: UnitContext, cmd: ScsiCommand): ScsiResult {
  const req = decodeModeSense(cmd.cdb);
  return truncate(modeSense(req, ctx.mode, ctx.numBlocks, ctx.blockSize), req.allocLength);
}

/** MODE SELECT (6)/(10); a change is announced to the other nexuses (MODE PARAMETERS CHANGED). */
export function modeSelectCmd(ctx: UnitContext, cmd: ScsiCommand): ScsiResult {
  const req = decodeModeSelect(cmd.cdb);
  // PF=0 would be a vendor-specific page format; saved pages are not supported.
  if (!req.pf && req.paramLength > 0) throw invalidFieldInCdb(1, 4);
  if (req.sp) throw invalidFieldInCdb(1, 0);
  const result: ScsiResult = { status: ScsiStatus.GOOD, dataOutLength: req.paramLength };
  if (req.paramLength === 0) return result;
  const list = cmd.dataOut?.subarray(0, req.paramLength);
  if (list === undefined || list.length < req.paramLength) throw parameterListLengthError();
  if (modeSelect(req.ten, list, ctx.mode, ctx.blockSize)) ctx.ua.establishAll(Asc.MODE_PARAMETERS_CHANGED, cmd.nexus);
  return result;
}

/**
 * START STOP UNIT (SBC-3 5.25): a volume has no motor and no medium to eject;
 * every valid request is accepted. POWER CONDITION values beyond 0Bh are
 * reserved.
 */
export function startStopUnit(cmd: ScsiCommand): ScsiResult {
  const req = decodeStartStopUnit(cmd.cdb);
  const pc = req.powerCondition;
  if (pc !== 0 && pc !== 1 && pc !== 2 && pc !== 3 && pc !== 5 && pc !== 7 && pc !== 0x0a && pc !== 0x0b) {
    throw invalidFieldInCdb(4, 7);
  }
  return GOOD;
}

export function reportSupportedOpcodesCmd(cmd: ScsiCommand): ScsiResult {
  const req = decodeReportSupportedOpcodes(cmd.cdb);
  return truncate(reportSupportedOpcodes(req), req.allocLength);
}
