import * as net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NodePool } from '../../head-agent/engine/node-pool.js';
import { Attachments, type VolumeMap } from '../../head-agent/attachments.js';
import type { LinearVolume } from '../../head-agent/engine/linear-volume.js';
import { Mirror } from '../../head-agent/engine/mirror.js';
import { Replica } from '../../head-agent/engine/replica.js';
import { ReportingFailureHandler } from '../../head-agent/engine/replica-failures.js';
import { grpc, managerClient, toGrpcError, type ManagerClient } from '../../shared/grpc.js';
import { IoError, StaleEpochError, TransportError } from '../../shared/errors.js';
import { ReadOnlyChunkError } from '../../shared/data-protocol/status.js';
import { MiB } from '../../shared/constants.js';
import type { ReplicaFailureReport__Output } from '../../proto/generated/vsky/manager/ReplicaFailureReport.js';
import { fill } from '../harness/seeded-bytes.js';
import { allocateVolume, startManagerStub, startNodeTrio, type ManagerStub, type NodeTrio } from '../harness/storage-node-trio.js';

// Degraded writes (docs/design.md rule 2) against three REAL storage nodes, the third
// one behind a TCP proxy the test can cut, and a fake manager (a gRPC server
// implementing ReportReplicaFailure) whose answers the test controls.

const CHUNK = 4 * MiB;
const HEAD_ID = '11111111-2222-3333-4444-555555555555';

let trio: NodeTrio;
let proxy: CutProxy;
let manager: FakeManager;
const pools: NodePool[] = [];
const registries: Attachments[] = [];
const clients: ManagerClient[] = [];

/**
 * A TCP proxy in front of a storage node that can be cut (connections reset and refused),
 * frozen (connections stay open, nothing goes through either way: a SIGSTOPped node) and restored.
 */
class CutProxy {
  private readonly sockets = new Set<net.Socket>();
  cut = false;
  frozen = false;
  /** Bytes forwarded from the head since the last restore(). */
  forwarded = 0;
  constructor(private readonly server: net.Server, readonly address: string) {}

