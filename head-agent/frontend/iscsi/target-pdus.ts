// Header layouts of the PDUs a target sends (RFC 7143 section 11), each
// written into 48 bytes the caller owns (a slot of the writer's slab). Pure:
// the sequence numbers come from the caller. Fields left out are reserved
// and written as zero.

import { FINAL_BIT, Opcode, RESERVED_TAG } from './constants.js';
import { writeBhs } from './pdu.js';

/** The numbers every target PDU carries: the connection's StatSN, the session's window. */
export interface SeqNumbers {
  statSN: number;
  expCmdSN: number;
  maxCmdSN: number;
}

/** Login Response (11.13). `flags` holds T, C, CSG and NSG; `status` is class << 8 | detail. */
export function writeLoginResponse(buf: Buffer, off: number, f: {
  flags: number; isidHigh: number; isidLow16: number; tsih: number; itt: number; status: number; dataLength: number;
}, sn: SeqNumbers): void {
  writeBhs(buf, off, {
    opcode: Opcode.LOGIN_RESPONSE, flags: f.flags, b2: 0 /* Version-max */, b3: 0 /* Version-active */,
    dataLength: f.dataLength, w2: f.isidHigh, w3: ((f.isidLow16 << 16) | f.tsih) >>> 0, itt: f.itt,
    w6: sn.statSN, w7: sn.expCmdSN, w8: sn.maxCmdSN, w9: (f.status << 16) >>> 0,
  });
}

/** Text Response (11.11): F = final, C = more text follows; TTT names a continuation. */
export function writeTextResponse(buf: Buffer, off: number, f: {
  flags: number; itt: number; ttt: number; dataLength: number;
}, sn: SeqNumbers): void {
  writeBhs(buf, off, {
    opcode: Opcode.TEXT_RESPONSE, flags: f.flags, dataLength: f.dataLength, itt: f.itt, w5: f.ttt,
    w6: sn.statSN, w7: sn.expCmdSN, w8: sn.maxCmdSN,
  });
}

/**
 * SCSI Response (11.4). `flags` holds the residual bits; `dataLength` covers
 * the 2-byte SenseLength and the sense data; ExpDataSN counts the Data-In
 * PDUs sent for the command.
 */
export function writeScsiResponse(buf: Buffer, off: number, f: {
  flags: number; response: number; status: number; itt: number; expDataSN: number; residual: number; dataLength: number;
}, sn: SeqNumbers): void {
  writeBhs(buf, off, {
    opcode: Opcode.SCSI_RESPONSE, flags: FINAL_BIT | f.flags, b2: f.response, b3: f.status, dataLength: f.dataLength,
    itt: f.itt, w6: sn.statSN, w7: sn.expCmdSN, w8: sn.maxCmdSN, w9: f.expDataSN, w11: f.residual,
  });
}

/**
 * SCSI Data-In (11.7). `flags`: F ends a sequence, S carries the status (and
 * then the residual bits, status and StatSN are valid; otherwise StatSN is
 * reserved and must not advance).
 */
export function writeDataIn(buf: Buffer, off: number, f: {
  flags: number; status: number; itt: number; dataSN: number; offset: number; residual: number; dataLength: number;
}, sn: SeqNumbers, withStatus: boolean): void {
  writeBhs(buf, off, {
    opcode: Opcode.DATA_IN, flags: f.flags, b3: withStatus ? f.status : 0, dataLength: f.dataLength, itt: f.itt,
    w5: RESERVED_TAG, w6: withStatus ? sn.statSN : 0, w7: sn.expCmdSN, w8: sn.maxCmdSN, w9: f.dataSN, w10: f.offset,
    w11: withStatus ? f.residual : 0,
  });
}

/** Ready To Transfer (11.8): asks for `length` bytes at `offset`; StatSN is not advanced by it. */
export function writeR2T(buf: Buffer, off: number, f: {
  lunHigh: number; itt: number; ttt: number; r2tSN: number; offset: number; length: number;
}, sn: SeqNumbers): void {
  writeBhs(buf, off, {
    opcode: Opcode.R2T, flags: FINAL_BIT, w2: f.lunHigh, itt: f.itt, w5: f.ttt,
    w6: sn.statSN, w7: sn.expCmdSN, w8: sn.maxCmdSN, w9: f.r2tSN, w10: f.offset, w11: f.length,
  });
}

/**
 * NOP-In (11.19). An answer to a ping echoes the ITT with TTT = 0xffffffff
 * and advances StatSN; our own ping has ITT = 0xffffffff, a TTT the
 * initiator must echo, and does not advance StatSN.
 */
export function writeNopIn(buf: Buffer, off: number, f: {
  lunHigh: number; itt: number; ttt: number; dataLength: number;
}, sn: SeqNumbers): void {
  writeBhs(buf, off, {
    opcode: Opcode.NOP_IN, flags: FINAL_BIT, dataLength: f.dataLength, w2: f.lunHigh, itt: f.itt, w5: f.ttt,
    w6: sn.statSN, w7: sn.expCmdSN, w8: sn.maxCmdSN,
  });
}

/** Task Management Function Response (11.6). */
export function writeTmfResponse(buf: Buffer, off: number, f: { itt: number; response: number }, sn: SeqNumbers): void {
  writeBhs(buf, off, {
    opcode: Opcode.TASK_MGMT_RESPONSE, flags: FINAL_BIT, b2: f.response, itt: f.itt,
    w6: sn.statSN, w7: sn.expCmdSN, w8: sn.maxCmdSN,
  });
}

/** Logout Response (11.15): Time2Wait and Time2Retain in bytes 40..43. */
export function writeLogoutResponse(buf: Buffer, off: number, f: {
  itt: number; response: number; time2Wait: number; time2Retain: number;
}, sn: SeqNumbers): void {
  writeBhs(buf, off, {
    opcode: Opcode.LOGOUT_RESPONSE, flags: FINAL_BIT, b2: f.response, itt: f.itt,
    w6: sn.statSN, w7: sn.expCmdSN, w8: sn.maxCmdSN, w10: ((f.time2Wait << 16) | f.time2Retain) >>> 0,
  });
}

/** Reject (11.17): the data segment is the rejected PDU's 48-byte header. */
export function writeReject(buf: Buffer, off: number, f: { reason: number; dataLength: number }, sn: SeqNumbers): void {
  writeBhs(buf, off, {
    opcode: Opcode.REJECT, flags: FINAL_BIT, b2: f.reason, dataLength: f.dataLength, itt: RESERVED_TAG,
    w6: sn.statSN, w7: sn.expCmdSN, w8: sn.maxCmdSN,
  });
}
