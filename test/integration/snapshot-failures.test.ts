import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { GiB, MiB } from '../../shared/constants.js';
import { call, storageNodeClient } from '../../shared/grpc.js';
import { destroyTestCluster, startTestCluster } from '../harness/cluster.js';
import { NbdClient } from '../harness/nbd-client.js';
import { vsky, vskyJson } from '../harness/vsky.js';

// Snapshots in the failure machinery (docs/snapshots.md): kill -9 a storage
// node holding the template snapshot's chunks while a clone reads through to
// it and writes: no read fails (another replica answers), no acknowledged
// write is lost; the snapshot (never attached) is resynced onto the
// remaining servers like any volume, and a fresh attach of the clone reads
// through the rebuilt replicas.

const SEG = 256 * MiB;
const SPAN = 16 * MiB;

interface Row { name: string; degraded: boolean; resyncs: number }
interface Show { map: { segments: { index: number; replicas: { serverId: string; state: string }[] }[] } }

function pattern(segment: number): number {
  return 0xa0 + segment;
}

describe('snapshots when a storage node dies', () => {
  let c: LocalCluster;
  const m = () => c.managerAddress;

  beforeAll(async () => {
    c = await startTestCluster({ diskSize: 2 * GiB, chunkSize: SEG });
  }, 120_000);
  afterAll(async () => {
    await destroyTestCluster(c);
  });

  it('kill -9 a node under a clone reading through its snapshot: no read or acknowledged write lost; the snapshot resyncs', async () => {
    expect((await vsky(['volume', 'create', 'base', '--size', '512M', '--replicas', '2'], m())).exitCode).toBe(0);
    let uri = String((await vsky(['volume', 'attach', 'base'], m())).stdout).trim().split('\n')[0]!;
    let w = await NbdClient.connect(uri);
    for (const s of [0, 1]) for (let off = 0; off < SPAN; off += MiB) await w.write(s * SEG + off, Buffer.alloc(MiB, pattern(s)));
    w.close();
    expect((await vsky(['volume', 'detach', 'base'], m())).exitCode).toBe(0);
    expect((await vsky(['snapshot', 'create', 'base', 'base-s'], m())).exitCode).toBe(0);
    expect((await vsky(['volume', 'clone', 'base-s', 'cl'], m())).exitCode).toBe(0);
    uri = String((await vsky(['volume', 'attach', 'cl'], m())).stdout).trim().split('\n')[0]!;

    // The node holding most of the snapshot's chunks.
    const show = await vskyJson<Show>(['volume', 'show', 'base-s', '--json'], m());
    const servers = await vskyJson<{ serverId: string; name: string; controlAddress: string }[]>(['server', 'list', '--json'], m());
    const count = new Map<string, number>();
    for (const seg of show.map.segments) for (const r of seg.replicas) count.set(r.serverId, (count.get(r.serverId) ?? 0) + 1);
    const victimId = [...count.entries()].sort((a, b) => b[1] - a[1])[0]![0];
    const victim = servers.find((s) => s.serverId === victimId)!;
    const node = c.nodes.find((n) => String(n.ready.controlAddress) === victim.controlAddress)!;
    expect(node).toBeDefined();
    const nc = storageNodeClient(victim.controlAddress, c.tls.security());
    const held = (await call(nc, 'ListChunks', { diskId: '' })).chunks.filter((x) => x.identity?.volumeName === 'base-s');
    nc.close();
    expect(held.length).toBeGreaterThan(0); // the premise: the victim holds the snapshot's chunks

    const r = await NbdClient.connect(uri);
    const written = new Map<number, number>();
    // Every write in the order it was sent: a read may return a write sent before it completed (NBD
    // orders nothing between requests in flight), never anything older than the last one acknowledged
    // before it was sent.
    const sent: { off: number; v: number }[] = [];
    let reads = 0;
    let stop = false;
    const errors: string[] = [];
    const reader = (async () => {
      for (let i = 0; !stop; i++) {
        const s = i % 2;
        const off = s * SEG + ((i * 7919 * 4096) % SPAN);
        const acked = written.get(off) ?? pattern(s);
        const from = Math.max(0, sent.length - 1); // the write in flight as the read is sent, if any
        const got = await r.read(off, 4096).catch((err: unknown) => { errors.push(`read ${off}: ${String(err)}`); return undefined; });
        if (got === undefined) continue;
        const allowed = new Set([acked, ...sent.slice(from).filter((x) => x.off === off).map((x) => x.v)]);
        if (!got.every((b) => b === got[0]) || !allowed.has(got[0]!)) {
          errors.push(`read ${off}: expected ${[...allowed].join(' or ')}, got ${got[0]}`);
        }
        reads++;
      }
    })();
    const writer = (async () => {
      for (let i = 0; !stop; i++) {
        const off = (i % 2) * SEG + ((i * 104729 * 4096) % SPAN);
        const v = 1 + (i % 50);
        sent.push({ off, v });
        await r.write(off, Buffer.alloc(4096, v)).then(() => written.set(off, v), (err: unknown) => { errors.push(`write ${off}: ${String(err)}`); });
        await new Promise((res) => setTimeout(res, 5));
      }
    })();
    await new Promise((res) => setTimeout(res, 1500));
    const readsBefore = reads;
    await node.kill9();
    // I/O goes on until the manager took the node as failed (heartbeat timeout, 3 s), and a second past it.
    const failedBy = Date.now() + 30_000;
    for (;;) {
      const row = (await vskyJson<{ serverId: string; state: string }[]>(['server', 'list', '--json'], m())).find((x) => x.serverId === victimId);
      if (row?.state === 'failed') break;
      if (Date.now() > failedBy) throw new Error(`the victim was not taken as failed: ${JSON.stringify(row)}`);
      await new Promise((res) => setTimeout(res, 250));
    }
    await new Promise((res) => setTimeout(res, 1000));
    stop = true;
    await Promise.all([reader, writer]);
    expect(errors).toEqual([]);
    expect(reads).toBeGreaterThan(readsBefore + 50);
    expect(written.size).toBeGreaterThan(20);

    // The snapshot (detached) is rebuilt on the remaining servers.
    const deadline = Date.now() + 120_000;
    let row: Row | undefined;
    for (;;) {
      row = (await vskyJson<Row[]>(['volume', 'list', '--json'], m())).find((v) => v.name === 'base-s');
      const map = await vskyJson<Show>(['volume', 'show', 'base-s', '--json'], m());
      const healthy = map.map.segments.every((seg) => seg.replicas.length === 0
        || (seg.replicas.every((x) => x.state === 'in_sync' && x.serverId !== victimId) && seg.replicas.length === 2));
      if (healthy && row && !row.degraded && row.resyncs === 0) break;
      if (Date.now() > deadline) throw new Error(`snapshot not resynced: ${JSON.stringify(row)} ${JSON.stringify(map.map.segments.map((s) => s.replicas))}`);
      await new Promise((res) => setTimeout(res, 1000));
    }
    // Every acknowledged write and the template's data, through a fresh attach (the rebuilt replicas).
    r.close();
    expect((await vsky(['volume', 'detach', 'cl'], m())).exitCode).toBe(0);
    uri = String((await vsky(['volume', 'attach', 'cl'], m())).stdout).trim().split('\n')[0]!;
    w = await NbdClient.connect(uri);
    try {
      for (const s of [0, 1]) {
        for (let off = 0; off < SPAN; off += 4096) {
          const at = s * SEG + off;
          const got = await w.read(at, 4096);
          const want = written.get(at) ?? pattern(s);
          expect(got.every((b) => b === want), `offset ${at}`).toBe(true);
        }
      }
    } finally {
      w.close();
    }
  }, 300_000);
});
