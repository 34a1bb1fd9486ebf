// Which queued resyncs start now, and which disks each one reads from.
// Pure (no I/O, no clock): the manager (manager/resync/resyncs.ts) and the rebuild
// simulation (test/bench/resync-scheduler.ts) run this same code.
//
// Rules (docs/design.md rule 8, and what VastSky's storage manager did):
//  - a physical disk takes part in at most `perDisk` running resyncs (default
//    one), whether as source or as target; every source a resync reads from
//    counts against its disk;
//  - the most endangered segments go first: fewest in-sync copies, then the
//    oldest request;
//  - as many run at once as the disks allow (a lost disk is rebuilt by many
//    disks in parallel), up to a global cap.
//
// Each resync needs its target disk and at least one source disk (an in-sync
// replica of its segment) free. How the choices are made (each measured with
// the rebuild simulation, test/bench/resync-scheduler.ts):
//  - a plan of sources (planSources): each resync is planned on the
//    candidate with the least work ahead, largest copies first, then copies
//    move off the disks with the most work while that lowers them. A disk's
//    work ahead is what it must receive, what it is planned to send and
//    what is left of its running resyncs; the rebuild lasts at least as
//    long as the disk with the most. Without it a disk that must receive
//    was made to send first whenever it happened to be free, then waited
//    for its own copies and ended last: that made partly written rebuilds
//    1.5x their bound;
//  - within a priority class, the disks with the most work ahead are served
//    first: each, while free, starts the copy (to or from it) whose other
//    disk has the most work ahead, then the largest one (longest first);
//  - a copy reads from its planned source (the plan is redone at every
//    call, so a copy waits for a busy source only while that beats loading
//    another);
//  - when a disk finds every disk it could pair with taken by a copy started
//    earlier in this call, that copy's other disk starts another copy
//    instead if it can (a one-step augmenting path: more resyncs run at
//    once);
//  - then resyncs may take extra sources (up to `maxSources`) from disks no
//    waiting resync wants: reads are spread over more replicas without
//    holding anyone up now.
// The plan is redone at every call (the manager calls it whenever resyncs
// finish), from what is queued and what is left of what runs.

export interface SchedulerLimits {
  /** Running resyncs a disk may take part in (default 1). */
  perDisk: number;
  /** Per-disk exceptions to `perDisk` (e.g. a fast disk allowed 2). */
  perDiskOverride?: ReadonlyMap<string, number>;
  /** Resyncs running at once in the whole cluster. */
  maxRunning: number;
  /** Source disks one resync may read from. */
  maxSources: number;
}

export const DEFAULT_SCHEDULER_LIMITS: SchedulerLimits = { perDisk: 1, maxRunning: 64, maxSources: 2 };

export interface QueuedResync {
  id: string;
  /** In-sync replicas of the segment now (fewest go first). */
  goodCopies: number;
  createdMs: number;
  /** Disk the copy writes to. */
  target: string;
  /** Disks of the in-sync replicas it may read from (usable ones only). */
  sources: readonly string[];
  /** Bytes it will copy, when known (written regions); weighs how busy it keeps its disks. */
  bytes?: number;
}

export interface RunningResync {
  id: string;
  /** Every disk it uses: target and sources. */
  disks: readonly string[];
  /**
   * Bytes it still has to copy, when known: counted as work ahead of its
   * disks when sources are planned. Unknown, it counts as much as the
   * largest queued resync.
   */
  bytesLeft?: number;
}

export interface ResyncStart {
  id: string;
  /** Chosen source disks, first one the least contended. */
  sources: string[];
}

export interface ScheduleResult {
  start: ResyncStart[];
  /** Queued resyncs left waiting, by why: a busy disk, no usable source at all, or the global cap. */
  waiting: { busy: number; noSource: number; cap: number };
}

/**
 * Highest priority first: fewest good copies, then oldest, then (given) highest
 * pressure, then largest (known bytes), then id.
 */
export function resyncOrder(a: QueuedResync, b: QueuedResync, pressure?: ReadonlyMap<string, number>): number {
  return a.goodCopies - b.goodCopies || a.createdMs - b.createdMs
    || (pressure ? (pressure.get(b.id) ?? 0) - (pressure.get(a.id) ?? 0) : 0)
    || (b.bytes ?? 0) - (a.bytes ?? 0)
    || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}

