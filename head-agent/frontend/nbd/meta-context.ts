// Pure codecs of NBD metadata querying (NetworkBlockDevice/nbd doc/proto.md,
// "Metadata querying", NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT,
// NBD_REPLY_TYPE_BLOCK_STATUS) and the choice of contexts: we offer one,
// base:allocation. No sockets, no state; garbage input throws ProtocolError.

import { ProtocolError } from '../../../shared/errors.js';
import { decodeString, encodeOptionReply, writeStructuredReplyHeader } from './codec.js';
import {
  BASE_ALLOCATION, BASE_ALLOCATION_ID, NBD_REPLY_FLAG_DONE, NbdRep, NbdReplyType, STRUCTURED_REPLY_HEADER_SIZE, optionName,
} from './constants.js';

export interface MetaContextRequest {
  exportName: string;
  queries: string[];
}

/** Option data: u32 export name length, name, u32 query count, count x (u32 length, query). */
export function decodeMetaContextRequest(option: number, data: Buffer | undefined): MetaContextRequest {
  const what = `${optionName(option)} data`;
  const buf = data ?? Buffer.alloc(0);
  const need = (at: number, n: number, field: string): void => {
    if (at + n > buf.length) throw new ProtocolError(`${what}: ${field} needs ${n} bytes at ${at}, only ${buf.length - at} left`, { length: buf.length });
  };
  need(0, 4, 'export name length');
  const nameLength = buf.readUInt32BE(0);
  need(4, nameLength, 'export name');
  const exportName = decodeString(buf.subarray(4, 4 + nameLength), 'export name');
  let at = 4 + nameLength;
  need(at, 4, 'query count');
  const count = buf.readUInt32BE(at);
  at += 4;
  // Each query takes at least its 4-byte length: a count the data cannot hold is garbage.
  if (count > (buf.length - at) / 4) throw new ProtocolError(`${what}: ${count} queries cannot fit in ${buf.length - at} bytes`, { count });
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    need(at, 4, `query ${i} length`);
    const n = buf.readUInt32BE(at);
    at += 4;
    need(at, n, `query ${i}`);
    queries.push(decodeString(buf.subarray(at, at + n), `query ${i}`));
    at += n;
  }
  if (at !== buf.length) throw new ProtocolError(`${what}: ${buf.length - at} bytes after the last query`, { length: buf.length });
  return { exportName, queries };
}

/** Client side (tests): the option data of a LIST/SET_META_CONTEXT. */
export function encodeMetaContextRequest(exportName: string, queries: string[]): Buffer {
  const parts: Buffer[] = [];
  const str = (s: string): void => {
    const b = Buffer.from(s, 'utf8');
    const len = Buffer.alloc(4);
    len.writeUInt32BE(b.length, 0);
    parts.push(len, b);
  };
  str(exportName);
  const count = Buffer.alloc(4);
  count.writeUInt32BE(queries.length, 0);
  parts.push(count);
  for (const q of queries) str(q);
  return Buffer.concat(parts);
}

/**
 * The contexts a LIST (`list` true) or SET answers, as [id, name] pairs. LIST
 * with no query names every context; a query "base:" (the namespace alone)
 * lists the namespace's contexts on LIST only; SET selects exact names only.
 * Unknown namespaces and names are ignored (spec: no error).
 */
export function matchMetaContexts(queries: readonly string[], list: boolean): [number, string][] {
  const hit = list && queries.length === 0
    ? true
    : queries.some((q) => q === BASE_ALLOCATION || (list && q === 'base:'));
  return hit ? [[BASE_ALLOCATION_ID, BASE_ALLOCATION]] : [];
}

/** NBD_REP_META_CONTEXT: u32 context id, then the context name. */
export function encodeMetaContextReply(option: number, id: number, name: string): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const data = Buffer.alloc(4 + nameBytes.length);
  data.writeUInt32BE(id, 0);
  nameBytes.copy(data, 4);
  return encodeOptionReply(option, NbdRep.META_CONTEXT, data);
}

/** One block status descriptor: `length` bytes with the base:allocation `flags` (NBD_STATE_*). */
export interface StatusExtent {
  length: number;
  flags: number;
}

/**
 * A final NBD_REPLY_TYPE_BLOCK_STATUS chunk: header, u32 context id, then
 * (u32 length, u32 flags) per extent. One buffer (a block status request is
 * not on the data path).
 */
export function encodeBlockStatusChunk(handleHi: number, handleLo: number, contextId: number, extents: readonly StatusExtent[]): Buffer {
  const payload = 4 + 8 * extents.length;
  const buf = Buffer.alloc(STRUCTURED_REPLY_HEADER_SIZE + payload);
  writeStructuredReplyHeader(buf, 0, NBD_REPLY_FLAG_DONE, NbdReplyType.BLOCK_STATUS, handleHi, handleLo, payload);
  let at = STRUCTURED_REPLY_HEADER_SIZE;
  buf.writeUInt32BE(contextId, at);
  at += 4;
  for (const e of extents) {
    buf.writeUInt32BE(e.length, at);
    buf.writeUInt32BE(e.flags, at + 4);
    at += 8;
  }
  return buf;
}

/** Client side (tests): the context id and extents of a BLOCK_STATUS chunk's payload. */
export function decodeBlockStatusPayload(payload: Buffer): { contextId: number; extents: StatusExtent[] } {
  if (payload.length < 4 || (payload.length - 4) % 8 !== 0) throw new ProtocolError(`block status payload of ${payload.length} bytes is not 4 + 8n`);
  const extents: StatusExtent[] = [];
  for (let at = 4; at < payload.length; at += 8) extents.push({ length: payload.readUInt32BE(at), flags: payload.readUInt32BE(at + 4) });
  return { contextId: payload.readUInt32BE(0), extents };
}

/**
 * Fits engine extents to a request: clipped to `length` (never beyond what
 * was asked), each at most 4 GiB - 4 KiB (a u32 that keeps 4 KiB alignment),
 * neighbours with the same flags merged, at most `max` descriptors (1 for
 * NBD_CMD_FLAG_REQ_ONE). Zero-length extents are dropped. Pure.
 */
export function fitExtents(extents: readonly StatusExtent[], length: number, max: number): StatusExtent[] {
  const LIMIT = 0x1_0000_0000 - 4096;
  const out: StatusExtent[] = [];
  let left = length;
  for (const e of extents) {
    if (left <= 0) break;
    let n = Math.min(e.length, left);
    if (n <= 0) continue;
    left -= n;
    const last = out[out.length - 1];
    if (last !== undefined && last.flags === e.flags && last.length < LIMIT) {
      const add = Math.min(n, LIMIT - last.length);
      last.length += add;
      n -= add;
    }
    while (n > 0) {
      if (out.length >= max) return out;
      const piece = Math.min(n, LIMIT);
      out.push({ length: piece, flags: e.flags });
      n -= piece;
    }
  }
  return out;
}
