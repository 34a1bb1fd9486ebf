import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

process.env.VSKY_LOG_LEVEL ??= 'silent';
const { ManagerCore } = await import('../../manager/core.js');
const { FakePeers } = await import('../harness/manager-fake-peers.js');
const errors = await import('../../shared/errors.js');
const { MAX_COUNTER } = await import('../../shared/counters.js');

// Write leases at the manager (manager/leases.ts, manager/attachments.ts) with
// fake heads and nodes, a real LevelDB and a fake clock: each test tries to
// break one promise of the lease contract (docs/leases.md).

type Core = Awaited<ReturnType<typeof ManagerCore.open>>;
type Peers = InstanceType<typeof FakePeers>;

const CHUNK = 1 << 20;
const TTL = 8_000;
const H = ['10.1.0.1:7720', '10.1.0.2:7720', '10.1.0.3:7720'];
let dir: string;
let now = 1_000_000;
let core: Core | undefined;

beforeEach(() => { dir = mkdtempSync(join(tmpdir(), 'vsky-mgr-lease-')); now = 1_000_000; });
afterEach(async () => {
  await core?.close();
  core = undefined;
  rmSync(dir, { recursive: true, force: true });
});

/** 4 nodes, 3 heads (hv0..hv2), volume v attached to hv0 (epoch 1). */
async function setup(): Promise<{ c: Core; peers: Peers }> {
  const peers = new FakePeers();
  for (let i = 0; i < 4; i++) peers.addNode(`srv${i}`).addDisk(`d${i}`, 20, CHUNK);
  core = await ManagerCore.open({
    dataDir: dir, chunkSize: CHUNK, heartbeatTimeoutMs: 5_000, leaseTtlMs: TTL, now: () => now,
    leases: { releaseTimeoutMs: 50, pollMs: 5 },
  }, peers);
  for (const n of peers.nodes.values()) await core.registry.registerServer(n.nodeInfo());
  for (let i = 0; i < 3; i++) {
    peers.addHead(H[i]!);
    await core.registry.registerHead({ headId: `head-${i}`, name: `hv${i}`, controlAddress: H[i]!, nbdAddress: '' });
  }
  await core.volumes.create({ name: 'v', size: 2 * CHUNK, replicas: 3, spreadLabel: '' });
  await core.attachments.attach('v', 'hv0');
  return { c: core, peers };
}

const vol = (c: Core) => c.volumes.entry('v').volume;
const snapshot = (c: Core) => {
  const v = vol(c);
  return { epoch: v.epoch, attachedHead: v.attachedHead, standbyHead: v.standbyHead ?? '' };
};
const heartbeat = async (c: Core, ...ids: string[]) => { for (const id of ids) await c.registry.headHeartbeat(id); };

