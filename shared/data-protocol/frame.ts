// Wire layout of the VastSky data protocol: head agent <-> storage node, one
// TCP connection per pair, pipelined (many requests in flight, replies matched
// by request id, not by order). See docs/data-protocol.md.
//
// Request header (40 bytes, big-endian):
//   0  u32 magic 'VSKQ'       4  u8 opcode     5  u8 flags     6  u8 replica slot   7  u8 reserved (0)
//   8  u32 request id         12 u32 volume id  16 u32 segment index
//   20 u32 lease epoch        24 u64 offset within the chunk (< 2^53)
//   32 u32 length             36 u32 generation (FENCE only; 0 otherwise)
//   WRITE is followed by `length` payload bytes; no other request carries a payload.
// Reply header (16 bytes, big-endian):
//   0  u32 magic 'VSKR'       4  u32 request id  8  u32 status   12 u32 payload length
//   A READ reply with status OK carries the data; an error reply carries a UTF-8 message.

export const REQUEST_MAGIC = 0x56534b51; // 'VSKQ'
export const REPLY_MAGIC = 0x56534b52; // 'VSKR'
export const REQUEST_HEADER_SIZE = 40;
export const REPLY_HEADER_SIZE = 16;
/** Error messages in replies are truncated to this many bytes. */
export const MAX_ERROR_MESSAGE = 1024;

export const Opcode = {
  READ: 1,
  WRITE: 2,
  FLUSH: 3,
  WRITE_ZEROES: 4,
  DISCARD: 5,
  /** Raise the volume's lease epoch on this node (persisted before the reply). */
  FENCE: 6,
  /** No-op round trip, for liveness checks. */
  PING: 7,
  /**
   * Write-intent: set the dirty bits of the regions covering [offset, offset+length)
   * (persisted before the reply). Sent before the first write into a clean region,
   * so a crashed holder's in-flight regions can be reconciled (rule 4).
   */
  MARK_DIRTY: 8,
  /** Clear the dirty bits of regions covering the range (after a flush with nothing in flight there). */
  CLEAR_DIRTY: 9,
} as const;
export type Opcode = (typeof Opcode)[keyof typeof Opcode];

const OPCODE_NAMES: Record<number, string> = Object.fromEntries(Object.entries(Opcode).map(([k, v]) => [v, k]));
export function opcodeName(op: number): string {
  return OPCODE_NAMES[op] ?? `UNKNOWN(${op})`;
}

export const Flag = {
  /** Force unit access: the write (and the chunk metadata it needed) is durable before the reply. */
  FUA: 1,
} as const;

export const Status = {
  OK: 0,
  /** Malformed or nonsensical request (unknown opcode, bad flags, payload on a non-write). */
  BAD_REQUEST: 1,
  /** This node holds no chunk for (volume, segment, slot). */
  NO_CHUNK: 2,
  /** offset + length reaches past the end of the chunk. */
  OUT_OF_RANGE: 3,
  /** The request's epoch is lower than the highest this node has seen for the volume. */
  STALE_EPOCH: 4,
  /** The disk failed the I/O. */
  IO_ERROR: 5,
  /** Length above the protocol limit. */
  TOO_LARGE: 6,
  /** The disk holding the chunk is failed or being removed. */
  DISK_FAILED: 7,
} as const;
export type Status = (typeof Status)[keyof typeof Status];

const STATUS_NAMES: Record<number, string> = Object.fromEntries(Object.entries(Status).map(([k, v]) => [v, k]));
export function statusName(status: number): string {
  return STATUS_NAMES[status] ?? `UNKNOWN(${status})`;
}

export interface RequestHeader {
  opcode: number;
  flags: number;
  slot: number;
  requestId: number;
  volumeId: number;
  segment: number;
  epoch: number;
  offset: number;
  length: number;
  generation: number;
}

export interface ReplyHeader {
  requestId: number;
  status: number;
  length: number;
}
