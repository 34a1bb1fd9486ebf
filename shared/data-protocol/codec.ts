import { MAX_DATA_PAYLOAD } from '../constants.js';
import { ProtocolError } from '../errors.js';
import type { FrameSpec } from '../frame-decoder.js';
import {
  MAX_ERROR_MESSAGE, Opcode, REPLY_HEADER_SIZE, REPLY_MAGIC, REQUEST_HEADER_SIZE, REQUEST_MAGIC,
  type ReplyHeader, type RequestHeader,
} from './frame.js';

// Pure encoders/decoders for the data protocol's headers. Encoders write into
// a caller-owned buffer (reused per connection); decoders validate everything
// a peer controls and throw ProtocolError on nonsense.

const TWO_32 = 0x1_0000_0000;

export function encodeRequestHeader(h: RequestHeader, buf: Buffer, at = 0): Buffer {
  buf.writeUInt32BE(REQUEST_MAGIC, at);
  buf[at + 4] = h.opcode;
  buf[at + 5] = h.flags;
  buf[at + 6] = h.slot;
  buf[at + 7] = 0;
  buf.writeUInt32BE(h.requestId >>> 0, at + 8);
  buf.writeUInt32BE(h.volumeId >>> 0, at + 12);
  buf.writeUInt32BE(h.segment >>> 0, at + 16);
  buf.writeUInt32BE(h.epoch >>> 0, at + 20);
  buf.writeUInt32BE(Math.floor(h.offset / TWO_32), at + 24);
  buf.writeUInt32BE(h.offset % TWO_32, at + 28);
  buf.writeUInt32BE(h.length >>> 0, at + 32);
  buf.writeUInt32BE(h.generation >>> 0, at + 36);
  return buf;
}

export function decodeRequestHeader(buf: Buffer, at = 0): RequestHeader {
  const magic = buf.readUInt32BE(at);
  if (magic !== REQUEST_MAGIC) {
    throw new ProtocolError(`data protocol: bad request magic 0x${magic.toString(16)}`, { magic });
  }
  if (buf[at + 7] !== 0) throw new ProtocolError('data protocol: reserved byte must be 0');
  const hi = buf.readUInt32BE(at + 24);
  if (hi >= 0x20_0000) throw new ProtocolError('data protocol: offset beyond 2^53', { hi });
  const opcode = buf[at + 4]!;
  const length = buf.readUInt32BE(at + 32);
  if (opcode === Opcode.WRITE && length > MAX_DATA_PAYLOAD) {
    throw new ProtocolError(`data protocol: write of ${length} bytes exceeds the limit of ${MAX_DATA_PAYLOAD}`, { length });
  }
  return {
    opcode,
    flags: buf[at + 5]!,
    slot: buf[at + 6]!,
    requestId: buf.readUInt32BE(at + 8),
    volumeId: buf.readUInt32BE(at + 12),
    segment: buf.readUInt32BE(at + 16),
    epoch: buf.readUInt32BE(at + 20),
    offset: hi * TWO_32 + buf.readUInt32BE(at + 28),
    length,
    generation: buf.readUInt32BE(at + 36),
  };
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

/** Frames a node reads: only WRITE requests carry a payload. */
export const requestFrameSpec: FrameSpec<RequestHeader> = {
  name: 'data protocol request',
  headerSize: REQUEST_HEADER_SIZE,
  maxPayload: MAX_DATA_PAYLOAD,
  parseHeader: decodeRequestHeader,
  payloadLength: (h) => (h.opcode === Opcode.WRITE ? h.length : 0),
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
