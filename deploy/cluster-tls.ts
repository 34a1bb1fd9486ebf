import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { CA_CERT, initCa, issueCert } from '../shared/security/ca.js';
import { INSECURE, loadTls, type GrpcSecurity } from '../shared/security/credentials.js';
import type { Role } from '../shared/security/identity.js';

// The TLS material of a local cluster (`vsky cluster up`, test clusters) in
// DIR/tls: a CA made on first start, a certificate per daemon (named as the
// daemon's --name, for the loopback address it listens on) and two for
// people: admin and readonly. A restart reuses what is there and issues only
// what is missing. Without TLS (tls: false) every daemon runs --insecure.

/** Hosts every local daemon certificate names besides its own address. */
const LOCAL_HOSTS = ['127.0.0.1', 'localhost'];

export interface CertSpec { name: string; role: Role; hosts: string[] }

export class ClusterTls {
  /** DIR/tls, or undefined when the cluster runs plain gRPC. */
  readonly dir: string | undefined;
  private readonly cache = new Map<string, GrpcSecurity>();

  constructor(clusterDir: string, enabled: boolean) {
    this.dir = enabled ? join(clusterDir, 'tls') : undefined;
  }

  get enabled(): boolean { return this.dir !== undefined; }

  /** Daemon or CLI flags: --tls-dir DIR --tls-name NAME, or --insecure. */
  args(name?: string): string[] {
    if (!this.dir) return ['--insecure'];
    return name === undefined ? ['--tls-dir', this.dir] : ['--tls-dir', this.dir, '--tls-name', name];
  }

  /** Makes the CA unless there is one, and every certificate in `certs` that is missing. */
  async prepare(certs: CertSpec[]): Promise<void> {
    if (!this.dir) return;
    if (!existsSync(join(this.dir, CA_CERT))) await initCa(this.dir, { commonName: 'vsky local cluster CA' });
    // Side by side: each certificate has its own files (a test cluster's start waits on these openssl runs).
    const all = [...certs, { name: 'admin', role: 'admin', hosts: [] }, { name: 'readonly', role: 'readonly', hosts: [] }] as CertSpec[];
    const done = await Promise.allSettled(all.map((c) => this.ensure(c)));
    const failed = done.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
  }

  /** Issues NAME.crt unless it exists (daemon certificates also name 127.0.0.1 and localhost). */
  async ensure(c: CertSpec): Promise<void> {
    if (!this.dir || existsSync(join(this.dir, `${c.name}.crt`))) return;
    const hosts = c.role === 'admin' || c.role === 'readonly' ? c.hosts : [...new Set([...c.hosts, ...LOCAL_HOSTS])];
    await issueCert(this.dir, { name: c.name, role: c.role, hosts });
  }

  /** Client credentials of certificate NAME (default admin) for gRPC clients made in this process. */
  security(name = 'admin'): GrpcSecurity {
    if (!this.dir) return INSECURE;
    let s = this.cache.get(name);
    if (!s) {
      s = loadTls({ dir: this.dir, name });
      this.cache.set(name, s);
    }
    return s;
  }
}
