import { describe, expect, it } from 'vitest';
import { Fixture, NOW, built, forEachReplica, key, replicaLocation, setMove } from '../harness/rebuild-fixture.js';

// What a rebuild from storage restores besides the maps (manager/rebuild/
// volume-state.ts and plan.ts rules 1, 3, 6, 7): deletes that began, DIRTY
// volumes and their last job, access rules and disks' admin state from the
// notes the nodes keep, and the note (not the generation) deciding staleness.

const { accessToStorage } = await import('../../manager/storage-notes.js');

const ACCESS = { initiators: ['iqn.2024-01.test:vm'], chapUser: 'alice', chapSecret: 'secret-of-12chars', mutualUser: '', mutualSecret: '' };

describe('planRebuild: state kept on storage', () => {
  it('never frees an in-sync chunk of a detached volume whose drain ran: the note decides, not the generation', () => {
    // A drain of position 1 of segment 0 onto another disk of the SAME node: the
    // node fenced its chunks of the volume with a newer generation for the copy,
    // so slot 0's chunk elsewhere is now the only one at the older generation.
    const fx = new Fixture(3, 2);
    const v = fx.volume(4, 'moving', 1, 2, { epoch: 3, generation: 5, mapVersion: 7 });
    const src = replicaLocation(v.map, 1);
    const sameNode = src.diskId.replace(/d\d$/, (m) => (m === 'd0' ? 'd1' : 'd0'));
    setMove(v.map, 1, { diskId: sameNode, chunkIndex: 30, idSlot: 2 });
    fx.store(v);
    const other = replicaLocation(v.map, 0);
    fx.find(src.diskId, src.chunkIndex).generation = 6;
    fx.find(sameNode, 30).generation = 6;
    // Premise: the note says slot 2 (the drain target) is not in sync; slot 0 alone has the older generation.
    expect(fx.find(other.diskId, other.chunkIndex)).toMatchObject({ generation: 5, staleSlots: 1 << 2, mapVersion: 7 });
    expect(other.diskId.slice(0, 2)).not.toBe(src.diskId.slice(0, 2));

    const plan = fx.plan();
    const { map } = built(plan, 4);
    expect(map.stale).toBeUndefined();
    const kept = new Set<string>();
    forEachReplica(map, (r) => kept.add(key(r.diskId, r.chunkIndex)));
    expect(kept).toEqual(new Set([key(other.diskId, other.chunkIndex), key(src.diskId, src.chunkIndex)]));
    expect(plan.toFree.map((t) => key(t.diskId, t.chunkIndex))).toEqual([key(sameNode, 30)]);
  });

  it('a volume whose chunks carry the read-only mark comes back a snapshot even without a note; others stay volumes', () => {
    const fx = new Fixture(3, 1);
    const snap = fx.volume(5, 'snap', 2, 2, { epoch: 3 });
    const plain = fx.volume(6, 'plain', 1, 2, { epoch: 1 });
    fx.store(snap);
    fx.store(plain);
    forEachReplica(snap.map, (r) => { fx.find(r.diskId, r.chunkIndex).readOnly = true; });
    const plan = fx.plan();
    expect(plan.volumes.find((e) => e.volume.name === 'snap')?.volume.kind).toBe('snapshot');
    expect(plan.volumes.find((e) => e.volume.name === 'plain')?.volume.kind).toBeUndefined();
  });

  it('finishes a delete that began (chunks marked DELETING on one node), even of a complete volume', () => {
    const fx = new Fixture(3, 1);
    const gone = fx.volume(3, 'gone', 2, 3, { epoch: 2 });
    const kept = fx.volume(4, 'kept', 1, 3, { epoch: 1 });
    fx.store(gone);
    fx.store(kept);
    const marked = replicaLocation(gone.map, 4);
    fx.find(marked.diskId, marked.chunkIndex).legality = 'DELETING';

    const plan = fx.plan();
    expect(plan.volumes.map((e) => e.volume.name)).toEqual(['kept']);
    expect(plan.toFree.filter((t) => t.volumeId === 3)).toHaveLength(6);
    expect(plan.toFree.every((t) => t.volumeId === 3 && t.reason === 'interrupted delete')).toBe(true);
    expect(plan.report.rolledBack).toEqual([expect.objectContaining({ volumeId: 3, name: 'gone', reason: expect.stringMatching(/DELETING/) })]);
    expect(plan.nextVolumeId).toBe(5);
  });

  it('brings a DIRTY volume back DIRTY with its job record; a succeeded job comes back succeeded', () => {
    const fx = new Fixture(3, 1);
    const dirty = fx.volume(5, 'dirty', 1, 3, { epoch: 4, generation: 7 });
    const clean = fx.volume(6, 'clean', 1, 2, { epoch: 2, generation: 3 });
    fx.store(dirty);
    fx.store(clean);
    // The wipe's DIRTY CAS reached two of three nodes before the manager's database was lost.
    for (const r of [0, 1]) {
      const at = replicaLocation(dirty.map, r);
      Object.assign(fx.find(at.diskId, at.chunkIndex), { legality: 'DIRTY', jobId: 'wipe-1', jobKind: 'wipe', jobOutcome: 'running', epoch: 5 });
    }
    forEachReplica(clean.map, (r) => Object.assign(fx.find(r.diskId, r.chunkIndex), { jobId: 'copy-9', jobKind: 'copy', jobOutcome: 'succeeded' }));

    const plan = fx.plan();
    expect(built(plan, 5).volume).toMatchObject({ epoch: 5, generation: 7, dirty: { jobId: 'wipe-1', kind: 'wipe', state: 'running', sinceMs: NOW } });
    expect(built(plan, 6).volume.dirty).toBeUndefined();
    const jobs = Object.fromEntries(plan.jobs.map((j) => [j.id, j]));
    expect(jobs['wipe-1']).toMatchObject({ kind: 'wipe', volume: 'dirty', volumeId: 5, state: 'running', expectedGeneration: 7, epoch: 5, endedMs: 0 });
    expect(jobs['copy-9']).toMatchObject({ kind: 'copy', volume: 'clean', state: 'succeeded', expectedGeneration: 2, endedMs: NOW });
  });

  it('restores access rules from the newest volume note, and disks failed or draining by an admin with their bad chunks', () => {
    const fx = new Fixture(3, 2);
    const v = fx.volume(7, 'acl', 1, 3, { epoch: 1, generation: 1 });
    fx.store(v);
    const older = { ...ACCESS, chapSecret: 'an-older-secret!' };
    fx.nodes[0]!.volumeNotes = [{ volumeId: 7, version: 3, epoch: 1, access: accessToStorage(ACCESS), spreadLabel: '', createdMs: 0, committed: false, record: '' }];
    fx.nodes[1]!.volumeNotes = [{ volumeId: 7, version: 2, epoch: 1, access: accessToStorage(older), spreadLabel: '', createdMs: 0, committed: false, record: '' }];
    const failedAt = replicaLocation(v.map, 2);
    const failed = fx.disk(failedAt.diskId);
    failed.note = { diskId: failed.diskId, adminState: 'failed', reason: 'failed by an admin: flaky', badChunks: [] };
    const spare = fx.nodes.flatMap((t) => t.server.disks).find((d) => !v.map.disks.includes(d.diskId))!;
    spare.note = { diskId: spare.diskId, adminState: 'draining', reason: 'removed by an admin', badChunks: [9, 4, 9, 999] };

    const plan = fx.plan();
    const { volume, map } = built(plan, 7);
    expect(volume.access).toEqual(ACCESS);
    expect(volume.noteVersion).toBe(3);
    expect(map.stale).toEqual([2]); // its replica on the failed disk is stale
    expect(plan.disks.find((d) => d.id === failed.diskId)).toMatchObject({ state: 'failed', adminFailed: true, stateReason: expect.stringMatching(/flaky/) });
    expect(plan.disks.find((d) => d.id === spare.diskId)).toMatchObject({ state: 'active', draining: true, badChunks: [4, 9] });
  });

  it('brings back a server being removed by an admin (every disk of it draining for that reason) as draining', () => {
    const fx = new Fixture(3, 2);
    fx.store(fx.volume(8, 'x', 1, 3, { epoch: 1 }));
    for (const d of fx.nodes[1]!.server.disks) d.note = { diskId: d.diskId, adminState: 'draining', reason: 'server node1 removed by an admin: its chunks are moved elsewhere first', badChunks: [] };
    fx.nodes[2]!.server.disks[0]!.note = { diskId: fx.nodes[2]!.server.disks[0]!.diskId, adminState: 'draining', reason: 'removed by an admin', badChunks: [] };
    const plan = fx.plan();
    expect(plan.servers.map((s) => [s.id, Boolean(s.draining)])).toEqual([['s0', false], ['s1', true], ['s2', false]]);
    expect(plan.disks.filter((d) => d.draining).map((d) => d.id).sort()).toEqual(['s1d0', 's1d1', 's2d0']);
  });
});
