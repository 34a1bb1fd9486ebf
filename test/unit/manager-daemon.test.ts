import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

// The manager daemon over real gRPC, talking to a storage node and a head
// agent that are gRPC servers backed by the in-memory fakes.

process.env.VSKY_LOG_LEVEL ??= 'silent';
const { startManager } = await import('../../manager/daemon.js');
const { FakeNode, FakePeers } = await import('../harness/manager-fake-peers.js');
const { bindServer, call, grpc, loadProtos, managerClient, unary } = await import('../../shared/grpc.js');
const errors = await import('../../shared/errors.js');

const CHUNK = 1 << 20;
const dir = mkdtempSync(join(tmpdir(), 'vsky-mgr-daemon-'));
const fakes = new FakePeers();
const servers: InstanceType<typeof grpc.Server>[] = [];
let nodeAddress = '';
let headAddress = '';

async function serve(add: (s: InstanceType<typeof grpc.Server>) => void): Promise<string> {
  const s = new grpc.Server();
  add(s);
  const port = await bindServer(s, '127.0.0.1:0');
  servers.push(s);
  return `127.0.0.1:${port}`;
}

/** A gRPC storage node backed by the fake at the address it gets. */
async function serveNode(): Promise<string> {
  const node = fakes.node;
  let address = '';
  address = await serve((s) => s.addService(loadProtos().storage.vsky.storage.StorageNode.service, {
    GetInfo: unary(() => node.getInfo(address)),
    AddDisk: unary((req) => node.addDisk(address, req)),
    RemoveDisk: unary(async (req) => { await node.removeDisk(address, req); return {}; }),
    AllocateChunk: unary(async (req) => { await node.allocateChunk(address, req); return {}; }),
    FreeChunk: unary(async (req) => { await node.freeChunk(address, req); return {}; }),
    ListChunks: unary((req) => node.listChunks(address, req)),
    GetChunkRegions: unary((req) => node.getChunkRegions(address, req)),
    CopyChunk: unary(async (req) => { await node.copyChunk(address, req); return {}; }),
    // The manager's notes (its own tests: storage-node-manager-notes): acknowledged, as a node that keeps them.
    KeepVolumeNote: unary(async () => ({})),
    MarkVolumeDeleting: unary(async () => ({ chunks: 0 })),
  }));
  return address;
}

beforeAll(async () => {
  const protos = loadProtos();
  const head = fakes.head;
  nodeAddress = await serveNode();
  headAddress = await serve((s) => s.addService(protos.head.vsky.head.HeadAgent.service, {
    Attach: unary((req) => head.attach(headAddress, req)),
    Detach: unary(async (req) => { await head.detach(headAddress, req); return {}; }),
    ListAttached: unary(async () => ({ volumes: [] })),
    UpdateMap: unary(async (req) => { await head.updateMap(headAddress, req); return {}; }),
    StartResync: unary(async (req) => { await head.startResync(headAddress, req); return {}; }),
  }));
  const n = new FakeNode({ serverId: 'node-a', name: 'a', dataAddress: '127.0.0.1:7710', controlAddress: nodeAddress, labels: { rack: 'r1' } });
  fakes.nodes.set(nodeAddress, n);
  fakes.addHead(headAddress);
});

afterAll(() => {
  for (const s of servers) s.forceShutdown();
  rmSync(dir, { recursive: true, force: true });
});

type Client = ReturnType<typeof managerClient>;
const rpc = <Req, Res>(c: Client, name: string, req: Req): Promise<Res> =>
  call(c, (c as unknown as Record<string, never>)[name], req as never, 5_000) as Promise<Res>;

