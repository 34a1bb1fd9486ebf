import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { NodeConnection, type RequestTarget } from '../../shared/data-protocol/client/node-connection.js';
import { Replica } from '../../head-agent/engine/replica.js';
import { NodePool } from '../../head-agent/engine/node-pool.js';
import { Attachments } from '../../head-agent/attachments.js';
import { encodeReplyHeader, requestFrameSpec } from '../../shared/data-protocol/codec.js';
import { Flag, Opcode, REPLY_HEADER_SIZE, Status, type RequestHeader } from '../../shared/data-protocol/frame.js';
import { InvalidArgumentError, IoError, StaleEpochError, TransportError } from '../../shared/errors.js';
import { FrameDecoder } from '../../shared/frame-decoder.js';

// NodeConnection against a scripted loopback node: replies out of order and
// split anywhere, error statuses, stalls, resets, a window on in-flight
// requests, and garbage from the peer.

const CHUNK = 4 * 1024 * 1024;

interface FakeOptions {
  /** Hold replies and send them in reverse order, this many at a time. */
  reorder?: number;
  /** Write replies in pieces of this many bytes (1 = byte by byte). */
  splitBytes?: number;
  /** Decide a reply status for a request (default OK). */
  status?: (h: RequestHeader) => number;
  /** Never reply to requests matching this. */
  swallow?: (h: RequestHeader) => boolean;
  /** Delay the reply to a request by this many ms (0: next turn). */
  delayMs?: (h: RequestHeader) => number;
  /** Answer one request at a time, in order, each this many ms after the previous reply (a slow but steady node). */
  serialMs?: number;
  /**
   * When the reply is due, stall this whole process (head included) for this
   * many ms in a check-phase callback, then write the reply: the head's next
   * timer tick then runs before it could read the reply.
   */
  stallBeforeReplyMs?: (h: RequestHeader) => number;
}

class FakeNode {
  readonly server: Server;
  readonly sockets = new Set<Socket>();
  readonly chunks = new Map<string, Buffer>();
  readonly seen: RequestHeader[] = [];
  outstanding = 0;
  maxOutstanding = 0;
  connections = 0;
  private held: Buffer[][] = [];
  private serial: (() => void)[] = [];
  private serialBusy = false;

  constructor(readonly opts: FakeOptions = {}) {
    this.server = createServer((s) => this.onSocket(s));
  }

