import { ConflictError, InvalidArgumentError, NotFoundError, TimeoutError, TransportError, errorMessage } from '../shared/errors.js';
import { MAX_COUNTER } from '../shared/counters.js';
import { moduleLogger } from '../shared/logger.js';
import type { Attachments } from './attachments.js';
import type { EventLog } from './events.js';
import type { PeerClients } from './node-clients.js';
import type { Registry } from './registry.js';
import { holderEpoch, type HeadRecord, type VolumeRecord } from './types.js';
import type { Volumes } from './volumes.js';

// The write lease of an attached volume, and how it moves between the two
// heads of a live migration (docs/leases.md; the contract is Ceph's
// exclusive lock with storage-side fencing):
//
//  - Renewal: a holder's heartbeat renews its leases (Registry.leaseLeftMs);
//    the heartbeat names the leases the head believes it holds, and the reply
//    revokes those another head holds now.
//  - Hand-off (move): the standby asks (its first I/O: AcquireLease) or an
//    orchestrator does (HandoffVolume). The holder is asked to drain, flush and
//    release; then the standby is granted epoch+1 (it fences every replica
//    node before it answers) and the old holder stays attached as the standby
//    (the lease moves back the same way, on its next I/O). A holder that does
//    not answer is waited out: its lease must expire before the grant, and it
//    is dropped from the volume (its late writes fail the epoch check on
//    every node). If the grant fails after a clean release, the lease goes
//    back to the old holder under yet another epoch (never reused).
//  - Moves of one volume run one at a time; an AcquireLease retried with the
//    same request id returns the first one's outcome.

const log = moduleLogger('manager.leases');

export type LeaseState = 'held' | 'expired' | 'free';

export interface LeaseClaim {
  volume: string;
  epoch: number;
}

export interface LeaseMove {
  volume: VolumeRecord;
  epoch: number;
  /** The previous holder released cleanly (false: taken over after its lease expired). */
  clean: boolean;
  waitMs: number;
}

export interface LeaseOptions {
  /** How long the holder gets to drain, flush and release (default 5 s). */
  releaseTimeoutMs?: number;
  /** Upper bound of one move, expiry wait included (default lease TTL + 10 s). */
  moveTimeoutMs?: number;
  /** Polling period while waiting for an unanswering holder's lease to expire (default 100 ms). */
  pollMs?: number;
}

const MAX_REMEMBERED = 1024;
/** How long a lease move waits for another operation on the volume (an online resize) before it gives up as busy. */
const BUSY_WAIT_MS = 20_000;

export class Leases {
  private readonly moving = new Map<number, Promise<unknown>>();
  private readonly outcomes = new Map<string, Promise<LeaseMove>>();
  events?: EventLog;

  constructor(
    private readonly volumes: Volumes,
    private readonly registry: Registry,
    private readonly peers: PeerClients,
    private readonly attachments: Attachments,
    private readonly opts: LeaseOptions = {},
  ) {}

  /** The lease of a volume as the manager sees it. */
  state(v: VolumeRecord): { lease: LeaseState; renewedAgoMs: number } {
    if (!v.attachedHead || holderEpoch(v) === undefined) return { lease: 'free', renewedAgoMs: 0 };
    const left = this.registry.leaseLeftMs(v.attachedHead);
    return { lease: left > 0 ? 'held' : 'expired', renewedAgoMs: Math.max(0, this.registry.leaseTtlMs - left) };
  }

  /**
   * A head's heartbeat claims these leases (the heartbeat itself renewed
   * them). Returns the claims it lost: volumes another head holds now under a
   * newer epoch, or that are gone. A claim of the recorded holder is never
   * revoked (an older epoch there is a grant to it in progress).
   */
  renew(headId: string, claims: readonly LeaseClaim[]): LeaseClaim[] {
    const revoked: LeaseClaim[] = [];
    for (const c of claims) {
      const e = this.volumes.find(c.volume);
      if (e === undefined) {
        revoked.push({ volume: c.volume, epoch: MAX_COUNTER });
        continue;
      }
      const v = e.volume;
      if (!v.attachedHead && !v.standbyHead && c.epoch === v.epoch && c.epoch > 0) this.adopt(e, headId);
      const stillOurs = v.attachedHead === headId && holderEpoch(v) !== undefined;
      if (!stillOurs && c.epoch < v.epoch) revoked.push({ volume: v.name, epoch: v.epoch });
    }
    if (revoked.length > 0) log.warn({ headId, revoked }, 'a head claims leases it no longer holds: revoked (it fences itself off them)');
    return revoked;
  }

