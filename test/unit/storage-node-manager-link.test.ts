import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bindServer, call, grpc, loadProtos, storageNodeClient } from '../../shared/grpc.js';
import { setRootLogger } from '../../shared/logger.js';
import type { NodeInfo__Output } from '../../proto/generated/vsky/storage/NodeInfo.js';
import type { HeartbeatRequest__Output } from '../../proto/generated/vsky/manager/HeartbeatRequest.js';
import { startStorageNode, type StorageNodeHandle } from '../../storage-node/daemon.js';

setRootLogger(pino({ level: process.env.VSKY_LOG_LEVEL ?? 'silent' }));

const MiB = 1024 * 1024;

/** A manager stand-in that records RegisterServer and Heartbeat calls. */
class FakeManager {
  readonly registered: NodeInfo__Output[] = [];
  readonly heartbeats: HeartbeatRequest__Output[] = [];
  known = true;
  private server: grpc.Server | undefined;

  async start(port: number): Promise<void> {
    this.server = new grpc.Server();
    this.server.addService(loadProtos().manager.vsky.manager.Manager.service, {
      RegisterServer: (call: grpc.ServerUnaryCall<NodeInfo__Output, unknown>, cb: grpc.sendUnaryData<unknown>) => {
        this.registered.push(call.request);
        this.known = true;
        cb(null, { serverId: call.request.serverId, name: call.request.name, state: 'active' });
      },
      Heartbeat: (call: grpc.ServerUnaryCall<HeartbeatRequest__Output, unknown>, cb: grpc.sendUnaryData<unknown>) => {
        this.heartbeats.push(call.request);
        cb(null, { known: this.known });
      },
    });
    await bindServer(this.server, `127.0.0.1:${port}`);
  }

  stop(): void {
    this.server?.forceShutdown();
  }

  async restart(port: number): Promise<void> {
    this.stop();
    this.registered.length = 0;
    this.heartbeats.length = 0;
    await this.start(port);
  }
}

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

async function until(what: string, cond: () => boolean, timeoutMs = 8000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

let dir: string;
let node: StorageNodeHandle | undefined;
const manager = new FakeManager();

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vsky-link-'));
});
afterAll(async () => {
  manager.stop();
  await node?.close();
  await rm(dir, { recursive: true, force: true });
});

describe('manager link', () => {
  it('starts while the manager is down, registers once it is up, heartbeats, and re-registers when forgotten', async () => {
    const port = await freePort();
    node = await startStorageNode({
      dataDir: join(dir, 'node'), name: 'n1', host: '127.0.0.1', dataPort: 0, grpcPort: 0,
      managerAddress: `127.0.0.1:${port}`, disks: [{ path: join(dir, 'd.img'), size: 16 * MiB }], chunkSize: 4 * MiB,
      labels: { rack: 'r2' }, heartbeatIntervalMs: 50, heartbeatTimeoutMs: 1000,
    });
    await new Promise((r) => setTimeout(r, 300)); // a few failed attempts; the node must not mind
    await manager.start(port);
    await until('registration', () => manager.registered.length > 0);
    const info = manager.registered[0]!;
    expect(info).toMatchObject({ serverId: node.serverId, name: 'n1', dataAddress: node.dataAddress, controlAddress: node.controlAddress, labels: { rack: 'r2' } });
    expect(info.disks).toHaveLength(1);
    expect(info.disks[0]).toMatchObject({ chunkSize: 4 * MiB, chunkCount: 3, state: 'active' });

    await until('heartbeats', () => manager.heartbeats.length >= 3);
    expect(manager.heartbeats[0]!.serverId).toBe(node.serverId);
    expect(manager.heartbeats[0]!.disks[0]!.diskId).toBe(info.disks[0]!.diskId);

    manager.known = false; // e.g. the manager lost its database
    await until('re-registration', () => manager.registered.length >= 2);
    expect(manager.registered[1]!.serverId).toBe(node.serverId);
  });

  it('reports a faulty disk as "failed" in the very next heartbeat, sent at once, and "active" again when fixed', async () => {
    await node?.close();
    const port = await freePort();
    await manager.restart(port);
    node = await startStorageNode({
      dataDir: join(dir, 'node2'), name: 'n2', host: '127.0.0.1', dataPort: 0, grpcPort: 0,
      managerAddress: `127.0.0.1:${port}`, disks: [{ path: join(dir, 'd2.img'), size: 16 * MiB }], chunkSize: 4 * MiB,
      labels: {}, heartbeatIntervalMs: 30_000, heartbeatTimeoutMs: 1000, // no periodic heartbeat during this test
    });
    await until('registration', () => manager.registered.some((r) => r.serverId === node!.serverId));
    const diskId = manager.registered.find((r) => r.serverId === node!.serverId)!.disks[0]!.diskId;
    const client = storageNodeClient(node.controlAddress);
    try {
      const before = manager.heartbeats.length;
      await call(client, 'SetDiskFault', { diskId, faulty: true });
      await until('a heartbeat after the fault', () => manager.heartbeats.length > before, 2000);
      expect(manager.heartbeats[before]!.disks.map((d) => [d.diskId, d.state])).toEqual([[diskId, 'failed']]);
      const after = manager.heartbeats.length;
      await call(client, 'SetDiskFault', { diskId, faulty: false });
      await until('a heartbeat after the repair', () => manager.heartbeats.length > after, 2000);
      expect(manager.heartbeats[after]!.disks[0]!.state).toBe('active');
    } finally {
      client.close();
    }
  });
});
