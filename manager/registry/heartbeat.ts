import { moduleLogger } from '../../shared/logger.js';
import type { Heads } from './heads.js';
import { setServerState } from './servers.js';
import type { RegistryState } from './state.js';

// Heartbeat timeouts: servers and heads whose heartbeats stopped are marked
// failed. A manager that itself did not run for a while does not count the
// silence against its peers.

const log = moduleLogger('manager.registry');

export class HeartbeatWatch {
  private lastCheckMs: number | undefined;

  constructor(private readonly st: RegistryState, private readonly heads: Heads) {}

  /** Marks servers and heads failed whose heartbeats stopped. */
  async checkTimeouts(): Promise<void> {
    const now = this.st.now();
    const limit = this.st.opts.heartbeatTimeoutMs;
    if (this.managerPaused(now, limit)) return;
    const batch = this.st.store.batch();
    for (const s of this.st.servers.values()) {
      if (s.state === 'active' && !s.halted && now - s.lastHeartbeatMs > limit) {
        setServerState(this.st, s, 'failed', `no heartbeat for ${now - s.lastHeartbeatMs} ms (timeout ${limit} ms)`, batch);
        batch.putServer(s);
      }
    }
    const headsFailed = this.heads.failSilent(now, limit, batch);
    if (batch.length > 0) await this.st.store.write(batch);
    if (headsFailed > 0) this.st.hooks?.changed('head failed');
  }

  /**
   * The manager itself did not run for a while (SIGSTOP, a paused VM, a long
   * stall): the silence is ours, not the peers'. Their heartbeats queued up
   * unread; give them one timeout from now instead of failing every server
   * and head at once (which would mark every replica stale).
   */
  private managerPaused(now: number, limit: number): boolean {
    const wall = Date.now(); // the process's own pauses, whatever clock the registry runs on (tests fake `now`)
    const gap = this.lastCheckMs === undefined ? 0 : wall - this.lastCheckMs;
    this.lastCheckMs = wall;
    if (gap <= limit / 2) return false;
    log.warn({ pausedMs: gap, timeoutMs: limit }, 'the manager did not run for a while: heartbeat timeouts restart from now');
    for (const s of this.st.servers.values()) if (s.state === 'active') s.lastHeartbeatMs = Math.max(s.lastHeartbeatMs, now);
    for (const h of this.heads.records.values()) if (h.state === 'active') h.lastHeartbeatMs = Math.max(h.lastHeartbeatMs, now);
    return true;
  }
}
