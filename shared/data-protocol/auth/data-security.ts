import { readFileSync } from 'node:fs';
import * as tls from 'node:tls';
import type * as net from 'node:net';
import { AuthenticationError, InvalidArgumentError, errorMessage } from '../../errors.js';
import { readKeyFile } from '../../security/key-file.js';
import { TLS_EXPORTER_LABEL } from './transcript.js';

// How a daemon secures its data-protocol connections, both ways (a storage
// node serves them and opens them for resync copies; heads and the manager
// open them): the cluster data key for the challenge-response
// (handshake.ts), and optionally TLS around it (--data-tls).

export interface DataTlsMaterial {
  /** PEM certificate this daemon presents (server and client side: mutual TLS). */
  cert: Buffer;
  key: Buffer;
  /** PEM CA the peer's certificate must chain to. */
  ca: Buffer;
}

export interface DataSecurity {
  /** The cluster data key; undefined: connections are not authenticated (--no-data-auth). */
  key?: Buffer;
  /** TLS around the data protocol (--data-tls); undefined: plain TCP. */
  tls?: DataTlsMaterial;
}

/** The data-security options of a daemon's command line (cli/commands/daemons.ts addDataSecurityOptions). */
export interface DataSecurityFlags {
  dataKey?: string;
  /** false with --no-data-auth. */
  dataAuth: boolean;
  dataTls?: boolean;
  dataTlsCert?: string;
  dataTlsKey?: string;
  dataTlsCa?: string;
}

/** Reads the key and certificate files the flags name; throws naming the flag to fix. */
export function loadDataSecurity(f: DataSecurityFlags): DataSecurity {
  const out: DataSecurity = {};
  if (f.dataAuth) {
    if (f.dataKey === undefined) {
      throw new AuthenticationError('the data protocol authenticates every connection: give the cluster\'s key with --data-key FILE '
        + '(32 random bytes, mode 0600, the same file on every daemon; `vsky cluster up` makes DIR/data.key), '
        + 'or turn authentication off explicitly with --no-data-auth');
    }
    out.key = readKeyFile(f.dataKey, '--data-key');
  } else if (f.dataKey !== undefined) {
    throw new InvalidArgumentError('--data-key and --no-data-auth contradict each other: drop one');
  }
  if (f.dataTls) {
    const missing = (['dataTlsCert', 'dataTlsKey', 'dataTlsCa'] as const).filter((k) => f[k] === undefined);
    if (missing.length > 0) {
      throw new InvalidArgumentError(`--data-tls needs --data-tls-cert, --data-tls-key and --data-tls-ca (missing: ${missing.map(flagName).join(', ')})`);
    }
    out.tls = { cert: pem(f.dataTlsCert!, '--data-tls-cert'), key: pem(f.dataTlsKey!, '--data-tls-key'), ca: pem(f.dataTlsCa!, '--data-tls-ca') };
  } else if (f.dataTlsCert !== undefined || f.dataTlsKey !== undefined || f.dataTlsCa !== undefined) {
    throw new InvalidArgumentError('--data-tls-cert/--data-tls-key/--data-tls-ca are given but TLS is off: add --data-tls');
  }
  return out;
}

function flagName(k: string): string {
  return `--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
}

function pem(path: string, flag: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new InvalidArgumentError(`${flag} ${path}: ${errorMessage(err)}`);
  }
}

/** TLS server options of a data listener: TLS 1.3, client certificates required and checked against the CA. */
export function dataTlsServerOptions(m: DataTlsMaterial): tls.TlsOptions {
  return { cert: m.cert, key: m.key, ca: m.ca, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.3' };
}

/**
 * TLS client options of a data connection. The node's certificate must chain
 * to the cluster CA; its name is not checked (nodes are reached by address,
 * and the data key's challenge-response, bound to this TLS session,
 * authenticates the peer as a member of the cluster).
 */
export function dataTlsClientOptions(m: DataTlsMaterial): tls.ConnectionOptions {
  return { cert: m.cert, key: m.key, ca: m.ca, rejectUnauthorized: true, minVersion: 'TLSv1.3', checkServerIdentity: () => undefined };
}

/** The channel binding of the handshake: TLS keying material, or nothing on plain TCP. */
export function channelBinding(socket: net.Socket): Buffer {
  return socket instanceof tls.TLSSocket ? socket.exportKeyingMaterial(32, TLS_EXPORTER_LABEL, Buffer.alloc(0)) : Buffer.alloc(0);
}

let processDefault: DataSecurity = {};

/**
 * The security of every data connection this process opens unless its
 * options say otherwise (NodeConnectionOptions.security). A daemon sets it
 * once at start from its flags: heads, the manager's jobs and the nodes'
 * resync copies all open their data connections through NodeConnection,
 * which reads it here.
 */
export function setDefaultDataSecurity(s: DataSecurity): void {
  processDefault = s;
}

export function defaultDataSecurity(): DataSecurity {
  return processDefault;
}

/** What a log line says about a data connection's security. */
export function describeDataSecurity(s: DataSecurity): string {
  return `${s.tls ? 'TLS' : 'plain TCP'}, ${s.key ? 'authenticated with the cluster data key' : 'NOT authenticated (--no-data-auth)'}`;
}
