// Pure codec of the key=value text carried by Login and Text PDUs (RFC 7143
// 6.1): "key=value" pairs, each terminated by a NUL, UTF-8. Text may be split
// across PDUs at any byte with the C (continue) bit; TextAccumulator joins the
// pieces, within a byte limit, before parsing. Malformed text throws
// ProtocolError; semantics (which keys, which values) live in negotiation.ts.

import { ProtocolError } from '../../../shared/errors.js';
import { MAX_TEXT_BYTES } from './constants.js';

export type KeyPair = readonly [key: string, value: string];

/** RFC 7143 6.1: key names are at most 63 bytes. */
export const MAX_KEY_LENGTH = 63;
/**
 * Values: simple values are at most 255 bytes; binary values (CHAP_C,
 * CHAP_R) and SendTargets answers may be longer. One limit for all, so a
 * hostile value is bounded.
 */
export const MAX_VALUE_LENGTH = 8192;
/** Pairs in one negotiation message. */
export const MAX_KEYS = 256;

/** RFC 7143 6.1: a-z, A-Z, 0-9, '.', '-', '+', '@', '_'. */
const KEY_CHARS = /^[A-Za-z0-9.\-+@_]+$/;
const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Parses complete text (the last byte must be a NUL). Empty text gives no pairs. */
export function parseTextKeys(data: Buffer | undefined): KeyPair[] {
  const pairs: KeyPair[] = [];
  if (data === undefined || data.length === 0) return pairs;
  if (data[data.length - 1] !== 0) throw new ProtocolError('text keys do not end with a NUL', { length: data.length });
  let at = 0;
  while (at < data.length) {
    const end = data.indexOf(0, at);
    if (end === at) {
      // Tolerate stray NULs (some initiators pad with them); they carry no key.
      at++;
      continue;
    }
    const eq = data.indexOf(0x3d /* '=' */, at);
    if (eq < 0 || eq > end) throw new ProtocolError(`text entry without '=': "${preview(data, at, end)}"`);
    if (eq - at > MAX_KEY_LENGTH) throw new ProtocolError(`key longer than ${MAX_KEY_LENGTH} bytes: "${preview(data, at, eq)}"`);
    if (end - eq - 1 > MAX_VALUE_LENGTH) throw new ProtocolError(`value of key "${preview(data, at, eq)}" is longer than ${MAX_VALUE_LENGTH} bytes`);
    const key = data.toString('latin1', at, eq);
    if (!KEY_CHARS.test(key)) throw new ProtocolError(`invalid key name "${preview(data, at, eq)}"`);
    let value: string;
    try {
      value = utf8.decode(data.subarray(eq + 1, end));
    } catch {
      throw new ProtocolError(`value of key ${key} is not UTF-8`);
    }
    if (pairs.length >= MAX_KEYS) throw new ProtocolError(`more than ${MAX_KEYS} keys in one message`);
    pairs.push([key, value]);
    at = end + 1;
  }
  return pairs;
}

export function encodeTextKeys(pairs: readonly KeyPair[]): Buffer {
  if (pairs.length === 0) return Buffer.alloc(0);
  return Buffer.from(pairs.map(([k, v]) => `${k}=${v}\0`).join(''), 'utf8');
}

/** The first key that appears twice (RFC 7143 6.1: a key must not be repeated), or undefined. */
export function duplicateKey(pairs: readonly KeyPair[]): string | undefined {
  const seen = new Set<string>();
  for (const [k] of pairs) {
    if (seen.has(k)) return k;
    seen.add(k);
  }
  return undefined;
}

/**
 * Joins the data segments of a Login or Text request sequence (C bit set on
 * all but the last). push() returns the whole text once the last piece is in.
 */
export class TextAccumulator {
  private pieces: Buffer[] = [];
  private length = 0;
  private readonly limit: number;

  constructor(limit = MAX_TEXT_BYTES) {
    this.limit = limit;
  }

  /** True while pieces are held (the initiator set C on the last PDU). */
  get pending(): boolean {
    return this.pieces.length > 0 || this.length > 0;
  }

  /** Adds one PDU's data; returns the full text when `continues` is false, else undefined. */
  push(data: Buffer | undefined, continues: boolean): Buffer | undefined {
    const n = data?.length ?? 0;
    if (this.length + n > this.limit) {
      this.reset();
      throw new ProtocolError(`text of more than ${this.limit} bytes`, { limit: this.limit });
    }
    // Copy: the data is a view into a socket chunk that must not be pinned.
    if (data !== undefined && n > 0) this.pieces.push(Buffer.from(data));
    this.length += n;
    if (continues) {
      // An empty continued piece still counts, so `pending` stays true.
      if (n === 0) this.pieces.push(Buffer.alloc(0));
      return undefined;
    }
    const whole = this.pieces.length === 1 ? this.pieces[0]! : Buffer.concat(this.pieces, this.length);
    this.reset();
    return whole;
  }

  reset(): void {
    this.pieces = [];
    this.length = 0;
  }
}

/**
 * Splits response text into pieces of at most `max` bytes for Login/Text
 * responses with the C bit (the split may fall anywhere, RFC 7143 6.1).
 */
export function splitText(text: Buffer, max: number): Buffer[] {
  if (text.length <= max) return [text];
  const out: Buffer[] = [];
  for (let at = 0; at < text.length; at += max) out.push(text.subarray(at, Math.min(text.length, at + max)));
  return out;
}

function preview(data: Buffer, start: number, end: number): string {
  return data.toString('latin1', start, Math.min(end, start + 64)).replace(/[^\x20-\x7e]/g, '?');
}
