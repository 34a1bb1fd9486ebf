import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { GiB, MiB } from '../../shared/constants.js';
import { destroyTestCluster, startTestCluster } from '../harness/cluster.js';
import { randomFile, run } from '../harness/tools.js';
import { vskyOk } from './clone-fixture.js';
import { numberArg } from './cli-args.js';

// Flatten throughput (docs/snapshots.md): a template of SIZE random bytes
// (2 replicas), its snapshot, and clones that wrote nothing, so a flatten
// copies the whole template:
//   detached: `vsky volume flatten c1` (the manager copies with the job's epoch);
//   attached: c2 attached on head1, `vsky volume flatten c2` (its head copies);
//   nbdcopy:  the snapshot's read-only NBD export into a fresh thin volume's
//             export (the same bytes through the front door), for a ratio.
// Each flatten is timed from submit to "succeeded" (the job's own start/end too).
//
// Run: npm run build && node dist/test/bench/flatten.js [--size-mib N] [--keep]

interface Job { state: string; copied: number | string; startedMs: number | string; endedMs: number | string; error: string }

export interface FlattenBenchRow { name: string; bytes: number; wallMs: number; jobMs: number }

export async function runFlattenBench(sizeMiB = 512, keep = false, log = (s: string) => process.stderr.write(`${s}\n`)): Promise<FlattenBenchRow[]> {
  const bytes = sizeMiB * MiB;
  const diskSize = Math.max(GiB, Math.ceil((bytes * 2 * 5) / 6 / GiB) * GiB);
  const c = await startTestCluster({ diskSize, chunkSize: 256 * MiB, logLevel: 'warn' });
  const work = mkdtempSync(join(tmpdir(), 'vsky-flatten-bench-'));
  const ok = vskyOk(c);
  const rows: FlattenBenchRow[] = [];
  try {
    const src = join(work, 'src.img');
    randomFile(src, bytes);
    await ok(['volume', 'create', 'tpl', '--size', String(bytes), '--replicas', '2']);
    log(`filling tpl (${sizeMiB} MiB) over NBD`);
    await run('nbdcopy', ['--flush', src, (await ok(['volume', 'attach', 'tpl'])).trim().split('\n')[0]!], 600_000);
    rmSync(src);
    await ok(['volume', 'detach', 'tpl']);
    await ok(['snapshot', 'create', 'tpl', 'tpl-s']);
    for (const v of ['c1', 'c2']) await ok(['volume', 'clone', 'tpl-s', v]);
    await run('sync', [], 600_000);

    for (const [name, volume, attached] of [['flatten detached (manager copies)', 'c1', false], ['flatten attached (head copies)', 'c2', true]] as const) {
      if (attached) await ok(['volume', 'attach', volume]);
      log(name);
      const t = performance.now();
      const j = JSON.parse(await ok(['volume', 'flatten', volume, '--json'])) as Job;
      const wallMs = performance.now() - t;
      if (j.state !== 'succeeded') throw new Error(`${name}: job ${j.state}: ${j.error}`);
      rows.push({ name, bytes: Number(j.copied), wallMs, jobMs: Number(j.endedMs) - Number(j.startedMs) });
      if (attached) await ok(['volume', 'detach', volume]);
    }

    log('nbdcopy of the snapshot into a new volume');
    await ok(['volume', 'create', 'dst', '--size', String(bytes), '--replicas', '2']);
    const from = (await ok(['volume', 'attach', 'tpl-s'])).trim().split('\n')[0]!;
    const to = (await ok(['volume', 'attach', 'dst'])).trim().split('\n')[0]!;
    const t = performance.now();
    await run('nbdcopy', ['--flush', from, to], 600_000);
    const ms = performance.now() - t;
    rows.push({ name: 'nbdcopy snapshot export -> new volume', bytes, wallMs: ms, jobMs: ms });
    return rows;
  } finally {
    rmSync(work, { recursive: true, force: true });
    if (keep) await c.stop();
    else await destroyTestCluster(c);
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const rows = await runFlattenBench(numberArg('--size-mib', 512), process.argv.includes('--keep'));
  const base = rows[rows.length - 1]!;
  const rate = (r: FlattenBenchRow) => (r.bytes / MiB) / (r.wallMs / 1000);
  for (const r of rows) {
    console.log(`${r.name.padEnd(40)} ${(r.bytes / MiB).toFixed(0)} MiB in ${(r.wallMs / 1000).toFixed(2)} s `
      + `(job ${(r.jobMs / 1000).toFixed(2)} s): ${rate(r).toFixed(1)} MiB/s, ${(rate(r) / rate(base)).toFixed(2)}x of nbdcopy`);
  }
}
