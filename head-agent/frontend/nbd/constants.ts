// NBD wire constants (NetworkBlockDevice/nbd doc/proto.md, "Values"), plus
// this server's own limits. All multi-byte fields on the wire are big-endian.

import { MiB } from '../../../shared/constants.js';

// --- Magics ---------------------------------------------------------------

/** 'NBDMAGIC': first 8 bytes the server sends (INIT_PASSWD). */
export const NBD_MAGIC = 0x4e42444d41474943n;
/** 'IHAVEOPT': second 8 bytes of the newstyle greeting, and the magic of every option request. */
export const NBD_OPTS_MAGIC = 0x49484156454f5054n;
/** Magic of every option reply in fixed newstyle negotiation. */
export const NBD_REP_MAGIC = 0x0003e889045565a9n;
/** Magic of every transmission request. */
export const NBD_REQUEST_MAGIC = 0x25609513;
/** Magic of a simple reply (formerly NBD_REPLY_MAGIC). */
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
/** Magic of a structured reply chunk (only after NBD_OPT_STRUCTURED_REPLY). */
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;

// --- Handshake flags (server, 16 bits) and client flags (32 bits) ----------

/** Server speaks fixed newstyle: unknown options get an error reply, not a hang-up. */
export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
/** Server can skip the 124 zero bytes after an NBD_OPT_EXPORT_NAME reply. */
export const NBD_FLAG_NO_ZEROES = 1 << 1;
/** Client accepts fixed newstyle. */
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
/** Client asks the server to omit the 124 zero bytes. */
export const NBD_FLAG_C_NO_ZEROES = 1 << 1;
/** Every client flag we understand; any other bit set means we must hang up. */
export const KNOWN_CLIENT_FLAGS = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES;

// --- Option types (client -> server during haggling) ----------------------

export const NbdOpt = {
  /** Choose an export and enter transmission; cannot return an error (unknown name = hang up). */
  EXPORT_NAME: 1,
  /** Client ends negotiation; server acks and closes. */
  ABORT: 2,
  /** List exports: one NBD_REP_SERVER each, then NBD_REP_ACK. */
  LIST: 3,
  /** Withdrawn; never valid. */
  PEEK_EXPORT: 4,
  /** TLS upgrade; we run in NOTLS mode. */
  STARTTLS: 5,
  /** Describe one export (NBD_REP_INFO items) without entering transmission. */
  INFO: 6,
  /** Like INFO, then enter transmission on NBD_REP_ACK. */
  GO: 7,
  /** Ask for structured replies in transmission. */
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  EXTENDED_HEADERS: 11,
} as const;

const OPT_NAMES: Record<number, string> = Object.fromEntries(Object.entries(NbdOpt).map(([k, v]) => [v, k]));
export function optionName(opt: number): string {
  return OPT_NAMES[opt] ?? `UNKNOWN(${opt})`;
}

// --- Option reply types (server -> client) --------------------------------

export const NbdRep = {
  /** Option accepted / list finished. No data. */
  ACK: 1,
  /** One export in an NBD_OPT_LIST answer: u32 name length, name, [description]. */
  SERVER: 2,
  /** One NBD_INFO_* item in an NBD_OPT_INFO/GO answer. */
  INFO: 3,
  META_CONTEXT: 4,
  // Errors have bit 31 set; each may carry a human-readable message.
  /** Option unknown to this server. */
  ERR_UNSUP: 0x80000001,
  /** Option known but refused by policy. */
  ERR_POLICY: 0x80000002,
  /** Option known but its data is malformed. */
  ERR_INVALID: 0x80000003,
  ERR_PLATFORM: 0x80000004,
  ERR_TLS_REQD: 0x80000005,
  /** NBD_OPT_INFO/GO named an export that does not exist. */
  ERR_UNKNOWN: 0x80000006,
  /** Server is shutting down. */
  ERR_SHUTDOWN: 0x80000007,
  ERR_BLOCK_SIZE_REQD: 0x80000008,
  ERR_TOO_BIG: 0x80000009,
} as const;

// --- NBD_INFO_* items inside NBD_REP_INFO ---------------------------------

export const NbdInfo = {
  /** Mandatory before ACK: u64 size, u16 transmission flags. */
  EXPORT: 0,
  /** Canonical export name (string). */
  NAME: 1,
  /** Human description (string). */
  DESCRIPTION: 2,
  /** u32 minimum, u32 preferred, u32 maximum block size. */
  BLOCK_SIZE: 3,
} as const;

// --- Transmission flags (16 bits, per export) ------------------------------

export const NBD_FLAG_HAS_FLAGS = 1 << 0;
export const NBD_FLAG_READ_ONLY = 1 << 1;
export const NBD_FLAG_SEND_FLUSH = 1 << 2;
export const NBD_FLAG_SEND_FUA = 1 << 3;
/** Advertises spinning-disk characteristics; we leave it off (a pool of many disks). */
export const NBD_FLAG_ROTATIONAL = 1 << 4;
export const NBD_FLAG_SEND_TRIM = 1 << 5;
/** Exposes NBD_CMD_WRITE_ZEROES and NBD_CMD_FLAG_NO_HOLE. */
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
/** READ accepts NBD_CMD_FLAG_DF; only with structured replies (we always send one data chunk). */
export const NBD_FLAG_SEND_DF = 1 << 7;
/** FLUSH/FUA on one connection covers writes done on every connection to the export. */
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;
export const NBD_FLAG_SEND_FAST_ZERO = 1 << 11;

/**
 * What every export advertises. CAN_MULTI_CONN is honest because every
 * connection to an export reaches the same BlockDevice (one I/O engine per
 * volume), whose flush() covers every write acknowledged so far.
 */
