import { seededRandom } from '../../shared/seeded-random.js';
import { pathToFileURL } from 'node:url';
import type { ChunkIdentity__Output } from '../../proto/generated/vsky/common/ChunkIdentity.js';
import type { NodeInfo__Output } from '../../proto/generated/vsky/storage/NodeInfo.js';
import { setIdentitySlot } from '../../manager/chunk-map.js';
import { PlacementModel } from '../../manager/placement.js';
import { planRebuild, type NodeTable, type RebuildInput } from '../../manager/rebuild/plan.js';
import { buildChunkMap, forEachReplica, type ChunkMapRecord } from '../../manager/types.js';

// Rebuilding the manager's metadata from storage at scale (manager/rebuild/plan.ts):
// 10,000 volumes of 1-8 segments, 3 replicas, placed by the real placement
// code on 1,000 disks (200 servers x 5, 10 racks), as the storage nodes'
// chunk tables would list them, with some of everything the planner decides:
// stale notes (a replica the survivors' newer note calls stale), chunks a
// generation behind, finished drains (identity slot 3 at a position), drains
// in progress (a 4th chunk, noted stale), replicas no node reports, and
// interrupted creates (a third of their segments allocated, never attached),
// interrupted deletes (every chunk there, one marked DELETING), DIRTY volumes
// with their job's record, iSCSI access rules kept by the nodes (volume
// notes, with an older version on another node) and disks failed or
// draining by an admin (disk notes); since the CREATING mark and tombstones:
// complete creates whose chunks all still say CREATING (rolled back), deletes
// known only from the tombstones every node keeps (plus 1,000 tombstones of
// long-gone volumes on every node), a volume note (spread label, creation
// time) for every committed volume on each node holding its first segment.
// planRebuild is timed on the same input three times (median); the plan is
// checked against what was synthesized. Fails (exit 1) above 10 s.
// Run: npm run build && node dist/test/bench/manager-rebuild.js

const SERVERS = 200;
const DISKS_PER_SERVER = 5;
const CHUNKS_PER_DISK = 1024;
const RACKS = 10;
const VOLUMES = 10_000;
const K = 3;
const CHUNK = 256 * 1024 * 1024;
const NOW = 1_800_000_000_000;
const CLUSTER = 'bench-cluster';
const LIMIT_MS = 10_000;
const TARGET_MS = 2_000;


interface Expected {
  volumes: number; chunks: number; staleReplicas: number; rolledBack: number; toFree: number; lostReplicas: number; drainsDone: number;
  withAccess: number; dirty: number; jobs: number; adminDisks: number; withCreated: number;
}
const CREATED_MS = 1_700_000_000_000;
/** Tombstones of volumes long gone (no chunk left), on every node. */
const OLD_TOMBSTONES = 1_000;
const ACCESS = JSON.stringify({ v: 1, initiators: ['iqn.2024-01.bench:vm'], chapUser: 'u', chapSecret: 'bench-secret-1234', mutualUser: '', mutualSecret: '' });

