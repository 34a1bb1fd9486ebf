import { connect, createServer, type Server, type Socket } from 'node:net';

// A TCP proxy on loopback for partition tests: it forwards every connection
// made to its address to a target (e.g. a head agent's link to the manager
// goes through it), and can cut the path: cut() destroys the live connections
// (both sides see a reset) and refuses new ones (accepted, then reset at
// once), until heal(). It knows nothing of the protocol above TCP.

export class TcpProxy {
  /** Connections accepted and forwarded since start. */
  forwarded = 0;
  /** Connections refused while cut. */
  refused = 0;
  private readonly live = new Set<Socket>();
  private isCut = false;

  private constructor(private readonly server: Server, readonly target: string, readonly address: string) {}

  /** Listens on host:0 (default 127.0.0.1) and forwards to `target` (HOST:PORT). */
  static start(target: string, host = '127.0.0.1'): Promise<TcpProxy> {
    const [targetHost, targetPort] = splitHostPort(target);
    const server = createServer({ noDelay: true });
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, host, () => {
        server.off('error', reject);
        const addr = server.address();
        const port = typeof addr === 'object' && addr ? addr.port : 0;
        const proxy = new TcpProxy(server, target, `${host}:${port}`);
        server.on('connection', (client) => proxy.accept(client, targetHost, targetPort));
        resolve(proxy);
      });
    });
  }

  get cutOff(): boolean {
    return this.isCut;
  }

  /** Live forwarded connections (client sides). */
  get connections(): number {
    return this.live.size;
  }

  private accept(client: Socket, host: string, port: number): void {
    client.on('error', () => undefined);
    if (this.isCut) {
      this.refused++;
      client.resetAndDestroy();
      return;
    }
    this.forwarded++;
    client.setNoDelay(true);
    const upstream = connect({ host, port, noDelay: true });
    upstream.on('error', () => undefined);
    this.live.add(client);
    this.live.add(upstream);
    const drop = (): void => {
      this.live.delete(client);
      this.live.delete(upstream);
      if (!client.destroyed) client.destroy();
      if (!upstream.destroyed) upstream.destroy();
    };
    client.on('close', drop);
    upstream.on('close', drop);
    client.pipe(upstream);
    upstream.pipe(client);
  }

  /** Destroys every live connection (reset) and refuses new ones until heal(). */
  cut(): void {
    this.isCut = true;
    for (const s of [...this.live]) s.resetAndDestroy();
    this.live.clear();
  }

  /** Forwards new connections again. */
  heal(): void {
    this.isCut = false;
  }

  close(): Promise<void> {
    this.cut();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

function splitHostPort(address: string): [string, number] {
  const i = address.lastIndexOf(':');
  const port = Number(address.slice(i + 1));
  if (i <= 0 || !Number.isInteger(port) || port <= 0 || port > 65535) throw new Error(`TcpProxy: "${address}" is not HOST:PORT`);
  return [address.slice(0, i), port];
}
