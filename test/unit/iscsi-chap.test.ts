// CHAP arithmetic (RFC 1994 / RFC 7143 12.1.3) and value encodings.

import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { ProtocolError } from '../../shared/errors.js';
import {
  checkInitiatorChallenge, chapResponse, decodeBinary, encodeBinary, makeChallenge, offersMd5, parseChapIdentifier,
  TARGET_CHALLENGE_BYTES, verifyChapResponse,
} from '../../head-agent/frontend/iscsi/chap.js';

describe('iSCSI CHAP', () => {
  it('computes MD5(id || secret || challenge)', () => {
    const challenge = Buffer.from('0123456789abcdef0123456789abcdef', 'hex');
    const want = createHash('md5').update(Buffer.concat([Buffer.from([0x2a]), Buffer.from('secret-12345'), challenge])).digest();
    expect(chapResponse(0x2a, 'secret-12345', challenge)).toEqual(want);
    // RFC 1994 style known answer: id 1, secret "a", challenge 0x00: md5(01 61 00).
    expect(chapResponse(1, 'a', Buffer.from([0])).toString('hex')).toBe(createHash('md5').update(Buffer.from([1, 0x61, 0])).digest('hex'));
    expect(verifyChapResponse(0x2a, 'secret-12345', challenge, want)).toBe(true);
    expect(verifyChapResponse(0x2b, 'secret-12345', challenge, want)).toBe(false);
    expect(verifyChapResponse(0x2a, 'secret-12346', challenge, want)).toBe(false);
    expect(verifyChapResponse(0x2a, 'secret-12345', challenge, want.subarray(0, 15))).toBe(false);
  });

  it('encodes binary values as hex and decodes hex and base64', () => {
    const b = Buffer.from([0, 1, 0xab, 0xff]);
    expect(encodeBinary(b)).toBe('0x0001abff');
    expect(decodeBinary('0x0001ABFF')).toEqual(b);
    expect(decodeBinary('0X0001abff')).toEqual(b);
    expect(decodeBinary('0b' + b.toString('base64'))).toEqual(b);
    expect(decodeBinary('0xabc')).toEqual(Buffer.from([0x0a, 0xbc]));
    for (const bad of ['', '0x', '0xzz', 'abcd', '0b', '0b!!!!', '12']) expect(() => decodeBinary(bad), bad).toThrow(ProtocolError);
  });

  it('parses CHAP_I and CHAP_A', () => {
    expect(parseChapIdentifier('0')).toBe(0);
    expect(parseChapIdentifier('255')).toBe(255);
    for (const bad of ['256', '-1', 'x', '', '1000']) expect(() => parseChapIdentifier(bad)).toThrow(ProtocolError);
    expect(offersMd5('5')).toBe(true);
    expect(offersMd5('7,6,5')).toBe(true);
    expect(offersMd5('7,6')).toBe(false);
    expect(offersMd5('55')).toBe(false);
  });

  it('makes challenges of 32 random bytes', () => {
    const c = makeChallenge((n) => Buffer.alloc(n, 9));
    expect(c.id).toBe(9);
    expect(c.challenge).toHaveLength(TARGET_CHALLENGE_BYTES);
  });

  it('refuses reflected, short and huge initiator challenges', () => {
    const ours = Buffer.alloc(32, 1);
    expect(checkInitiatorChallenge(Buffer.from(ours), ours)).toMatch(/reflected/);
    expect(checkInitiatorChallenge(Buffer.alloc(8, 2), ours)).toMatch(/shorter/);
    expect(checkInitiatorChallenge(Buffer.alloc(2000, 2), ours)).toMatch(/longer/);
    expect(checkInitiatorChallenge(Buffer.alloc(16, 2), ours)).toBeUndefined();
  });
});
