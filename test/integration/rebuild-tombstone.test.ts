import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { MiB } from '../../shared/constants.js';
import { call, storageNodeClient } from '../../shared/grpc.js';
import { chunksOnNodes, destroyTestCluster, startTestCluster } from '../harness/cluster.js';
import { run } from '../harness/tools.js';
import { vsky } from '../harness/vsky.js';

// Issue 9: a volume deleted while every holder of one of its chunks is down
// must not be resurrected by a rebuild from storage. The delete's mark
// reaches every node as a tombstone (storage-node/manager-notes.ts), holder
// or not: kill the node holding the volume's only chunk, delete the volume,
// lose the manager's database, bring the node back (its chunk still LEGAL,
// unmarked), rebuild: the volume stays deleted and its chunk is freed; the
// other volume keeps its bytes; GC then drops the tombstones. A server an
// admin failed meanwhile comes back failed (its node keeps the note). A
// delete while every node is down is refused.

const SIZE = 16 * MiB; // one segment

async function tombstones(c: LocalCluster): Promise<number[][]> {
  const out: number[][] = [];
  for (const n of c.nodes) {
    const client = storageNodeClient(String(n.ready.controlAddress), c.tls.security());
    try {
      out.push((await call(client, 'ListChunks', { diskId: '' })).deletedVolumes);
    } finally {
      client.close();
    }
  }
  return out;
}

async function waitFor(what: string, probe: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await probe().catch(() => false))) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

