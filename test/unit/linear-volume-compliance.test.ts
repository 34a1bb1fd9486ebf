import { pino } from 'pino';
import { afterAll, beforeAll } from 'vitest';
import { Attachments } from '../../head-agent/attachments.js';
import { NodePool } from '../../head-agent/engine/node-pool.js';
import { setRootLogger } from '../../shared/logger.js';
import { blockDeviceCompliance } from '../harness/block-device-compliance.js';
import { allocateVolume, startNodeTrio, type NodeTrio } from '../harness/storage-node-trio.js';

// The BlockDevice contract (test/harness/block-device-compliance.ts) held by
// the real I/O engine: every test attaches a fresh LinearVolume, three
// segments (the last one partial) mirrored 3 ways over three REAL storage
// nodes started in-process, on chunks no earlier test touched. Requests are
// also split at a small payload limit, as in head-engine.test.ts.

const KiB = 1024;
const CHUNK = 512 * KiB;
const SIZE = 3 * CHUNK - 64 * KiB;
const SEGMENTS = Math.ceil(SIZE / CHUNK);
const MAX_PIECE = 128 * KiB;

setRootLogger(pino({ level: process.env.VSKY_LOG_LEVEL ?? 'silent' }));

let trio: NodeTrio;
let pool: NodePool;
let attachments: Attachments;
let opened = 0;

beforeAll(async () => {
  trio = await startNodeTrio('vsky-lv-compliance-', CHUNK);
  pool = new NodePool({ dataTimeoutMs: 3000, backoffInitialMs: 50 });
  attachments = new Attachments({ pool, maxPiece: MAX_PIECE });
});

afterAll(async () => {
  await attachments?.close();
  await pool?.close();
  await trio?.close();
});

blockDeviceCompliance('LinearVolume over three storage nodes', async () => {
  const n = opened++;
  const name = `compliance-${n}`;
  const map = await allocateVolume(trio, {
    volumeId: 100 + n, name, size: SIZE, chunkSize: CHUNK, chunkBase: n * SEGMENTS, rotate: true,
  });
  const device = await attachments.attach(map, 1);
  return { device, close: () => attachments.detach(name) };
}, { boundary: CHUNK });
