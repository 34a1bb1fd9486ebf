import { ConflictError, TransportError, errorMessage } from '../../shared/errors.js';
import { bindServer, loadProtos, unary } from '../../shared/grpc.js';
import { newDaemonServer } from '../../shared/security/authorize.js';
import { moduleLogger } from '../../shared/logger.js';
import type { NodeInfo__Output } from '../../proto/generated/vsky/storage/NodeInfo.js';
import type { PeerClients } from '../node-clients.js';
import type { NodeTable } from './plan.js';

// The first half of a rebuild from storage: a manager that lost its database
// listens where it always does, with only the calls storage nodes make
// (RegisterServer, Heartbeat); every node that registers is asked for its
// chunk table (ListChunks). Heads and admins are told the manager is
// rebuilding. The nodes' disks name the cluster they belong to: the manager
// adopts that id, and refuses a node whose disks name another one.

const log = moduleLogger('manager.rebuild');

export interface CollectOptions {
  listen: string;
  /** How long to wait for nodes to register at most (ms). */
  waitMs: number;
  /** Stop waiting once this many servers registered (and none came for quietMs). */
  expectServers?: number;
  /** With expectServers: how long no new node must register before collecting (default 1000 ms). */
  quietMs?: number;
}

export interface Collected {
  clusterId: string;
  nodes: NodeTable[];
}

export async function collectNodeTables(opts: CollectOptions, peers: PeerClients): Promise<Collected> {
  const seen = new Map<string, NodeInfo__Output>();
  let clusterId = '';
  let lastJoinMs = Date.now();
  const rebuilding = (): never => {
    throw new TransportError('the manager is rebuilding its metadata from the storage nodes; retry in a moment');
  };
  const server = newDaemonServer();
  server.addService(loadProtos().manager.vsky.manager.Manager.service, {
    RegisterServer: unary(async (info: NodeInfo__Output) => {
      const ids = [...new Set(info.disks.map((d) => d.clusterId).filter(Boolean))];
      if (ids.length > 1 || (ids[0] && clusterId && ids[0] !== clusterId)) {
        throw new ConflictError(`server ${info.name} has disks of cluster(s) ${ids.join(', ')}, the rebuild adopted ${clusterId || ids[0]}: not adopted`);
      }
      if (ids[0] && !clusterId) {
        clusterId = ids[0];
        log.info({ clusterId, server: info.name }, 'adopting the cluster id found on the disks');
      }
      if (!seen.has(info.serverId)) lastJoinMs = Date.now();
      seen.set(info.serverId, info);
      log.info({ server: info.name, disks: info.disks.length, servers: seen.size }, 'storage node registered (rebuild)');
      return { serverId: info.serverId, name: info.name, dataAddress: info.dataAddress, controlAddress: info.controlAddress, state: 'active', clusterId, volumeEpochs: [] };
    }),
    Heartbeat: unary(async (req: { serverId: string }) => ({ known: seen.has(req.serverId), revoked: [] })),
    RegisterHead: unary(async () => rebuilding()),
    HeadHeartbeat: unary(async () => rebuilding()),
  });
  await bindServer(server, opts.listen);
  log.warn({ listen: opts.listen, waitMs: opts.waitMs, expectServers: opts.expectServers }, 'rebuilding the manager database from the storage nodes: waiting for them to register');
  try {
    const started = Date.now();
    const quiet = opts.quietMs ?? 1000;
    for (;;) {
      const enough = opts.expectServers !== undefined && seen.size >= opts.expectServers && Date.now() - lastJoinMs >= quiet;
      if (enough || Date.now() - started >= opts.waitMs) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    const nodes = await Promise.all([...seen.values()].map(async (server) => {
      try {
        const list = await peers.node.listChunks(server.controlAddress, { diskId: '' });
        return { server, chunks: list.chunks, volumeNotes: list.volumeNotes, deletedVolumes: list.deletedVolumes };
      } catch (err) {
        throw new TransportError(`cannot read the chunk table of ${server.name} at ${server.controlAddress}: ${errorMessage(err)}; `
          + 'the rebuild needs every node that registered: retry', { server: server.name });
      }
    }));
    return { clusterId, nodes };
  } finally {
    await new Promise<void>((resolve) => {
      const force = setTimeout(() => { server.forceShutdown(); resolve(); }, 1000);
      server.tryShutdown(() => { clearTimeout(force); resolve(); });
    });
  }
}
