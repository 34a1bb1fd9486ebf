import { expect } from 'vitest';
import { MiB } from '../../shared/constants.js';
import { call } from '../../shared/grpc.js';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import type { JobInfo__Output } from '../../proto/generated/vsky/manager/JobInfo.js';
import { NbdClient } from '../harness/nbd-client.js';
import { vsky } from '../harness/vsky.js';

// What the flatten job tests share (flatten-job.test.ts, flatten-faults.test.ts):
// a template of 8 segments of 16 MiB (the test cluster's chunk size) whose
// segments 0-2 and 4-6 hold 2 MiB of data (segments 3 and 7 are never written:
// unallocated in the snapshot), a snapshot of it, and the expected bytes of a
// clone that wrote its own 4 KiB blocks on top.

export const SEG = 16 * MiB;
export const SIZE = 8 * SEG;
const SPAN_AT = MiB;
const SPAN = 2 * MiB;
/** Bytes the template holds (what a fresh clone's flatten copies). */
export const TEMPLATE_BYTES = 6 * SPAN;

export function templateByte(off: number): number {
  const s = Math.floor(off / SEG);
  const so = off % SEG;
  return s % 4 === 3 || so < SPAN_AT || so >= SPAN_AT + SPAN ? 0 : 0x10 + s;
}

export async function attach(c: LocalCluster, name: string): Promise<string> {
  const r = await vsky(['volume', 'attach', name, ...(c.headNames.length > 1 ? ['--head', c.headNames[0]!] : [])], c.managerAddress);
  expect(r.exitCode, String(r.stderr)).toBe(0);
  return String(r.stdout).trim().split('\n')[0]!;
}

export async function ok(c: LocalCluster, args: string[]): Promise<string> {
  const r = await vsky(args, c.managerAddress);
  expect(r.exitCode, `vsky ${args.join(' ')}: ${String(r.stderr)}`).toBe(0);
  return String(r.stdout);
}

/** Creates tpl (written), its snapshot tpl-s, and detached clones of it. */
export async function template(c: LocalCluster, clones: string[]): Promise<void> {
  await ok(c, ['volume', 'create', 'tpl', '--size', String(SIZE), '--replicas', '2']);
  const w = await NbdClient.connect(await attach(c, 'tpl'));
  for (let s = 0; s < 8; s++) if (s % 4 !== 3) await w.write(s * SEG + SPAN_AT, Buffer.alloc(SPAN, 0x10 + s));
  w.close();
  await ok(c, ['volume', 'detach', 'tpl']);
  await ok(c, ['snapshot', 'create', 'tpl', 'tpl-s']);
  for (const name of clones) await ok(c, ['volume', 'clone', 'tpl-s', name]);
}

/** Writes `n` 4 KiB blocks (in the template's data, half-way into a region, and in never-written segments); records them. */
export async function ownWrites(w: NbdClient, own: Map<number, number>, n: number, seed: number): Promise<void> {
  for (let i = 0; i < n; i++) {
    const s = (i * 3 + seed) % 8;
    const off = s * SEG + SPAN_AT + ((i * 7919 + seed * 131) % 768) * 4096 - (i % 3 === 0 ? 64 * 1024 : 0);
    const v = 1 + ((i + seed) % 200);
    await w.write(off, Buffer.alloc(4096, v));
    own.set(off, v);
  }
}

/** Reads the first 4 MiB of every segment and compares each 4 KiB block with its own write or the template. */
export async function verify(w: NbdClient, own: ReadonlyMap<number, number>): Promise<void> {
  for (let s = 0; s < 8; s++) {
    for (let at = s * SEG; at < s * SEG + 4 * MiB; at += MiB) {
      const got = await w.read(at, MiB);
      for (let b = 0; b < MiB; b += 4096) {
        const off = at + b;
        const want = own.get(off) ?? templateByte(off);
        if (got[b] !== want || got[b + 4095] !== want) expect.fail(`offset ${off}: expected ${want}, got ${got[b]}/${got[b + 4095]}`);
      }
    }
  }
}

export async function getJob(c: LocalCluster, jobId: string): Promise<JobInfo__Output> {
  const m = c.client();
  try {
    return await call(m, 'GetJob', { jobId });
  } finally {
    m.close();
  }
}

/** Polls the job until it ends; returns every sample. */
export async function follow(c: LocalCluster, jobId: string, timeoutMs = 60_000): Promise<JobInfo__Output[]> {
  const out: JobInfo__Output[] = [];
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const j = await getJob(c, jobId);
    out.push(j);
    if (['succeeded', 'failed', 'aborted', 'fenced'].includes(j.state)) return out;
    if (Date.now() > deadline) throw new Error(`job ${jobId} did not end: ${JSON.stringify(j)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * A writer that writes 4 KiB blocks over the first 4 MiB of every segment and
 * reads each back, recording acknowledged writes in `own`, until stop():
 * what failed or read back wrong, and how many writes were acknowledged.
 */
export function verifyingWriter(w: NbdClient, own: Map<number, number>): { stop(): Promise<{ errors: string[]; writes: number }> } {
  const errors: string[] = [];
  let stopped = false;
  let writes = 0;
  const done = (async () => {
    for (let i = 0; !stopped; i++) {
      const off = (i % 8) * SEG + ((i * 104729) % 1024) * 4096;
      const v = 1 + (i % 250);
      await w.write(off, Buffer.alloc(4096, v)).then(() => { own.set(off, v); writes++; }, (err: unknown) => { errors.push(`write ${off}: ${String(err)}`); });
      const got = await w.read(off, 4096).catch((err: unknown) => { errors.push(`read ${off}: ${String(err)}`); return undefined; });
      if (got && got[0] !== v) errors.push(`read ${off} after its write: ${got[0]}, not ${v}`);
    }
  })();
  return {
    async stop() {
      stopped = true;
      await done;
      return { errors, writes };
    },
  };
}
