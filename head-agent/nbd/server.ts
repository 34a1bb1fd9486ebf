// The NBD export of a head agent: a TCP listener that negotiates each client
// onto one BlockDevice of an ExportRegistry and then serves it. Many clients
// at once, to the same or different exports. Bad input closes that client's
// connection only; nothing a client sends can take the server down.

import { createServer, type Server, type Socket } from 'node:net';
import type { ExportRegistry } from '../block-device.js';
import { errorMessage, VskyError } from '../../shared/errors.js';
import { moduleLogger, type Logger } from '../../shared/logger.js';
import { NbdConnection } from './connection.js';
import { CLOSE_GRACE_MS, HANDSHAKE_TIMEOUT_MS, MAX_CONNECTIONS, MAX_INFLIGHT_BYTES, MAX_INFLIGHT_REQUESTS } from './constants.js';
import { negotiate } from './negotiation.js';

export interface NbdServerOptions {
  host: string;
  port: number;
  registry: ExportRegistry;
}

export interface NbdServerHandle {
  /** HOST:PORT actually bound (the real port when 0 was asked for). */
  address: string;
  /**
   * With a name: connections in transmission on that export. Without: every
   * client connection, negotiating ones included.
   */
  connectionCount(exportName?: string): number;
  /** Stops accepting, lets in-flight requests finish (bounded), closes every connection. */
  close(): Promise<void>;
}

/** Limits, defaulted from constants.ts; tests shrink them. */
export interface NbdServerTuning {
  handshakeTimeoutMs: number;
  maxConnections: number;
  maxInFlight: number;
  maxInFlightBytes: number;
  closeGraceMs: number;
}

const DEFAULT_TUNING: NbdServerTuning = {
  handshakeTimeoutMs: HANDSHAKE_TIMEOUT_MS,
  maxConnections: MAX_CONNECTIONS,
  maxInFlight: MAX_INFLIGHT_REQUESTS,
  maxInFlightBytes: MAX_INFLIGHT_BYTES,
  closeGraceMs: CLOSE_GRACE_MS,
};

interface Session {
  socket: Socket;
  log: Logger;
  /** Set once the client is in transmission. */
  exportName?: string;
  connection?: NbdConnection;
  /** Resolves when the session is over and removed. */
  done: Promise<void>;
}

export async function startNbdServer(opts: NbdServerOptions, tuning: Partial<NbdServerTuning> = {}): Promise<NbdServerHandle> {
  const limits = { ...DEFAULT_TUNING, ...tuning };
  const log = moduleLogger('nbd');
  const sessions = new Set<Session>();
  let nextId = 1;
  let closing = false;

  // allowHalfOpen: a client that shuts down its sending side still gets the
  // replies to requests in flight; each phase closes our side itself.
  const server: Server = createServer({ noDelay: true, allowHalfOpen: true });

  server.on('connection', (socket) => {
    const remote = `${socket.remoteAddress}:${socket.remotePort}`;
    if (closing) {
      socket.destroy();
      return;
    }
    if (sessions.size >= limits.maxConnections) {
      log.warn({ remote, limit: limits.maxConnections }, 'too many NBD connections; refusing this one');
      socket.on('error', () => {});
      socket.destroy();
      return;
    }
    socket.setNoDelay(true);
    // Notices a client host that vanished without closing (not a loopback concern, a remote one).
    socket.setKeepAlive(true, 30_000);
    const sessionLog = log.child({ conn: nextId++, remote });
    let finished!: () => void;
    const session: Session = { socket, log: sessionLog, done: new Promise((r) => { finished = r; }) };
    sessions.add(session);
    void serve(session).finally(() => {
      sessions.delete(session);
      finished();
    });
  });

  async function serve(session: Session): Promise<void> {
    const { socket } = session;
    const timer = setTimeout(() => {
      session.log.warn({ timeoutMs: limits.handshakeTimeoutMs }, 'NBD negotiation timed out; closing the connection');
      socket.destroy();
    }, limits.handshakeTimeoutMs);
    timer.unref();
    let result;
    try {
      result = await negotiate(socket, opts.registry, session.log);
    } finally {
      clearTimeout(timer);
    }
    if (result.kind === 'closed') return;
    if (closing) {
      socket.destroy();
      return;
    }
    const connection = new NbdConnection({
      socket, device: result.device, structured: result.structured, log: session.log.child({ export: result.exportName }),
      maxInFlight: limits.maxInFlight, maxInFlightBytes: limits.maxInFlightBytes,
    });
    session.exportName = result.exportName;
    session.connection = connection;
    session.log.info({ export: result.exportName, size: result.device.size, structured: result.structured }, 'NBD client attached');
    connection.start(result.leftover);
    await connection.closed;
    session.log.info({ export: result.exportName }, 'NBD client detached');
  }

  server.on('error', (err) => log.error({ err: errorMessage(err) }, 'NBD listener error'));

  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error): void => {
      reject(new VskyError('ELISTEN', `cannot listen for NBD on ${opts.host}:${opts.port}: ${err.message}`, { host: opts.host, port: opts.port }, { cause: err }));
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
  log.info({ address }, 'NBD server listening');

  let closed: Promise<void> | undefined;
  return {
    address,
    connectionCount(exportName?: string): number {
      if (exportName === undefined) return sessions.size;
      let n = 0;
      for (const s of sessions) if (s.exportName === exportName) n++;
      return n;
    },
    close(): Promise<void> {
      closed ??= (async () => {
        closing = true;
        const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
        const pending: Promise<void>[] = [];
        for (const s of sessions) {
          if (s.connection !== undefined) {
            pending.push(s.connection.shutdown(limits.closeGraceMs));
          } else {
            s.socket.destroy();
            pending.push(s.done);
          }
        }
        await Promise.all(pending);
        await new Promise((resolve) => setImmediate(resolve)); // let sessions remove themselves
        // server.close() calls back once every socket is gone; an abandoned
        // connection (stuck device) must not hold shutdown up.
        if (sessions.size === 0) await stopped;
        else log.warn({ connections: sessions.size }, 'NBD server closed with requests still in flight');
        log.info({ address }, 'NBD server closed');
      })();
      return closed;
    },
  };
}
