import { expect } from 'vitest';
import type { ChunkIdentity__Output } from '../../proto/generated/vsky/common/ChunkIdentity.js';
import type { NodeInfo__Output } from '../../proto/generated/vsky/storage/NodeInfo.js';

// Fixtures for the rebuild planner's tests (manager/rebuild/plan.ts): the manager's metadata
// rebuilt from the storage nodes' chunk tables. Pure: inputs are built from
// maps made by the real placement code (and chunk-map helpers), the chunk
// records carry the notes manager/segment-notes.ts would have written, and
// every produced map must pass chunkMapProblem and load into a placement
// model the way the manager loads it (no chunk claimed twice).

process.env.VSKY_LOG_LEVEL ??= 'silent';
export const { planRebuild, LOST_DISK_ID, LOST_SERVER_ID } = await import('../../manager/rebuild/plan.js');
export const { PlacementModel } = await import('../../manager/placement.js');
export const { buildChunkMap, chunkMapProblem, forEachReplica } = await import('../../manager/types.js');
export const { setIdentitySlot, setMove, setReplicaState, replicaLocation } = await import('../../manager/chunk-map.js');
export const { SegmentNotes } = await import('../../manager/segment-notes.js');
const { parseHostPort } = await import('../../shared/units.js');

export type Plan = ReturnType<typeof planRebuild>;
export type NodeTable = Parameters<typeof planRebuild>[0]['nodes'][number];
export type MapRecord = Parameters<typeof chunkMapProblem>[0];
export type VolumeRecord = Plan['volumes'][number]['volume'];
export type Model = InstanceType<typeof PlacementModel>;

export const CHUNK = 1 << 20;
export const NOW = 1_700_000_000_000;
export const CLUSTER = 'c0ffee00-0000-4000-8000-000000000001';

export interface ChunkOpts {
  generation?: number;
  epoch?: number;
  staleSlots?: number;
  mapVersion?: number;
  written?: number;
  lvolid?: number;
}

/** Storage nodes s0..s{n-1} with disks sNdM, and the chunk records on them. */
export class Fixture {
  readonly nodes: NodeTable[] = [];
  readonly model: Model = new PlacementModel();
  private readonly byServer = new Map<string, NodeTable>();
  private readonly serverOfDisk = new Map<string, string>();

  constructor(servers: number, disksPerServer: number, chunkCount = 64, racks = 0) {
    for (let s = 0; s < servers; s++) {
      const labels: Record<string, string> = racks ? { rack: `r${s % racks}` } : {};
      const info: NodeInfo__Output = {
        serverId: `s${s}`, name: `node${s}`, dataAddress: `10.0.0.${s + 1}:7710`, controlAddress: `10.0.0.${s + 1}:7711`, labels, disks: [],
        ssvrid: 0, intIdsClusterId: '', nextIntIds: null, note: null,
      };
      this.model.setServer(info.serverId, labels, true);
      for (let d = 0; d < disksPerServer; d++) {
        const diskId = `s${s}d${d}`;
        info.disks.push({ diskId, path: `/srv/disk${d}`, chunkSize: CHUNK, regionSize: 4096, chunkCount, usedChunks: 0, state: 'active', size: CHUNK * chunkCount, clusterId: CLUSTER, pdskid: 0, dextIds: [], note: null, written: [] });
        this.model.setDisk(diskId, info.serverId, chunkCount, true);
        this.serverOfDisk.set(diskId, info.serverId);
      }
      const table = { server: info, chunks: [] };
      this.nodes.push(table);
      this.byServer.set(info.serverId, table);
    }
  }

  /** Places a volume with the real placement code; returns its records as the manager held them. */
  volume(id: number, name: string, segmentCount: number, replicas: number, more: Partial<VolumeRecord> = {}): { volume: VolumeRecord; map: MapRecord } {
    const res = this.model.place({ volumeId: id, segmentCount, replicas, spreadLabel: '' });
    const volume: VolumeRecord = {
      id, name, size: segmentCount * CHUNK - 512, replicas, chunkSize: CHUNK, segmentCount, generation: 1, epoch: 0,
      attachedHead: '', nbdUri: '', spreadLabel: '', createdMs: NOW, ...more,
    };
    return { volume, map: buildChunkMap(id, replicas, segmentCount, res.chunks) };
  }

  /** Writes every chunk of the map (replicas and drain targets) with the note segment-notes.ts would make. */
  store(e: { volume: VolumeRecord; map: MapRecord }, opts: ChunkOpts = {}): void {
    forEachReplica(e.map, (ref) => {
      const staleSlots = e.volume.mapVersion ? SegmentNotes.staleSlots(e, ref.segment) : 0;
      this.chunk(ref.diskId, ref.chunkIndex, identity(e.volume, ref.segment, ref.idSlot, { staleSlots, mapVersion: e.volume.mapVersion ?? 0, ...opts }));
    });
  }

  chunk(diskId: string, chunkIndex: number, id: ChunkIdentity__Output, written = 0): void {
    this.byServer.get(this.serverOfDisk.get(diskId)!)!.chunks.push({ diskId, chunkIndex, identity: id, writtenRegions: written });
  }

