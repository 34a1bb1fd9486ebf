// Reproducible test data: the same seed always gives the same bytes or the
// same sequence, so a test can write data and later rebuild what it expects.

/** `len` pseudo-random bytes from `seed` (xorshift32). */
export function fill(len: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(len);
  let x = seed | 1;
  for (let i = 0; i < len; i++) {
    x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

/** A pseudo-random generator of numbers in [0, 1) from `seed` (LCG). */
export function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 0x1_0000_0000;
  };
}
