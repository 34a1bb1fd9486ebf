import { DEFAULT_NODE_GRPC_PORT } from '../../shared/constants.js';
import type { DiskRecord, HeadRecord, ServerRecord } from '../types.js';
import type { XStruct, XValue } from './codec.js';
import { PRIORITY, ipData, type Method, type XmlRpcContext } from './context.js';
import { errnoFault, internalFault, mapErrors } from './faults.js';
import { has, idValue, isInt, lookupById, mand, truthy } from './params.js';
import { gb } from './tree.js';
import { resumeHead } from '../halt.js';

// Head servers, storage servers and physical disks. Ours register themselves
// (the head agent and the storage node call the manager over gRPC when they
// start), so VastSky's register* calls look them up by address instead of
// creating them; delete* keep VastSky's rule that only an offline or faulty
// one can be deleted.

function headPriority(h: HeadRecord): number {
  return h.state === 'active' && !h.halted ? PRIORITY.HIGH : PRIORITY.OFFLINE;
}

function serverPriority(s: ServerRecord): number {
  if (s.state !== 'active') return PRIORITY.OFFLINE;
  if (s.halted) return PRIORITY.HALT;
  return s.draining ? PRIORITY.EVACUATE : PRIORITY.HIGH;
}

function diskPriority(ctx: XmlRpcContext, d: DiskRecord): number {
  if (d.state === 'failed') return PRIORITY.FAULTY;
  const server = ctx.core.registry.server(d.serverId);
  if (server?.state !== 'active') return PRIORITY.OFFLINE;
  if (server.halted) return PRIORITY.HALT;
  if (d.draining) return PRIORITY.EVACUATE;
  return (d.badChunks?.length ?? 0) > 0 ? PRIORITY.LOW : PRIORITY.HIGH; // VastSky: bad blocks take a disk from HIGH to LOW
}

/** Resyncs writing to the disks (VastSky's `resync`: rebuilds in progress). */
function resyncsOn(ctx: XmlRpcContext, diskIds: Set<string>): number {
  return ctx.core.resyncs.book.all().filter((r) => diskIds.has(r.target.diskId)).length;
}

function diskSpace(ctx: XmlRpcContext, d: DiskRecord): { capacity: number; available: number } {
  const used = ctx.core.model.diskUsage(d.id)?.used ?? d.chunkCount;
  const p = diskPriority(ctx, d);
  const free = p === PRIORITY.HIGH || p === PRIORITY.LOW ? Math.max(0, d.chunkCount - used) : 0;
  return { capacity: d.chunkCount * d.chunkSize, available: free * d.chunkSize };
}

const liveDisks = (ctx: XmlRpcContext) => ctx.core.registry.listDisks().filter((d) => ctx.ids.diskLive(d) && d.intId !== undefined);
const liveServers = (ctx: XmlRpcContext) => ctx.core.registry.listServers().filter((s) => s.state !== 'removed' && s.intId !== undefined);

function pick<T extends { intId?: number }>(all: T[], data: XStruct, key: string, what: string): T[] {
  if (!has(data, key) || !truthy(data[key])) return all.sort((a, b) => a.intId! - b.intId!);
  const id = idValue(data[key]);
  const found = all.filter((x) => x.intId === id);
  if (found.length === 0) throw errnoFault('ENOENT', `no ${what} with ${key} ${String(data[key])}`);
  return found;
}

const listHeadServers: Method = async (ctx, data) => {
  const heads = ctx.core.registry.listHeads().filter((h) => h.intId !== undefined);
  return pick(heads, data, 'hsvrid', 'head server').map((h) => ({
    hsvrid: h.intId!, priority: headPriority(h), ip_data: ipData(h), resync: 0,
    name: h.name, head_id: h.id, nbd_address: h.nbdAddress, // ours
  }));
};

