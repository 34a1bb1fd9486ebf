import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { LocalCluster, LOCAL_CLUSTER_DEFAULTS, nodeHost } from '../../deploy/local-cluster.js';
import { MiB } from '../../shared/constants.js';
import { freePort } from '../harness/ports.js';
import { fillDevice, runFio } from './fio.js';
import { runQemuBench, type QemuJob } from './qemu-bench.js';

// Head fan-out against primary forwarding (docs/replication-topology.md), in
// one run: two LocalClusters (3 nodes, 64 MiB chunks, one 3-replica 512 MiB
// volume each, written once first), one with the head in each mode
// (VSKY_REPLICATION), measured alternately A/B/A/B so that the shared
// machine's load hits both alike. Per round and mode:
//   w64  qemu-img bench -f raw -t none -d 16 -w, 64 KiB x 8192
//   w4   the same, 4 KiB x 20000
//   qd1  fio nbd engine, 4 KiB randwrite QD1, 5 s: p50/p99 latency
// with CPU time per operation of each process (utime+stime from
// /proc/PID/stat) for the two qemu-img rows, and the 1-minute load average.
//
//   node dist/test/bench/replication.js [rounds]   (default 2)

const VOLUME = 512 * MiB;
const TICK_US = 1e6 / 100; // USER_HZ
const MODES = ['fanout', 'forward'] as const;
type Mode = (typeof MODES)[number];
const ROWS: QemuJob[] = [
  { name: 'w64', size: 65536, write: true, count: 8192 },
  { name: 'w4', size: 4096, write: true, count: 20_000 },
];

function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(f[11]) + Number(f[12]); // fields 14 and 15: utime, stime
}

interface Bench { mode: Mode; cluster: LocalCluster; uri: string; dir: string }

async function start(mode: Mode): Promise<Bench> {
  const dir = mkdtempSync(join(tmpdir(), `vsky-repl-${mode}-`));
  const cluster = await LocalCluster.start({
    ...LOCAL_CLUSTER_DEFAULTS, dir, diskSize: 1024 * MiB, chunkSize: 64 * MiB,
    managerListen: `127.0.0.1:${await freePort()}`, headGrpcPort: await freePort(), nbdPort: await freePort(), iscsiPort: await freePort(),
    nodeDataPort: await freePort(nodeHost(0)), nodeGrpcPort: await freePort(nodeHost(0)), logLevel: 'warn',
    env: { head: { VSKY_REPLICATION: mode } },
  });
  const uri = await cluster.ensureVolume(`repl-${mode}`, VOLUME, 3);
  await fillDevice(uri);
  return { mode, cluster, uri, dir };
}

async function round(b: Bench): Promise<void> {
  const procs = [{ name: 'head', pid: b.cluster.head.pid! }, ...b.cluster.nodes.map((n, i) => ({ name: `node${i + 1}`, pid: n.pid! }))];
  for (const job of ROWS) {
    const before = procs.map((p) => cpuTicks(p.pid));
    const load = loadavg()[0]!;
    const r = await runQemuBench(b.uri, job);
    const cpu = procs.map((p, i) => ((cpuTicks(p.pid) - before[i]!) * TICK_US) / job.count);
    const nodes = cpu.slice(1).reduce((a, x) => a + x, 0);
    console.log([
      b.mode.padEnd(7), job.name.padEnd(3), `${r.mibps.toFixed(0)} MiB/s ${r.iops.toFixed(0)} IOPS`,
      `CPU us/op ${procs.map((p, i) => `${p.name} ${cpu[i]!.toFixed(0)}`).join(' ')} (nodes ${nodes.toFixed(0)}, all ${(nodes + cpu[0]!).toFixed(0)})`,
      `load ${load.toFixed(1)}`,
    ].join(' | '));
  }
  const load = loadavg()[0]!;
  const w = await runFio(b.uri, { name: 'qd1w', rw: 'randwrite', bs: '4k', iodepth: 1, seconds: 5 });
  console.log(`${b.mode.padEnd(7)} | qd1 | 4K QD1 write p50/p99 ${w.p50us.toFixed(0)}/${w.p99us.toFixed(0)} us (${w.iops.toFixed(0)} IOPS) | load ${load.toFixed(1)}`);
}

async function main(): Promise<void> {
  const rounds = Number(process.argv[2] ?? 2);
  const benches: Bench[] = [];
  try {
    for (const mode of MODES) benches.push(await start(mode));
    console.log('3-replica NBD volume; qemu-img bench -f raw -t none -d 16; fio nbd QD1; A/B alternating');
    for (let i = 0; i < rounds; i++) for (const b of benches) await round(b);
  } finally {
    for (const b of benches) {
      await b.cluster.stop();
      rmSync(b.dir, { recursive: true, force: true });
    }
  }
}

await main();