  async listen(): Promise<string> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    return `127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  chunk(h: { volumeId: number; segment: number; slot: number }): Buffer {
    const key = `${h.volumeId}/${h.segment}/${h.slot}`;
    let c = this.chunks.get(key);
    if (!c) this.chunks.set(key, (c = Buffer.alloc(CHUNK)));
    return c;
  }

  resetAll(): void {
    for (const s of this.sockets) s.destroy();
  }

  async close(): Promise<void> {
    this.resetAll();
    await new Promise<void>((r) => this.server.close(() => r()));
  }

  private onSocket(s: Socket): void {
    this.connections++;
    this.sockets.add(s);
    s.on('close', () => this.sockets.delete(s));
    s.on('error', () => undefined);
    const dec = new FrameDecoder(requestFrameSpec);
    s.on('data', (d: Buffer) => {
      dec.push(d);
      for (let f = dec.next(); f; f = dec.next()) this.handle(s, f.header, f.payload);
    });
  }

  private handle(s: Socket, h: RequestHeader, payload: Buffer | undefined): void {
    this.seen.push(h);
    this.outstanding++;
    this.maxOutstanding = Math.max(this.maxOutstanding, this.outstanding);
    if (this.opts.swallow?.(h)) return;
    const status = this.opts.status?.(h) ?? Status.OK;
    let body: Buffer | undefined;
    if (status !== Status.OK) body = Buffer.from(`fake says ${status}`);
    else if (h.opcode === Opcode.READ) body = Buffer.from(this.chunk(h).subarray(h.offset, h.offset + h.length));
    else if (h.opcode === Opcode.WRITE) payload!.copy(this.chunk(h), h.offset);
    const head = encodeReplyHeader({ requestId: h.requestId, status, length: body?.length ?? 0 }, Buffer.alloc(REPLY_HEADER_SIZE));
    const parts = body ? [head, body] : [head];
    const stallMs = this.opts.stallBeforeReplyMs?.(h) ?? 0;
    const reply = stallMs === 0 ? () => this.reply(s, parts) : () => setImmediate(() => {
      const until = Date.now() + stallMs;
      while (Date.now() < until) { /* a stalled event loop */ }
      this.reply(s, parts);
    });
    if (this.opts.serialMs !== undefined) {
      this.serial.push(reply);
      this.nextSerial();
      return;
    }
    // Reply on a later turn, so a window of requests is really outstanding at once.
    const delay = this.opts.delayMs?.(h) ?? 0;
    if (delay > 0) setTimeout(reply, delay);
    else setImmediate(reply);
  }

  private nextSerial(): void {
    if (this.serialBusy || this.serial.length === 0) return;
    this.serialBusy = true;
    setTimeout(() => {
      this.serialBusy = false;
      this.serial.shift()!();
      this.nextSerial();
    }, this.opts.serialMs);
  }

  private reply(s: Socket, parts: Buffer[]): void {
    if (this.opts.reorder) {
      this.held.push(parts);
      if (this.held.length < this.opts.reorder) return;
      const batch = this.held.reverse();
      this.held = [];
      for (const p of batch) this.send(s, p);
      return;
    }
    this.send(s, parts);
  }

  private send(s: Socket, parts: Buffer[]): void {
    this.outstanding--;
    const all = Buffer.concat(parts);
    const step = this.opts.splitBytes ?? all.length;
    for (let i = 0; i < all.length; i += step) s.write(all.subarray(i, i + step));
  }
}

function target(volumeId = 7, segment = 0, slot = 0): RequestTarget {
  return {
    volumeId, segment, slot,
    replyError: (_op, status, message) => new IoError(`status ${status}: ${message}`),
  };
}

const nodes: FakeNode[] = [];
const conns: NodeConnection[] = [];
afterEach(async () => {
  await Promise.all(conns.splice(0).map((c) => c.close()));
  await Promise.all(nodes.splice(0).map((n) => n.close()));
});

async function setup(opts: FakeOptions = {}, connOpts: ConstructorParameters<typeof NodeConnection>[1] = {}) {
  const node = new FakeNode(opts);
  nodes.push(node);
  const address = await node.listen();
  const conn = new NodeConnection(address, connOpts);
  conns.push(conn);
  return { node, conn, address };
}

function pattern(len: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(len);
  for (let i = 0; i < len; i++) b[i] = (i * 31 + seed * 17) & 0xff;
  return b;
}

describe('NodeConnection', () => {
  it('pipelines writes and reads with out-of-order, byte-split replies', async () => {
    const { node, conn } = await setup({ reorder: 5, splitBytes: 7 });
    const t = target();
    const writes = Array.from({ length: 20 }, (_, i) => conn.request(t, Opcode.WRITE, 0, 1, i * 4096, 4096, pattern(4096, i)));
    await Promise.all(writes);
    expect(node.maxOutstanding).toBeGreaterThan(1);
    const dests = Array.from({ length: 20 }, () => Buffer.alloc(4096));
    await Promise.all(dests.map((d, i) => conn.request(t, Opcode.READ, 0, 0, i * 4096, 4096, d)));
    dests.forEach((d, i) => expect(d.equals(pattern(4096, i))).toBe(true));
    expect(node.connections).toBe(1);
  });

  it('assembles a large read that spans socket chunks straight into the destination', async () => {
    const { node, conn } = await setup({ splitBytes: 1000 });
    const data = pattern(1024 * 1024, 3);
    data.copy(node.chunk({ volumeId: 7, segment: 0, slot: 0 }), 8192);
    const backing = Buffer.alloc(2 * 1024 * 1024);
    const dest = backing.subarray(4096, 4096 + data.length);
    await conn.request(target(), Opcode.READ, 0, 0, 8192, data.length, dest);
    expect(dest.equals(data)).toBe(true);
    expect(backing.subarray(0, 4096).every((b) => b === 0)).toBe(true);
    expect(backing.subarray(4096 + data.length).every((b) => b === 0)).toBe(true);
  });

  it('reassembles replies split anywhere across socket reads, mid-header included', async () => {
    const { node, conn } = await setup({ swallow: () => true });
    const t = target();
    const sizes = [5, 40, 1, 3000, 17, 0, 64, 2];
    const dests = sizes.map((n) => Buffer.alloc(n));
    const pending = sizes.map((n, i) => (n === 0
      ? conn.request(t, Opcode.WRITE, 0, 1, 0, 0, Buffer.alloc(0))
      : conn.request(t, Opcode.READ, 0, 0, i, n, dests[i]!)));
    while (node.seen.length < sizes.length) await new Promise((r) => setTimeout(r, 5));
    // All replies in reverse order, as one byte stream.
    const parts: Buffer[] = [];
    for (let i = sizes.length - 1; i >= 0; i--) {
      const body = sizes[i] === 0 ? Buffer.alloc(0) : pattern(sizes[i]!, i + 1);
      parts.push(encodeReplyHeader({ requestId: node.seen[i]!.requestId, status: 0, length: body.length }, Buffer.alloc(REPLY_HEADER_SIZE)), body);
    }
    const stream = Buffer.concat(parts);
    const sock = [...node.sockets][0]!;
    // Pieces of 1..23 bytes, each its own socket read on the head (a pause between them).
    for (let at = 0, k = 0; at < stream.length; k++) {
      const n = Math.min(stream.length - at, 1 + ((k * 7) % 23));
      sock.write(stream.subarray(at, at + n));
      at += n;
      await new Promise((r) => setTimeout(r, 1));
    }
    await Promise.all(pending);
    dests.forEach((d, i) => expect(d.equals(sizes[i] === 0 ? Buffer.alloc(0) : pattern(sizes[i]!, i + 1))).toBe(true));
  });

  it('encodes every header field of the request', async () => {
    const { node, conn } = await setup();
    await conn.request(target(9, 4, 2), Opcode.FENCE, 0, 77, 0, 0, undefined, 12);
    await conn.request(target(9, 4, 2), Opcode.WRITE, 1, 78, 5, 3, Buffer.from('abc'));
    expect(node.seen[0]).toMatchObject({ opcode: Opcode.FENCE, volumeId: 9, segment: 4, slot: 2, epoch: 77, generation: 12 });
    expect(node.seen[1]).toMatchObject({ opcode: Opcode.WRITE, flags: 1, epoch: 78, offset: 5, length: 3, generation: 0 });
  });

  it('maps reply statuses to typed errors through the replica', async () => {
    const statuses = [Status.STALE_EPOCH, Status.OUT_OF_RANGE, Status.IO_ERROR, Status.NO_CHUNK];
    const { conn } = await setup({ status: (h) => statuses[h.offset] ?? Status.OK });
    const r = new Replica(conn, { volumeId: 1, volumeName: 'v', segment: 0, slot: 1, state: 'in_sync', serverId: 's', diskId: 'd' });
    const results = await Promise.allSettled(statuses.map((_, i) => r.write(5, i, Buffer.alloc(1), false)));
    const errs = results.map((x) => (x.status === 'rejected' ? x.reason : undefined));
    expect(errs[0]).toBeInstanceOf(StaleEpochError);
    expect(errs[1]).toBeInstanceOf(InvalidArgumentError);
    expect(errs[2]).toBeInstanceOf(IoError);
    expect(String(errs[2].message)).toContain('fake says 5');
    expect(String(errs[3].message)).toContain('NO_CHUNK');
    // The connection is still fine after error replies.
    await r.write(5, 100, Buffer.alloc(1), false);
  });

  it('keeps at most maxInflight requests on the wire and queues the rest', async () => {
    const { node, conn } = await setup({}, { maxInflight: 4 });
    const t = target();
    await conn.request(t, Opcode.PING, 0, 0, 0, 0, undefined); // open: later requests take the direct path
    await Promise.all(Array.from({ length: 50 }, (_, i) => conn.request(t, Opcode.WRITE, 0, 1, i * 16, 16, pattern(16, i))));
    expect(node.seen.length).toBe(51);
    expect(node.maxOutstanding).toBeLessThanOrEqual(4);
    expect(node.maxOutstanding).toBeGreaterThan(1);
  });

  it('fails every pending request at once when one stays unanswered for the flush timeout while others are answered', async () => {
    const { conn } = await setup({ swallow: (h) => h.offset === 0 }, { flushTimeoutMs: 200 });
    const t = target();
    const started = Date.now();
    const stalled = conn.request(t, Opcode.READ, 0, 0, 0, 16, Buffer.alloc(16));
    // Later requests keep being answered: the stall is still detected.
    for (let i = 1; i < 10; i++) await conn.request(t, Opcode.WRITE, 0, 1, i * 16, 4, Buffer.alloc(4));
    const other = conn.request(t, Opcode.READ, 0, 0, 0, 16, Buffer.alloc(16));
    const results = await Promise.allSettled([stalled, other]);
    const elapsed = Date.now() - started;
    for (const r of results) {
      expect(r.status).toBe('rejected');
      expect((r as PromiseRejectedResult).reason).toBeInstanceOf(TransportError);
    }
    expect((results[0] as PromiseRejectedResult).reason.message).toMatch(/did not answer READ/);
    expect(elapsed).toBeGreaterThanOrEqual(190);
    expect(elapsed).toBeLessThan(1500);
  });

  it('a silent (hung) node fails the connection after the data timeout, having been probed with a PING', async () => {
    // A SIGSTOPped node: the kernel keeps the connection, nothing is ever answered.
    const { node, conn } = await setup({ swallow: () => true }, { dataTimeoutMs: 400 });
    const t = target();
    const started = Date.now();
    const results = await Promise.allSettled([
      conn.request(t, Opcode.WRITE, 0, 1, 0, 4096, Buffer.alloc(4096)),
      conn.request(t, Opcode.READ, 0, 0, 0, 4096, Buffer.alloc(4096)),
      conn.request(t, Opcode.MARK_DIRTY, 0, 1, 0, 4096, undefined),
    ]);
    const elapsed = Date.now() - started;
    for (const r of results) {
      expect(r.status).toBe('rejected');
      expect((r as PromiseRejectedResult).reason).toBeInstanceOf(TransportError);
      expect((r as PromiseRejectedResult).reason.message).toMatch(/sent nothing for \d+ ms with 3 request\(s\) outstanding .*did not answer a PING.*taken as hung/);
    }
    expect(elapsed).toBeGreaterThanOrEqual(390);
    expect(elapsed).toBeLessThan(1200); // about the data timeout, far below the flush timeout
    expect(node.seen.filter((h) => h.opcode === Opcode.PING)).toHaveLength(1);
    expect(conn.probesSent).toBe(1);
  });

  it('a FLUSH, FENCE or FUA write slower than the data timeout is not timed out while the node answers the probe', async () => {
    const slow = (h: RequestHeader): boolean => h.opcode === Opcode.FLUSH || h.opcode === Opcode.FENCE || (h.flags & Flag.FUA) !== 0;
    const { node, conn } = await setup({ delayMs: (h) => (slow(h) ? 1500 : 0) }, { dataTimeoutMs: 300 });
    const t = target();
    const started = Date.now();
    await Promise.all([
      conn.request(t, Opcode.FLUSH, 0, 1, 0, 0, undefined),
      conn.request(t, Opcode.FENCE, 0, 2, 0, 0, undefined, 3),
      conn.request(t, Opcode.WRITE, Flag.FUA, 2, 0, 4096, Buffer.alloc(4096)),
    ]);
    expect(Date.now() - started).toBeGreaterThanOrEqual(1450); // 5x the data timeout
    expect(conn.probesSent).toBeGreaterThan(3); // kept alive by answered probes
    // Every probe reached the node, but the last one may still be on its way when the requests complete (seen under load).
    const pings = node.seen.filter((h) => h.opcode === Opcode.PING).length;
    expect(pings).toBeLessThanOrEqual(conn.probesSent);
    expect(pings).toBeGreaterThanOrEqual(conn.probesSent - 1);
    expect(node.connections).toBe(1);
    // The connection is still fine.
    await conn.request(t, Opcode.WRITE, 0, 2, 0, 4096, Buffer.alloc(4096));
  });

  it('a hung node with only a FLUSH outstanding is still detected after about the data timeout', async () => {
    const { conn } = await setup({ swallow: () => true }, { dataTimeoutMs: 300, flushTimeoutMs: 30_000 });
    const started = Date.now();
    await expect(conn.request(target(), Opcode.FLUSH, 0, 1, 0, 0, undefined)).rejects.toThrow(/taken as hung/);
    const elapsed = Date.now() - started;
    expect(elapsed).toBeGreaterThanOrEqual(290);
    expect(elapsed).toBeLessThan(1000);
  });

  it('a node that replies slowly but steadily is not timed out, even when every request waits far longer than the data timeout', async () => {
    // One reply every 100 ms, in order, PINGs queued like the rest: each request
    // waits up to ~2.5 s, but the node is never silent for the 300 ms data timeout.
    const { node, conn } = await setup({ serialMs: 100 }, { dataTimeoutMs: 300 });
    const t = target();
    await conn.request(t, Opcode.PING, 0, 0, 0, 0, undefined);
    const started = Date.now();
    await Promise.all(Array.from({ length: 24 }, (_, i) => conn.request(t, Opcode.WRITE, 0, 1, i * 4096, 4096, pattern(4096, i))));
    expect(Date.now() - started).toBeGreaterThanOrEqual(2000);
    expect(node.connections).toBe(1);
  });

  it('counts the data timeout from when a request is sent, not while it waits in the queue', async () => {
    // Window of one request (maxInflight 2 keeps a slot for the probe): 12 writes
    // answered 150 ms each after they are sent; the last one waits ~1.8 s from submit().
    const { node, conn } = await setup({ delayMs: () => 150 }, { dataTimeoutMs: 300, maxInflight: 2 });
    const t = target();
    await conn.request(t, Opcode.PING, 0, 0, 0, 0, undefined);
    const started = Date.now();
    await Promise.all(Array.from({ length: 12 }, (_, i) => conn.request(t, Opcode.WRITE, 0, 1, i * 4096, 4096, pattern(4096, i))));
    expect(Date.now() - started).toBeGreaterThanOrEqual(1700);
    expect(node.maxOutstanding).toBeLessThanOrEqual(2);
    expect(node.connections).toBe(1);
  });

  it('replies that arrived while the head process itself was stalled count as progress', async () => {
    // This whole process (head included) stalls for 4x the data timeout, then the
    // node's FLUSH reply lands in the socket just before the head's overdue timer
    // tick runs. PINGs are swallowed, so only the re-check after the poll phase
    // (which reads the reply) saves the connection.
    const { node, conn } = await setup({
      swallow: (h) => h.opcode === Opcode.PING,
      delayMs: (h) => (h.opcode === Opcode.FLUSH ? 200 : 0),
      stallBeforeReplyMs: (h) => (h.opcode === Opcode.FLUSH ? 1200 : 0),
    }, { dataTimeoutMs: 300 });
    await conn.request(target(), Opcode.FLUSH, 0, 1, 0, 0, undefined);
    expect(conn.probesSent).toBe(1);
    expect(node.connections).toBe(1);
  });

  it('fails pending requests with TransportError on reset, then reconnects after back-off', async () => {
    const { node, conn } = await setup({ swallow: () => true }, { backoffInitialMs: 50 });
    const t = target();
    const pending = Array.from({ length: 5 }, (_, i) => conn.request(t, Opcode.READ, 0, 0, i, 1, Buffer.alloc(1)));
    while (node.seen.length < 5) await new Promise((r) => setTimeout(r, 5));
    node.resetAll();
    const results = await Promise.allSettled(pending);
    expect(results.every((r) => r.status === 'rejected' && r.reason instanceof TransportError)).toBe(true);
    // During back-off: fail fast.
    expect(conn.available).toBe(false);
    await expect(conn.request(t, Opcode.PING, 0, 0, 0, 0, undefined)).rejects.toBeInstanceOf(TransportError);
    await new Promise((r) => setTimeout(r, 80));
    (node.opts as FakeOptions).swallow = undefined;
    await conn.request(t, Opcode.PING, 0, 0, 0, 0, undefined);
    expect(node.connections).toBe(2);
  });

  it('fails the connection on a reply to an unknown request id', async () => {
    const { node, conn } = await setup({ swallow: () => true });
    const p = conn.request(target(), Opcode.READ, 0, 0, 0, 1, Buffer.alloc(1));
    while (node.seen.length < 1) await new Promise((r) => setTimeout(r, 5));
    const [s] = [...node.sockets];
    s!.write(encodeReplyHeader({ requestId: 999_999, status: 0, length: 0 }, Buffer.alloc(REPLY_HEADER_SIZE)));
    await expect(p).rejects.toThrow(/unknown request id/);
  });

  it('fails the connection on garbage from the node', async () => {
    const { node, conn } = await setup({ swallow: () => true });
    const p = conn.request(target(), Opcode.READ, 0, 0, 0, 1, Buffer.alloc(1));
    while (node.seen.length < 1) await new Promise((r) => setTimeout(r, 5));
    [...node.sockets][0]!.write(Buffer.alloc(64, 0x41));
    await expect(p).rejects.toThrow(/bad reply magic/);
  });

  it('rejects a READ reply of the wrong length', async () => {
    const { node, conn } = await setup({ swallow: () => true });
    const p = conn.request(target(), Opcode.READ, 0, 0, 0, 8, Buffer.alloc(8));
    while (node.seen.length < 1) await new Promise((r) => setTimeout(r, 5));
    const h = node.seen[0]!;
    [...node.sockets][0]!.write(Buffer.concat([encodeReplyHeader({ requestId: h.requestId, status: 0, length: 4 }, Buffer.alloc(REPLY_HEADER_SIZE)), Buffer.alloc(4)]));
    await expect(p).rejects.toThrow(/returned 4 bytes for a read of 8/);
  });

  it('fails fast and clearly when the node is not listening', async () => {
    const { node, address } = await setup();
    await node.close();
    nodes.length = 0;
    const conn = new NodeConnection(address);
    conns.push(conn);
    await expect(conn.request(target(), Opcode.PING, 0, 0, 0, 0, undefined)).rejects.toThrow(/ECONNREFUSED/);
  });

  it('close() fails pending requests and refuses new ones', async () => {
    const { node, conn } = await setup({ swallow: () => true });
    const p = conn.request(target(), Opcode.READ, 0, 0, 0, 1, Buffer.alloc(1));
    while (node.seen.length < 1) await new Promise((r) => setTimeout(r, 5));
    await conn.close();
    await expect(p).rejects.toBeInstanceOf(TransportError);
    await expect(conn.request(target(), Opcode.PING, 0, 0, 0, 0, undefined)).rejects.toThrow(/closed/);
  });
});

describe('volume over scripted nodes: what goes on the wire', () => {
  it('fences each node once, sends FUA through, and FLUSHes each node only when it has unflushed writes', async () => {
    const fakes = [new FakeNode(), new FakeNode(), new FakeNode()];
    nodes.push(...fakes);
    const addrs = await Promise.all(fakes.map((f) => f.listen()));
    const pool = new NodePool();
    const reg = new Attachments({ pool });
    const segments = [0, 1].map((index) => ({
      index,
      replicas: addrs.map((dataAddress, slot) => ({ slot, serverId: `s${slot}`, dataAddress, diskId: `d${slot}`, chunkIndex: index, state: 'in_sync', controlAddress: '' })),
    }));
    try {
      const vol = await reg.attach({ volumeId: 3, name: 'w', size: 2 * CHUNK, chunkSize: CHUNK, replicas: 3, generation: 9, segments, thin: false, backing: [], regionSize: 0 }, 7);
      const ops = (f: FakeNode, op: number) => f.seen.filter((h) => h.opcode === op);
      for (const f of fakes) expect(ops(f, Opcode.FENCE).map((h) => [h.epoch, h.generation])).toEqual([[7, 9]]);
      // The attach's FENCE leaves every node "dirty" (conservative): the first flush reaches all.
      await vol.flush();
      for (const f of fakes) expect(ops(f, Opcode.FLUSH)).toHaveLength(1);
      await vol.flush();
      for (const f of fakes) expect(ops(f, Opcode.FLUSH)).toHaveLength(1);
      // FUA writes: FUA on every replica, nothing left to flush.
      await vol.write(CHUNK - 100, Buffer.alloc(200, 1), true);
      for (const f of fakes) {
        const w = ops(f, Opcode.WRITE);
        expect(w.map((h) => [h.segment, h.offset, h.length, h.flags & Flag.FUA, h.epoch])).toEqual([[0, CHUNK - 100, 100, 1, 7], [1, 0, 100, 1, 7]]);
      }
      await vol.flush();
      for (const f of fakes) expect(ops(f, Opcode.FLUSH)).toHaveLength(1);
      // A plain write: the next flush reaches every node holding a replica, once.
      await vol.write(10, Buffer.alloc(10, 2), false);
      await vol.flush();
      for (const f of fakes) expect(ops(f, Opcode.FLUSH)).toHaveLength(2);
      await vol.writeZeroes(0, 4096, false);
      await vol.discard(8192, 4096);
      await vol.flush();
      for (const f of fakes) {
        expect(ops(f, Opcode.FLUSH)).toHaveLength(3);
        expect(ops(f, Opcode.WRITE_ZEROES).map((h) => [h.offset, h.length, h.epoch])).toEqual([[0, 4096, 7]]);
        expect(ops(f, Opcode.DISCARD).map((h) => [h.offset, h.length, h.epoch])).toEqual([[8192, 4096, 7]]);
      }
      expect(pool.size).toBe(3);
      expect(fakes.map((f) => f.connections)).toEqual([1, 1, 1]);
    } finally {
      await pool.close();
    }
  });

  it('a flush that finds a node clean because another flush is in flight waits for that FLUSH', async () => {
    const fakes = [new FakeNode({ delayMs: (h) => (h.opcode === Opcode.FLUSH ? 150 : 0) }), new FakeNode(), new FakeNode()];
    nodes.push(...fakes);
    const addrs = await Promise.all(fakes.map((f) => f.listen()));
    const pool = new NodePool();
    const reg = new Attachments({ pool });
    const segments = [{ index: 0, replicas: addrs.map((dataAddress, slot) => ({ slot, serverId: `s${slot}`, dataAddress, diskId: `d${slot}`, chunkIndex: 0, state: 'in_sync', controlAddress: '' })) }];
    try {
      const vol = await reg.attach({ volumeId: 4, name: 'f', size: CHUNK, chunkSize: CHUNK, replicas: 3, generation: 1, segments, thin: false, backing: [], regionSize: 0 }, 1);
      await vol.write(0, Buffer.alloc(4096, 1), false);
      const t0 = Date.now();
      const first = vol.flush();
      const second = vol.flush(); // every node looks clean now: it must still wait for node 0's FLUSH
      await second;
      expect(Date.now() - t0).toBeGreaterThanOrEqual(140);
      await first;
      expect(fakes[0]!.seen.filter((h) => h.opcode === Opcode.FLUSH)).toHaveLength(1);
    } finally {
      reg.abandon();
      await pool.close();
    }
  });
});
