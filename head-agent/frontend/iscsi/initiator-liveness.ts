// Whether the initiator of a connection in full feature phase is still
// there: an initiator that falls silent for nopIntervalMs gets a NOP-In ping
// and is dropped if nothing arrives within nopTimeoutMs; one that neither
// reads what we send nor sends anything is dropped after both; a session
// whose target was removed, or whose ACL stops naming its initiator, is
// closed. Any byte received counts as an answer (heard()).

import type { Logger } from '../../../shared/logger.js';

/** What the liveness check needs of its connection (closures bound once by the connection). */
export interface WatchedInitiator {
  /** In full feature phase (nothing is checked otherwise). */
  active(): boolean;
  /** Why the session may no longer run (target removed, ACL changed), if so. */
  accessRevoked(): string | undefined;
  /** The socket's write buffer is full (the initiator does not read). */
  writeBlocked(): boolean;
  /** Closes the session orderly. */
  close(reason: string): void;
  /** Closes at once. */
  fail(reason: string): void;
  /** Sends a NOP-In ping with this target transfer tag. */
  ping(ttt: number): void;
}

export class InitiatorLiveness {
  private readonly conn: WatchedInitiator;
  private readonly log: Logger;
  private readonly trace: boolean;
  private lastHeard = Date.now();
  private pingSent: { ttt: number; sentAt: number } | undefined;
  private nextPingTtt = 1;
  private ticker: NodeJS.Timeout | undefined;

  constructor(conn: WatchedInitiator, log: Logger, trace: boolean) {
    this.conn = conn;
    this.log = log;
    this.trace = trace;
  }

  /** Bytes arrived: the initiator is alive, and any ping is answered. */
  heard(): void {
    this.lastHeard = Date.now();
    this.pingSent = undefined;
  }

  start(nopIntervalMs: number, nopTimeoutMs: number): void {
    const tick = Math.max(20, Math.min(nopIntervalMs, nopTimeoutMs) / 4);
    this.ticker = setInterval(() => this.check(nopIntervalMs, nopTimeoutMs), tick);
    this.ticker.unref();
  }

  stop(): void {
    clearInterval(this.ticker);
    this.ticker = undefined;
  }

  private check(intervalMs: number, timeoutMs: number): void {
    const { conn } = this;
    if (!conn.active()) return;
    const revoked = conn.accessRevoked();
    if (revoked !== undefined) {
      conn.close(revoked);
      return;
    }
    const now = Date.now();
    if (this.pingSent !== undefined) {
      if (now - this.pingSent.sentAt > timeoutMs) conn.fail(`initiator did not answer a NOP-In ping within ${timeoutMs} ms`);
      return;
    }
    const silent = now - this.lastHeard;
    if (conn.writeBlocked()) {
      // It neither reads what we send nor sends anything: gone.
      if (silent > intervalMs + timeoutMs) conn.fail(`initiator neither read nor wrote for ${silent} ms`);
      return;
    }
    if (silent < intervalMs) return;
    const ttt = this.nextPingTtt;
    this.nextPingTtt = ttt >= 0x7ffffffe ? 1 : ttt + 1;
    this.pingSent = { ttt, sentAt: now };
    if (this.trace) this.log.debug({ ttt }, 'NOP-In ping');
    conn.ping(ttt);
  }
}
