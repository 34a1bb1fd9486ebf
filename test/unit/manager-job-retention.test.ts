import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { JobRecord } from '../../manager/jobs/records.js';

process.env.VSKY_LOG_LEVEL ??= 'silent';
const { ManagerCore } = await import('../../manager/core.js');
const { FakePeers } = await import('../harness/manager-fake-peers.js');
const { jobsToPrune } = await import('../../manager/jobs/retention.js');
const { loadJobs } = await import('../../manager/jobs/records.js');

// Job records retention (manager/jobs/retention.ts): which ended jobs are
// pruned, and that the manager really deletes them from its LevelDB.

const HOUR = 3600 * 1000;
const NOW = 1_000 * HOUR;

function job(id: string, volumeId: number, createdMs: number, over: Partial<JobRecord> = {}): JobRecord {
  return {
    id, kind: 'wipe', volume: `v${volumeId}`, volumeId, expectedGeneration: 1, args: {}, state: 'succeeded', error: '',
    epoch: 0, done: 0, total: 0, createdMs, startedMs: createdMs, endedMs: createdMs + 1, ...over,
  };
}

describe('jobsToPrune', () => {
  it('keeps the last N ended jobs per volume, drops older ones', () => {
    const jobs = [1, 2, 3, 4, 5].map((i) => job(`a${i}`, 1, NOW - i * HOUR)).concat([job('b1', 2, NOW - HOUR)]);
    expect(jobsToPrune(jobs, { keepPerVolume: 2, maxAgeMs: 1000 * HOUR }, NOW).sort()).toEqual(['a3', 'a4', 'a5']);
  });

  it('drops jobs older than the age limit, but never a volume\'s newest job', () => {
    const jobs = [job('old1', 1, NOW - 50 * HOUR), job('old2', 1, NOW - 60 * HOUR), job('only', 2, NOW - 90 * HOUR)];
    expect(jobsToPrune(jobs, { keepPerVolume: 10, maxAgeMs: 24 * HOUR }, NOW)).toEqual(['old2']);
  });

  it('never drops running jobs, the newest job that reached storage, or a DIRTY volume\'s job', () => {
    const jobs = [
      job('new-untouched', 1, NOW - 1 * HOUR, { state: 'failed', epoch: 0 }), // generation mismatch: never reached storage
      job('on-storage', 1, NOW - 2 * HOUR, { epoch: 7 }),
      job('dirty', 1, NOW - 3 * HOUR, { state: 'aborted', epoch: 6 }),
      job('running', 1, NOW - 4 * HOUR, { state: 'running', epoch: 5 }),
      job('gone', 1, NOW - 5 * HOUR, { epoch: 4 }),
    ];
    expect(jobsToPrune(jobs, { keepPerVolume: 1, maxAgeMs: HOUR / 2 }, NOW, new Set(['dirty']))).toEqual(['gone']);
  });
});

describe('pruning in the manager (real LevelDB)', () => {
  let dir: string;
  beforeEach(() => { dir = mkdtempSync(join(tmpdir(), 'vsky-job-retention-')); });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('prunes at start and the records are gone from the database', async () => {
    const open = (keep: number) => ManagerCore.open({ dataDir: dir, chunkSize: 1 << 20, heartbeatTimeoutMs: 5_000, jobRetention: { keepPerVolume: keep } }, new FakePeers());
    let core = await open(100);
    const now = Date.now();
    const batch = core.store.batch();
    for (let i = 1; i <= 5; i++) batch.putJob(job(`j${i}`, 9, now - (10 - i) * 1000, { epoch: i }));
    await core.store.write(batch);
    await core.close();
    // The premise: five ended records are in the database.
    core = await open(100);
    expect((await loadJobs(core.store)).map((j) => j.id)).toEqual(['j1', 'j2', 'j3', 'j4', 'j5']);
    await core.close();
    core = await open(2);
    expect(core.jobs.list().map((j) => j.id)).toEqual(['j4', 'j5']);
    expect((await loadJobs(core.store)).map((j) => j.id)).toEqual(['j4', 'j5']);
    await core.close();
  });
});
