import { X509Certificate } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { stat, statfs } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { errorMessage } from '../../shared/errors.js';
import { formatSize } from '../../shared/units.js';
import { readConfigFile } from '../config/config-file.js';
import { finding, type Finding } from './findings.js';

// The host checks of `vsky doctor`: for each daemon configuration file on this
// host (/etc/vsky/*.toml or --config), its keys and values (a file named
// DAEMON.toml, checked against that daemon's options), its data directory's and disk files'
// file systems (a sparse disk file must be able to grow to its size), its
// block devices, and its certificates' expiry (any key ending in "cert").

export const DEFAULT_CONFIGS = ['/etc/vsky/manager.toml', '/etc/vsky/storage-node.toml', '/etc/vsky/head-agent.toml'];

export interface HostThresholds {
  /** A file system with less than this fraction free is near full. */
  fsFree: number;
  /** A certificate expiring within this many days. */
  certDays: number;
  nowMs: number;
}

/** The daemon a configuration file is for, from its name (/etc/vsky/DAEMON.toml), if it says. */
export function daemonOfConfig(file: string): string | undefined {
  return /(?:^|\/)(manager|storage-node|head-agent)\.toml$/.exec(file)?.[1];
}

/** Checks a configuration file's keys and values against the daemon's options; returns the error, if any. */
export type ConfigValidator = (daemon: string, values: Record<string, unknown>) => string | undefined;

export async function hostFindings(configs: string[], t: HostThresholds, validate?: ConfigValidator): Promise<Finding[]> {
  const out: Finding[] = [];
  let certs = 0;
  for (const file of configs) {
    let values: Record<string, unknown>;
    try {
      values = readConfigFile(file);
    } catch (err) {
      out.push(finding('config', 'error', file, errorMessage(err), `fix the file; \`vsky <daemon> --config ${file} --help\` lists the keys`));
      continue;
    }
    const daemon = daemonOfConfig(file);
    const invalid = daemon && validate ? validate(daemon, values) : undefined;
    if (daemon && validate) {
      out.push(invalid === undefined
        ? finding('config', 'ok', file, `a valid configuration of vsky ${daemon}`)
        : finding('config', 'error', file, invalid, `fix it: \`vsky ${daemon} --help\` lists the keys; deploy/config/${daemon}.toml has every one with comments`));
    }
    if (typeof values['data-dir'] === 'string') out.push(await fsFinding(file, 'data-dir', values['data-dir'], t));
    if (Array.isArray(values.disk)) for (const spec of values.disk) out.push(await diskFinding(file, String(spec), t));
    for (const [key, value] of Object.entries(values)) {
      if (!/(^|-)cert$/.test(key) || typeof value !== 'string') continue;
      certs++;
      out.push(certFinding(file, key, value, t));
    }
    for (const [key, path] of tlsDirCerts(values)) {
      certs++;
      out.push(certFinding(file, key, path, t));
    }
  }
  if (configs.length > 0 && certs === 0) {
    out.push(finding('certificate', 'info', configs.join(', '), 'TLS off: no certificate configured', 'see docs/install.md, Certificates (vsky ca init)'));
  }
  return out;
}

/** The CA and own certificate a daemon's tls-dir holds (docs/security.md): NAME is tls-name, else the daemon's name. */
function tlsDirCerts(values: Record<string, unknown>): Array<[string, string]> {
  const dir = values['tls-dir'];
  if (typeof dir !== 'string') return [];
  const name = typeof values['tls-name'] === 'string' ? values['tls-name'] : typeof values.name === 'string' ? values.name : 'manager';
  return [['tls-dir ca.crt', join(dir, 'ca.crt')], [`tls-dir ${name}.crt`, join(dir, `${name}.crt`)]];
}

async function fsFinding(file: string, key: string, path: string, t: HostThresholds): Promise<Finding> {
  const target = `${key} ${path} (${file})`;
  const dir = existsSync(path) ? path : dirname(path);
  try {
    const fs = await statfs(dir);
    const free = fs.bavail / fs.blocks;
    if (free >= t.fsFree) return finding('filesystem', 'ok', target, `${formatSize(fs.bavail * fs.bsize)} free (${(100 * free).toFixed(1)}%)`);
    return finding('filesystem', free < t.fsFree / 2 ? 'error' : 'warning', target,
      `its file system has ${formatSize(fs.bavail * fs.bsize)} free (${(100 * free).toFixed(1)}%)`,
      'free space there (old logs, LevelDB backups) or grow the file system: the daemon stops writing its metadata when it is full');
  } catch (err) {
    return finding('filesystem', 'error', target, `cannot look at it: ${errorMessage(err)}`, 'create the directory (the systemd unit\'s StateDirectory does) or fix the path');
  }
}

async function diskFinding(file: string, spec: string, t: HostThresholds): Promise<Finding> {
  const i = spec.lastIndexOf(':');
  const path = i > 0 && /^\d/.test(spec.slice(i + 1)) ? spec.slice(0, i) : spec;
  const target = `disk ${path} (${file})`;
  let st;
  try {
    st = await stat(path);
  } catch {
    return path === spec
      ? finding('disk', 'error', target, 'does not exist', 'fix the path (block devices by /dev/disk/by-id/...) or give a size to create a file')
      : finding('disk', 'info', target, 'does not exist yet: the storage node creates it sparse at start');
  }
  if (st.isBlockDevice()) return finding('disk', 'ok', target, 'block device');
  if (!st.isFile()) return finding('disk', 'error', target, 'neither a block device nor a file', 'fix the path in the config file');
  const growth = Math.max(0, st.size - st.blocks * 512);
  const fs = await statfs(dirname(path));
  const free = fs.bavail * fs.bsize;
  if (growth > free) {
    return finding('disk', 'error', target, `sparse file of ${formatSize(st.size)} can still grow by ${formatSize(growth)} but its file system has ${formatSize(free)} free`,
      'writes will fail with ENOSPC once it fills: free space, move the file, or preallocate it (fallocate -l SIZE FILE) while there is room');
  }
  const freeFraction = fs.bavail / fs.blocks;
  if (freeFraction < t.fsFree) {
    return finding('disk', 'warning', target, `its file system has ${formatSize(free)} free (${(100 * freeFraction).toFixed(1)}%)`, 'give disk files a file system of their own, or use block devices');
  }
  return finding('disk', 'ok', target, `file of ${formatSize(st.size)}, room to grow`);
}

function certFinding(file: string, key: string, path: string, t: HostThresholds): Finding {
  const target = `${key} ${path} (${file})`;
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(readFileSync(path));
  } catch (err) {
    return finding('certificate', 'error', target, `cannot read a PEM certificate: ${errorMessage(err)}`, 'issue it again (docs/install.md, Certificates)');
  }
  const left = (Date.parse(cert.validTo) - t.nowMs) / 86_400_000;
  if (left < 0) return finding('certificate', 'error', target, `expired on ${cert.validTo}`, 'issue a new one from the cluster CA (docs/install.md, Certificates) and restart the daemon');
  if (left < t.certDays) {
    return finding('certificate', 'warning', target, `expires in ${left.toFixed(1)} days (${cert.validTo})`, 'issue a new one from the cluster CA (docs/install.md, Certificates) and restart the daemon before it expires');
  }
  return finding('certificate', 'ok', target, `valid until ${cert.validTo}`);
}
