import { chmodSync, copyFileSync, cpSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Command, Option } from 'commander';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DaemonProcess } from '../../deploy/daemon-process.js';
import { buildProgram } from '../../cli/program.js';
import { configKey } from '../../cli/config/config-keys.js';
import type { Finding } from '../../cli/doctor/findings.js';
import {
  DEFAULT_HEAD_GRPC_PORT, DEFAULT_ISCSI_PORT, DEFAULT_MANAGER_ADDRESS, DEFAULT_NBD_PORT, DEFAULT_NODE_DATA_PORT, DEFAULT_NODE_GRPC_PORT,
  DEFAULT_XMLRPC_PORT, MiB,
} from '../../shared/constants.js';
import { managerClient } from '../../shared/grpc.js';
import { loadTls, type GrpcSecurity } from '../../shared/security/credentials.js';
import { readKeyFile } from '../../shared/security/key-file.js';
import {
  firewallTable, guideCommands, guideSection, mapText, readGuide, rehearsalBlocks, setKey, type GuideDaemon,
} from '../harness/install-guide.js';
import { waitUntil } from '../harness/leases.js';
import { RawDataClient } from '../harness/raw-data-client.js';
import { readEveryReplica } from '../harness/replicas.js';
import { randomFile, run } from '../harness/tools.js';
import { registerManagerTls, vsky, vskyJson } from '../harness/vsky.js';

// A rehearsal of docs/install.md on this machine: the guide's example hosts
// mapped onto loopback addresses of their own (manager 127.0.0.41, storage1-3
// 127.0.0.42-44, heads hv1 127.0.0.45 and hv2 127.0.0.46; no other test uses
// 127.0.0.4x), each
// with its own etc/vsky and var/lib/vsky under a temp dir, its configuration
// file made from the guide's `rehearsal:` blocks and the daemon started as its
// systemd unit starts it (`vsky DAEMON --config FILE`, not LocalCluster), on
// the guide's (default) ports. Then the guide's rolling upgrade: each storage
// node stopped, written around, restarted and waited for until no volume is
// degraded; the manager backed up and restarted; hv1 upgraded both ways the
// guide says: with a live hand-off of its volume to hv2 and back, then with a
// detach and attach. Every byte written must read back, from every replica.
// Security as the guide's "Certificates and keys" says, before any start: its
// `vsky ca init`/`vsky ca issue` commands run (addresses and paths mapped) on
// "mgr1", each host's certificate directory copied to its etc/vsky/tls, the
// data key made with its `openssl rand` and copied to every host (mode 0600),
// the manager's secret key; every daemon runs gRPC mutual TLS and data-path
// authentication from its file, the CLI uses the admin certificate.

const GUIDE_HOSTS: Record<string, string> = {
  '10.0.0.10': '127.0.0.41', '10.0.1.21': '127.0.0.42', '10.0.1.22': '127.0.0.43', '10.0.1.23': '127.0.0.44',
  '10.0.0.31': '127.0.0.45', '10.0.0.32': '127.0.0.46',
};
const MANAGER = `127.0.0.41:${DEFAULT_MANAGER_ADDRESS.split(':')[1]}`;
const STORAGE = ['storage1', 'storage2', 'storage3'];
const VOLUME = 'vm1';
const SIZE = 64 * MiB;
const NBD_URI = `nbd://127.0.0.45:${DEFAULT_NBD_PORT}/${VOLUME}`;
const NBD_URI_HV2 = `nbd://127.0.0.46:${DEFAULT_NBD_PORT}/${VOLUME}`;
const ISCSI_URL = `iscsi://127.0.0.45:${DEFAULT_ISCSI_PORT}/iqn.2026-11.ts.vastsky:${VOLUME}/0`;

interface Status {
  serversActive: number; servers: number; disksActive: number; disks: number; heads: number;
  volumeList: Array<{ name: string; degraded: boolean; resyncs: number }>;
}
interface DoctorReport { ok: boolean; problems: number; findings: Finding[] }

const root = mkdtempSync(join(tmpdir(), 'vsky-install-'));
const guide = readGuide();
const configs: string[] = [];
let manager: DaemonProcess;
const nodes: DaemonProcess[] = [];
let head: DaemonProcess;
/** A second hypervisor's head: where hv1's volume goes during hv1's upgrade (live hand-off). */
let head2: DaemonProcess;
/** What the volume must hold: the last file written through the head. */
let expected = '';

