// Header fields of the PDUs an initiator sends (RFC 7143 section 11), as
// BhsFields for encodePdu(). The target never sends these: they are the
// codec's other half, for the tests' raw initiator and for tools.

import { CMD_READ_BIT, CMD_WRITE_BIT, CONTINUE_BIT, FINAL_BIT, LOGIN_TRANSIT_BIT, Opcode, RESERVED_TAG } from './constants.js';
import { encodeLunHigh, type BhsFields } from './pdu.js';

export interface LoginRequestFields {
  transit: boolean;
  continue?: boolean;
  csg: number;
  nsg: number;
  /** 6 bytes as 12 hex digits. */
  isid: string;
  tsih?: number;
  itt: number;
  cid?: number;
  cmdSN: number;
  expStatSN: number;
  versionMax?: number;
  versionMin?: number;
}

export function loginRequest(f: LoginRequestFields): BhsFields {
  const isid = Buffer.from(f.isid.padStart(12, '0'), 'hex');
  return {
    opcode: Opcode.LOGIN_REQUEST, immediate: true,
    flags: (f.transit ? LOGIN_TRANSIT_BIT : 0) | (f.continue === true ? CONTINUE_BIT : 0) | (f.csg << 2) | f.nsg,
    b2: f.versionMax ?? 0, b3: f.versionMin ?? 0,
    w2: isid.readUInt32BE(0), w3: ((isid.readUInt16BE(4) << 16) | (f.tsih ?? 0)) >>> 0,
    itt: f.itt, w5: ((f.cid ?? 0) << 16) >>> 0, w6: f.cmdSN, w7: f.expStatSN,
  };
}

export function textRequest(f: { final?: boolean; continue?: boolean; itt: number; ttt?: number; cmdSN: number; expStatSN: number; immediate?: boolean }): BhsFields {
  return {
    opcode: Opcode.TEXT_REQUEST, immediate: f.immediate ?? false,
    flags: (f.final === false ? 0 : FINAL_BIT) | (f.continue === true ? CONTINUE_BIT : 0),
    itt: f.itt, w5: f.ttt ?? RESERVED_TAG, w6: f.cmdSN, w7: f.expStatSN,
  };
}

export interface ScsiCommandFields {
  lun?: number;
  itt: number;
  cdb: Buffer;
  expectedLength: number;
  cmdSN: number;
  expStatSN: number;
  read?: boolean;
  write?: boolean;
  /** F bit: no unsolicited Data-Out follows (default true). */
  final?: boolean;
  immediate?: boolean;
  /** Task attribute (0 untagged, 1 simple, 2 ordered, 3 head of queue, 4 ACA). */
  attr?: number;
}

export function scsiCommand(f: ScsiCommandFields): BhsFields {
  const cdb = Buffer.alloc(16);
  f.cdb.copy(cdb, 0, 0, Math.min(16, f.cdb.length));
  return {
    opcode: Opcode.SCSI_COMMAND, immediate: f.immediate ?? false,
    flags: (f.final === false ? 0 : FINAL_BIT) | (f.read === true ? CMD_READ_BIT : 0) | (f.write === true ? CMD_WRITE_BIT : 0) | (f.attr ?? 1),
    w2: encodeLunHigh(f.lun ?? 0), itt: f.itt, w5: f.expectedLength, w6: f.cmdSN, w7: f.expStatSN,
    w8: cdb.readUInt32BE(0), w9: cdb.readUInt32BE(4), w10: cdb.readUInt32BE(8), w11: cdb.readUInt32BE(12),
  };
}

export function dataOut(f: { final: boolean; lun?: number; itt: number; ttt?: number; expStatSN: number; dataSN: number; offset: number }): BhsFields {
  return {
    opcode: Opcode.DATA_OUT, flags: f.final ? FINAL_BIT : 0, w2: encodeLunHigh(f.lun ?? 0), itt: f.itt,
    w5: f.ttt ?? RESERVED_TAG, w7: f.expStatSN, w9: f.dataSN, w10: f.offset,
  };
}

export function nopOut(f: { itt: number; ttt?: number; cmdSN: number; expStatSN: number; immediate?: boolean; lun?: number }): BhsFields {
  return {
    opcode: Opcode.NOP_OUT, immediate: f.immediate ?? true, flags: FINAL_BIT, w2: encodeLunHigh(f.lun ?? 0),
    itt: f.itt, w5: f.ttt ?? RESERVED_TAG, w6: f.cmdSN, w7: f.expStatSN,
  };
}

export function taskManagementRequest(f: {
  fn: number; lun?: number; itt: number; referencedTag?: number; cmdSN: number; expStatSN: number; refCmdSN?: number; immediate?: boolean;
}): BhsFields {
  return {
    opcode: Opcode.TASK_MGMT_REQUEST, immediate: f.immediate ?? true, flags: FINAL_BIT | f.fn,
    w2: encodeLunHigh(f.lun ?? 0), itt: f.itt, w5: f.referencedTag ?? RESERVED_TAG, w6: f.cmdSN, w7: f.expStatSN,
    w8: f.refCmdSN ?? 0,
  };
}

export function logoutRequest(f: { reason: number; itt: number; cid?: number; cmdSN: number; expStatSN: number; immediate?: boolean }): BhsFields {
  return {
    opcode: Opcode.LOGOUT_REQUEST, immediate: f.immediate ?? true, flags: FINAL_BIT | f.reason,
    itt: f.itt, w5: ((f.cid ?? 0) << 16) >>> 0, w6: f.cmdSN, w7: f.expStatSN,
  };
}
