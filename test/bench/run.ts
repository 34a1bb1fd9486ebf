import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LocalCluster, LOCAL_CLUSTER_DEFAULTS, nodeHost } from '../../deploy/local-cluster.js';
import { MiB } from '../../shared/constants.js';
import { freePort } from '../harness/ports.js';
import { STANDARD_JOBS, fillDevice, runFio, type FioResult } from './fio.js';
import { peakRss } from './rss.js';
import { startNbdkit, startTgt } from '../conformance/peers.js';
import { ISCSI_JOBS, runQemuBench, type QemuResult } from './qemu-bench.js';

// `npm run bench`: our 1- and 3-replica volumes beside nbdkit's file plugin on
// a local file, in one run, with the same clients (fio's nbd engine, then
// qemu-img bench), printed as ratios to nbdkit; then iSCSI against tgt. Options: --runs N (median of N, default 1), --size MiB.

const args = process.argv.slice(2);
const RUNS = Number(args[args.indexOf('--runs') + 1] ?? 1) || 1;
const SIZE = (Number(args[args.indexOf('--size') + 1] ?? 512) || 512) * MiB;

interface Target { name: string; uri: string }

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

async function measure(target: Target): Promise<Map<string, FioResult>> {
  const out = new Map<string, FioResult>();
  for (const job of STANDARD_JOBS) {
    const runs: FioResult[] = [];
    for (let i = 0; i < RUNS; i++) runs.push(await runFio(target.uri, job));
    out.set(job.name, {
      mibps: median(runs.map((r) => r.mibps)), iops: median(runs.map((r) => r.iops)),
      p50us: median(runs.map((r) => r.p50us)), p99us: median(runs.map((r) => r.p99us)),
    });
  }
  return out;
}

function fmt(job: string, r: FioResult): string {
  if (job.endsWith('QD1')) return `p50 ${r.p50us.toFixed(0)} us, p99 ${r.p99us.toFixed(0)} us`;
  return job.startsWith('64K') ? `${r.mibps.toFixed(0)} MiB/s` : `${r.iops.toFixed(0)} IOPS`;
}

function ratio(job: string, ours: FioResult, peer: FioResult): string {
  if (job.endsWith('QD1')) return `${(peer.p50us / ours.p50us).toFixed(2)}x`;
  return job.startsWith('64K') ? `${(ours.mibps / peer.mibps).toFixed(2)}x` : `${(ours.iops / peer.iops).toFixed(2)}x`;
}

/**
 * One qemu-img bench table (the client of DESIGN.md's Ceph figures): each target in turn,
 * ratios of our 1- and 3-replica volumes to the peer (targets[0]).
 */
async function qemuTable(protocol: string, targets: Array<{ name: string; url: string }>): Promise<void> {
  const results = new Map<string, Map<string, QemuResult>>();
  for (const t of targets) {
    process.stderr.write(`measuring ${t.name} over ${protocol} with qemu-img bench (${RUNS} run(s) per job)...\n`);
    const per = new Map<string, QemuResult>();
    for (const job of ISCSI_JOBS) {
      const runs: QemuResult[] = [];
      for (let i = 0; i < RUNS; i++) runs.push(await runQemuBench(t.url, job));
      per.set(job.name, { mibps: median(runs.map((r) => r.mibps)), iops: median(runs.map((r) => r.iops)) });
    }
    results.set(t.name, per);
  }
  const peerName = targets[0]!.name;
  console.log(`\n${protocol}, qemu-img bench -d 16 -t none, ${SIZE / MiB} MiB devices, median of ${RUNS}; ratio = ours / ${peerName}\n`);
  console.log(['job', ...targets.map((t) => t.name), '1-rep ratio', '3-rep ratio'].join(' | '));
  for (const job of ISCSI_JOBS) {
    const cell = (name: string): QemuResult => results.get(name)!.get(job.name)!;
    const val = (r: QemuResult): number => (job.size >= 65536 ? r.mibps : r.iops);
    const fmtv = (r: QemuResult): string => (job.size >= 65536 ? `${r.mibps.toFixed(0)} MiB/s` : `${r.iops.toFixed(0)} IOPS`);
    const peer = val(cell(peerName));
    console.log([job.name, ...targets.map((t) => fmtv(cell(t.name))),
      `${(val(cell('vsky 1 replica')) / peer).toFixed(2)}x`, `${(val(cell('vsky 3 replicas')) / peer).toFixed(2)}x`].join(' | '));
  }
}

