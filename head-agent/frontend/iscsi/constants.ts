// iSCSI wire constants (RFC 7143 section 11, "iSCSI PDU Formats"), plus this
// target's own limits and the values it offers in login negotiation. Every
// multi-byte field on the wire is big-endian, except the CRC32C digests,
// which are sent least significant byte first.

import { MAX_DATA_PAYLOAD, MiB } from '../../../shared/constants.js';

// --- Basic Header Segment layout (RFC 7143 11.2.1) ---------------------------

/** Every PDU starts with a 48-byte Basic Header Segment. */
export const BHS_SIZE = 48;
/** A CRC32C header or data digest. */
export const DIGEST_SIZE = 4;
/** Byte 0: bit 6 marks an immediate command (delivered outside CmdSN order). */
export const IMMEDIATE_BIT = 0x40;
export const OPCODE_MASK = 0x3f;
/** Byte 1 of most PDUs: Final (last PDU of a sequence / of a command's PDUs). */
export const FINAL_BIT = 0x80;
/** Tags meaning "none": reserved ITT/TTT value. */
export const RESERVED_TAG = 0xffffffff;
/** TotalAHSLength counts 4-byte words in one byte: at most 1020 bytes of AHS. */
export const MAX_AHS_BYTES = 255 * 4;
/** AHS type 1: the bytes of a CDB longer than 16 (RFC 7143 11.2.2.3). */
export const AHS_EXTENDED_CDB = 1;

// --- Opcodes (RFC 7143 11.2.1.2) ----------------------------------------------

export const Opcode = {
  // Initiator -> target
  NOP_OUT: 0x00,
  SCSI_COMMAND: 0x01,
  TASK_MGMT_REQUEST: 0x02,
  LOGIN_REQUEST: 0x03,
  TEXT_REQUEST: 0x04,
  DATA_OUT: 0x05,
  LOGOUT_REQUEST: 0x06,
  /** Only meaningful at ErrorRecoveryLevel > 0: rejected here. */
  SNACK_REQUEST: 0x10,
  // Target -> initiator
  NOP_IN: 0x20,
  SCSI_RESPONSE: 0x21,
  TASK_MGMT_RESPONSE: 0x22,
  LOGIN_RESPONSE: 0x23,
  TEXT_RESPONSE: 0x24,
  DATA_IN: 0x25,
  LOGOUT_RESPONSE: 0x26,
  R2T: 0x31,
  ASYNC_MESSAGE: 0x32,
  REJECT: 0x3f,
} as const;

const OPCODE_NAMES: Record<number, string> = Object.fromEntries(Object.entries(Opcode).map(([k, v]) => [v, k]));
export function opcodeName(op: number): string {
  return OPCODE_NAMES[op] ?? `UNKNOWN(0x${op.toString(16)})`;
}

// --- SCSI Command / Response / Data flags (RFC 7143 11.3, 11.4, 11.7) ---------

/** SCSI Command byte 1: the command reads (Data-In expected). */
export const CMD_READ_BIT = 0x40;
/** SCSI Command byte 1: the command writes (Data-Out expected). */
export const CMD_WRITE_BIT = 0x20;
/** SCSI Response byte 1: residual overflow (target had more than expected). */
export const RESP_OVERFLOW_BIT = 0x04;
/** SCSI Response byte 1: residual underflow (target transferred less than expected). */
export const RESP_UNDERFLOW_BIT = 0x02;
/** Data-In byte 1: this PDU carries the command's status (no SCSI Response follows). */
export const DATA_IN_STATUS_BIT = 0x01;
/** Data-In byte 1 residual bits, same positions as in the SCSI Response. */
export const DATA_IN_OVERFLOW_BIT = 0x04;
export const DATA_IN_UNDERFLOW_BIT = 0x02;
/** SCSI Response byte 2: the target executed the command (status is meaningful). */
export const RESPONSE_COMPLETED = 0x00;
/** SCSI Response byte 2: the target failed before it could produce a SCSI status. */
export const RESPONSE_TARGET_FAILURE = 0x01;

// --- Login (RFC 7143 11.12, 11.13) ---------------------------------------------

/** Login byte 1: Transit to the next stage. */
export const LOGIN_TRANSIT_BIT = 0x80;
/** Login / Text byte 1: Continue, the text is continued in the next PDU. */
export const CONTINUE_BIT = 0x40;

/** Login stages in CSG/NSG. */
export const Stage = {
  SECURITY: 0,
  OPERATIONAL: 1,
  FULL_FEATURE: 3,
} as const;

/** Status-Class << 8 | Status-Detail (RFC 7143 11.13.5). */
export const LoginStatus = {
  SUCCESS: 0x0000,
  /** Authentication failed, or the initiator could not be authenticated. */
  AUTH_FAILURE: 0x0201,
  /** The initiator is not allowed to access this target (ACL). */
  AUTHORIZATION_FAILURE: 0x0202,
  TARGET_NOT_FOUND: 0x0203,
  TARGET_REMOVED: 0x0204,
  UNSUPPORTED_VERSION: 0x0205,
  TOO_MANY_CONNECTIONS: 0x0206,
  MISSING_PARAMETER: 0x0207,
  CANT_INCLUDE_IN_SESSION: 0x0208,
  SESSION_TYPE_NOT_SUPPORTED: 0x0209,
  SESSION_DOES_NOT_EXIST: 0x020a,
  INVALID_DURING_LOGIN: 0x020b,
  /** Miscellaneous initiator error (malformed request, bad stage transition). */
  INITIATOR_ERROR: 0x0200,
  TARGET_ERROR: 0x0300,
  SERVICE_UNAVAILABLE: 0x0301,
  OUT_OF_RESOURCES: 0x0302,
} as const;

