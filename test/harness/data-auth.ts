import { readFileSync } from 'node:fs';
import type * as net from 'node:net';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { ClientHandshake } from '../../shared/data-protocol/auth/handshake.js';
import { channelBinding, type DataSecurity } from '../../shared/data-protocol/auth/data-security.js';
import { readKeyFile } from '../../shared/security/key-file.js';

// The data-path credentials of a test cluster, for clients the test process
// opens itself (NodeConnection, RawDataClient): the same key and certificates
// the cluster's daemons were given.

export function clusterDataSecurity(c: LocalCluster): DataSecurity {
  const sec = c.opts.dataSecurity ?? {};
  const tls = sec.tls ? { cert: readFileSync(sec.tls.cert), key: readFileSync(sec.tls.key), ca: readFileSync(sec.tls.ca) } : undefined;
  return { key: sec.auth === false ? undefined : readKeyFile(c.dataKeyPath, 'data key'), tls };
}

/** Runs the client side of the data handshake on a connected socket; resolves with any bytes that followed it. */
export function authenticateSocket(socket: net.Socket, key: Buffer): Promise<Buffer> {
  const hs = new ClientHandshake(key, channelBinding(socket));
  return new Promise((resolve, reject) => {
    const onData = (chunk: Buffer): void => {
      try {
        const step = hs.push(chunk);
        if (step.kind === 'send') socket.write(step.send);
        else if (step.kind === 'accepted') { cleanup(); resolve(step.rest); }
      } catch (err) { cleanup(); reject(err as Error); }
    };
    const onClose = (): void => { cleanup(); reject(new Error('the node closed the connection during the handshake')); };
    const cleanup = (): void => { socket.off('data', onData); socket.off('close', onClose); };
    socket.on('data', onData);
    socket.on('close', onClose);
  });
}
