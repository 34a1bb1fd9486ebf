import { mkdtempSync, openSync, closeSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { WriteGatherer } from '../../storage-node/write-gather.js';
import { SyncIo, type SyncIoName } from '../../storage-node/sync-io.js';
import type { Done } from '../../storage-node/chunk.js';

// WriteGatherer on a real file: adjacent writes of one tick leave as one
// run (one pwritev), anything else as its own run; every byte lands where it
// was addressed and every callback is called exactly once, after its run,
// never inside add(). Both ways of writing a run: on the event loop and
// through the thread pool (sync-io.ts).

describe.each<SyncIoName>(['sync', 'pool'])('WriteGatherer (%s writes)', (modeName) => {
  let dir: string;
  let path: string;
  let fd: number;
  let runsDone: { position: number; writes: number; err: NodeJS.ErrnoException | null }[];
  let gatherer: WriteGatherer;
  let mode: SyncIo;

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'vsky-gather-'));
    path = join(dir, 'disk.img');
    fd = openSync(path, 'w+');
    runsDone = [];
    // A slow-write threshold no loaded test machine reaches: the fallback to the pool has its own tests (storage-node-sync-io).
    mode = new SyncIo(modeName, 60_000);
    gatherer = new WriteGatherer(() => fd, (err, position, callbacks) => {
      runsDone.push({ position, writes: callbacks.length, err });
      for (const cb of callbacks) cb(err === null ? null : err);
    }, mode);
  });

  afterEach(() => {
    closeSync(fd);
    rmSync(dir, { recursive: true, force: true });
  });

  const fill = (n: number, v: number): Buffer => Buffer.alloc(n, v);
  const write = (data: Buffer, position: number): Promise<void> => new Promise((resolve, reject) => {
    const cb: Done = (err) => (err ? reject(err) : resolve());
    gatherer.add(data, position, cb);
  });

  it('joins adjacent writes of one tick into one run and writes every byte in place', async () => {
    const parts = [fill(4096, 1), fill(8192, 2), fill(4096, 3)];
    await Promise.all([write(parts[0]!, 0), write(parts[1]!, 4096), write(parts[2]!, 12288)]);
    expect(runsDone).toEqual([{ position: 0, writes: 3, err: null }]);
    expect(gatherer.runs).toBe(1);
    expect(mode.syncRuns).toBe(modeName === 'sync' ? 1 : 0); // 16 KiB, aligned
    expect(readFileSync(path).equals(Buffer.concat(parts))).toBe(true);
  });

  it('never calls back inside add(), even for a run closed by a later write of the tick', async () => {
    let inside = false;
    let calledInside = 0;
    let called = 0;
    const cb: Done = () => { called++; if (inside) calledInside++; };
    inside = true;
    gatherer.add(fill(512, 1), 0, cb);
    gatherer.add(fill(512, 2), 4096, cb); // closes the first run
    gatherer.add(fill(512, 3), 8192, cb);
    inside = false;
    // Every callback, however busy the thread pool (a fixed sleep let late ones land in the next test).
    for (const until = Date.now() + 10_000; called < 3 && Date.now() < until;) await new Promise((resolve) => setTimeout(resolve, 5));
    expect(called).toBe(3);
    expect(calledInside).toBe(0);
    expect(runsDone.map((r) => r.position).sort((a, b) => a - b)).toEqual([0, 4096, 8192]); // pool completions come in the OS's order
  });

  it('starts a new run at a gap, a backwards write or a later tick', async () => {
    const P = 4096; // aligned: written synchronously in sync mode (sync-io.ts)
    await Promise.all([write(fill(P, 1), 0), write(fill(P, 2), 4 * P), write(fill(P, 3), 2 * P)]);
    await write(fill(P, 4), 3 * P); // adjacent to the previous one, but a later tick
    // Three runs in the first tick (completion order on the pool is the OS's), one in the next.
    const runs = runsDone.map((r) => [r.position, r.writes]);
    expect(runs.slice(0, 3).sort((a, b) => a[0]! - b[0]!)).toEqual([[0, 1], [2 * P, 1], [4 * P, 1]]);
    expect(runs[3]).toEqual([3 * P, 1]);
    expect(mode.syncRuns).toBe(modeName === 'sync' ? 4 : 0);
    const file = readFileSync(path);
    expect([file[0], file[2 * P], file[3 * P], file[4 * P], file[P + 600]]).toEqual([1, 3, 4, 2, 0]);
  });

  it('caps a run at 64 buffers', async () => {
    await Promise.all(Array.from({ length: 70 }, (_, i) => write(fill(4096, i), i * 4096)));
    expect(runsDone.map((r) => r.writes).sort((a, b) => b - a)).toEqual([64, 6]); // completion order differs by mode
    const file = readFileSync(path);
    for (let i = 0; i < 70; i++) expect(file[i * 4096 + 4095]).toBe(i);
  });

  it('writes unaligned runs through the pool in either mode', async () => {
    await Promise.all([write(fill(512, 9), 512), write(fill(512, 8), 1024)]);
    expect(mode.syncRuns).toBe(0);
    const file = readFileSync(path);
    expect([file[0], file[512], file[1024], file[1535]]).toEqual([0, 9, 8, 8]);
  });

  it('fails every write of a run the OS refused', async () => {
    closeSync(fd);
    fd = openSync(path, 'r'); // read-only: pwritev fails with EBADF
    const results = await Promise.allSettled([write(fill(4096, 1), 0), write(fill(4096, 2), 4096)]);
    expect(results.map((r) => r.status)).toEqual(['rejected', 'rejected']);
    expect(runsDone).toEqual([{ position: 0, writes: 2, err: expect.objectContaining({ code: 'EBADF' }) }]);
  });
});
