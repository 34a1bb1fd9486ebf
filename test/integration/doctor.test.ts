import { statfsSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { MiB } from '../../shared/constants.js';
import type { Finding } from '../../cli/doctor/findings.js';
import { destroyTestCluster, startTestCluster } from '../harness/cluster.js';
import { waitUntil } from '../harness/leases.js';
import { run } from '../harness/tools.js';
import { vsky, vskyJson } from '../harness/vsky.js';

// `vsky doctor` against a real local cluster: healthy first (exit 0, the
// head's clock offset measured), then real faults: disks filled by a real
// volume, a storage node killed (-9), a sparse disk file that cannot grow on
// its file system, a certificate about to expire. Each finding must name its
// target and what to do; problems give exit code 1.

interface Report { ok: boolean; problems: number; findings: Finding[] }
let c: LocalCluster;

async function doctor(args: string[]): Promise<{ code: number | undefined; report: Report }> {
  const r = await vsky(['doctor', '--json', ...args], c.managerAddress);
  expect(String(r.stderr)).toBe('');
  return { code: r.exitCode, report: JSON.parse(String(r.stdout)) as Report };
}

const about = (r: Report, check: string, target: RegExp) => r.findings.filter((f) => f.check === check && target.test(f.target));

beforeAll(async () => {
  // 3 servers x 2 disks of 64 MiB in 16 MiB chunks: 18 chunks in all.
  c = await startTestCluster({ servers: 3, diskSize: 64 * MiB, chunkSize: 16 * MiB });
}, 120_000);
afterAll(() => destroyTestCluster(c));

describe('vsky doctor', () => {
  it('a healthy cluster: exit 0, every server reachable, the head\'s clock within the lease margin', { timeout: 60_000 }, async () => {
    const { code, report } = await waitUntil(async () => {
      const d = await doctor(['--no-host']);
      return about(d.report, 'clock', /^head head1/).length > 0 ? d : undefined;
    }, 20_000, 'the head reports its clock offset', 500);
    expect(code, JSON.stringify(report.findings.filter((f) => f.level !== 'ok'))).toBe(0);
    expect(report.ok).toBe(true);
    expect(about(report, 'server', /.*/).map((f) => f.level)).toEqual(['ok', 'ok', 'ok']);
    const clock = about(report, 'clock', /^head head1/)[0]!;
    expect(clock.level).toBe('ok');
    expect(Math.abs(Number(/([+-]?\d+) ms/.exec(clock.message)![1]))).toBeLessThan(2000);
  });

  it('host checks: data-dir and disk files fine and "TLS off" without certificates (exit 0)', async () => {
    const cfg = join(c.opts.dir, 'sn.toml');
    writeFileSync(cfg, `data-dir = "${join(c.opts.dir, 'node1')}"\ndisk = ["${join(c.opts.dir, 'node1', 'disk1.img')}:64M"]\n`);
    const { code, report } = await doctor(['--no-cluster', '--config', cfg]);
    expect(code, JSON.stringify(report)).toBe(0);
    expect(report.findings.map((f) => `${f.level} ${f.check}`)).toEqual(expect.arrayContaining(['ok filesystem', 'ok disk', 'info certificate']));
    expect(about(report, 'certificate', /.*/)[0]!.message).toBe('TLS off: no certificate configured');
  });

  it('host checks: a sparse disk file that cannot grow and a certificate about to expire (exit 1)', { timeout: 60_000 }, async () => {
    const huge = join(c.opts.dir, 'huge.img');
    const fs = statfsSync(c.opts.dir);
    writeFileSync(huge, '');
    truncateSync(huge, Math.min(fs.bavail * fs.bsize * 2, 15 * 1024 ** 4)); // sparse: twice the free space
    const key = join(c.opts.dir, 'x.key');
    const crt = join(c.opts.dir, 'x.crt');
    await run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', crt, '-days', '3', '-subj', '/CN=manager']);
    const sn = join(c.opts.dir, 'sn-full.toml');
    writeFileSync(sn, `data-dir = "${c.opts.dir}"\ndisk = ["${huge}"]\n`);
    const mgr = join(c.opts.dir, 'mgr.toml');
    // The cluster's own gRPC certificates (DIR/tls, docs/security.md) are checked too.
    writeFileSync(mgr, `data-dir = "${join(c.opts.dir, 'manager')}"\nxmlrpc-tls-cert = "${crt}"\ntls-dir = "${c.tls.dir}"\n`);
    const { code, report } = await doctor(['--no-cluster', '--config', sn, '--config', mgr]);
    expect(code).toBe(1);
    const disk = about(report, 'disk', /huge\.img/)[0]!;
    expect(disk.level).toBe('error');
    expect(disk.message).toMatch(/can still grow by .* but its file system has .* free/);
    expect(disk.action).toMatch(/ENOSPC/);
    const cert = about(report, 'certificate', /xmlrpc-tls-cert/)[0]!;
    expect(cert.level).toBe('warning');
    expect(cert.message).toMatch(/expires in [23]\.\d days/);
    expect(about(report, 'certificate', /tls-dir manager\.crt/)[0]).toMatchObject({ level: 'ok', message: expect.stringMatching(/^valid until /) });
    expect(about(report, 'certificate', /tls-dir ca\.crt/)[0]).toMatchObject({ level: 'ok' });
  });

  it('disks filled by a real volume: nearly full disks and pool (exit 1)', { timeout: 60_000 }, async () => {
    const r = await vsky(['volume', 'create', 'big', '--size', '80M', '--replicas', '3', '--thick'], c.managerAddress);
    expect(r.exitCode, String(r.stderr)).toBe(0);
    const disks = (await vskyJson<Array<{ usedChunks: number; chunkCount: number }>>(['disk', 'list'], c.managerAddress));
    // Premise: 15 of 18 chunks allocated; some disk is full.
    expect(disks.reduce((n, d) => n + d.usedChunks, 0)).toBe(15);
    expect(disks.some((d) => d.usedChunks === d.chunkCount)).toBe(true);
    const { code, report } = await doctor(['--no-host']);
    expect(code).toBe(1);
    expect(about(report, 'disk', /^disk .* on node/).length).toBeGreaterThan(0);
    expect(about(report, 'disk', /^pool$/)[0]).toMatchObject({ level: 'warning', message: '83.3% of the chunks of the active disks allocated' });
  });

  it('a killed storage node: an error naming it and what to do, and the degraded volume', { timeout: 60_000 }, async () => {
    await c.nodes[2]!.kill9();
    await waitUntil(async () => {
      const servers = await vskyJson<Array<{ name: string; state: string }>>(['server', 'list'], c.managerAddress);
      return servers.find((s) => s.name === 'node3')?.state === 'failed';
    }, 20_000, 'the manager marks node3 failed', 300);
    const { code, report } = await doctor(['--no-host']);
    expect(code).toBe(1);
    const node = about(report, 'server', /^storage server node3/)[0]!;
    expect(node.level).toBe('error');
    expect(node.message).toMatch(/the manager marked it failed: no heartbeat for \d+ s/);
    expect(node.action).toMatch(/systemctl status vsky-storage-node/);
    expect(about(report, 'volume', /^volume big \(id \d+\)$/)[0]).toMatchObject({ level: 'warning' });
    const human = await vsky(['doctor', '--no-host'], c.managerAddress);
    expect(human.exitCode).toBe(1);
    expect(String(human.stdout)).toMatch(/^ERROR +server: storage server node3 .*\n +-> on node3: systemctl status/m);
    expect(String(human.stdout)).toMatch(/\n\d+ problem\(s\): \d+ error\(s\), \d+ warning\(s\)\n?$/);
  });
});
