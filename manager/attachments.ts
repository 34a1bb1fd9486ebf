import { ConflictError, InvalidArgumentError, NotFoundError, TimeoutError, TransportError, errorMessage } from '../shared/errors.js';
import { nextCounter } from '../shared/counters.js';
import { moduleLogger } from '../shared/logger.js';
import type { AttachVolumeReply__Output } from '../proto/generated/vsky/head/AttachVolumeReply.js';
import type { EventLog } from './events.js';
import { dirtyRefusal } from './jobs/dirty.js';
import type { PeerClients } from './node-clients.js';
import type { Registry } from './registry.js';
import type { HeadRecord, IscsiAccessRecord, VolumeRecord } from './types.js';
import type { StorageNotes } from './storage-notes.js';
import { volumeMapView } from './views.js';
import type { VolumeEntry, Volumes } from './volumes.js';

// Attach and detach: which heads have a volume, which one holds its write
// lease, under which epoch.
//
// Every grant of the lease (attach, re-attach, hand-off, take-over) issues a
// new epoch and persists it *before* the head hears of it, so an epoch is
// never handed out twice even if the manager dies right after; the head
// fences every replica node with it before it answers, after which the nodes
// refuse writes from any earlier holder (rule 3). Only after the head
// accepted is the holder recorded; if the head fails, the volume ends up
// detached (with the higher epoch, which is harmless).
//
// A second head may be attached as a standby for a live migration
// (migrate): it exports the volume without the lease. Moving the lease
// between the two is manager/leases.ts; taking a volume over from a holder
// whose lease expired (or with force) is attach().

const log = moduleLogger('manager.attach');

/** Who hears of attach and detach (manager/core.ts wires the map pusher and the resyncs). */
export interface AttachListener {
  /** The version of the volume's map being sent to the head now (manager/map-pusher.ts). */
  mapVersion(volumeId: number): number;
  /** A head accepted the volume with the map as of `mapVersion`. */
  attached(volumeId: number, mapVersion: number): void;
  detached(volumeId: number): void;
}

export interface AttachOptions {
  /** Attach as the standby of a live migration, next to the holder. */
  migrate?: boolean;
  /** Take the volume over although its holder's lease is still renewed (admins; logged). */
  force?: boolean;
  /** Attach a DIRTY volume anyway (manager/jobs/dirty.ts; logged and recorded in the event log). */
  allowDirty?: boolean;
}

export interface GrantOptions {
  /** The previous holder did not release cleanly: the new one reconciles its write-intent regions. */
  reconcile?: boolean;
  /** The standby head afterwards ('' none). */
  standby: string;
}

export class Attachments {
  listener?: AttachListener;
  events?: EventLog;
  /** Keeps the access rules on storage too (manager/storage-notes.ts). */
  notes?: StorageNotes;
  /** Why the volume may not be attached now ('' it may): a storage job runs on it (manager/jobs/). */
  jobGuard?: (name: string) => string;

  constructor(
    private readonly volumes: Volumes,
    private readonly registry: Registry,
    private readonly peers: PeerClients,
  ) {}

