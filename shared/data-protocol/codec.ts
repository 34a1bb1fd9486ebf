import { MAX_DATA_PAYLOAD } from '../constants.js';
import { MAX_COUNTER } from '../counters.js';
import { InvalidArgumentError, ProtocolError } from '../errors.js';
import type { FrameSpec } from '../frame-decoder.js';
import { MAX_ROUTE_BYTES } from './forward-codec.js';
import {
  MAX_ERROR_MESSAGE, Opcode, REPLY_HEADER_SIZE, REPLY_MAGIC, REQUEST_HEADER_SIZE, REQUEST_MAGIC,
  type ReplyHeader, type RequestHeader,
} from './frame.js';

// Pure encoders/decoders for the data protocol's headers. Encoders write into
// a caller-owned buffer (reused per connection); decoders validate everything
// a peer controls and throw ProtocolError on nonsense that breaks the stream.
// u64 fields go as two u32 halves read into a number (hi * 2^32 + lo): no
// BigInt, nothing allocated per request beyond the decoded header.

const TWO_32 = 0x1_0000_0000;
/** High word of the largest u64 a JS number holds exactly (2^53-1 = 0x1fffff_ffffffff). */
const MAX_SAFE_HI = 0x1f_ffff;

/**
 * Encodes a request header. `epoch`, `generation` and `offset` are
 * integers in 0..2^53-1; a larger one (tests) is written as the u64 nearest
 * to it, never cut to its low bits, and the node refuses it.
 */
export function encodeRequestHeader(h: RequestHeader, buf: Buffer, at = 0): Buffer {
  buf.writeUInt32BE(REQUEST_MAGIC, at);
  buf[at + 4] = h.opcode;
  buf[at + 5] = h.flags;
  buf[at + 6] = h.slot;
  buf[at + 7] = 0;
  buf.writeUInt32BE(h.requestId >>> 0, at + 8);
  buf.writeUInt32BE(h.volumeId >>> 0, at + 12);
  buf.writeUInt32BE(h.segment >>> 0, at + 16);
  buf.writeUInt32BE(h.length >>> 0, at + 20);
  writeU64(buf, at + 24, h.offset);
  writeU64(buf, at + 32, h.epoch);
  writeU64(buf, at + 40, h.generation);
  return buf;
}

/**
 * Decodes a request header; throws ProtocolError on a frame that cannot be
 * trusted to delimit the stream (bad magic, reserved byte, offset >= 2^53, a
 * WRITE above the payload limit). `epoch` and `generation` decode as
 * hi * 2^32 + lo: a value above 2^53-1 stays above it (never truncated to a
 * small one), and checkRequestCounters refuses it as a bad request.
 */
export function decodeRequestHeader(buf: Buffer, at = 0): RequestHeader {
  const magic = buf.readUInt32BE(at);
  if (magic !== REQUEST_MAGIC) {
    throw new ProtocolError(`data protocol: bad request magic 0x${magic.toString(16)}`, { magic });
  }
  if (buf[at + 7] !== 0) throw new ProtocolError('data protocol: reserved byte must be 0');
  const hi = buf.readUInt32BE(at + 24);
  if (hi > MAX_SAFE_HI) throw new ProtocolError('data protocol: offset beyond 2^53', { hi });
  const opcode = buf[at + 4]!;
  const length = buf.readUInt32BE(at + 20);
  if ((opcode === Opcode.WRITE || opcode === Opcode.FORWARD_WRITE) && length > MAX_DATA_PAYLOAD) {
    throw new ProtocolError(`data protocol: write of ${length} bytes exceeds the limit of ${MAX_DATA_PAYLOAD}`, { length });
  }
  if (opcode === Opcode.FORWARD_WRITE && (buf.readUInt32BE(at + 40) !== 0 || buf.readUInt32BE(at + 44) > MAX_ROUTE_BYTES)) {
    throw new ProtocolError(`data protocol: forward route above ${MAX_ROUTE_BYTES} bytes`);
  }
  return {
    opcode,
    flags: buf[at + 5]!,
    slot: buf[at + 6]!,
    requestId: buf.readUInt32BE(at + 8),
    volumeId: buf.readUInt32BE(at + 12),
    segment: buf.readUInt32BE(at + 16),
    epoch: buf.readUInt32BE(at + 32) * TWO_32 + buf.readUInt32BE(at + 36),
    offset: hi * TWO_32 + buf.readUInt32BE(at + 28),
    length,
    generation: buf.readUInt32BE(at + 40) * TWO_32 + buf.readUInt32BE(at + 44),
  };
}

