import { ConflictError, InvalidArgumentError, NotFoundError, errorMessage } from '../../shared/errors.js';
import { moduleLogger } from '../../shared/logger.js';
import { parseHostPort } from '../../shared/units.js';
import type { DiskInfo__Output } from '../../proto/generated/vsky/storage/DiskInfo.js';
import type { NodeInfo__Output } from '../../proto/generated/vsky/storage/NodeInfo.js';
import { claimServerId } from '../int-id-claims.js';
import type { StoreBatch } from '../store.js';
import type { ServerRecord, ServerState } from '../types.js';
import { applyDiskReport, disksOf } from './disks.js';
import { labelsOf, type RegistryState } from './state.js';

// Servers (storage nodes): they register at start with their disks and
// heartbeat; an admin adds (AddServer) or fails (FailServer) them. One an
// admin failed stays failed whatever its node says, until AddServer. A server
// that stops being active loses its disks' replicas in the same batch
// (`hooks.disksLost`).

const log = moduleLogger('manager.registry');

/** A server by id or name. */
export function resolveServer(st: RegistryState, ref: string): ServerRecord {
  if (!ref) throw new InvalidArgumentError('no server given: name a server by id or name (see vsky server list)');
  const byId = st.servers.get(ref);
  if (byId) return byId;
  const named = [...st.servers.values()].filter((s) => s.name === ref);
  if (named.length === 1) return named[0]!;
  if (named.length > 1) throw new InvalidArgumentError(`server name "${ref}" is ambiguous (${named.map((s) => s.id).join(', ')}); use the server id`);
  throw new NotFoundError(`no server "${ref}": see vsky server list`, { server: ref });
}

/**
 * A storage node announces itself (at start) with its disks. `adminLabels`
 * come from AddServer; `readd` lets AddServer bring back a removed server.
 */
export async function registerServer(st: RegistryState, info: NodeInfo__Output, adminLabels?: Record<string, string>, readd = false): Promise<ServerRecord> {
  checkRegistration(st, info);
  const batch = st.store.batch();
  let s = st.servers.get(info.serverId);
  if (s?.state === 'removed' && !readd) {
    throw new ConflictError(`server ${s.name} (${s.id}) was removed from the cluster; add it back with vsky server add ${info.controlAddress}`);
  }
  if (readd && s?.adminFailed) s.adminFailed = false;
  if (!s) s = recordNewServer(st, info, adminLabels, readd, batch);
  else updateServer(st, s, info, adminLabels, readd, batch);
  claimServerId(s, info.ssvrid, info.intIdsClusterId, st.store.clusterId);
  batch.putServer(s);
  syncServer(st, s);
  applyDiskReport(st, s, info.disks, batch, true);
  await st.store.write(batch);
  st.hooks?.serverReported?.(s.id, info.note);
  st.hooks?.serverChanged?.(s);
  return s;
}

/** Refuses a registration without an id, with bad addresses, or with disks of another cluster. */
function checkRegistration(st: RegistryState, info: NodeInfo__Output): void {
  if (!info.serverId) throw new InvalidArgumentError('RegisterServer needs a server_id (the node keeps a UUID in its data directory)');
  parseHostPort(info.dataAddress, 'data address');
  parseHostPort(info.controlAddress, 'control address');
  const foreign = info.disks.filter((d) => d.clusterId && d.clusterId !== st.store.clusterId);
  if (foreign.length > 0) {
    throw new ConflictError(`server ${info.name || info.serverId} has ${foreign.length} disk(s) of another cluster (${foreign.map((d) => `${d.path}: cluster ${d.clusterId}`).join(', ')}; `
      + `this cluster is ${st.store.clusterId}): it is not adopted, and nothing on it is freed or overwritten. If this manager's database `
      + 'was lost, start the manager on an empty data directory with --rebuild-from-storage; otherwise remove those disks from the node',
    { serverId: info.serverId });
  }
}

function recordNewServer(st: RegistryState, info: NodeInfo__Output, adminLabels: Record<string, string> | undefined, readd: boolean, batch: StoreBatch): ServerRecord {
  const now = st.now();
  const name = info.name || info.serverId;
  const s: ServerRecord = {
    id: info.serverId, name, dataAddress: info.dataAddress, controlAddress: info.controlAddress,
    nodeLabels: { ...info.labels }, adminLabels: { ...adminLabels }, state: 'active', stateReason: 'registered',
    registeredMs: now, lastHeartbeatMs: now,
  };
  st.servers.set(s.id, s);
  log.info({ serverId: s.id, name, dataAddress: s.dataAddress, labels: labelsOf(s) }, 'server registered');
  batch.event('server.added', `server:${name}`, readd ? 'added by an admin' : 'registered', { serverId: s.id, dataAddress: s.dataAddress, controlAddress: s.controlAddress });
  return s;
}

