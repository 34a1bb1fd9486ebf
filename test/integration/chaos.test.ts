import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DaemonProcess } from '../../deploy/daemon-process.js';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { MiB } from '../../shared/constants.js';
import { destroyTestCluster, startExtraHead, startTestCluster } from '../harness/cluster.js';
import { VerifyingWriter } from '../harness/verifier.js';
import { vsky } from '../harness/vsky.js';

// Chaos with a verifying writer running (rules 1, 3): real processes are
// killed with SIGKILL while writes are in flight; afterwards every
// acknowledged write must read back, and the write stall is printed.

const BLOCKS = (32 * MiB) / 4096;

describe('chaos: kill -9 the head agent and re-attach the volume elsewhere', () => {
  let c: LocalCluster;
  let head2: DaemonProcess;
  beforeAll(async () => {
    c = await startTestCluster();
    head2 = await startExtraHead(c, 'head2');
  });
  afterAll(async () => {
    await head2?.stop();
    await destroyTestCluster(c);
  });

  it('loses no acknowledged write', async () => {
    const m = c.managerAddress;
    expect((await vsky(['volume', 'create', 'cv', '--size', '32M', '--thick'], m)).exitCode).toBe(0);
    const uri1 = String((await vsky(['volume', 'attach', 'cv', '--head', 'head1'], m)).stdout).split('\n')[0]!;
    const w = new VerifyingWriter({ uri: uri1, blocks: BLOCKS, queueDepth: 8 });
    w.start();
    await new Promise((r) => setTimeout(r, 1500));
    const before = w.stats.writesAcked;
    expect(before).toBeGreaterThan(100);

    w.resetStall();
    await c.head.kill9(); // writes in flight die with it
    const moved = Date.now();
    const detach = await vsky(['volume', 'detach', 'cv', '--force'], m);
    expect(detach.exitCode, String(detach.stderr)).toBe(0);
    const attach = await vsky(['volume', 'attach', 'cv', '--head', 'head2'], m);
    expect(attach.exitCode, String(attach.stderr)).toBe(0);
    w.switchTo(String(attach.stdout).split('\n')[0]!);
    await new Promise((r) => setTimeout(r, 1500));
    await w.stop();
    console.log(`head kill: write stall ${w.stats.maxStallMs} ms (re-attach took ${Date.now() - moved - 1500} ms), ` +
      `${w.stats.writesAcked} writes acknowledged, ${w.stats.writeErrors} failed while the head was gone`);
    expect(w.stats.writesAcked).toBeGreaterThan(before);
    expect(w.stats.violations).toEqual([]);
    expect(await w.verifyAll()).toEqual([]);
    w.close();
  });
});
