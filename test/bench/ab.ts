import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { MiB } from '../../shared/constants.js';
import { startNbdkit } from '../conformance/peers.js';
import { fillDevice, runFio } from './fio.js';
import { runQemuBench, type QemuJob } from './qemu-bench.js';

// A/B of builds on a shared machine (docs/benchmarks.md, issue 12): each
// round starts one cluster per build in turn (3 storage nodes, one 3-replica
// volume over NBD, written once first) and runs the same rows on it, then the
// same rows on nbdkit's `file` plugin in the same minutes, so each build's
// ratio to nbdkit comes from neighbouring runs. Per row: the rate (qemu-img
// bench -f raw -d 16 -t none, or fio's nbd engine for the QD1 rows), CPU time
// per operation of the head and of the storage nodes (mean of the three),
// and the load average. Medians over the rounds at the end.
//
//   node dist/test/bench/ab.js [--rounds N] [--tree NAME=DIR[@ENV=VALUE,...]]... [rows...]
//
// rows: r4 w4 r64 w64 (qemu-img bench) q1r q1w (fio, 4 KiB QD1, 5 s);
// default r4 w4 q1r q1w. Default tree: this one ("this"). A tree's build is
// its dist/ (each tree's LocalCluster spawns its own dist/cli/vsky.js); an
// environment after "@" is given to its head and storage nodes, e.g.
// --tree pool=/work/wt@VSKY_DISK_IO=pool.

interface Row { kind: 'qemu'; job: QemuJob }
interface FioRow { kind: 'fio'; rw: 'randread' | 'randwrite' }
const ROWS: Record<string, Row | FioRow> = {
  r4: { kind: 'qemu', job: { name: 'r4', size: 4096, write: false, count: 100_000 } },
  w4: { kind: 'qemu', job: { name: 'w4', size: 4096, write: true, count: 50_000 } },
  r64: { kind: 'qemu', job: { name: 'r64', size: 65536, write: false, count: 16_384 } },
  w64: { kind: 'qemu', job: { name: 'w64', size: 65536, write: true, count: 16_384 } },
  q1r: { kind: 'fio', rw: 'randread' },
  q1w: { kind: 'fio', rw: 'randwrite' },
};
const VOLUME = 512 * MiB;
const TICK_US = 1e6 / 100; // USER_HZ

interface Tree { name: string; dir: string; env: NodeJS.ProcessEnv }
interface Sample { rate: number; p50?: number; head?: number; nodes?: number; load: number }

function parseArgs(): { rounds: number; trees: Tree[]; rows: string[] } {
  const args = process.argv.slice(2);
  let rounds = 2;
  const trees: Tree[] = [];
  const rows: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--rounds') rounds = Number(args[++i]);
    else if (a === '--tree') {
      const spec = args[++i]!;
      const [name, rest] = [spec.slice(0, spec.indexOf('=')), spec.slice(spec.indexOf('=') + 1)];
      const [dir, envText] = rest.split('@');
      const env: NodeJS.ProcessEnv = {};
      for (const kv of (envText ?? '').split(',').filter(Boolean)) env[kv.slice(0, kv.indexOf('='))] = kv.slice(kv.indexOf('=') + 1);
      trees.push({ name, dir: resolve(dir!), env });
    } else if (a in ROWS) rows.push(a);
    else throw new Error(`unknown argument ${a} (see the comment at the top of test/bench/ab.ts)`);
  }
  if (trees.length === 0) trees.push({ name: 'this', dir: resolve(import.meta.dirname, '..', '..', '..'), env: {} });
  if (rows.length === 0) rows.push('r4', 'w4', 'q1r', 'q1w');
  return { rounds, trees, rows };
}

function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(f[11]) + Number(f[12]);
}

/** Runs one row against `url`; `pids` (head, nodes) are charged per operation when given. */
async function runRow(row: string, url: string, pids?: { head: number; nodes: number[] }): Promise<Sample> {
  const spec = ROWS[row]!;
  const before = pids === undefined ? [] : [pids.head, ...pids.nodes].map(cpuTicks);
  let rate: number;
  let ops: number;
  let p50: number | undefined;
  if (spec.kind === 'qemu') {
    const r = await runQemuBench(url, spec.job);
    rate = spec.job.size >= 65536 ? r.mibps : r.iops;
    ops = spec.job.count;
  } else {
    const r = await runFio(url, { name: row, rw: spec.rw, bs: '4k', iodepth: 1, seconds: 5 });
    rate = r.iops;
    ops = r.iops * 5;
    p50 = r.p50us;
  }
  const s: Sample = { rate, p50, load: loadavg()[0]! };
  if (pids !== undefined) {
    const after = [pids.head, ...pids.nodes].map(cpuTicks);
    const per = after.map((t, i) => ((t - before[i]!) * TICK_US) / ops);
    s.head = per[0]!;
    s.nodes = per.slice(1).reduce((a, b) => a + b, 0) / pids.nodes.length;
  }
  return s;
}

