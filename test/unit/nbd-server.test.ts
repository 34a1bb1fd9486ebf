// The NBD server driven by real clients (nbdinfo, qemu-img, qemu-io, nbdcopy,
// fio) and by a raw socket client for what real clients never send (garbage,
// writes past the end, pipelined bursts). The exports are Buffer-backed test
// doubles of BlockDevice: the export seam, not the I/O engine.

import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BlockDevice, ExportRegistry } from '../../head-agent/engine/block-device.js';
import {
  OPTION_REPLY_SPEC, encodeInfoRequest, encodeOption, encodeRequest, parseSimpleReply, parseStructuredReplyHeader,
  type OptionReplyHeader, type StructuredReplyHeader,
} from '../../head-agent/frontend/nbd/codec.js';
import {
  NBD_CMD_FLAG_DF, NBD_CMD_FLAG_FUA, NBD_FLAG_C_FIXED_NEWSTYLE, NBD_FLAG_C_NO_ZEROES, NBD_FLAG_SEND_DF,
  NBD_REPLY_FLAG_DONE, NbdCmd, NbdError, NbdInfo, NbdOpt, NbdRep, NbdReplyType,
} from '../../head-agent/frontend/nbd/constants.js';
import { startNbdServer, type NbdServerHandle } from '../../head-agent/frontend/nbd/server.js';
import { setRootLogger } from '../../shared/logger.js';
import { pino } from 'pino';
import { MemoryDevice } from '../harness/memory-device.js';

const MiB = 1024 * 1024;
const SIZE = 16 * MiB;
const CMD_TIMEOUT = 30_000;

setRootLogger(pino({ level: process.env.VSKY_LOG_LEVEL ?? 'silent' }));


class MapRegistry implements ExportRegistry {
  readonly devices = new Map<string, BlockDevice>();
  add(d: BlockDevice): void { this.devices.set(d.name, d); }
  lookup(name: string): BlockDevice | undefined { return this.devices.get(name); }
  list(): BlockDevice[] { return [...this.devices.values()]; }
}

// --- A raw NBD client, for bytes no real client sends --------------------------

class RawClient {
  private readonly chunks: Buffer[] = [];
  private buffered = 0;
  private waiter: (() => void) | undefined;
  closed = false;
  readonly closedPromise: Promise<void>;

  private constructor(readonly socket: Socket) {
    socket.on('data', (c: Buffer) => { this.chunks.push(c); this.buffered += c.length; this.waiter?.(); });
    this.closedPromise = new Promise((r) => socket.on('close', () => { this.closed = true; this.waiter?.(); r(); }));
    socket.on('error', () => {});
  }

  static async connect(address: string): Promise<RawClient> {
    const [host, port] = address.split(':');
    const socket = connect(Number(port), host!);
    await new Promise<void>((resolve, reject) => { socket.once('connect', resolve); socket.once('error', reject); });
    return new RawClient(socket);
  }

