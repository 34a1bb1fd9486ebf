// Wire layout of the VastSky data protocol: head agent <-> storage node, one
// TCP connection per pair, pipelined (many requests in flight, replies matched
// by request id, not by order). See docs/data-protocol.md.
//
// Request header (48 bytes, big-endian; every u64 on an 8-byte boundary):
//   0  u32 magic 'VSK2'       4  u8 opcode     5  u8 flags     6  u8 replica slot   7  u8 reserved (0)
//   8  u32 request id         12 u32 volume id
//   16 u32 segment index      20 u32 length
//   24 u64 offset within the chunk (< 2^53)
//   32 u64 lease epoch        (0..2^53-1; above: BAD_REQUEST)
//   40 u64 generation         (FENCE only; 0 otherwise; 0..2^53-1; above: BAD_REQUEST)
//   WRITE is followed by `length` payload bytes.
//   FORWARD_WRITE (primary forwarding, docs/replication-topology.md): the u64
//   at 40 is the byte length R of a route block (forward-codec.ts, at most
//   MAX_ROUTE_BYTES), and the payload is R route bytes then `length` data bytes.
//   No other request carries a payload.
//   Epochs and generations never wrap (shared/counters.ts). The 40-byte layout
//   before it (u32 epoch and generation) had the magic 'VSKQ': a peer of that
//   layout is refused at its first frame (bad magic), never misread.
// Reply header (16 bytes, big-endian):
//   0  u32 magic 'VSKR'       4  u32 request id  8  u32 status   12 u32 payload length
//   A READ reply with status OK carries the data; an error reply carries a UTF-8 message.

export const REQUEST_MAGIC = 0x56534b32; // 'VSK2' (the 40-byte header of 32-bit epochs was 'VSKQ')
export const REPLY_MAGIC = 0x56534b52; // 'VSKR'
export const REQUEST_HEADER_SIZE = 48;
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
  /**
   * A WRITE to this node's chunk that it also forwards, unchanged (epoch,
   * flags, offset, data), to the replicas its route block lists; replied once
   * every replica answered, with each one's outcome (Status.FORWARD_RESULTS)
   * unless all succeeded. A route of no replicas is a forwarded leg.
   */
  FORWARD_WRITE: 10,
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
  /** Malformed or nonsensical request (unknown opcode, bad flags, an epoch or generation above 2^53-1, payload on a non-write). */
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
  /**
   * The chunk is a snapshot's (read-only mark in its record): WRITE,
   * WRITE_ZEROES, DISCARD, MARK_DIRTY and CLEAR_DIRTY are refused, changing nothing.
   */
  READ_ONLY: 8,
  /**
   * FORWARD_WRITE: some replica did not acknowledge; the payload lists each
   * replica's outcome (forward-codec.ts encodeForwardResults), primary first.
   */
  FORWARD_RESULTS: 9,
  /**
   * FORWARD_WRITE: its route generation is below one this chunk already took
   * under the same epoch (a late forward from a primary the head gave up on).
   */
  STALE_ROUTE: 10,
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
  /** Lease epoch, 0..2^53-1 (u64 on the wire; a decoded value above 2^53-1 is refused, see checkRequestCounters). */
  epoch: number;
  offset: number;
  length: number;
  /** Volume generation (FENCE), 0..2^53-1 like the epoch. */
  generation: number;
}

export interface ReplyHeader {
  requestId: number;
  status: number;
  length: number;
}