describe('live migration: a standby head and the lease that follows the I/O', () => {
  it('--migrate attaches a standby without a new epoch; the holder is untouched', async () => {
    const { c, peers } = await setup();
    const v = await c.attachments.attach('v', 'hv1', { migrate: true });
    expect(v).toMatchObject({ epoch: 1, attachedHead: 'head-0', standbyHead: 'head-1', standbyNbdUri: `nbd://${H[1]}/v` });
    const got = peers.heads.get(H[1]!)!.attached.get('v')!;
    expect(got.req).toMatchObject({ standby: true, epoch: 1 });
    expect(peers.heads.get(H[0]!)!.attached.get('v')!.epoch).toBe(1);
    expect(c.leases.state(v).lease).toBe('held');
  });

  it('bad input is refused and changes nothing', async () => {
    const { c } = await setup();
    await c.attachments.attach('v', 'hv1', { migrate: true });
    const before = snapshot(c);
    await expect(c.attachments.attach('v', 'hv0', { migrate: true })).rejects.toBeInstanceOf(errors.InvalidArgumentError);
    await expect(c.attachments.attach('v', 'hv2', { migrate: true })).rejects.toThrow(/one migration at a time/);
    await expect(c.leases.handoff('v', 'nope')).rejects.toBeInstanceOf(errors.NotFoundError);
    await expect(c.leases.handoff('v', 'hv0')).rejects.toThrow(/already holds/);
    await expect(c.leases.handoff('v', 'hv2')).rejects.toThrow(/not attached to head hv2.*--migrate/);
    await expect(c.leases.detachHead('v', 'hv2', false)).rejects.toThrow(/not attached to head hv2/);
    await expect(c.leases.acquire('v', 'head-2', 'r1')).rejects.toBeInstanceOf(errors.ConflictError);
    await expect(c.attachments.attach('v', 'hv1')).rejects.toThrow(/standby.*handoff/);
    expect(snapshot(c)).toEqual(before);
    await c.volumes.create({ name: 'w', size: CHUNK, replicas: 3, spreadLabel: '' });
    await expect(c.attachments.attach('w', 'hv1', { migrate: true })).rejects.toThrow(/not attached/);
    expect(c.volumes.entry('w').volume).toMatchObject({ attachedHead: '', epoch: 0 });
  });

  it('acquire by the standby: the holder releases, the standby gets epoch+1, the old holder stays as the standby; and back', async () => {
    const { c, peers } = await setup();
    await c.attachments.attach('v', 'hv1', { migrate: true });
    const m = await c.leases.acquire('v', 'head-1', 'req-1');
    expect(m).toMatchObject({ epoch: 2, clean: true });
    expect(peers.heads.get(H[0]!)!.releases).toEqual(['v']);
    expect(peers.heads.get(H[1]!)!.attached.get('v')!.req).toMatchObject({ epoch: 2, reconcile: false });
    expect(snapshot(c)).toEqual({ epoch: 2, attachedHead: 'head-1', standbyHead: 'head-0' });
    expect(vol(c).standbyNbdUri).toBe(`nbd://${H[0]}/v`);
    const back = await c.leases.acquire('v', 'head-0', 'req-2');
    expect(back).toMatchObject({ epoch: 3, clean: true });
    expect(peers.heads.get(H[1]!)!.releases).toEqual(['v']);
    expect(snapshot(c)).toEqual({ epoch: 3, attachedHead: 'head-0', standbyHead: 'head-1' });
  });

  it('an acquire retried with the same request id is one move; a new id is another', async () => {
    const { c, peers } = await setup();
    await c.attachments.attach('v', 'hv1', { migrate: true });
    const [a, b] = await Promise.all([c.leases.acquire('v', 'head-1', 'same'), c.leases.acquire('v', 'head-1', 'same')]);
    expect(a.epoch).toBe(2);
    expect(b.epoch).toBe(2);
    expect((await c.leases.acquire('v', 'head-1', 'same')).epoch).toBe(2);
    expect(peers.heads.get(H[0]!)!.releases).toHaveLength(1);
    // The holder asking again (it lost its state) gets a new grant in place, the standby kept.
    expect((await c.leases.acquire('v', 'head-1', 'other')).epoch).toBe(3);
    expect(snapshot(c)).toEqual({ epoch: 3, attachedHead: 'head-1', standbyHead: 'head-0' });
  });

  it('a holder that does not answer is waited out: no grant before its lease expired, then a take-over that reconciles and drops it', async () => {
    const { c, peers } = await setup();
    await c.attachments.attach('v', 'hv1', { migrate: true });
    peers.heads.get(H[0]!)!.releaseMode = 'hang';
    let settled = false;
    const p = c.leases.acquire('v', 'head-1', 'r').finally(() => { settled = true; });
    now += TTL - 1_000;
    await heartbeat(c, 'head-1');
    await new Promise((r) => setTimeout(r, 150));
    expect(settled).toBe(false); // premise: the holder's release timed out (50 ms) and its lease is still live
    expect(peers.heads.get(H[0]!)!.releases).toEqual(['v']);
    expect(snapshot(c)).toEqual({ epoch: 1, attachedHead: 'head-0', standbyHead: 'head-1' });
    now += 1_001;
    const m = await p;
    expect(m).toMatchObject({ epoch: 2, clean: false });
    expect(peers.heads.get(H[1]!)!.attached.get('v')!.req).toMatchObject({ epoch: 2, reconcile: true });
    expect(snapshot(c)).toEqual({ epoch: 2, attachedHead: 'head-1', standbyHead: '' });
    await new Promise((r) => setImmediate(r));
    expect(peers.heads.get(H[0]!)!.attached.has('v')).toBe(false); // dropped (forced detach, best effort)
  });

  it('a holder that keeps renewing but does not release: the move times out, nothing changed', async () => {
    const { c, peers } = await setup();
    await c.close();
    core = await ManagerCore.open({
      dataDir: dir, chunkSize: CHUNK, heartbeatTimeoutMs: 5_000, leaseTtlMs: TTL, now: () => now,
      leases: { releaseTimeoutMs: 20, pollMs: 5, moveTimeoutMs: 200 },
    }, peers);
    await core.registry.registerHead({ headId: 'head-0', name: 'hv0', controlAddress: H[0]!, nbdAddress: '' });
    await core.registry.registerHead({ headId: 'head-1', name: 'hv1', controlAddress: H[1]!, nbdAddress: '' });
    await core.attachments.attach('v', 'hv1', { migrate: true });
    const before = snapshot(core);
    peers.heads.get(H[0]!)!.releaseMode = 'hang';
    await expect(core.leases.acquire('v', 'head-1', 'r')).rejects.toThrow(/keeps renewing its lease/);
    expect(snapshot(core)).toEqual(before);
  });

  it('a release that fails (flush error) is a clear error; the holder keeps the lease', async () => {
    const { c, peers } = await setup();
    await c.attachments.attach('v', 'hv1', { migrate: true });
    const before = snapshot(c);
    peers.heads.get(H[0]!)!.releaseMode = 'fail';
    await expect(c.leases.acquire('v', 'head-1', 'r')).rejects.toThrow(/could not release v: injected flush failure/);
    expect(snapshot(c)).toEqual(before);
  });

  it('a destination that fails the grant rolls the lease back to the source under a new epoch (never reused)', async () => {
    const { c, peers } = await setup();
    await c.attachments.attach('v', 'hv1', { migrate: true });
    peers.heads.get(H[1]!)!.fail = true;
    await expect(c.leases.handoff('v', 'hv1')).rejects.toThrow(/injected attach failure/);
    expect(snapshot(c)).toEqual({ epoch: 3, attachedHead: 'head-0', standbyHead: '' });
    expect(peers.heads.get(H[0]!)!.attached.get('v')!.epoch).toBe(3); // epoch 2 went to the failed destination, never again
  });

  it('detach --head: the standby leaves; the source leaves after handing the lease to the destination', async () => {
    const { c, peers } = await setup();
    await c.attachments.attach('v', 'hv1', { migrate: true });
    await c.leases.detachHead('v', 'hv1', false);
    expect(snapshot(c)).toEqual({ epoch: 1, attachedHead: 'head-0', standbyHead: '' });
    expect(peers.heads.get(H[1]!)!.attached.has('v')).toBe(false);
    await c.attachments.attach('v', 'hv1', { migrate: true });
    await c.leases.detachHead('v', 'hv0', false);
    expect(snapshot(c)).toEqual({ epoch: 2, attachedHead: 'head-1', standbyHead: '' });
    expect(peers.heads.get(H[0]!)!.releases).toEqual(['v']);
    expect(peers.heads.get(H[0]!)!.attached.has('v')).toBe(false);
  });
});

