import { describe, expect, it } from 'vitest';
import {
  CHUNK, CLUSTER, Fixture, LOST_DISK_ID, LOST_SERVER_ID, NOW, built, forEachReplica, identity, key, replicaLocation, setIdentitySlot, setMove, setReplicaState,
} from '../harness/rebuild-fixture.js';

// The rebuild planner (manager/rebuild/plan.ts): the manager's metadata
// rebuilt from the storage nodes' chunk tables. Fixtures: test/harness/rebuild-fixture.ts.
describe('planRebuild', () => {
  it('round-trips a healthy cluster: servers, disks, volumes and maps as placement made them', () => {
    const fx = new Fixture(6, 2, 64, 3);
    const vols = [
      fx.volume(1, 'vm1', 4, 3, { spreadLabel: 'rack', generation: 3, epoch: 7 }),
      fx.volume(2, 'vm2', 1, 1, { spreadLabel: 'rack' }),
      fx.volume(4, 'vm4', 8, 2, { spreadLabel: 'rack', generation: 2, epoch: 2, mapVersion: 5 }),
      fx.volume(9, 'vm9', 3, 3, { spreadLabel: 'rack', epoch: 1 }),
    ];
    for (const v of vols) fx.store(v);
    const chunks = fx.nodes.reduce((n, t) => n + t.chunks.length, 0);
    expect(chunks).toBe(4 * 3 + 1 + 8 * 2 + 3 * 3);

    const plan = fx.plan();
    expect(plan.volumes).toEqual(vols);
    expect(plan.toFree).toEqual([]);
    expect(plan.setAside).toEqual([]);
    expect(plan.report).toMatchObject({ volumes: 4, chunks, staleReplicas: 0, rolledBack: [], conflicts: [] });
    expect(plan.nextVolumeId).toBe(10);
    expect(plan.servers).toHaveLength(6);
    expect(plan.servers[2]).toEqual({
      id: 's2', name: 'node2', dataAddress: '10.0.0.3:7710', controlAddress: '10.0.0.3:7711', nodeLabels: { rack: 'r2' }, adminLabels: {},
      state: 'active', stateReason: 'rebuilt from storage', registeredMs: NOW, lastHeartbeatMs: NOW,
    });
    expect(plan.disks).toHaveLength(12);
    expect(plan.disks[3]).toEqual({ id: 's1d1', serverId: 's1', path: '/srv/disk1', chunkSize: CHUNK, regionSize: 4096, chunkCount: 64, state: 'active', stateReason: 'rebuilt from storage', addedMs: NOW });
    expect(plan.report.ms).toBeGreaterThanOrEqual(0);
  });

  it('notes the VastSky ids storage reports as claims (lvolid: what most of a volume\'s chunks carry) and starts the counters where the nodes last heard them', () => {
    const fx = new Fixture(3, 1, 64);
    const v1 = fx.volume(1, 'vm1', 2, 3);
    const v2 = fx.volume(2, 'vm2', 1, 2);
    const v3 = fx.volume(3, 'old', 1, 2);
    fx.store(v1, { lvolid: 40 });
    fx.store(v2, { lvolid: 45 });
    fx.store(v3); // chunks from before lvolids were recorded
    fx.find(fx.nodes[0]!.chunks.find((c) => c.identity!.volumeId === 1)!.diskId, fx.nodes[0]!.chunks.find((c) => c.identity!.volumeId === 1)!.chunkIndex).lvolid = 0;
    fx.nodes.forEach((t, i) => {
      Object.assign(t.server, { ssvrid: i + 1, intIdsClusterId: CLUSTER, nextIntIds: { hsvr: 3 + i, ssvr: 4, pdsk: 4, lvol: 50 + i } });
      Object.assign(t.server.disks[0]!, { pdskid: 10 + i, dextIds: [100 + 64 * i, 64] });
    });
    Object.assign(fx.nodes[2]!.server, { intIdsClusterId: 'another' }); // not this cluster's ids: ignored
    const plan = fx.plan();
    expect(plan.volumes.map((e) => e.volume.claimedIntId)).toEqual([40, 45, undefined]);
    expect(plan.servers.map((s) => s.claimedIntId)).toEqual([1, 2, undefined]);
    expect(plan.disks.map((d) => [d.claimedIntId, d.claimedDextIds])).toEqual([[10, [100, 64]], [11, [164, 64]], [12, [228, 64]]]);
    expect(plan.nextIntIds).toEqual({ hsvr: 4, ssvr: 4, pdsk: 4, lvol: 51 });
    expect(plan.volumes.every((e) => e.volume.intId === undefined)).toBe(true);
  });

  it('takes no spread label when no server has a rack label', () => {
    const fx = new Fixture(3, 1);
    const v = fx.volume(1, 'a', 2, 3);
    fx.store(v);
    expect(fx.plan().volumes).toEqual([v]);
  });

  it('marks a replica stale by the newest note on its survivors, even when its own (older) note says it is in sync', () => {
    const fx = new Fixture(4, 1);
    const v = fx.volume(3, 'vm', 2, 3, { generation: 4, epoch: 6, mapVersion: 7 });
    const r = 1 * 3 + 2; // segment 1, slot 2
    setReplicaState(v.map, r, 'stale');
    fx.store(v);
    // The stale replica's node was cut off: it kept the note before the failure.
    const missed = replicaLocation(v.map, r);
    Object.assign(fx.find(missed.diskId, missed.chunkIndex), { staleSlots: 0, mapVersion: 3 });
    // Premise: its own record says in sync, the survivors' newer note says slot 2 is stale, generations agree.
    expect(fx.find(missed.diskId, missed.chunkIndex)).toMatchObject({ staleSlots: 0, mapVersion: 3, generation: 4 });
    for (const slot of [0, 1]) {
      const at = replicaLocation(v.map, 3 + slot);
      expect(fx.find(at.diskId, at.chunkIndex)).toMatchObject({ staleSlots: 1 << 2, mapVersion: 7, generation: 4 });
    }

    const plan = fx.plan();
    const { volume, map } = built(plan, 3);
    expect(map).toEqual(v.map);
    expect(map.stale).toEqual([r]);
    expect(volume).toEqual(v.volume);
    expect(plan.report.staleReplicas).toBe(1);
    expect(plan.toFree).toEqual([]);
  });

  it('marks a chunk with a lower generation stale; a noted-stale resync target with a higher one does not demote the good copies', () => {
    const fx = new Fixture(4, 1);
    const v = fx.volume(5, 'g', 2, 3, { generation: 9, epoch: 2 });
    fx.store(v);
    // Segment 0: slot 1 missed a finished job (generation 8).
    const old = replicaLocation(v.map, 1);
    fx.find(old.diskId, old.chunkIndex).generation = 8;
    // Segment 1: slot 0 is a resync target its own node fenced with a newer
    // generation; the note (version 4) says slot 0 is not in sync.
    for (let slot = 0; slot < 3; slot++) {
      const at = replicaLocation(v.map, 3 + slot);
      Object.assign(fx.find(at.diskId, at.chunkIndex), { staleSlots: 1 << 0, mapVersion: 4 });
    }
    const target = replicaLocation(v.map, 3);
    fx.find(target.diskId, target.chunkIndex).generation = 10;
    // Premise: no note on segment 0; in segment 1 the target has the highest generation.
    for (let slot = 0; slot < 3; slot++) {
      const at = replicaLocation(v.map, slot);
      expect(fx.find(at.diskId, at.chunkIndex)).toMatchObject({ staleSlots: 0, mapVersion: 0, generation: slot === 1 ? 8 : 9 });
    }
    expect(fx.find(target.diskId, target.chunkIndex).generation).toBe(10);

    const { volume, map } = built(fx.plan(), 5);
    expect(map.stale).toEqual([1, 3]);
    expect(map.locs).toEqual(v.map.locs);
    expect(volume.generation).toBe(10);
    expect(volume.mapVersion).toBe(4);
  });

  it('maps a drained segment whose identity slots read 0, 3, 2 (slots are names), with ids pairs', () => {
    const fx = new Fixture(5, 2);
    const v = fx.volume(8, 'drained', 3, 3, { epoch: 3, generation: 5 });
    setIdentitySlot(v.map, 0 * 3 + 1, 3); // segment 0: 0, 3, 2
    setIdentitySlot(v.map, 2 * 3 + 0, 3); // segment 2: 3, 1, 2
    setIdentitySlot(v.map, 2 * 3 + 2, 4); // segment 2: 3, 1, 4
    fx.store(v);
    // Premise: the records carry the identity slots as names.
    const slotsOf = (segment: number) => [0, 1, 2].map((p) => {
      const at = replicaLocation(v.map, segment * 3 + p);
      return fx.find(at.diskId, at.chunkIndex).slot;
    });
    expect(slotsOf(0)).toEqual([0, 3, 2]);
    expect(slotsOf(2)).toEqual([3, 1, 4]);

    const plan = fx.plan();
    const { map } = built(plan, 8);
    expect(map).toEqual(v.map);
    expect(map.ids).toEqual([1, 3, 6, 3, 8, 4]);
    expect(plan.toFree).toEqual([]);
  });

  it('frees a surplus 4th chunk: the target of a drain that had not finished', () => {
    const fx = new Fixture(5, 1);
    const v = fx.volume(2, 'moving', 2, 3, { epoch: 4, generation: 2, mapVersion: 11 });
    const healthy = structuredClone(v.map);
    // Position 1 of segment 1 was being drained onto s?d0 under identity slot 3.
    const usedServers = new Set([0, 1, 2].map((p) => replicaLocation(v.map, 3 + p).diskId));
    const spareDisk = ['s0d0', 's1d0', 's2d0', 's3d0', 's4d0'].find((d) => !usedServers.has(d))!;
    setMove(v.map, 4, { diskId: spareDisk, chunkIndex: 40, idSlot: 3 });
    fx.store(v);
    // Premise: four chunks of segment 1 on storage; the note says identity slot 3 is not in sync.
    const seg1 = fx.nodes.flatMap((t) => t.chunks).filter((c) => c.identity!.volumeId === 2 && c.identity!.segment === 1);
    expect(seg1.map((c) => c.identity!.slot).sort()).toEqual([0, 1, 2, 3]);
    expect(seg1.every((c) => c.identity!.staleSlots === 1 << 3 && c.identity!.mapVersion === 11)).toBe(true);

    const plan = fx.plan();
    expect(built(plan, 2).map).toEqual(healthy);
    expect(plan.toFree).toEqual([{
      diskId: spareDisk, chunkIndex: 40, volumeId: 2, segment: 1, idSlot: 3, sinceMs: NOW,
      reason: expect.stringMatching(/surplus chunk of segment 1 .*drain that had not finished/),
    }]);
    expect(plan.report.staleReplicas).toBe(0);
  });

  it('keeps the in-sync copies of an over-full segment before the newest generation, and frees an older copy of an identity slot', () => {
    const fx = new Fixture(6, 1);
    const v = fx.volume(6, 'dup', 1, 3, { generation: 3, epoch: 9, mapVersion: 2 });
    fx.store(v);
    const free = ['s0d0', 's1d0', 's2d0', 's3d0', 's4d0', 's5d0'].filter((d) => !v.map.disks.includes(d));
    // A replaced replica of identity slot 1 that was never freed: its node missed
    // the fences since (older epoch); the spare that replaced it took the same
    // identity slot. Same generation and note as the others: the epoch decides.
    fx.chunk(free[0]!, 7, identity(v.volume, 0, 1, { epoch: 5, staleSlots: 1 << 3, mapVersion: 3 }));
    // A stale chunk under identity slot 3 with a newer generation (a drain target noted stale).
    fx.chunk(free[1]!, 8, identity(v.volume, 0, 3, { generation: 4, staleSlots: 1 << 3, mapVersion: 3 }));
    for (let p = 0; p < 3; p++) {
      const at = replicaLocation(v.map, p);
      Object.assign(fx.find(at.diskId, at.chunkIndex), { staleSlots: 1 << 3, mapVersion: 3 });
    }
    // Premise: five chunks, two under identity slot 1 that differ only in epoch; generations agree but the drain target's.
    const all = fx.nodes.flatMap((t) => t.chunks).filter((c) => c.identity!.volumeId === 6);
    expect(all.map((c) => c.identity!.slot).sort()).toEqual([0, 1, 1, 2, 3]);
    const slot1 = all.filter((c) => c.identity!.slot === 1).map((c) => c.identity!);
    expect(slot1.map((id) => id.epoch).sort()).toEqual([5, 9]);
    expect(new Set(slot1.map((id) => JSON.stringify({ ...id, epoch: 0 }))).size).toBe(1);

    const plan = fx.plan();
    const { map, volume } = built(plan, 6);
    expect(map.locs).toEqual(v.map.locs);
    expect(map.stale).toBeUndefined();
    expect(volume).toMatchObject({ generation: 4, epoch: 9, mapVersion: 3 });
    expect(plan.toFree.map((t) => [key(t.diskId, t.chunkIndex), t.idSlot])).toEqual([[key(free[0]!, 7), 1], [key(free[1]!, 8), 3]]);
    expect(plan.toFree[0]!.reason).toMatch(/older copy of identity slot 1/);
    expect(plan.toFree[1]!.reason).toMatch(/surplus.*stale/);
  });

  it('among stale copies left over, keeps the newest generation', () => {
    const fx = new Fixture(5, 1);
    const v = fx.volume(3, 'st', 1, 3, { generation: 6, epoch: 2, mapVersion: 4 });
    fx.store(v);
    const free = ['s0d0', 's1d0', 's2d0', 's3d0', 's4d0'].filter((d) => !v.map.disks.includes(d));
    // Position 2 is stale (noted), and an older stale copy under slot 3 exists too.
    for (let p = 0; p < 3; p++) {
      const at = replicaLocation(v.map, p);
      Object.assign(fx.find(at.diskId, at.chunkIndex), { staleSlots: (1 << 2) | (1 << 3) });
    }
    const pos2 = replicaLocation(v.map, 2);
    fx.find(pos2.diskId, pos2.chunkIndex).generation = 4;
    fx.chunk(free[0]!, 3, identity(v.volume, 0, 3, { generation: 5, staleSlots: (1 << 2) | (1 << 3), mapVersion: 4 }));
    // Premise: two in-sync chunks, two stale ones (generations 4 and 5), K = 3.
    expect(fx.nodes.flatMap((t) => t.chunks).filter((c) => c.identity!.volumeId === 3)).toHaveLength(4);

    const plan = fx.plan();
    const { map } = built(plan, 3);
    expect(replicaLocation(map, 2)).toEqual({ diskId: free[0], chunkIndex: 3 });
    expect(map.ids).toEqual([2, 3]);
    expect(map.stale).toEqual([2]);
    expect(plan.toFree.map((t) => key(t.diskId, t.chunkIndex))).toEqual([key(pos2.diskId, pos2.chunkIndex)]);
  });

  it('rolls back an interrupted create and frees its chunks; a volume that held data is never freed for missing chunks', () => {
    const fx = new Fixture(5, 2);
    const keep = fx.volume(1, 'keep', 2, 3);
    const half = fx.volume(7, 'half', 8, 3);
    const used = fx.volume(8, 'used', 8, 3, { epoch: 4 });
    const most = fx.volume(10, 'most', 4, 3);
    for (const v of [keep, half, used, most]) fx.store(v);
    // Only segments 0..2 of "half" and "used" were allocated (or left after freeing).
    for (const v of [half, used]) {
      forEachReplica(v.map, (r) => { if (r.segment >= 3) fx.drop(r.diskId, r.chunkIndex); });
    }
    // "most" lost all of segment 3 but has chunks for 3 of 4 segments.
    forEachReplica(most.map, (r) => { if (r.segment === 3) fx.drop(r.diskId, r.chunkIndex); });
    // Premise: 3 of 8 segments covered (fewer than half); "half" never attached nor noted, "used" was attached.
    const of = (id: number) => fx.nodes.flatMap((t) => t.chunks).filter((c) => c.identity!.volumeId === id);
    expect(new Set(of(7).map((c) => c.identity!.segment)).size).toBe(3);
    expect(of(7).every((c) => c.identity!.epoch === 0 && c.identity!.mapVersion === 0)).toBe(true);
    expect(of(8).every((c) => c.identity!.epoch === 4)).toBe(true);
    expect(new Set(of(10).map((c) => c.identity!.segment)).size).toBe(3);

    const plan = fx.plan();
    expect(plan.volumes.map((e) => e.volume.name)).toEqual(['keep']);
    expect(plan.report.rolledBack).toEqual([{ volumeId: 7, name: 'half', reason: expect.stringMatching(/^interrupted create: 3 of 8 segments have a chunk/) }]);
    expect(plan.toFree).toHaveLength(9);
    expect(plan.toFree.every((t) => t.volumeId === 7 && t.reason === 'interrupted create' && t.sinceMs === NOW)).toBe(true);
    expect(new Set(plan.toFree.map((t) => key(t.diskId, t.chunkIndex)))).toEqual(new Set(of(7).map((c) => key(c.diskId, c.chunkIndex))));
    // "used" and "most": reported, set aside, not freed.
    expect(plan.report.conflicts).toHaveLength(2);
    expect(plan.report.conflicts[0]).toMatch(/volume 8 \(used\): 5 segments without a good copy/);
    expect(plan.report.conflicts[1]).toMatch(/volume 10 \(most\): 1 segment without a good copy \(3;/);
    expect(new Set(plan.setAside.map((a) => a.volumeId))).toEqual(new Set([8, 10]));
    expect(plan.setAside).toHaveLength(9 + 9);
    expect(plan.nextVolumeId).toBe(11);
  });

  it('reports a volume claiming 2^30 segments without walking them', () => {
    const fx = new Fixture(3, 1);
    const huge = fx.volume(4, 'huge', 1, 3, { epoch: 1 });
    huge.volume.size = 2 ** 50;
    huge.volume.segmentCount = 2 ** 30;
    fx.store(huge);
    // Premise: the identity adds up (size / chunk size = segment count), 3 chunks.
    expect(Math.ceil(huge.volume.size / CHUNK)).toBe(huge.volume.segmentCount);
    const started = performance.now();
    const plan = fx.plan();
    expect(performance.now() - started).toBeLessThan(1000);
    expect(plan.volumes).toEqual([]);
    expect(plan.report.conflicts).toEqual([expect.stringMatching(/^volume 4 \(huge\): 1073741823 segments without a good copy \(1, 2, 3, 4, 5, 6, 7, 8, \.\.\.; 1 of 1073741824 segments have a chunk/)]);
    expect(plan.setAside).toHaveLength(3);
  });

  it('reports identity conflicts and frees nothing of them', () => {
    const fx = new Fixture(5, 1);
    const v = fx.volume(3, 'vm', 1, 3, { epoch: 2 });
    fx.store(v);
    // The chunk at position 1 says it belongs to another volume shape.
    const liar = replicaLocation(v.map, 1);
    Object.assign(fx.find(liar.diskId, liar.chunkIndex), { volumeName: 'other', volumeSize: 5 * CHUNK });
    // Volume 4: one chunk says "tie", the other "tie2".
    const tie = fx.volume(4, 'tie', 1, 2);
    fx.store(tie);
    const [a, b] = [replicaLocation(tie.map, 0), replicaLocation(tie.map, 1)];
    fx.find(b.diskId, b.chunkIndex).volumeName = 'tie2';
    // Premise: volume 3 has 2 chunks saying "vm" and 1 saying "other"; volume 4 one each.
    expect(fx.find(liar.diskId, liar.chunkIndex).volumeName).toBe('other');
    expect([fx.find(a.diskId, a.chunkIndex).volumeName, fx.find(b.diskId, b.chunkIndex).volumeName]).toEqual(['tie', 'tie2']);

    const plan = fx.plan();
    expect(plan.report.conflicts).toHaveLength(2);
    expect(plan.report.conflicts[0]).toMatch(/volume 3 \(vm\): chunk identity differs.*1 chunk .*says "other".*not placed, not freed/);
    expect(plan.report.conflicts[1]).toMatch(/volume 4: its chunks disagree on its identity/);
    expect(plan.toFree).toEqual([]);
    expect(plan.setAside.map((x) => `${key(x.diskId, x.chunkIndex)} ${x.volumeId}`).sort()).toEqual([
      `${key(liar.diskId, liar.chunkIndex)} 3`, `${key(a.diskId, a.chunkIndex)} 4`, `${key(b.diskId, b.chunkIndex)} 4`,
    ].sort());
    // Volume 3 is built from its two agreeing chunks; position 1 waits for a spare on the placeholder disk,
    // under its own identity slot... unless the liar's slot says otherwise: it used slot 1, so the placeholder takes 3.
    const { map } = built(plan, 3);
    expect(map.stale).toEqual([1]);
    expect(replicaLocation(map, 1).diskId).toBe(LOST_DISK_ID);
    expect(map.ids).toEqual([1, 3]);
    expect(plan.volumes.map((e) => e.volume.id)).toEqual([3]);
    expect(plan.nextVolumeId).toBe(5);
  });

  it('turns a missing replica into a stale replica on the failed placeholder disk, which the placement model loads', () => {
    const fx = new Fixture(4, 1);
    const v1 = fx.volume(1, 'one', 2, 3, { epoch: 3 });
    const v2 = fx.volume(2, 'two', 1, 2, { epoch: 1 });
    fx.store(v1);
    fx.store(v2);
    const gone1 = replicaLocation(v1.map, 4);
    const gone2 = replicaLocation(v2.map, 0);
    fx.drop(gone1.diskId, gone1.chunkIndex);
    fx.drop(gone2.diskId, gone2.chunkIndex);
    // Premise: segment 1 of "one" and segment 0 of "two" each have a chunk fewer than K, the rest in sync.
    expect(fx.nodes.flatMap((t) => t.chunks).filter((c) => c.identity!.volumeId === 1 && c.identity!.segment === 1)).toHaveLength(2);
    expect(fx.nodes.flatMap((t) => t.chunks).filter((c) => c.identity!.volumeId === 2)).toHaveLength(1);

    const plan = fx.plan();
    const m1 = built(plan, 1).map;
    const m2 = built(plan, 2).map;
    expect(m1.stale).toEqual([4]);
    expect(m2.stale).toEqual([0]);
    expect(m1.ids).toBeUndefined();
    const lost1 = replicaLocation(m1, 4);
    const lost2 = replicaLocation(m2, 0);
    expect([lost1.diskId, lost2.diskId]).toEqual([LOST_DISK_ID, LOST_DISK_ID]);
    expect(lost1.chunkIndex).not.toBe(lost2.chunkIndex);
    // The other positions are where they were.
    for (const r of [0, 1, 2, 3, 5]) expect(replicaLocation(m1, r)).toEqual(replicaLocation(v1.map, r));
    expect(plan.disks.find((d) => d.id === LOST_DISK_ID)).toEqual({
      id: LOST_DISK_ID, serverId: LOST_SERVER_ID, path: '', chunkSize: CHUNK, chunkCount: 2, state: 'failed',
      stateReason: expect.stringContaining('placeholder'), addedMs: NOW, adminFailed: true,
    });
    expect(plan.servers.find((s) => s.id === LOST_SERVER_ID)).toMatchObject({ state: 'failed', adminFailed: true });
    expect(plan.report.staleReplicas).toBe(2);
    expect(plan.toFree).toEqual([]);
  });

  it('keeps generations, epochs and map versions above 2^32 exact', () => {
    const fx = new Fixture(3, 1);
    const G = 2 ** 40 + 3;
    const E = 2 ** 33 + 1;
    const V = 2 ** 35 + 5;
    const v = fx.volume(12, 'big', 1, 3, { generation: G, epoch: E, mapVersion: V });
    setReplicaState(v.map, 2, 'stale');
    fx.store(v);
    // Slot 1 missed the last job's final CAS by one generation (the note, not the generation, decides: in sync);
    // slot 2's own note is one version older and says nothing.
    const behind = replicaLocation(v.map, 1);
    fx.find(behind.diskId, behind.chunkIndex).generation = G - 1;
    const old = replicaLocation(v.map, 2);
    Object.assign(fx.find(old.diskId, old.chunkIndex), { staleSlots: 0, mapVersion: V - 1 });
    // Premise: values that 32-bit arithmetic would truncate (and G - 1, V - 1 are distinct doubles).
    expect(G - 1).not.toBe(G);
    expect(V % 2 ** 32).toBe(5);
    expect(fx.find(replicaLocation(v.map, 0).diskId, replicaLocation(v.map, 0).chunkIndex)).toMatchObject({ generation: G, epoch: E, mapVersion: V, staleSlots: 1 << 2 });

    const { volume, map } = built(fx.plan(), 12);
    expect(volume).toMatchObject({ generation: G, epoch: E, mapVersion: V });
    expect(map.stale).toEqual([2]);
  });

  it('finishes an interrupted delete when a later volume took its name', () => {
    const fx = new Fixture(4, 1);
    const old = fx.volume(2, 'vm1', 2, 3, { epoch: 5 });
    const now = fx.volume(5, 'vm1', 1, 3, { epoch: 1 });
    fx.store(old);
    fx.store(now);
    const plan = fx.plan();
    expect(plan.volumes.map((e) => e.volume.id)).toEqual([5]);
    expect(plan.report.rolledBack).toEqual([{ volumeId: 2, name: 'vm1', reason: expect.stringMatching(/^interrupted delete: the name vm1 belongs to volume 5/) }]);
    expect(plan.toFree).toHaveLength(6);
    expect(plan.toFree.every((t) => t.volumeId === 2 && t.reason === 'interrupted delete')).toBe(true);
    expect(plan.nextVolumeId).toBe(6);
  });

  it('handles disks: failed ones keep their replicas as stale, another chunk size or cluster sets their chunks aside', () => {
    const fx = new Fixture(5, 1);
    const v = fx.volume(1, 'v', 3, 3, { epoch: 2 });
    fx.store(v);
    const failed = replicaLocation(v.map, 0).diskId;
    const otherSize = replicaLocation(v.map, 4).diskId;
    fx.disk(failed).state = 'failed';
    fx.disk(otherSize).chunkSize = 2 * CHUNK;
    const foreign = 'x9';
    fx.addDisk('s0', foreign, 'another-cluster');
    fx.chunk(foreign, 60, { ...identity(v.volume, 0, 0), volumeId: 900, volumeName: 'theirs' });
    // Premise: the failed disk holds replica 0; the other-size disk holds replica 4 (segment 1).
    expect(replicaLocation(v.map, 4).diskId).not.toBe(failed);

    const plan = fx.plan();
    const { map } = built(plan, 1);
    const onFailed: number[] = [];
    forEachReplica(v.map, (r) => { if (r.diskId === failed) onFailed.push(r.r); });
    for (const r of onFailed) {
      expect(replicaLocation(map, r)).toEqual(replicaLocation(v.map, r));
      expect(map.stale).toContain(r);
    }
    const onOtherSize: number[] = [];
    forEachReplica(v.map, (r) => { if (r.diskId === otherSize) onOtherSize.push(r.r); });
    expect(onFailed.length).toBeGreaterThan(0);
    expect(onOtherSize.length).toBeGreaterThan(0);
    for (const r of onOtherSize) expect(replicaLocation(map, r).diskId).toBe(LOST_DISK_ID);
    expect(plan.disks.find((d) => d.id === failed)).toMatchObject({ state: 'failed' });
    expect(plan.disks.find((d) => d.id === otherSize)).toMatchObject({ state: 'failed', stateReason: expect.stringMatching(/chunk size/) });
    expect(plan.disks.find((d) => d.id === foreign)).toMatchObject({ state: 'failed', adminFailed: true });
    expect(plan.setAside.filter((a) => a.diskId === otherSize)).toHaveLength(onOtherSize.length);
    expect(plan.setAside.find((a) => a.diskId === foreign && a.chunkIndex === 60)).toMatchObject({ volumeId: 900 });
    expect(plan.toFree).toEqual([]);
    expect(plan.nextVolumeId).toBe(2); // another cluster's volume ids are not ours
  });
});
