import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { MiB } from '../../shared/constants.js';
import { destroyTestCluster, startTestCluster } from '../harness/cluster.js';
import { run } from '../harness/tools.js';

// Random and mutated PDUs against the head agent's iSCSI portal (a real
// process): pure garbage, valid login PDUs with bytes flipped, and random
// PDUs after a valid login. Afterwards the head must still be running and
// serving real initiators. Seeded (VSKY_FUZZ_SEED) and bounded in count and time.

const SEED = Number(process.env.VSKY_FUZZ_SEED ?? 20261121);
const ROUNDS = Number(process.env.VSKY_FUZZ_ROUNDS ?? 400);

function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => { // mulberry32
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A Login Request (RFC 7143 11.12) starting in the operational stage (no security keys) and going to full feature phase. */
function loginPdu(target: string, itt: number): Buffer {
  const text = Buffer.from(`InitiatorName=iqn.2026-11.test.vsky:fuzzer\0SessionType=Normal\0TargetName=${target}\0`);
  const padded = Math.ceil(text.length / 4) * 4;
  const pdu = Buffer.alloc(48 + padded);
  pdu[0] = 0x43; // immediate | Login Request
  pdu[1] = 0x80 | (1 << 2) | 3; // T, CSG=operational, NSG=full feature
  pdu.writeUIntBE(text.length, 5, 3);
  Buffer.from([0x80, 0, 0, 0x12, 0x34, 0x56]).copy(pdu, 8); // ISID
  pdu.writeUInt32BE(itt, 16);
  pdu.writeUInt32BE(1, 24); // CmdSN
  text.copy(pdu, 48);
  return pdu;
}

function randomPdu(rnd: () => number): Buffer {
  const dataLen = rnd() < 0.5 ? 0 : Math.floor(rnd() * 1024);
  const pdu = Buffer.alloc(48 + Math.ceil(dataLen / 4) * 4);
  for (let i = 0; i < pdu.length; i++) pdu[i] = Math.floor(rnd() * 256);
  pdu[4] = rnd() < 0.8 ? 0 : pdu[4]!; // mostly no AHS, sometimes a bogus one
  pdu.writeUIntBE(rnd() < 0.9 ? dataLen : Math.floor(rnd() * 0xffffff), 5, 3);
  return pdu;
}

function mutate(buf: Buffer, rnd: () => number): Buffer {
  const out = Buffer.from(buf);
  const flips = 1 + Math.floor(rnd() * 8);
  for (let i = 0; i < flips; i++) out[Math.floor(rnd() * out.length)] = Math.floor(rnd() * 256);
  return rnd() < 0.2 ? out.subarray(0, Math.floor(rnd() * out.length)) : out;
}

/** Sends `parts` with small gaps, then closes after `ms` (or when the target does). */
function session(host: string, port: number, parts: Buffer[], ms: number): Promise<void> {
  return new Promise((resolve) => {
    const s = connect(port, host);
    const timer = setTimeout(() => s.destroy(), ms);
    s.on('connect', () => { for (const p of parts) s.write(p); });
    s.on('data', () => { /* replies are not checked: survival is */ });
    s.on('error', () => { /* resets are expected */ });
    s.on('close', () => { clearTimeout(timer); resolve(); });
  });
}

describe('iSCSI portal under random and mutated PDUs', () => {
  let c: LocalCluster;
  let iscsi: string;
  let nbd: string;
  beforeAll(async () => {
    c = await startTestCluster();
    ({ nbd, iscsi } = await c.ensureVolumeUrls('fz', 16 * MiB, 3));
  });
  afterAll(() => destroyTestCluster(c));

  it(`survives ${ROUNDS} fuzzed connections (seed ${SEED}) and keeps serving`, async () => {
    const url = new URL(iscsi);
    const host = url.hostname;
    const port = Number(url.port);
    const target = decodeURIComponent(url.pathname.split('/')[1]!);
    const rnd = prng(SEED);
    const jobs: Promise<void>[] = [];
    for (let i = 0; i < ROUNDS; i++) {
      const kind = rnd();
      let parts: Buffer[];
      if (kind < 0.25) parts = [Buffer.from(Array.from({ length: 1 + Math.floor(rnd() * 2000) }, () => Math.floor(rnd() * 256)))];
      else if (kind < 0.6) parts = [mutate(loginPdu(target, i), rnd)];
      else parts = [loginPdu(target, i), ...Array.from({ length: 1 + Math.floor(rnd() * 6) }, () => randomPdu(rnd))];
      jobs.push(session(host, port, parts, 300));
      if (jobs.length >= 16) await Promise.all(jobs.splice(0));
    }
    await Promise.all(jobs);
    expect(c.head.running).toBe(true);
    const inq = await run('iscsi-inq', [iscsi]);
    expect(String(inq.stdout)).toMatch(/VASTSKY/);
    const io = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x42 0 1M', '-c', 'read -P 0x42 0 1M', iscsi]);
    expect(String(io.stdout)).not.toMatch(/verification failed|error/i);
    expect((await run('nbdinfo', ['--size', nbd])).exitCode).toBe(0);
  });
});
