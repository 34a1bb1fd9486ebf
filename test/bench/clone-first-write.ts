import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { GiB, MiB } from '../../shared/constants.js';
import { destroyTestCluster, startTestCluster } from '../harness/cluster.js';
import { run } from '../harness/tools.js';
import { templateAndThick, vskyOk } from './clone-fixture.js';

// Where a fresh clone's first 4 KiB random writes spend their time (issue 13):
// thick vs fresh clone, fio 4 KiB randwrite, a fixed number of writes (so the
// share of first writes is known), at QD1 and QD16, plus each daemon's CPU
// time per write (/proc/PID/stat). --prof DIR: V8 CPU profiles of the head and node1.
//
//   node dist/test/bench/clone-first-write.js [--ios 4096] [--prof DIR] [--region-size 4K]

const argv = process.argv.slice(2);
const ios = argv.includes('--ios') ? Number(argv[argv.indexOf('--ios') + 1]) : 4096;
const profDir = argv.includes('--prof') ? argv[argv.indexOf('--prof') + 1] : undefined;
const regionSize = argv.includes('--region-size') ? argv[argv.indexOf('--region-size') + 1]! : '';

/** Sum over the storage nodes of a counter (record writes, their bytes). */
async function nodeCounter(c: LocalCluster, name: string): Promise<number> {
  let sum = 0;
  for (const e of c.metricsEndpoints.filter((m) => m.role === 'storage-node')) {
    const text = await (await fetch(e.url)).text();
    for (const line of text.split('\n')) if (line.startsWith(`${name}{`)) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(f[11]) + Number(f[12]);
}

async function main(): Promise<void> {
  const prof = profDir ? ['--cpu-prof', `--cpu-prof-dir=${profDir}`] : [];
  const c = await startTestCluster({ diskSize: 8 * GiB, chunkSize: 256 * MiB, logLevel: 'warn', nodeArgs: { head: prof, node1: prof }, metrics: true,
    storageNodeArgs: regionSize ? ['--region-size', regionSize] : [] });
  const work = mkdtempSync(join(tmpdir(), 'vsky-cfw-'));
  const ok = vskyOk(c);
  try {
    await templateAndThick(c, work);
    const procs = [...c.heads, ...c.nodes].map((d) => ({ name: d.name, pid: d.pid! }));
    const fio = async (uri: string, qd: number, seed: number): Promise<{ iops: number; lat: number; cpu: string }> => {
      const before = procs.map((p) => cpuTicks(p.pid));
      const recs = await nodeCounter(c, 'vsky_node_disk_record_writes_total');
      const r = await run('fio', ['--name=b', '--ioengine=nbd', `--uri=${uri}`, '--rw=randwrite', '--bs=4k', `--iodepth=${qd}`, '--size=512m',
        `--number_ios=${ios}`, `--randseed=${seed}`, '--output-format=json'], 600_000);
      const out = String(r.stdout);
      const j = JSON.parse(out.slice(out.indexOf('{'))) as { jobs: { write: { iops: number; clat_ns: { mean: number } } }[] };
      const cpu = procs.map((p, i) => `${p.name} ${(((cpuTicks(p.pid) - before[i]!) * 1e4) / ios).toFixed(0)}`).join(', ');
      const perWrite = ((await nodeCounter(c, 'vsky_node_disk_record_writes_total')) - recs) / ios;
      return { iops: j.jobs[0]!.write.iops, lat: j.jobs[0]!.write.clat_ns.mean / 1e3, cpu: `${cpu}; record writes/write (all replicas) ${perWrite.toFixed(2)}` };
    };
    const thickUri = (await ok(['volume', 'show', 'thick'])).match(/at (nbd:\/\/\S+)/)![1]!;
    let k = 0;
    for (const qd of [1, 16]) {
      const t = await fio(thickUri, qd, 100 + qd);
      console.log(`QD${qd} thick: ${t.iops.toFixed(0)} IOPS, mean lat ${t.lat.toFixed(0)} us; CPU us/write: ${t.cpu}`);
      await ok(['volume', 'clone', 'tpl-s', `cl${k}`]);
      const uri = (await ok(['volume', 'attach', `cl${k++}`])).trim().split('\n')[0]!;
      const f = await fio(uri, qd, 200 + qd);
      console.log(`QD${qd} fresh clone: ${f.iops.toFixed(0)} IOPS, mean lat ${f.lat.toFixed(0)} us (${(f.iops / t.iops).toFixed(2)}x); CPU us/write: ${f.cpu}`);
      const a = await fio(uri, qd, 300 + qd);
      console.log(`QD${qd} same clone again: ${a.iops.toFixed(0)} IOPS, mean lat ${a.lat.toFixed(0)} us; CPU us/write: ${a.cpu}`);
    }
  } finally {
    await destroyTestCluster(c);
    rmSync(work, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
