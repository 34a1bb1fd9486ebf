import { fineRegionSize } from '../../shared/region-bitmap.js';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFile } from 'node:child_process';
import { createServer } from 'node:net';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startHeadAgent, type HeadAgentHandle } from '../../head-agent/daemon.js';
import { startStorageNode, type StorageNodeHandle } from '../../storage-node/daemon.js';
import { bindServer, call, grpc, headAgentClient, loadProtos, storageNodeClient, type HeadAgentClient } from '../../shared/grpc.js';
import { InvalidArgumentError, NotFoundError } from '../../shared/errors.js';
import { MiB } from '../../shared/constants.js';
import type { NodeInfo__Output } from '../../proto/generated/vsky/storage/NodeInfo.js';
import type { AttachVolumeReply__Output } from '../../proto/generated/vsky/head/AttachVolumeReply.js';
import type { AttachedList__Output } from '../../proto/generated/vsky/head/AttachedList.js';
import type { VolumeMap } from '../../head-agent/attachments.js';

// The head-agent daemon: its stable id, the gRPC control service (Attach
// answers with the nbd:// URI, fenced nodes, ListAttached, Detach), a real NBD
// client reading what the engine wrote, and the manager link registering
// while the manager comes up late and re-registering when it forgets us.

const execFileP = promisify(execFile);
const CHUNK = 4 * MiB;

let dir: string;
let nodes: StorageNodeHandle[] = [];
let head: HeadAgentHandle | undefined;
let client: HeadAgentClient;
let map: VolumeMap;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'vsky-head-daemon-'));
  for (let i = 0; i < 2; i++) {
    nodes.push(await startStorageNode({
      dataDir: join(dir, `node${i}`), name: `node${i}`, host: '127.0.0.1', dataPort: 0, grpcPort: 0,
      disks: [{ path: join(dir, `node${i}.disk`), size: 32 * MiB }], chunkSize: CHUNK, labels: {}, heartbeatIntervalMs: 1000,
    }));
  }
  const replicas = [];
  for (let slot = 0; slot < 2; slot++) {
    const c = storageNodeClient(nodes[slot]!.controlAddress);
    const info = await call<object, NodeInfo__Output>(c, c.GetInfo, {});
    const diskId = info.disks[0]!.diskId;
    await call(c, c.AllocateChunk, {
      diskId, chunkIndex: 0,
      identity: { volumeId: 5, volumeName: 'vol-d', volumeSize: CHUNK, segment: 0, slot, segmentCount: 1, replicas: 2, generation: 3, epoch: 0 },
    });
    c.close();
    replicas.push({ slot, serverId: info.serverId, dataAddress: nodes[slot]!.dataAddress, diskId, chunkIndex: 0, state: 'in_sync', controlAddress: nodes[slot]!.controlAddress });
  }
  map = { volumeId: 5, name: 'vol-d', size: CHUNK, chunkSize: CHUNK, replicas: 2, generation: 3, segments: [{ index: 0, replicas }], thin: false, backing: [], regionSize: fineRegionSize(CHUNK) };
});

afterAll(async () => {
  client?.close();
  await head?.close();
  await Promise.all(nodes.map((n) => n.close()));
  rmSync(dir, { recursive: true, force: true });
});

