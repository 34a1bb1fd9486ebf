import { ConflictError, InvalidArgumentError, NotFoundError, errorMessage } from '../shared/errors.js';
import { moduleLogger } from '../shared/logger.js';
import type { PeerClients } from './node-clients.js';
import type { Registry } from './registry.js';
import type { ManagerStore } from './store.js';
import type { Volumes } from './volumes.js';

// Taking disks and servers out of the cluster. Refused while chunks live on
// them (naming the volumes and the fix) unless forced; a forced removal marks
// the replicas there stale in the same batch (the registry's disksLost hook,
// manager/failures.ts), so they are never read again even if the disk comes
// back, and resync rebuilds them elsewhere.

const log = moduleLogger('manager.decommission');

export class Decommission {
  constructor(
    private readonly store: ManagerStore,
    private readonly registry: Registry,
    private readonly volumes: Volumes,
    private readonly peers: PeerClients,
  ) {}

  async removeDisk(diskId: string, force: boolean): Promise<void> {
    if (!diskId) throw new InvalidArgumentError('no disk id given: see vsky disk list');
    const d = this.registry.disk(diskId);
    if (!d) throw new NotFoundError(`no disk "${diskId}": see vsky disk list`, { diskId });
    if (d.state === 'removed') return;
    const server = this.registry.server(d.serverId);
    const lost = this.refuseIfUsed(`disk ${d.id} (${d.path} on ${server?.name ?? d.serverId})`, [d.id], force);
    const batch = this.store.batch();
    this.registry.setDiskState(d, 'removed', force && lost > 0 ? `removed by an admin with --force (${lost} chunks in use)` : 'removed by an admin', batch);
    await this.store.write(batch);
    log.info({ diskId: d.id, serverId: d.serverId, force, replicasLost: lost }, 'disk removed');
    if (server?.state === 'active') {
      // The node stops serving it; best effort, the manager's decision stands.
      this.peers.node.removeDisk(server.controlAddress, { diskId: d.id, force }).catch((err: unknown) => {
        log.warn({ diskId: d.id, err: errorMessage(err) }, 'the node did not release the removed disk');
      });
    }
  }

  async removeServer(ref: string, force: boolean): Promise<void> {
    const s = this.registry.resolveServer(ref);
    if (s.state === 'removed') return;
    const disks = this.registry.disksOf(s.id).filter((d) => d.state !== 'removed');
    const lost = this.refuseIfUsed(`server ${s.name}`, disks.map((d) => d.id), force);
    const batch = this.store.batch();
    this.registry.setServerState(s, 'removed', force && lost > 0 ? `removed by an admin with --force (${lost} chunks in use)` : 'removed by an admin', batch);
    await this.store.write(batch);
    log.info({ serverId: s.id, name: s.name, force, replicasLost: lost }, 'server removed');
  }

  /** Throws unless nothing lives on the disks or `force`; returns the chunks in use. */
  private refuseIfUsed(what: string, diskIds: string[], force: boolean): number {
    const { volumes, otherChunks, chunks } = this.volumes.usersOfDisks(diskIds);
    if (chunks === 0) return 0;
    if (force) {
      log.warn({ what, volumes, chunks }, 'forced removal: replicas there are lost until resync');
      return chunks;
    }
    const parts: string[] = [];
    if (volumes.length > 0) parts.push(`replicas of volume${volumes.length > 1 ? 's' : ''} ${volumes.join(', ')}`);
    if (otherChunks > 0) parts.push(`${otherChunks} chunks waiting to be freed (run vsky gc)`);
    throw new ConflictError(
      `${what} holds ${parts.join(' and ')}: delete those volumes first (vsky volume delete NAME), ` +
      'or remove it with --force (those replicas are then lost until resync)',
      { volumes, otherChunks, chunks },
    );
  }
}