  async attach(name: string, headRef: string, opts: AttachOptions = {}): Promise<VolumeRecord> {
    const snap = this.volumes.find(name)?.volume;
    // A snapshot is attached read-only (docs/snapshots.md); no live migration of one (detach, attach elsewhere).
    if (snap?.kind === 'snapshot' && opts.migrate === true) {
      throw new ConflictError(`${name} is a snapshot, attached read-only: it is not migrated; detach it and attach it to the other head`, { volume: name });
    }
    const head = this.registry.resolveHead(headRef);
    const job = this.jobGuard?.(name);
    if (job) throw new ConflictError(job);
    if (opts.migrate === true) return this.attachStandby(name, head);
    return this.volumes.exclusive(name, async (entry) => {
      const { volume } = entry;
      const holder = volume.attachedHead;
      // A fresh attach of a DIRTY volume; one attached when it became DIRTY is its holder's business.
      if (!holder) this.checkDirty(volume, head, opts.allowDirty === true);
      const claimWait = this.registry.claimWaitMs(volume);
      if (!holder && claimWait > 0 && opts.force !== true) {
        throw new ConflictError(`volume ${name} was rebuilt from storage and a head may still hold it: heads have ${(claimWait / 1000).toFixed(1)} s left `
          + 'to claim it (their heartbeats do) before it can be attached elsewhere; retry then, or --force if no head holds it', { volume: name, claimWaitMs: claimWait });
      }
      // Attaching again to the holder re-pushes the map under a new epoch: the
      // head may have restarted and lost it (a live head takes it in place).
      if (!holder || holder === head.id) return this.grantLocked(entry, head, { standby: volume.standbyHead ?? '' });
      if (volume.standbyHead === head.id) {
        throw new ConflictError(`head ${head.name} is the standby of ${name}: the lease moves to it with its first I/O, or now with vsky volume handoff ${name} --to ${head.name}`);
      }
      const left = this.registry.leaseLeftMs(holder);
      const holderName = this.registry.head(holder)?.name ?? holder;
      if (left > 0 && opts.force !== true) {
        throw new ConflictError(`volume ${name} is held by head ${holderName}, whose lease was renewed ${((this.registry.leaseTtlMs - left) / 1000).toFixed(1)} s ago: `
          + `a take-over is allowed in ${(left / 1000).toFixed(1)} s (lease TTL ${this.registry.leaseTtlMs / 1000} s). To move it now: `
          + `vsky volume attach ${name} --head ${head.name} --migrate (live migration), vsky volume detach ${name}, or --force if ${holderName} is surely dead`,
        { volume: name, holder: holderName, leaseLeftMs: left });
      }
      const dropped = [holder, volume.standbyHead ?? ''].filter((h) => h !== '');
      log.warn({ volume: name, volumeId: volume.id, from: holderName, to: head.name, leaseLeftMs: left, forced: left > 0 },
        left > 0 ? 'FORCED take-over: the holder\'s lease was still renewed (--force)' : 'take-over: the holder\'s lease expired');
      await this.grantLocked(entry, head, { reconcile: true, standby: '' });
      void this.events?.record('lease.takeover', `volume:${name}`, left > 0 ? `FORCED take-over by ${head.name}: ${holderName}'s lease was still renewed (--force)` : `take-over by ${head.name}: ${holderName}'s lease expired`, { from: holderName, to: head.name, epoch: volume.epoch, forced: left > 0, leaseLeftMs: Math.max(0, left) });
      for (const h of dropped) this.dropHead(h, name);
      return volume;
    });
  }

  /** Refuses a DIRTY volume, naming the fixes; with allowDirty, logs and records the override. */
  private checkDirty(volume: VolumeRecord, head: HeadRecord, allowDirty: boolean): void {
    const why = dirtyRefusal(volume);
    if (!why) return;
    if (!allowDirty) throw new ConflictError(why, { volume: volume.name, dirtyJob: volume.dirty!.jobId });
    const d = volume.dirty!;
    log.warn({ volume: volume.name, head: head.name, job: d.jobId, kind: d.kind, state: d.state }, 'attaching a DIRTY volume (--allow-dirty)');
    void this.events?.record('volume.attach_dirty', `volume:${volume.name}`, `attached to ${head.name} although DIRTY (--allow-dirty): ${d.kind} job ${d.jobId} ended ${d.state}`,
      { head: head.name, job: d.jobId, kind: d.kind, state: d.state });
  }

