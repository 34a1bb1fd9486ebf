import { NodeConnection } from '../../shared/data-protocol/client/node-connection.js';
import { Replica } from '../../head-agent/engine/replica.js';
import { call } from '../../shared/grpc.js';
import { expect } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { clusterDataSecurity } from './data-auth.js';
import type { DataSecurity } from '../../shared/data-protocol/auth/data-security.js';

// Reads every replica of a volume directly from its storage node over the
// data protocol (our real client), to check what each copy holds on its own.
// Any cluster will do: only its manager client is used (a LocalCluster, or
// daemons started from configuration files).

/** A LocalCluster, or daemons started by hand: their manager client and the data-path credentials they were given. */
export type ManagerOf = LocalCluster | (Pick<LocalCluster, 'client'> & { dataSecurity: () => DataSecurity });

export interface ReplicaCopy { segment: number; slot: number; serverId: string; data: Buffer }

export async function readEveryReplica(c: ManagerOf, volume: string): Promise<{ chunkSize: number; copies: ReplicaCopy[] }> {
  const m = c.client();
  const detail = await call(m, 'ShowVolume', { name: volume }).finally(() => m.close());
  const map = detail.map!;
  const conns = new Map<string, NodeConnection>();
  const security = 'dataSecurity' in c && typeof c.dataSecurity === 'function' ? c.dataSecurity() : clusterDataSecurity(c as LocalCluster);
  const copies: ReplicaCopy[] = [];
  try {
    for (const seg of map.segments) {
      const length = Math.min(map.chunkSize, map.size - seg.index * map.chunkSize);
      for (const r of seg.replicas) {
        let conn = conns.get(r.dataAddress);
        if (!conn) { conn = new NodeConnection(r.dataAddress, { security }); conns.set(r.dataAddress, conn); }
        const replica = new Replica(conn, {
          volumeId: map.volumeId, volumeName: map.name, segment: seg.index, slot: r.slot,
          state: 'in_sync', serverId: r.serverId, diskId: r.diskId,
        });
        const data = Buffer.alloc(length);
        await replica.read(0, data);
        copies.push({ segment: seg.index, slot: r.slot, serverId: r.serverId, data });
      }
    }
  } finally {
    await Promise.all([...conns.values()].map((x) => x.close()));
  }
  return { chunkSize: map.chunkSize, copies };
}

/** Every segment has `replicas` copies holding the same bytes (read from each node on its own). */
export async function expectReplicasEqual(c: ManagerOf, volume: string, replicas = 3): Promise<void> {
  const { copies } = await readEveryReplica(c, volume);
  const bySeg = new Map<number, Buffer[]>();
  for (const copy of copies) bySeg.set(copy.segment, [...(bySeg.get(copy.segment) ?? []), copy.data]);
  for (const [seg, datas] of bySeg) {
    expect(datas.length, `segment ${seg} replicas`).toBe(replicas);
    for (const d of datas.slice(1)) expect(d.equals(datas[0]!), `segment ${seg}: replicas differ`).toBe(true);
  }
}