describe('take-over and renewal', () => {
  it('take-over before expiry is refused with the seconds left; after expiry it fences the old holder; --force overrides', async () => {
    const { c, peers } = await setup();
    now += 3_000;
    await expect(c.attachments.attach('v', 'hv1')).rejects.toThrow(/renewed 3\.0 s ago: a take-over is allowed in 5\.0 s/);
    expect(snapshot(c)).toEqual({ epoch: 1, attachedHead: 'head-0', standbyHead: '' });
    now += 5_001;
    expect(c.leases.state(vol(c)).lease).toBe('expired');
    await c.attachments.attach('v', 'hv1');
    expect(snapshot(c)).toEqual({ epoch: 2, attachedHead: 'head-1', standbyHead: '' });
    expect(peers.heads.get(H[1]!)!.attached.get('v')!.req).toMatchObject({ epoch: 2, reconcile: true });
    await heartbeat(c, 'head-1');
    await expect(c.attachments.attach('v', 'hv2')).rejects.toBeInstanceOf(errors.ConflictError);
    await c.attachments.attach('v', 'hv2', { force: true });
    expect(snapshot(c)).toEqual({ epoch: 3, attachedHead: 'head-2', standbyHead: '' });
  });

  it('heartbeats renew; a head that lost a lease is told so, the holder never is (even mid-grant)', async () => {
    const { c } = await setup();
    now += 7_000;
    await heartbeat(c, 'head-0');
    now += 7_000;
    expect(c.leases.state(vol(c))).toEqual({ lease: 'held', renewedAgoMs: 7_000 });
    expect(c.leases.renew('head-0', [{ volume: 'v', epoch: 1 }])).toEqual([]);
    // A re-grant to the holder bumps the epoch before the head hears of it: its older claim is not revoked.
    await c.attachments.attach('v', 'hv0');
    expect(c.leases.renew('head-0', [{ volume: 'v', epoch: 1 }])).toEqual([]);
    now += TTL + 1;
    await c.attachments.attach('v', 'hv1');
    expect(c.leases.renew('head-0', [{ volume: 'v', epoch: 2 }])).toEqual([{ volume: 'v', epoch: 3 }]);
    expect(c.leases.renew('head-1', [{ volume: 'v', epoch: 3 }])).toEqual([]);
    expect(c.leases.renew('head-1', [{ volume: 'gone', epoch: 3 }])).toEqual([{ volume: 'gone', epoch: MAX_COUNTER }]);
  });

  it('a storage node registering gets the current epoch of every volume it holds chunks of', async () => {
    const { c } = await setup();
    await c.attachments.attach('v', 'hv0');
    const serverOf = (d: string) => c.registry.serverOfDisk(d)?.id;
    const withReplica = new Set(c.volumes.entry('v').map.disks.map(serverOf));
    for (const s of c.registry.listServers()) {
      expect(c.volumes.epochsOnServer(s.id, serverOf)).toEqual(withReplica.has(s.id) ? [{ volumeId: vol(c).id, epoch: 2 }] : []);
    }
    expect(withReplica.size).toBeGreaterThanOrEqual(3);
  });

  it('epochs never wrap: a grant at 2^53-1 is refused and changes nothing', async () => {
    const { c, peers } = await setup();
    vol(c).epoch = MAX_COUNTER - 1;
    await c.attachments.attach('v', 'hv0');
    expect(vol(c).epoch).toBe(MAX_COUNTER);
    expect(peers.heads.get(H[0]!)!.attached.get('v')!.epoch).toBe(MAX_COUNTER);
    await expect(c.attachments.attach('v', 'hv0')).rejects.toBeInstanceOf(errors.CounterExhaustedError);
    expect(vol(c)).toMatchObject({ epoch: MAX_COUNTER, attachedHead: 'head-0' });
  });
});