  /**
   * Grants the lease to `head` under a new epoch, the volume being held by
   * the caller (volumes.exclusive). On failure the volume is left detached.
   */
  async grantLocked(entry: VolumeEntry, head: HeadRecord, opts: GrantOptions): Promise<VolumeRecord> {
    const { volume, map } = entry;
    if (head.state !== 'active') {
      throw new ConflictError(`head ${head.name} is ${head.state} (no heartbeat); check vsky head-agent there or attach to another head`);
    }
    if (head.halted) throw new ConflictError(`head ${head.name} is halted (XML-RPC shutdownAll): restart its head agent (or call registerHeadServer) first`);
    const vlog = log.child({ volumeId: volume.id, volume: volume.name, headId: head.id });
    const epoch = nextCounter(volume.epoch, `volume ${volume.name}'s lease epoch`);
    volume.epoch = epoch;
    await this.volumes.saveVolume(volume);
    const mapVersion = this.listener?.mapVersion(volume.id) ?? 0;
    let reply: AttachVolumeReply__Output;
    try {
      reply = await this.peers.head.attach(head.controlAddress, {
        map: volumeMapView(volume, map, this.registry), epoch, iscsi: volume.access, reconcile: opts.reconcile === true,
        readOnly: volume.kind === 'snapshot',
      });
    } catch (err) {
      vlog.warn({ epoch, err: errorMessage(err) }, 'head refused or failed the attach; the volume is detached');
      void this.events?.record('volume.attach_failed', `volume:${volume.name}`, `head ${head.name} refused or failed the attach: ${errorMessage(err)}; the volume is detached`, { head: head.name, epoch });
      // The head may have half set it up (or succeeded with a lost reply): best effort to drop it.
      this.dropHead(head.id, volume.name);
      if (volume.attachedHead || volume.standbyHead) {
        clearAttachment(volume);
        await this.volumes.saveVolume(volume);
        this.listener?.detached(volume.id);
      }
      throw err;
    }
    const previous = { head: volume.attachedHead, nbdUri: volume.nbdUri, iscsiUrl: volume.iscsiUrl };
    volume.attachedHead = head.id;
    volume.nbdUri = reply.nbdUri;
    volume.iscsiUrl = reply.iscsiUrl;
    delete volume.claimPending;
    if (!opts.standby) {
      clearStandby(volume);
    } else if (opts.standby === previous.head && previous.head !== head.id) { // a hand-off: the old holder stays as the standby
      volume.standbyHead = previous.head;
      volume.standbyNbdUri = previous.nbdUri;
      volume.standbyIscsiUrl = previous.iscsiUrl;
    }
    await this.volumes.saveVolume(volume);
    vlog.info({ epoch, nbdUri: reply.nbdUri, head: head.name, standby: opts.standby || undefined }, 'volume attached: write lease granted');
    void this.events?.record('volume.attached', `volume:${volume.name}`, `write lease granted to head ${head.name}`, { head: head.name, epoch, previousHead: previous.head ? (this.registry.head(previous.head)?.name ?? previous.head) : '', standby: volume.standbyHead ? (this.registry.head(volume.standbyHead)?.name ?? volume.standbyHead) : '', reconcile: opts.reconcile === true, nbdUri: reply.nbdUri });
    this.listener?.attached(volume.id, mapVersion);
    return volume;
  }

  /** Live migration: `head` exports the volume next to the holder, without the lease. */
  private attachStandby(name: string, head: HeadRecord): Promise<VolumeRecord> {
    return this.volumes.exclusive(name, async ({ volume, map }) => {
      const holder = volume.attachedHead ? (this.registry.head(volume.attachedHead)?.name ?? volume.attachedHead) : '';
      if (!holder) throw new ConflictError(`volume ${name} is not attached: attach it to the migration's source first (vsky volume attach ${name} --head SOURCE)`);
      if (volume.attachedHead === head.id) throw new InvalidArgumentError(`head ${head.name} already holds ${name}: --migrate attaches the migration's destination, another head`);
      if (volume.standbyHead && volume.standbyHead !== head.id) {
        const other = this.registry.head(volume.standbyHead)?.name ?? volume.standbyHead;
        throw new ConflictError(`volume ${name} is already attached to ${holder} and ${other} (a migration is in progress): `
          + `one migration at a time; detach one first (vsky volume detach ${name} --head ${other})`);
      }
      if (head.state !== 'active') throw new ConflictError(`head ${head.name} is ${head.state} (no heartbeat); check vsky head-agent there`);
      if (head.halted) throw new ConflictError(`head ${head.name} is halted (XML-RPC shutdownAll): restart its head agent (or call registerHeadServer) first`);
      const reply = await this.peers.head.attach(head.controlAddress, {
        map: volumeMapView(volume, map, this.registry), epoch: volume.epoch, iscsi: volume.access, standby: true,
      });
      volume.standbyHead = head.id;
      volume.standbyNbdUri = reply.nbdUri;
      volume.standbyIscsiUrl = reply.iscsiUrl;
      await this.volumes.saveVolume(volume);
      log.info({ volumeId: volume.id, volume: name, holder, standby: head.name, epoch: volume.epoch }, 'volume attached as a standby (live migration)');
      void this.events?.record('volume.standby_attached', `volume:${name}`, `live migration: head ${head.name} attached as a standby next to ${holder}`, { head: head.name, holder, epoch: volume.epoch });
      return volume;
    });
  }

