import { DATA_TIMEOUT_MS, FLUSH_TIMEOUT_MS, MAX_INFLIGHT_PER_CONNECTION } from '../../constants.js';
import { defaultDataSecurity, type DataSecurity } from '../auth/data-security.js';

// The options of a NodeConnection, and their defaults, resolved once when the
// connection is made.

export interface NodeConnectionOptions {
  /**
   * Liveness bound: with requests outstanding, this long without a byte from
   * the node (and a PING probe unanswered) fails the connection. Also the
   * connect timeout. Default DATA_TIMEOUT_MS (2 s).
   */
  dataTimeoutMs?: number;
  /**
   * One request unanswered this long fails the connection, even while the
   * node answers others (FLUSH/FENCE/FUA writes fdatasync). Default
   * FLUSH_TIMEOUT_MS (30 s).
   */
  flushTimeoutMs?: number;
  /**
   * Requests sent and awaiting a reply, the liveness probe included (one slot
   * is kept for it when this is above 1); beyond this they wait in the queue.
   */
  maxInflight?: number;
  /** Requests waiting to be sent; beyond this submit() fails the request. */
  maxQueued?: number;
  backoffInitialMs?: number;
  backoffMaxMs?: number;
  /** Socket write buffer high-water mark: write() returning false pauses sending until 'drain'. */
  writeHighWaterMark?: number;
  /**
   * Data key and TLS of the connection (default: the process's, set by the
   * daemon from its flags: data-security.ts setDefaultDataSecurity).
   */
  security?: DataSecurity;
}

const DEFAULTS: Omit<Required<NodeConnectionOptions>, 'security'> = {
  dataTimeoutMs: DATA_TIMEOUT_MS,
  flushTimeoutMs: FLUSH_TIMEOUT_MS,
  maxInflight: MAX_INFLIGHT_PER_CONNECTION,
  maxQueued: 16 * MAX_INFLIGHT_PER_CONNECTION,
  backoffInitialMs: 100,
  backoffMaxMs: 5_000,
  // Large enough that a pipeline of 64 KiB writes does not stall on every
  // write (the default 16 KiB would make each 64 KiB write wait for 'drain').
  writeHighWaterMark: 4 * 1024 * 1024,
};

/** The options given, an option left undefined taking its default. */
export function resolveOptions(opts: NodeConnectionOptions): Required<NodeConnectionOptions> {
  return { ...DEFAULTS, security: defaultDataSecurity(), ...stripUndefined(opts) };
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  const out: Partial<T> = {};
  for (const [k, v] of Object.entries(o)) if (v !== undefined) (out as Record<string, unknown>)[k] = v;
  return out;
}
