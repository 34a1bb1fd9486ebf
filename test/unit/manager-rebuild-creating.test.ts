import { describe, expect, it } from 'vitest';
import { Fixture, NOW, built, forEachReplica, replicaLocation } from '../harness/rebuild-fixture.js';

// Issue 9's remaining safety rules of a rebuild from storage (manager/rebuild/plan.ts
// rules 2 and 6, volume-state.ts): a create's CREATING mark (an interrupted create
// is rolled back however complete it is, a committed one never), tombstones (a delete
// whose every chunk holder missed the mark is still finished), and the volume
// note's spread label and creation time and the server's admin state.

const note = (volumeId: number, o: { version?: number; spreadLabel?: string; createdMs?: number } = {}) => ({
  volumeId, version: o.version ?? 0, epoch: 0, access: '', spreadLabel: o.spreadLabel ?? '', createdMs: o.createdMs ?? 0, committed: false, record: '',
});

describe('planRebuild: interrupted creates, tombstones and notes', () => {
  it('rolls back a create every chunk of which was allocated but still says CREATING', () => {
    const fx = new Fixture(3, 1);
    const mc = fx.volume(3, 'mc', 2, 3);
    const kept = fx.volume(4, 'kept', 1, 3, { epoch: 1 });
    fx.store(mc);
    fx.store(kept);
    forEachReplica(mc.map, (r) => { fx.find(r.diskId, r.chunkIndex).legality = 'CREATING'; });
    // Premise: the old rule alone (never used, every segment complete) would have kept it as a volume.
    expect(fx.nodes.flatMap((n) => n.chunks).filter((c) => c.identity!.volumeId === 3)).toHaveLength(6);

    const plan = fx.plan();
    expect(plan.volumes.map((e) => e.volume.name)).toEqual(['kept']);
    expect(plan.toFree.filter((t) => t.volumeId === 3 && t.reason === 'interrupted create')).toHaveLength(6);
    expect(plan.toFree.every((t) => t.volumeId === 3)).toBe(true); // never a chunk of the committed volume
    expect(plan.report.rolledBack).toEqual([expect.objectContaining({ volumeId: 3, name: 'mc', reason: expect.stringMatching(/CREATING/) })]);
    expect(plan.nextVolumeId).toBe(5); // the rolled-back id is never issued again
  });

  it('never rolls back a committed volume: one chunk without the mark, or an attach, proves the commit', () => {
    const fx = new Fixture(3, 1);
    const half = fx.volume(5, 'half', 2, 3);
    const used = fx.volume(6, 'used', 1, 2, { epoch: 2 });
    fx.store(half);
    fx.store(used);
    // half: the committed note reached one node only; used: no node took it, but a head attached it (epoch 2).
    const cleared = replicaLocation(half.map, 0);
    forEachReplica(half.map, (r) => { if (r.diskId !== cleared.diskId) fx.find(r.diskId, r.chunkIndex).legality = 'CREATING'; });
    forEachReplica(used.map, (r) => { fx.find(r.diskId, r.chunkIndex).legality = 'CREATING'; });
    expect(fx.nodes.flatMap((n) => n.chunks).filter((c) => c.identity!.legality === 'CREATING').length).toBeGreaterThanOrEqual(5);

    const plan = fx.plan();
    expect(plan.volumes.map((e) => e.volume.name).sort()).toEqual(['half', 'used']);
    expect(plan.toFree).toEqual([]);
    // The manager sends the committed note again (GC) until every node took it.
    expect(built(plan, 5).volume.unconfirmed).toBe(true);
    expect(built(plan, 6).volume.unconfirmed).toBe(true);
  });

  it('finishes a delete whose mark reached no holder of a chunk, from a tombstone on another node', () => {
    const fx = new Fixture(3, 1);
    const gone = fx.volume(7, 'gone', 1, 1);
    const kept = fx.volume(8, 'kept', 1, 2);
    fx.store(gone);
    fx.store(kept);
    const holder = replicaLocation(gone.map, 0).diskId.slice(0, 2);
    const other = fx.nodes.find((n) => n.server.serverId !== holder)!;
    // Premise: the only chunk of gone is LEGAL (its node was down at the delete); without the tombstone it comes back.
    expect(fx.plan().volumes.map((e) => e.volume.name).sort()).toEqual(['gone', 'kept']);
    other.deletedVolumes = [7];

    const plan = fx.plan();
    expect(plan.volumes.map((e) => e.volume.name)).toEqual(['kept']);
    expect(plan.toFree).toEqual([expect.objectContaining({ volumeId: 7, reason: 'interrupted delete' })]);
    expect(plan.report.rolledBack).toEqual([expect.objectContaining({ volumeId: 7, reason: expect.stringMatching(/tombstone/) })]);
  });

  it('a tombstone of another volume id frees nothing', () => {
    const fx = new Fixture(3, 1);
    fx.store(fx.volume(9, 'kept', 2, 3));
    fx.nodes[0]!.deletedVolumes = [10, 11];
    const plan = fx.plan();
    expect(plan.volumes.map((e) => e.volume.name)).toEqual(['kept']);
    expect(plan.toFree).toEqual([]);
  });

  it('restores the spread label and creation time from the volume note, and a server failed by an admin', () => {
    const fx = new Fixture(3, 1, 64, 3);
    const v = fx.volume(12, 'labelled', 1, 3);
    const old = fx.volume(13, 'older', 1, 3);
    fx.store(v);
    fx.store(old);
    fx.nodes[0]!.volumeNotes = [note(12, { spreadLabel: 'row', createdMs: 1_600_000_000_000 })];
    fx.nodes[1]!.volumeNotes = [note(13)]; // a note from before notes carried these
    fx.nodes[2]!.server.note = { adminState: 'failed', reason: 'failed by an admin: PSU' };

    const plan = fx.plan();
    expect(built(plan, 12).volume).toMatchObject({ spreadLabel: 'row', createdMs: 1_600_000_000_000 });
    expect(built(plan, 13).volume).toMatchObject({ spreadLabel: 'rack', createdMs: NOW }); // the defaults, as before
    const failed = plan.servers.find((s) => s.id === 's2')!;
    expect(failed).toMatchObject({ state: 'failed', adminFailed: true, stateReason: expect.stringMatching(/^failed by an admin: PSU \(kept by its node/) });
    expect(plan.servers.filter((s) => s.state === 'active').map((s) => s.id).sort()).toEqual(['s0', 's1']);
  });
});