  /**
   * Sets who may reach the volume over iSCSI. A volume attached now gets the
   * rules at once (re-attach under a new epoch); otherwise at its next attach.
   */
  async setAccess(name: string, access: IscsiAccessInput): Promise<VolumeRecord> {
    const rules = validateAccess(access);
    const holder = await this.volumes.exclusive(name, async (entry) => {
      const { volume } = entry;
      volume.access = rules;
      await this.volumes.saveVolume(volume);
      await this.notes?.accessChanged(entry); // on storage too, for a rebuild from storage
      log.info({ volumeId: volume.id, volume: name, initiators: rules.initiators, chap: Boolean(rules.chapUser), mutual: Boolean(rules.mutualUser) }, 'iSCSI access rules set');
      return volume.attachedHead;
    });
    return holder ? this.attach(name, holder) : this.volumes.entry(name).volume;
  }

  /**
   * A head that registers again (it restarted) gets back every volume the
   * metadata says it holds, each under a new epoch, and those it was the
   * standby of, as a standby. Failures are logged; a failed grant leaves the
   * volume detached, as any failed attach does.
   */
  async reattachAll(headId: string, names: string[], standbyOf: string[] = []): Promise<void> {
    for (const [list, migrate] of [[names, false], [standbyOf, true]] as const) {
      for (const name of list) {
        try {
          await this.attach(name, headId, { migrate });
        } catch (err) {
          log.warn({ headId, volume: name, err: errorMessage(err), standby: migrate }, 're-attach after head restart failed');
        }
      }
    }
  }

  /** Detaches the volume from every head (the standby first). */
  async detach(name: string, force: boolean): Promise<void> {
    await this.volumes.exclusive(name, async ({ volume }) => {
      if (!volume.attachedHead && !volume.standbyHead) {
        log.info({ volumeId: volume.id, volume: name }, 'detach of a volume that is not attached: nothing to do');
        return;
      }
      if (volume.standbyHead) await this.detachStandbyLocked(volume, force);
      if (volume.attachedHead) await this.detachFrom(volume, volume.attachedHead, force);
      void this.events?.record('volume.detached', `volume:${name}`, force ? 'detached (--force)' : 'detached', { head: this.registry.head(volume.attachedHead)?.name ?? volume.attachedHead, force, epoch: volume.epoch });
      clearAttachment(volume);
      await this.volumes.saveVolume(volume);
      log.info({ volumeId: volume.id, volume: name, force, epoch: volume.epoch }, 'volume detached');
      this.listener?.detached(volume.id);
    });
  }

  /** Detaches the standby head only (a migration that was called off, or its source after the hand-off). */
  async detachStandby(name: string, force: boolean): Promise<void> {
    await this.volumes.exclusive(name, (e) => this.detachStandbyLocked(e.volume, force));
  }

  private async detachStandbyLocked(volume: VolumeRecord, force: boolean): Promise<void> {
    const standby = volume.standbyHead;
    if (!standby) return;
    await this.detachFrom(volume, standby, force);
    clearStandby(volume);
    await this.volumes.saveVolume(volume);
    log.info({ volumeId: volume.id, volume: volume.name, head: this.registry.head(standby)?.name ?? standby }, 'standby head detached');
    void this.events?.record('volume.standby_detached', `volume:${volume.name}`, `standby head ${this.registry.head(standby)?.name ?? standby} detached${force ? ' (--force)' : ''}`, { head: this.registry.head(standby)?.name ?? standby, force, epoch: volume.epoch });
  }

