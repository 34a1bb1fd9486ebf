import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { ChunkTarget } from '../../shared/data-protocol/client/chunk-target.js';
import { NodeConnection } from '../../shared/data-protocol/client/node-connection.js';
import { Opcode } from '../../shared/data-protocol/frame.js';
import { ReadOnlyChunkError } from '../../shared/data-protocol/status.js';
import { GiB, MiB } from '../../shared/constants.js';
import { call, storageNodeClient } from '../../shared/grpc.js';
import { destroyTestCluster, startTestCluster } from '../harness/cluster.js';
import { clusterDataSecurity } from '../harness/data-auth.js';
import { NbdClient } from '../harness/nbd-client.js';
import { vsky, vskyJson } from '../harness/vsky.js';

// Storage enforces "a snapshot's chunks are never written again"
// (docs/snapshots.md): the chunks carry a read-only mark in their record, and
// a storage node refuses WRITE, WRITE_ZEROES, DISCARD and MARK_DIRTY to them
// with READ_ONLY at any epoch, changing nothing, while reads go on. Our own
// data-protocol client speaks to the nodes directly (no head in between).
// Then kill -9 a node holding a replica while the snapshot is attached
// read-only: the resync (peer to peer) brings the redundancy back, and the
// new replica is read-only too; so is a drain's target (disk remove).

const SEG = 64 * MiB;
const SPAN = 4 * MiB;

interface Replica { serverId: string; dataAddress: string; slot: number; state: string; diskId: string }
interface Show { map: { volumeId: number; segments: { index: number; replicas: Replica[] }[] } }
interface Server { serverId: string; name: string; controlAddress: string }

function pattern(segment: number): number {
  return 0x51 + segment;
}

