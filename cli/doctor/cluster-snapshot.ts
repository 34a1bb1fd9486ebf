import { call, headAgentClient, storageNodeClient, type ManagerClient } from '../../shared/grpc.js';
import { errorMessage } from '../../shared/errors.js';
import type { ClusterSnapshot } from './cluster-checks.js';

// What `vsky doctor` asks: the manager's view of the cluster, and whether
// this host reaches each storage server and head itself (their control
// ports), all with short deadlines so a dead peer costs seconds, not minutes.

const PROBE_TIMEOUT_MS = 2_000;

export async function takeSnapshot(m: ManagerClient, manager: string, timeoutMs: number): Promise<ClusterSnapshot> {
  const sentMs = Date.now();
  const status = await call(m, 'Status', {}, timeoutMs);
  const receivedMs = Date.now();
  const [servers, disks, heads, jobs] = await Promise.all([
    call(m, 'ListServers', {}, timeoutMs), call(m, 'ListDisks', { server: '' }, timeoutMs),
    call(m, 'ListHeads', {}, timeoutMs), call(m, 'ListJobs', { volume: '' }, timeoutMs),
  ]);
  const activeServers = servers.servers.filter((s) => s.state === 'active').map((s) => s.controlAddress);
  const activeHeads = heads.heads.filter((h) => h.state === 'active').map((h) => h.controlAddress);
  const unreachable = new Map<string, string>();
  await Promise.all([
    ...activeServers.map((a) => probe(a, 'server', unreachable)),
    ...activeHeads.map((a) => probe(a, 'head', unreachable)),
  ]);
  return {
    manager, status, servers: servers.servers, disks: disks.disks, heads: heads.heads, jobs: jobs.jobs, unreachable,
    localClockOffsetMs: Math.round((sentMs + receivedMs) / 2 - status.managerTimeMs),
  };
}

async function probe(address: string, kind: 'server' | 'head', unreachable: Map<string, string>): Promise<void> {
  const client = kind === 'server' ? storageNodeClient(address) : headAgentClient(address);
  try {
    if (kind === 'server') await call(client as ReturnType<typeof storageNodeClient>, 'GetInfo', {}, PROBE_TIMEOUT_MS);
    else await call(client as ReturnType<typeof headAgentClient>, 'ListAttached', {}, PROBE_TIMEOUT_MS);
  } catch (err) {
    unreachable.set(address, errorMessage(err));
  } finally {
    client.close();
  }
}
