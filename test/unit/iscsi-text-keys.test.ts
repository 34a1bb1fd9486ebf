// key=value\0 text: parsing, limits, malformed input, continuation and splitting.

import { describe, expect, it } from 'vitest';
import { ProtocolError } from '../../shared/errors.js';
import {
  duplicateKey, encodeTextKeys, MAX_KEY_LENGTH, MAX_KEYS, MAX_VALUE_LENGTH, parseTextKeys, splitText, TextAccumulator,
} from '../../head-agent/frontend/iscsi/text-keys.js';

const t = (s: string): Buffer => Buffer.from(s, 'utf8');

describe('iSCSI text keys', () => {
  it('round-trips pairs, empty values and UTF-8', () => {
    const pairs = [['InitiatorName', 'iqn.1994-05.com.example:host'], ['SendTargets', ''], ['InitiatorAlias', 'hôte-1']] as const;
    expect(parseTextKeys(encodeTextKeys(pairs))).toEqual(pairs);
    expect(parseTextKeys(undefined)).toEqual([]);
    expect(parseTextKeys(Buffer.alloc(0))).toEqual([]);
    expect(encodeTextKeys([])).toHaveLength(0);
  });

  it('takes a value that contains "="', () => {
    expect(parseTextKeys(t('TargetAddress=a=b\0'))).toEqual([['TargetAddress', 'a=b']]);
  });

  it('skips stray NULs', () => {
    expect(parseTextKeys(t('A=1\0\0B=2\0'))).toEqual([['A', '1'], ['B', '2']]);
  });

  it('refuses malformed text', () => {
    const bad = [
      'A=1', // truncated: no final NUL
      'NoEquals\0',
      '=value\0',
      'bad key=1\0',
      'Key/1=2\0',
      `${'K'.repeat(MAX_KEY_LENGTH + 1)}=1\0`,
      `K=${'v'.repeat(MAX_VALUE_LENGTH + 1)}\0`,
    ];
    for (const s of bad) expect(() => parseTextKeys(t(s)), s.slice(0, 20)).toThrow(ProtocolError);
    expect(() => parseTextKeys(Buffer.from([0x41, 0x3d, 0xff, 0xfe, 0]))).toThrow(ProtocolError); // not UTF-8
    expect(() => parseTextKeys(t('A=1\0'.repeat(MAX_KEYS + 1)))).toThrow(/more than/);
    expect(parseTextKeys(t(`${'K'.repeat(MAX_KEY_LENGTH)}=${'v'.repeat(MAX_VALUE_LENGTH)}\0`))).toHaveLength(1);
  });

  it('finds a repeated key', () => {
    expect(duplicateKey([['A', '1'], ['B', '2']])).toBeUndefined();
    expect(duplicateKey([['A', '1'], ['B', '2'], ['A', '3']])).toBe('A');
  });

  it('joins text continued across PDUs split anywhere, within a byte limit', () => {
    const text = encodeTextKeys([['InitiatorName', 'iqn.x'], ['TargetName', 'iqn.y'], ['SessionType', 'Normal']]);
    for (let cut = 0; cut <= text.length; cut++) {
      const acc = new TextAccumulator();
      expect(acc.push(text.subarray(0, cut), true)).toBeUndefined();
      expect(acc.pending).toBe(true);
      const whole = acc.push(text.subarray(cut), false)!;
      expect(parseTextKeys(whole)).toEqual(parseTextKeys(text));
      expect(acc.pending).toBe(false);
    }
    const small = new TextAccumulator(10);
    expect(small.push(t('12345'), true)).toBeUndefined();
    expect(() => small.push(t('123456'), false)).toThrow(ProtocolError);
    expect(small.pending).toBe(false);
  });

  it('splits long text into pieces of at most the segment limit', () => {
    const text = Buffer.alloc(1300, 0x41);
    const pieces = splitText(text, 512);
    expect(pieces.map((p) => p.length)).toEqual([512, 512, 276]);
    expect(Buffer.concat(pieces).equals(text)).toBe(true);
    expect(splitText(text, 2000)).toEqual([text]);
  });
});
