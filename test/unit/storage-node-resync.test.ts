import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Opcode, Status } from '../../shared/data-protocol/frame.js';
import { InvalidArgumentError, NotFoundError, StaleEpochError } from '../../shared/errors.js';
import { bindServer, call, grpc, loadProtos, storageNodeClient, type StorageNodeClient } from '../../shared/grpc.js';
import { setRootLogger } from '../../shared/logger.js';
import type { ChunkIdentity } from '../../proto/generated/vsky/common/ChunkIdentity.js';
import type { ReplicaLocation } from '../../proto/generated/vsky/common/ReplicaLocation.js';
import type { ResyncTask } from '../../proto/generated/vsky/common/ResyncTask.js';
import type { ResyncProgress__Output } from '../../proto/generated/vsky/manager/ResyncProgress.js';
import { startStorageNode, type StorageNodeHandle } from '../../storage-node/daemon.js';
import { Disk } from '../../storage-node/disk.js';
import { countSet, testBit } from '../../shared/region-bitmap.js';
import { RawDataClient, expectStatus } from '../harness/raw-data-client.js';

setRootLogger(pino({ level: process.env.VSKY_LOG_LEVEL ?? 'silent' }));

const MiB = 1024 * 1024;
const CHUNK = 8 * MiB;
const REGIONS = 4096;
const REGION = CHUNK / REGIONS; // 2 KiB
const DISK_SIZE = 64 * MiB;

// Requests go over a raw data-protocol client (MARK_DIRTY / CLEAR_DIRTY have
// no client method yet): test/harness/raw-data-client.ts.

// ---- a manager stand-in for ReportResyncProgress ----

class FakeManager {
  readonly reports: (ResyncProgress__Output & { at: number })[] = [];
  /** Per resync id: reply cancel=true once this returns true. */
  readonly cancelWhen = new Map<string, (p: ResyncProgress__Output) => boolean>();
  private readonly server = new grpc.Server();
  address = '';

  async start(): Promise<void> {
    this.server.addService(loadProtos().manager.vsky.manager.Manager.service, {
      ReportResyncProgress: (c: grpc.ServerUnaryCall<ResyncProgress__Output, unknown>, cb: grpc.sendUnaryData<unknown>) => {
        this.reports.push({ ...c.request, at: performance.now() });
        cb(null, { cancel: this.cancelWhen.get(c.request.resyncId)?.(c.request) ?? false });
      },
    });
    this.address = `127.0.0.1:${await bindServer(this.server, '127.0.0.1:0')}`;
  }

  of(id: string): (ResyncProgress__Output & { at: number })[] {
    return this.reports.filter((r) => r.resyncId === id);
  }

  /** The final report (finished or failed) of a resync, once it arrives. */
  async outcome(id: string, timeoutMs = 10_000): Promise<ResyncProgress__Output & { at: number }> {
    await until(`final report of ${id}`, () => this.of(id).some((r) => r.finished || r.error !== ''), timeoutMs);
    return this.of(id).find((r) => r.finished || r.error !== '')!;
  }

  stop(): void {
    this.server.forceShutdown();
  }
}

// ---- a TCP proxy that counts the bytes a source node sends back ----

class CountingProxy {
  bytesFromNode = 0;
  private readonly server: net.Server;
  private readonly sockets = new Set<net.Socket>();
  address = '';

  constructor(private readonly target: string) {
    this.server = net.createServer((client) => {
      const [host, port] = this.target.split(':');
      const upstream = net.connect(Number(port), host!);
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on('error', () => {});
        s.on('close', () => {
          this.sockets.delete(s);
          client.destroy();
          upstream.destroy();
        });
      }
      upstream.on('data', (d: Buffer) => {
        this.bytesFromNode += d.length;
      });
      client.pipe(upstream);
      upstream.pipe(client);
    });
  }

  async start(): Promise<void> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', () => r()));
    this.address = `127.0.0.1:${(this.server.address() as net.AddressInfo).port}`;
  }

  close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    return new Promise((r) => this.server.close(() => r()));
  }
}