describe('a delete that missed every holder of a chunk, then a rebuild from storage', () => {
  let c: LocalCluster;
  beforeAll(async () => {
    // GC on request only until the rebuild (then every 2 s): a periodic pass that began while the holder was
    // still taken for active would wait out its listing deadline (30 s) on the stopped node.
    c = await startTestCluster({ managerArgs: ['--gc-interval', '0', '--lease-ttl', '3000'] });
  });
  afterAll(() => destroyTestCluster(c));

  it('stays deleted: the tombstones on the other nodes finish the delete', { timeout: 240_000 }, async () => {
    const m = c.managerAddress;
    const ok = async (args: string[]) => {
      const r = await vsky(args, m);
      expect(r.exitCode, `vsky ${args.join(' ')}: ${String(r.stderr)}`).toBe(0);
    };
    for (const [name, k, pattern] of [['gone', 1, 0x67], ['kept', 3, 0x6b]] as const) {
      const uri = await c.ensureVolume(name, SIZE, k);
      await run('qemu-io', ['-f', 'raw', '-c', `write -P ${pattern} 0 ${SIZE}`, uri]);
      await ok(['volume', 'detach', name]);
    }
    const goneChunk = (await chunksOnNodes(c, 'gone'))[0]!;
    const goneId = goneChunk.volumeId;
    let holder = -1;
    for (const [i, n] of c.nodes.entries()) {
      const client = storageNodeClient(String(n.ready.controlAddress), c.tls.security());
      try {
        if ((await call(client, 'ListChunks', { diskId: '' })).chunks.some((x) => x.identity?.volumeId === goneId)) holder = i;
      } finally {
        client.close();
      }
    }
    expect(holder).toBeGreaterThanOrEqual(0);

    // The only holder of gone's chunk is down; the delete goes through, recorded by the other nodes.
    await c.nodes[holder]!.stop();
    await ok(['volume', 'delete', 'gone']);
    // A GC pass while gone's chunk waits on the to-free list (its node is down, known failed: every active node
    // answers the pass) must keep the tombstones.
    const gcClient = c.client();
    const holderAddress = String(c.nodes[holder]!.ready.controlAddress);
    try {
      await waitFor('the holder known down', async () =>
        (await call(gcClient, 'ListServers', {})).servers.find((s) => s.controlAddress === holderAddress)?.state === 'failed', 60_000);
      await call(gcClient, 'CollectGarbage', {}, 60_000);
    } finally {
      gcClient.close();
    }
    // Premise: the other nodes hold no chunk of gone, yet keep its tombstone (the stopped node cannot answer).
    for (const [i, n] of c.nodes.entries()) {
      if (i === holder) continue;
      const client = storageNodeClient(String(n.ready.controlAddress), c.tls.security());
      try {
        expect((await call(client, 'ListChunks', { diskId: '' })).deletedVolumes).toContain(goneId);
      } finally {
        client.close();
      }
    }

    // An admin fails another server (its node keeps the admin's word).
    const failedNode = c.nodes[(holder + 1) % c.nodes.length]!;
    const failedAddress = String(failedNode.ready.controlAddress);
    const admin = c.client();
    const failedName = (await call(admin, 'ListServers', {})).servers.find((s) => s.controlAddress === failedAddress)!.name;
    const keptCreated = Number((await call(admin, 'ShowVolume', { name: 'kept' })).info!.createdMs);
    admin.close();
    await ok(['server', 'fail', failedName, '--reason', 'psu smoke']);
    await waitFor('the node keeps the server note', async () => {
      const client = storageNodeClient(failedAddress, c.tls.security());
      try {
        return (await call(client, 'GetInfo', {})).note?.adminState === 'failed';
      } finally {
        client.close();
      }
    }, 15_000);

    // The manager's database is lost; the node comes back with gone's chunk, unmarked.
    await c.manager.stop();
    rmSync(join(c.opts.dir, 'manager'), { recursive: true, force: true });
    await c.nodes[holder]!.start();
    const back = await chunksOnNodes(c, 'gone');
    expect(back).toHaveLength(1);
    expect(back[0]!.legality).toBe('LEGAL'); // premise: nothing on the holder says the volume was deleted

    const rebuiltAt = Date.now();
    expect(keptCreated).toBeLessThan(rebuiltAt - 1000); // premise: the rebuild's own time would differ
    c.manager.args.push('--rebuild-from-storage', '--rebuild-servers', String(c.nodes.length), '--rebuild-wait', '20000', '--gc-interval', '2000');
    await c.manager.start(60_000);
    const client = c.client();
    try {
      expect((await call(client, 'ListVolumes', {})).volumes.map((v) => v.name)).toEqual(['kept']);
      // Its creation time came back from the volume note.
      expect(Number((await call(client, 'ShowVolume', { name: 'kept' })).info!.createdMs)).toBe(keptCreated);
      // The server failed by the admin comes back failed (not active), through its node's heartbeats too.
      await new Promise((r) => setTimeout(r, 1500));
      const failed = (await call(client, 'ListServers', {})).servers.find((s) => s.name === failedName)!;
      expect(failed.state).toBe('failed');
      // vsky server add takes it back, and its node forgets the admin's word.
      await ok(['server', 'add', failedAddress]);
      await waitFor('the server note cleared', async () => {
        const n = storageNodeClient(failedAddress, c.tls.security());
        try {
          return (await call(n, 'GetInfo', {})).note === null;
        } finally {
          n.close();
        }
      }, 15_000);
      await waitFor('gone\'s chunk freed', async () => (await chunksOnNodes(c, 'gone')).length === 0, 60_000);
      // Every chunk of gone freed: GC drops the tombstones on every node.
      await waitFor('the tombstones dropped', async () => (await tombstones(c)).every((t) => !t.includes(goneId)), 60_000);
    } finally {
      client.close();
    }
    // kept keeps its bytes.
    let uri = '';
    await waitFor('kept attachable', async () => {
      uri = await c.ensureVolume('kept', SIZE, 3);
      return true;
    }, 30_000);
    const check = await run('qemu-io', ['-f', 'raw', '-c', `read -P 0x6b 0 ${SIZE}`, uri]);
    expect(String(check.stdout)).not.toMatch(/verification failed|error/i);
    expect((await chunksOnNodes(c, 'kept'))).toHaveLength(3);

    // A delete no storage node can record is refused, changing nothing (a rebuild would undo it).
    await ok(['volume', 'detach', 'kept']);
    await Promise.all(c.nodes.map((n) => n.stop()));
    const refused = await vsky(['volume', 'delete', 'kept'], m);
    expect(refused.exitCode).not.toBe(0);
    expect(String(refused.stderr)).toMatch(/no storage node recorded the delete/);
    await Promise.all(c.nodes.map((n) => n.start()));
    const after = c.client();
    try {
      expect((await call(after, 'ListVolumes', {})).volumes.map((v) => v.name)).toEqual(['kept']);
    } finally {
      after.close();
    }
    expect((await chunksOnNodes(c, 'kept')).every((x) => x.legality === 'LEGAL')).toBe(true);
  });
});