function fmt(row: string, s: Sample): string {
  const rate = row.endsWith('64') ? `${s.rate.toFixed(0)} MiB/s` : `${s.rate.toFixed(0)} IOPS`;
  const p50 = s.p50 === undefined ? '' : ` p50 ${s.p50.toFixed(0)} us`;
  const cpu = s.head === undefined ? '' : ` cpu/op head ${s.head.toFixed(1)} nodes ${s.nodes!.toFixed(1)} us`;
  return `${rate}${p50}${cpu} (load ${s.load.toFixed(1)})`;
}

async function runTree(tree: Tree, rows: string[], dir: string): Promise<Map<string, Sample>> {
  const root = pathToFileURL(`${tree.dir}/dist/`).href;
  const { LocalCluster, LOCAL_CLUSTER_DEFAULTS, nodeHost } = await import(`${root}deploy/local-cluster.js`) as typeof import('../../deploy/local-cluster.js');
  const { freePort } = await import(`${root}test/harness/ports.js`) as typeof import('../harness/ports.js');
  const cdir = mkdtempSync(join(dir, `${tree.name}-`));
  const env = { head: tree.env, node1: tree.env, node2: tree.env, node3: tree.env };
  const cluster = await LocalCluster.start({
    ...LOCAL_CLUSTER_DEFAULTS, dir: cdir, diskSize: 1024 * MiB, chunkSize: 64 * MiB, env,
    managerListen: `127.0.0.1:${await freePort()}`, headGrpcPort: await freePort(), nbdPort: await freePort(), iscsiPort: await freePort(),
    nodeDataPort: await freePort(nodeHost(0)), nodeGrpcPort: await freePort(nodeHost(0)), logLevel: 'warn',
  });
  const out = new Map<string, Sample>();
  try {
    const url = await cluster.ensureVolume('ab3', VOLUME, 3);
    await fillDevice(url);
    const pids = { head: cluster.head.pid!, nodes: cluster.nodes.map((n) => n.pid!) };
    for (const row of rows) {
      const s = await runRow(row, url, pids);
      console.log(`  ${tree.name.padEnd(8)} ${row.padEnd(4)} ${fmt(row, s)}`);
      out.set(row, s);
    }
  } finally {
    await cluster.stop();
    rmSync(cdir, { recursive: true, force: true });
  }
  return out;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 === 1 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

async function main(): Promise<void> {
  const { rounds, trees, rows } = parseArgs();
  const dir = mkdtempSync(join(tmpdir(), 'vsky-ab-'));
  const nbdkit = await startNbdkit(dir, VOLUME);
  const all = new Map<string, Map<string, Sample[]>>();
  const add = (name: string, row: string, s: Sample): void => {
    const per = all.get(name) ?? new Map<string, Sample[]>();
    all.set(name, per);
    per.set(row, [...(per.get(row) ?? []), s]);
  };
  try {
    await fillDevice(nbdkit.url);
    for (let round = 1; round <= rounds; round++) {
      console.log(`round ${round}`);
      // Alternate the order of the builds between rounds.
      const order = round % 2 === 1 ? trees : [...trees].reverse();
      for (const tree of order) for (const [row, s] of await runTree(tree, rows, dir)) add(tree.name, row, s);
      for (const row of rows) {
        const s = await runRow(row, nbdkit.url);
        console.log(`  ${'nbdkit'.padEnd(8)} ${row.padEnd(4)} ${fmt(row, s)}`);
        add('nbdkit', row, s);
      }
    }
  } finally {
    await nbdkit.stop();
    rmSync(dir, { recursive: true, force: true });
  }
  console.log(`\nmedians over ${rounds} round(s); ratio = ours / nbdkit (QD1: p50)`);
  const peer = all.get('nbdkit')!;
  for (const row of rows) {
    const peerRate = median(peer.get(row)!.map((s) => s.rate));
    const cells = trees.map((t) => {
      const ss = all.get(t.name)!.get(row)!;
      const rate = median(ss.map((s) => s.rate));
      const p50 = ss[0]!.p50 === undefined ? '' : ` p50 ${median(ss.map((s) => s.p50!)).toFixed(0)} us`;
      return `${t.name} ${rate.toFixed(0)} (${(rate / peerRate).toFixed(2)}x)${p50} head ${median(ss.map((s) => s.head!)).toFixed(1)} nodes ${median(ss.map((s) => s.nodes!)).toFixed(1)} us/op`;
    });
    const pp = peer.get(row)![0]!.p50 === undefined ? '' : ` p50 ${median(peer.get(row)!.map((s) => s.p50!)).toFixed(0)} us`;
    console.log(`${row.padEnd(4)} | nbdkit ${peerRate.toFixed(0)}${pp} | ${cells.join(' | ')}`);
  }
}

await main();