// ---- fixtures: three in-process nodes, one disk each ----

interface TestNode {
  handle: StorageNodeHandle;
  rpc: StorageNodeClient;
  data: RawDataClient;
  diskId: string;
  diskPath: string;
  dataDir: string;
}

let root: string;
let a: TestNode; // source, slot 0
let c: TestNode; // source, slot 1
let b: TestNode; // target, slot 2
const manager = new FakeManager();
let deadAddress: string;

async function startNode(name: string, dataDir?: string, diskPath?: string): Promise<TestNode> {
  const dir = dataDir ?? join(root, name);
  const path = diskPath ?? join(root, `${name}.img`);
  const handle = await startStorageNode({
    dataDir: dir, name, host: '127.0.0.1', dataPort: 0, grpcPort: 0, disks: dataDir ? [] : [{ path, size: DISK_SIZE }],
    chunkSize: CHUNK, labels: {}, heartbeatIntervalMs: 1000,
  });
  const rpc = storageNodeClient(handle.controlAddress);
  const info = await call(rpc, 'GetInfo', {});
  return { handle, rpc, data: await RawDataClient.connect(handle.dataAddress), diskId: info.disks[0]!.diskId, diskPath: path, dataDir: dir };
}

async function stopNode(n: TestNode): Promise<void> {
  n.data.close();
  n.rpc.close();
  await n.handle.close();
}

function identity(volumeId: number, slot: number, epoch = 1): ChunkIdentity {
  return { volumeId, volumeName: `vol-${volumeId}`, volumeSize: CHUNK, segment: 0, slot, segmentCount: 1, replicas: 3, generation: 1, epoch };
}

const allocate = (n: TestNode, chunkIndex: number, volumeId: number, slot: number, epoch = 1) =>
  call(n.rpc, 'AllocateChunk', { diskId: n.diskId, chunkIndex, identity: identity(volumeId, slot, epoch) });
const regionsOf = (n: TestNode, volumeId: number, slot: number) => call(n.rpc, 'GetChunkRegions', { volumeId, segment: 0, slot });
const write = (n: TestNode, volumeId: number, slot: number, offset: number, data: Buffer, epoch = 1) =>
  n.data.send({ opcode: Opcode.WRITE, volumeId, slot, offset, epoch }, data);
const readChunkBytes = async (n: TestNode, volumeId: number, slot: number, offset = 0, length = CHUNK) => {
  const r = await n.data.send({ opcode: Opcode.READ, volumeId, slot, offset, length });
  expectStatus(r, Status.OK);
  return r.payload;
};
const intent = (n: TestNode, opcode: number, volumeId: number, slot: number, offset: number, length: number, epoch = 1) =>
  n.data.send({ opcode, volumeId, slot, offset, length, epoch });

function location(n: TestNode, slot: number, dataAddress = n.handle.dataAddress, controlAddress = n.handle.controlAddress): ReplicaLocation {
  return { slot, serverId: n.handle.serverId, dataAddress, controlAddress, diskId: n.diskId, chunkIndex: 0, state: 'in_sync' };
}

/** Volume 10 lives in chunk 0 of the target's disk, volume 20 in chunk 1. */
function task(id: string, volumeId: number, sources: ReplicaLocation[], over: Partial<ResyncTask> = {}): ResyncTask {
  const target = { ...location(b, 2), chunkIndex: volumeId === 20 ? 1 : 0 };
  return {
    resyncId: id, volumeId, volumeName: `vol-${volumeId}`, segment: 0, chunkSize: CHUNK, target, sources,
    epoch: 2, generation: 1, startRegion: 0, throttleMibps: 0, managerAddress: manager.address, ...over,
  };
}

