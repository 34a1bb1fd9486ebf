// Which queued resyncs start now, and which disks each one reads from.
// Pure (no I/O, no clock): the manager (manager/resyncs.ts) and the rebuild
// simulation (test/bench/resync-scheduler.ts) run this same code.
//
// Rules (DESIGN rule 8, and what VastSky's storage manager did):
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
//  - among equally endangered and equally old resyncs, those on the disks
//    with the most work left go first ("pressure": the rebuild lasts as long
//    as its busiest disk); work is weighted by bytes when sizes are known;
//  - among free sources, the one the rest of the queue needs least;
//  - a disk that must still receive two or more copies is not made to send
//    while another good copy exists (it is the bottleneck);
//  - when a resync finds its target or every source taken by one started
//    earlier in this call that could read elsewhere, that one moves (a
//    one-step augmenting path: more resyncs run at once);
//  - the result is maximal: nothing left waiting could start now;
//  - then resyncs may take extra sources (up to `maxSources`) from disks no
//    waiting resync wants: reads are spread over more replicas without
//    holding anyone up now.

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

/** Highest priority first: fewest good copies, then oldest, then (given) highest pressure, then id. */
export function resyncOrder(a: QueuedResync, b: QueuedResync, pressure?: ReadonlyMap<string, number>): number {
  return a.goodCopies - b.goodCopies || a.createdMs - b.createdMs
    || (pressure ? (pressure.get(b.id) ?? 0) - (pressure.get(a.id) ?? 0) : 0)
    || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}

