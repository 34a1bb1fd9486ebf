import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NodePool } from '../../head-agent/engine/node-pool.js';
import { Attachments, type VolumeMap } from '../../head-agent/attachments.js';
import type { LinearVolume } from '../../head-agent/engine/linear-volume.js';
import { ResyncService } from '../../head-agent/resync/resync-service.js';
import { startControlServer, type ControlServer } from '../../head-agent/control-service.js';
import { testBit } from '../../shared/region-bitmap.js';
import type { Replica } from '../../head-agent/engine/replica.js';
import { call, headAgentClient, storageNodeClient, type HeadAgentClient } from '../../shared/grpc.js';
import { ConflictError, NotFoundError, StaleEpochError } from '../../shared/errors.js';
import { MiB } from '../../shared/constants.js';
import type { ResyncProgress__Output } from '../../proto/generated/vsky/manager/ResyncProgress.js';
import type { ResyncTask } from '../../proto/generated/vsky/common/ResyncTask.js';
import { fill, rng } from '../harness/seeded-bytes.js';
import { allocateVolume, startManagerStub, startNodeTrio, type ManagerStub, type NodeTrio } from '../harness/storage-node-trio.js';

// UpdateMap and StartResync through the head's real gRPC control service,
// three REAL storage nodes, and a fake manager taking ReportResyncProgress.
// Volume: 2 segments of 8 MiB (region 2 KiB); slots 0 and 1 in sync, slot 2
// starts stale (it misses the first writes), then becomes resyncing.

const CHUNK = 8 * MiB;
const SEGMENTS = 2;
const SIZE = SEGMENTS * CHUNK;
const VOLUME_ID = 21;

let trio: NodeTrio;
let pool: NodePool;
let registry: Attachments;
let resync: ResyncService;
let control: ControlServer;
let head: HeadAgentClient;
let manager: ManagerStub & { progress: { req: ResyncProgress__Output; at: number }[] };
let map: VolumeMap;
let vol: LinearVolume;
const model = Buffer.alloc(SIZE);

/** A manager stand-in taking ReportResyncProgress: it records each report, and cancels resync ids starting with "cancel-". */
async function startFakeManager(): Promise<typeof manager> {
  const progress: { req: ResyncProgress__Output; at: number }[] = [];
  const stub = await startManagerStub({
    ReportResyncProgress: (callObj, cb) => {
      progress.push({ req: callObj.request, at: Date.now() });
      cb(null, { cancel: callObj.request.resyncId.startsWith('cancel-') });
    },
  });
  return { address: stub.address, progress, close: () => stub.close() };
}

/** Both segments on the trio, slot s on node s; slot 2 starts stale. */
function allocate(volumeId: number, name: string, chunkBase: number): Promise<VolumeMap> {
  return allocateVolume(trio, { volumeId, name, size: SIZE, chunkSize: CHUNK, chunkBase, states: { 2: 'stale' } });
}

function withStates(m: VolumeMap, states: Record<number, string>, segs = [0, 1]): VolumeMap {
  return {
    ...m,
    segments: m.segments.map((s) => ({
      ...s, replicas: s.replicas.map((r) => (segs.includes(s.index) && states[r.slot] ? { ...r, state: states[r.slot]! } : r)),
    })),
  };
}

function replica(v: LinearVolume, seg: number, slot: number): Replica {
  return v.segment(seg).replicas.find((r) => r.slot === slot)!;
}

async function readDirect(v: LinearVolume, seg: number, slot: number): Promise<Buffer> {
  const buf = Buffer.alloc(CHUNK);
  await replica(v, seg, slot).read(0, buf);
  return buf;
}

async function written(seg: number, slot: number): Promise<Uint8Array> {
  const client = storageNodeClient(trio.nodes[slot]!.controlAddress);
  try {
    const r = await call(client, 'GetChunkRegions', { volumeId: VOLUME_ID, segment: seg, slot });
    return new Uint8Array(r.written);
  } finally {
    client.close();
  }
}

