import { describe, expect, it } from 'vitest';
import { BufferPool } from '../../shared/buffer-pool.js';

describe('BufferPool', () => {
  it('recycles buffers of pooled sizes and ignores views and foreign buffers', () => {
    const pool = new BufferPool([4096]);
    const a = pool.acquire(4096);
    pool.release(a);
    expect(pool.acquire(4096)).toBe(a);
    pool.release(a.subarray(0, 100)); // a view: ignored
    pool.release(Buffer.alloc(4096)); // not ours: ignored
    expect(pool.idleBytes).toBe(0);
    expect(pool.acquire(1000).length).toBe(1000); // other sizes: plain allocation
  });

  it('holds at most maxPerSize buffers per size and maxBytes in all', () => {
    const pool = new BufferPool([4096, 65536], 2, 100_000);
    const small = [pool.acquire(4096), pool.acquire(4096), pool.acquire(4096)];
    for (const b of small) pool.release(b);
    expect(pool.idleBytes).toBe(2 * 4096);
    const big = [pool.acquire(65536), pool.acquire(65536)];
    for (const b of big) pool.release(b);
    expect(pool.idleBytes).toBe(2 * 4096 + 65536); // the second 64 KiB buffer would pass 100,000 bytes
  });

  it('ignores a second release of the same buffer', () => {
    const pool = new BufferPool([4096]);
    const a = pool.acquire(4096);
    pool.release(a);
    pool.release(a);
    expect(pool.idleBytes).toBe(4096);
    expect(pool.acquire(4096)).toBe(a);
    expect(pool.acquire(4096)).not.toBe(a);
  });
});