const listStorageServers: Method = async (ctx, data) => pick(liveServers(ctx), data, 'ssvrid', 'storage server').map((s) => {
  const disks = ctx.core.registry.disksOf(s.id).filter((d) => d.state !== 'removed');
  let capacity = 0;
  let available = 0;
  for (const d of disks) {
    const sp = diskSpace(ctx, d);
    capacity += sp.capacity;
    available += s.state === 'active' ? sp.available : 0;
  }
  return {
    ssvrid: s.intId!, priority: serverPriority(s), ip_data: ipData(s), resync: resyncsOn(ctx, new Set(disks.map((d) => d.id))),
    available: gb(available), capacity: gb(capacity),
    name: s.name, server_id: s.id, capacity_bytes: capacity, available_bytes: available, // ours
  };
});

const listPhysicalDisks: Method = async (ctx, data) => {
  let disks = liveDisks(ctx).sort((a, b) => a.intId! - b.intId!);
  if (has(data, 'ssvrid') && truthy(data.ssvrid)) {
    const [server] = pick(liveServers(ctx), data, 'ssvrid', 'storage server');
    disks = disks.filter((d) => d.serverId === server!.id);
  }
  return disks.map((d) => {
    const sp = diskSpace(ctx, d);
    return {
      ssvrid: ctx.core.registry.server(d.serverId)?.intId ?? 0, pdskid: d.intId!, priority: diskPriority(ctx, d), local_path: d.path,
      resync: resyncsOn(ctx, new Set([d.id])), capacity: gb(sp.capacity), available: gb(sp.available), srp_name: '',
      disk_id: d.id, capacity_bytes: sp.capacity, available_bytes: sp.available, // ours
    };
  });
};

/** ip_data: a non-empty array of dotted quads (VastSky: a non-string element is a 500, a bad list EINVAL). */
function ipList(data: XStruct): string[] {
  mand(data, 'ip_data');
  const list = data.ip_data;
  if (!Array.isArray(list) || list.length === 0) throw errnoFault('EINVAL', 'ip_data must be a non-empty array of dotted-quad strings');
  if (!list.every((x): x is string => typeof x === 'string')) throw internalFault('ip_data holds a value that is not a string');
  if (!list.every((x) => /^\d+\.\d+\.\d+\.\d+$/.test(x))) throw errnoFault('EINVAL', 'ip_data must hold dotted-quad IPv4 addresses');
  return list;
}

function matching<T extends HeadRecord | ServerRecord>(all: T[], ips: string[]): T[] {
  return all.filter((r) => ipData(r).some((ip) => ips.includes(ip)));
}

const registerHeadServer: Method = async (ctx, data) => {
  const ips = ipList(data);
  const found = matching(ctx.core.registry.listHeads(), ips);
  if (found.length === 0) throw errnoFault('EINVAL', `no head agent at ${ips.join(', ')}: run vsky head-agent there; it registers itself`);
  if (found.length > 1) throw errnoFault('EEXIST', `${found.length} head agents match ${ips.join(', ')} (${found.map((h) => h.name).join(', ')})`);
  const h = found[0]!;
  if (h.halted) {
    await resumeHead(ctx.core.store, h, 'registerHeadServer over XML-RPC: no longer halted (shutdownAll)');
    return h.intId ?? 0;
  }
  if (h.state === 'active') throw errnoFault('EEXIST', `head server ${h.name} is registered and online (hsvrid ${h.intId})`);
  return h.intId ?? 0; // an offline one keeps its id; its next heartbeat brings it back
};

const registerStorageServer: Method = async (ctx, data) => {
  const ips = ipList(data);
  const found = matching(ctx.core.registry.listServers(), ips);
  if (found.length > 1) throw errnoFault('EEXIST', `${found.length} storage servers match ${ips.join(', ')} (${found.map((s) => s.name).join(', ')})`);
  const s = found[0];
  if (s?.state === 'active' && !s.halted) throw errnoFault('EEXIST', `storage server ${s.name} is registered and online (ssvrid ${s.intId})`);
  // An offline, halted or removed one is added back (vsky server add); an unknown one at its default control port.
  const address = s?.controlAddress ?? `${ips[0]}:${DEFAULT_NODE_GRPC_PORT}`;
  const added = await mapErrors(() => ctx.core.registry.addServer(address, {}), { ECONFLICT: 'EINVAL', EINVAL: 'EINVAL' });
  await ctx.ids.sync();
  return added.intId ?? 0;
};