/**
 * Refuses (InvalidArgumentError: BAD_REQUEST, for this request only) a
 * decoded header whose epoch or generation is above 2^53-1. The frame itself
 * is well formed, so the connection goes on.
 */
export function checkRequestCounters(h: RequestHeader): void {
  if (h.epoch > MAX_COUNTER || h.generation > MAX_COUNTER) {
    const what = h.epoch > MAX_COUNTER ? 'epoch' : 'generation';
    throw new InvalidArgumentError(`${what} beyond 2^53-1: epochs and generations are 0..2^53-1`, { volumeId: h.volumeId });
  }
}

/** Writes 0 <= v < 2^64 (exact up to 2^53-1) as a big-endian u64: two u32 halves, no BigInt. Negative: RangeError. */
function writeU64(buf: Buffer, at: number, v: number): void {
  buf.writeUInt32BE(Math.floor(v / TWO_32), at);
  buf.writeUInt32BE(v >>> 0, at + 4);
}

export function encodeReplyHeader(h: ReplyHeader, buf: Buffer, at = 0): Buffer {
  buf.writeUInt32BE(REPLY_MAGIC, at);
  buf.writeUInt32BE(h.requestId >>> 0, at + 4);
  buf.writeUInt32BE(h.status >>> 0, at + 8);
  buf.writeUInt32BE(h.length >>> 0, at + 12);
  return buf;
}

export function decodeReplyHeader(buf: Buffer, at = 0): ReplyHeader {
  const magic = buf.readUInt32BE(at);
  if (magic !== REPLY_MAGIC) {
    throw new ProtocolError(`data protocol: bad reply magic 0x${magic.toString(16)}`, { magic });
  }
  return { requestId: buf.readUInt32BE(at + 4), status: buf.readUInt32BE(at + 8), length: buf.readUInt32BE(at + 12) };
}

/** Frames a node reads: WRITE carries its data, FORWARD_WRITE its route block (length in `generation`) then its data. */
export const requestFrameSpec: FrameSpec<RequestHeader> = {
  name: 'data protocol request',
  headerSize: REQUEST_HEADER_SIZE,
  maxPayload: MAX_DATA_PAYLOAD + MAX_ROUTE_BYTES,
  parseHeader: decodeRequestHeader,
  payloadLength: (h) => (h.opcode === Opcode.WRITE ? h.length : h.opcode === Opcode.FORWARD_WRITE ? h.generation + h.length : 0),
};

/** Frames a head reads: the payload is read data (OK) or an error message. */
export const replyFrameSpec: FrameSpec<ReplyHeader> = {
  name: 'data protocol reply',
  headerSize: REPLY_HEADER_SIZE,
  maxPayload: MAX_DATA_PAYLOAD,
  parseHeader: decodeReplyHeader,
  payloadLength: (h) => h.length,
};

/** Encodes an error reply's message, truncated to MAX_ERROR_MESSAGE bytes. */
export function encodeErrorMessage(message: string): Buffer {
  const bytes = Buffer.from(message, 'utf8');
  return bytes.length > MAX_ERROR_MESSAGE ? bytes.subarray(0, MAX_ERROR_MESSAGE) : bytes;
}
