import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NodePool } from '../../head-agent/engine/node-pool.js';
import { Attachments, type VolumeMap } from '../../head-agent/attachments.js';
import type { LinearVolume } from '../../head-agent/engine/linear-volume.js';
import { testBit } from '../../shared/region-bitmap.js';
import { Replica } from '../../head-agent/engine/replica.js';
import { call, storageNodeClient } from '../../shared/grpc.js';
import { MiB } from '../../shared/constants.js';
import { StaleEpochError } from '../../shared/errors.js';
import { fill } from '../harness/seeded-bytes.js';
import { allocateVolume, startNodeTrio, type NodeTrio } from '../harness/storage-node-trio.js';

// Write-intent and crash reconciliation (docs/design.md rule 4) against three REAL
// storage nodes. Chunks of 4 MiB (region 1 KiB on the nodes); the head marks
// in groups of 64 KiB here. The sweep timer is off: the tests sweep by hand.

const CHUNK = 4 * MiB;
const SEGMENTS = 2;
const SIZE = SEGMENTS * CHUNK;
const GROUP = 64 * 1024;
const REGION = 1024;

let trio: NodeTrio;
const pools: NodePool[] = [];
const registries: Attachments[] = [];

function newRegistry(): Attachments {
  const pool = new NodePool({ dataTimeoutMs: 3000, backoffInitialMs: 20 });
  pools.push(pool);
  const r = new Attachments({ pool, intentGroupBytes: GROUP, intentSweepMs: 3_600_000 });
  registries.push(r);
  return r;
}

/** Both segments on the trio, slot s on node s, all in sync. */
function allocate(volumeId: number, name: string, chunkBase: number): Promise<VolumeMap> {
  return allocateVolume(trio, { volumeId, name, size: SIZE, chunkSize: CHUNK, chunkBase });
}

/** The dirty bitmap of one replica, straight from its node. */
async function dirtyMap(volumeId: number, seg: number, slot: number): Promise<Uint8Array> {
  const client = storageNodeClient(trio.nodes[slot]!.controlAddress);
  try {
    const r = await call(client, 'GetChunkRegions', { volumeId, segment: seg, slot });
    expect(Number(r.regionSize)).toBe(REGION);
    return new Uint8Array(r.dirty);
  } finally {
    client.close();
  }
}

/** The written-region bitmap of one replica, straight from its node. */
async function writtenMap(volumeId: number, seg: number, slot: number): Promise<Uint8Array> {
  const client = storageNodeClient(trio.nodes[slot]!.controlAddress);
  try {
    return new Uint8Array((await call(client, 'GetChunkRegions', { volumeId, segment: seg, slot })).written);
  } finally {
    client.close();
  }
}

/** Regions dirty on that replica, as [first, last] runs. */
async function dirtyRuns(volumeId: number, seg: number, slot: number): Promise<[number, number][]> {
  const map = await dirtyMap(volumeId, seg, slot);
  const runs: [number, number][] = [];
  for (let r = 0; r < CHUNK / REGION; r++) {
    if (!testBit(map, r)) continue;
    const last = runs.at(-1);
    if (last !== undefined && last[1] === r - 1) last[1] = r;
    else runs.push([r, r]);
  }
  return runs;
}

/** Group g of a segment as a region run. */
function groupRun(g: number, count = 1): [number, number] {
  return [(g * GROUP) / REGION, ((g + count) * GROUP) / REGION - 1];
}

function direct(vol: LinearVolume, seg: number, slot: number): Replica {
  const r = vol.segment(seg).replicas.find((x) => x.slot === slot)!;
  return new Replica(r.conn, { volumeId: r.volumeId, volumeName: r.volumeName, segment: seg, slot, state: 'in_sync', serverId: '', diskId: '' });
}

async function readSlot(vol: LinearVolume, seg: number, slot: number, off: number, len: number): Promise<Buffer> {
  const buf = Buffer.alloc(len);
  await direct(vol, seg, slot).read(off, buf);
  return buf;
}

beforeAll(async () => {
  trio = await startNodeTrio('vsky-head-intent-', CHUNK);
});

afterAll(async () => {
  for (const r of registries) r.abandon();
  await Promise.all(pools.map((p) => p.close()));
  await trio.close();
});