  /** Resolves with exactly n bytes, or rejects if the server closes first. */
  async read(n: number, timeoutMs = 5000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.buffered < n) {
      if (this.closed) throw new Error(`connection closed with ${this.buffered} of ${n} bytes`);
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${n} bytes`);
      await new Promise<void>((r) => { this.waiter = r; setTimeout(r, 50); });
      this.waiter = undefined;
    }
    const all = Buffer.concat(this.chunks);
    this.chunks.length = 0;
    this.chunks.push(all.subarray(n));
    this.buffered = all.length - n;
    return all.subarray(0, n);
  }

  write(buf: Buffer): void { this.socket.write(buf); }

  /** Greeting + client flags; returns the handshake flags. */
  async greet(flags = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES): Promise<number> {
    const g = await this.read(18);
    expect(g.subarray(0, 16).toString('latin1')).toBe('NBDMAGICIHAVEOPT');
    const f = Buffer.alloc(4);
    f.writeUInt32BE(flags);
    this.write(f);
    return g.readUInt16BE(16);
  }

  async optionReply(): Promise<{ header: OptionReplyHeader; data: Buffer }> {
    const h = await this.read(20);
    const header = OPTION_REPLY_SPEC.parseHeader(h, 0);
    return { header, data: await this.read(header.length) };
  }

  /** NBD_OPT_GO on `name`; returns [size, flags] from NBD_INFO_EXPORT. */
  async go(name: string): Promise<{ size: number; flags: number }> {
    this.write(encodeOption(NbdOpt.GO, encodeInfoRequest(name, [NbdInfo.BLOCK_SIZE])));
    let result: { size: number; flags: number } | undefined;
    for (;;) {
      const { header, data } = await this.optionReply();
      if (header.type === NbdRep.ACK) break;
      if (header.type !== NbdRep.INFO) throw new Error(`GO failed: reply type 0x${header.type.toString(16)}: ${data.toString()}`);
      if (data.readUInt16BE(0) === NbdInfo.EXPORT) result = { size: Number(data.readBigUInt64BE(2)), flags: data.readUInt16BE(10) };
    }
    return result!;
  }

  request(type: number, handle: number, offset: number, length: number, flags = 0, data?: Buffer): void {
    this.write(encodeRequest({ type, flags, handleHi: 0, handleLo: handle, offset, length }));
    if (data !== undefined) this.write(data);
  }

  async reply(dataLength = 0): Promise<{ error: number; handle: number; data: Buffer }> {
    const r = parseSimpleReply(await this.read(16));
    const data = r.error === 0 && dataLength > 0 ? await this.read(dataLength) : Buffer.alloc(0);
    return { error: r.error, handle: r.handleLo, data };
  }

  async structuredReply(): Promise<{ header: StructuredReplyHeader; payload: Buffer }> {
    const header = parseStructuredReplyHeader(await this.read(20));
    return { header, payload: await this.read(header.length) };
  }

  destroy(): void { this.socket.destroy(); }
}

// --- Fixture ----------------------------------------------------------------------

let server: NbdServerHandle;
let registry: MapRegistry;
let disk: MemoryDevice;
let work: string;
const uri = (name: string): string => `nbd://${server.address}/${name}`;

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'nbd-server-test-'));
  registry = new MapRegistry();
  disk = new MemoryDevice(SIZE, { name: 'vol1' });
  registry.add(disk);
  registry.add(new MemoryDevice(8 * MiB, { name: 'vol2' }));
  server = await startNbdServer({ host: '127.0.0.1', port: 0, registry }, { handshakeTimeoutMs: 1500, maxInFlight: 8 });
});

afterAll(async () => {
  await server?.close();
  rmSync(work, { recursive: true, force: true });
});

async function run(cmd: string, args: string[]): Promise<{ stdout: string; stderr: string; exitCode: number }> {
  const r = await execa(cmd, args, { reject: false, timeout: CMD_TIMEOUT, stdin: 'ignore' });
  return { stdout: String(r.stdout), stderr: String(r.stderr), exitCode: r.exitCode ?? -1 };
}

async function nbdinfoJson(args: string[]): Promise<{ exports: Record<string, unknown>[] } & Record<string, unknown>> {
  const r = await run('nbdinfo', ['--json', ...args]);
  expect(r.exitCode, r.stderr).toBe(0);
  return JSON.parse(r.stdout);
}

function randomImage(name: string, size: number): string {
  const path = join(work, name);
  writeFileSync(path, randomBytes(size));
  return path;
}

