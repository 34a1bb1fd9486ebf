import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { call, storageNodeClient } from '../../shared/grpc.js';
import { destroyTestCluster, startTestCluster } from '../harness/cluster.js';
import { run } from '../harness/tools.js';

// Every disk carries its cluster's id (stamped at the node's first
// registration). A manager whose database was lost (a new cluster id) is not
// handed those disks: the nodes are refused with a message that says why, and
// not one chunk is freed or overwritten, so the volumes' data is still there.

describe('a manager never adopts disks of another cluster', () => {
  let c: LocalCluster;

  beforeAll(async () => {
    c = await startTestCluster();
  });
  afterAll(async () => {
    await destroyTestCluster(c);
  });

  it('after the manager\'s database is lost, the nodes are refused, clearly, and keep every chunk', async () => {
    const uri = await c.ensureVolume('keep', 32 * 1024 * 1024, 3);
    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x6b 0 1M', uri]);
    const node1 = storageNodeClient(String(c.nodes[0]!.ready.controlAddress), c.tls.security());
    try {
      const before = await call(node1, 'ListChunks', { diskId: '' });
      expect(before.chunks.length).toBeGreaterThan(0);
      const clusterId = (await call(node1, 'GetInfo', {})).disks[0]!.clusterId;
      expect(clusterId).toMatch(/^[0-9a-f-]{36}$/); // premise: the disks were stamped

      await c.manager.stop();
      rmSync(join(c.opts.dir, 'manager'), { recursive: true, force: true }); // "the manager host was reinstalled"
      await c.manager.start();
      const refusal = /disk\(s\) of another cluster.*not adopted, and nothing on it is freed or overwritten.*--rebuild-from-storage.*"msg":"the manager refused this node/;
      const nodeLog = () => readFileSync(join(c.opts.dir, 'logs', 'node1.log'), 'utf8');
      for (let i = 0; i < 100 && !refusal.test(nodeLog()); i++) await new Promise((r) => setTimeout(r, 100));
      expect(nodeLog()).toMatch(refusal);
      const m = c.client();
      try {
        expect((await call(m, 'ListServers', {})).servers).toEqual([]);
        expect((await call(m, 'ListVolumes', {})).volumes).toEqual([]);
      } finally {
        m.close();
      }
      const after = await call(node1, 'ListChunks', { diskId: '' });
      expect(after.chunks.map((x) => `${x.diskId}/${x.chunkIndex}/${x.identity?.volumeId}`).sort())
        .toEqual(before.chunks.map((x) => `${x.diskId}/${x.chunkIndex}/${x.identity?.volumeId}`).sort());
      expect((await call(node1, 'GetInfo', {})).disks[0]!.clusterId).toBe(clusterId);
    } finally {
      node1.close();
    }
  });
});
