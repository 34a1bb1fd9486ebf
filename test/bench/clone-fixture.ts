import { join } from 'node:path';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { MiB } from '../../shared/constants.js';
import { randomFile, run } from '../harness/tools.js';
import { vsky } from '../harness/vsky.js';

// What the clone benches share (snapshots.ts, clone-first-write.ts): a
// 512 MiB template `tpl` and a thick volume `thick`, both filled with the
// same random bytes by nbdcopy, and the snapshot `tpl-s` to clone from.

/** Runs a vsky command against the cluster; its stdout, or throws with its stderr. */
export function vskyOk(c: LocalCluster): (args: string[]) => Promise<string> {
  return async (args) => {
    const r = await vsky(args, c.managerAddress, 120_000);
    if (r.exitCode !== 0) throw new Error(`${args.join(' ')}: ${String(r.stderr)}`);
    return String(r.stdout);
  };
}

/**
 * Fills `tpl` and `thick` (thick stays attached), snapshots `tpl` as `tpl-s`,
 * then syncs: the fill's 2 GiB of dirty pages per replica set must not be
 * written back during the measurements that follow.
 */
export async function templateAndThick(c: LocalCluster, work: string): Promise<void> {
  const ok = vskyOk(c);
  const src = join(work, 'src.img');
  randomFile(src, 512 * MiB);
  await ok(['volume', 'create', 'tpl', '--size', '512M', '--replicas', '2']);
  await ok(['volume', 'create', 'thick', '--size', '512M', '--replicas', '2', '--thick']);
  for (const v of ['tpl', 'thick']) {
    const uri = (await ok(['volume', 'attach', v])).trim().split('\n')[0]!;
    await run('nbdcopy', ['--flush', src, uri], 600_000);
  }
  await ok(['volume', 'detach', 'tpl']);
  await ok(['snapshot', 'create', 'tpl', 'tpl-s']);
  await run('sync', [], 600_000);
}
