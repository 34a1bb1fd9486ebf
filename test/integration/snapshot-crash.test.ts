import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { GiB, MiB } from '../../shared/constants.js';
import { call, storageNodeClient } from '../../shared/grpc.js';
import { chunksOnNodes, destroyTestCluster, startTestCluster } from '../harness/cluster.js';
import { NbdClient } from '../harness/nbd-client.js';
import { vsky, vskyJson } from '../harness/vsky.js';

// Kill -9 during a snapshot (issue 13): the manager killed after the
// snapshot's commit but before any chunk took the snapshot's identity, and a
// storage node killed -9 just before a snapshot of a volume it holds a chunk
// of while the manager is frozen between the commit and the reassignments. Either way the snapshot ends with every chunk carrying its identity and
// read-only mark, the origin keeps every acknowledged write and goes on, and
// redundancy comes back.

const SEG = 64 * MiB;
const SPAN = 4 * MiB;

interface Row { name: string; degraded: boolean; resyncs: number }

const pattern = (volume: number, s: number): number => 0x40 + volume * 0x10 + s;

describe('kill -9 during a snapshot', () => {
  let c: LocalCluster;
  const m = () => c.managerAddress;

  beforeAll(async () => {
    c = await startTestCluster({ diskSize: 1 * GiB, chunkSize: SEG });
  }, 120_000);
  afterAll(async () => {
    await destroyTestCluster(c);
  });

  async function attach(name: string): Promise<NbdClient> {
    let r = await vsky(['volume', 'attach', name], m());
    // Right after a manager restart the head may not have registered again yet.
    for (let i = 0; i < 30 && r.exitCode !== 0; i++) {
      await new Promise((res) => setTimeout(res, 1000));
      r = await vsky(['volume', 'attach', name], m());
    }
    expect(r.exitCode, String(r.stderr)).toBe(0);
    return NbdClient.connect(String(r.stdout).trim().split('\n')[0]!);
  }

  /** Runs the CLI and expects it to succeed; a failure shows the command, its stderr and stdout. */
  async function ok(args: string[]): Promise<string> {
    const r = await vsky(args, m());
    expect(r.exitCode, `vsky ${args.join(' ')} exited ${r.exitCode}: ${String(r.stderr)}${String(r.stdout)}`).toBe(0);
    return String(r.stdout);
  }

  async function detach(name: string): Promise<void> {
    await ok(['volume', 'detach', name]);
  }

  /** A 2-segment volume with a pattern in the first SPAN of each segment, detached. */
  async function written(name: string, v: number): Promise<void> {
    await ok(['volume', 'create', name, '--size', String(2 * SEG), '--replicas', '2']);
    const w = await attach(name);
    for (const s of [0, 1]) await w.write(s * SEG, Buffer.alloc(SPAN, pattern(v, s)));
    w.close();
    await detach(name);
  }

  async function expectReads(w: NbdClient, want: (s: number, off: number) => number): Promise<void> {
    for (const s of [0, 1]) {
      for (let off = 0; off < SPAN; off += 256 * 1024) {
        const got = await w.read(s * SEG + off, 4096);
        expect(got.every((b) => b === want(s, off)), `segment ${s} offset ${off}: got ${got[0]}`).toBe(true);
      }
    }
  }

  async function waitFor(what: string, ok: () => Promise<boolean>, ms = 60_000): Promise<void> {
    const deadline = Date.now() + ms;
    while (!(await ok())) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((res) => setTimeout(res, 500));
    }
  }

  /** The snapshot's chunks, all on their nodes with its identity and the read-only mark; the origin reads on and writes. */
  async function checkAfter(origin: string, snap: string, v: number): Promise<void> {
    await waitFor(`${snap}'s 4 chunks to carry its identity, read-only`, async () => {
      const chunks = await chunksOnNodes(c, snap);
      return chunks.length === 4 && chunks.every((x) => x.readOnly);
    });
    await waitFor(`${snap} to be whole again`, async () => {
      const row = (await vskyJson<Row[]>(['volume', 'list', '--json'], m())).find((x) => x.name === snap);
      return row !== undefined && !row.degraded && row.resyncs === 0;
    }, 90_000);
    const w = await attach(origin);
    try {
      await expectReads(w, (s) => pattern(v, s));
      await w.write(SEG + 8192, Buffer.alloc(4096, 0xee));
      expect((await w.read(SEG + 8192, 4096)).every((b) => b === 0xee)).toBe(true);
    } finally {
      w.close();
    }
    await detach(origin);
    await ok(['volume', 'clone', snap, `${snap}-c`]);
    const r = await attach(`${snap}-c`);
    try {
      await expectReads(r, (s) => pattern(v, s)); // the origin's later write is not in the snapshot
    } finally {
      r.close();
    }
    await detach(`${snap}-c`);
  }

  it('the manager killed after the commit, before any chunk took the identity: the restart finishes it', async () => {
    await written('mv', 1);
    await c.manager.stop();
    c.manager.env = { VSKY_CRASH_AT: 'manager.snapshot.committed' };
    await c.manager.start();
    const r = await vsky(['snapshot', 'create', 'mv', 'mv-s'], m());
    await c.manager.waitExit();
    expect(r.exitCode).not.toBe(0);
    // Premise: the crash came before any reassignment: the nodes still say mv, nothing says mv-s.
    expect(await chunksOnNodes(c, 'mv-s')).toEqual([]);
    expect((await chunksOnNodes(c, 'mv')).length).toBe(4);
    c.manager.env = {};
    await c.manager.start();
    const snap = (await vskyJson<{ name: string; kind: string; origin: string }[]>(['volume', 'list', '--json'], m())).find((x) => x.name === 'mv-s');
    expect(snap).toMatchObject({ kind: 'snapshot', origin: 'mv' });
    await checkAfter('mv', 'mv-s', 1);
  }, 240_000);

  // It once failed 2 of 6 runs after the victim's restart. The clone refused while the snapshot's
  // retried reassignment still waited on the node was reproduced (the clone now finishes it first).
  // The ENOSPC first write was not reproduced; the likely cause, fixed: the restarted node still
  // holds a stale chunk of the origin, so an allocation placing that slot there is refused, and the
  // manager used to answer EIO only after the nodes scrubbed the released chunks, so the head's
  // 10 s ran out (now the segment is placed without that node, and ENOSPC means a full pool only).
  it('a storage node holding a chunk killed -9 in the middle of the snapshot: it is taken, and finished when the node is back', async () => {
    await written('nv', 2);
    // The node holding segment 0's first replica.
    const show = await vskyJson<{ map: { segments: { replicas: { serverId: string }[] }[] } }>(['volume', 'show', 'nv', '--json'], m());
    const servers = await vskyJson<{ serverId: string; controlAddress: string }[]>(['server', 'list', '--json'], m());
    const victimId = show.map.segments[0]!.replicas[0]!.serverId;
    const address = servers.find((s) => s.serverId === victimId)!.controlAddress;
    const victim = c.nodes.find((n) => String(n.ready.controlAddress) === address)!;
    expect(victim).toBeDefined();
    // The manager freezes itself right after the snapshot's commit, before any ReassignChunk.
    await c.manager.stop();
    c.manager.env = { VSKY_PAUSE_AT: 'manager.snapshot.committed' };
    await c.manager.start();
    const created = vsky(['snapshot', 'create', 'nv', 'nv-s'], m());
    const stat = (): string => readFileSync(`/proc/${c.manager.pid}/stat`, 'utf8').split(' ')[2]!;
    await waitFor('the manager to stop at manager.snapshot.committed', async () => stat() === 'T', 30_000);
    await victim.kill9();
    c.manager.resume();
    const r = await created;
    expect(r.exitCode, String(r.stderr)).toBe(0);
    // Premise: the victim is really down, and the snapshot's reassignment really missed it (the manager retries).
    const nc = storageNodeClient(address, c.tls.security());
    await expect(call(nc, 'ListChunks', { diskId: '' })).rejects.toThrow();
    nc.close();
    expect(readFileSync(c.manager.logPath, 'utf8')).toMatch(/some chunks could not take the snapshot's identity yet; retrying/);
    c.manager.env = {};
    await victim.start();
    await waitFor('every server active again', async () => {
      const servers = await vskyJson<{ state: string }[]>(['server', 'list', '--json'], m());
      return servers.length === c.nodes.length && servers.every((x) => x.state === 'active');
    });
    await checkAfter('nv', 'nv-s', 2);
  }, 240_000);
});
