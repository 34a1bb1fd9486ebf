import { execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

// Test certificates made with the openssl CLI: a CA, a server certificate
// (127.0.0.1 and localhost, serverAuth), a client certificate (clientAuth)
// and a "peer" certificate for daemons that are server and client at once
// (the data protocol over TLS). File names follow the GnuTLS/libnbd/QEMU
// convention, so the directory is usable as libnbd's `tls-certificates=DIR`
// and QEMU's `tls-creds-x509,dir=DIR`: ca-cert.pem, client-cert.pem,
// client-key.pem, server-cert.pem, server-key.pem.

export interface TestCerts {
  dir: string;
  ca: string;
  caKey: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
  peerCert: string;
  peerKey: string;
}

function openssl(args: string[], cwd: string): void {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
}

function issue(dir: string, name: string, subject: string, ext: string): void {
  openssl(['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', `${name}-key.pem`, '-out', `${name}.csr`, '-subj', subject], dir);
  writeFileSync(join(dir, `${name}.ext`), ext);
  openssl(['x509', '-req', '-in', `${name}.csr`, '-CA', 'ca-cert.pem', '-CAkey', 'ca-key.pem', '-CAcreateserial',
    '-days', '2', '-sha256', '-extfile', `${name}.ext`, '-out', `${name}-cert.pem`], dir);
  chmodSync(join(dir, `${name}-key.pem`), 0o600);
}

/** Makes a fresh CA and certificates in `dir` (created). */
export function makeTestCerts(dir: string): TestCerts {
  mkdirSync(dir, { recursive: true });
  openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2', '-sha256',
    '-keyout', 'ca-key.pem', '-out', 'ca-cert.pem', '-subj', '/CN=vsky test CA',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'], dir);
  chmodSync(join(dir, 'ca-key.pem'), 0o600);
  const leaf = (eku: string, san: string): string => 'basicConstraints=critical,CA:FALSE\n'
    + `keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=${eku}\n${san ? `subjectAltName=${san}\n` : ''}`;
  const san = 'IP:127.0.0.1,DNS:localhost';
  issue(dir, 'server', '/CN=localhost', leaf('serverAuth', san));
  issue(dir, 'client', '/CN=vsky test client', leaf('clientAuth', ''));
  issue(dir, 'peer', '/CN=vsky test daemon', leaf('serverAuth,clientAuth', san));
  return {
    dir, ca: join(dir, 'ca-cert.pem'), caKey: join(dir, 'ca-key.pem'),
    serverCert: join(dir, 'server-cert.pem'), serverKey: join(dir, 'server-key.pem'),
    clientCert: join(dir, 'client-cert.pem'), clientKey: join(dir, 'client-key.pem'),
    peerCert: join(dir, 'peer-cert.pem'), peerKey: join(dir, 'peer-key.pem'),
  };
}
