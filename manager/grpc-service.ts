import { ConflictError, InvalidArgumentError, NotFoundError } from '../shared/errors.js';
import { unary } from '../shared/grpc.js';
import type { ManagerHandlers } from '../proto/generated/vsky/manager/Manager.js';
import type { ManagerCore } from './core.js';
import { eventView } from './events.js';
import { flattenVolume } from './flatten.js';
import { serverIdsReply } from './int-id-claims.js';
import { jobView } from './jobs/records.js';
import type { LeaseMove } from './leases.js';
import { isResyncJobId, resyncJobView, resyncJobViews, resyncListView, volumeHealth } from './resync/index.js';
import type { VolumeRecord } from './types.js';
import { diskView, headView, serverView, volumeMapView, volumeView } from './views.js';

// proto/manager.proto rpcs -> the manager's parts. Handlers only translate:
// validation and decisions live in registry/volumes/attachments/decommission.

export function managerHandlers(core: ManagerCore): ManagerHandlers {
  const { registry, volumes, attachments, leases, decommission, gc, model, failures, resyncs } = core;
  const info = (v: VolumeRecord) => volumeView(v, registry, volumeHealth(resyncs, volumes, v.id), leases.state(v), volumes.byVolumeId(v.id)?.map);
  const moved = (m: LeaseMove) => ({ info: info(m.volume), epoch: m.epoch, clean: m.clean, waitMs: m.waitMs });
  return {
    RegisterServer: unary(async (req) => {
      const s = await registry.registerServer(req);
      return {
        ...serverView(s, registry), clusterId: core.store.clusterId,
        volumeEpochs: volumes.epochsOnServer(s.id, (d) => registry.serverOfDisk(d)?.id),
      };
    }),
    Heartbeat: unary(async (req) => {
      if (!req.serverId) throw new InvalidArgumentError('Heartbeat needs a server_id');
      const known = await registry.heartbeat(req.serverId, req.disks);
      return { known, ...(known ? serverIdsReply(registry, req.serverId, core.store.clusterId, core.intIdCounters()) : {}) };
    }),
    AddServer: unary(async (req) => serverView(await registry.addServer(req.controlAddress, req.labels), registry)),
    ListServers: unary(async () => ({ servers: registry.listServers().map((s) => serverView(s, registry)) })),
    RemoveServer: unary(async (req) => {
      const s = await decommission.removeServer(req.server, req.force);
      resyncs.wake('server removal');
      return serverView(s, registry);
    }),

    AddDisk: unary(async (req) => diskView(await registry.addDisk(req.server, req.path, req.size), registry, model)),
    ListDisks: unary(async (req) => {
      const serverId = req.server ? registry.resolveServer(req.server).id : '';
      const disks = registry.listDisks().filter((d) => !serverId || d.serverId === serverId);
      return { disks: disks.map((d) => diskView(d, registry, model, resyncs.drains.noteFor(d.id))) };
    }),
    RemoveDisk: unary(async (req) => {
      const d = await decommission.removeDisk(req.diskId, req.force);
      resyncs.wake('disk removal');
      return diskView(d, registry, model, resyncs.drains.noteFor(d.id));
    }),

    RegisterHead: unary(async (req) => {
      const h = await registry.registerHead(req);
      const held = core.attachedTo(h.id);
      const standby = core.standbyOf(h.id);
      // Reply first (the head is serving by now), then give it its volumes back.
      if (held.length + standby.length > 0) setTimeout(() => void core.attachments.reattachAll(h.id, held, standby), 100);
      return headView(h, held, registry.headClockOffset(h.id));
    }),
    HeadHeartbeat: unary(async (req) => {
      if (!req.headId) throw new InvalidArgumentError('HeadHeartbeat needs a head_id');
      const known = await registry.headHeartbeat(req.headId, req.clockOffsetKnown ? req.clockOffsetMs : undefined);
      if (known) core.jobs.copies.heartbeat(req.headId, req.jobs);
      return {
        known, revoked: known ? leases.renew(req.headId, req.leases) : [],
        intId: registry.head(req.headId)?.intId ?? 0, clusterId: core.store.clusterId, managerTimeMs: Date.now(),
      };
    }),
    ListHeads: unary(async () => ({ heads: registry.listHeads().map((h) => headView(h, core.attachedTo(h.id), registry.headClockOffset(h.id))) })),

    CreateVolume: unary(async (req) => info(await volumes.create({
      name: req.name, size: req.size, replicas: req.replicas, spreadLabel: req.spreadLabel, thin: !req.thick,
    }))),
    CreateSnapshot: unary(async (req) => info(await core.snapshots.create(req.volume, req.name, core.quiesceForSnapshot))),
    CloneVolume: unary(async (req) => info(await core.snapshots.clone(req.snapshot, req.name))),
    FlattenVolume: unary(async (req) => info(await flattenVolume(req.name, { volumes, jobs: core.jobs }))),
    DeleteVolume: unary(async (req) => {
      await volumes.delete(req.name);
      return {};
    }),
    ListVolumes: unary(async () => ({ volumes: volumes.list().map(info) })),
    ShowVolume: unary(async (req) => {
      const { volume, map } = volumes.entry(req.name);
      return { info: info(volume), map: volumeMapView(volume, map, registry) };
    }),
    AttachVolume: unary(async (req) => {
      const v = await attachments.attach(req.name, req.head, { migrate: req.migrate, force: req.force, allowDirty: req.allowDirty });
      return req.migrate
        ? { info: info(v), nbdUri: v.standbyNbdUri ?? '', iscsiUrl: v.standbyIscsiUrl ?? '' }
        : { info: info(v), nbdUri: v.nbdUri, iscsiUrl: v.iscsiUrl ?? '' };
    }),
    AcquireLease: unary(async (req) => moved(await leases.acquire(req.name, req.headId, req.requestId))),
    HandoffVolume: unary(async (req) => moved(await leases.handoff(req.name, req.to))),
    SetVolumeAccess: unary(async (req) => info(await attachments.setAccess(req.name, req.access ?? {}))),
    DetachVolume: unary(async (req) => {
      if (req.head) await leases.detachHead(req.name, req.head, req.force);
      else await attachments.detach(req.name, req.force);
      return {};
    }),

    ReportReplicaFailure: unary(async (req) => ({ map: await failures.reportReplicaFailure(req) })),
    FailDisk: unary(async (req) => {
      await failures.failDisk(req.diskId, req.reason);
      return {};
    }),
    FailServer: unary(async (req) => {
      await failures.failServer(req.server, req.reason);
      return {};
    }),
    ReportResyncProgress: unary(async (req) => resyncs.progress(req)),
    ListResyncs: unary(async () => resyncListView(resyncs, volumes, registry)),

    Status: unary(async () => ({
      ...core.status(), volumeList: volumes.list().map(info), managerTimeMs: Date.now(), leaseTtlMs: registry.leaseTtlMs,
    })),
    CollectGarbage: unary(async () => gc.run('requested')),
    SubmitJob: unary(async (req) => jobView(await core.jobs.submit({
      jobId: req.jobId, kind: req.kind, volume: req.volume, expectedGeneration: req.expectedGeneration, args: req.args,
    }))),
    // Resyncs and drain copies appear read-only among the jobs (manager/resync/job-views.ts).
    GetJob: unary(async (req) => {
      if (!isResyncJobId(req.jobId)) return jobView(core.jobs.get(req.jobId));
      const v = await resyncJobView(core.resyncs, volumes, registry, core.events, req.jobId);
      if (!v) throw new NotFoundError(`no resync or drain "${req.jobId}" queued, running or in the event log: see vsky job list, vsky resync list`, { jobId: req.jobId });
      return v;
    }),
    ListJobs: unary(async (req) => ({ jobs: [...core.jobs.list(req.volume).map(jobView), ...resyncJobViews(core.resyncs, volumes, registry, req.volume)] })),
    AbortJob: unary(async (req) => {
      if (isResyncJobId(req.jobId)) throw new ConflictError(`${req.jobId} is a resync, shown among the jobs read-only: it cannot be aborted (it ends when its replica is in sync)`);
      return jobView(await core.jobs.abort(req.jobId));
    }),
    ReportJob: unary(async (req) => core.jobs.copies.report(req)),
    AllocateSegment: unary(async (req) => core.thin.allocate({ volume: req.volume, segment: req.segment, epoch: req.epoch, headId: req.headId })),
    FreeSegment: unary(async (req) => core.thin.free({ volume: req.volume, segment: req.segment, epoch: req.epoch, headId: req.headId })),
    ReconVolume: unary(async (req) => {
      const { volume } = volumes.entry(req.name);
      const last = core.jobs.list(volume.name).filter((j) => j.volumeId === volume.id).at(-1);
      return core.jobs.recon.investigate(req.name, last ? { id: last.id, expectedGeneration: last.expectedGeneration } : undefined);
    }),
    ListEvents: unary(async (req) => {
      const latestSeq = core.events.latestSeq; // before the read: every matching event up to it is in the answer (unless limited)
      const events = await core.events.list({ afterSeq: req.afterSeq > 0 ? req.afterSeq : undefined, limit: req.limit, target: req.target, kind: req.kind });
      return { events: events.map(eventView), latestSeq };
    }),
  };
}
