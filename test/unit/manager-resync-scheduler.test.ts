import { describe, expect, it } from 'vitest';
import {
  overloadedDisks, planSources, scheduleResyncs, type QueuedResync, type RunningResync, type SchedulerLimits,
} from '../../manager/resync/scheduler.js';

// The pure resync scheduler (manager/resync/scheduler.ts): per-disk limits,
// priorities, parallelism, source choice.

const LIMITS: SchedulerLimits = { perDisk: 1, maxRunning: 1000, maxSources: 1 };

const q = (id: string, target: string, sources: string[], goodCopies = sources.length, createdMs = 0, bytes?: number): QueuedResync =>
  ({ id, target, sources, goodCopies, createdMs, bytes });

/** Seeded generator so failures repeat. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), a | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A random queue over `disks` disks: each resync a target and 1-3 distinct other candidate sources. */
function randomQueue(rand: () => number, n: number, disks: number): QueuedResync[] {
  const out: QueuedResync[] = [];
  for (let i = 0; i < n; i++) {
    const picked = new Set<number>();
    const want = 2 + Math.floor(rand() * 3);
    while (picked.size < want) picked.add(Math.floor(rand() * disks));
    const [t, ...s] = [...picked].map((d) => `d${d}`);
    out.push(q(`r${i}`, t!, s, 1 + Math.floor(rand() * 2), Math.floor(rand() * 5)));
  }
  return out;
}

