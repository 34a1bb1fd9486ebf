// The few SCSI commands the target device itself answers, not a logical
// unit (SPC-4 / SAM-5): REPORT LUNS (every LUN of the target, sent to any
// LUN), and what a LUN that does not exist returns: INQUIRY with peripheral
// qualifier 011b, REQUEST SENSE with the reason, CHECK CONDITION for anything
// else. Plus the fixed-format sense data the transport needs of its own.

import { ScsiStatus, type ScsiResult } from '../scsi/types.js';
import { encodeLunHigh } from './pdu.js';

export const SenseKey = {
  NO_SENSE: 0x00,
  HARDWARE_ERROR: 0x04,
  ILLEGAL_REQUEST: 0x05,
  ABORTED_COMMAND: 0x0b,
} as const;

/** (ASC, ASCQ) pairs used here. */
export const Asc = {
  INVALID_FIELD_IN_CDB: [0x24, 0x00],
  LOGICAL_UNIT_NOT_SUPPORTED: [0x25, 0x00],
  INTERNAL_TARGET_FAILURE: [0x44, 0x00],
  INVALID_COMMAND_OPERATION_CODE: [0x20, 0x00],
  DATA_PHASE_ERROR: [0x4b, 0x00],
} as const;

const OP_INQUIRY = 0x12;
const OP_REQUEST_SENSE = 0x03;
const OP_REPORT_LUNS = 0xa0;

/** Fixed-format sense data (SPC-4 4.5.3), 18 bytes, current error. */
export function senseData(key: number, asc: readonly [number, number]): Buffer {
  const s = Buffer.alloc(18);
  s[0] = 0x70;
  s[2] = key & 0x0f;
  s[7] = 10; // additional sense length
  s[12] = asc[0];
  s[13] = asc[1];
  return s;
}

export function checkCondition(key: number, asc: readonly [number, number]): ScsiResult {
  return { status: ScsiStatus.CHECK_CONDITION, sense: senseData(key, asc) };
}

/** True for commands the transport answers itself for any LUN. */
export function isTargetCommand(cdb: Buffer): boolean {
  return cdb[0] === OP_REPORT_LUNS;
}

/** REPORT LUNS (SPC-4 6.33): the LUN inventory of the target. */
export function reportLuns(cdb: Buffer, luns: Iterable<number>): ScsiResult {
  if (cdb.length < 12) return checkCondition(SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_CDB);
  const allocation = cdb.readUInt32BE(6);
  // SPC-4: an allocation length below 16 is an error.
  if (allocation < 16) return checkCondition(SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_CDB);
  const list = [...luns].sort((a, b) => a - b);
  const data = Buffer.alloc(8 + 8 * list.length);
  data.writeUInt32BE(8 * list.length, 0);
  list.forEach((lun, i) => data.writeUInt32BE(encodeLunHigh(lun), 8 + 8 * i));
  return { status: ScsiStatus.GOOD, dataIn: data.subarray(0, Math.min(data.length, allocation)) };
}

/** What a LUN that does not exist answers (SPC-4 4.6.5 / SAM-5 5.8.4). */
export function missingLun(cdb: Buffer): ScsiResult {
  switch (cdb[0]) {
    case OP_INQUIRY: {
      const allocation = cdb.length >= 5 ? cdb.readUInt16BE(3) : 0;
      const data = Buffer.alloc(36);
      data[0] = 0x7f; // peripheral qualifier 011b: no logical unit here; device type 1Fh
      data[2] = 0x06; // SPC-4
      data[3] = 0x02; // response data format 2
      data[4] = 31; // additional length
      data.write('VASTSKY ', 8, 'latin1');
      data.write('NO LUN          ', 16, 'latin1');
      data.write('0001', 32, 'latin1');
      return { status: ScsiStatus.GOOD, dataIn: data.subarray(0, Math.min(36, allocation)) };
    }
    case OP_REQUEST_SENSE: {
      const allocation = cdb.length >= 5 ? cdb[4]! : 0;
      const sense = senseData(SenseKey.ILLEGAL_REQUEST, Asc.LOGICAL_UNIT_NOT_SUPPORTED);
      return { status: ScsiStatus.GOOD, dataIn: sense.subarray(0, Math.min(sense.length, allocation)) };
    }
    default:
      return checkCondition(SenseKey.ILLEGAL_REQUEST, Asc.LOGICAL_UNIT_NOT_SUPPORTED);
  }
}

/** A logical unit failed to produce a result (it threw): the initiator sees a hardware error. */
export function internalFailure(): ScsiResult {
  return checkCondition(SenseKey.HARDWARE_ERROR, Asc.INTERNAL_TARGET_FAILURE);
}

/** A command whose Expected Data Transfer Length we cannot take. */
export function transferTooLong(): ScsiResult {
  return checkCondition(SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_CDB);
}

/** Data-Out that broke the sequence rules (DataSN, offset, F bit): the command did not run. */
export function dataPhaseError(): ScsiResult {
  return checkCondition(SenseKey.ABORTED_COMMAND, Asc.DATA_PHASE_ERROR);
}
