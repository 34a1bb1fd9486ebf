import { errorMessage } from '../../shared/errors.js';
import { call, storageNodeClient } from '../../shared/grpc.js';
import type { Logger } from '../../shared/logger.js';
import type { ReplicaLocation__Output } from '../../proto/generated/vsky/common/ReplicaLocation.js';
import { testBit } from '../../shared/region-bitmap.js';

// What a resync copy has to do, region by region (docs/design.md rule 8: regions
// never written are not copied). The sources' written bitmaps come from their
// nodes' GetChunkRegions (ReplicaLocation.control_address); the plan is then a
// list of runs of consecutive regions:
//   copy  written on some source: read from a source, write here;
//   zero  written here but on no source (e.g. discarded while this replica was
//         stale): cleared here, so it reads as zeros like on the sources;
//   probe no source bitmap could be had (no control address, or every call
//         failed): read everything and keep what is not all zeros (slower).
// In-sync sources hold the same bytes, so their bitmaps are OR-ed: a region
// written on one and not on another reads as zeros on both.

export type RunKind = 'copy' | 'zero' | 'probe';

export interface Run {
  kind: RunKind;
  /** First region of the run. */
  first: number;
  /** Regions in the run. */
  count: number;
}

export interface SourceMaps {
  /** OR of the sources' written bitmaps; undefined when none could be fetched (probe mode). */
  written: Uint8Array | undefined;
  /** OR of the sources' dirty bitmaps (carried over to the target: the next holder reconciles those regions). */
  dirty: Uint8Array;
  /** Sources whose bitmap was fetched. */
  answered: number;
}

/**
 * Splits [startRegion, regions) into runs of at most `maxRun` regions of one
 * kind, in region order, leaving out regions with nothing to do.
 */
export function planRuns(regions: number, startRegion: number, maxRun: number, sourceWritten: Uint8Array | undefined,
  targetWritten: Uint8Array): Run[] {
  const kindOf = (r: number): RunKind | undefined => {
    if (sourceWritten === undefined) return 'probe';
    if (testBit(sourceWritten, r)) return 'copy';
    return testBit(targetWritten, r) ? 'zero' : undefined;
  };
  const runs: Run[] = [];
  let current: Run | undefined;
  for (let r = startRegion; r < regions; r++) {
    const kind = kindOf(r);
    if (kind === undefined) {
      current = undefined;
      continue;
    }
    if (current !== undefined && current.kind === kind && current.count < maxRun) {
      current.count++;
    } else {
      current = { kind, first: r, count: 1 };
      runs.push(current);
    }
  }
  return runs;
}

/** Asks every source's node for its bitmaps (in parallel); sources that fail are left out. */
export async function fetchSourceMaps(volumeId: number, segment: number, regionSize: number, regions: number,
  sources: ReplicaLocation__Output[], log: Logger, timeoutMs = 10_000): Promise<SourceMaps> {
  const bytes = regions / 8;
  const written = new Uint8Array(bytes);
  const dirty = new Uint8Array(bytes);
  let answered = 0;
  await Promise.all(sources.map(async (src) => {
    if (src.controlAddress === '') {
      log.warn({ source: src.dataAddress, slot: src.slot }, 'source has no control address: cannot fetch its written regions');
      return;
    }
    const client = storageNodeClient(src.controlAddress);
    try {
      const reply = await call(client, 'GetChunkRegions', { volumeId, segment, slot: src.slot }, timeoutMs);
      if (reply.regionSize !== regionSize || reply.written.length !== bytes || reply.dirty.length !== bytes) {
        log.warn({ source: src.controlAddress, regionSize: reply.regionSize, expected: regionSize }, 'source chunk has another geometry: ignoring its bitmap');
        return;
      }
      for (let i = 0; i < bytes; i++) {
        written[i]! |= reply.written[i]!;
        dirty[i]! |= reply.dirty[i]!;
      }
      answered++;
    } catch (err) {
      log.warn({ source: src.controlAddress, err: errorMessage(err) }, 'GetChunkRegions on a source failed');
    } finally {
      client.close();
    }
  }));
  return { written: answered > 0 ? written : undefined, dirty, answered };
}

const ZEROS = Buffer.alloc(64 * 1024);

export function isAllZero(buf: Buffer): boolean {
  // memcmp against a zero buffer: probe mode looks at every byte of the chunk.
  for (let at = 0; at < buf.length; at += ZEROS.length) {
    const n = Math.min(ZEROS.length, buf.length - at);
    if (!buf.subarray(at, at + n).equals(ZEROS.subarray(0, n))) return false;
  }
  return true;
}

/** Regions in [startRegion, regions) a plan copies or probes (for tests and logs). */
export function regionsToRead(runs: Run[]): number {
  let n = 0;
  for (const r of runs) if (r.kind !== 'zero') n += r.count;
  return n;
}