async function until(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 15));
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The same bytes on both sources: scattered small writes plus one larger extent. Returns the expected chunk image. */
async function seedSources(volumeId: number, chunkIndex: number): Promise<Buffer> {
  await allocate(a, chunkIndex, volumeId, 0);
  await allocate(c, chunkIndex, volumeId, 1);
  const image = Buffer.alloc(CHUNK);
  const writes: { offset: number; data: Buffer }[] = [];
  for (let i = 0; i < 40; i++) writes.push({ offset: i * 97 * REGION + (i % 5) * 300, data: randomBytes(500 + (i % 7) * 900) });
  writes.push({ offset: 5 * MiB + 1000, data: randomBytes(MiB + 12345) });
  for (const w of writes) {
    w.data.copy(image, w.offset);
    expectStatus(await write(a, volumeId, 0, w.offset, w.data), Status.OK);
    expectStatus(await write(c, volumeId, 1, w.offset, w.data), Status.OK);
  }
  return image;
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'vsky-resync-'));
  await manager.start();
  [a, b, c] = await Promise.all([startNode('a'), startNode('b'), startNode('c')]);
  // An address nobody listens on: a source that is down.
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  deadAddress = `127.0.0.1:${(s.address() as net.AddressInfo).port}`;
  await new Promise<void>((r) => s.close(() => r()));
});

afterAll(async () => {
  await Promise.all([a, b, c].filter(Boolean).map(stopNode));
  manager.stop();
  await rm(root, { recursive: true, force: true });
});

describe('write-intent bitmap (MARK_DIRTY / CLEAR_DIRTY)', () => {
  it('MARK_DIRTY is on disk when it is acknowledged, epoch-checked, and CLEAR_DIRTY clears', async () => {
    await allocate(a, 6, 1, 0);
    // Regions 3..5 (the range starts inside region 3 and ends inside region 5), and region 100.
    expectStatus(await intent(a, Opcode.MARK_DIRTY, 1, 0, 3 * REGION + 10, 2 * REGION), Status.OK);
    expectStatus(await intent(a, Opcode.MARK_DIRTY, 1, 0, 100 * REGION, 1), Status.OK);
    // Read the chunk table straight from the file, as a restarted node would: the bits are there.
    const onDisk = await Disk.open(a.diskPath, { chunkSize: CHUNK });
    const rec = onDisk.chunks[6]!.rec;
    await onDisk.close();
    expect([2, 3, 4, 5, 6, 99, 100, 101].map((r) => testBit(rec.dirty, r))).toEqual([false, true, true, true, false, false, true, false]);
    expect(countSet(rec.dirty)).toBe(4);
    expect(countSet(rec.bitmap)).toBe(0); // marking is not writing: the regions still read as zeros

    // A stale epoch is refused and changes nothing; a higher one is accepted and raises the volume's epoch.
    const before = await regionsOf(a, 1, 0);
    expectStatus(await intent(a, Opcode.MARK_DIRTY, 1, 0, 3 * REGION, REGION, 5), Status.OK);
    expectStatus(await intent(a, Opcode.MARK_DIRTY, 1, 0, 50 * REGION, REGION, 4), Status.STALE_EPOCH);
    expectStatus(await intent(a, Opcode.CLEAR_DIRTY, 1, 0, 3 * REGION, REGION, 4), Status.STALE_EPOCH);
    expect((await regionsOf(a, 1, 0)).dirty.equals(before.dirty)).toBe(true);
    const listed = (await call(a.rpc, 'ListChunks', { diskId: '' })).chunks.find((ch) => ch.identity!.volumeId === 1)!;
    expect(listed.identity!.epoch).toBe(5);

    // CLEAR_DIRTY: the reply comes after the bits are cleared in memory.
    expectStatus(await intent(a, Opcode.CLEAR_DIRTY, 1, 0, 3 * REGION, 2 * REGION + 1, 5), Status.OK);
    const after = await regionsOf(a, 1, 0);
    expect([3, 4, 5, 100].map((r) => testBit(after.dirty, r))).toEqual([false, false, false, true]);

    // Zero-length: a no-op, still range-checked; out of range and unknown chunks refused.
    expectStatus(await intent(a, Opcode.MARK_DIRTY, 1, 0, 200 * REGION, 0, 5), Status.OK);
    expect((await regionsOf(a, 1, 0)).dirty.equals(after.dirty)).toBe(true);
    expectStatus(await intent(a, Opcode.MARK_DIRTY, 1, 0, CHUNK - 1, 2, 5), Status.OUT_OF_RANGE);
    expectStatus(await intent(a, Opcode.MARK_DIRTY, 1, 1, 0, 1, 5), Status.NO_CHUNK);
  });

  it('dirty bits survive a restart (and the lazy clear reached the disk); freeing a chunk clears them', async () => {
    await stopNode(a);
    a = await startNode('a', a.dataDir, a.diskPath);
    const regions = await regionsOf(a, 1, 0);
    expect(countSet(regions.dirty)).toBe(1);
    expect(testBit(regions.dirty, 100)).toBe(true);
    await call(a.rpc, 'FreeChunk', { diskId: a.diskId, chunkIndex: 6, volumeId: 1 });
    await allocate(a, 6, 2, 0);
    expect(countSet((await regionsOf(a, 2, 0)).dirty)).toBe(0);
    await call(a.rpc, 'FreeChunk', { diskId: a.diskId, chunkIndex: 6, volumeId: 2 });
  });
});

