import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { MiB } from '../../shared/constants.js';
import { destroyTestCluster, startTestCluster } from '../harness/cluster.js';
import { expectReplicasEqual, readEveryReplica } from '../harness/replicas.js';
import { randomFile, run, tryRun } from '../harness/tools.js';
import { vsky, vskyJson } from '../harness/vsky.js';

// Storage jobs' remaining gaps (issue 9, docs/jobs.md), with real processes
// on loopback: a copy job waits, pending, while a resync holds a disk at the
// per-disk limit, and the resync shows among the jobs; a DIRTY volume is
// refused at attach (CLI, XML-RPC) until a job succeeds or --allow-dirty;
// ended job records are pruned to the last N per volume; a wipe goes on
// with a node killed (kill -9) and its replicas are resynced afterwards.

interface Job { jobId: string; kind: string; state: string; error: string; waiting: string; startedMs: number; endedMs: number; args: Record<string, string>; done: number; total: number }
interface Replica { slot: number; serverId: string; diskId: string; state: string }
interface Detail { info: { legality: string; dirtyJob: string; generation: number }; map: { segments: Array<{ index: number; replicas: Replica[] }> } }
interface ResyncRow { resyncId: string; volume: string; state: string; sourceDisks: string; targetDisk: string; kind: string }

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('storage jobs: DIRTY attach, retention, per-disk limits, wipe without a node (real processes)', () => {
  let c: LocalCluster;
  let work: string;
  const m = () => c.managerAddress;
  const show = (name: string) => vskyJson<Detail>(['volume', 'show', name], m());
  const job = (id: string) => vskyJson<Job>(['job', 'show', id], m());
  const waitJob = async (id: string, timeoutMs = 60_000): Promise<Job> => {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const j = await job(id);
      if (['succeeded', 'failed', 'aborted', 'fenced'].includes(j.state) || Date.now() > end) return j;
      await sleep(200);
    }
  };
  const until = async <T>(what: string, fn: () => Promise<T | undefined>, timeoutMs = 60_000): Promise<T> => {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const v = await fn();
      if (v !== undefined) return v;
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
      await sleep(200);
    }
  };
  const detach = async (name: string) => expect((await vsky(['volume', 'detach', name], m())).exitCode).toBe(0);

  beforeAll(async () => {
    // Resyncs throttled (1 MiB/s: a 16 MiB resync runs long enough to be seen even on a loaded machine); ended job records: the last 2 per volume.
    c = await startTestCluster({ managerArgs: ['--resync-mibps', '1', '--job-keep', '2'] });
    work = mkdtempSync(join(tmpdir(), 'vsky-jobs-gaps-'));
  });
  afterAll(async () => {
    await destroyTestCluster(c);
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it('a copy job waits, pending, while a resync holds one of its disks at the per-disk limit; the resync shows as a job', async () => {
    const uri = await c.ensureVolume('rv', 16 * MiB, 2);
    const src = join(work, 'rv.img');
    randomFile(src, 16 * MiB);
    await run('nbdcopy', ['--flush', src, uri]);
    await detach('rv');
    const before = await show('rv');
    const failed = before.map.segments[0]!.replicas[0]!.diskId;
    expect((await vsky(['disk', 'fail', failed], m())).exitCode).toBe(0);
    // The premise: a resync of rv runs (a node copies 16 MiB at 1 MiB/s), using its target and source disks.
    const resync = await until('a running resync of rv', async () => {
      const { resyncs } = await vskyJson<{ resyncs: ResyncRow[] }>(['resync', 'list'], m());
      return resyncs.find((r) => r.volume === 'rv' && r.state === 'running');
    });
    const busy = [resync.targetDisk, ...resync.sourceDisks.split(',')];
    await vskyJson(['volume', 'copy', 'rv', 'rv2', '--create', '--job-id', 'cp-wait'], m());
    const waiting = await until('the copy job to wait', async () => {
      const j = await job('cp-wait');
      return j.waiting ? j : undefined;
    }, 10_000);
    expect(waiting.state).toBe('pending');
    expect(waiting.waiting).toMatch(/at the per-disk limit/);
    // The disks it waits for are the resync's (the limit was reached by it, per-disk 1).
    const named = waiting.waiting.match(/disks? ([^:]+):/)![1]!.split(', ');
    expect(named.length).toBeGreaterThan(0);
    for (const d of named) expect(busy).toContain(d);
    // The resync is visible among the jobs, read-only.
    const id = `resync:${resync.resyncId}`;
    const listed = await vskyJson<Job[]>(['job', 'list', '--volume', 'rv'], m());
    expect(listed.find((j) => j.jobId === id)).toMatchObject({ kind: 'resync', state: 'running' });
    expect(String((await vsky(['job', 'abort', id], m())).stderr)).toMatch(/read-only: it cannot be aborted/);
    const watched = await vskyJson<Job>(['job', 'watch', id], m());
    expect(watched).toMatchObject({ kind: 'resync', state: 'succeeded' });
    expect(watched.args.generation).toMatch(/^\d+ -> \d+$/);
    const copied = await waitJob('cp-wait');
    expect(copied).toMatchObject({ state: 'succeeded', waiting: '' });
    // It started only once the resync had ended.
    expect(copied.startedMs).toBeGreaterThanOrEqual(watched.endedMs);
  }, 120_000);

  it('a DIRTY volume is refused at attach (CLI, XML-RPC) with the fixes; --allow-dirty is logged; a wipe makes it LEGAL', async () => {
    const uri = await c.ensureVolume('dv', 32 * MiB, 2);
    const src = join(work, 'dv.img');
    randomFile(src, 32 * MiB);
    await run('nbdcopy', ['--flush', src, uri]);
    await detach('dv');
    // A manager killed between the data work and the final CAS: the restarted one fences the job, DIRTY.
    // Resyncs from here on run unthrottled (only the first test needs one slow enough to watch).
    const throttle = c.manager.args.indexOf('--resync-mibps');
    if (throttle >= 0) c.manager.args[throttle + 1] = '0';
    c.manager.env = { VSKY_CRASH_AT: 'manager.job.worked' };
    await c.manager.restart();
    await c.waitRegistered(20_000, 5);
    await vskyJson(['volume', 'wipe', 'dv', '--job-id', 'wipe-crash'], m()).catch(() => undefined);
    await c.manager.waitExit();
    c.manager.env = {};
    await c.manager.start();
    await c.waitRegistered(20_000, 5);
    expect(await waitJob('wipe-crash')).toMatchObject({ state: 'fenced' });
    const dirty = await show('dv');
    expect(dirty.info).toMatchObject({ legality: 'DIRTY', dirtyJob: 'wipe job wipe-crash fenced' });
    // CLI attach: refused, naming the fixes; nothing exported.
    const refused = await vsky(['volume', 'attach', 'dv', '--head', 'head1'], m());
    expect(refused.exitCode).not.toBe(0);
    expect(String(refused.stderr)).toMatch(/volume dv is DIRTY: its last storage job \(wipe job wipe-crash\) ended fenced.*vsky volume wipe dv.*--allow-dirty/);
    const nbd = `nbd://${c.headEndpoints[0]!.nbd}/dv`;
    expect((await tryRun('nbdinfo', ['--size', nbd])).exitCode).not.toBe(0);
    expect((await show('dv')).info).toMatchObject({ legality: 'DIRTY' });
    // XML-RPC attachLogicalVolume: EBUSY (16) with the same reason.
    const py = `import xmlrpc.client, sys, json
s = xmlrpc.client.ServerProxy(sys.argv[1])
v = [x for x in s.listLogicalVolumes({'ver': 5}) if x['lvolname'] == 'dv'][0]
h = [x for x in s.listHeadServers({'ver': 5}) if x['name'] == 'head1'][0]
try:
    s.attachLogicalVolume({'ver': 5, 'lvolid': v['lvolid'], 'hsvrid': h['hsvrid']})
    print(json.dumps({'code': 0}))
except xmlrpc.client.Fault as f:
    print(json.dumps({'code': f.faultCode, 'why': f.faultString}))`;
    const x = JSON.parse(String((await run('python3', ['-c', py, c.xmlrpcUrl])).stdout)) as { code: number; why: string };
    expect(x.code).toBe(16);
    expect(x.why).toMatch(/DIRTY.*allow-dirty/);
    // --allow-dirty: attached, logged in the event log; the volume stays DIRTY.
    const forced = await vsky(['volume', 'attach', 'dv', '--head', 'head1', '--allow-dirty'], m());
    expect(forced.exitCode).toBe(0);
    const events = await vskyJson<Array<{ kind: string; details: Record<string, unknown> }>>(['events', '--kind', 'volume.attach_dirty'], m());
    expect(events.at(-1)).toMatchObject({ kind: 'volume.attach_dirty', details: { job: 'wipe-crash', head: 'head1' } });
    expect((await show('dv')).info.legality).toBe('DIRTY');
    await detach('dv');
    // The fix: a wipe that succeeds makes it LEGAL; a plain attach works and reads zeros.
    await vskyJson(['volume', 'wipe', 'dv', '--job-id', 'wipe-ok'], m());
    expect(await waitJob('wipe-ok')).toMatchObject({ state: 'succeeded' });
    expect((await show('dv')).info).toMatchObject({ legality: 'LEGAL', dirtyJob: '' });
    const out = join(work, 'dv.out');
    await run('nbdcopy', [await c.ensureVolume('dv', 32 * MiB, 2), out]);
    expect(readFileSync(out).every((b) => b === 0)).toBe(true);
    await detach('dv');
  });

  it('ended job records are pruned to the last N per volume (--job-keep 2); vsky job list shows what is kept', async () => {
    await vskyJson(['volume', 'wipe', 'dv', '--job-id', 'wipe-3'], m());
    expect(await waitJob('wipe-3')).toMatchObject({ state: 'succeeded' });
    const kept = await until('the oldest record pruned', async () => {
      const list = await vskyJson<Job[]>(['job', 'list', '--volume', 'dv'], m());
      return list.some((j) => j.jobId === 'wipe-crash') ? undefined : list;
    }, 10_000);
    expect(kept.map((j) => j.jobId)).toEqual(['wipe-ok', 'wipe-3']);
    const gone = await vsky(['job', 'show', 'wipe-crash'], m());
    expect(String(gone.stderr)).toMatch(/no job "wipe-crash"/);
    // Still what the chunks say: reconnaissance names the last job.
    expect(await vskyJson(['volume', 'recon', 'dv'], m())).toMatchObject({ jobId: 'wipe-3', verdict: 'succeeded' });
  });

  it('a wipe with a node killed (kill -9) succeeds on the in-sync replicas; after the node returns, every replica is byte-identical zeros', async () => {
    const uri = await c.ensureVolume('kv', 32 * MiB, 3);
    const src = join(work, 'kv.img');
    randomFile(src, 32 * MiB);
    await run('nbdcopy', ['--flush', src, uri]);
    await detach('kv');
    // The premise: 3 replicas on 3 servers, so the killed node holds a replica of every segment.
    const before = await show('kv');
    for (const seg of before.map.segments) expect(new Set(seg.replicas.map((r) => r.serverId)).size).toBe(3);
    const victim = c.nodes[2]!;
    await victim.kill9();
    await vskyJson(['volume', 'wipe', 'kv', '--job-id', 'wipe-kill'], m());
    const wiped = await waitJob('wipe-kill');
    expect(wiped).toMatchObject({ state: 'succeeded' });
    const after = await show('kv');
    expect(after.info.legality).toBe('LEGAL');
    const stale = after.map.segments.flatMap((s) => s.replicas.filter((r) => r.state !== 'in_sync'));
    expect(stale.length).toBe(after.map.segments.length); // one replica per segment, on the killed node
    // Marked stale by the wipe (node3 did not answer its compare-and-set) or, if the manager noticed
    // the silence first (heartbeat timeout), by the server's failure; either way, before any zeroing.
    const staleEvents = await vskyJson<Array<{ reason: string }>>(['events', '--kind', 'replica.stale', '--target', 'volume:kv'], m());
    expect(staleEvents.length).toBeGreaterThan(0);
    const out = join(work, 'kv.out');
    await run('nbdcopy', [await c.ensureVolume('kv', 32 * MiB, 3), out]);
    expect(readFileSync(out).every((b) => b === 0)).toBe(true);
    await detach('kv');
    await victim.start();
    await until('every replica of kv in sync', async () => {
      const d = await show('kv');
      return d.map.segments.every((s) => s.replicas.every((r) => r.state === 'in_sync')) ? d : undefined;
    }, 120_000);
    await expectReplicasEqual(c, 'kv', 3);
    const { copies } = await readEveryReplica(c, 'kv');
    for (const copy of copies) expect(copy.data.every((b) => b === 0), `segment ${copy.segment} slot ${copy.slot}`).toBe(true);
  }, 180_000);
});
