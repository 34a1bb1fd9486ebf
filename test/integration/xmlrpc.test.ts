import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { GiB } from '../../shared/constants.js';
import { destroyTestCluster, startTestCluster } from '../harness/cluster.js';
import { run } from '../harness/tools.js';
import { vskyJson } from '../harness/vsky.js';
import { channelCredentials } from '../../shared/security/credentials.js';
import { PythonClient, grpcHealth, grpcReflectionServices, httpPost, seededFuzzBodies } from './xmlrpc/helpers.js';

// VastSky 3.0's XML-RPC API on a real local cluster, driven by Python 3's
// stdlib xmlrpc.client the way VastSky's own tools and its XCP driver call it
// (test/integration/xmlrpc/vastsky_client.py), plus bad input and a seeded
// fuzz against the manager process. docs/xmlrpc.md.

const SCRIPT = join(import.meta.dirname, 'xmlrpc', 'vastsky_client.py');

type Json = any; // eslint-disable-line @typescript-eslint/no-explicit-any

async function py(args: string[]): Promise<Json> {
  const r = await run('python3', [SCRIPT, ...args], 120_000);
  const lines = String(r.stdout).trim().split('\n');
  return JSON.parse(lines[lines.length - 1]!);
}

describe('XML-RPC (VastSky 3.0 API) on the manager', () => {
  let c: LocalCluster;
  let url: string;
  let client: PythonClient;
  const xr = (method: string, struct: Record<string, unknown> = {}): Promise<Json> => client.ok(method, struct);
  const faultCode = (method: string, struct: Record<string, unknown> = {}): Promise<number> => client.faultCode(method, struct);
  const state = async () => ({
    volumes: (await xr('listLogicalVolumes')).map((v: Json) => [v.lvolid, v.lvolname, v.hsvrid]),
    servers: (await xr('listStorageServers')).map((s: Json) => [s.ssvrid, s.priority]),
    disks: (await xr('listPhysicalDisks')).map((d: Json) => [d.pdskid, d.priority]),
  });

  /** A disk extent and bad blocks marked stale: mirror statuses and the fault flag show it (no resync may run meanwhile). */
  const checkStaleMarks = async (lvolid: number, tree: Json, dext: Json) => {
    expect(await xr('notifyFailure', { target: 4, targetid: dext.lvolid })).toBe(0);
    const after = await xr('showLogicalVolume', { lvolid });
    expect([3, 4]).toContain(after.components[0].components[0].components[0].components.find((d: Json) => d.lvolspec.slot === dext.lvolspec.slot).mirror_status);
    expect((await xr('listLogicalVolumes', { lvolid }))[0].fault).toBe(true);
    // Bad blocks under another segment's extent: that replica goes stale too.
    const other = tree.components[0].components[0].components[1].components[1];
    expect(await xr('notifyBadBlocks', { pdskid: other.lvolspec.pdskid, blocks: [other.lvolspec.offset] })).toBe(0);
    const segment1 = (await xr('showLogicalVolume', { lvolid })).components[0].components[0].components[1].components;
    expect([3, 4]).toContain(segment1.find((d: Json) => d.lvolspec.slot === other.lvolspec.slot).mirror_status);
    // The premise: no resync of the volume copied anything (its head is frozen), so the flags above were not raced.
    const { resyncs } = await vskyJson<{ resyncs: Array<{ volume: string; state: string; bytesCopied: number }> }>(['resync', 'list'], c.managerAddress);
    expect(resyncs.filter((x) => x.volume === 'fail1' && (x.state === 'running' || x.bytesCopied > 0))).toEqual([]);
  };

  beforeAll(async () => {
    c = await startTestCluster({ heads: 2, diskSize: 2 * GiB });
    url = c.xmlrpcUrl;
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/RPC2$/);
    client = new PythonClient(SCRIPT, url);
  });
  afterAll(async () => {
    client?.close();
    await destroyTestCluster(c);
  });

  it('runs a VastSky client workflow: list, create in GB, show the tree, list, attach, NBD I/O, detach, delete', async () => {
    const out = await py(['workflow', url]);
    expect(out).toMatchObject({ servers: 3, disks: 6, heads: 2 });
    // 1 GB, redundancy 3 by default, 16 MiB chunks: 64 mirrors of 3 extents on distinct servers.
    expect(out.show).toMatchObject({ redundancy: 3, mirrors: 64, bytes: GiB, distinct_servers: true, capacity: 1, statuses: [1] });
    expect(out.show.keys).toEqual(['capacity', 'components', 'labels', 'lvolid', 'lvolspec', 'lvoltype', 'mirror_status']);
    expect(out.show.ids).toEqual([out.lvolid, out.lvolid + 1, out.lvolid + 2]);
    expect(out.show.labels).toEqual(['xcp-3b8f7d0e-1c2a-4e5f-9a6b-7c8d9e0f1a2b', `lvol-${out.lvolid.toString(16).padStart(8, '0')}`]);
    expect(out.before_attach).toEqual([0, 0, 0, 1, 3, false]);
    expect(out.attach).toBe(0);
    expect(out.after_attach).toEqual([out.hsvrid, 1, 0]);
    expect(out.nbd_uri).toMatch(/^nbd:\/\//);
    expect(out.write).toBe(true);
    expect(out.read).toBe(true);
    expect(out.statuses_attached).toEqual([2]);
    expect([out.detach, out.after_detach, out.detach_again, out.delete, out.list_deleted]).toEqual([0, [0, 0, 0], 0, 0, 2]);
  });

  it('answers every documented error case with its fault code', async () => {
    const busy = await xr('createLogicalVolume', { lvolname: 'busy1', capacity: 1 });
    const free = await xr('createLogicalVolume', { lvolname: 'free1', capacity: 1, redundancy: 2 });
    const heads = await xr('listHeadServers');
    const head1 = heads.find((h: Json) => h.name === 'head1');
    expect(await xr('attachLogicalVolume', { lvolid: busy, hsvrid: head1.hsvrid })).toBe(0);
    // vsky ... list --json shows the same ids.
    const listed = await vskyJson<{ name: string; lvolid: number }[]>(['volume', 'list'], c.managerAddress);
    expect(listed.filter((v) => v.name === 'busy1' || v.name === 'free1').map((v) => v.lvolid).sort((a, b) => a - b)).toEqual([busy, free]);
    const server = (await xr('listStorageServers'))[0];
    const disk = (await xr('listPhysicalDisks', { ssvrid: server.ssvrid }))[0];
    const before = await state();
    const results: Json[] = await py(['errors', url, JSON.stringify({
      busy_lvolid: busy, busy_name: 'busy1', free_lvolid: free, hsvrid: head1.hsvrid, ssvrid: server.ssvrid,
      pdskid: disk.pdskid, pdsk_path: disk.local_path, head_ips: head1.ip_data, server_ips: server.ip_data,
    })]);
    expect(results.filter((r) => r.want !== r.got)).toEqual([]);
    expect(results.length).toBeGreaterThan(80);
    expect(await state()).toEqual(before);
    expect(await xr('detachLogicalVolume', { lvolid: busy })).toBe(0);
    // shutdownAll with nothing attached halts the cluster: test/integration/rebuild-int-ids.test.ts.
  });

  it('has our own methods in the same style: live hand-off between two heads, take-over, iSCSI access rules, events', async () => {
    const lvolid = await xr('createLogicalVolume', { lvolname: 'mig1', capacity: 1, redundancy: 2 });
    const heads = await xr('listHeadServers');
    const [h1, h2] = ['head1', 'head2'].map((n) => heads.find((h: Json) => h.name === n).hsvrid as number);
    expect(await xr('attachLogicalVolume', { lvolid, hsvrid: h1 })).toBe(0);
    expect(await xr('attachLogicalVolumeStandby', { lvolid, hsvrid: h2 })).toBe(0);
    let e = (await xr('listLogicalVolumes', { lvolid }))[0];
    expect([e.hsvrid, e.standby_hsvrid, e.lease]).toEqual([h1, h2, 'held']);
    const epoch = e.epoch;
    const moved = await xr('handoffLogicalVolume', { lvolid, hsvrid: h2 });
    expect(moved).toMatchObject({ clean: true, epoch: epoch + 1 });
    expect(await xr('detachLogicalVolumeFromHead', { lvolid, hsvrid: h1 })).toBe(0);
    e = (await xr('listLogicalVolumes', { lvolid }))[0];
    expect([e.hsvrid, e.standby_hsvrid]).toEqual([h2, 0]);
    // Take-over: refused while the holder renews its lease, done with force (the old holder is fenced).
    expect(await faultCode('takeoverLogicalVolume', { lvolid, hsvrid: h1 })).toBe(16);
    expect(await xr('takeoverLogicalVolume', { lvolid, hsvrid: h1, force: true })).toBe(0);
    e = (await xr('listLogicalVolumes', { lvolid }))[0];
    expect([e.hsvrid, e.epoch]).toEqual([h1, epoch + 2]);
    const rules = { initiators: ['iqn.2026-01.test:host1'], chap_user: 'vmuser', chap_secret: 'secret-12345678' };
    expect(await xr('setAccessRules', { lvolid, ...rules })).toBe(0);
    expect(await xr('getAccessRules', { lvolid })).toEqual({ initiators: rules.initiators, chap_user: 'vmuser', mutual_user: '' });
    const events = await xr('listEvents', { target: 'volume:mig1' });
    expect(events.map((e: Json) => e.kind)).toEqual(expect.arrayContaining(['volume.created', 'volume.attached', 'volume.standby_attached', 'lease.handoff']));
    expect(events.every((e: Json) => e.target === 4 && e.targetid === lvolid && e.target_name === 'volume:mig1')).toBe(true);
    expect(events.map((e: Json) => e.eventid)).toEqual([...events.map((e: Json) => e.eventid)].sort((a, b) => a - b));
    expect(await xr('detachLogicalVolume', { lvolid })).toBe(0);
    expect(await xr('deleteLogicalVolume', { lvolid })).toBe(0);
  });

  it('runs storage jobs in the same style: submit (idempotent on jobid), get, list, abort; a wrong generation fails the job untouched', async () => {
    const lvolid = await xr('createLogicalVolume', { lvolname: 'jobs1', capacity: 1, redundancy: 2 });
    const gen = (await xr('listLogicalVolumes', { lvolid }))[0].generation ?? undefined;
    const ended = async (jobid: string): Promise<Json> => {
      let j = await xr('getJob', { jobid });
      for (let i = 0; i < 100 && !['succeeded', 'failed', 'fenced', 'aborted'].includes(j.state); i++) {
        await new Promise((r) => setTimeout(r, 100));
        j = await xr('getJob', { jobid });
      }
      return j;
    };
    // A wrong expected generation: the job fails before touching anything.
    await xr('submitJob', { jobid: 'x1', kind: 'wipe', lvolid, generation: 999 });
    expect(await ended('x1')).toMatchObject({ state: 'failed', error: expect.stringMatching(/generation/) });
    expect(await faultCode('submitJob', { jobid: 'x2', kind: 'shred', lvolid })).toBe(22);
    expect(await faultCode('getJob', { jobid: 'nope' })).toBe(2);
    const job = await xr('submitJob', { jobid: 'wipe-1', kind: 'wipe', lvolid });
    expect(job).toMatchObject({ jobid: 'wipe-1', kind: 'wipe', lvolname: 'jobs1' });
    expect((await ended('wipe-1')).state).toBe('succeeded');
    expect((await xr('submitJob', { jobid: 'wipe-1', kind: 'wipe', lvolid })).state).toBe('succeeded'); // the same request again: the same job
    expect((await xr('listJobs', { lvolid })).map((j: Json) => j.jobid)).toContain('wipe-1');
    expect(await faultCode('abortJob', { jobid: 'wipe-1' })).toBe(16); // ended: EBUSY
    if (gen !== undefined) expect((await xr('listLogicalVolumes', { lvolid }))[0].generation).toBe(gen + 1);
    expect(await xr('deleteLogicalVolume', { lvolid })).toBe(0);
  });

  it('marks a disk extent and bad blocks stale, detaches the volumes of a failed head, fails and deletes a disk and a server, registers them again; ids survive a manager restart', async () => {
    const lvolid = await xr('createLogicalVolume', { lvolname: 'fail1', capacity: 1 });
    const hsvrid = (await xr('listHeadServers')).find((h: Json) => h.name === 'head1').hsvrid;
    expect(await xr('attachLogicalVolume', { lvolid, hsvrid })).toBe(0);
    const tree = await xr('showLogicalVolume', { lvolid });
    const dext = tree.components[0].components[0].components[0].components[0];
    // The volume is empty, so its resyncs copy nothing and end at once: the fault flag and the
    // stale statuses could be gone before we read them. The head holding the volume is its resync
    // executor and must take the new map first, so with that head frozen no resync of it can start
    // (it waits for the head, whose lease outlives these few calls): no race with the resync.
    c.head.pause();
    try {
      await checkStaleMarks(lvolid, tree, dext);
    } finally {
      c.head.resume();
    }
    // A head server reported gone: its volumes are detached (VastSky drops its attach rows).
    expect(await xr('notifyFailure', { target: 1, targetid: hsvrid })).toBe(0);
    expect((await xr('listLogicalVolumes', { lvolid }))[0].hsvrid).toBe(0);
    expect(await xr('deleteLogicalVolume', { lvolid })).toBe(0);

    const disks = await xr('listPhysicalDisks');
    const victim = disks[disks.length - 1];
    expect(await xr('notifyFailure', { target: 3, targetid: victim.pdskid })).toBe(0);
    expect((await xr('listPhysicalDisks')).find((d: Json) => d.pdskid === victim.pdskid).priority).toBe(5);
    expect(await xr('deletePhysicalDisk', { pdskid: victim.pdskid })).toBe(0);
    expect((await xr('listPhysicalDisks')).map((d: Json) => d.pdskid)).not.toContain(victim.pdskid);

    const server = (await xr('listStorageServers')).find((s: Json) => s.name === 'node3');
    const node3Disks = (await xr('listPhysicalDisks', { ssvrid: server.ssvrid })).map((d: Json) => d.pdskid);
    expect(await xr('notifyFailure', { target: 2, targetid: server.ssvrid })).toBe(0);
    expect((await xr('listStorageServers', { ssvrid: server.ssvrid }))[0].priority).toBe(4);
    expect(await xr('deleteStorageServer', { ssvrid: server.ssvrid })).toBe(0);
    expect((await xr('listStorageServers')).map((s: Json) => s.ssvrid)).not.toContain(server.ssvrid);
    expect((await xr('listPhysicalDisks')).filter((d: Json) => node3Disks.includes(d.pdskid))).toEqual([]);
    expect(await faultCode('deleteStorageServer', { ssvrid: server.ssvrid })).toBe(2);
    // Registering it again adds it back with its old ssvrid (its deleted disks stay out).
    expect(await xr('registerStorageServer', { ip_data: server.ip_data })).toBe(server.ssvrid);
    expect((await xr('listStorageServers', { ssvrid: server.ssvrid }))[0].priority).toBe(1);
    // ssvr_reporter's registerPhysicalDisk: capacity as a string of 512-byte sectors; the node creates the file.
    const path = join(c.opts.dir, 'node3', 'disk9.img');
    // Its disks come back with it (they were out while it was deleted), then the new one.
    const pdskid = await xr('registerPhysicalDisk', { ssvrid: server.ssvrid, local_path: path, capacity: String((2 * GiB) / 512), srp_name: '' });
    const node3 = await xr('listPhysicalDisks', { ssvrid: server.ssvrid });
    expect(node3.find((d: Json) => d.pdskid === pdskid)).toMatchObject({ local_path: path, capacity: 1, priority: 1 });
    expect(node3.map((d: Json) => d.pdskid)).toEqual(node3Disks.filter((id: number) => id !== victim.pdskid).concat(pdskid));
    expect(await faultCode('registerPhysicalDisk', { ssvrid: server.ssvrid, local_path: path, capacity: String(GiB / 512) })).toBe(17);

    const before = await state();
    const heads = await xr('listHeadServers');
    await c.manager.restart();
    c.managerAddress = String(c.manager.ready.address);
    expect(await state()).toEqual(before);
    expect((await xr('listHeadServers')).map((h: Json) => [h.hsvrid, h.name])).toEqual(heads.map((h: Json) => [h.hsvrid, h.name]));
  });

  it('refuses bad input with a fault or an HTTP error, changes nothing and keeps serving', async () => {
    const before = await state();
    const call = (body: string) => httpPost(url, body);
    const fault = async (body: string) => (await call(body)).body.match(/<name>faultCode<\/name><value><int>(\d+)</)?.[1];
    expect(await fault('<methodCall><methodName>createLogicalVolume</methodName><params><param><value><struct>')).toBe('1');
    expect(await fault('not xml at all')).toBe('1');
    expect(await fault('<?xml version="1.0"?><methodCall><methodName>deleteLogicalVolume</methodName><params><param><value><struct><member><name>lvolname</name><value><string>busy1</string></value></member></struct></value></param></params></methodCall>')).toBe('71');
    expect(await fault('<methodCall><methodName>listLogicalVolumes</methodName><params><param><value><struct><member><name>ver</name><value><int>5x</int></value></member></struct></value></param></params></methodCall>')).toBe('1');
    expect(await fault('<methodCall><methodName>listLogicalVolumes</methodName><params><param><value><struct><member><name>ver</name><value><int>5</int></value></member><member><name>lvolid</name><value><base64>AAAA</base64></value></member></struct></value></param></params></methodCall>')).toBe('2');
    const big = await httpPost(url, { size: 100 * 1024 * 1024 });
    expect(big.status).toBe(413);
    const chunked = await httpPost(url, { size: 8 * 1024 * 1024, chunked: true });
    expect(chunked.status).toBe(413);
    expect((await httpPost(url, '<x/>', { method: 'GET' })).status).toBe(501);
    expect((await httpPost(url.replace('/RPC2', '/xmlrpc'), '<x/>')).status).toBe(404);
    expect((await httpPost(url.replace('/RPC2', '/'), '<methodCall><methodName>listEvents</methodName><params><param><value><struct><member><name>ver</name><value><int>5</int></value></member></struct></value></param></params></methodCall>')).status).toBe(200);
    expect(await state()).toEqual(before);
    expect(c.manager.running).toBe(true);
  });

  it('survives a seeded fuzz of XML-RPC bodies and keeps serving', async () => {
    const before = await state();
    const started = Date.now();
    let answered = 0;
    for (const body of seededFuzzBodies(0x5eed, 400)) {
      const r = await httpPost(url, body);
      expect([200, 400, 413]).toContain(r.status);
      if (r.status === 200) expect(r.body).toMatch(/<methodResponse>/);
      answered++;
    }
    expect(answered).toBe(400);
    expect(Date.now() - started).toBeLessThan(30_000);
    expect(c.manager.running).toBe(true);
    expect(await state()).toEqual(before);
  });

  it('serves gRPC reflection and health on every daemon', async () => {
    const daemons = [
      [c.managerAddress, 'vsky.manager.Manager'],
      [String(c.nodes[0]!.ready.controlAddress), 'vsky.storage.StorageNode'],
      [c.headEndpoints[0]!.grpc, 'vsky.head.HeadAgent'],
    ] as const;
    // Health and reflection are open to every certificate of the cluster, even a read-only one (shared/security/policy.ts).
    const creds = channelCredentials(c.tls.security('readonly'));
    for (const [address, service] of daemons) {
      expect(await grpcHealth(address, service, creds)).toBe('SERVING');
      expect(await grpcHealth(address, '', creds)).toBe('SERVING');
      expect(await grpcReflectionServices(address, creds)).toEqual(expect.arrayContaining([service, 'grpc.health.v1.Health']));
    }
  });
});
