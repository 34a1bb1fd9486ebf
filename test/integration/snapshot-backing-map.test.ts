import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { MiB } from '../../shared/constants.js';
import { call, storageNodeClient } from '../../shared/grpc.js';
import { destroyTestCluster, startTestCluster } from '../harness/cluster.js';
import { NbdClient } from '../harness/nbd-client.js';
import { vsky, vskyJson } from '../harness/vsky.js';

// A clone's head follows its snapshot's replicas (docs/snapshots.md,
// "Failures"): the clone is attached and reading through to the snapshot;
// kill -9 of a node holding a snapshot replica makes the manager resync it
// onto another server, and the clone's head gets the new backing replica set
// pushed (no re-attach). Then the node of the other original replica of a
// segment is killed too: that segment's only replica is one the head did
// not know at attach, and every read of the backing still succeeds.

const SEG = 16 * MiB; // the test cluster's chunk size
const SEGMENTS = 4;
const SPAN = 2 * MiB;

interface Replica { serverId: string; diskId: string; chunkIndex: number; state: string }
interface Show { map: { segments: { index: number; replicas: Replica[] }[] } }
interface Server { serverId: string; name: string; controlAddress: string }

const pattern = (s: number): number => 0x50 + s;
const key = (r: Replica): string => `${r.diskId}#${r.chunkIndex}`;
const sleep = (ms: number) => new Promise((res) => setTimeout(res, ms));

describe('a clone\'s head takes its snapshot\'s new replicas', () => {
  let c: LocalCluster;
  const m = () => c.managerAddress;

  beforeAll(async () => {
    c = await startTestCluster();
  }, 120_000);
  afterAll(async () => {
    await destroyTestCluster(c);
  });

  async function snapMap(): Promise<Show['map']['segments']> {
    return (await vskyJson<Show>(['volume', 'show', 'base-s', '--json'], m())).map.segments;
  }

  async function nodeOf(serverId: string, servers: Server[]) {
    const s = servers.find((x) => x.serverId === serverId)!;
    const node = c.nodes.find((n) => String(n.ready.controlAddress) === s.controlAddress)!;
    expect(node).toBeDefined();
    return { node, server: s };
  }

  it('resync of a snapshot replica reaches the attached clone; reads survive losing both original replicas', async () => {
    expect((await vsky(['volume', 'create', 'base', '--size', `${(SEGMENTS * SEG) / MiB}M`, '--replicas', '2', '--thick'], m())).exitCode).toBe(0);
    let uri = String((await vsky(['volume', 'attach', 'base'], m())).stdout).trim().split('\n')[0]!;
    const w = await NbdClient.connect(uri);
    for (let s = 0; s < SEGMENTS; s++) for (let off = 0; off < SPAN; off += MiB) await w.write(s * SEG + off, Buffer.alloc(MiB, pattern(s)));
    w.close();
    expect((await vsky(['volume', 'detach', 'base'], m())).exitCode).toBe(0);
    expect((await vsky(['snapshot', 'create', 'base', 'base-s'], m())).exitCode).toBe(0);
    expect((await vsky(['volume', 'clone', 'base-s', 'cl'], m())).exitCode).toBe(0);
    uri = String((await vsky(['volume', 'attach', 'cl'], m())).stdout).trim().split('\n')[0]!;

    const servers = await vskyJson<Server[]>(['server', 'list', '--json'], m());
    const original = await snapMap();
    expect(original.every((seg) => seg.replicas.length === 2)).toBe(true);
    // First victim: a server holding a replica of segment 0; second: segment 0's other original replica.
    const firstId = original[0]!.replicas[0]!.serverId;
    const secondId = original[0]!.replicas[1]!.serverId;
    const first = await nodeOf(firstId, servers);
    const nc = storageNodeClient(first.server.controlAddress, c.tls.security());
    const held = (await call(nc, 'ListChunks', { diskId: '' })).chunks.filter((x) => x.identity?.volumeName === 'base-s');
    nc.close();
    expect(held.length).toBeGreaterThan(0); // premise: the victim really holds the snapshot's chunks

    const r = await NbdClient.connect(uri);
    const errors: string[] = [];
    let reads = 0;
    let stop = false;
    const reader = (async () => {
      for (let i = 0; !stop; i++) {
        const s = i % SEGMENTS;
        const off = s * SEG + ((i * 7919 * 4096) % SPAN);
        const got = await r.read(off, 4096).catch((err: unknown) => { errors.push(`read ${off}: ${String(err)}`); return undefined; });
        if (got !== undefined && !got.every((b) => b === pattern(s))) errors.push(`read ${off}: expected ${pattern(s)}, got ${got[0]}`);
        reads++;
        await sleep(2);
      }
    })();

    await first.node.kill9();
    // The manager marks the replicas stale, places spares, resyncs them from the survivors (the snapshot is detached).
    const deadline = Date.now() + 60_000;
    let moved = original;
    for (;;) {
      moved = await snapMap();
      if (moved.every((seg) => seg.replicas.length === 2 && seg.replicas.every((x) => x.state === 'in_sync' && x.serverId !== firstId))) break;
      if (Date.now() > deadline) throw new Error(`snapshot not resynced: ${JSON.stringify(moved.map((s) => s.replicas))}`);
      await sleep(500);
    }
    // Premise: segment 0's new replica is one the clone's head did not get at attach.
    const before = new Set(original[0]!.replicas.map(key));
    const fresh = moved[0]!.replicas.filter((x) => !before.has(key(x)));
    expect(fresh).toHaveLength(1);
    // The head took the pushed backing map (it names the new chunk), without a re-attach.
    const headLog = c.head.logPath;
    const inSync = new RegExp(`-> [^"]*${key(fresh[0]!)}@[0-9.:]+:in_sync`);
    const pushed = (): boolean => readFileSync(headLog, 'utf8').split('\n')
      .some((l) => l.includes('backing chain replicas updated') && l.includes('"volume":"cl"') && inSync.test(l));
    for (const until = Date.now() + 10_000; !pushed(); await sleep(200)) {
      if (Date.now() > until) throw new Error('the clone\'s head never logged the new backing replica set');
    }

    // Now segment 0's other original replica goes too: only the resynced one is left.
    const second = await nodeOf(secondId, servers);
    await second.node.kill9();
    const readsBefore = reads;
    await sleep(1500);
    stop = true;
    await reader;
    expect(errors).toEqual([]);
    expect(reads).toBeGreaterThan(readsBefore + 20);
    // Every backing region, each segment, after both kills (no re-attach happened: same NBD connection).
    for (let s = 0; s < SEGMENTS; s++) {
      for (let off = 0; off < SPAN; off += 256 * 1024) {
        const got = await r.read(s * SEG + off, 256 * 1024);
        expect(got.every((b) => b === pattern(s)), `segment ${s} offset ${off}`).toBe(true);
      }
    }
    // Premise: the old nodes are really gone (their control ports refuse).
    for (const v of [first, second]) {
      const dead = storageNodeClient(v.server.controlAddress, c.tls.security());
      await expect(call(dead, 'ListChunks', { diskId: '' }, 2000)).rejects.toThrow();
      dead.close();
    }
    r.close();
  }, 150_000);
});
