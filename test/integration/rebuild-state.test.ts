import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { MiB } from '../../shared/constants.js';
import { call, storageNodeClient } from '../../shared/grpc.js';
import { chunksOnNodes, destroyTestCluster, startTestCluster } from '../harness/cluster.js';
import { expectReplicasEqual } from '../harness/replicas.js';
import { run, tryRun } from '../harness/tools.js';
import { VerifyingWriter } from '../harness/verifier.js';
import { vsky } from '../harness/vsky.js';

// Issue 9, what a rebuild from storage must not lose besides the maps
// (docs/rebuild-from-storage.md): a running cluster of 4 nodes with a volume
// attached and written by a verifying writer (with iSCSI access rules, and a
// disk under it failed by an admin: degraded and resyncing), one detached
// and mid-drain (its disk removed by an admin), one left DIRTY by a wipe
// whose manager was killed mid-job, and one whose delete was cut short by a
// manager killed once the nodes marked it (before it was recorded), and one
// mid-create (the manager killed once every chunk was allocated, before the
// commit: every segment has all its chunks). Then the manager's database is
// deleted and the manager rebuilt from storage: the access rules are back
// (they followed the chunks onto spares and drain targets) and a real
// initiator logs in with CHAP to the re-attached volume (and is refused with
// a wrong secret), the failed disk stays failed, the drain resumes and ends,
// the DIRTY volume is DIRTY with its job, the deleted volume stays deleted
// and its chunks are freed, the interrupted create is rolled back and its
// chunks freed, and every committed volume has the same bytes in every
// replica (and the bytes written before).

const SIZE = 32 * MiB; // 2 segments of 16 MiB
const BLOCKS = SIZE / 4096;
const IQN = 'iqn.2024-01.test.vsky:vm';
const SECRET = 'secret-of-12chars';

type Client = ReturnType<LocalCluster['client']>;

async function waitFor<T>(what: string, probe: () => Promise<T | undefined | false>, timeoutMs: number): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe().catch(() => undefined);
    if (v !== undefined && v !== false) return v;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** Per storage node: the volume ids it holds chunks of, and the volume notes (access rules) it keeps. */
async function nodeNotes(c: LocalCluster): Promise<Array<{ volumes: Set<number>; notes: Map<number, string>; deleted: number[] }>> {
  const out = [];
  for (const n of c.nodes) {
    const client = storageNodeClient(String(n.ready.controlAddress), c.tls.security());
    try {
      const list = await call(client, 'ListChunks', { diskId: '' });
      out.push({
        volumes: new Set(list.chunks.map((x) => x.identity!.volumeId)),
        notes: new Map(list.volumeNotes.map((v) => [v.volumeId, v.access])),
        deleted: list.deletedVolumes,
      });
    } finally {
      client.close();
    }
  }
  return out;
}

/** Per disk id: the admin state its node keeps (GetInfo). */
async function diskNotes(c: LocalCluster): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const n of c.nodes) {
    const client = storageNodeClient(String(n.ready.controlAddress), c.tls.security());
    try {
      for (const d of (await call(client, 'GetInfo', {})).disks) out.set(d.diskId, d.note?.adminState ?? '');
    } finally {
      client.close();
    }
  }
  return out;
}

/** Every storage node and head1 active again after a manager restart (disks may be failed or draining). */
async function waitUp(c: LocalCluster): Promise<void> {
  await waitFor('the nodes and the head registered', async () => {
    const m = c.client();
    try {
      const [servers, heads] = await Promise.all([call(m, 'ListServers', {}), call(m, 'ListHeads', {})]);
      return servers.servers.filter((s) => s.state === 'active').length === c.nodes.length && heads.heads.some((h) => h.name === 'head1' && h.state === 'active');
    } finally {
      m.close();
    }
  }, 30_000);
}

