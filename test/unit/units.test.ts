import { describe, expect, it } from 'vitest';
import { formatSize, formatSizeExact, parseSize } from '../../shared/units.js';

// Sizes as people type and read them: --help shows defaults with formatSizeExact,
// which parseSize must read back to the same byte count.

describe('sizes', () => {
  it('formats in the largest unit that holds the size exactly', () => {
    expect(formatSizeExact(2 * 1024 ** 3)).toBe('2 GiB');
    expect(formatSizeExact(256 * 1024 ** 2)).toBe('256 MiB');
    expect(formatSizeExact(1536 * 1024 ** 2)).toBe('1536 MiB');
    expect(formatSizeExact(1000)).toBe('1000 B');
    expect(formatSizeExact(4 * 1024 ** 5)).toBe('4096 TiB');
  });

  it('parseSize reads back every exact format', () => {
    for (const bytes of [1, 512, 4096, 1000, 16 * 1024 ** 2, 1536 * 1024 ** 2, 2 * 1024 ** 3, 3 * 1024 ** 4]) {
      expect(parseSize(formatSizeExact(bytes))).toBe(bytes);
      expect(parseSize(formatSizeExact(bytes).replace(' ', ''))).toBe(bytes);
    }
  });

  it('formats for humans with one decimal', () => {
    expect(formatSize(2 * 1024 ** 3)).toBe('2.0 GiB');
    expect(formatSize(100)).toBe('100 B');
  });
});