/** iSCSI: tgt on a local file vs our 1- and 3-replica volumes, qemu-img bench for all. */
async function benchIscsi(dir: string, cluster: LocalCluster): Promise<void> {
  const tgt = await startTgt(dir, SIZE);
  try {
    await qemuTable('iSCSI', [
      { name: 'tgt file', url: tgt.url },
      { name: 'vsky 1 replica', url: (await cluster.ensureVolumeUrls('bench1', SIZE, 1)).iscsi },
      { name: 'vsky 3 replicas', url: (await cluster.ensureVolumeUrls('bench3', SIZE, 3)).iscsi },
    ]);
  } finally {
    await tgt.stop();
  }
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'vsky-bench-'));
  const nbdkit = await startNbdkit(dir, SIZE);
  const cluster = await LocalCluster.start({
    ...LOCAL_CLUSTER_DEFAULTS, dir, diskSize: 2 * SIZE, chunkSize: 64 * MiB,
    managerListen: `127.0.0.1:${await freePort()}`, headGrpcPort: await freePort(), nbdPort: await freePort(), iscsiPort: await freePort(),
    nodeDataPort: await freePort(nodeHost(0)), nodeGrpcPort: await freePort(nodeHost(0)), logLevel: 'warn',
  });
  try {
    const targets: Target[] = [
      { name: 'nbdkit file', uri: nbdkit.url },
      { name: 'vsky 1 replica', uri: await cluster.ensureVolume('bench1', SIZE, 1) },
      { name: 'vsky 3 replicas', uri: await cluster.ensureVolume('bench3', SIZE, 3) },
    ];
    const results = new Map<string, Map<string, FioResult>>();
    const pids = [cluster.head.pid!, ...cluster.nodes.map((n) => n.pid!)];
    let rss = new Map<number, number>();
    for (const t of targets) {
      process.stderr.write(`filling ${t.name}...\n`);
      await fillDevice(t.uri);
      process.stderr.write(`measuring ${t.name} (${RUNS} run(s) per job)...\n`);
      const { result, peak } = await peakRss(pids, () => measure(t));
      results.set(t.name, result);
      if (t.name === 'vsky 3 replicas') rss = peak;
    }
    const peer = results.get('nbdkit file')!;
    console.log(`\nfio nbd engine, ${SIZE / MiB} MiB devices, median of ${RUNS}; ratio = ours / nbdkit (latency: nbdkit p50 / ours p50)\n`);
    console.log(['job', ...targets.map((t) => t.name), '1-rep ratio', '3-rep ratio'].join(' | '));
    for (const job of STANDARD_JOBS.map((j) => j.name)) {
      const cells = targets.map((t) => fmt(job, results.get(t.name)!.get(job)!));
      const r1 = ratio(job, results.get('vsky 1 replica')!.get(job)!, peer.get(job)!);
      const r3 = ratio(job, results.get('vsky 3 replicas')!.get(job)!, peer.get(job)!);
      console.log([job, ...cells, r1, r3].join(' | '));
    }
    // NBD with the client (qemu-img bench), same devices, already filled.
    await qemuTable('NBD', targets.map((t) => ({ name: t.name, url: t.uri })));
    await benchIscsi(dir, cluster);
    const mib = (b: number): string => `${(b / MiB).toFixed(0)} MiB`;
    console.log(`\npeak RSS during the 3-replica runs: head agent ${mib(rss.get(cluster.head.pid!) ?? 0)}, storage nodes ${cluster.nodes.map((n) => mib(rss.get(n.pid!) ?? 0)).join(', ')}`);
  } finally {
    await nbdkit.stop();
    await cluster.stop();
    rmSync(dir, { recursive: true, force: true });
  }
  process.env.VSKY_LOG_LEVEL = 'warn'; // the scale bench's manager logs every load
  try {
    const { runManagerScaleBench } = await import('./manager-scale.js');
    console.log('\nmanager scale:', JSON.stringify(await runManagerScaleBench(), null, 2));
  } catch (err) {
    console.log(`\nmanager scale bench unavailable: ${(err as Error).message}`);
  }
}

await main();