describe('GetChunkRegions', () => {
  it('returns the region size, the written and the dirty bitmaps; NotFound for no such chunk', async () => {
    await allocate(a, 5, 3, 0);
    expectStatus(await write(a, 3, 0, 10 * REGION + 5, Buffer.alloc(REGION, 1)), Status.OK); // regions 10 and 11
    expectStatus(await write(a, 3, 0, CHUNK - 1, Buffer.from([7])), Status.OK); // the last region
    expectStatus(await intent(a, Opcode.MARK_DIRTY, 3, 0, 2000 * REGION, 3 * REGION), Status.OK);
    const r = await regionsOf(a, 3, 0);
    expect(r.regionSize).toBe(REGION);
    expect(r.written.length).toBe(REGIONS / 8);
    expect(r.dirty.length).toBe(REGIONS / 8);
    const written = [...Array(REGIONS).keys()].filter((i) => testBit(r.written, i));
    const dirty = [...Array(REGIONS).keys()].filter((i) => testBit(r.dirty, i));
    expect(written).toEqual([10, 11, REGIONS - 1]);
    expect(dirty).toEqual([2000, 2001, 2002]);
    await expect(regionsOf(a, 3, 1)).rejects.toBeInstanceOf(NotFoundError);
    await expect(regionsOf(a, 999, 0)).rejects.toBeInstanceOf(NotFoundError);
    await call(a.rpc, 'FreeChunk', { diskId: a.diskId, chunkIndex: 5, volumeId: 3 });
  });
});

describe('SetDiskFault', () => {
  it('makes every I/O on the disk fail with IO_ERROR and the disk report "failed"; off restores service', async () => {
    await allocate(c, 6, 4, 1);
    const data = randomBytes(3000);
    expectStatus(await write(c, 4, 1, 0, data), Status.OK);
    await call(c.rpc, 'SetDiskFault', { diskId: c.diskId, faulty: true });
    expect((await call(c.rpc, 'GetInfo', {})).disks[0]!.state).toBe('failed');
    expectStatus(await c.data.send({ opcode: Opcode.READ, volumeId: 4, slot: 1, offset: 0, length: 3000 }), Status.IO_ERROR);
    expectStatus(await write(c, 4, 1, 0, randomBytes(3000)), Status.IO_ERROR);
    expectStatus(await intent(c, Opcode.MARK_DIRTY, 4, 1, 0, 1), Status.IO_ERROR);
    expectStatus(await c.data.send({ opcode: Opcode.FLUSH, volumeId: 4 }), Status.IO_ERROR);
    await call(c.rpc, 'SetDiskFault', { diskId: c.diskId, faulty: false });
    expect((await call(c.rpc, 'GetInfo', {})).disks[0]!.state).toBe('active');
    expect((await readChunkBytes(c, 4, 1, 0, 3000)).equals(data)).toBe(true);
    expectStatus(await write(c, 4, 1, 0, Buffer.from('ok')), Status.OK);
    await expect(call(c.rpc, 'SetDiskFault', { diskId: '00000000-0000-0000-0000-000000000000', faulty: true })).rejects.toBeInstanceOf(NotFoundError);
    await call(c.rpc, 'FreeChunk', { diskId: c.diskId, chunkIndex: 6, volumeId: 4 });
  });
});

