import { moduleLogger } from '../shared/logger.js';
import type { Registry } from './registry.js';
import type { ManagerStore } from './store.js';
import type { HeadRecord } from './types.js';

// VastSky's shutdownAll (XML-RPC, manager/xmlrpc/methods-notify.ts): the
// cluster is about to be powered off, so nothing must be taken as failed.
// With no volume attached, every active storage server and head is marked
// halted in one batch (each with an event): a halted server takes no new
// chunks (creates and spares find no room: ENOSPC), neither it nor a halted
// head is ever timed out, and no volume can be attached to a halted head.
// No daemon is contacted or stopped, as in VastSky. Each one leaves the halt
// by registering again: a storage node or head agent that starts (is powered
// back on), `vsky server add`, or XML-RPC registerStorageServer /
// registerHeadServer (VastSky's reporters' way back). Halts persist across
// manager restarts.

const log = moduleLogger('manager.halt');

export interface HaltResult { servers: number; heads: number }

export async function haltCluster(store: ManagerStore, registry: Registry, reason: string): Promise<HaltResult> {
  const batch = store.batch();
  const result: HaltResult = { servers: 0, heads: 0 };
  for (const s of registry.listServers()) {
    if (s.state !== 'active' || s.halted) continue;
    s.halted = true;
    batch.putServer(s).event('server.halted', `server:${s.name}`, reason, { serverId: s.id });
    registry.syncServer(s);
    result.servers++;
  }
  for (const h of registry.listHeads()) {
    if (h.state !== 'active' || h.halted) continue;
    h.halted = true;
    batch.putHead(h).event('head.halted', `head:${h.name}`, reason, { headId: h.id });
    result.heads++;
  }
  if (batch.length > 0) await store.write(batch);
  registry.hooks?.changed('cluster halted');
  log.warn({ ...result, reason }, 'cluster halted: no server or head is timed out, no new chunks are placed, until each registers again');
  return result;
}

/** Ends a head's halt (XML-RPC registerHeadServer; a head agent that registers ends it by itself). */
export async function resumeHead(store: ManagerStore, h: HeadRecord, reason: string): Promise<void> {
  if (!h.halted) return;
  delete h.halted;
  await store.write(store.batch().putHead(h).event('head.up', `head:${h.name}`, reason, { headId: h.id }));
}
