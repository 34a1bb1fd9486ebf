// Sense data (SPC-4 4.5): the keys and additional sense codes this logical
// unit reports, a typed error that carries them out of any decoder or handler,
// and the fixed-format builder (SPC-4 4.5.3). Pure: no I/O, no state.

import { ScsiStatus, type ScsiResult } from './types.js';

export const SenseKey = {
  NO_SENSE: 0x0,
  NOT_READY: 0x2,
  MEDIUM_ERROR: 0x3,
  HARDWARE_ERROR: 0x4,
  ILLEGAL_REQUEST: 0x5,
  UNIT_ATTENTION: 0x6,
  DATA_PROTECT: 0x7,
  ABORTED_COMMAND: 0xb,
  MISCOMPARE: 0xe,
} as const;

/** ASC << 8 | ASCQ (the same packing libiscsi prints, e.g. 0x2400). */
export const Asc = {
  NO_ADDITIONAL_SENSE: 0x0000,
  /** 04/03: LOGICAL UNIT NOT READY, MANUAL INTERVENTION REQUIRED. */
  NOT_READY_MANUAL_INTERVENTION: 0x0403,
  WRITE_ERROR: 0x0c00,
  /** 0E/03: the Data-Out does not fit the command (SAM-5 5.3.3 via iSCSI). */
  INVALID_FIELD_IN_INFORMATION_UNIT: 0x0e03,
  UNRECOVERED_READ_ERROR: 0x1100,
  PARAMETER_LIST_LENGTH_ERROR: 0x1a00,
  MISCOMPARE_DURING_VERIFY: 0x1d00,
  INVALID_OPCODE: 0x2000,
  LBA_OUT_OF_RANGE: 0x2100,
  INVALID_FIELD_IN_CDB: 0x2400,
  LUN_NOT_SUPPORTED: 0x2500,
  INVALID_FIELD_IN_PARAMETER_LIST: 0x2600,
  INVALID_RELEASE_OF_PERSISTENT_RESERVATION: 0x2604,
  WRITE_PROTECTED: 0x2700,
  /** 27/07: SPACE ALLOCATION FAILED WRITE PROTECT (SBC-3: a thin unit ran out of space). */
  SPACE_ALLOCATION_FAILED_WRITE_PROTECT: 0x2707,
  POWER_ON_RESET: 0x2900,
  BUS_DEVICE_RESET: 0x2903,
  MODE_PARAMETERS_CHANGED: 0x2a01,
  /** 2A/09: CAPACITY DATA HAS CHANGED (SPC-4, after the unit grew). */
  CAPACITY_DATA_HAS_CHANGED: 0x2a09,
  RESERVATIONS_PREEMPTED: 0x2a03,
  RESERVATIONS_RELEASED: 0x2a04,
  REGISTRATIONS_PREEMPTED: 0x2a05,
  COMMANDS_CLEARED_BY_ANOTHER_INITIATOR: 0x2f00,
  SAVING_PARAMETERS_NOT_SUPPORTED: 0x3900,
  INTERNAL_TARGET_FAILURE: 0x4400,
  /** 4B/00: DATA PHASE ERROR (Data-Out that broke the iSCSI sequence rules). */
  DATA_PHASE_ERROR: 0x4b00,
  INSUFFICIENT_REGISTRATION_RESOURCES: 0x5504,
} as const;

/** Where in the CDB or parameter list the bad field is (SPC-4 4.5.2.4.2). */
export interface FieldPointer {
  /** true: the field is in the CDB; false: in the parameter list (Data-Out). */
  inCdb: boolean;
  byte: number;
  /** Bit 0-7 of the first bad bit, when one can be named. */
  bit?: number;
}

export interface SenseInfo {
  key: number;
  /** ASC << 8 | ASCQ. */
  code: number;
  /** INFORMATION field (VALID=1): the failing LBA, or the miscompare offset. */
  information?: number;
  field?: FieldPointer;
}