// --- Logout (RFC 7143 11.14, 11.15) ----------------------------------------------

export const LogoutReason = {
  CLOSE_SESSION: 0,
  CLOSE_CONNECTION: 1,
  REMOVE_CONNECTION_FOR_RECOVERY: 2,
} as const;

export const LogoutResponse = {
  SUCCESS: 0,
  CID_NOT_FOUND: 1,
  RECOVERY_NOT_SUPPORTED: 2,
  CLEANUP_FAILED: 3,
} as const;

// --- Task management (RFC 7143 11.5, 11.6) ----------------------------------------

export const TmfFunction = {
  ABORT_TASK: 1,
  ABORT_TASK_SET: 2,
  CLEAR_ACA: 3,
  CLEAR_TASK_SET: 4,
  LOGICAL_UNIT_RESET: 5,
  TARGET_WARM_RESET: 6,
  TARGET_COLD_RESET: 7,
  TASK_REASSIGN: 8,
} as const;

export const TmfResponse = {
  FUNCTION_COMPLETE: 0,
  TASK_DOES_NOT_EXIST: 1,
  LUN_DOES_NOT_EXIST: 2,
  TASK_STILL_ALLEGIANT: 3,
  /** TASK REASSIGN needs ErrorRecoveryLevel 2. */
  ALLEGIANCE_REASSIGNMENT_NOT_SUPPORTED: 4,
  FUNCTION_NOT_SUPPORTED: 5,
  AUTHORIZATION_FAILED: 6,
  FUNCTION_REJECTED: 255,
} as const;

// --- Reject reasons (RFC 7143 11.17.1) -------------------------------------------

export const RejectReason = {
  /** A data segment failed its CRC32C. */
  DATA_DIGEST_ERROR: 0x02,
  SNACK_REJECT: 0x03,
  /** A PDU that is not valid here (wrong phase, inconsistent fields). */
  PROTOCOL_ERROR: 0x04,
  /** An opcode or function this target does not implement. */
  COMMAND_NOT_SUPPORTED: 0x05,
  /** Too many immediate commands in flight. */
  IMMEDIATE_COMMAND_REJECT: 0x06,
  TASK_IN_PROGRESS: 0x07,
  INVALID_DATA_ACK: 0x08,
  /** A field holds a value that cannot be right (unknown TTT, bad offset). */
  INVALID_PDU_FIELD: 0x09,
  LONG_OP_REJECT: 0x0a,
  NEGOTIATION_RESET: 0x0b,
  WAITING_FOR_LOGOUT: 0x0c,
} as const;

// --- What this target offers in login negotiation ---------------------------------

/**
 * Our declared MaxRecvDataSegmentLength for full feature phase: the largest
 * data segment we accept. 256 KiB lets a 256 KiB write travel in one PDU.
 */
export const OUR_MAX_RECV_DATA_SEGMENT = 256 * 1024;
/** RFC 7143 13.12: the default MaxRecvDataSegmentLength, which also applies during login. */
export const DEFAULT_MAX_RECV_DATA_SEGMENT = 8192;
/** Our MaxBurstLength offer: the largest solicited burst (R2T) and Data-In sequence. */
export const OUR_MAX_BURST = 1 * MiB;
/** Our FirstBurstLength offer: unsolicited bytes (immediate + Data-Out) per command. */
export const OUR_FIRST_BURST = 256 * 1024;
/** Our MaxOutstandingR2T offer (per task). */
export const OUR_MAX_OUTSTANDING_R2T = 4;
export const OUR_DEFAULT_TIME2WAIT = 2;
export const OUR_DEFAULT_TIME2RETAIN = 0;

// --- This target's limits -------------------------------------------------------------

/**
 * Commands one session may have outstanding (the CmdSN window: MaxCmdSN -
 * ExpCmdSN + 1 when idle). libiscsi and open-iscsi queue up to 128.
 */
export const CMDSN_WINDOW = 128;
/** Immediate SCSI commands (outside the window) in flight at once before Reject. */
export const MAX_IMMEDIATE_COMMANDS = 16;
/** Largest Expected Data Transfer Length of one command: the engine's largest request (what the unit advertises in VPD B0h). */
export const MAX_TRANSFER_BYTES = MAX_DATA_PAYLOAD;
/** Task management requests of one session waiting for their tasks at once; more are rejected. */
export const MAX_PENDING_TMF = 16;
/**
 * Command data (Data-Out being collected + Data-In being produced) one
 * connection holds at once; R2Ts and reads wait for room beyond it.
 */
export const MAX_DATA_BYTES_IN_FLIGHT = 128 * MiB;
/** Login and Text key=value data accumulated across Continue PDUs. */
export const MAX_TEXT_BYTES = 64 * 1024;
/** Login request PDUs on one connection before we give up on it. */
export const MAX_LOGIN_PDUS = 32;

/** A connection not in full feature phase after this long is closed. */
export const LOGIN_TIMEOUT_MS = 15_000;
/** After this long without any PDU from the initiator, we send a NOP-In ping. */
export const NOP_INTERVAL_MS = 10_000;
/** After a ping, the initiator has this long to send anything before we close. */
export const NOP_TIMEOUT_MS = 15_000;
/** Connections (any phase) the server holds; extra ones are closed at once. */
export const MAX_CONNECTIONS = 256;
/** Connections still logging in at once (login flood bound). */
export const MAX_LOGINS_IN_PROGRESS = 32;
/** On close(), how long in-flight commands get before sockets are destroyed. */
export const CLOSE_GRACE_MS = 5_000;
/** An aborted task that still owes Data-Out is forgotten after this long. */
export const ABORT_DATA_WAIT_MS = 2_000;
