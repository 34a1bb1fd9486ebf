import { pathToFileURL } from 'node:url';
import { performance } from 'node:perf_hooks';
import { GiB, MiB } from '../../shared/constants.js';
import { PlacementModel, type SpareRequest } from '../../manager/placement.js';
import {
  DEFAULT_SCHEDULER_LIMITS, overloadedDisks, scheduleResyncs, type QueuedResync, type RunningResync, type SchedulerLimits,
} from '../../manager/resync-scheduler.js';

// Rebuild simulation over the manager's real placement (manager/placement.ts:
// volumes and spares) and real scheduler (manager/resync-scheduler.ts), in
// discrete time. 10,000 disks on 1,000 servers in 10 racks, K=3 volumes
// filling every disk to about 1,000 chunks; one disk fails and is rebuilt,
// then one whole server fails and is rebuilt. Every disk reads or writes at
// B; a resync copies one chunk at min(target's share, sum of its sources'
// shares). Checked: no disk ever in more resyncs than its limit. Compared:
// the simulated rebuild time with a lower bound, the largest of
//  - one chunk at full speed (C/B),
//  - the busiest disk's forced work (chunks it must receive, plus chunks it
//    must send because it holds the only good copy) / B,
//  - all bytes read and written / (bandwidth of every surviving disk),
//  - chunks / global cap x C/B.
// Two kinds of chunks: all fully written (every resync takes C/B, so the
// rebuild moves in waves), and written to a random 25-100% (regions never
// written are not copied, rule 8; the usual case).
// Run: npm run build && node dist/test/bench/resync-scheduler.js
//   [--quick: 1,000 disks of 100 chunks, the same load per surviving disk in a second]
//   [--servers N] [--fill CHUNKS_PER_DISK]

const arg = (name: string, dflt: number) => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : dflt;
};
const QUICK = process.argv.includes('--quick');
const SERVERS = arg('--servers', QUICK ? 100 : 1000);
const DISKS_PER_SERVER = 10;
const RACKS = 10;
const K = 3;
const TARGET_FILL = arg('--fill', QUICK ? 100 : 1000); // chunks per disk before the failures
const CHUNKS_PER_DISK = 2 * TARGET_FILL;
const SEGMENTS_PER_VOLUME = 1000;
const CHUNK = 1 * GiB;                  // C
const BANDWIDTH = 100 * MiB;            // B, bytes/s per disk (read or write, shared)

interface Cluster {
  model: PlacementModel;
  diskIds: string[];
  diskServer: Int32Array;               // disk index -> server index
  diskIndex: Map<string, number>;
  replicaDisk: Int32Array;              // (segment * K + slot) -> disk index
  replicaGood: Uint8Array;              // 1: in sync
  segmentVolume: Int32Array;
  alive: Uint8Array;                    // per disk
}

function buildCluster(): Cluster {
  const model = new PlacementModel();
  const diskIds: string[] = [];
  const diskServer: number[] = [];
  for (let s = 0; s < SERVERS; s++) {
    model.setServer(`s${s}`, { rack: `r${s % RACKS}` }, true);
    for (let d = 0; d < DISKS_PER_SERVER; d++) {
      const id = `s${s}d${d}`;
      model.setDisk(id, `s${s}`, CHUNKS_PER_DISK, true);
      diskIds.push(id);
      diskServer.push(s);
    }
  }
  const diskIndex = new Map(diskIds.map((id, i) => [id, i]));
  const segments = Math.floor((diskIds.length * TARGET_FILL) / K);
  const replicaDisk = new Int32Array(segments * K);
  const segmentVolume = new Int32Array(segments);
  for (let first = 0, vol = 1; first < segments; first += SEGMENTS_PER_VOLUME, vol++) {
    const count = Math.min(SEGMENTS_PER_VOLUME, segments - first);
    const plan = model.place({ volumeId: vol, segmentCount: count, replicas: K, spreadLabel: 'rack' });
    for (const c of plan.chunks) {
      replicaDisk[(first + c.segment) * K + c.slot] = diskIndex.get(c.diskId)!;
      segmentVolume[first + c.segment] = vol;
    }
  }
  return {
    model, diskIds, diskServer: Int32Array.from(diskServer), diskIndex, replicaDisk,
    replicaGood: new Uint8Array(segments * K).fill(1), segmentVolume, alive: new Uint8Array(diskIds.length).fill(1),
  };
}