/** A command fails with CHECK CONDITION and this sense. Thrown by decoders and handlers. */
export class SenseError extends Error {
  readonly sense: SenseInfo;

  constructor(sense: SenseInfo, message?: string) {
    super(message ?? `sense ${sense.key.toString(16)}/${sense.code.toString(16).padStart(4, '0')}`);
    this.name = 'SenseError';
    this.sense = sense;
  }
}

/** The command is answered with a status other than CHECK CONDITION (RESERVATION CONFLICT). */
export class StatusError extends Error {
  constructor(readonly status: number) {
    super(`status 0x${status.toString(16)}`);
    this.name = 'StatusError';
  }
}

export const FIXED_SENSE_LENGTH = 18;

/**
 * Fixed-format sense data, 18 bytes (SPC-4 4.5.3, table 48): response code
 * 0x70 (current error), VALID when INFORMATION is given, ADDITIONAL SENSE
 * LENGTH 10, and the sense-key specific field pointer (SKSV) for
 * ILLEGAL REQUEST when the bad field is known.
 */
export function fixedSense(s: SenseInfo): Buffer {
  const b = Buffer.alloc(FIXED_SENSE_LENGTH);
  b[0] = 0x70;
  b[2] = s.key & 0x0f;
  // INFORMATION is 4 bytes in fixed format: an LBA beyond 2^32-1 cannot be
  // told, so VALID stays clear for it (SPC-4 4.5.3).
  if (s.information !== undefined && s.information >= 0 && s.information <= 0xffffffff) {
    b[0] |= 0x80;
    b.writeUInt32BE(s.information, 3);
  }
  b[7] = FIXED_SENSE_LENGTH - 8;
  b[12] = s.code >> 8;
  b[13] = s.code & 0xff;
  if (s.field !== undefined) {
    // byte 15: SKSV, C/D (1 = CDB), BPV + BIT POINTER; bytes 16-17: FIELD POINTER.
    b[15] = 0x80 | (s.field.inCdb ? 0x40 : 0) | (s.field.bit !== undefined ? 0x08 | (s.field.bit & 7) : 0);
    b.writeUInt16BE(s.field.byte & 0xffff, 16);
  }
  return b;
}

export function checkCondition(s: SenseInfo): ScsiResult {
  return { status: ScsiStatus.CHECK_CONDITION, sense: fixedSense(s) };
}

// Shorthands for the errors every decoder needs.

export function invalidFieldInCdb(byte: number, bit?: number): SenseError {
  return new SenseError({ key: SenseKey.ILLEGAL_REQUEST, code: Asc.INVALID_FIELD_IN_CDB, field: { inCdb: true, byte, bit } });
}

export function invalidFieldInParameters(byte: number, bit?: number): SenseError {
  return new SenseError({
    key: SenseKey.ILLEGAL_REQUEST, code: Asc.INVALID_FIELD_IN_PARAMETER_LIST, field: { inCdb: false, byte, bit },
  });
}

export function parameterListLengthError(): SenseError {
  return new SenseError({ key: SenseKey.ILLEGAL_REQUEST, code: Asc.PARAMETER_LIST_LENGTH_ERROR });
}

export function invalidOpcode(): SenseError {
  return new SenseError({ key: SenseKey.ILLEGAL_REQUEST, code: Asc.INVALID_OPCODE, field: { inCdb: true, byte: 0 } });
}

export function lbaOutOfRange(lba?: number): SenseError {
  return new SenseError({ key: SenseKey.ILLEGAL_REQUEST, code: Asc.LBA_OUT_OF_RANGE, information: lba });
}

export function writeProtected(): SenseError {
  return new SenseError({ key: SenseKey.DATA_PROTECT, code: Asc.WRITE_PROTECTED });
}

export function miscompare(offset: number): SenseError {
  return new SenseError({ key: SenseKey.MISCOMPARE, code: Asc.MISCOMPARE_DURING_VERIFY, information: offset });
}

export function reservationConflict(): StatusError {
  return new StatusError(ScsiStatus.RESERVATION_CONFLICT);
}
