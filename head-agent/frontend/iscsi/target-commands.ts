// The few SCSI commands the target device itself answers, not a logical
// unit (SPC-4 / SAM-5): REPORT LUNS (every LUN of the target, sent to any
// LUN), and what a LUN that does not exist returns: INQUIRY with peripheral
// qualifier 011b, REQUEST SENSE with the reason, CHECK CONDITION for anything
// else. Sense data comes from scsi/sense.ts like every unit's.

import { reportLuns } from '../scsi/spc-commands.js';
import { Asc, SenseError, SenseKey, checkCondition as checkConditionOf, fixedSense } from '../scsi/sense.js';
import { ScsiStatus, type ScsiResult } from '../scsi/types.js';

const OP_INQUIRY = 0x12;
const OP_REQUEST_SENSE = 0x03;
const OP_REPORT_LUNS = 0xa0;

const checkCondition = (key: number, code: number): ScsiResult => checkConditionOf({ key, code });

/** True for commands the transport answers itself for any LUN. */
export function isTargetCommand(cdb: Buffer): boolean {
  return cdb[0] === OP_REPORT_LUNS;
}

/** REPORT LUNS for any LUN: the target's inventory (scsi/spc-commands.ts). */
export function targetReportLuns(cdb: Buffer, luns: Iterable<number>): ScsiResult {
  try {
    return reportLuns(cdb, luns);
  } catch (err) {
    if (err instanceof SenseError) return checkConditionOf(err.sense);
    throw err;
  }
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
      const sense = fixedSense({ key: SenseKey.ILLEGAL_REQUEST, code: Asc.LUN_NOT_SUPPORTED });
      return { status: ScsiStatus.GOOD, dataIn: sense.subarray(0, Math.min(sense.length, allocation)) };
    }
    default:
      return checkCondition(SenseKey.ILLEGAL_REQUEST, Asc.LUN_NOT_SUPPORTED);
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
