import { readFileSync } from 'node:fs';
import { checkServerIdentity, type PeerCertificate } from 'node:tls';
import { X509Certificate, createPrivateKey, type KeyObject } from 'node:crypto';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { InvalidArgumentError, VskyError } from '../errors.js';
import { DAEMON_ROLES, identityOf, roleFromSan, type PeerIdentity, type Role } from './identity.js';

// The one home of gRPC transport credentials. A process runs either with
// mutual TLS (a cluster CA, its own certificate and key: every server demands
// a client certificate from that CA, every client checks the server's) or,
// only when asked explicitly (--insecure), plain gRPC.
//
// Daemons and the CLI set the process-wide security once at start
// (setProcessGrpcSecurity); the client and server factories of shared/grpc.ts
// use it unless given another (a test process talking to several clusters,
// the `vsky cluster up` launcher). A process that never sets it (unit tests
// running daemons in-process) uses plain gRPC.

export interface TlsMaterial {
  kind: 'tls';
  ca: Buffer;
  cert: Buffer;
  key: Buffer;
  /** Who our own certificate says we are. */
  identity: PeerIdentity;
  /** Where the material came from, for messages. */
  certPath: string;
}
export interface Insecure { kind: 'insecure' }
export type GrpcSecurity = TlsMaterial | Insecure;

export const INSECURE: Insecure = { kind: 'insecure' };

/** Where TLS material is: a directory with ca.crt and NAME.crt/NAME.key, or each file named. */
export interface TlsSource {
  dir?: string;
  name?: string;
  ca?: string;
  cert?: string;
  key?: string;
}

function readPem(path: string, what: string, flag: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'EIO';
    throw new InvalidArgumentError(`cannot read the ${what} ${path} (${code}): issue one with \`vsky ca issue\` or point ${flag} elsewhere`, { path });
  }
}

/** Reads and checks TLS material; throws an error naming the file and the fix. */
export function loadTls(src: TlsSource): TlsMaterial {
  if (!src.dir && !(src.ca && src.cert && src.key)) {
    throw new InvalidArgumentError('TLS needs --tls-dir DIR, or all of --tls-ca, --tls-cert and --tls-key');
  }
  const name = src.name ?? '';
  if (!src.cert && !name) throw new InvalidArgumentError('--tls-dir needs a certificate name (NAME.crt, NAME.key): pass --tls-name');
  const caPath = src.ca ?? join(src.dir!, 'ca.crt');
  const certPath = src.cert ?? join(src.dir!, `${name}.crt`);
  const keyPath = src.key ?? join(src.dir!, `${name}.key`);
  const ca = readPem(caPath, 'CA certificate', '--tls-ca');
  const cert = readPem(certPath, 'certificate', '--tls-cert');
  const key = readPem(keyPath, 'private key', '--tls-key');
  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(cert);
  } catch (err) {
    throw new InvalidArgumentError(`${certPath} is not a PEM certificate: ${(err as Error).message}`);
  }
  if (!x509.checkPrivateKey(keyFromPem(key, keyPath))) throw new InvalidArgumentError(`${keyPath} is not the private key of ${certPath}`);
  if (!x509.checkIssued(new X509Certificate(ca))) throw new InvalidArgumentError(`${certPath} was not issued by the CA ${caPath}`);
  const role = roleFromSan(x509.subjectAltName);
  if (role === undefined) throw new InvalidArgumentError(`${certPath} carries no vsky role (a SAN URI vsky:role:ROLE): issue it with \`vsky ca issue\``);
  const cn = /(?:^|\n)CN=([^\n]*)/.exec(x509.subject)?.[1] ?? '';
  return { kind: 'tls', ca, cert, key, identity: { name: cn, role }, certPath };
}

function keyFromPem(key: Buffer, path: string): KeyObject {
  try {
    return createPrivateKey(key);
  } catch (err) {
    throw new InvalidArgumentError(`${path} is not a PEM private key: ${(err as Error).message}`);
  }
}

/** Refuses to run a daemon under a certificate of another role (a head with the manager's, say). */
export function expectRole(sec: GrpcSecurity, role: Role): void {
  if (sec.kind === 'tls' && sec.identity.role !== role) {
    throw new InvalidArgumentError(`${sec.certPath} has role ${sec.identity.role}; this daemon needs a ${role} certificate (vsky ca issue --role ${role})`);
  }
}

let processSecurity: GrpcSecurity = INSECURE;

export function setProcessGrpcSecurity(sec: GrpcSecurity): void { processSecurity = sec; }
export function processGrpcSecurity(): GrpcSecurity { return processSecurity; }

/**
 * A client checks the server's certificate names the address it dialled (SAN
 * IP or DNS) and holds a daemon role: a person's certificate cannot pose as a
 * daemon.
 */
function checkServer(host: string, cert: PeerCertificate): Error | undefined {
  const err = checkServerIdentity(host, cert);
  if (err) return err;
  const id = identityOf(cert);
  if (!id || !DAEMON_ROLES.includes(id.role)) {
    return new VskyError('ETLS', `the server at ${host} presented a certificate without a daemon role (${id?.role ?? 'none'})`);
  }
  return undefined;
}

/**
 * grpc-js sends the dialled host as the TLS server name (SNI) even when it is
 * an IP address, as ours usually are; Node then prints a one-time DEP0123
 * deprecation warning on stderr, which would end up in every CLI command's
 * output. SNI is not what identifies our servers (the certificate's SAN IP is,
 * checked above), so that one warning is dropped; every other goes through.
 */
let ipSniWarningFiltered = false;
function filterIpSniWarning(): void {
  if (ipSniWarningFiltered) return;
  ipSniWarningFiltered = true;
  const emit = process.emitWarning.bind(process) as (...args: unknown[]) => void;
  process.emitWarning = ((warning: unknown, ...rest: unknown[]) => {
    const code = typeof rest[0] === 'object' && rest[0] !== null ? (rest[0] as { code?: string }).code : rest[1];
    if (code === 'DEP0123') return;
    emit(warning, ...rest);
  }) as typeof process.emitWarning;
}

export function channelCredentials(sec: GrpcSecurity = processSecurity): grpc.ChannelCredentials {
  if (sec.kind === 'insecure') return grpc.credentials.createInsecure();
  filterIpSniWarning();
  return grpc.credentials.createSsl(sec.ca, sec.key, sec.cert, { checkServerIdentity: checkServer });
}

export function serverCredentials(sec: GrpcSecurity = processSecurity): grpc.ServerCredentials {
  if (sec.kind === 'insecure') return grpc.ServerCredentials.createInsecure();
  return grpc.ServerCredentials.createSsl(sec.ca, [{ cert_chain: sec.cert, private_key: sec.key }], true);
}
