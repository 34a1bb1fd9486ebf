import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync, appendFileSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { GiB, MiB } from '../../shared/constants.js';
import { destroyTestCluster, startTestCluster } from '../harness/cluster.js';
import { run, tryRun } from '../harness/tools.js';
import { vsky } from '../harness/vsky.js';

// The template test (docs/snapshots.md): an ext4 filesystem made on
// a template volume through the kernel (nbdfuse -> loop -> mkfs.ext4 ->
// mount), snapshotted, ten clones each mounted and changed differently, every
// one fsck clean with its own changes and none of the others', the template
// (read through a fresh clone of its snapshot, and the template volume
// itself) unchanged.

const CLONES = 10;

describe('ext4 template, ten clones', () => {
  let c: LocalCluster;
  let work: string;
  const m = () => c.managerAddress;
  const payload = randomBytes(3 * MiB);
  const files = { 'hello.bin': payload, 'shared.txt': Buffer.from('template\n') };

  const attach = async (name: string): Promise<string> => {
    const r = await vsky(['volume', 'attach', name], m());
    expect(r.exitCode, String(r.stderr)).toBe(0);
    return String(r.stdout).trim().split('\n')[0]!;
  };

  /** Runs fn with the volume's filesystem device (nbdfuse), unmounting and stopping fuse after. */
  const withDevice = async (name: string, uri: string, fn: (dev: string, mnt: string) => Promise<void>) => {
    const fuseDir = join(work, `fuse-${name}`);
    const mnt = join(work, `mnt-${name}`);
    mkdirSync(fuseDir, { recursive: true });
    mkdirSync(mnt, { recursive: true });
    const fuse: ChildProcess = spawn('nbdfuse', [fuseDir, uri], { stdio: 'ignore' });
    const dev = join(fuseDir, 'nbd');
    try {
      for (let i = 0; i < 100 && !existsSync(dev); i++) await new Promise((r) => setTimeout(r, 100));
      expect(existsSync(dev)).toBe(true);
      await fn(dev, mnt);
    } finally {
      await tryRun('umount', [mnt]);
      await tryRun('fusermount3', ['-u', fuseDir]);
      fuse.kill('SIGTERM');
    }
  };
  const mounted = async (dev: string, mnt: string, ro: boolean, fn: () => void | Promise<void>) => {
    await run('mount', ['-o', ro ? 'loop,ro' : 'loop', dev, mnt]);
    try {
      await fn();
      if (!ro) await run('sync', []);
    } finally {
      await run('umount', [mnt]);
    }
  };
  const fsckClean = async (dev: string) => {
    const r = await tryRun('e2fsck', ['-f', '-n', dev], 120_000);
    expect(r.exitCode, String(r.stdout) + String(r.stderr)).toBe(0);
  };
  const expectTemplate = (mnt: string) => {
    expect(readdirSync(mnt).filter((f) => f !== 'lost+found').sort()).toEqual(Object.keys(files).sort());
    for (const [f, data] of Object.entries(files)) expect(readFileSync(join(mnt, f)).equals(data), f).toBe(true);
  };

  beforeAll(async () => {
    c = await startTestCluster({ diskSize: 4 * GiB });
    work = mkdtempSync(join(tmpdir(), 'vsky-snap-ext4-'));
  }, 120_000);
  afterAll(async () => {
    await destroyTestCluster(c);
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it('mkfs.ext4 and files on the template, snapshot it, ten clones changed differently: all fsck clean, template unchanged', async () => {
    expect((await vsky(['volume', 'create', 'golden', '--size', '256M', '--replicas', '2'], m())).exitCode).toBe(0);
    const tplUri = await attach('golden');
    await withDevice('golden', tplUri, async (dev, mnt) => {
      await run('mkfs.ext4', ['-q', '-F', '-E', 'nodiscard', dev], 120_000);
      await mounted(dev, mnt, false, () => {
        for (const [f, data] of Object.entries(files)) writeFileSync(join(mnt, f), data);
      });
      await fsckClean(dev);
    });
    expect((await vsky(['volume', 'detach', 'golden'], m())).exitCode).toBe(0);
    const snap = await vsky(['snapshot', 'create', 'golden', 'golden-v1'], m());
    expect(snap.exitCode, String(snap.stderr)).toBe(0);

    for (let i = 0; i < CLONES; i++) {
      const name = `vm${i}`;
      const r = await vsky(['volume', 'clone', 'golden-v1', name], m());
      expect(r.exitCode, String(r.stderr)).toBe(0);
      const uri = await attach(name);
      await withDevice(name, uri, async (dev, mnt) => {
        await mounted(dev, mnt, false, () => {
          expectTemplate(mnt);
          writeFileSync(join(mnt, `${name}.bin`), randomBytes(64 * 1024 * (i + 1)));
          appendFileSync(join(mnt, 'shared.txt'), `${name}\n`);
          if (i % 3 === 0) unlinkSync(join(mnt, 'hello.bin'));
          if (i % 3 === 1) writeFileSync(join(mnt, 'hello.bin'), Buffer.concat([payload.subarray(0, MiB), Buffer.alloc(4096, i)]));
        });
        await fsckClean(dev);
      });
    }
    // Every clone again, after all were changed: its own changes only.
    for (let i = 0; i < CLONES; i++) {
      const name = `vm${i}`;
      const uri = (String((await vsky(['volume', 'show', name], m())).stdout).match(/at (nbd:\/\/\S+)/) ?? [])[1]!;
      await withDevice(`${name}-ro`, uri, async (dev, mnt) => {
        await fsckClean(dev);
        await mounted(dev, mnt, true, () => {
          const names = readdirSync(mnt).filter((f) => f !== 'lost+found').sort();
          const want = ['shared.txt', `${name}.bin`, ...(i % 3 === 0 ? [] : ['hello.bin'])].sort();
          expect(names, name).toEqual(want);
          expect(readFileSync(join(mnt, 'shared.txt'), 'utf8')).toBe(`template\n${name}\n`);
          expect(readFileSync(join(mnt, `${name}.bin`)).length).toBe(64 * 1024 * (i + 1));
          if (i % 3 === 2) expect(readFileSync(join(mnt, 'hello.bin')).equals(payload)).toBe(true);
          if (i % 3 === 1) expect(readFileSync(join(mnt, 'hello.bin')).equals(Buffer.concat([payload.subarray(0, MiB), Buffer.alloc(4096, i)]))).toBe(true);
        });
      });
    }
    // The template is unchanged: through a fresh clone of its snapshot, and the template volume itself.
    expect((await vsky(['volume', 'clone', 'golden-v1', 'check'], m())).exitCode).toBe(0);
    for (const name of ['check', 'golden']) {
      const uri = await attach(name);
      await withDevice(`${name}-final`, uri, async (dev, mnt) => {
        await fsckClean(dev);
        await mounted(dev, mnt, true, () => expectTemplate(mnt));
      });
    }
  }, 900_000);
});