describe('cluster identity', () => {
  it('a node with a disk of another cluster is refused at registration, nothing adopted; its own id is in the reply', async () => {
    const { c, peers } = await setup();
    expect(c.store.clusterId).toMatch(/^[0-9a-f-]{36}$/);
    const stranger = peers.addNode('srv9');
    stranger.addDisk('d9', 20, CHUNK).clusterId = '11111111-2222-3333-4444-555555555555';
    const servers = c.registry.listServers().length;
    await expect(c.registry.registerServer(stranger.nodeInfo())).rejects.toThrow(/disk\(s\) of another cluster.*not adopted, and nothing on it is freed.*--rebuild-from-storage/);
    expect(c.registry.listServers()).toHaveLength(servers);
    expect(c.registry.listDisks().some((d) => d.id === 'd9')).toBe(false);
    // Its own cluster's id (or none yet) is fine.
    stranger.disks.get('d9')!.info.clusterId = c.store.clusterId;
    await c.registry.registerServer(stranger.nodeInfo());
    expect(c.registry.listServers()).toHaveLength(servers + 1);
  });

  it('the cluster id survives a manager restart', async () => {
    const { c, peers } = await setup();
    const id = c.store.clusterId;
    await c.close();
    core = await ManagerCore.open({ dataDir: dir, chunkSize: CHUNK, heartbeatTimeoutMs: 5_000, now: () => now }, peers);
    expect(core.store.clusterId).toBe(id);
  });
});
