import { MiB } from '../../shared/constants.js';
import { IoError, errorMessage } from '../../shared/errors.js';
import type { Logger } from '../../shared/logger.js';
import { orInto, setRuns, testBit } from '../../shared/region-bitmap.js';
import type { ChunkRegions, NodeControlClients } from './node-control-clients.js';
import type { Mirror } from './mirror.js';
import type { Replica } from './replica.js';

// Crash reconciliation (docs/design.md rule 4), run by attach after fencing and
// BEFORE the volume is registered for I/O. A head that died may have left
// writes half-done: on some replicas, not on others. Every such region has
// its write-intent bit set on at least one in-sync replica (the MARK went to
// all writable replicas and succeeded on at least one before any write), so:
// union the dirty bitmaps of a segment's in-sync replicas, and for each dirty
// region copy one in-sync replica's bytes to every other writable replica
// (FUA) where that replica wrote the region, and make it unwritten on the
// others where it did not (a clone's unwritten region reads its backing:
// zeros copied as data would hide it), then clear the bits. Afterwards two reads of one block return the
// same data whichever replica serves them.

export interface ReconcileOptions {
  clients: NodeControlClients;
  epoch: number;
  log: Logger;
  /** Largest piece copied at once. */
  pieceBytes?: number;
  /** Segments reconciled at once. */
  parallel?: number;
}

export interface ReconcileResult {
  /** Segments that had dirty regions. */
  segments: number;
  regions: number;
  bytes: number;
}

export async function reconcileVolume(chunkSize: number, mirrors: readonly Mirror[], opts: ReconcileOptions): Promise<ReconcileResult> {
  const result: ReconcileResult = { segments: 0, regions: 0, bytes: 0 };
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < mirrors.length) {
      const m = mirrors[next++]!;
      await reconcileSegment(chunkSize, m, opts, result);
    }
  };
  await Promise.all(Array.from({ length: Math.min(opts.parallel ?? 8, mirrors.length) }, worker));
  if (result.segments > 0) opts.log.info({ volume: mirrors[0]?.volumeName, ...result }, 'reconciled regions left dirty by the previous holder');
  return result;
}

async function reconcileSegment(chunkSize: number, mirror: Mirror, opts: ReconcileOptions, result: ReconcileResult): Promise<void> {
  const inSync = mirror.replicas.filter((r) => r.readable);
  const writable = mirror.replicas.filter((r) => r.writable);
  if (writable.length < 2) return; // one copy: nothing to converge
  if (inSync.some((r) => r.controlAddress === '')) {
    opts.log.warn({ volume: mirror.volumeName, segment: mirror.index },
      'cannot reconcile write-intent regions: the map gives no control address for an in-sync replica');
    return;
  }
  const maps: ChunkRegions[] = await Promise.all(inSync.map((r) => opts.clients.regions(r.controlAddress, r, chunkSize).catch((err: unknown) => {
    throw new IoError(`cannot read the write-intent bitmap of ${r.describe()}: ${errorMessage(err)}`, {
      volume: mirror.volumeName, segment: mirror.index, slot: r.slot,
    }, { cause: err });
  })));
  const { regionSize, regionCount } = maps[0]!;
  if (maps.some((m) => m.regionSize !== regionSize)) {
    throw new IoError(`segment ${mirror.index} of volume ${mirror.volumeName}: replicas disagree on the region size`, { volume: mirror.volumeName });
  }
  const dirty = new Uint8Array(maps[0]!.dirty.length);
  for (const m of maps) orInto(dirty, m.dirty);
  const pieceRegions = Math.max(1, Math.floor((opts.pieceBytes ?? MiB) / regionSize));
  const pieces = setRuns(dirty, 0, regionCount, pieceRegions);
  if (pieces.length === 0) return;
  result.segments++;
  const source = inSync[0]!;
  const written = maps[0]!.written; // the source's: regions it never wrote must stay unwritten elsewhere too
  const others = writable.filter((r) => r !== source);
  for (const [first, last] of pieces) {
    for (const [from, to, isWritten] of bitRuns(written, first, last)) {
      const off = from * regionSize;
      const len = Math.min((to + 1) * regionSize, chunkSize) - off;
      await converge(mirror, others, opts.epoch, off, len, isWritten ? await readAny(inSync, off, len) : undefined);
    }
    result.regions += last - first + 1;
    result.bytes += Math.min((last + 1) * regionSize, chunkSize) - first * regionSize;
  }
  // The copies were FUA: durable. Clearing is best effort (a bit left set costs a copy next time).
  await Promise.allSettled(writable.flatMap((r) => pieces.map(([first, last]) => {
    const off = first * regionSize;
    return r.clearDirty(opts.epoch, off, Math.min((last + 1) * regionSize, chunkSize) - off);
  })));
}

/**
 * Makes every other writable replica hold the source's state of one run of
 * regions (FUA): its bytes where the source wrote them; where it did not, the
 * regions unwritten (WRITE_ZEROES of whole regions clears their written bits
 * on the node), so that a clone's unwritten region keeps reading its backing
 * and a thin one keeps reading zeros, never zeros written as data.
 */
async function converge(mirror: Mirror, others: readonly Replica[], epoch: number, off: number, len: number, data: Buffer | undefined): Promise<void> {
  const writes = await Promise.allSettled(others.map((r) => (data !== undefined ? r.write(epoch, off, data, true) : r.writeZeroes(epoch, off, len, true))));
  const failed = writes.findIndex((w) => w.status === 'rejected');
  if (failed < 0) return;
  // A replica that cannot be made equal must not serve reads: fail the attach.
  const reason = (writes[failed] as PromiseRejectedResult).reason;
  throw new IoError(`reconciling segment ${mirror.index} of volume ${mirror.volumeName}: ${data !== undefined ? 'write' : 'unwrite'} to ${others[failed]!.describe()} failed: ${errorMessage(reason)}`, {
    volume: mirror.volumeName, segment: mirror.index,
  }, { cause: reason });
}

/** Runs [from, to, bit] of equal bits of `map` over regions first..last. */
function bitRuns(map: Uint8Array, first: number, last: number): [number, number, boolean][] {
  const runs: [number, number, boolean][] = [];
  for (let r = first; r <= last;) {
    const bit = testBit(map, r);
    let to = r;
    while (to + 1 <= last && testBit(map, to + 1) === bit) to++;
    runs.push([r, to, bit]);
    r = to + 1;
  }
  return runs;
}

/** Reads from the first in-sync replica that answers. */
async function readAny(replicas: readonly Replica[], off: number, len: number): Promise<Buffer> {
  const buf = Buffer.allocUnsafe(len);
  let lastErr: unknown;
  for (const r of replicas) {
    try {
      await r.read(off, buf);
      return buf;
    } catch (err) {
      lastErr = err;
    }
  }
  throw new IoError(`reconcile: no in-sync replica could be read at ${off} (+${len}): ${errorMessage(lastErr)}`, {}, { cause: lastErr });
}
