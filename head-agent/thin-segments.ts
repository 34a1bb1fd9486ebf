import {
  CapacityError, InvalidArgumentError, IoError, NotFoundError, StaleEpochError, TimeoutError, TransportError, VskyError, errorMessage,
} from '../shared/errors.js';
import { call, type ManagerClient } from '../shared/grpc.js';
import { moduleLogger } from '../shared/logger.js';
import type { VolumeMap__Output } from '../proto/generated/vsky/common/VolumeMap.js';
import type { LinearVolume, SegmentAllocator } from './engine/linear-volume.js';

// Thin volumes on the head (docs/thin-provisioning.md): the first write to an
// unallocated segment asks the manager for its chunks (AllocateSegment) and
// applies the answer (new replicas fenced at the volume's epoch) before the
// write goes on. While the manager cannot be reached the request is retried
// until --segment-allocate-timeout, then the write fails with ENOSPC (NBD
// ENOSPC; SCSI DATA PROTECT, SPACE ALLOCATION FAILED WRITE PROTECT): never
// written anywhere, so nothing is corrupted, and a later write succeeds once
// the manager answers. A full pool is ENOSPC at once. A manager that answers
// but could not allocate for another reason (a node that did not answer it,
// say) is asked again for up to ANSWERED_WAIT_MS: ENOSPC is never its answer;
// past that the write fails with EIO. Writes to allocated segments never come here.

const log = moduleLogger('head-thin');

export const DEFAULT_SEGMENT_ALLOCATE_TIMEOUT_MS = 10_000;
/** How long a first write waits while the manager answers with a passing failure (not a full pool). */
export const ANSWERED_WAIT_MS = 30_000;
/** FreeSegment is best effort: the discard already succeeded, the chunks just stay. */
const FREE_TIMEOUT_MS = 5_000;
/** How long an unanswered FreeSegment is asked again (the segment's I/O waits meanwhile). */
const FREE_RETRY_MS = 30_000;

export interface ThinAllocatorOptions {
  headId: string;
  manager: () => ManagerClient | undefined;
  /** How long a first write waits for its segment's chunks (default 10 s). */
  timeoutMs?: number;
  /** Applies the manager's answer for one segment (Attachments.applySegment). */
  apply: (map: VolumeMap__Output, epoch: number, segment: number) => Promise<void>;
}

export function thinAllocator(opts: ThinAllocatorOptions): SegmentAllocator {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_SEGMENT_ALLOCATE_TIMEOUT_MS;
  return {
    async allocate(volume: LinearVolume, segment: number): Promise<void> {
      const started = Date.now();
      let deadline = started + timeoutMs;
      let last: unknown;
      for (let attempt = 1; ; attempt++) {
        const left = deadline - Date.now();
        if (left <= 0) throw allocateFailed(volume.name, segment, Date.now() - started, timeoutMs, last);
        const client = opts.manager();
        try {
          if (client === undefined) throw new Error('this head has no manager link yet');
          const reply = await call(client, 'AllocateSegment', { volume: volume.name, segment, epoch: volume.epoch, headId: opts.headId }, left);
          await opts.apply(reply.map!, reply.epoch, segment);
          log.debug({ volume: volume.name, segment, ms: Date.now() - started, attempt }, 'segment allocated');
          return;
        } catch (err) {
          // A full pool, a lost lease or a bad request will not change by retrying.
          if (err instanceof CapacityError || err instanceof StaleEpochError || err instanceof InvalidArgumentError || err instanceof NotFoundError) {
            log.warn({ volume: volume.name, segment, err: errorMessage(err) }, 'segment allocation refused');
            throw err;
          }
          last = err;
          if (managerAnswered(err)) deadline = Math.max(deadline, started + ANSWERED_WAIT_MS);
          await new Promise((r) => setTimeout(r, Math.min(100 * attempt, 500, Math.max(0, deadline - Date.now()))));
        }
      }
    },

    // A reply lost after the manager freed the segment would leave this head
    // writing to chunks that are gone: an unanswered call (timeout) is asked
    // again (FreeSegment is idempotent) until it is answered, for a bounded
    // time while the segment's I/O waits. A call that never reached the
    // manager (unreachable) or that it refused leaves the segment allocated.
    async free(volume: LinearVolume, segment: number): Promise<void> {
      const deadline = Date.now() + FREE_RETRY_MS;
      for (let attempt = 1; ; attempt++) {
        const client = opts.manager();
        if (client === undefined) return;
        try {
          const reply = await call(client, 'FreeSegment', { volume: volume.name, segment, epoch: volume.epoch, headId: opts.headId }, FREE_TIMEOUT_MS);
          await opts.apply(reply.map!, reply.epoch, segment);
          log.debug({ volume: volume.name, segment, attempt }, 'segment freed');
          return;
        } catch (err) {
          if (err instanceof TimeoutError && Date.now() < deadline) continue;
          (err instanceof TimeoutError ? log.error : log.info).call(log, { volume: volume.name, segment, err: errorMessage(err) },
            'segment discarded but not freed (it keeps its chunks; they read as zeros)');
          return;
        }
      }
    },
  };
}

/** The manager answered (it is up) with a failure that may pass; not a transport failure or a timeout. */
function managerAnswered(err: unknown): boolean {
  return err instanceof VskyError && !(err instanceof TransportError) && !(err instanceof TimeoutError);
}

/**
 * The error a first write gets when its segment got no chunks in time: EIO when the manager
 * answered (the pool has room; something else failed), ENOSPC when it did not answer at all
 * (documented: QEMU pauses the VM, and the write succeeds once the manager is back).
 */
function allocateFailed(volume: string, segment: number, ms: number, timeoutMs: number, last: unknown): VskyError {
  if (managerAnswered(last)) {
    log.warn({ volume, segment, ms, err: errorMessage(last) }, 'segment allocation kept failing: the write fails with EIO');
    return new IoError(`volume ${volume}: no chunks for segment ${segment} within ${ms} ms (the manager answered: ${errorMessage(last)}); `
      + 'the write failed and changed nothing', { volume, segment });
  }
  log.warn({ volume, segment, ms, err: errorMessage(last) }, 'segment allocation timed out: the write fails with ENOSPC');
  return new CapacityError(`volume ${volume}: no chunks for segment ${segment} within ${timeoutMs} ms (the manager did not answer: ${errorMessage(last)}); `
    + 'the write failed with ENOSPC and changed nothing; it succeeds once the manager is back', { volume, segment });
}
