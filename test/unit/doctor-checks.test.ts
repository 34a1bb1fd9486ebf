import { describe, expect, it } from 'vitest';
import { clusterFindings, defaultMaxClockSkewMs, type ClusterSnapshot } from '../../cli/doctor/cluster-checks.js';
import { isProblem, renderFindings, type Finding } from '../../cli/doctor/findings.js';

// vsky doctor's cluster checks over snapshots of what a manager answers
// (the integration test drives them against a real cluster with real faults;
// here, the cases that a local cluster cannot stage: a skewed clock, a DIRTY volume).

const NOW = 1_800_000_000_000;
type Snap = ClusterSnapshot;

function snapshot(over: Partial<Snap> = {}): Snap {
  return {
    manager: '127.0.0.1:7700', localClockOffsetMs: 3, unreachable: new Map(), jobs: [],
    status: { managerTimeMs: NOW, leaseTtlMs: 8000, volumeList: [] } as unknown as Snap['status'],
    servers: [{ name: 's1', controlAddress: '127.0.0.11:7711', state: 'active', lastHeartbeatMs: NOW } as Snap['servers'][number]],
    disks: [{ diskId: 'd1', path: '/x', serverName: 's1', state: 'active', chunkCount: 10, usedChunks: 2 } as Snap['disks'][number]],
    heads: [{ name: 'hv1', controlAddress: '127.0.0.1:7720', state: 'active', attached: [], clockOffsetMs: 12, clockOffsetKnown: true } as unknown as Snap['heads'][number]],
    ...over,
  };
}

const T = { diskFull: 0.9, poolFull: 0.8, maxClockSkewMs: defaultMaxClockSkewMs(8000) };
const problems = (f: Finding[]) => f.filter(isProblem).map((x) => `${x.level} ${x.check} ${x.target}: ${x.message}`);

describe('vsky doctor cluster checks', () => {
  it('a healthy cluster has no problem, and says what it checked', () => {
    const f = clusterFindings(snapshot(), T);
    expect(problems(f)).toEqual([]);
    expect(f.map((x) => x.check)).toEqual(expect.arrayContaining(['server', 'disk', 'clock']));
    expect(renderFindings(f)).toMatch(/no problem found/);
  });

  it('the lease margin is a quarter of the TTL; a head beyond it is an error naming NTP', () => {
    expect(defaultMaxClockSkewMs(8000)).toBe(2000);
    const heads = snapshot().heads.map((h) => ({ ...h, clockOffsetMs: -2500 }));
    const f = clusterFindings(snapshot({ heads }), T).filter(isProblem);
    expect(f).toHaveLength(1);
    expect(f[0]).toMatchObject({ check: 'clock', level: 'error', target: 'head hv1 (127.0.0.1:7720)' });
    expect(f[0]!.message).toMatch(/-2500 ms off the manager's \(margin 2000 ms/);
    expect(f[0]!.action).toMatch(/NTP/);
    const unknown = snapshot().heads.map((h) => ({ ...h, clockOffsetMs: 99_999, clockOffsetKnown: false }));
    expect(problems(clusterFindings(snapshot({ heads: unknown }), T))).toEqual([]);
    expect(problems(clusterFindings(snapshot({ localClockOffsetMs: 5000 }), T))).toEqual([
      'warning clock this host vs the manager (127.0.0.1:7700): this host\'s clock is +5000 ms off the manager\'s (margin 2000 ms)',
    ]);
  });

  it('a volume whose last job failed is DIRTY; one whose later job succeeded is not', () => {
    const status = { ...snapshot().status, volumeList: [{ name: 'vm1', volumeId: 7, degraded: false }] } as unknown as Snap['status'];
    const job = (jobId: string, state: string, createdMs: number) =>
      ({ jobId, state, createdMs, kind: 'wipe', volume: 'vm1', volumeId: 7, expectedGeneration: 3, error: state === 'failed' ? 'node gone' : '' }) as unknown as Snap['jobs'][number];
    const dirty = clusterFindings(snapshot({ status, jobs: [job('j1', 'succeeded', 1), job('j2', 'failed', 2)] }), T).filter(isProblem);
    expect(dirty).toHaveLength(1);
    expect(dirty[0]!.message).toMatch(/^DIRTY: its last job j2 \(wipe\) ended failed: node gone/);
    expect(dirty[0]!.action).toMatch(/vsky volume recon vm1/);
    expect(problems(clusterFindings(snapshot({ status, jobs: [job('j2', 'failed', 2), job('j3', 'succeeded', 3)] }), T))).toEqual([]);
  });

  it('failed servers, heads holding volumes, failed and full disks, degraded volumes are problems with an action', () => {
    const s = snapshot({
      servers: [{ ...snapshot().servers[0]!, state: 'failed', lastHeartbeatMs: NOW - 30_000 }],
      heads: [{ ...snapshot().heads[0]!, state: 'failed', attached: ['vm1'], lastHeartbeatMs: NOW - 12_000 }],
      disks: [{ ...snapshot().disks[0]!, usedChunks: 9 }, { ...snapshot().disks[0]!, diskId: 'd2', state: 'failed', stateReason: 'EIO' }],
      status: { ...snapshot().status, volumeList: [{ name: 'vm1', volumeId: 7, degraded: true, resyncs: 0, resyncProgress: 0 }] } as unknown as Snap['status'],
    });
    const f = clusterFindings(s, T).filter(isProblem);
    expect(problems(f)).toEqual(expect.arrayContaining([
      'error server storage server s1 (127.0.0.11:7711): the manager marked it failed: no heartbeat for 30 s',
      'error head head hv1 (127.0.0.1:7720): the manager marked it failed: no heartbeat for 12 s; it holds vm1',
      'error disk disk d2 (/x) on s1: failed: EIO',
      'warning disk disk d1 (/x) on s1: 9 of 10 chunks used (90.0%)',
      'warning disk pool: 90.0% of the chunks of the active disks allocated',
      'warning volume volume vm1 (id 7): degraded and no resync running',
    ]));
    for (const x of f) expect(x.action, x.message).not.toBe('');
    // A server down is why nothing resyncs: the action says to wait for it, not to add room.
    expect(f.find((x) => x.check === 'volume')!.action).toMatch(/^storage server\(s\) s1 down: the replicas they missed resync once they are back/);
    const roomless = clusterFindings(snapshot({ status: s.status }), T).find((x) => x.check === 'volume')!;
    expect(roomless.action).toMatch(/no room for a new replica on a distinct server/);
  });

  it('a peer the manager hears but this host cannot reach is a warning', () => {
    const f = clusterFindings(snapshot({ unreachable: new Map([['127.0.0.11:7711', 'ECONNREFUSED']]) }), T);
    expect(problems(f)).toEqual(['warning server storage server s1 (127.0.0.11:7711): the manager hears it, but this host cannot reach its control port: ECONNREFUSED']);
  });
});
