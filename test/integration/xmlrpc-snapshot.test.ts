import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { GiB } from '../../shared/constants.js';
import { destroyTestCluster, startTestCluster, chunksOnNodes } from '../harness/cluster.js';
import { tryRun } from '../harness/tools.js';
import { vsky } from '../harness/vsky.js';
import { PythonClient } from './xmlrpc/helpers.js';

// VastSky's createSnapshot over XML-RPC (docs/snapshots.md, /work/shared
// vastsky-api.md 2.2), called by Python 3's stdlib xmlrpc.client
// (test/integration/xmlrpc/vastsky_client.py serve): of an attached origin
// by name, returning the snapshot's lvolid, listed like any volume; the
// snapshot holds the origin's data (read through a clone, one made by
// createClone, ours); the error cases.

const SCRIPT = join(import.meta.dirname, 'xmlrpc', 'vastsky_client.py');
type Json = any; // eslint-disable-line @typescript-eslint/no-explicit-any

describe('XML-RPC createSnapshot and createClone', () => {
  let c: LocalCluster;
  let client: PythonClient;
  const xr = (method: string, struct: Record<string, unknown> = {}): Promise<Json> => client.ok(method, struct);
  const faultCode = (method: string, struct: Record<string, unknown> = {}): Promise<number> => client.faultCode(method, struct);
  const qemuIo = async (uri: string, cmd: string) => {
    const r = await tryRun('qemu-io', ['-f', 'raw', '-c', cmd, uri], 60_000);
    expect(r.exitCode, String(r.stdout) + String(r.stderr)).toBe(0);
    expect(String(r.stdout)).not.toMatch(/Pattern verification failed/);
  };

  beforeAll(async () => {
    c = await startTestCluster({ diskSize: 2 * GiB });
    client = new PythonClient(SCRIPT, c.xmlrpcUrl);
  }, 120_000);
  afterAll(async () => {
    client?.close();
    await destroyTestCluster(c);
  });

  it('snapshots an attached origin by name and returns the snapshot\'s lvolid; errors as VastSky', async () => {
    const origin = await xr('createLogicalVolume', { lvolname: 'xorigin', capacity: 1, redundancy: 2 });
    const head = (await xr('listHeadServers'))[0];
    expect(await xr('attachLogicalVolume', { lvolid: origin, hsvrid: head.hsvrid })).toBe(0);
    const uri = (await xr('listLogicalVolumes', { lvolid: origin }))[0].nbd_uri as string;
    await qemuIo(uri, 'write -P 0x5a 0 1M');

    const snap = await xr('createSnapshot', { origin_lvolname: 'xorigin', snapshot_lvolname: 'xsnap' });
    expect(typeof snap).toBe('number');
    expect(snap).not.toBe(origin);
    const listed = (await xr('listLogicalVolumes')).map((v: Json) => [v.lvolid, v.lvolname]);
    expect(listed).toContainEqual([snap, 'xsnap']);
    expect((await chunksOnNodes(c, 'xsnap')).every((x) => x.lvolid === snap)).toBe(true);
    // The origin is still attached and writes on; the snapshot keeps what it held.
    await qemuIo(uri, 'write -P 0x6b 0 4096');
    await qemuIo(uri, 'read -P 0x6b 0 4096');
    await qemuIo(uri, 'read -P 0x5a 4096 1020k');

    expect(await faultCode('createSnapshot', { origin_lvolid: origin, snapshot_lvolname: 'xsnap' })).toBe(17);
    expect(await faultCode('createSnapshot', { origin_lvolid: snap, snapshot_lvolname: 'xsnap2' })).toBe(22); // a snapshot of a snapshot
    expect(await faultCode('createSnapshot', { origin_lvolname: 'nosuch', snapshot_lvolname: 'x3' })).toBe(2);
    expect(await faultCode('createSnapshot', { origin_lvolid: 999999, snapshot_lvolname: 'x3' })).toBe(2);
    expect(await faultCode('createSnapshot', { snapshot_lvolname: 'x3' })).toBe(22);
    // By id, detached this time (the id wins over a name).
    expect(await xr('detachLogicalVolume', { lvolid: origin })).toBe(0);
    const snap2 = await xr('createSnapshot', { origin_lvolid: origin, origin_lvolname: 'nosuch', snapshot_lvolname: 'xsnap2' });
    expect(typeof snap2).toBe('number');

    // createClone (ours): bad input changes nothing.
    const before = (await xr('listLogicalVolumes')).length;
    expect(await faultCode('createClone', { snapshot_lvolid: origin, clone_lvolname: 'xc' })).toBe(22); // not a snapshot
    expect(await faultCode('createClone', { snapshot_lvolname: 'nosuch', clone_lvolname: 'xc' })).toBe(2);
    expect(await faultCode('createClone', { clone_lvolname: 'xc' })).toBe(22);
    expect(await faultCode('createClone', { snapshot_lvolid: snap })).toBe(22);
    expect(await faultCode('createClone', { snapshot_lvolid: snap, clone_lvolname: 'a/b' })).toBe(22);
    expect(await faultCode('createClone', { snapshot_lvolid: snap, clone_lvolname: 'xorigin' })).toBe(17);
    expect((await xr('listLogicalVolumes')).length).toBe(before);

    // Through clones: xsnap has the first data (cloned over XML-RPC), xsnap2 the overwrite (by the CLI).
    const xc = await xr('createClone', { snapshot_lvolname: 'xsnap', clone_lvolname: 'xsnap-c' });
    expect(typeof xc).toBe('number');
    expect((await xr('listLogicalVolumes', { lvolid: xc }))[0].lvolname).toBe('xsnap-c');
    for (const [s, first] of [['xsnap', '0x5a'], ['xsnap2', '0x6b']] as const) {
      if (s === 'xsnap2') expect((await vsky(['volume', 'clone', s, `${s}-c`], c.managerAddress)).exitCode).toBe(0);
      const a = await vsky(['volume', 'attach', `${s}-c`], c.managerAddress);
      expect(a.exitCode, String(a.stderr)).toBe(0);
      const curi = String(a.stdout).trim().split('\n')[0]!;
      await qemuIo(curi, `read -P ${first} 0 4096`);
      await qemuIo(curi, 'read -P 0x5a 4096 1020k');
    }

    // associated_to / associated_from (vastsky-api.md: a snapshot to its origin, the origin from its
    // snapshots; ours: a clone to its snapshot, the snapshot from its clones), as Python decodes them.
    const rows = new Map<string, Json>((await xr('listLogicalVolumes')).map((v: Json) => [v.lvolname, v]));
    const id = (name: string): number => rows.get(name).lvolid;
    const assoc = (name: string) => ({ to: rows.get(name).associated_to, from: rows.get(name).associated_from });
    const ids = [snap, snap2].sort((a, b) => a - b);
    expect(assoc('xorigin')).toEqual({ to: [], from: ids.map((lvolid) => ({ lvolid, type: 'snapshot' })) });
    expect(assoc('xsnap')).toEqual({ to: [{ lvolid: origin, type: 'snapshot' }], from: [{ lvolid: id('xsnap-c'), type: 'clone' }] });
    expect(assoc('xsnap2')).toEqual({ to: [{ lvolid: origin, type: 'snapshot' }], from: [{ lvolid: id('xsnap2-c'), type: 'clone' }] });
    expect(assoc('xsnap-c')).toEqual({ to: [{ lvolid: snap, type: 'clone' }], from: [] });
    expect(assoc('xsnap2-c')).toEqual({ to: [{ lvolid: snap2, type: 'clone' }], from: [] });
    // By lvolid too (the same entry).
    expect((await xr('listLogicalVolumes', { lvolid: snap }))[0].associated_to).toEqual([{ lvolid: origin, type: 'snapshot' }]);
  }, 240_000);
});
