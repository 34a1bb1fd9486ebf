// Pure NBD encoders and decoders: no sockets, no state. Handshake messages are
// rare and small, so they are encoded into fresh buffers; the transmission
// hot path (request headers, simple reply headers) reads and writes in place.
// Garbage input throws ProtocolError. Layouts: NetworkBlockDevice/nbd
// doc/proto.md ("Newstyle negotiation", "Option types", "Request message",
// "Simple reply message", "Structured reply chunk message").

import { ProtocolError } from '../../../shared/errors.js';
import type { FrameSpec } from '../../../shared/frame-decoder.js';
import {
  CLIENT_FLAGS_SIZE, EXPORT_NAME_PADDING, GREETING_SIZE, MAX_BLOCK_SIZE, MAX_OPTION_PAYLOAD,
  MAX_STRING_LENGTH, NBD_FLAG_FIXED_NEWSTYLE, NBD_FLAG_NO_ZEROES, NBD_MAGIC, NBD_OPTS_MAGIC,
  NBD_REPLY_FLAG_DONE, NBD_REP_MAGIC, NBD_REQUEST_MAGIC, NBD_SIMPLE_REPLY_MAGIC, NBD_STRUCTURED_REPLY_MAGIC, NbdCmd,
  NbdInfo, NbdReplyType, OPTION_HEADER_SIZE, OPTION_REPLY_HEADER_SIZE, REQUEST_HEADER_SIZE, SIMPLE_REPLY_HEADER_SIZE,
  STRUCTURED_REPLY_HEADER_SIZE, optionName,
} from './constants.js';

const TWO_32 = 0x1_0000_0000;
const utf8 = new TextDecoder('utf-8', { fatal: true });

// --- Greeting and client flags --------------------------------------------

/** S: NBDMAGIC, IHAVEOPT, u16 handshake flags (fixed newstyle, no zeroes). */
export function encodeGreeting(): Buffer {
  const buf = Buffer.alloc(GREETING_SIZE);
  buf.writeBigUInt64BE(NBD_MAGIC, 0);
  buf.writeBigUInt64BE(NBD_OPTS_MAGIC, 8);
  buf.writeUInt16BE(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES, 16);
  return buf;
}

/** C: u32 client flags, as a header-only frame. */
export const CLIENT_FLAGS_SPEC: FrameSpec<number> = {
  name: 'NBD client flags',
  headerSize: CLIENT_FLAGS_SIZE,
  maxPayload: 0,
  parseHeader: (buf, offset) => buf.readUInt32BE(offset),
  payloadLength: () => 0,
};

// --- Option requests --------------------------------------------------------

export interface OptionHeader {
  option: number;
  /** Bytes of option data that follow the header. */
  length: number;
}

/** C: IHAVEOPT, u32 option, u32 data length, then the data. */
export const OPTION_SPEC: FrameSpec<OptionHeader> = {
  name: 'NBD option',
  headerSize: OPTION_HEADER_SIZE,
  maxPayload: MAX_OPTION_PAYLOAD,
  parseHeader(buf, offset) {
    const magic = buf.readBigUInt64BE(offset);
    if (magic !== NBD_OPTS_MAGIC) {
      throw new ProtocolError(`NBD option: bad magic 0x${magic.toString(16)}, expected IHAVEOPT`, { magic: magic.toString(16) });
    }
    return { option: buf.readUInt32BE(offset + 8), length: buf.readUInt32BE(offset + 12) };
  },
  payloadLength: (h) => h.length,
};

/** Client side: one option request. */
export function encodeOption(option: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const buf = Buffer.alloc(OPTION_HEADER_SIZE + data.length);
  buf.writeBigUInt64BE(NBD_OPTS_MAGIC, 0);
  buf.writeUInt32BE(option, 8);
  buf.writeUInt32BE(data.length, 12);
  data.copy(buf, OPTION_HEADER_SIZE);
  return buf;
}

/** A protocol string: valid UTF-8, no NUL, at most 4096 bytes (spec "Conventions"). */
export function decodeString(bytes: Buffer, what: string): string {
  if (bytes.length > MAX_STRING_LENGTH) {
    throw new ProtocolError(`${what} is ${bytes.length} bytes; the limit is ${MAX_STRING_LENGTH}`, { length: bytes.length });
  }
  if (bytes.includes(0)) throw new ProtocolError(`${what} contains a NUL byte`);
  try {
    return utf8.decode(bytes);
  } catch {
    throw new ProtocolError(`${what} is not valid UTF-8`);
  }
}

/** NBD_OPT_EXPORT_NAME data: the whole payload is the name. */
export function decodeExportName(data: Buffer | undefined): string {
  return decodeString(data ?? Buffer.alloc(0), 'export name');
}

