import { mkdtempSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { LocalCluster, LOCAL_CLUSTER_DEFAULTS, nodeHost } from '../../deploy/local-cluster.js';
import { MiB } from '../../shared/constants.js';
import { freePort } from '../harness/ports.js';
import { fillDevice, runFio } from './fio.js';

// 4 KiB QD1 latency with fio's nbd engine on a 3-replica 256 MiB volume
// (written once first), `rounds` read+write pairs of 5 s each on one
// cluster. For an A/B of two builds, run each worktree's compiled copy
// alternately (docs/benchmarks.md, issue 12):
//
//   node dist/test/bench/qd1.js [rounds]

async function main(): Promise<void> {
  const rounds = Number(process.argv[2] ?? 2);
  const dir = mkdtempSync(join(tmpdir(), 'vsky-qd1-'));
  const cluster = await LocalCluster.start({
    ...LOCAL_CLUSTER_DEFAULTS, dir, diskSize: 1024 * MiB, chunkSize: 64 * MiB,
    managerListen: `127.0.0.1:${await freePort()}`, headGrpcPort: await freePort(), nbdPort: await freePort(), iscsiPort: await freePort(),
    nodeDataPort: await freePort(nodeHost(0)), nodeGrpcPort: await freePort(nodeHost(0)), logLevel: 'warn',
  });
  try {
    const uri = await cluster.ensureVolume('qd1', 256 * MiB, 3);
    await fillDevice(uri);
    for (let i = 0; i < rounds; i++) {
      const r = await runFio(uri, { name: 'read', rw: 'randread', bs: '4k', iodepth: 1, seconds: 5 });
      const w = await runFio(uri, { name: 'write', rw: 'randwrite', bs: '4k', iodepth: 1, seconds: 5 });
      console.log(`4K QD1 read p50/p99 ${r.p50us.toFixed(0)}/${r.p99us.toFixed(0)} us (${r.iops.toFixed(0)} IOPS), `
        + `write p50/p99 ${w.p50us.toFixed(0)}/${w.p99us.toFixed(0)} us (${w.iops.toFixed(0)} IOPS); load ${loadavg()[0]!.toFixed(1)}`);
    }
  } finally {
    await cluster.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
