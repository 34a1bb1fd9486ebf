import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DaemonProcess } from '../../deploy/daemon-process.js';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { call } from '../../shared/grpc.js';
import { destroyTestCluster, startExtraHead, startTestCluster } from '../harness/cluster.js';
import { daemonLog, everyReplica } from '../harness/leases.js';
import { NbdClient } from '../harness/nbd-client.js';
import { run, tryRun } from '../harness/tools.js';
import { vsky } from '../harness/vsky.js';

// Rule 3, one writer: a second head cannot take a volume whose holder still
// renews its write lease (docs/leases.md). A head that hangs (SIGSTOP) while
// holding a volume is force-detached; a second head attaches with a higher
// epoch and fences every replica node. When the first head wakes up its writes
// are refused (a write it took while hung usually reaches the nodes under the
// old epoch and gets STALE_EPOCH; else the forced detach dropped the export
// first: the test logs which), every replica node answers a raw WRITE with the
// old epoch with STALE_EPOCH, and the data stays what the new holder wrote.

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

  it('the hung holder is fenced off once another head takes the volume: its late write is refused by the nodes', async () => {
    const m = c.managerAddress;
    const client = c.client();
    const uri1 = (await call(client, 'ShowVolume', { name: 'f' })).info!.nbdUri;
    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0xaa 0 1M', uri1]);

    // The stale writer: a client of head1 whose write is sent while head1 hangs, before the
    // take-over. Its bytes wait in head1's socket, ahead of anything the manager sends head1
    // later (the forced detach), so on waking head1 reads it first and sends it to the nodes
    // under its old epoch. One 4 KiB block, so one read takes the whole request, into a region
    // this client has just written (its write-intent bit is set: no MARK_DIRTY round trip first).
    const heldEpoch = (await call(client, 'ShowVolume', { name: 'f' })).info!.epoch;
    const nbd1 = await NbdClient.connect(uri1);
    await nbd1.write(0, Buffer.alloc(4096, 0xaa), true);
    c.head.pause(); // head1 hangs with the volume attached
    const staleWrite = nbd1.write(0, Buffer.alloc(4096, 0xcc), true).then(() => 'acknowledged', (err: unknown) => err);
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
    const epoch2 = (await call(client, 'ShowVolume', { name: 'f' })).info!.epoch;
    expect(epoch2).toBeGreaterThan(epoch1);
    client.close();
    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0xbb 0 1M', '-c', 'flush', uri2]);

    c.head.resume(); // head1 wakes up still believing it holds the volume
    const outcome = await staleWrite;
    nbd1.close();
    expect(outcome, 'the stale write was acknowledged').toBeInstanceOf(Error);
    // Which check refused it: usually head1 reads the write first and the nodes answer
    // STALE_EPOCH (head1 logs its fence); if its heartbeat's revocation or the forced detach is
    // read first, it fenced itself or the export is gone.
    await waitUntil(() => refusalOnHead1(daemonLog(c, 'head')) !== undefined, 10_000, 'head1 logging why it refused the stale write');
    const how = refusalOnHead1(daemonLog(c, 'head'))!;
    const why = { nodes: 'STALE_EPOCH from the storage nodes', revoked: 'its lease revoked by the manager first', detached: 'export dropped by the forced detach first' };
    console.log(`stale write on head1: refused (${why[how]})`);
    const stale = await tryRun('qemu-io', ['-f', 'raw', '-c', 'write -P 0xcc 0 1M', '-c', 'flush', uri1]);
    expect(stale.exitCode !== 0 || /error|failed/i.test(String(stale.stdout)), `stale writer output: ${stale.stdout} ${stale.stderr}`).toBe(true);
    expect(c.head.running).toBe(true); // refused, not crashed

    // Whichever came first on head1, the nodes' epoch check is what stops the old holder: a
    // data-protocol WRITE carrying head1's epoch, sent straight to each replica node (no head
    // involved), gets STALE_EPOCH from every one and changes nothing.
    expect(heldEpoch).toBeLessThan(epoch2);
    const refused = await everyReplica(c, 'f', 0, { op: 'write', epoch: heldEpoch, offset: 0, data: Buffer.alloc(4096, 0xdd) });
    expect(refused.map((r) => r.status)).toEqual(['STALE_EPOCH', 'STALE_EPOCH', 'STALE_EPOCH']);
    for (const r of refused) expect(r.message).toMatch(new RegExp(`epoch ${heldEpoch} is below volume \\d+'s epoch ${epoch2}`));
    for (const r of await everyReplica(c, 'f', 0, { op: 'read', offset: 0, length: 4096 })) {
      expect(r.status).toBe('OK');
      expect(r.data.equals(Buffer.alloc(4096, 0xbb)), `slot ${r.slot} holds the new holder's data`).toBe(true);
    }
    const check = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0xbb 0 1M', uri2]);
    expect(String(check.stdout)).not.toMatch(/verification failed/);
  });
});

/**
 * Why head1 refused the stale write, from its log: 'nodes' when a storage node's STALE_EPOCH
 * reply fenced the volume (head-agent/engine/mirror.ts), 'revoked' when head1's first heartbeat
 * after waking was answered with the revocation of its lease (it fenced itself before sending),
 * 'detached' when the export was gone first.
 */
function refusalOnHead1(log: string): 'nodes' | 'revoked' | 'detached' | undefined {
  const lines = log.split('\n');
  // The nodes refused the write itself, or the write-intent MARK_DIRTY before it (when the
  // write-intent sweep had cleared the region's bit while head1 hung).
  const byNodes = (l: string) => l.includes("this head's lease epoch is stale") || /failed with STALE_EPOCH/.test(l);
  if (lines.some((l) => l.includes('"msg":"volume fenced') && byNodes(l))) return 'nodes';
  if (lines.some((l) => l.includes('"msg":"volume fenced') && l.includes('the manager revoked our lease'))) return 'revoked';
  if (lines.some((l) => l.includes('"msg":"NBD request failed') && l.includes('is detached from this head'))) return 'detached';
  return undefined;
}

async function waitUntil(cond: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
