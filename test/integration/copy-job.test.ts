import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { MiB } from '../../shared/constants.js';
import { call, storageNodeClient } from '../../shared/grpc.js';
import { destroyTestCluster, startTestCluster, chunksOnNodes } from '../harness/cluster.js';
import { readEveryReplica } from '../harness/replicas.js';
import { randomFile, run, sameContent } from '../harness/tools.js';
import { vsky, vskyJson } from '../harness/vsky.js';
import { PythonClient } from './xmlrpc/helpers.js';

// Copy jobs with real processes on loopback (manager/jobs/copy.ts,
// head-agent/jobs/job-host.ts, docs/jobs.md): the job runs on a head agent, a
// host that can die. Copies with --create and into a written volume compared
// byte for byte with qemu-img compare over NBD; a host killed -9 mid-copy is
// fenced by reconnaissance within the lease TTL + 1 s, and a retry succeeds;
// a host frozen (SIGSTOP) mid-copy or between its flush and its final
// compare-and-set is fenced, and once resumed its late writes and its final
// CAS are refused by the nodes' epoch check, leaving the destination as the
// fence left it; bad requests are clear errors that change nothing.

interface Job { jobId: string; state: string; error: string; expectedGeneration: number; epoch: number; done: number; total: number; host: string; updatedMs: number; endedMs: number }
interface Ident { generation: number; legality: string; jobId: string; jobKind: string; jobOutcome: string; epoch: number }

/** Short, for a quick verdict; long enough that a loaded machine's stalls do not fence live copies (2 s did, once, at load 24). */
const LEASE_TTL_MS = 3000;
const FINAL = new Set(['succeeded', 'failed', 'fenced', 'aborted']);
const SIZE = 32 * MiB;
/** Per test: the machine is shared (two cores), and a test attaches, copies and compares several volumes. */
const T = 180_000;

