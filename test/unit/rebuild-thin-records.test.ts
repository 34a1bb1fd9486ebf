import { describe, expect, it } from 'vitest';
import type { VolumeNote__Output } from '../../proto/generated/vsky/storage/VolumeNote.js';
import { volumesFromRecords } from '../../manager/rebuild/volume-state.js';
import { recordFromStorage, recordToStorage } from '../../manager/storage-notes.js';
import { isUnallocated, type VolumeRecord } from '../../manager/types.js';

// Thin volumes with no chunk come back from the records their volume notes
// carry (a rebuild from storage): built thin and unallocated; chunks, another
// chunk size, or a name taken decide otherwise.

const CS = 16 * 1024 * 1024;
const vol = (id: number, name: string, size = 3 * CS): VolumeRecord => ({
  id, name, size, replicas: 2, chunkSize: CS, segmentCount: Math.ceil(size / CS), generation: 1, epoch: 4,
  attachedHead: '', nbdUri: '', spreadLabel: '', createdMs: 1000, thin: true, intId: 40,
});
const note = (v: VolumeRecord, version = 1): VolumeNote__Output => ({ volumeId: v.id, version, epoch: v.epoch, access: '', spreadLabel: '', createdMs: 0, committed: false, record: recordToStorage(v) });

describe('volumes from records', () => {
  it('round-trips a record; garbage is undefined', () => {
    expect(recordFromStorage(recordToStorage(vol(1, 'a')))).toEqual({ name: 'a', size: 3 * CS, replicas: 2, chunkSize: CS, spreadLabel: '', createdMs: 1000, intId: 40 });
    for (const bad of ['', '{', '{"v":2,"name":"a","size":1,"replicas":1,"chunkSize":1}', '{"v":1,"name":"","size":1,"replicas":1,"chunkSize":1}', '{"v":1,"name":"a","size":-1,"replicas":1,"chunkSize":1}']) {
      expect(recordFromStorage(bad)).toBeUndefined();
    }
  });

  it('builds thin, unallocated volumes; skips ids with chunks, other chunk sizes, and taken names', () => {
    const notes = new Map<number, VolumeNote__Output>([
      [1, note(vol(1, 'empty'))],
      [2, note(vol(2, 'has-chunks'))],
      [3, { ...note(vol(3, 'odd')), record: recordToStorage({ ...vol(3, 'odd'), chunkSize: CS * 2 }) }],
      [4, note(vol(4, 'taken'))],
      [5, { volumeId: 5, version: 1, epoch: 1, access: 'x', spreadLabel: '', createdMs: 0, committed: false, record: '' }],
    ]);
    const conflicts: string[] = [];
    const out = volumesFromRecords(notes, new Set([2]), [{ volume: vol(9, 'taken') }], CS, 5000, conflicts);
    expect(out.map((x) => x.volume.name)).toEqual(['empty']);
    const { volume, map } = out[0]!;
    expect(volume).toMatchObject({ id: 1, size: 3 * CS, replicas: 2, segmentCount: 3, thin: true, epoch: 4, claimedIntId: 40 });
    expect(map.thin).toBe(true);
    expect([0, 1, 2].every((s) => isUnallocated(map, s))).toBe(true);
    expect(conflicts.join('\n')).toMatch(/chunks of 33554432 bytes/);
    expect(conflicts.join('\n')).toMatch(/volume 4 \(taken\).*name belongs to a volume built from its chunks/);
  });
});
