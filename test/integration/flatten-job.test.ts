import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { MiB } from '../../shared/constants.js';
import type { JobInfo__Output } from '../../proto/generated/vsky/manager/JobInfo.js';
import { destroyTestCluster, startTestCluster } from '../harness/cluster.js';
import { NbdClient } from '../harness/nbd-client.js';
import { vsky, vskyJson } from '../harness/vsky.js';
import { SEG, TEMPLATE_BYTES, attach, follow, ok, ownWrites, template, verify, verifyingWriter } from './flatten-fixture.js';

// `vsky volume flatten` as a storage job (docs/snapshots.md "Flatten"): a
// detached clone flattened by the manager, followed with `vsky job watch`
// and progress samples; an attached clone flattened by its head under a
// verifying writer; bad input refused with nothing changed.

interface Vol { name: string; backing: string; generation: number; allocatedSegments: number }

describe('flatten job', () => {
  let c: LocalCluster;
  const m = () => c.managerAddress;
  const show = async (name: string) => (await vskyJson<Vol[]>(['volume', 'list'], m())).find((v) => v.name === name)!;

  beforeAll(async () => {
    c = await startTestCluster({ diskSize: 512 * MiB });
    await template(c, ['c1', 'c2']);
  }, 120_000);
  afterAll(async () => {
    await destroyTestCluster(c);
  });

  it('bad input: a volume with no backing, a snapshot, an unknown volume; nothing changed', async () => {
    await ok(c, ['volume', 'create', 'plain', '--size', '64M', '--replicas', '2']);
    const before = await show('plain');
    const jobsBefore = await vskyJson<JobInfo__Output[]>(['job', 'list'], m());
    const plain = await vsky(['volume', 'flatten', 'plain'], m());
    expect(plain.exitCode).not.toBe(0);
    expect(String(plain.stderr)).toMatch(/volume plain has no backing: it holds all its data already; nothing to flatten/);
    const snap = await vsky(['volume', 'flatten', 'tpl-s'], m());
    expect(snap.exitCode).not.toBe(0);
    expect(String(snap.stderr)).toMatch(/tpl-s is a snapshot \(read-only\): a flatten job cannot change it; clone it/);
    const none = await vsky(['volume', 'flatten', 'nosuch'], m());
    expect(none.exitCode).not.toBe(0);
    expect(String(none.stderr)).toMatch(/nosuch/);
    const bad = await vsky(['volume', 'flatten', 'c1', '--throttle-mibps', 'x'], m());
    expect(bad.exitCode).not.toBe(0);
    expect(await show('plain')).toEqual(before);
    expect((await vskyJson<JobInfo__Output[]>(['job', 'list'], m())).length).toBe(jobsBefore.length);
    expect((await show('c1')).backing).toBe('tpl-s');
  });

  it('a detached clone: the manager copies, vsky job watch follows it, the clone reads the same and stands alone', async () => {
    const own = new Map<number, number>();
    let w = await NbdClient.connect(await attach(c, 'c1'));
    await ownWrites(w, own, 40, 1);
    w.close();
    await ok(c, ['volume', 'detach', 'c1']);
    const g = (await show('c1')).generation;

    const sub = await vskyJson<JobInfo__Output>(['volume', 'flatten', 'c1', '--no-wait', '--throttle-mibps', '8'], m());
    expect(sub.kind).toBe('flatten');
    const [samples, watched] = await Promise.all([follow(c, sub.jobId), vsky(['job', 'watch', sub.jobId, '--json'], m(), 60_000)]);
    expect(watched.exitCode, String(watched.stderr)).toBe(0);
    const last = JSON.parse(String(watched.stdout)) as JobInfo__Output;
    expect(last.state).toBe('succeeded');
    expect(last.done).toBe(last.total);
    expect(last.total).toBe(8 * SEG);
    expect(last.host).toBe(''); // the manager copied (detached)
    // What the clone had not written of the template's data: its 2 MiB spans, less what it wrote whole.
    expect(last.copied).toBeGreaterThan(TEMPLATE_BYTES / 2);
    expect(last.copied).toBeLessThanOrEqual(TEMPLATE_BYTES);
    // Progress moved forward while it ran.
    const done = samples.map((j) => j.done);
    for (let i = 1; i < done.length; i++) expect(done[i]!).toBeGreaterThanOrEqual(done[i - 1]!);
    expect(samples.some((j) => j.state === 'running' && j.done > 0 && j.done < j.total)).toBe(true);
    const listed = (await vskyJson<JobInfo__Output[]>(['job', 'list', '--volume', 'c1'], m())).find((j) => j.jobId === sub.jobId);
    expect(listed?.state).toBe('succeeded');

    const after = await show('c1');
    expect(after.backing).toBe('');
    expect(after.generation).toBe(g + 1);
    w = await NbdClient.connect(await attach(c, 'c1'));
    try {
      await verify(w, own);
    } finally {
      w.close();
    }
    await ok(c, ['volume', 'detach', 'c1']);
    // The snapshot no longer lists c1 as a dependent; c2 and tpl still read from it.
    const del = await vsky(['snapshot', 'delete', 'tpl-s'], m());
    expect(del.exitCode).not.toBe(0);
    expect(String(del.stderr)).toMatch(/c2, tpl read unwritten regions from it/);
  }, 90_000);

  it('an attached clone under a verifying writer: its head copies, no acknowledged write is lost', async () => {
    const own = new Map<number, number>();
    const uri = await attach(c, 'c2');
    const w = await NbdClient.connect(uri);
    await ownWrites(w, own, 20, 7);
    const writer = verifyingWriter(w, own);
    let result = { errors: ['the writer was not stopped'], writes: 0 };
    try {
      const r = await vsky(['volume', 'flatten', 'c2', '--json', '--throttle-mibps', '8'], m(), 60_000);
      expect(r.exitCode, String(r.stderr)).toBe(0);
      const j = JSON.parse(String(r.stdout)) as JobInfo__Output;
      expect(j.state).toBe('succeeded');
      expect(j.host).not.toBe(''); // its head copied
      expect(j.copied).toBeGreaterThan(0);
      await new Promise((res) => setTimeout(res, 500)); // writes go on after the re-attach with the plain map
    } finally {
      result = await writer.stop();
    }
    expect(result.errors).toEqual([]);
    expect(result.writes).toBeGreaterThan(20);
    expect((await show('c2')).backing).toBe('');
    await verify(w, own);
    w.close();
    // A fresh attach (no backing chain at all) reads the same.
    await ok(c, ['volume', 'detach', 'c2']);
    const w2 = await NbdClient.connect(await attach(c, 'c2'));
    try {
      await verify(w2, own);
    } finally {
      w2.close();
    }
    await ok(c, ['volume', 'detach', 'c2']);
  }, 90_000);
});