export interface InfoRequest {
  name: string;
  /** NBD_INFO_* types the client asked for, in order. */
  requests: number[];
}

/** NBD_OPT_INFO / NBD_OPT_GO data: u32 name length, name, u16 count, count x u16 info types. */
export function decodeInfoRequest(option: number, data: Buffer | undefined): InfoRequest {
  const what = `${optionName(option)} data`;
  const buf = data ?? Buffer.alloc(0);
  if (buf.length < 6) throw new ProtocolError(`${what} is ${buf.length} bytes; at least 6 are needed (name length, info count)`, { length: buf.length });
  const nameLength = buf.readUInt32BE(0);
  if (nameLength > buf.length - 6) {
    throw new ProtocolError(`${what}: name length ${nameLength} exceeds the ${buf.length - 6} bytes available`, { nameLength });
  }
  const name = decodeString(buf.subarray(4, 4 + nameLength), 'export name');
  const countAt = 4 + nameLength;
  const count = buf.readUInt16BE(countAt);
  const expected = countAt + 2 + 2 * count;
  if (buf.length !== expected) {
    throw new ProtocolError(`${what}: ${count} information requests need ${expected} bytes in all, got ${buf.length}`, { count, length: buf.length });
  }
  const requests: number[] = [];
  for (let i = 0; i < count; i++) requests.push(buf.readUInt16BE(countAt + 2 + 2 * i));
  return { name, requests };
}

/** Client side: NBD_OPT_INFO / NBD_OPT_GO data. */
export function encodeInfoRequest(name: string, requests: number[]): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const buf = Buffer.alloc(4 + nameBytes.length + 2 + 2 * requests.length);
  buf.writeUInt32BE(nameBytes.length, 0);
  nameBytes.copy(buf, 4);
  buf.writeUInt16BE(requests.length, 4 + nameBytes.length);
  requests.forEach((r, i) => buf.writeUInt16BE(r, 6 + nameBytes.length + 2 * i));
  return buf;
}

// --- Option replies ---------------------------------------------------------

/** S: NBD_REP_MAGIC, u32 option, u32 reply type, u32 length, data. */
export function encodeOptionReply(option: number, type: number, data?: Buffer): Buffer {
  const length = data?.length ?? 0;
  const buf = Buffer.alloc(OPTION_REPLY_HEADER_SIZE + length);
  buf.writeBigUInt64BE(NBD_REP_MAGIC, 0);
  buf.writeUInt32BE(option, 8);
  buf.writeUInt32BE(type, 12);
  buf.writeUInt32BE(length, 16);
  data?.copy(buf, OPTION_REPLY_HEADER_SIZE);
  return buf;
}

/** An error reply (type with bit 31 set) carrying a message for the user. */
export function encodeOptionError(option: number, type: number, message: string): Buffer {
  return encodeOptionReply(option, type, truncatedUtf8(message));
}

/** NBD_REP_SERVER data: u32 name length, name. */
export function encodeServerEntry(name: string): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const buf = Buffer.alloc(4 + nameBytes.length);
  buf.writeUInt32BE(nameBytes.length, 0);
  nameBytes.copy(buf, 4);
  return buf;
}

/** NBD_REP_INFO data for NBD_INFO_EXPORT: u16 type, u64 size, u16 transmission flags. */
export function encodeInfoExport(size: number, flags: number): Buffer {
  const buf = Buffer.alloc(12);
  buf.writeUInt16BE(NbdInfo.EXPORT, 0);
  buf.writeBigUInt64BE(BigInt(size), 2);
  buf.writeUInt16BE(flags, 10);
  return buf;
}

/** NBD_REP_INFO data for NBD_INFO_NAME / NBD_INFO_DESCRIPTION: u16 type, string. */
export function encodeInfoString(type: number, text: string): Buffer {
  const bytes = truncatedUtf8(text);
  const buf = Buffer.alloc(2 + bytes.length);
  buf.writeUInt16BE(type, 0);
  bytes.copy(buf, 2);
  return buf;
}

/** NBD_REP_INFO data for NBD_INFO_BLOCK_SIZE: u16 type, u32 min, u32 preferred, u32 max. */
export function encodeInfoBlockSize(min: number, preferred: number, max: number): Buffer {
  const buf = Buffer.alloc(14);
  buf.writeUInt16BE(NbdInfo.BLOCK_SIZE, 0);
  buf.writeUInt32BE(min, 2);
  buf.writeUInt32BE(preferred, 6);
  buf.writeUInt32BE(max, 10);
  return buf;
}

