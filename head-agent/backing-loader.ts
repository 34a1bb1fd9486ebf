import { IoError, errorMessage } from '../shared/errors.js';
import { mapRegionSize, orInto } from '../shared/region-bitmap.js';
import type { VolumeMap__Output } from '../proto/generated/vsky/common/VolumeMap.js';
import type { SegmentMap__Output } from '../proto/generated/vsky/common/SegmentMap.js';
import { Backing, type BackingLevel } from './engine/backing.js';
import { Mirror } from './engine/mirror.js';
import type { NodeControlClients } from './engine/node-control-clients.js';
import type { NodePool } from './engine/node-pool.js';
import { Replica, type ReplicaState } from './engine/replica.js';

// Builds a volume's Backing (head-agent/engine/backing.ts) from the map the
// manager sent: read-only mirrors over every volume of the chain, and the
// written bits of the segments that need them (the volume's own allocated
// segments, and those of chain volumes that have a backing themselves):
// the union over the segment's in-sync replicas (GetChunkRegions). A segment
// whose bits cannot be had from any in-sync replica fails the attach (reading
// it would guess which regions are its own).

const FETCH_PARALLELISM = 32;

export interface BackingLoaderDeps {
  pool: NodePool;
  clients: NodeControlClients;
  maxPiece: number;
}

export async function loadBacking(map: VolumeMap__Output, deps: BackingLoaderDeps): Promise<Backing | undefined> {
  if (!map.backing || map.backing.length === 0) return undefined;
  const levels: BackingLevel[] = [];
  const regionSize = mapRegionSize(map);
  const jobs: (() => Promise<void>)[] = [];
  const own: (Uint8Array | undefined)[] = new Array(map.segments.length).fill(undefined);
  for (const seg of map.segments) {
    if (seg.replicas.length > 0) jobs.push(async () => { own[seg.index] = await writtenOf(map.volumeId, map.name, seg, map.chunkSize, regionSize, deps); });
  }
  for (const b of map.backing) {
    const mirrors: Mirror[] = [];
    const sorted = [...b.segments].sort((x, y) => x.index - y.index);
    for (const seg of sorted) {
      const replicas = [...seg.replicas].sort((x, y) => x.slot - y.slot).map((loc) => new Replica(deps.pool.get(loc.dataAddress), {
        volumeId: b.volumeId, volumeName: b.name, segment: seg.index, slot: loc.slot, state: stateOf(loc.state),
        serverId: loc.serverId, diskId: loc.diskId, chunkIndex: loc.chunkIndex, controlAddress: loc.controlAddress ?? '',
      }));
      mirrors[seg.index] = new Mirror(b.name, seg.index, replicas);
    }
    let written: (Uint8Array | undefined)[] | undefined;
    if (b.backed) {
      const w: (Uint8Array | undefined)[] = [];
      written = w;
      for (const seg of sorted) {
        if (seg.replicas.length > 0) jobs.push(async () => { w[seg.index] = await writtenOf(b.volumeId, b.name, seg, map.chunkSize, regionSize, deps); });
      }
    }
    levels.push({ name: b.name, volumeId: b.volumeId, mirrors, written });
  }
  await runLimited(jobs, FETCH_PARALLELISM);
  return new Backing(map.chunkSize, levels, own, deps.maxPiece, regionSize);
}

/** Union of the written bitmaps of the segment's in-sync replicas; fails if none answers. */
async function writtenOf(volumeId: number, name: string, seg: SegmentMap__Output, chunkSize: number, regionSize: number, deps: BackingLoaderDeps): Promise<Uint8Array> {
  const sources = seg.replicas.filter((r) => stateOf(r.state) === 'in_sync' && r.controlAddress);
  const errors: string[] = [];
  let out: Uint8Array | undefined;
  await Promise.all(sources.map(async (r) => {
    try {
      const regions = await deps.clients.regions(r.controlAddress, { volumeId, segment: seg.index, slot: r.slot }, chunkSize);
      // A bit of another size would be read as the wrong bytes (its backing's data shown or hidden).
      if (regions.regionSize !== regionSize) throw new IoError(`its disk has ${regions.regionSize}-byte regions, the cluster ${regionSize}`);
      if (out === undefined) out = new Uint8Array(regions.written.length);
      orInto(out, regions.written);
    } catch (err) {
      errors.push(`${r.controlAddress}: ${errorMessage(err)}`);
    }
  }));
  if (out === undefined) {
    throw new IoError(`volume ${name} segment ${seg.index}: no in-sync replica gave its written regions (${errors.join('; ') || 'no replica with a control address'}); `
      + 'without them its reads cannot tell its own regions from its backing\'s', { volume: name, segment: seg.index });
  }
  return out;
}

function stateOf(state: string): ReplicaState {
  return state === '' ? 'in_sync' : (state as ReplicaState);
}

async function runLimited(jobs: (() => Promise<void>)[], limit: number): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < jobs.length) await jobs[next++]!();
  };
  await Promise.all(Array.from({ length: Math.min(limit, jobs.length) }, worker));
}
