import { randomUUID } from 'node:crypto';
import { IoError, StaleEpochError, TimeoutError, TransportError, errorMessage } from '../shared/errors.js';
import { call, type ManagerClient } from '../shared/grpc.js';
import { moduleLogger } from '../shared/logger.js';
import type { LeaseRequester, LinearVolume } from './engine/linear-volume.js';

// How a standby volume gets the write lease: the first read or write on it
// asks the manager (AcquireLease). The manager asks the holder to drain, flush
// and release (or, if the holder does not answer, waits for its lease to
// expire), then grants a new epoch by calling this head's Attach, which fences
// every replica node with it before the reply comes back here. So when this
// resolves, the volume is held here and the waiting request goes on.
//
// One request id per acquisition: a retry after a lost reply is the same
// request at the manager (idempotent), not a second hand-off.

const log = moduleLogger('head-lease');

export interface LeaseRequesterOptions {
  headId: string;
  manager: () => ManagerClient | undefined;
  /** Upper bound of one acquisition, hand-off and expiry wait included (default 30 s). */
  timeoutMs?: number;
}

export const DEFAULT_LEASE_ACQUIRE_TIMEOUT_MS = 30_000;

export function leaseRequester(opts: LeaseRequesterOptions): LeaseRequester {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_LEASE_ACQUIRE_TIMEOUT_MS;
  return async (volume: LinearVolume): Promise<void> => {
    const requestId = randomUUID();
    const started = Date.now();
    const deadline = started + timeoutMs;
    for (let attempt = 1; ; attempt++) {
      const client = opts.manager();
      if (client === undefined) throw new IoError(`volume ${volume.name}: this head has no manager to ask for the write lease`, { volume: volume.name });
      try {
        const reply = await call(client, 'AcquireLease', { name: volume.name, headId: opts.headId, requestId }, Math.max(1000, deadline - Date.now()));
        // Not held here any more is no error: the lease moved on (the other head's I/O) after the
        // requests waiting for it went on at the grant; newer ones ask again (LinearVolume.afterLease).
        log.info({ volume: volume.name, epoch: reply.epoch, clean: reply.clean, managerMs: reply.waitMs, ms: Date.now() - started, attempt },
          reply.clean ? 'write lease acquired (hand-off)' : 'write lease acquired (taken over after the holder\'s lease expired)');
        return;
      } catch (err) {
        const transient = err instanceof TransportError && Date.now() < deadline;
        if (transient) {
          await new Promise((r) => setTimeout(r, Math.min(200 * attempt, 1000)));
          continue;
        }
        log.warn({ volume: volume.name, err: errorMessage(err), ms: Date.now() - started }, 'could not get the write lease');
        if (err instanceof StaleEpochError || err instanceof IoError || err instanceof TimeoutError) throw err;
        throw new IoError(`volume ${volume.name}: cannot get the write lease: ${errorMessage(err)}`, { volume: volume.name }, { cause: err });
      }
    }
  };
}
