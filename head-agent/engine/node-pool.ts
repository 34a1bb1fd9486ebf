import { IoError } from '../../shared/errors.js';
import { NodeConnection, type NodeConnectionOptions } from '../../shared/data-protocol/client/node-connection.js';

// One data-protocol connection per storage node address, shared by every
// attached volume (a node holding chunks of ten volumes still sees one
// connection from this head). Connections are created on first use and stay
// pooled after a volume detaches; they reconnect lazily by themselves.

export class NodePool {
  private readonly conns = new Map<string, NodeConnection>();
  private readonly opts: NodeConnectionOptions;
  private closed = false;

  constructor(opts: NodeConnectionOptions = {}) {
    this.opts = opts;
  }

  /** The connection to `address` (HOST:PORT), created (not yet connected) on first use. */
  get(address: string): NodeConnection {
    let conn = this.conns.get(address);
    if (conn === undefined) {
      if (this.closed) throw new IoError(`cannot reach storage node ${address}: the head is shutting down`);
      conn = new NodeConnection(address, this.opts);
      this.conns.set(address, conn);
    }
    return conn;
  }

  has(address: string): boolean {
    return this.conns.has(address);
  }

  get size(): number {
    return this.conns.size;
  }

  connections(): NodeConnection[] {
    return [...this.conns.values()];
  }

  /** Closes every connection (pending requests fail with TransportError). */
  async close(): Promise<void> {
    this.closed = true;
    const all = [...this.conns.values()];
    this.conns.clear();
    await Promise.all(all.map((c) => c.close()));
  }
}
