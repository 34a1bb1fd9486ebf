import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { SecretBox } from '../../shared/security/secret-box.js';
import { ManagerStore } from '../../manager/store.js';
import type { VolumeRecord } from '../../manager/types.js';

// Secrets at rest: the box (AES-256-GCM, bound to a context) and the
// manager store sealing CHAP secrets in LevelDB (real LevelDB files).

const KEY = randomBytes(32);
const SECRET = 'chap-secret-1234567890';
const MUTUAL = 'mutual-secret-0987654321';

describe('SecretBox', () => {
  const box = new SecretBox(KEY);

  it('seals with a fresh IV each time and opens in its context only', () => {
    const a = box.seal(SECRET, 'volume/1:chapSecret');
    const b = box.seal(SECRET, 'volume/1:chapSecret');
    expect(a).not.toBe(b);
    expect(SecretBox.isSealed(a) && !a.includes(SECRET)).toBe(true);
    expect(box.open(a, 'volume/1:chapSecret')).toBe(SECRET);
    expect(() => box.open(a, 'volume/2:chapSecret')).toThrow(/does not open with this key/);
    expect(() => new SecretBox(randomBytes(32)).open(a, 'volume/1:chapSecret')).toThrow(/another --secret-key-file/);
  });

  it('refuses altered, truncated and unsealed values', () => {
    const a = box.seal(SECRET, 'c');
    const raw = Buffer.from(a.slice('vsky-sealed:v1:'.length), 'base64');
    raw[raw.length - 1]! ^= 1;
    expect(() => box.open(`vsky-sealed:v1:${raw.toString('base64')}`, 'c')).toThrow(/altered/);
    expect(() => box.open('vsky-sealed:v1:AAAA', 'c')).toThrow(/truncated/);
    expect(() => box.open(SECRET, 'c')).toThrow(/not a sealed secret/);
    expect(() => new SecretBox(Buffer.alloc(16))).toThrow(/32 bytes/);
  });
});

function volume(id: number): VolumeRecord {
  return {
    id, name: `v${id}`, size: 1024, replicas: 1, chunkSize: 1024, segmentCount: 1, generation: 1, epoch: 0,
    attachedHead: '', nbdUri: '', spreadLabel: '', createdMs: 1,
    access: { initiators: [], chapUser: 'u', chapSecret: SECRET, mutualUser: 'm', mutualSecret: MUTUAL },
  };
}

/** Every byte of the database's files, as latin1 text. */
function dbBytes(dir: string): string {
  const db = join(dir, 'db');
  return readdirSync(db).map((f) => readFileSync(join(db, f)).toString('latin1')).join('\n');
}

async function putVolume(store: ManagerStore, id: number): Promise<void> {
  await store.write(store.batch().putVolume(volume(id)).putChunkMap({ volumeId: id, replicas: 1, segmentCount: 1, disks: ['d1'], locs: [0, id] }));
}

describe('manager store: CHAP secrets sealed at rest', () => {
  const dirs: string[] = [];
  const tmp = (): string => { const d = mkdtempSync(join(tmpdir(), 'vsky-secrets-')); dirs.push(d); return d; };
  afterAll(() => { for (const d of dirs) rmSync(d, { recursive: true, force: true }); });

  it('never writes a secret in clear, and loads it back in clear', async () => {
    const dir = tmp();
    const store = await ManagerStore.open(dir, new SecretBox(KEY));
    await putVolume(store, 1);
    const raw = await store.db.get('volume/0000000001') as VolumeRecord;
    expect(SecretBox.isSealed(raw.access!.chapSecret) && SecretBox.isSealed(raw.access!.mutualSecret)).toBe(true);
    expect((await store.load()).volumes[0]!.volume.access).toMatchObject({ chapSecret: SECRET, mutualSecret: MUTUAL });
    await store.close();
    const files = dbBytes(dir);
    expect(files).toContain('vsky-sealed:v1:'); // premise: the record is in these files
    expect(files).not.toContain(SECRET);
    expect(files).not.toContain(MUTUAL);
    // Without the key, the manager refuses to start rather than hand out garbage.
    const keyless = await ManagerStore.open(dir);
    await expect(keyless.load()).rejects.toThrow(/no --secret-key-file was given/);
    await keyless.close();
  });

  it('re-seals secrets a keyless manager stored in clear, and compacts the clear copies away', async () => {
    const dir = tmp();
    const before = await ManagerStore.open(dir);
    await putVolume(before, 2);
    await before.close();
    expect(dbBytes(dir)).toContain(SECRET); // premise: stored in clear
    const store = await ManagerStore.open(dir, new SecretBox(KEY));
    expect((await store.load()).volumes[0]!.volume.access!.chapSecret).toBe(SECRET);
    const raw = await store.db.get('volume/0000000002') as VolumeRecord;
    expect(SecretBox.isSealed(raw.access!.chapSecret)).toBe(true);
    await store.close();
    expect(dbBytes(dir)).not.toContain(SECRET);
    expect(dbBytes(dir)).not.toContain(MUTUAL);
  });
});
