import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { MiB } from '../../shared/constants.js';
import { destroyTestCluster, startTestCluster, chunksOnNodes } from '../harness/cluster.js';
import { readEveryReplica } from '../harness/replicas.js';
import { randomFile, run } from '../harness/tools.js';
import { vsky, vskyJson } from '../harness/vsky.js';
import { call, storageNodeClient } from '../../shared/grpc.js';

// Storage jobs with real processes on loopback (manager/jobs/, docs/jobs.md):
// wipe a written, detached volume and read zeros over NBD after attach;
// resize grows it and nbdinfo shows the new size; reconnaissance reads the
// nodes' records; a manager killed (VSKY_CRASH_AT) between the data work and
// the final compare-and-set leaves the volume DIRTY at g, and the restarted
// manager's reconnaissance fences the job (generation g+2).

interface Job { jobId: string; state: string; error: string; expectedGeneration: number; epoch: number }
interface Recon { verdict: string; jobId: string; nodes: Array<{ chunks: number; generation: number; legality: string; jobId: string; jobOutcome: string }> }

describe('storage jobs (real processes)', () => {
  let c: LocalCluster;
  let work: string;
  const SIZE = 32 * MiB;

  beforeAll(async () => {
    c = await startTestCluster();
    work = mkdtempSync(join(tmpdir(), 'vsky-jobs-'));
  });
  afterAll(async () => {
    await destroyTestCluster(c);
    rmSync(work, { recursive: true, force: true });
  });

  const volumeChunks = (volume: string) => chunksOnNodes(c, volume);
  const attach = async (name: string) => String((await vsky(['volume', 'attach', name, '--head', 'head1'], c.managerAddress)).stdout).split('\n')[0]!;
  const detach = async (name: string) => expect((await vsky(['volume', 'detach', name], c.managerAddress)).exitCode).toBe(0);
  const waitJob = async (id: string) => vskyJson<Job>(['job', 'watch', id], c.managerAddress).catch(async () => vskyJson<Job>(['job', 'show', id], c.managerAddress));

  it('wipe: a written detached volume reads zeros over NBD after attach, on every replica; generation g+1, LEGAL', async () => {
    let uri = await c.ensureVolume('wv', SIZE, 3);
    const src = join(work, 'src.img');
    randomFile(src, SIZE);
    await run('nbdcopy', ['--flush', src, uri]);
    // Attached: refused, with the fix in the message.
    await vskyJson(['volume', 'wipe', 'wv', '--job-id', 'wipe-attached'], c.managerAddress);
    const refused = await waitJob('wipe-attached');
    expect(refused.state).toBe('failed');
    expect(refused.error).toMatch(/attached to head .*detach it first/);
    await detach('wv');
    // A wrong generation: fails before touching anything (the data is still there).
    await vskyJson(['volume', 'wipe', 'wv', '--job-id', 'wipe-g7', '--generation', '7'], c.managerAddress);
    expect(await waitJob('wipe-g7')).toMatchObject({ state: 'failed', error: expect.stringMatching(/generation mismatch/) });
    const submitted = await vskyJson<Job>(['volume', 'wipe', 'wv', '--job-id', 'wipe-1'], c.managerAddress);
    expect(submitted.expectedGeneration).toBe(1);
    // The same id again is the same job.
    expect((await vskyJson<Job>(['volume', 'wipe', 'wv', '--job-id', 'wipe-1'], c.managerAddress)).jobId).toBe('wipe-1');
    expect(await waitJob('wipe-1')).toMatchObject({ state: 'succeeded' });
    const recon = await vskyJson<Recon>(['volume', 'recon', 'wv'], c.managerAddress);
    expect(recon).toMatchObject({ verdict: 'succeeded', jobId: 'wipe-1' });
    for (const n of recon.nodes.filter((x) => x.chunks > 0)) expect(n).toMatchObject({ generation: 2, legality: 'LEGAL', jobId: 'wipe-1', jobOutcome: 'succeeded' });
    const human = await vsky(['volume', 'recon', 'wv'], c.managerAddress);
    expect(String(human.stdout)).toMatch(/job wipe-1 from generation 1: succeeded/);
    const { copies } = await readEveryReplica(c, 'wv');
    for (const copy of copies) expect(copy.data.every((b) => b === 0), `segment ${copy.segment} slot ${copy.slot}`).toBe(true);
    uri = await attach('wv');
    const out = join(work, 'out.img');
    await run('nbdcopy', [uri, out]);
    const back = readFileSync(out);
    expect(back.length).toBe(SIZE);
    expect(back.every((b) => b === 0)).toBe(true);
    const list = await vskyJson<Job[]>(['job', 'list', '--volume', 'wv'], c.managerAddress);
    expect(list.map((j) => [j.jobId, j.state])).toEqual([['wipe-attached', 'failed'], ['wipe-g7', 'failed'], ['wipe-1', 'succeeded']]);
  });

  it('resize: grows a detached volume, nbdinfo shows the new size; smaller, unknown ids and ended jobs are clear errors', async () => {
    await detach('wv');
    const small = await vsky(['volume', 'resize', 'wv', '--size', '16M'], c.managerAddress);
    expect(small.exitCode).not.toBe(0);
    expect(String(small.stderr)).toMatch(/volumes only grow; nothing changed/);
    const unknown = await vsky(['job', 'show', 'no-such-job'], c.managerAddress);
    expect(unknown.exitCode).not.toBe(0);
    expect(String(unknown.stderr)).toMatch(/no job "no-such-job"/);
    const ended = await vsky(['job', 'abort', 'wipe-1'], c.managerAddress);
    expect(String(ended.stderr)).toMatch(/already ended \(succeeded\)/);
    await vskyJson(['volume', 'resize', 'wv', '--size', '64M', '--job-id', 'grow-1'], c.managerAddress);
    expect(await waitJob('grow-1')).toMatchObject({ state: 'succeeded', expectedGeneration: 2 });
    // Every chunk, old and new, carries the new shape on its node (a rebuild from storage reads it).
    const ids = await volumeChunks('wv');
    expect(ids).toHaveLength(4 * 3);
    for (const id of ids) expect(id).toMatchObject({ volumeSize: 64 * MiB, segmentCount: 4, generation: 3, legality: 'LEGAL', jobId: 'grow-1', jobKind: 'resize' });
    const uri = await attach('wv');
    const r = await run('nbdinfo', ['--size', uri]);
    expect(Number(String(r.stdout).trim())).toBe(64 * MiB);
    // The new space reads zeros and takes writes.
    const q = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0 40M 1M', '-c', 'write -P 0x5a 60M 1M', '-c', 'read -P 0x5a 60M 1M', uri]);
    expect(String(q.stdout)).not.toMatch(/verification failed|error/i);
    await detach('wv');
  });

  it('a manager killed between the data work and the final CAS leaves DIRTY at g; the restarted manager fences the job (g+2)', async () => {
    c.manager.env = { VSKY_CRASH_AT: 'manager.job.worked' };
    await c.manager.restart();
    await c.waitRegistered();
    await vskyJson(['volume', 'wipe', 'wv', '--job-id', 'wipe-crash'], c.managerAddress).catch(() => undefined);
    await c.manager.waitExit();
    // The premise, read from the nodes themselves (the manager is dead): DIRTY at g (3), the job's record running.
    const ids = await volumeChunks('wv');
    expect(ids).toHaveLength(4 * 3);
    for (const id of ids) expect(id).toMatchObject({ generation: 3, legality: 'DIRTY', jobId: 'wipe-crash', jobKind: 'wipe', jobOutcome: 'running' });
    c.manager.env = {};
    await c.manager.start();
    await c.waitRegistered();
    let job: Job | undefined;
    for (let i = 0; i < 100; i++) {
      job = await vskyJson<Job>(['job', 'show', 'wipe-crash'], c.managerAddress);
      if (job.state !== 'running' && job.state !== 'pending') break;
      await new Promise((r) => setTimeout(r, 200));
    }
    expect(job).toMatchObject({ state: 'fenced', expectedGeneration: 3 });
    const recon = await vskyJson<Recon>(['volume', 'recon', 'wv'], c.managerAddress);
    expect(recon.verdict).toBe('fenced');
    for (const n of recon.nodes.filter((x) => x.chunks > 0)) expect(n).toMatchObject({ generation: 5, legality: 'DIRTY', jobId: 'wipe-crash', jobOutcome: 'fenced' });
  });
});
