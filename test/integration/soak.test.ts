import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { MiB } from '../../shared/constants.js';
import { destroyTestCluster, startTestCluster } from '../harness/cluster.js';
import { VerifyingWriter } from '../harness/verifier.js';
import { vsky } from '../harness/vsky.js';

// Soak (not in CI): `VSKY_SOAK_SECONDS=600 npm run soak` repeats random
// faults - kill -9 and restart of a storage node, SIGSTOP/SIGCONT of one,
// kill -9 of the manager, kill -9 of the head agent (the manager gives the
// volume back when it restarts), a graceful drain of a disk (sometimes with
// the manager killed -9 in the middle) and its return - under a verifying
// writer, waiting for full redundancy after each, then checks every
// acknowledged write.

const SECONDS = Number(process.env.VSKY_SOAK_SECONDS ?? 0);
const SIZE = 32 * MiB;

interface DiskRow { diskId: string; serverName: string; path: string; state: string; draining: boolean; usedChunks: number }

async function diskRows(c: LocalCluster): Promise<DiskRow[]> {
  const r = await vsky(['disk', 'list', '--json'], c.managerAddress);
  return r.exitCode === 0 ? JSON.parse(String(r.stdout)) as DiskRow[] : [];
}

/** Drains a disk holding chunks (killing the manager mid-drain half the time), waits until it is removed, then adds it back. */
async function drainOne(c: LocalCluster): Promise<void> {
  const used = (await diskRows(c)).filter((d) => d.state === 'active' && !d.draining && d.usedChunks > 0);
  const d = used[Math.floor(Math.random() * used.length)]!;
  expect((await vsky(['disk', 'remove', d.diskId, '--no-wait'], c.managerAddress)).exitCode).toBe(0);
  if (Math.random() < 0.5) {
    await new Promise((r) => setTimeout(r, 300 + Math.random() * 700));
    await c.manager.kill9();
    await c.manager.start();
  }
  const deadline = Date.now() + 120_000;
  while ((await diskRows(c)).find((x) => x.diskId === d.diskId)?.state !== 'removed') {
    if (Date.now() > deadline) throw new Error(`disk ${d.diskId} not drained after 120 s`);
    await new Promise((r) => setTimeout(r, 500));
  }
  expect((await vsky(['disk', 'add', d.serverName, d.path], c.managerAddress)).exitCode).toBe(0);
}

async function redundant(c: LocalCluster, name: string): Promise<boolean> {
  const r = await vsky(['volume', 'list', '--json'], c.managerAddress);
  if (r.exitCode !== 0) return false;
  const v = (JSON.parse(String(r.stdout)) as { name: string; degraded: boolean; resyncs: number }[]).find((x) => x.name === name);
  return v !== undefined && !v.degraded && v.resyncs === 0;
}

describe.skipIf(SECONDS <= 0)('soak: random faults under a verifying writer', () => {
  let c: LocalCluster;
  beforeAll(async () => {
    c = await startTestCluster({ servers: 5, heartbeatTimeoutMs: 2000 });
  });
  afterAll(() => destroyTestCluster(c));

  it(`runs faults for ${SECONDS} s without losing an acknowledged write`, async () => {
    const uri = await c.ensureVolume('soak', SIZE, 3);
    const w = new VerifyingWriter({ uri, blocks: SIZE / 4096, queueDepth: 8 });
    w.start();
    const end = Date.now() + SECONDS * 1000;
    const faults: Record<string, number> = {};
    let worstStall = 0;
    while (Date.now() < end) {
      const kind = ['node-kill', 'node-hang', 'manager-kill', 'head-kill', 'drain'][Math.floor(Math.random() * 5)]!;
      faults[kind] = (faults[kind] ?? 0) + 1;
      w.resetStall();
      const node = c.nodes[Math.floor(Math.random() * c.nodes.length)]!;
      if (kind === 'node-kill') {
        await node.kill9();
        await new Promise((r) => setTimeout(r, 3000));
        await node.start();
      } else if (kind === 'node-hang') {
        node.pause();
        await new Promise((r) => setTimeout(r, 2000 + Math.random() * 3000));
        node.resume();
      } else if (kind === 'manager-kill') {
        await c.manager.kill9();
        await new Promise((r) => setTimeout(r, 1000));
        await c.manager.start();
      } else if (kind === 'drain') {
        await drainOne(c);
      } else {
        await c.head.kill9();
        await c.head.start();
      }
      const deadline = Date.now() + 120_000;
      while (!(await redundant(c, 'soak'))) {
        if (Date.now() > deadline) throw new Error(`not redundant 120 s after ${kind}`);
        await new Promise((r) => setTimeout(r, 500));
      }
      // Writes must be flowing again before the stall is read (it counts up to the next acknowledgement).
      const ackedNow = w.stats.writesAcked;
      while (w.stats.writesAcked <= ackedNow + 10) {
        if (Date.now() > deadline) throw new Error(`writes did not resume after ${kind}`);
        await new Promise((r) => setTimeout(r, 100));
      }
      worstStall = Math.max(worstStall, w.stats.maxStallMs);
      console.log(`soak: ${kind} handled; stall ${w.stats.maxStallMs} ms; ${w.stats.writesAcked} writes so far, ${w.stats.violations.length} violations`);
      expect(w.stats.violations).toEqual([]);
    }
    await w.stop();
    console.log(`soak done: faults ${JSON.stringify(faults)}, worst stall ${worstStall} ms, ${w.stats.writesAcked} writes, ${w.stats.readsChecked} reads checked`);
    expect(await w.verifyAll()).toEqual([]);
    w.close();
  }, (SECONDS + 300) * 1000);
});
