import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

// Hot-spare mode (`vsky manager --spare-disk ID`, ManagerOptions.spareDisks):
// replacements for failed replicas go only to the listed disks (one copy at a
// time onto a single spare, as a RAID-1 hot spare); new volumes are placed
// as usual. Against in-memory nodes and a real LevelDB.

process.env.VSKY_LOG_LEVEL ??= 'silent';
const { ManagerCore } = await import('../../manager/core.js');
const { FakePeers } = await import('../harness/manager-fake-peers.js');
const { volumeMapView } = await import('../../manager/views.js');
const { PlacementModel } = await import('../../manager/placement.js');

type Core = Awaited<ReturnType<typeof ManagerCore.open>>;
type Peers = InstanceType<typeof FakePeers>;

const CHUNK = 1 << 20;
const MGR = '10.9.0.100:7700';
let dir: string;
let now = 1_000_000;
let core: Core | undefined;

beforeEach(() => { dir = mkdtempSync(join(tmpdir(), 'vsky-mgr-spare-')); now = 1_000_000; });
afterEach(async () => {
  await core?.close();
  core = undefined;
  rmSync(dir, { recursive: true, force: true });
});

/** 6 servers x 2 disks (sNa, sNb), each its own rack. */
function makePeers(): Peers {
  const peers = new FakePeers();
  for (let i = 0; i < 6; i++) {
    const n = peers.addNode(`s${i}`, { labels: { rack: `r${i}` } });
    n.addDisk(`s${i}a`, 40, CHUNK);
    n.addDisk(`s${i}b`, 40, CHUNK);
  }
  peers.addHead('10.9.0.1:7720');
  return peers;
}

async function open(peers: Peers, spareDisks?: string[]): Promise<Core> {
  await core?.close();
  core = await ManagerCore.open({ dataDir: dir, chunkSize: CHUNK, heartbeatTimeoutMs: 5_000, now: () => now, spareDisks }, peers);
  core.start(MGR);
  for (const n of peers.nodes.values()) await core.registry.registerServer(n.nodeInfo());
  return core;
}

const replicas = (c: Core) => c.volumes.list().flatMap((v) => {
  const { volume, map } = c.volumes.entry(v.name);
  return volumeMapView(volume, map, c.registry).segments!.flatMap((s) => s.replicas!.map((r) => ({ volume: v.name, segment: s.index!, ...r })));
});
const sibling = (disk: string) => disk.slice(0, -1) + (disk.endsWith('a') ? 'b' : 'a');

describe('hot-spare mode (--spare-disk)', () => {
  it('rebuilds every replica of a failed disk onto the one spare disk, one copy at a time; new volumes are placed as usual', async () => {
    const peers = makePeers();
    // Volumes first (normal manager), then the manager restarts in hot-spare mode naming the failed disk's sibling.
    let c = await open(peers);
    for (let i = 0; i < 6; i++) await c.volumes.create({ name: `vm${i}`, size: 4 * CHUNK, replicas: 3, spreadLabel: '' });
    const perDisk = new Map<string, number>();
    for (const r of replicas(c)) perDisk.set(r.diskId!, (perDisk.get(r.diskId!) ?? 0) + 1);
    const victim = [...perDisk].sort((a, b) => b[1] - a[1])[0]![0];
    const lost = perDisk.get(victim)!;
    expect(lost).toBeGreaterThanOrEqual(4);
    const spare = sibling(victim);
    c = await open(peers, [spare]);
    expect(c.resyncs.planner.onlyDisks).toEqual(new Set([spare]));

    // New volumes still go anywhere (not only to the spare).
    await c.volumes.create({ name: 'fresh', size: 4 * CHUNK, replicas: 3, spreadLabel: '' });
    const freshDisks = new Set(replicas(c).filter((r) => r.volume === 'fresh').map((r) => r.diskId));
    expect(freshDisks.size).toBeGreaterThan(1);

    await c.failures.failDisk(victim, 'bench');
    await c.settle();
    const moved = replicas(c).filter((r) => r.state !== 'in_sync');
    expect(moved).toHaveLength(lost);
    for (const r of moved) expect(r.diskId).toBe(spare);

    // One resync at a time onto the spare (one per disk); each finished one lets the next start.
    for (let k = 1; k <= lost; k++) {
      const copies = peers.copies();
      expect(copies).toHaveLength(k);
      const t = copies[k - 1]!;
      expect(t.target!.diskId).toBe(spare);
      expect(c.resyncs.book.all().filter((r) => r.state === 'running')).toHaveLength(1);
      now += 1000;
      await c.resyncs.progress({ resyncId: t.resyncId!, regionsDone: 4096, regionsTotal: 4096, bytesCopied: CHUNK, finished: true, error: '' });
      await c.settle();
    }
    expect(peers.copies()).toHaveLength(lost);
    expect(replicas(c).every((r) => r.state === 'in_sync')).toBe(true);
    expect(c.resyncs.book.size).toBe(0);
  });

  it('default mode spreads the same rebuild over many disks at once', async () => {
    const peers = makePeers();
    const c = await open(peers);
    for (let i = 0; i < 6; i++) await c.volumes.create({ name: `vm${i}`, size: 4 * CHUNK, replicas: 3, spreadLabel: '' });
    const perDisk = new Map<string, number>();
    for (const r of replicas(c)) perDisk.set(r.diskId!, (perDisk.get(r.diskId!) ?? 0) + 1);
    const victim = [...perDisk].sort((a, b) => b[1] - a[1])[0]![0];
    await c.failures.failDisk(victim, 'bench');
    await c.settle();
    const targets = new Set(peers.copies().map((t) => t.target!.diskId));
    expect(peers.copies().length).toBeGreaterThanOrEqual(3);
    expect(targets.size).toBe(peers.copies().length);
  });

  it('a spare disk on a server holding another replica of the segment is not used: the replica waits stale', async () => {
    const peers = makePeers();
    let c = await open(peers);
    await c.volumes.create({ name: 'vm', size: CHUNK, replicas: 3, spreadLabel: '' });
    const [a, b] = replicas(c);
    // The spare sits next to another replica of the same segment.
    c = await open(peers, [sibling(b!.diskId!)]);
    await c.failures.failDisk(a!.diskId!, 'bench');
    await c.settle();
    expect(peers.copies()).toHaveLength(0);
    const slot = replicas(c).find((r) => r.slot === a!.slot)!;
    expect(slot.diskId).toBe(a!.diskId);
    expect(slot.state).toBe('stale');
  });

  it('placeSpares with onlyDisks picks among those disks only, same rules', () => {
    const m = new PlacementModel();
    for (let s = 0; s < 3; s++) {
      m.setServer(`s${s}`, {}, true);
      m.setDisk(`s${s}a`, `s${s}`, 10, true);
      m.setDisk(`s${s}b`, `s${s}`, 10, true);
    }
    const only = new Set(['s2b']);
    const picks = m.placeSpares([
      { volumeId: 1, excludeServers: new Set(['s0']) },
      { volumeId: 2, excludeServers: new Set(['s2']) },
    ], new Map(), only);
    expect(picks[0]).toMatchObject({ diskId: 's2b', serverId: 's2' });
    expect(picks[1]).toBeUndefined();
  });
});