  /**
   * A head holds a volume our records say nobody holds, under its newest
   * epoch (a manager rebuilt from storage: the epoch came from the nodes,
   * which the holder fenced): it is the holder; record it (in the background,
   * once; a failure is retried by the next heartbeat).
   */
  private adopt(e: { volume: VolumeRecord }, headId: string): void {
    const head = this.registry.head(headId);
    if (!head || this.volumes.isBusy(e.volume.id)) return;
    this.volumes.exclusive(e.volume.name, async ({ volume }) => {
      if (volume.attachedHead || volume.standbyHead) return;
      volume.attachedHead = head.id;
      volume.nbdUri = head.nbdAddress ? `nbd://${head.nbdAddress}/${encodeURIComponent(volume.name)}` : '';
      delete volume.claimPending;
      await this.volumes.saveVolume(volume);
      log.warn({ volume: volume.name, volumeId: volume.id, head: head.name, epoch: volume.epoch }, 'a head holds this volume at its newest epoch: recorded as its holder (the manager\'s records had none)');
    }).catch((err: unknown) => log.warn({ volume: e.volume.name, volumeId: e.volume.id, head: head.name, err: errorMessage(err) }, 'could not record the holder a head claims; retried'));
  }

  /** A standby head's first I/O asks for the lease (AcquireLease). Idempotent per request id. */
  async acquire(name: string, headId: string, requestId: string): Promise<LeaseMove> {
    if (!headId) throw new InvalidArgumentError('AcquireLease needs the asking head\'s id');
    const head = this.registry.head(headId);
    if (!head) throw new NotFoundError(`head ${headId} is not registered; it registers again by itself within a heartbeat`);
    if (!requestId) return this.move(name, head);
    const key = `${headId}/${requestId}`;
    let p = this.outcomes.get(key);
    if (p === undefined) {
      p = this.move(name, head);
      this.outcomes.set(key, p);
      p.catch(() => this.outcomes.delete(key)); // a failed request may be retried for real
      if (this.outcomes.size > MAX_REMEMBERED) this.outcomes.delete(this.outcomes.keys().next().value!);
    }
    return p;
  }

  /** An orchestrator moves the lease to the standby now (HandoffVolume). */
  async handoff(name: string, toRef: string): Promise<LeaseMove> {
    const to = this.registry.resolveHead(toRef);
    const v = this.volumes.entry(name).volume;
    if (v.attachedHead === to.id) throw new InvalidArgumentError(`head ${to.name} already holds ${name}: hand it off to the other head`);
    return this.move(name, to);
  }

  /**
   * Detaches the volume from one head. Its holder leaves only after a
   * hand-off to the standby (the migration's source leaving once the VM runs
   * on the destination); the volume stays attached to the other head.
   */
  async detachHead(name: string, headRef: string, force: boolean): Promise<void> {
    const head = this.registry.resolveHead(headRef);
    const v = this.volumes.entry(name).volume;
    if (v.standbyHead === head.id) return this.attachments.detachStandby(name, force);
    if (v.attachedHead !== head.id) {
      const holder = v.attachedHead ? (this.registry.head(v.attachedHead)?.name ?? v.attachedHead) : 'no head';
      throw new ConflictError(`volume ${name} is not attached to head ${head.name} (held by ${holder}${v.standbyHead ? `, standby ${this.registry.head(v.standbyHead)?.name ?? v.standbyHead}` : ''}); nothing changed`);
    }
    if (!v.standbyHead) return this.attachments.detach(name, force);
    const standby = this.registry.head(v.standbyHead);
    if (!standby) throw new ConflictError(`volume ${name}'s standby head ${v.standbyHead} is not registered: detach it first (vsky volume detach ${name} --head ${v.standbyHead})`);
    await this.move(name, standby);
    await this.attachments.detachStandby(name, force);
  }

  /** Moves of one volume run one after another. */
  private move(name: string, to: HeadRecord): Promise<LeaseMove> {
    const id = this.volumes.entry(name).volume.id;
    const prev = this.moving.get(id) ?? Promise.resolve();
    const run = prev.catch(() => undefined).then(() => this.moveNow(name, to));
    const tail = run.catch(() => undefined);
    this.moving.set(id, tail);
    void tail.then(() => { if (this.moving.get(id) === tail) this.moving.delete(id); });
    return run;
  }

  private async moveNow(name: string, to: HeadRecord): Promise<LeaseMove> {
    const started = Date.now();
    // A short operation holding the volume (an online resize, an attach) is waited out first: the grant
    // needs the volume, and a holder that released for a grant that then failed on "busy" would leave
    // the asking head's I/O failing.
    await this.volumes.waitNotBusy(this.volumes.entry(name).volume.id, BUSY_WAIT_MS);
    const v = this.volumes.entry(name).volume;
    const done = (volume: VolumeRecord, clean: boolean): LeaseMove => ({ volume, epoch: volume.epoch, clean, waitMs: Date.now() - started });
    if (v.attachedHead === to.id) {
      // The holder asks again (it lost the lease state, or a grant failed half-way): a new grant in place.
      return done(await this.volumes.exclusive(name, (e) => this.attachments.grantLocked(e, to, { standby: e.volume.standbyHead ?? '' })), true);
    }
    if (v.standbyHead !== to.id) {
      throw new ConflictError(`volume ${name} is not attached to head ${to.name}: attach it there with --migrate first (vsky volume attach ${name} --head ${to.name} --migrate)`);
    }
    const from = v.attachedHead ? this.registry.head(v.attachedHead) : undefined;
    const clean = from === undefined ? false : await this.release(v, from, started);
    const volume = await this.volumes.exclusive(name, async (e) => {
      if (e.volume.attachedHead !== (from?.id ?? '') || e.volume.standbyHead !== to.id) {
        throw new ConflictError(`volume ${name} changed during the hand-off (attached or detached meanwhile); nothing moved, retry`);
      }
      try {
        await this.attachments.grantLocked(e, to, { reconcile: !clean, standby: clean && from ? from.id : '' });
      } catch (err) {
        if (clean && from) await this.rollBack(e, from, err);
        throw err;
      }
      return e.volume;
    });
    if (!clean && from) this.attachments.dropHead(from.id, name);
    log.info({ volume: name, volumeId: volume.id, from: from?.name, to: to.name, epoch: volume.epoch, clean, ms: Date.now() - started },
      clean ? 'write lease handed off' : 'write lease taken over after the holder\'s lease expired');
    void this.events?.record(clean ? 'lease.handoff' : 'lease.takeover', `volume:${name}`, clean ? `write lease handed off from ${from?.name} to ${to.name}` : `write lease taken over by ${to.name}: the holder ${from?.name ?? '(none)'} did not release it and its lease expired`, { from: from?.name ?? '', to: to.name, epoch: volume.epoch, clean, waitMs: Date.now() - started });
    return done(volume, clean);
  }