export function synthesize(): { input: RebuildInput; expected: Expected } {
  const random = seededRandom(0x5eed);
  const model = new PlacementModel();
  const tables = new Map<string, NodeTable>();
  const serverOfDisk = new Map<string, string>();
  /** Chunk indices from the top of each disk, for drain targets (placement fills from the bottom). */
  const top = new Map<string, number>();
  for (let s = 0; s < SERVERS; s++) {
    const serverId = `srv-${s}`;
    const labels = { rack: `r${s % RACKS}` };
    const info: NodeInfo__Output = {
      serverId, name: `node${s}`, dataAddress: `10.1.${s >> 8}.${s & 255}:7710`, controlAddress: `10.1.${s >> 8}.${s & 255}:7711`, labels, disks: [],
      ssvrid: 0, intIdsClusterId: '', nextIntIds: null, note: null,
    };
    model.setServer(serverId, labels, true);
    for (let d = 0; d < DISKS_PER_SERVER; d++) {
      const diskId = `disk-${s}-${d}`;
      info.disks.push({ diskId, path: `/dev/sd${String.fromCharCode(97 + d)}`, chunkSize: CHUNK, regionSize: 4096, chunkCount: CHUNKS_PER_DISK, usedChunks: 0, state: 'active', size: CHUNK * CHUNKS_PER_DISK, clusterId: CLUSTER, pdskid: 0, dextIds: [], note: null, written: [] });
      model.setDisk(diskId, serverId, CHUNKS_PER_DISK, true);
      serverOfDisk.set(diskId, serverId);
      top.set(diskId, CHUNKS_PER_DISK - 1);
    }
    tables.set(serverId, { server: info, chunks: [], volumeNotes: [] });
  }
  const put = (diskId: string, chunkIndex: number, identity: ChunkIdentity__Output) => {
    tables.get(serverOfDisk.get(diskId)!)!.chunks.push({ diskId, chunkIndex, identity, writtenRegions: 100 });
  };

  const expected: Expected = { volumes: 0, chunks: 0, staleReplicas: 0, rolledBack: 0, toFree: 0, lostReplicas: 0, drainsDone: 0, withAccess: 0, dirty: 0, jobs: 0, adminDisks: 0, withCreated: 0 };
  const tombstones: number[] = [];
  for (let i = 1; i <= OLD_TOMBSTONES; i++) tombstones.push(VOLUMES + 1000 + i);
  // Disk notes: every 50th disk failed or draining by an admin (no chunk is placed on them).
  for (const t of tables.values()) {
    for (const d of t.server.disks) {
      const n = Number(d.diskId.split('-')[1]) * DISKS_PER_SERVER + Number(d.diskId.split('-')[2]);
      if (n % 50 !== 7) continue;
      d.note = { diskId: d.diskId, adminState: n % 100 === 7 ? 'failed' : 'draining', reason: 'by an admin', badChunks: [1, 2] };
      model.setDisk(d.diskId, t.server.serverId, CHUNKS_PER_DISK, false);
      expected.adminDisks++;
    }
  }
  for (let id = 1; id <= VOLUMES; id++) {
    const segmentCount = 1 + Math.floor(random() * 8);
    const res = model.place({ volumeId: id, segmentCount, replicas: K, spreadLabel: 'rack' });
    const map: ChunkMapRecord = buildChunkMap(id, K, segmentCount, res.chunks);
    const name = `vm-${id}`;
    const size = segmentCount * CHUNK;
    const roll = random();
    const generation = 1 + Math.floor(random() * 5);
    const epoch = 1 + Math.floor(random() * 50);
    const ident = (segment: number, slot: number, o: Partial<ChunkIdentity__Output> = {}): ChunkIdentity__Output => ({
      volumeId: id, volumeName: name, volumeSize: size, segment, slot, segmentCount, replicas: K,
      generation, epoch, staleSlots: 0, mapVersion: 0, legality: 'LEGAL', jobId: '', jobKind: '', jobOutcome: '', lvolid: 0, thin: false, readOnly: false, ...o,
    });

    if (roll < 0.002 && segmentCount >= 4) {
      // Interrupted create: never attached; only the first third of its segments allocated.
      const allocated = Math.floor(segmentCount / 3);
      forEachReplica(map, (r) => {
        if (r.segment >= allocated) return;
        put(r.diskId, r.chunkIndex, ident(r.segment, r.slot, { generation: 1, epoch: 0 }));
        expected.toFree++;
      });
      expected.rolledBack++;
      continue;
    }
    if (roll >= 0.054 && roll < 0.057) {
      // Interrupted create, every chunk allocated: all still CREATING, never attached.
      forEachReplica(map, (r) => {
        put(r.diskId, r.chunkIndex, ident(r.segment, r.slot, { generation: 1, epoch: 0, legality: 'CREATING' }));
        expected.toFree++;
      });
      expected.rolledBack++;
      continue;
    }
    if (roll >= 0.057 && roll < 0.059) {
      // A delete whose mark reached no holder (all down at the delete): only the tombstones say so.
      forEachReplica(map, (r) => {
        put(r.diskId, r.chunkIndex, ident(r.segment, r.slot));
        expected.toFree++;
      });
      tombstones.push(id);
      expected.rolledBack++;
      continue;
    }
    if (roll >= 0.042 && roll < 0.044) {
      // Interrupted delete: every chunk there, the first node's marked DELETING.
      let first = '';
      forEachReplica(map, (r) => {
        first ||= serverOfDisk.get(r.diskId)!;
        put(r.diskId, r.chunkIndex, ident(r.segment, r.idSlot, serverOfDisk.get(r.diskId) === first ? { legality: 'DELETING' } : {}));
        expected.toFree++;
      });
      expected.rolledBack++;
      continue;
    }
    expected.volumes++;
    const seg = Math.floor(random() * segmentCount);
    const job: Partial<ChunkIdentity__Output> = roll >= 0.044 && roll < 0.054
      ? { legality: 'DIRTY', jobId: `job-${id}`, jobKind: 'wipe', jobOutcome: 'failed' } : {};
    if (job.jobId) {
      expected.dirty++;
      expected.jobs++;
    }
    for (let r = 0; r < K; r++) {
      // The create's committed note: spread label and creation time, on each node holding the first segment.
      tables.get(serverOfDisk.get(map.disks[map.locs[2 * r]!]!)!)!.volumeNotes!.push({ volumeId: id, version: 0, epoch: 0, access: '', spreadLabel: 'rack', createdMs: CREATED_MS, committed: false, record: '' });
    }
    expected.withCreated++;
    if (roll >= 0.5 && roll < 0.8) {
      // Access rules: the newest note on the first replica's node, an older one on the second's.
      const a = serverOfDisk.get(map.disks[map.locs[0]!]!)!;
      const b = serverOfDisk.get(map.disks[map.locs[2]!]!)!;
      tables.get(b)!.volumeNotes!.push({ volumeId: id, version: 1, epoch, access: '', spreadLabel: 'rack', createdMs: CREATED_MS, committed: false, record: '' });
      tables.get(a)!.volumeNotes!.push({ volumeId: id, version: 2, epoch, access: ACCESS, spreadLabel: 'rack', createdMs: CREATED_MS, committed: false, record: '' });
      expected.withAccess++;
    }
    if (roll < 0.005) setIdentitySlot(map, seg * K + 1, 3); // a finished drain: 0, 3, 2
    if (roll < 0.005) expected.drainsDone++;
    forEachReplica(map, (r) => {
      let o: Partial<ChunkIdentity__Output> = {};
      if (roll >= 0.005 && roll < 0.025 && r.segment === seg) {
        // Slot 2 went stale (note 9 on the survivors); its own chunk kept note 8.
        o = r.slot === 2 ? { staleSlots: 0, mapVersion: 8 } : { staleSlots: 1 << 2, mapVersion: 9 };
      } else if (roll >= 0.025 && roll < 0.035 && r.segment === seg && r.slot === 0) {
        o = { generation: generation - 1 }; // missed a finished job
      } else if (roll >= 0.035 && roll < 0.037 && r.segment === seg && r.slot === 1) {
        expected.lostReplicas++; // no node reports it
        return;
      }
      put(r.diskId, r.chunkIndex, ident(r.segment, r.idSlot, { ...job, ...o }));
    });
    if ((roll >= 0.005 && roll < 0.025) || (roll >= 0.025 && roll < 0.035) || (roll >= 0.035 && roll < 0.037)) expected.staleReplicas++;
    if (roll >= 0.037 && roll < 0.042) {
      // A drain in progress: a 4th chunk of the segment under identity slot 3, noted stale.
      const used = new Set<string>();
      forEachReplica(map, (r) => { if (r.segment === seg) used.add(serverOfDisk.get(r.diskId)!); });
      let diskId = '';
      do diskId = `disk-${Math.floor(random() * SERVERS)}-${Math.floor(random() * DISKS_PER_SERVER)}`; while (used.has(serverOfDisk.get(diskId)!));
      const index = top.get(diskId)!;
      top.set(diskId, index - 1);
      const note = { staleSlots: 1 << 3, mapVersion: 3 };
      for (const t of tables.values()) {
        for (const c of t.chunks) if (c.identity!.volumeId === id && c.identity!.segment === seg) Object.assign(c.identity!, note);
      }
      put(diskId, index, ident(seg, 3, note));
      expected.toFree++;
    }
  }
  const nodes = [...tables.values()];
  for (const t of nodes) t.deletedVolumes = tombstones;
  expected.chunks = nodes.reduce((n, t) => n + t.chunks.length, 0);
  return { input: { clusterId: CLUSTER, chunkSize: CHUNK, nodes, nowMs: NOW }, expected };
}

