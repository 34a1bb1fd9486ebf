import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GiB, MiB } from '../../shared/constants.js';
import { destroyTestCluster, startTestCluster } from '../harness/cluster.js';
import { randomFile, run } from '../harness/tools.js';
import { vsky } from '../harness/vsky.js';
import { numberArg } from './cli-args.js';

// Thin provisioning's cost on the write path (docs/thin-provisioning.md):
// nbdcopy --flush of the same 2 GiB random file into
//   thin-first: a new thin volume (every segment allocated on the way: AllocateSegment,
//               AllocateChunk on the nodes, the map applied and fenced on the head);
//   thin-over:  the same volume again (every segment allocated: the plain write path);
//   thick:      a thick volume (chunks reserved at create).
// 2 replicas, 3 servers x 2 sparse disk files of 4 GiB, 256 MiB chunks (the default
// chunk size), rounds alternating, median reported. Then, on each round's volumes
// (every segment allocated by then):
//   4 KiB random reads and writes (fio --ioengine=nbd, iodepth 16, 10 s each) on the
//   thin volume against the thick one;
//   nbdcopy of a 2 GiB thin volume with 3 written regions to null: with NBD block
//   status (holes skipped) against --no-extents (every byte read).
//
// Run: npm run build && node dist/test/bench/thin-fill.js [--size-mib N] [--rounds N]


async function main(): Promise<void> {
  const bytes = numberArg('--size-mib', 2048) * MiB;
  const rounds = numberArg('--rounds', 2);
  // Sparse 4 GiB disk files (3 servers x 2): room for every round's volumes, which are kept.
  const c = await startTestCluster({ diskSize: 4 * GiB, chunkSize: 256 * MiB, logLevel: 'warn' });
  const work = mkdtempSync(join(tmpdir(), 'vsky-thin-bench-'));
  const times: Record<string, number[]> = { 'thin-first': [], 'thin-over': [], thick: [] };
  const iops: Record<string, number[]> = { 'thin randread': [], 'thick randread': [], 'thin randwrite': [], 'thick randwrite': [] };
  const sparse: Record<string, number[]> = { 'sparse extents': [], 'sparse no-extents': [] };
  const fio = async (uri: string, rw: string): Promise<number> => {
    const r = await run('fio', ['--name=r', '--ioengine=nbd', `--uri=${uri}`, `--rw=${rw}`, '--bs=4k', '--iodepth=16', '--runtime=10', '--time_based',
      `--size=${bytes}`, '--output-format=json'], 120_000);
    const out = String(r.stdout);
    const job = (JSON.parse(out.slice(out.indexOf('{'))) as { jobs: { read: { iops: number }; write: { iops: number } }[] }).jobs[0]!;
    return rw === 'randread' ? job.read.iops : job.write.iops;
  };
  const timed = async (args: string[]): Promise<number> => {
    const t = process.hrtime.bigint();
    await run('nbdcopy', args, 600_000);
    return Number(process.hrtime.bigint() - t) / 1e6;
  };
  try {
    const src = join(work, 'src.img');
    randomFile(src, bytes);
    const copy = async (uri: string): Promise<number> => {
      const t = process.hrtime.bigint();
      await run('nbdcopy', ['--flush', src, uri], 600_000);
      return Number(process.hrtime.bigint() - t) / 1e6;
    };
    const attach = async (name: string): Promise<string> => {
      const r = await vsky(['volume', 'attach', name], c.managerAddress);
      if (r.exitCode !== 0) throw new Error(String(r.stderr));
      return String(r.stdout).split('\n')[0]!;
    };
    for (let i = 0; i < rounds; i++) {
      for (const [name, extra] of [[`thin${i}`, []], [`thick${i}`, ['--thick']]] as const) {
        const r = await vsky(['volume', 'create', name, '--size', String(bytes), '--replicas', '2', ...extra], c.managerAddress);
        if (r.exitCode !== 0) throw new Error(String(r.stderr));
      }
      const thin = await attach(`thin${i}`);
      times['thin-first']!.push(await copy(thin));
      times['thin-over']!.push(await copy(thin));
      const thick = await attach(`thick${i}`);
      times.thick!.push(await copy(thick));
      for (const rw of ['randread', 'randwrite']) {
        iops[`thin ${rw}`]!.push(await fio(thin, rw));
        iops[`thick ${rw}`]!.push(await fio(thick, rw));
      }
      const name = `sparse${i}`;
      const r = await vsky(['volume', 'create', name, '--size', String(bytes), '--replicas', '2'], c.managerAddress);
      if (r.exitCode !== 0) throw new Error(String(r.stderr));
      const sp = await attach(name);
      await run('qemu-io', ['-f', 'raw', '-c', 'write -P 1 0 64k', '-c', `write -P 2 ${bytes / 2} 1M`, '-c', `write -P 3 ${bytes - MiB} 64k`, sp], 60_000);
      sparse['sparse extents']!.push(await timed([sp, 'null:']));
      sparse['sparse no-extents']!.push(await timed(['--no-extents', sp, 'null:']));
      // Volumes are kept (a delete scrubs every written region: GiBs of zeros on a shared machine).
    }
  } finally {
    await destroyTestCluster(c);
    rmSync(work, { recursive: true, force: true });
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  for (const [k, xs] of Object.entries(times)) {
    const ms = median(xs);
    console.log(`${k.padEnd(11)} median ${(ms / 1000).toFixed(2)} s  ${((bytes / MiB) / (ms / 1000)).toFixed(0)} MiB/s  (runs: ${xs.map((x) => (x / 1000).toFixed(2)).join(', ')} s)`);
  }
  for (const [k, xs] of Object.entries(iops)) console.log(`${k.padEnd(17)} median ${median(xs).toFixed(0)} IOPS  (runs: ${xs.map((x) => x.toFixed(0)).join(', ')})`);
  for (const [k, xs] of Object.entries(sparse)) console.log(`${k.padEnd(17)} median ${(median(xs) / 1000).toFixed(2)} s  (runs: ${xs.map((x) => (x / 1000).toFixed(2)).join(', ')} s)`);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
