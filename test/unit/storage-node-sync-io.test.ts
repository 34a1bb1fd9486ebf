import { describe, expect, it } from 'vitest';
import { SyncIo } from '../../storage-node/sync-io.js';

// The rules that keep synchronous disk writes from holding the event loop
// (sync-io.ts): a slow or failed synchronous write sends the disk to the
// thread pool; it comes back after the spell only once pool writes are fast
// and none is outstanding (a hung disk stays on the pool); unaligned runs
// always go to the pool.

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('SyncIo', () => {
  it('writes aligned runs synchronously while writes are fast', () => {
    const m = new SyncIo('sync', 2, 50);
    expect(m.sync(0, 4096)).toBe(true);
    m.observe(0.01, false);
    m.observe(1.9, false);
    expect(m.sync(8192, 32768)).toBe(true);
    expect(m.slowRuns).toBe(0);
  });

  it('sends unaligned runs (a partial page may have to be read from the disk) and large runs to the pool', () => {
    const m = new SyncIo('sync');
    expect(m.sync(0, 65536)).toBe(false);
    expect(m.sync(512, 4096)).toBe(false);
    expect(m.sync(4096, 512)).toBe(false);
  });

  it('goes to the pool after a slow write, and back after the spell once a pool write was fast', async () => {
    const m = new SyncIo('sync', 2, 50);
    m.observe(2.5, false);
    expect(m.slowRuns).toBe(1);
    expect(m.sync(0, 4096)).toBe(false);
    const t = m.poolStart();
    m.poolDone(t, false);
    expect(m.sync(0, 4096)).toBe(false); // the spell is not over
    await sleep(70);
    expect(m.sync(0, 4096)).toBe(true);
  });

  it('stays on the pool while a pool write is outstanding (a hung disk) or the last one failed', async () => {
    const m = new SyncIo('sync', 2, 20);
    m.observe(0.01, true); // failed, however fast
    await sleep(40);
    expect(m.sync(0, 4096)).toBe(false); // no pool write has completed yet
    const a = m.poolStart();
    m.poolDone(a, false);
    m.poolStart(); // never completes
    expect(m.sync(0, 4096)).toBe(false);
    const m2 = new SyncIo('sync', 2, 20);
    m2.observe(5, false);
    await sleep(40);
    const b = m2.poolStart();
    m2.poolDone(b, true);
    expect(m2.sync(0, 4096)).toBe(false);
  });

  it('never writes synchronously in pool mode', () => {
    const m = new SyncIo('pool');
    expect(m.sync(0, 4096)).toBe(false);
  });
});
