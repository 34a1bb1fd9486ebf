// The iSCSI target of a head agent: a TCP listener whose connections log in
// to the targets of an IscsiTargetRegistry (or to a discovery session) and
// then carry SCSI commands to their logical units. Error recovery level 0,
// one connection per session. Bad input closes that connection only, with a
// log line naming the remote address and the reason; nothing an initiator
// sends can take the server down. Connections, logins in progress and
// sessions are bounded.

import { createServer, type Server, type Socket } from 'node:net';
import { errorMessage, VskyError } from '../../shared/errors.js';
import { moduleLogger } from '../../shared/logger.js';
import { IscsiConnection, type ConnectionTuning } from './connection.js';
import {
  CLOSE_GRACE_MS, CMDSN_WINDOW, LOGIN_TIMEOUT_MS, MAX_CONNECTIONS, MAX_DATA_BYTES_IN_FLIGHT, MAX_LOGINS_IN_PROGRESS,
  NOP_INTERVAL_MS, NOP_TIMEOUT_MS,
} from './constants.js';
import { DEFAULT_TARGET_OFFER, type TargetOffer } from './negotiation.js';
import { SessionTable } from './session-table.js';
import type { IscsiTargetRegistry } from './target-registry.js';

export interface IscsiServerOptions {
  host: string;
  port: number;
  registry: IscsiTargetRegistry;
  portalGroupTag?: number;
}

export interface IscsiServerHandle {
  /** HOST:PORT bound (the real port when 0 was asked for). */
  address: string;
  /** Sessions in full feature phase to target `iqn`, or all sessions (discovery included) without it. */
  sessionCount(iqn?: string): number;
  /** Stops accepting, lets in-flight commands finish (bounded), closes every connection. */
  close(): Promise<void>;
}

/** Limits, defaulted from constants.ts; tests shrink them. */
export interface IscsiServerTuning extends ConnectionTuning {
  maxConnections: number;
  maxLoginsInProgress: number;
  offer: TargetOffer;
}

const DEFAULT_TUNING: IscsiServerTuning = {
  loginTimeoutMs: LOGIN_TIMEOUT_MS,
  nopIntervalMs: NOP_INTERVAL_MS,
  nopTimeoutMs: NOP_TIMEOUT_MS,
  closeGraceMs: CLOSE_GRACE_MS,
  cmdWindow: CMDSN_WINDOW,
  maxDataBytes: MAX_DATA_BYTES_IN_FLIGHT,
  maxConnections: MAX_CONNECTIONS,
  maxLoginsInProgress: MAX_LOGINS_IN_PROGRESS,
  offer: DEFAULT_TARGET_OFFER,
};

export async function startIscsiServer(opts: IscsiServerOptions, tuning: Partial<IscsiServerTuning> = {}): Promise<IscsiServerHandle> {
  const limits: IscsiServerTuning = { ...DEFAULT_TUNING, ...tuning };
  const portalGroupTag = opts.portalGroupTag ?? 1;
  if (!Number.isInteger(portalGroupTag) || portalGroupTag < 0 || portalGroupTag > 0xffff) {
    throw new VskyError('EINVAL', `portal group tag ${portalGroupTag} must be an integer in 0..65535`);
  }
  const log = moduleLogger('iscsi');
  const sessions = new SessionTable();
  const connections = new Set<IscsiConnection>();
  let nextId = 1;
  let closing = false;

  // allowHalfOpen: an initiator that shuts down its sending side still gets
  // the answers to commands in flight.
  const server: Server = createServer({ noDelay: true, allowHalfOpen: true });

  server.on('connection', (socket: Socket) => {
    const remote = `${socket.remoteAddress}:${socket.remotePort}`;
    socket.on('error', () => {});
    if (closing) {
      socket.destroy();
      return;
    }
    if (connections.size >= limits.maxConnections) {
      log.warn({ remote, limit: limits.maxConnections }, 'too many iSCSI connections; refusing this one');
      socket.destroy();
      return;
    }
    let logins = 0;
    for (const c of connections) if (!c.loggedIn) logins++;
    if (logins >= limits.maxLoginsInProgress) {
      log.warn({ remote, limit: limits.maxLoginsInProgress }, 'too many iSCSI logins in progress; refusing this connection');
      socket.destroy();
      return;
    }
    socket.setNoDelay(true);
    // Notices an initiator host that vanished without closing.
    socket.setKeepAlive(true, 30_000);
    const connection = new IscsiConnection(socket, {
      registry: opts.registry, sessions, portalGroupTag, offer: limits.offer, tuning: limits,
      log: log.child({ conn: nextId++, remote }),
    });
    connections.add(connection);
    void connection.closed.then(() => connections.delete(connection));
    connection.start();
  });

  server.on('error', (err) => log.error({ err: errorMessage(err) }, 'iSCSI listener error'));

  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error): void => {
      reject(new VskyError('ELISTEN', `cannot listen for iSCSI on ${opts.host}:${opts.port}: ${err.message}`, { host: opts.host, port: opts.port }, { cause: err }));
    };
    server.once('error', onError);
    server.listen(opts.port, opts.host, () => {
      server.off('error', onError);
      resolve();
    });
  });

  const bound = server.address();
  const address = typeof bound === 'object' && bound !== null
    ? `${bound.address.includes(':') ? `[${bound.address}]` : bound.address}:${bound.port}`
    : String(bound);
  log.info({ address, portalGroupTag }, 'iSCSI target listening');

  let closed: Promise<void> | undefined;
  return {
    address,
    sessionCount(iqn?: string): number {
      return sessions.count(iqn);
    },
    close(): Promise<void> {
      closed ??= (async () => {
        closing = true;
        const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
        await Promise.all([...connections].map((c) => c.shutdown(limits.closeGraceMs)));
        await new Promise((resolve) => setImmediate(resolve)); // let connections remove themselves
        // server.close() calls back once every socket is gone; an abandoned
        // connection (stuck unit) must not hold shutdown up.
        if (connections.size === 0) await stopped;
        else log.warn({ connections: connections.size }, 'iSCSI server closed with commands still in flight');
        log.info({ address }, 'iSCSI target closed');
      })();
      return closed;
    },
  };
}
