import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { MiB } from '../../shared/constants.js';
import { call } from '../../shared/grpc.js';
import { destroyTestCluster, startTestCluster, chunksOnNodes } from '../harness/cluster.js';
import { run, sameContent } from '../harness/tools.js';
import { vsky, vskyJson } from '../harness/vsky.js';

// Copies into thin destinations (docs/thin-provisioning.md, "Copies"), real
// processes and clients: `vsky volume copy --create` makes a thin destination
// (--thick a thick one); it gets chunks only for the segments where the source
// holds written regions, the copy writes only those regions (zeros written in
// the source are not written), and the result reads exactly as the source
// (qemu-img compare over NBD); an existing thin destination is accepted.

const SEG = 16 * MiB;
const SIZE = 6 * SEG;
const FINAL = new Set(['succeeded', 'failed', 'fenced', 'aborted']);
interface Job { jobId: string; state: string; error: string; total: number }
interface VolumeInfo { name: string; thin: boolean; allocatedSegments: number }
interface MapEntry { offset: number; length: number; type: number }

describe('copies into thin destinations', () => {
  let c: LocalCluster;
  const m = () => c.managerAddress;
  const attach = async (name: string) => {
    const r = await vsky(['volume', 'attach', name], m());
    expect(r.exitCode, String(r.stderr)).toBe(0);
    return String(r.stdout).split('\n')[0]!;
  };
  const detach = async (name: string) => expect((await vsky(['volume', 'detach', name], m())).exitCode).toBe(0);
  const info = async (name: string) => (await vskyJson<VolumeInfo[]>(['volume', 'list', '--json'], m())).find((v) => v.name === name)!;
  const copy = async (args: string[], jobId: string): Promise<Job> => {
    await vskyJson(['volume', 'copy', ...args, '--job-id', jobId], m());
    const deadline = Date.now() + 120_000;
    for (;;) {
      const client = c.client();
      const j = await call(client, 'GetJob', { jobId }).finally(() => client.close()) as Job;
      if (FINAL.has(j.state) || Date.now() > deadline) return j;
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  const compare = async (a: string, b: string) => {
    const [ua, ub] = [await attach(a), await attach(b)];
    try {
      return await sameContent(ua, ub);
    } finally {
      await detach(a);
      await detach(b);
    }
  };

  beforeAll(async () => {
    c = await startTestCluster({ diskSize: 512 * MiB, chunkSize: SEG });
    // The source: thin; segment 0 and 2 hold data, segment 4 holds written zeros, 1, 3 and 5 were never written.
    expect((await vsky(['volume', 'create', 'src', '--size', String(SIZE), '--replicas', '2'], m())).exitCode).toBe(0);
    const u = await attach('src');
    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 1M', '-c', `write -P 0x22 ${2 * SEG + 5 * MiB} 64k`, '-c', `write -P 0 ${4 * SEG} 2M`, u], 60_000);
    await detach('src');
    expect(await info('src')).toMatchObject({ thin: true, allocatedSegments: 3 });
  }, 180_000);
  afterAll(async () => destroyTestCluster(c));

  it('copy --create makes a thin destination with chunks only where the source holds data, and the same bytes', async () => {
    const j = await copy(['src', 'dst', '--create'], 'thin-1');
    expect(j, j.error).toMatchObject({ state: 'succeeded' });
    const d = await info('dst');
    expect(d.thin).toBe(true);
    // Segments 0, 2 and 4 (written zeros count as written in the bitmap); never 1, 3, 5.
    expect(d.allocatedSegments).toBe(3);
    const segs = new Set((await chunksOnNodes(c, 'dst')).map((x) => x.segment));
    expect([...segs].sort()).toEqual([0, 2, 4]);
    expect(await compare('src', 'dst')).toBe(true);
    // The zeros of segment 4 were not written: the destination's map shows only the two data extents.
    const u = await attach('dst');
    const map = JSON.parse(String((await run('nbdinfo', ['--map', '--json', u], 60_000)).stdout)) as MapEntry[];
    await detach('dst');
    expect(map.filter((e) => e.type === 0).map((e) => [e.offset, e.length])).toEqual([[0, MiB], [2 * SEG + 5 * MiB, 64 * 1024]]);
  }, 300_000);

  it('copy --create --thick makes a thick destination; an existing thin destination is accepted', async () => {
    const j = await copy(['src', 'dst-thick', '--create', '--thick'], 'thick-1');
    expect(j, j.error).toMatchObject({ state: 'succeeded' });
    expect(await info('dst-thick')).toMatchObject({ thin: false, allocatedSegments: 6 });
    expect((await vsky(['volume', 'create', 'dst2', '--size', String(SIZE), '--replicas', '2'], m())).exitCode).toBe(0);
    const u = await attach('dst2');
    await run('qemu-io', ['-f', 'raw', '-c', `write -P 0x55 ${SEG} 1M`, u], 60_000); // written only in the destination: zeroed by the copy
    await detach('dst2');
    const k = await copy(['src', 'dst2'], 'thin-2');
    expect(k, k.error).toMatchObject({ state: 'succeeded' });
    expect(await compare('src', 'dst2')).toBe(true);
    const bad = await vsky(['volume', 'copy', 'src', 'dst2', '--thick'], m());
    expect(bad.exitCode).not.toBe(0);
    expect(String(bad.stderr)).toMatch(/--thick only applies with --create/);
  }, 300_000);
});
