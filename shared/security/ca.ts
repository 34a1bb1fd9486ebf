import { chmodSync, copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes, X509Certificate } from 'node:crypto';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { execa } from 'execa';
import { AlreadyExistsError, InvalidArgumentError, NotFoundError, VskyError } from '../errors.js';
import { ROLE_URI_PREFIX, type Role } from './identity.js';

// A cluster certificate authority kept in a directory: ca.key (mode 0600) and
// ca.crt, and certificates issued next to it as NAME.crt/NAME.key. Keys are
// EC P-256, made and signed by the openssl command (Node parses X.509 but
// does not sign it). A certificate carries its holder's name as subject CN
// and its role as a SAN URI vsky:role:ROLE (and as OU); a daemon's also names
// the hosts clients dial it at (SAN IP/DNS), which clients check.

export const CA_CERT = 'ca.crt';
export const CA_KEY = 'ca.key';
const DEFAULT_CA_DAYS = 3650;
export const DEFAULT_CERT_DAYS = 825;

export interface IssueOptions {
  role: Role;
  name: string;
  /** Hosts (IP addresses or DNS names) a daemon is reached at; a person's certificate needs none. */
  hosts?: string[];
  days?: number;
  /** Where NAME.crt/NAME.key go (default: the CA directory); ca.crt is copied there too. */
  outDir?: string;
  /** Replace an existing certificate of that name. */
  force?: boolean;
}

export interface IssuedCert {
  name: string;
  role: Role;
  cert: string;
  key: string;
  notAfter: string;
  hosts: string[];
}

async function openssl(args: string[], what: string): Promise<void> {
  const r = await execa('openssl', args, { reject: false });
  if (r.failed) {
    const why = r.code === 'ENOENT' ? 'the openssl command is missing (apt-get install openssl)' : String(r.stderr).trim().split('\n').slice(-2).join('; ');
    throw new VskyError('EOPENSSL', `${what} failed: ${why}`);
  }
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$/;

export function checkCertName(name: string): void {
  if (!NAME_RE.test(name) || name === 'ca') throw new InvalidArgumentError(`"${name}" is not a certificate name: 1-64 of A-Z a-z 0-9 _ . @ -, starting with a letter or digit, not "ca"`);
}

/** Makes a CA in dir (created mode 0700); refuses to overwrite one. */
export async function initCa(dir: string, opts: { days?: number; commonName?: string } = {}): Promise<{ cert: string; key: string }> {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const cert = join(dir, CA_CERT);
  const key = join(dir, CA_KEY);
  if (existsSync(cert) || existsSync(key)) throw new AlreadyExistsError(`${dir} already holds a CA (${CA_CERT}/${CA_KEY}); issue certificates from it, or pick another --dir`);
  writeFileSync(key, '', { mode: 0o600 }); // openssl keeps the mode of a file it overwrites: the key is never readable by others
  await openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-sha256',
    '-keyout', key, '-out', cert, '-days', String(opts.days ?? DEFAULT_CA_DAYS),
    '-subj', `/O=VastSky-TS/CN=${opts.commonName ?? 'vsky cluster CA'}`,
    '-addext', 'basicConstraints=critical,CA:TRUE,pathlen:0', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'], 'making the CA');
  chmodSync(key, 0o600);
  return { cert, key };
}

function sanLine(opts: IssueOptions): string {
  const entries = [`URI:${ROLE_URI_PREFIX}${opts.role}`];
  for (const h of opts.hosts ?? []) entries.push(isIP(h) ? `IP:${h}` : `DNS:${h}`);
  return entries.join(',');
}

/** Issues NAME.crt/NAME.key signed by the CA in caDir. */
export async function issueCert(caDir: string, opts: IssueOptions): Promise<IssuedCert> {
  checkCertName(opts.name);
  const caCert = join(caDir, CA_CERT);
  const caKey = join(caDir, CA_KEY);
  if (!existsSync(caCert) || !existsSync(caKey)) throw new NotFoundError(`no CA in ${caDir} (${CA_CERT} and ${CA_KEY}): make one with \`vsky ca init --dir ${caDir}\``);
  for (const h of opts.hosts ?? []) {
    if (!isIP(h) && !/^[A-Za-z0-9*]([A-Za-z0-9.-]{0,252})$/.test(h)) throw new InvalidArgumentError(`"${h}" is neither an IP address nor a DNS name`);
  }
  const out = opts.outDir ?? caDir;
  mkdirSync(out, { recursive: true, mode: 0o700 });
  const cert = join(out, `${opts.name}.crt`);
  const key = join(out, `${opts.name}.key`);
  if (!opts.force && (existsSync(cert) || existsSync(key))) throw new AlreadyExistsError(`${cert} already exists: pass --force to replace it`);
  const tmp = join(out, `.${opts.name}.${process.pid}`);
  const csr = `${tmp}.csr`;
  const ext = `${tmp}.ext`;
  try {
    writeFileSync(key, '', { mode: 0o600 });
    await openssl(['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-sha256',
      '-keyout', key, '-out', csr, '-subj', `/O=VastSky-TS/OU=${opts.role}/CN=${opts.name}`], 'making the key');
    chmodSync(key, 0o600);
    writeFileSync(ext, [
      'basicConstraints=critical,CA:FALSE', 'keyUsage=critical,digitalSignature,keyEncipherment',
      'extendedKeyUsage=serverAuth,clientAuth', `subjectAltName=${sanLine(opts)}`, '',
    ].join('\n'));
    await openssl(['x509', '-req', '-in', csr, '-CA', caCert, '-CAkey', caKey, '-set_serial', `0x${randomBytes(16).toString('hex').replace(/^[89a-f]/, '1')}`,
      '-days', String(opts.days ?? DEFAULT_CERT_DAYS), '-sha256', '-extfile', ext, '-out', cert], 'signing the certificate');
  } finally {
    rmSync(csr, { force: true });
    rmSync(ext, { force: true });
  }
  // An --out directory becomes a complete --tls-dir: the CA certificate (never its key) goes along.
  if (out !== caDir && !existsSync(join(out, CA_CERT))) copyFileSync(caCert, join(out, CA_CERT));
  const x = new X509Certificate(readFileSync(cert));
  return { name: opts.name, role: opts.role, cert, key, notAfter: new Date(x.validTo).toISOString(), hosts: opts.hosts ?? [] };
}
