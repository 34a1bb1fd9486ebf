import { closeSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { READ_LIMITS, SLOW_READ_MS, SYNC_MAX_READ, SyncIo, readSyncIo } from '../../storage-node/sync-io.js';

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

describe('SyncIo for reads', () => {
  it('reads small ranges synchronously, aligned or not, and larger ones on the pool', () => {
    const m = readSyncIo('sync');
    expect(m.sync(0, 4096)).toBe(true);
    expect(m.sync(513, 100)).toBe(true);
    expect(m.sync(0, SYNC_MAX_READ)).toBe(true);
    expect(m.sync(0, SYNC_MAX_READ + 1)).toBe(false);
    expect(readSyncIo('pool').sync(0, 4096)).toBe(false);
  });

  it('reads on the pool while the disk\'s pool reads are stuck (outstanding, none completed for SLOW_READ_MS)', async () => {
    const m = readSyncIo('sync');
    const t = m.poolStart();
    // Outstanding but young (a 64 KiB read in progress): small reads stay on the loop.
    expect(m.sync(0, 4096)).toBe(true);
    await sleep(SLOW_READ_MS + 5);
    expect(m.sync(0, 4096)).toBe(false); // stuck: it may be a device read on a slow or hung disk
    m.poolDone(t, false);
    expect(m.sync(0, 4096)).toBe(true);
    // A pool that keeps completing is not stuck, however long reads stay outstanding.
    const a = m.poolStart();
    await sleep(SLOW_READ_MS + 5);
    const b = m.poolStart();
    m.poolDone(a, false);
    expect(m.sync(0, 4096)).toBe(true);
    await sleep(SLOW_READ_MS + 5);
    expect(m.sync(0, 4096)).toBe(false); // b is now outstanding with no completion since a's
    m.poolDone(b, false);
  });

  it('goes to the pool after a slow read (a cache miss), and back after the spell once a pool read was fast', async () => {
    const m = new SyncIo('sync', SLOW_READ_MS, 30, READ_LIMITS);
    m.observe(SLOW_READ_MS * 2, false);
    expect(m.sync(0, 4096)).toBe(false);
    await sleep(40);
    expect(m.sync(0, 4096)).toBe(false); // no pool read since
    const t = m.poolStart();
    m.poolDone(t, false);
    expect(m.sync(0, 4096)).toBe(true);
  });

  it('readSync reads the bytes asked for, and fails with EIO past the end of the file', () => {
    const dir = mkdtempSync(join(tmpdir(), 'vsky-syncread-'));
    try {
      const file = join(dir, 'disk');
      writeFileSync(file, Buffer.from('0123456789'));
      const fd = openSync(file, 'r');
      try {
        const m = readSyncIo('sync');
        const buf = Buffer.alloc(8, 0x2e);
        expect(m.readSync(fd, buf, 2, 4, 3)).toBeNull();
        expect(buf.toString()).toBe('..3456..');
        const err = m.readSync(fd, buf, 0, 8, 6);
        expect(err?.code).toBe('EIO');
        expect(m.slowRuns).toBe(1); // a failed read sends the disk's reads to the pool
        expect(m.sync(0, 4096)).toBe(false);
      } finally {
        closeSync(fd);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
