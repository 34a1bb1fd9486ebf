import { GiB } from '../../shared/constants.js';
import type { VolumeRecord } from '../types.js';
import { associations } from './associations.js';
import type { XStruct, XValue } from './codec.js';
import { hsvridOf, volumeOf, type Method, type XmlRpcContext } from './context.js';
import { errnoFault, mapErrors } from './faults.js';
import { lvolBlock } from './ids.js';
import { flagParam, has, isInt, lookupById, mand } from './params.js';
import { ctime, gb, hasFault, volumeTree } from './tree.js';

// Logical volumes: VastSky 3.0's create/delete/attach/detach/list/show on our
// volumes (capacity in GB = GiB; redundancy = replicas).

const MIN_REDUNDANCY = 2;
const MAX_REDUNDANCY = 9;
/** VastSky's MAX_LENGTH, in GB. */
const MAX_CAPACITY_GB = 1024 * 1024;
const LVOLNAME_CHARS = /^[.\-_a-zA-Z0-9]{1,64}$/;

/** check_lvolname: 1-64 of . - _ letters digits, not . or .., not lvol-<hex> (the CLI's id syntax). */
export function checkLvolname(name: XValue): name is string {
  // [0-f] is VastSky's own character range (it spans the digits, A-Z and a-f).
  return typeof name === 'string' && LVOLNAME_CHARS.test(name) && name !== '.' && name !== '..' && !/^lvol-[0-f]+$/.test(name);
}

const createLogicalVolume: Method = async (ctx, data) => {
  const redundancy = has(data, 'redundancy') ? data.redundancy : 3;
  if (!isInt(redundancy) || redundancy < MIN_REDUNDANCY || redundancy > MAX_REDUNDANCY) {
    throw errnoFault('EINVAL', `redundancy must be an int from ${MIN_REDUNDANCY} to ${MAX_REDUNDANCY} (default 3)`);
  }
  if (!has(data, 'lvolname') || !checkLvolname(data.lvolname)) {
    throw errnoFault('EINVAL', 'lvolname must be 1-64 characters from . - _ a-z A-Z 0-9, not "." or "..", and not look like lvol-<hex>');
  }
  const name = data.lvolname as string;
  const capacity = data.capacity;
  if (!has(data, 'capacity') || !isInt(capacity)) throw errnoFault('EINVAL', 'capacity must be an int (GB)');
  if (capacity < 1 || capacity > MAX_CAPACITY_GB) throw errnoFault('EINVAL', `capacity must be 1 to ${MAX_CAPACITY_GB} GB`);
  const { volumes, chunkSize } = ctx.core;
  if (volumes.find(name)) throw errnoFault('EEXIST', `volume ${name} already exists`);
  const size = capacity * GiB;
  if (ctx.ids.left('lvol') < lvolBlock(Math.ceil(size / chunkSize))) throw errnoFault('ENOSPC', 'lvol ids are exhausted');
  const v = await mapErrors(() => volumes.create({ name, size, replicas: redundancy, spreadLabel: '' }), { EEXIST: 'EEXIST', '*': 'ENOSPC' });
  await ctx.ids.sync();
  if (v.intId === undefined) throw errnoFault('ENOSPC', 'lvol ids are exhausted');
  return v.intId;
};

const deleteLogicalVolume: Method = async (ctx, data) => {
  const v = volumeOf(ctx, data);
  if (v.attachedHead || v.standbyHead) throw errnoFault('EBUSY', `volume ${v.name} is attached; detach it first`);
  await mapErrors(() => ctx.core.volumes.delete(v.name), { ECONFLICT: 'EBUSY' });
  return 0;
};

const attachLogicalVolume: Method = async (ctx, data) => {
  mand(data, 'hsvrid');
  const v = volumeOf(ctx, data);
  // VastSky: a snapshot is not attached on its own (vsky volume attach SNAP exports one read-only).
  if (v.kind === 'snapshot') throw errnoFault('EINVAL', `volume ${v.name} is a snapshot: attach its origin, or a clone of it`);
  if (v.attachedHead || v.standbyHead) throw errnoFault('EBUSY', `volume ${v.name} is already attached (hsvrid ${hsvridOf(ctx, v.attachedHead)})`);
  const head = lookupById(data, 'hsvrid', (id) => ctx.ids.head(id));
  if (!head) throw errnoFault('EINVAL', 'no head server with that hsvrid (see listHeadServers)');
  if (head.state !== 'active') throw errnoFault('EINVAL', `head server ${head.name} is offline (no heartbeat)`);
  if (head.halted) throw errnoFault('EINVAL', `head server ${head.name} is offline (halted by shutdownAll: restart it or call registerHeadServer)`);
  // allow_dirty (ours): attach a DIRTY volume anyway (logged; docs/jobs.md).
  await mapErrors(() => ctx.core.attachments.attach(v.name, head.id, { allowDirty: flagParam(data, 'allow_dirty') }), { ECONFLICT: 'EBUSY' });
  return 0;
};

const detachLogicalVolume: Method = async (ctx, data) => {
  const v = volumeOf(ctx, data);
  if (!v.attachedHead && !v.standbyHead) return 0;
  if (ctx.core.volumes.isBusy(v.id)) throw errnoFault('EAGAIN', `volume ${v.name} has an attach, detach or hand-off in progress; retry`);
  await mapErrors(() => ctx.core.attachments.detach(v.name, false), { ECONFLICT: 'EBUSY' });
  return 0;
};

/** ATTACH_EVENT: 1 BINDING while an operation runs on a detached volume, 2 UNBINDING on an attached one. */
function bindEvent(ctx: XmlRpcContext, v: VolumeRecord): number {
  if (!ctx.core.volumes.isBusy(v.id)) return 0;
  return v.attachedHead ? 2 : 1;
}