const HOSTS = ['mgr1', 'storage1', 'storage2', 'storage3', 'hv1', 'hv2'];
/** The operators' certificate directory (the guide's /root/vsky-tls/admin, copied to the admin host). */
const adminTls = join(root, 'admin', '.vsky-tls');
let adminSecurity: GrpcSecurity;

/** A path of the guide on `host` (/etc/vsky/..., /root/...) in the rehearsal's tree. */
function hostPath(host: string, path: string): string {
  return join(root, host, path);
}

/** The guide's text made into host's: its addresses the loopback ones, its absolute paths under host's root. */
function onHost(host: string, text: string): string {
  const hostRoot = join(root, host);
  return mapText(text, { ...GUIDE_HOSTS, '"/var/lib/vsky': `"${hostRoot}/var/lib/vsky`, '"/etc/vsky': `"${hostRoot}/etc/vsky` });
}

/** One argument of the guide's commands run on mgr1: addresses mapped, absolute paths under mgr1's root. */
function mgr1Arg(arg: string): string {
  if (GUIDE_HOSTS[arg]) return GUIDE_HOSTS[arg]!;
  return arg.startsWith('/') ? hostPath('mgr1', arg) : arg;
}

/** docs/install.md, Certificates and keys, steps 1-3, with the real CLI and openssl. */
async function makeCertificatesAndKeys(): Promise<void> {
  const section = guideSection(guide, 'Certificates and keys');
  const ca = guideCommands(section, 'vsky ca ');
  expect(ca[0]!.slice(0, 3), 'the guide starts with vsky ca init').toEqual(['vsky', 'ca', 'init']);
  const issued = ca.filter((c) => c[2] === 'issue').map((c) => c[c.indexOf('--name') + 1]);
  expect(issued, 'the guide issues a certificate per daemon and one for admin').toEqual(expect.arrayContaining(
    ['manager', 'storage1', 'storage2', 'storage3', 'hv1', 'hv2', 'admin']));
  for (const cmd of ca) {
    const r = await vsky(cmd.slice(1).map(mgr1Arg));
    expect(r.exitCode, `${cmd.join(' ')}: ${String(r.stderr)}`).toBe(0);
  }
  // "Copy each host its directory to /etc/vsky/tls/" (what scp does; keys 0640 for the vsky group).
  for (const h of HOSTS) {
    const tls = hostPath(h, 'etc/vsky/tls');
    cpSync(hostPath('mgr1', `root/vsky-tls/${h}`), tls, { recursive: true });
    chmodSync(tls, 0o750);
    for (const f of readdirSync(tls)) chmodSync(join(tls, f), f.endsWith('.key') ? 0o640 : 0o644);
    expect(readdirSync(tls).sort(), `${h}: etc/vsky/tls`).toEqual(['ca.crt', `${h === 'mgr1' ? 'manager' : h}.crt`, `${h === 'mgr1' ? 'manager' : h}.key`].sort());
  }
  expect(readdirSync(hostPath('mgr1', 'root/vsky-ca')), 'ca.key stays in the CA directory on mgr1').toContain('ca.key');
  cpSync(hostPath('mgr1', 'root/vsky-tls/admin'), adminTls, { recursive: true });
  registerManagerTls(MANAGER, adminTls);
  adminSecurity = loadTls({ dir: adminTls, name: 'admin' });

  // The data key and the manager's secret key: `openssl rand -out FILE 32`, chmod 600; the data key copied everywhere.
  const rands = guideCommands(section, 'openssl rand ').map((c) => c.slice(0, c.indexOf('&&')));
  expect(rands.map((c) => c[3])).toEqual(['/etc/vsky/data.key', '/etc/vsky/secret.key']);
  for (const cmd of rands) {
    mkdirSync(hostPath('mgr1', 'etc/vsky'), { recursive: true });
    await run(cmd[0]!, cmd.slice(1).map(mgr1Arg));
    chmodSync(mgr1Arg(cmd[3]!), 0o600);
  }
  for (const h of HOSTS.slice(1)) {
    const to = hostPath(h, 'etc/vsky/data.key');
    copyFileSync(hostPath('mgr1', 'etc/vsky/data.key'), to);
    chmodSync(to, 0o600);
  }
  for (const h of HOSTS) expect(statSync(hostPath(h, 'etc/vsky/data.key')).mode & 0o777, `${h}: data.key mode`).toBe(0o600);
}