interface Job {
  q: QueuedResync;
  replica: number;                      // segment * K + slot
  target: number;
  remaining: number;
  disks: number[];
}

interface PhaseResult {
  lost: number;
  /** Finding the lost replicas, choosing every spare, the first scheduling call. */
  planningMs: number;
  planningUnder1s: boolean;
  spareMs: number;
  firstScheduleMs: number;
  firstWave: number;
  simulatedS: number;
  lowerBoundS: number;
  ratio: number;
  bound: string;
  bounds: Record<string, number>;
  maxRunning: number;
  maxDiskLoadSeen: number;
  scheduleCalls: number;
  scheduleMsTotal: number;
  sourcesPerResyncAvg: number;
}

/** Bytes a resync of this replica copies: the whole chunk, or a deterministic 25-100% of its regions. */
type Fill = 'full' | 'partial';
function bytesOf(replica: number, fill: Fill): number {
  if (fill === 'full') return CHUNK;
  const x = Math.sin(replica * 12.9898) * 43758.5453;
  const frac = 0.25 + 0.75 * (x - Math.floor(x));
  return Math.max(1, Math.round(frac * 4096)) * (CHUNK / 4096);
}

/** Fails the disks, plans spares and resyncs, and simulates the rebuild to the end. */
function failAndRebuild(c: Cluster, failed: number[], limits: SchedulerLimits, fill: Fill): PhaseResult {
  const t0 = performance.now();
  for (const d of failed) {
    c.alive[d] = 0;
    c.model.setDiskEligible(c.diskIds[d]!, false);
  }
  const failedSet = new Set(failed);
  // Replicas lost: every replica on a failed disk (the manager scans its maps the same way).
  const lost: number[] = [];
  for (let r = 0; r < c.replicaDisk.length; r++) {
    if (failedSet.has(c.replicaDisk[r]!)) {
      c.replicaGood[r] = 0;
      lost.push(r);
    }
  }
  const ts = performance.now();
  const reqs: SpareRequest[] = lost.map((r) => {
    const seg = Math.floor(r / K);
    const exclude = new Set<string>();
    for (let k = 0; k < K; k++) if (seg * K + k !== r) exclude.add(`s${c.diskServer[c.replicaDisk[seg * K + k]!]}`);
    return { volumeId: c.segmentVolume[seg]!, excludeServers: exclude, avoidServer: `s${c.diskServer[c.replicaDisk[r]!]}`, spreadLabel: 'rack' };
  });
  // Resync work each disk has ahead: reading for the lost replicas' segments (shared among their good copies).
  const resyncLoad = new Map<string, number>();
  for (const r of lost) {
    const seg = Math.floor(r / K);
    const good: string[] = [];
    for (let k = 0; k < K; k++) if (c.replicaGood[seg * K + k]) good.push(c.diskIds[c.replicaDisk[seg * K + k]!]!);
    for (const d of good) resyncLoad.set(d, (resyncLoad.get(d) ?? 0) + 1 / good.length);
  }
  const picks = c.model.placeSpares(reqs, resyncLoad);
  const spareMs = performance.now() - ts;
  const jobs = new Map<string, Job>();
  let totalBytes = 0;
  let maxBytes = 0;
  const targetsPerDisk = new Map<number, number>();
  lost.forEach((r, i) => {
    const pick = picks[i];
    if (!pick) throw new Error(`no spare for replica ${r}`);
    const target = c.diskIndex.get(pick.diskId)!;
    const bytes = bytesOf(r, fill);
    totalBytes += bytes;
    maxBytes = Math.max(maxBytes, bytes);
    targetsPerDisk.set(target, (targetsPerDisk.get(target) ?? 0) + bytes);
    const id = `r${r}`;
    jobs.set(id, { q: { id, goodCopies: 0, createdMs: 0, target: pick.diskId, sources: [], bytes }, replica: r, target, remaining: bytes, disks: [] });
  });
  const refresh = (j: Job) => {
    const seg = Math.floor(j.replica / K);
    const sources: string[] = [];
    for (let k = 0; k < K; k++) {
      const r = seg * K + k;
      if (c.replicaGood[r] && c.alive[c.replicaDisk[r]!]) sources.push(c.diskIds[c.replicaDisk[r]!]!);
    }
    j.q = { ...j.q, goodCopies: sources.length, sources };
  };
  let queue = [...jobs.values()];
  for (const j of queue) refresh(j);
  const running = new Map<string, Job>();
  let calls = 0;
  let scheduleMs = 0;
  let firstScheduleMs = 0;
  let firstWave = 0;
  let maxLoad = 0;
  let sourcesUsed = 0;
  const schedule = () => {
    const t = performance.now();
    const res = scheduleResyncs(queue.map((j) => j.q), [...running.values()].map((j) => ({ id: j.q.id, disks: j.disks.map((d) => c.diskIds[d]!) })), limits);
    const dt = performance.now() - t;
    scheduleMs += dt;
    if (calls++ === 0) [firstScheduleMs, firstWave] = [dt, res.start.length];
    const started = new Set<string>();
    for (const s of res.start) {
      const j = jobs.get(s.id)!;
      j.disks = [j.target, ...s.sources.map((d) => c.diskIndex.get(d)!)];
      sourcesUsed += s.sources.length;
      running.set(s.id, j);
      started.add(s.id);
    }
    if (started.size > 0) queue = queue.filter((j) => !started.has(j.q.id));
    const runs: RunningResync[] = [...running.values()].map((j) => ({ id: j.q.id, disks: j.disks.map((d) => c.diskIds[d]!) }));
    const over = overloadedDisks(runs, limits);
    if (over.length > 0) throw new Error(`disk ${over[0]} is in more resyncs than its limit`);
    if (running.size > limits.maxRunning) throw new Error(`${running.size} resyncs run, cap ${limits.maxRunning}`);
    const load = new Map<number, number>();
    for (const j of running.values()) for (const d of j.disks) load.set(d, (load.get(d) ?? 0) + 1);
    for (const n of load.values()) maxLoad = Math.max(maxLoad, n);
    return res;
  };
  schedule();
  const planningMs = performance.now() - t0;

  let now = 0;
  while (running.size > 0) {
    // Each disk's bandwidth is shared by the resyncs using it.
    const load = new Map<number, number>();
    for (const j of running.values()) for (const d of j.disks) load.set(d, (load.get(d) ?? 0) + 1);
    const rate = new Map<Job, number>();
    let dt = Infinity;
    for (const j of running.values()) {
      const write = BANDWIDTH / load.get(j.target)!;
      let read = 0;
      for (const d of j.disks.slice(1)) read += BANDWIDTH / load.get(d)!;
      const r = Math.min(write, read);
      rate.set(j, r);
      dt = Math.min(dt, j.remaining / r);
    }
    now += dt;
    const done: Job[] = [];
    for (const [j, r] of rate) {
      j.remaining -= r * dt;
      if (j.remaining <= CHUNK * 1e-9) done.push(j);
    }
    for (const j of done) {
      running.delete(j.q.id);
      c.replicaDisk[j.replica] = j.target;
      c.replicaGood[j.replica] = 1;
    }
    // Good-copy counts of other resyncs of the same segments changed.
    const segs = new Set(done.map((j) => Math.floor(j.replica / K)));
    for (const j of queue) if (segs.has(Math.floor(j.replica / K))) refresh(j);
    schedule();
    if (running.size === 0 && queue.length > 0) throw new Error(`${queue.length} resyncs can never start`);
  }

  // Lower bound.
  const aliveDisks = c.alive.reduce((a, b) => a + b, 0);
  // Bytes each disk must move whatever the choices: what it receives, plus
  // what it sends where it holds the only good copy of a segment.
  const forced = new Map<number, number>(targetsPerDisk);
  const lostSet = new Set(lost);
  const perSeg = new Map<number, number[]>();
  for (const r of lost) {
    const seg = Math.floor(r / K);
    if (!perSeg.has(seg)) perSeg.set(seg, []);
    perSeg.get(seg)!.push(r);
  }
  for (const [seg, rs] of perSeg) {
    if (rs.length !== K - 1) continue;
    for (let k = 0; k < K; k++) {
      const d = c.replicaDisk[seg * K + k]!;
      if (!lostSet.has(seg * K + k)) forced.set(d, (forced.get(d) ?? 0) + rs.reduce((a, r) => a + bytesOf(r, fill), 0));
    }
  }
  // Every resync holds two disks (target and a source) from start to end;
  // when all take equally long, some disk takes part in at least
  // ceil(2 x resyncs / disks) of them, one after another.
  const equal = fill === 'full';
  const bounds: Array<[string, number]> = [
    ['one chunk', maxBytes / BANDWIDTH],
    ['disk uses (equal chunks)', equal ? (Math.ceil((2 * lost.length) / aliveDisks) * CHUNK) / BANDWIDTH : 0],
    ['busiest disk', Math.max(...forced.values()) / BANDWIDTH],
    ['aggregate bandwidth', (2 * totalBytes) / (aliveDisks * BANDWIDTH)],
    ['global cap', equal ? (Math.ceil(lost.length / limits.maxRunning) * CHUNK) / BANDWIDTH : totalBytes / (limits.maxRunning * BANDWIDTH)],
  ];
  const [bound, lb] = bounds.reduce((a, b) => (b[1] > a[1] ? b : a));
  return {
    lost: lost.length, planningMs: round(planningMs), planningUnder1s: planningMs < 1000, spareMs: round(spareMs),
    firstScheduleMs: round(firstScheduleMs), firstWave, simulatedS: round(now), lowerBoundS: round(lb), ratio: round(now / lb), bound,
    bounds: Object.fromEntries(bounds.filter(([, v]) => v > 0).map(([k, v]) => [k, round(v)])),
    maxRunning: limits.maxRunning, maxDiskLoadSeen: maxLoad, scheduleCalls: calls, scheduleMsTotal: round(scheduleMs),
    sourcesPerResyncAvg: round(sourcesUsed / lost.length),
  };
}

