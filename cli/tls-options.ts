import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import type { Command } from 'commander';
import { InvalidArgumentError } from '../shared/errors.js';
import { INSECURE, expectRole, loadTls, setProcessGrpcSecurity, type GrpcSecurity } from '../shared/security/credentials.js';
import type { Role } from '../shared/security/identity.js';

// The TLS flags of the daemons and of the admin commands (docs/security.md):
//   --tls-dir DIR [--tls-name NAME]   DIR/ca.crt, DIR/NAME.crt, DIR/NAME.key
//   --tls-ca/--tls-cert/--tls-key     each file named
//   --insecure                        plain gRPC, explicitly
// A daemon needs one or the other. The CLI also reads VSKY_TLS_DIR,
// VSKY_TLS_NAME and VSKY_INSECURE=1, and, when none is given, uses
// ./.vsky/tls (the directory `vsky cluster up` makes by default).

export interface TlsFlags {
  tlsDir?: string;
  tlsName?: string;
  tlsCa?: string;
  tlsCert?: string;
  tlsKey?: string;
  insecure?: boolean;
}

/** The local cluster's TLS directory when `vsky cluster up` ran here with its default --dir. */
export const LOCAL_CLUSTER_TLS_DIR = '.vsky/tls';

export function addTlsOptions<C extends Command>(cmd: C, nameHelp: string): C {
  cmd.option('--tls-dir <dir>', 'mutual TLS for gRPC: DIR/ca.crt, DIR/NAME.crt and DIR/NAME.key (vsky ca issue; docs/security.md)')
    .option('--tls-name <name>', `NAME of the certificate in --tls-dir (default: ${nameHelp})`)
    .option('--tls-ca <file>', 'the cluster CA certificate (PEM), instead of --tls-dir')
    .option('--tls-cert <file>', 'this process\'s certificate (PEM), instead of --tls-dir')
    .option('--tls-key <file>', 'the private key of --tls-cert (PEM)')
    .option('--insecure', 'plain gRPC without TLS or client certificates (tests, trusted networks): anyone reaching the port may call anything');
  return cmd;
}

function hasTls(o: TlsFlags): boolean {
  return Boolean(o.tlsDir || o.tlsCa || o.tlsCert || o.tlsKey);
}

function fromFlags(o: TlsFlags, defaultName: string): GrpcSecurity {
  if (o.insecure && hasTls(o)) throw new InvalidArgumentError('--insecure and --tls-* exclude each other: pick one');
  if (o.insecure) return INSECURE;
  if (!o.tlsDir && !(o.tlsCa && o.tlsCert && o.tlsKey)) {
    throw new InvalidArgumentError('--tls-ca, --tls-cert and --tls-key go together (or use --tls-dir)');
  }
  return loadTls({ dir: o.tlsDir, name: o.tlsName ?? defaultName, ca: o.tlsCa, cert: o.tlsCert, key: o.tlsKey });
}

/** A daemon's gRPC security from its flags, set for the whole process; a daemon must be told TLS or --insecure. */
export function applyDaemonTls(o: TlsFlags, defaultName: string, role: Role): GrpcSecurity {
  if (!o.insecure && !hasTls(o)) {
    throw new InvalidArgumentError('gRPC needs TLS: pass --tls-dir DIR (ca.crt and NAME.crt/NAME.key from `vsky ca issue`; '
      + 'docs/security.md), or --insecure for plain gRPC');
  }
  const sec = fromFlags(o, defaultName);
  expectRole(sec, role);
  setProcessGrpcSecurity(sec);
  return sec;
}

/** The CLI's gRPC security: flags, then VSKY_TLS_DIR/VSKY_TLS_NAME/VSKY_INSECURE, then ./.vsky/tls; set for the process. */
export function applyClientTls(o: TlsFlags, env: NodeJS.ProcessEnv = process.env): GrpcSecurity {
  let sec: GrpcSecurity;
  const name = o.tlsName ?? env.VSKY_TLS_NAME ?? 'admin';
  if (o.insecure || hasTls(o)) sec = fromFlags({ ...o, tlsName: name }, name);
  else if (env.VSKY_INSECURE === '1' || env.VSKY_INSECURE === 'true') sec = INSECURE;
  else if (env.VSKY_TLS_DIR) sec = loadTls({ dir: env.VSKY_TLS_DIR, name });
  else if (existsSync(resolve(LOCAL_CLUSTER_TLS_DIR, 'ca.crt'))) sec = loadTls({ dir: resolve(LOCAL_CLUSTER_TLS_DIR), name });
  else {
    throw new InvalidArgumentError('no TLS credentials for gRPC: pass --tls-dir DIR (a local cluster\'s is DIR/tls of '
      + '`vsky cluster up --dir DIR`) or set VSKY_TLS_DIR; --insecure (or VSKY_INSECURE=1) for a cluster running without TLS');
  }
  setProcessGrpcSecurity(sec);
  return sec;
}
