import { MiB } from '../../shared/constants.js';
import { IoError, errorMessage } from '../../shared/errors.js';
import type { Logger } from '../../shared/logger.js';
import { orInto, setRuns } from '../../shared/region-bitmap.js';
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
// (FUA), then clear the bits. Afterwards two reads of one block return the
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
  const others = writable.filter((r) => r !== source);
  for (const [first, last] of pieces) {
    const off = first * regionSize;
    const len = Math.min((last + 1) * regionSize, chunkSize) - off;
    const data = await readAny(inSync, off, len);
    const writes = await Promise.allSettled(others.map((r) => r.write(opts.epoch, off, data, true)));
    const failed = writes.findIndex((w) => w.status === 'rejected');
    if (failed >= 0) {
      // A replica that cannot be made equal must not serve reads: fail the attach.
      const reason = (writes[failed] as PromiseRejectedResult).reason;
      throw new IoError(`reconciling segment ${mirror.index} of volume ${mirror.volumeName}: write to ${others[failed]!.describe()} failed: ${errorMessage(reason)}`, {
        volume: mirror.volumeName, segment: mirror.index,
      }, { cause: reason });
    }
    result.regions += last - first + 1;
    result.bytes += len;
  }
  // The copies were FUA: durable. Clearing is best effort (a bit left set costs a copy next time).
  await Promise.allSettled(writable.flatMap((r) => pieces.map(([first, last]) => {
    const off = first * regionSize;
    return r.clearDirty(opts.epoch, off, Math.min((last + 1) * regionSize, chunkSize) - off);
  })));
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