describe('head-agent daemon', () => {
  it('keeps a stable head id in its data directory', async () => {
    const dataDir = join(dir, 'head-id-test');
    const a = await startHeadAgent({ dataDir, name: 'h', host: '127.0.0.1', grpcPort: 0, nbdPort: 0, heartbeatIntervalMs: 1000 });
    await a.close();
    const b = await startHeadAgent({ dataDir, name: 'h', host: '127.0.0.1', grpcPort: 0, nbdPort: 0, heartbeatIntervalMs: 1000 });
    await b.close();
    expect(a.headId).toMatch(/^[0-9a-f-]{36}$/);
    expect(b.headId).toBe(a.headId);
    expect(readFileSync(join(dataDir, 'head-id'), 'utf8').trim()).toBe(a.headId);
  });

  it('attaches over gRPC, answers the nbd:// URI, lists and detaches', async () => {
    head = await startHeadAgent({ dataDir: join(dir, 'head'), name: 'head1', host: '127.0.0.1', grpcPort: 0, nbdPort: 0, heartbeatIntervalMs: 1000 });
    client = headAgentClient(head.controlAddress);
    const reply = await call<object, AttachVolumeReply__Output>(client, client.Attach, { map, epoch: 4 });
    expect(reply.nbdUri).toBe(`nbd://${head.nbdAddress}/vol-d`);
    const vol = head.attachments.lookup('vol-d')!;
    expect(vol.epoch).toBe(4);
    const list = await call<object, AttachedList__Output>(client, client.ListAttached, {});
    expect(list.volumes).toEqual([{ name: 'vol-d', volumeId: 5, epoch: 4, nbdUri: reply.nbdUri, size: CHUNK, connections: 0, iscsiUrl: '', iscsiSessions: 0, lease: 'held' }]);
    // Bad input: a clear typed error, nothing attached.
    await expect(call(client, client.Attach, { epoch: 4 })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(call(client, client.Attach, { map: { ...map, name: 'x', size: 3 * CHUNK }, epoch: 4 })).rejects.toThrow(/segments/);
    await expect(call(client, client.Detach, { name: 'nope' })).rejects.toBeInstanceOf(NotFoundError);
    expect(head.attachments.list().map((v) => v.name)).toEqual(['vol-d']);
  });

  it('serves what the engine wrote to a real NBD client', async () => {
    const vol = head!.attachments.lookup('vol-d')!;
    await vol.write(1 * MiB, Buffer.alloc(64 * 1024, 0x6b), false);
    await vol.flush();
    const out = join(dir, 'nbd-read.bin');
    await execFileP('nbdcopy', [`nbd://${head!.nbdAddress}/vol-d`, out], { timeout: 30_000 });
    const data = readFileSync(out);
    expect(data.length).toBe(CHUNK);
    expect(data.subarray(MiB, MiB + 64 * 1024).every((b) => b === 0x6b)).toBe(true);
    expect(data.subarray(MiB - 1, MiB)[0]).not.toBe(0x6b);
  });

  it('detach waits for writes in flight, flushes and unregisters', async () => {
    const vol = head!.attachments.lookup('vol-d')!;
    let settled = 0;
    const writes = Array.from({ length: 8 }, (_, i) => vol.write(i * 65536, Buffer.alloc(65536, i), false).then(() => { settled++; }));
    await head!.attachments.detach('vol-d');
    // Detach waited for the writes in flight (then flushed them).
    expect(settled).toBe(8);
    await Promise.all(writes);
    expect(head!.attachments.lookup('vol-d')).toBeUndefined();
    await expect(vol.write(0, Buffer.alloc(1), false)).rejects.toThrow(/detached/);
    const list = await call<object, AttachedList__Output>(client, client.ListAttached, {});
    expect(list.volumes).toEqual([]);
  });

  it('registers with a manager that starts late, heartbeats, re-registers when forgotten', async () => {
    const port = await new Promise<number>((resolve) => {
      const s = createServer();
      s.listen(0, '127.0.0.1', () => {
        const p = (s.address() as { port: number }).port;
        s.close(() => resolve(p));
      });
    });
    const registered: { headId: string; controlAddress: string; nbdAddress: string; name: string }[] = [];
    let heartbeats = 0;
    let forget = false;
    const h = await startHeadAgent({
      dataDir: join(dir, 'head-ml'), name: 'head-ml', host: '127.0.0.1', grpcPort: 0, nbdPort: 0,
      managerAddress: `127.0.0.1:${port}`, heartbeatIntervalMs: 50,
    });
    try {
      // Manager down: the head keeps going, attaches and serves I/O.
      const vol = await h.attachments.attach(map, 5);
      await vol.write(4096, Buffer.alloc(4096, 0x42), true);
      expect((await vol.read(4096, 4096)).every((b) => b === 0x42)).toBe(true);
      await new Promise((r) => setTimeout(r, 300));
      const server = new grpc.Server();
      const notImplemented = (_c: unknown, cb: grpc.sendUnaryData<unknown>) => cb({ code: grpc.status.UNIMPLEMENTED });
      const impl: Record<string, unknown> = {};
      for (const name of Object.keys(loadProtos().manager.vsky.manager.Manager.service)) impl[name] = notImplemented;
      impl.RegisterHead = (c: grpc.ServerUnaryCall<typeof registered[number], unknown>, cb: grpc.sendUnaryData<unknown>) => {
        registered.push(c.request);
        cb(null, { headId: c.request.headId, name: c.request.name, state: 'active' });
      };
      impl.HeadHeartbeat = (_c: unknown, cb: grpc.sendUnaryData<unknown>) => {
        heartbeats++;
        const known = !forget;
        forget = false;
        cb(null, { known });
      };
      server.addService(loadProtos().manager.vsky.manager.Manager.service, impl as grpc.UntypedServiceImplementation);
      await bindServer(server, `127.0.0.1:${port}`);
      try {
        const deadline = Date.now() + 10_000;
        while (heartbeats < 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
        expect(registered.length).toBe(1);
        expect(registered[0]).toMatchObject({ headId: h.headId, name: 'head-ml', controlAddress: h.controlAddress, nbdAddress: h.nbdAddress });
        expect(heartbeats).toBeGreaterThanOrEqual(3);
        forget = true;
        while (registered.length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
        expect(registered.length).toBe(2);
      } finally {
        server.forceShutdown();
      }
    } finally {
      await h.close();
    }
  });
});