export function scheduleResyncs(
  queued: readonly QueuedResync[],
  running: readonly RunningResync[],
  limits: SchedulerLimits = DEFAULT_SCHEDULER_LIMITS,
): ScheduleResult {
  const load = new Map<string, number>();
  const bump = (disk: string) => load.set(disk, (load.get(disk) ?? 0) + 1);
  for (const r of running) for (const d of r.disks) bump(d);
  const limitOf = (disk: string) => limits.perDiskOverride?.get(disk) ?? limits.perDisk;
  const free = (disk: string) => (load.get(disk) ?? 0) < limitOf(disk);

  // How much work the waiting queue has for each disk: a target its
  // resync's size, a candidate source 1/n of it (n candidates). Sizes are in
  // units of the largest known one; a resync of unknown size counts 1.
  let unit = 0;
  for (const q of queued) unit = Math.max(unit, q.bytes ?? 0);
  const size = (q: QueuedResync) => (q.bytes !== undefined && unit > 0 ? q.bytes / unit : 1);
  const demand = new Map<string, number>();
  const want = (q: QueuedResync, sign: 1 | -1) => {
    const w = sign * size(q);
    demand.set(q.target, (demand.get(q.target) ?? 0) + w);
    const share = q.sources.length > 0 ? w / q.sources.length : 0;
    for (const s of q.sources) demand.set(s, (demand.get(s) ?? 0) + share);
  };
  for (const q of queued) want(q, 1);
  // Copies each disk still has to receive. One that must receive several is
  // the rebuild's bottleneck: it is not asked to send as well while another
  // good copy of the segment can.
  const receive = new Map<string, number>();
  for (const q of queued) receive.set(q.target, (receive.get(q.target) ?? 0) + 1);
  const reserved = (disk: string) => (receive.get(disk) ?? 0) >= 2;

  // Among equally endangered and equally old resyncs, the ones on the most
  // wanted disks go first: those disks set the rebuild's length.
  const pressure = new Map<string, number>();
  for (const q of queued) {
    let src = Infinity;
    for (const s of q.sources) src = Math.min(src, demand.get(s) ?? 0);
    pressure.set(q.id, (demand.get(q.target) ?? 0) + (Number.isFinite(src) ? src : 0));
  }
  const order = queued.slice().sort((a, b) => resyncOrder(a, b, pressure));
  const start: ResyncStart[] = [];
  const waiting = { busy: 0, noSource: 0, cap: 0 };
  const capacity = Math.max(0, limits.maxRunning - running.length);
  const started = new Map<string, QueuedResync>();
  // Disk -> resyncs started in this call that read from it (their source may still move).
  const readers = new Map<string, ResyncStart[]>();
  const take = (s: ResyncStart, disk: string) => {
    bump(disk);
    let list = readers.get(disk);
    if (!list) readers.set(disk, (list = []));
    list.push(s);
  };
  // Makes room on a busy disk by moving one of this call's readers of it to
  // another free replica of its segment (a one-step augmenting path: it
  // raises how many resyncs run at once). Returns whether it did.
  const freeUp = (disk: string, keep: string): boolean => {
    for (const p of readers.get(disk) ?? []) {
      const q = started.get(p.id)!;
      let alt: string | undefined;
      for (const c of q.sources) {
        if (c === q.target || c === disk || c === keep || p.sources.includes(c) || !free(c) || reserved(c)) continue;
        if (alt === undefined || before(c, alt)) alt = c;
      }
      if (alt === undefined) continue;
      p.sources[p.sources.indexOf(disk)] = alt;
      const list = readers.get(disk)!;
      list.splice(list.indexOf(p), 1);
      load.set(disk, load.get(disk)! - 1);
      take(p, alt);
      return true;
    }
    return false;
  };
  // Tries to start q now; returns why not ('' when started).
  const tryStart = (q: QueuedResync): keyof ScheduleResult['waiting'] | '' => {
    const all = q.sources.filter((s) => s !== q.target);
    const spare = all.filter((s) => !reserved(s));
    const candidates = spare.length > 0 ? spare : all;
    if (candidates.length === 0) return 'noSource';
    if (start.length >= capacity) return 'cap';
    let pick: string | undefined;
    for (const s of candidates) {
      if (!free(s)) continue;
      if (pick === undefined || before(s, pick)) pick = s;
    }
    const targetFree = free(q.target) || freeUp(q.target, pick ?? '');
    if (targetFree && pick === undefined) pick = candidates.find((s) => freeUp(s, q.target));
    if (!targetFree || pick === undefined || !free(q.target) || !free(pick)) return 'busy';
    want(q, -1);
    receive.set(q.target, receive.get(q.target)! - 1);
    bump(q.target);
    const s: ResyncStart = { id: q.id, sources: [] };
    s.sources.push(pick);
    take(s, pick);
    start.push(s);
    started.set(q.id, q);
    return '';
  };
  let left = order;
  // A second sweep: disks kept for receiving may have been released by starts after their turn.
  for (let sweep = 0; sweep < 2 && left.length > 0; sweep++) {
    const count = start.length;
    left = left.filter((q) => tryStart(q) !== '');
    if (start.length === count) break;
  }
  for (const q of left) {
    const why = tryStart(q);
    if (why) waiting[why]++;
  }

  // Extra sources only from disks no waiting resync wants.
  if (limits.maxSources > 1) {
    for (const s of start) {
      const q = started.get(s.id)!;
      for (const d of q.sources) {
        if (s.sources.length >= limits.maxSources) break;
        if (d === q.target || s.sources.includes(d) || !free(d) || (demand.get(d) ?? 0) > 1e-9) continue;
        s.sources.push(d);
        take(s, d);
      }
    }
  }
  return { start, waiting };

  function before(a: string, b: string): boolean {
    const da = demand.get(a) ?? 0;
    const db = demand.get(b) ?? 0;
    if (Math.abs(da - db) > 1e-9) return da < db;
    return (load.get(a) ?? 0) < (load.get(b) ?? 0);
  }
}

/** Every disk over its limit given these running resyncs (a check for tests and the simulation). */
export function overloadedDisks(running: readonly RunningResync[], limits: Pick<SchedulerLimits, 'perDisk' | 'perDiskOverride'>): string[] {
  const load = new Map<string, number>();
  for (const r of running) for (const d of r.disks) load.set(d, (load.get(d) ?? 0) + 1);
  return [...load].filter(([d, n]) => n > (limits.perDiskOverride?.get(d) ?? limits.perDisk)).map(([d]) => d);
}
