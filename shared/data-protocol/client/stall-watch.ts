import { TransportError } from '../../errors.js';
import { opcodeName } from '../frame.js';
import type { Liveness } from './liveness.js';
import type { RequestWindow } from './request-window.js';

// The timer side of a NodeConnection's liveness (liveness.ts holds the
// decisions): one interval timer per connection fails a connect that takes
// too long, a request unanswered for flushTimeoutMs, and a node silent for
// dataTimeoutMs while requests are outstanding (probing it with a PING
// first). Before failing a silent node, the check is repeated after the poll
// phase (setImmediate), so replies that arrived while this process itself was
// stalled (GC, CPU starvation) count.

/** What the watch needs of its connection (closures bound once by the connection). */
export interface WatchedConnection {
  readonly address: string;
  /** The connection's state: only 'connecting' and 'open' are watched. */
  state(): string;
  /** performance.now() of the current connect attempt. */
  connectStartedAt(): number;
  /** Requests in flight, not counting the probe. */
  regularInflight(): number;
  fail(err: Error): void;
  /** Sends a PING outside the caller window. */
  sendProbe(now: number): void;
}

export class StallWatch {
  private readonly conn: WatchedConnection;
  private readonly liveness: Liveness;
  private readonly requests: RequestWindow;
  private timer: NodeJS.Timeout | undefined;
  /** A stall was seen on a tick; confirmStall runs after the poll phase. */
  private stallCheck = false;

  constructor(conn: WatchedConnection, liveness: Liveness, requests: RequestWindow) {
    this.conn = conn;
    this.liveness = liveness;
    this.requests = requests;
  }

  start(): void {
    if (this.timer !== undefined) return;
    this.timer = setInterval(this.onTick, this.liveness.tickMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
    this.stallCheck = false;
  }

  private readonly onTick = (): void => {
    const { conn, liveness } = this;
    liveness.nextTick();
    const now = performance.now();
    const state = conn.state();
    if (state === 'connecting') {
      if (now - conn.connectStartedAt() >= liveness.dataTimeoutMs) {
        conn.fail(new TransportError(`connecting to storage node ${conn.address} timed out after ${liveness.dataTimeoutMs} ms`, { node: conn.address }));
      }
      return;
    }
    if (state !== 'open') return;
    const oldest = this.requests.oldest();
    if (oldest === undefined) return;
    if (liveness.overdue(oldest.sentTick)) {
      conn.fail(new TransportError(
        `storage node ${conn.address} did not answer ${opcodeName(oldest.opcode)} request ${oldest.requestId} within ${liveness.flushTimeoutMs} ms`,
        { node: conn.address, requestId: oldest.requestId },
      ));
      return;
    }
    if (conn.regularInflight() === 0) return; // only a probe: nothing waits on this node
    const action = liveness.check(now);
    if (action === 'probe') {
      conn.sendProbe(now);
    } else if (action === 'stalled' && !this.stallCheck) {
      // Replies that came while this process was not running sit in the socket:
      // the poll phase reads them before setImmediate callbacks run.
      this.stallCheck = true;
      setImmediate(this.confirmStall);
    }
  };

  /** Still stalled after the poll phase (replies read meanwhile count): fails the connection. */
  private readonly confirmStall = (): void => {
    if (!this.stallCheck) return;
    this.stallCheck = false;
    const { conn, liveness } = this;
    const now = performance.now();
    const inflight = conn.regularInflight();
    if (conn.state() !== 'open' || inflight === 0 || !liveness.stalled(now)) return;
    const oldest = this.requests.oldestRegular(liveness);
    const silentMs = Math.round(liveness.silentMs(now));
    conn.fail(new TransportError(
      `storage node ${conn.address} sent nothing for ${silentMs} ms with ${inflight} request(s) outstanding`
      + (oldest === undefined ? '' : ` (oldest: ${opcodeName(oldest.opcode)} request ${oldest.requestId})`)
      + ` and did not answer a PING within ${Math.round(liveness.probeWaitMs(now))} ms: taken as hung (data timeout ${liveness.dataTimeoutMs} ms)`,
      { node: conn.address, silentMs },
    ));
  };
}