function updateServer(st: RegistryState, s: ServerRecord, info: NodeInfo__Output, adminLabels: Record<string, string> | undefined, readd: boolean, batch: StoreBatch): void {
  const name = info.name || info.serverId;
  Object.assign(s, {
    name, dataAddress: info.dataAddress, controlAddress: info.controlAddress, nodeLabels: { ...info.labels },
    adminLabels: { ...s.adminLabels, ...adminLabels }, lastHeartbeatMs: st.now(),
  });
  if (s.halted) {
    delete s.halted;
    batch.event('server.up', `server:${name}`, 'registered again: no longer halted (shutdownAll)', { serverId: s.id });
  }
  if (s.adminFailed) log.warn({ serverId: s.id, name }, 'server failed by an admin registered again; it stays failed until vsky server add');
  else if (s.state !== 'active') setServerState(st, s, 'active', readd ? 're-added by an admin' : 'registered again', batch);
  log.info({ serverId: s.id, name, labels: labelsOf(s) }, 'server re-registered');
}

/** Returns false when the server is unknown (it should register again). */
export async function serverHeartbeat(st: RegistryState, serverId: string, disks: DiskInfo__Output[]): Promise<boolean> {
  const s = st.servers.get(serverId);
  if (!s) return false;
  if (s.state === 'removed') return true; // known, but an admin took it out: ignored
  s.lastHeartbeatMs = st.now();
  const batch = st.store.batch();
  if (s.state === 'failed' && !s.adminFailed) {
    setServerState(st, s, 'active', 'heartbeat received again', batch);
    batch.putServer(s);
  }
  // A heartbeat may carry a partial disk list: missing disks are not failed here.
  applyDiskReport(st, s, disks, batch, false);
  if (batch.length > 0) await st.store.write(batch);
  return true;
}

/** AddServer: ask the node at `controlAddress` who it is and register it with `labels`. */
export async function addServer(st: RegistryState, controlAddress: string, labels: Record<string, string>): Promise<ServerRecord> {
  parseHostPort(controlAddress, 'control address');
  for (const k of Object.keys(labels)) {
    if (!/^[A-Za-z0-9._/-]{1,64}$/.test(k)) throw new InvalidArgumentError(`invalid label name "${k}": use 1-64 of A-Z a-z 0-9 . _ / -`);
  }
  let info: NodeInfo__Output;
  try {
    info = await st.peers.node.getInfo(controlAddress);
  } catch (err) {
    throw new ConflictError(`cannot reach the storage node at ${controlAddress}: ${errorMessage(err)}; start vsky storage-node there and check the address`);
  }
  // The address the admin gave is known to reach the node from here (the
  // node may report a wildcard such as 0.0.0.0); a later RegisterServer from
  // the node itself updates it.
  return registerServer(st, { ...info, controlAddress }, labels, true);
}

/** FailServer: an admin or a health checker says the server is gone; it stays failed until vsky server add. */
export async function failServer(st: RegistryState, ref: string, reason: string): Promise<ServerRecord> {
  const s = resolveServer(st, ref);
  if (s.state === 'removed') throw new ConflictError(`server ${s.name} was removed from the cluster; nothing to fail`);
  const batch = st.store.batch();
  s.adminFailed = true;
  batch.putServer(s);
  setServerState(st, s, 'failed', `failed by an admin: ${reason || 'no reason given'}`, batch);
  await st.store.write(batch);
  st.hooks?.serverChanged?.(s);
  return s;
}

export function setServerState(st: RegistryState, s: ServerRecord, state: ServerState, reason: string, batch: StoreBatch): void {
  if (s.state === state) return;
  const line = { serverId: s.id, name: s.name, from: s.state, to: state, reason };
  if (state === 'active') log.info(line, `server ${s.name} ${state}: ${reason}`);
  else log.warn(line, `server ${s.name} ${state}: ${reason}`);
  s.state = state;
  s.stateReason = reason;
  batch.putServer(s);
  batch.event(state === 'active' ? 'server.up' : `server.${state}`, `server:${s.name}`, reason, { serverId: s.id, from: line.from });
  syncServer(st, s);
  if (state !== 'active') {
    const disks = new Set(disksOf(st, s.id).map((d) => d.id));
    if (disks.size > 0) st.hooks?.disksLost(disks, `server ${s.name} ${state}: ${reason}`, batch);
  }
  st.hooks?.changed(`server ${s.name} ${state}`);
}

/** Keeps the placement model in step with the server's state (a halted server takes no new chunks). */
export function syncServer(st: RegistryState, s: ServerRecord): void {
  st.model.setServer(s.id, labelsOf(s), s.state === 'active' && !s.halted);
}
