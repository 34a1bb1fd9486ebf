import { mkdirSync, copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { MiB } from '../../shared/constants.js';
import { call } from '../../shared/grpc.js';
import { makeTestCerts, type TestCerts } from '../harness/certs.js';
import { destroyTestCluster, startTestCluster } from '../harness/cluster.js';
import { daemonLog, launchHead, waitUntil, type StartedHead } from '../harness/leases.js';
import { randomFile, run, sameContent, tryRun } from '../harness/tools.js';

// NBD over TLS (NBD_OPT_STARTTLS, x509) with real clients: libnbd's
// nbdinfo/nbdcopy with nbds:// URIs and QEMU's tls-creds-x509. A head with
// --nbd-tls require refuses plaintext clients (ERR_TLS_REQD, then they give
// up) and clients without a certificate the CA signed; one with
// --nbd-tls on serves both.

describe('NBD over TLS', () => {
  let c: LocalCluster;
  let certs: TestCerts;
  let work: string;
  /** libnbd/QEMU client credentials: ca-cert.pem, client-cert.pem, client-key.pem. */
  let clientDir: string;
  /** The CA only: a client that trusts the server but has no certificate of its own. */
  let anonDir: string;
  let required: StartedHead;
  let optional: StartedHead;

  const tlsArgs = (mode: string): string[] => ['--nbd-tls', mode, '--nbd-tls-cert', certs.serverCert, '--nbd-tls-key', certs.serverKey, '--nbd-tls-ca', certs.ca];

  async function attach(name: string, head: string): Promise<void> {
    const m = c.client();
    try {
      const { volumes } = await call(m, 'ListVolumes', {});
      if (!volumes.some((v) => v.name === name)) await call(m, 'CreateVolume', { name, size: 32 * MiB, replicas: 2, spreadLabel: '' }, 60_000);
      await call(m, 'AttachVolume', { name, head }, 30_000);
    } finally {
      m.close();
    }
  }

  const nbds = (h: StartedHead, name: string, dir = clientDir): string => `nbds://${h.nbd}/${name}?tls-certificates=${dir}`;
  const qemuTls = (dir = clientDir): string[] => ['--object', `tls-creds-x509,id=tls0,endpoint=client,dir=${dir}`];
  const qemuNbd = (h: StartedHead, name: string): string => {
    const [host, port] = h.nbd.split(':');
    return `driver=nbd,host=${host},port=${port},export=${name},tls-creds=tls0`;
  };

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'vsky-nbd-tls-'));
    certs = makeTestCerts(join(work, 'pki'));
    clientDir = certs.dir;
    anonDir = join(work, 'anon');
    mkdirSync(anonDir);
    copyFileSync(certs.ca, join(anonDir, 'ca-cert.pem'));
    c = await startTestCluster();
    required = await launchHead(c, 'tlsreq', { args: tlsArgs('require') });
    optional = await launchHead(c, 'tlsopt', { args: tlsArgs('on') });
    await attach('secure', 'tlsreq');
    await attach('either', 'tlsopt');
  }, 120_000);
  afterAll(async () => {
    await required?.daemon.stop();
    await optional?.daemon.stop();
    await destroyTestCluster(c);
    rmSync(work, { recursive: true, force: true });
  });

  it('nbdinfo connects over nbds:// and sees the volume', async () => {
    const r = await run('nbdinfo', ['--json', nbds(required, 'secure')]);
    const info = JSON.parse(String(r.stdout)) as { protocol: string; TLS: boolean; exports: Array<{ 'export-size': number }> };
    expect(info.TLS).toBe(true);
    expect(info.exports[0]!['export-size']).toBe(32 * MiB);
  });

  it('nbdcopy round-trips data over TLS', async () => {
    const src = join(work, 'src.img');
    const back = join(work, 'back.img');
    randomFile(src, 16 * MiB);
    await run('nbdcopy', [src, nbds(required, 'secure')], 120_000);
    await run('nbdcopy', [nbds(required, 'secure'), back], 120_000);
    expect(await sameContent(src, back)).toBe(true);
  });

  it('qemu-img writes and reads over tls-creds-x509', async () => {
    const img = join(work, 'qemu.img');
    await run('qemu-img', ['create', '-f', 'raw', img, '4M']);
    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x3c 0 4M', img]);
    await run('qemu-img', ['convert', '-n', ...qemuTls(), '--target-image-opts', '-f', 'raw', img, qemuNbd(required, 'secure')], 120_000);
    const r = await run('qemu-io', [...qemuTls(), '--image-opts', '-c', 'read -P 0x3c 0 4M', qemuNbd(required, 'secure')]);
    expect(String(r.stdout)).toMatch(/read 4194304\/4194304 bytes/);
    expect(String(r.stdout)).not.toMatch(/Pattern verification failed/);
  });

  it('require: plaintext clients are refused (ERR_TLS_REQD), the head says why', async () => {
    const plain = await tryRun('nbdinfo', [`nbd://${required.nbd}/secure`]);
    expect(plain.exitCode).not.toBe(0);
    // libnbd 1.14 reports NBD_REP_ERR_TLS_REQD to NBD_OPT_GO as ENOTSUP.
    expect(String(plain.stderr)).toMatch(/opt_go.*(not supported|TLS)/);
    const qemu = await tryRun('qemu-img', ['info', '-f', 'raw', `nbd://${required.nbd}/secure`]);
    expect(qemu.exitCode).not.toBe(0);
    expect(String(qemu.stderr)).toMatch(/TLS/);
    // Premise: the same clients get the volume from the head that does not require TLS.
    expect(String((await run('nbdinfo', ['--size', `nbd://${optional.nbd}/either`])).stdout).trim()).toBe(String(32 * MiB));
    // Still serving TLS clients.
    expect(String((await run('nbdinfo', ['--size', nbds(required, 'secure')])).stdout).trim()).toBe(String(32 * MiB));
  });

  it('a client without a certificate the CA signed is refused', async () => {
    const anon = await tryRun('nbdinfo', ['--size', nbds(required, 'secure', anonDir)]);
    expect(anon.exitCode).not.toBe(0);
    // The head's verdict lands in its log as the client gives up (TLS 1.3 checks the client's certificate last).
    await waitUntil(() => daemonLog(c, 'tlsreq').split('\n').some((l) => l.includes('NBD TLS failed') && l.includes('did not return a certificate')), 5000, 'TLS refusal logged');
  });

  it('on: plaintext and TLS clients are both served', async () => {
    expect(String((await run('nbdinfo', ['--size', `nbd://${optional.nbd}/either`])).stdout).trim()).toBe(String(32 * MiB));
    const r = await run('nbdinfo', ['--json', nbds(optional, 'either')]);
    expect((JSON.parse(String(r.stdout)) as { TLS: boolean }).TLS).toBe(true);
  });
});
