import { NbdClient } from './nbd-client.js';

// The verifying writer used by chaos tests: it keeps QD writes of 4 KiB
// blocks in flight over NBD, each block carrying (block, seq) and a filler
// derived from them, and a model of every acknowledged write. Any read must
// return zeros (if nothing was ever acknowledged there) or a well-formed
// block whose seq is at least the last acknowledged one and at most the last
// issued one: otherwise an acknowledged write was lost or garbage came back.
// It measures write stalls (the longest gap between acknowledgements).

const BLOCK = 4096;
const MAGIC = 0x56524659; // 'VRFY'

export interface VerifierOptions { uri: string; blocks: number; queueDepth?: number; readEvery?: number }

export interface VerifierStats {
  writesAcked: number; writeErrors: number; readsChecked: number; readErrors: number;
  maxStallMs: number; violations: string[];
}

function fill(block: number, seq: number, buf: Buffer): Buffer {
  buf.writeUInt32BE(MAGIC, 0);
  buf.writeUInt32BE(block, 4);
  buf.writeDoubleBE(seq, 8);
  let x = (block * 2654435761 + seq * 40503) >>> 0;
  for (let i = 16; i < BLOCK; i += 4) {
    x = (x * 1664525 + 1013904223) >>> 0;
    buf.writeUInt32BE(x, i);
  }
  return buf;
}

export class VerifyingWriter {
  readonly stats: VerifierStats = { writesAcked: 0, writeErrors: 0, readsChecked: 0, readErrors: 0, maxStallMs: 0, violations: [] };
  private uri: string;
  private client: NbdClient | undefined;
  private connecting: Promise<NbdClient> | undefined;
  private readonly acked: Float64Array;
  private readonly issued: Float64Array;
  private readonly busy: Uint8Array;
  private seq = 0;
  private running = false;
  private lastAck = 0;
  private workers: Promise<void>[] = [];
  private readonly qd: number;
  private readonly readEvery: number;

  constructor(private readonly opts: VerifierOptions) {
    this.uri = opts.uri;
    this.acked = new Float64Array(opts.blocks);
    this.issued = new Float64Array(opts.blocks);
    this.busy = new Uint8Array(opts.blocks);
    this.qd = opts.queueDepth ?? 8;
    this.readEvery = opts.readEvery ?? 3;
  }

  /** Points the writer at another export (the volume moved to another head). */
  switchTo(uri: string): void {
    this.uri = uri;
    this.client?.close();
    this.client = undefined;
  }

  /**
   * Writes every block once, in order, before start() (so every region of every chunk holds
   * data: a resync then has the whole chunk to copy). The model records each as acknowledged.
   */
  async fillAll(): Promise<void> {
    const span = 64;
    const c = await NbdClient.connect(this.uri, 2000);
    try {
      for (let b = 0; b < this.opts.blocks; b += span) {
        const n = Math.min(span, this.opts.blocks - b);
        const data = Buffer.alloc(n * BLOCK);
        const seqs = Array.from({ length: n }, () => ++this.seq);
        seqs.forEach((seq, i) => { this.issued[b + i] = seq; fill(b + i, seq, data.subarray(i * BLOCK, (i + 1) * BLOCK)); });
        await c.write(b * BLOCK, data);
        seqs.forEach((seq, i) => { this.acked[b + i] = seq; });
      }
    } finally {
      c.close();
    }
  }

  start(): void {
    this.running = true;
    this.lastAck = Date.now();
    this.workers = Array.from({ length: this.qd }, (_, i) => this.worker(i));
  }

  async stop(): Promise<void> {
    this.running = false;
    await Promise.all(this.workers);
    this.noteStall();
  }

  /** Longest gap between write acknowledgements so far, ongoing gap included. */
  get currentStallMs(): number {
    return Math.max(this.stats.maxStallMs, Date.now() - this.lastAck);
  }

  /** Resets the stall measurement (call right before injecting a fault). */
  resetStall(): void {
    this.stats.maxStallMs = 0;
    this.lastAck = Date.now();
  }