/** registerPhysicalDisk's capacity: a string (or int) of 512-byte sectors, > 0. */
function sectors(v: XValue): number {
  const n = isInt(v) ? v : typeof v === 'string' && /^\s*[+-]?\d{1,18}\s*$/.test(v) ? Number(v) : NaN;
  if (!Number.isSafeInteger(n) || n <= 0 || n * 512 > Number.MAX_SAFE_INTEGER) throw errnoFault('EINVAL', 'capacity must be a positive number of 512-byte sectors (a string)');
  return n;
}

const registerPhysicalDisk: Method = async (ctx, data) => {
  mand(data, 'ssvrid', 'local_path', 'capacity');
  const server = lookupById(data, 'ssvrid', (id) => ctx.ids.server(id));
  if (!server || server.state !== 'active') throw errnoFault('EINVAL', 'no online storage server with that ssvrid');
  const path = data.local_path;
  if (typeof path !== 'string' || path === '') throw errnoFault('EINVAL', 'local_path must be a non-empty string');
  const size = sectors(data.capacity) * 512;
  const same = ctx.core.registry.disksOf(server.id).find((d) => d.path === path && d.state === 'active');
  if (same) throw errnoFault('EEXIST', `${path} on ${server.name} is registered and online (pdskid ${same.intId})`);
  const d = await mapErrors(() => ctx.core.registry.addDisk(server.id, path, size), { EINVAL: 'EINVAL', ECONFLICT: 'EINVAL' });
  await ctx.ids.sync();
  return d.intId ?? 0;
};

const deletePhysicalDisk: Method = async (ctx, data) => {
  mand(data, 'pdskid');
  const d = lookupById(data, 'pdskid', (id) => ctx.ids.disk(id));
  if (!d) throw errnoFault('ENOENT', 'no disk with that pdskid');
  if (diskPriority(ctx, d) !== PRIORITY.FAULTY && diskPriority(ctx, d) !== PRIORITY.OFFLINE) {
    throw errnoFault('EBUSY', `disk ${d.path} is online: notifyFailure it first (or vsky disk remove, which drains it)`);
  }
  // Its replicas are stale already (failed disk or server): removed at once, as with --force.
  await ctx.core.decommission.removeDisk(d.id, true);
  return 0;
};

const deleteStorageServer: Method = async (ctx, data) => {
  mand(data, 'ssvrid');
  const s = lookupById(data, 'ssvrid', (id) => ctx.ids.server(id));
  if (!s) throw errnoFault('ENOENT', 'no storage server with that ssvrid');
  if (s.state === 'active') throw errnoFault('EBUSY', `storage server ${s.name} is online: notifyFailure it first (or vsky server remove, which drains it)`);
  await ctx.core.decommission.removeServer(s.id, true);
  return 0;
};

const deleteHeadServer: Method = async (ctx, data) => {
  mand(data, 'hsvrid');
  const h = lookupById(data, 'hsvrid', (id) => ctx.ids.head(id));
  if (!h) throw errnoFault('ENOENT', 'no head server with that hsvrid');
  if (h.state === 'active') throw errnoFault('EBUSY', `head server ${h.name} is online`);
  const holds = ctx.core.volumes.list().filter((v) => v.attachedHead === h.id || v.standbyHead === h.id);
  if (holds.length > 0) throw errnoFault('EBUSY', `head server ${h.name} has volumes attached: ${holds.map((v) => v.name).join(', ')}`);
  await ctx.core.registry.removeHead(h.id);
  return 0;
};

export const serverMethods: Record<string, Method> = {
  listHeadServers, listStorageServers, listPhysicalDisks,
  registerHeadServer, registerStorageServer, registerPhysicalDisk,
  deleteHeadServer, deleteStorageServer, deletePhysicalDisk,
};
