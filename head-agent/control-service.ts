import { InvalidArgumentError } from '../shared/errors.js';
import { addStandardServices, bindServer, grpc, loadProtos, unary } from '../shared/grpc.js';
import { newDaemonServer } from '../shared/security/authorize.js';
import { moduleLogger } from '../shared/logger.js';
import type { AttachVolumeReply } from '../proto/generated/vsky/head/AttachVolumeReply.js';
import type { AttachVolumeRequest__Output } from '../proto/generated/vsky/head/AttachVolumeRequest.js';
import type { AttachedList } from '../proto/generated/vsky/head/AttachedList.js';
import type { DetachVolumeRequest__Output } from '../proto/generated/vsky/head/DetachVolumeRequest.js';
import type { QuiesceVolumeRequest__Output } from '../proto/generated/vsky/head/QuiesceVolumeRequest.js';
import type { ReleaseLeaseRequest__Output } from '../proto/generated/vsky/head/ReleaseLeaseRequest.js';
import type { Empty } from '../proto/generated/vsky/common/Empty.js';
import type { ResyncTask__Output } from '../proto/generated/vsky/common/ResyncTask.js';
import type { HeadAgentHandlers } from '../proto/generated/vsky/head/HeadAgent.js';
import type { Attachments } from './attachments.js';
import { accessFromProto, iscsiUrl, targetIqn, type IscsiExports } from './frontend/iscsi-exports.js';
import type { ResyncService } from './resync/resync-service.js';
import type { JobHost } from './jobs/job-host.js';
import type { RunJobRequest__Output } from '../proto/generated/vsky/head/RunJobRequest.js';

// The head agent's gRPC control service (proto/head_agent.proto), called by
// the manager: Attach builds and fences a volume, then answers with the NBD
// URI it is exported under; Detach flushes and drops it; ListAttached reports;
// UpdateMap applies new replica states in place; StartResync copies a segment
// to a resyncing replica in the background; ReleaseLease drains, flushes and
// gives up a volume's write lease (a live migration's other head wants it);
// RunJob hosts a storage job that moves data (job-host.ts).

export interface ControlServiceOptions {
  attachments: Attachments;
  /** HOST:PORT the NBD server listens on (for nbd:// URIs). */
  nbdAddress: string;
  /** NBD clients connected to an export now, when the NBD server can tell. */
  connectionCount?: (exportName: string) => number;
  /** The iSCSI portal and its exports, when the head serves iSCSI. */
  iscsi?: { exports: IscsiExports; address: string; sessionCount: (iqn: string) => number };
  /** Runs StartResync tasks. */
  resync?: ResyncService;
  /** Hosts storage jobs that move data (RunJob). */
  jobs?: JobHost;
}

export function nbdUri(nbdAddress: string, name: string): string {
  return `nbd://${nbdAddress}/${encodeURIComponent(name)}`;
}

export function createControlHandlers(opts: ControlServiceOptions): HeadAgentHandlers {
  const { attachments, nbdAddress } = opts;
  return {
    Attach: unary(async (req: AttachVolumeRequest__Output): Promise<AttachVolumeReply> => {
      if (req.map === null || req.map === undefined) throw new InvalidArgumentError('Attach: the request carries no volume map');
      const volume = await attachments.attach(req.map, req.epoch, { standby: req.standby, reconcile: req.reconcile, readOnly: req.readOnly });
      const iscsi = opts.iscsi;
      if (iscsi === undefined) return { nbdUri: nbdUri(nbdAddress, volume.name), iscsiUrl: '' };
      iscsi.exports.expose(volume, volume.volumeId, accessFromProto(req.iscsi));
      return { nbdUri: nbdUri(nbdAddress, volume.name), iscsiUrl: iscsiUrl(iscsi.address, volume.name) };
    }),
    Detach: unary(async (req: DetachVolumeRequest__Output): Promise<Empty> => {
      if (!req.name) throw new InvalidArgumentError('Detach: a volume name is required');
      opts.iscsi?.exports.remove(req.name); // no new logins; then flush and drop
      await attachments.detach(req.name, req.force);
      return {};
    }),
    UpdateMap: unary(async (req: AttachVolumeRequest__Output): Promise<Empty> => {
      if (req.map === null || req.map === undefined) throw new InvalidArgumentError('UpdateMap: the request carries no volume map');
      await attachments.updateMap(req.map, req.epoch);
      return {};
    }),
    ReleaseLease: unary(async (req: ReleaseLeaseRequest__Output): Promise<Empty> => {
      if (!req.name) throw new InvalidArgumentError('ReleaseLease: a volume name is required');
      await attachments.release(req.name, req.epoch);
      return {};
    }),
    QuiesceVolume: unary(async (req: QuiesceVolumeRequest__Output): Promise<Empty> => {
      if (!req.name) throw new InvalidArgumentError('QuiesceVolume: a volume name is required');
      await (req.resume ? attachments.unquiesce(req.name) : attachments.quiesce(req.name, req.epoch));
      return {};
    }),
    FlattenVolume: unary(async (req: QuiesceVolumeRequest__Output) => {
      if (!req.name) throw new InvalidArgumentError('FlattenVolume: a volume name is required');
      const done = await attachments.flatten(req.name, req.epoch, req.firstSegment, req.segmentCount);
      return { bytesCopied: done.bytes, regionsCopied: done.regions };
    }),
    StartResync: unary(async (task: ResyncTask__Output): Promise<Empty> => {
      if (opts.resync === undefined) throw new InvalidArgumentError('StartResync: this head agent runs no resyncs');
      opts.resync.start(task);
      return {};
    }),
    RunJob: unary(async (req: RunJobRequest__Output): Promise<Empty> => {
      if (opts.jobs === undefined) throw new InvalidArgumentError('RunJob: this head agent hosts no storage jobs');
      opts.jobs.start(req);
      return {};
    }),
    ListAttached: unary(async (): Promise<AttachedList> => ({
      volumes: attachments.list().map((v) => ({
        name: v.name, volumeId: v.volumeId, epoch: v.epoch, nbdUri: nbdUri(nbdAddress, v.name), size: v.size,
        connections: opts.connectionCount?.(v.name) ?? 0,
        iscsiUrl: opts.iscsi ? iscsiUrl(opts.iscsi.address, v.name) : '',
        iscsiSessions: opts.iscsi?.sessionCount(targetIqn(v.name)) ?? 0,
        lease: v.lease,
      })),
    })),
  };
}

export interface ControlServer {
  /** HOST:PORT bound. */
  address: string;
  close(): Promise<void>;
}

/** Serves the control service on host:port (0 picks a port). */
export async function startControlServer(host: string, port: number, opts: ControlServiceOptions): Promise<ControlServer> {
  const server = newDaemonServer();
  server.addService(loadProtos().head.vsky.head.HeadAgent.service, createControlHandlers(opts));
  addStandardServices(server, 'head_agent.proto', 'vsky.head.HeadAgent');
  const bound = await bindServer(server, `${host}:${port}`);
  const address = `${host}:${bound}`;
  moduleLogger('head-control').debug({ address }, 'control service listening');
  return {
    address,
    close: () => new Promise<void>((resolve) => {
      const force = setTimeout(() => { server.forceShutdown(); resolve(); }, 2000);
      force.unref();
      server.tryShutdown(() => { clearTimeout(force); resolve(); });
    }),
  };
}
