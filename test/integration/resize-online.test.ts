import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { MiB } from '../../shared/constants.js';
import { call, storageNodeClient } from '../../shared/grpc.js';
import { destroyTestCluster, startTestCluster, chunksOnNodes } from '../harness/cluster.js';
import { Cdb, IscsiSession } from '../harness/iscsi-session.js';
import { NbdClient, NbdError } from '../harness/nbd-client.js';
import { randomFile, run } from '../harness/tools.js';
import { VerifyingWriter } from '../harness/verifier.js';
import { vsky, vskyJson } from '../harness/vsky.js';

// Online resize (docs/jobs.md) with real processes: a volume attached to
// head1 (head2 its live-migration standby) grows while a verifying writer
// keeps 4 KiB writes in flight over NBD. The lease stays with head1 (same
// epoch), no acknowledged write is lost, the data written before is intact,
// a new NBD connection (nbdinfo) sees the new size and qemu-io writes and
// reads the new space, an NBD connection opened before keeps the old size,
// and an iSCSI session logged in before gets CAPACITY DATA HAS CHANGED
// (06/2A/09) once on its next command, then READ CAPACITY(16) says the new
// size; libiscsi's iscsi-readcapacity16 on a new session agrees. Failures
// midway (a node refuses an allocation, the holder refuses the map; injected
// with VSKY_FAIL_AT) roll back: old size and map, no chunk leaked. Shrink,
// the same size and an unknown volume are errors that change nothing.

interface Job { jobId: string; state: string; error: string; expectedGeneration: number; epoch: number }
interface Info { volumeId: number; size: number; segmentCount: number; generation: number; epoch: number; attachedHead: string; standbyHead: string; lease: string }
interface Show { info: Info; map: { segments: Array<{ index: number; replicas: Array<{ diskId: string; chunkIndex: number }> }> } }

const INITIATOR = 'iqn.2026-11.test.vsky:resize';
const SIZE = 32 * MiB;
const GROWN = 64 * MiB;