describe('manager daemon', () => {
  it('serves the whole volume lifecycle over gRPC and keeps it across a restart', async () => {
    let mgr = await startManager({ dataDir: dir, listen: '127.0.0.1:0', chunkSize: CHUNK, heartbeatTimeoutMs: 60_000 });
    let c = managerClient(mgr.address);
    try {
      const server = await rpc<object, { serverId: string; labels: Record<string, string>; state: string }>(c, 'AddServer', { controlAddress: nodeAddress, labels: { room: '1' } });
      expect(server).toMatchObject({ serverId: 'node-a', state: 'active', labels: { rack: 'r1', room: '1' } });
      const disk = await rpc<object, { diskId: string; chunkCount: number }>(c, 'AddDisk', { server: 'a', path: '/d0', size: 16 * CHUNK });
      expect(disk.chunkCount).toBe(16);

      await expect(rpc(c, 'CreateVolume', { name: 'v', size: 4 * CHUNK, replicas: 3, thick: true })).rejects.toBeInstanceOf(errors.CapacityError);
      await expect(rpc(c, 'CreateVolume', { name: 'v', size: 0, replicas: 1 })).rejects.toBeInstanceOf(errors.InvalidArgumentError);
      const v = await rpc<object, { volumeId: number; segmentCount: number; state: string }>(c, 'CreateVolume', { name: 'v', size: 4 * CHUNK, replicas: 1, thick: true });
      expect(v).toMatchObject({ volumeId: 1, segmentCount: 4, state: 'available' });
      await expect(rpc(c, 'CreateVolume', { name: 'v', size: CHUNK, replicas: 1 })).rejects.toBeInstanceOf(errors.AlreadyExistsError);
      await expect(rpc(c, 'ShowVolume', { name: 'nope' })).rejects.toBeInstanceOf(errors.NotFoundError);

      const detail = await rpc<object, { map: { segments: Array<{ replicas: Array<{ diskId: string; state: string }> }> } }>(c, 'ShowVolume', { name: 'v' });
      expect(detail.map.segments).toHaveLength(4);
      expect(detail.map.segments[0]!.replicas[0]).toMatchObject({ diskId: disk.diskId, state: 'in_sync' });

      await rpc(c, 'RegisterHead', { headId: 'h1', name: 'hv', controlAddress: headAddress, nbdAddress: '127.0.0.1:10809' });
      const att = await rpc<object, { nbdUri: string; info: { epoch: number; attachedHead: string } }>(c, 'AttachVolume', { name: 'v', head: '' });
      expect(att).toMatchObject({ nbdUri: `nbd://${headAddress}/v`, info: { epoch: 1, attachedHead: 'hv' } });
      await expect(rpc(c, 'DeleteVolume', { name: 'v' })).rejects.toBeInstanceOf(errors.ConflictError);
      const heads = await rpc<object, { heads: Array<{ attached: string[] }> }>(c, 'ListHeads', {});
      expect(heads.heads[0]!.attached).toEqual(['v']);

      const status = await rpc<object, { servers: number; disks: number; capacityBytes: number; usedBytes: number; volumes: number }>(c, 'Status', {});
      expect(status).toMatchObject({ servers: 1, disks: 1, capacityBytes: 16 * CHUNK, usedBytes: 4 * CHUNK, volumes: 1 });
      expect((await rpc<object, { known: boolean }>(c, 'Heartbeat', { serverId: 'node-a', disks: [] })).known).toBe(true);
      expect((await rpc<object, { known: boolean }>(c, 'Heartbeat', { serverId: 'ghost', disks: [] })).known).toBe(false);
    } finally {
      c.close();
      await mgr.close();
    }

    mgr = await startManager({ dataDir: dir, listen: '127.0.0.1:0', chunkSize: CHUNK, heartbeatTimeoutMs: 60_000 });
    c = managerClient(mgr.address);
    try {
      const list = await rpc<object, { volumes: Array<{ name: string; epoch: number; state: string }> }>(c, 'ListVolumes', {});
      expect(list.volumes).toEqual([expect.objectContaining({ name: 'v', epoch: 1, state: 'attached' })]);
      await rpc(c, 'DetachVolume', { name: 'v', force: false });
      // an orphan on the node (an issued id no volume references) is collected
      fakes.nodes.get(nodeAddress)!.disk(`disk-/d0`).chunks.set(15, { volumeId: 1 } as never);
      const gc = await rpc<object, { chunksFreed: number }>(c, 'CollectGarbage', {});
      expect(gc.chunksFreed).toBe(1);
      await rpc(c, 'DeleteVolume', { name: 'v' });
      expect(fakes.ownedChunks().size).toBe(0);
      await expect(rpc(c, 'RemoveDisk', { diskId: 'nope' })).rejects.toBeInstanceOf(errors.NotFoundError);
      const disks = await rpc<object, { disks: Array<{ usedChunks: number }> }>(c, 'ListDisks', { server: '' });
      expect(disks.disks[0]!.usedChunks).toBe(0);
    } finally {
      c.close();
      await mgr.close();
    }
  });

  it('serves failures and resync over gRPC: FailDisk, ReportReplicaFailure, ListResyncs, ReportResyncProgress', async () => {
    const dir2 = mkdtempSync(join(tmpdir(), 'vsky-mgr-daemon-rs-'));
    const nodes = [nodeAddress, await serveNode(), await serveNode()];
    nodes.slice(1).forEach((a, i) => fakes.nodes.set(a, new FakeNode({ serverId: `node-${i + 2}`, name: `n${i + 2}`, dataAddress: '127.0.0.1:7710', controlAddress: a, labels: {} })));
    const mgr = await startManager({ dataDir: dir2, listen: '127.0.0.1:0', chunkSize: CHUNK, heartbeatTimeoutMs: 60_000 });
    const c = managerClient(mgr.address);
    try {
      for (const [i, a] of nodes.entries()) {
        await rpc(c, 'AddServer', { controlAddress: a, labels: {} });
        await rpc(c, 'AddDisk', { server: a === nodeAddress ? 'a' : `n${i + 1}`, path: `/r${i}`, size: 8 * CHUNK });
      }
      await rpc(c, 'CreateVolume', { name: 'rv', size: 2 * CHUNK, replicas: 2, thick: true });
      await rpc(c, 'RegisterHead', { headId: 'h1', name: 'hv', controlAddress: headAddress, nbdAddress: '' });
      await expect(rpc(c, 'ReportReplicaFailure', { headId: 'h1', volume: 'rv', segment: 0, slot: 0, epoch: 1, reason: 'x' }))
        .rejects.toBeInstanceOf(errors.StaleEpochError);
      await expect(rpc(c, 'FailDisk', { diskId: 'nope', reason: '' })).rejects.toBeInstanceOf(errors.NotFoundError);
      await expect(rpc(c, 'FailServer', { server: 'nope', reason: '' })).rejects.toBeInstanceOf(errors.NotFoundError);
      const detail = await rpc<object, { map: { segments: Array<{ replicas: Array<{ diskId: string; controlAddress: string }> }> } }>(c, 'ShowVolume', { name: 'rv' });
      const victim = detail.map.segments[0]!.replicas[0]!;
      expect(nodes).toContain(victim.controlAddress);
      await rpc(c, 'FailDisk', { diskId: victim.diskId, reason: 'smart' });
      type List = { resyncs: Array<{ resyncId: string; state: string; executor: string; goodCopies: number; targetDisk: string }>; bytesTotal: number };
      let list: List = { resyncs: [], bytesTotal: 0 };
      for (let i = 0; i < 100 && !list.resyncs.some((r) => r.state === 'running'); i++) {
        await new Promise((r) => setTimeout(r, 20));
        list = await rpc<object, List>(c, 'ListResyncs', {});
      }
      const running = list.resyncs.find((r) => r.state === 'running')!;
      expect(running).toMatchObject({ executor: expect.stringMatching(/^node:/), goodCopies: 1 });
      expect(running.targetDisk).not.toBe(victim.diskId);
      const vols = await rpc<object, { volumes: Array<{ degraded: boolean; resyncs: number }> }>(c, 'ListVolumes', {});
      expect(vols.volumes[0]).toMatchObject({ degraded: true, resyncs: list.resyncs.length });
      const task = fakes.copies().at(-1)!;
      expect(task.managerAddress).toBe(mgr.address);
      expect(await rpc(c, 'ReportResyncProgress', { resyncId: 'r77.1', regionsDone: 1, regionsTotal: 2, bytesCopied: 0, finished: false, error: '' })).toEqual({ cancel: true });
      expect(await rpc(c, 'ReportResyncProgress', { resyncId: task.resyncId, regionsDone: 4096, regionsTotal: 4096, bytesCopied: CHUNK, finished: true, error: '' })).toEqual({ cancel: false });
      const after = await rpc<object, { map: { generation: number; segments: Array<{ replicas: Array<{ state: string }> }> } }>(c, 'ShowVolume', { name: 'rv' });
      expect(after.map.generation).toBe(2);
    } finally {
      c.close();
      await mgr.close();
      rmSync(dir2, { recursive: true, force: true });
    }
  });
});