describe('resync scheduler', () => {
  it('never puts a disk in more resyncs than its limit, as source or target, through a whole rebuild', () => {
    for (const [seed, perDisk, maxSources] of [[1, 1, 1], [2, 1, 3], [3, 2, 2], [4, 3, 3]] as const) {
      const rand = rng(seed);
      const limits: SchedulerLimits = { perDisk, maxRunning: 40, maxSources, perDiskOverride: new Map([['d0', perDisk + 1]]) };
      let queue = randomQueue(rand, 300, 30);
      const running: RunningResync[] = [];
      let rounds = 0;
      while (queue.length > 0 || running.length > 0) {
        const { start } = scheduleResyncs(queue, running, limits);
        for (const s of start) {
          const r = queue.find((x) => x.id === s.id)!;
          expect(s.sources.length).toBeGreaterThanOrEqual(1);
          expect(s.sources.length).toBeLessThanOrEqual(maxSources);
          expect(new Set(s.sources).size).toBe(s.sources.length);
          for (const src of s.sources) expect(r.sources).toContain(src);
          expect(s.sources).not.toContain(r.target);
          running.push({ id: s.id, disks: [r.target, ...s.sources] });
        }
        const started = new Set(start.map((s) => s.id));
        queue = queue.filter((x) => !started.has(x.id));
        expect(overloadedDisks(running, limits)).toEqual([]);
        expect(running.length).toBeLessThanOrEqual(limits.maxRunning);
        // Finish a random third of what runs (at least one).
        const finishing = Math.max(1, Math.floor(running.length / 3));
        for (let i = 0; i < finishing && running.length > 0; i++) running.splice(Math.floor(rand() * running.length), 1);
        expect(++rounds).toBeLessThan(1000);
      }
    }
  });

  it('counts running resyncs against their disks', () => {
    const running: RunningResync[] = [{ id: 'x', disks: ['t0', 's0'] }];
    const { start, waiting } = scheduleResyncs([q('a', 't0', ['s1']), q('b', 't1', ['s0']), q('c', 't2', ['s0', 's3'])], running, LIMITS);
    expect(start).toEqual([{ id: 'c', sources: ['s3'] }]);
    expect(waiting).toEqual({ busy: 2, noSource: 0, cap: 0 });
    // A limit of 2 on s0 lets b read from it too.
    const more = scheduleResyncs([q('b', 't1', ['s0'])], running, { ...LIMITS, perDiskOverride: new Map([['s0', 2]]) });
    expect(more.start).toEqual([{ id: 'b', sources: ['s0'] }]);
  });

  it('starts the most endangered segments first, then the oldest', () => {
    // All four want disk s: only one can run.
    const queued = [
      q('healthy-old', 't1', ['s'], 2, 1), q('endangered-new', 't2', ['s'], 1, 9),
      q('healthy-older', 't3', ['s'], 2, 0), q('endangered-newer', 't4', ['s'], 1, 10),
    ];
    const order: string[] = [];
    let queue = queued;
    while (queue.length > 0) {
      const { start } = scheduleResyncs(queue, [], LIMITS);
      expect(start).toHaveLength(1);
      order.push(start[0]!.id);
      queue = queue.filter((x) => x.id !== start[0]!.id);
    }
    expect(order).toEqual(['endangered-new', 'endangered-newer', 'healthy-older', 'healthy-old']);
  });

  it('runs as many resyncs at once as the disks allow (a lost disk is rebuilt by many), up to the global cap', () => {
    // 200 lost chunks of one disk: targets spread over 200 disks, two good copies each on 400 others.
    const queued = Array.from({ length: 200 }, (_, i) => q(`r${i}`, `t${i}`, [`a${i}`, `b${i}`]));
    expect(scheduleResyncs(queued, [], LIMITS).start).toHaveLength(200);
    const capped = scheduleResyncs(queued, [{ id: 'x', disks: ['z'] }], { ...LIMITS, maxRunning: 64 });
    expect(capped.start).toHaveLength(63);
    expect(capped.waiting.cap).toBe(137);
  });

  it('chooses sources so that more resyncs can run: the candidate others need least, and moves a choice to make room', () => {
    // a could read x or y; b only x: a must take y.
    expect(scheduleResyncs([q('a', 't1', ['x', 'y'], 2, 0), q('b', 't2', ['x'], 2, 1)], [], LIMITS).start)
      .toEqual([{ id: 'a', sources: ['y'] }, { id: 'b', sources: ['x'] }]);
    // b's target is a's better candidate: a reads the other one.
    expect(scheduleResyncs([q('a', 't1', ['x', 'y'], 2, 0), q('b', 'x', ['z'], 2, 1)], [], LIMITS).start)
      .toEqual([{ id: 'a', sources: ['y'] }, { id: 'b', sources: ['z'] }]);
    // a goes first (most endangered) with x and y equally wanted; whichever it
    // takes, b and c still both start (b has w, c needs y).
    const res = scheduleResyncs([
      q('a', 't1', ['x', 'y'], 1, 0), q('b', 't2', ['x', 'w'], 2, 1), q('c', 't3', ['y'], 2, 2),
    ], [], LIMITS);
    expect(res.start.map((s) => s.id).sort()).toEqual(['a', 'b', 'c']);
    const used = res.start.flatMap((s) => s.sources);
    expect(new Set(used).size).toBe(3);
  });

  it('leaves no resync waiting whose target and planned source are both free (maximal), on random queues', () => {
    for (let seed = 10; seed < 30; seed++) {
      const rand = rng(seed);
      const queue = randomQueue(rand, 120, 60);
      const running: RunningResync[] = [{ id: 'busy', disks: ['d1', 'd2', 'd3'] }];
      const { start } = scheduleResyncs(queue, running, LIMITS);
      const used = new Set(running.flatMap((r) => r.disks));
      for (const s of start) {
        const r = queue.find((x) => x.id === s.id)!;
        for (const d of [r.target, ...s.sources]) {
          expect(used.has(d)).toBe(false);
          used.add(d);
        }
      }
      const started = new Set(start.map((s) => s.id));
      // A resync waits only if its target or the source planned for it is taken.
      const { source } = planSources(queue, running);
      for (const r of queue) {
        if (started.has(r.id)) continue;
        const planned = source.get(r.id);
        const startable = planned !== undefined && !used.has(r.target) && !used.has(planned);
        expect(startable, `${r.id} could start`).toBe(false);
      }
    }
  });

  it('spreads reads over extra sources only where no waiting resync wants the disk', () => {
    const limits = { ...LIMITS, maxSources: 3 };
    // a may read x, y, z; b waits for t1 (busy) and wants y.
    const { start } = scheduleResyncs([q('a', 't0', ['x', 'y', 'z']), q('b', 't1', ['y'])], [{ id: 'r', disks: ['t1'] }], limits);
    expect(start).toHaveLength(1);
    expect(start[0]!.sources.sort()).toEqual(['x', 'z']);
    // Nobody waiting: all three.
    expect(scheduleResyncs([q('a', 't0', ['x', 'y', 'z'])], [], limits).start[0]!.sources.sort()).toEqual(['x', 'y', 'z']);
  });

  it('keeps a disk that must receive several copies from sending while another good copy can', () => {
    // t receives two copies; a could read t or u: it reads u even though u is busy now (it waits).
    const queued = [q('a', 'v', ['t', 'u'], 2, 0), q('b', 't', ['p'], 2, 1), q('c', 't', ['s'], 2, 2)];
    const { start } = scheduleResyncs(queued, [{ id: 'x', disks: ['u'] }], LIMITS);
    expect(start).toEqual([{ id: 'b', sources: ['p'] }]);
  });

  it('waits when a resync has no source, and says why', () => {
    const { start, waiting } = scheduleResyncs([q('a', 't', []), q('b', 't', ['t'])], [], LIMITS);
    expect(start).toEqual([]);
    expect(waiting.noSource).toBe(2);
  });

  it('prefers resyncs on the most loaded disks when sizes are known', () => {
    // Both want s; the big copy onto the disk with more work goes first (t2's
    // other copy waits for u, so only one of them can run).
    const queued = [q('small', 't1', ['s'], 2, 0, 1), q('big', 't2', ['s'], 2, 0, 100), q('more-for-t2', 't2', ['u'], 2, 0, 50)];
    const { start } = scheduleResyncs(queued, [{ id: 'x', disks: ['u'], bytesLeft: 10 }], LIMITS);
    expect(start).toEqual([{ id: 'big', sources: ['s'] }]);
  });

  it('starts the largest copy first among equally endangered ones on equally loaded disks (longest first)', () => {
    // t1 and t2 must each receive 100 bytes; both copies read s: the larger goes first.
    const queued = [q('a', 't1', ['s'], 2, 0, 50), q('b', 't2', ['s'], 2, 0, 100), q('a2', 't1', ['u'], 2, 0, 50)];
    const { start } = scheduleResyncs(queued, [{ id: 'x', disks: ['u'], bytesLeft: 10 }], LIMITS);
    expect(start).toEqual([{ id: 'b', sources: ['s'] }]);
    // Priority still dominates: a more endangered small copy goes before it.
    const urgent = scheduleResyncs([...queued, q('c', 't3', ['s'], 1, 0, 1)], [{ id: 'x', disks: ['u'], bytesLeft: 10 }], LIMITS);
    expect(urgent.start).toEqual([{ id: 'c', sources: ['s'] }]);
  });

  it('plans sources so that no disk has more work ahead than it must (receiving) when the candidates allow', () => {
    // x is a candidate of three copies, each with another candidate; y must itself receive a big copy.
    const queued = [
      q('a', 't1', ['x', 'y'], 2, 0, 100), q('b', 't2', ['x', 'z'], 2, 0, 100), q('c', 't3', ['x', 'w'], 2, 0, 100),
      q('d', 'y', ['p'], 2, 0, 100),
    ];
    const plan = planSources(queued);
    expect(plan.horizon).toBeCloseTo(1);
    for (const d of ['x', 'y', 'z', 'w', 'p']) expect(plan.work.get(d) ?? 0).toBeLessThanOrEqual(1 + 1e-9);
    expect(plan.source.get('a')).toBe('x');
    // A chain: x's copy moves to y only if y hands its own on to v.
    const chain = [q('e', 't1', ['x', 'y'], 2, 0, 100), q('f', 't2', ['x'], 2, 0, 100), q('g', 't3', ['y', 'v'], 2, 0, 100)];
    const planned = planSources(chain).source;
    expect(new Set([planned.get('e'), planned.get('f'), planned.get('g')])).toEqual(new Set(['x', 'y', 'v']));
    // What is left of a running resync counts as work ahead of its disks.
    const withRunning = planSources([q('h', 't', ['m', 'n'], 2, 0, 100)], [{ id: 'r', disks: ['m'], bytesLeft: 300 }]);
    expect(withRunning.source.get('h')).toBe('n');
    expect(withRunning.work.get('m')).toBeCloseTo(1);
  });

  it('reads from the planned source: waits for a disk that is busy briefly, plans around one busy for long', () => {
    // x is busy for 10 more bytes, y must itself receive 50 (from p, busy too): a (100 bytes) is planned on x and waits for it.
    const shortly: RunningResync[] = [{ id: 'r', disks: ['x'], bytesLeft: 10 }, { id: 'r2', disks: ['p'], bytesLeft: 10 }];
    const queued = [q('a', 't', ['x', 'y'], 2, 0, 100), q('to-y', 'y', ['p'], 2, 0, 50)];
    expect(planSources(queued, shortly).source.get('a')).toBe('x');
    expect(scheduleResyncs(queued, shortly, LIMITS).start).toEqual([]);
    // x busy for 1,000 more bytes: a is planned on y and starts now.
    const long: RunningResync[] = [{ id: 'r', disks: ['x'], bytesLeft: 1000 }, { id: 'r2', disks: ['p'], bytesLeft: 10 }];
    expect(planSources(queued, long).source.get('a')).toBe('y');
    expect(scheduleResyncs(queued, long, LIMITS).start).toEqual([{ id: 'a', sources: ['y'] }]);
  });
});