describe('CopyChunk (peer-to-peer resync of a detached volume)', () => {
  let image: Buffer;
  let sourceWritten: Buffer;

  beforeAll(async () => {
    image = await seedSources(10, 0);
    // A crashed holder left a region dirty on a source: the copy carries it over.
    expectStatus(await intent(a, Opcode.MARK_DIRTY, 10, 0, 77 * REGION, 1), Status.OK);
    sourceWritten = (await regionsOf(a, 10, 0)).written;
    expect((await regionsOf(c, 10, 1)).written.equals(sourceWritten)).toBe(true);
  });

  it('copies only the written regions, spread over the sources, and the target ends identical', async () => {
    await allocate(b, 0, 10, 2);
    // The target is a returning stale replica: it holds old bytes in a region the sources never wrote.
    expectStatus(await write(b, 10, 2, 4000 * REGION, Buffer.alloc(REGION, 0xee)), Status.OK);
    expect(testBit(sourceWritten, 4000)).toBe(false);
    const pa = new CountingProxy(a.handle.dataAddress);
    const pc = new CountingProxy(c.handle.dataAddress);
    await Promise.all([pa.start(), pc.start()]);
    try {
      await call(b.rpc, 'CopyChunk', task('r-basic', 10, [location(a, 0, pa.address), location(c, 1, pc.address)]));
      const outcome = await manager.outcome('r-basic');
      expect(outcome).toMatchObject({ finished: true, error: '', regionsDone: REGIONS, regionsTotal: REGIONS });
      const writtenRegions = countSet(sourceWritten);
      expect(writtenRegions).toBeLessThan(REGIONS / 2);
      expect(outcome.bytesCopied).toBe(writtenRegions * REGION);
      // What crossed the wire: the written regions plus 16-byte reply headers, nothing more.
      const fromSources = pa.bytesFromNode + pc.bytesFromNode;
      expect(fromSources).toBeGreaterThanOrEqual(writtenRegions * REGION);
      expect(fromSources).toBeLessThan(writtenRegions * REGION + 64 * 1024);
      expect(pa.bytesFromNode).toBeGreaterThan(0); // reads spread over both sources
      expect(pc.bytesFromNode).toBeGreaterThan(0);
    } finally {
      await Promise.all([pa.close(), pc.close()]);
    }
    expect((await readChunkBytes(b, 10, 2)).equals(image)).toBe(true);
    const target = await regionsOf(b, 10, 2);
    expect(target.written.equals(sourceWritten)).toBe(true); // thin like the sources; the stale region was cleared
    expect(testBit(target.dirty, 77)).toBe(true);
    // The copy wrote under its own epoch: the volume's epoch here is now the task's.
    const listed = (await call(b.rpc, 'ListChunks', { diskId: '' })).chunks.find((ch) => ch.identity!.volumeId === 10)!;
    expect(listed.identity!.epoch).toBe(2);
    // Progress only moves forward.
    const done = manager.of('r-basic').map((r) => r.regionsDone);
    expect([...done].sort((x, y) => x - y)).toEqual(done);
  });

  it('resumes at start_region, and a source that is down is skipped for the next one', async () => {
    await call(b.rpc, 'FreeChunk', { diskId: b.diskId, chunkIndex: 0, volumeId: 10 });
    await allocate(b, 0, 10, 2, 2);
    const dead = location(c, 1, deadAddress, deadAddress);
    await call(b.rpc, 'CopyChunk', task('r-resume', 10, [dead, location(a, 0)], { startRegion: 2048 }));
    expect(await manager.outcome('r-resume')).toMatchObject({ finished: true, error: '' });
    const target = await regionsOf(b, 10, 2);
    for (let r = 0; r < REGIONS; r++) expect(testBit(target.written, r), `region ${r}`).toBe(r >= 2048 && testBit(sourceWritten, r));
    const expected = Buffer.from(image);
    expected.fill(0, 0, 2048 * REGION);
    expect((await readChunkBytes(b, 10, 2)).equals(expected)).toBe(true);
  });

  it('without source bitmaps (no control address) probes every region and still ends identical', async () => {
    const pa = new CountingProxy(a.handle.dataAddress);
    await pa.start();
    try {
      await call(b.rpc, 'CopyChunk', task('r-probe', 10, [location(a, 0, pa.address, '')]));
      expect(await manager.outcome('r-probe')).toMatchObject({ finished: true, error: '' });
      expect(pa.bytesFromNode).toBeGreaterThanOrEqual(CHUNK); // the slow way: everything read
    } finally {
      await pa.close();
    }
    expect((await readChunkBytes(b, 10, 2)).equals(image)).toBe(true);
  });

  it('reports an error when every source fails', async () => {
    await call(b.rpc, 'CopyChunk', task('r-nosource', 10, [location(c, 1, deadAddress, deadAddress)]));
    const outcome = await manager.outcome('r-nosource');
    expect(outcome.finished).toBe(false);
    expect(outcome.error).toMatch(/every source failed/);
  });

  it('validates the task and refuses a stale epoch or a target not on this node, changing nothing', async () => {
    await expect(call(b.rpc, 'CopyChunk', task('r-bad', 999, [location(a, 0)]))).rejects.toBeInstanceOf(NotFoundError);
    await expect(call(b.rpc, 'CopyChunk', task('r-bad', 10, [location(a, 0)], { epoch: 1 }))).rejects.toBeInstanceOf(StaleEpochError);
    await expect(call(b.rpc, 'CopyChunk', task('r-bad', 10, []))).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(call(b.rpc, 'CopyChunk', task('', 10, [location(a, 0)]))).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(call(b.rpc, 'CopyChunk', task('r-bad', 10, [location(a, 0)], { chunkSize: 2 * CHUNK }))).rejects.toBeInstanceOf(InvalidArgumentError);
    // The manager's idea of where the target lives must match this node's.
    await expect(call(b.rpc, 'CopyChunk', task('r-bad', 10, [location(a, 0)], { target: { ...location(b, 2), chunkIndex: 5 } })))
      .rejects.toBeInstanceOf(NotFoundError);
    await sleep(50);
    expect(manager.of('r-bad')).toEqual([]);
  });
});