describe('copy jobs hosted by a head agent (real processes)', () => {
  let c: LocalCluster;
  let work: string;

  beforeAll(async () => {
    c = await startTestCluster({ heads: 2, managerArgs: ['--lease-ttl', String(LEASE_TTL_MS)] });
    work = mkdtempSync(join(tmpdir(), 'vsky-copy-'));
  }, T);
  afterAll(async () => {
    c?.heads[1]?.resume();
    await destroyTestCluster(c);
    rmSync(work, { recursive: true, force: true });
  });

  const m = () => c.managerAddress;
  const head2 = () => c.heads[1]!;
  const attach = async (name: string) => String((await vsky(['volume', 'attach', name, '--head', 'head1'], m())).stdout).split('\n')[0]!;
  const detach = async (name: string) => expect((await vsky(['volume', 'detach', name], m())).exitCode).toBe(0);
  const create = async (name: string, size = SIZE) => expect((await vsky(['volume', 'create', name, '--size', String(size), '--replicas', '2', '--thick'], m())).exitCode).toBe(0); // thick: every segment has chunks (thin copies: thin-copy.test.ts)
  const getJob = async (jobId: string): Promise<Job> => {
    const client = c.client();
    try {
      return await call(client, 'GetJob', { jobId }) as Job;
    } finally {
      client.close();
    }
  };
  const waitJob = async (jobId: string, until: (j: Job) => boolean = (j) => FINAL.has(j.state), timeoutMs = 60_000): Promise<Job> => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const j = await getJob(jobId);
      if (until(j) || Date.now() > deadline) return j;
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  const volumeChunks = async (volume: string): Promise<Ident[]> => (await chunksOnNodes(c, volume)) as Ident[];
  const headLog = () => readFileSync(head2().logPath, 'utf8');
  /** A 32 MiB volume written in full with random data (the source of the long copies). */
  let bigReady = false;
  const big = async () => {
    if (bigReady) return;
    await create('big');
    const file = join(work, 'big.img');
    randomFile(file, SIZE);
    await run('nbdcopy', ['--flush', file, await attach('big')]);
    await detach('big');
    bigReady = true;
  };
  /** Both volumes attached to head1, compared with qemu-img over NBD, detached again. */
  const compare = async (a: string, b: string) => {
    const [ua, ub] = [await attach(a), await attach(b)];
    try {
      return await sameContent(ua, ub);
    } finally {
      await detach(a);
      await detach(b);
    }
  };
  /** A copy of big to `dst` (created) on head2, held to 4 MiB/s (8 s), waited for until it is really mid-copy. */
  const startSlowCopy = async (dst: string, jobId: string) => {
    await big();
    const j = await vskyJson<Job>(['volume', 'copy', 'big', dst, '--create', '--host', 'head2', '--throttle-mibps', '4', '--job-id', jobId], m());
    expect(j.state).toMatch(/pending|running/);
    const mid = await waitJob(jobId, (x) => x.done > 0 || FINAL.has(x.state), 20_000);
    expect(mid.state).toBe('running');
    expect(mid.done).toBeGreaterThan(0);
    expect(mid.done).toBeLessThan(mid.total);
    expect(mid.total).toBe(SIZE);
    return mid;
  };

  it('copy --create: the written regions of SRC, byte for byte; unwritten ones read zeros; DST at g+1, LEGAL on every node; same job id again is the same job', async () => {
    await create('a');
    const ua = await attach('a');
    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 4M', '-c', 'write -P 0x22 20M 1M', '-c', 'write -P 0x33 27M 512k', ua]);
    await detach('a');
    const j = await vskyJson<Job>(['volume', 'copy', 'a', 'a2', '--create', '--job-id', 'cp-1'], m());
    expect(j.jobId).toBe('cp-1');
    expect((await vskyJson<Job>(['volume', 'copy', 'a', 'a2', '--create', '--job-id', 'cp-1'], m())).jobId).toBe('cp-1');
    const done = await waitJob('cp-1');
    expect(done, done.error).toMatchObject({ state: 'succeeded', expectedGeneration: 1, error: '' });
    expect(done.host).not.toBe('');
    // Only the written regions moved: 4M + 1M + 512K.
    expect(done.total).toBe(4 * MiB + MiB + 512 * 1024);
    expect(done.done).toBe(done.total);
    const ids = await volumeChunks('a2');
    expect(ids).toHaveLength(2 * 2);
    for (const id of ids) expect(id).toMatchObject({ generation: 2, legality: 'LEGAL', jobId: 'cp-1', jobKind: 'copy', jobOutcome: 'succeeded' });
    expect(await compare('a', 'a2')).toBe(true);
    const u2 = await attach('a2');
    const q = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0x11 0 4M', '-c', 'read -P 0 4M 16M', '-c', 'read -P 0x22 20M 1M', '-c', 'read -P 0 21M 6M', '-c', 'read -P 0x33 27M 512k', '-c', `read -P 0 ${27 * MiB + 512 * 1024} ${4 * MiB + 512 * 1024}`, u2]);
    expect(String(q.stdout)).not.toMatch(/verification failed|error/i);
    await detach('a2');
    const shown = await vsky(['job', 'show', 'cp-1'], m());
    expect(String(shown.stdout)).toMatch(/copy of a2 \(source=a create=true\) from generation 1: succeeded on head/);
  }, T);

  it('copy into an existing, fully written DST: regions SRC never wrote are zeroed there; DST g -> g+1', async () => {
    await create('b');
    const ub = await attach('b');
    await run('qemu-io', ['-f', 'raw', ...[0, 16].flatMap((o) => ['-c', `write -P 0x77 ${o}M 16M`]), ub]);
    await detach('b');
    await vskyJson(['volume', 'copy', 'a', 'b', '--job-id', 'cp-b', '--expected-generation', '1'], m());
    const done = await waitJob('cp-b');
    expect(done, done.error).toMatchObject({ state: 'succeeded', expectedGeneration: 1 });
    expect(done.total).toBe(SIZE); // 5.5 MiB copied, the other 26.5 MiB zeroed
    for (const id of await volumeChunks('b')) expect(id).toMatchObject({ generation: 2, legality: 'LEGAL', jobId: 'cp-b', jobKind: 'copy' });
    expect(await compare('a', 'b')).toBe(true);
  }, T);

  it('the host killed -9 mid-copy: reconnaissance fences the job within the lease TTL + 1 s; DST DIRTY; a retry with a new id succeeds', async () => {
    await startSlowCopy('k1', 'kill-1');
    await head2().kill9();
    const killed = Date.now();
    const ended = await waitJob('kill-1', (j) => FINAL.has(j.state), 15_000);
    // When the manager recorded the verdict (same host clock), not when the next GetJob poll saw it
    // (on a loaded machine that poll adds a gRPC round trip and a 50 ms sleep of a busy event loop).
    const verdictMs = ended.endedMs - killed;
    expect(ended.endedMs).toBeGreaterThan(0);
    console.log(`copy job host kill -9 -> reconnaissance verdict (${ended.state}): ${verdictMs} ms (lease TTL ${LEASE_TTL_MS} ms)`);
    expect(ended.state).toBe('fenced');
    expect(ended.error).toMatch(new RegExp(`silent for \\d+ ms \\(lease TTL ${LEASE_TTL_MS} ms\\).*interrupted.*fenced under epoch`));
    expect(verdictMs).toBeLessThan(LEASE_TTL_MS + 1000);
    for (const id of await volumeChunks('k1')) expect(id).toMatchObject({ generation: 3, legality: 'DIRTY', jobId: 'kill-1', jobKind: 'copy', jobOutcome: 'fenced' });
    const recon = await vskyJson<{ verdict: string }>(['volume', 'recon', 'k1'], m());
    expect(recon.verdict).toBe('fenced');
    await head2().start();
    await c.waitRegistered();
    // The retry: a new id, from the generation the fence left (3), on head1, unthrottled.
    await vskyJson(['volume', 'copy', 'big', 'k1', '--host', 'head1', '--job-id', 'kill-1-retry'], m());
    expect(await waitJob('kill-1-retry')).toMatchObject({ state: 'succeeded', expectedGeneration: 3 });
    for (const id of await volumeChunks('k1')) expect(id).toMatchObject({ generation: 4, legality: 'LEGAL', jobId: 'kill-1-retry', jobOutcome: 'succeeded' });
    expect(await compare('big', 'k1')).toBe(true);
  }, T);

  it('the host frozen (SIGSTOP) mid-copy is fenced; resumed, its late writes are refused by the nodes\' epoch check and DST stays as the fence left it', async () => {
    await startSlowCopy('k2', 'stop-1');
    head2().pause();
    try {
      const ended = await waitJob('stop-1', (j) => FINAL.has(j.state), 15_000);
      expect(ended.state).toBe('fenced');
      const before = await readEveryReplica(c, 'k2');
      const records = await volumeChunks('k2');
      for (const id of records) expect(id).toMatchObject({ generation: 3, legality: 'DIRTY', jobId: 'stop-1', jobOutcome: 'fenced' });
      // The late host cannot hear from the manager that its job ended (the manager is frozen too):
      // only the nodes can stop it. Its next writes reach them and are refused (stale epoch): terminal.
      c.manager.pause();
      head2().resume();
      const deadline = Date.now() + 20_000;
      while (!/"job":"stop-1".*refused by the storage nodes/.test(headLog()) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
      c.manager.resume();
      const line = headLog().split('\n').find((l) => l.includes('"job":"stop-1"') && l.includes('refused by the storage nodes'));
      expect(line, 'the late host logs the refusal').toBeDefined();
      expect(line).toMatch(/"code":"ESTALE_EPOCH"/);
      expect(line).toMatch(/epoch \d+ is below volume \d+'s epoch \d+/);
      const after = await readEveryReplica(c, 'k2');
      expect(after.copies.length).toBe(before.copies.length);
      after.copies.forEach((x, i) => expect(x.data.equals(before.copies[i]!.data), `segment ${x.segment} slot ${x.slot}`).toBe(true));
      expect(await volumeChunks('k2')).toEqual(records);
      expect((await getJob('stop-1')).state).toBe('fenced');
    } finally {
      c.manager.resume();
      head2().resume();
    }
  }, T);

  it('the host frozen between its flush and its final CAS: fenced; resumed, its final CAS is refused; a retry succeeds', async () => {
    head2().env = { VSKY_PAUSE_AT: 'head.job.flushed' };
    await head2().restart();
    await c.waitRegistered();
    await vskyJson(['volume', 'copy', 'a', 'k3', '--create', '--host', 'head2', '--job-id', 'cas-1'], m());
    try {
      const ended = await waitJob('cas-1', (j) => FINAL.has(j.state), 15_000);
      expect(ended.state).toBe('fenced');
      // The premise: the host really stopped itself after the flush (state T), with all the data copied.
      expect(readFileSync(`/proc/${head2().pid}/stat`, 'utf8').split(' ')[2]).toBe('T');
      expect(headLog()).toMatch(/VSKY_PAUSE_AT: stopping at head.job.flushed/);
      const records = await volumeChunks('k3');
      for (const id of records) expect(id).toMatchObject({ generation: 3, legality: 'DIRTY', jobOutcome: 'fenced' });
      c.manager.pause(); // as above: only the nodes can refuse the late host
      head2().resume();
      const deadline = Date.now() + 20_000;
      while (!/"job":"cas-1".*refused by the storage nodes/.test(headLog()) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
      c.manager.resume();
      const line = headLog().split('\n').find((l) => l.includes('"job":"cas-1"') && l.includes('refused by the storage nodes'));
      expect(line).toMatch(/SetVolumeState at epoch \d+ is below volume \d+'s epoch \d+/);
      expect(await volumeChunks('k3')).toEqual(records);
    } finally {
      c.manager.resume();
      head2().resume();
      head2().env = {};
    }
    await head2().restart();
    await c.waitRegistered();
    await vskyJson(['volume', 'copy', 'a', 'k3', '--job-id', 'cas-1-retry'], m());
    expect(await waitJob('cas-1-retry')).toMatchObject({ state: 'succeeded', expectedGeneration: 3 });
    expect(await compare('a', 'k3')).toBe(true);
  }, T);

  it('bad requests are clear errors that change nothing', async () => {
    const fails = async (args: string[], re: RegExp) => {
      const r = await vsky(['volume', 'copy', ...args], m());
      expect(r.exitCode, args.join(' ')).not.toBe(0);
      expect(String(r.stderr)).toMatch(re);
    };
    const jobsBefore = (await vskyJson<Job[]>(['job', 'list'], m())).length;
    await create('small', 16 * MiB);
    await fails(['a', 'small', '--job-id', 'bad-1'], /destination small \(16(\.0)? MiB\) is smaller than source a \(32(\.0)? MiB\).*nothing changed/);
    await fails(['a', 'a', '--job-id', 'bad-2'], /same volume/);
    await fails(['nosuch', 'x1', '--create', '--job-id', 'bad-3'], /no source volume "nosuch"/);
    await fails(['a', 'nosuch2', '--job-id', 'bad-4'], /no destination volume "nosuch2": create it with --create/);
    await fails(['a', 'b', '--create', '--job-id', 'bad-5'], /destination b already exists: drop --create/);
    await attach('b');
    await fails(['a', 'b', '--job-id', 'bad-6'], /destination b is attached to head head1.*detach b first/);
    await detach('b');
    await attach('a');
    await fails(['a', 'x2', '--create', '--job-id', 'bad-7'], /source a is attached to head head1.*detach a first .*or copy from a snapshot/);
    await detach('a');
    await fails(['a', 'b', '--job-id', 'cp-1'], /job cp-1 already exists as a copy of a2/);
    const volumes = (await vskyJson<Array<{ name: string; generation: number }>>(['volume', 'list'], m()));
    expect(volumes.map((v) => v.name)).not.toContain('x1');
    expect(volumes.map((v) => v.name)).not.toContain('x2');
    expect(volumes.find((v) => v.name === 'b')?.generation).toBe(2);
    expect(volumes.find((v) => v.name === 'small')?.generation).toBe(1);
    expect((await vskyJson<Job[]>(['job', 'list'], m())).length).toBe(jobsBefore);
    const ended = await vsky(['job', 'abort', 'cp-1'], m());
    expect(String(ended.stderr)).toMatch(/already ended \(succeeded\)/);
    expect((await getJob('cp-1')).state).toBe('succeeded');
  }, T);

  it('XML-RPC submitJob kind copy goes through the same jobs (idempotent on jobid)', async () => {
    const py = new PythonClient(join(import.meta.dirname, 'xmlrpc', 'vastsky_client.py'), c.xmlrpcUrl);
    try {
      const xr = async (method: string, struct: Record<string, unknown>) => {
        const r = await py.call(method, { ...struct, ver: 5 });
        if (!('ok' in r)) throw new Error(`${method}: ${JSON.stringify(r)}`);
        return r.ok;
      };
      const job = await xr('submitJob', { jobid: 'xr-copy', kind: 'copy', src_lvolname: 'a', lvolname: 'xr1', create: true });
      expect(job).toMatchObject({ jobid: 'xr-copy', kind: 'copy', lvolname: 'xr1', source: 'a' });
      expect((await xr('submitJob', { jobid: 'xr-copy', kind: 'copy', src_lvolname: 'a', lvolname: 'xr1', create: true })).jobid).toBe('xr-copy');
      expect(await waitJob('xr-copy')).toMatchObject({ state: 'succeeded' });
    } finally {
      py.close();
    }
    expect(await compare('a', 'xr1')).toBe(true);
  }, T);
});
