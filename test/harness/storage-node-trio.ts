import { fineRegionSize } from '../../shared/region-bitmap.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startStorageNode, type StorageNodeHandle } from '../../storage-node/daemon.js';
import type { VolumeMap } from '../../head-agent/attachments.js';
import { bindServer, call, grpc, loadProtos, storageNodeClient } from '../../shared/grpc.js';
import { MiB } from '../../shared/constants.js';
import type { ReplicaLocation__Output } from '../../proto/generated/vsky/common/ReplicaLocation.js';
import type { ManagerHandlers } from '../../proto/generated/vsky/manager/Manager.js';
import type { NodeInfo__Output } from '../../proto/generated/vsky/storage/NodeInfo.js';

// What the head's unit tests run against: three REAL storage nodes started
// in-process (standalone, one sparse 64 MiB disk file each), 3-replica
// volumes allocated on them through the nodes' own AllocateChunk, and a
// stand-in manager (a gRPC server offering only the methods a test gives).

export interface NodeTrio {
  /** The temporary directory holding the nodes' data directories and disk files. */
  readonly dir: string;
  readonly nodes: StorageNodeHandle[];
  /** GetInfo of each node, in the same order (server id, disk ids). */
  readonly infos: NodeInfo__Output[];
  /** Closes every node (one a test already stopped included) and removes the directory. */
  close(): Promise<void>;
}

/** Starts node0..node2 with chunks of `chunkSize`, under a fresh temporary directory named with `prefix`. */
export async function startNodeTrio(prefix: string, chunkSize: number): Promise<NodeTrio> {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  const nodes: StorageNodeHandle[] = [];
  const infos: NodeInfo__Output[] = [];
  for (let i = 0; i < 3; i++) {
    nodes.push(await startStorageNode({
      dataDir: join(dir, `node${i}`), name: `node${i}`, host: '127.0.0.1', dataPort: 0, grpcPort: 0,
      disks: [{ path: join(dir, `node${i}.disk`), size: 64 * MiB }], chunkSize, labels: {}, heartbeatIntervalMs: 1000,
    }));
    const client = storageNodeClient(nodes[i]!.controlAddress);
    try {
      infos.push(await call(client, 'GetInfo', {}));
    } finally {
      client.close();
    }
  }
  return {
    dir, nodes, infos,
    async close() {
      await Promise.all(nodes.map((n) => n.close().catch(() => undefined)));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export interface VolumeLayout {
  volumeId: number;
  name: string;
  /** Bytes; the last segment may be partial. */
  size: number;
  chunkSize: number;
  /** Segment s lives in chunk chunkBase + s of each node's disk. Default 0. */
  chunkBase?: number;
  /** Slot s of segment g on node (g + s) % 3, so each node holds different slots; default: slot s on node s. */
  rotate?: boolean;
  /** Replica state by slot in the map (default in_sync). */
  states?: Record<number, string>;
  /** Data address by slot in the map, instead of the node's own (a proxy in front of it). */
  dataAddresses?: Record<number, string>;
  /** Chunks allocated with the read-only mark (a snapshot's, docs/snapshots.md). */
  readOnly?: boolean;
}

/** Allocates every chunk of a 3-replica volume on the trio; returns its map at generation 1. */
export async function allocateVolume(trio: NodeTrio, v: VolumeLayout): Promise<VolumeMap> {
  const segmentCount = Math.ceil(v.size / v.chunkSize);
  const segments: VolumeMap['segments'] = [];
  for (let seg = 0; seg < segmentCount; seg++) {
    const chunkIndex = (v.chunkBase ?? 0) + seg;
    const replicas: ReplicaLocation__Output[] = [];
    for (let slot = 0; slot < 3; slot++) {
      const n = v.rotate ? (seg + slot) % 3 : slot;
      const node = trio.nodes[n]!;
      const disk = trio.infos[n]!.disks[0]!;
      const client = storageNodeClient(node.controlAddress);
      try {
        await call(client, 'AllocateChunk', {
          diskId: disk.diskId, chunkIndex,
          identity: {
            volumeId: v.volumeId, volumeName: v.name, volumeSize: v.size, segment: seg, slot, segmentCount, replicas: 3, generation: 1, epoch: 0,
            readOnly: v.readOnly === true,
          },
        });
      } finally {
        client.close();
      }
      replicas.push({
        slot, serverId: trio.infos[n]!.serverId, dataAddress: v.dataAddresses?.[slot] ?? node.dataAddress,
        controlAddress: node.controlAddress, diskId: disk.diskId, chunkIndex, state: v.states?.[slot] ?? 'in_sync',
      });
    }
    segments.push({ index: seg, replicas });
  }
  return { volumeId: v.volumeId, name: v.name, size: v.size, chunkSize: v.chunkSize, replicas: 3, generation: 1, segments, thin: false, backing: [], regionSize: fineRegionSize(v.chunkSize) };
}

export interface ManagerStub {
  /** HOST:PORT to give the head as the manager's address. */
  readonly address: string;
  close(): void;
}

/** A stand-in manager on a loopback port: a gRPC server offering only `handlers` of the Manager service. */
export async function startManagerStub(handlers: Partial<ManagerHandlers>): Promise<ManagerStub> {
  const server = new grpc.Server();
  server.addService(loadProtos().manager.vsky.manager.Manager.service, handlers as ManagerHandlers);
  const port = await bindServer(server, '127.0.0.1:0');
  return { address: `127.0.0.1:${port}`, close: () => server.forceShutdown() };
}
