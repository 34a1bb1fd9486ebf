// Pure CHAP arithmetic for iSCSI login (RFC 7143 12.1.3, RFC 1994): the
// response to a challenge is MD5(identifier byte || secret || challenge).
// Binary values travel as "0x" + hex or "0b" + base64 (RFC 7143 6.1). The
// target's challenge is 32 random bytes (the RFC asks for at least 16); an
// initiator challenge that repeats ours (a reflection attack: the initiator
// would get us to compute the answer to our own question) is refused.

import { createHash, timingSafeEqual } from 'node:crypto';
import { ProtocolError } from '../../../shared/errors.js';

/** CHAP_A value for MD5, the only algorithm RFC 7143 requires (and libiscsi offers). */
export const CHAP_MD5 = 5;
/** Bytes of challenge we send. */
export const TARGET_CHALLENGE_BYTES = 32;
/** Shortest initiator challenge we answer in mutual CHAP (RFC 7143 12.1.3: at least 16). */
export const MIN_INITIATOR_CHALLENGE_BYTES = 16;
/** Longest challenge we take (bounds the hashing work a hostile initiator can ask for). */
export const MAX_CHALLENGE_BYTES = 1024;

/** MD5(id || secret || challenge). */
export function chapResponse(id: number, secret: string, challenge: Buffer): Buffer {
  return createHash('md5').update(Buffer.from([id & 0xff])).update(secret, 'utf8').update(challenge).digest();
}

/** True when `got` is the right response (constant time in the response). */
export function verifyChapResponse(id: number, secret: string, challenge: Buffer, got: Buffer): boolean {
  const want = chapResponse(id, secret, challenge);
  return got.length === want.length && timingSafeEqual(got, want);
}

/** A binary value as we send it: 0x followed by lowercase hex. */
export function encodeBinary(buf: Buffer): string {
  return `0x${buf.toString('hex')}`;
}

/** Decodes "0x<hex>" or "0b<base64>"; throws ProtocolError on anything else. */
export function decodeBinary(value: string): Buffer {
  const prefix = value.slice(0, 2).toLowerCase();
  const body = value.slice(2);
  if (prefix === '0x') {
    // An odd digit count is allowed by RFC 7143 6.1 (leading zero implied).
    const hex = body.length % 2 === 1 ? `0${body}` : body;
    if (hex.length === 0 || !/^[0-9a-fA-F]+$/.test(hex)) throw new ProtocolError(`bad hex value "${value.slice(0, 40)}"`);
    return Buffer.from(hex, 'hex');
  }
  if (prefix === '0b') {
    if (body.length === 0 || !/^[A-Za-z0-9+/]+={0,2}$/.test(body)) throw new ProtocolError(`bad base64 value "${value.slice(0, 40)}"`);
    return Buffer.from(body, 'base64');
  }
  throw new ProtocolError(`binary value without 0x or 0b prefix: "${value.slice(0, 40)}"`);
}

/** CHAP_I: a decimal number 0..255. */
export function parseChapIdentifier(value: string): number {
  if (!/^[0-9]{1,3}$/.test(value)) throw new ProtocolError(`bad CHAP_I "${value.slice(0, 20)}"`);
  const n = Number(value);
  if (n > 255) throw new ProtocolError(`CHAP_I ${n} is above 255`);
  return n;
}

/** True when the CHAP_A list offers MD5. */
export function offersMd5(list: string): boolean {
  return list.split(',').some((v) => v.trim() === String(CHAP_MD5));
}

export interface ChapChallenge {
  id: number;
  challenge: Buffer;
}

/** Our challenge, from `random` (crypto.randomBytes in production). */
export function makeChallenge(random: (n: number) => Buffer): ChapChallenge {
  const bytes = random(TARGET_CHALLENGE_BYTES + 1);
  return { id: bytes[0]!, challenge: Buffer.from(bytes.subarray(1)) };
}

/** Why an initiator's mutual-CHAP challenge is refused, or undefined when it is acceptable. */
export function checkInitiatorChallenge(theirs: Buffer, ours: Buffer): string | undefined {
  if (theirs.length < MIN_INITIATOR_CHALLENGE_BYTES) return `challenge of ${theirs.length} bytes is shorter than ${MIN_INITIATOR_CHALLENGE_BYTES}`;
  if (theirs.length > MAX_CHALLENGE_BYTES) return `challenge of ${theirs.length} bytes is longer than ${MAX_CHALLENGE_BYTES}`;
  if (theirs.equals(ours)) return 'the initiator reflected our own challenge back at us';
  return undefined;
}
