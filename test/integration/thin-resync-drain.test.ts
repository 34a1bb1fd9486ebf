import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { MiB } from '../../shared/constants.js';
import { call } from '../../shared/grpc.js';
import { destroyTestCluster, startTestCluster } from '../harness/cluster.js';
import { expectReplicasEqual } from '../harness/replicas.js';
import { tryRun } from '../harness/tools.js';
import { vsky } from '../harness/vsky.js';

// A thin volume's first write into a new segment while another segment of the
// same volume is being resynced (a disk failed), and while one is being
// drained (a disk removed): the write is acknowledged, nothing written is
// lost, and redundancy comes back (every replica of every segment equal).
// Resyncs and drains are throttled (--resync-mibps 2) so that the first
// writes really land while they run (asserted before and after each write).

const SEG = 16 * MiB;

describe('segment allocation during a resync and during a drain of the same thin volume', () => {
  let c: LocalCluster;
  let uri = '';
  const m = () => c.managerAddress;
  const info = async () => {
    const client = c.client();
    try {
      return await call(client, 'ShowVolume', { name: 'tv' });
    } finally {
      client.close();
    }
  };
  const until = async (what: string, f: () => Promise<boolean>, ms = 120_000) => {
    const end = Date.now() + ms;
    while (!(await f())) {
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  };
  const io = async (...cmds: string[]) => {
    const r = await tryRun('qemu-io', ['-f', 'raw', ...cmds.flatMap((x) => ['-c', x]), uri], 120_000);
    expect(r.exitCode, String(r.stdout) + String(r.stderr)).toBe(0);
    expect(String(r.stdout)).not.toMatch(/verification failed|error/i);
  };
  const diskState = async (diskId: string) => {
    const r = await vsky(['disk', 'list', '--json'], m());
    const d = (JSON.parse(String(r.stdout)) as { diskId: string; state: string; draining?: boolean }[]).find((x) => x.diskId === diskId);
    return d?.draining && d.state !== 'removed' ? 'draining' : d?.state;
  };

  beforeAll(async () => {
    c = await startTestCluster({ servers: 4, managerArgs: ['--resync-mibps', '2'] });
    expect((await vsky(['volume', 'create', 'tv', '--size', String(4 * SEG), '--replicas', '2'], m())).exitCode).toBe(0);
    const r = await vsky(['volume', 'attach', 'tv'], m());
    expect(r.exitCode, String(r.stderr)).toBe(0);
    uri = String(r.stdout).split('\n')[0]!;
    await io('write -P 0x11 0 8M');
  }, 120_000);
  afterAll(() => destroyTestCluster(c));

  it('during a resync: a first write allocates, the resync ends, every replica equal', async () => {
    const failed = (await info()).map!.segments[0]!.replicas[0]!.diskId;
    expect((await vsky(['disk', 'fail', failed], m())).exitCode).toBe(0);
    await until('the resync of segment 0 to start', async () => (await info()).info!.resyncs > 0);
    await io(`write -P 0x22 ${SEG} 4M`); // segment 1: its first write
    const during = await info();
    expect(during.info!.resyncs).toBeGreaterThan(0); // premise: still resyncing after the allocation
    expect(during.map!.segments[1]!.replicas.map((x) => x.state)).toEqual(['in_sync', 'in_sync']);
    expect(during.map!.segments[1]!.replicas.every((x) => x.diskId !== failed)).toBe(true);
    await until('redundancy back', async () => {
      const i = (await info()).info!;
      return !i.degraded && i.resyncs === 0;
    });
    await io('read -P 0x11 0 8M', `read -P 0x22 ${SEG} 4M`, `read -P 0 ${8 * MiB} 8M`);
    await expectReplicasEqual(c, 'tv', 2);
  }, 300_000);

  it('during a drain: a first write allocates (not on the draining disk), the drain ends, every replica equal', async () => {
    const victim = (await info()).map!.segments[0]!.replicas.find((x) => x.state === 'in_sync')!.diskId;
    expect((await vsky(['disk', 'remove', victim, '--no-wait'], m())).exitCode).toBe(0);
    await until('the drain to start', async () => (await diskState(victim)) === 'draining');
    await io(`write -P 0x33 ${2 * SEG} 4M`); // segment 2: its first write
    expect(await diskState(victim)).toBe('draining'); // premise: the allocation happened mid-drain
    const during = await info();
    expect(during.map!.segments[2]!.replicas.every((x) => x.diskId !== victim && x.state === 'in_sync')).toBe(true);
    await until('the drain to end', async () => (await diskState(victim)) === 'removed');
    await until('redundancy back', async () => {
      const i = (await info()).info!;
      return !i.degraded && i.resyncs === 0;
    });
    await io('read -P 0x11 0 8M', `read -P 0x22 ${SEG} 4M`, `read -P 0x33 ${2 * SEG} 4M`, `read -P 0 ${3 * SEG} ${SEG}`);
    const after = await info();
    expect(after.map!.segments.flatMap((s) => s.replicas).every((x) => x.diskId !== victim)).toBe(true);
    await expectReplicasEqual(c, 'tv', 2);
  }, 300_000);
});
