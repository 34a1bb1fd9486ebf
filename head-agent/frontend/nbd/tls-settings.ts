import { readFileSync } from 'node:fs';
import * as tls from 'node:tls';
import { InvalidArgumentError, errorMessage } from '../../../shared/errors.js';
import type { NbdTlsSettings } from './handshake-driver.js';
import type { NbdTlsMode } from './handshake.js';

// --nbd-tls off|on|require with --nbd-tls-cert/--nbd-tls-key (x509, PEM) and
// optionally --nbd-tls-ca (then clients must present a certificate signed by
// it, as QEMU's tls-creds-x509 verify-peer and libnbd's tls-certificates do).

export interface NbdTlsFlags {
  mode: string;
  cert?: string;
  key?: string;
  ca?: string;
}

export const NBD_TLS_MODES: readonly NbdTlsMode[] = ['off', 'on', 'require'];

/** The server's TLS settings, or undefined for off; throws naming the flag to fix. */
export function loadNbdTls(f: NbdTlsFlags): NbdTlsSettings | undefined {
  if (!(NBD_TLS_MODES as readonly string[]).includes(f.mode)) {
    throw new InvalidArgumentError(`--nbd-tls ${f.mode}: use off, on (TLS at the client's choice) or require (plaintext clients refused)`);
  }
  if (f.mode === 'off') {
    if (f.cert !== undefined || f.key !== undefined || f.ca !== undefined) {
      throw new InvalidArgumentError('--nbd-tls-cert/--nbd-tls-key/--nbd-tls-ca are given but --nbd-tls is off: add --nbd-tls on or require');
    }
    return undefined;
  }
  if (f.cert === undefined || f.key === undefined) throw new InvalidArgumentError(`--nbd-tls ${f.mode} needs --nbd-tls-cert and --nbd-tls-key`);
  const read = (path: string, flag: string): Buffer => {
    try {
      return readFileSync(path);
    } catch (err) {
      throw new InvalidArgumentError(`${flag} ${path}: ${errorMessage(err)}`);
    }
  };
  const context = tls.createSecureContext({
    cert: read(f.cert, '--nbd-tls-cert'), key: read(f.key, '--nbd-tls-key'),
    ca: f.ca === undefined ? undefined : read(f.ca, '--nbd-tls-ca'), minVersion: 'TLSv1.2',
  });
  return { mode: f.mode as 'on' | 'require', context, verifyClients: f.ca !== undefined };
}
