import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bindServer, call, loadProtos, managerClient, unary } from '../../shared/grpc.js';
import { initCa, issueCert } from '../../shared/security/ca.js';
import { INSECURE, loadTls, type GrpcSecurity } from '../../shared/security/credentials.js';
import { newDaemonServer } from '../../shared/security/authorize.js';

// What mutual TLS and the role check cost a gRPC call (docs/security.md):
// a manager-like server on loopback, in this process, answering ListVolumes;
// first, a new channel's first call (TCP + TLS handshake with both
// certificates); then sequential unary calls on one channel. Plain gRPC beside.
//   npm run build && node dist/test/bench/grpc-tls.js [--calls N]

const args = process.argv.slice(2);
const CALLS = Number(args[args.indexOf('--calls') + 1] ?? 2000) || 2000;
const CONNECTS = 30;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

async function measure(label: string, server: GrpcSecurity, client: GrpcSecurity): Promise<void> {
  const s = newDaemonServer({}, {}, server);
  s.addService(loadProtos().manager.vsky.manager.Manager.service, { ListVolumes: unary(async () => ({ volumes: [] })) });
  const address = `127.0.0.1:${await bindServer(s, '127.0.0.1:0', server)}`;
  const connect: number[] = [];
  for (let i = 0; i < CONNECTS; i++) {
    const c = managerClient(address, client);
    const t = performance.now();
    await call(c, 'ListVolumes', {});
    connect.push(performance.now() - t);
    c.close();
  }
  const c = managerClient(address, client);
  await call(c, 'ListVolumes', {});
  const t = performance.now();
  for (let i = 0; i < CALLS; i++) await call(c, 'ListVolumes', {});
  const perCall = ((performance.now() - t) / CALLS) * 1000;
  c.close();
  s.forceShutdown();
  console.log(`${label.padEnd(12)} first call on a new channel ${median(connect).toFixed(2)} ms (median of ${CONNECTS}); `
    + `unary call on an open channel ${perCall.toFixed(0)} us (mean of ${CALLS})`);
}

const dir = mkdtempSync(join(tmpdir(), 'vsky-bench-tls-'));
try {
  await initCa(dir);
  await issueCert(dir, { name: 'manager', role: 'manager', hosts: ['127.0.0.1'] });
  await issueCert(dir, { name: 'admin', role: 'admin' });
  await measure('plain', INSECURE, INSECURE);
  await measure('mutual TLS', loadTls({ dir, name: 'manager' }), loadTls({ dir, name: 'admin' }));
} finally {
  rmSync(dir, { recursive: true, force: true });
}
