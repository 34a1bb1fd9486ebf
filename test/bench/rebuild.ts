import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { LocalCluster, LOCAL_CLUSTER_DEFAULTS, nodeHost } from '../../deploy/local-cluster.js';
import { GiB, MiB } from '../../shared/constants.js';
import { call, type ManagerClient } from '../../shared/grpc.js';
import { freePort } from '../harness/ports.js';
// Layering debt (known, as in storage-node/copy/chunk-copy.ts): the data-protocol client lives in head-agent/.
import { NodeConnection } from '../../shared/data-protocol/client/node-connection.js';
import { setDefaultDataSecurity } from '../../shared/data-protocol/auth/data-security.js';
import { clusterDataSecurity } from '../harness/data-auth.js';
import { Replica } from '../../head-agent/engine/replica.js';
import { vskyJson } from '../harness/vsky.js';
import { fillDevice } from './fio.js';

// Rebuild of a failed disk on one machine, real daemons (deploy/local-cluster.ts):
// 6 storage nodes x 2 sparse file-backed disks, every disk throttled to the
// same MiB/s (`vsky storage-node --disk-throttle-mibps`) to stand in for a
// spindle. 1-segment, 3-replica volumes are created; a disk holding enough
// of them is the victim (see B); `lost` of its volumes are written in full over
// NBD (fio, nodes still unthrottled) and its other (unwritten) volumes are
// deleted, so the victim holds exactly lost x chunk bytes, all written. The
// nodes are then restarted with the throttle, the disk is failed (FailDisk,
// as `vsky disk fail`), and the time until no volume is degraded is measured
// (ListVolumes polled every 200 ms; `vsky volume list --json` confirms).
//   A: the default manager: spares anywhere, one resync per disk, many at once.
//   B: a fresh cluster, same procedure, the manager restarted with
//      `--spare-disk` naming one disk, so every copy goes to that one disk,
//      one at a time: a RAID-1 hot spare. A spare must be on a server that
//      holds no replica of the lost segments (no server holds two replicas
//      of a segment), so in both runs the victim and its `lost` volumes are
//      chosen among those with no replica on one other server, the spare's.
// Both are compared with the lower bound the disks' bandwidth allows.
//
// Run: npm run build && node dist/test/bench/rebuild.js [--quick] [--mibps N]
//   [--chunk-mib N] [--lost N] [--keep]

export interface RebuildBenchOptions {
  /** Small chunks (64 MiB) and disks: a smoke run of under a minute. */
  quick?: boolean;
  /** Per-disk bandwidth, MiB/s (default 50). */
  mibps?: number;
  /** Chunk (segment) size in bytes (default 256 MiB, quick 64 MiB). */
  chunkSize?: number;
  /** Written chunks on the failed disk (default 10: 2.5 GiB at 256 MiB). */
  lost?: number;
  /** Keep the cluster directories (logs) instead of deleting them. */
  keep?: boolean;
  /** Progress lines (default: stderr). */
  log?: (line: string) => void;
}

export interface ResyncSample {
  id: string;
  target: string;
  startedMs: number;
  /** Wall time (ms since epoch) of the first poll that no longer listed it. */
  goneMs: number;
  bytes: number;
}

export interface RebuildRun {
  mode: 'distributed' | 'single spare';
  victim: string;
  spare?: string;
  /** Written bytes on the failed disk: what must be copied. */
  bytes: number;
  fillSeconds: number;
  /** FailDisk sent -> no degraded volume. */
  seconds: number;
  /** FailDisk sent -> first copy running. */
  firstCopySeconds: number;
  resyncs: number;
  maxRunning: number;
  /** Most running resyncs one disk took part in at once (source or target); the default limit is 1. */
  maxDiskLoad: number;
  /** Copies received per target disk. */
  targets: Record<string, number>;
  /** Bytes / duration of each copy (start as the manager recorded it, end at the first poll without it). */
  copyMibps: { min: number; median: number; max: number };
  /** Aggregate copy rate: bytes / (first copy running -> last copy done). */
  aggregateMibps: number;
  /** Highest running-resync rate the manager reported (ListResyncs rate_mibps). */
  peakReportedMibps: number;
  cliConfirmed: boolean;
  /** Each copy: "target disk (first 8 characters) start-end", seconds after FailDisk. */
  timeline: string[];
  /** CPU the daemons used during the rebuild, in cores (this machine has os.cpus().length). */
  cpuCores: number;
  /** A rebuilt replica read back equal to the surviving ones (one volume checked). */
  verified: boolean;
}