function listEntry(ctx: XmlRpcContext, v: VolumeRecord): XStruct {
  const entry = ctx.core.volumes.byVolumeId(v.id)!;
  const lease = ctx.core.leases.state(v);
  const assoc = associations(ctx, v);
  return {
    hsvrid: hsvridOf(ctx, v.attachedHead), lvolid: v.intId ?? 0, lvolname: v.name, redundancy: v.replicas,
    capacity: gb(v.size), associated_to: assoc.to, associated_from: assoc.from, fault: hasFault(entry.map),
    bind_status: v.attachedHead ? 1 : 0, bind_event: bindEvent(ctx, v), ctime: ctime(v.createdMs),
    // ours (docs/xmlrpc.md):
    size_bytes: v.size, nbd_uri: v.nbdUri, iscsi_url: v.iscsiUrl ?? '', lease: lease.lease, epoch: v.epoch,
    standby_hsvrid: hsvridOf(ctx, v.standbyHead), standby_nbd_uri: v.standbyNbdUri ?? '', standby_iscsi_url: v.standbyIscsiUrl ?? '',
  };
}

const listLogicalVolumes: Method = async (ctx, data) => {
  const all = ctx.core.volumes.list().filter((v) => v.intId !== undefined);
  const picked = has(data, 'lvolid') || has(data, 'lvolname') ? [volumeOf(ctx, data)] : all.sort((a, b) => a.intId! - b.intId!);
  return picked.map((v) => listEntry(ctx, v));
};

const showLogicalVolume: Method = async (ctx, data) => {
  const v = volumeOf(ctx, data);
  const { map } = ctx.core.volumes.byVolumeId(v.id)!;
  const { registry } = ctx.core;
  return volumeTree(v, map, {
    disk: (id) => registry.disk(id), server: (id) => registry.server(id), dextId: (d, i) => ctx.ids.dextId(d, i),
  });
};

/**
 * VastSky's createSnapshot (docs/snapshots.md): origin by origin_lvolid or
 * origin_lvolname (EINVAL none, ENOENT unknown), snapshot_lvolname checked
 * like an lvolname (EINVAL) and free (EEXIST); a snapshot of a snapshot is
 * EINVAL (its component is not a SNAPSHOT-ORIGIN); an origin with an
 * operation in progress, or whose head cannot pause it, EBUSY. Attached or
 * not; returns the snapshot's lvolid.
 */
const createSnapshot: Method = async (ctx, data) => {
  const origin = volumeOf(ctx, data, 'origin_');
  const name = data.snapshot_lvolname;
  if (!has(data, 'snapshot_lvolname') || !checkLvolname(name)) {
    throw errnoFault('EINVAL', 'snapshot_lvolname must be 1-64 characters from . - _ a-z A-Z 0-9, not "." or "..", and not look like lvol-<hex>');
  }
  if (origin.kind === 'snapshot') throw errnoFault('EINVAL', `${origin.name} is a snapshot: snapshot a volume (or a clone of it)`);
  const { core } = ctx;
  if (core.volumes.find(name)) throw errnoFault('EEXIST', `a volume or snapshot named ${name} exists`);
  if (ctx.ids.left('lvol') < lvolBlock(origin.segmentCount)) throw errnoFault('ENOSPC', 'lvol ids are exhausted');
  const snap = await mapErrors(() => core.snapshots.create(origin.name, name, core.quiesceForSnapshot),
    { EEXIST: 'EEXIST', EINVAL: 'EINVAL', ECONFLICT: 'EBUSY', ENOSPC: 'ENOSPC' });
  await ctx.ids.sync();
  if (snap.intId === undefined) throw errnoFault('ENOSPC', 'lvol ids are exhausted');
  return snap.intId;
};

/**
 * Ours (VastSky 3.0 had no clones; docs/xmlrpc.md): `vsky volume clone` over
 * XML-RPC. The snapshot by snapshot_lvolid or snapshot_lvolname (EINVAL none
 * or not a snapshot, ENOENT unknown), clone_lvolname checked like an lvolname
 * (EINVAL) and free (EEXIST); a snapshot still being set up on its nodes
 * EBUSY. Returns the clone's lvolid: a thin volume backed by the snapshot.
 */
const createClone: Method = async (ctx, data) => {
  const snap = volumeOf(ctx, data, 'snapshot_');
  const name = data.clone_lvolname;
  if (!has(data, 'clone_lvolname') || !checkLvolname(name)) {
    throw errnoFault('EINVAL', 'clone_lvolname must be 1-64 characters from . - _ a-z A-Z 0-9, not "." or "..", and not look like lvol-<hex>');
  }
  if (snap.kind !== 'snapshot') throw errnoFault('EINVAL', `${snap.name} is not a snapshot: clones are made of snapshots (createSnapshot first)`);
  const { core } = ctx;
  if (core.volumes.find(name)) throw errnoFault('EEXIST', `a volume or snapshot named ${name} exists`);
  if (ctx.ids.left('lvol') < lvolBlock(snap.segmentCount)) throw errnoFault('ENOSPC', 'lvol ids are exhausted');
  const clone = await mapErrors(() => core.snapshots.clone(snap.name, name), { EEXIST: 'EEXIST', EINVAL: 'EINVAL', ECONFLICT: 'EBUSY', ENOSPC: 'ENOSPC' });
  await ctx.ids.sync();
  if (clone.intId === undefined) throw errnoFault('ENOSPC', 'lvol ids are exhausted');
  return clone.intId;
};

export const volumeMethods: Record<string, Method> = {
  createLogicalVolume, deleteLogicalVolume, attachLogicalVolume, detachLogicalVolume,
  listLogicalVolumes, showLogicalVolume, createSnapshot, createClone,
};
