import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { MiB } from '../../shared/constants.js';
import { VskyError } from '../../shared/errors.js';
import { call, grpc, loadProtos, managerClient, storageNodeClient } from '../../shared/grpc.js';
import { initCa, issueCert } from '../../shared/security/ca.js';
import { loadTls } from '../../shared/security/credentials.js';
import { destroyTestCluster, startTestCluster } from '../harness/cluster.js';
import { freePort } from '../harness/ports.js';
import { vsky, vskyJson } from '../harness/vsky.js';

// Mutual TLS and roles on a real cluster (docs/security.md): connections
// without a client certificate of the cluster's CA are refused at the
// handshake; a certificate's role decides what it may call, refusals are
// PERMISSION_DENIED naming the role and the method and are in the manager's
// log; a head's certificate acts only for its own head.

type Line = Record<string, unknown>;
let c: LocalCluster;
let other: string; // a second, unrelated CA

beforeAll(async () => {
  c = await startTestCluster({ servers: 2, diskSize: 128 * MiB, chunkSize: 16 * MiB });
  other = mkdtempSync(join(tmpdir(), 'vsky-other-ca-'));
  await initCa(other);
  await issueCert(other, { name: 'admin', role: 'admin' });
}, 120_000);
afterAll(async () => {
  await destroyTestCluster(c);
  rmSync(other, { recursive: true, force: true });
});

function managerLog(): Line[] {
  return readFileSync(c.manager.logPath, 'utf8').split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Line);
}

async function volumeNames(): Promise<string[]> {
  return (await vskyJson<{ name: string }[]>(['volume', 'list'], c.managerAddress)).map((v) => v.name);
}

/** ListVolumes over a channel with these credentials: the error, or undefined when it answered. */
async function listWith(creds: grpc.ChannelCredentials): Promise<grpc.ServiceError | undefined> {
  const client = new (loadProtos().manager.vsky.manager.Manager)(c.managerAddress, creds);
  try {
    return await new Promise((resolve) => {
      client.ListVolumes({}, { deadline: Date.now() + 5000 }, (err) => resolve(err ?? undefined));
    });
  } finally {
    client.close();
  }
}

