// The NBD export of a head agent: a TCP listener that negotiates each client
// onto one BlockDevice of an ExportRegistry and then serves it. Many clients
// at once, to the same or different exports. Bad input closes that client's
// connection only; nothing a client sends can take the server down.

import type { Socket } from 'node:net';
import type { ExportRegistry } from '../../engine/block-device.js';
import { moduleLogger, type Logger } from '../../../shared/logger.js';
import { TcpServer, type ServedConnection } from '../tcp-server.js';
import { NbdConnection } from './connection.js';
import { CLOSE_GRACE_MS, HANDSHAKE_TIMEOUT_MS, MAX_CONNECTIONS, MAX_INFLIGHT_BYTES, MAX_INFLIGHT_REQUESTS } from './constants.js';
import { negotiate, type NbdTlsSettings } from './handshake-driver.js';

export interface NbdServerOptions {
  host: string;
  port: number;
  registry: ExportRegistry;
  /** NBD_OPT_STARTTLS (--nbd-tls on|require); undefined: NOTLS. */
  tls?: NbdTlsSettings;
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

/** One client, from accept through negotiation to the end of transmission. */
class NbdSession implements ServedConnection {
  readonly closed: Promise<void>;
  /** Set once the client is in transmission. */
  exportName: string | undefined;
  private connection: NbdConnection | undefined;
  /** The server is closing: a negotiation that ends now must not start transmission. */
  private stopping = false;
  private finished!: () => void;

  constructor(
    private readonly socket: Socket,
    private readonly log: Logger,
    private readonly registry: ExportRegistry,
    private readonly limits: NbdServerTuning,
    private readonly tls: NbdTlsSettings | undefined,
  ) {
    this.closed = new Promise((r) => { this.finished = r; });
  }

  start(): void {
    void this.serve().finally(this.finished);
  }

  shutdown(graceMs: number): Promise<void> {
    this.stopping = true;
    if (this.connection !== undefined) return this.connection.shutdown(graceMs);
    this.socket.destroy();
    return this.closed;
  }

  private async serve(): Promise<void> {
    const { socket, limits } = this;
    const timer = setTimeout(() => {
      this.log.warn({ timeoutMs: limits.handshakeTimeoutMs }, 'NBD negotiation timed out; closing the connection');
      socket.destroy();
    }, limits.handshakeTimeoutMs);
    timer.unref();
    let result;
    try {
      result = await negotiate(socket, this.registry, this.log, this.tls);
    } finally {
      clearTimeout(timer);
    }
    if (result.kind === 'closed') return;
    if (this.stopping) {
      result.socket.destroy();
      return;
    }
    const connection = new NbdConnection({
      socket: result.socket, device: result.device, exportSize: result.size, structured: result.structured, blockStatus: result.blockStatus, log: this.log.child({ export: result.exportName }),
      maxInFlight: limits.maxInFlight, maxInFlightBytes: limits.maxInFlightBytes,
    });
    this.exportName = result.exportName;
    this.connection = connection;
    this.log.info({ export: result.exportName, size: result.size, structured: result.structured, blockStatus: result.blockStatus }, 'NBD client attached');
    connection.start(result.leftover);
    await connection.closed;
    this.log.info({ export: result.exportName }, 'NBD client detached');
  }
}

export async function startNbdServer(opts: NbdServerOptions, tuning: Partial<NbdServerTuning> = {}): Promise<NbdServerHandle> {
  const limits = { ...DEFAULT_TUNING, ...tuning };
  const server = await TcpServer.start<NbdSession>({
    host: opts.host, port: opts.port, protocol: 'NBD', title: 'NBD server', work: 'requests', log: moduleLogger('nbd'),
    maxConnections: limits.maxConnections, closeGraceMs: limits.closeGraceMs,
    details: { tls: opts.tls?.mode ?? 'off' },
    accept: (socket, log) => new NbdSession(socket, log, opts.registry, limits, opts.tls),
  });
  return {
    address: server.address,
    connectionCount(exportName?: string): number {
      if (exportName === undefined) return server.connections.size;
      let n = 0;
      for (const s of server.connections) if (s.exportName === exportName) n++;
      return n;
    },
    close: () => server.close(),
  };
}
