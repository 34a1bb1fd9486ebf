import { existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bindServer, call, grpc, loadProtos, managerClient, unary } from '../../shared/grpc.js';
import { initCa, issueCert } from '../../shared/security/ca.js';
import { INSECURE, expectRole, loadTls, type TlsMaterial } from '../../shared/security/credentials.js';
import { newDaemonServer } from '../../shared/security/authorize.js';
import { VskyError } from '../../shared/errors.js';

// The CA (real openssl), loading TLS material, and the authorization
// interceptor on an in-process gRPC server over real TLS on loopback:
// roles, self checks, a client refusing a server without a daemon role.

const dir = mkdtempSync(join(tmpdir(), 'vsky-tls-unit-'));
const other = join(dir, 'other');
let server: grpc.Server;
let address: string;
const sec = (name: string, d = dir): TlsMaterial => loadTls({ dir: d, name });

beforeAll(async () => {
  await initCa(dir);
  await issueCert(dir, { name: 'manager', role: 'manager', hosts: ['127.0.0.1'] });
  for (const [name, role] of [['admin', 'admin'], ['ro', 'readonly'], ['h1', 'head']] as const) await issueCert(dir, { name, role });
  await issueCert(dir, { name: 'imposter', role: 'admin', hosts: ['127.0.0.1'] });
  await initCa(other);
  await issueCert(other, { name: 'admin', role: 'admin' });
  server = newDaemonServer({}, {
    selfCheck: (method, req, caller) => (method === 'RegisterHead' && (req as { name: string }).name !== caller.name ? `head "${(req as { name: string }).name}"` : undefined),
  }, sec('manager'));
  server.addService(loadProtos().manager.vsky.manager.Manager.service, {
    ListVolumes: unary(async () => ({ volumes: [] })),
    DeleteVolume: unary(async () => ({})),
    RegisterHead: unary(async () => ({})),
  });
  address = `127.0.0.1:${await bindServer(server, '127.0.0.1:0', sec('manager'))}`;
});
afterAll(() => {
  server?.forceShutdown();
  rmSync(dir, { recursive: true, force: true });
});

async function attempt(name: string, method: 'ListVolumes' | 'DeleteVolume', req: object = {}): Promise<string> {
  const c = managerClient(address, sec(name));
  try {
    await call(c, method as 'ListVolumes', req as never, 5000);
    return 'ok';
  } catch (err) {
    return `${(err as VskyError).code}: ${(err as Error).message}`;
  } finally {
    c.close();
  }
}

describe('cluster CA', () => {
  it('writes keys mode 0600 and certificates carrying name and role', () => {
    expect(statSync(join(dir, 'ca.key')).mode & 0o777).toBe(0o600);
    expect(statSync(join(dir, 'h1.key')).mode & 0o777).toBe(0o600);
    expect(sec('h1').identity).toEqual({ name: 'h1', role: 'head' });
    expect(sec('ro').identity).toEqual({ name: 'ro', role: 'readonly' });
  });

  it('--out makes a complete --tls-dir: the certificate, its key and ca.crt, not ca.key', async () => {
    const out = join(dir, 'alice');
    await issueCert(dir, { name: 'alice', role: 'admin', outDir: out });
    expect(loadTls({ dir: out, name: 'alice' }).identity).toEqual({ name: 'alice', role: 'admin' });
    expect(existsSync(join(out, 'ca.key'))).toBe(false);
  });

  it('refuses to overwrite a CA or a certificate, and bad names', async () => {
    await expect(initCa(dir)).rejects.toThrow(/already holds a CA/);
    await expect(issueCert(dir, { name: 'h1', role: 'head' })).rejects.toThrow(/already exists: pass --force/);
    await expect(issueCert(dir, { name: '../x', role: 'head' })).rejects.toThrow(/not a certificate name/);
    await expect(issueCert(join(dir, 'nope'), { name: 'x', role: 'head' })).rejects.toThrow(/vsky ca init/);
  });

  it('loading checks the key matches, the CA issued it, and the daemon role', () => {
    expect(() => loadTls({ dir, name: 'missing' })).toThrow(/cannot read the certificate .*missing\.crt/);
    expect(() => loadTls({ ca: join(dir, 'ca.crt'), cert: join(other, 'admin.crt'), key: join(other, 'admin.key') })).toThrow(/was not issued by the CA/);
    expect(() => loadTls({ ca: join(dir, 'ca.crt'), cert: join(dir, 'ro.crt'), key: join(dir, 'h1.key') })).toThrow(/is not the private key of/);
    writeFileSync(join(dir, 'junk.crt'), 'not pem');
    expect(() => loadTls({ ca: join(dir, 'ca.crt'), cert: join(dir, 'junk.crt'), key: join(dir, 'h1.key') })).toThrow(/not a PEM certificate/);
    expect(() => expectRole(sec('h1'), 'manager')).toThrow(/has role head; this daemon needs a manager certificate/);
    expect(() => expectRole(INSECURE, 'manager')).not.toThrow();
  });
});

describe('authorization over TLS', () => {
  it('lets each role call what the policy allows, refuses the rest with EPERM naming role and method', async () => {
    expect(await attempt('admin', 'DeleteVolume', { name: 'x' })).toBe('ok');
    expect(await attempt('ro', 'ListVolumes')).toBe('ok');
    expect(await attempt('ro', 'DeleteVolume', { name: 'x' })).toMatch(/^EPERM: permission denied: role readonly \(certificate "ro"\) may not call \/vsky\.manager\.Manager\/DeleteVolume \(allowed: admin\)$/);
    expect(await attempt('h1', 'ListVolumes')).toMatch(/^EPERM: .*role head/);
  });

  it('runs the self check: a head registers only under its own name', async () => {
    const c = managerClient(address, sec('h1'));
    try {
      await expect(call(c, 'RegisterHead', { headId: 'a', name: 'h1', controlAddress: '127.0.0.1:1' })).resolves.toBeDefined();
      await expect(call(c, 'RegisterHead', { headId: 'a', name: 'h2', controlAddress: '127.0.0.1:1' })).rejects.toMatchObject({ code: 'EPERM', message: expect.stringMatching(/RegisterHead for head "h2"/) });
    } finally {
      c.close();
    }
  });

  it('refuses clients without a certificate or from another CA at the handshake', async () => {
    const ca = sec('admin').ca;
    for (const creds of [grpc.credentials.createSsl(ca), grpc.credentials.createSsl(ca, sec('admin', other).key, sec('admin', other).cert), grpc.credentials.createInsecure()]) {
      const c = new (loadProtos().manager.vsky.manager.Manager)(address, creds);
      const err = await new Promise<grpc.ServiceError | null>((resolve) => c.ListVolumes({}, { deadline: Date.now() + 5000 }, (e) => resolve(e)));
      c.close();
      expect(err?.code).toBe(grpc.status.UNAVAILABLE);
    }
  });

  it('a client refuses a server whose certificate holds no daemon role', async () => {
    const s = newDaemonServer({}, {}, sec('imposter'));
    s.addService(loadProtos().manager.vsky.manager.Manager.service, { ListVolumes: unary(async () => ({ volumes: [] })) });
    const port = await bindServer(s, '127.0.0.1:0', sec('imposter'));
    const c = managerClient(`127.0.0.1:${port}`, sec('admin'));
    try {
      await expect(call(c, 'ListVolumes', {}, 5000)).rejects.toMatchObject({ code: 'ETRANSPORT', message: expect.stringMatching(/TLS handshake .*without a daemon role \(admin\)/) });
    } finally {
      c.close();
      s.forceShutdown();
    }
  });
});
