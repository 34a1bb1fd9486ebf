import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { SecretBox } from '../../shared/security/secret-box.js';
import { accessFromStorage, accessToStorage } from '../../manager/storage-notes.js';
import { openVolume } from '../../manager/sealed-secrets.js';
import { keys } from '../../manager/store.js';
import type { VolumeRecord } from '../../manager/types.js';

// The access rules a storage node keeps for a rebuild from storage
// (docs/rebuild-from-storage.md): with the manager's secret key, the CHAP
// secrets reach the node sealed, and a rebuilt database opens them with the
// same key file (the store's context), never anything else.

const access = { initiators: ['iqn.2026-12.test:vm1'], chapUser: 'alice', chapSecret: 'alice-secret-123', mutualUser: 'tgt', mutualSecret: 'mutual-secret-456' };

describe('access rules kept on storage nodes', () => {
  it('carry the CHAP secrets sealed, and a rebuilt record opens with the same key', () => {
    const box = new SecretBox(randomBytes(32));
    const text = accessToStorage(access, 7, box);
    expect(text).not.toContain('alice-secret-123');
    expect(text).not.toContain('mutual-secret-456');
    const back = accessFromStorage(text)!;
    expect(back.chapUser).toBe('alice');
    expect(SecretBox.isSealed(back.chapSecret)).toBe(true);
    const record = { id: 7, access: back } as unknown as VolumeRecord;
    openVolume(keys.volume(7), record, box);
    expect(record.access).toEqual(access);
  });

  it('do not open for another volume or with another key', () => {
    const box = new SecretBox(randomBytes(32));
    const back = accessFromStorage(accessToStorage(access, 7, box))!;
    expect(() => openVolume(keys.volume(8), { id: 8, access: { ...back } } as unknown as VolumeRecord, box)).toThrow(/does not open/);
    expect(() => openVolume(keys.volume(7), { id: 7, access: { ...back } } as unknown as VolumeRecord, new SecretBox(randomBytes(32)))).toThrow(/does not open/);
    expect(() => openVolume(keys.volume(7), { id: 7, access: { ...back } } as unknown as VolumeRecord, undefined)).toThrow(/secret-key-file/);
  });

  it('without a key stay as they were (clear; the manager warns at start)', () => {
    expect(accessFromStorage(accessToStorage(access, 7))).toEqual(access);
  });
});
