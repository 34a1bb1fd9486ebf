import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { MiB } from '../../shared/constants.js';
import { destroyTestCluster, startTestCluster } from '../harness/cluster.js';
import { run, tryRun } from '../harness/tools.js';

// More real clients on a 3-replica volume: fio's nbd engine with data
// verification, and a real kernel ext4 filesystem (nbdfuse -> loop -> mount).

describe('fio and a kernel filesystem on a volume', () => {
  let c: LocalCluster;
  let uri: string;
  let work: string;

  beforeAll(async () => {
    c = await startTestCluster();
    uri = await c.ensureVolume('fsvol', 128 * MiB, 3);
    work = mkdtempSync(join(tmpdir(), 'vsky-clients-'));
  });
  afterAll(async () => {
    await destroyTestCluster(c);
    rmSync(work, { recursive: true, force: true });
  });

  it('fio random read/write with crc32c verification finds no corruption', async () => {
    const r = await run('fio', [
      '--name=verify', '--ioengine=nbd', `--uri=${uri}`, '--rw=randrw', '--bs=4k', '--iodepth=16',
      '--size=32m', '--verify=crc32c', '--verify_fatal=1', '--do_verify=1', '--verify_state_save=0', '--output-format=json',
    ], 120_000);
    const json = JSON.parse(String(r.stdout).slice(String(r.stdout).indexOf('{'))) as { jobs: { error: number; write: { io_bytes: number } }[] };
    expect(json.jobs[0]!.error).toBe(0);
    expect(json.jobs[0]!.write.io_bytes).toBeGreaterThan(0);
  });

  it('holds an ext4 filesystem mounted through nbdfuse and a loop device', async () => {
    const fuseDir = join(work, 'fuse');
    const mnt = join(work, 'mnt');
    mkdirSync(fuseDir);
    mkdirSync(mnt);
    const fuse: ChildProcess = spawn('nbdfuse', [fuseDir, uri], { stdio: 'ignore' });
    const dev = join(fuseDir, 'nbd');
    try {
      for (let i = 0; i < 50 && !existsSync(dev); i++) await new Promise((r) => setTimeout(r, 100));
      expect(existsSync(dev)).toBe(true);
      await run('mkfs.ext4', ['-q', '-F', dev]);
      const payload = randomBytes(3 * MiB);
      await run('mount', ['-o', 'loop', dev, mnt]);
      try {
        writeFileSync(join(mnt, 'hello.bin'), payload);
        await run('sync', []);
      } finally {
        await run('umount', [mnt]);
      }
      const fsck = await tryRun('e2fsck', ['-f', '-n', dev]);
      expect(fsck.exitCode, String(fsck.stdout)).toBe(0);
      await run('mount', ['-o', 'loop,ro', dev, mnt]);
      try {
        expect(readFileSync(join(mnt, 'hello.bin')).equals(payload)).toBe(true);
      } finally {
        await run('umount', [mnt]);
      }
    } finally {
      await tryRun('fusermount3', ['-u', fuseDir]);
      fuse.kill('SIGTERM');
    }
  });
});