  /** Asks a head to flush and drop the volume; without force, an unreachable or failed head is an error. */
  private async detachFrom(volume: VolumeRecord, headId: string, force: boolean): Promise<void> {
    const name = volume.name;
    const head = this.registry.head(headId);
    if (!head) return;
    const vlog = log.child({ volumeId: volume.id, volume: name, headId });
    if (head.state !== 'active' && !force) {
      throw new ConflictError(`head ${head.name} holding ${name} is ${head.state} (no heartbeat): it cannot flush and release the volume; `
        + 'use --force to forget the attachment (the next attach gets a higher epoch, which fences the old head)');
    }
    try {
      await this.peers.head.detach(head.controlAddress, { name, force });
    } catch (err) {
      const unreachable = err instanceof TransportError || err instanceof TimeoutError;
      if (err instanceof NotFoundError) {
        vlog.info('head no longer has the volume attached');
      } else if (!force) {
        throw unreachable
          ? new TransportError(`cannot reach head ${head.name} at ${head.controlAddress} to detach ${name}: ${errorMessage(err)}; `
            + 'use --force to forget the attachment (the next attach gets a higher epoch, which fences the old head)')
          : err;
      } else {
        vlog.warn({ err: errorMessage(err) }, 'head did not detach; forgetting the attachment anyway (--force)');
      }
    }
  }

  /** Best effort, not awaited: a head that lost the volume (taken over, failed grant) drops it without flushing. */
  dropHead(headId: string, name: string): void {
    const head = this.registry.head(headId);
    if (!head) return;
    this.peers.head.detach(head.controlAddress, { name, force: true }).catch((err: unknown) => {
      log.debug({ volume: name, head: head.name, err: errorMessage(err) }, 'forced drop of the volume on a head that lost it did not reach it');
    });
  }
}

function clearStandby(v: VolumeRecord): void {
  delete v.standbyHead;
  delete v.standbyNbdUri;
  delete v.standbyIscsiUrl;
}

function clearAttachment(v: VolumeRecord): void {
  v.attachedHead = '';
  v.nbdUri = '';
  clearStandby(v);
}

export interface IscsiAccessInput {
  initiators?: string[];
  chapUser?: string;
  chapSecret?: string;
  mutualUser?: string;
  mutualSecret?: string;
}

const IQN_RE = /^(iqn\.\d{4}-\d{2}\.[^\s,]+|eui\.[0-9A-Fa-f]{16}|naa\.[0-9A-Fa-f]{16,32})$/;

/** Checks the rules the way initiators will: RFC 7143 names, CHAP secrets of 12 to 255 bytes. */
function validateAccess(a: IscsiAccessInput): IscsiAccessRecord {
  const initiators = [...new Set(a.initiators ?? [])];
  for (const i of initiators) {
    if (!IQN_RE.test(i)) throw new InvalidArgumentError(`"${i}" is not an iSCSI initiator name: use iqn.YYYY-MM.reversed.domain:id, eui.<16 hex> or naa.<hex>`);
  }
  const pair = (user = '', secret = '', what: string): void => {
    if (Boolean(user) !== Boolean(secret)) throw new InvalidArgumentError(`${what} needs both a user and a secret`);
    if (secret && (secret.length < 12 || secret.length > 255)) {
      throw new InvalidArgumentError(`${what} secret must be 12 to 255 characters (initiators refuse shorter ones)`);
    }
  };
  pair(a.chapUser, a.chapSecret, 'CHAP');
  pair(a.mutualUser, a.mutualSecret, 'mutual CHAP');
  if (a.mutualUser && !a.chapUser) throw new InvalidArgumentError('mutual CHAP needs one-way CHAP too (--chap-user/--chap-secret)');
  if (a.mutualSecret && a.mutualSecret === a.chapSecret) throw new InvalidArgumentError('the mutual CHAP secret must differ from the initiator\'s secret (RFC 7143 12.1.3)');
  return { initiators, chapUser: a.chapUser ?? '', chapSecret: a.chapSecret ?? '', mutualUser: a.mutualUser ?? '', mutualSecret: a.mutualSecret ?? '' };
}
