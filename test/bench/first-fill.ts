import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { LocalCluster, LOCAL_CLUSTER_DEFAULTS, nodeHost } from '../../deploy/local-cluster.js';
import { GiB, MiB } from '../../shared/constants.js';
import { freePort } from '../harness/ports.js';

// First fill against overwrite (docs/benchmarks.md, issue 12): nbdcopy of a
// 2 GiB file of non-zero bytes onto a fresh 3-replica volume of a
// `vsky cluster up`-like cluster (LOCAL_CLUSTER_DEFAULTS), then the same copy
// again; wall time, CPU seconds of each daemon (/proc/PID/stat) and the bytes
// each node passed to write syscalls (/proc/PID/io wchar).
//
//   node dist/test/bench/first-fill.js [rounds]      (SOURCE=file to reuse a source file)

const SIZE = 2 * GiB;
const TICK_S = 1 / 100; // USER_HZ

function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) * TICK_S;
}

function wchar(pid: number): number {
  return Number(/wchar: (\d+)/.exec(readFileSync(`/proc/${pid}/io`, 'utf8'))?.[1] ?? 0);
}

async function main(): Promise<void> {
  const rounds = Number(process.argv[2] ?? 1);
  const dir = mkdtempSync(join(tmpdir(), 'vsky-fill-'));
  const source = process.env.SOURCE ?? join(dir, 'source.bin');
  if (!existsSync(source)) execFileSync('bash', ['-c', `yes abcdefghijklmnopqrstuvwxyz0123456789 | head -c ${SIZE} > '${source}'`]);
  const cluster = await LocalCluster.start({
    ...LOCAL_CLUSTER_DEFAULTS, dir,
    managerListen: `127.0.0.1:${await freePort()}`, headGrpcPort: await freePort(), nbdPort: await freePort(), iscsiPort: await freePort(),
    nodeDataPort: await freePort(nodeHost(0)), nodeGrpcPort: await freePort(nodeHost(0)), logLevel: 'warn',
  });
  try {
    for (let i = 0; i < rounds; i++) {
      const uri = await cluster.ensureVolume(`fill${i}`, SIZE, 3);
      for (const pass of ['first fill', 'overwrite']) {
        const pids = [cluster.head.pid!, ...cluster.nodes.map((n) => n.pid!)];
        const cpu0 = pids.map(cpuSeconds);
        const w0 = pids.map(wchar);
        const t0 = performance.now();
        execFileSync('nbdcopy', [source, uri], { stdio: 'inherit' });
        const s = (performance.now() - t0) / 1000;
        const cpu = pids.map((p, j) => (cpuSeconds(p) - cpu0[j]!).toFixed(1));
        const written = pids.slice(1).map((p, j) => ((wchar(p) - w0[j + 1]!) / MiB).toFixed(0));
        console.log(`${pass}: ${s.toFixed(1)} s, ${(SIZE / MiB / s).toFixed(0)} MiB/s; CPU s head ${cpu[0]} nodes ${cpu.slice(1).join(' ')}; `
          + `MiB written (wchar) nodes ${written.join(' ')}; load ${loadavg()[0]!.toFixed(1)}`);
      }
    }
  } finally {
    await cluster.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
