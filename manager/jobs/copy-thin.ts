import { errorMessage } from '../../shared/errors.js';
import { moduleLogger } from '../../shared/logger.js';
import { segmentReplicas } from '../chunk-map.js';
import { mapLimit, type PeerClients } from '../node-clients.js';
import type { Registry } from '../registry.js';
import type { VolumeEntry } from '../volumes.js';

// A copy into a thin destination (docs/thin-provisioning.md, "Copies"): before
// the job starts, the destination gets chunks for the segments where the
// source holds written regions, and only those (the job's head cannot ask for
// chunks: it holds no attachment). A segment of the source with no written
// region (an unallocated segment of a thin source, or a never-written one of a
// thick source) stays unallocated in the destination; inside the copied
// segments, the head writes only the source's written regions and zeros
// nothing it need not (head-agent/jobs/copy-job.ts), so they stay thin too.

const log = moduleLogger('copy-thin');

/** Gives a thin volume chunks for these segments now (ThinSegments.allocateFor). */
export type SegmentsAllocator = (volume: string, segments: readonly number[]) => Promise<void>;

/**
 * The segments of `src` that hold written regions: asked of one in-sync
 * replica per allocated segment (GetChunkRegions); a segment whose node does
 * not answer counts as written (the copy then allocates it: never a lost region).
 */
export async function writtenSegments(src: VolumeEntry, registry: Registry, peers: PeerClients): Promise<number[]> {
  const { volume, map } = src;
  const segments = Array.from({ length: map.segmentCount }, (_, s) => s);
  const results = await mapLimit(segments, 8, async (s) => {
    const replicas = segmentReplicas(map, s);
    if (replicas.length === 0) return false; // unallocated (thin): nothing written
    const good = replicas.filter((r) => r.state === 'in_sync' && !r.move);
    for (const r of good) {
      const server = registry.serverOfDisk(r.diskId);
      if (!server) continue;
      try {
        const got = await peers.node.getChunkRegions(server.controlAddress, { volumeId: volume.id, segment: s, slot: r.idSlot });
        return got.written.some((b) => b !== 0);
      } catch (err) {
        log.debug({ volume: volume.name, segment: s, err: errorMessage(err) }, 'GetChunkRegions failed; asking another replica');
      }
    }
    return true;
  });
  return segments.filter((s) => {
    const r = results[s]!;
    return r.status === 'rejected' || r.value;
  });
}
