// CRC32C (our wrapper over @node-rs/crc32) against the RFC 3720 appendix B.4
// vectors (bytes shown there in wire order, i.e. least significant byte first)
// and against a bit-at-a-time reference, for every split point, unaligned views
// and sizes up to a 64 KiB data segment.

import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { crc32c, readDigest, writeDigest } from '../../head-agent/frontend/iscsi/crc32c.js';

/** The plain bitwise definition, for cross-checking the native implementation. */
function reference(data: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of data) {
    c ^= b;
    for (let i = 0; i < 8; i++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
  }
  return (c ^ 0xffffffff) >>> 0;
}

/** RFC 3720 B.4 prints the CRC as it travels: bytes in wire order. */
function wire(hex: string): number {
  return Buffer.from(hex.replace(/ /g, ''), 'hex').readUInt32LE(0);
}

describe('crc32c', () => {
  it('matches the RFC 3720 B.4 vectors', () => {
    expect(crc32c(Buffer.alloc(32, 0))).toBe(wire('aa 36 91 8a'));
    expect(crc32c(Buffer.alloc(32, 0xff))).toBe(wire('43 ab a8 62'));
    expect(crc32c(Buffer.from(Array.from({ length: 32 }, (_, i) => i)))).toBe(wire('4e 79 dd 46'));
    expect(crc32c(Buffer.from(Array.from({ length: 32 }, (_, i) => 31 - i)))).toBe(wire('5c db 3f 11'));
    // The iSCSI READ command PDU of B.4.
    const pdu = Buffer.from(
      '01c00000000000000000000000000000' + '14000000000004000000001400000018' + '28000000000000000200000000000000', 'hex');
    expect(crc32c(pdu)).toBe(wire('56 3a 96 d9'));
  });

  it('matches the standard check value and the empty input', () => {
    expect(crc32c(Buffer.from('123456789'))).toBe(0xe3069283);
    expect(crc32c(Buffer.alloc(0))).toBe(0);
  });

  it('agrees with the bitwise reference at every length and view offset', () => {
    const data = randomBytes(300);
    for (let off = 0; off < 9; off++) {
      for (let len = 0; len < 40; len++) {
        const view = data.subarray(off, off + len);
        expect(crc32c(view)).toBe(reference(view));
      }
    }
    expect(crc32c(data)).toBe(reference(data));
    const segment = randomBytes(64 * 1024 + 3);
    expect(crc32c(segment.subarray(3))).toBe(reference(segment.subarray(3)));
  });

  it('continues across a split anywhere, and over a sub-range', () => {
    const data = randomBytes(100);
    const whole = crc32c(data);
    for (let cut = 0; cut <= data.length; cut++) {
      expect(crc32c(data.subarray(cut), crc32c(data.subarray(0, cut)))).toBe(whole);
      expect(crc32c(data, crc32c(data, 0, 0, cut), cut, data.length)).toBe(whole);
    }
  });

  it('writes digests least significant byte first', () => {
    const b = Buffer.alloc(4);
    writeDigest(b, 0, 0x8a9136aa);
    expect(b.toString('hex')).toBe('aa36918a');
    expect(readDigest(b, 0)).toBe(0x8a9136aa);
  });
});
