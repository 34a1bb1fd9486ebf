import { describe, expect, it } from 'vitest';
import { WriteMode } from '../../storage-node/write-mode.js';

// The rule that keeps synchronous disk writes from holding the event loop:
// a slow or failed synchronous write sends the disk to the thread pool for a
// spell, after which synchronous writes are tried again.

describe('WriteMode', () => {
  it('writes synchronously while writes are fast', () => {
    const m = new WriteMode('sync', 2, 50);
    expect(m.sync()).toBe(true);
    m.observe(0.01, false);
    m.observe(1.9, false);
    expect(m.sync()).toBe(true);
    expect(m.slowRuns).toBe(0);
  });

  it('goes to the pool after a slow write, and back after the spell', async () => {
    const m = new WriteMode('sync', 2, 50);
    m.observe(2.5, false);
    expect(m.slowRuns).toBe(1);
    expect(m.sync()).toBe(false);
    await new Promise((resolve) => setTimeout(resolve, 70));
    expect(m.sync()).toBe(true);
  });

  it('goes to the pool after a failed write, however fast', () => {
    const m = new WriteMode('sync', 2, 1000);
    m.observe(0.01, true);
    expect(m.sync()).toBe(false);
  });

  it('never writes synchronously in pool mode', () => {
    const m = new WriteMode('pool');
    expect(m.sync()).toBe(false);
  });
});