  static async start(target: string): Promise<CutProxy> {
    const [host, port] = target.split(':');
    let self: CutProxy | undefined;
    const server = net.createServer((client) => {
      if (self!.cut) {
        client.destroy();
        return;
      }
      const upstream = net.connect(Number(port), host!);
      self!.sockets.add(client).add(upstream);
      client.on('data', (d: Buffer) => {
        if (self!.frozen) return;
        self!.forwarded += d.length;
        upstream.write(d);
      });
      upstream.on('data', (d: Buffer) => {
        if (!self!.frozen) client.write(d);
      });
      const drop = (): void => {
        client.destroy();
        upstream.destroy();
        self!.sockets.delete(client);
        self!.sockets.delete(upstream);
      };
      client.on('error', drop).on('close', drop);
      upstream.on('error', drop).on('close', drop);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    self = new CutProxy(server, `127.0.0.1:${(server.address() as net.AddressInfo).port}`);
    return self;
  }

  sever(): void {
    this.cut = true;
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
  }

  /** Nothing goes through any more, connections stay open (the streams are cut mid-frame: restore() resets them). */
  freeze(): void {
    this.frozen = true;
  }

  restore(): void {
    if (this.frozen) {
      for (const s of this.sockets) s.destroy();
      this.sockets.clear();
    }
    this.frozen = false;
    this.cut = false;
    this.forwarded = 0;
  }

  close(): Promise<void> {
    this.sever();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

type ManagerMode = 'ok' | 'down' | 'stale';

/** The manager side the head talks to, recording every report and when it was answered. */
class FakeManager {
  mode: ManagerMode = 'ok';
  delayMs = 0;
  readonly reports: { req: ReplicaFailureReport__Output; at: number; answeredAt: number }[] = [];
  private stub: ManagerStub | undefined;

  get address(): string {
    return this.stub!.address;
  }

  static async start(): Promise<FakeManager> {
    const m = new FakeManager();
    m.stub = await startManagerStub({
      ReportReplicaFailure: (callObj, cb) => {
        const at = Date.now();
        if (m.mode === 'down') {
          cb({ code: grpc.status.UNAVAILABLE, details: 'manager is down (test)' });
          return;
        }
        if (m.mode === 'stale') {
          cb(toGrpcError(new StaleEpochError('lease epoch is stale (test)')));
          return;
        }
        setTimeout(() => {
          m.reports.push({ req: callObj.request, at, answeredAt: Date.now() });
          cb(null, {});
        }, m.delayMs);
      },
    });
    return m;
  }

  close(): void {
    this.stub?.close();
  }
}

/** A one-chunk volume in chunk `volumeId` of each node, slot s on node s; slot 2 is reached through the proxy. */
function allocate(volumeId: number, name: string): Promise<VolumeMap> {
  return allocateVolume(trio, { volumeId, name, size: CHUNK, chunkSize: CHUNK, chunkBase: volumeId, dataAddresses: { 2: proxy.address } });
}

/** A registry whose failure handler reports to the fake manager. */
function newRegistry(staleReportTimeoutMs = 10_000): { registry: Attachments; handler: ReportingFailureHandler } {
  const pool = new NodePool({ dataTimeoutMs: 1000, backoffInitialMs: 20, backoffMaxMs: 100 });
  pools.push(pool);
  const client = managerClient(manager.address);
  clients.push(client);
  const handler = new ReportingFailureHandler({
    headId: HEAD_ID, manager: () => client, staleReportTimeoutMs, retryInitialMs: 20, retryMaxMs: 100, callTimeoutMs: 500,
  });
  const registry = new Attachments({ pool, failureHandler: handler, intentSweepMs: 3_600_000 });
  registries.push(registry);
  return { registry, handler };
}

beforeAll(async () => {
  trio = await startNodeTrio('vsky-head-failures-', CHUNK);
  proxy = await CutProxy.start(trio.nodes[2]!.dataAddress);
  manager = await FakeManager.start();
});

afterAll(async () => {
  for (const r of registries) r.abandon();
  for (const c of clients) c.close();
  await Promise.all(pools.map((p) => p.close()));
  manager.close();
  await proxy.close();
  await trio.close();
});

function slot(vol: LinearVolume, s: number): Replica {
  return vol.segment(0).replicas.find((r) => r.slot === s)!;
}

describe('replica failures (head side)', () => {
  it('a replica failing mid-writes: writes succeed once the manager recorded it stale, never before; it is never read again', async () => {
    manager.mode = 'ok';
    manager.delayMs = 150;
    proxy.restore();
    const { registry, handler } = newRegistry();
    const vol = await registry.attach(await allocate(1, 'vol-f'), 3);
    const model = Buffer.alloc(CHUNK);
    const acks: { n: number; off: number; len: number; afterCut: boolean; ack: number }[] = [];
    let seq = 0;
    let cut = false;
    const writer = async (w: number): Promise<void> => {
      for (let i = 0; i < 40; i++) {
        const n = ++seq;
        if (n === 60) {
          cut = true;
          proxy.sever();
        }
        const len = 4096 * (1 + (n % 8));
        const area = CHUNK / 4;
        const off = w * area + ((n * 7919) % ((area - len) / 4096)) * 4096;
        const data = fill(len, n);
        const afterCut = cut;
        await vol.write(off, data, n % 5 === 0);
        acks.push({ n, off, len, afterCut, ack: Date.now() });
        data.copy(model, off);
      }
    };
    // Four writers, each serial within its own quarter of the chunk (so the model is defined).
    await Promise.all([0, 1, 2, 3].map(writer));
    expect(manager.reports).toHaveLength(1); // one report for the replica, however many writes missed it
    const rep = manager.reports[0]!;
    expect(rep.req).toMatchObject({ headId: HEAD_ID, volume: 'vol-f', segment: 0, slot: 2, epoch: 3 });
    expect(rep.req.reason).toMatch(/127\.0\.0\.1|closed|reset|unreachable/);
    // Rule 2: a write sent after the failure (it cannot reach the replica) is acknowledged
    // only after the manager answered...
    const afterCut = acks.filter((a) => a.afterCut);
    expect(afterCut.length).toBeGreaterThan(50);
    for (const a of afterCut) expect(a.ack).toBeGreaterThanOrEqual(rep.answeredAt);
    // ...and every write acknowledged before that answer is on the failed replica too
    // (byte by byte, where no later write overwrote it).
    proxy.restore();
    const lastWriter = new Int32Array(CHUNK).fill(-1);
    acks.forEach((a, i) => lastWriter.fill(i, a.off, a.off + a.len));
    const onStale = Buffer.alloc(CHUNK);
    const direct = new Replica(slot(vol, 2).conn, { volumeId: 1, volumeName: 'vol-f', segment: 0, slot: 2, state: 'in_sync', serverId: '', diskId: '' });
    await direct.read(0, onStale);
    let checked = 0;
    acks.forEach((a, i) => {
      if (a.ack >= rep.answeredAt) return;
      const data = fill(a.len, a.n);
      for (let b = 0; b < a.len; b++) {
        if (lastWriter[a.off + b] !== i) continue;
        if (onStale[a.off + b] !== data[b]) throw new Error(`write ${a.n} acknowledged before the stale record is missing on the failed replica`);
        checked++;
      }
    });
    expect(checked).toBeGreaterThan(0);
    expect(slot(vol, 2).state).toBe('stale');
    expect(handler.confirmed).toBe(1);
    // The node is back: the stale replica still gets neither reads nor writes.
    proxy.forwarded = 0;
    const readsBefore = slot(vol, 2).reads;
    for (let i = 0; i < 30; i++) {
      const off = i * 100_000;
      expect((await vol.read(off, 65536)).equals(model.subarray(off, off + 65536))).toBe(true);
      await vol.write(off, model.subarray(off, off + 4096), false);
    }
    expect(slot(vol, 2).reads).toBe(readsBefore);
    expect(proxy.forwarded).toBe(0);
    // The in-sync replicas hold every acknowledged write (reading each directly).
    for (const s of [0, 1]) {
      const buf = Buffer.alloc(CHUNK);
      await slot(vol, s).read(0, buf);
      expect(buf.equals(model), `slot ${s}`).toBe(true);
    }
    expect(manager.reports).toHaveLength(1);
  });

  it('a hung node (connection open, nothing answered): its writes time out after about the data timeout and are acknowledged only once it is recorded stale', async () => {
    manager.mode = 'ok';
    manager.delayMs = 100;
    proxy.restore();
    const { registry, handler } = newRegistry(); // data timeout 1000 ms
    const vol = await registry.attach(await allocate(11, 'vol-p'), 1);
    for (let i = 0; i < 8; i++) await vol.write(i * 65536, fill(65536, i), false);
    const before = manager.reports.length;
    proxy.freeze();
    const frozeAt = Date.now();
    const acks: { off: number; n: number; at: number }[] = [];
    let n = 100;
    const writer = async (w: number): Promise<void> => {
      for (let i = 0; i < 10; i++) {
        const off = (w * 16 + i) * 4096;
        const k = ++n;
        await vol.write(off, fill(4096, k), i % 3 === 0);
        acks.push({ off, n: k, at: Date.now() });
      }
    };
    await Promise.all([0, 1, 2, 3].map(writer));
    expect(manager.reports.length).toBe(before + 1);
    const rep = manager.reports.at(-1)!;
    expect(rep.req).toMatchObject({ volume: 'vol-p', segment: 0, slot: 2, epoch: 1 });
    expect(rep.req.reason).toMatch(/sent nothing .* taken as hung/);
    // The stall: about the data timeout (plus the report), nowhere near the flush timeout.
    const firstAck = Math.min(...acks.map((a) => a.at));
    expect(rep.at - frozeAt).toBeGreaterThanOrEqual(950);
    expect(firstAck - frozeAt).toBeLessThan(2500);
    // Rule 2: no write sent after the freeze was acknowledged before the stale record.
    for (const a of acks) expect(a.at).toBeGreaterThanOrEqual(rep.answeredAt);
    expect(slot(vol, 2).state).toBe('stale');
    expect(handler.pending).toBe(0);
    for (const a of acks) expect((await vol.read(a.off, 4096)).equals(fill(4096, a.n))).toBe(true);
    proxy.restore();
  });

  it('manager unreachable: writes fail after the bound (never acknowledged) while reads go on; they succeed once it answers', async () => {
    manager.mode = 'down';
    manager.delayMs = 0;
    proxy.restore();
    const { registry } = newRegistry(600);
    const vol = await registry.attach(await allocate(2, 'vol-g'), 1);
    const data = fill(8192, 5);
    await vol.write(0, data, false);
    proxy.sever();
    const t0 = Date.now();
    const failing = vol.write(65536, fill(4096, 6), false).then(() => 'acknowledged', (err: unknown) => err);
    // Reads go on from the in-sync replicas meanwhile (several, so every replica's turn comes).
    for (let i = 0; i < 6; i++) expect((await vol.read(0, 8192)).equals(data)).toBe(true);
    const err = await failing;
    const waited = Date.now() - t0;
    expect(err).toBeInstanceOf(IoError);
    expect(String(err)).toMatch(/could not record .* stale .*not acknowledged/);
    expect(waited).toBeGreaterThanOrEqual(550);
    expect(waited).toBeLessThan(3000);
    expect(slot(vol, 2).state).toBe('in_sync'); // not recorded: unused (suspect), not stale
    expect(slot(vol, 2).suspect).toBe(true);
    expect(slot(vol, 2).readable).toBe(false);
    // A second write needs the same record and fails the same way.
    await expect(vol.write(0, data, false)).rejects.toThrow(/could not record/);
    // The manager is back: the next write reports again and is acknowledged once recorded.
    manager.mode = 'ok';
    const before = manager.reports.length;
    await vol.write(4096, data, true);
    // (A call the head gave up on at its deadline may still reach the manager: then it counts twice.)
    expect(manager.reports.length).toBeGreaterThanOrEqual(before + 1);
    expect(manager.reports.at(-1)!.req).toMatchObject({ volume: 'vol-g', slot: 2, epoch: 1 });
    expect(slot(vol, 2).state).toBe('stale');
  });

  it('a map from the manager marking the failed replica stale releases the writes waiting for the report', async () => {
    manager.mode = 'down';
    proxy.restore();
    const { registry } = newRegistry(5000);
    const map = await allocate(10, 'vol-o');
    const vol = await registry.attach(map, 1);
    await vol.write(0, fill(4096, 1), false);
    proxy.sever();
    const t0 = Date.now();
    const waiting = vol.write(0, fill(4096, 2), false);
    await new Promise((r) => setTimeout(r, 150));
    expect(slot(vol, 2).suspect).toBe(true);
    const stale = { ...map, segments: map.segments.map((sg) => ({ ...sg, replicas: sg.replicas.map((r) => (r.slot === 2 ? { ...r, state: 'stale' } : r)) })) };
    await registry.updateMap(stale, 1);
    await waiting;
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(slot(vol, 2).state).toBe('stale');
    expect((await vol.read(0, 4096)).equals(fill(4096, 2))).toBe(true);
  });

  it('a manager refusing the report (our lease is gone) fails the write with StaleEpochError', async () => {
    manager.mode = 'stale';
    proxy.restore();
    const { registry } = newRegistry(2000);
    const vol = await registry.attach(await allocate(3, 'vol-h'), 1);
    await vol.write(0, fill(4096, 1), false);
    proxy.sever();
    const t0 = Date.now();
    await expect(vol.write(0, fill(4096, 2), false)).rejects.toBeInstanceOf(StaleEpochError);
    expect(Date.now() - t0).toBeLessThan(1500); // at once, not after the bound
  });

  it('a node that cannot be fenced at attach is taken as failed: the attach goes on, writes wait for the stale record', async () => {
    manager.mode = 'ok';
    manager.delayMs = 100;
    proxy.sever();
    const { registry } = newRegistry();
    const before = manager.reports.length;
    const vol = await registry.attach(await allocate(7, 'vol-l'), 2);
    expect(slot(vol, 2).suspect).toBe(true);
    const t0 = Date.now();
    await vol.write(0, fill(4096, 1), false);
    const rep = manager.reports.find((r, i) => i >= before && r.req.volume === 'vol-l');
    expect(rep?.req).toMatchObject({ slot: 2, epoch: 2, headId: HEAD_ID });
    expect(Date.now()).toBeGreaterThanOrEqual(rep!.answeredAt);
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(slot(vol, 2).state).toBe('stale');
    expect((await vol.read(0, 4096)).equals(fill(4096, 1))).toBe(true);
  });

  it('a node that fails a flush is handled like a failed write: the flush succeeds once its replicas are recorded stale', async () => {
    manager.mode = 'ok';
    manager.delayMs = 100;
    proxy.restore();
    const { registry } = newRegistry();
    const vol = await registry.attach(await allocate(8, 'vol-m'), 1);
    await vol.write(0, fill(65536, 1), false);
    proxy.sever();
    const before = manager.reports.length;
    await vol.flush();
    expect(manager.reports.length).toBe(before + 1);
    expect(manager.reports.at(-1)!.req).toMatchObject({ volume: 'vol-m', slot: 2 });
    expect(slot(vol, 2).state).toBe('stale');
    // With the manager down the flush fails (after the bound): nothing unsafe is acknowledged.
    manager.mode = 'down';
    const { registry: r2 } = newRegistry(300);
    proxy.restore();
    const v2 = await r2.attach(await allocate(9, 'vol-n'), 1);
    await v2.write(0, fill(4096, 2), false);
    proxy.sever();
    await expect(v2.flush()).rejects.toThrow(/flush of volume vol-n failed on 1 node/);
  });

  it('a write that fails on every replica fails, and nothing is reported', async () => {
    manager.mode = 'ok';
    proxy.restore();
    const { registry, handler } = newRegistry();
    const vol = await registry.attach(await allocate(4, 'vol-i'), 1);
    const real = vol.segment(0).replicas;
    // The same nodes, addressed at a segment they hold no chunk for: every request fails (NO_CHUNK -> IoError).
    const bad = real.map((r) => new Replica(r.conn, { volumeId: 4, volumeName: 'vol-i', segment: 9, slot: r.slot, state: 'in_sync', serverId: '', diskId: '' }));
    const mirror = new Mirror('vol-i', 0, bad, handler);
    mirror.lease = { epoch: 1 };
    const before = manager.reports.length;
    await expect(mirror.write(0, fill(4096, 3), false)).rejects.toThrow(/failed on 3 replica\(s\)/);
    expect(manager.reports.length).toBe(before);
    expect(bad.every((r) => !r.suspect && r.state === 'in_sync')).toBe(true);
  });

  it('a snapshot\'s chunks refuse writes (READ_ONLY): the write fails with ReadOnlyChunkError, nothing is reported, reads go on', async () => {
    manager.mode = 'ok';
    proxy.restore();
    const { registry, handler } = newRegistry();
    const map = await allocateVolume(trio, { volumeId: 12, name: 'vol-ro', size: CHUNK, chunkSize: CHUNK, chunkBase: 12, dataAddresses: { 2: proxy.address }, readOnly: true });
    const vol = await registry.attach(map, 1);
    const before = manager.reports.length;
    // Through the volume (write-intent MARK first: refused) and through a bare mirror (the WRITE itself: refused).
    await expect(vol.write(0, fill(4096, 4), false)).rejects.toBeInstanceOf(ReadOnlyChunkError);
    const mirror = new Mirror('vol-ro', 0, vol.segment(0).replicas, handler);
    mirror.lease = { epoch: 1 };
    await expect(mirror.write(8192, fill(4096, 5), false)).rejects.toBeInstanceOf(ReadOnlyChunkError);
    expect(manager.reports.length).toBe(before);
    expect(vol.segment(0).replicas.every((r) => !r.suspect && r.state === 'in_sync')).toBe(true);
    expect((await vol.read(0, 4096)).every((b) => b === 0)).toBe(true); // never written: zeros, and readable
  });

  it('a read that fails on a replica and succeeds on another reports it; standalone (no manager) writes fail as before', async () => {
    manager.mode = 'ok';
    manager.delayMs = 0;
    proxy.restore();
    const { registry } = newRegistry();
    const vol = await registry.attach(await allocate(5, 'vol-j'), 1);
    await vol.write(0, fill(65536, 9), false);
    proxy.sever();
    const before = manager.reports.length;
    for (let i = 0; i < 6; i++) await vol.read(0, 65536);
    for (let i = 0; i < 100 && slot(vol, 2).state !== 'stale'; i++) await new Promise((r) => setTimeout(r, 20));
    // Reported (a second report of the same replica can come from the write-intent sweep under load; the manager takes it idempotently).
    // Volumes of earlier tests still attached behind the same proxy may report their own replica meanwhile: only vol-j's count here.
    const reports = manager.reports.slice(before).filter((r) => r.req.volume === 'vol-j');
    expect(reports.length).toBeGreaterThanOrEqual(1);
    for (const r of reports) expect(r.req).toMatchObject({ volume: 'vol-j', slot: 2 });
    expect(slot(vol, 2).state).toBe('stale');

    // No manager client: the pre-existing behaviour (the write fails naming the replica).
    proxy.restore();
    const pool = new NodePool({ dataTimeoutMs: 1000, backoffInitialMs: 20 });
    pools.push(pool);
    const standalone = new Attachments({
      pool, failureHandler: new ReportingFailureHandler({ headId: HEAD_ID, manager: () => undefined }), intentSweepMs: 3_600_000,
    });
    registries.push(standalone);
    const vol2 = await standalone.attach(await allocate(6, 'vol-k'), 1);
    await vol2.write(0, fill(4096, 1), false);
    proxy.sever();
    const err = await vol2.write(0, fill(4096, 2), false).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(IoError);
    expect(String(err)).toMatch(/failed on 1 replica\(s\): replica 2/);
    expect((err as IoError).cause).toBeInstanceOf(TransportError);
  });
});
