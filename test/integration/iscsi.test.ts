import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { MiB } from '../../shared/constants.js';
import { destroyTestCluster, startTestCluster } from '../harness/cluster.js';
import { randomFile, run, sameContent, tryRun } from '../harness/tools.js';
import { vsky } from '../harness/vsky.js';

// Real iSCSI initiators (libiscsi through qemu-img/qemu-io and the libiscsi
// tools) against a 3-replica volume's target on the head agent.

const ALLOWED = 'iqn.2026-11.test.vsky:allowed';
const OTHER = 'iqn.2026-11.test.vsky:intruder';

describe('iSCSI export with real initiators', () => {
  let c: LocalCluster;
  let nbd: string;
  let iscsi: string;
  let work: string;

  beforeAll(async () => {
    c = await startTestCluster();
    ({ nbd, iscsi } = await c.ensureVolumeUrls('iv', 48 * MiB, 3));
    work = mkdtempSync(join(tmpdir(), 'vsky-iscsi-'));
  });
  afterAll(async () => {
    await destroyTestCluster(c);
    rmSync(work, { recursive: true, force: true });
  });

  it('attach prints an iscsi:// URL that iscsi-inq and iscsi-readcapacity16 accept', async () => {
    expect(iscsi).toMatch(/^iscsi:\/\/127\.0\.0\.1:\d+\/iqn\.2026-11\.ts\.vastsky:iv\/0$/);
    const inq = await run('iscsi-inq', [iscsi]);
    expect(String(inq.stdout)).toMatch(/VASTSKY/);
    const cap = await run('iscsi-readcapacity16', [iscsi]);
    expect(String(cap.stdout)).toMatch(new RegExp(`Total size:${48 * MiB}`));
  });

  it('qemu-img convert onto the volume over iSCSI, then compare over NBD and iSCSI', async () => {
    const src = join(work, 'src.img');
    randomFile(src, 48 * MiB);
    await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', src, iscsi], 120_000);
    expect(await sameContent(src, nbd)).toBe(true);
    expect(await sameContent(src, iscsi)).toBe(true);
  });

  it('two initiators writing through one target each see their writes in order', async () => {
    const sequence = (base: number): string[] => Array.from({ length: 16 }, (_, i) => ['-c', `write -P ${i + 1} ${base} 256k`]).flat();
    const [a, b] = await Promise.all([
      run('qemu-io', ['-f', 'raw', ...sequence(0), iscsi]),
      run('qemu-io', ['-f', 'raw', ...sequence(8 * MiB), iscsi]),
    ]);
    expect(String(a.stdout) + String(b.stdout)).not.toMatch(/error|failed/i);
    const check = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 16 0 256k', '-c', `read -P 16 ${8 * MiB} 256k`, nbd]);
    expect(String(check.stdout)).not.toMatch(/verification failed/);
  });

  it('enforces CHAP: a wrong secret is refused, the right one logs in', async () => {
    const m = c.managerAddress;
    const set = await vsky(['volume', 'access', 'iv', '--chap-user', 'vmhost', '--chap-secret', 'right-secret-123'], m);
    expect(set.exitCode, String(set.stderr)).toBe(0);
    const withCreds = (user: string, secret: string): string => iscsi.replace('iscsi://', `iscsi://${user}%${secret}@`);
    const none = await tryRun('iscsi-inq', [iscsi]);
    expect(none.exitCode).not.toBe(0);
    const wrong = await tryRun('iscsi-inq', [withCreds('vmhost', 'wrong-secret-123')]);
    expect(wrong.exitCode).not.toBe(0);
    const right = await run('iscsi-inq', [withCreds('vmhost', 'right-secret-123')]);
    expect(String(right.stdout)).toMatch(/VASTSKY/);
    // At rest the secret is sealed (--secret-key-file DIR/secret.key): LevelDB's files hold the record, never the secret.
    const db = join(c.opts.dir, 'manager', 'db');
    const files = readdirSync(db).map((f) => readFileSync(join(db, f)).toString('latin1')).join('\n');
    expect(files).toContain('vmhost');
    expect(files).toContain('vsky-sealed:v1:');
    expect(files).not.toContain('right-secret-123');
    // Short secrets are refused before anything changes.
    const short = await vsky(['volume', 'access', 'iv', '--chap-user', 'x', '--chap-secret', 'short'], m);
    expect(short.exitCode).toBe(2);
    expect(String(short.stderr)).toMatch(/12 to 255/);
    expect((await run('iscsi-inq', [withCreds('vmhost', 'right-secret-123')])).exitCode).toBe(0);
  });

  it('enforces the initiator ACL', async () => {
    const m = c.managerAddress;
    const set = await vsky(['volume', 'access', 'iv', '--initiator', ALLOWED], m);
    expect(set.exitCode, String(set.stderr)).toBe(0);
    const denied = await tryRun('iscsi-inq', ['-i', OTHER, iscsi]);
    expect(denied.exitCode).not.toBe(0);
    const allowed = await run('iscsi-inq', ['-i', ALLOWED, iscsi]);
    expect(String(allowed.stdout)).toMatch(/VASTSKY/);
    // Discovery shows the target only to initiators that may use it.
    const portal = iscsi.split('/').slice(0, 3).join('/');
    const seen = await tryRun('iscsi-ls', ['-i', OTHER, portal]);
    expect(String(seen.stdout)).not.toMatch(/vastsky:iv/);
    const listed = await run('iscsi-ls', ['-i', ALLOWED, portal]);
    expect(String(listed.stdout)).toMatch(/vastsky:iv/);
  });
});
