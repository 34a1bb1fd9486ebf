import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { GiB } from '../../shared/constants.js';
import { destroyTestCluster, startTestCluster } from '../harness/cluster.js';
import { vsky } from '../harness/vsky.js';
import { PythonClient } from './xmlrpc/helpers.js';

// Issue 10: VastSky's integer ids (lvolid, ssvrid, pdskid, hsvrid, and the
// disk-extent ids of showLogicalVolume) come back identical from a manager
// rebuilt from storage (docs/rebuild-from-storage.md), as Python's
// xmlrpc.client sees them; and an id issued before the loss, to a volume
// deleted since, is not issued again.

const SCRIPT = join(import.meta.dirname, 'xmlrpc', 'vastsky_client.py');
type Json = any; // eslint-disable-line @typescript-eslint/no-explicit-any

const readJson = (path: string): Json => {
  try {
    return JSON.parse(readFileSync(path, 'utf8'));
  } catch {
    return undefined;
  }
};

async function until(what: string, ok: () => Promise<boolean> | boolean, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await ok())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('VastSky integer ids across a rebuild from storage', () => {
  let c: LocalCluster;
  let client: PythonClient;
  const xr = (method: string, struct: Record<string, unknown> = {}): Promise<Json> => client.ok(method, struct);
  /** Everything a VastSky client can hold on to, by our names. */
  const ids = async () => ({
    volumes: Object.fromEntries((await xr('listLogicalVolumes')).map((v: Json) => [v.lvolname, v.lvolid])),
    servers: Object.fromEntries((await xr('listStorageServers')).map((s: Json) => [s.name, s.ssvrid])),
    disks: Object.fromEntries((await xr('listPhysicalDisks')).map((d: Json) => [d.disk_id, [d.pdskid, d.ssvrid]])),
    heads: Object.fromEntries((await xr('listHeadServers')).map((h: Json) => [h.name, h.hsvrid])),
  });
  /** The DEXT ids (disk extents) of a volume's first mirrors. */
  const dexts = async (lvolname: string): Promise<number[]> => {
    const tree = await xr('showLogicalVolume', { lvolname });
    const mirrors = tree.components[0].components[0].components.slice(0, 3);
    return mirrors.flatMap((m: Json) => m.components.map((d: Json) => d.lvolid)).sort((a: number, b: number) => a - b);
  };

  beforeAll(async () => {
    c = await startTestCluster({ heads: 2, diskSize: 2 * GiB });
    client = new PythonClient(SCRIPT, c.xmlrpcUrl);
  });
  afterAll(async () => {
    client?.close();
    await destroyTestCluster(c);
  });

  it('gives back every lvolid, ssvrid, pdskid, hsvrid and extent id, and issues no id twice', { timeout: 180_000 }, async () => {
    const m = c.managerAddress;
    const a = await xr('createLogicalVolume', { lvolname: 'a', capacity: 1, redundancy: 2 });
    const gone = await xr('createLogicalVolume', { lvolname: 'gone', capacity: 1, redundancy: 2 });
    expect((await vsky(['volume', 'create', 'b', '--size', '48M', '--replicas', '3', '--thick'], m)).exitCode).toBe(0);
    const head2 = (await xr('listHeadServers')).find((h: Json) => h.name === 'head2').hsvrid;
    expect(await xr('attachLogicalVolume', { lvolid: a, hsvrid: head2 })).toBe(0);
    expect(await xr('deleteLogicalVolume', { lvolid: gone })).toBe(0);
    const before = await ids();
    expect(Object.keys(before.volumes).sort()).toEqual(['a', 'b']);
    expect(Object.keys(before.servers)).toHaveLength(3);
    expect(Object.keys(before.disks)).toHaveLength(6);
    expect(Object.keys(before.heads).sort()).toEqual(['head1', 'head2']);
    const dextsBefore = await dexts('b');
    const highest = Math.max(gone + 64 + 3 - 1, ...Object.values<number>(before.volumes));

    // Premise: the nodes and heads have heard their ids (and the nodes the counters, past the deleted volume's block).
    const nodeFiles = c.nodes.map((_, i) => join(c.opts.dir, `node${i + 1}`, 'int-ids.json'));
    await until('the nodes to keep their ids and the counters', () => nodeFiles.every((f) => {
      const j = readJson(f);
      return j && j.ssvrid > 0 && Object.keys(j.disks).length === 2 && j.next.lvol > highest;
    }));
    const headFiles = [join(c.opts.dir, 'head', 'int-id.json'), join(c.opts.dir, 'head2', 'int-id.json')];
    await until('the heads to keep their hsvrids', () => headFiles.every((f) => readJson(f)?.hsvrid > 0));
    expect(headFiles.map((f) => readJson(f).hsvrid)).toEqual([before.heads.head1, before.heads.head2]);
    expect(readFileSync(join(c.opts.dir, 'head2', 'hsvrid'), 'utf8')).toBe(`hsvr-${before.heads.head2.toString(16).padStart(8, '0')}\n`);

    // The manager's database is lost; it is rebuilt from the storage nodes.
    await c.manager.stop();
    rmSync(join(c.opts.dir, 'manager'), { recursive: true, force: true });
    c.manager.args.push('--rebuild-from-storage', '--rebuild-servers', String(c.nodes.length), '--rebuild-wait', '20000');
    await c.manager.start(60_000);
    await until('both heads to register again', async () => Object.keys((await ids()).heads).length === 2);

    const after = await ids();
    expect(after).toEqual(before);
    expect(await dexts('b')).toEqual(dextsBefore);
    // The head still holding a claims it, under the same ids.
    await until('head2 to claim a', async () => (await xr('listLogicalVolumes', { lvolid: a }))[0].hsvrid === head2);

    // New records get ids no one had: above the deleted volume's block too (its chunks are gone from storage).
    const fresh = await xr('createLogicalVolume', { lvolname: 'fresh', capacity: 1, redundancy: 2 });
    expect(fresh).toBeGreaterThan(highest);
    const events = JSON.parse(String((await vsky(['events', '--json', '--kind', 'intid.conflict'], m)).stdout));
    expect(events).toEqual([]);
  });

  it('shutdownAll halts the cluster as VastSky does: a server powered off meanwhile is not failed; each leaves the halt by registering again', { timeout: 120_000 }, async () => {
    const m = c.managerAddress;
    const fault = (method: string, struct: Record<string, unknown> = {}): Promise<number> => client.faultCode(method, struct);
    expect(await fault('shutdownAll')).toBe(16); // a is attached (EBUSY), nothing changes
    expect((await xr('listStorageServers')).map((s: Json) => s.priority)).toEqual([1, 1, 1]);
    expect(await xr('detachLogicalVolume', { lvolname: 'a' })).toBe(0);
    expect(await xr('shutdownAll')).toBe(0);
    const servers = await xr('listStorageServers');
    expect(servers.map((s: Json) => [s.priority, s.available])).toEqual([[6, 0], [6, 0], [6, 0]]); // HALT, as VastSky's
    expect(new Set((await xr('listPhysicalDisks')).map((d: Json) => d.priority))).toEqual(new Set([6]));
    expect((await xr('listHeadServers')).map((h: Json) => h.priority)).toEqual([4, 4]); // OFFLINE
    expect(await fault('createLogicalVolume', { lvolname: 'halted', capacity: 1, redundancy: 2 })).toBe(28); // ENOSPC
    const head1 = (await xr('listHeadServers')).find((h: Json) => h.name === 'head1').hsvrid;
    expect(await fault('attachLogicalVolume', { lvolname: 'b', hsvrid: head1 })).toBe(22);

    // node1 is powered off for longer than the heartbeat timeout (3 s): not taken as failed.
    const node1 = servers.find((s: Json) => s.name === 'node1');
    await c.nodes[0]!.stop();
    await new Promise((r) => setTimeout(r, 6000));
    expect((await xr('listStorageServers', { ssvrid: node1.ssvrid }))[0].priority).toBe(6);
    const failed = JSON.parse(String((await vsky(['events', '--json', '--kind', 'server.failed'], m)).stdout));
    expect(failed).toEqual([]);
    // Powered on again: it registers, and is back (HIGH); the others stay halted until they register.
    await c.nodes[0]!.start();
    await until('node1 back from the halt', async () => (await xr('listStorageServers', { ssvrid: node1.ssvrid }))[0].priority === 1);
    expect((await xr('listStorageServers')).filter((s: Json) => s.priority === 6)).toHaveLength(2);
    // VastSky's reporters' way back: registerStorageServer / registerHeadServer give the same ids.
    const node2 = servers.find((s: Json) => s.name === 'node2');
    expect(await xr('registerStorageServer', { ip_data: node2.ip_data })).toBe(node2.ssvrid);
    const h1 = (await xr('listHeadServers')).find((h: Json) => h.name === 'head1');
    expect(await xr('registerHeadServer', { ip_data: h1.ip_data })).toBe(head1);
    expect((await xr('listHeadServers', { hsvrid: head1 }))[0].priority).toBe(1);
    const v = await xr('createLogicalVolume', { lvolname: 'after-halt', capacity: 1, redundancy: 2 });
    expect(await xr('attachLogicalVolume', { lvolid: v, hsvrid: head1 })).toBe(0);
    const halted = JSON.parse(String((await vsky(['events', '--json', '--kind', 'server.halted'], m)).stdout));
    expect(halted).toHaveLength(3);
  });
});
