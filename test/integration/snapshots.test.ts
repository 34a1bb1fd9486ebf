import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { GiB, MiB } from '../../shared/constants.js';
import { destroyTestCluster, startTestCluster, chunksOnNodes } from '../harness/cluster.js';
import { tryRun } from '../harness/tools.js';
import { vsky, vskyJson } from '../harness/vsky.js';

// Snapshots and clones (docs/snapshots.md) with real processes and qemu-io
// over NBD, 64 MiB chunks (16 KiB regions; small so the flatten copies little): a template written with
// patterns, a snapshot (its chunks move to the snapshot, no data copied),
// clones each written differently (partial regions: copy-up; whole regions;
// segments the snapshot never had), each reading its own writes and the
// template's data elsewhere; the template's own new writes reach no clone;
// a clone of a clone; and bad input refused with nothing changed.

const SEG = 64 * MiB;

interface Vol { name: string; volumeId: number; kind: string; origin: string; backing: string; dependents: string[]; allocatedSegments: number; state: string }

describe('snapshots and clones: redirect-on-write, read-through, copy-up', () => {
  let c: LocalCluster;
  const m = () => c.managerAddress;
  const nbd = new Map<string, string>();
  const list = async () => vskyJson<Vol[]>(['volume', 'list', '--json'], m());
  const vol = async (name: string) => (await list()).find((v) => v.name === name);
  const io = async (name: string, cmd: string) => {
    const r = await tryRun('qemu-io', ['-f', 'raw', '-c', cmd, nbd.get(name)!], 60_000);
    expect(r.exitCode, `${name}: ${cmd}: ${String(r.stdout)}${String(r.stderr)}`).toBe(0);
    expect(String(r.stdout), `${name}: ${cmd}`).not.toMatch(/Pattern verification failed|error/i);
  };
  const attach = async (name: string) => {
    const r = await vsky(['volume', 'attach', name], m());
    expect(r.exitCode, String(r.stderr)).toBe(0);
    nbd.set(name, String(r.stdout).trim().split('\n')[0]!);
  };
  const detach = async (name: string) => {
    const r = await vsky(['volume', 'detach', name], m());
    expect(r.exitCode, String(r.stderr)).toBe(0);
  };
  /** What the template holds (checked through every clone where the clone did not write). */
  const templateReads = (name: string, skipFirstRegion = false) => [
    ...(skipFirstRegion ? [] : [`read -P 0xaa 0 64k`]),
    `read -P 0xaa 64k 960k`,
    `read -P 0xab ${SEG + 64 * 1024} 64k`,
    `read -P 0xac ${2 * SEG + 1000} 4000`,
    `read -P 0x00 ${2 * SEG} 1000`,
    `read -P 0x00 ${3 * SEG + 8192} 64k`,
  ].map((cmd) => io(name, cmd));

  beforeAll(async () => {
    c = await startTestCluster({ diskSize: 2 * GiB, chunkSize: SEG });
  }, 120_000);
  afterAll(async () => {
    await destroyTestCluster(c);
  });

  it('a template with data, then a snapshot: its chunks become the snapshot\'s (no copy), the template reads through it', async () => {
    expect((await vsky(['volume', 'create', 'tpl', '--size', '1G', '--replicas', '2'], m())).exitCode).toBe(0);
    await attach('tpl');
    await io('tpl', 'write -P 0xaa 0 1M');
    await io('tpl', `write -P 0xab ${SEG + 64 * 1024} 64k`);
    await io('tpl', `write -P 0xac ${2 * SEG + 1000} 4000`);
    await detach('tpl');
    const before = await chunksOnNodes(c, 'tpl');
    expect(before).toHaveLength(6); // 3 segments x 2 replicas

    const r = await vsky(['snapshot', 'create', 'tpl', 'snap1', '--json'], m());
    expect(r.exitCode, String(r.stderr)).toBe(0);
    const s = JSON.parse(String(r.stdout)) as Vol;
    expect(s).toMatchObject({ name: 'snap1', kind: 'snapshot', origin: 'tpl', allocatedSegments: 3 });
    expect(await vol('tpl')).toMatchObject({ backing: 'snap1', allocatedSegments: 0, kind: 'volume' });
    expect((await vol('snap1'))!.dependents).toEqual(['tpl']);
    // The same chunks, now with the snapshot's identity on their nodes.
    expect(await chunksOnNodes(c, 'tpl')).toHaveLength(0);
    const moved = await chunksOnNodes(c, 'snap1');
    expect(moved).toHaveLength(6);
    expect(moved.every((x) => x.volumeId === s.volumeId && x.epoch > before[0]!.epoch)).toBe(true);
    const listed = String((await vsky(['snapshot', 'list', 'tpl'], m())).stdout);
    expect(listed).toMatch(/snap1/);

    await attach('tpl');
    await Promise.all(templateReads('tpl'));
    // The template writes on: into new chunks, the snapshot is untouched (checked through the clones below).
    await io('tpl', 'write -P 0xee 20000 4096');
    await io('tpl', 'read -P 0xaa 0 20000');
    await io('tpl', 'read -P 0xee 20000 4096');
    await io('tpl', 'read -P 0xaa 24096 41440');
    expect((await vol('tpl'))!.allocatedSegments).toBe(1);
    await detach('tpl');
  }, 180_000);

  it('three clones, each written differently over NBD, read their own writes and the template\'s data elsewhere', async () => {
    for (const n of ['c1', 'c2', 'c3']) {
      const r = await vsky(['volume', 'clone', 'snap1', n], m());
      expect(r.exitCode, String(r.stderr)).toBe(0);
      expect(String(r.stdout)).toMatch(new RegExp(`created volume ${n} .* as a clone of snap1`));
      await attach(n);
    }
    expect((await vol('snap1'))!.dependents).toEqual(['c1', 'c2', 'c3', 'tpl']);
    const pat = { c1: 0x11, c2: 0x22, c3: 0x33 } as const;
    await Promise.all((['c1', 'c2', 'c3'] as const).map(async (n) => {
      const p = pat[n];
      await io(n, `write -P ${p} 4096 8192`); // partial region 0 of segment 0: copy-up
      await io(n, `write -P ${p + 1} ${SEG + 3 * 64 * 1024} 64k`); // a whole unwritten region of segment 1
      await io(n, `write -P ${p + 2} ${3 * SEG + 100} 300`); // a segment the snapshot never had: copy-up from zeros
    }));
    await Promise.all((['c1', 'c2', 'c3'] as const).map(async (n) => {
      const p = pat[n];
      await io(n, 'read -P 0xaa 0 4096');
      await io(n, `read -P ${p} 4096 8192`);
      await io(n, 'read -P 0xaa 12288 52k');
      await io(n, `read -P ${p + 1} ${SEG + 3 * 64 * 1024} 64k`);
      await io(n, `read -P 0 ${3 * SEG} 100`);
      await io(n, `read -P ${p + 2} ${3 * SEG + 100} 300`);
      await io(n, `read -P 0 ${3 * SEG + 400} 64k`);
      await Promise.all(templateReads(n, true));
      // Overwrites of written regions go straight to the clone's chunks.
      await io(n, `write -P ${p + 3} 6000 100`);
      await io(n, `read -P ${p + 3} 6000 100`);
      await io(n, `read -P ${p} 4096 1904`);
    }));
    // The template's own write after the snapshot (0xee at 20000) reached no clone: read above as 0xaa.
    for (const n of ['c1', 'c2', 'c3']) expect((await vol(n))!.allocatedSegments).toBe(3);
  }, 300_000);

  it('a clone of a clone: snapshot c1, clone that; it reads c1\'s writes and the template\'s; its writes reach neither', async () => {
    await detach('c1');
    expect((await vsky(['snapshot', 'create', 'c1', 'c1snap'], m())).exitCode).toBe(0);
    expect((await vsky(['volume', 'clone', 'c1snap', 'c1b'], m())).exitCode).toBe(0);
    expect(await vol('c1b')).toMatchObject({ backing: 'c1snap' });
    await attach('c1b');
    await io('c1b', 'read -P 0x11 4096 1904');
    await io('c1b', 'read -P 0x14 6000 100');
    await io('c1b', 'read -P 0x11 6100 6188');
    await io('c1b', `read -P 0x12 ${SEG + 3 * 64 * 1024} 64k`);
    await Promise.all(templateReads('c1b', true));
    await io('c1b', 'read -P 0xaa 0 4096');
    await io('c1b', 'write -P 0x77 0 8192');
    await io('c1b', 'read -P 0x77 0 8192');
    await io('c1b', 'read -P 0x11 8192 4096');
    await io('c1b', 'read -P 0xaa 12288 4096');
    await attach('c1');
    await io('c1', 'read -P 0xaa 0 4096');
    await io('c1', 'read -P 0x11 4096 1904');
    await io('c1', 'write -P 0x55 0 4096');
    await io('c1b', 'read -P 0x77 0 4096');
  }, 180_000);

  it('flatten: a clone copies what it reads from its snapshot and stands alone, its data unchanged', async () => {
    const flatC1b = await vsky(['volume', 'flatten', 'c1b'], m()); // a clone of a clone: its whole chain
    expect(flatC1b.exitCode, String(flatC1b.stderr)).toBe(0);
    const noBacking = await vsky(['volume', 'flatten', 'snap1'], m());
    expect(String(noBacking.stderr)).toMatch(/snap1 is a snapshot/);
    const r = await vsky(['volume', 'flatten', 'c2', '--json'], m());
    expect(r.exitCode, String(r.stderr)).toBe(0);
    expect(JSON.parse(String(r.stdout))).toMatchObject({ kind: 'flatten', volume: 'c2', state: 'succeeded' }); // a storage job (flatten-job.test.ts)
    expect(await vol('c2')).toMatchObject({ name: 'c2', backing: '', allocatedSegments: 4 });
    expect((await vol('snap1'))!.dependents).not.toContain('c2');
    expect((await vol('c1b'))!.backing).toBe('');
    // Through a fresh attach (no backing chain any more): the template's data and c2's own writes.
    await detach('c2');
    await attach('c2');
    await io('c2', 'read -P 0xaa 0 4096');
    await io('c2', 'read -P 0x22 4096 1904');
    await io('c2', 'read -P 0x25 6000 100');
    await Promise.all(templateReads('c2', true));
    await io('c2', `read -P 0x24 ${3 * SEG + 100} 300`);
    await io('c1b', 'read -P 0x77 0 8192');
    await io('c1b', 'read -P 0x11 8192 4096');
    await io('c1b', 'read -P 0xaa 12288 4096');
  }, 240_000);

  it('bad input is refused clearly and changes nothing', async () => {
    const before = await list();
    const cloneVol = await vsky(['volume', 'clone', 'tpl', 'x1'], m());
    expect(cloneVol.exitCode).not.toBe(0);
    expect(String(cloneVol.stderr)).toMatch(/tpl is not a snapshot.*vsky snapshot create tpl/);
    const dupSnap = await vsky(['snapshot', 'create', 'c2', 'c3'], m());
    expect(dupSnap.exitCode).not.toBe(0);
    expect(String(dupSnap.stderr)).toMatch(/named c3 exists/);
    const dupClone = await vsky(['volume', 'clone', 'snap1', 'c2'], m());
    expect(dupClone.exitCode).not.toBe(0);
    expect(String(dupClone.stderr)).toMatch(/named c2 exists/);
    const snapOfSnap = await vsky(['snapshot', 'create', 'snap1', 'x2'], m());
    expect(snapOfSnap.exitCode).not.toBe(0);
    expect(String(snapOfSnap.stderr)).toMatch(/snap1 is a snapshot/);
    const del = await vsky(['snapshot', 'delete', 'snap1'], m());
    expect(del.exitCode).not.toBe(0);
    expect(String(del.stderr)).toMatch(/c1snap, c3, tpl read unwritten regions from it.*vsky volume flatten/);
    const migrateSnap = await vsky(['volume', 'attach', 'snap1', '--migrate'], m()); // attached read-only otherwise (snapshot-readonly.test.ts)
    expect(migrateSnap.exitCode).not.toBe(0);
    expect(String(migrateSnap.stderr)).toMatch(/snap1 is a snapshot, attached read-only/);
    const after = await list();
    expect(after.map((v) => v.name).sort()).toEqual(before.map((v) => v.name).sort());
    expect((await chunksOnNodes(c, 'snap1'))).toHaveLength(6);
    // The clones still read the template through snap1.
    await io('c2', 'read -P 0xaa 0 4096');
  }, 120_000);
});
