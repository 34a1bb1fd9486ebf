import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { GiB, MiB } from '../../shared/constants.js';
import { call, storageNodeClient } from '../../shared/grpc.js';
import { testBit } from '../../shared/region-bitmap.js';
import { destroyTestCluster, startTestCluster } from '../harness/cluster.js';
import { NbdClient } from '../harness/nbd-client.js';
import { run } from '../harness/tools.js';
import { vsky, vskyJson } from '../harness/vsky.js';

// Written regions of 4 KiB (docs/snapshots.md, issue 13): a 4 KiB-aligned
// first write into a fresh clone is written alone (no copy-up of a 64 KiB
// region): on every replica exactly its 4 KiB bit is set; the untouched
// neighbours still read the template's bytes, through qemu-io and our NBD
// client, and so after kill -9 of a node holding a replica of the clone
// (resynced onto the third server while attached) and a fresh attach.

const SEG = 64 * MiB;
const SPAN = MiB;

interface Replica { slot: number; serverId: string; state: string; controlAddress: string }
interface Show { map: { volumeId: number; segments: { index: number; replicas: Replica[] }[] } }

describe('clones with 4 KiB written regions', () => {
  let c: LocalCluster;
  const m = () => c.managerAddress;
  const ok = async (args: string[]) => {
    const r = await vsky(args, m(), 60_000);
    expect(r.exitCode, `${args.join(' ')}: ${String(r.stderr)}`).toBe(0);
    return String(r.stdout);
  };

  beforeAll(async () => {
    c = await startTestCluster({ diskSize: 1 * GiB, chunkSize: SEG, storageNodeArgs: ['--region-size', '4K'] });
  }, 120_000);
  afterAll(async () => {
    await destroyTestCluster(c);
  });

  /** The clone's segment 0 written bits on each of its replicas (GetChunkRegions). */
  async function bitsOf(name: string): Promise<{ serverId: string; regionSize: number; written: Uint8Array }[]> {
    const show = await vskyJson<Show>(['volume', 'show', name, '--json'], m());
    const out = [];
    for (const r of show.map.segments[0]!.replicas) {
      const nc = storageNodeClient(r.controlAddress, c.tls.security());
      try {
        const got = await call(nc, 'GetChunkRegions', { volumeId: show.map.volumeId, segment: 0, slot: r.slot });
        out.push({ serverId: r.serverId, regionSize: Number(got.regionSize), written: got.written });
      } finally {
        nc.close();
      }
    }
    return out;
  }
  const setBits = (w: Uint8Array, upTo: number) => Array.from({ length: upTo }, (_, i) => i).filter((i) => testBit(w, i));

  it('a 4 KiB first write sets one bit, copies nothing up, keeps the neighbours; the same after a resync of a clone replica', async () => {
    const template = randomBytes(SPAN);
    await ok(['volume', 'create', 'tpl', '--size', '128M', '--replicas', '2']);
    const w = await NbdClient.connect((await ok(['volume', 'attach', 'tpl'])).trim().split('\n')[0]!);
    await w.write(0, template);
    w.close();
    await ok(['volume', 'detach', 'tpl']);
    await ok(['snapshot', 'create', 'tpl', 'tpl-s']);
    await ok(['volume', 'clone', 'tpl-s', 'cl']);
    const uri = (await ok(['volume', 'attach', 'cl'])).trim().split('\n')[0]!;

    // qemu-io: two aligned 4 KiB writes in different 64 KiB spans, and a 512-byte write (a 4 KiB copy-up).
    const expected = Buffer.from(template);
    const writes: [number, number, number][] = [[8192, 4096, 0x5a], [65536 + 5 * 4096, 4096, 0x6b], [40 * 4096 + 512, 512, 0x7c]];
    for (const [off, len, p] of writes) {
      const r = await run('qemu-io', ['-f', 'raw', '-c', `write -P ${p} ${off} ${len}`, uri], 60_000);
      expect(r.exitCode, String(r.stderr)).toBe(0);
      expected.fill(p, off, off + len);
    }
    const r = await run('qemu-io', ['-f', 'raw', '-c', `read -P 0x5a 8192 4096`, '-c', `read -P 0x6b ${65536 + 5 * 4096} 4096`, uri], 60_000);
    expect(String(r.stdout)).not.toMatch(/Pattern verification failed/);
    expect(r.exitCode).toBe(0);

    const check = async (u: string) => {
      const n = await NbdClient.connect(u);
      try {
        const got = await n.read(0, SPAN);
        for (let off = 0; off < SPAN; off += 4096) {
          expect(got.subarray(off, off + 4096).equals(expected.subarray(off, off + 4096)), `block at ${off}`).toBe(true);
        }
      } finally {
        n.close();
      }
    };
    await check(uri);

    // The nodes' bits: exactly blocks 2, 21 and 40 (a 64 KiB copy-up would have set 0..15 and 16..31).
    const before = await bitsOf('cl');
    expect(before).toHaveLength(2);
    for (const b of before) {
      expect(b.regionSize).toBe(4096);
      expect(setBits(b.written, SEG / 4096)).toEqual([2, 21, 40]);
    }

    // kill -9 a node holding a replica of the clone's segment 0: resynced onto the third server.
    const victimId = before[0]!.serverId;
    const servers = await vskyJson<{ serverId: string; controlAddress: string }[]>(['server', 'list', '--json'], m());
    const victim = servers.find((s) => s.serverId === victimId)!;
    const node = c.nodes.find((x) => String(x.ready.controlAddress) === victim.controlAddress)!;
    expect(node).toBeDefined();
    await node.kill9();
    const deadline = Date.now() + 120_000;
    for (;;) {
      const show = await vskyJson<Show>(['volume', 'show', 'cl', '--json'], m());
      const reps = show.map.segments[0]!.replicas;
      if (reps.length === 2 && reps.every((x) => x.state === 'in_sync' && x.serverId !== victimId)) break;
      if (Date.now() > deadline) throw new Error(`clone not resynced: ${JSON.stringify(reps)}`);
      await new Promise((res) => setTimeout(res, 1000));
    }
    const after = await bitsOf('cl');
    expect(after.map((b) => b.serverId)).not.toContain(victimId); // the premise: a new replica
    for (const b of after) expect(setBits(b.written, SEG / 4096)).toEqual([2, 21, 40]);
    await check(uri);
    await ok(['volume', 'detach', 'cl']);
    const again = (await ok(['volume', 'attach', 'cl'])).trim().split('\n')[0]!;
    await check(again);
  }, 300_000);
});
