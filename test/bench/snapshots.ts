import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GiB, MiB } from '../../shared/constants.js';
import { call } from '../../shared/grpc.js';
import { destroyTestCluster, startTestCluster } from '../harness/cluster.js';
import { NbdClient } from '../harness/nbd-client.js';
import { run } from '../harness/tools.js';
import { templateAndThick, vskyOk } from './clone-fixture.js';
import { numberArg } from './cli-args.js';

// Snapshots and clones (docs/snapshots.md):
//  - snapshot create of a detached volume (256 MiB thick, 2 replicas: 2 chunks reassigned),
//    median of N; of an attached volume with a written segment (pause, commit, re-attach);
//  - clone create, median of N (gRPC from this process: no CLI start-up in the numbers);
//  - fio 4 KiB random read and write, QD16, on a fresh clone of a 512 MiB template
//    (reads go through to the snapshot; first writes allocate and copy up 64 KiB regions)
//    against a thick volume holding the same data.
// 3 servers x 2 sparse 8 GiB disk files, 256 MiB chunks.
//
// Run: npm run build && node dist/test/bench/snapshots.js [--n 20] [--seconds 15] [--region-size 64K]

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function main(): Promise<void> {
  const n = numberArg('--n', 20);
  const seconds = numberArg('--seconds', 15);
  const regionSize = process.argv.indexOf('--region-size') > 0 ? process.argv[process.argv.indexOf('--region-size') + 1]! : '';
  const c = await startTestCluster({ diskSize: 8 * GiB, chunkSize: 256 * MiB, logLevel: 'warn', storageNodeArgs: regionSize ? ['--region-size', regionSize] : [] });
  const work = mkdtempSync(join(tmpdir(), 'vsky-snap-bench-'));
  const m = c.client();
  const ok = vskyOk(c);
  const timed = async (fn: () => Promise<unknown>) => {
    const t = process.hrtime.bigint();
    await fn();
    return Number(process.hrtime.bigint() - t) / 1e6;
  };
  try {
    const snapDetached: number[] = [];
    for (let i = 0; i < n; i++) {
      await ok(['volume', 'create', `sv${i}`, '--size', '256M', '--replicas', '2', '--thick']);
      snapDetached.push(await timed(() => call(m, 'CreateSnapshot', { volume: `sv${i}`, name: `sv${i}-s` }, 60_000)));
    }
    await ok(['volume', 'create', 'live', '--size', '256M', '--replicas', '2']);
    const live = await NbdClient.connect((await ok(['volume', 'attach', 'live'])).trim().split('\n')[0]!);
    const snapAttached: number[] = [];
    for (let i = 0; i < n; i++) {
      await live.write(i * 65536, Buffer.alloc(4096, i + 1)); // segment 0 allocated again (a copy-up)
      snapAttached.push(await timed(() => call(m, 'CreateSnapshot', { volume: 'live', name: `live-s${i}` }, 60_000)));
    }
    live.close();

    await templateAndThick(c, work);
    const clones: number[] = [];
    for (let i = 0; i < n; i++) clones.push(await timed(() => call(m, 'CloneVolume', { snapshot: 'tpl-s', name: `cl${i}` }, 60_000)));

    const fio = async (uri: string, rw: string): Promise<number> => {
      const r = await run('fio', ['--name=b', '--ioengine=nbd', `--uri=${uri}`, `--rw=${rw}`, '--bs=4k', '--iodepth=16', '--size=512m',
        '--time_based', `--runtime=${seconds}`, '--output-format=json'], (seconds + 60) * 1000);
      const out = String(r.stdout);
      const j = JSON.parse(out.slice(out.indexOf('{'))) as { jobs: { read: { iops: number }; write: { iops: number } }[] };
      return rw.includes('read') ? j.jobs[0]!.read.iops : j.jobs[0]!.write.iops;
    };
    const thickUri = (await ok(['volume', 'show', 'thick'])).match(/at (nbd:\/\/\S+)/)![1]!;
    const readClone = (await ok(['volume', 'attach', 'cl0'])).trim().split('\n')[0]!;
    const writeClone = (await ok(['volume', 'attach', 'cl1'])).trim().split('\n')[0]!;
    const rows = [
      ['randread  thick', await fio(thickUri, 'randread')],
      ['randread  fresh clone', await fio(readClone, 'randread')],
      ['randwrite thick', await fio(thickUri, 'randwrite')],
      ['randwrite fresh clone', await fio(writeClone, 'randwrite')],
      ['randwrite same clone again', await fio(writeClone, 'randwrite')],
      ['randread  clone after its writes', await fio(writeClone, 'randread')],
    ] as const;
    console.log(`snapshot create, detached 256 MiB thick (2 chunks): median ${median(snapDetached).toFixed(1)} ms (min ${Math.min(...snapDetached).toFixed(1)}, max ${Math.max(...snapDetached).toFixed(1)}; n=${n})`);
    console.log(`snapshot create, attached (pause, commit, re-attach): median ${median(snapAttached).toFixed(1)} ms (min ${Math.min(...snapAttached).toFixed(1)}, max ${Math.max(...snapAttached).toFixed(1)}; n=${n})`);
    console.log(`clone create: median ${median(clones).toFixed(1)} ms (min ${Math.min(...clones).toFixed(1)}, max ${Math.max(...clones).toFixed(1)}; n=${n})`);
    for (const [k, iops] of rows) console.log(`fio 4k QD16 ${k.padEnd(32)} ${Math.round(iops)} IOPS`);
  } finally {
    m.close();
    await destroyTestCluster(c);
    rmSync(work, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