  private async conn(): Promise<NbdClient> {
    if (this.client && !this.client.broken) return this.client;
    this.connecting ??= (async () => {
      for (;;) {
        try {
          this.client = await NbdClient.connect(this.uri, 2000);
          return this.client;
        } catch {
          if (!this.running) throw new Error('stopped');
          await new Promise((r) => setTimeout(r, 100));
        }
      }
    })().finally(() => { this.connecting = undefined; });
    return this.connecting;
  }

  private async worker(id: number): Promise<void> {
    const buf = Buffer.alloc(BLOCK);
    let n = 0;
    while (this.running) {
      const block = this.pickFree(id);
      if (block < 0) { await new Promise((r) => setImmediate(r)); continue; }
      this.busy[block] = 1;
      try {
        if (++n % this.readEvery === 0) await this.checkBlock(block);
        else await this.writeBlock(block, buf);
      } finally {
        this.busy[block] = 0;
      }
    }
  }

  private pickFree(id: number): number {
    for (let tries = 0; tries < 16; tries++) {
      const b = Math.floor(Math.random() * this.opts.blocks);
      if (this.busy[b] === 0 && b % this.qd === id % this.qd) return b;
    }
    return -1;
  }

  private async writeBlock(block: number, buf: Buffer): Promise<void> {
    const seq = ++this.seq;
    this.issued[block] = seq;
    try {
      const c = await this.conn();
      await c.write(block * BLOCK, fill(block, seq, buf));
      this.acked[block] = seq;
      this.stats.writesAcked++;
      this.noteStall();
      this.lastAck = Date.now();
    } catch {
      this.stats.writeErrors++;
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  private noteStall(): void {
    this.stats.maxStallMs = Math.max(this.stats.maxStallMs, Date.now() - this.lastAck);
  }

  private async checkBlock(block: number): Promise<void> {
    const floor = this.acked[block]!;
    let data: Buffer;
    try {
      data = await (await this.conn()).read(block * BLOCK, BLOCK);
    } catch {
      this.stats.readErrors++;
      await new Promise((r) => setTimeout(r, 20));
      return;
    }
    this.stats.readsChecked++;
    const problem = this.judge(block, data, floor);
    if (problem) this.stats.violations.push(problem);
  }

  /** The bytes this writer puts in `block` for `seq` (tests of the judgement use it). */
  fillFor(block: number, seq: number, buf: Buffer): Buffer {
    return fill(block, seq, buf);
  }

  /** Why `data` cannot be what block holds, or undefined when it can. */
  judge(block: number, data: Buffer, floor: number): string | undefined {
    if (data.readUInt32BE(0) === 0 && data.every((b) => b === 0)) {
      return floor === 0 ? undefined : `block ${block}: zeros, but write seq ${floor} was acknowledged (lost write)`;
    }
    if (data.readUInt32BE(0) !== MAGIC || data.readUInt32BE(4) !== block) return `block ${block}: garbage (not a block we wrote)`;
    const seq = data.readDoubleBE(8);
    if (!fill(block, seq, Buffer.alloc(BLOCK)).equals(data)) return `block ${block}: torn or corrupted content for seq ${seq}`;
    if (seq < floor) return `block ${block}: seq ${seq} is older than acknowledged seq ${floor}`;
    if (seq > this.issued[block]!) return `block ${block}: seq ${seq} was never written there`;
    return undefined;
  }

  /** Reads every block once (writer stopped) and checks it against the model. */
  async verifyAll(): Promise<string[]> {
    const problems: string[] = [];
    const c = await this.conn();
    const span = 256;
    for (let b = 0; b < this.opts.blocks; b += span) {
      const n = Math.min(span, this.opts.blocks - b);
      const data = await c.read(b * BLOCK, n * BLOCK);
      for (let i = 0; i < n; i++) {
        const p = this.judge(b + i, data.subarray(i * BLOCK, (i + 1) * BLOCK), this.acked[b + i]!);
        if (p) problems.push(p);
      }
    }
    return problems;
  }

  close(): void {
    this.client?.close();
  }
}
