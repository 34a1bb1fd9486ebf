import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { MiB } from '../../shared/constants.js';
import { call, storageNodeClient } from '../../shared/grpc.js';
import { destroyTestCluster, startTestCluster, chunksOnNodes } from '../harness/cluster.js';
import { run } from '../harness/tools.js';
import { vsky, vskyJson } from '../harness/vsky.js';

// A thin volume never written has no chunk, so no chunk record names it: its
// record lives in volume notes on a few storage nodes (manager/storage-notes.ts).
// Delete the manager's database and rebuild it from storage: the never-written
// volume is back (thin, its size and K), a deleted one stays deleted, a
// written one is back from its chunks, new volumes get new ids, and the empty
// volume takes its first write.

interface VolumeInfo { name: string; volumeId: number; size: number; replicas: number; thin: boolean; allocatedSegments: number }

describe('a never-written thin volume survives a rebuild from storage', () => {
  let c: LocalCluster;
  beforeAll(async () => {
    c = await startTestCluster({ managerArgs: ['--lease-ttl', '3000'] });
  }, 120_000);
  afterAll(() => destroyTestCluster(c));

  const list = async () => vskyJson<VolumeInfo[]>(['volume', 'list', '--json'], c.managerAddress);

  it('comes back from the records in the volume notes', { timeout: 300_000 }, async () => {
    const m = c.managerAddress;
    for (const [name, size] of [['empty1', '64M'], ['gone', '32M'], ['written', '48M']]) {
      const r = await vsky(['volume', 'create', name!, '--size', size!, '--replicas', '2'], m);
      expect(r.exitCode, String(r.stderr)).toBe(0);
    }
    const w = await vsky(['volume', 'attach', 'written'], m);
    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 0 1M', String(w.stdout).split('\n')[0]!], 60_000);
    expect((await vsky(['volume', 'detach', 'written'], m)).exitCode).toBe(0);
    expect((await vsky(['volume', 'delete', 'gone'], m)).exitCode).toBe(0);
    const before = await list();
    const empty = before.find((v) => v.name === 'empty1')!;
    expect(empty).toMatchObject({ thin: true, allocatedSegments: 0 });
    expect(await chunksOnNodes(c, 'empty1')).toHaveLength(0); // premise: nothing on storage but the note
    // The record is on some nodes (3 of 3 here), none holding a chunk of it.
    let holders = 0;
    for (const n of c.nodes) {
      const client = storageNodeClient(String(n.ready.controlAddress), c.tls.security());
      try {
        const notes = (await call(client, 'ListChunks', { diskId: '' })).volumeNotes;
        if (notes.some((x) => x.volumeId === empty.volumeId && x.record.includes('"empty1"'))) holders++;
        expect(notes.some((x) => x.record.includes('"gone"'))).toBe(false); // the delete took its record
      } finally {
        client.close();
      }
    }
    expect(holders).toBeGreaterThanOrEqual(2);

    await c.manager.stop();
    rmSync(join(c.opts.dir, 'manager'), { recursive: true, force: true });
    c.manager.args.push('--rebuild-from-storage', '--rebuild-servers', String(c.nodes.length), '--rebuild-wait', '20000');
    await c.manager.start(60_000);

    const after = await list();
    expect(after.map((v) => v.name).sort()).toEqual(['empty1', 'written']);
    expect(after.find((v) => v.name === 'empty1')).toMatchObject({ volumeId: empty.volumeId, size: 64 * MiB, replicas: 2, thin: true, allocatedSegments: 0 });
    expect(after.find((v) => v.name === 'written')).toMatchObject({ thin: true, allocatedSegments: 1 });
    const fresh = await vsky(['volume', 'create', 'fresh', '--size', '16M', '--replicas', '2'], m);
    expect(fresh.exitCode, String(fresh.stderr)).toBe(0);
    const ids = (await list()).map((v) => v.volumeId);
    expect(new Set(ids).size).toBe(ids.length);
    // The empty volume works: its first write allocates, reads back.
    let uri = '';
    for (let i = 0; i < 60 && !uri; i++) {
      const r = await vsky(['volume', 'attach', 'empty1'], m);
      if (r.exitCode === 0) uri = String(r.stdout).split('\n')[0]!;
      else await new Promise((res) => setTimeout(res, 250)); // a head may still hold it: one lease TTL
    }
    expect(uri).not.toBe('');
    await run('qemu-io', ['-f', 'raw', '-c', `write -P 0x33 ${20 * MiB} 64k`, '-c', `read -P 0x33 ${20 * MiB} 64k`, uri], 60_000);
    expect((await list()).find((v) => v.name === 'empty1')!.allocatedSegments).toBe(1);
  });
});