describe('a rebuild from storage keeps access rules, admin state, DIRTY volumes and interrupted deletes', () => {
  let c: LocalCluster;
  beforeAll(async () => {
    c = await startTestCluster({ servers: 4, managerArgs: ['--resync-mibps', '1', '--lease-ttl', '3000'] });
  });
  afterAll(() => destroyTestCluster(c));

  it('brings every committed volume back with its rules and bytes; the interrupted operations end as they should', { timeout: 420_000 }, async () => {
    const m = c.managerAddress;
    const t0 = Date.now();
    const step = (what: string) => process.stderr.write(`[rebuild-state +${Math.round((Date.now() - t0) / 1000)}s] ${what}\n`);
    let client: Client = c.client();
    const ok = async (args: string[]) => {
      const r = await vsky(args, m);
      expect(r.exitCode, `vsky ${args.join(' ')}: ${String(r.stderr)}`).toBe(0);
      return r;
    };
    // acl: attached, access rules with CHAP, written by a verifying writer throughout.
    const aclUri = await c.ensureVolume('acl', SIZE, 3);
    await ok(['volume', 'access', 'acl', '--initiator', IQN, '--chap-user', 'alice', '--chap-secret', SECRET]);
    const writer = new VerifyingWriter({ uri: aclUri, blocks: BLOCKS, queueDepth: 4 });
    await writer.fillAll();
    writer.start();
    // dv (to be left DIRTY), dead (to be deleted), drn (to be drained): detached, written.
    for (const name of ['dv', 'dead', 'drn']) {
      const uri = await c.ensureVolume(name, SIZE, name === 'dv' ? 2 : 3);
      await run('qemu-io', ['-f', 'raw', '-c', `write -P 0x${name.charCodeAt(0).toString(16)} 0 ${SIZE}`, uri]);
      await ok(['volume', 'detach', name]);
    }
    const aclMap = (await call(client, 'ShowVolume', { name: 'acl' })).map!;
    const drnMap = (await call(client, 'ShowVolume', { name: 'drn' })).map!;
    const aclId = aclMap.volumeId;
    // An admin fails a disk under acl (degraded; its resync is throttled to 1 MiB/s).
    const failedDisk = aclMap.segments[0]!.replicas[0]!.diskId;
    const drainedDisk = drnMap.segments.flatMap((s) => s.replicas).map((r) => r.diskId).find((d) => d !== failedDisk)!;
    await ok(['disk', 'fail', failedDisk, '--reason', 'flaky cable']);
    // The rules follow acl's chunks: every node holding one (spares included) keeps them.
    const aclDisksBefore = new Set(aclMap.segments.flatMap((s) => s.replicas.map((r) => r.diskId)));
    await waitFor('a spare under acl', async () => {
      const now = (await call(client, 'ShowVolume', { name: 'acl' })).map!;
      return now.segments.flatMap((s) => s.replicas).some((r) => !aclDisksBefore.has(r.diskId));
    }, 30_000);
    await waitFor('the access rules on every node holding a chunk of acl', async () => {
      const nodes = await nodeNotes(c);
      return nodes.every((n) => !n.volumes.has(aclId) || (n.notes.get(aclId) ?? '').includes('alice'));
    }, 15_000);
    // The CHAP secret reaches the nodes sealed with the manager's --secret-key-file, never in clear.
    for (const n of await nodeNotes(c)) {
      const note = n.notes.get(aclId) ?? '';
      expect(note).not.toContain(SECRET);
      if (note) expect(note).toContain('vsky-sealed:v1:');
    }

    step('dv wipe');
    // dv: a wipe whose manager is killed between the data work and the final CAS (DIRTY on storage).
    client.close();
    c.manager.env = { VSKY_CRASH_AT: 'manager.job.worked' };
    await c.manager.restart();
    await waitUp(c);
    await vsky(['volume', 'wipe', 'dv', '--job-id', 'wipe-lost'], m);
    await c.manager.waitExit();
    // An admin removes a disk under drn (drained at 1 MiB/s); then dead's delete, whose manager is
    // killed once the nodes marked it, before it was recorded (a restart still knows dead; storage says it is going).
    c.manager.env = { VSKY_CRASH_AT: 'manager.delete.marked' };
    await c.manager.start();
    await waitUp(c);
    await ok(['disk', 'remove', drainedDisk, '--no-wait']);
    await waitFor('the nodes keep the admin\'s word on both disks', async () => {
      const notes = await diskNotes(c);
      return notes.get(failedDisk) === 'failed' && notes.get(drainedDisk) === 'draining';
    }, 15_000);
    client = c.client();
    const disks = (await call(client, 'ListDisks', {})).disks;
    client.close();
    const deleted = await vsky(['volume', 'delete', 'dead'], m);
    await c.manager.waitExit();
    // Premises: the manager died in the delete (not refused); dead's chunks are all still there, marked DELETING,
    // and every node keeps its tombstone;
    // dv's chunks say DIRTY with the wipe's record; the drain and the resync had not finished.
    expect(String(deleted.stderr)).not.toMatch(/attached|not found/);
    const deadChunks = await chunksOnNodes(c, 'dead');
    expect(deadChunks.length).toBeGreaterThanOrEqual(6); // 6, and a drain target if the drain got to it
    expect(deadChunks.every((x) => x.legality === 'DELETING')).toBe(true);
    const deadId = deadChunks[0]!.volumeId;
    expect((await nodeNotes(c)).every((n) => n.deleted.includes(deadId))).toBe(true);
    const dvChunks = await chunksOnNodes(c, 'dv');
    expect(dvChunks.some((x) => x.legality === 'DIRTY' && x.jobId === 'wipe-lost')).toBe(true);
    expect(disks.find((d) => d.diskId === drainedDisk)).toMatchObject({ draining: true, state: 'active' });
    expect(disks.find((d) => d.diskId === failedDisk)).toMatchObject({ state: 'failed' });
    step('mc create');
    // mc: a create whose manager is killed once all of its chunks are allocated, before the commit.
    c.manager.env = { VSKY_CRASH_AT: 'manager.create.committing' };
    await c.manager.start();
    await waitUp(c);
    const created = await vsky(['volume', 'create', 'mc', '--size', String(SIZE), '--replicas', '3', '--thick'], m);
    await c.manager.waitExit();
    expect(created.exitCode).not.toBe(0);
    // Premise: every segment of mc has all its chunks (the old "never used and incomplete" rule would keep it), all CREATING.
    const mcChunks = await chunksOnNodes(c, 'mc');
    expect(mcChunks.map((x) => `${x.segment}/${x.slot}`).sort()).toEqual(['0/0', '0/1', '0/2', '1/0', '1/1', '1/2']);
    expect(mcChunks.every((x) => x.legality === 'CREATING' && x.epoch === 0)).toBe(true);
    // The normal restart in between kept dead (not recorded as deleted): its chunks are still there.
    expect((await chunksOnNodes(c, 'dead')).length).toBeGreaterThanOrEqual(6);
    // And no committed volume's chunk carries the mark (their creates were confirmed).
    expect((await chunksOnNodes(c)).filter((x) => x.volumeName !== 'mc' && x.legality === 'CREATING')).toEqual([]);

    step('rebuild');
    // The manager host is reinstalled: its database is gone.
    c.manager.env = {};
    rmSync(join(c.opts.dir, 'manager'), { recursive: true, force: true });
    c.manager.args.push('--rebuild-from-storage', '--rebuild-servers', String(c.nodes.length), '--rebuild-wait', '20000');
    await c.manager.start(60_000);
    client = c.client();
    try {
      const { volumes } = await call(client, 'ListVolumes', {});
      expect(volumes.map((v) => [v.name, v.size]).sort()).toEqual([['acl', SIZE], ['drn', SIZE], ['dv', SIZE]]);
      // Access rules: back, as `vsky volume show --json` shows them.
      const shown = JSON.parse(String((await ok(['volume', 'show', 'acl', '--json'])).stdout)) as { info: { iscsiInitiators: string[]; iscsiChap: boolean } };
      expect(shown.info).toMatchObject({ iscsiInitiators: [IQN], iscsiChap: true });
      // DIRTY with its job (reconnaissance decides the job that was running; the volume stays DIRTY).
      const dv = (await call(client, 'ShowVolume', { name: 'dv' })).info!;
      expect(dv.legality).toBe('DIRTY');
      const job = await waitFor('the wipe decided', async () => {
        const j = await call(client, 'GetJob', { jobId: 'wipe-lost' });
        return j.state !== 'running' && j.state !== 'pending' ? j : undefined;
      }, 60_000);
      expect(job).toMatchObject({ kind: 'wipe', volume: 'dv' });
      expect(['fenced', 'failed']).toContain(job.state);
      expect((await call(client, 'ShowVolume', { name: 'dv' })).info!.legality).toBe('DIRTY');
      const refused = await vsky(['volume', 'attach', 'dv', '--head', 'head1'], m);
      expect(String(refused.stderr)).toMatch(/DIRTY/);
      step('admin state');
      // Admin state: the failed disk stays failed through heartbeats; the drain resumes and ends.
      await new Promise((r) => setTimeout(r, 1500));
      const after = (await call(client, 'ListDisks', {})).disks;
      expect(after.find((d) => d.diskId === failedDisk)).toMatchObject({ state: 'failed', stateReason: expect.stringMatching(/flaky cable/) });
      expect(after.find((d) => d.diskId === drainedDisk)).toMatchObject({ draining: true });
      // The interrupted delete is finished: dead is not back, its chunks are freed. So is the interrupted create.
      await waitFor('dead\'s chunks freed', async () => (await chunksOnNodes(c, 'dead')).length === 0, 60_000);
      await waitFor('mc\'s chunks freed', async () => (await chunksOnNodes(c, 'mc')).length === 0, 60_000);
      expect((await call(client, 'ListVolumes', {})).volumes.map((v) => v.name)).not.toContain('mc');
      step('drain');
      await waitFor('the drain to end', async () => {
        const d = (await call(client, 'ListDisks', {})).disks.find((x) => x.diskId === drainedDisk);
        return d?.state === 'removed';
      }, 180_000);
      step('heal');
      await waitFor('acl healed', async () => {
        const info = (await call(client, 'ShowVolume', { name: 'acl' })).info!;
        return !info.degraded && info.resyncs === 0;
      }, 180_000);
    } finally {
      client.close();
    }
    step('writer stop');
    await writer.stop();
    expect(writer.stats.violations).toEqual([]);
    expect(writer.stats.writesAcked).toBeGreaterThan(0);
    expect(await writer.verifyAll()).toEqual([]);
    writer.close();
    await expectReplicasEqual(c, 'acl');
    await expectReplicasEqual(c, 'drn');
    await expectReplicasEqual(c, 'dv', 2);
    step('drn bytes');
    // drn holds the bytes written before the database was lost.
    const drnUri = await c.ensureVolume('drn', SIZE, 3);
    const check = await run('qemu-io', ['-f', 'raw', '-c', `read -P 0x${'d'.charCodeAt(0).toString(16)} 0 ${SIZE}`, drnUri]);
    expect(String(check.stdout)).not.toMatch(/verification failed|error/i);
    await ok(['volume', 'detach', 'drn']);
    step('chap');
    // CHAP through a real initiator, with the rules the rebuilt manager read from storage: acl attached again
    // (the head gets them from the rebuilt manager), the right secret logs in, a wrong one is refused.
    await ok(['volume', 'detach', 'acl']);
    const { iscsi } = await c.ensureVolumeUrls('acl', SIZE, 3);
    expect(iscsi).toMatch(/^iscsi:\/\//);
    const withCreds = (secret: string) => iscsi.replace('iscsi://', `iscsi://alice%${secret}@`);
    const right = await run('iscsi-inq', ['-i', IQN, withCreds(SECRET)]);
    expect(String(right.stdout)).toMatch(/VASTSKY/);
    const wrong = await tryRun('iscsi-inq', ['-i', IQN, withCreds('wrong-secret-of-12')]);
    expect(wrong.exitCode).not.toBe(0);
    const noCreds = await tryRun('iscsi-inq', ['-i', IQN, iscsi]);
    expect(noCreds.exitCode).not.toBe(0);
    // The rules followed acl onto its new chunks too: a second rebuild would find them on every node holding one.
    const nodes = await nodeNotes(c);
    expect(nodes.every((n) => !n.volumes.has(aclId) || (n.notes.get(aclId) ?? '').includes('alice'))).toBe(true);
  });
});