  /**
   * Asks the holder to drain, flush and release. True when it did; false
   * when it cannot (gone, hung, or it no longer has the volume) and its lease
   * has expired, so a take-over is safe (storage refuses its epoch). A hung
   * holder keeps its connections open, so its answer is not waited for past
   * its lease's expiry: whichever comes first decides.
   */
  private async release(v: VolumeRecord, from: HeadRecord, started: number): Promise<boolean> {
    const releaseTimeout = this.opts.releaseTimeoutMs ?? 5_000;
    const deadline = started + (this.opts.moveTimeoutMs ?? this.registry.leaseTtlMs + 10_000);
    const answer = this.peers.head.releaseLease(from.controlAddress, { name: v.name, epoch: v.epoch }, releaseTimeout)
      .then(() => undefined, (err: unknown) => err ?? new Error('release failed'));
    let gaveUp = false;
    const expiry = this.expired(from, () => gaveUp, Number.POSITIVE_INFINITY).then(() => 'expired' as const);
    const first = await Promise.race([answer, expiry]);
    if (first === 'expired') {
      log.warn({ volume: v.name, volumeId: v.id, holder: from.name }, 'the holder did not answer the hand-off before its lease expired: taking over');
      return false;
    }
    if (first === undefined) {
      gaveUp = true;
      return true;
    }
    const err = first;
    if (err instanceof NotFoundError) {
      gaveUp = true;
      log.warn({ volume: v.name, volumeId: v.id, holder: from.name }, 'the holder no longer has the volume (it restarted?): taking over without waiting');
      return false;
    }
    if (!(err instanceof TimeoutError || err instanceof TransportError)) {
      gaveUp = true;
      throw new ConflictError(`head ${from.name} could not release ${v.name}: ${errorMessage(err)}; it keeps the lease (retry, or detach it)`, { volume: v.name });
    }
    log.warn({ volume: v.name, volumeId: v.id, holder: from.name, err: errorMessage(err) }, 'the holder did not answer the hand-off: waiting for its lease to expire');
    try {
      await this.expired(from, () => gaveUp, deadline);
    } finally {
      gaveUp = true;
    }
    return false;
  }

  /** Resolves once the head's lease expired; throws TimeoutError at `deadline`; stops quietly when `stop()` says so. */
  private async expired(from: HeadRecord, stop: () => boolean, deadline: number): Promise<void> {
    for (;;) {
      if (stop()) return new Promise<void>(() => undefined); // the other side of the race won: never settles
      const left = this.registry.leaseLeftMs(from.id);
      if (left <= 0) return;
      if (Date.now() >= deadline) {
        throw new TimeoutError(`head ${from.name} did not answer the hand-off and keeps renewing its lease (${(left / 1000).toFixed(1)} s left); `
          + 'it may be cut off from this manager but not from us: retry, or detach it (vsky volume detach --head)');
      }
      await new Promise((r) => setTimeout(r, Math.min(left + 1, this.opts.pollMs ?? 100)));
    }
  }

  /** The grant to the new holder failed after a clean release: the old holder takes the lease back (new epoch). */
  private async rollBack(e: Parameters<Attachments['grantLocked']>[0], from: HeadRecord, cause: unknown): Promise<void> {
    log.warn({ volume: e.volume.name, volumeId: e.volume.id, to: from.name, err: errorMessage(cause) }, 'hand-off failed at the destination: giving the lease back to the source');
    void this.events?.record('lease.handoff_failed', `volume:${e.volume.name}`, `hand-off failed at the destination: ${errorMessage(cause)}; the lease goes back to ${from.name}`, { to: from.name, epoch: e.volume.epoch });
    try {
      await this.attachments.grantLocked(e, from, { standby: '' });
    } catch (err) {
      log.error({ volume: e.volume.name, volumeId: e.volume.id, err: errorMessage(err) }, 'the source did not take the lease back either: the volume is detached');
    }
  }
}
