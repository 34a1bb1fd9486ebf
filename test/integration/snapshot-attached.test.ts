import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { GiB, MiB } from '../../shared/constants.js';
import { destroyTestCluster, startTestCluster, chunksOnNodes } from '../harness/cluster.js';
import { NbdClient } from '../harness/nbd-client.js';
import { vsky, vskyJson } from '../harness/vsky.js';

// A snapshot of an ATTACHED volume under a verifying writer
// (docs/snapshots.md): the holder pauses the volume, the manager commits and
// re-attaches it with its new map. The snapshot must hold exactly the writes
// acknowledged before the snapshot was asked for, none that started after it
// returned, and a write in flight whole or not at all; the volume goes on
// and keeps every acknowledged write (overwrites after the snapshot too).

const SEG = 256 * MiB;
const BLOCK = 4096;
/** Block i lives at i * STRIDE: blocks start mid-region, so the writes after the snapshot are copy-ups. */
const STRIDE = 5 * BLOCK + 512;
const QD = 4;

function block(i: number, version: number): Buffer {
  const b = Buffer.alloc(BLOCK, (i * 7 + version * 31) & 0xff || 1);
  b.writeUInt32BE(i, 0);
  b.writeUInt32BE(version, 4);
  return b;
}

interface Rec { startMs: number; ackMs: number }

describe('snapshot of an attached volume under a verifying writer', () => {
  let c: LocalCluster;
  const m = () => c.managerAddress;

  beforeAll(async () => {
    c = await startTestCluster({ diskSize: 2 * GiB, chunkSize: SEG });
  }, 120_000);
  afterAll(async () => {
    await destroyTestCluster(c);
  });

  it('holds exactly the writes acknowledged before it; the volume goes on with all of them', async () => {
    expect((await vsky(['volume', 'create', 'live', '--size', '512M', '--replicas', '2'], m())).exitCode).toBe(0);
    const att = await vsky(['volume', 'attach', 'live'], m());
    expect(att.exitCode, String(att.stderr)).toBe(0);
    const uri = String(att.stdout).trim().split('\n')[0]!;
    const client = await NbdClient.connect(uri);
    const v1 = new Map<number, Rec>();
    const v2 = new Map<number, Rec>();
    let next = 0;
    let stop = false;
    let phase2From = -1;
    let overwriteNext = 0;
    const errors: string[] = [];
    const writer = async () => {
      while (!stop) {
        // After the snapshot: half the writes overwrite blocks written before it.
        if (phase2From >= 0 && overwriteNext < phase2From && (next + overwriteNext) % 2 === 0) {
          const i = overwriteNext++;
          const r: Rec = { startMs: Date.now(), ackMs: 0 };
          await client.write(i * STRIDE, block(i, 2)).catch((err: unknown) => { errors.push(String(err)); });
          r.ackMs = Date.now();
          v2.set(i, r);
          continue;
        }
        const i = next++;
        const r: Rec = { startMs: Date.now(), ackMs: 0 };
        await client.write(i * STRIDE, block(i, 1)).catch((err: unknown) => { errors.push(String(err)); });
        r.ackMs = Date.now();
        v1.set(i, r);
      }
    };
    const writers = Array.from({ length: QD }, writer);
    await new Promise((r) => setTimeout(r, 1500));
    const snapStart = Date.now();
    const snap = await vsky(['snapshot', 'create', 'live', 'live-s1', '--json'], m());
    const snapEnd = Date.now();
    expect(snap.exitCode, String(snap.stderr)).toBe(0);
    phase2From = next;
    await new Promise((r) => setTimeout(r, 1500));
    stop = true;
    await Promise.all(writers);
    expect(errors).toEqual([]);
    const before = [...v1.entries()].filter(([, r]) => r.ackMs < snapStart).map(([i]) => i);
    const after = [...v1.entries()].filter(([, r]) => r.startMs > snapEnd).map(([i]) => i);
    expect(before.length).toBeGreaterThan(20); // premises: writes on both sides of the snapshot, and overwrites
    expect(after.length).toBeGreaterThan(20);
    expect(v2.size).toBeGreaterThan(10);

    // The volume: every acknowledged write, the latest version of each block.
    for (const [i] of v1) {
      const want = block(i, v2.has(i) ? 2 : 1);
      expect((await client.read(i * STRIDE, BLOCK)).equals(want), `volume block ${i}`).toBe(true);
    }
    client.close();
    const info = await vskyJson<{ backing: string; state: string }[]>(['volume', 'list', '--json'], m());
    expect(info.find((v) => (v as unknown as { name: string }).name === 'live')).toMatchObject({ backing: 'live-s1', state: 'attached' });
    expect((await chunksOnNodes(c, 'live-s1')).length).toBeGreaterThan(0);

    // The snapshot, read through a clone.
    expect((await vsky(['volume', 'clone', 'live-s1', 'live-c'], m())).exitCode).toBe(0);
    const ca = await vsky(['volume', 'attach', 'live-c'], m());
    expect(ca.exitCode, String(ca.stderr)).toBe(0);
    const reader = await NbdClient.connect(String(ca.stdout).trim().split('\n')[0]!);
    try {
      for (const [i, r] of v1) {
        const got = await reader.read(i * STRIDE, BLOCK);
        const zero = got.equals(Buffer.alloc(BLOCK));
        const one = got.equals(block(i, 1));
        if (r.ackMs < snapStart) expect(one, `block ${i} acknowledged before the snapshot`).toBe(true);
        else if (r.startMs > snapEnd) expect(zero, `block ${i} written after the snapshot`).toBe(true);
        else expect(zero || one, `block ${i} in flight: whole or absent`).toBe(true);
      }
    } finally {
      reader.close();
    }
  }, 240_000);
});
