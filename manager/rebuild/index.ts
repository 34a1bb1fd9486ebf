import { moduleLogger } from '../../shared/logger.js';
import type { PeerClients } from '../node-clients.js';
import { ManagerStore } from '../store.js';
import { applyPlan, assertEmpty } from './apply.js';
import { collectNodeTables, type CollectOptions } from './collect.js';
import { planRebuild } from './plan.js';

// `vsky manager --rebuild-from-storage`: a manager whose database was lost
// rebuilds it from the storage nodes (every chunk record carries its volume's
// identity, generation, epoch and the manager's last note on its segment),
// then starts as usual. See docs/rebuild-from-storage.md.

const log = moduleLogger('manager.rebuild');

export interface RebuildOptions extends CollectOptions {
  dataDir: string;
  chunkSize: number;
}

export async function rebuildFromStorage(opts: RebuildOptions, peers: PeerClients): Promise<void> {
  const store = await ManagerStore.open(opts.dataDir);
  try {
    await assertEmpty(store); // before waiting for anyone: a non-empty database is refused at once
  } finally {
    await store.close();
  }
  const started = Date.now();
  const { clusterId, nodes } = await collectNodeTables(opts, peers);
  const plan = planRebuild({ clusterId, chunkSize: opts.chunkSize, nodes, nowMs: Date.now() });
  await applyPlan(opts.dataDir, clusterId, plan);
  log.info({ servers: nodes.length, volumes: plan.report.volumes, planMs: plan.report.ms, ms: Date.now() - started }, 'rebuild from storage done: starting the manager');
}