describe('write-intent (head side)', () => {
  it('a write is acknowledged only after its group is marked dirty on every replica; one MARK per run of groups and tick; sequential writers mark ahead', async () => {
    const reg = newRegistry();
    const vol = await reg.attach(await allocate(31, 'vol-w', 0), 1);
    for (let slot = 0; slot < 3; slot++) expect(await dirtyRuns(31, 0, slot)).toEqual([]);
    await vol.write(3 * GROUP + 30_000, fill(5000, 1), false);
    for (let slot = 0; slot < 3; slot++) expect(await dirtyRuns(31, 0, slot)).toEqual([groupRun(3)]);
    // Sixteen writes into one clean group, and four contiguous groups, in one tick: one MARK per replica each time.
    const intent = vol.intent!.segments[0]!;
    let marks = intent.marks;
    await Promise.all(Array.from({ length: 16 }, (_, i) => vol.write(10 * GROUP + 8192 + i * 2048, fill(2048, i), false)));
    expect(intent.marks - marks).toBe(3);
    marks = intent.marks;
    await Promise.all([20, 21, 22, 23].map((g) => vol.write(g * GROUP + 8192, fill(4096, g), false)));
    expect(intent.marks - marks).toBe(3);
    // A write entering a group at its start (a sequential stream) marks the next three with it, in the same request.
    marks = intent.marks;
    await vol.write(40 * GROUP, fill(4096, 40), false);
    expect(intent.marks - marks).toBe(3);
    for (let slot = 0; slot < 3; slot++) {
      expect(await dirtyRuns(31, 0, slot)).toEqual([groupRun(3), groupRun(10), groupRun(20, 4), groupRun(40, 4)]);
    }
    marks = intent.marks;
    await vol.write(41 * GROUP, fill(GROUP * 3, 41), false);
    expect(intent.marks).toBe(marks);
    // Writes into marked groups send no MARK at all.
    marks = intent.marks;
    await Promise.all(Array.from({ length: 32 }, (_, i) => vol.write(10 * GROUP + (i % 16) * 4096, fill(4096, i), true)));
    expect(intent.marks).toBe(marks);
    // Segment 1 untouched.
    expect(await dirtyRuns(31, 1, 0)).toEqual([]);
  });

  it('the sweep clears quiet groups after a flush, never one written since it began; a clean detach clears everything', async () => {
    const reg = newRegistry();
    const vol = await reg.attach(await allocate(32, 'vol-x', 2), 1);
    await vol.write(8192, fill(4096, 1), false);
    await vol.write(5 * GROUP + 8192, fill(4096, 2), false);
    await vol.write(CHUNK + 7 * GROUP + 8192, fill(4096, 3), false);
    expect(vol.intent!.dirtyCount).toBe(3);
    // A sweep begins; a write into group 5 goes out while it runs: group 5 must stay dirty.
    const sweeping = reg.sweep();
    const during = vol.write(5 * GROUP + 8192, fill(4096, 4), false);
    expect(await sweeping).toBe(2);
    await during;
    for (let slot = 0; slot < 3; slot++) {
      expect(await dirtyRuns(32, 0, slot)).toEqual([groupRun(5)]);
      expect(await dirtyRuns(32, 1, slot)).toEqual([]);
    }
    // The next sweep (nothing written meanwhile) clears it.
    expect(await reg.sweep()).toBe(1);
    for (let slot = 0; slot < 3; slot++) expect(await dirtyRuns(32, 0, slot)).toEqual([]);
    // Writing again marks again; detach (flush) leaves nothing to reconcile.
    await vol.write(9 * GROUP + 8192, fill(4096, 5), false);
    expect(await dirtyRuns(32, 0, 1)).toEqual([groupRun(9)]);
    await reg.detach('vol-x');
    for (let slot = 0; slot < 3; slot++) expect(await dirtyRuns(32, 0, slot)).toEqual([]);
  });

  it('a replica that starts taking writes (map update) gets the marks too: groups are marked again on the next write', async () => {
    const reg = newRegistry();
    const map = await allocate(34, 'vol-z', 6);
    const staleMap = { ...map, segments: map.segments.map((s) => ({ ...s, replicas: s.replicas.map((r) => (r.slot === 2 ? { ...r, state: 'stale' } : r)) })) };
    const vol = await reg.attach(staleMap, 1);
    await vol.write(GROUP + 16_384, fill(4096, 1), false);
    expect(await dirtyRuns(34, 0, 0)).toEqual([groupRun(1)]);
    expect(await dirtyRuns(34, 0, 2)).toEqual([]);
    const resyncing = { ...map, segments: map.segments.map((s) => ({ ...s, replicas: s.replicas.map((r) => (r.slot === 2 ? { ...r, state: 'resyncing' } : r)) })) };
    await reg.updateMap(resyncing, 1);
    const intent = vol.intent!.segments[0]!;
    const marks = intent.marks;
    await vol.write(GROUP + 8192, fill(4096, 2), false);
    expect(intent.marks - marks).toBe(3);
    for (let slot = 0; slot < 3; slot++) expect(await dirtyRuns(34, 0, slot)).toEqual([groupRun(1)]);
    // Marks left from before the update (group 1 was re-marked; group 3 only on the old replicas) are swept too.
    await vol.write(3 * GROUP + 8192, fill(4096, 3), false);
    await reg.updateMap(staleMap, 1); // slot 2 stale again: no new writable replica, nothing forgotten
    await reg.updateMap(resyncing, 1);
    await reg.sweep();
    for (let slot = 0; slot < 3; slot++) expect(await dirtyRuns(34, 0, slot)).toEqual([]);
  });

  it('a head killed mid-writes leaves replicas different in dirty regions; the next attach reconciles them before any read', async () => {
    const map = await allocate(33, 'vol-y', 4);
    const reg1 = newRegistry();
    const vol1 = await reg1.attach(map, 1);
    const base = fill(SIZE, 77);
    await vol1.write(0, base, false);
    await vol1.flush();
    await reg1.sweep();
    expect(vol1.intent!.dirtyCount).toBe(0);
    // Writes in flight when the head dies: the head marks groups 4 (segment 0) and 2 (segment 1) dirty and
    // sends the writes, which land on some replicas only (written here replica by replica, as a crash would leave them).
    await vol1.write(4 * GROUP + 8192, fill(4096, 1), false);
    await vol1.write(CHUNK + 2 * GROUP + 8192, fill(4096, 2), false);
    await direct(vol1, 0, 1).write(1, 4 * GROUP + 1000, fill(20_000, 3), false);
    await direct(vol1, 0, 2).write(1, 4 * GROUP + 30_000, fill(2000, 4), false);
    await direct(vol1, 1, 0).write(1, 2 * GROUP + 5000, fill(3000, 5), false);
    // Outside any dirty group (a write nobody marked cannot come from this head): left alone by reconcile.
    await direct(vol1, 1, 2).write(1, 30 * GROUP, fill(512, 6), false);
    const differ = async (seg: number, off: number, len: number): Promise<boolean> => {
      const a = await readSlot(vol1, seg, 0, off, len);
      const b = await readSlot(vol1, seg, 1, off, len);
      const c = await readSlot(vol1, seg, 2, off, len);
      return !(a.equals(b) && b.equals(c));
    };
    expect(await differ(0, 4 * GROUP, GROUP)).toBe(true);
    expect(await differ(1, 2 * GROUP, GROUP)).toBe(true);
    // The head dies: no flush, no clear, no detach.
    reg1.abandon();
    for (let slot = 0; slot < 3; slot++) expect(await dirtyRuns(33, 0, slot)).toEqual([groupRun(4)]);

    const reg2 = newRegistry();
    const vol2 = await reg2.attach(map, 2);
    // Every replica now holds the same bytes in the dirty groups, and the bits are cleared.
    for (const [seg, g] of [[0, 4], [1, 2]] as const) {
      const a = await readSlot(vol2, seg, 0, g * GROUP, GROUP);
      expect((await readSlot(vol2, seg, 1, g * GROUP, GROUP)).equals(a)).toBe(true);
      expect((await readSlot(vol2, seg, 2, g * GROUP, GROUP)).equals(a)).toBe(true);
      // Two reads of the same block through the volume agree, whichever replica serves them.
      const reads = await Promise.all(Array.from({ length: 6 }, () => vol2.read(seg * CHUNK + g * GROUP, GROUP)));
      for (const r of reads) expect(r.equals(a)).toBe(true);
    }
    for (let slot = 0; slot < 3; slot++) {
      expect(await dirtyRuns(33, 0, slot)).toEqual([]);
      expect(await dirtyRuns(33, 1, slot)).toEqual([]);
    }
    // Only dirty regions were touched: the unmarked difference is still there.
    expect((await readSlot(vol2, 1, 2, 30 * GROUP, 512)).equals(fill(512, 6))).toBe(true);
    expect((await readSlot(vol2, 1, 0, 30 * GROUP, 512)).equals(base.subarray(CHUNK + 30 * GROUP, CHUNK + 30 * GROUP + 512))).toBe(true);
    // The old holder is fenced off.
    await expect(vol1.write(0, fill(4096, 9), false)).rejects.toBeInstanceOf(StaleEpochError);
  });
  it('reconcile converges the written state too: a region the source never wrote ends unwritten everywhere, not zeros written as data', async () => {
    const map = await allocate(35, 'vol-r', 8);
    const reg1 = newRegistry();
    const vol1 = await reg1.attach(map, 1);
    // Group 6 of segment 0 is marked (the head's write lands everywhere); then a write the head died
    // sending reaches slots 1 and 2 only, in a region of the same group that slot 0 never wrote.
    await vol1.write(6 * GROUP, fill(4096, 1), false);
    const lost = 6 * GROUP + 32 * 1024;
    await direct(vol1, 0, 1).write(1, lost, fill(REGION, 2), false);
    await direct(vol1, 0, 2).write(1, lost, fill(REGION, 2), false);
    const r = lost / REGION;
    const before = await Promise.all([0, 1, 2].map(async (slot) => testBit(await writtenMap(35, 0, slot), r)));
    expect(before).toEqual([false, true, true]); // the premise: the replicas disagree on whether the region was written
    reg1.abandon();

    const reg2 = newRegistry();
    const vol2 = await reg2.attach(map, 2);
    const source = vol2.segment(0).replicas.find((x) => x.readable)!.slot;
    expect(source).toBe(0); // reconcile takes the first in-sync replica's state
    for (let slot = 0; slot < 3; slot++) {
      const written = await writtenMap(35, 0, slot);
      expect(testBit(written, r), `slot ${slot}: region ${r} written`).toBe(false);
      expect(testBit(written, (6 * GROUP) / REGION), `slot ${slot}: the marked write's region`).toBe(true);
      expect((await readSlot(vol2, 0, slot, lost, REGION)).equals(Buffer.alloc(REGION))).toBe(true);
    }
  });
});
