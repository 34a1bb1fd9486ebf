import { ConflictError, InvalidArgumentError, NotFoundError, TimeoutError, TransportError, errorMessage } from '../shared/errors.js';
import { moduleLogger } from '../shared/logger.js';
import type { PeerClients } from './node-clients.js';
import type { Registry } from './registry.js';
import type { IscsiAccessRecord, VolumeRecord } from './types.js';
import { volumeMapView } from './views.js';
import type { Volumes } from './volumes.js';

// Attach and detach: which head holds a volume, under which lease epoch.
//
// Attach grants a new epoch and persists it *before* the head hears of it, so
// an epoch is never handed out twice even if the manager dies right after:
// the head pushes the epoch to every replica node, which then refuse writes
// from any earlier holder (rule 3). Only after the head accepted is the
// attachment itself recorded; if the head fails, the volume stays detached
// (with the higher epoch, which is harmless).

const log = moduleLogger('manager.attach');

/** Who hears of attach and detach (manager/core.ts wires the map pusher and the resyncs). */
export interface AttachListener {
  /** The version of the volume's map being sent to the head now (manager/map-pusher.ts). */
  mapVersion(volumeId: number): number;
  /** A head accepted the volume with the map as of `mapVersion`. */
  attached(volumeId: number, mapVersion: number): void;
  detached(volumeId: number): void;
}

export class Attachments {
  listener?: AttachListener;

  constructor(
    private readonly volumes: Volumes,
    private readonly registry: Registry,
    private readonly peers: PeerClients,
  ) {}

  async attach(name: string, headRef: string): Promise<VolumeRecord> {
    const head = this.registry.resolveHead(headRef);
    return this.volumes.exclusive(name, async ({ volume, map }) => {
      // Attaching again to the holder re-pushes the map under a new epoch: the
      // head may have restarted and lost it (a live head takes it in place).
      if (volume.attachedHead && volume.attachedHead !== head.id) {
        const holder = this.registry.head(volume.attachedHead);
        throw new ConflictError(`volume ${name} is attached to head ${holder?.name ?? volume.attachedHead}; detach it first (vsky volume detach ${name})`);
      }
      if (head.state !== 'active') {
        throw new ConflictError(`head ${head.name} is ${head.state} (no heartbeat); check vsky head-agent there or attach to another head`);
      }
      const vlog = log.child({ volumeId: volume.id, volume: name, headId: head.id });
      const epoch = volume.epoch + 1;
      volume.epoch = epoch;
      await this.volumes.saveVolume(volume);
      let nbdUri: string;
      let iscsiUrl: string;
      const mapVersion = this.listener?.mapVersion(volume.id) ?? 0;
      try {
        const reply = await this.peers.head.attach(head.controlAddress, { map: volumeMapView(volume, map, this.registry), epoch, iscsi: volume.access });
        nbdUri = reply.nbdUri;
        iscsiUrl = reply.iscsiUrl;
      } catch (err) {
        vlog.warn({ epoch, err: errorMessage(err) }, 'head refused or failed the attach; the volume stays detached');
        // The head may have half set it up (or succeeded with a lost reply): best effort to drop it.
        this.peers.head.detach(head.controlAddress, { name, force: true }).catch(() => undefined);
        if (volume.attachedHead) { // a failed re-attach: the head no longer serves it
          volume.attachedHead = '';
          volume.nbdUri = '';
          await this.volumes.saveVolume(volume);
          this.listener?.detached(volume.id);
        }
        throw err;
      }
      volume.attachedHead = head.id;
      volume.nbdUri = nbdUri;
      volume.iscsiUrl = iscsiUrl;
      await this.volumes.saveVolume(volume);
      vlog.info({ epoch, nbdUri, head: head.name }, 'volume attached');
      this.listener?.attached(volume.id, mapVersion);
      return volume;
    });
  }

  /**
   * Sets who may reach the volume over iSCSI. A volume attached now gets the
   * rules at once (re-attach under a new epoch); otherwise at its next attach.
   */
  async setAccess(name: string, access: IscsiAccessInput): Promise<VolumeRecord> {
    const rules = validateAccess(access);
    const holder = await this.volumes.exclusive(name, async ({ volume }) => {
      volume.access = rules;
      await this.volumes.saveVolume(volume);
      log.info({ volumeId: volume.id, volume: name, initiators: rules.initiators, chap: Boolean(rules.chapUser), mutual: Boolean(rules.mutualUser) }, 'iSCSI access rules set');
      return volume.attachedHead;
    });
    return holder ? this.attach(name, holder) : this.volumes.entry(name).volume;
  }

  /**
   * A head that registers again (it restarted) gets back every volume the
   * metadata says it holds, each under a new epoch. Failures are logged and
   * leave the volume recorded as detached, as any failed attach does.
   */
  async reattachAll(headId: string, names: string[]): Promise<void> {
    for (const name of names) {
      try {
        await this.attach(name, headId);
      } catch (err) {
        log.warn({ headId, volume: name, err: errorMessage(err) }, 're-attach after head restart failed; the volume is now detached');
      }
    }
  }

  async detach(name: string, force: boolean): Promise<void> {
    await this.volumes.exclusive(name, async ({ volume }) => {
      if (!volume.attachedHead) {
        log.info({ volumeId: volume.id, volume: name }, 'detach of a volume that is not attached: nothing to do');
        return;
      }
      const head = this.registry.head(volume.attachedHead);
      const vlog = log.child({ volumeId: volume.id, volume: name, headId: volume.attachedHead });
      if (head && head.state !== 'active' && !force) {
        throw new ConflictError(`head ${head.name} holding ${name} is ${head.state} (no heartbeat): it cannot flush and release the volume; ` +
          'use --force to forget the attachment (the next attach gets a higher epoch, which fences the old head)');
      }
      if (head) {
        try {
          await this.peers.head.detach(head.controlAddress, { name, force });
        } catch (err) {
          const unreachable = err instanceof TransportError || err instanceof TimeoutError;
          if (err instanceof NotFoundError) {
            vlog.info('head no longer has the volume attached');
          } else if (!force) {
            throw unreachable
              ? new TransportError(`cannot reach head ${head.name} at ${head.controlAddress} to detach ${name}: ${errorMessage(err)}; ` +
                'use --force to forget the attachment (the next attach gets a higher epoch, which fences the old head)')
              : err;
          } else {
            vlog.warn({ err: errorMessage(err) }, 'head did not detach; forgetting the attachment anyway (--force)');
          }
        }
      }
      volume.attachedHead = '';
      volume.nbdUri = '';
      await this.volumes.saveVolume(volume);
      vlog.info({ force, epoch: volume.epoch }, 'volume detached');
      this.listener?.detached(volume.id);
    });
  }
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