export interface RebuildBenchResult {
  mibps: number;
  chunkBytes: number;
  lost: number;
  bytes: number;
  a: RebuildRun;
  b: RebuildRun;
  speedup: number;
  bound: { seconds: number; why: string; all: Record<string, number>; aliveDisks: number };
  /** bound / time A (1 = at the bound). */
  aVsBound: number;
  /** B's own bound: the spare writes every byte at the disk rate. */
  bBoundSeconds: number;
  targets: { speedup4x: boolean; bound07x: boolean };
}

const SERVERS = 6;
const DISKS_PER_SERVER = 2;
const POLL_MS = 200;

interface Config {
  mibps: number;
  chunk: number;
  lost: number;
  diskSize: number;
  volumes: number;
  keep: boolean;
  log: (line: string) => void;
}

function configure(o: RebuildBenchOptions): Config {
  const chunk = o.chunkSize ?? (o.quick ? 64 * MiB : 256 * MiB);
  const lost = o.lost ?? 10;
  // The victim must hold `lost` chunks whose segments have no replica on one
  // other server (the hot spare's, run B). Placement fills disks evenly (3V/12
  // chunks each) and a segment avoids a given other server 3 times in 5:
  // ~0.15 V such chunks per (disk, server) pair; the best pair is taken.
  const volumes = Math.ceil(lost * 8);
  // Room for the volumes, plus `lost` spares on the one hot spare disk.
  const perDisk = Math.ceil((3 * volumes) / (SERVERS * DISKS_PER_SERVER)) + lost + 4;
  const diskSize = Math.max(2 * GiB, Math.ceil((perDisk * chunk * 1.05) / GiB) * GiB);
  return { mibps: o.mibps ?? 50, chunk, lost, diskSize, volumes, keep: o.keep ?? false, log: o.log ?? ((l) => process.stderr.write(`${l}\n`)) };
}

/** USER_HZ: /proc/<pid>/stat counts CPU time in these ticks (100 on Linux). */
const CLOCK_TICKS = 100;

/** utime + stime of these processes, in ticks (0 for one that is gone). */
function cpuTicks(pids: number[]): number {
  let sum = 0;
  for (const pid of pids) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      sum += Number(f[11]) + Number(f[12]);
    } catch { /* exited */ }
  }
  return sum;
}

