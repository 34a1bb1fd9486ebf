import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { GiB, MiB } from '../../shared/constants.js';
import { call } from '../../shared/grpc.js';
import { destroyTestCluster, startTestCluster } from '../harness/cluster.js';
import { randomFile, run } from '../harness/tools.js';
import { vsky, vskyJson } from '../harness/vsky.js';
import { numberArg } from './cli-args.js';

// The copy job (docs/jobs.md) against nbdcopy on the same cluster, same run:
// a fully written SRC (random data, 2 replicas) is copied
//   A: by a copy job on head2 (vsky volume copy SRC A --create --host head2):
//      submit to "succeeded", the final CAS and the manager's check included;
//   B: by nbdcopy --flush from SRC's NBD export to a new volume's NBD export
//      (both attached to head1; the attaches are not timed).
// Then the time from kill -9 of a copy job's host to the reconnaissance
// verdict (the job fenced), with the cluster's lease TTL.
//
// Run: npm run build && node dist/test/bench/copy-job.js [--size-mib N] [--lease-ttl MS] [--keep]

export interface CopyBenchResult {
  bytes: number;
  jobMs: number;
  nbdcopyMs: number;
  killToVerdictMs: number;
  leaseTtlMs: number;
}

const FINAL = new Set(['succeeded', 'failed', 'fenced', 'aborted']);

async function job(c: LocalCluster, jobId: string): Promise<{ state: string; done: number; total: number; error: string }> {
  const m = c.client();
  try {
    return await call(m, 'GetJob', { jobId });
  } finally {
    m.close();
  }
}

async function waitJob(c: LocalCluster, jobId: string, until: (j: { state: string; done: number; total: number }) => boolean, pollMs = 50): Promise<{ state: string; error: string }> {
  for (;;) {
    const j = await job(c, jobId);
    if (until(j)) return j;
    await new Promise((r) => setTimeout(r, pollMs));
  }
}

async function ok(args: string[], c: LocalCluster): Promise<string> {
  const r = await vsky(args, c.managerAddress, 600_000);
  if (r.exitCode !== 0) throw new Error(`vsky ${args.join(' ')}: ${String(r.stderr)}`);
  return String(r.stdout).split('\n')[0]!;
}

export async function runCopyBench(sizeMiB = 512, leaseTtlMs = 8000, keep = false, log = (s: string) => process.stderr.write(`${s}\n`)): Promise<CopyBenchResult> {
  const bytes = sizeMiB * MiB;
  const diskSize = Math.max(GiB, Math.ceil((bytes * 2 * 4) / 6 / GiB) * GiB);
  const c = await startTestCluster({ heads: 2, diskSize, chunkSize: 64 * MiB, managerArgs: ['--lease-ttl', String(leaseTtlMs)], logLevel: 'warn' });
  const work = mkdtempSync(join(tmpdir(), 'vsky-copy-bench-'));
  try {
    const create = (name: string) => ok(['volume', 'create', name, '--size', String(bytes), '--replicas', '2', '--thick'], c);
    await create('src');
    const file = join(work, 'src.img');
    randomFile(file, bytes);
    log(`filling src (${sizeMiB} MiB) over NBD`);
    await run('nbdcopy', ['--flush', file, await ok(['volume', 'attach', 'src', '--head', 'head1'], c)], 600_000);
    rmSync(file);
    await ok(['volume', 'detach', 'src'], c);

    log('A: copy job on head2');
    let t = performance.now();
    await vskyJson(['volume', 'copy', 'src', 'a', '--create', '--host', 'head2', '--job-id', 'bench-a'], c.managerAddress);
    const a = await waitJob(c, 'bench-a', (j) => FINAL.has(j.state));
    const jobMs = performance.now() - t;
    if (a.state !== 'succeeded') throw new Error(`copy job ${a.state}: ${a.error}`);

    log('B: nbdcopy between the NBD exports');
    await create('b');
    const [us, ub] = [await ok(['volume', 'attach', 'src', '--head', 'head1'], c), await ok(['volume', 'attach', 'b', '--head', 'head1'], c)];
    t = performance.now();
    await run('nbdcopy', ['--flush', us, ub], 600_000);
    const nbdcopyMs = performance.now() - t;
    await ok(['volume', 'detach', 'src'], c);
    await ok(['volume', 'detach', 'b'], c);

    log('kill -9 of a copy job\'s host');
    await vskyJson(['volume', 'copy', 'src', 'k', '--create', '--host', 'head2', '--throttle-mibps', '32', '--job-id', 'bench-kill'], c.managerAddress);
    await waitJob(c, 'bench-kill', (j) => j.done > 0 || FINAL.has(j.state));
    await c.heads[1]!.kill9();
    t = performance.now();
    const k = await waitJob(c, 'bench-kill', (j) => FINAL.has(j.state), 20);
    const killToVerdictMs = performance.now() - t;
    if (k.state !== 'fenced') throw new Error(`the killed host's job ended ${k.state}: ${k.error}`);
    return { bytes, jobMs, nbdcopyMs, killToVerdictMs, leaseTtlMs };
  } finally {
    rmSync(work, { recursive: true, force: true });
    if (keep) await c.stop();
    else await destroyTestCluster(c);
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const r = await runCopyBench(numberArg('--size-mib', 512), numberArg('--lease-ttl', 8000), process.argv.includes('--keep'));
  const rate = (ms: number) => (r.bytes / MiB) / (ms / 1000);
  console.log(`copy job (head2, submit -> succeeded): ${(r.jobMs / 1000).toFixed(2)} s, ${rate(r.jobMs).toFixed(1)} MiB/s`);
  console.log(`nbdcopy SRC export -> DST export:     ${(r.nbdcopyMs / 1000).toFixed(2)} s, ${rate(r.nbdcopyMs).toFixed(1)} MiB/s`);
  console.log(`ratio copy job / nbdcopy (throughput): ${(rate(r.jobMs) / rate(r.nbdcopyMs)).toFixed(2)}`);
  console.log(`kill -9 of the host -> reconnaissance verdict (fenced): ${Math.round(r.killToVerdictMs)} ms (lease TTL ${r.leaseTtlMs} ms)`);
}
