import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { performance } from 'node:perf_hooks';
import { GiB } from '../../shared/constants.js';
import { startManager } from '../../manager/daemon.js';
import { FakePeers } from '../harness/manager-fake-peers.js';
import { PlacementModel } from '../../manager/placement.js';
import { ManagerStore } from '../../manager/store.js';
import { buildChunkMap, type DiskRecord, type ServerRecord, type VolumeRecord } from '../../manager/types.js';

// Manager scale figures (not a timed test):
//  - placing a 1 TiB volume (1 GiB chunks, K=3) over 1,000 disks on 200
//    servers: time, and how even the disks are, on an empty cluster and while
//    filling it with such volumes to 90%;
//  - starting a manager whose LevelDB holds 10,000 volumes.
// Run: npm run build && node dist/test/bench/manager-scale.js

const SERVERS = 200;
const DISKS_PER_SERVER = 5;
const CHUNKS_PER_DISK = 1024;          // 1 TiB disks of 1 GiB chunks
const TIB_SEGMENTS = 1024;             // 1 TiB volume of 1 GiB chunks
const K = 3;

function syntheticModel(racks: number): PlacementModel {
  const m = new PlacementModel();
  for (let s = 0; s < SERVERS; s++) {
    m.setServer(`s${s}`, { rack: `r${s % racks}` }, true);
    for (let d = 0; d < DISKS_PER_SERVER; d++) m.setDisk(`s${s}d${d}`, `s${s}`, CHUNKS_PER_DISK, true);
  }
  return m;
}

/** Max distance of a disk's fill from the mean fill, in % of a disk's capacity and in % of the mean. */
function evenness(m: PlacementModel): { minChunks: number; maxChunks: number; maxDevPctOfCapacity: number; maxDevPctOfMean: number; meanFillPct: number } {
  const used: number[] = [];
  for (let s = 0; s < SERVERS; s++) for (let d = 0; d < DISKS_PER_SERVER; d++) used.push(m.diskUsage(`s${s}d${d}`)!.used);
  const mean = used.reduce((a, b) => a + b, 0) / used.length;
  const dev = Math.max(...used.map((u) => Math.abs(u - mean)));
  return {
    minChunks: Math.min(...used), maxChunks: Math.max(...used),
    maxDevPctOfCapacity: round((100 * dev) / CHUNKS_PER_DISK), maxDevPctOfMean: round((100 * dev) / mean),
    meanFillPct: round((100 * mean) / CHUNKS_PER_DISK),
  };
}

const round = (x: number) => Math.round(x * 1000) / 1000;
const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * p))]!;

function benchPlacement() {
  // One 1 TiB volume on an empty cluster, best of 5 fresh models (first runs warm the JIT).
  const times: number[] = [];
  let single: ReturnType<typeof evenness> | undefined;
  for (let i = 0; i < 5; i++) {
    const m = syntheticModel(10);
    const t0 = performance.now();
    m.place({ volumeId: 1, segmentCount: TIB_SEGMENTS, replicas: K, spreadLabel: 'rack' });
    times.push(performance.now() - t0);
    single = evenness(m);
  }
  // Fill to 90% with 1 TiB volumes, spread over 10 racks.
  const m = syntheticModel(10);
  const fillTimes: number[] = [];
  const target = 0.9 * SERVERS * DISKS_PER_SERVER * CHUNKS_PER_DISK;
  let id = 1;
  while (m.totals().usedChunks + TIB_SEGMENTS * K <= target) {
    const t0 = performance.now();
    m.place({ volumeId: id++, segmentCount: TIB_SEGMENTS, replicas: K, spreadLabel: 'rack' });
    fillTimes.push(performance.now() - t0);
  }
  return {
    oneTiBVolume: { firstMs: round(times[0]!), bestMs: round(Math.min(...times)), ...single! },
    fillTo90Pct: { volumes: id - 1, p50Ms: round(pct(fillTimes, 0.5)), maxMs: round(Math.max(...fillTimes)), ...evenness(m) },
  };
}

async function benchStartup(volumes = 10_000) {
  const dir = mkdtempSync(join(tmpdir(), 'vsky-mgr-bench-'));
  try {
    const chunkSize = GiB;
    const peers = new FakePeers();
    const servers: ServerRecord[] = [];
    const disks: DiskRecord[] = [];
    const model = new PlacementModel();
    for (let s = 0; s < SERVERS; s++) {
      const node = peers.addNode(`server-${s}`, { host: `10.${s >> 8}.${s & 255}.1` });
      servers.push({
        id: node.info.serverId, name: node.info.name, dataAddress: node.info.dataAddress, controlAddress: node.info.controlAddress,
        nodeLabels: { rack: `r${s % 10}` }, adminLabels: {}, state: 'active', stateReason: 'bench', registeredMs: 0, lastHeartbeatMs: 0,
      });
      model.setServer(node.info.serverId, { rack: `r${s % 10}` }, true);
      for (let d = 0; d < DISKS_PER_SERVER; d++) {
        const id = `${node.info.serverId}-disk-${d}-0000-000000000000`;
        disks.push({ id, serverId: node.info.serverId, path: `/dev/sd${d}`, chunkSize, chunkCount: CHUNKS_PER_DISK, state: 'active', stateReason: '', addedMs: 0 });
        model.setDisk(id, node.info.serverId, CHUNKS_PER_DISK, true);
      }
    }
    // 10,000 volumes of 10 GiB, K=3: 300,000 chunks (29% of the pool), placed for real.
    const store = await ManagerStore.open(dir);
    const t0 = performance.now();
    let batch = store.batch();
    for (const r of servers) batch.putServer(r);
    for (const r of disks) batch.putDisk(r);
    for (let id = 1; id <= volumes; id++) {
      const segments = 10;
      const plan = model.place({ volumeId: id, segmentCount: segments, replicas: K, spreadLabel: 'rack' });
      const v: VolumeRecord = {
        id, name: `vm-disk-${id}`, size: segments * chunkSize, replicas: K, chunkSize, segmentCount: segments,
        generation: 1, epoch: 0, attachedHead: '', nbdUri: '', spreadLabel: 'rack', createdMs: Date.now(),
      };
      batch.putVolume(v).putChunkMap(buildChunkMap(id, K, segments, plan.chunks));
      if (id % 500 === 0) {
        await store.write(batch);
        batch = store.batch();
      }
    }
    batch.putNextVolumeId(volumes + 1);
    await store.write(batch);
    await store.close();
    const writeMs = performance.now() - t0;

    const starts: number[] = [];
    for (let i = 0; i < 3; i++) {
      const s0 = performance.now();
      const mgr = await startManager({ dataDir: dir, listen: '127.0.0.1:0', chunkSize, heartbeatTimeoutMs: 60_000 }, { peers });
      starts.push(performance.now() - s0);
      await mgr.close();
    }
    return { volumes, chunks: volumes * 10 * K, writeMs: round(writeMs), startToReadyMs: starts.map(round), bestStartMs: round(Math.min(...starts)) };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export async function runManagerScaleBench(): Promise<object> {
  const placement = benchPlacement();
  const startup = await benchStartup();
  return {
    cluster: { servers: SERVERS, disks: SERVERS * DISKS_PER_SERVER, chunksPerDisk: CHUNKS_PER_DISK, chunk: '1 GiB', replicas: K, spreadLabel: 'rack (10 racks)' },
    placement,
    startup,
    targets: { placeOneTiBMs: 200, maxDevPctOfCapacity: 5, startWith10kVolumesMs: 2000 },
  };
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  console.log(JSON.stringify(await runManagerScaleBench(), null, 2));
}
