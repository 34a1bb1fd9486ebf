import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { MiB } from '../../shared/constants.js';
import { call } from '../../shared/grpc.js';
import { destroyTestCluster, startTestCluster } from '../harness/cluster.js';
import { StampWriter, daemonLog, leaseView, sleep, stampedBlock } from '../harness/leases.js';
import { NbdClient } from '../harness/nbd-client.js';

// Write leases under contention and with a hung holder: two reproductions of
// product bugs found while writing test/integration/leases.test.ts. Both
// failed until head-agent/lease-requester.ts and manager/leases.ts were fixed
// (see each test); they stay as regression tests.

const TTL_MS = 2000;

describe('write leases: contention and hung holders', () => {
  let c: LocalCluster;

  beforeAll(async () => {
    c = await startTestCluster({ heads: 2, managerArgs: ['--lease-ttl', String(TTL_MS)], heartbeatIntervalMs: 300 });
  });
  afterAll(async () => {
    c?.head.resume();
    await destroyTestCluster(c);
  });

  const prepare = async (name: string): Promise<[string, string]> => {
    const m = c.client();
    try {
      await call(m, 'CreateVolume', { name, size: 32 * MiB, replicas: 3, spreadLabel: '', thick: true }, 60_000);
      const u1 = (await call(m, 'AttachVolume', { name, head: 'head1', migrate: false, force: false }, 30_000)).nbdUri;
      const u2 = (await call(m, 'AttachVolume', { name, head: 'head2', migrate: true, force: false }, 30_000)).nbdUri;
      return [u1, u2];
    } finally {
      m.close();
    }
  };

  // BUG (head-agent/lease-requester.ts): when both heads have I/O at once, the
  // lease moves with every request. The requester's AcquireLease reply can
  // arrive after the manager's next move already released the volume here
  // again (the other head asked meanwhile); the requester then throws
  // IoError "the manager granted epoch N, but the volume is standby here;
  // retry the request" and the client's write fails with EIO (QEMU with
  // werror=stop pauses the VM). Measured: 108 to 122 of 550 to 730 writes in 4 s
  // failed, every one with that message.
  // The waiting request should ask again (LinearVolume.afterLease re-checks
  // the lease and would start a new acquisition), not fail.
  it('I/O on both heads at once: the lease moves back and forth and no request fails', async () => {
    const [u1, u2] = await prepare('cx');
    const n1 = await NbdClient.connect(u1);
    const n2 = await NbdClient.connect(u2);
    const w1 = new StampWriter(n1, { tag: 1, blocks: 64, queueDepth: 2 });
    const w2 = new StampWriter(n2, { tag: 2, blocks: 64, base: 1 * MiB, queueDepth: 2 });
    const e0 = (await leaseView(c, 'cx')).epoch;
    try {
      w1.start();
      w2.start();
      await sleep(4000);
      await w1.stop();
      await w2.stop();
      const moves = (await leaseView(c, 'cx')).epoch - e0;
      const failed = [...w1.writes, ...w2.writes].filter((w) => w.ok === false);
      const reasons = (daemonLog(c, 'head') + daemonLog(c, 'head2')).match(/the manager granted epoch \d+, but the volume is standby here/g) ?? [];
      console.log(`contention: ${moves} lease moves; head1 ${w1.acked} writes acknowledged, head2 ${w2.acked}; ${failed.length} failed `
        + `(${reasons.length} head log lines "the manager granted epoch N, but the volume is standby here")`);
      expect(moves, 'premise: the lease moved back and forth').toBeGreaterThan(10);
      expect(failed.map((w) => w.error), 'writes failed under lease contention').toEqual([]);
    } finally {
      await w1.stop();
      await w2.stop();
      n1.close();
      n2.close();
    }
  });

  // BUG (manager/leases.ts Leases.release): the manager first waits for the
  // holder's ReleaseLease reply for releaseTimeoutMs (5 s) and only then
  // checks whether the holder's lease has expired. A hung holder (SIGSTOP,
  // its TCP connections still open, so the call does not fail fast like it
  // does for a dead one) is therefore taken over after max(5 s, lease left),
  // not when its lease expires as docs/leases.md says ("the request waits
  // until its lease has expired, then takes over"). With --lease-ttl 2000 the
  // standby's write waited ~5.4 s (a kill -9'd holder: ~2 s). Invisible with
  // the default TTL (8 s > 5 s). The release call should be raced against the
  // holder's lease expiry.
  it('a hung holder is taken over when its lease expires, not after the release timeout', async () => {
    const [u1, u2] = await prepare('cy');
    const n1 = await NbdClient.connect(u1);
    const n2 = await NbdClient.connect(u2);
    try {
      await n1.write(0, stampedBlock(1, 0, 1));
      c.head.pause();
      const paused = performance.now();
      await n2.write(4096, stampedBlock(2, 1, 1));
      const tookMs = performance.now() - paused;
      console.log(`hung holder: the standby's write was acknowledged ${tookMs.toFixed(0)} ms after SIGSTOP (lease TTL ${TTL_MS} ms)`);
      expect((await leaseView(c, 'cy')).holder, 'premise: taken over').toBe('head2');
      expect(tookMs, 'take-over of a hung holder within TTL + 1 s').toBeLessThan(TTL_MS + 1000);
    } finally {
      c.head.resume();
      n1.close();
      n2.close();
    }
  });
});