/** Reply to NBD_OPT_EXPORT_NAME: u64 size, u16 flags, 124 zero bytes unless NO_ZEROES was agreed. */
export function encodeExportNameReply(size: number, flags: number, noZeroes: boolean): Buffer {
  const buf = Buffer.alloc(10 + (noZeroes ? 0 : EXPORT_NAME_PADDING));
  buf.writeBigUInt64BE(BigInt(size), 0);
  buf.writeUInt16BE(flags, 8);
  return buf;
}

export interface OptionReplyHeader {
  option: number;
  type: number;
  length: number;
}

/** Client side: option reply frames. */
export const OPTION_REPLY_SPEC: FrameSpec<OptionReplyHeader> = {
  name: 'NBD option reply',
  headerSize: OPTION_REPLY_HEADER_SIZE,
  maxPayload: MAX_OPTION_PAYLOAD,
  parseHeader(buf, offset) {
    const magic = buf.readBigUInt64BE(offset);
    if (magic !== NBD_REP_MAGIC) throw new ProtocolError(`NBD option reply: bad magic 0x${magic.toString(16)}`);
    return { option: buf.readUInt32BE(offset + 8), type: buf.readUInt32BE(offset + 12), length: buf.readUInt32BE(offset + 16) };
  },
  payloadLength: (h) => h.length,
};

// --- Transmission -----------------------------------------------------------

export interface RequestHeader {
  /** NBD_CMD_FLAG_* bits. */
  flags: number;
  /** NBD_CMD_* type. */
  type: number;
  /** The 64-bit opaque handle as two u32 halves: echoed in the reply, never interpreted. */
  handleHi: number;
  handleLo: number;
  /** Byte offset; values past 2^53 lose precision but stay far beyond any export's end. */
  offset: number;
  length: number;
}

/**
 * C: u32 magic, u16 flags, u16 type, u64 handle, u64 offset, u32 length, then
 * `length` data bytes for NBD_CMD_WRITE only. A WRITE above MAX_BLOCK_SIZE is
 * refused by FrameDecoder before anything is allocated.
 */
/**
 * Reads the request header at buf[at, at + 28) into `into` (a recycled
 * request object on the server's hot path): no allocation. Throws
 * ProtocolError on a bad magic.
 */
export function readRequestHeader<H extends RequestHeader>(buf: Buffer, at: number, into: H): H {
  const magic = buf.readUInt32BE(at);
  if (magic !== NBD_REQUEST_MAGIC) {
    throw new ProtocolError(`NBD request: bad magic 0x${magic.toString(16)}, expected 0x${NBD_REQUEST_MAGIC.toString(16)}`, { magic });
  }
  into.flags = buf.readUInt16BE(at + 4);
  into.type = buf.readUInt16BE(at + 6);
  into.handleHi = buf.readUInt32BE(at + 8);
  into.handleLo = buf.readUInt32BE(at + 12);
  into.offset = buf.readUInt32BE(at + 16) * TWO_32 + buf.readUInt32BE(at + 20);
  into.length = buf.readUInt32BE(at + 24);
  return into;
}

/** Payload bytes that follow a request header: a WRITE's data, nothing for the others. */
export function requestPayloadLength(h: RequestHeader): number {
  return h.type === NbdCmd.WRITE ? h.length : 0;
}

/** C: request headers, each parsed into a fresh object (the server parses into recycled ones: see readRequestHeader). */
export const REQUEST_SPEC: FrameSpec<RequestHeader> = {
  name: 'NBD request',
  headerSize: REQUEST_HEADER_SIZE,
  maxPayload: MAX_BLOCK_SIZE,
  parseHeader: (buf, at) => readRequestHeader(buf, at, { flags: 0, type: 0, handleHi: 0, handleLo: 0, offset: 0, length: 0 }),
  payloadLength: requestPayloadLength,
};

/** Client side: a request header (the caller sends WRITE data after it). */
export function encodeRequest(h: RequestHeader): Buffer {
  const buf = Buffer.alloc(REQUEST_HEADER_SIZE);
  buf.writeUInt32BE(NBD_REQUEST_MAGIC, 0);
  buf.writeUInt16BE(h.flags, 4);
  buf.writeUInt16BE(h.type, 6);
  buf.writeUInt32BE(h.handleHi, 8);
  buf.writeUInt32BE(h.handleLo, 12);
  buf.writeBigUInt64BE(BigInt(h.offset), 16);
  buf.writeUInt32BE(h.length, 24);
  return buf;
}

/** S: u32 magic, u32 error, u64 handle, written at target[at...at+16). */
export function writeSimpleReply(target: Buffer, at: number, error: number, handleHi: number, handleLo: number): void {
  target.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, at);
  target.writeUInt32BE(error, at + 4);
  target.writeUInt32BE(handleHi, at + 8);
  target.writeUInt32BE(handleLo, at + 12);
}

