import { pathToFileURL } from 'node:url';
import { performance } from 'node:perf_hooks';
import { GiB, MiB } from '../../shared/constants.js';
import { PlacementModel } from '../../manager/placement.js';
import type { SpareRequest } from '../../manager/placement/spares.js';
import {
  DEFAULT_SCHEDULER_LIMITS, overloadedDisks, scheduleResyncs, type QueuedResync, type RunningResync, type SchedulerLimits,
} from '../../manager/resync/scheduler.js';

// Rebuild simulation over the manager's real placement (manager/placement.ts:
// volumes and spares) and real scheduler (manager/resync/scheduler.ts), in
// discrete time. 10,000 disks on 1,000 servers in 10 racks, K=3 volumes
// filling every disk to about 1,000 chunks; one disk fails and is rebuilt,
// then one whole server fails and is rebuilt. Every disk reads or writes at
// B (shared by the resyncs using it); a resync copies its bytes at
// min(target's share, sum of its sources' shares). The scheduler is called
// as the manager calls it: at the start and whenever resyncs finish, with
// what is left of each running one (`bytesLeft`). Checked: no disk ever in
// more resyncs than its limit (default one), never more than the cap
// running. Compared: the simulated rebuild time with a lower bound
// (`lowerBound` below, proved there).
// Two kinds of chunks: all fully written (every resync takes C/B, so the
// rebuild moves in waves), and written to a random 25-100% (regions never
// written are not copied, rule 8; the usual case).
// The cap on running resyncs is floor(disks / 2) = 5,000 in the main runs:
// every resync holds at least two disks (a target and a source) and a disk
// takes part in one at a time, so no more than that can ever run at once and
// the cap never binds; the bound still counts it. A last run keeps the
// default cap of 64 (`--resync-max`), to show that a 10,000-disk cluster is
// then cap-bound (raise the cap on large clusters).
// Run: npm run build && node dist/test/bench/resync-scheduler.js
//   [--quick: 1,000 disks of 100 chunks, the same load per surviving disk in a second]
//   [--servers N] [--fill CHUNKS_PER_DISK] [--no-cap64]