/** Source disks planned for queued resyncs, and the work each disk has ahead. */
export interface SourcePlan {
  /** Resync id -> the candidate source it is planned to read from. */
  source: Map<string, string>;
  /** Disk -> work ahead: what it must receive, what it is planned to send, what is left of its running resyncs (size units). */
  work: Map<string, number>;
  /** The most work any disk has ahead: the rest of the rebuild cannot be shorter than that with these sources. */
  horizon: number;
  /** A resync's length in size units (1: the largest known size; an unknown size counts 1). */
  size: (q: QueuedResync) => number;
}

/**
 * Plans which candidate each queued resync reads from so that the work
 * ahead of the busiest disks is as small as it can cheaply be made: largest
 * copies first, each to the candidate with the least work ahead (then the
 * one the fewest resyncs want), then, for every disk left with more than
 * 90% of the most any disk is forced to do, chains of moves (a copy to its other
 * candidate, which may hand one of its own on, and so on) that leave every
 * disk on the chain with less work than the relieved one had. Work ahead
 * counts what a disk must receive, what it is planned to send and what is
 * left of its running resyncs (one unit when that is not known).
 */
export function planSources(queued: readonly QueuedResync[], running: readonly RunningResync[] = []): SourcePlan {
  let unit = 0;
  for (const q of queued) unit = Math.max(unit, q.bytes ?? 0);
  for (const r of running) unit = Math.max(unit, r.bytesLeft ?? 0);
  const size = (q: QueuedResync) => (q.bytes !== undefined && unit > 0 ? q.bytes / unit : 1);
  const work = new Map<string, number>();
  const add = (d: string, w: number) => work.set(d, (work.get(d) ?? 0) + w);
  for (const r of running) {
    const left = r.bytesLeft !== undefined && unit > 0 ? r.bytesLeft / unit : 1;
    for (const d of r.disks) add(d, left);
  }
  const wanted = new Map<string, number>();
  for (const q of queued) {
    add(q.target, size(q));
    for (const c of q.sources) if (c !== q.target) wanted.set(c, (wanted.get(c) ?? 0) + 1);
  }
  const W = (d: string) => work.get(d) ?? 0;
  const source = new Map<string, string>();
  const sends = new Map<string, QueuedResync[]>();
  const send = (d: string, q: QueuedResync) => {
    source.set(q.id, d);
    add(d, size(q));
    let list = sends.get(d);
    if (!list) sends.set(d, (list = []));
    list.push(q);
  };
  const unsend = (d: string, q: QueuedResync) => {
    add(d, -size(q));
    const list = sends.get(d)!;
    list.splice(list.indexOf(q), 1);
  };
  const bySize = queued.slice().sort((x, y) => size(y) - size(x) || (x.id < y.id ? -1 : x.id > y.id ? 1 : 0));
  for (const q of bySize) {
    let pick: string | undefined;
    for (const c of q.sources) {
      if (c === q.target) continue;
      if (pick === undefined || W(c) < W(pick) - 1e-9
        || (Math.abs(W(c) - W(pick)) <= 1e-9 && (wanted.get(c) ?? 0) < (wanted.get(pick) ?? 0))) pick = c;
    }
    if (pick !== undefined) send(pick, q);
  }
  // Moves a copy off x along a chain (breadth first, up to five moves): the
  // copy goes to its other candidate y, which, unless it stays below x's
  // work, hands one of its own copies on to its other candidate, and so on.
  // Every disk on the chain ends with less work than x had.
  const relieve = (x: string): boolean => {
    const top = W(x);
    const steps: Array<{ disk: string; q: QueuedResync; prev: number }> = [];
    const seen = new Set<string>([x]);
    let layer: Array<{ from: string; give: readonly QueuedResync[]; prev: number }> = [{ from: x, give: sends.get(x) ?? [], prev: -1 }];
    for (let depth = 0; depth < 5 && layer.length > 0; depth++) {
      const next: typeof layer = [];
      for (const { from, give, prev } of layer) {
        for (const q of give) {
          for (const y of q.sources) {
            if (y === from || y === q.target || seen.has(y)) continue;
            seen.add(y);
            const at = steps.push({ disk: y, q, prev }) - 1;
            const gain = W(y) + size(q);
            if (gain < top - 1e-9) {
              for (let i = at; i >= 0; i = steps[i]!.prev) {
                const st = steps[i]!;
                unsend(st.prev >= 0 ? steps[st.prev]!.disk : x, st.q);
                send(st.disk, st.q);
              }
              return true;
            }
            const handable = (sends.get(y) ?? []).filter((r) => gain - size(r) < top - 1e-9);
            if (handable.length > 0) next.push({ from: y, give: handable, prev: at });
          }
        }
      }
      layer = next;
    }
    return false;
  };
  // Disks with more work than 90% of the most any disk is forced to do (its
  // receiving and running) are relieved: above that they would set the
  // rebuild's length or have little slack left for the order copies happen
  // to run in (copies are not preempted); below, the plan cannot lengthen
  // the rebuild. (Measured: the bound 1.0 of the forced work and 0.8 gave
  // the 10,000-disk server rebuild 1.13x and 1.17x, 0.9 gave 1.10x; over six
  // smaller clusters the mean was 1.14x, 1.12x, 1.12x: the order of starts
  // makes a few percent either way.)
  let forced = 0;
  for (const [d, w] of work) {
    let own = w;
    for (const q of sends.get(d) ?? []) own -= size(q);
    forced = Math.max(forced, own);
  }
  for (let round = 0; round < 4; round++) {
    let moved = 0;
    const disks = [...sends.keys()].filter((x) => W(x) > 0.9 * forced + 1e-9).sort((x, y) => W(y) - W(x));
    for (const x of disks) for (let k = 0; k < 4 && W(x) > 0.9 * forced + 1e-9 && relieve(x); k++) moved++;
    if (moved === 0) break;
  }
  let horizon = 0;
  for (const w of work.values()) horizon = Math.max(horizon, w);
  return { source, work, horizon, size };
}