/** The data-path credentials the daemons were given (the data key of any host: they are one file). */
function dataSecurity() {
  return { key: readKeyFile(hostPath('mgr1', 'etc/vsky/data.key'), 'data key') };
}

/** Writes HOST's /etc/vsky/DAEMON.toml from the guide's text (in the guide's addresses and paths) and makes its state directories. */
function install(host: string, daemon: GuideDaemon, toml: string, stateDirs: string[]): DaemonProcess {
  const hostRoot = join(root, host);
  const text = onHost(host, toml);
  const file = join(hostRoot, 'etc', 'vsky', `${daemon}.toml`);
  mkdirSync(join(hostRoot, 'etc', 'vsky'), { recursive: true });
  // What systemd's StateDirectory= does for the unit.
  for (const d of stateDirs) mkdirSync(join(hostRoot, 'var', 'lib', 'vsky', d), { recursive: true, mode: 0o750 });
  writeFileSync(file, text);
  configs.push(file);
  mkdirSync(join(root, 'logs'), { recursive: true });
  return new DaemonProcess(host, [daemon, '--config', file], join(root, 'logs', `${host}.log`));
}

function block(name: GuideDaemon): string {
  const text = rehearsalBlocks(guide).get(name);
  if (!text) throw new Error(`${name}: no <!-- rehearsal:${name} --> block in docs/install.md`);
  return text;
}

/** The guide's storage1 file made into storage N's: "the same file with their own name, host, label and metrics-listen". */
function storageToml(n: number): string {
  const host = `10.0.1.2${n}`;
  let t = block('storage-node');
  if (n > 1) {
    t = setKey(setKey(setKey(setKey(t, 'name', `"storage${n}"`), 'host', `"${host}"`), 'label', `{ rack = "r${n}" }`), 'metrics-listen', `"${host}:9710"`);
  }
  // The guide's disk-file form, small: 2 x 128 MiB, in 16 MiB chunks.
  t = setKey(t, 'disk', '[\n  "/var/lib/vsky/disks/d0.img:128M",\n  "/var/lib/vsky/disks/d1.img:128M",\n]');
  return setKey(t, 'chunk-size', '"16 MiB"');
}

async function status(): Promise<Status> {
  return vskyJson<Status>(['status'], MANAGER);
}

async function doctor(args: string[] = ['--no-host']): Promise<DoctorReport & { code: number | undefined }> {
  const r = await vsky(['doctor', '--json', ...args], MANAGER);
  return { ...JSON.parse(String(r.stdout)) as DoctorReport, code: r.exitCode };
}

const problems = (d: DoctorReport) => JSON.stringify(d.findings.filter((f) => f.level === 'warning' || f.level === 'error'));

/** A new random file written over the whole volume through a head's NBD export (nbdcopy). */
async function writeVolume(tag: string, uri = NBD_URI): Promise<void> {
  const file = join(root, `${tag}.img`);
  randomFile(file, SIZE);
  await run('nbdcopy', [file, uri], 60_000);
  expected = file;
}

async function readVolume(tag: string, uri = NBD_URI): Promise<Buffer> {
  const out = join(root, `${tag}.read.img`);
  await run('nbdcopy', [uri, out], 60_000);
  return readFileSync(out);
}

interface VolumeView { attachedHead: string; standbyHead: string; epoch: number }
async function showVolume(): Promise<VolumeView> {
  return (await vskyJson<{ info: VolumeView }>(['volume', 'show', VOLUME], MANAGER)).info;
}

async function ok(args: string[]): Promise<string> {
  const r = await vsky(args, MANAGER);
  expect(r.exitCode, `vsky ${args.join(' ')}: ${String(r.stderr)}`).toBe(0);
  return String(r.stdout);
}

/** The guide's hv1 file made into another hypervisor's: its own name, host and metrics-listen. */
function headToml(name: string, host: string): string {
  return setKey(setKey(setKey(block('head-agent'), 'name', `"${name}"`), 'host', `"${host}"`), 'metrics-listen', `"${host}:9720"`);
}

function daemonCommand(name: GuideDaemon): Command {
  return buildProgram().commands.find((c) => c.name() === name)!;
}

