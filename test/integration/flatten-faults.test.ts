import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { MiB } from '../../shared/constants.js';
import type { JobInfo__Output } from '../../proto/generated/vsky/manager/JobInfo.js';
import { destroyTestCluster, startTestCluster } from '../harness/cluster.js';
import { NbdClient } from '../harness/nbd-client.js';
import { vsky, vskyJson } from '../harness/vsky.js';
import { waitHeadActive, waitUntil } from '../harness/leases.js';
import { SEG, attach, follow, getJob, ok, ownWrites, template, verify } from './flatten-fixture.js';

// A flatten job (docs/snapshots.md "Flatten") that loses its worker or a
// storage node midway: the manager killed (-9, at a crash point after its 3rd
// segment) resumes the job at its restart, skipping what was copied; a
// storage node killed while the manager copies a detached clone: the job
// retries the segment until the node's replicas are marked stale, completes,
// and the replicas are rebuilt elsewhere; the head copying an attached clone
// killed -9: the job waits for a holder, the VM's volume is attached on the
// other head once the dead one's lease expired, and that head copies the rest.
// Either way the clone reads exactly its own writes and the template's data.

const LEASE_TTL_MS = 2000;

interface Show { map: { segments: { index: number; replicas: { serverId: string; state: string }[] }[] } }

describe('flatten job under failures', () => {
  let c: LocalCluster;
  const m = () => c.managerAddress;

  beforeAll(async () => {
    c = await startTestCluster({ diskSize: 512 * MiB, heads: 2, managerArgs: ['--lease-ttl', String(LEASE_TTL_MS)] });
    await template(c, ['c3', 'c4', 'c5']);
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
    // The victim: the node holding most of c4's chunks, chosen before the job so
    // that the kill follows the job's progress at once (slow CLI calls under load
    // must not let the job finish first).
    const show = await vskyJson<Show>(['volume', 'show', 'c4'], m());
    const servers = await vskyJson<{ serverId: string; controlAddress: string }[]>(['server', 'list'], m());
    const count = new Map<string, number>();
    for (const seg of show.map.segments) for (const r of seg.replicas) count.set(r.serverId, (count.get(r.serverId) ?? 0) + 1);
    const victimId = [...count.entries()].sort((a, b) => b[1] - a[1])[0]![0];
    const victim = servers.find((s) => s.serverId === victimId)!;
    const node = c.nodes.find((n) => String(n.ready.controlAddress) === victim.controlAddress)!;
    const sub = await vskyJson<JobInfo__Output>(['volume', 'flatten', 'c4', '--no-wait', '--throttle-mibps', '3'], m());
    for (let j = sub; j.done < 2 * SEG; j = await getJob(c, sub.jobId)) {
      expect(j.state).toMatch(/pending|running/);
      await new Promise((r) => setTimeout(r, 50));
    }
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
  it('kill -9 of the head copying an attached clone: the job waits, the other head takes the volume over and copies the rest', async () => {
    const own = new Map<number, number>();
    const w = await NbdClient.connect(await attach(c, 'c5'));
    await ownWrites(w, own, 30, 5);
    // A writer during the job, on fresh blocks past the 4 MiB verify() reads: an
    // unacknowledged write (cut by the kill) may or may not have landed.
    const late = new Map<number, { v: number; acked: boolean }>();
    let stop = false;
    const writer = (async () => {
      for (let i = 0; !stop; i++) {
        const off = (i % 8) * SEG + 8 * MiB + Math.floor(i / 8) * 4096;
        const v = 1 + (i % 250);
        late.set(off, { v, acked: false });
        const acked = await w.write(off, Buffer.alloc(4096, v)).then(() => true, () => false);
        if (!acked) return;
        late.set(off, { v, acked: true });
      }
    })();
    const sub = await vskyJson<JobInfo__Output>(['volume', 'flatten', 'c5', '--no-wait', '--throttle-mibps', '2'], m());
    try {
      await waitUntil(async () => (await getJob(c, sub.jobId)).done >= 2 * SEG, 60_000, 'two segments flattened');
      const before = await getJob(c, sub.jobId);
      expect(before).toMatchObject({ state: 'running', host: expect.stringMatching(/.+/) }); // a head copies
      await c.head.kill9();
      expect(c.head.running).toBe(false);
      const waiting = await waitUntil(async () => {
        const j = await getJob(c, sub.jobId);
        return /head1|not up/.test(j.waiting) ? j : undefined;
      }, 20_000, 'the job waiting for a head');
      expect(waiting.state).toBe('running'); // the premise: killed mid-job, and the job noticed
      expect(waiting.done).toBeLessThan(waiting.total);
      stop = true;
      await writer;
      // The hypervisor is dead: the VM restarts on head2 (allowed once head1's lease expired).
      const uri = await waitUntil(async () => {
        const r = await vsky(['volume', 'attach', 'c5', '--head', 'head2'], m());
        return r.exitCode === 0 ? String(r.stdout).trim().split('\n')[0] : undefined;
      }, LEASE_TTL_MS + 20_000, 'c5 attached on head2', 500);
      // The premise of the data check below: head2 reconciled what head1 left marked (its flatten's and the writer's regions).
      expect(readFileSync(join(c.opts.dir, 'logs', 'head2.log'), 'utf8')).toMatch(/"volume":"c5".*"regions":[1-9]\d*.*reconciled regions left dirty by the previous holder/);
      const samples = await follow(c, sub.jobId, 90_000);
      const last = samples.at(-1)!;
      expect(last.state, last.error).toBe('succeeded');
      expect(samples.some((j) => j.host !== before.host && j.host !== '')).toBe(true); // head2 copied the rest
      expect((await vskyJson<{ name: string; backing: string }[]>(['volume', 'list'], m())).find((v) => v.name === 'c5')!.backing).toBe('');
      const w2 = await NbdClient.connect(uri);
      try {
        await verify(w2, own);
        for (const [off, { v, acked }] of late) {
          const got = (await w2.read(off, 4096))[0];
          if (acked) expect(got, `acknowledged write at ${off}`).toBe(v);
          else expect([0, v], `unacknowledged write at ${off}`).toContain(got);
        }
        expect([...late.values()].filter((x) => x.acked).length).toBeGreaterThan(10);
      } finally {
        w2.close();
      }
      await ok(c, ['volume', 'detach', 'c5']);
    } finally {
      stop = true;
      await writer;
      w.close();
      if (!c.head.running) await c.head.start();
      await waitHeadActive(c, 'head1');
    }
  }, 180_000);
});
