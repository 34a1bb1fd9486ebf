import { ProtocolError } from '../../errors.js';
import type { RequestCallback, RequestTarget } from './data-request.js';

// Whether a storage node on a data connection is alive: the stall decisions of
// a NodeConnection, as a state machine over the times it is given
// (performance.now() readings). It has no timer, no socket and no requests of
// its own: the connection tells it what happened (bytes received, a busy
// period started, a probe sent or ended, a timer tick) and asks it what to do.
//
// "Hung" is told from "busy" by progress, not by request age. A busy node
// keeps sending replies; a hung one (SIGSTOPped, frozen VM, dead link) sends
// nothing. So:
//  - liveness (dataTimeoutMs, default 2 s): while requests are outstanding,
//    every byte received is progress. After dataTimeoutMs/4 of silence the
//    head sends a PING probe (at most one in flight; the node answers PING
//    from its event loop, whatever its disks are doing), so a node whose
//    outstanding requests are all slow (a long FLUSH, FUA writes, writes
//    queued behind a sync) still shows it is alive. The connection fails once
//    nothing at all came for dataTimeoutMs and the probe was unanswered for at
//    least dataTimeoutMs/2. The clock starts when the first request of a busy
//    period is written to the socket, never while requests wait in the
//    connection's queue (back-pressure).
//  - per request (flushTimeoutMs, default 30 s): one request unanswered this
//    long fails the connection even if the node answers everything else (a
//    stuck disk on a live node). It is long because a FLUSH, a FENCE or a FUA
//    write fdatasyncs, which on a busy real disk can take seconds, and other
//    requests can queue behind them. It is counted in timer ticks (a request
//    records the tick it was sent in), so a send costs no clock reading.

/** The stall timer ticks this many times per data timeout. */
const TICKS_PER_TIMEOUT = 8;

/** What a timer tick calls for while regular requests are outstanding. */
export type LivenessAction = 'wait' | 'probe' | 'stalled';

/** What the liveness probe (a PING) is addressed to: nothing (the node looks at no field of a PING; all zeros). */
export const PROBE_TARGET: RequestTarget = {
  volumeId: 0,
  segment: 0,
  slot: 0,
  replyError: (_opcode, status, message) => new ProtocolError(`PING refused with status ${status}: ${message}`),
};

/** The probe's callback is the Liveness itself: requestDone() is the probe answered, or failed with the connection. */
export class Liveness implements RequestCallback {
  readonly dataTimeoutMs: number;
  readonly flushTimeoutMs: number;
  /** The stall timer's period. */
  readonly tickMs: number;
  /** Timer ticks after which one unanswered request fails the connection. */
  readonly requestLimitTicks: number;
  private ticks = 0;
  /** When bytes were last received (or the connection opened). */
  private lastHeardAt = 0;
  /** When the first regular request of the current busy period was sent. */
  private busySince = 0;
  private probeInFlight = false;
  private probeSentAt = 0;

  constructor(dataTimeoutMs: number, flushTimeoutMs: number) {
    this.dataTimeoutMs = dataTimeoutMs;
    this.flushTimeoutMs = flushTimeoutMs;
    this.tickMs = Math.max(5, Math.ceil(Math.min(dataTimeoutMs, flushTimeoutMs) / TICKS_PER_TIMEOUT));
    // Sent somewhere within a tick: one more tick guarantees the full bound.
    this.requestLimitTicks = Math.ceil(flushTimeoutMs / this.tickMs) + 1;
  }

  /** Timer ticks so far: what a request records when it is sent. */
  get tick(): number {
    return this.ticks;
  }

  /** A liveness probe (PING) is in flight. */
  get probing(): boolean {
    return this.probeInFlight;
  }

  /** One timer tick passed. */
  nextTick(): void {
    this.ticks++;
  }

  /** Bytes came from the node (or the connection just opened): progress. */
  heard(now: number): void {
    this.lastHeardAt = now;
  }

  /** The first regular request of a busy period was written: silence counts from now at the earliest. */
  busy(now: number): void {
    this.busySince = now;
  }

  probeSent(now: number): void {
    this.probeInFlight = true;
    this.probeSentAt = now;
  }

  /** The probe was answered, or failed with the connection (its RequestCallback). */
  requestDone(): void {
    this.probeInFlight = false;
  }

  /** A request sent at tick `sentTick` has waited past the per-request limit. */
  overdue(sentTick: number): boolean {
    return this.ticks - sentTick >= this.requestLimitTicks;
  }

  /** How long the node has sent nothing while regular requests were waiting for it. */
  silentMs(now: number): number {
    return now - Math.max(this.lastHeardAt, this.busySince);
  }

  /** How long the probe in flight has gone unanswered. */
  probeWaitMs(now: number): number {
    return now - this.probeSentAt;
  }

  /**
   * What a tick calls for, with regular requests outstanding: a probe after
   * dataTimeoutMs/4 of silence (when none is in flight), 'stalled' once
   * stalled(now) holds, else nothing yet.
   */
  check(now: number): LivenessAction {
    if (this.silentMs(now) < this.dataTimeoutMs / 4) return 'wait';
    if (!this.probeInFlight) return 'probe';
    return this.stalled(now) ? 'stalled' : 'wait';
  }

  /** Nothing heard for dataTimeoutMs (regular requests outstanding), and the probe had time to come back. */
  stalled(now: number): boolean {
    return this.probeInFlight && this.silentMs(now) >= this.dataTimeoutMs && now - this.probeSentAt >= this.dataTimeoutMs / 2;
  }
}
