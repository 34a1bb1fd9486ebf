// The TCP listener under each client-facing frontend of a head agent (NBD,
// iSCSI): it listens, accepts a bounded number of connections, hands each
// accepted socket to the protocol, tracks the connection until it is over,
// and on close stops accepting, lets every connection finish what it has in
// flight (bounded) and waits for them. What a connection speaks is the
// protocol's business; this file never reads a byte.

import { createServer, type Server, type Socket } from 'node:net';
import { errorMessage, VskyError } from '../../shared/errors.js';
import type { Logger } from '../../shared/logger.js';

/** One accepted client connection, as the listener tracks it. */
export interface ServedConnection {
  /** Resolves once the connection is over. Never rejects. */
  readonly closed: Promise<void>;
  /** Starts serving (called once the connection is tracked). */
  start(): void;
  /** Stops taking work, lets what is in flight finish (bounded by `graceMs`), then closes. */
  shutdown(graceMs: number): Promise<void>;
}

/** Why a connection is refused, beyond the connection limit: logged with the client's address. */
export interface Refusal {
  message: string;
  limit: number;
}

export interface TcpServerOptions<C extends ServedConnection> {
  host: string;
  port: number;
  /** The protocol, in messages: "NBD", "iSCSI". */
  protocol: string;
  /** This server, in log lines: "NBD server", "iSCSI target". */
  title: string;
  /** What a connection has in flight, in the shutdown warning: "requests", "commands". */
  work: string;
  log: Logger;
  maxConnections: number;
  /** How long close() lets each connection finish what it has in flight. */
  closeGraceMs: number;
  /** Added to the "listening" log line. */
  details?: Record<string, unknown>;
  /** A further limit, checked after the connection limit: a Refusal refuses this connection. */
  refuse?(connections: ReadonlySet<C>): Refusal | undefined;
  /** Makes the connection for an accepted socket; `log` names it (id, remote address). */
  accept(socket: Socket, log: Logger): C;
}

export class TcpServer<C extends ServedConnection> {
  /** Connections accepted and not yet over. */
  readonly connections = new Set<C>();
  private readonly server: Server;
  private readonly opts: TcpServerOptions<C>;
  private nextId = 1;
  private stopping = false;
  private closed: Promise<void> | undefined;
  private boundAddress = '';

  /** Listens on host:port; rejects with ELISTEN when it cannot. */
  static async start<C extends ServedConnection>(opts: TcpServerOptions<C>): Promise<TcpServer<C>> {
    const server = new TcpServer(opts);
    await server.listen();
    return server;
  }

  private constructor(opts: TcpServerOptions<C>) {
    this.opts = opts;
    // allowHalfOpen: a client that shuts down its sending side still gets the
    // answers to what it has in flight; each protocol closes our side itself.
    this.server = createServer({ noDelay: true, allowHalfOpen: true });
    this.server.on('connection', this.onConnection);
    this.server.on('error', (err) => opts.log.error({ err: errorMessage(err) }, `${opts.protocol} listener error`));
  }

  private async listen(): Promise<void> {
    const { opts, server } = this;
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error): void => {
        reject(new VskyError('ELISTEN', `cannot listen for ${opts.protocol} on ${opts.host}:${opts.port}: ${err.message}`,
          { host: opts.host, port: opts.port }, { cause: err }));
      };
      server.once('error', onError);
      server.listen(opts.port, opts.host, () => {
        server.off('error', onError);
        resolve();
      });
    });
    const bound = server.address();
    this.boundAddress = typeof bound === 'object' && bound !== null
      ? `${bound.address.includes(':') ? `[${bound.address}]` : bound.address}:${bound.port}`
      : String(bound);
    opts.log.info({ address: this.address, ...opts.details }, `${opts.title} listening`);
  }

  /** HOST:PORT bound (the real port when 0 was asked for). */
  get address(): string {
    return this.boundAddress;
  }

  /** close() was called: nothing new is served. */
  get closing(): boolean {
    return this.stopping;
  }

  private readonly onConnection = (socket: Socket): void => {
    const { opts, connections } = this;
    const remote = `${socket.remoteAddress}:${socket.remotePort}`;
    // A late error on a socket refused here must not become an unhandled 'error' event.
    socket.on('error', ignoreError);
    if (this.stopping) {
      socket.destroy();
      return;
    }
    if (connections.size >= opts.maxConnections) {
      opts.log.warn({ remote, limit: opts.maxConnections }, `too many ${opts.protocol} connections; refusing this one`);
      socket.destroy();
      return;
    }
    const refusal = opts.refuse?.(connections);
    if (refusal !== undefined) {
      opts.log.warn({ remote, limit: refusal.limit }, refusal.message);
      socket.destroy();
      return;
    }
    socket.setNoDelay(true);
    // Notices a client host that vanished without closing (not a loopback concern, a remote one).
    socket.setKeepAlive(true, 30_000);
    const connection = opts.accept(socket, opts.log.child({ conn: this.nextId++, remote }));
    connections.add(connection);
    void connection.closed.then(() => connections.delete(connection));
    connection.start();
  };

  /** Stops accepting, lets in-flight work finish (bounded), closes every connection. */
  close(): Promise<void> {
    this.closed ??= (async () => {
      const { opts, connections } = this;
      this.stopping = true;
      const stopped = new Promise<void>((resolve) => this.server.close(() => resolve()));
      await Promise.all([...connections].map((c) => c.shutdown(opts.closeGraceMs)));
      await new Promise((resolve) => setImmediate(resolve)); // let connections remove themselves
      // server.close() calls back once every socket is gone; an abandoned
      // connection (stuck device) must not hold shutdown up.
      if (connections.size === 0) await stopped;
      else opts.log.warn({ connections: connections.size }, `${opts.protocol} server closed with ${opts.work} still in flight`);
      opts.log.info({ address: this.address }, `${opts.title} closed`);
    })();
    return this.closed;
  }
}

function ignoreError(): void {}
