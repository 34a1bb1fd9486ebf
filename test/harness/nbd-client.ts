import { connect, type Socket } from 'node:net';

// A small NBD client for tests (oldstyle-free fixed newstyle, NBD_OPT_EXPORT_NAME,
// simple replies, pipelined requests). Used by the verifying writer, which needs
// to know exactly which requests were acknowledged.

const IHAVEOPT = Buffer.from('IHAVEOPT');
const REQUEST_MAGIC = 0x25609513;
const SIMPLE_REPLY_MAGIC = 0x67446698;
const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3 } as const;
const FLAG_FUA = 1;

interface Pending { resolve: (data: Buffer | undefined) => void; reject: (err: Error) => void; readLength: number }

export class NbdError extends Error {
  constructor(message: string, readonly errno: number) { super(message); }
}

export class NbdClient {
  size = 0;
  private socket!: Socket;
  private buf: Buffer = Buffer.alloc(0);
  private readonly pending = new Map<number, Pending>();
  private nextHandle = 1;
  private closedError: Error | undefined;

  static async connect(uri: string, timeoutMs = 5000): Promise<NbdClient> {
    const c = new NbdClient();
    await c.open(uri, timeoutMs);
    return c;
  }

  private open(uri: string, timeoutMs: number): Promise<void> {
    const u = new URL(uri);
    const name = decodeURIComponent(u.pathname.slice(1));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { this.socket.destroy(); reject(new Error(`NBD handshake with ${uri} timed out`)); }, timeoutMs);
      this.socket = connect(Number(u.port), u.hostname);
      this.socket.setNoDelay(true);
      let stage: 'greeting' | 'export' | 'ready' = 'greeting';
      this.socket.on('data', (chunk: Buffer) => {
        this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
        if (stage === 'greeting' && this.buf.length >= 18) {
          this.buf = this.buf.subarray(18);
          const flags = Buffer.alloc(4);
          flags.writeUInt32BE(3); // FIXED_NEWSTYLE | NO_ZEROES
          const opt = Buffer.alloc(16);
          IHAVEOPT.copy(opt, 0);
          opt.writeUInt32BE(1, 8); // NBD_OPT_EXPORT_NAME
          opt.writeUInt32BE(Buffer.byteLength(name), 12);
          this.socket.write(Buffer.concat([flags, opt, Buffer.from(name)]));
          stage = 'export';
        }
        if (stage === 'export' && this.buf.length >= 10) {
          this.size = Number(this.buf.readBigUInt64BE(0));
          this.buf = this.buf.subarray(10);
          stage = 'ready';
          clearTimeout(timer);
          resolve();
        }
        if (stage === 'ready') this.parseReplies();
      });
      this.socket.on('error', (err) => this.fail(err));
      this.socket.on('close', () => {
        clearTimeout(timer);
        if (stage !== 'ready') reject(new Error(`NBD server ${uri} closed during the handshake (unknown export?)`));
        this.fail(new Error('NBD connection closed'));
      });
    });
  }

  private parseReplies(): void {
    while (this.buf.length >= 16) {
      if (this.buf.readUInt32BE(0) !== SIMPLE_REPLY_MAGIC) return this.fail(new Error('bad NBD reply magic'));
      const error = this.buf.readUInt32BE(4);
      const handle = Number(this.buf.readBigUInt64BE(8));
      const p = this.pending.get(handle);
      if (p === undefined) return this.fail(new Error(`NBD reply for unknown handle ${handle}`));
      const dataLen = error === 0 ? p.readLength : 0;
      if (this.buf.length < 16 + dataLen) return;
      const data = dataLen > 0 ? Buffer.from(this.buf.subarray(16, 16 + dataLen)) : undefined;
      this.buf = this.buf.subarray(16 + dataLen);
      this.pending.delete(handle);
      if (error !== 0) p.reject(new NbdError(`NBD error ${error}`, error));
      else p.resolve(data);
    }
  }

  private fail(err: Error): void {
    this.closedError ??= err;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    this.socket.destroy();
  }

  private request(type: number, flags: number, offset: number, length: number, data?: Buffer): Promise<Buffer | undefined> {
    if (this.closedError) return Promise.reject(this.closedError);
    const handle = this.nextHandle++;
    const h = Buffer.alloc(28);
    h.writeUInt32BE(REQUEST_MAGIC, 0);
    h.writeUInt16BE(flags, 4);
    h.writeUInt16BE(type, 6);
    h.writeBigUInt64BE(BigInt(handle), 8);
    h.writeBigUInt64BE(BigInt(offset), 16);
    h.writeUInt32BE(length, 24);
    return new Promise((resolve, reject) => {
      this.pending.set(handle, { resolve, reject, readLength: type === CMD.READ ? length : 0 });
      this.socket.write(data ? Buffer.concat([h, data]) : h);
    });
  }

  read(offset: number, length: number): Promise<Buffer> {
    return this.request(CMD.READ, 0, offset, length) as Promise<Buffer>;
  }
  async write(offset: number, data: Buffer, fua = false): Promise<void> {
    await this.request(CMD.WRITE, fua ? FLAG_FUA : 0, offset, data.length, data);
  }
  async flush(): Promise<void> {
    await this.request(CMD.FLUSH, 0, 0, 0);
  }
  get broken(): boolean {
    return this.closedError !== undefined;
  }
  close(): void {
    if (!this.closedError) this.socket.write(Buffer.from([0x25, 0x60, 0x95, 0x13, 0, 0, 0, CMD.DISC, ...new Array(20).fill(0)]));
    this.socket.end();
    this.closedError ??= new Error('closed');
  }
}