beforeAll(async () => {
  await makeCertificatesAndKeys();
  manager = install('mgr1', 'manager',
    setKey(setKey(block('manager'), 'chunk-size', '"16 MiB"'), 'xmlrpc-listen', '"127.0.0.41:8881"'), ['manager']);
  STORAGE.forEach((_, i) => nodes.push(install(`storage${i + 1}`, 'storage-node', storageToml(i + 1), ['storage-node', 'disks'])));
  head = install('hv1', 'head-agent', block('head-agent'), ['head-agent']);
  head2 = install('hv2', 'head-agent', headToml('hv2', '10.0.0.32'), ['head-agent']);
}, 90_000);

afterAll(async () => {
  await Promise.all([head, head2, ...nodes, manager].filter(Boolean).map((d) => d.stop(3000)));
  if (process.env.VSKY_KEEP_TEST_DIRS !== '1') rmSync(root, { recursive: true, force: true });
});

describe('docs/install.md rehearsed on loopback addresses', () => {
  it('the firewall table lists every port option of each daemon with the code\'s default', () => {
    const rows = firewallTable(guide);
    const defaults: Record<string, number> = {
      'manager listen': Number(DEFAULT_MANAGER_ADDRESS.split(':')[1]), 'manager xmlrpc-listen': DEFAULT_XMLRPC_PORT,
      'storage-node data-port': DEFAULT_NODE_DATA_PORT, 'storage-node grpc-port': DEFAULT_NODE_GRPC_PORT,
      'head-agent grpc-port': DEFAULT_HEAD_GRPC_PORT, 'head-agent nbd-port': DEFAULT_NBD_PORT, 'head-agent iscsi-port': DEFAULT_ISCSI_PORT,
    };
    for (const daemon of ['manager', 'storage-node', 'head-agent'] as const) {
      const portKeys = (daemonCommand(daemon).options as Option[]).map(configKey).filter((k) => /(^|-)(port|listen)$/.test(k));
      expect(portKeys.length).toBeGreaterThan(1);
      for (const key of portKeys) {
        const row = rows.find((r) => r.daemon === daemon && r.key === key);
        expect(row, `docs/install.md, Firewall: a row for ${daemon} \`${key}\``).toBeDefined();
        if (defaults[`${daemon} ${key}`] !== undefined) expect(row!.port, `${daemon} ${key}`).toBe(defaults[`${daemon} ${key}`]);
      }
    }
  });

  it('install: configuration files checked by vsky doctor, daemons started from them, a volume attached and written', { timeout: 90_000 }, async () => {
    expect(configs).toHaveLength(6);
    const pre = await doctor(['--no-cluster', ...configs.flatMap((f) => ['--config', f])]);
    expect(pre.code, problems(pre)).toBe(0);
    for (const file of configs) {
      expect(pre.findings.filter((f) => f.check === 'config' && f.target === file).map((f) => f.level), `${file} checked against its daemon's options`).toEqual(['ok']);
    }
    // Premise: the same check catches a typo in a key (the daemon would refuse to start).
    const typo = join(root, 'mgr1', 'etc', 'vsky', 'typo', 'manager.toml');
    mkdirSync(join(typo, '..'), { recursive: true });
    writeFileSync(typo, readFileSync(configs[0]!, 'utf8').replace('lease-ttl =', 'lease-tll ='));
    const bad = await doctor(['--no-cluster', '--config', typo]);
    expect(bad.code).toBe(1);
    expect(bad.findings.find((f) => f.check === 'config')).toMatchObject({ level: 'error', message: expect.stringMatching(/unknown key "lease-tll" \(did you mean "lease-ttl"\?\)/) });
    const ready = await manager.start();
    expect(ready.address).toBe(MANAGER);
    const nodeReady = await Promise.all(nodes.map((n) => n.start()));
    expect(nodeReady.map((r) => r.dataAddress)).toEqual(['42', '43', '44'].map((h) => `127.0.0.${h}:${DEFAULT_NODE_DATA_PORT}`));
    const headReady = await head.start();
    expect(headReady.nbdAddress).toBe(`127.0.0.45:${DEFAULT_NBD_PORT}`);
    // Premises: the daemons really run what their files say. Plain gRPC is refused by the manager,
    // and a storage node refuses a data connection with another key but takes one with the guide's.
    const plain = await vsky(['status', '--insecure'], MANAGER, 30_000);
    expect(plain.exitCode, 'the manager refuses a client without a certificate').not.toBe(0);
    await expect(RawDataClient.connect(`127.0.0.42:${DEFAULT_NODE_DATA_PORT}`, randomBytes(32))).rejects.toThrow(/refused this data key/);
    (await RawDataClient.connect(`127.0.0.42:${DEFAULT_NODE_DATA_PORT}`, dataSecurity().key)).close();
    await waitUntil(async () => {
      const s = await status();
      return s.serversActive === 3 && s.disksActive === 6 && s.heads === 1;
    }, 20_000, '3 servers, 6 disks and the head registered', 200);

    const created = await vsky(['volume', 'create', VOLUME, '--size', '64M'], MANAGER);
    expect(created.exitCode, String(created.stderr)).toBe(0);
    const attached = await vskyJson<{ nbdUri: string; iscsiUrl: string }>(['volume', 'attach', VOLUME, '--head', 'hv1'], MANAGER);
    expect(attached).toMatchObject({ nbdUri: NBD_URI, iscsiUrl: ISCSI_URL });
    await writeVolume('install');
    const cap = await run('iscsi-readcapacity16', ['-s', ISCSI_URL]);
    expect(Number(String(cap.stdout).trim())).toBe(SIZE);
    const d = await waitUntil(async () => { const x = await doctor(); return x.code === 0 ? x : undefined; }, 15_000, 'vsky doctor: no problem', 500);
    expect(d.findings.filter((f) => f.check === 'server' && f.level === 'ok')).toHaveLength(3);
  });

  it('upgrade, storage nodes one by one: each is degraded while down and fully redundant again before the next', { timeout: 120_000 }, async () => {
    const took: string[] = [];
    for (const [i, node] of nodes.entries()) {
      await node.stop();
      expect(await node.waitExit(), `${node.name} stops cleanly on SIGTERM`).toBe(0);
      await writeVolume(`while-${node.name}-down`);
      // Premise: the writes really missed this node.
      expect((await status()).volumeList.find((v) => v.name === VOLUME)?.degraded, `${VOLUME} degraded while ${node.name} is down`).toBe(true);
      const down = await doctor();
      expect(down.code, 'vsky doctor: a problem while a node is down').toBe(1);
      expect(down.findings.find((f) => f.check === 'volume')?.action).toMatch(new RegExp(`^storage server\\(s\\) ${node.name} down: the replicas they missed resync once they are back`));
      await node.start();
      const t0 = Date.now();
      await waitUntil(async () => {
        const s = await status();
        return s.serversActive === 3 && s.volumeList.every((v) => !v.degraded);
      }, 45_000, `no degraded volume after ${node.name} came back`, 250);
      took.push(`${node.name} ${Date.now() - t0} ms`);
      const d = await doctor();
      expect(d.code, `after ${node.name} (${i + 1}/3, resynced in ${Date.now() - t0} ms): ${problems(d)}`).toBe(0);
    }
    console.log(`rolling restart of the storage nodes, ${SIZE / MiB} MiB rewritten while each was down: fully redundant again after ${took.join(', ')} (from its start)`);
  });

  it('upgrade, the manager: backed up while stopped, writes and reads go on without it, everything registers again', { timeout: 60_000 }, async () => {
    await manager.stop();
    expect(await manager.waitExit()).toBe(0);
    const backup = join(root, 'vsky-manager-backup.tgz');
    await run('tar', ['-C', join(root, 'mgr1', 'var', 'lib', 'vsky'), '-czf', backup, 'manager']);
    expect(String((await run('tar', ['-tzf', backup])).stdout)).toMatch(/^manager\/db\/CURRENT$/m);
    // Premise: the manager really is down; the head serves writes and reads without it.
    expect((await vsky(['status'], MANAGER, 30_000)).exitCode).not.toBe(0);
    await writeVolume('manager-down');
    expect((await readVolume('manager-down')).equals(readFileSync(expected))).toBe(true);
    await manager.start();
    const d = await waitUntil(async () => {
      const x = await doctor();
      return x.code === 0 && x.findings.some((f) => f.check === 'clock' && f.target.startsWith('head hv1')) ? x : undefined;
    }, 20_000, 'vsky doctor: no problem, the head heartbeating again', 500);
    expect(d.findings.filter((f) => f.check === 'server' && f.level === 'ok')).toHaveLength(3);
    const s = await status();
    expect(s).toMatchObject({ serversActive: 3, disksActive: 6, heads: 1 });
  });

  it('upgrade, a head with a live hand-off: its volume moves to hv2 (writes on hv2 take the lease), hv1 restarts empty, the volume comes back', { timeout: 90_000 }, async () => {
    await head2.start();
    await waitUntil(async () => (await doctor()).findings.some((f) => f.check === 'clock' && f.target.startsWith('head hv2')), 15_000, 'hv2 registered and heartbeating', 500);
    const standby = await vskyJson<{ nbdUri: string }>(['volume', 'attach', VOLUME, '--head', 'hv2', '--migrate'], MANAGER);
    expect(standby.nbdUri).toBe(NBD_URI_HV2);
    const before = await showVolume();
    expect(before).toMatchObject({ attachedHead: 'hv1', standbyHead: 'hv2' });
    // "Migrate the VM": it now writes through hv2; the first I/O there moves the lease.
    await writeVolume('on-hv2', NBD_URI_HV2);
    const moved = await showVolume();
    expect(moved.attachedHead).toBe('hv2');
    expect(moved.epoch).toBeGreaterThan(before.epoch);
    await ok(['volume', 'detach', VOLUME, '--head', 'hv1']);
    expect(await showVolume()).toMatchObject({ attachedHead: 'hv2', standbyHead: '' });

    await head.stop();
    expect(await head.waitExit()).toBe(0);
    await head.start();
    await waitUntil(async () => {
      const d = await doctor();
      return d.code === 0 && d.findings.some((f) => f.check === 'clock' && f.target.startsWith('head hv1'));
    }, 20_000, 'vsky doctor: no problem, hv1 heartbeating again', 500);

    // And back: hv1 as the standby, the lease handed over explicitly, hv2 leaves.
    await ok(['volume', 'attach', VOLUME, '--head', 'hv1', '--migrate']);
    expect(await ok(['volume', 'handoff', VOLUME, '--to', 'hv1'])).toMatch(/write lease now held by hv1/);
    await ok(['volume', 'detach', VOLUME, '--head', 'hv2']);
    expect(await showVolume()).toMatchObject({ attachedHead: 'hv1', standbyHead: '' });
    expect((await readVolume('back-on-hv1')).equals(readFileSync(expected)), 'what was written through hv2 reads back through hv1').toBe(true);
  });

  it('upgrade, the head: detach, restart, attach; every byte reads back and vsky doctor finds nothing', { timeout: 90_000 }, async () => {
    expect((await vsky(['volume', 'detach', VOLUME], MANAGER)).exitCode).toBe(0);
    await head.stop();
    expect(await head.waitExit()).toBe(0);
    await head.start();
    const attached = await waitUntil(async () => {
      const r = await vsky(['volume', 'attach', VOLUME, '--head', 'hv1', '--json'], MANAGER);
      return r.exitCode === 0 ? JSON.parse(String(r.stdout)) as { nbdUri: string; iscsiUrl: string } : undefined;
    }, 20_000, 'attach after the head restart', 500);
    expect(attached).toMatchObject({ nbdUri: NBD_URI, iscsiUrl: ISCSI_URL });

    const want = readFileSync(expected);
    expect((await readVolume('final')).equals(want), 'the volume reads back byte for byte').toBe(true);
    const { chunkSize, copies } = await readEveryReplica({ client: () => managerClient(MANAGER, adminSecurity), dataSecurity }, VOLUME);
    expect(copies).toHaveLength(3 * (SIZE / chunkSize));
    for (const c of copies) {
      expect(c.data.equals(want.subarray(c.segment * chunkSize, (c.segment + 1) * chunkSize)), `segment ${c.segment} slot ${c.slot} on ${c.serverId}`).toBe(true);
    }
    const human = await vsky(['status'], MANAGER);
    expect(String(human.stdout)).toMatch(/servers: 3\/3 active {3}disks: 6\/6 active {3}heads: 2\n[\s\S]*all fully redundant/);
    const d = await waitUntil(async () => {
      const x = await doctor(configs.flatMap((f) => ['--config', f]));
      return x.code === 0 ? x : undefined;
    }, 15_000, 'vsky doctor with the six configuration files: no problem', 500);
    expect(d).toMatchObject({ ok: true, problems: 0 });
    expect(d.findings.filter((f) => f.check === 'disk' && /^disk .*\.img \(/.test(f.target))).toHaveLength(6);
  });
});