const round = (x: number) => Math.round(x * 1000) / 1000;

/** The disk holding the most chunks, and a server that holds none of the disks failed so far. */
function pickVictims(c: Cluster): { disk: number; server: number } {
  let disk = 0;
  for (let d = 0; d < c.diskIds.length; d++) if (c.model.diskUsage(c.diskIds[d]!)!.used > c.model.diskUsage(c.diskIds[disk]!)!.used) disk = d;
  const server = (c.diskServer[disk]! + SERVERS / 2) % SERVERS;
  return { disk, server };
}

export async function runResyncSchedulerBench(): Promise<object> {
  const out: Record<string, unknown> = {
    disks: SERVERS * DISKS_PER_SERVER, servers: SERVERS, racks: RACKS, replicas: K,
    chunkGiB: CHUNK / GiB, diskMiBps: BANDWIDTH / MiB,
  };
  const runs: Array<[string, number, Fill]> = [
    ['cap64, full chunks', DEFAULT_SCHEDULER_LIMITS.maxRunning, 'full'],
    ['uncapped, full chunks', 1_000_000, 'full'],
    ['uncapped, chunks 25-100% written', 1_000_000, 'partial'],
  ];
  for (const [name, maxRunning, fill] of runs) {
    const tb = performance.now();
    const c = buildCluster();
    const buildS = round((performance.now() - tb) / 1000);
    const limits: SchedulerLimits = { ...DEFAULT_SCHEDULER_LIMITS, maxRunning };
    const { disk, server } = pickVictims(c);
    const diskPhase = failAndRebuild(c, [disk], limits, fill);
    const serverDisks = Array.from({ length: DISKS_PER_SERVER }, (_, i) => server * DISKS_PER_SERVER + i);
    const serverPhase = failAndRebuild(c, serverDisks, limits, fill);
    out[name] = { buildS, segments: c.segmentVolume.length, diskFailure: diskPhase, serverFailure: serverPhase };
  }
  return out;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const res = await runResyncSchedulerBench() as Record<string, unknown>;
  console.log(JSON.stringify(res, null, 2));
  for (const [name, v] of Object.entries(res)) {
    if (typeof v !== 'object' || v === null) continue;
    for (const [phase, p] of Object.entries(v as Record<string, PhaseResult | number>)) {
      if (typeof p !== 'object') continue;
      console.log(`${name}, ${phase} (${p.lost} chunks): planning ${p.planningMs.toFixed(0)} ms; rebuild ${p.simulatedS.toFixed(1)} s simulated, ` +
        `lower bound ${p.lowerBoundS.toFixed(1)} s (${p.bound}): ${p.ratio.toFixed(2)}x; first wave ${p.firstWave} resyncs; at most ${p.maxDiskLoadSeen} per disk`);
    }
  }
}
