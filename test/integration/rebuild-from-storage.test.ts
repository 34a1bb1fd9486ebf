import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { call } from '../../shared/grpc.js';
import { destroyTestCluster, startTestCluster } from '../harness/cluster.js';
import { expectReplicasEqual, readEveryReplica } from '../harness/replicas.js';
import { run } from '../harness/tools.js';
import { vsky } from '../harness/vsky.js';

// Issue 9: delete the manager's database of a running cluster (one volume
// attached and written, one detached, one degraded with a resync running)
// and start the manager with --rebuild-from-storage: every volume is back
// with its name, size and K, the same bytes, the stale replica comes back
// stale (never read) and is resynced, and the head gets its volume back.

const MiB = 1024 * 1024;
const SIZE = 48 * MiB; // 3 segments of 16 MiB

async function readAll(uri: string, dir: string, name: string): Promise<string> {
  const out = join(dir, `${name}.raw`);
  await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', uri, out]);
  const { stdout } = await run('sha256sum', [out]);
  return String(stdout).split(' ')[0]!;
}

describe('a manager rebuilt from storage', () => {
  let c: LocalCluster;

  beforeAll(async () => {
    c = await startTestCluster({ managerArgs: ['--resync-mibps', '1', '--lease-ttl', '3000'] });
  });
  afterAll(async () => {
    await destroyTestCluster(c);
  });

  it('brings back every volume, its data and its stale replicas, and the head its volume', { timeout: 240_000 }, async () => {
    const m = c.managerAddress;
    const uris: Record<string, string> = {};
    for (const name of ['a', 'b', 'c']) {
      uris[name] = await c.ensureVolume(name, SIZE, 3);
      await run('qemu-io', ['-f', 'raw', '-c', `write -P 0x${name.charCodeAt(0).toString(16)} 0 20M`, uris[name]!]);
    }
    // c degraded: a disk holding one of its replicas fails; then c is written again (the stale replica misses it).
    const client = c.client();
    const before = await call(client, 'ShowVolume', { name: 'c' });
    const lostDisk = before.map!.segments[0]!.replicas[0]!.diskId;
    expect((await vsky(['disk', 'fail', lostDisk], m)).exitCode).toBe(0);
    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x7e 1M 8M', uris.c!]);
    const degraded = await call(client, 'ShowVolume', { name: 'c' });
    expect(degraded.info!.degraded).toBe(true); // premise: a replica of c is stale, its resync is throttled
    const sums: Record<string, string> = {};
    for (const name of ['a', 'b', 'c']) sums[name] = await readAll(uris[name]!, c.opts.dir, `${name}-before`);
    expect((await vsky(['volume', 'detach', 'b'], m)).exitCode).toBe(0);
    client.close();

    // The manager host is reinstalled: its database is gone.
    await c.manager.stop();
    rmSync(join(c.opts.dir, 'manager'), { recursive: true, force: true });
    // Resyncs unthrottled from here: the throttle only kept c's resync running until the database was lost.
    c.manager.args.push('--rebuild-from-storage', '--rebuild-servers', String(c.nodes.length), '--rebuild-wait', '20000', '--resync-mibps', '0');
    await c.manager.start(60_000);

    const after = c.client();
    try {
      const { volumes } = await call(after, 'ListVolumes', {});
      expect(volumes.map((v) => [v.name, v.size, v.replicas]).sort()).toEqual([['a', SIZE, 3], ['b', SIZE, 3], ['c', SIZE, 3]]);
      // The stale replica of c came back stale (never in sync), however its own chunk record reads.
      const cMap = (await call(after, 'ShowVolume', { name: 'c' })).map!;
      const onLost = cMap.segments[0]!.replicas.find((r) => r.diskId === lostDisk);
      expect(onLost?.state ?? 'replaced').not.toBe('in_sync');
      // The head claims the volume it still holds: recorded as its holder again.
      for (let i = 0; i < 100; i++) {
        if ((await call(after, 'ShowVolume', { name: 'a' })).info!.attachedHead === 'head1') break;
        await new Promise((r) => setTimeout(r, 100));
      }
      expect((await call(after, 'ShowVolume', { name: 'a' })).info!.attachedHead).toBe('head1');
      // Same bytes through maps the rebuilt manager hands out (b attached anew; c once its resync finished).
      // b is held by nobody: attachable once heads had one lease TTL to claim it (the refusal says so).
      let bUri = '';
      for (let i = 0; i < 50 && !bUri; i++) {
        try {
          bUri = (await call(after, 'AttachVolume', { name: 'b', head: 'head1' }, 30_000)).nbdUri;
        } catch (err) {
          expect(String(err)).toMatch(/rebuilt from storage and a head may still hold it/);
          await new Promise((r) => setTimeout(r, 200));
        }
      }
      expect(await readAll(bUri, c.opts.dir, 'b-after')).toBe(sums.b);
      expect(await readAll(uris.a!, c.opts.dir, 'a-after')).toBe(sums.a);
      const healed = async (name: string) => {
        const info = (await call(after, 'ShowVolume', { name })).info!;
        return !info.degraded && info.resyncs === 0;
      };
      for (let i = 0; i < 600 && !((await healed('a')) && (await healed('c'))); i++) await new Promise((r) => setTimeout(r, 200));
      expect(await healed('c')).toBe(true);
      expect(await healed('a')).toBe(true);
      const cUri = (await call(after, 'AttachVolume', { name: 'c', head: 'head1' }, 30_000)).nbdUri;
      expect(await readAll(cUri, c.opts.dir, 'c-after')).toBe(sums.c);
      for (const name of ['c', 'a']) {
        const { copies } = await readEveryReplica(c, name);
        const seg0 = copies.filter((x) => x.segment === 0);
        const diffs = seg0.slice(1).map((x) => {
          let at = -1;
          for (let i = 0; i < x.data.length; i++) if (x.data[i] !== seg0[0]!.data[i]) { at = i; break; }
          return `${name} slot ${x.slot} vs slot ${seg0[0]!.slot}: first diff at ${at} (${x.data[at]} vs ${seg0[0]!.data[at]})`;
        }).filter((d) => !d.includes('at -1'));
        const seg0map = (await call(after, 'ShowVolume', { name })).map!.segments[0]!.replicas.map((r) => `${r.slot}@${r.diskId.slice(0, 4)}#${r.chunkIndex}:${r.state}`);
        expect({ diffs, seg0map }).toEqual({ diffs: [], seg0map });
        await expectReplicasEqual(c, name);
      }
    } finally {
      after.close();
    }
  });
});