/** Every replica of the (1-segment) volume, the rebuilt one included, holds the same bytes (SHA-256, read in 8 MiB pieces). */
async function verifyOne(m: ManagerClient, volume: string): Promise<boolean> {
  const { map } = await call(m, 'ShowVolume', { name: volume });
  const seg = map!.segments[0]!;
  const step = 8 * MiB;
  const digests = await Promise.all(seg.replicas.map(async (r) => {
    const conn = new NodeConnection(r.dataAddress);
    try {
      const replica = new Replica(conn, {
        volumeId: map!.volumeId, volumeName: map!.name, segment: seg.index, slot: r.slot, state: 'in_sync', serverId: r.serverId, diskId: r.diskId,
      });
      const hash = createHash('sha256');
      const buf = Buffer.alloc(step);
      let nonZero = false;
      for (let at = 0; at < Number(map!.chunkSize); at += step) {
        await replica.read(at, buf);
        nonZero ||= buf.some((b) => b !== 0);
        hash.update(buf);
      }
      return nonZero ? hash.digest('hex') : 'all zeros';
    } finally {
      await conn.close();
    }
  }));
  return digests.length === 3 && digests[0] !== 'all zeros' && digests.every((d) => d === digests[0]);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const round = (x: number, d = 2) => Math.round(x * 10 ** d) / 10 ** d;

async function startCluster(dir: string, cfg: Config): Promise<LocalCluster> {
  const c = await LocalCluster.start({
    ...LOCAL_CLUSTER_DEFAULTS, dir, servers: SERVERS, disksPerServer: DISKS_PER_SERVER, diskSize: cfg.diskSize, chunkSize: cfg.chunk,
    managerListen: `127.0.0.1:${await freePort()}`, headGrpcPort: await freePort(), nbdPort: await freePort(), iscsiPort: await freePort(),
    nodeDataPort: await freePort(nodeHost(0)), nodeGrpcPort: await freePort(nodeHost(0)),
    // Restarts (to turn the throttle on) must not look like server failures.
    heartbeatTimeoutMs: 20_000, logLevel: 'warn',
  });
  setDefaultDataSecurity(clusterDataSecurity(c)); // verifyOne's connections
  return c;
}

/** Volumes, victim, spare; the victim's `lost` volumes written; its other volumes deleted. */
async function prepare(m: ManagerClient, cfg: Config): Promise<{ victim: string; spare: string; fillSeconds: number; written: string[] }> {
  const names = Array.from({ length: cfg.volumes }, (_, i) => `rb${String(i).padStart(3, '0')}`);
  for (const name of names) await call(m, 'CreateVolume', { name, size: cfg.chunk, replicas: 3, spreadLabel: '', thick: true }, 120_000);
  const replicaDisks = new Map<string, string[]>();
  for (const name of names) {
    const detail = await call(m, 'ShowVolume', { name });
    replicaDisks.set(name, (detail.map?.segments?.[0]?.replicas ?? []).map((r) => r.diskId!));
  }
  const { disks } = await call(m, 'ListDisks', { server: '' });
  const serverOf = new Map(disks.map((d) => [d.diskId, d.serverId]));
  const servers = [...new Set(disks.map((d) => d.serverId))].sort();
  // The (victim disk, spare server) pair with the most volumes on the victim
  // and no replica on the spare server: a hot spare there can take them all.
  let best = { victim: '', spareServer: '', held: [] as string[] };
  for (const d of [...disks].sort((a, b) => (a.diskId < b.diskId ? -1 : 1))) {
    const onVictim = names.filter((n) => replicaDisks.get(n)!.includes(d.diskId));
    for (const s of servers) {
      if (s === d.serverId) continue;
      const held = onVictim.filter((n) => !replicaDisks.get(n)!.some((x) => serverOf.get(x) === s));
      if (held.length > best.held.length) best = { victim: d.diskId, spareServer: s, held };
    }
  }
  const { victim, held } = best;
  if (held.length < cfg.lost) throw new Error(`no disk holds ${cfg.lost} chunks without a replica on some other server (best: ${held.length}); create more volumes`);
  const spare = disks.filter((d) => d.serverId === best.spareServer).sort((a, b) => (b.chunkCount - b.usedChunks) - (a.chunkCount - a.usedChunks))[0]!;
  if (spare.chunkCount - spare.usedChunks < cfg.lost) throw new Error(`spare disk ${spare.diskId} has ${spare.chunkCount - spare.usedChunks} free chunks, fewer than ${cfg.lost}`);
  // Same procedure in both runs: the victim keeps exactly `lost` volumes, all written.
  for (const name of names) if (replicaDisks.get(name)!.includes(victim) && !held.slice(0, cfg.lost).includes(name)) await call(m, 'DeleteVolume', { name }, 60_000);
  const write = held.slice(0, cfg.lost);

  cfg.log(`  writing ${write.length} volumes of ${cfg.chunk / MiB} MiB (3 replicas) over NBD, nodes unthrottled...`);
  const t0 = performance.now();
  let next = 0;
  const worker = async () => {
    while (next < write.length) {
      const name = write[next++]!;
      const r = await call(m, 'AttachVolume', { name, head: '' }, 30_000);
      await fillDevice(r.nbdUri);
      await call(m, 'DetachVolume', { name, force: false }, 60_000);
    }
  };
  await Promise.all([worker(), worker()]);
  const fillSeconds = (performance.now() - t0) / 1000;
  return { victim, spare: spare.diskId, fillSeconds, written: write };
}

/** Restarts the manager (hot-spare mode) and the nodes (throttled); waits until all is registered and healthy. */
async function restartThrottled(cluster: LocalCluster, cfg: Config, spare: string | undefined): Promise<void> {
  if (spare) {
    cluster.manager.args.push('--spare-disk', spare);
    await cluster.manager.restart();
  }
  for (const n of cluster.nodes) n.args.push('--disk-throttle-mibps', String(cfg.mibps));
  await Promise.all(cluster.nodes.map((n) => n.restart()));
  await cluster.waitRegistered(60_000);
  const m = cluster.client();
  try {
    // Nothing may be degraded or rebuilding before the failure.
    for (let i = 0; ; i++) {
      const [{ volumes }, { resyncs }] = await Promise.all([call(m, 'ListVolumes', {}), call(m, 'ListResyncs', {})]);
      if (!volumes.some((v) => v.degraded) && resyncs.length === 0) break;
      if (i > 50) throw new Error('volumes degraded or resyncs running before the disk failed: the restart was taken for a failure');
      await sleep(200);
    }
  } finally {
    m.close();
  }
}

async function runOnce(mode: RebuildRun['mode'], cfg: Config): Promise<RebuildRun> {
  const dir = mkdtempSync(join(tmpdir(), 'vsky-rebuild-'));
  cfg.log(`${mode}: cluster in ${dir} (${SERVERS} nodes x ${DISKS_PER_SERVER} disks of ${cfg.diskSize / GiB} GiB, chunk ${cfg.chunk / MiB} MiB)`);
  const cluster = await startCluster(dir, cfg);
  let m = cluster.client();
  try {
    const { victim, spare, fillSeconds, written } = await prepare(m, cfg);
    cfg.log(`  written in ${fillSeconds.toFixed(1)} s; victim ${victim}${mode === 'single spare' ? `, hot spare ${spare} (on a server with no replica of its volumes)` : ''}`);
    m.close();
    cfg.log(`  restarting ${mode === 'single spare' ? 'the manager with --spare-disk and ' : ''}the nodes with --disk-throttle-mibps ${cfg.mibps}...`);
    await restartThrottled(cluster, cfg, mode === 'single spare' ? spare : undefined);
    m = cluster.client();

    const samples = new Map<string, ResyncSample>();
    let maxRunning = 0;
    let maxDiskLoad = 0;
    let peakReported = 0;
    let firstRunningMs = 0;
    let sawDegraded = false;
    const pids = [cluster.manager, cluster.head, ...cluster.nodes].map((d) => d.pid!).filter(Boolean);
    const ticks0 = cpuTicks(pids);
    const started = Date.now();
    const t0 = performance.now();
    await call(m, 'FailDisk', { diskId: victim, reason: 'rebuild bench' });
    cfg.log(`  disk ${victim} failed; rebuilding...`);
    let lastLog = 0;
    for (;;) {
      const [{ volumes }, list] = await Promise.all([call(m, 'ListVolumes', {}), call(m, 'ListResyncs', {})]);
      const now = Date.now();
      const degraded = volumes.filter((v) => v.degraded).length;
      if (degraded > 0) sawDegraded = true;
      const running = list.resyncs.filter((r) => r.state === 'running');
      if (running.length > 0 && firstRunningMs === 0) firstRunningMs = Math.min(...running.map((r) => Number(r.startedMs)));
      maxRunning = Math.max(maxRunning, running.length);
      const load = new Map<string, number>();
      for (const r of running) {
        for (const d of [r.targetDisk, ...r.sourceDisks.split(',').filter(Boolean)]) load.set(d, (load.get(d) ?? 0) + 1);
        peakReported = Math.max(peakReported, r.rateMibps);
      }
      maxDiskLoad = Math.max(maxDiskLoad, ...load.values(), 0);
      const listed = new Set(list.resyncs.map((r) => r.resyncId));
      for (const r of list.resyncs) {
        const s = samples.get(r.resyncId) ?? { id: r.resyncId, target: r.targetDisk, startedMs: 0, goneMs: 0, bytes: 0 };
        if (r.state === 'running' && Number(r.startedMs) > 0) s.startedMs = Number(r.startedMs);
        s.target = r.targetDisk;
        s.bytes = Math.max(s.bytes, Number(r.bytesCopied));
        samples.set(r.resyncId, s);
      }
      for (const s of samples.values()) if (!listed.has(s.id) && s.goneMs === 0) s.goneMs = now;
      if (sawDegraded && degraded === 0 && list.resyncs.length === 0) break;
      if (now - started > 30 * 60_000) throw new Error('rebuild not done after 30 minutes');
      if (now - lastLog > 5000) {
        lastLog = now;
        cfg.log(`  ${((performance.now() - t0) / 1000).toFixed(0)} s: ${degraded} degraded, ${running.length} running, ` +
          `${(Number(list.bytesCopied) / MiB).toFixed(0)}/${(Number(list.bytesTotal) / MiB).toFixed(0)} MiB`);
      }
      await sleep(POLL_MS);
    }
    const seconds = (performance.now() - t0) / 1000;
    const lastDone = Math.max(...[...samples.values()].map((s) => s.goneMs));
    const cli = await vskyJson<Array<{ degraded: boolean }>>(['volume', 'list'], cluster.managerAddress);
    const cliConfirmed = cli.length > 0 && cli.every((v) => !v.degraded);

    const bytes = cfg.lost * cfg.chunk;
    // Copies of a full chunk (the unwritten ones never exist here: deleted before the failure).
    const copies = [...samples.values()].filter((s) => s.startedMs > 0 && s.goneMs > s.startedMs);
    const rates = copies.map((s) => cfg.chunk / MiB / ((s.goneMs - s.startedMs) / 1000)).sort((x, y) => x - y);
    const targets: Record<string, number> = {};
    for (const s of samples.values()) targets[s.target] = (targets[s.target] ?? 0) + 1;
    const run: RebuildRun = {
      mode, victim, spare: mode === 'single spare' ? spare : undefined, bytes, fillSeconds: round(fillSeconds, 1), seconds: round(seconds),
      firstCopySeconds: round(firstRunningMs > 0 ? (firstRunningMs - started) / 1000 : 0),
      resyncs: samples.size, maxRunning, maxDiskLoad, targets,
      copyMibps: rates.length > 0 ? { min: round(rates[0]!, 1), median: round(rates[Math.floor(rates.length / 2)]!, 1), max: round(rates.at(-1)!, 1) } : { min: 0, median: 0, max: 0 },
      aggregateMibps: round(bytes / MiB / Math.max(0.001, (lastDone - (firstRunningMs || started)) / 1000), 1),
      peakReportedMibps: peakReported, cliConfirmed,
      timeline: copies.sort((x, y) => x.startedMs - y.startedMs)
        .map((c) => `${c.target.slice(0, 8)} ${((c.startedMs - started) / 1000).toFixed(2)}-${((c.goneMs - started) / 1000).toFixed(2)}`),
      cpuCores: round((cpuTicks(pids) - ticks0) / CLOCK_TICKS / seconds), verified: false,
    };
    run.verified = await verifyOne(m, written.at(-1)!);
    cfg.log(`  ${mode}: ${(bytes / GiB).toFixed(2)} GiB rebuilt in ${seconds.toFixed(1)} s (${run.resyncs} copies, up to ${maxRunning} at once, ` +
      `per copy ${run.copyMibps.median} MiB/s median)`);
    return run;
  } finally {
    m.close();
    await cluster.stop();
    if (cfg.keep) cfg.log(`  kept ${dir}`);
    else rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Lower bound of a rebuild of `lost` equal chunks at `bw` bytes/s per disk,
 * as the scheduler simulation (test/bench/resync-scheduler.ts) computes it:
 * the largest of one chunk's copy, the copies that can run at once (each
 * holds a reading and a writing disk for its whole length: floor(D/2) at a
 * time), all bytes read and written over every surviving disk's bandwidth,
 * and the busiest target's copies.
 */
export function rebuildBound(lost: number, chunk: number, bw: number, aliveDisks: number, maxTargetCopies: number): RebuildBenchResult['bound'] {
  const one = chunk / bw;
  const all: Record<string, number> = {
    'one chunk': one,
    'copies at once (floor(D/2) pairs)': Math.ceil(lost / Math.floor(aliveDisks / 2)) * one,
    'aggregate bandwidth (2 x bytes / (D x rate))': (2 * lost * chunk) / (aliveDisks * bw),
    'busiest target': maxTargetCopies * one,
  };
  const [why, seconds] = Object.entries(all).reduce((a, b) => (b[1] > a[1] ? b : a));
  return { seconds: round(seconds), why, all: Object.fromEntries(Object.entries(all).map(([k, v]) => [k, round(v)])), aliveDisks };
}

export async function runRebuildBench(opts: RebuildBenchOptions = {}): Promise<RebuildBenchResult> {
  const cfg = configure(opts);
  const a = await runOnce('distributed', cfg);
  const b = await runOnce('single spare', cfg);
  const bw = cfg.mibps * MiB;
  const alive = SERVERS * DISKS_PER_SERVER - 1;
  const bound = rebuildBound(cfg.lost, cfg.chunk, bw, alive, Math.max(...Object.values(a.targets)));
  const speedup = round(b.seconds / a.seconds);
  const aVsBound = round(bound.seconds / a.seconds);
  return {
    mibps: cfg.mibps, chunkBytes: cfg.chunk, lost: cfg.lost, bytes: a.bytes, a, b, speedup, bound, aVsBound,
    bBoundSeconds: round((cfg.lost * cfg.chunk) / bw),
    targets: { speedup4x: speedup >= 4, bound07x: aVsBound >= 0.7 },
  };
}

function argValue(name: string): number | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : undefined;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const chunkMiB = argValue('--chunk-mib');
  const r = await runRebuildBench({
    quick: process.argv.includes('--quick'), mibps: argValue('--mibps'), chunkSize: chunkMiB ? chunkMiB * MiB : undefined,
    lost: argValue('--lost'), keep: process.argv.includes('--keep'),
  });
  console.log(JSON.stringify(r, null, 2));
  const gib = (r.bytes / GiB).toFixed(2);
  console.log(`\nrebuild of one failed disk: ${gib} GiB (${r.lost} chunks of ${r.chunkBytes / MiB} MiB), every disk throttled to ${r.mibps} MiB/s`);
  console.log(`A distributed (default):        ${r.a.seconds.toFixed(1)} s, ${r.a.resyncs} copies to ${Object.keys(r.a.targets).length} disks, up to ${r.a.maxRunning} at once, ` +
    `at most ${r.a.maxDiskLoad} per disk; per copy ${r.a.copyMibps.min}-${r.a.copyMibps.max} MiB/s; first copy after ${r.a.firstCopySeconds} s`);
  console.log(`B single spare (--spare-disk):  ${r.b.seconds.toFixed(1)} s, ${r.b.resyncs} copies to 1 disk, up to ${r.b.maxRunning} at once; ` +
    `per copy ${r.b.copyMibps.min}-${r.b.copyMibps.max} MiB/s; its own bound ${r.bBoundSeconds.toFixed(1)} s (${(r.bBoundSeconds / r.b.seconds).toFixed(2)}x)`);
  console.log(`speed-up B/A: ${r.speedup.toFixed(2)}x (target >= 4x: ${r.targets.speedup4x ? 'met' : 'MISSED'})`);
  console.log(`bound: ${r.bound.seconds.toFixed(1)} s (${r.bound.why}; D = ${r.bound.aliveDisks} surviving disks); ` +
    `A reaches ${r.aVsBound.toFixed(2)}x of it (target >= 0.7x: ${r.targets.bound07x ? 'met' : 'MISSED'})`);
  console.log(`all bounds (s): ${JSON.stringify(r.bound.all)}`);
  console.log(`daemon CPU during the rebuild: A ${r.a.cpuCores} cores, B ${r.b.cpuCores} cores (of ${cpus().length}); ` +
    `rebuilt replica equal to the survivors: A ${r.a.verified ? 'yes' : 'NO'}, B ${r.b.verified ? 'yes' : 'NO'}`);
  console.log(`copies A (target start-end s): ${r.a.timeline.join(', ')}`);
  if (process.argv.includes('--quick')) console.log('(--quick: small chunks, a smoke run; the targets are for the full run)');
}
