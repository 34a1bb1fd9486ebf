import { InvalidArgumentError, NotFoundError } from '../../shared/errors.js';
import { DEFAULT_LEASE_TTL_MS } from '../../shared/constants.js';
import { moduleLogger } from '../../shared/logger.js';
import { parseHostPort } from '../../shared/units.js';
import { claimHeadId } from '../int-id-claims.js';
import type { StoreBatch } from '../store.js';
import type { HeadRecord } from '../types.js';
import type { RegistryState } from './state.js';

// Head agents: they register and heartbeat; their heartbeats renew their
// write leases, judged on this manager's clock alone. A head silent for the
// heartbeat timeout is marked failed (manager/registry/heartbeat.ts) and a
// heartbeat revives it.

const log = moduleLogger('manager.registry');

export interface RegisterHeadInput {
  headId: string;
  name: string;
  controlAddress: string;
  nbdAddress: string;
  /** The hsvrid the head kept, and the cluster that gave it (manager/int-id-claims.ts). */
  hsvrid?: number;
  hsvridClusterId?: string;
}

export class Heads {
  readonly records = new Map<string, HeadRecord>();
  /** Each head's clock minus the manager's, as it last reported (memory only: heads report it every heartbeat). */
  private readonly clockOffsets = new Map<string, number>();

  constructor(private readonly st: RegistryState) {}

  list(): HeadRecord[] { return [...this.records.values()]; }
  get(id: string): HeadRecord | undefined { return this.records.get(id); }
  clockOffset(headId: string): number | undefined { return this.clockOffsets.get(headId); }

  /** A head by id or name; empty: the only registered head. */
  resolve(ref: string): HeadRecord {
    const heads = this.list();
    if (!ref) {
      if (heads.length === 1) return heads[0]!;
      if (heads.length === 0) throw new NotFoundError('no head agent is registered: start vsky head-agent on the hypervisor first');
      throw new InvalidArgumentError(`${heads.length} head agents are registered (${heads.map((h) => h.name).join(', ')}): name one with --head`);
    }
    const byId = this.records.get(ref);
    if (byId) return byId;
    const named = heads.filter((h) => h.name === ref);
    if (named.length === 1) return named[0]!;
    if (named.length > 1) throw new InvalidArgumentError(`head name "${ref}" is ambiguous (${named.map((h) => h.id).join(', ')}); use the head id`);
    throw new NotFoundError(`no head "${ref}": see vsky head list`, { head: ref });
  }

  async register(req: RegisterHeadInput): Promise<HeadRecord> {
    if (!req.headId) throw new InvalidArgumentError('RegisterHead needs a head_id (the head agent keeps one in its data directory)');
    parseHostPort(req.controlAddress, 'head control address');
    if (req.nbdAddress) parseHostPort(req.nbdAddress, 'head NBD address');
    const now = this.st.now();
    const prev = this.records.get(req.headId);
    const h: HeadRecord = {
      id: req.headId, name: req.name || req.headId, controlAddress: req.controlAddress, nbdAddress: req.nbdAddress,
      state: 'active', registeredMs: prev?.registeredMs ?? now, lastHeartbeatMs: now,
      ...(prev?.intId !== undefined ? { intId: prev.intId } : {}),
    };
    claimHeadId(h, req.hsvrid ?? 0, req.hsvridClusterId ?? '', this.st.store.clusterId);
    this.records.set(h.id, h);
    const why = !prev ? 'registered' : prev.state === 'failed' ? 'registered again after it failed' : 'registered again (restarted)';
    await this.st.store.write(this.st.store.batch().putHead(h).event('head.up', `head:${h.name}`, why, { headId: h.id, controlAddress: h.controlAddress, again: !!prev }));
    log.info({ headId: h.id, name: h.name, controlAddress: h.controlAddress, again: !!prev }, 'head registered');
    return h;
  }

  /** Forgets a head (XML-RPC deleteHeadServer; the caller checks it holds nothing). A head that registers again is new. */
  async remove(headId: string): Promise<void> {
    const h = this.records.get(headId);
    if (!h) return;
    this.records.delete(headId);
    await this.st.store.write(this.st.store.batch().delHead(headId).event('head.removed', `head:${h.name}`, 'forgotten (it holds nothing); if it registers again it is a new head', { headId }));
    log.info({ headId, name: h.name }, 'head removed');
  }

  async heartbeat(headId: string, clockOffsetMs?: number): Promise<boolean> {
    const h = this.records.get(headId);
    if (!h) return false;
    h.lastHeartbeatMs = this.st.now();
    if (clockOffsetMs !== undefined) this.clockOffsets.set(headId, clockOffsetMs);
    if (h.state === 'failed') {
      h.state = 'active';
      log.info({ headId: h.id, name: h.name }, 'head active again: heartbeat received');
      await this.st.store.write(this.st.store.batch().putHead(h).event('head.up', `head:${h.name}`, 'heartbeat received again', { headId: h.id }));
      this.st.hooks?.changed('head active');
    }
    return true;
  }

  /** The lease TTL: a holder silent this long may be taken over. */
  get leaseTtlMs(): number {
    return this.st.opts.leaseTtlMs ?? DEFAULT_LEASE_TTL_MS;
  }

  /**
   * Milliseconds until the write leases of a head expire (<= 0: expired; a
   * take-over may proceed). Leases are renewed by the head's heartbeats and
   * judged on this manager's clock alone (no clocks of two hosts are
   * compared); a manager restart gives every head a full TTL again.
   */
  leaseLeftMs(headId: string): number {
    const h = this.records.get(headId);
    if (!h) return 0;
    return h.lastHeartbeatMs + this.leaseTtlMs - this.st.now();
  }

  /** Marks the active heads silent longer than `limit` failed, in `batch`; returns how many. */
  failSilent(now: number, limit: number, batch: StoreBatch): number {
    let failed = 0;
    for (const h of this.records.values()) {
      if (h.state !== 'active' || h.halted || now - h.lastHeartbeatMs <= limit) continue;
      h.state = 'failed';
      failed++;
      log.warn({ headId: h.id, name: h.name, silentMs: now - h.lastHeartbeatMs }, `head ${h.name} failed: no heartbeat for ${now - h.lastHeartbeatMs} ms`);
      batch.putHead(h);
      batch.event('head.failed', `head:${h.name}`, `no heartbeat for ${now - h.lastHeartbeatMs} ms (timeout ${limit} ms)`, { headId: h.id, silentMs: now - h.lastHeartbeatMs });
    }
    return failed;
  }
}
