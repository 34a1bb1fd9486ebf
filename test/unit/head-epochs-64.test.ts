import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NodePool } from '../../head-agent/engine/node-pool.js';
import { Attachments, type VolumeMap } from '../../head-agent/attachments.js';
import { InvalidArgumentError, StaleEpochError } from '../../shared/errors.js';
import { MiB } from '../../shared/constants.js';
import { setRootLogger } from '../../shared/logger.js';
import { fill } from '../harness/seeded-bytes.js';
import { allocateVolume, startNodeTrio, type NodeTrio } from '../harness/storage-node-trio.js';

// Lease epochs are 64-bit end to end (never wrap): the head's own data-protocol
// client (pooled request entries, header buffers, corked writer) against three
// REAL storage nodes. Every epoch here above 2^32 would collide with a small
// one if any layer cut it to 32 bits.

setRootLogger(pino({ level: process.env.VSKY_LOG_LEVEL ?? 'silent' }));

const CHUNK = 4 * MiB;
const SIZE = 2 * CHUNK;
const E = 2 ** 32;

let trio: NodeTrio;
let map: VolumeMap;
const pools: NodePool[] = [];

function newRegistry(): Attachments {
  const pool = new NodePool({ dataTimeoutMs: 3000, backoffInitialMs: 50 });
  pools.push(pool);
  return new Attachments({ pool, maxPiece: 256 * 1024 });
}

beforeAll(async () => {
  trio = await startNodeTrio('vsky-head-epoch64-', CHUNK);
  map = await allocateVolume(trio, { volumeId: 64, name: 'vol-64', size: SIZE, chunkSize: CHUNK });
});

afterAll(async () => {
  await Promise.all(pools.map((p) => p.close()));
  await trio?.close();
});

describe('64-bit lease epochs through the head and real storage nodes', () => {
  it('a holder at 2^32+1 fences off epoch 1 (its low 32 bits) and 2^32; at 2^32+5, epochs 2^32+4 and 5 are refused', async () => {
    const old = await newRegistry().attach(map, 1);
    const data = fill(8192, 64);
    await old.write(0, data, true);

    const holder = await newRegistry().attach(map, E + 1); // fences every replica node
    await expect(old.write(0, Buffer.alloc(4096, 0xee), false)).rejects.toBeInstanceOf(StaleEpochError);
    await expect(newRegistry().attach(map, E)).rejects.toBeInstanceOf(StaleEpochError);
    expect((await holder.read(0, 8192)).equals(data)).toBe(true);
    const next = fill(4096, 65);
    await holder.write(4096, next, true);

    const newer = await newRegistry().attach(map, E + 5);
    await expect(holder.write(0, Buffer.alloc(4096, 0xdd), false)).rejects.toBeInstanceOf(StaleEpochError);
    // Straight to each replica, at explicit epochs.
    for (const replica of newer.segment(0).replicas) {
      for (const stale of [E + 4, 5, 1]) {
        await expect(replica.write(stale, 0, Buffer.alloc(512, 0xcc), false), `epoch ${stale}`).rejects.toBeInstanceOf(StaleEpochError);
      }
      await replica.write(E + 5, 8192, Buffer.alloc(512, 0x55), false);
    }
    expect((await newer.read(0, 8192)).equals(Buffer.concat([data.subarray(0, 4096), next]))).toBe(true);
  });

  it('attaches up to 2^53-1 and refuses epochs beyond it (or 0) before touching a node', async () => {
    const reg = newRegistry();
    for (const bad of [0, 2 ** 53, 2 ** 64, 1.5]) {
      await expect(reg.attach(map, bad), String(bad)).rejects.toBeInstanceOf(InvalidArgumentError);
    }
    await expect(reg.attach(map, 2 ** 53)).rejects.toThrow(/1\.\.2\^53-1/);
    const top = await reg.attach(map, Number.MAX_SAFE_INTEGER);
    await top.write(0, Buffer.alloc(4096, 0x77), true);
    await expect(newRegistry().attach(map, Number.MAX_SAFE_INTEGER - 1)).rejects.toBeInstanceOf(StaleEpochError);
    expect((await top.read(0, 4096)).equals(Buffer.alloc(4096, 0x77))).toBe(true);
  });
});