export function runManagerRebuildBench(): object {
  const t0 = performance.now();
  const { input, expected } = synthesize();
  const synthMs = performance.now() - t0;
  const runs: number[] = [];
  let plan: ReturnType<typeof planRebuild> | undefined;
  for (let i = 0; i < 3; i++) {
    const s = performance.now();
    plan = planRebuild(input);
    runs.push(performance.now() - s);
  }
  const median = [...runs].sort((a, b) => a - b)[1]!;
  const p = plan!;
  const idsPairs = p.volumes.reduce((n, { map }) => n + (map.ids?.length ?? 0) / 2, 0);
  const got = {
    volumes: p.report.volumes, chunks: p.report.chunks, staleReplicas: p.report.staleReplicas, rolledBack: p.report.rolledBack.length,
    toFree: p.toFree.length, lostReplicas: p.disks.find((d) => d.id === 'lost')?.chunkCount ?? 0, drainsDone: idsPairs,
    withAccess: p.volumes.filter((v) => v.volume.access?.chapUser === 'u').length, dirty: p.volumes.filter((v) => v.volume.dirty).length,
    jobs: p.jobs.length, adminDisks: p.disks.filter((d) => d.id !== 'lost' && (d.adminFailed || d.draining)).length,
    withCreated: p.volumes.filter((v) => v.volume.createdMs === CREATED_MS).length,
  };
  const mismatches = (Object.keys(expected) as (keyof Expected)[]).filter((k) => expected[k] !== got[k]);
  if (p.report.conflicts.length > 0) mismatches.push('conflicts' as keyof Expected);
  const result = {
    cluster: { servers: SERVERS, disks: SERVERS * DISKS_PER_SERVER, racks: RACKS, replicas: K },
    volumes: p.report.volumes, chunks: p.report.chunks,
    staleReplicas: p.report.staleReplicas, rolledBack: got.rolledBack, toFree: got.toFree, lostReplicas: got.lostReplicas, drainsDone: got.drainsDone,
    withAccess: got.withAccess, dirty: got.dirty, jobs: got.jobs, adminDisks: got.adminDisks, withCreated: got.withCreated,
    synthesizeMs: Math.round(synthMs),
    planMs: runs.map((x) => Math.round(x)), medianMs: Math.round(median),
    targetMs: TARGET_MS, limitMs: LIMIT_MS,
    checks: mismatches.length === 0 ? 'ok' : { expected, got, conflicts: p.report.conflicts.slice(0, 5) },
  };
  if (mismatches.length > 0) throw Object.assign(new Error(`rebuild plan differs from the synthesized cluster: ${mismatches.join(', ')}`), { result });
  if (median > LIMIT_MS) throw Object.assign(new Error(`planRebuild took ${Math.round(median)} ms (median of 3), above the ${LIMIT_MS} ms limit`), { result });
  return result;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  try {
    const r = runManagerRebuildBench() as { volumes: number; chunks: number; medianMs: number };
    console.log(JSON.stringify(r, null, 2));
    console.log(`planRebuild: ${r.volumes} volumes, ${r.chunks} chunks in ${r.medianMs} ms (median of 3)`);
  } catch (err) {
    const e = err as Error & { result?: object };
    if (e.result) console.error(JSON.stringify(e.result, null, 2));
    console.error(`FAIL: ${e.message}`);
    process.exit(1);
  }
}
