import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { GiB, MiB } from '../../shared/constants.js';

const KiB = 1024;
import { destroyTestCluster, startTestCluster } from '../harness/cluster.js';
import { run, tryRun } from '../harness/tools.js';
import { vsky, vskyJson } from '../harness/vsky.js';

// NBD block status (base:allocation, docs/thin-provisioning.md) with real
// clients: nbdinfo --map on a thin volume with a few written regions shows
// exactly them as data and the rest as hole,zero (unallocated segments, and
// unwritten 4 KiB regions of allocated ones); a discard turns a region back
// into a hole; a thick volume's unwritten regions read "zero" (not holes);
// qemu-img map agrees; nbdcopy skips the holes (compared with --no-extents)
// and copies the same bytes.

const SEG = 256 * MiB;

interface MapEntry { offset: number; length: number; type: number; description: string }

describe('NBD block status (base:allocation)', () => {
  let c: LocalCluster;
  let work: string;
  let thinUrl: string;
  let thickUrl: string;
  const m = () => c.managerAddress;
  const attach = async (name: string): Promise<string> => {
    const r = await vsky(['volume', 'attach', name], m());
    expect(r.exitCode, String(r.stderr)).toBe(0);
    return String(r.stdout).trim().split('\n')[0]!;
  };
  const qemuIo = async (url: string, cmd: string): Promise<void> => {
    const r = await tryRun('qemu-io', ['-f', 'raw', '-c', cmd, url], 60_000);
    expect(r.exitCode, `${cmd}: ${String(r.stdout)}${String(r.stderr)}`).toBe(0);
  };
  const nbdMap = async (url: string): Promise<MapEntry[]> => JSON.parse(String((await run('nbdinfo', ['--map', '--json', url], 60_000)).stdout)) as MapEntry[];
  /** The volume's written bytes as `vsky volume list` reports them, once they reach `want` (heartbeats carry them). */
  const writtenBytes = async (name: string, want: number): Promise<number> => {
    let got = -1;
    for (let i = 0; i < 60 && got !== want; i++) {
      if (i > 0) await new Promise((r) => setTimeout(r, 250));
      got = (await vskyJson<{ name: string; writtenBytes: number }[]>(['volume', 'list', '--json'], m())).find((v) => v.name === name)!.writtenBytes;
    }
    return got;
  };
  /** [offset, length, type] triples: 0 data, 2 zero, 3 hole+zero. */
  const triples = (map: MapEntry[]): [number, number, number][] => map.map((e) => [e.offset, e.length, e.type]);

  beforeAll(async () => {
    c = await startTestCluster({ diskSize: 2 * GiB, chunkSize: SEG, storageNodeArgs: ['--region-size', '4K'] });
    work = mkdtempSync(join(tmpdir(), 'vsky-bs-'));
    for (const [name, extra] of [['bs-thin', []], ['bs-thick', ['--thick']]] as const) {
      const r = await vsky(['volume', 'create', name, '--size', '1G', '--replicas', '2', ...extra], m());
      expect(r.exitCode, String(r.stderr)).toBe(0);
    }
    thinUrl = await attach('bs-thin');
    thickUrl = await attach('bs-thick');
  }, 180_000);
  afterAll(async () => {
    await destroyTestCluster(c);
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it('nbdinfo --map of a never-written thin volume: one hole,zero extent', async () => {
    expect(triples(await nbdMap(thinUrl))).toEqual([[0, GiB, 3]]);
    const ctx = String((await run('nbdinfo', ['--list', '--content', thinUrl], 60_000).catch(() => run('nbdinfo', [thinUrl], 60_000))).stdout);
    expect(ctx).toMatch(/base:allocation/);
  });

  it('a few written regions show as data, the rest of their segments and unallocated segments as hole,zero', async () => {
    await qemuIo(thinUrl, 'write -P 0x11 0 64k');
    await qemuIo(thinUrl, `write -P 0x22 ${MiB + 4 * KiB} 64k`); // 16 of the 4 KiB regions (docs/snapshots.md)
    await qemuIo(thinUrl, `write -P 0x33 ${600 * MiB} 4k`); // segment 2; segment 1 stays unallocated
    expect(triples(await nbdMap(thinUrl))).toEqual([
      [0, 64 * KiB, 0],
      [64 * KiB, MiB + 4 * KiB - 64 * KiB, 3],
      [MiB + 4 * KiB, 64 * KiB, 0],
      [MiB + 68 * KiB, 600 * MiB - MiB - 68 * KiB, 3],
      [600 * MiB, 4 * KiB, 0],
      [600 * MiB + 4 * KiB, GiB - 600 * MiB - 4 * KiB, 3],
    ]);
    // qemu-img map agrees (zero/data per extent).
    const qmap = JSON.parse(String((await run('qemu-img', ['map', '--output=json', '-f', 'raw', thinUrl], 60_000)).stdout)) as
      { start: number; length: number; data: boolean; zero: boolean }[];
    const dataExtents = qmap.filter((e) => e.data).map((e) => [e.start, e.length]);
    expect(dataExtents).toEqual([[0, 64 * KiB], [MiB + 4 * KiB, 64 * KiB], [600 * MiB, 4 * KiB]]);
    expect(qmap.filter((e) => !e.data).every((e) => e.zero)).toBe(true);
    // vsky volume list: 33 written 4 KiB regions, while 2 segments (512 MiB) are allocated.
    expect(await writtenBytes('bs-thin', 132 * KiB)).toBe(132 * KiB);
    expect(String((await vsky(['volume', 'list'], m())).stdout)).toMatch(/bs-thin.*512\.0 MiB \(2\/4 seg, 132\.0 KiB written\)/);
  }, 120_000);

  it('a discard of a whole region makes it a hole again; a partial one leaves it data', async () => {
    await qemuIo(thinUrl, `discard ${MiB} 64k`); // 15 written regions whole
    await qemuIo(thinUrl, `discard ${600 * MiB} 2k`); // part of a region: zeroed, still data
    const map = triples(await nbdMap(thinUrl));
    expect(map.slice(0, 4)).toEqual([
      [0, 64 * KiB, 0],
      [64 * KiB, MiB, 3],
      [MiB + 64 * KiB, 4 * KiB, 0],
      [MiB + 68 * KiB, 600 * MiB - MiB - 68 * KiB, 3],
    ]);
    expect(await writtenBytes('bs-thin', 72 * KiB)).toBe(72 * KiB); // the discarded regions are given back in the report
    await qemuIo(thinUrl, `read -P 0 ${MiB} 64k`);
    await qemuIo(thinUrl, `read -P 0x22 ${MiB + 64 * KiB} ${4 * KiB}`);
  }, 120_000);

  it('a thick volume: unwritten regions read zero but are not holes', async () => {
    await qemuIo(thickUrl, `write -P 0x44 ${300 * MiB} 64k`);
    expect(triples(await nbdMap(thickUrl))).toEqual([
      [0, 300 * MiB, 2],
      [300 * MiB, 64 * KiB, 0],
      [300 * MiB + 64 * KiB, GiB - 300 * MiB - 64 * KiB, 2],
    ]);
  }, 120_000);

  it('nbdcopy skips the holes (faster than with --no-extents) and copies the same bytes', async () => {
    const time = async (args: string[], out: string): Promise<number> => {
      rmSync(out, { force: true });
      const t0 = performance.now();
      await run('nbdcopy', [...args, thinUrl, out], 300_000);
      return (performance.now() - t0) / 1000;
    };
    const a = join(work, 'with-extents.img');
    const b = join(work, 'no-extents.img');
    const withExtents = await time([], a);
    const without = await time(['--no-extents'], b);
    console.log(`nbdcopy of a 1 GiB thin volume with 3 written regions: ${withExtents.toFixed(2)} s with block status, ${without.toFixed(2)} s with --no-extents`);
    expect(readFileSync(a).equals(readFileSync(b))).toBe(true);
    expect(statSync(a).blocks * 512).toBeLessThan(16 * MiB); // the holes stayed holes in the file
    expect(withExtents).toBeLessThan(without);
  }, 600_000);
});