describe('CopyChunk throttling, dedupe, cancel and fencing', () => {
  let full: Buffer;

  beforeAll(async () => {
    // A fully written chunk on source A (volume 20): 8 MiB to copy.
    await allocate(a, 1, 20, 0);
    full = randomBytes(CHUNK);
    for (let at = 0; at < CHUNK; at += MiB) expectStatus(await write(a, 20, 0, at, full.subarray(at, at + MiB)), Status.OK);
  });

  it('respects the throttle (8 MiB at 16 MiB/s takes >= ~0.4 s), reports at most every 500 ms, and dedupes by resync id', async () => {
    await allocate(b, 1, 20, 2);
    const started = performance.now();
    await call(b.rpc, 'CopyChunk', task('r-throttle', 20, [location(a, 0)], { throttleMibps: 16 }));
    await sleep(100);
    await call(b.rpc, 'CopyChunk', task('r-throttle', 20, [location(a, 0)], { throttleMibps: 16 })); // running: a no-op
    const outcome = await manager.outcome('r-throttle');
    const elapsed = (outcome.at - started) / 1000;
    expect(outcome).toMatchObject({ finished: true, error: '', bytesCopied: CHUNK });
    expect(elapsed).toBeGreaterThanOrEqual(0.4);
    expect(elapsed).toBeLessThan(3);
    const reports = manager.of('r-throttle');
    expect(reports.filter((r) => r.finished)).toHaveLength(1); // one copy, not two
    const running = reports.filter((r) => !r.finished);
    expect(running.length).toBeGreaterThanOrEqual(1);
    for (let i = 1; i < running.length; i++) expect(running[i]!.at - running[i - 1]!.at).toBeGreaterThanOrEqual(450);
    expect((await readChunkBytes(b, 20, 2)).equals(full)).toBe(true);
  });

  it('a task with a new resync id for the same chunk supersedes the running copy', async () => {
    await call(b.rpc, 'FreeChunk', { diskId: b.diskId, chunkIndex: 1, volumeId: 20 });
    await allocate(b, 1, 20, 2, 2);
    await call(b.rpc, 'CopyChunk', task('r-old', 20, [location(a, 0)], { throttleMibps: 2 }));
    await until('the old copy running', () => manager.of('r-old').length > 0);
    await call(b.rpc, 'CopyChunk', task('r-new', 20, [location(a, 0)]));
    expect(await manager.outcome('r-new')).toMatchObject({ finished: true, error: '', bytesCopied: CHUNK });
    expect((await readChunkBytes(b, 20, 2)).equals(full)).toBe(true);
    await sleep(100);
    expect(manager.of('r-old').every((r) => !r.finished && r.error === '')).toBe(true); // cancelled, silently
  });

  it('stops when the manager replies cancel', async () => {
    await call(b.rpc, 'FreeChunk', { diskId: b.diskId, chunkIndex: 1, volumeId: 20 });
    await allocate(b, 1, 20, 2, 3);
    manager.cancelWhen.set('r-cancel', (p) => p.bytesCopied > 0);
    await call(b.rpc, 'CopyChunk', task('r-cancel', 20, [location(a, 0)], { throttleMibps: 4, epoch: 3 }));
    await until('a progress report with bytes copied', () => manager.of('r-cancel').some((r) => r.bytesCopied > 0));
    await sleep(300); // runs already in flight may land
    const stopped = countSet((await regionsOf(b, 20, 2)).written);
    await sleep(700);
    expect(countSet((await regionsOf(b, 20, 2)).written)).toBe(stopped);
    expect(stopped).toBeGreaterThan(0);
    expect(stopped).toBeLessThan(REGIONS);
    expect(manager.of('r-cancel').every((r) => !r.finished && r.error === '')).toBe(true);
  });

  it('a new holder fencing the volume mid-copy stops the copy; nothing is written after the FENCE reply', async () => {
    await call(b.rpc, 'FreeChunk', { diskId: b.diskId, chunkIndex: 1, volumeId: 20 });
    await allocate(b, 1, 20, 2, 3);
    await call(b.rpc, 'CopyChunk', task('r-fenced', 20, [location(a, 0)], { throttleMibps: 4, epoch: 3 }));
    await until('a progress report with bytes copied', () => manager.of('r-fenced').some((r) => r.bytesCopied > 0));
    expectStatus(await b.data.send({ opcode: Opcode.FENCE, volumeId: 20, epoch: 4 }), Status.OK);
    const atFence = await readChunkBytes(b, 20, 2);
    const writtenAtFence = (await regionsOf(b, 20, 2)).written;
    const outcome = await manager.outcome('r-fenced');
    expect(outcome.finished).toBe(false);
    expect(outcome.error).toMatch(/epoch 3 is below volume 20's epoch 4/);
    expect(outcome.regionsDone).toBeLessThan(REGIONS);
    await sleep(300);
    expect((await regionsOf(b, 20, 2)).written.equals(writtenAtFence)).toBe(true);
    expect((await readChunkBytes(b, 20, 2)).equals(atFence)).toBe(true);
    expect(countSet(writtenAtFence)).toBeLessThan(REGIONS);
    // The new holder's epoch stands.
    expect((await call(b.rpc, 'ListChunks', { diskId: '' })).chunks.find((ch) => ch.identity!.volumeId === 20)!.identity!.epoch).toBe(4);
  });
});
