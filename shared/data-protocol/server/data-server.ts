import net from 'node:net';
import * as tls from 'node:tls';
import { MAX_INFLIGHT_PER_CONNECTION } from '../../constants.js';
import { moduleLogger } from '../../logger.js';
import type { ChunkService } from './chunk-service.js';
import { dataTlsServerOptions, type DataSecurity } from '../auth/data-security.js';
import { Connection } from './data-connection.js';
import { Forwarder } from './forwarder.js';

// The data protocol server (docs/data-protocol.md): listens, accepts (with
// --data-tls: a TLS handshake first) and hands each connection to a
// Connection (data-connection.ts), which frames, dispatches and replies.
// The Forwarder (forwarder.ts) is shared by every connection: the pool of
// connections to other nodes that FORWARD_WRITE goes on through.

/** Write buffer of a TLS data connection before write() asks to wait for 'drain' (plain sockets: Node's default). */
const TLS_WRITE_HIGH_WATER_MARK = 4 * 1024 * 1024;
const TLS_HANDSHAKE_TIMEOUT_MS = 5_000;

export interface DataServerOptions {
  /** Requests in flight per connection before its socket stops being read. */
  maxInflight?: number;
  /** Authentication key and TLS (default: neither). */
  security?: DataSecurity;
}

export class DataServer {
  private readonly store: ChunkService;
  private readonly maxInflight: number;
  private readonly server: net.Server;
  private readonly security: DataSecurity;
  private readonly connections = new Set<Connection>();
  private readonly forwarder = new Forwarder();
  private readonly log = moduleLogger('data-server');
  private nextConnId = 1;

  constructor(store: ChunkService, opts: DataServerOptions = {}) {
    this.store = store;
    this.maxInflight = opts.maxInflight ?? MAX_INFLIGHT_PER_CONNECTION;
    this.security = opts.security ?? {};
    const material = this.security.tls;
    if (material === undefined) {
      // Paused until the Connection takes the socket over (see receive-buffer-socket.ts).
      this.server = net.createServer({ noDelay: true, pauseOnConnect: true }, (accepted) => this.accept(accepted, true));
    } else {
      // TLS by hand on accepted TCP sockets: tls.Server gives its sockets a 16 KiB write
      // high-water mark, which would stall replies of 64 KiB reads on 'drain' each time.
      const context = tls.createSecureContext(dataTlsServerOptions(material));
      this.server = net.createServer({ noDelay: true }, (accepted) => this.acceptTls(accepted, context));
    }
  }

  private acceptTls(accepted: net.Socket, secureContext: tls.SecureContext): void {
    const remote = `${accepted.remoteAddress}:${accepted.remotePort}`;
    const secure = new tls.TLSSocket(accepted, {
      isServer: true, secureContext, requestCert: true, rejectUnauthorized: true, highWaterMark: TLS_WRITE_HIGH_WATER_MARK,
    } as tls.TLSSocketOptions);
    const refuse = (reason: string): void => {
      this.log.warn({ remote, reason }, 'data connection refused: TLS handshake failed');
      secure.destroy();
    };
    const timer = setTimeout(() => refuse(`no TLS handshake within ${TLS_HANDSHAKE_TIMEOUT_MS} ms`), TLS_HANDSHAKE_TIMEOUT_MS);
    timer.unref();
    const onError = (err: Error): void => { clearTimeout(timer); refuse(err.message); };
    secure.once('error', onError);
    secure.once('secure', () => {
      clearTimeout(timer);
      secure.off('error', onError);
      this.accept(secure, false);
    });
  }

  private accept(accepted: net.Socket, adopt: boolean): void {
    const conn = new Connection(this.nextConnId++, accepted, adopt, this.store, this.forwarder, this.maxInflight, this.security.key, this.log, () => this.connections.delete(conn));
    this.connections.add(conn);
  }

  /** Listens on host:port (0 picks one); resolves with "host:port". */
  listen(host: string, port: number): Promise<string> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        this.server.on('error', (err) => this.log.error({ err }, 'data server error'));
        const addr = this.server.address() as net.AddressInfo;
        resolve(`${host}:${addr.port}`);
      });
    });
  }

  /** Stops accepting and drops every connection (in-flight requests finish, their replies are dropped). */
  close(): Promise<void> {
    for (const c of this.connections) c.destroy();
    const forwards = this.forwarder.close();
    return new Promise<void>((resolve) => this.server.close(() => resolve())).then(() => forwards);
  }
}