export const EXPORT_TRANSMISSION_FLAGS =
  NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM |
  NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_CAN_MULTI_CONN;

// --- Commands (request type, 16 bits) and command flags (16 bits) ---------

export const NbdCmd = {
  READ: 0,
  /** Followed by `length` bytes of data: the only request with a payload. */
  WRITE: 1,
  /** Disconnect: finish outstanding requests, then close. No reply. */
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
} as const;

const CMD_NAMES: Record<number, string> = Object.fromEntries(Object.entries(NbdCmd).map(([k, v]) => [v, k]));
export function commandName(cmd: number): string {
  return CMD_NAMES[cmd] ?? `UNKNOWN(${cmd})`;
}

/** Force unit access: reply only once the command's writes are durable. Valid on every command. */
export const NBD_CMD_FLAG_FUA = 1 << 0;
/** WRITE_ZEROES must allocate, not punch a hole. Our zeroes always allocate, so it needs nothing. */
export const NBD_CMD_FLAG_NO_HOLE = 1 << 1;
/** READ: don't fragment (structured replies only; our READ replies are never fragmented). */
export const NBD_CMD_FLAG_DF = 1 << 2;
export const NBD_CMD_FLAG_REQ_ONE = 1 << 3;
/** WRITE_ZEROES: fail fast if not faster than a write; not advertised, so invalid here. */
export const NBD_CMD_FLAG_FAST_ZERO = 1 << 4;

// --- Structured reply chunks -----------------------------------------------

/** Structured reply flag: this chunk is the last one for its request. */
export const NBD_REPLY_FLAG_DONE = 1 << 0;

export const NbdReplyType = {
  /** No payload; ends a reply. */
  NONE: 0,
  /** u64 offset, then data: part (for us: all) of a READ's data. */
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  /** u32 error, u16 message length, message: the request failed. */
  ERROR: 0x8001,
  ERROR_OFFSET: 0x8002,
} as const;

// --- Metadata contexts and block status (proto.md "Metadata querying") --------

/** The one metadata context we offer: which bytes have storage (HOLE) and which read as zeros (ZERO). */
export const BASE_ALLOCATION = 'base:allocation';
/** Its context id (chosen by the server; any u32 works, the client echoes nothing). */
export const BASE_ALLOCATION_ID = 1;
/** base:allocation flags of a block status descriptor. */
export const NBD_STATE_HOLE = 1 << 0;
export const NBD_STATE_ZERO = 1 << 1;
/** Descriptors in one BLOCK_STATUS reply at most (8 bytes each): the client asks again from where it ends. */
export const MAX_BLOCK_STATUS_EXTENTS = 2048;

// --- Error values in replies ----------------------------------------------

export const NbdError = {
  OK: 0,
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;

// --- Sizes and this server's limits ---------------------------------------

/** NBDMAGIC + IHAVEOPT + u16 handshake flags. */
export const GREETING_SIZE = 18;
export const CLIENT_FLAGS_SIZE = 4;
/** IHAVEOPT + u32 option + u32 length. */
export const OPTION_HEADER_SIZE = 16;
/** NBD_REP_MAGIC + u32 option + u32 reply type + u32 length. */
export const OPTION_REPLY_HEADER_SIZE = 20;
/** u32 magic, u16 flags, u16 type, u64 handle, u64 offset, u32 length. */
export const REQUEST_HEADER_SIZE = 28;
/** u32 magic, u32 error, u64 handle. */
export const SIMPLE_REPLY_HEADER_SIZE = 16;
/** u32 magic, u16 flags, u16 type, u64 handle, u32 payload length. */
export const STRUCTURED_REPLY_HEADER_SIZE = 20;
/** A structured OFFSET_DATA chunk's header plus its u64 offset: what precedes READ data. */
export const OFFSET_DATA_PREFIX_SIZE = STRUCTURED_REPLY_HEADER_SIZE + 8;
/** Zero padding after an NBD_OPT_EXPORT_NAME reply unless NO_ZEROES was agreed. */
export const EXPORT_NAME_PADDING = 124;

/** Spec: strings (export names, messages) MUST be no longer than 4096 bytes. */
export const MAX_STRING_LENGTH = 4096;
/** Option data above this is treated as a denial of service: hang up. */
export const MAX_OPTION_PAYLOAD = 64 * 1024;
/** Options accepted on one connection before we hang up (a client looping on NBD_OPT_LIST). */
export const MAX_OPTIONS_PER_CONNECTION = 256;

/**
 * Block size constraints advertised in NBD_INFO_BLOCK_SIZE. BlockDevice is
 * byte-addressed, so any alignment works (minimum 1); 4 KiB avoids
 * read-modify-write in the engine's replicas; 32 MiB (2^25) is the largest
 * READ/WRITE the spec says a server must not treat as an attack, and the
 * largest data-protocol payload, so one NBD request maps to bounded work.
 */
export const MIN_BLOCK_SIZE = 1;
export const PREFERRED_BLOCK_SIZE = 4096;
export const MAX_BLOCK_SIZE = 32 * MiB;

/** Requests in flight on one connection before we stop reading its socket. */
export const MAX_INFLIGHT_REQUESTS = 128;
/** Request + reply payload bytes in flight on one connection before we stop reading. */
export const MAX_INFLIGHT_BYTES = 128 * MiB;
/** A connection still negotiating after this long is closed. */
export const HANDSHAKE_TIMEOUT_MS = 10_000;
/** Client connections (any phase) the server holds; extra ones are closed at once. */
export const MAX_CONNECTIONS = 256;
/** On close(), how long in-flight requests get to finish before sockets are destroyed. */
export const CLOSE_GRACE_MS = 5_000;