describe('online resize of an attached volume (real processes)', () => {
  let c: LocalCluster;
  let work: string;

  beforeAll(async () => {
    c = await startTestCluster({
      heads: 2,
      env: {
        // The 4th chunk allocation of volume "rb" on node1 fails (2 by its create, the 2nd of its resize);
        // head1 refuses the first grown map of "rh".
        node1: { VSKY_FAIL_AT: 'storage-node.allocate@rb:4' },
        head: { VSKY_FAIL_AT: 'head.grow@rh:1' },
      },
    });
    work = mkdtempSync(join(tmpdir(), 'vsky-resize-online-'));
  }, 120_000);
  afterAll(async () => {
    await destroyTestCluster(c);
    rmSync(work, { recursive: true, force: true });
  });

  const show = (name: string) => vskyJson<Show>(['volume', 'show', name], c.managerAddress);
  const waitJob = async (id: string): Promise<Job> => {
    for (let i = 0; i < 300; i++) {
      const j = await vskyJson<Job>(['job', 'show', id], c.managerAddress);
      if (!['pending', 'running', 'aborting'].includes(j.state)) return j;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`job ${id} did not end in 30 s`);
  };
  const resize = async (name: string, size: number, jobId: string): Promise<Job> => {
    await vskyJson(['volume', 'resize', name, '--size', String(size), '--job-id', jobId], c.managerAddress);
    return waitJob(jobId);
  };
  const volumeChunks = (volume: string) => chunksOnNodes(c, volume);
  /** Chunks in use, as the manager counts them and as the nodes hold them. */
  const usage = async () => {
    const disks = await vskyJson<Array<{ usedChunks: number }>>(['disk', 'list'], c.managerAddress);
    let onNodes = 0;
    for (const n of c.nodes) {
      const client = storageNodeClient(String(n.ready.controlAddress), c.tls.security());
      try {
        onNodes += (await call(client, 'ListChunks', { diskId: '' })).chunks.filter((x) => x.identity?.volumeId).length;
      } finally {
        client.close();
      }
    }
    return { manager: disks.reduce((s, d) => s + d.usedChunks, 0), onNodes };
  };
  const waitUsage = async (want: { manager: number; onNodes: number }) => {
    let now = await usage();
    for (let i = 0; i < 100 && (now.manager !== want.manager || now.onNodes !== want.onNodes); i++) {
      await new Promise((r) => setTimeout(r, 200));
      now = await usage();
    }
    return now;
  };

  it('grows an attached volume under a running writer: same lease, new size for new NBD clients, UA for the iSCSI session', async () => {
    const { nbd, iscsi } = await c.ensureVolumeUrls('ov', SIZE, 3, 'head1');
    const standby = await vsky(['volume', 'attach', 'ov', '--head', 'head2', '--migrate'], c.managerAddress);
    expect(standby.exitCode, String(standby.stderr)).toBe(0);
    const standbyNbd = String(standby.stdout).split('\n')[0]!;
    // Data before: random bytes in [16M, 32M); the writer owns [0, 16M).
    const src = join(work, 'src.img');
    randomFile(src, 16 * MiB);
    const original = readFileSync(src);
    const loader = await NbdClient.connect(nbd);
    for (let off = 0; off < original.length; off += MiB) await loader.write(16 * MiB + off, original.subarray(off, off + MiB));
    await loader.flush();
    loader.close();
    const before = await show('ov');
    expect(before.info).toMatchObject({ size: SIZE, segmentCount: 2, attachedHead: 'head1', standbyHead: 'head2' });
    // Clients connected before the resize.
    const portal = new URL(iscsi).host;
    const iqn = new URL(iscsi).pathname.split('/')[1]!;
    const s1 = await IscsiSession.open(portal, iqn, INITIATOR);
    const s2 = await IscsiSession.open(portal, iqn, `${INITIATOR}-2`);
    for (const s of [s1, s2]) expect((await s.command(Cdb.testUnitReady())).sense).toEqual([0x06, 0x29, 0x00]); // power-on, consumed
    const blocks16 = async (s: IscsiSession) => {
      const r = await s.command(Cdb.readCapacity16(), { readLength: 32 });
      expect(r.status, `sense ${String(r.sense)}`).toBe(0);
      return Number(r.data.readBigUInt64BE(0)) + 1;
    };
    expect(await blocks16(s1)).toBe(SIZE / 512);
    const oldNbd = await NbdClient.connect(nbd);
    expect(oldNbd.size).toBe(SIZE);
    const writer = new VerifyingWriter({ uri: nbd, blocks: (16 * MiB) / 4096, queueDepth: 8 });
    writer.start();
    await new Promise((r) => setTimeout(r, 1000));
    // Baseline: the longest gap between acknowledgements over 3 s without a resize (the machine's noise).
    writer.resetStall();
    await new Promise((r) => setTimeout(r, 3000));
    const baselineStallMs = writer.stats.maxStallMs;
    const ackedBefore = writer.stats.writesAcked;
    writer.resetStall();
    const job = await resize('ov', GROWN, 'grow-online');
    await new Promise((r) => setTimeout(r, 1000));
    await writer.stop();
    expect(job, job.error).toMatchObject({ state: 'succeeded', expectedGeneration: before.info.generation, epoch: before.info.epoch });
    const timing = job as Job & { startedMs: number; endedMs: number };
    console.info(`online resize 32M -> 64M: job ${timing.endedMs - timing.startedMs} ms, writer's longest gap between acknowledgements ${writer.stats.maxStallMs} ms (3 s without a resize: ${baselineStallMs} ms), ${writer.stats.writesAcked} writes acknowledged`);
    // The writer kept going through the resize and lost nothing.
    expect(writer.stats.writesAcked).toBeGreaterThan(ackedBefore);
    expect(writer.stats.writeErrors).toBe(0);
    expect(writer.stats.violations).toEqual([]);
    expect(await writer.verifyAll()).toEqual([]);
    writer.close();
    // Same holder, same epoch (the lease was never taken), g+1, the new shape on every chunk.
    const after = await show('ov');
    expect(after.info).toMatchObject({ size: GROWN, segmentCount: 4, generation: before.info.generation + 1, epoch: before.info.epoch, attachedHead: 'head1', standbyHead: 'head2', lease: 'held' });
    const ids = await volumeChunks('ov');
    expect(ids).toHaveLength(4 * 3);
    for (const id of ids) expect(id).toMatchObject({ volumeSize: GROWN, segmentCount: 4, generation: before.info.generation + 1, legality: 'LEGAL', jobId: 'grow-online', jobKind: 'resize', jobOutcome: 'succeeded' });
    // New NBD connections, on the holder and on the standby, see the new size.
    expect(Number(String((await run('nbdinfo', ['--size', nbd])).stdout).trim())).toBe(GROWN);
    expect(Number(String((await run('nbdinfo', ['--size', standbyNbd])).stdout).trim())).toBe(GROWN);
    // The connection opened before keeps the size it was told (NBD cannot announce a resize).
    await expect(oldNbd.read(40 * MiB, 4096)).rejects.toBeInstanceOf(NbdError);
    expect((await oldNbd.read(SIZE - 4096, 4096)).length).toBe(4096);
    // The new space reads zeros and takes writes at its very end; the data written before is intact.
    const q = await run('qemu-io', ['-f', 'raw', '-c', `read -P 0 ${SIZE} 1M`, '-c', `write -P 0x6b ${GROWN - MiB} 1M`, '-c', `read -P 0x6b ${GROWN - MiB} 1M`, nbd]);
    expect(String(q.stdout) + String(q.stderr)).not.toMatch(/verification failed|error/i);
    const out = join(work, 'out.img');
    await run('nbdcopy', [nbd, out]);
    const back = readFileSync(out);
    expect(back.length).toBe(GROWN);
    expect(back.subarray(16 * MiB, 32 * MiB).equals(original)).toBe(true);
    expect(back.subarray(GROWN - MiB).every((b) => b === 0x6b)).toBe(true);
    // iSCSI: each session logged in before gets CAPACITY DATA HAS CHANGED once, on its next command, then the new size.
    const ua = await s1.command(Cdb.read10(0, 1), { readLength: 512 });
    expect([ua.status, ua.sense]).toEqual([2, [0x06, 0x2a, 0x09]]);
    expect(await blocks16(s1)).toBe(GROWN / 512);
    const tail = await s1.command(Cdb.read10(GROWN / 512 - 1, 1), { readLength: 512 });
    expect(tail.status).toBe(0);
    expect(tail.data.every((b) => b === 0x6b)).toBe(true);
    expect((await s2.command(Cdb.readCapacity10(), { readLength: 8 })).sense).toEqual([0x06, 0x2a, 0x09]);
    const rc10 = await s2.command(Cdb.readCapacity10(), { readLength: 8 });
    expect([rc10.status, rc10.data.readUInt32BE(0) + 1]).toEqual([0, GROWN / 512]);
    await s1.logout();
    await s2.logout();
    // A real initiator on a new session.
    expect(String((await run('iscsi-readcapacity16', ['-i', INITIATOR, iscsi])).stdout)).toMatch(new RegExp(`Total size:${GROWN}\\b`));
    oldNbd.close();
  }, 180_000);

  it('bad input: shrink, the same size, an unknown volume are errors that change nothing', async () => {
    const before = await show('ov');
    const small = await vsky(['volume', 'resize', 'ov', '--size', '32M'], c.managerAddress);
    expect(small.exitCode).not.toBe(0);
    expect(String(small.stderr)).toMatch(/32.0 MiB is smaller than its 64.0 MiB: volumes only grow; nothing changed/);
    const same = await vsky(['volume', 'resize', 'ov', '--size', '64M'], c.managerAddress);
    expect(same.exitCode).not.toBe(0);
    expect(String(same.stderr)).toMatch(/already 64.0 MiB; nothing changed/);
    const unknown = await vsky(['volume', 'resize', 'no-such-volume', '--size', '64M'], c.managerAddress);
    expect(unknown.exitCode).not.toBe(0);
    expect(String(unknown.stderr)).toMatch(/no volume "no-such-volume"/);
    const { leaseRenewedMsAgo: _a, ...was } = before.info as Info & { leaseRenewedMsAgo: number };
    const { leaseRenewedMsAgo: _b, ...now } = (await show('ov')).info as Info & { leaseRenewedMsAgo: number };
    expect(now).toEqual(was);
    // No job was recorded for any of them.
    expect((await vskyJson<Job[]>(['job', 'list', '--volume', 'ov'], c.managerAddress)).map((j) => j.jobId)).toEqual(['grow-online']);
  });

  it('a node refusing an allocation midway: the job fails, the size and map stay, no chunk leaks', async () => {
    await c.ensureVolumeUrls('rb', SIZE, 3, 'head1');
    const before = await show('rb');
    const used = await usage();
    const job = await resize('rb', GROWN, 'grow-rb');
    expect(job.state).toBe('failed');
    // The premise: the refusal came from the injected fault on node1, and other chunks had been allocated meanwhile.
    expect(job.error).toMatch(/allocating a new chunk failed: .*VSKY_FAIL_AT: injected failure at storage-node\.allocate@rb.*the new chunks are freed, the size is unchanged/);
    const after = await show('rb');
    expect(after.info).toMatchObject({ size: SIZE, segmentCount: 2, generation: before.info.generation, epoch: before.info.epoch, attachedHead: 'head1' });
    expect(after.map).toEqual(before.map);
    expect(await waitUsage(used)).toEqual(used);
    expect(await volumeChunks('rb')).toHaveLength(2 * 3);
    // ... and chunks of the resize had been allocated before the refusal: they were freed on their nodes.
    const freed = c.nodes.map((n) => readFileSync(join(c.opts.dir, 'logs', `${n.name}.log`), 'utf8').split('\n')
      .filter((l) => l.includes('"msg":"chunk freed"') && l.includes(`"volumeId":${before.info.volumeId},`)).length);
    expect(freed.reduce((a, b) => a + b, 0)).toBeGreaterThanOrEqual(1);
    // The holder still serves the old size.
    const { nbd } = await c.ensureVolumeUrls('rb', SIZE, 3, 'head1');
    expect(Number(String((await run('nbdinfo', ['--size', nbd])).stdout).trim())).toBe(SIZE);
    // A retry (the fault fires once) succeeds.
    expect(await resize('rb', GROWN, 'grow-rb-2')).toMatchObject({ state: 'succeeded' });
  }, 120_000);

  it('the holder refusing the grown map: the job fails, the size and map are reverted, the new chunks freed', async () => {
    const { nbd } = await c.ensureVolumeUrls('rh', SIZE, 3, 'head1');
    const before = await show('rh');
    const used = await usage();
    const job = await resize('rh', GROWN, 'grow-rh');
    expect(job.state).toBe('failed');
    expect(job.error).toMatch(/head head1 refused the grown map \(.*VSKY_FAIL_AT: injected failure at head\.grow@rh.*\); the new chunks are freed, the size stays 32.0 MiB/);
    const after = await show('rh');
    expect(after.info).toMatchObject({ size: SIZE, segmentCount: 2, generation: before.info.generation, epoch: before.info.epoch, attachedHead: 'head1' });
    expect(after.map).toEqual(before.map);
    expect(await waitUsage(used)).toEqual(used);
    expect(await volumeChunks('rh')).toHaveLength(2 * 3);
    expect(Number(String((await run('nbdinfo', ['--size', nbd])).stdout).trim())).toBe(SIZE);
    const q = await run('qemu-io', ['-f', 'raw', '-c', `write -P 0x11 ${SIZE - MiB} 1M`, '-c', `read -P 0x11 ${SIZE - MiB} 1M`, nbd]);
    expect(String(q.stdout) + String(q.stderr)).not.toMatch(/verification failed|error/i);
  }, 120_000);
});