describe('gRPC mutual TLS', () => {
  it('the cluster runs TLS: the admin certificate works, plain gRPC does not', async () => {
    const ca = readFileSync(join(c.tls.dir!, 'ca.crt'));
    const admin = loadTls({ dir: c.tls.dir!, name: 'admin' });
    expect(await listWith(grpc.credentials.createSsl(ca, admin.key, admin.cert))).toBeUndefined();
    const plain = await listWith(grpc.credentials.createInsecure());
    expect(plain?.code).toBe(grpc.status.UNAVAILABLE);
  });

  it('refuses a client without a certificate, and one whose certificate another CA issued', async () => {
    const ca = readFileSync(join(c.tls.dir!, 'ca.crt'));
    const none = await listWith(grpc.credentials.createSsl(ca));
    expect(none?.code).toBe(grpc.status.UNAVAILABLE);
    const stranger = loadTls({ dir: other, name: 'admin' }); // role admin, but not our CA
    const foreign = await listWith(grpc.credentials.createSsl(ca, stranger.key, stranger.cert));
    expect(foreign?.code).toBe(grpc.status.UNAVAILABLE);
    // The CLI with the stranger's files says what is wrong before it dials.
    const r = await vsky(['volume', 'list', '--tls-ca', join(c.tls.dir!, 'ca.crt'), '--tls-cert', join(other, 'admin.crt'), '--tls-key', join(other, 'admin.key')], c.managerAddress);
    expect(r.exitCode).not.toBe(0);
    expect(String(r.stderr)).toMatch(/was not issued by the CA/);
  });

  it('a read-only certificate lists but cannot delete; the volume stays; the refusal is logged by the manager', async () => {
    expect((await vsky(['volume', 'create', 'tls1', '--size', '32M', '--replicas', '2'], c.managerAddress)).exitCode).toBe(0);
    const list = await vsky(['volume', 'list', '--json', '--tls-name', 'readonly'], c.managerAddress);
    expect(list.exitCode, String(list.stderr)).toBe(0);
    expect((JSON.parse(String(list.stdout)) as { name: string }[]).map((v) => v.name)).toContain('tls1');
    const del = await vsky(['volume', 'delete', 'tls1', '--tls-name', 'readonly'], c.managerAddress);
    expect(del.exitCode).not.toBe(0);
    expect(String(del.stderr)).toMatch(/permission denied: role readonly \(certificate "readonly"\) may not call \/vsky\.manager\.Manager\/DeleteVolume/);
    expect(await volumeNames()).toContain('tls1');
    const logged = managerLog().filter((l) => l.mod === 'authz' && l.method === '/vsky.manager.Manager/DeleteVolume');
    expect(logged.length).toBeGreaterThan(0);
    expect(logged[0]).toMatchObject({ role: 'readonly', cert: 'readonly', level: 40 });
  });

  it('a head certificate cannot create volumes; an admin one can', async () => {
    const r = await vsky(['volume', 'create', 'tls2', '--size', '32M', '--tls-name', 'head1'], c.managerAddress);
    expect(r.exitCode).not.toBe(0);
    expect(String(r.stderr)).toMatch(/role head \(certificate "head1"\) may not call \/vsky\.manager\.Manager\/CreateVolume/);
    expect(await volumeNames()).not.toContain('tls2');
    const ok = await vsky(['volume', 'create', 'tls2', '--size', '32M', '--replicas', '2'], c.managerAddress);
    expect(ok.exitCode, String(ok.stderr)).toBe(0);
    expect(await volumeNames()).toContain('tls2');
  });

  it('a head certificate acts only for its own head', async () => {
    const { heads } = await call(c.client(), 'ListHeads', {});
    const head1 = heads.find((h) => h.name === 'head1')!;
    await c.tls.ensure({ name: 'intruder', role: 'head', hosts: [] });
    const own = managerClient(c.managerAddress, c.tls.security('head1'));
    const intruder = managerClient(c.managerAddress, c.tls.security('intruder'));
    try {
      // Premise: head1's own certificate may heartbeat for head1.
      expect((await call(own, 'HeadHeartbeat', { headId: head1.headId, leases: [], jobs: [] })).known).toBe(true);
      const err = await call(intruder, 'HeadHeartbeat', { headId: head1.headId, leases: [], jobs: [] }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(VskyError);
      expect((err as VskyError).code).toBe('EPERM');
      expect((err as VskyError).message).toMatch(/certificate "intruder".*HeadHeartbeat for head "head1"/);
      const reg = await call(intruder, 'RegisterHead', { headId: 'fake-id', name: 'head1', controlAddress: '127.0.0.1:1' }).catch((e: unknown) => e);
      expect((reg as VskyError).code).toBe('EPERM');
    } finally {
      own.close();
      intruder.close();
    }
    expect((await call(c.client(), 'ListHeads', {})).heads.filter((h) => h.name === 'head1').map((h) => h.headId)).toEqual([head1.headId]);
  });

  it('storage nodes: read-only may read, only admins inject faults', async () => {
    const ro = storageNodeClient(String(c.nodes[0]!.ready.controlAddress), c.tls.security('readonly'));
    try {
      expect((await call(ro, 'GetInfo', {})).name).toBe('node1');
      const err = await call(ro, 'SetDiskFault', { diskId: '', fault: '' } as never).catch((e: unknown) => e);
      expect((err as VskyError).code).toBe('EPERM');
      expect((err as VskyError).message).toMatch(/role readonly .*SetDiskFault/);
    } finally {
      ro.close();
    }
  });

  it('the CLI and the daemons need TLS or an explicit --insecure', async () => {
    const cwd = mkdtempSync(join(tmpdir(), 'vsky-notls-'));
    try {
      const r = await vsky(['volume', 'list'], undefined, 30_000, { VSKY_TLS_DIR: '', VSKY_INSECURE: '' });
      expect(r.exitCode).not.toBe(0);
      expect(String(r.stderr)).toMatch(/no TLS credentials for gRPC: pass --tls-dir DIR/);
      const plain = await vsky(['volume', 'list', '--insecure'], c.managerAddress);
      expect(plain.exitCode).not.toBe(0);
      expect(String(plain.stderr)).toMatch(/--insecure only reaches a cluster running without TLS/);
      const daemon = await vsky(['manager', '--data-dir', join(cwd, 'm'), '--listen', `127.0.0.1:${await freePort()}`, '--no-xmlrpc']);
      expect(daemon.exitCode).not.toBe(0);
      expect(String(daemon.stderr)).toMatch(/gRPC needs TLS: pass --tls-dir DIR .* or --insecure/);
    } finally {
      rmSync(cwd, { recursive: true, force: true });
    }
  });
});