function task(over: Partial<ResyncTask>): ResyncTask {
  const seg = over.segment ?? 0;
  const locs = map.segments[seg]!.replicas;
  return {
    resyncId: 'r-1', volumeId: VOLUME_ID, volumeName: 'vol-r', segment: seg, chunkSize: CHUNK,
    target: { ...locs[2]!, state: 'resyncing' }, sources: [locs[0]!, locs[1]!], epoch: vol.epoch, generation: 1,
    startRegion: 0, throttleMibps: 0, managerAddress: manager.address, ...over,
  };
}

async function until(cond: () => boolean, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 10));
  }
}

beforeAll(async () => {
  trio = await startNodeTrio('vsky-head-resync-', CHUNK);
  manager = await startFakeManager();
  pool = new NodePool({ dataTimeoutMs: 3000, backoffInitialMs: 20 });
  registry = new Attachments({ pool, intentSweepMs: 500 });
  resync = new ResyncService({ volumes: registry, clients: registry.nodeClients, progressIntervalMs: 200 });
  control = await startControlServer('127.0.0.1', 0, { attachments: registry, nbdAddress: '127.0.0.1:10809', resync });
  head = headAgentClient(control.address);
  map = await allocate(VOLUME_ID, 'vol-r', 0);
  vol = await registry.attach(map, 4);
});

afterAll(async () => {
  head.close();
  await control.close();
  await resync.close();
  await registry.close();
  await pool.close();
  manager.close();
  await trio.close();
});

