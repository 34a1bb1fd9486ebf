import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { MiB } from '../../shared/constants.js';
import type { JobInfo__Output } from '../../proto/generated/vsky/manager/JobInfo.js';
import { destroyTestCluster, startTestCluster } from '../harness/cluster.js';
import { NbdClient } from '../harness/nbd-client.js';
import { vskyJson } from '../harness/vsky.js';
import { SEG, attach, follow, getJob, ok, ownWrites, template, verify } from './flatten-fixture.js';

// A flatten job (docs/snapshots.md "Flatten") that loses its worker or a
// storage node midway: the manager killed (-9, at a crash point after its 3rd
// segment) resumes the job at its restart, skipping what was copied; a
// storage node killed while the manager copies a detached clone: the job
// retries the segment until the node's replicas are marked stale, completes,
// and the replicas are rebuilt elsewhere. Either way the clone reads exactly
// its own writes and the template's data.

interface Show { map: { segments: { index: number; replicas: { serverId: string; state: string }[] }[] } }

describe('flatten job under failures', () => {
  let c: LocalCluster;
  const m = () => c.managerAddress;

  beforeAll(async () => {
    c = await startTestCluster({ diskSize: 512 * MiB });
    await template(c, ['c3', 'c4']);
  }, 120_000);
  afterAll(async () => {
    await destroyTestCluster(c);
  });

  it('manager kill -9 mid-flatten: the job resumes at the restart and succeeds; the clone reads the same', async () => {
    c.manager.env = { VSKY_CRASH_AT: 'manager.flatten.segment:3' };
    await c.manager.restart();
    const sub = await vskyJson<JobInfo__Output>(['volume', 'flatten', 'c3', '--no-wait', '--throttle-mibps', '4'], m());
    expect(await c.manager.waitExit()).toBeNull(); // killed by a signal mid-job, not a clean exit
    c.manager.env = {};
    await c.manager.start();
    const samples = await follow(c, sub.jobId, 60_000);
    const last = samples.at(-1)!;
    expect(last.state, last.error).toBe('succeeded');
    expect(last.startedMs).toBe(sub.startedMs || last.startedMs);
    const log = readFileSync(join(c.opts.dir, 'logs', 'manager.log'), 'utf8');
    expect(log).toMatch(/flatten resumes where it was/); // the premise: it went on from its persisted progress
    const w = await NbdClient.connect(await attach(c, 'c3'));
    try {
      await verify(w, new Map());
    } finally {
      w.close();
    }
    await ok(c, ['volume', 'detach', 'c3']);
  }, 90_000);

  it('kill -9 of a storage node during a detached flatten: the job completes, no write lost, redundancy comes back', async () => {
    const own = new Map<number, number>();
    let w = await NbdClient.connect(await attach(c, 'c4'));
    await ownWrites(w, own, 30, 3);
    w.close();
    await ok(c, ['volume', 'detach', 'c4']);
    const sub = await vskyJson<JobInfo__Output>(['volume', 'flatten', 'c4', '--no-wait', '--throttle-mibps', '3'], m());
    for (let j = sub; j.done < 2 * SEG; j = await getJob(c, sub.jobId)) {
      expect(j.state).toMatch(/pending|running/);
      await new Promise((r) => setTimeout(r, 50));
    }
    // The node holding most of c4's chunks now.
    const show = await vskyJson<Show>(['volume', 'show', 'c4'], m());
    const servers = await vskyJson<{ serverId: string; controlAddress: string }[]>(['server', 'list'], m());
    const count = new Map<string, number>();
    for (const seg of show.map.segments) for (const r of seg.replicas) count.set(r.serverId, (count.get(r.serverId) ?? 0) + 1);
    const victimId = [...count.entries()].sort((a, b) => b[1] - a[1])[0]![0];
    const victim = servers.find((s) => s.serverId === victimId)!;
    const node = c.nodes.find((n) => String(n.ready.controlAddress) === victim.controlAddress)!;
    expect(node).toBeDefined();
    await node.kill9();
    const atKill = await getJob(c, sub.jobId);
    expect(atKill.state).toBe('running'); // the premise: the node died during the job
    expect(atKill.done).toBeLessThan(atKill.total);
    const samples = await follow(c, sub.jobId, 80_000);
    const last = samples.at(-1)!;
    expect(last.state, last.error).toBe('succeeded');

    // Redundancy: c4 ends with two in-sync replicas per allocated segment, none on the dead node.
    const deadline = Date.now() + 60_000;
    for (;;) {
      const map = await vskyJson<Show>(['volume', 'show', 'c4'], m());
      const healthy = map.map.segments.every((seg) => seg.replicas.length === 0
        || (seg.replicas.length === 2 && seg.replicas.every((x) => x.state === 'in_sync' && x.serverId !== victimId)));
      if (healthy) break;
      if (Date.now() > deadline) throw new Error(`c4 not resynced: ${JSON.stringify(map.map.segments.map((s) => s.replicas))}`);
      await new Promise((r) => setTimeout(r, 1000));
    }
    w = await NbdClient.connect(await attach(c, 'c4'));
    try {
      await verify(w, own);
    } finally {
      w.close();
    }
  }, 120_000);
});