const arg = (name: string, dflt: number) => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : dflt;
};
const QUICK = process.argv.includes('--quick');
const CAP64 = !process.argv.includes('--no-cap64');
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
  /** Which bound is the largest, and every one. */
  bound: string;
  bounds: Record<string, number>;
  /** The cap the run used, and the most resyncs that ran at once. */
  maxRunning: number;
  mostRunningSeen: number;
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
  const lostSet = new Set<number>();
  for (let r = 0; r < c.replicaDisk.length; r++) {
    if (failedSet.has(c.replicaDisk[r]!)) {
      c.replicaGood[r] = 0;
      lost.push(r);
      lostSet.add(r);
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
  lost.forEach((r, i) => {
    const pick = picks[i];
    if (!pick) throw new Error(`no spare for replica ${r}`);
    const target = c.diskIndex.get(pick.diskId)!;
    const bytes = bytesOf(r, fill);
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
  let mostRunning = 0;
  let sourcesUsed = 0;
  const schedule = () => {
    const t = performance.now();
    const res = scheduleResyncs(queue.map((j) => j.q), [...running.values()].map((j) => ({ id: j.q.id, disks: j.disks.map((d) => c.diskIds[d]!), bytesLeft: j.remaining })), limits);
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
    mostRunning = Math.max(mostRunning, running.size);
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

  // Lower bound. Possible sources of each resync: the disks that ever hold
  // a good copy of its segment while it waits (the survivors, and the
  // targets of the segment's other resyncs once those finish).
  const jobsForBound: BoundJob[] = [];
  for (const j of jobs.values()) {
    const seg = Math.floor(j.replica / K);
    const sources = new Set<number>();
    for (let k = 0; k < K; k++) {
      const r = seg * K + k;
      if (r === j.replica) continue;
      const d = lostSet.has(r) ? jobs.get(`r${r}`)!.target : c.replicaDisk[r]!;
      if (c.alive[d]) sources.add(d);
    }
    jobsForBound.push({ target: j.target, sources: [...sources], bytes: j.q.bytes! });
  }
  const { seconds: lb, why: bound, all: bounds } = lowerBound(jobsForBound, { bandwidth: BANDWIDTH, maxRunning: limits.maxRunning, perDisk: limits.perDisk, equalBytes: fill === 'full' ? CHUNK : undefined });
  return {
    lost: lost.length, planningMs: round(planningMs), planningUnder1s: planningMs < 1000, spareMs: round(spareMs),
    firstScheduleMs: round(firstScheduleMs), firstWave, simulatedS: round(now), lowerBoundS: round(lb), ratio: round(now / lb), bound,
    bounds: Object.fromEntries(Object.entries(bounds).map(([k, v]) => [k, round(v)])),
    maxRunning: limits.maxRunning, mostRunningSeen: mostRunning, maxDiskLoadSeen: maxLoad, scheduleCalls: calls, scheduleMsTotal: round(scheduleMs),
    sourcesPerResyncAvg: round(sourcesUsed / lost.length),
  };
}

export interface BoundJob {
  target: number;
  /** Every disk it could read from. */
  sources: readonly number[];
  bytes: number;
}

/**
 * A lower bound on the length of any rebuild of these resyncs, whatever the
 * scheduler does, in the simulation's model: each disk moves at most
 * `bandwidth` bytes/s (reads and writes together), a resync writes all its
 * bytes to its target and reads them from its possible sources (split
 * among them as it likes), at most `maxRunning` run at once. The largest of:
 *
 *  - one copy: a resync is no faster than its target writes, so
 *    T >= max bytes / B;
 *  - disk work (LP): in time T a disk moves at most B*T bytes, so for every
 *    disk d, W_d + R_d <= B*T, where W_d (the bytes written to d: its
 *    targets) is fixed and R_d = sum_j x_jd (x_jd >= 0: the bytes resync j
 *    reads from d, d one of j's possible sources, sum_d x_jd = bytes_j).
 *    So T >= the least T for which such x exists: exactly when a flow from
 *    the resyncs (bytes_j each) through their possible sources into sinks of
 *    capacity B*T - W_d carries all the bytes (found by max-flow and
 *    bisection; the infeasible end is reported). It includes the busiest
 *    target (W_d <= B*T) and all the bytes over all the disks' bandwidth
 *    (the cut of every disk), and it also counts, unlike those, that a
 *    source can only be a disk holding a good copy;
 *  - with equal sizes C and one resync per disk at a time: each resync
 *    holds its target and at least one source for at least C/B, so in time
 *    T a disk takes part in at most m = floor(T*B/C) of them, and choosing
 *    one such source per resync gives an integral assignment with at most
 *    m - (its targets) sends per disk: T >= (C/B) * the least m for which
 *    the integral flow (capacities m - targets) carries every resync
 *    (max-flow with integral capacities has an integral optimum, so the
 *    flow test is exact);
 *  - the cap: T >= all bytes / (maxRunning * B); with equal sizes,
 *    ceil(n / maxRunning) * C/B (at most maxRunning intervals overlap, so
 *    they split into maxRunning chains of disjoint C/B-long intervals).
 */
export function lowerBound(jobs: readonly BoundJob[], opts: { bandwidth: number; maxRunning: number; perDisk: number; equalBytes?: number }):
  { seconds: number; why: string; all: Record<string, number> } {
  const B = opts.bandwidth;
  let total = 0;
  let most = 0;
  const written = new Map<number, number>();
  const received = new Map<number, number>();
  for (const j of jobs) {
    total += j.bytes;
    most = Math.max(most, j.bytes);
    written.set(j.target, (written.get(j.target) ?? 0) + j.bytes);
    received.set(j.target, (received.get(j.target) ?? 0) + 1);
  }
  const all: Record<string, number> = { 'one copy': most / B };
  // Disk work, fractional: bisection on T between the busiest target and everything on one disk.
  let lo = 0;
  for (const w of written.values()) lo = Math.max(lo, w);
  let hi = lo + total;
  const carries = (cap: (d: number) => number) => maxFlow(jobs, (j) => j.bytes, cap) >= total * (1 - 1e-12);
  if (!carries((d) => lo - (written.get(d) ?? 0))) {
    while (hi - lo > lo * 1e-5) {
      const mid = (lo + hi) / 2;
      if (carries((d) => mid - (written.get(d) ?? 0))) hi = mid;
      else lo = mid;
    }
  }
  all['disk work (LP)'] = lo / B;
  if (opts.equalBytes !== undefined && opts.perDisk === 1) {
    let m = 0;
    for (const n of received.values()) m = Math.max(m, n);
    while (maxFlow(jobs, () => 1, (d) => m - (received.get(d) ?? 0)) < jobs.length - 0.5) m++;
    all['resyncs per disk (equal sizes, one at a time)'] = (m * opts.equalBytes) / B;
  }
  all['global cap'] = opts.equalBytes !== undefined
    ? (Math.ceil(jobs.length / opts.maxRunning) * opts.equalBytes) / B
    : total / (opts.maxRunning * B);
  const [why, seconds] = Object.entries(all).reduce((a, b) => (b[1] > a[1] ? b : a));
  return { seconds, why, all };
}

/** Max flow: source -> each job (supply) -> its possible sources -> sink (cap(d), at least 0). Dinic. */
function maxFlow(jobs: readonly BoundJob[], supply: (j: BoundJob) => number, cap: (disk: number) => number): number {
  const diskNode = new Map<number, number>();
  for (const j of jobs) for (const d of j.sources) if (d !== j.target && !diskNode.has(d)) diskNode.set(d, jobs.length + 1 + diskNode.size);
  const n = jobs.length + diskNode.size + 2;
  const S = 0;
  const T = n - 1;
  const head = new Int32Array(n).fill(-1);
  const to: number[] = [];
  const next: number[] = [];
  const c: number[] = [];
  const edge = (u: number, v: number, w: number) => {
    to.push(v, u);
    c.push(w, 0);
    next.push(head[u]!, head[v]!);
    head[u] = to.length - 2;
    head[v] = to.length - 1;
  };
  jobs.forEach((j, i) => {
    edge(S, 1 + i, supply(j));
    for (const d of j.sources) if (d !== j.target) edge(1 + i, diskNode.get(d)!, Infinity);
  });
  for (const [d, node] of diskNode) edge(node, T, Math.max(0, cap(d)));
  const capA = Float64Array.from(c);
  const level = new Int32Array(n);
  const it = new Int32Array(n);
  const eps = 1e-9;
  const bfs = () => {
    level.fill(-1);
    level[S] = 0;
    const queue = [S];
    for (let k = 0; k < queue.length; k++) {
      const u = queue[k]!;
      for (let e = head[u]!; e >= 0; e = next[e]!) {
        if (capA[e]! > eps && level[to[e]!]! < 0) {
          level[to[e]!] = level[u]! + 1;
          queue.push(to[e]!);
        }
      }
    }
    return level[T]! >= 0;
  };
  // Augmenting paths along the BFS levels (short: the graph has four layers).
  const push = (u: number, f: number): number => {
    if (u === T) return f;
    for (; it[u]! >= 0; it[u] = next[it[u]!]!) {
      const e = it[u]!;
      const v = to[e]!;
      if (capA[e]! > eps && level[v] === level[u]! + 1) {
        const got = push(v, Math.min(f, capA[e]!));
        if (got > 0) {
          capA[e] = capA[e]! - got;
          capA[e ^ 1] = capA[e ^ 1]! + got;
          return got;
        }
      }
    }
    return 0;
  };
  let flow = 0;
  while (bfs()) {
    it.set(head);
    for (let f = push(S, Infinity); f > 0; f = push(S, Infinity)) flow += f;
  }
  return flow;
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
  // Cap: floor(disks / 2), the most that can ever run with one resync per disk (see the top).
  const cap = Math.floor((SERVERS * DISKS_PER_SERVER) / 2);
  const runs: Array<[string, number, Fill]> = [
    ['full chunks', cap, 'full'],
    ['chunks 25-100% written', cap, 'partial'],
  ];
  if (CAP64) runs.push([`default cap ${DEFAULT_SCHEDULER_LIMITS.maxRunning}, full chunks`, DEFAULT_SCHEDULER_LIMITS.maxRunning, 'full']);
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
      console.log(`${name}, ${phase === 'diskFailure' ? 'one disk fails' : 'a whole server fails'} (${p.lost} chunks, cap ${p.maxRunning}): ` +
        `planning ${p.planningMs.toFixed(0)} ms; at most ${p.maxDiskLoadSeen} resync(s) per disk, ${p.mostRunningSeen} at once; ` +
        `rebuild ${p.simulatedS.toFixed(2)} s simulated, lower bound ${p.lowerBoundS.toFixed(2)} s (${p.bound}): ${p.ratio.toFixed(3)}x`);
    }
  }
}