/** S: u32 magic, u16 flags, u16 type, u64 handle, u32 payload length, at target[at...at+20). */
export function writeStructuredReplyHeader(
  target: Buffer, at: number, flags: number, type: number, handleHi: number, handleLo: number, length: number,
): void {
  target.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, at);
  target.writeUInt16BE(flags, at + 4);
  target.writeUInt16BE(type, at + 6);
  target.writeUInt32BE(handleHi, at + 8);
  target.writeUInt32BE(handleLo, at + 12);
  target.writeUInt32BE(length, at + 16);
}

/**
 * What precedes a READ's data in a structured reply: a final (DONE)
 * OFFSET_DATA chunk header and the u64 offset. 28 bytes at target[at...].
 */
export function writeOffsetDataPrefix(target: Buffer, at: number, handleHi: number, handleLo: number, offset: number, dataLength: number): void {
  writeStructuredReplyHeader(target, at, NBD_REPLY_FLAG_DONE, NbdReplyType.OFFSET_DATA, handleHi, handleLo, 8 + dataLength);
  target.writeUInt32BE(Math.floor(offset / TWO_32), at + 20);
  target.writeUInt32BE(offset % TWO_32, at + 24);
}

/** A whole final NBD_REPLY_TYPE_ERROR chunk: u32 error, u16 message length, message. */
export function encodeStructuredError(handleHi: number, handleLo: number, error: number, message: string): Buffer {
  const text = truncatedUtf8(message);
  const buf = Buffer.alloc(STRUCTURED_REPLY_HEADER_SIZE + 6 + text.length);
  writeStructuredReplyHeader(buf, 0, NBD_REPLY_FLAG_DONE, NbdReplyType.ERROR, handleHi, handleLo, 6 + text.length);
  buf.writeUInt32BE(error, STRUCTURED_REPLY_HEADER_SIZE);
  buf.writeUInt16BE(text.length, STRUCTURED_REPLY_HEADER_SIZE + 4);
  text.copy(buf, STRUCTURED_REPLY_HEADER_SIZE + 6);
  return buf;
}

export interface StructuredReplyHeader {
  flags: number;
  type: number;
  handleHi: number;
  handleLo: number;
  length: number;
}

/** Client side: a structured reply chunk header. */
export function parseStructuredReplyHeader(buf: Buffer, at = 0): StructuredReplyHeader {
  if (buf.length - at < STRUCTURED_REPLY_HEADER_SIZE) throw new ProtocolError(`NBD structured reply: need ${STRUCTURED_REPLY_HEADER_SIZE} bytes, got ${buf.length - at}`);
  const magic = buf.readUInt32BE(at);
  if (magic !== NBD_STRUCTURED_REPLY_MAGIC) throw new ProtocolError(`NBD structured reply: bad magic 0x${magic.toString(16)}`);
  return {
    flags: buf.readUInt16BE(at + 4), type: buf.readUInt16BE(at + 6),
    handleHi: buf.readUInt32BE(at + 8), handleLo: buf.readUInt32BE(at + 12), length: buf.readUInt32BE(at + 16),
  };
}

export interface SimpleReply {
  error: number;
  handleHi: number;
  handleLo: number;
}

/** Client side: a simple reply header. */
export function parseSimpleReply(buf: Buffer, at = 0): SimpleReply {
  if (buf.length - at < SIMPLE_REPLY_HEADER_SIZE) throw new ProtocolError(`NBD simple reply: need ${SIMPLE_REPLY_HEADER_SIZE} bytes, got ${buf.length - at}`);
  const magic = buf.readUInt32BE(at);
  if (magic !== NBD_SIMPLE_REPLY_MAGIC) throw new ProtocolError(`NBD simple reply: bad magic 0x${magic.toString(16)}`);
  return { error: buf.readUInt32BE(at + 4), handleHi: buf.readUInt32BE(at + 8), handleLo: buf.readUInt32BE(at + 12) };
}

/** Hex form of a handle, for log lines. */
export function handleText(hi: number, lo: number): string {
  return hi.toString(16).padStart(8, '0') + lo.toString(16).padStart(8, '0');
}

function truncatedUtf8(text: string): Buffer {
  const bytes = Buffer.from(text.replace(/\0/g, ''), 'utf8');
  if (bytes.length <= MAX_STRING_LENGTH) return bytes;
  // Cut on a character boundary so the result stays valid UTF-8.
  let end = MAX_STRING_LENGTH;
  while (end > 0 && (bytes[end]! & 0xc0) === 0x80) end--;
  return bytes.subarray(0, end);
}
