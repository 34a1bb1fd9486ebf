import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { GiB, MiB } from '../../shared/constants.js';
import { call, storageNodeClient } from '../../shared/grpc.js';
import { destroyTestCluster, startTestCluster } from '../harness/cluster.js';
import { tryRun } from '../harness/tools.js';
import { vsky, vskyJson } from '../harness/vsky.js';

// Rebuild from storage (docs/rebuild-from-storage.md) of snapshots and clones
// (docs/snapshots.md): the manager's database is lost; the snapshot comes back
// as a snapshot, the clone with its backing (kept in the volume notes on the
// nodes), and the clone reads its own writes and the template's data again.

const SEG = 256 * MiB;

interface Vol { name: string; kind: string; origin: string; backing: string }

describe('rebuild from storage: snapshots and clones come back with their relations', () => {
  let c: LocalCluster;
  const m = () => c.managerAddress;
  const io = async (uri: string, cmd: string) => {
    const r = await tryRun('qemu-io', ['-f', 'raw', '-c', cmd, uri], 60_000);
    expect(r.exitCode, String(r.stdout) + String(r.stderr)).toBe(0);
    expect(String(r.stdout)).not.toMatch(/Pattern verification failed/);
  };
  const attach = async (name: string) => {
    const r = await vsky(['volume', 'attach', name], m());
    expect(r.exitCode, String(r.stderr)).toBe(0);
    return String(r.stdout).trim().split('\n')[0]!;
  };

  beforeAll(async () => {
    c = await startTestCluster({ diskSize: 2 * GiB, chunkSize: SEG });
  }, 120_000);
  afterAll(async () => {
    await destroyTestCluster(c);
  });

  it('restores kind, origin and backing; the clone reads through again', async () => {
    expect((await vsky(['volume', 'create', 'rt', '--size', '512M', '--replicas', '2'], m())).exitCode).toBe(0);
    let uri = await attach('rt');
    await io(uri, 'write -P 0x3c 0 2M');
    await io(uri, `write -P 0x4d ${SEG} 1M`);
    expect((await vsky(['volume', 'detach', 'rt'], m())).exitCode).toBe(0);
    expect((await vsky(['snapshot', 'create', 'rt', 'rt-s'], m())).exitCode).toBe(0);
    expect((await vsky(['volume', 'clone', 'rt-s', 'rc'], m())).exitCode).toBe(0);
    uri = await attach('rc');
    await io(uri, 'write -P 0x5e 4096 4096');
    expect((await vsky(['volume', 'detach', 'rc'], m())).exitCode).toBe(0);

    await c.manager.stop();
    rmSync(join(c.opts.dir, 'manager'), { recursive: true, force: true });
    c.manager.args.push('--rebuild-from-storage', '--rebuild-servers', String(c.nodes.length), '--rebuild-wait', '20000');
    await c.manager.start(60_000);

    const vols = await vskyJson<Vol[]>(['volume', 'list', '--json'], m());
    // rt has no chunk of its own since the snapshot: its record and relations are in its notes (thin volumes with no chunk).
    expect(vols.find((v) => v.name === 'rt-s')).toMatchObject({ kind: 'snapshot', origin: 'rt' });
    expect(vols.find((v) => v.name === 'rt')).toMatchObject({ kind: 'volume', backing: 'rt-s' });
    expect(vols.find((v) => v.name === 'rc')).toMatchObject({ kind: 'volume', backing: 'rt-s' });
    // The snapshot's chunks keep their read-only mark (it is on disk); the clone's are writable.
    const marks = new Map<string, boolean[]>();
    for (const n of c.nodes) {
      const nc = storageNodeClient(String(n.ready.controlAddress), c.tls.security());
      const { chunks } = await call(nc, 'ListChunks', { diskId: '' }).finally(() => nc.close());
      for (const x of chunks) marks.set(x.identity!.volumeName, [...(marks.get(x.identity!.volumeName) ?? []), x.identity!.readOnly]);
    }
    expect(marks.get('rt-s')!.length).toBeGreaterThan(0);
    expect(marks.get('rt-s')!.every((x) => x)).toBe(true);
    expect(marks.get('rc')!.some((x) => x)).toBe(false);
    const del = await vsky(['snapshot', 'delete', 'rt-s'], m());
    expect(String(del.stderr)).toMatch(/rc, rt read unwritten regions from it/);
    let r = await vsky(['volume', 'attach', 'rc'], m());
    for (let i = 0; i < 30 && r.exitCode !== 0 && /claim/.test(String(r.stderr)); i++) {
      await new Promise((res) => setTimeout(res, 1000));
      r = await vsky(['volume', 'attach', 'rc'], m());
    }
    expect(r.exitCode, String(r.stderr)).toBe(0);
    uri = String(r.stdout).trim().split('\n')[0]!;
    await io(uri, 'read -P 0x3c 0 4096');
    await io(uri, 'read -P 0x5e 4096 4096');
    await io(uri, 'read -P 0x3c 8192 2088960');
    await io(uri, `read -P 0x4d ${SEG} 1M`);
  }, 240_000);
});