describe('NBD server with real clients', () => {
  it('nbdinfo reports size, flags and block sizes', async () => {
    const info = await nbdinfoJson(['--no-content', uri('vol1')]);
    expect(info.protocol).toBe('newstyle-fixed');
    expect(info.structured).toBe(true);
    const e = info.exports[0]!;
    expect(e['export-name']).toBe('vol1');
    expect(e['export-size']).toBe(SIZE);
    expect(e).toMatchObject({
      is_read_only: false, is_rotational: false, can_flush: true, can_fua: true, can_trim: true,
      can_zero: true, can_multi_conn: true, can_df: true, can_fast_zero: false,
      block_size_minimum: 1, block_size_preferred: 4096, block_size_maximum: 32 * MiB,
    });
  });

  it('nbdinfo --list lists every export', async () => {
    const info = await nbdinfoJson(['--list', '--no-content', `nbd://${server.address}`]);
    const names = info.exports.map((e) => e['export-name']).sort();
    expect(names).toEqual(['vol1', 'vol2']);
    const vol2 = info.exports.find((e) => e['export-name'] === 'vol2')!;
    expect(vol2['export-size']).toBe(8 * MiB);
  });

  it('an unknown export name fails cleanly and the server keeps serving', async () => {
    const bad = await run('nbdinfo', ['--no-content', uri('no-such-volume')]);
    expect(bad.exitCode).not.toBe(0);
    // NBD_REP_ERR_UNKNOWN, which libnbd reports as ENOENT.
    expect(bad.stderr).toMatch(/No such file or directory for export: no-such-volume/);
    const good = await nbdinfoJson(['--no-content', uri('vol2')]);
    expect(good.exports[0]!['export-size']).toBe(8 * MiB);
  });

  it('qemu-img convert writes an image that qemu-img compare finds identical', async () => {
    const src = randomImage('convert-src.img', SIZE);
    const w = await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', src, uri('vol1')]);
    expect(w.exitCode, w.stderr).toBe(0);
    expect(disk.data.equals(readFileSync(src))).toBe(true);
    const c = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, uri('vol1')]);
    expect(c.exitCode, c.stdout + c.stderr).toBe(0);
    // And compare notices a difference: one byte changed behind the client's back.
    disk.data[12345] ^= 0xff;
    const d = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, uri('vol1')]);
    expect(d.exitCode).toBe(1);
  });

  it('qemu-io writes a pattern and reads it back', async () => {
    const r = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0xab 0 1M', '-c', 'read -P 0xab 0 1M',
      '-c', 'write -z 512K 4K', '-c', 'read -P 0 512K 4K', '-c', 'flush', '-c', 'discard 1M 64K', uri('vol1')]);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout).not.toMatch(/error|fail|mismatch/i);
    expect(disk.data.subarray(0, 512 * 1024).every((b) => b === 0xab)).toBe(true);
    expect(disk.data.subarray(512 * 1024, 516 * 1024).every((b) => b === 0)).toBe(true);
    expect(disk.flushes).toBeGreaterThan(0);
  });

  it('qemu-io sees a device read error as an I/O error', async () => {
    disk.failReadsAt = 3 * MiB;
    try {
      const r = await run('qemu-io', ['-f', 'raw', '-c', 'read 3M 4K', uri('vol1')]);
      expect(r.stdout + r.stderr).toMatch(/Input\/output error/);
      const ok = await run('qemu-io', ['-f', 'raw', '-c', 'read 0 4K', uri('vol1')]);
      expect(ok.stdout + ok.stderr).not.toMatch(/error/i);
    } finally {
      disk.failReadsAt = undefined;
    }
  });

  it('nbdcopy copies in both directions (multi-conn)', async () => {
    const src = randomImage('copy-src.img', SIZE);
    const up = await run('nbdcopy', ['--flush', src, uri('vol1')]);
    expect(up.exitCode, up.stderr).toBe(0);
    expect(disk.data.equals(readFileSync(src))).toBe(true);
    const dst = join(work, 'copy-dst.img');
    writeFileSync(dst, Buffer.alloc(0));
    const down = await run('nbdcopy', [uri('vol1'), dst]);
    expect(down.exitCode, down.stderr).toBe(0);
    expect(readFileSync(dst).equals(readFileSync(src))).toBe(true);
  });

  it('fio --ioengine=nbd runs a short randrw job without errors', async () => {
    const r = await run('fio', ['--name=nbd', '--ioengine=nbd', `--uri=${uri('vol1')}`, '--rw=randrw', '--bs=4k',
      '--iodepth=16', '--size=16M', '--runtime=2', '--time_based', '--output-format=json']);
    expect(r.exitCode, r.stderr).toBe(0);
    const job = JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))).jobs[0];
    expect(job.error).toBe(0);
    expect(job.read.io_bytes).toBeGreaterThan(0);
    expect(job.write.io_bytes).toBeGreaterThan(0);
  });
});

