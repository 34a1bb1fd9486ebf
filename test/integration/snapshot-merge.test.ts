import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { MiB } from '../../shared/constants.js';
import type { JobInfo__Output } from '../../proto/generated/vsky/manager/JobInfo.js';
import { chunksOnNodes, destroyTestCluster, startTestCluster } from '../harness/cluster.js';
import { NbdClient } from '../harness/nbd-client.js';
import { vsky, vskyJson } from '../harness/vsky.js';
import { SEG, attach, ok, ownWrites, template, templateByte, verify, verifyingWriter } from './flatten-fixture.js';

// Snapshot delete with merge (docs/snapshots.md): deleting a snapshot that
// only its origin reads from merges it into the origin (a flatten job of the
// origin: segments the origin never wrote are handed back without a copy,
// the rest copied), then deletes it. Refused, naming them, while clones read
// from it. The origin reads the same bytes before and after; the snapshot's
// chunks the origin did not take are freed.

interface Show { map: { segments: { index: number; replicas: { diskId: string; chunkIndex: number }[] }[] } }
interface Vol { name: string; backing: string }

describe('snapshot delete with merge', () => {
  let c: LocalCluster;
  const m = () => c.managerAddress;

  beforeAll(async () => {
    c = await startTestCluster({ diskSize: 512 * MiB });
    await template(c, ['cx']);
  }, 120_000);
  afterAll(async () => {
    await destroyTestCluster(c);
  });

  it('refused while a clone reads from it; merged into its origin once only the origin does', async () => {
    // tpl writes on after its snapshot: some segments get chunks of their own (copy-ups), others never do.
    const own = new Map<number, number>();
    let w = await NbdClient.connect(await attach(c, 'tpl'));
    await ownWrites(w, own, 6, 0); // segments 0, 3, 6, 1, 4, 7
    w.close();
    await ok(c, ['volume', 'detach', 'tpl']);

    const refused = await vsky(['snapshot', 'delete', 'tpl-s'], m());
    expect(refused.exitCode).not.toBe(0);
    expect(String(refused.stderr)).toMatch(/cx, tpl read unwritten regions from it; flatten them first \(vsky volume flatten cx\) or delete them; nothing changed/);
    expect((await vskyJson<Vol[]>(['volume', 'list'], m())).some((v) => v.name === 'tpl-s')).toBe(true);
    await ok(c, ['volume', 'delete', 'cx']);

    const snapBefore = await vskyJson<Show>(['volume', 'show', 'tpl-s'], m());
    const chunksBefore = (await chunksOnNodes(c)).length;
    const snapChunks = new Set(snapBefore.map.segments.flatMap((s) => s.replicas.map((r) => `${r.diskId}#${r.chunkIndex}`)));
    expect(snapChunks.size).toBe(12); // 6 segments x 2 replicas

    const r = await vsky(['snapshot', 'delete', 'tpl-s', '--json'], m(), 60_000);
    expect(r.exitCode, String(r.stderr)).toBe(0);
    const j = JSON.parse(String(r.stdout)) as JobInfo__Output;
    expect(j).toMatchObject({ kind: 'flatten', volume: 'tpl', state: 'succeeded', args: { merge: 'tpl-s' } });
    const vols = await vskyJson<Vol[]>(['volume', 'list'], m());
    expect(vols.some((v) => v.name === 'tpl-s')).toBe(false);
    expect(vols.find((v) => v.name === 'tpl')!.backing).toBe('');

    // Segments tpl never wrote (2 and 5 hold template data) took the snapshot's chunks as they were: no copy.
    const after = await vskyJson<Show>(['volume', 'show', 'tpl'], m());
    const taken = after.map.segments.flatMap((s) => s.replicas.map((x) => `${x.diskId}#${x.chunkIndex}`)).filter((k) => snapChunks.has(k));
    expect(taken.length).toBe(4);
    const onNodes = await chunksOnNodes(c, 'tpl');
    expect(onNodes.filter((x) => x.segment === 2 || x.segment === 5).length).toBe(4);

    // The snapshot's other chunks are freed.
    const deadline = Date.now() + 30_000;
    while ((await chunksOnNodes(c)).length > chunksBefore - 8 && Date.now() < deadline) await new Promise((res) => setTimeout(res, 500));
    expect((await chunksOnNodes(c)).length).toBe(chunksBefore - 8);

    w = await NbdClient.connect(await attach(c, 'tpl'));
    try {
      await verify(w, own);
      // The handed-back chunks are the origin's now, writable (not the snapshot's read-only mark).
      await w.write(2 * SEG + 8192, Buffer.alloc(4096, 0xe7));
      own.set(2 * SEG + 8192, 0xe7);
      await verify(w, own);
    } finally {
      w.close();
    }
    await ok(c, ['volume', 'detach', 'tpl']);
  }, 90_000);

  it('merged into an attached origin under a verifying writer: its head copies, no acknowledged write is lost', async () => {
    // tpl stands alone after the first case; a new snapshot of it, then tpl written again while attached.
    await ok(c, ['snapshot', 'create', 'tpl', 'tpl-s2']);
    const snap = await vskyJson<Show>(['volume', 'show', 'tpl-s2'], m());
    const snapChunks = new Set(snap.map.segments.flatMap((s) => s.replicas.map((r) => `${r.diskId}#${r.chunkIndex}`)));
    expect(snapChunks.size).toBeGreaterThan(0);
    const own = new Map<number, number>();
    const w = await NbdClient.connect(await attach(c, 'tpl'));
    // What tpl reads now: the template, the first case's own writes and its 0xe7 block.
    for (let s = 0; s < 8; s++) {
      for (let at = s * SEG; at < s * SEG + 4 * MiB; at += MiB) {
        const got = await w.read(at, MiB);
        for (let b = 0; b < MiB; b += 4096) if (got[b] !== templateByte(at + b)) own.set(at + b, got[b]!);
      }
    }
    expect(own.size).toBeGreaterThan(6);
    await ownWrites(w, own, 8, 3);
    const writer = verifyingWriter(w, own);
    let result = { errors: ['the writer was not stopped'], writes: 0 };
    try {
      const r = await vsky(['snapshot', 'delete', 'tpl-s2', '--json'], m(), 60_000);
      expect(r.exitCode, String(r.stderr)).toBe(0);
      const j = JSON.parse(String(r.stdout)) as JobInfo__Output;
      expect(j).toMatchObject({ kind: 'flatten', volume: 'tpl', state: 'succeeded', args: { merge: 'tpl-s2' } });
      expect(j.host).not.toBe(''); // the head holding tpl copied
      expect(Number(j.copied)).toBeGreaterThan(0);
      await new Promise((res) => setTimeout(res, 500)); // writes go on after the head took the plain map
    } finally {
      result = await writer.stop();
    }
    expect(result.errors).toEqual([]);
    expect(result.writes).toBeGreaterThan(20);
    const vols = await vskyJson<Vol[]>(['volume', 'list'], m());
    expect(vols.some((v) => v.name === 'tpl-s2')).toBe(false);
    expect(vols.find((v) => v.name === 'tpl')!.backing).toBe('');
    await verify(w, own);
    w.close();

    // No chunk of the snapshot is left in tpl's map, and the nodes free them all.
    const after = await vskyJson<Show>(['volume', 'show', 'tpl'], m());
    const mine = after.map.segments.flatMap((s) => s.replicas.map((x) => `${x.diskId}#${x.chunkIndex}`));
    expect(mine.filter((k) => snapChunks.has(k))).toEqual([]);
    const deadline = Date.now() + 30_000;
    while ((await chunksOnNodes(c)).length > mine.length && Date.now() < deadline) await new Promise((res) => setTimeout(res, 500));
    expect((await chunksOnNodes(c)).length).toBe(mine.length);

    await ok(c, ['volume', 'detach', 'tpl']);
    const w2 = await NbdClient.connect(await attach(c, 'tpl'));
    try {
      await verify(w2, own);
    } finally {
      w2.close();
    }
    await ok(c, ['volume', 'detach', 'tpl']);
  }, 120_000);
});
