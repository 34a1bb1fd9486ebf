import { readFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LocalCluster, LOCAL_CLUSTER_DEFAULTS, nodeHost } from '../../deploy/local-cluster.js';
import { MiB } from '../../shared/constants.js';
import { freePort } from '../harness/ports.js';
import { runQemuBench, type QemuJob } from './qemu-bench.js';

// CPU time per operation of each daemon and V8 GC counts, for a machine too
// loaded for wall-clock rates to mean anything (docs/benchmarks.md, issue 12).
// One LocalCluster (3 nodes, 64 MiB chunks), one 3-replica 512 MiB volume,
// client `qemu-img bench -f raw -t none -d 16` over NBD (and iSCSI with
// --iscsi); per row: utime+stime from /proc/PID/stat before and after,
// divided by the operation count, and the --trace-gc lines each daemon logged.
//
//   node dist/test/bench/cpu-per-op.js [--iscsi] [--prof DIR] [rows...]
// rows: w64 (64 KiB write x 8192, first one is the fill), r64, w4, r4 (default: w64 w64 r64 w4 r4).
// Alternate builds by copying the compiled file into another worktree's dist/test/bench/.

const ROWS: Record<string, Omit<QemuJob, 'name'>> = {
  w64: { size: 65536, write: true, count: 8192 },
  r64: { size: 65536, write: false, count: 8192 },
  w4: { size: 4096, write: true, count: 40_000 },
  r4: { size: 4096, write: false, count: 60_000 },
};
const VOLUME = 512 * MiB;
const TICK_US = 1e6 / 100; // USER_HZ

const args = process.argv.slice(2);
const iscsi = args.includes('--iscsi');
const profDir = args.includes('--prof') ? args[args.indexOf('--prof') + 1] : undefined;
const rows = args.filter((a, i) => a in ROWS && args[i - 1] !== '--prof');
if (rows.length === 0) rows.push('w64', 'w64', 'r64', 'w4', 'r4');

function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(f[11]) + Number(f[12]); // fields 14 and 15: utime, stime
}

function gcCounts(log: string): { mc: number; sc: number } {
  const text = readFileSync(log, 'utf8');
  return { mc: (text.match(/Mark-Compact/g) ?? []).length, sc: (text.match(/Scavenge/g) ?? []).length };
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'vsky-cpu-'));
  const gcArgs = ['--trace-gc', ...(profDir ? ['--cpu-prof', `--cpu-prof-dir=${profDir}`] : [])];
  const cluster = await LocalCluster.start({
    ...LOCAL_CLUSTER_DEFAULTS, dir, diskSize: 1024 * MiB, chunkSize: 64 * MiB,
    managerListen: `127.0.0.1:${await freePort()}`, headGrpcPort: await freePort(), nbdPort: await freePort(), iscsiPort: await freePort(),
    nodeDataPort: await freePort(nodeHost(0)), nodeGrpcPort: await freePort(nodeHost(0)), logLevel: 'warn',
    nodeArgs: { head: gcArgs, node1: gcArgs },
  });
  try {
    const urls = await cluster.ensureVolumeUrls('cpu3', VOLUME, 3);
    const url = iscsi ? urls.iscsi : urls.nbd;
    const procs = [{ name: 'head', d: cluster.head }, ...cluster.nodes.map((n, i) => ({ name: `node${i + 1}`, d: n }))];
    const logs = { head: join(dir, 'logs', 'head.log'), node1: join(dir, 'logs', 'node1.log') };
    console.log(`${iscsi ? 'iSCSI' : 'NBD'} 3-replica, qemu-img bench -d 16; CPU us per op per process; GC = mark-compacts (scavenges)`);
    for (const row of rows) {
      const job = { name: row, ...ROWS[row]! };
      const before = procs.map((p) => cpuTicks(p.d.pid!));
      const gcBefore = { head: gcCounts(logs.head), node1: gcCounts(logs.node1) };
      const r = await runQemuBench(url, job);
      const cpu = procs.map((p, i) => ((cpuTicks(p.d.pid!) - before[i]!) * TICK_US) / job.count);
      const gc = { head: gcCounts(logs.head), node1: gcCounts(logs.node1) };
      const gcText = (k: 'head' | 'node1'): string => `${gc[k].mc - gcBefore[k].mc} (${gc[k].sc - gcBefore[k].sc})`;
      console.log([
        row.padEnd(4), `${r.mibps.toFixed(0)} MiB/s ${r.iops.toFixed(0)} IOPS`,
        procs.map((p, i) => `${p.name} ${cpu[i]!.toFixed(0)}`).join(' '),
        `GC head ${gcText('head')} node1 ${gcText('node1')}`,
      ].join(' | '));
    }
  } finally {
    await cluster.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