describe('NBD server with a raw client', () => {
  it('answers a write past the end with ENOSPC, a read past the end with EINVAL, and keeps serving', async () => {
    const c = await RawClient.connect(server.address);
    await c.greet();
    const { size } = await c.go('vol2');
    c.request(NbdCmd.WRITE, 1, size - 512, 4096, 0, Buffer.alloc(4096, 7));
    expect(await c.reply()).toMatchObject({ handle: 1, error: NbdError.ENOSPC });
    c.request(NbdCmd.READ, 2, size, 512);
    expect(await c.reply(512)).toMatchObject({ handle: 2, error: NbdError.EINVAL });
    c.request(NbdCmd.TRIM, 3, 2 ** 60, 512);
    expect(await c.reply()).toMatchObject({ handle: 3, error: NbdError.EINVAL });
    c.request(NbdCmd.BLOCK_STATUS, 4, 0, 512);
    expect(await c.reply()).toMatchObject({ handle: 4, error: NbdError.EINVAL });
    c.request(NbdCmd.READ, 5, 0, 33 * MiB);
    expect(await c.reply()).toMatchObject({ handle: 5, error: NbdError.EINVAL });
    c.request(NbdCmd.WRITE, 6, 0, 512, 0x20 /* unknown flag */, Buffer.alloc(512));
    expect(await c.reply()).toMatchObject({ handle: 6, error: NbdError.EINVAL });
    // Still serving on the same connection.
    c.request(NbdCmd.WRITE, 7, 4096, 4, NBD_CMD_FLAG_FUA, Buffer.from('abcd'));
    expect(await c.reply()).toMatchObject({ handle: 7, error: 0 });
    c.request(NbdCmd.READ, 8, 4096, 4);
    expect((await c.reply(4)).data.toString()).toBe('abcd');
    c.request(NbdCmd.DISC, 9, 0, 0);
    await c.closedPromise;
  });

  it('with structured replies: READ data in one OFFSET_DATA chunk, errors as ERROR chunks with a message', async () => {
    const c = await RawClient.connect(server.address);
    await c.greet();
    c.write(encodeOption(NbdOpt.STRUCTURED_REPLY));
    expect((await c.optionReply()).header.type).toBe(NbdRep.ACK);
    const { size, flags } = await c.go('vol1');
    expect(flags & NBD_FLAG_SEND_DF).toBe(NBD_FLAG_SEND_DF);
    disk.data.write('structured', 3 * MiB);
    c.request(NbdCmd.READ, 1, 3 * MiB, 10, NBD_CMD_FLAG_DF);
    const data = await c.structuredReply();
    expect(data.header).toMatchObject({ handleLo: 1, flags: NBD_REPLY_FLAG_DONE, type: NbdReplyType.OFFSET_DATA, length: 18 });
    expect(Number(data.payload.readBigUInt64BE(0))).toBe(3 * MiB);
    expect(data.payload.subarray(8).toString()).toBe('structured');
    c.request(NbdCmd.READ, 2, 0, 0);
    expect((await c.structuredReply()).header).toMatchObject({ handleLo: 2, flags: NBD_REPLY_FLAG_DONE, type: NbdReplyType.NONE, length: 0 });
    c.request(NbdCmd.WRITE, 3, size - 2, 4, 0, Buffer.from('wxyz'));
    const past = await c.structuredReply();
    expect(past.header).toMatchObject({ handleLo: 3, flags: NBD_REPLY_FLAG_DONE, type: NbdReplyType.ERROR });
    expect(past.payload.readUInt32BE(0)).toBe(NbdError.ENOSPC);
    expect(past.payload.subarray(6, 6 + past.payload.readUInt16BE(4)).toString()).toMatch(/past the end of the export/);
    disk.failReadsAt = 5 * MiB;
    try {
      c.request(NbdCmd.READ, 4, 5 * MiB, 4096);
      const eio = await c.structuredReply();
      expect(eio.header.type).toBe(NbdReplyType.ERROR);
      expect(eio.payload.readUInt32BE(0)).toBe(NbdError.EIO);
      expect(eio.payload.subarray(6).toString()).toMatch(/no replica could read vol1/);
    } finally {
      disk.failReadsAt = undefined;
    }
    // Successful non-READ commands keep simple replies (the spec allows it).
    c.request(NbdCmd.FLUSH, 5, 0, 0);
    expect(await c.reply()).toMatchObject({ handle: 5, error: 0 });
    c.request(NbdCmd.DISC, 6, 0, 0);
    await c.closedPromise;
  });

  it('garbage bytes close only that connection while nbdinfo works concurrently', async () => {
    const before = server.connectionCount();
    const junk = await RawClient.connect(server.address);
    await junk.greet();
    const busy = await RawClient.connect(server.address);
    await busy.greet();
    await busy.go('vol1');
    const info = nbdinfoJson(['--no-content', uri('vol1')]);
    junk.write(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
    await junk.closedPromise;
    // Garbage in transmission: a request with a bad magic.
    busy.write(Buffer.alloc(28, 0x55));
    await busy.closedPromise;
    expect((await info).exports[0]!['export-size']).toBe(SIZE);
    await waitFor(() => server.connectionCount() === before);
  });

  it('survives random bytes at every phase from many connections at once', async () => {
    const before = server.connectionCount();
    const clients = await Promise.all(Array.from({ length: 24 }, async (_, i) => {
      const c = await RawClient.connect(server.address);
      if (i % 3 >= 1) await c.greet();
      if (i % 3 === 2) await c.go(i % 2 ? 'vol1' : 'vol2');
      // Keep a valid magic now and then so headers get past the first check.
      for (let k = 0; k < 8; k++) {
        const junk = randomBytes(1 + ((i * 37 + k * 101) % 200));
        if (k % 2 === 0 && junk.length >= 8) junk.writeUInt32BE(k % 4 === 0 ? 0x25609513 : 0x49484156, 0);
        c.write(junk);
      }
      c.socket.end();
      return c;
    }));
    await Promise.all(clients.map((c) => Promise.race([c.closedPromise, new Promise((r) => setTimeout(r, 3000))])));
    clients.forEach((c) => c.destroy());
    await waitFor(() => server.connectionCount() === before);
    const ok = await nbdinfoJson(['--no-content', uri('vol1')]);
    expect(ok.exports[0]!['export-size']).toBe(SIZE);
  });

  it('a WRITE longer than 32 MiB closes the connection before its data is read', async () => {
    const c = await RawClient.connect(server.address);
    await c.greet();
    await c.go('vol1');
    c.request(NbdCmd.WRITE, 1, 0, 32 * MiB + 1);
    await c.closedPromise;
    const ok = await nbdinfoJson(['--no-content', uri('vol1')]);
    expect(ok.exports[0]!['export-size']).toBe(SIZE);
  });

  it('bad option data gets NBD_REP_ERR_INVALID, unknown options NBD_REP_ERR_UNSUP, and haggling continues', async () => {
    const c = await RawClient.connect(server.address);
    expect(await c.greet()).toBe(3);
    c.write(encodeOption(NbdOpt.GO, Buffer.from([0, 0, 1, 0, 0, 0]))); // name length 256 > 0 available
    const bad = await c.optionReply();
    expect(bad.header.type).toBe(NbdRep.ERR_INVALID);
    expect(bad.data.toString()).toMatch(/name length 256/);
    c.write(encodeOption(12345, Buffer.alloc(10)));
    expect((await c.optionReply()).header.type).toBe(NbdRep.ERR_UNSUP);
    c.write(encodeOption(NbdOpt.STRUCTURED_REPLY, Buffer.from('x')));
    expect((await c.optionReply()).header.type).toBe(NbdRep.ERR_INVALID);
    c.write(encodeOption(NbdOpt.EXTENDED_HEADERS, Buffer.alloc(8)));
    expect((await c.optionReply()).header.type).toBe(NbdRep.ERR_UNSUP);
    c.write(encodeOption(NbdOpt.LIST, Buffer.from('x')));
    expect((await c.optionReply()).header.type).toBe(NbdRep.ERR_INVALID);
    c.write(encodeOption(NbdOpt.INFO, encodeInfoRequest('', [])));
    expect((await c.optionReply()).header.type).toBe(NbdRep.ERR_UNKNOWN);
    c.write(encodeOption(NbdOpt.INFO, encodeInfoRequest('vol2', [NbdInfo.NAME, NbdInfo.DESCRIPTION])));
    const infos: number[] = [];
    for (;;) {
      const r = await c.optionReply();
      if (r.header.type === NbdRep.ACK) break;
      infos.push(r.data.readUInt16BE(0));
    }
    expect(infos.sort()).toEqual([NbdInfo.EXPORT, NbdInfo.NAME, NbdInfo.DESCRIPTION, NbdInfo.BLOCK_SIZE].sort());
    c.write(encodeOption(NbdOpt.ABORT));
    expect((await c.optionReply()).header.type).toBe(NbdRep.ACK);
    await c.closedPromise;
  });

  it('NBD_OPT_EXPORT_NAME enters transmission, honouring NO_ZEROES; an unknown name hangs up', async () => {
    for (const noZeroes of [true, false]) {
      const c = await RawClient.connect(server.address);
      await c.greet(NBD_FLAG_C_FIXED_NEWSTYLE | (noZeroes ? NBD_FLAG_C_NO_ZEROES : 0));
      c.write(encodeOption(NbdOpt.EXPORT_NAME, Buffer.from('vol2')));
      const reply = await c.read(10 + (noZeroes ? 0 : 124));
      expect(Number(reply.readBigUInt64BE(0))).toBe(8 * MiB);
      c.request(NbdCmd.READ, 42, 0, 16);
      expect(await c.reply(16)).toMatchObject({ handle: 42, error: 0 });
      c.destroy();
    }
    const bad = await RawClient.connect(server.address);
    await bad.greet();
    bad.write(encodeOption(NbdOpt.EXPORT_NAME, Buffer.from('nope')));
    await bad.closedPromise;
  });

  it('serves requests that arrive in the same segment as the client flags and NBD_OPT_GO', async () => {
    disk.data.write('same-segment', 5000);
    const c = await RawClient.connect(server.address);
    await c.read(18);
    const flags = Buffer.alloc(4);
    flags.writeUInt32BE(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    c.write(Buffer.concat([
      flags,
      encodeOption(NbdOpt.GO, encodeInfoRequest('vol1', [])),
      encodeRequest({ type: NbdCmd.READ, flags: 0, handleHi: 0, handleLo: 5, offset: 5000, length: 12 }),
    ]));
    for (;;) if ((await c.optionReply()).header.type === NbdRep.ACK) break;
    const r = await c.reply(12);
    expect(r).toMatchObject({ handle: 5, error: 0 });
    expect(r.data.toString()).toBe('same-segment');
    c.destroy();
  });

  it('unknown client flags and a silent client are disconnected', async () => {
    const c = await RawClient.connect(server.address);
    await c.greet(0x80);
    await c.closedPromise;
    const silent = await RawClient.connect(server.address);
    const t0 = Date.now();
    await silent.closedPromise; // handshake timeout is 1.5 s in this fixture
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1000);
  });

  it('runs requests concurrently and replies out of order, matched by handle', async () => {
    const c = await RawClient.connect(server.address);
    await c.greet();
    await c.go('vol1');
    disk.delayAt.set(0, 300);
    try {
      c.request(NbdCmd.READ, 1, 0, 512);
      c.request(NbdCmd.READ, 2, 8192, 512);
      const first = await c.reply(512);
      const second = await c.reply(512);
      expect([first.handle, second.handle]).toEqual([2, 1]);
    } finally {
      disk.delayAt.clear();
    }
    c.destroy();
  });

  it('bounds requests in flight per connection and resumes when they finish', async () => {
    const c = await RawClient.connect(server.address);
    await c.greet();
    await c.go('vol1');
    let release!: () => void;
    const held = new Promise<void>((r) => { release = r; });
    disk.gate = () => held;
    disk.maxActive = 0;
    const calls0 = disk.calls.length;
    const n = 200;
    for (let i = 0; i < n; i++) c.request(NbdCmd.WRITE, i, i * 4096, 4096, 0, Buffer.alloc(4096, i & 0xff));
    await waitFor(() => disk.calls.length - calls0 >= 8);
    await new Promise((r) => setTimeout(r, 100));
    expect(disk.calls.length - calls0).toBe(8); // maxInFlight in this fixture
    disk.gate = undefined;
    release();
    const handles = new Set<number>();
    for (let i = 0; i < n; i++) {
      const r = await c.reply();
      expect(r.error).toBe(0);
      handles.add(r.handle);
    }
    expect(handles.size).toBe(n);
    expect(disk.maxActive).toBe(8);
    expect(disk.data[199 * 4096]).toBe(199);
    c.destroy();
  });

  it('stops reading requests while the client does not read its replies', async () => {
    const c = await RawClient.connect(server.address);
    await c.greet();
    await c.go('vol1');
    c.socket.pause(); // the client stops reading
    const calls0 = disk.calls.length;
    const n = 64;
    for (let i = 0; i < n; i++) c.request(NbdCmd.READ, i, (i % 16) * MiB, MiB);
    await waitFor(() => disk.calls.length - calls0 >= 8);
    await new Promise((r) => setTimeout(r, 300));
    // Kernel socket buffers absorb a few MiB of replies; the rest must wait.
    const served = disk.calls.length - calls0;
    expect(served).toBeLessThan(n / 2);
    c.socket.resume();
    for (let i = 0; i < n; i++) expect((await c.reply(MiB)).error).toBe(0);
    expect(disk.calls.length - calls0).toBe(n);
    c.destroy();
  });

  it('NBD_CMD_DISC answers in-flight requests before closing, and connectionCount tracks exports', async () => {
    const c = await RawClient.connect(server.address);
    await c.greet();
    await c.go('vol2');
    await waitFor(() => server.connectionCount('vol2') === 1);
    const vol2 = registry.lookup('vol2') as MemoryDevice;
    vol2.delayAt.set(8192, 200);
    try {
      c.request(NbdCmd.WRITE, 77, 8192, 4, 0, Buffer.from('disc'));
      c.request(NbdCmd.DISC, 78, 0, 0);
      expect(await c.reply()).toMatchObject({ handle: 77, error: 0 });
      await c.closedPromise;
    } finally {
      vol2.delayAt.clear();
    }
    expect(vol2.data.subarray(8192, 8196).toString()).toBe('disc');
    await waitFor(() => server.connectionCount('vol2') === 0);
  });

  it('a client that half-closes its side still gets replies to requests in flight', async () => {
    const c = await RawClient.connect(server.address);
    await c.greet();
    await c.go('vol2');
    const vol2 = registry.lookup('vol2') as MemoryDevice;
    vol2.delayAt.set(16384, 200);
    try {
      c.request(NbdCmd.WRITE, 80, 16384, 4, 0, Buffer.from('half'));
      c.socket.end();
      expect(await c.reply()).toMatchObject({ handle: 80, error: 0 });
      await c.closedPromise;
    } finally {
      vol2.delayAt.clear();
    }
    await waitFor(() => server.connectionCount('vol2') === 0);
  });
});

describe('NBD server limits and shutdown', () => {
  it('refuses connections above the limit and close() ends every connection', async () => {
    const reg = new MapRegistry();
    reg.add(new MemoryDevice(MiB, { name: 'only' }));
    const s = await startNbdServer({ host: '127.0.0.1', port: 0, registry: reg }, { maxConnections: 2, closeGraceMs: 500 });
    const a = await RawClient.connect(s.address);
    await a.greet();
    await a.go('only');
    const b = await RawClient.connect(s.address);
    await b.greet();
    await waitFor(() => s.connectionCount() === 2);
    const extra = await RawClient.connect(s.address);
    await extra.closedPromise;
    expect(s.connectionCount('only')).toBe(1);
    await s.close();
    await a.closedPromise;
    await b.closedPromise;
    expect(s.connectionCount()).toBe(0);
    const after = await run('nbdinfo', ['--no-content', `nbd://${s.address}/only`]);
    expect(after.exitCode).not.toBe(0);
  });

  it('close() answers a request still in flight before closing the connection', async () => {
    const reg = new MapRegistry();
    const dev = new MemoryDevice(MiB, { name: 'slow' });
    reg.add(dev);
    const s = await startNbdServer({ host: '127.0.0.1', port: 0, registry: reg }, { closeGraceMs: 2000 });
    const c = await RawClient.connect(s.address);
    await c.greet();
    await c.go('slow');
    let release!: () => void;
    const held = new Promise<void>((r) => { release = r; });
    dev.gate = () => held;
    c.request(NbdCmd.WRITE, 9, 0, 5, NBD_CMD_FLAG_FUA, Buffer.from('hello'));
    await waitFor(() => dev.calls.length === 1);
    let closed = false;
    const closing = s.close().then(() => { closed = true; });
    await new Promise((r) => setTimeout(r, 150));
    expect(closed).toBe(false);
    release();
    expect(await c.reply()).toMatchObject({ handle: 9, error: 0 });
    await closing;
    await c.closedPromise;
    expect(dev.data.subarray(0, 5).toString()).toBe('hello');
  });

  it('close() does not hang on a device that never answers', async () => {
    const reg = new MapRegistry();
    const dev = new MemoryDevice(MiB, { name: 'stuck' });
    dev.gate = () => new Promise(() => {});
    reg.add(dev);
    const s = await startNbdServer({ host: '127.0.0.1', port: 0, registry: reg }, { closeGraceMs: 100 });
    const c = await RawClient.connect(s.address);
    await c.greet();
    await c.go('stuck');
    c.request(NbdCmd.READ, 1, 0, 512);
    await waitFor(() => dev.calls.length === 1);
    const t0 = Date.now();
    await s.close();
    expect(Date.now() - t0).toBeLessThan(2000);
    await c.closedPromise;
  });

  it('fails to start with a clear error when the port is taken', async () => {
    const port = Number(server.address.split(':')[1]);
    await expect(startNbdServer({ host: '127.0.0.1', port, registry })).rejects.toThrow(/cannot listen for NBD on 127.0.0.1:\d+: .*EADDRINUSE/);
  });
});

async function waitFor(cond: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}