describe('storage nodes refuse writes to a snapshot\'s chunks', () => {
  let c: LocalCluster;
  const m = () => c.managerAddress;
  const conns = new Map<string, NodeConnection>();
  const conn = (address: string): NodeConnection => {
    let x = conns.get(address);
    if (!x) conns.set(address, (x = new NodeConnection(address, { security: clusterDataSecurity(c) })));
    return x;
  };
  const chunksOn = async (controlAddress: string, volume: string) => {
    const nc = storageNodeClient(controlAddress, c.tls.security());
    try {
      return (await call(nc, 'ListChunks', { diskId: '' })).chunks.filter((x) => x.identity?.volumeName === volume);
    } finally {
      nc.close();
    }
  };

  beforeAll(async () => {
    c = await startTestCluster({ diskSize: GiB, chunkSize: SEG });
  }, 120_000);
  afterAll(async () => {
    await Promise.all([...conns.values()].map((x) => x.close()));
    await destroyTestCluster(c);
  });

  /** Tries every mutating request on one chunk at `epoch`: each refused with READ_ONLY. */
  async function expectRefused(t: ChunkTarget, epoch: number): Promise<void> {
    const attempts: [string, () => Promise<void>][] = [
      ['WRITE', () => t.conn.request(t, Opcode.WRITE, 0, epoch, 0, 4096, Buffer.alloc(4096, 0xee))],
      ['WRITE_ZEROES', () => t.conn.request(t, Opcode.WRITE_ZEROES, 0, epoch, 0, MiB, undefined)],
      ['DISCARD', () => t.conn.request(t, Opcode.DISCARD, 0, epoch, MiB, MiB, undefined)],
      ['MARK_DIRTY', () => t.conn.request(t, Opcode.MARK_DIRTY, 0, epoch, 0, 65536, undefined)],
      ['CLEAR_DIRTY', () => t.conn.request(t, Opcode.CLEAR_DIRTY, 0, epoch, 0, 65536, undefined)],
    ];
    for (const [name, attempt] of attempts) {
      const err = await attempt().then(() => undefined, (e: unknown) => e);
      expect(err, `${name} at epoch ${epoch} on ${t.address}`).toBeInstanceOf(ReadOnlyChunkError);
      expect(String((err as Error).message)).toMatch(/READ_ONLY/);
    }
  }

  /** Reads the first SPAN bytes of a chunk and checks the pattern (the premise: the address is right). */
  async function expectPattern(t: ChunkTarget, segment: number): Promise<void> {
    const got = Buffer.alloc(SPAN);
    await t.read(0, got);
    expect(got.every((b) => b === pattern(segment)), `chunk ${t.volumeId}/${segment}/${t.slot} on ${t.address}`).toBe(true);
  }

  it('refuses WRITE / WRITE_ZEROES / DISCARD / MARK at its epoch and above; a killed replica comes back read-only, a drain target too', async () => {
    expect((await vsky(['volume', 'create', 'ro', '--size', '128M', '--replicas', '2'], m())).exitCode).toBe(0);
    let uri = String((await vsky(['volume', 'attach', 'ro'], m())).stdout).trim().split('\n')[0]!;
    const w = await NbdClient.connect(uri);
    for (const s of [0, 1]) for (let off = 0; off < SPAN; off += MiB) await w.write(s * SEG + off, Buffer.alloc(MiB, pattern(s)));
    w.close();
    expect((await vsky(['volume', 'detach', 'ro'], m())).exitCode).toBe(0);
    expect((await vsky(['snapshot', 'create', 'ro', 'ro-s'], m())).exitCode).toBe(0);

    const show = await vskyJson<Show>(['volume', 'show', 'ro-s', '--json'], m());
    const servers = await vskyJson<Server[]>(['server', 'list', '--json'], m());
    const control = (serverId: string) => servers.find((s) => s.serverId === serverId)!.controlAddress;
    const seg0 = show.map.segments.find((s) => s.index === 0)!;
    expect(seg0.replicas.length).toBe(2);

    // Every replica: marked read-only in its listing, readable, and refuses every mutation.
    for (const seg of show.map.segments) {
      for (const r of seg.replicas) {
        const listed = (await chunksOn(control(r.serverId), 'ro-s')).find((x) => x.identity!.segment === seg.index && x.identity!.slot === r.slot)!;
        expect(listed, `ro-s seg ${seg.index} slot ${r.slot} listed on ${r.serverId}`).toBeDefined();
        expect(listed.identity!.readOnly).toBe(true);
        const epoch = Number(listed.identity!.epoch);
        const t = new ChunkTarget(conn(r.dataAddress), show.map.volumeId, seg.index, r.slot);
        await expectPattern(t, seg.index);
        await expectRefused(t, epoch);
        await expectRefused(t, epoch + 7);
        await expectPattern(t, seg.index); // nothing changed
        const after = (await chunksOn(control(r.serverId), 'ro-s')).find((x) => x.identity!.segment === seg.index && x.identity!.slot === r.slot)!;
        expect(Number(after.identity!.epoch)).toBe(epoch); // the higher epoch was not taken either
      }
    }

    // A storage job that would write it is refused by the manager up front (it would only leave it DIRTY).
    const wipe = await vsky(['volume', 'wipe', 'ro-s'], m());
    expect(wipe.exitCode).not.toBe(0);
    expect(String(wipe.stderr)).toMatch(/ro-s is a snapshot \(read-only\)/);

    // Attached read-only, then kill -9 a node holding a replica of segment 0.
    uri = String((await vsky(['volume', 'attach', 'ro-s'], m())).stdout).trim().split('\n')[0]!;
    const victimId = seg0.replicas[0]!.serverId;
    const node = c.nodes.find((n) => String(n.ready.controlAddress) === control(victimId))!;
    expect(node).toBeDefined();
    await node.kill9();
    const deadline = Date.now() + 45_000;
    let healed: Show;
    for (;;) {
      healed = await vskyJson<Show>(['volume', 'show', 'ro-s', '--json'], m());
      const ok = healed.map.segments.every((seg) => seg.replicas.length === 2
        && seg.replicas.every((x) => x.state === 'in_sync' && x.serverId !== victimId));
      if (ok) break;
      if (Date.now() > deadline) throw new Error(`snapshot not resynced: ${JSON.stringify(healed.map.segments.map((s) => s.replicas))}`);
      await new Promise((res) => setTimeout(res, 500));
    }
    // The new replicas (on servers that did not hold that segment before): read-only, with the data.
    const before = new Map(show.map.segments.map((s) => [s.index, new Set(s.replicas.map((r) => r.serverId))]));
    let fresh = 0;
    for (const seg of healed.map.segments) {
      for (const r of seg.replicas.filter((x) => !before.get(seg.index)!.has(x.serverId))) {
        fresh++;
        const listed = (await chunksOn(control(r.serverId), 'ro-s')).find((x) => x.identity!.segment === seg.index && x.identity!.slot === r.slot)!;
        expect(listed.identity!.readOnly, `new replica of seg ${seg.index} on ${r.serverId}`).toBe(true);
        const t = new ChunkTarget(conn(r.dataAddress), show.map.volumeId, seg.index, r.slot);
        await expectPattern(t, seg.index);
        await expectRefused(t, Number(listed.identity!.epoch));
      }
    }
    expect(fresh).toBeGreaterThan(0); // the premise: a replica was rebuilt

    // A drain (disk remove) of a disk holding a replica: its target is read-only too.
    const drained = healed!.map.segments.find((s) => s.index === 1)!.replicas[0]!;
    const rm = await vsky(['disk', 'remove', drained.diskId], m(), 60_000);
    expect(rm.exitCode, String(rm.stderr)).toBe(0);
    const moved = await vskyJson<Show>(['volume', 'show', 'ro-s', '--json'], m());
    const seg1 = moved.map.segments.find((s) => s.index === 1)!;
    expect(seg1.replicas.length).toBe(2);
    expect(seg1.replicas.some((x) => x.diskId === drained.diskId)).toBe(false); // the premise: it moved
    for (const r of seg1.replicas) {
      const listed = (await chunksOn(control(r.serverId), 'ro-s')).find((x) => x.identity!.segment === 1 && x.identity!.slot === r.slot)!;
      expect(listed.identity!.readOnly, `seg 1 replica on ${r.diskId}`).toBe(true);
      const t = new ChunkTarget(conn(r.dataAddress), show.map.volumeId, 1, r.slot);
      await expectPattern(t, 1);
      await expectRefused(t, Number(listed.identity!.epoch));
    }
    // The read-only attach kept its lease and reads through.
    const r = await NbdClient.connect(uri);
    try {
      for (const s of [0, 1]) expect((await r.read(s * SEG, 65536)).every((b) => b === pattern(s))).toBe(true);
    } finally {
      r.close();
    }
    const volumes = await vskyJson<{ name: string; attachedHead?: string }[]>(['volume', 'list', '--json'], m());
    expect(volumes.find((v) => v.name === 'ro-s')?.attachedHead).toBeTruthy(); // still attached: the copy fenced no one
  }, 90_000);
});
