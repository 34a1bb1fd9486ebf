import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DaemonProcess } from '../../deploy/daemon-process.js';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { NodeConnection } from '../../shared/data-protocol/client/node-connection.js';
import { Replica } from '../../head-agent/engine/replica.js';
import { StaleEpochError } from '../../shared/errors.js';
import { call } from '../../shared/grpc.js';
import { destroyTestCluster, startExtraHead, startTestCluster } from '../harness/cluster.js';
import { run, tryRun } from '../harness/tools.js';
import { vsky } from '../harness/vsky.js';

// Rule 3, one writer: a second head cannot take a volume whose holder still
// renews its write lease (docs/leases.md). A head that hangs (SIGSTOP) while
// holding a volume is force-detached; a second head attaches with a higher
// epoch and fences every replica node. When the first head wakes up its writes
// are refused (the nodes' epoch check, or the lease revoked in its heartbeat
// reply) and the data stays what the new holder wrote.

describe('epoch fencing refuses a stale writer', () => {
  let c: LocalCluster;
  let head2: DaemonProcess;

  beforeAll(async () => {
    c = await startTestCluster();
    head2 = await startExtraHead(c, 'head2');
  });
  afterAll(async () => {
    c?.head.resume();
    await head2?.stop();
    await destroyTestCluster(c);
  });

  it('a second head cannot attach a volume held by another', async () => {
    const m = c.managerAddress;
    expect((await vsky(['volume', 'create', 'f', '--size', '32M'], m)).exitCode).toBe(0);
    const a = await vsky(['volume', 'attach', 'f', '--head', 'head1'], m);
    expect(a.exitCode).toBe(0);
    const client = c.client();
    const before = (await call(client, 'ShowVolume', { name: 'f' })).info!;
    const b = await vsky(['volume', 'attach', 'f', '--head', 'head2'], m);
    expect(b.exitCode).not.toBe(0);
    // head1 renews its lease with every heartbeat: the refusal names it and says how long until a take-over is allowed.
    const msg = /volume f is held by head head1, whose lease was renewed ([\d.]+) s ago: a take-over is allowed in ([\d.]+) s/.exec(String(b.stderr));
    expect(msg, String(b.stderr)).not.toBeNull();
    expect(Number(msg![2])).toBeGreaterThan(0);
    expect(Number(msg![1]) + Number(msg![2])).toBeCloseTo(8, 0); // the default lease TTL
    const after = (await call(client, 'ShowVolume', { name: 'f' })).info!;
    client.close();
    expect({ epoch: after.epoch, head: after.attachedHead, standby: after.standbyHead }).toEqual({ epoch: before.epoch, head: 'head1', standby: '' });
  });

  it('the hung holder is fenced off once another head takes the volume', async () => {
    const m = c.managerAddress;
    const client = c.client();
    const uri1 = (await call(client, 'ShowVolume', { name: 'f' })).info!.nbdUri;
    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0xaa 0 1M', uri1]);

    c.head.pause(); // head1 hangs with the volume attached
    for (let i = 0; i < 100; i++) { // until the manager notices the silence (heartbeat timeout)
      const { heads } = await call(client, 'ListHeads', {});
      if (heads.find((h) => h.name === 'head1')?.state === 'failed') break;
      await new Promise((r) => setTimeout(r, 100));
    }
    const plain = await vsky(['volume', 'detach', 'f'], m);
    expect(plain.exitCode).not.toBe(0);
    expect(String(plain.stderr)).toMatch(/--force/);
    expect((await vsky(['volume', 'detach', 'f', '--force'], m)).exitCode).toBe(0);
    const epoch1 = (await call(client, 'ShowVolume', { name: 'f' })).info!.epoch;
    const attach2 = await vsky(['volume', 'attach', 'f', '--head', 'head2'], m);
    expect(attach2.exitCode).toBe(0);
    const uri2 = String(attach2.stdout).split('\n')[0]!;
    expect((await call(client, 'ShowVolume', { name: 'f' })).info!.epoch).toBeGreaterThan(epoch1);
    client.close();
    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0xbb 0 1M', '-c', 'flush', uri2]);

    c.head.resume(); // head1 wakes up still believing it holds the volume
    const stale = await tryRun('qemu-io', ['-f', 'raw', '-c', 'write -P 0xcc 0 1M', '-c', 'flush', uri1]);
    // Safe either way: fenced by the nodes (write error) or the late forced detach reached it (no export).
    expect(stale.exitCode !== 0 || /error|failed/i.test(String(stale.stdout)), `stale writer output: ${stale.stdout} ${stale.stderr}`).toBe(true);
    const check = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0xbb 0 1M', uri2]);
    expect(String(check.stdout)).not.toMatch(/verification failed/);
    expect(c.head.running).toBe(true); // refused, not crashed

    // Whatever head1 did on waking (the forced detach may still reach it), a
    // writer holding the old epoch is refused by every replica node.
    const client2 = c.client();
    const map = (await call(client2, 'ShowVolume', { name: 'f' })).map!;
    client2.close();
    for (const r of map.segments[0]!.replicas) {
      const conn = new NodeConnection(r.dataAddress);
      try {
        const replica = new Replica(conn, { volumeId: map.volumeId, volumeName: 'f', segment: 0, slot: r.slot, state: 'in_sync', serverId: r.serverId, diskId: r.diskId });
        await expect(replica.write(epoch1, 0, Buffer.alloc(4096, 0xdd), true)).rejects.toBeInstanceOf(StaleEpochError);
        const back = Buffer.alloc(4096);
        await replica.read(0, back);
        expect(back.equals(Buffer.alloc(4096, 0xbb))).toBe(true);
      } finally {
        await conn.close();
      }
    }
  });
});