describe('UpdateMap and StartResync (head side)', () => {
  it('UpdateMap applies replica states in place without disturbing I/O in flight', async () => {
    // Sparse data in both segments while slot 2 is stale: it gets none of it.
    const rand = rng(3);
    for (let i = 0; i < 160; i++) {
      const len = 2048 * (1 + Math.floor(rand() * 16));
      const off = Math.floor(rand() * ((SIZE - len) / 2048)) * 2048;
      const data = fill(len, i + 1);
      await vol.write(off, data, false);
      data.copy(model, off);
    }
    // And a dense 2 MiB at the start of segment 0 (whole copy runs, where the hammer will aim).
    const dense = fill(2 * MiB, 4242);
    await vol.write(0, dense, false);
    dense.copy(model, 0);
    expect((await readDirect(vol, 0, 2)).equals(Buffer.alloc(CHUNK))).toBe(true);
    const before = vol.segment(0).replicas;
    // 64 writes in flight while the map changes.
    const inflight = Array.from({ length: 64 }, (_, i) => {
      const off = i * 65536 + 512;
      const data = fill(1024, 1000 + i);
      data.copy(model, off);
      return vol.write(off, data, false);
    });
    await call(head, 'UpdateMap', { map: withStates(map, { 2: 'resyncing' }), epoch: 4 });
    await Promise.all(inflight);
    // Same replica objects (their connections, counters), new states.
    expect(vol.segment(0).replicas.every((r, i) => r === before[i])).toBe(true);
    expect(replica(vol, 0, 2).state).toBe('resyncing');
    expect(replica(vol, 0, 2).writable).toBe(true);
    expect(replica(vol, 0, 2).readable).toBe(false);
    // Written now, never read.
    const data = fill(4096, 77);
    await vol.write(CHUNK - 4096, data, true);
    data.copy(model, CHUNK - 4096);
    expect((await readDirect(vol, 0, 2)).subarray(CHUNK - 4096).equals(data)).toBe(true);
    for (let i = 0; i < 30; i++) await vol.read(i * 4096, 4096);
    expect(replica(vol, 0, 2).reads).toBe(0);
    // Wrong epochs and unknown volumes are refused with clear errors.
    await expect(call(head, 'UpdateMap', { map: withStates(map, { 2: 'resyncing' }), epoch: 5 })).rejects.toBeInstanceOf(ConflictError);
    await expect(call(head, 'UpdateMap', { map: withStates(map, { 2: 'resyncing' }), epoch: 3 })).rejects.toBeInstanceOf(StaleEpochError);
    await expect(call(head, 'UpdateMap', { map: { ...map, name: 'nope' }, epoch: 4 })).rejects.toBeInstanceOf(NotFoundError);
  });

  it('StartResync copies exactly the written regions while foreground writes hammer them; none is lost', async () => {
    const id = 'r-hammer';
    // The target lacks everything written before it became resyncing.
    expect((await readDirect(vol, 0, 2)).equals(model.subarray(0, CHUNK))).toBe(false);
    let stop = false;
    // Each writer, serial, writes every 2 KiB region of its own 512 KiB of the dense 2 MiB once, in a
    // random order, paced to span the copy: the copy's runs are locked while foreground writes keep
    // landing there. Without the locks the copy writes older bytes over some (each written once: no repair).
    const hammer = async (w: number): Promise<number> => {
      const rand = rng(100 + w);
      const order = Array.from({ length: 256 }, (_, i) => i);
      for (let i = order.length - 1; i > 0; i--) {
        const j = Math.floor(rand() * (i + 1));
        [order[i], order[j]] = [order[j]!, order[i]!];
      }
      let n = 0;
      for (const k of order) {
        if (stop) break;
        const off = w * 512 * 1024 + k * 2048;
        const data = fill(2048, 5000 + w * 100_000 + n++);
        await vol.write(off, data, false);
        data.copy(model, off);
        await new Promise((r) => setTimeout(r, 2));
      }
      return n;
    };
    const writers = [0, 1, 2, 3].map(hammer);
    await call(head, 'StartResync', task({ resyncId: id, throttleMibps: 4 }));
    await call(head, 'StartResync', task({ resyncId: id, throttleMibps: 4 })); // running id: a no-op
    await until(() => manager.progress.some((p) => p.req.resyncId === id && (p.req.finished || p.req.error !== '')), 20_000);
    stop = true;
    const counts = await Promise.all(writers);
    expect(counts.reduce((a, b) => a + b, 0)).toBeGreaterThan(200);
    const reports = manager.progress.filter((p) => p.req.resyncId === id);
    const final = reports.at(-1)!.req;
    expect(final.error).toBe('');
    expect(final).toMatchObject({ finished: true, regionsDone: 4096, regionsTotal: 4096 });
    expect(reports.filter((p) => p.req.finished)).toHaveLength(1); // the second StartResync started nothing
    // Progress came along the way, no more often than every progressIntervalMs (200 here).
    const partial = reports.filter((p) => !p.req.finished);
    expect(partial.length).toBeGreaterThan(0);
    expect(partial.every((p) => p.req.regionsDone > 0 && p.req.regionsDone < 4096)).toBe(true);
    // Counted over the whole run, not gap by gap: one late delivery on a loaded machine shortens the next gap.
    const span = reports.at(-2)!.at - reports[0]!.at;
    expect((reports.length - 2) * 200).toBeLessThanOrEqual(span + 200);
    // Only written regions were copied: the target's written map equals the sources'.
    const src = await written(0, 0);
    const dst = await written(0, 2);
    expect(Buffer.from(dst).equals(Buffer.from(src))).toBe(true);
    let regions = 0;
    for (let r = 0; r < 4096; r++) if (testBit(src, r)) regions++;
    expect(regions).toBeLessThan(4096);
    expect(final.bytesCopied).toBeGreaterThan(0);
    expect(final.bytesCopied).toBeLessThanOrEqual(regions * 2048);
    // Not one foreground write lost on the target: it equals the model, as do the sources.
    const target = await readDirect(vol, 0, 2);
    expect(target.equals(model.subarray(0, CHUNK))).toBe(true);
    expect((await readDirect(vol, 0, 0)).equals(model.subarray(0, CHUNK))).toBe(true);
    expect(vol.segment(0).locks).toBeUndefined();
    // The manager then says in sync: reads may go there.
    await call(head, 'UpdateMap', { map: withStates(withStates(map, { 2: 'resyncing' }), { 2: 'in_sync' }, [0]), epoch: 4 });
    expect(replica(vol, 1, 2).state).toBe('resyncing');
    expect(replica(vol, 0, 2).readable).toBe(true);
  });

  it('a resumed resync starts at start_region; a cancel in the progress reply stops it', async () => {
    // Segment 1: slot 2 has been resyncing since the first test; it lacks the early writes.
    await call(head, 'StartResync', task({ resyncId: 'r-resume', segment: 1, startRegion: 2048 }));
    await until(() => manager.progress.some((p) => p.req.resyncId === 'r-resume' && p.req.finished), 10_000);
    const dst = await written(1, 2);
    const src = await written(1, 0);
    let low = 0;
    for (let r = 0; r < 2048; r++) if (testBit(dst, r)) low++;
    expect(low).toBe(0); // nothing below the resume point was copied (no foreground writes there since)
    for (let r = 2048; r < 4096; r++) expect(testBit(dst, r)).toBe(testBit(src, r));
    const target = await readDirect(vol, 1, 2);
    expect(target.subarray(CHUNK / 2).equals(model.subarray(CHUNK + CHUNK / 2, SIZE))).toBe(true);

    // Cancel: the manager's reply to the first progress report stops the copy.
    await call(head, 'StartResync', task({ resyncId: 'cancel-1', segment: 1, throttleMibps: 1 }));
    expect(resync.status('cancel-1')).toBeDefined();
    await until(() => resync.status('cancel-1') === undefined, 5000);
    const mine = manager.progress.filter((p) => p.req.resyncId === 'cancel-1');
    expect(mine.length).toBeGreaterThan(0);
    expect(mine.some((p) => p.req.finished || p.req.error !== '')).toBe(false);
    expect(vol.segment(1).locks).toBeUndefined();
  });

  it('StartResync is refused clearly when the target is not resyncing or the volume is not here', async () => {
    await expect(call(head, 'StartResync', task({ resyncId: 'r-bad', segment: 0 }))).rejects.toBeInstanceOf(ConflictError); // slot 2 is in sync now
    await expect(call(head, 'StartResync', task({ resyncId: 'r-bad2', volumeName: 'nope' }))).rejects.toBeInstanceOf(NotFoundError);
    await expect(call(head, 'StartResync', task({ resyncId: '' }))).rejects.toThrow(/resync id is required/);
  });

  it('a map never makes a replica this head holds stale readable; removed replicas are dropped; detach stops a resync', async () => {
    const m2 = await allocate(VOLUME_ID + 1, 'vol-s', 4);
    const v2 = await registry.attach(withStates(m2, { 2: 'in_sync' }), 1);
    await call(head, 'UpdateMap', { map: withStates(m2, { 1: 'stale', 2: 'in_sync' }), epoch: 1 });
    expect(replica(v2, 0, 1).state).toBe('stale');
    expect(replica(v2, 0, 1).writable).toBe(false);
    // An older map (slot 1 in sync) arrives late: slot 1 is written again but never read.
    await call(head, 'UpdateMap', { map: withStates(m2, { 1: 'in_sync', 2: 'in_sync' }), epoch: 1 });
    expect(replica(v2, 0, 1).state).toBe('resyncing');
    expect(replica(v2, 0, 1).readable).toBe(false);
    expect(replica(v2, 0, 1).writable).toBe(true);
    // Slot 0 removed from segment 0.
    const dropped = { ...m2, segments: m2.segments.map((s) => (s.index === 0 ? { ...s, replicas: s.replicas.filter((r) => r.slot !== 0) } : s)) };
    await call(head, 'UpdateMap', { map: withStates(dropped, { 1: 'resyncing', 2: 'in_sync' }, [0]), epoch: 1 });
    expect(v2.segment(0).replicas.map((r) => r.slot)).toEqual([1, 2]);
    await v2.write(0, fill(4096, 1), false);
    expect((await v2.read(0, 4096)).equals(fill(4096, 1))).toBe(true);
    // A resync on segment 1 stops (and says why) when the volume is detached.
    await call(head, 'UpdateMap', { map: withStates(m2, { 2: 'resyncing' }, [1]), epoch: 1 });
    await v2.write(CHUNK, fill(CHUNK / 2, 2), false);
    const locs = m2.segments[1]!.replicas;
    await call(head, 'StartResync', {
      ...task({ resyncId: 'r-detach', segment: 1, throttleMibps: 1 }), volumeId: VOLUME_ID + 1, volumeName: 'vol-s',
      target: { ...locs[2]!, state: 'resyncing' }, sources: [locs[0]!, locs[1]!],
    });
    await registry.detach('vol-s');
    await until(() => manager.progress.some((p) => p.req.resyncId === 'r-detach' && p.req.error !== ''), 5000);
    expect(manager.progress.find((p) => p.req.resyncId === 'r-detach' && p.req.error !== '')!.req.error).toMatch(/detached/);
  });
});