  /** The record of a chunk, to change it. */
  find(diskId: string, chunkIndex: number): ChunkIdentity__Output {
    const rec = this.byServer.get(this.serverOfDisk.get(diskId)!)!.chunks.find((c) => c.diskId === diskId && c.chunkIndex === chunkIndex);
    if (!rec?.identity) throw new Error(`no chunk ${diskId}#${chunkIndex}`);
    return rec.identity;
  }

  drop(diskId: string, chunkIndex: number): void {
    const table = this.byServer.get(this.serverOfDisk.get(diskId)!)!;
    const before = table.chunks.length;
    table.chunks = table.chunks.filter((c) => !(c.diskId === diskId && c.chunkIndex === chunkIndex));
    expect(table.chunks.length).toBe(before - 1);
  }

  /** Adds a disk to a node after placement (the model does not know it). */
  addDisk(serverId: string, diskId: string, clusterId = CLUSTER): void {
    this.byServer.get(serverId)!.server.disks.push({ diskId, path: `/srv/${diskId}`, chunkSize: CHUNK, regionSize: 4096, chunkCount: 64, usedChunks: 0, state: 'active', size: 64 * CHUNK, clusterId, pdskid: 0, dextIds: [], note: null, written: [] });
    this.serverOfDisk.set(diskId, serverId);
  }

  disk(diskId: string) {
    return this.byServer.get(this.serverOfDisk.get(diskId)!)!.server.disks.find((d) => d.diskId === diskId)!;
  }

  plan(): Plan {
    return checked(planRebuild({ clusterId: CLUSTER, chunkSize: CHUNK, nodes: this.nodes, nowMs: NOW }));
  }
}

export function identity(v: VolumeRecord, segment: number, slot: number, o: ChunkOpts = {}): ChunkIdentity__Output {
  return {
    volumeId: v.id, volumeName: v.name, volumeSize: v.size, segment, slot, segmentCount: v.segmentCount, replicas: v.replicas,
    generation: o.generation ?? v.generation, epoch: o.epoch ?? v.epoch, staleSlots: o.staleSlots ?? 0, mapVersion: o.mapVersion ?? 0,
    legality: 'LEGAL', jobId: '', jobKind: '', jobOutcome: '', lvolid: o.lvolid ?? 0, thin: false, readOnly: false,
  };
}

export const key = (diskId: string, chunkIndex: number) => `${diskId}#${chunkIndex}`;

/**
 * What every plan must satisfy: maps pass chunkMapProblem and match their
 * volume's shape, name only known disks, and load into a placement model
 * like manager/volumes.ts + gc.ts load them (each chunk claimed once, also
 * across to-free and set-aside chunks).
 */
export function checked(plan: Plan): Plan {
  const model = new PlacementModel();
  for (const s of plan.servers) model.setServer(s.id, s.nodeLabels, s.state === 'active');
  for (const d of plan.disks) model.setDisk(d.id, d.serverId, d.chunkCount, d.state === 'active');
  const diskIds = new Set(plan.disks.map((d) => d.id));
  const serverIds = new Set(plan.servers.map((s) => s.id));
  for (const d of plan.disks) expect(serverIds.has(d.serverId)).toBe(true);
  for (const s of plan.servers) expect(() => parseHostPort(s.dataAddress)).not.toThrow();
  const names = new Set<string>();
  for (const { volume, map } of plan.volumes) {
    expect(chunkMapProblem(map)).toBeUndefined();
    expect(map.volumeId).toBe(volume.id);
    expect(map.replicas).toBe(volume.replicas);
    expect(map.segmentCount).toBe(volume.segmentCount);
    expect(names.has(volume.name)).toBe(false);
    names.add(volume.name);
    expect(volume.id).toBeLessThan(plan.nextVolumeId);
    for (const d of map.disks) expect(diskIds.has(d)).toBe(true);
    forEachReplica(map, (r) => model.claim(r.diskId, r.chunkIndex, volume.id));
    // Every segment keeps a good copy.
    for (let s = 0; s < map.segmentCount; s++) {
      let good = 0;
      forEachReplica(map, (r) => { if (r.segment === s && r.state === 'in_sync') good++; });
      expect(good).toBeGreaterThan(0);
    }
  }
  for (const t of plan.toFree) {
    model.claim(t.diskId, t.chunkIndex, t.volumeId);
    expect(t.volumeId).toBeLessThan(plan.nextVolumeId);
  }
  for (const a of plan.setAside) if (diskIds.has(a.diskId)) model.claim(a.diskId, a.chunkIndex, a.volumeId);
  expect(plan.report.volumes).toBe(plan.volumes.length);
  expect(plan.report.staleReplicas).toBe(plan.volumes.reduce((n, { map }) => n + (map.stale?.length ?? 0), 0));
  return plan;
}

export const built = (plan: Plan, id: number) => {
  const e = plan.volumes.find((v) => v.volume.id === id);
  if (!e) throw new Error(`volume ${id} not built; conflicts: ${plan.report.conflicts.join(' | ')}`);
  return e;
};

