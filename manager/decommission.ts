import { InvalidArgumentError, NotFoundError, errorMessage } from '../shared/errors.js';
import { moduleLogger } from '../shared/logger.js';
import type { PeerClients } from './node-clients.js';
import type { Registry } from './registry.js';
import type { ManagerStore } from './store.js';
import type { DiskRecord, ServerRecord } from './types.js';
import type { Volumes } from './volumes.js';

// Taking disks and servers out of the cluster.
//  - Nothing lives there: removed at once.
//  - Otherwise, by default, drained: the disks take no new chunks and every
//    replica on them is copied elsewhere with full redundancy throughout
//    (manager/resync/drains.ts), then they are removed. The call returns once the
//    drain is recorded; ListDisks/ListServers show it going on.
//  - With force: removed at once; the replicas there are marked stale in the
//    same batch (the registry's disksLost hook, manager/failures.ts), so they
//    are never read again even if the disk comes back, and resync rebuilds
//    them elsewhere (with one copy fewer meanwhile).

const log = moduleLogger('manager.decommission');

export class Decommission {
  constructor(
    private readonly store: ManagerStore,
    private readonly registry: Registry,
    private readonly volumes: Volumes,
    private readonly peers: PeerClients,
  ) {}

  async removeDisk(diskId: string, force: boolean): Promise<DiskRecord> {
    if (!diskId) throw new InvalidArgumentError('no disk id given: see vsky disk list');
    const d = this.registry.disk(diskId);
    if (!d) throw new NotFoundError(`no disk "${diskId}": see vsky disk list`, { diskId });
    if (d.state === 'removed') return d;
    const server = this.registry.server(d.serverId);
    const used = this.volumes.usersOfDisks([d.id]);
    const batch = this.store.batch();
    if (used.chunks > 0 && !force) {
      this.registry.setDraining(d, true, `removed by an admin: ${used.chunks} chunk(s) are moved elsewhere first`, batch);
      await this.store.write(batch);
      return d;
    }
    delete d.draining;
    this.registry.setDiskState(d, 'removed', force && used.chunks > 0 ? `removed by an admin with --force (${used.chunks} chunks in use)` : 'removed by an admin', batch);
    await this.store.write(batch);
    log.info({ diskId: d.id, serverId: d.serverId, force, replicasLost: used.chunks }, 'disk removed');
    if (server?.state === 'active') {
      // The node stops serving it; best effort, the manager's decision stands.
      this.peers.node.removeDisk(server.controlAddress, { diskId: d.id, force }).catch((err: unknown) => {
        log.warn({ diskId: d.id, err: errorMessage(err) }, 'the node did not release the removed disk');
      });
    }
    return d;
  }

  async removeServer(ref: string, force: boolean): Promise<ServerRecord> {
    const s = this.registry.resolveServer(ref);
    if (s.state === 'removed') return s;
    const disks = this.registry.disksOf(s.id).filter((d) => d.state !== 'removed');
    const used = this.volumes.usersOfDisks(disks.map((d) => d.id));
    const batch = this.store.batch();
    if (used.chunks > 0 && !force) {
      s.draining = true;
      batch.putServer(s);
      batch.event('drain.started', `server:${s.name}`, `removed by an admin: ${used.chunks} chunk(s) on ${disks.length} disk(s) are moved elsewhere first`, { serverId: s.id, chunks: used.chunks, disks: disks.length });
      for (const d of disks) this.registry.setDraining(d, true, `server ${s.name} removed by an admin: its chunks are moved elsewhere first`, batch);
      await this.store.write(batch);
      log.info({ serverId: s.id, name: s.name, disks: disks.length, chunks: used.chunks }, `server ${s.name} draining: ${used.chunks} chunk(s) are moved elsewhere, then it is removed`);
      return s;
    }
    delete s.draining;
    for (const d of disks) delete d.draining;
    this.registry.setServerState(s, 'removed', force && used.chunks > 0 ? `removed by an admin with --force (${used.chunks} chunks in use)` : 'removed by an admin', batch);
    await this.store.write(batch);
    log.info({ serverId: s.id, name: s.name, force, replicasLost: used.chunks }, 'server removed');
    return s;
  }
}