export function scheduleResyncs(
  queued: readonly QueuedResync[],
  running: readonly RunningResync[],
  limits: SchedulerLimits = DEFAULT_SCHEDULER_LIMITS,
): ScheduleResult {
  const used = new Map<string, number>();
  const bump = (disk: string, n = 1) => used.set(disk, (used.get(disk) ?? 0) + n);
  for (const r of running) for (const d of r.disks) bump(d);
  const limitOf = (disk: string) => limits.perDiskOverride?.get(disk) ?? limits.perDisk;
  const free = (disk: string) => (used.get(disk) ?? 0) < limitOf(disk);

  const { source, work, size } = planSources(queued, running);
  const W = (d: string) => work.get(d) ?? 0;
  // A copy reads from its planned source only. The plan is redone at every
  // call from the work ahead, running resyncs' rest included, so a busy disk
  // stays planned only while waiting for it beats loading another. (Letting
  // a copy read from any other candidate that stays under the horizon made
  // the partly written server rebuild 1.16-1.29x its bound instead of
  // 1.10-1.13x: it used up the slack of disks that then ended last.)
  const mayRead = (q: QueuedResync, d: string) => d !== q.target && source.get(q.id) === d;

  const start: ResyncStart[] = [];
  const waiting = { busy: 0, noSource: 0, cap: 0 };
  const capacity = Math.max(0, limits.maxRunning - running.length);
  const started = new Map<string, { q: QueuedResync; s: ResyncStart }>();
  // Disk -> copies started in this call that use it.
  const startedOn = new Map<string, Set<string>>();
  const mark = (d: string, id: string, on: boolean) => {
    let set = startedOn.get(d);
    if (!set) startedOn.set(d, (set = new Set()));
    if (on) set.add(id);
    else set.delete(id);
  };
  const begin = (q: QueuedResync, d: string) => {
    bump(q.target);
    bump(d);
    const s: ResyncStart = { id: q.id, sources: [d] };
    start.push(s);
    started.set(q.id, { q, s });
    mark(q.target, q.id, true);
    mark(d, q.id, true);
  };
  const undo = (id: string) => {
    const { q, s } = started.get(id)!;
    started.delete(id);
    start.splice(start.indexOf(s), 1);
    bump(q.target, -1);
    bump(s.sources[0]!, -1);
    mark(q.target, id, false);
    mark(s.sources[0]!, id, false);
  };

  // Priority classes: fewest good copies, then oldest. A class is served
  // before the next one gets any disk.
  const order = queued.slice().sort((a, b) => resyncOrder(a, b));
  for (let i = 0; i < order.length && start.length < capacity;) {
    let k = i + 1;
    while (k < order.length && order[k]!.goodCopies === order[i]!.goodCopies && order[k]!.createdMs === order[i]!.createdMs) k++;
    serveClass(order.slice(i, k));
    i = k;
  }
  for (const q of queued) {
    if (started.has(q.id)) continue;
    if (!q.sources.some((d) => d !== q.target)) waiting.noSource++;
    else if (start.length >= capacity) waiting.cap++;
    else waiting.busy++;
  }

  // Extra sources only from disks no waiting resync wants.
  if (limits.maxSources > 1) {
    const wanted = new Set<string>();
    for (const q of queued) {
      if (started.has(q.id)) continue;
      wanted.add(q.target);
      for (const d of q.sources) wanted.add(d);
    }
    for (const s of start) {
      const { q } = started.get(s.id)!;
      for (const d of q.sources) {
        if (s.sources.length >= limits.maxSources) break;
        if (d === q.target || s.sources.includes(d) || !free(d) || wanted.has(d)) continue;
        s.sources.push(d);
        bump(d);
      }
    }
  }
  return { start, waiting };

  // Within one class, the disks with the most work ahead are served first:
  // each, while free, starts the copy (to or from it) whose other disk has
  // the most work ahead, then the largest (longest first). When every such
  // other disk was just taken in this call by a copy of the same class, a
  // one-step augmenting path: that copy's own other disk starts another
  // copy instead, and this disk takes the one freed.
  function serveClass(cls: readonly QueuedResync[]) {
    const touching = new Map<string, QueuedResync[]>();
    const touch = (d: string, q: QueuedResync) => {
      let list = touching.get(d);
      if (!list) touching.set(d, (list = []));
      list.push(q);
    };
    const inClass = new Set<string>();
    for (const q of cls) {
      inClass.add(q.id);
      touch(q.target, q);
      for (const d of q.sources) if (d !== q.target) touch(d, q);
    }
    type Edge = [QueuedResync, string, string]; // resync, its source, v's partner in it
    const edges = (v: string, avoid?: ReadonlySet<string>): Edge[] => {
      const out: Edge[] = [];
      for (const q of touching.get(v) ?? []) {
        if (started.has(q.id)) continue;
        if (q.target === v) {
          for (const d of q.sources) if (mayRead(q, d) && free(d) && !avoid?.has(d)) out.push([q, d, d]);
        } else if (mayRead(q, v) && free(q.target) && !avoid?.has(q.target)) out.push([q, v, q.target]);
      }
      return out;
    };
    const better = (a: Edge, b: Edge | undefined): boolean => {
      if (b === undefined) return true;
      const dw = W(a[2]) - W(b[2]);
      if (Math.abs(dw) > 1e-9) return dw > 0;
      if (size(a[0]) !== size(b[0])) return size(a[0]) > size(b[0]);
      if (a[0].id !== b[0].id) return a[0].id < b[0].id;
      return a[1] === source.get(a[0].id);
    };
    const disks = [...touching.keys()].sort((x, y) => W(y) - W(x) || (x < y ? -1 : x > y ? 1 : 0));
    for (const v of disks) {
      while (free(v) && start.length < capacity) {
        let pick: Edge | undefined;
        for (const e of edges(v)) if (better(e, pick)) pick = e;
        if (pick) begin(pick[0], pick[1]);
        else if (!augment(v)) break;
      }
    }

    function augment(v: string): boolean {
      for (const q of touching.get(v) ?? []) {
        if (started.has(q.id)) continue;
        const others = q.target === v ? q.sources.filter((d) => mayRead(q, d)) : mayRead(q, v) ? [q.target] : [];
        for (const w of others) {
          if (free(w)) continue;
          const src = q.target === v ? w : v;
          for (const id of [...startedOn.get(w) ?? []]) {
            const got = started.get(id);
            if (!got || !inClass.has(id)) continue;
            const { q: p, s } = got;
            const x = p.target === w ? s.sources[0]! : p.target;
            undo(id);
            let repl: Edge | undefined;
            if (free(v) && free(w)) for (const e of edges(x, new Set([v, w]))) if (e[0] !== q && better(e, repl)) repl = e;
            if (repl) {
              begin(repl[0], repl[1]);
              begin(q, src);
              return true;
            }
            begin(p, s.sources[0]!);
          }
        }
      }
      return false;
    }
  }
}

/** Every disk over its limit given these running resyncs (a check for tests and the simulation). */
export function overloadedDisks(running: readonly RunningResync[], limits: Pick<SchedulerLimits, 'perDisk' | 'perDiskOverride'>): string[] {
  const load = new Map<string, number>();
  for (const r of running) for (const d of r.disks) load.set(d, (load.get(d) ?? 0) + 1);
  return [...load].filter(([d, n]) => n > (limits.perDiskOverride?.get(d) ?? limits.perDisk)).map(([d]) => d);
}
